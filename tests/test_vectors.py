"""Conformance vectors (format_spec/vectors): expected decodes, documented errors, truncation behaviour.

``pytest tests/test_vectors.py --regen-vectors`` rebuilds the folder (format_spec/make_vectors.py) first. The
expected decodes (vectors/expected/*.png) are the reference build's; another CPU or library build conforms when it
decodes the same steps to pixels within expected.json's `pixel_tolerance` of them (PSC.md §11, §16). A file with
precision bfloat16 may instead stop early with a reported desync, where other bfloat16 kernels run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError

import pillow_psc
from pillow_psc import container, errors

SPEC = Path(__file__).resolve().parents[1] / "format_spec"
VECTORS = SPEC / "vectors"
EXPECTED = VECTORS / "expected.json"
DOCUMENTED_PREFIX_ERRORS = (errors.NoDataError, errors.CorruptFileError, errors.NotPSCError)
PSNR_TOLERANCE_DB = 0.5  # a new complete step may cost at most this much PSNR (posterior sampling noise)


def _load(name: str):
    """The spec's tools (format_spec/*.py) by file path: format_spec is not a package."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SPEC / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


make_vectors = _load("make_vectors")
entropy_ref = _load("psc_entropy_ref")


def _names() -> list[str]:
    try:
        return list(json.loads(EXPECTED.read_text())["files"])
    except (OSError, ValueError, KeyError):
        return []


NAMES = _names()
_state = {"regenerated": False}


@pytest.fixture(autouse=True)
def _default_decode_options():
    previous = pillow_psc.set_decode_options(mode="mean", steps=None, device="cpu")
    yield
    pillow_psc.set_decode_options(**dataclasses.asdict(previous))


@pytest.fixture(scope="module")
def expected(request: pytest.FixtureRequest) -> dict:
    """expected.json, rebuilt first (once per run) under --regen-vectors (the `regen_vectors` option)."""
    if request.config.getoption("--regen-vectors") and not _state["regenerated"]:
        make_vectors.build_vectors(VECTORS)
        _state["regenerated"] = True
    return json.loads(EXPECTED.read_text())


def _sha(pixels: np.ndarray | bytes) -> str:
    raw = pixels if isinstance(pixels, bytes) else np.ascontiguousarray(pixels).tobytes()
    return hashlib.sha256(raw).hexdigest()


