"""Read image files defensively and say why a file is skipped.

Public collections carry every kind of bad file: zero-byte files, text saved
as ``.jpg``, PNGs named ``.jpg``, truncated downloads, macOS ``.DS_Store`` and
``._x.jpg`` files, 16-bit and RGBA PNGs. :func:`decode_image_bytes` turns
bytes into one (H, W) uint8 greyscale image or raises :class:`ImageRejected`
with one of the reason codes of :class:`datasets.records.BadFile`.

Checks run in this order, each before any costly step that could be fooled by
the file: what the path is (:func:`regular_file_problem`, from ``os.lstat``
and ``os.stat`` only: FIFOs, sockets, devices and folders are never opened,
symlinks must resolve to a file inside the site folder) -> empty -> not an
image (magic bytes) -> too many pixels (read from the header, before
decoding, so decompression bombs are never decoded) -> truncated -> corrupt
(OpenCV cannot decode) -> conversion to grey -> too small -> constant.
Reasons never quote a file's bytes: at most the kind of file detected.
"""
from __future__ import annotations

import collections
import contextlib
import os
import stat
import struct
from typing import BinaryIO, Iterator, Sequence

import cv2
import numpy as np

from datasets.records import IMAGE_EXTENSIONS, BadFile

#: Images with more pixels are refused from their header, before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 50_000_000

