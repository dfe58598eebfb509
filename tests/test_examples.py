"""The example programs run end to end on tiny inputs, so that they cannot rot."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kodak_whole_compares_at_psc_bpp_and_resumes(tmp_path, capsys):
    kodak_whole = _example("kodak_whole")
    argv = ["--images", "kodim23", "--rates", "0.6", "--crop", "64", "--samples", "5", "--out", str(tmp_path)]
    kodak_whole.main(argv)
    record, = [json.loads(line) for line in (tmp_path / "psc.jsonl").read_text().splitlines()]
    assert record["image"] == "kodim23" and 0.3 < record["bpp"] <= 0.6 and record["psnr"] > 15 and record["effort"] == 1
    assert record["samples"] == 5 and record["rows_per_step"] == [3.0]  # --samples overrides the effort's 6
    assert (tmp_path / "kodim23_0.6.psc").stat().st_size * 8 == pytest.approx(record["bpp"] * 64 * 64)
    curves = json.loads((tmp_path / "baselines.json").read_text())
    assert set(curves) == {f"kodim23/{c}" for c in kodak_whole.BASELINES}
    row = (tmp_path / "summary.md").read_text().splitlines()[2]
    assert row.startswith("| 0.6 | 1 | ")
    kodak_whole.main(argv)  # resumed: nothing new to encode
    assert len((tmp_path / "psc.jsonl").read_text().splitlines()) == 1


def test_baseline_psnr_is_interpolated_in_log_bpp_and_extrapolated_below_the_curve():
    kodak_whole = _example("kodak_whole")
    curve = [[0.1, 20.0], [0.2, 22.0], [0.4, 24.0], [0.8, 26.0]]
    assert kodak_whole.psnr_at(curve, 0.2) == (pytest.approx(22.0), False)
    assert kodak_whole.psnr_at(curve, 2 ** -0.5 * 0.4) == (pytest.approx(23.0), False)
    assert kodak_whole.psnr_at(curve, 0.05) == (pytest.approx(18.0), True)


def test_kodak_whole_compares_with_an_earlier_run_on_the_photos_both_hold(tmp_path):
    kodak_whole = _example("kodak_whole")
    new, old = tmp_path / "new", tmp_path / "kodak24"
    for folder, records in ((new, [("kodim09", 0.1, 27.97, 1056), ("kodim19", 0.1, 25.96, 1056),
                                   ("kodim19", 0.2, 28.70, 1344)]),
                            (old, [("kodim09", 0.1, 28.40, 768), ("kodim19", 0.1, 24.83, 1344),
                                   ("kodim01", 0.2, 24.5, 576)])):
        folder.mkdir()
        (folder / "psc.jsonl").write_text("".join(
            json.dumps({"image": i, "rate": r, "psnr": p, "evaluations": e}) + "\n" for i, r, p, e in records))
    table = kodak_whole.compare(new, [old]).splitlines()
    assert table[0].startswith("| target bpp | photos | PSC − kodak24 (dB), mean |")
    assert table[2:] == ["| 0.1 | 2 (09, 19) | +0.35 | 1 / 1 | 1056 / 1056 |"]  # 0.2: no photo in both runs
    later = tmp_path / "kodak24_v5"  # a later run's record of kodim19 at 0.1 replaces the earlier one
    later.mkdir()
    (later / "psc.jsonl").write_text(json.dumps({"image": "kodim19", "rate": 0.1, "psnr": 25.97, "evaluations": 768}))
    table = kodak_whole.compare(new, [old, later]).splitlines()
    assert table[0].startswith("| target bpp | photos | PSC − kodak24 + kodak24_v5 (dB), mean |")
    assert table[2:] == ["| 0.1 | 2 (09, 19) | -0.22 | 0 / 1 | 1056 / 768 |"]


def test_kodak_whole_merge_takes_each_photo_from_the_last_folder_that_holds_it(tmp_path):
    kodak_whole = _example("kodak_whole")
    curve = [[0.05, 20.0], [0.1, 22.0], [0.2, 24.0], [0.4, 26.0]]
    folders = {"kodak24": [("kodim01", 0.1, 22.5), ("kodim02", 0.1, 21.0)], "kodak24_v6": [("kodim02", 0.1, 22.25)]}
    for name, records in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "psc.jsonl").write_text("".join(json.dumps(
            {"image": i, "rate": r, "bpp": 0.1, "psnr": p, "evaluations": 600}) + "\n" for i, r, p in records))
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({f"{i}/{c}": curve for i in ("kodim01", "kodim02") for c in kodak_whole.BASELINES}))
    out = tmp_path / "merged"
    kodak_whole.main(["--merge", str(tmp_path / "kodak24"), str(tmp_path / "kodak24_v6"), "--out", str(out),
                      "--baselines", str(baselines)])
    merged = [json.loads(line) for line in (out / "psc.jsonl").read_text().splitlines()]
    assert [(r["image"], r["psnr"], r["folder"]) for r in merged] == [("kodim01", 22.5, "kodak24"),
                                                                      ("kodim02", 22.25, "kodak24_v6")]
    table = (out / "summary.md").read_text().splitlines()
    assert table[2].startswith("| 0.1 | 2 | 0.1000 | 22.38 | 600 | 22.00 (0 extrapolated) | +0.38, 2/2 |")
    assert table[-1] == "| 0.1 | kodak24 1, kodak24_v6 1 |"
    assert not list(out.glob("*.psc"))  # nothing encoded
    (tmp_path / "kodak24_v7").mkdir()
    (tmp_path / "kodak24_v7" / "psc.jsonl").write_text(json.dumps(
        {"image": "kodim01", "rate": 0.1, "bpp": 0.1, "psnr": 23.0, "evaluations": 500}) + "\n")
    again = tmp_path / "merged_again"
    kodak_whole.main(["--merge", str(out), str(tmp_path / "kodak24_v7"), "--out", str(again),
                      "--baselines", str(baselines)])
    merged = [json.loads(line) for line in (again / "psc.jsonl").read_text().splitlines()]
    assert [(r["image"], r["folder"]) for r in merged] == [("kodim01", "kodak24_v7"), ("kodim02", "kodak24_v6")]


def test_the_shared_whole_photo_baselines_cover_every_kodak_photo_and_codec():
    kodak_whole = _example("kodak_whole")
    curves = json.loads(kodak_whole.WHOLE_PHOTO_BASELINES.read_text())
    assert set(curves) == {f"kodim{i:02d}/{c}" for i in range(1, 25) for c in kodak_whole.BASELINES}
    assert all(len(curve) >= 10 and curve == sorted(curve) for curve in curves.values())


def test_output_sampling_decodes_the_same_state_with_each_variant(capsys):
    output_sampling = _example("output_sampling")
    output_sampling.main(["--images", "kodim23", "--rates", "2", "--crop", "32", "--variants", "2x3", "2x3i", "1x2",
                          "1x2i", "2x3@1.5", "--threads", "1", "--effort", "1"])
    record = json.loads(capsys.readouterr().out)
    assert set(record["psnr"]) == {"2x3", "2x3i", "1x2", "1x2i", "2x3@1.5"} and record["gain"]["2x3"] == 0.0
    assert record["psnr"]["2x3"] != record["psnr"]["1x2"] and record["psnr"]["1x2"] > 20 and record["effort"] == 1
    # the second sample of a pair mirrors the first one's noise, independent ones draw their own; one sample has no pair
    assert record["psnr"]["2x3"] != record["psnr"]["2x3i"] and record["psnr"]["1x2"] == record["psnr"]["1x2i"]
    assert record["psnr"]["2x3"] != record["psnr"]["2x3@1.5"]  # samples run down to sigma_min, not mean_sigma_min


def test_output_psnr_with_the_header_own_values_is_the_decoder_output():
    import pillow_psc
    from pillow_psc.bench import psnr
    output_sampling = _example("output_sampling")
    pixels = output_sampling.load_image(output_sampling.KODAK / "kodim23.png", 32)
    config = pillow_psc.CodecConfig(samples=4, sampler_steps=2, output_samples=2)
    encoded = pillow_psc.encode(pixels, rate=2, config=config)
    header = encoded.state.header
    decoded = pillow_psc.decode_array(encoded.data).pixels
    assert output_sampling.output_psnr(encoded, pixels, f"2x{header.output_sampler_steps}") == psnr(decoded, pixels)
    output_sampling.output_psnr(encoded, pixels, "1x7i@3")
    assert encoded.state.header == header and np.array_equal(encoded.reconstruct("mean"), decoded)


def test_restart_study_forces_both_choices_and_scores_rules(tmp_path, capsys):
    """Arm A keeps the automatic step, arm B starts at half of it; neither starts again, and the codec's own test
    is back in place afterwards."""
    study = _example("restart_study")
    from pillow_psc import codec

    real = codec._start_finer, codec.auto_delta
    study.main(["--images", "kodim23", "--rates", "0.6", "--crop", "64", "--out", str(tmp_path)])
    assert (codec._start_finer, codec.auto_delta) == real
    a, b = [json.loads(line) for line in (tmp_path / "arms.jsonl").read_text().splitlines()]
    assert (a["arm"], b["arm"]) == ("A", "B") and a["effort"] == 1
    assert a["delta"] == pytest.approx(codec.auto_delta(0.6, math.inf), rel=1e-3)  # kodim23 is smooth: ignored
    assert a["texture"] == b["texture"] < codec.SMOOTH_TEXTURE
    assert b["delta"] == pytest.approx(a["delta"] / 2, rel=1e-3)
    assert len(a["first2"]) == 2 and a["remaining2"] > 0 and a["bpp"] <= 0.6 and b["bpp"] <= 0.6


@pytest.mark.parametrize("arm, factor", [("C", math.sqrt(2)), ("D", 0.5 / math.sqrt(2)), ("E", 2.0)])
def test_restart_study_other_arms_start_coarser_or_finer(tmp_path, arm, factor):
    """`--arms C` (D, E) encodes only that arm, which starts at its factor times the automatic step."""
    study = _example("restart_study")
    from pillow_psc import codec

    study.main(["--images", "kodim05", "--rates", "0.6", "--crop", "64", "--arms", arm, "--out", str(tmp_path)])
    record, = [json.loads(line) for line in (tmp_path / "arms.jsonl").read_text().splitlines()]
    assert record["arm"] == arm and record["bpp"] <= 0.6
    assert record["delta"] == pytest.approx(codec.automatic_step(0.6) * factor, rel=1e-3)


def test_restart_study_scores_a_rule_by_the_arm_it_picks(tmp_path):
    """A photo whose budget would take 10 steps gains by starting again, one that would take 3 loses: the pace (8
    steps at 0.1 bpp) picks the better arm on both, and pays arm A's two steps for the restart; the current rule
    starts the smooth one at half the step at once, without them."""
    study = _example("restart_study")
    records = []
    for name, second, a_psnr, b_psnr, texture in (("kodim02", 100, 28.0, 29.0, 0.06),
                                                  ("kodim05", 1000, 21.0, 20.0, 0.14)):
        common = {"image": name, "rate": 0.1, "effort": 1, "bpp": 0.1, "encode_s": 1.0, "delta": 0.8,
                  "texture": texture}
        records.append({**common, "arm": "A", "psnr": a_psnr, "evaluations": 256, "chunk_bytes": [900] + [300] * 8,
                        "first2": [200, second], "remaining2": 800 if second == 100 else 1000})
        records.append({**common, "arm": "B", "psnr": b_psnr, "evaluations": 160, "chunk_bytes": [900] * 6})
    (tmp_path / "arms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = study.summarise([tmp_path])
    assert "## 0.1 bpp, effort 1: 2 photos" in text
    assert "- oracle (the better arm): 25.000 dB, 240 evaluations, 1 start again" in text  # (160 + 64 + 256) / 2
    assert "- the pace alone (more than 8 steps): 25.000 dB, 240 evaluations, 1 start again" in text
    assert ("- current rule (texture below 0.085: half the step at once; else more than the pace): 25.000 dB, 208 "
            "evaluations, 1 start again") in text  # (160 + 256) / 2
    assert "- never start again: 24.500 dB, 256 evaluations, 0 start again" in text
    assert "| kodim05 | 3.0 | 0.1400 | -1.00 |" in text and "| kodim02 | 10.0 | 0.0600 | +1.00 |" in text


def test_restart_study_scores_busy_photos_at_low_rates_by_arm_c(tmp_path):
    """Below TEXTURE_RATE_BPP a busy photo starts one refinement coarser: the current rule takes its arm-C record,
    and is not scored while that record is missing."""
    study = _example("restart_study")
    common = {"image": "kodim08", "rate": 0.05, "effort": 1, "bpp": 0.05, "encode_s": 1.0, "texture": 0.16}
    records = [{**common, "arm": "A", "psnr": 17.6, "evaluations": 64, "chunk_bytes": [900, 600, 500], "delta": 0.8,
                "first2": [600, 500], "remaining2": 10},
               {**common, "arm": "B", "psnr": 17.2, "evaluations": 96, "chunk_bytes": [900] * 4, "delta": 0.4}]
    (tmp_path / "arms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "- current rule: not scored (1 busy photos start coarser; arm C missing)" in study.summarise([tmp_path])
    records.append({**common, "arm": "C", "psnr": 17.9, "evaluations": 96, "chunk_bytes": [900] * 4, "delta": 1.13})
    (tmp_path / "arms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = study.summarise([tmp_path])
    assert "arm C; else more than the pace): 17.900 dB, 96 evaluations, 0 start again" in text
    assert "| kodim08 | 2.0 | 0.1600 | -0.40 | +0.30 | | |\n" in text  # B, C, D and E (not run) against A


def test_restart_study_refuses_an_unknown_arm(tmp_path):
    with pytest.raises(SystemExit):
        _example("restart_study").main(["--arms", "AZ", "--out", str(tmp_path)])
    assert not (tmp_path / "arms.jsonl").exists()


def test_restart_study_decisions_stop_after_two_steps_and_name_the_records_to_redo(tmp_path):
    """`--decisions` reads what the restart test reads and puts the codec's own test back; `--against` lists the
    records whose choice (a step below the automatic one: started again) differs from the current rule's."""
    study = _example("restart_study")
    from pillow_psc import codec

    real = codec._start_finer
    study.main(["--decisions", "--images", "kodim23", "--rates", "0.6", "--crop", "64", "--out", str(tmp_path)])
    assert codec._start_finer is real
    record, = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    first2, remaining = record["first2"], record["remaining2"]
    assert record["steps"] == pytest.approx(2 + remaining / first2[1], abs=0.01)
    assert record["current"] == codec._start_finer(first2, remaining, codec.restart_pace(0.6, 4, (4.0,)))
    records = tmp_path / "records"
    records.mkdir()
    for delta in (codec.auto_delta(0.6, math.inf), codec.auto_delta(0.6, math.inf) / 2):
        (records / "psc.jsonl").write_text(json.dumps({"image": "kodim23", "rate": 0.6, "delta": delta}) + "\n")
        started_again = delta < codec.auto_delta(0.6, math.inf)
        assert study.stale(tmp_path, records) == ([] if started_again == record["current"] else ["0.6 kodim23"])
