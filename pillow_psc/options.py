"""Process-wide decode options (Pillow's `Image.open` and imageio's `imread` cannot pass read options)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

_VALID_MODES = ("mean", "sample")


@dataclass(frozen=True)
class DecodeOptions:
    mode: str = "mean"  # "mean": average of posterior samples (lowest distortion); "sample": one sample
    device: str = "auto"
    steps: int | None = None  # decode only the first `steps` data chunks (None: all)
    strict: bool = False  # raise DesyncError instead of returning the verified prefix with a warning


_lock = threading.Lock()
_current = DecodeOptions()


def set_decode_options(**changes) -> DecodeOptions:
    """Change how .psc files are decoded from now on (mode, device, steps, strict); returns the previous options.

    Example: ``pillow_psc.set_decode_options(mode="sample", steps=4)``.
    """
    global _current
    unknown = set(changes) - {"mode", "device", "steps", "strict"}
    if unknown:
        raise TypeError(f"unknown decode option(s): {', '.join(sorted(unknown))}")
    if "mode" in changes and changes["mode"] not in _VALID_MODES:
        raise ValueError(f"mode must be one of {_VALID_MODES}, not {changes['mode']!r}")
    if changes.get("steps") is not None and int(changes["steps"]) < 1:
        raise ValueError("steps must be at least 1 (or None for all)")
    with _lock:
        previous, _current = _current, replace(_current, **changes)
    return previous


def get_decode_options() -> DecodeOptions:
    return _current
