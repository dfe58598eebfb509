"""The PSC codec end to end on the default prior (FFDNet), on real Kodak crops."""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import pillow_psc
from pillow_psc import codec, entropy
from pillow_psc.container import read_file
from pillow_psc.priors.ffdnet import FFDNetPrior
from pillow_psc.quantize import dequantize, quantize

from conftest import FAST, kodak_crop, kodak_dir, psnr


@pytest.fixture(scope="module")
def crop64() -> np.ndarray:
    return kodak_crop("kodim23", (64, 64))


@pytest.fixture(scope="module")
def encoded64(crop64):
    return codec.encode(crop64, rate=0.6, config=FAST)


def test_rate_is_respected_and_quality_beats_the_base_layer(encoded64, crop64):
    assert len(encoded64.data) * 8 / crop64[..., 0].size <= 0.6
    assert encoded64.steps >= 2
    full = codec.decode_array(encoded64.data)
    base = codec.decode_array(encoded64.data, steps=1)
    assert full.steps_decoded == encoded64.steps and base.steps_decoded == 1
    assert psnr(full.pixels, crop64) > psnr(base.pixels, crop64) + 1.0


def test_encoding_is_deterministic(encoded64, crop64):
    assert codec.encode(crop64, rate=0.6, config=FAST).data == encoded64.data


def test_decoder_reproduces_the_encoders_reconstruction(encoded64):
    assert np.array_equal(codec.decode_array(encoded64.data).pixels, encoded64.reconstruct("mean"))
    assert np.array_equal(codec.decode_array(encoded64.data, mode="sample").pixels, encoded64.reconstruct("sample"))


def test_working_in_chunks_changes_nothing(crop64, encoded64, monkeypatch):
    """Large images orthonormalise a few tiles and take dot products a few rows at a time (bounded memory); the
    bits and the pixels must not depend on it."""
    monkeypatch.setattr(codec, "ORTHONORMALISE_CHUNK_TILES", 3)  # 16 tiles: 6 chunks
    monkeypatch.setattr(codec, "DOT_CHUNK_ROWS", 5)
    encoded = codec.encode(crop64, rate=0.6, config=FAST)
    assert encoded.data == encoded64.data
    assert len(encoded.state.row_blocks) == encoded.steps  # one block per step: rows are never copied together
    assert np.array_equal(codec.decode_array(encoded.data).pixels, encoded64.reconstruct("mean"))


def test_effort_sets_samples_sampler_steps_output_samples_coarse_sigma_and_rows_unless_given(crop64, monkeypatch):
    """Effort picks the evaluations per step (samples x a share of the prior's sampler steps), the output
    samples, whether high noise levels are denoised at half resolution and the rows per tile per step; the default
    effort is the fastest (4 samples of two thirds of the prior's sampler steps, first level at half resolution,
    3 rows per tile per step; 6 samples for those 3 rows from HIGH_RATE_BPP up, as at effort 2); explicit values
    win; an unknown effort is refused."""
    small = crop64[:16, :16]  # 200 bytes: 6.25 bpp
    coarse = np.float32(FFDNetPrior.coarse_sigma)

    def settings(config: codec.CodecConfig) -> tuple:
        h = read_file(codec.encode(small, max_bytes=200, config=config).data).header
        return h.samples, h.sampler_steps, h.output_samples, h.coarse_sigma, h.rows_per_step

    for effort, expected in ((1, (6, 4, 2, coarse, [3.0])), (2, (6, 6, 4, coarse, [3.0])),
                             (3, (6, 12, 4, coarse, [3.0]))):
        assert settings(codec.CodecConfig(effort=effort)) == expected
    monkeypatch.setattr(codec, "HIGH_RATE_BPP", 6.5)
    assert settings(codec.CodecConfig())[0] == settings(codec.CodecConfig(effort=2))[0] == 4
    assert codec.CodecConfig().effort == codec.DEFAULT_EFFORT == 1
    explicit = codec.CodecConfig(effort=1, samples=3, sampler_steps=2, output_samples=6, coarse_sigma=0.0,
                                 rows_per_step=(1.5, 2.0))
    assert settings(explicit) == (3, 2, 6, 0.0, [1.5, 2.0])
    with pytest.raises(ValueError, match="effort must be one of 1, 2, 3"):
        codec.encode(small, max_bytes=200, config=codec.CodecConfig(effort=0))


