"""Tests for datasets.validation: every bad-file case is built on disk in tmp_path."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.records import BadFile
from datasets.validation import (
    IMAGE_EXTENSIONS,
    REASONS,
    ImageRejected,
    check_file,
    decode_image_bytes,
    format_bad_file_summary,
    header_size,
    image_format,
    is_hidden,
    read_image_file,
    regular_file_problem,
    signature_kind,
    summarize_bad_files,
    truncation_problem,
)


def gradient(height: int = 64, width: int = 80) -> np.ndarray:
    """(H, W) uint8 horizontal ramp 0..255 plus a vertical ramp, never constant."""
    x = np.linspace(0, 200, width)[None, :]
    y = np.linspace(0, 55, height)[:, None]
    return np.round(x + y).astype(np.uint8)


def encode(image: np.ndarray, extension: str, params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(extension, image, params or [])
    assert ok
    return buffer.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but carries almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def jpeg_bytes(height: int = 64, width: int = 80) -> bytes:
    return encode(gradient(height, width), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])


# --- one case per bad (or tricky) file, written to disk and read back ---------

CASES = {
    "zero_byte": ("empty.jpg", lambda: b"", "empty_file"),
    "text_named_jpg": ("notes.jpg", lambda: b"this is not an image\n", "not_an_image"),
    "password_file_named_jpg": ("a.jpg", lambda: b"root:x:0:0:root:/root:/bin/bash\n", "not_an_image"),
    "truncated_jpeg": ("cut.jpg", lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated"),
    "truncated_png": ("cut.png", lambda: encode(gradient(), ".png")[:200], "truncated"),
    "corrupt_jpeg": (
        "junk.jpg",
        lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x01" * 200 + b"\xff\xd9",
        "corrupt",
    ),
    "tiny_8x8": ("tiny.png", lambda: encode(gradient(8, 8), ".png"), "too_small"),
    "all_black": ("black.png", lambda: encode(np.zeros((64, 64), np.uint8), ".png"),
                  "constant_image"),
    "all_grey": ("grey.jpg", lambda: encode(np.full((64, 64), 200, np.uint8), ".jpg"),
                 "constant_image"),
    "huge_png_header": ("bomb.png", lambda: png_claiming_size(100_000, 100_000), "too_many_pixels"),
    "ds_store": (".DS_Store", lambda: b"\x00\x00\x00\x01Bud1", "hidden_file"),
    "apple_double": ("._scan.jpg", lambda: jpeg_bytes(), "hidden_file"),
    "hidden_folder": (".cache/scan.jpg", lambda: jpeg_bytes(), "hidden_file"),
    "text_file": ("readme.txt", lambda: b"hello", "unsupported_extension"),
    "no_extension": ("scan", lambda: jpeg_bytes(), "unsupported_extension"),
    "name_with_spaces": ("no 96.jpg", lambda: jpeg_bytes(), None),
    "upper_case_extension": ("Y100.JPG", lambda: jpeg_bytes(), None),
    "png_named_jpg": ("y885.jpg", lambda: encode(gradient(), ".png"), None),
    "jpeg_with_padding": ("padded.jpeg", lambda: jpeg_bytes() + b"\x00" * 300, None),
    "bmp": ("scan.bmp", lambda: encode(gradient(), ".bmp"), None),
    "tiff": ("scan.TIF", lambda: encode(gradient(), ".tiff"), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_file_reason(tmp_path, case):
    relative_path, make_bytes, expected_reason = CASES[case]
    path = tmp_path / "site" / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_bytes())
    image, bad = check_file(str(path), relative_path, "nav")
    if expected_reason is None:
        assert bad is None
        assert image.dtype == np.uint8 and image.shape == (64, 80)
    else:
        assert image is None
        assert isinstance(bad, BadFile)
        assert (bad.reason, bad.site, bad.relative_path, bad.path) == (
            expected_reason, "nav", relative_path, str(path),
        )
        assert bad.message().startswith(f"nav: skipped {relative_path!r}: {expected_reason}")


def test_lossless_formats_keep_exact_values(tmp_path):
    image = gradient()
    for name, data in [("a.png", encode(image, ".png")), ("a.bmp", encode(image, ".bmp")),
                       ("a.tif", encode(image, ".tiff"))]:
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(read_image_file(str(tmp_path / name)), image)


def test_colour_jpeg_becomes_grey(tmp_path):
    grey = gradient()
    data = encode(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100])
    decoded = decode_image_bytes(data)
    assert decoded.shape == (64, 80) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - grey).max() <= 3


@pytest.mark.parametrize("low, high", [(0, 4095), (1000, 5095), (0, 65535)])
def test_sixteen_bit_png_is_stretched_not_clipped(low, high):
    ramp = np.linspace(low, high, 64 * 64).reshape(64, 64)
    image = np.round(ramp).astype(np.uint16)
    decoded = decode_image_bytes(encode(image, ".png"))
    assert decoded.dtype == np.uint8
    assert (decoded.min(), decoded.max()) == (0, 255)
    # The middle value maps to the middle of 0..255, and order is preserved.
    middle = round((int(image[32, 0]) - low) * 255 / (high - low))
    assert decoded[32, 0] == middle
    assert np.all(np.diff(decoded.ravel().astype(int)) >= 0)
    # Worked example for 0..4095: 2048 -> round(2048 * 255 / 4095) = 128.
    if (low, high) == (0, 4095):
        exact = np.zeros((40, 40), np.uint16)
        exact[0, 0], exact[0, 1], exact[0, 2] = 4095, 2048, 16
        assert decode_image_bytes(encode(exact, ".png"))[0, :3].tolist() == [255, 128, 1]


def test_rgba_png_is_composited_on_black():
    bgra = np.zeros((40, 40, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2] = 100, 150, 200  # B, G, R
    bgra[:, :20, 3] = 255
    bgra[:, 20:30, 3] = 128
    bgra[:, 30:, 3] = 0
    decoded = decode_image_bytes(encode(bgra, ".png"))
    # Grey of (R, G, B) = (200, 150, 100) is 0.299*200 + 0.587*150 + 0.114*100 = 159.25.
    assert decoded.shape == (40, 40)
    assert decoded[0, 0] == 159
    assert decoded[0, 25] == 80  # 159.25 * 128 / 255 = 79.9
    assert decoded[0, 35] == 0


def test_palette_png_becomes_grey():
    pil_image = pytest.importorskip("PIL.Image")
    indices = np.zeros((40, 40), np.uint8)
    indices[:, 10:20], indices[:, 20:30], indices[:, 30:] = 1, 2, 3
    image = pil_image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = decode_image_bytes(buffer.getvalue())
    # Black, pure red, pure green, pure blue -> 0, 76, 150, 29 (ITU-R 601 weights).
    assert decoded[0, [0, 15, 25, 35]].tolist() == [0, 76, 150, 29]


def test_greyscale_png_is_kept_exactly():
    image = gradient(33, 47)
    np.testing.assert_array_equal(decode_image_bytes(encode(image, ".png")), image)


@pytest.mark.parametrize("extension", [".png", ".jpg", ".bmp", ".tiff"])
def test_header_size_is_read_without_decoding(extension):
    data = encode(gradient(48, 72), extension)
    assert tuple(header_size(data, image_format(data))) == (72, 48)


@pytest.mark.parametrize("extension", [".png", ".jpg", ".bmp", ".tiff"])
def test_too_many_pixels_is_refused_from_the_header(extension):
    data = encode(gradient(100, 120), extension)
    with pytest.raises(ImageRejected) as rejected:
        decode_image_bytes(data, max_pixels=100 * 120 - 1)
    assert rejected.value.reason == "too_many_pixels"
    assert decode_image_bytes(data, max_pixels=100 * 120).shape == (100, 120)


def test_decompression_bomb_is_refused_before_decoding():
    data = png_claiming_size(100_000, 100_000)  # 10^10 pixels announced in 80 bytes
    assert len(data) < 100
    with pytest.raises(ImageRejected) as rejected:
        decode_image_bytes(data)
    assert rejected.value.reason == "too_many_pixels"
    assert "100000x100000" in rejected.value.detail


def test_min_side_is_configurable():
    data = encode(gradient(20, 40), ".png")
    with pytest.raises(ImageRejected, match="too_small"):
        decode_image_bytes(data)
    assert decode_image_bytes(data, min_side=20).shape == (20, 40)


def test_nearly_constant_image_is_accepted_from_a_range_of_two():
    image = np.full((40, 40), 10, np.uint8)
    image[0, 0] = 11
    with pytest.raises(ImageRejected, match="constant_image"):
        decode_image_bytes(encode(image, ".png"))
    image[0, 0] = 12
    assert decode_image_bytes(encode(image, ".png"))[0, 0] == 12


def test_truncation_rules_on_worked_bytes():
    thumbnail = b"\xff\xd8thumb\xff\xd9"  # an embedded thumbnail ends with its own FFD9
    thumbnail_then_cut_scan = b"\xff\xd8\xff\xe1" + thumbnail + b"\xff\xda" + b"\x12" * 50
    assert truncation_problem(thumbnail_then_cut_scan, "jpeg").startswith("no JPEG end marker")
    assert truncation_problem(thumbnail_then_cut_scan + b"\xff\xd9", "jpeg") == ""
    assert truncation_problem(png_claiming_size(64, 64), "png") == ""
    without_end = png_claiming_size(64, 64)[:-12]
    assert truncation_problem(without_end, "png") == "no PNG IEND chunk at the end"
    bmp = encode(gradient(), ".bmp")
    assert truncation_problem(bmp, "bmp") == ""
    assert truncation_problem(bmp[:-10], "bmp") == f"{len(bmp) - 10} bytes, header says {len(bmp)}"


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\xff\xd8\xff\xe0rest", "jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "png"),
        (b"BM rest", "bmp"),
        (b"II*\x00rest", "tiff"),
        (b"MM\x00*rest", "tiff"),
        (b"GIF89a", None),
        (b"<html>", None),
    ],
)
def test_image_format_from_magic_bytes(data, expected):
    assert image_format(data) == expected


def test_unreadable_path(tmp_path):
    path = tmp_path / "missing.jpg"
    with pytest.raises(ImageRejected) as rejected:
        read_image_file(str(path))
    assert rejected.value.reason == "unreadable"
    image, bad = check_file(str(path), path.name, "mos")
    assert image is None and bad.reason == "unreadable"
    assert bad.detail == "FileNotFoundError: No such file or directory"


# --- what a path is: regular files only, symlinks inside the site ------------

def finishes_within(seconds: float, function, *fifos: Path):
    """``function()``'s result; fails (instead of hanging) when it takes longer than ``seconds``.

    On a timeout every FIFO in ``fifos`` is opened for writing once, which
    releases a reader blocked on it, so the test session itself never hangs.
    """
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"still running after {seconds} s (blocked on a FIFO?)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def make_special(kind: str, path: Path, outside: Path) -> None:
    """Create at ``path`` a FIFO, socket, folder or symlink of the given kind (``outside``: a folder off the site)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        try:
            server.bind(str(path))
        except OSError as error:  # a path longer than the system's limit for socket names
            pytest.skip(f"cannot bind a socket at {path}: {error}")
        finally:
            server.close()
    elif kind == "folder":
        path.mkdir()
        (path / "inside.jpg").write_bytes(jpeg_bytes())
    elif kind == "symlink_outside":
        (outside / "passwd.jpg").write_bytes(b"root:x:0:0:SECRET:/root:/bin/bash\n")
        path.symlink_to(outside / "passwd.jpg")
    elif kind == "symlink_outside_image":
        (outside / "real.jpg").write_bytes(jpeg_bytes())
        path.symlink_to(outside / "real.jpg")
    elif kind == "symlink_inside":
        (path.parent / "real.jpg").write_bytes(jpeg_bytes())
        path.symlink_to("real.jpg")
    elif kind == "symlink_to_fifo":
        os.mkfifo(path.parent / "pipe")
        path.symlink_to("pipe")
    elif kind == "dangling_symlink":
        path.symlink_to(path.parent / "gone.jpg")
    elif kind == "symlink_loop":
        path.symlink_to(path.name)
    else:
        raise ValueError(kind)


