"""`python -m pillow_psc.agreement`: the worker machinery end to end on one tiny crop, so that the tool cannot rot."""

from __future__ import annotations

import json

from pillow_psc import agreement


def test_reference_decode_is_bit_identical_and_a_variant_reaches_its_worker(tmp_path):
    # ATEN_CPU_CAPABILITY exercises the part that is easy to break: variables must reach the worker before torch
    # is imported (torch then reports the capability). One thread keeps it fast on a busy machine.
    variant = agreement.Env("ATEN_CPU_CAPABILITY=default", variables={"ATEN_CPU_CAPABILITY": "default"})
    report = agreement.measure(["kodim23"], crop=32, rate=2.0, out=tmp_path, decoders=[variant], encoders=[])
    control, changed = report["rows"]
    assert (control["decoder"], changed["decoder"]) == ("reference", variant.name)
    assert changed["capability"] == "DEFAULT" and control["capability"] != "DEFAULT"
    image = control["images"][0]  # same environment as the encoder: the codec's promise holds exactly
    assert image["identical"] and image["max_abs_diff"] == 0 and image["desync_step"] is None
    assert image["steps_decoded"] == image["steps_present"] == control["encoded"][0]["steps"] >= 2
    other = changed["images"][0]
    assert other["steps_decoded"] <= other["steps_present"] == image["steps_present"]
    assert json.loads((tmp_path / "agreement.json").read_text())["rows"][1]["decoder"] == variant.name
    assert f"| reference | {variant.name} | DEFAULT |" in agreement.markdown(report)


def test_half_resolution_files_decode_bit_identically_on_another_thread_count(tmp_path):
    """--coarse-sigma reaches the encoder, and such a file decodes bit-identically on 2 threads (PSC.md §11). A crop
    this small did not show format 7's thread dependence either: test_sensing checks the upsampling on a photo."""
    import numpy as np

    from pillow_psc.container import read_file
    threads = agreement.Env("threads=2", threads=2)
    report = agreement.measure(["kodim23"], crop=32, rate=2.0, out=tmp_path, decoders=[threads], encoders=[],
                               coarse_sigma=0.3)
    header = read_file((tmp_path / "work" / "enc-reference" / "kodim23.psc").read_bytes()).header
    assert header.coarse_sigma == np.float32(0.3) and report["coarse_sigma"] == 0.3
    assert all(row["images"][0]["identical"] for row in report["rows"])
    assert "coarse_sigma 0.3" in agreement.markdown(report)