def test_samples_stop_at_the_prior_s_level_halved_on_smooth_photos_unless_given(crop64):
    """Where the steps' samples (header sigma_min) and the `mean` output's (mean_sigma_min, PSC.md §6.12) stop is
    the prior's level, half of it on a smooth photo from TEXTURE_RATE_BPP on, unless the config gives one. 0 means
    the prior's sigma_min for the steps and the file's sigma_min for the mean, as in the paper's configuration; the
    mean's level is never below the file's sigma_min."""
    smooth, f32 = crop64[:16, :16], lambda v: float(np.float32(v))
    busy = np.repeat(np.indices((16, 16)).sum(0)[:, :, None] % 2 * 255, 3, 2).astype(np.uint8)  # a checkerboard
    assert codec.block_texture(busy) >= codec.SMOOTH_TEXTURE > codec.block_texture(smooth)

    def written(pixels=busy, **settings) -> tuple[float, float]:
        header = read_file(codec.encode(pixels, max_bytes=200, config=codec.CodecConfig(**settings)).data).header
        return header.mean_sigma_min, header.sigma_min

    level, floor = FFDNetPrior.stop_sigma, f32(FFDNetPrior.sigma_min)
    assert level / 2 > FFDNetPrior.sigma_min
    assert written() == (f32(level), f32(level)) and written(smooth) == (f32(level / 2), f32(level / 2))
    below = codec.TEXTURE_RATE_BPP * 0.99  # below it smooth photos take it whole
    assert codec.auto_stop_sigma(FFDNetPrior, below, 0.0) == level
    assert codec.auto_stop_sigma(FFDNetPrior, codec.TEXTURE_RATE_BPP, 0.0) == level / 2
    assert written(smooth, mean_sigma_min=0.2) == (f32(0.2), f32(level / 2))
    assert written(sigma_min=0) == (f32(level), floor) and written(sigma_min=0, mean_sigma_min=0) == (floor, floor)
    assert written(mean_sigma_min=0) == (f32(level), f32(level))
    assert written(sigma_min=0.2) == (f32(0.2), f32(0.2))  # above the prior's level
    assert codec.PAPER_CONFIG.sigma_min == codec.PAPER_CONFIG.mean_sigma_min == 0


def test_extrapolation_is_written_and_drives_the_sampler(crop64, monkeypatch):
    """The sampler's second-order weight (PSC.md §6.9) is the encoder's EXTRAPOLATION unless the config gives one;
    the paper's configuration samples first order; the decoder passes the file's weight to the sampler."""
    pixels, f32 = crop64[:16, :16], lambda v: float(np.float32(v))

    def written(**settings) -> float:
        data = codec.encode(pixels, max_bytes=200, config=codec.CodecConfig(**settings)).data
        return read_file(data).header.extrapolation

    assert written() == f32(codec.EXTRAPOLATION) > 0 and written(extrapolation=0.0) == 0.0
    assert codec.PAPER_CONFIG.extrapolation == 0.0
    data = codec.encode(pixels, max_bytes=200, config=codec.CodecConfig(extrapolation=0.75)).data
    seen: list[float] = []
    real = codec.sample_projected
    monkeypatch.setattr(codec, "sample_projected", lambda *args: seen.append(args[-1]) or real(*args))
    codec.decode_array(data, device="cpu")
    assert seen and set(seen) == {0.75}


@pytest.mark.parametrize("setting", [{"samples": 0}, {"samples": 1}, {"sampler_steps": 0}, {"output_samples": 0},
                                     {"output_samples": 257}, {"coarse_sigma": -0.1}, {"mean_sigma_min": 0.5},
                                     {"extrapolation": 1.5}])
def test_settings_the_format_cannot_hold_are_refused(crop64, setting):
    """A zero is not "use the effort's value" (only None is), and the header's limits are the caller's error."""
    with pytest.raises(ValueError, match="invalid codec settings: header field"):
        codec.encode(crop64[:16, :16], max_bytes=200, config=codec.CodecConfig(**setting))


