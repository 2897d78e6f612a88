"""Site registry, folder layouts, site names and the synthetic phantoms."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.records import check_site_name
from datasets.sites import Br35hSite, MosSite, Site, open_site, parse_site_spec
from datasets.synthetic import PROFILES, make_phantom, write_synthetic_site


def write_image(path: Path, value: int = 120, size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((size, size), np.uint8)
    cv2.circle(image, (size // 2, size // 2), size // 3, value, -1)
    cv2.imwrite(str(path), image)


@pytest.mark.parametrize("name", ["br35h", "nav", "mos", "site_2", "a-b", "x9"])
def test_valid_site_names(name):
    assert check_site_name(name) == name


@pytest.mark.parametrize("name", ["BR35H", "my site", "a.b", "", "é", "a/b", "a=b"])
def test_invalid_site_names(name):
    with pytest.raises(ValueError, match="lower-case"):
        check_site_name(name)


@pytest.mark.parametrize("spec, expected", [("br35h=data/br35h", ("br35h", "data/br35h")),
                                            ("x=/a=b", ("x", "/a=b"))])
def test_parse_site_spec(spec, expected):
    assert parse_site_spec(spec) == expected


@pytest.mark.parametrize("spec", ["br35h", "=path", "name=", "Bad=path"])
def test_parse_site_spec_errors(spec):
    with pytest.raises(ValueError):
        parse_site_spec(spec)


def test_registry_picks_site_classes(tmp_path):
    assert isinstance(open_site("br35h", tmp_path), Br35hSite)
    assert isinstance(open_site("mos", tmp_path), MosSite)
    assert type(open_site("hospital_x", tmp_path)) is Site


@pytest.mark.parametrize("folders, labels", [
    (["yes", "no"], {"yes": 1, "no": 0}),
    (["Tumor", "No Tumor"], {"Tumor": 1, "No Tumor": 0}),
    (["positive", "negative"], {"positive": 1, "negative": 0}),
    (["tumour", "normal"], {"tumour": 1, "normal": 0}),
    (["glioma", "notumor"], {"glioma": 1, "notumor": 0}),
])
def test_generic_site_labels(tmp_path, folders, labels):
    for folder in folders:
        write_image(tmp_path / folder / "a b.jpg")
        write_image(tmp_path / folder / "c.PNG")
    candidates, skipped = Site("generic", tmp_path).list_files()
    assert len(candidates) == 4 and not skipped
    for candidate in candidates:
        assert candidate.label == labels[candidate.relative_path.split("/")[0]]


def test_mos_layout_with_splits_keeps_subclass(tmp_path):
    for split in ("Training", "Testing"):
        for subclass in ("glioma", "meningioma", "pituitary", "notumor"):
            write_image(tmp_path / split / subclass / f"{subclass}_1.jpg")
    candidates, _ = MosSite("mos", tmp_path).list_files()
    assert len(candidates) == 8
    assert {c.subclass for c in candidates} == {"glioma", "meningioma", "pituitary", "notumor"}
    assert sum(c.label for c in candidates) == 6
    assert candidates[0].relative_path == "Testing/glioma/glioma_1.jpg"


def test_mos_refuses_other_classes(tmp_path):
    write_image(tmp_path / "yes" / "a.jpg")
    write_image(tmp_path / "no" / "a.jpg")
    with pytest.raises(ValueError, match="MOS class folders"):
        MosSite("mos", tmp_path).list_files()


def test_unknown_subfolder_is_named(tmp_path):
    write_image(tmp_path / "yes" / "a.jpg")
    write_image(tmp_path / "maybe" / "a.jpg")
    with pytest.raises(ValueError, match="'maybe'"):
        Site("x", tmp_path).list_files()


@pytest.mark.parametrize("setup, message", [
    ("missing", "does not exist"),
    ("empty", "no class folders"),
    ("one_class", "only one class"),
    ("empty_classes", "no image files"),
])
def test_site_layout_errors(tmp_path, setup, message):
    root = tmp_path / "site"
    if setup != "missing":
        root.mkdir()
    if setup == "one_class":
        write_image(root / "yes" / "a.jpg")
    if setup == "empty_classes":
        (root / "yes").mkdir()
        (root / "no").mkdir()
    with pytest.raises(ValueError, match=message):
        Site("x", root).list_files()


def test_hidden_and_non_image_files_are_skipped_with_reasons(tmp_path):
    write_image(tmp_path / "yes" / "a.jpg")
    write_image(tmp_path / "no" / "b.jpg")
    (tmp_path / "yes" / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "no" / "notes.txt").write_text("hello")
    candidates, skipped = Site("x", tmp_path).list_files()
    assert len(candidates) == 2
    assert sorted(b.reason for b in skipped) == ["hidden_file", "unsupported_extension"]


def test_synthetic_phantoms_are_deterministic_and_sites_differ(tmp_path):
    first = write_synthetic_site(tmp_path / "one", PROFILES["a"], images_per_class=3, size=64, seed=5)
    second = write_synthetic_site(tmp_path / "two", PROFILES["a"], images_per_class=3, size=64, seed=5)
    for path in sorted(first.rglob("*.png")):
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes()
    means = {}
    for key, profile in PROFILES.items():
        rng = np.random.default_rng(0)
        images = np.stack([make_phantom(rng, 64, False, profile) for _ in range(8)])
        means[key] = images[images > 20].mean()
    assert abs(means["a"] - means["c"]) > 10 and abs(means["a"] - means["b"]) > 5


def test_tumour_phantoms_are_brighter_inside_the_brain():
    rng = np.random.default_rng(1)
    tumour = np.stack([make_phantom(rng, 96, True, PROFILES["a"]) for _ in range(10)])
    normal = np.stack([make_phantom(rng, 96, False, PROFILES["a"]) for _ in range(10)])

    def bright_inside(images):
        kernel = np.ones((5, 5), np.uint8)
        inside = [cv2.erode((image > 20).astype(np.uint8), kernel, iterations=2).astype(bool) for image in images]
        return sum(int(((image > 175) & mask).sum()) for image, mask in zip(images, inside))

    assert bright_inside(tumour) > 10 * max(bright_inside(normal), 1)


def write_two_class_site(root: Path) -> Path:
    write_image(root / "yes" / "a.jpg")
    write_image(root / "no" / "b.jpg")
    return root


def list_within(site: Site, seconds: float = 20, **kwargs):
    """``site.list_files(**kwargs)``, failing instead of hanging when it takes longer than ``seconds``."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(value=site.list_files(**kwargs)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"list_files still running after {seconds} s"
    return outcome["value"]


