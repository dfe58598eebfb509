"""The `psc` command line, called as main(argv)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pillow_psc import codec
from pillow_psc.cli import main
from pillow_psc.priors.ffdnet import FFDNetPrior

from conftest import kodak_crop, psnr


def test_encode_info_decode(tmp_path, capsys):
    src = tmp_path / "in.png"
    crop = kodak_crop("kodim23", (48, 40))
    Image.fromarray(crop).save(src)
    out = tmp_path / "out.psc"
    assert main(["encode", str(src), str(out), "--rate", "2", "--seed", "5", "--samples", "4"]) == 0
    assert out.stat().st_size * 8 <= 2 * 48 * 40
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["width"], info["height"], info["mode"], info["seed"], info["samples"]) == (48, 40, "RGB", 5, 4)
    assert info["steps"] >= 2 and info["truncated"] is False
    assert main(["info", str(out)]) == 0 and "model_sha256" in capsys.readouterr().out
    png = tmp_path / "dec.png"
    assert main(["decode", str(out), str(png), "--mode", "sample", "--steps", "2"]) == 0
    assert psnr(np.asarray(Image.open(png)), crop) > 18
    assert (info["coding"], info["precision"], info["format_version"]) == ("innovation", "float32", 11)
    assert info["output_sampler_steps"] == codec.OUTPUT_STEPS_FACTOR * info["sampler_steps"]
    assert info["coarse_sigma"] == pytest.approx(FFDNetPrior.coarse_sigma)  # the default effort's half-resolution level


def test_encode_paper_configuration(tmp_path, capsys):
    src, out = tmp_path / "in.png", tmp_path / "paper.psc"
    Image.fromarray(kodak_crop("kodim23", (16, 16))).save(src)
    assert main(["encode", str(src), str(out), "--max-bytes", "240", "--paper", "--samples", "3"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["coding"], info["samples"], info["sampler_steps"], info["output_samples"]) == ("raw", 3, 25, 64)
    assert info["output_sampler_steps"] == 25  # the paper samples its output like its steps
    assert info["coarse_sigma"] == 0.0  # and at full resolution


def test_encode_with_an_explicit_quantizer_step_and_precision(tmp_path, capsys):
    src, out = tmp_path / "in.png", tmp_path / "fine.psc"
    Image.fromarray(kodak_crop("kodim23", (16, 16))).save(src)
    assert main(["encode", str(src), str(out), "--max-bytes", "200", "--samples", "3", "--delta", "0.3"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["delta"] == pytest.approx(0.3)
    assert main(["encode", str(src), str(out), "--max-bytes", "200", "--samples", "3", "--precision", "bfloat16"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bfloat16"
    for bad in ("0", "-1", "nan"):
        assert main(["encode", str(src), str(tmp_path / "bad.psc"), "--delta", bad]) == 1
        assert "delta must be a positive" in capsys.readouterr().err
    assert not (tmp_path / "bad.psc").exists()


def test_errors_are_one_line_and_leave_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.psc"
    bad.write_bytes(b"not a psc file at all")
    target = tmp_path / "x.png"
    assert main(["decode", str(bad), str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("psc: error:") and err.count("\n") == 1
    assert not target.exists()
    assert main(["info", str(tmp_path / "missing.psc")]) == 1
    src = tmp_path / "in.png"
    Image.fromarray(kodak_crop("kodim23", (48, 40))).save(src)
    assert main(["encode", str(src), str(tmp_path / "y.psc"), "--max-bytes", "40"]) == 1
    assert not (tmp_path / "y.psc").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".psc-")], "temporary files must be removed"


def test_encode_effort_sets_the_evaluations_per_step(tmp_path, capsys):
    """--effort 1 takes two thirds of the prior's sampler steps (FFDNet: 6 -> 4), 3 rows per tile per step chosen
    among the directions of 6 samples at this rate (6.25 bpp; 4 below HIGH_RATE_BPP) and 2 output samples (one
    antithetic pair); --samples still wins."""
    src, out = tmp_path / "in.png", tmp_path / "fast.psc"
    Image.fromarray(kodak_crop("kodim23", (16, 16))).save(src)
    for argv, expected in ((["--effort", "1"], (6, 4, 2, [3.0])),
                           (["--effort", "2", "--samples", "3"], (3, 6, 4, [3.0]))):
        assert main(["encode", str(src), str(out), "--max-bytes", "200", *argv]) == 0
        capsys.readouterr()
        assert main(["info", str(out), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["samples"], info["sampler_steps"], info["output_samples"], info["rows_per_step"]) == expected
    with pytest.raises(SystemExit):
        main(["encode", str(src), str(out), "--effort", "4"])