def test_raw_coding_sends_one_float8_byte_per_measurement():
    """coding="raw" (the paper's quantizer): an adaptive step's words are the unscaled float8 bytes of its
    measurements, zero-padded to 4 bytes; the decoder reproduces the encoder; innovation coding wins clearly."""
    import dataclasses

    from pillow_psc.quantize import float8_bytes
    crop = kodak_crop("kodim23", (128, 128))
    raw = codec.encode(crop, rate=0.25, config=dataclasses.replace(FAST, coding="raw"))
    parsed = read_file(raw.data)
    assert parsed.header.coding == "raw" and raw.steps >= 3
    values = raw.state.meas[raw.state.grid.count * 3:].double().numpy()  # after the base layer's C rows per tile
    expected, pos = float8_bytes(values).tobytes(), 0
    for chunk in parsed.data[1:]:
        size = len(chunk.words)
        assert chunk.params == b"" and size % 4 == 0
        n = next(n for n in range(size, size - 4, -1)
                 if chunk.words[:n] == expected[pos:pos + n] and chunk.words[n:] == bytes(size - n))
        pos += n
    assert pos == len(values) > 0
    assert np.array_equal(codec.decode_array(raw.data).pixels, raw.reconstruct("mean"))
    innovation = codec.encode(crop, rate=0.25, config=FAST)
    assert psnr(innovation.reconstruct("mean"), crop) > psnr(raw.reconstruct("mean"), crop) + 1.5  # 2.5 dB measured


def test_bfloat16_precision_is_written_and_followed_by_the_decoder(crop64, encoded64):
    """precision="bfloat16" runs the denoiser under autocast on both sides; the header carries the choice."""
    import dataclasses
    import warnings

    fast = codec.encode(crop64, rate=0.6, config=dataclasses.replace(FAST, precision="bfloat16"))
    parsed = read_file(fast.data)
    assert parsed.header.precision == "bfloat16" and fast.data != encoded64.data
    decoded = codec.decode_array(fast.data)
    assert decoded.steps_decoded == fast.steps and np.array_equal(decoded.pixels, fast.reconstruct("mean"))
    assert psnr(decoded.pixels, crop64) > psnr(encoded64.reconstruct("mean"), crop64) - 1.5
    parsed.header.precision = "float32"  # the same chunks read in float32 no longer match the encoder's state
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert codec.decode_array(parsed.to_bytes()).desync_step == 1
    with pytest.raises(ValueError, match="precision"):
        codec.encode(crop64, rate=0.6, config=dataclasses.replace(FAST, precision="float16"))


SMOOTH_KODAK = {"kodim02", "kodim03", "kodim04", "kodim09", "kodim10", "kodim12", "kodim16", "kodim17", "kodim22",
                "kodim23"}  # the photos that started again at 0.1 bpp at every effort under the test after two steps
BUSY_KODAK = {"kodim01", "kodim05", "kodim08", "kodim13", "kodim24"}  # gained by starting coarser at 0.05 bpp


def test_the_smooth_and_busy_kodak_photos_are_those_beyond_the_texture_thresholds():
    """Each threshold sits in a gap between the photos (0.078 to 0.089; 0.099 to 0.104), not at one of them."""
    textures = {path.stem: codec.block_texture(np.asarray(Image.open(path).convert("RGB")))
                for path in sorted(kodak_dir().glob("kodim*.png"))}
    assert len(textures) == 24
    assert {name for name, texture in textures.items() if texture < codec.SMOOTH_TEXTURE} == SMOOTH_KODAK
    assert max(textures[n] for n in SMOOTH_KODAK) < 0.079
    assert min(texture for name, texture in textures.items() if name not in SMOOTH_KODAK) > 0.089
    assert {name for name, texture in textures.items() if texture >= codec.BUSY_TEXTURE} == BUSY_KODAK
    assert max(texture for name, texture in textures.items() if name not in BUSY_KODAK) < 0.0995
    assert min(textures[n] for n in BUSY_KODAK) > 0.104


def test_block_texture_is_the_rms_about_the_block_means():
    flat = np.full((40, 40, 3), 200, np.uint8)
    checker = np.indices((32, 48)).sum(0) % 2 * 255
    assert codec.block_texture(flat) == pytest.approx(0, abs=1e-12)
    assert codec.block_texture(np.repeat(checker[..., None], 3, 2).astype(np.uint8)) == pytest.approx(0.5)
    ramp = np.tile(np.arange(20, dtype=np.uint8)[None, :, None], (8, 1, 1))  # 8x20: one 8x16 block, 4 columns left
    assert codec.block_texture(ramp) == pytest.approx(np.std(np.arange(16) / 255))


