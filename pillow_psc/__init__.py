"""pillow-psc: the .psc image format (Posterior-Sampling-based Compression) for Pillow, imageio and the shell.

Importing this package registers .psc with Pillow and imageio::

    import pillow_psc
    from PIL import Image
    Image.open("photo.png").save("photo.psc", rate=0.1)
    Image.open("photo.psc").load()
"""

from . import imageio_plugin, pillow_plugin
from .codec import PAPER_CONFIG, CodecConfig, Decoded, Encoded, decode_array, encode, encode_array
from .errors import (BudgetError, CorruptFileError, DesyncError, ModelMismatchError, NoDataError, NotPSCError,
                     PSCError, UnsupportedFileError)
from .options import DecodeOptions, get_decode_options, set_decode_options

__version__ = "1.0.0"
__all__ = [
    "PAPER_CONFIG", "CodecConfig", "Decoded", "Encoded", "decode_array", "encode", "encode_array",
    "DecodeOptions", "get_decode_options", "set_decode_options",
    "PSCError", "NotPSCError", "CorruptFileError", "UnsupportedFileError", "NoDataError", "ModelMismatchError",
    "DesyncError", "BudgetError",
]

pillow_plugin.register()
imageio_plugin.register()