SPECIAL_CASES = {
    # kind: (reason with the site folder given, its detail starts with, reason when external symlinks are followed)
    "fifo": ("not_a_regular_file", "a FIFO (named pipe), not a regular file", "not_a_regular_file"),
    "socket": ("not_a_regular_file", "a socket, not a regular file", "not_a_regular_file"),
    "folder": ("not_a_regular_file", "a folder, not a regular file", "not_a_regular_file"),
    "symlink_outside": ("symlink_outside_site", "symlink to '", "not_an_image"),
    "symlink_outside_image": ("symlink_outside_site", "symlink to '", None),
    "symlink_inside": (None, "", None),
    "symlink_to_fifo": ("not_a_regular_file", "a FIFO (named pipe), not a regular file", "not_a_regular_file"),
    "dangling_symlink": ("dangling_symlink", "symlink to a file that does not exist", "dangling_symlink"),
    "symlink_loop": ("dangling_symlink", "symlink that cannot be resolved", "dangling_symlink"),
}


@pytest.mark.parametrize("kind", sorted(SPECIAL_CASES))
@pytest.mark.parametrize("follow", [False, True])
def test_only_regular_files_inside_the_site_are_read(tmp_path, kind, follow):
    site, outside = tmp_path / "site", tmp_path / "elsewhere"
    (site / "yes").mkdir(parents=True)
    outside.mkdir()
    path = site / "yes" / "x.jpg"
    make_special(kind, path, outside)
    reason, detail, followed_reason = SPECIAL_CASES[kind]
    expected = followed_reason if follow else reason
    fifos = [p for p in (path, site / "yes" / "pipe") if p.exists() and stat.S_ISFIFO(os.stat(p).st_mode)]
    image, bad = finishes_within(10, lambda: check_file(str(path), "yes/x.jpg", "nav", site_root=str(site),
                                                        follow_external_symlinks=follow), *fifos)
    if expected is None:
        assert bad is None and image.shape == (64, 80)
        return
    assert image is None and bad.reason == expected
    if expected == reason:
        assert bad.detail.startswith(detail)
    if follow and kind == "symlink_outside":
        assert bad.detail == "text"
    if expected == "symlink_outside_site":
        assert bad.detail == (f"symlink to {str(outside.resolve() / path.resolve().name)!r}, outside the site "
                              f"folder; allowed with data.follow_external_symlinks")
    assert "root:x" not in bad.message() and "SECRET" not in bad.message() and "b'" not in bad.message()


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink_to_fifo", "dangling_symlink"])
def test_read_image_file_never_opens_what_is_not_a_regular_file(tmp_path, kind):
    path = tmp_path / "x.jpg"
    make_special(kind, path, tmp_path)
    fifos = [p for p in (path, tmp_path / "pipe") if p.exists() and stat.S_ISFIFO(os.stat(p).st_mode)]

    def read():
        with pytest.raises(ImageRejected) as rejected:
            read_image_file(str(path))
        return rejected.value.reason

    assert finishes_within(10, read, *fifos) == SPECIAL_CASES[kind][0]