def _decode(data: bytes, **kwargs) -> tuple[pillow_psc.Decoded, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dec = pillow_psc.decode_array(data, mode="mean", device="cpu", **kwargs)
    return dec, [w for w in caught if issubclass(w.category, RuntimeWarning)]


# -- the folder itself --------------------------------------------------------------------------------------------
def test_regen_flag(regen_vectors: bool, expected: dict) -> None:
    assert _state["regenerated"] == regen_vectors
    assert set(expected["files"]) == set(NAMES) or regen_vectors, "expected.json changed under the test run"


def test_folder_matches_expected(expected: dict) -> None:
    files = expected["files"]
    assert expected["format_version"] == container.FORMAT_VERSION
    assert sorted(p.name for p in VECTORS.glob("*.psc")) == sorted(files)
    decodable = [n for n, e in files.items() if e["outcome"] == "image"]
    assert sorted(VECTORS.glob("expected/*.png")) == sorted(make_vectors.expected_decode_path(VECTORS, n)
                                                            for n in decodable)
    kinds = {e["outcome"] for e in files.values()}
    assert kinds == {"image", "error"}
    for name, entry in files.items():
        data = (VECTORS / name).read_bytes()
        assert len(data) == entry["size"], name
        assert hashlib.sha256(data).hexdigest() == entry["file_sha256"], f"{name} was modified"
        if "same_pixels_as" in entry:
            assert entry["pixels_sha256"] == files[entry["same_pixels_as"]]["pixels_sha256"], name
    modes = {e["mode"] for e in files.values() if e["outcome"] == "image"}
    assert {"L", "LA", "RGB", "RGBA"} <= modes
    errors_covered = {e["error"] for e in files.values() if e["outcome"] == "error"}
    assert {"NotPSCError", "CorruptFileError", "UnsupportedFileError", "NoDataError",
            "ModelMismatchError"} <= errors_covered


# -- golden decodes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_decode_array(name: str, expected: dict) -> None:
    entry = expected["files"][name]
    data = (VECTORS / name).read_bytes()
    if entry["outcome"] == "error":
        cls = getattr(errors, entry["error"])
        with pytest.raises(cls) as info:
            pillow_psc.decode_array(data, mode="mean", device="cpu")
        assert type(info.value).__name__ == entry["error"]
        assert isinstance(info.value, OSError)
        return
    dec, warned = _decode(data)
    h = dec.header
    assert (h.width, h.height, h.mode) == (entry["width"], entry["height"], entry["mode"])
    assert dec.steps_present == entry["steps_present"]
    assert dec.truncated == entry["truncated"]
    channels = len(entry["mode"])
    assert dec.pixels.dtype == np.uint8
    assert dec.pixels.shape == ((h.height, h.width) if channels == 1 else (h.height, h.width, channels))
    _assert_conforms(name, expected, dec.pixels, dec.steps_decoded, dec.desync_step, bool(warned))


def _assert_conforms(name: str, expected: dict, pixels: np.ndarray, steps: int, desync_step: int | None,
                     warned: bool) -> None:
    """The decode matches the entry: its steps, desync and warning, and pixels within the tolerance (PSC.md §16).

    A bfloat16 file decoded with other bfloat16 kernels than the reference build's may instead stop at a step
    whose check fails, with the documented warning (PSC.md §11)."""
    entry = expected["files"][name]
    if entry["precision"] == "bfloat16" and desync_step is not None and entry["desync_step"] is None:
        assert warned and 1 <= desync_step == steps < entry["steps"], (name, steps, desync_step)
        return
    assert (steps, desync_step, warned) == (entry["steps"], entry["desync_step"],
                                            entry.get("warning") == "RuntimeWarning")
    want = make_vectors.read_expected_decode(VECTORS, name)
    assert _sha(want) == entry["pixels_sha256"], f"{name}: the expected decode does not match expected.json"
    assert pixels.shape == want.shape
    worst = int(np.abs(pixels.astype(np.int16) - want).max())
    assert worst <= expected["pixel_tolerance"], f"{name}: a sample is {worst} off the expected decode"


def test_conformance_rejects_pixels_beyond_the_tolerance(expected: dict) -> None:
    """The tolerance is a bound, not a pass: one sample one level beyond it fails, as do missing steps."""
    name = "rgb_16x16.psc"
    entry = expected["files"][name]
    pixels = make_vectors.read_expected_decode(VECTORS, name).copy()
    _assert_conforms(name, expected, pixels, entry["steps"], None, False)
    pixels[3, 5, 1] = pixels[3, 5, 1] + expected["pixel_tolerance"] + 1 if pixels[3, 5, 1] < 128 else \
        pixels[3, 5, 1] - expected["pixel_tolerance"] - 1
    with pytest.raises(AssertionError, match="off the expected decode"):
        _assert_conforms(name, expected, pixels, entry["steps"], None, False)
    with pytest.raises(AssertionError):  # an fp32 file must decode every step, a desync is a failure
        _assert_conforms(name, expected, pixels, entry["steps"] - 1, entry["steps"] - 1, True)


@pytest.mark.parametrize("name", NAMES)
def test_pillow(name: str, expected: dict) -> None:
    entry = expected["files"][name]
    path = VECTORS / name
    if entry["outcome"] == "error":
        want = UnidentifiedImageError if entry["pillow_error"] == "UnidentifiedImageError" \
            else getattr(errors, entry["pillow_error"])
        if entry["pillow_stage"] == "open":
            with pytest.raises(OSError) as info:
                Image.open(path)
        else:
            with Image.open(path) as im:
                assert im.format == "PSC"
                with pytest.raises(OSError) as info:
                    im.load()
        assert isinstance(info.value, want), (name, type(info.value))
        return
    with Image.open(path) as im:
        assert im.format == "PSC"
        assert im.size == (entry["width"], entry["height"]) and im.mode == entry["mode"]
        assert im.info["steps"] == entry["steps_present"]
        assert im.info["truncated"] == entry["truncated"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            im.load()
        pixels = np.asarray(im)
        _assert_conforms(name, expected, pixels, im.info["steps_decoded"], im.info.get("desync_step"),
                         any(issubclass(w.category, RuntimeWarning) for w in caught))


def test_pillow_before_first_data_chunk(expected: dict) -> None:
    """Without a complete DATA chunk Pillow's open or load raises OSError (UnidentifiedImageError included)."""
    for name, entry in expected["files"].items():
        if entry["outcome"] == "error" and entry["error"] in ("NoDataError", "NotPSCError"):
            with pytest.raises(OSError):
                with Image.open(VECTORS / name) as im:
                    im.load()


def test_metadata_and_alpha(expected: dict) -> None:
    data = (VECTORS / "rgba_24x16.psc").read_bytes()
    psc = container.read_file(data)
    assert set(psc.metadata) == {"icc_profile", "exif", "xmp"}
    with Image.open(io.BytesIO(data)) as im:
        assert im.info["icc_profile"] == psc.metadata["icc_profile"] and im.info["xmp"] == psc.metadata["xmp"]
    src = make_vectors.SOURCES[[s.name for s in make_vectors.SOURCES].index("rgba_24x16.psc")]
    dec, _ = _decode(data)
    assert np.array_equal(dec.pixels[:, :, 3], make_vectors.source_pixels(src)[:, :, 3]), "alpha is lossless"
    missing, _ = _decode((VECTORS / "alpha_missing.psc").read_bytes())
    assert (missing.pixels[:, :, 3] == 255).all()
    assert np.array_equal(missing.pixels[:, :, :3], dec.pixels[:, :, :3])


# -- the spec's entropy section, checked with an independent decoder ----------------------------------------------
def _base_levels(header, params: bytes) -> tuple[int, list[int]]:
    """Per-symbol levels of DATA step 0, from PSC.md alone (FFDNet priors: C = colour channels, downscale 1)."""
    c = header.channels
    rows, cols = -(-header.height // header.tile), -(-header.width // header.tile)
    bands = [[int(np.floor(np.log2(1.0 + np.sqrt(fy * fy + fx * fx)))) for fx in range(cols)] for fy in range(rows)]
    n_bands = max(max(r) for r in bands) + 1
    assert len(params) == 1 + c * n_bands
    band_levels = np.frombuffer(params[1:], dtype=np.int8).reshape(c, n_bands)
    return c * rows * cols, [int(band_levels[ch][bands[y][x]]) for ch in range(c) for y in range(rows)
                             for x in range(cols)]


def test_reference_entropy_decoder_on_base_layers(expected: dict) -> None:
    from pillow_psc import entropy
    for name, entry in expected["files"].items():
        if entry["outcome"] != "image" or "source" not in entry:
            continue
        psc = container.read_file((VECTORS / name).read_bytes())
        base = psc.data[0]
        count, levels = _base_levels(psc.header, base.params)
        assert base.rows == count
        mine = entropy_ref.range_decode(base.words, levels)
        assert mine == entropy.decode(base.words, np.array(levels)).tolist(), name


def test_reference_entropy_decoder_round_trip() -> None:
    from pillow_psc import entropy, quantize
    assert entropy_ref.symbol_values() == quantize.VALUES.tolist()
    rng = np.random.default_rng(1)
    for trial in range(40):
        n = int(rng.integers(1, 200))
        levels = rng.integers(-128, 128, n) if trial % 4 == 0 else rng.integers(-24, 73, n)
        sigma = 2.0 ** (np.clip(levels, -24, 72) / 4)
        symbols = quantize.quantize(rng.standard_normal(n) * sigma * np.where(rng.random(n) < 0.05, 8, 1), 1.0)
        words = entropy.encode(symbols, levels)
        assert entropy_ref.range_decode(words, levels) == symbols.tolist(), trial


def test_entropy_tables_hash_in_spec(expected: dict) -> None:
    digest = make_vectors.entropy_tables_sha256()
    assert expected["entropy_tables_sha256"] == digest
    assert digest in (SPEC / "PSC.md").read_text(), "PSC.md quotes another entropy table hash"


def test_worked_example_in_spec_is_current() -> None:
    text = (SPEC / "PSC.md").read_text()
    dump = make_vectors.worked_example_markdown(VECTORS)
    assert dump in text, "PSC.md's worked hex dump is stale: run make_vectors.py (or pytest --regen-vectors)"


# -- every prefix of a file ---------------------------------------------------------------------------------------
def test_every_prefix(expected: dict) -> None:
    """Each prefix raises a documented error or decodes at the right size; steps never decrease; PSNR holds."""
    name = "rgb_16x16.psc"
    entry = expected["files"][name]
    data = (VECTORS / name).read_bytes()
    src = entry["source"]
    original = make_vectors._conftest().kodak_crop(src["kodak"], tuple(src["crop"]), src["mode"])
    by_steps: dict[int, list[int]] = {}
    last_steps = -1
    for n in range(len(data) + 1):
        prefix = data[:n]
        try:
            k = len(container.read_file(prefix).data)
        except DOCUMENTED_PREFIX_ERRORS as exc:
            with pytest.raises(type(exc)):  # decode_array fails the same way, before any model is loaded
                pillow_psc.decode_array(prefix, device="cpu")
            k = 0
        else:
            if k == 0:
                with pytest.raises(errors.NoDataError):
                    pillow_psc.decode_array(prefix, device="cpu")
        assert k >= last_steps, f"prefix {n}: {k} steps after {last_steps}"
        last_steps = k
        try:  # Pillow reads the header only: it must either refuse or report the right size and step count
            with Image.open(io.BytesIO(prefix)) as im:
                assert im.size == (entry["width"], entry["height"]) and im.info["steps"] == k
        except OSError:
            assert k == 0, f"Pillow refused prefix {n} that holds {k} complete steps"
        if k:
            by_steps.setdefault(k, []).append(n)
    assert sorted(by_steps) == list(range(1, entry["steps"] + 1))
    psnrs = []
    for k, lengths in sorted(by_steps.items()):
        first, _ = _decode(data[:lengths[0]])
        last, _ = _decode(data[:lengths[-1]])
        assert first.pixels.shape == (entry["height"], entry["width"], 3)
        assert first.steps_decoded == k and np.array_equal(first.pixels, last.pixels), k
        psnrs.append(make_vectors._conftest().psnr(first.pixels, original))
    _assert_conforms(name, expected, last.pixels, last.steps_decoded, last.desync_step, False)
    for k in range(1, len(psnrs)):
        assert psnrs[k] >= psnrs[k - 1] - PSNR_TOLERANCE_DB, f"step {k + 1}: PSNR {psnrs}"
    assert psnrs[-1] > psnrs[0]


@pytest.mark.parametrize("name, version, legacy_calls", [("v7_rgb_32x32_coarse.psc", 7, True),
                                                         ("rgb_32x32_coarse.psc", container.FORMAT_VERSION, False)])
def test_half_resolution_upsamples_as_the_file_version_says(name: str, version: int, legacy_calls: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """PSC.md §6.9, §15: version 7 upsamples with torch's F.interpolate, version 8 on elementwise."""
    from pillow_psc import codec
    calls = []

    def recorded(x):
        calls.append(x.shape)
        return pillow_psc.samplers.upsample_bilinear_v7(x)

    monkeypatch.setattr(codec, "upsample_bilinear_v7", recorded)
    data = (VECTORS / name).read_bytes()
    assert container.read_file(data).header.version == version
    pillow_psc.decode_array(data, device="cpu")
    assert bool(calls) == legacy_calls


@pytest.mark.parametrize("name, version, mirrored", [("v8_rgb_33x21.psc", 8, False),
                                                     ("rgb_33x21.psc", container.FORMAT_VERSION, True)])
def test_output_samples_pair_up_as_the_file_version_says(name: str, version: int, mirrored: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """PSC.md §6.9, §15: from version 9 the output's odd samples take the negated noise of the sample before them;
    the steps' samples, and every sample of a version-8 file, draw their own."""
    from pillow_psc import codec
    draws: list[list[torch.Tensor]] = []

    def recording(denoise, project, start, sigmas, noise, eta, extrapolation):
        calls: list[torch.Tensor] = []
        draws.append(calls)

        def recorded_noise(i: int) -> torch.Tensor:
            calls.append(noise(i))
            return calls[-1]

        return real(denoise, project, start, sigmas, recorded_noise, eta, extrapolation)

    real = codec.sample_projected
    monkeypatch.setattr(codec, "sample_projected", recording)
    data = (VECTORS / name).read_bytes()
    header = container.read_file(data).header
    assert header.version == version and header.output_samples == 2 and len(draws) == 0
    pillow_psc.decode_array(data, device="cpu")
    *steps, output = draws  # one window: the last sampling is the output's
    assert len(output) == header.output_sampler_steps and len(steps) >= 1
    assert all(torch.equal(e[1], -e[0]) == mirrored for e in output)
    assert not any(torch.equal(e[1], -e[0]) for calls in steps for e in calls)


@pytest.mark.parametrize("name, version", [("v9_rgb_33x21.psc", 9), ("rgb_33x21.psc", container.FORMAT_VERSION)])
@pytest.mark.parametrize("mode", ["mean", "sample"])
def test_output_noise_levels_end_where_the_file_version_and_mode_say(name: str, version: int, mode: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """PSC.md §6.9, §6.12: from version 10 the `mean` output's samples stop at mean_sigma_min (above sigma_min);
    the `sample` output, the steps, and a version-9 file's outputs run down to sigma_min."""
    from pillow_psc import codec
    levels: list[list[float]] = []

    def recording(denoise, project, start, sigmas, noise, eta, extrapolation):
        levels.append(sigmas)
        return real(denoise, project, start, sigmas, noise, eta, extrapolation)

    real = codec.sample_projected
    monkeypatch.setattr(codec, "sample_projected", recording)
    data = (VECTORS / name).read_bytes()
    header = container.read_file(data).header
    assert header.version == version
    pillow_psc.decode_array(data, mode=mode, device="cpu")
    *steps, output = levels  # one window: the last sampling is the output's
    assert all(s == codec.karras_sigmas(header.sampler_steps, header.sigma_max, header.sigma_min) for s in steps)
    lowest = header.mean_sigma_min if mode == "mean" else header.sigma_min
    assert output == codec.karras_sigmas(header.output_sampler_steps, header.sigma_max, lowest)
    assert (lowest > header.sigma_min) == (mode == "mean" and version >= 10)