REASONS = (
    "empty_file",
    "not_an_image",
    "corrupt",
    "truncated",
    "too_small",
    "constant_image",
    "too_many_pixels",
    "hidden_file",
    "unreadable",
    "unsupported_extension",
    "not_a_regular_file",
    "symlink_outside_site",
    "dangling_symlink",
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
JPEG_START_OF_SCAN = b"\xff\xda"
TIFF_STARTS = (b"II*\x00", b"MM\x00*")
#: A PNG's IEND chunk must lie in this many bytes at the end of the file.
PNG_TAIL_BYTES = 4096
#: JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC).
JPEG_FRAME_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageRejected(Exception):
    """A file that cannot be used as an image.

    Attributes:
        reason: one of :data:`REASONS` (the ``BadFile`` reason codes).
        detail: a short human-readable explanation.
    """

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}; expected one of {REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


#: Signatures of files that are not a supported image, for the ``not_an_image`` detail (never the bytes).
OTHER_SIGNATURES = (
    (b"GIF87a", "a GIF image (not a supported format)"),
    (b"GIF89a", "a GIF image (not a supported format)"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "an executable"),
    (b"<!DOCTYPE html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"<?xml", "an XML file"),
)

#: ``stat`` tests and what a path that is not a regular file is, for the ``not_a_regular_file`` detail.
FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def image_format(data: bytes) -> str | None:
    """Return ``"jpeg"``, ``"png"``, ``"bmp"`` or ``"tiff"`` from the magic bytes, else None."""
    if data.startswith(JPEG_START):
        return "jpeg"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith(TIFF_STARTS):
        return "tiff"
    return None


def signature_kind(data: bytes) -> str:
    """What a file that is not a supported image looks like, e.g. ``"a PDF document"``, ``"text"``.

    Judged from the first bytes only; ``"unknown signature"`` when nothing
    fits. The result never contains the file's bytes.
    """
    head = data[:512]
    for signature, kind in OTHER_SIGNATURES:
        if head.lstrip().lower().startswith(signature.lower()):
            return kind
    if head[4:12] in (b"ftypheic", b"ftypavif") or (head.startswith(b"RIFF") and head[8:12] == b"WEBP"):
        return "a HEIC, AVIF or WebP image (not a supported format)"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "a DICOM file (not a supported format)"
    for cut in range(4):  # the first 512 bytes may end inside a UTF-8 character
        try:
            text = head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and all(character.isprintable() or character in "\t\r\n\f" for character in text):
            return "text"
        break
    return "unknown signature"


def file_kind(mode: int) -> str:
    """``"a FIFO (named pipe)"``, ``"a folder"``, ... for an ``st_mode`` that is not a regular file."""
    for test, kind in FILE_KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def is_within(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or lies under it (both already resolved with ``os.path.realpath``)."""
    return os.path.commonpath([path, folder]) == folder


def _os_error_detail(error: OSError) -> str:
    return f"{type(error).__name__}: {error.strerror or error}"


def regular_file_problem(
    path: str, real_root: str | None = None, *, follow_external_symlinks: bool = False
) -> tuple[str, str] | None:
    """Why ``path`` cannot be read as an image file, judged by ``os.lstat``/``os.stat`` (never opened).

    Args:
        path: the path to check.
        real_root: the site folder, already resolved with ``os.path.realpath``;
            when given, a symlink whose target resolves outside it is refused.
            None: the target may be anywhere.
        follow_external_symlinks: accept symlinks that resolve outside ``real_root``.

    Returns:
        None for a regular file (or a symlink to one, inside the site), else
        ``(reason, detail)`` with reason ``unreadable``, ``dangling_symlink``,
        ``symlink_outside_site`` or ``not_a_regular_file``.
    """
    try:
        status = os.lstat(path)
    except OSError as error:
        return "unreadable", _os_error_detail(error)
    if stat.S_ISLNK(status.st_mode):
        try:
            status = os.stat(path)
        except FileNotFoundError:
            return "dangling_symlink", "symlink to a file that does not exist"
        except OSError as error:
            return "dangling_symlink", f"symlink that cannot be resolved ({error.strerror or error})"
        if real_root is not None and not follow_external_symlinks:
            target = os.path.realpath(path)
            if not is_within(target, real_root):
                return "symlink_outside_site", (f"symlink to {target!r}, outside the site folder; "
                                                f"allowed with data.follow_external_symlinks")
    if not stat.S_ISREG(status.st_mode):
        return "not_a_regular_file", f"{file_kind(status.st_mode)}, not a regular file"
    return None


@contextlib.contextmanager
def open_regular_file(path: str) -> Iterator[BinaryIO]:
    """Open a regular file (symlinks followed) for reading; FIFOs, sockets, devices and folders never are.

    The path is checked with :func:`regular_file_problem` before it is
    opened, and the opened descriptor again (``O_NONBLOCK``, so a FIFO put
    in its place between the two cannot block).

    Raises:
        ImageRejected: ``unreadable``, ``dangling_symlink`` or ``not_a_regular_file``.
    """
    problem = regular_file_problem(path)
    if problem is not None:
        raise ImageRejected(*problem)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise ImageRejected("unreadable", _os_error_detail(error)) from error
    with os.fdopen(descriptor, "rb") as file:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ImageRejected("not_a_regular_file", f"{file_kind(mode)}, not a regular file")
        yield file


def read_regular_file(path: str) -> bytes:
    """The bytes of a regular file, read with :func:`open_regular_file` (same errors).

    Raises:
        ImageRejected: ``unreadable`` also when reading fails (OSError).
    """
    with open_regular_file(path) as file:
        try:
            return file.read()
        except OSError as error:
            raise ImageRejected("unreadable", _os_error_detail(error)) from error


def jpeg_segments(data: bytes):
    """Yield ``(marker, payload)`` for each JPEG header segment up to the first start of scan.

    ``payload`` is the segment after its length field (shorter than the
    length says when the file is cut). Stops at a byte that is not a marker.
    """
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan
            return
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        yield marker, data[position + 4:position + 2 + length]
        position += 2 + length


def jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first JPEG start-of-frame marker, or None if not found."""
    for marker, payload in jpeg_segments(data):
        if marker in JPEG_FRAME_MARKERS:
            if len(payload) < 5:
                return None
            height, width = struct.unpack(">HH", payload[1:5])
            return width, height
    return None


def tiff_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first TIFF image file directory, or None if not found."""
    order = "<" if data.startswith(b"II") else ">"
    try:
        offset = struct.unpack(order + "I", data[4:8])[0]
        entries = struct.unpack(order + "H", data[offset:offset + 2])[0]
        size = {}
        for index in range(entries):
            start = offset + 2 + 12 * index
            tag, kind = struct.unpack(order + "HH", data[start:start + 4])
            if tag in (256, 257):  # ImageWidth, ImageLength
                value_format = order + ("H" if kind == 3 else "I")
                value_size = 2 if kind == 3 else 4
                size[tag] = struct.unpack(value_format, data[start + 8:start + 8 + value_size])[0]
    except struct.error:
        return None
    if 256 in size and 257 in size:
        return size[256], size[257]
    return None


def header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) read from the file header without decoding, or None if unknown.

    Args:
        data: the file's bytes.
        kind: the format from :func:`image_format`.
    """
    try:
        if kind == "png" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if kind == "jpeg":
            return jpeg_header_size(data)
        if kind == "bmp":
            if struct.unpack("<I", data[14:18])[0] == 12:  # old OS/2 header
                return struct.unpack("<HH", data[18:22])
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if kind == "tiff":
            return tiff_header_size(data)
    except struct.error:
        return None
    return None


def truncation_problem(data: bytes, kind: str) -> str:
    """Return why the file looks truncated, or ``""`` when it looks whole.

    JPEG: there must be an end-of-image marker (FFD9) after the last
    start-of-scan marker (an embedded thumbnail's FFD9 comes before it;
    padding after the end is allowed). PNG: the IEND chunk must lie in the
    last :data:`PNG_TAIL_BYTES` bytes. BMP: the file must be as long as its
    header says. TIFF is left to the decoder.
    """
    if kind == "jpeg" and data.rfind(JPEG_END) <= data.rfind(JPEG_START_OF_SCAN):
        return "no JPEG end marker (FFD9) after the image data"
    if kind == "png" and b"IEND" not in data[-PNG_TAIL_BYTES:]:
        return "no PNG IEND chunk at the end"
    if kind == "bmp" and len(data) >= 6:
        declared = struct.unpack("<I", data[2:6])[0]
        if len(data) < declared:
            return f"{len(data)} bytes, header says {declared}"
    return ""


def decoded_to_grey(image: np.ndarray) -> np.ndarray:
    """Turn an ``cv2.imdecode(..., IMREAD_UNCHANGED)`` result into (H, W) uint8 grey.

    Colour (BGR, palette already expanded to BGR) -> ``cv2.cvtColor`` to grey.
    Alpha (BGRA, grey + alpha) -> composited on black: grey * alpha / alpha_max.
    8-bit images keep their values. Any other depth (16-bit, 32-bit, float)
    is stretched linearly from the image's own min..max to 0..255 and
    rounded, never clipped: a 16-bit image using 0..4095 comes out as 0..255.
    A constant non-8-bit image becomes all zeros.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    alpha = None
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 2:
            image, alpha = image[:, :, 0], image[:, :, 1]
        elif channels == 4:
            image, alpha = image[:, :, :3], image[:, :, 3]
        elif channels != 3:
            raise ImageRejected("corrupt", f"decoded to {channels} channels")
    if image.dtype == np.uint8 and alpha is None:
        if image.ndim == 3:
            return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return image

    grey = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if grey.ndim == 3:
        grey = cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY)
    if alpha is not None:
        alpha_max = np.iinfo(alpha.dtype).max if np.issubdtype(alpha.dtype, np.integer) else 1.0
        grey = grey * (alpha.astype(np.float32) / np.float32(alpha_max))
    if image.dtype == np.uint8:
        return np.clip(np.round(grey), 0, 255).astype(np.uint8)
    low, high = float(grey.min()), float(grey.max())
    if high == low:
        return np.zeros(grey.shape, np.uint8)
    return np.round((grey - low) * (255.0 / (high - low))).astype(np.uint8)


def decode_image_bytes(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 32
) -> np.ndarray:
    """Decode an image file's bytes into one greyscale image, or say why not.

    Args:
        data: the whole file's bytes (JPEG, PNG, BMP or TIFF).
        max_pixels: refuse images with more pixels than this, judged from
            the header before decoding (and again after decoding).
        min_side: refuse images smaller than this in either dimension.

    Returns:
        (H, W) uint8 greyscale image, values 0..255 (see :func:`decoded_to_grey`).

    Raises:
        ImageRejected: with reason ``empty_file``, ``not_an_image``,
            ``too_many_pixels``, ``truncated``, ``corrupt``, ``too_small`` or
            ``constant_image`` (max - min < 2), checked in that order.
    """
    if len(data) == 0:
        raise ImageRejected("empty_file", "0 bytes")
    kind = image_format(data)
    if kind is None:
        raise ImageRejected("not_an_image", signature_kind(data))
    size = header_size(data, kind)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageRejected(
            "too_many_pixels", f"header says {size[0]}x{size[1]}, more than {max_pixels} pixels"
        )
    problem = truncation_problem(data, kind)
    if problem:
        raise ImageRejected("truncated", problem)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        detail = f"OpenCV could not decode the {kind}: {error.err}"
        raise ImageRejected("corrupt", detail) from error
    if image is None or image.size == 0:
        raise ImageRejected("corrupt", f"OpenCV could not decode the {kind}")
    height, width = image.shape[:2]
    if height * width > max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height}, more than {max_pixels} pixels")
    grey = decoded_to_grey(image)
    if min(height, width) < min_side:
        raise ImageRejected("too_small", f"{width}x{height}, smaller than {min_side} on a side")
    low, high = int(grey.min()), int(grey.max())
    if high - low < 2:
        raise ImageRejected("constant_image", f"all pixels within {low}..{high}")
    return grey


def read_image_file(path: str, **kwargs) -> np.ndarray:
    """Read a regular file and decode it with :func:`decode_image_bytes` (same keywords).

    Raises:
        ImageRejected: ``unreadable`` when the file cannot be read (OSError),
            ``not_a_regular_file`` or ``dangling_symlink`` (see
            :func:`open_regular_file`), else any reason of :func:`decode_image_bytes`.
    """
    return decode_image_bytes(read_regular_file(path), **kwargs)


def is_hidden(path: str) -> bool:
    """True when any component of ``path`` (``/`` or ``\\`` separated) starts with ``.``.

    ``.`` and ``..`` themselves do not count.
    """
    parts = path.replace("\\", "/").split("/")
    return any(part.startswith(".") and part not in (".", "..") for part in parts)


def check_file(
    path: str, relative_path: str, site: str, *, site_root: str | None = None,
    follow_external_symlinks: bool = False, **kwargs
) -> tuple[np.ndarray | None, BadFile | None]:
    """Read one file of a site; never raises for a bad file.

    Args:
        path: the file's path on disk.
        relative_path: its path relative to the site root (``/`` separators).
        site: site name, copied into the BadFile.
        site_root: the site folder; when given, a file whose real path (its
            symlinks and its folders' symlinks resolved) lies outside it is
            skipped as ``symlink_outside_site``.
        follow_external_symlinks: read such files all the same.
        **kwargs: passed to :func:`decode_image_bytes` (``max_pixels``, ``min_side``).

    Returns:
        ``(image, None)`` with a (H, W) uint8 image, or ``(None, bad_file)``.
        Hidden files (``hidden_file``), extensions outside
        :data:`IMAGE_EXTENSIONS`, any case (``unsupported_extension``) and
        paths that are not regular files (:func:`regular_file_problem`) are
        skipped without being read.
    """
    if is_hidden(relative_path) or is_hidden(os.path.basename(path)):
        return None, BadFile(path, relative_path, site, "hidden_file")
    extension = os.path.splitext(path)[1].lower()
    if extension not in IMAGE_EXTENSIONS:
        detail = f"extension {extension!r}" if extension else "no extension"
        return None, BadFile(path, relative_path, site, "unsupported_extension", detail)
    real_root = os.path.realpath(site_root) if site_root is not None else None
    if real_root is not None and not follow_external_symlinks:
        folder = os.path.realpath(os.path.dirname(path) or ".")
        if not is_within(folder, real_root):
            return None, BadFile(path, relative_path, site, "symlink_outside_site",
                                 f"its folder resolves to {folder!r}, outside the site folder; "
                                 f"allowed with data.follow_external_symlinks")
    problem = regular_file_problem(path, real_root, follow_external_symlinks=follow_external_symlinks)
    if problem is not None:
        return None, BadFile(path, relative_path, site, *problem)
    try:
        return read_image_file(path, **kwargs), None
    except ImageRejected as rejected:
        return None, BadFile(path, relative_path, site, rejected.reason, rejected.detail)


def summarize_bad_files(bad: Sequence[BadFile]) -> dict[str, int]:
    """Count bad files by reason, most frequent first (ties by reason name)."""
    counts = collections.Counter(bad_file.reason for bad_file in bad)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def format_bad_file_summary(site: str, bad: Sequence[BadFile], *, examples: int = 3) -> list[str]:
    """Console lines about one site's skipped files; empty when none were skipped.

    The first line is the total, e.g. ``"nav: 3 files skipped: truncated (2),
    not_an_image (1)"``; then one line per reason with up to ``examples``
    relative paths, e.g. ``"nav:   truncated: 'yes/a.jpg', 'yes/b.jpg'"``.
    """
    if not bad:
        return []
    counts = summarize_bad_files(bad)
    noun = "file" if len(bad) == 1 else "files"
    parts = ", ".join(f"{reason} ({count})" for reason, count in counts.items())
    lines = [f"{site}: {len(bad)} {noun} skipped: {parts}"]
    for reason, count in counts.items():
        paths = [bad_file.relative_path for bad_file in bad if bad_file.reason == reason]
        shown = ", ".join(repr(path) for path in paths[:examples])
        more = f" and {count - examples} more" if count > examples else ""
        lines.append(f"{site}:   {reason}: {shown}{more}")
    return lines
