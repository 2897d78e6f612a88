"""The one sample contract shared by every site, plus the bad-file record.

Every site, whatever its folder layout, yields a list of :class:`Sample`.
Everything downstream (crop cache, leakage audit, training, evaluation)
relies only on these fields.
"""
from __future__ import annotations

import dataclasses
import re

SITE_NAME_PATTERN = re.compile(r"^[a-z0-9_-]+$")

#: Binary labels used everywhere.
NO_TUMOUR = 0
TUMOUR = 1

#: File extensions read as images (any case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


def check_site_name(name: str) -> str:
    """Return ``name`` if it is a valid site name, else raise ``ValueError``.

    Site names become parts of file names, metric names and MLflow keys, so
    only lower-case letters, digits, ``_`` and ``-`` are allowed.
    """
    if not SITE_NAME_PATTERN.match(name or ""):
        raise ValueError(
            f"invalid site name {name!r}: use only lower-case letters, digits, '_' and '-'"
        )
    return name


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of one site.

    Attributes:
        path: absolute path of the image file.
        relative_path: path relative to the site root, with ``/`` separators
            (for example ``"Testing/glioma/Te-gl_0001.jpg"``); unique per site.
        site: site name (see :func:`check_site_name`).
        label: 1 = tumour, 0 = no tumour.
        subclass: the class folder's meaning, lower case: ``"glioma"``,
            ``"meningioma"``, ``"pituitary"``, ``"notumor"`` for MOS-style
            sites, ``"tumour"``/``"no_tumour"`` where a site has no finer class.
        sha256: hex SHA-256 of the file's bytes (the content hash).
    """

    path: str
    relative_path: str
    site: str
    label: int
    subclass: str
    sha256: str

    @property
    def key(self) -> str:
        """``"SITE/relative/path"``, the name used in reports and the audit."""
        return f"{self.site}/{self.relative_path}"


@dataclasses.dataclass(frozen=True)
class BadFile:
    """A file that was skipped, with a machine-readable reason code.

    Reason codes: ``empty_file``, ``not_an_image``, ``corrupt``,
    ``truncated``, ``too_small``, ``constant_image``, ``too_many_pixels``,
    ``hidden_file``, ``unreadable``, ``unsupported_extension``,
    ``not_a_regular_file``, ``symlink_outside_site``, ``dangling_symlink``.
    """

    path: str
    relative_path: str
    site: str
    reason: str
    detail: str = ""

    def message(self) -> str:
        return f"{self.site}: skipped {self.relative_path!r}: {self.reason}" + (
            f" ({self.detail})" if self.detail else ""
        )
