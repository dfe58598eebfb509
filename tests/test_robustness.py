"""A decode you can trust: strict desync handling, concurrent decodes, and a short fuzz campaign.

The long campaign (>= 10,000 cases) is a program, not a test: ``psc fuzz --cases 10000 --out DIR``.
"""

from __future__ import annotations

import io
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_psc
from pillow_psc import fuzz
from pillow_psc.errors import DesyncError

VECTORS = Path(__file__).resolve().parents[1] / "format_spec" / "vectors"


def test_strict_decode_raises_on_desync() -> None:
    data = (VECTORS / "desync_step2.psc").read_bytes()
    with pytest.warns(RuntimeWarning, match="step 2"):
        lenient = pillow_psc.decode_array(data, device="cpu")
    assert lenient.desync_step == 2 and lenient.steps_decoded == 2
    with pytest.raises(DesyncError, match="step 2"):
        pillow_psc.decode_array(data, device="cpu", strict=True)


def test_strict_option_reaches_pillow() -> None:
    data = (VECTORS / "desync_step2.psc").read_bytes()
    previous = pillow_psc.set_decode_options(strict=True, device="cpu")
    try:
        with Image.open(io.BytesIO(data)) as im, pytest.raises(DesyncError):
            im.load()
    finally:
        pillow_psc.set_decode_options(strict=previous.strict, device=previous.device)


def test_cli_strict_exits_nonzero_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pillow_psc.cli import main
    out = tmp_path / "out.png"
    assert main(["decode", "--strict", "--device", "cpu", str(VECTORS / "desync_step2.psc"), str(out)]) == 1
    assert "step 2" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_two_threads_decode_like_one() -> None:
    """Decoding different files concurrently gives the pixels of decoding them one by one."""
    names = ["rgb_33x21.psc", "gray_17x9.psc", "rgb_48x32_windows.psc", "la_15x15.psc"]
    files = [(VECTORS / n).read_bytes() for n in names]
    alone = [pillow_psc.decode_array(d, device="cpu").pixels for d in files]
    together: list[np.ndarray | None] = [None] * len(files)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            together[i] = pillow_psc.decode_array(files[i], device="cpu").pixels
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for _ in range(2):  # two rounds of two pairs of threads
        for pair in ((0, 1), (2, 3)):
            threads = [threading.Thread(target=run, args=(i,)) for i in pair]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        assert not errors
        for a, b in zip(alone, together):
            np.testing.assert_array_equal(a, b)


def test_fuzz_cases_are_reproducible() -> None:
    corpus = fuzz.load_corpus()
    a, b = fuzz.make_case(corpus, 7, 42), fuzz.make_case(corpus, 7, 42)
    assert a.data == b.data and a.description == b.description


@pytest.mark.parametrize("index", range(0, 60, 3))
def test_fuzz_case_in_process(index: int) -> None:
    """A slice of campaign 0, checked in this process (decode_array, Pillow open/load, psc info)."""
    case = fuzz.make_case(fuzz.load_corpus(), 0, index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fuzz.check_bytes(case.data, full=case.full, steps=fuzz.DEFAULT_STEPS)
    assert result["failure"] is None, (case.description, result["detail"])


def test_fuzz_campaign_in_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: spawned worker, time limit, report; a short sample with no failures. The worker's
    scratch folder is gone afterwards."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # for the spawned worker too
    monkeypatch.setattr(tempfile, "tempdir", None)
    report = fuzz.fuzz(40, seed=2024, out_dir=tmp_path / "out", time_limit=120)
    assert report["cases"] == 40
    assert report["failures"] == 0, fuzz.summary(report)
    assert sum(report["outcomes"].values()) == 40
    assert (tmp_path / "out" / "report.json").exists()
    assert list(scratch.iterdir()) == []


def test_fuzzer_splits_every_header_version_into_fields() -> None:
    """Header-field mutations need the fuzzer's own HEAD layout to match the format (versions 1 to 3)."""
    for path in sorted(VECTORS.glob("*.psc")):
        data = path.read_bytes()
        if data[12:16] != b"HEAD" or len(data) < 16 + int.from_bytes(data[8:12], "big") or data[16] > 3:
            continue  # vectors that are bad before or inside HEAD
        payload = data[16:16 + int.from_bytes(data[8:12], "big")]
        fields = fuzz.parse_head(payload)  # out-of-range values (huge_dimensions.psc, coding_unknown.psc) too
        assert fields is not None and fuzz.pack_head(fields) == payload, path.name
