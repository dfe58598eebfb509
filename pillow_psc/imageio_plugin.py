"""imageio glue: route the .psc extension (paths, bytes with extension=".psc", v2 format="psc") to Pillow."""

from __future__ import annotations

from imageio.config import FileExtension, extension_list, known_extensions

PSC_EXTENSION = FileExtension(
    name="PSC", extension=".psc", priority=["pillow"],
    description="Posterior-Sampling-based Compression (pillow-psc)",
    external_link="https://pypi.org/project/pillow-psc/",
)


def register() -> None:
    """Idempotent: add .psc to imageio's extension tables."""
    if PSC_EXTENSION not in known_extensions.get(".psc", []):
        known_extensions.setdefault(".psc", []).insert(0, PSC_EXTENSION)
        extension_list.append(PSC_EXTENSION)