def test_block_texture_in_bands_of_block_rows_gives_the_same_value(monkeypatch):
    """Huge images are read a band of block rows at a time (bounded memory); the value does not depend on it."""
    pixels = kodak_crop("kodim19", (200, 168))  # 12 x 10 whole blocks, with rows and columns left over
    whole = codec.block_texture(pixels)
    monkeypatch.setattr(codec, "TEXTURE_BAND_VALUES", 3 * 16 * 16 * 12 * 3)  # three block rows per band
    assert codec.block_texture(pixels) == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize("bits_per_pixel, texture, delta", [
    (0.05, 0.09, 0.8), (0.1, 0.09, 0.8), (0.2, 0.09, 0.4),  # textured: 0.08 / bpp, at most 0.8
    (0.05, 0.06, 0.8), (0.1, 0.06, 0.4), (0.2, 0.06, 0.2),  # smooth: half of it, from TEXTURE_RATE_BPP on
    (4.0, 0.06, codec.AUTO_DELTA_MIN),
    (0.05, 0.15, 0.8 * 2 ** 0.5), (0.02, 0.1, 0.8 * 2 ** 0.5),  # busy: one refinement coarser, below it
    (0.1, 0.15, 0.8), (0.2, 0.15, 0.4)])
def test_the_automatic_step_moves_with_the_texture(bits_per_pixel, texture, delta):
    assert codec.auto_delta(bits_per_pixel, texture) == pytest.approx(delta)
    assert codec.automatic_step(bits_per_pixel) == pytest.approx(min(0.8, max(0.08 / bits_per_pixel, 0.05)))


def test_a_busy_photo_starts_one_refinement_above_the_automatic_step():
    """Coarser by exactly what one refinement of an adaptive step makes finer (REFINE_CODES delta codes)."""
    busy = codec.auto_delta(0.05, codec.BUSY_TEXTURE)
    assert busy == codec.step_delta(codec.automatic_step(0.05), codec.REFINE_CODES)
    assert codec.auto_delta(0.05, np.nextafter(codec.BUSY_TEXTURE, 0)) == codec.automatic_step(0.05)
    assert codec.auto_delta(codec.TEXTURE_RATE_BPP, 1.0) == codec.automatic_step(codec.TEXTURE_RATE_BPP)


@pytest.mark.parametrize("bits_per_pixel", [8 * int(0.1 * 768 * 512 / 8) / (768 * 512), 0.2, 0.3])
def test_a_smooth_photo_starts_exactly_where_starting_again_would_go(bits_per_pixel):
    """The same step as the encode that starts again after two steps (so the same file, for two steps less); the
    budget of 0.1 bpp on a Kodak photo is 0.099996 bpp, where 0.04 / bpp would not be clipped to 0.4."""
    textured = codec.auto_delta(bits_per_pixel, 0.09)
    assert codec.auto_delta(bits_per_pixel, 0.06) == max(textured / 2, codec.AUTO_DELTA_MIN)


def test_the_encoder_starts_at_the_automatic_step_of_its_texture():
    textured = kodak_crop("kodim08", (64, 64))
    smooth = (textured.astype(np.float64) * 0.3 + 90).astype(np.uint8)  # the same picture with less contrast
    for pixels in (textured, smooth):
        header = read_file(codec.encode(pixels, rate=1.0, config=replace(FAST, max_steps=1)).data).header
        texture = codec.block_texture(pixels)
        assert header.delta == pytest.approx(codec.auto_delta(1.0, texture))
    assert codec.block_texture(smooth) < codec.SMOOTH_TEXTURE <= codec.block_texture(textured)


def test_a_busy_photo_at_a_low_rate_starts_coarser():
    busy = kodak_crop("kodim08", (256, 256))
    assert codec.block_texture(busy) >= codec.BUSY_TEXTURE
    header = read_file(codec.encode(busy, rate=0.05, config=replace(FAST, max_steps=1)).data).header
    bits_per_pixel = 8 * int(0.05 * 256 * 256 / 8) / (256 * 256)
    assert header.delta == pytest.approx(codec.step_delta(codec.automatic_step(bits_per_pixel), codec.REFINE_CODES))


def _delta_codes(data: bytes) -> list[int]:
    """The delta code of every adaptive step of an innovation-coded file (PSC.md §4)."""
    return [struct.unpack(">bb", chunk.params)[1] for chunk in read_file(data).data[1:]]


