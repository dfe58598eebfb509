"""Exceptions raised by pillow-psc.

All derive from :class:`PSCError`, itself an :class:`OSError`, so code that already handles
Pillow's ``OSError`` for broken files handles ours too.
"""


class PSCError(OSError):
    """Base class of every error pillow-psc raises for a bad file or a bad request."""


class NotPSCError(PSCError):
    """The data does not start with the PSC signature."""


class CorruptFileError(PSCError):
    """A chunk fails its CRC, a field is out of range, or the chunk order breaks the spec."""


class UnsupportedFileError(PSCError):
    """The file is valid but needs something this build lacks (a newer version, an unknown critical chunk)."""


class NoDataError(PSCError):
    """The file holds a header but no complete data chunk, so there is no image to decode."""


class ModelMismatchError(PSCError):
    """The prior given to the decoder is not the one the file was encoded with."""


class DesyncError(PSCError):
    """The decoder's state differs from the encoder's (the per-chunk check value does not match)."""


class BudgetError(PSCError):
    """``rate``/``max_bytes`` is too small to hold even the header and the first data chunk."""
