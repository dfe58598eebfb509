"""`psc bench`: the Bjøntegaard rate, the quality bisection, and one tiny end-to-end run through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pillow_psc.bench import baseline_codecs, bd_rate, fit_quality
from pillow_psc.cli import main

from conftest import kodak_crop, kodak_dir


def test_bd_rate_of_a_curve_that_needs_10_percent_fewer_bits():
    # log-rate linear in PSNR; the test curve is sampled at other PSNRs but is 0.9x the reference everywhere
    ref_psnr, test_psnr = np.array([28.0, 31, 34, 37]), np.array([29.0, 32, 35, 38])
    rate = lambda p: np.exp(-6 + 0.2 * p)  # noqa: E731
    result = bd_rate(list(rate(ref_psnr)), list(ref_psnr), list(0.9 * rate(test_psnr)), list(test_psnr))
    assert result["value"] == pytest.approx(-10.0, abs=1e-6)
    assert result["fit_degree"] == 3
    worse = bd_rate(list(rate(ref_psnr)), list(ref_psnr), list(1.25 * rate(ref_psnr)), list(ref_psnr))
    assert worse["value"] == pytest.approx(25.0, abs=1e-6)


def test_bd_rate_without_overlap_or_points_is_null_with_a_reason():
    apart = bd_rate([0.1, 0.2], [20.0, 22.0], [0.3, 0.4], [30.0, 32.0])
    assert apart["value"] is None and "overlap" in apart["reason"]
    single = bd_rate([0.1, 0.2], [20.0, 22.0], [0.1], [21.0])
    assert single["value"] is None and single["reason"]


def test_bisection_lands_just_under_the_target_rate():
    webp = baseline_codecs()[0]["webp"]
    pixels = kodak_crop("kodim23", (64, 64))
    for bpp in (0.5, 1.0):
        budget = int(bpp * 64 * 64 / 8)
        quality, data = fit_quality(webp, pixels, budget)
        assert 0.9 * budget <= len(data) <= budget
        assert len(webp.encode(pixels, quality + 1)) > budget  # one quality step up would overshoot
    quality, data = fit_quality(webp, pixels, 10)  # unreachable: the smallest file, flagged by the caller
    assert quality == webp.low and len(data) > 10


def test_bench_cli_writes_json_and_plot(tmp_path, capsys):
    argv = ["bench", "--kodak", str(kodak_dir()), "--images", "kodim23", "--crop", "48", "--rates", "1.5",
            "--codecs", "psc", "webp", "--samples", "4", "--sampler-steps", "3", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "rd_psnr.png").stat().st_size > 1000
    assert not (tmp_path / "rd_ms_ssim.png").exists()  # MS-SSIM is undefined on 48 px crops
    assert set(report["results"]) == {"psc", "webp"} and report["skipped"] == {}
    assert report["config"]["psc_config"]["samples"] == 4
    for name, per_image in report["results"].items():
        (point,) = per_image["kodim23"]
        assert point["bpp"] <= 1.5 and point["psnr"] > 25 and point["ms_ssim"] is None
        assert point["enc_s"] > 0 and point["dec_s"] > 0
        assert report["mean"][name][0]["bpp"] == point["bpp"]
    assert report["results"]["psc"]["kodim23"][0]["steps"] >= 2
    assert report["bd_rate"]["webp"]["psnr"]["value"] is None  # one point per curve: no fit
    assert {"cpu_count", "torch", "torch_threads", "device", "peak_rss_mib"} <= set(report["machine"])
    table = capsys.readouterr().out
    assert table.startswith("| codec |") and "| PSC | 1.5 |" in table and "| WebP | 1.5 |" in table


def test_missing_codec_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr("pillow_psc.bench.features.check", lambda feature: False)
    argv = ["bench", "--kodak", str(kodak_dir()), "--images", "kodim23", "--crop", "32", "--rates", "2",
            "--codecs", "webp", "jxl", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert "WebP" in report["skipped"]["webp"] and list(report["results"]) == ["jxl"]