def test_a_too_coarse_automatic_step_is_refined(crop64, monkeypatch):
    """Smooth content (e.g. an upscaled photo) can leave every innovation below a coarse automatic step: the
    encoder would stop with most of the budget unused, so it codes the step with a finer quantizer step, and the
    following ones too. An explicit step is the caller's choice and is kept."""
    import dataclasses
    budget = int(0.6 * 64 * 64 / 8)
    monkeypatch.setattr(codec, "auto_delta", lambda bpp, texture: 60.0)
    refined = codec.encode(crop64, rate=0.6, config=FAST)
    codes, header = _delta_codes(refined.data), read_file(refined.data).header
    assert codec.step_delta(header.delta, codes[0]) < 60 and len(refined.data) > 0.85 * budget
    assert all(b <= a for a, b in zip(codes, codes[1:]))
    kept = codec.encode(crop64, rate=0.6, config=dataclasses.replace(FAST, delta=60.0))
    assert read_file(kept.data).header.delta == 60.0 and len(kept.data) < 0.7 * budget
    assert set(_delta_codes(kept.data)) <= {0}
    for encoded in (refined, kept):
        assert np.array_equal(codec.decode_array(encoded.data).pixels, encoded.reconstruct("mean"))


@pytest.mark.parametrize("step_bytes, remaining, off", [
    ([1000], 6_500, False),  # 1 + 6500 / 1000 = 7.5 steps: on pace
    ([1000], 7_500, True),  # 8.5 steps
    ([500, 600], 3_000, False),  # growing chunks: 2 + 3000 / 600 = 7 steps
    ([500, 600], 4_000, True),  # 8.7 steps, however fast the chunks grow
    ([1038, 650], 2_139, False),  # kodim19 at 0.1 bpp and 0.8 (bfloat16): 5.3 steps, a tail of 1089 bytes > 0.4 * 2139
    ([1313, 973, 601], 2_500, True),  # 7.2 steps, but a tail of 601 * 0.62 / 0.38 = 971 bytes < 0.4 * 2500
    ([1774, 1174], 5_302, False),  # kodim19 at 0.2 bpp and 0.4: 6.5 steps, a tail of 2297 bytes > 0.4 * 5302
    ([737, 57], 50, False),  # a chunk that took all but its own size of the budget ends the encode
])
def test_off_pace_reads_the_chunk_sizes(step_bytes, remaining, off):
    assert codec._off_pace(step_bytes, remaining, pace=8) is off


@pytest.mark.parametrize("bits_per_pixel, pace", [(0.02, 8), (0.05, 8), (0.1, 8), (0.15, 10), (0.2, 12), (1.0, 12)])
def test_the_pace_is_8_steps_up_to_a_tenth_of_a_bit_and_12_from_a_fifth(bits_per_pixel, pace):
    assert codec.pace_steps(bits_per_pixel) == pytest.approx(pace)


@pytest.mark.parametrize("step_bytes, remaining, pace, restart", [
    ([370, 358], 3_085, 8, True),  # kodim02 at 0.1 bpp and 0.8 (effort 1): 2 + 3085 / 358 = 10.6 steps
    ([446, 218], 2_889, 8, True),  # kodim03 at 0.1 bpp and 0.8: 15.3 steps
    ([822, 462], 2_477, 8, False),  # kodim24 at 0.1 bpp and 0.8: 7.4 steps, though its chunks shrink fast
    ([1062, 690], 6_492, 12, False),  # kodim19 at 0.2 bpp and 0.4: 11.4 steps, on pace at 0.2 bpp
    ([746, 518], 6_948, 12, True),  # kodim02 at 0.2 bpp and 0.4: 15.4 steps
    ([854], 9_000, 8, False),  # judged after two steps only
    ([854, 370, 100], 9_000, 8, False),
])
def test_start_finer_after_two_steps_off_pace(step_bytes, remaining, pace, restart):
    assert codec._start_finer(step_bytes, remaining, pace) is restart


@pytest.mark.parametrize("effort", [1, 2, 3])
def test_the_restart_pace_counts_rows_per_tile_not_steps(effort):
    """Measured at 3 rows per tile per step, which every effort takes (4 samples; 6 from 0.15 bpp take 3 too); 8
    samples taking 4 rows per tile (effort 3 before) allow 3/4 the steps."""
    settings = codec.EFFORTS[effort]
    assert [codec.restart_pace(r, codec.effort_samples(settings, r), (settings.rows,))
            for r in (0.05, 0.1, 0.2)] == pytest.approx((8, 8, 12))
    assert [codec.restart_pace(r, 8, (4.0,)) for r in (0.05, 0.1, 0.2)] == pytest.approx((6, 6, 9))
    assert codec.restart_pace(0.1, 16, (1.0, 6.0)) == pytest.approx(4)  # the second step's rows count