def test_regular_file_problem_without_a_site_root_allows_any_target(tmp_path):
    (tmp_path / "real.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "link.jpg").symlink_to(tmp_path / "real.jpg")
    link = str(tmp_path / "site" / "link.jpg")
    assert regular_file_problem(link) is None
    assert regular_file_problem(link, os.path.realpath(tmp_path / "site"))[0] == "symlink_outside_site"
    assert regular_file_problem(link, os.path.realpath(tmp_path / "site"), follow_external_symlinks=True) is None


def test_a_file_reached_through_a_folder_symlinked_outside_is_skipped(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "yes").symlink_to(tmp_path / "elsewhere")
    path = str(tmp_path / "site" / "yes" / "a.jpg")
    image, bad = check_file(path, "yes/a.jpg", "nav", site_root=str(tmp_path / "site"))
    assert image is None and bad.reason == "symlink_outside_site"
    image, bad = check_file(path, "yes/a.jpg", "nav", site_root=str(tmp_path / "site"), follow_external_symlinks=True)
    assert bad is None and image.shape == (64, 80)


# --- reasons never quote a file's bytes ---------------------------------------

@pytest.mark.parametrize("data, kind", [
    (b"root:x:0:0:root:/root:/bin/bash\n", "text"),
    (b"this is not an image\n", "text"),
    ("caf\u00e9 ".encode() * 200, "text"),  # 512 bytes end inside a two-byte character
    (b"GIF89a\x10\x00\x10\x00" + b"\x00" * 40, "a GIF image (not a supported format)"),
    (b"%PDF-1.7\n%secret", "a PDF document"),
    (b"PK\x03\x04secret.txt", "a zip archive"),
    (b"  <!doctype html><p>secret</p>", "an HTML page"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "a HEIC, AVIF or WebP image (not a supported format)"),
    (b"\x00" * 128 + b"DICM" + b"\x02" * 20, "a DICOM file (not a supported format)"),
    (bytes(range(7, 200)) * 3, "unknown signature"),
    (b"\x00\x01\x02\x03 secret", "unknown signature"),
])
def test_not_an_image_names_at_most_the_kind(tmp_path, data, kind):
    assert signature_kind(data) == kind
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    _, bad = check_file(str(path), "a.jpg", "nav")
    assert (bad.reason, bad.detail) == ("not_an_image", kind)
    assert bad.message() == f"nav: skipped 'a.jpg': not_an_image ({kind})"


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_reason_quotes_the_file_bytes(tmp_path, case):
    relative_path, make_bytes, _ = CASES[case]
    data = make_bytes()
    path = tmp_path / "site" / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    _, bad = check_file(str(path), relative_path, "nav", site_root=str(tmp_path / "site"))
    if bad is not None:
        assert "b'" not in bad.detail and 'b"' not in bad.detail and "\\x" not in bad.detail
        assert not data[:6] or data[:6].decode("latin-1") not in bad.detail


@pytest.mark.parametrize(
    "path, hidden",
    [
        (".DS_Store", True),
        ("yes/._y1.jpg", True),
        (".git/objects/x.jpg", True),
        ("yes/no 96.jpg", False),
        ("./yes/y1.jpg", False),
        ("Testing\\glioma\\.thumbs", True),
    ],
)
def test_is_hidden(path, hidden):
    assert is_hidden(path) is hidden


def test_image_extensions_are_lower_case():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def test_reason_codes_match_records_docstring():
    for reason in REASONS:
        assert f"``{reason}``" in BadFile.__doc__
    with pytest.raises(ValueError, match="unknown reason code"):
        ImageRejected("broken")
    rejected = ImageRejected("truncated", "cut short")
    assert (rejected.reason, rejected.detail) == ("truncated", "cut short")
    assert str(rejected) == "truncated: cut short"


def bad(reason: str, name: str) -> BadFile:
    return BadFile(f"/data/nav/{name}", name, "nav", reason)


def test_summarize_and_format_bad_files():
    files = [
        bad("not_an_image", "yes/a.jpg"),
        bad("truncated", "yes/b.jpg"),
        bad("truncated", "no/c.jpg"),
    ]
    assert summarize_bad_files(files) == {"truncated": 2, "not_an_image": 1}
    assert list(summarize_bad_files(files)) == ["truncated", "not_an_image"]
    assert format_bad_file_summary("nav", files) == [
        "nav: 3 files skipped: truncated (2), not_an_image (1)",
        "nav:   truncated: 'yes/b.jpg', 'no/c.jpg'",
        "nav:   not_an_image: 'yes/a.jpg'",
    ]


def test_format_bad_file_summary_edge_cases():
    assert format_bad_file_summary("nav", []) == []
    assert summarize_bad_files([]) == {}
    assert format_bad_file_summary("mos", [bad("empty_file", "x.jpg")])[0] == (
        "mos: 1 file skipped: empty_file (1)"
    )
    many = [bad("corrupt", f"{index}.jpg") for index in range(5)]
    assert format_bad_file_summary("nav", many, examples=2)[1] == (
        "nav:   corrupt: '0.jpg', '1.jpg' and 3 more"
    )
