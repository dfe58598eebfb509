"""`psc bench`: the Bjøntegaard rate, the quality bisection, and one tiny end-to-end run through the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pillow_psc.bench import PSC_BUDGET, QUICK, baseline_codecs, bd_rate, fit_quality, options_from_args
from pillow_psc.cli import build_parser, main
from pillow_psc.codec import PAPER_CONFIG

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
            "--codecs", "psc", "psc_paper", "webp", "--samples", "4", "--sampler-steps", "3", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "rd_psnr.png").stat().st_size > 1000
    assert not (tmp_path / "rd_ms_ssim.png").exists()  # MS-SSIM is undefined on 48 px crops
    assert set(report["results"]) == {"psc", "psc_paper", "webp"} and report["skipped"] == {}
    assert report["config"]["psc_config"]["samples"] == 4
    paper_config = report["config"]["psc_paper_config"]  # the paper's settings, with the explicit overrides
    assert (paper_config["coding"], paper_config["samples"], paper_config["output_samples"]) == ("raw", 4, 64)
    for name, per_image in report["results"].items():
        (point,) = per_image["kodim23"]
        assert point["bpp"] <= 1.5 and point["psnr"] > 25 and point["ms_ssim"] is None
        assert point["enc_s"] > 0 and point["dec_s"] > 0
        assert report["mean"][name][0]["bpp"] == point["bpp"]
    assert report["results"]["psc"]["kodim23"][0]["steps"] >= 2
    assert report["bd_rate"]["webp"]["psnr"]["value"] is None  # one point per curve: no fit
    assert set(report["bd_rate"]) == {"psc_paper", "webp"}
    paper = report["results"]["psc_paper"]["kodim23"][0]  # the paper-faithful point: mean decode only
    assert "psnr_sample" not in paper and paper["dec_evals"] > 0
    assert {"cpu", "cpu_count", "torch_threads", "device", "peak_rss_mib"} <= set(report["machine"])
    assert report["versions"]["torch"] and report["versions"]["pillow:libwebp"]
    assert report["command"].startswith("psc bench --kodak")
    # both decode modes come from real decodes of the file; costs are counted
    psc = report["results"]["psc"]["kodim23"][0]
    assert psc["psnr_sample"] > 20 and psc["psnr_sample"] != psc["psnr"] and psc["dec_sample_s"] > 0
    assert psc["enc_evals"] > 0 and psc["dec_evals"] > 0 and psc["enc_peak_rss_mib"] > 50
    assert report["mean"]["psc_sample"][0]["psnr"] == psc["psnr_sample"]
    rows = (tmp_path / "bench.csv").read_text().splitlines()
    assert rows[0].startswith("codec,image,target_bpp") and len(rows) == 4
    # the progressive strip: PSC prefixes with WebP at the same sizes
    assert (tmp_path / "progressive.png").stat().st_size > 1000
    columns = report["progressive"]
    assert len(columns) >= 2 and [c["bytes"] for c in columns] == sorted(c["bytes"] for c in columns)
    assert columns[-1]["PSC"]["psnr"] >= columns[0]["PSC"]["psnr"] and "WebP" in columns[0]
    table = capsys.readouterr().out
    assert table.startswith("| codec |") and "| PSC (mean) | 1.5 |" in table and "| WebP | 1.5 |" in table
    assert "| PSC (sample) | 1.5 |" in table


@pytest.mark.parametrize("extra, effort, samples, paper_samples", [
    ([], QUICK["config"].effort, QUICK["config"].samples, QUICK["config"].samples),  # the quick sampler budget on both PSC curves
    (["--effort", "1"], 1, None, None),  # the effort's budget instead, on both
    (["--effort", "1", "--samples", "6"], 1, 6, 6),  # explicit settings still win
])
def test_bench_quick_effort_replaces_the_quick_sampler_budget(extra, effort, samples, paper_samples):
    args = build_parser().parse_args(["bench", "--kodak", str(kodak_dir()), "--quick", *extra])
    opts = options_from_args(args)
    assert (opts.config.effort, opts.config.samples, opts.config.coding) == (effort, samples, "innovation")
    paper = opts.paper_config
    assert (paper.effort, paper.samples, paper.coding) == (effort, paper_samples, "raw")
    # the paper's sampler, on PSC's budget
    assert (paper.extrapolation, paper.coarse_sigma, paper.sigma_min) == (0, 0, 0)
    assert opts.crop == QUICK["crop"] and opts.images == list(QUICK["images"])


def test_bench_full_run_effort_leaves_the_paper_settings_alone():
    args = build_parser().parse_args(["bench", "--kodak", str(kodak_dir()), "--images", "kodim23", "--effort", "1"])
    opts = options_from_args(args)
    assert opts.config.effort == 1 and opts.paper_config == PAPER_CONFIG  # no half resolution in the paper's sampler


@pytest.mark.parametrize("argv, budget", [
    (["--images", "kodim23", "--effort", "2", "--paper-budget", "psc"], {"effort": 2, "samples": None}),
    (["--quick", "--paper-budget", "paper"], {"effort": PAPER_CONFIG.effort, "samples": 16}),
])
def test_bench_paper_budget_chooses_whose_sampler_budget_the_paper_curve_gets(argv, budget):
    args = build_parser().parse_args(["bench", "--kodak", str(kodak_dir()), *argv])
    paper = options_from_args(args).paper_config
    assert {k: getattr(paper, k) for k in budget} == budget
    assert dataclasses.replace(paper, **{k: getattr(PAPER_CONFIG, k) for k in PSC_BUDGET}) == PAPER_CONFIG


def test_bench_regenerates_the_readme_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Results\n<!-- psc-bench:begin -->\nold numbers\n<!-- psc-bench:end -->\n\nafter\n")
    argv = ["bench", "--kodak", str(kodak_dir()), "--images", "kodim23", "--crop", "32", "--rates", "1", "2",
            "--codecs", "jpeg", "webp", "--out", str(tmp_path / "out"), "--readme", str(readme)]
    assert main(argv) == 0
    text = readme.read_text()
    assert "old numbers" not in text and text.endswith("after\n") and text.count("<!-- psc-bench:") == 2
    assert "Generated by `psc bench --kodak" in text and "![rd_psnr](out/rd_psnr.png)" in text
    assert "| JPEG | 2 |" in text


def test_bench_refuses_a_readme_without_the_block_before_running(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no block\n")
    argv = ["bench", "--kodak", str(kodak_dir()), "--images", "kodim23", "--crop", "32", "--rates", "1",
            "--codecs", "webp", "--out", str(tmp_path / "out"), "--readme", str(readme)]
    assert main(argv) == 1
    assert "psc-bench:begin" in capsys.readouterr().err and not (tmp_path / "out" / "bench.json").exists()
    assert readme.read_text() == "# no block\n"


def test_missing_codec_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr("pillow_psc.bench.features.check", lambda feature: False)
    argv = ["bench", "--kodak", str(kodak_dir()), "--images", "kodim23", "--crop", "32", "--rates", "2",
            "--codecs", "webp", "jxl", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert "WebP" in report["skipped"]["webp"] and list(report["results"]) == ["jxl"]