@pytest.mark.parametrize("samples", [4, 8])
def test_the_encoder_judges_starting_again_at_the_restart_pace(crop64, monkeypatch, samples):
    paces = []

    def spy(step_bytes, remaining, pace):
        paces.append(pace)
        return False

    monkeypatch.setattr(codec, "_start_finer", spy)
    config = replace(FAST, samples=samples)  # 4 rows per tile per step: 3 of 4 samples' directions, 4 of 8's
    codec.encode(crop64, rate=0.6, config=config)
    assert paces and set(paces) == {codec.restart_pace(0.6, samples, config.rows_per_step)}


def test_raw_coding_keeps_the_automatic_step(crop64, monkeypatch):
    """A raw chunk holds one byte per row whatever the step, so its size says nothing about the step: the encoder
    neither starts again nor refines, and the photo's texture does not move it (the step then only sets the base
    layer's, at the rate's automatic value)."""
    judged = []
    monkeypatch.setattr(codec, "_start_finer", lambda *args: judged.append("restart") or True)
    monkeypatch.setattr(codec, "_off_pace", lambda *args: judged.append("refine") or True)
    raw = codec.encode(crop64, rate=0.6, config=replace(FAST, coding="raw", rows_per_step=(0.5,)))
    assert judged == [] and raw.steps > 3
    assert codec.block_texture(crop64) < codec.SMOOTH_TEXTURE  # the texture, measured for innovations, is ignored
    automatic = codec.automatic_step(8 * int(0.6 * 64 * 64 / 8) / (64 * 64))
    assert read_file(raw.data).header.delta == pytest.approx(automatic)
    assert {chunk.params[1:] for chunk in read_file(raw.data).data[1:]} == {b""}


def _proposal(sigma: np.ndarray) -> codec._Proposal:
    n = len(sigma)
    return codec._Proposal(torch.zeros(n, dtype=torch.long), torch.zeros(n, 1), np.zeros(n), sigma, np.ones(n, bool))


def _rd_cost(resid: np.ndarray, symbols: np.ndarray, levels: np.ndarray) -> float:
    return float(np.sum((resid - dequantize(symbols, 1.0)) ** 2 + codec.RD_LAMBDA * entropy.cost_bits(symbols, levels)))


def test_rd_quantization_moves_symbols_one_cell_toward_zero_where_the_bits_pay():
    """Spreads below the quantizer step, as for most rows at a coarse step: rounding some residuals toward zero
    and writing a narrower table lowers error + lambda * bits and the bits below rounding to nearest (PSC.md §12)."""
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 1.0, 4000)
    resid = sigma * rng.standard_normal(4000)
    prop = _proposal(sigma)
    calibrated = codec._scale_code(resid / sigma)
    symbols, levels, code = codec._rd_quantize(prop, resid, 1.0, calibrated)
    nearest = quantize(resid, 1.0)
    zero = quantize(np.zeros(1), 1.0)[0]
    moved = symbols != nearest
    assert 0 < moved.mean() < 0.5
    assert np.array_equal(np.abs(symbols[moved] - zero), np.abs(nearest[moved] - zero) - 1)
    assert calibrated - codec.SCALE_SEARCH <= code < calibrated
    assert np.array_equal(levels, codec._levels(prop, code, 1.0))
    nearest_levels = codec._levels(prop, calibrated, 1.0)
    assert _rd_cost(resid, symbols, levels) < _rd_cost(resid, nearest, nearest_levels)
    assert entropy.cost_bits(symbols, levels).sum() < 0.9 * entropy.cost_bits(nearest, nearest_levels).sum()


def test_without_a_rate_term_the_quantizer_rounds_to_nearest_at_the_calibrated_scale(monkeypatch):
    monkeypatch.setattr(codec, "RD_LAMBDA", 0.0)
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.1, 3.0, 1000)
    resid = sigma * rng.standard_normal(1000)
    symbols, _, code = codec._rd_quantize(_proposal(sigma), resid, 1.0, 5)
    assert code == 5 and np.array_equal(symbols, quantize(resid, 1.0))