@pytest.mark.parametrize("follow", [False, True])
def test_special_files_and_symlinks_are_skipped_with_reasons(tmp_path, follow):
    root = write_two_class_site(tmp_path / "site")
    outside = tmp_path / "elsewhere"
    write_image(outside / "external.jpg")
    (outside / "passwd").write_bytes(b"root:x:0:0:SECRET:/root:/bin/bash\n")
    os.mkfifo(root / "yes" / "x.jpg")
    (root / "yes" / "folder.jpg").mkdir()
    write_image(root / "yes" / "folder.jpg" / "hidden_inside.jpg")
    (root / "yes" / "inside.jpg").symlink_to("a.jpg")
    (root / "yes" / "outside.jpg").symlink_to(outside / "external.jpg")
    (root / "no" / "passwd.jpg").symlink_to(outside / "passwd")
    (root / "no" / "dangling.png").symlink_to(root / "no" / "gone.png")
    candidates, skipped = list_within(Site("x", root), follow_external_symlinks=follow)
    reasons = {bad.relative_path: bad.reason for bad in skipped}
    expected = {"yes/x.jpg": "not_a_regular_file", "yes/folder.jpg": "not_a_regular_file",
                "no/dangling.png": "dangling_symlink"}
    if not follow:
        expected.update({"yes/outside.jpg": "symlink_outside_site", "no/passwd.jpg": "symlink_outside_site"})
    assert reasons == expected
    listed = ["no/b.jpg", "yes/a.jpg", "yes/inside.jpg"] + (["no/passwd.jpg", "yes/outside.jpg"] if follow else [])
    assert [c.relative_path for c in candidates] == sorted(listed)
    details = {bad.relative_path: bad.detail for bad in skipped}
    assert details["yes/x.jpg"] == "a FIFO (named pipe), not a regular file"
    assert details["yes/folder.jpg"] == "a folder, not a regular file"
    assert details["no/dangling.png"] == "symlink to a file that does not exist"
    if not follow:
        assert details["no/passwd.jpg"] == (f"symlink to {str((outside / 'passwd').resolve())!r}, outside the "
                                            f"site folder; allowed with data.follow_external_symlinks")
    assert not any("SECRET" in bad.message() or "root:x" in bad.message() for bad in skipped)


def test_class_folder_symlinked_outside_the_site(tmp_path):
    root = tmp_path / "site"
    write_image(root / "no" / "b.jpg")
    write_image(tmp_path / "elsewhere" / "a.jpg")
    write_image(tmp_path / "elsewhere" / "c.jpg")
    (root / "yes").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"only one class .* \(2 files skipped: symlink_outside_site \(2\)\)"):
        Site("x", root).list_files()
    candidates, skipped = Site("x", root).list_files(follow_external_symlinks=True)
    assert [c.relative_path for c in candidates] == ["no/b.jpg", "yes/a.jpg", "yes/c.jpg"] and not skipped


def test_site_root_reached_through_a_symlink_keeps_its_inside_symlinks(tmp_path):
    real = write_two_class_site(tmp_path / "real")
    (real / "yes" / "copy.jpg").symlink_to(real / "yes" / "a.jpg")  # absolute, inside the real folder
    (tmp_path / "alias").symlink_to(real)
    candidates, skipped = Site("x", tmp_path / "alias").list_files()
    assert [c.relative_path for c in candidates] == ["no/b.jpg", "yes/a.jpg", "yes/copy.jpg"] and not skipped


def test_socket_named_like_an_image_is_skipped(tmp_path, monkeypatch):
    import socket

    root = write_two_class_site(tmp_path / "site")
    monkeypatch.chdir(root / "yes")  # a short relative name: socket paths are limited to about 100 bytes
    server = socket.socket(socket.AF_UNIX)
    server.bind("s.png")
    server.close()
    _, skipped = list_within(Site("x", root))
    assert [(b.relative_path, b.reason, b.detail) for b in skipped] == [
        ("yes/s.png", "not_a_regular_file", "a socket, not a regular file")]