def test_an_encode_at_a_step_far_too_coarse_starts_again_at_half(crop64, monkeypatch):
    """A try abandoned after two steps costs their evaluations; the tries halve the step down to AUTO_DELTA_MIN,
    where the encode is no longer abandoned."""
    tried = []
    real = codec._encode_with_delta

    def spy(*args, **kwargs):
        encoded, spent = real(*args, **kwargs)
        tried.append((args[3], kwargs["may_restart"], encoded is None, spent))
        return encoded, spent

    monkeypatch.setattr(codec, "_encode_with_delta", spy)
    monkeypatch.setattr(codec, "_start_finer", lambda step_bytes, remaining, pace: len(step_bytes) == 2)  # every try
    # with two steps is abandoned
    result = codec.encode(crop64, rate=0.6, config=FAST)
    deltas = [delta for delta, *_ in tried]
    assert deltas[0] == pytest.approx(codec.auto_delta(0.6, codec.block_texture(crop64)), rel=0.01) and deltas[-1] == codec.AUTO_DELTA_MIN
    assert all(b == max(a / 2, codec.AUTO_DELTA_MIN) for a, b in zip(deltas, deltas[1:]))
    assert [(may, gave_up) for _, may, gave_up, _ in tried] == [(True, True)] * (len(tried) - 1) + [(False, False)]
    per_step = FAST.samples * FAST.sampler_steps
    assert all(spent == 2 * per_step for *_, gave_up, spent in tried if gave_up)
    assert result.evaluations == sum(spent for *_, spent in tried) > result.state.evaluations
    assert np.array_equal(codec.decode_array(result.data).pixels, result.reconstruct("mean"))


def test_an_automatic_step_off_pace_is_refined_from_step_to_step(crop64, monkeypatch):
    """Dozens of tiny steps cost dozens of sampling rounds: after every step whose chunk says the rest of the budget
    would take the encode past `pace_steps` steps, the next steps are quantized REFINE_CODES finer. Nothing is
    encoded twice: the encoder's evaluations are those of the decoder's steps."""
    # only a step that spends the whole budget would keep the pace
    monkeypatch.setattr(codec, "pace_steps", lambda bits_per_pixel: 1)
    monkeypatch.setattr(codec, "_start_finer", lambda step_bytes, remaining, pace: False)  # nor starts again
    result = codec.encode(crop64, rate=0.6, config=FAST)
    codes = _delta_codes(result.data)
    assert len(codes) >= 2 and codes == [-codec.REFINE_CODES * k for k in range(len(codes))]
    assert result.evaluations == result.state.evaluations
    decoded = codec.decode_array(result.data)  # the same steps, then the output image's samples
    output_steps = codec.OUTPUT_STEPS_FACTOR * FAST.sampler_steps
    assert decoded.evaluations == result.evaluations + FAST.output_samples * output_steps
    assert np.array_equal(decoded.pixels, result.reconstruct("mean"))


def test_seed_changes_the_bitstream_but_not_the_size_class(crop64, encoded64):
    other = codec.encode(crop64, rate=0.6, seed=7, config=FAST).data
    assert other != encoded64.data
    assert read_file(other).header.seed == 7


def test_max_bytes_is_a_hard_limit(crop64):
    data = codec.encode_array(crop64, max_bytes=400, config=FAST)
    assert len(data) <= 400


def test_budget_too_small_raises(crop64):
    with pytest.raises(pillow_psc.BudgetError):
        codec.encode_array(crop64, max_bytes=60, config=FAST)


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (17, 33), (3, 5, 3), (16, 16, 4), (9, 7, 2)])
def test_any_size_and_channel_count_round_trips(shape):
    base = kodak_crop("kodim05", (shape[1], shape[0]), "RGB" if len(shape) == 3 and shape[2] >= 3 else "L")
    pixels = base if len(shape) == 2 or shape[2] in (1, 3) else np.concatenate(
        [base.reshape(shape[0], shape[1], -1), np.where(np.arange(shape[0])[:, None, None] < shape[0] // 2, 255, 0).astype(np.uint8).repeat(shape[1], 1)], 2)
    data = codec.encode_array(pixels, max_bytes=400, config=FAST)
    out = codec.decode_array(data).pixels
    assert out.shape == pixels.shape and out.dtype == np.uint8
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        assert np.array_equal(out[..., -1], pixels[..., -1]), "alpha must be lossless"


def test_grey_images_use_the_grey_prior():
    grey = kodak_crop("kodim23", (48, 32), "L")
    data = codec.encode_array(grey, rate=1.0, config=FAST)
    assert read_file(data).header.prior_id == "ffdnet-gray"
    assert psnr(codec.decode_array(data).pixels, grey) > 20


def test_bad_arguments_raise_clear_errors(crop64):
    with pytest.raises(ValueError):
        codec.encode_array(crop64.astype(np.float32), rate=0.5)
    with pytest.raises(ValueError):
        codec.encode_array(crop64, rate=-1)
    with pytest.raises(ValueError):
        codec.encode_array(np.zeros((4, 4, 5), np.uint8), rate=1)
    with pytest.raises(ValueError):
        codec.encode_array(crop64, rate=1, model="no-such-model")


def test_wrong_model_is_refused(encoded64):
    with pytest.raises(pillow_psc.ModelMismatchError, match="ffdnet-color"):
        codec.decode_array(encoded64.data, model="ffdnet-gray")


def test_decode_options_are_validated(encoded64):
    with pytest.raises(ValueError):
        codec.decode_array(encoded64.data, mode="median")
    with pytest.raises(ValueError):
        codec.decode_array(encoded64.data, steps=0)


def test_acceptance_kodak_128_at_quarter_bpp():
    """Issue #2 acceptance: a 128x128 Kodak crop at rate 0.25 on the default prior, via Pillow."""
    import io
    from PIL import Image
    crop = kodak_crop("kodim23", (128, 128))
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PSC", rate=0.25)
    bpp = buf.tell() * 8 / (128 * 128)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    quality = psnr(decoded, crop)
    print(f"kodim23 128x128 centre crop at rate 0.25: {bpp:.4f} bpp, PSNR {quality:.2f} dB")
    assert bpp <= 0.25
    assert quality > 27.0


def test_odd_tile_for_ffdnet_is_refused():
    import dataclasses
    with pytest.raises(ValueError, match="multiple of 2"):
        codec.encode_array(kodak_crop("kodim23", (5, 5), "L"), max_bytes=400,
                           config=dataclasses.replace(FAST, tile=5))


def test_half_resolution_needs_tiles_that_halve_into_what_the_prior_accepts():
    """FFDNet needs even region sides; at half resolution the tiles must be multiples of 4 (PSC.md §6.2). An explicit
    coarse_sigma with a tile that cannot halve is refused; the effort's falls back to full resolution."""
    import dataclasses
    pixels = kodak_crop("kodim23", (12, 12), "L")
    with pytest.raises(ValueError, match="multiple of 4"):
        codec.encode_array(pixels, max_bytes=400, config=dataclasses.replace(FAST, tile=6, coarse_sigma=0.3))
    by_effort = dataclasses.replace(FAST, tile=6, coarse_sigma=None, effort=1)
    assert read_file(codec.encode_array(pixels, max_bytes=400, config=by_effort)).header.coarse_sigma == 0.0
    assert read_file(codec.encode_array(pixels, max_bytes=400, config=dataclasses.replace(by_effort, tile=8))
                     ).header.coarse_sigma == np.float32(FFDNetPrior.coarse_sigma)
    data = codec.encode_array(pixels, max_bytes=400, config=dataclasses.replace(FAST, tile=6))
    psc = read_file(data)
    psc.header = dataclasses.replace(psc.header, coarse_sigma=0.3)  # the same file claiming half resolution
    with pytest.raises(pillow_psc.CorruptFileError, match="at half resolution"):
        codec.decode_array(psc.to_bytes())


def test_header_channels_that_the_model_cannot_code_are_corrupt():
    import struct
    import zlib
    from pillow_psc.container import SIGNATURE
    data = bytearray(codec.encode_array(kodak_crop("kodim23", (16, 16), "L"), max_bytes=400, config=FAST))
    (length,) = struct.unpack(">I", data[8:12])
    head = 12
    data[head + 9] = 3  # channels: 1 -> 3, with a valid CRC
    data[head + length:head + length + 4] = struct.pack(">I", zlib.crc32(bytes(data[head - 4:head + length])))
    assert data[:8] == SIGNATURE
    with pytest.raises(pillow_psc.CorruptFileError):
        codec.decode_array(bytes(data))
