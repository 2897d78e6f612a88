"""The crop cache: bad files counted, reuse, rebuild on change, atomic concurrent builds."""
from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.cache import CropParams, load_site


def make_site(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for folder in ("yes", "no"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = np.zeros((80, 100), np.uint8)
            cv2.ellipse(image, (50, 40), (30 + index, 25), 0, 0, 360, int(rng.integers(90, 200)), -1)
            cv2.imwrite(str(root / folder / f"img {index}.jpg"), image)
    return root


def add_bad_files(root: Path) -> None:
    (root / "yes" / "empty.jpg").write_bytes(b"")
    (root / "yes" / "text.jpg").write_text("not an image at all")
    (root / "no" / "black.png").write_bytes(cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes())
    (root / "no" / ".DS_Store").write_bytes(b"\0")


def test_bad_files_are_skipped_and_counted(tmp_path):
    root = make_site(tmp_path / "site")
    add_bad_files(root)
    site = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    assert len(site.samples) == 12
    assert site.images.shape == (12, 48, 48) and site.images.dtype == np.uint8
    assert site.hashes.dtype == np.uint64 and len(site.hashes) == 12
    reasons = sorted(b.reason for b in site.bad_files)
    assert reasons == ["constant_image", "empty_file", "hidden_file", "not_an_image"]
    assert [s.relative_path for s in site.samples][:2] == ["no/img 0.jpg", "no/img 1.jpg"]


def test_second_load_is_a_cache_hit_with_identical_pixels(tmp_path):
    root = make_site(tmp_path / "site")
    first = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    second = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    assert not first.cache_hit and second.cache_hit
    np.testing.assert_array_equal(first.images, second.images)
    assert [s.sha256 for s in first.samples] == [s.sha256 for s in second.samples]


def test_moved_site_reuses_cache_and_changed_params_rebuild(tmp_path):
    root = make_site(tmp_path / "site")
    load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert load_site("renamed", moved, CropParams(image_size=48), cache_dir=tmp_path / "cache").cache_hit
    assert not load_site("x", root, CropParams(image_size=40), cache_dir=tmp_path / "cache").cache_hit
    assert not load_site("x", root, CropParams(image_size=48, crop=False), cache_dir=tmp_path / "cache").cache_hit


def test_added_image_rebuilds_bundle_reusing_known_rows(tmp_path, monkeypatch):
    root = make_site(tmp_path / "site")
    load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    cv2.imwrite(str(root / "yes" / "new.png"), np.pad(np.full((40, 40), 150, np.uint8), 20))
    import datasets.cache as cache

    decoded = []
    original = cache._process_chunk
    monkeypatch.setattr(cache, "_process_chunk", lambda job: decoded.extend(job[0]) or original(job))
    site = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    assert not site.cache_hit and len(site.samples) == 13
    assert [Path(p).name for p in decoded] == ["new.png"]


def test_concurrent_builds_are_safe(tmp_path):
    root = make_site(tmp_path / "site", count=10)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sites = list(pool.map(lambda _: load_site("x", root, CropParams(image_size=32),
                                                  cache_dir=tmp_path / "cache", workers=1), range(4)))
    for site in sites[1:]:
        np.testing.assert_array_equal(site.images, sites[0].images)
    bundles = [p for p in (tmp_path / "cache").rglob("meta.json")]
    assert len(bundles) == 1
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_site_with_only_bad_files_in_one_class_is_an_error(tmp_path):
    root = tmp_path / "site"
    (root / "yes").mkdir(parents=True)
    (root / "no").mkdir()
    cv2.imwrite(str(root / "yes" / "a.png"), np.pad(np.full((40, 40), 150, np.uint8), 20))
    (root / "no" / "broken.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="only one class"):
        load_site("x", root, CropParams(image_size=32), cache_dir=tmp_path / "cache", workers=1)


def test_features_are_cached_aligned_with_the_images(tmp_path):
    import json

    from datasets.shortcuts import FEATURE_NAMES, image_features

    root = make_site(tmp_path / "site")
    add_bad_files(root)
    first = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    assert first.features.shape == (12, len(FEATURE_NAMES)) and first.features.dtype == np.float64
    for row in (0, 7):
        data = Path(first.samples[row].path).read_bytes()
        grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(first.features[row], image_features(data, grey, tuple(first.boxes[row])))
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("meta.json")]
    assert meta["feature_names"] == list(FEATURE_NAMES)
    second = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    assert second.cache_hit
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.subset([3, 1]).features, first.features[[3, 1]])


def test_reused_rows_keep_their_features(tmp_path):
    from datasets.shortcuts import FEATURE_NAMES

    root = make_site(tmp_path / "site")
    first = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    cv2.imwrite(str(root / "yes" / "new.png"), np.pad(np.full((40, 40), 150, np.uint8), 20))
    second = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    assert not second.cache_hit
    by_sha = {s.sha256: row for row, s in enumerate(second.samples)}
    for row, sample in enumerate(first.samples):
        np.testing.assert_array_equal(second.features[by_sha[sample.sha256]], first.features[row])
    new = next(row for row, s in enumerate(second.samples) if s.relative_path == "yes/new.png")
    x0, y0, x1, y1 = second.boxes[new]
    border = second.features[new, FEATURE_NAMES.index("border_fraction")]
    assert border == pytest.approx(1 - (x1 - x0) * (y1 - y0) / 80 ** 2) and 0.6 < border < 0.8


# --- a cache that verifies itself ---------------------------------------------

def bundle_folder(cache: Path) -> Path:
    (manifest,) = cache.rglob("manifest.json")
    return manifest.parent


def overwrite_array_with_noise(path: Path) -> None:
    """Same size and header, random payload (pixels overwritten with noise)."""
    data = bytearray(path.read_bytes())
    header = len(data) - np.load(path).nbytes
    data[header:] = np.random.default_rng(1).integers(0, 256, len(data) - header, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def zero_array(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = len(data) - np.load(path).nbytes
    data[header:] = bytes(len(data) - header)
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    # name: (part damaged, how, what the message says)
    "noise_in_images": ("images.npy", overwrite_array_with_noise, "checksum mismatch"),
    "zeroed_hashes": ("hashes.npy", zero_array, "checksum mismatch"),
    "zeroed_features": ("features.npy", zero_array, "checksum mismatch"),
    "truncated_images": ("images.npy", lambda p: p.write_bytes(p.read_bytes()[:1000]),
                         "has 1000 bytes, the manifest says"),
    "broken_meta": ("meta.json", lambda p: p.write_text('{"sha256": [tru'), "has 15 bytes, the manifest says"),
    "meta_same_size": ("meta.json", lambda p: p.write_bytes(p.read_bytes().replace(b'"ok"', b'"no"', 1)),
                       "checksum mismatch"),
    "deleted_boxes": ("boxes.npy", Path.unlink, "is missing"),
    "deleted_images": ("images.npy", Path.unlink, "is missing"),
    "deleted_manifest": ("manifest.json", Path.unlink, "is missing (a bundle of an older cache version"),
    "broken_manifest": ("manifest.json", lambda p: p.write_text("{"), "is not valid JSON"),
    "old_manifest": ("manifest.json", lambda p: p.write_text('{"version": 2, "parts": {}}'),
                     "is of cache version 2, expected"),
}


def site_arrays(site) -> dict:
    return {"images": site.images, "boxes": site.boxes, "hashes": site.hashes, "features": site.features,
            "flags": site.flags, "samples": site.samples, "bad_files": site.bad_files}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_damaged_bundle_is_rebuilt_to_a_fresh_load(tmp_path, case):
    part, damage, problem = CORRUPTIONS[case]
    root = make_site(tmp_path / "site")
    add_bad_files(root)
    params = CropParams(image_size=48)
    fresh = load_site("x", root, params, cache_dir=tmp_path / "fresh", workers=1)
    load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1)
    bundle = bundle_folder(tmp_path / "cache")
    damage(bundle / part)
    lines: list[str] = []
    rebuilt = load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1, report=lines.append)
    assert len(lines) == 1
    assert lines[0].startswith(f"crop cache: {bundle / part} {problem}") and lines[0].endswith("; rebuilding")
    assert not rebuilt.cache_hit
    expected = site_arrays(fresh)
    for key, value in site_arrays(rebuilt).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, expected[key], err_msg=key)
        else:
            assert value == expected[key], key
    again: list[str] = []
    assert load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1, report=again.append).cache_hit
    assert not again
    (param_dir,) = (tmp_path / "cache").iterdir()
    assert [p.name for p in param_dir.iterdir()] == [bundle.name]  # no temporary or damaged folder left


def test_damaged_report_goes_to_stderr_by_default(tmp_path, capsys):
    root = make_site(tmp_path / "site")
    load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    bundle = bundle_folder(tmp_path / "cache")
    zero_array(bundle / "hashes.npy")
    capsys.readouterr()
    load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    assert capsys.readouterr().err == f"crop cache: {bundle / 'hashes.npy'} checksum mismatch; rebuilding\n"


def test_rows_of_a_damaged_bundle_are_not_reused(tmp_path, monkeypatch):
    import datasets.cache as cache

    root = make_site(tmp_path / "site")
    params = CropParams(image_size=48)
    load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1)
    overwrite_array_with_noise(bundle_folder(tmp_path / "cache") / "images.npy")
    cv2.imwrite(str(root / "yes" / "new.png"), np.pad(np.full((40, 40), 150, np.uint8), 20))
    decoded = []
    original = cache._process_chunk
    monkeypatch.setattr(cache, "_process_chunk", lambda job: decoded.extend(job[0]) or original(job))
    grown = load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1)
    assert len(decoded) == 13  # the damaged bundle's 12 rows were decoded again, not copied
    fresh = load_site("x", root, params, cache_dir=tmp_path / "fresh", workers=1)
    np.testing.assert_array_equal(grown.images, fresh.images)
    np.testing.assert_array_equal(grown.hashes, fresh.hashes)


def test_manifest_holds_size_and_crc32_of_every_part(tmp_path):
    import json
    import zlib

    from datasets.cache import BUNDLE_PARTS, CACHE_VERSION

    root = make_site(tmp_path / "site")
    load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)
    bundle = bundle_folder(tmp_path / "cache")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["version"] == CACHE_VERSION == 3
    assert sorted(manifest["parts"]) == sorted(BUNDLE_PARTS)
    for name, entry in manifest["parts"].items():
        data = (bundle / name).read_bytes()
        assert entry == {"bytes": len(data), "crc32": zlib.crc32(data)}
    images = np.load(bundle / "images.npy")
    assert images.shape == (12, 48, 48) and images.dtype == np.uint8


def test_crop_algorithm_version_is_part_of_the_key(tmp_path, monkeypatch):
    import brain_crop

    root = make_site(tmp_path / "site")
    params = CropParams(image_size=48)
    before = params.digest()
    load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1)
    monkeypatch.setattr(brain_crop, "CROP_VERSION", getattr(brain_crop, "CROP_VERSION", 1) + 1, raising=False)
    assert params.digest() != before
    assert not load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1).cache_hit
    assert len(list((tmp_path / "cache").glob("crops-48px-*"))) == 2


def test_fifo_and_external_symlink_in_a_site_do_not_hang_or_leak(tmp_path):
    import os
    import threading

    root = make_site(tmp_path / "site")
    os.mkfifo(root / "yes" / "x.jpg")
    (tmp_path / "passwd").write_bytes(b"root:x:0:0:SECRET:/root:/bin/bash\n")
    (root / "no" / "a.jpg").symlink_to(tmp_path / "passwd")
    outcome: dict = {}
    thread = threading.Thread(daemon=True, target=lambda: outcome.update(site=load_site(
        "x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1)))
    thread.start()
    thread.join(60)
    if thread.is_alive():
        os.close(os.open(root / "yes" / "x.jpg", os.O_WRONLY | os.O_NONBLOCK))  # release the reader
        pytest.fail("load_site blocked on a FIFO")
    site = outcome["site"]
    assert len(site.samples) == 12
    assert [(b.relative_path, b.reason) for b in site.bad_files] == [("no/a.jpg", "symlink_outside_site"),
                                                                     ("yes/x.jpg", "not_a_regular_file")]
    assert not any("SECRET" in b.message() for b in site.bad_files)
    followed = load_site("x", root, CropParams(image_size=48), cache_dir=tmp_path / "cache", workers=1,
                         follow_external_symlinks=True)
    bad = {b.relative_path: (b.reason, b.detail) for b in followed.bad_files}
    assert bad["no/a.jpg"] == ("not_an_image", "text")


def test_concurrent_rebuilds_of_a_damaged_bundle_are_safe(tmp_path):
    root = make_site(tmp_path / "site", count=10)
    params = CropParams(image_size=32)
    fresh = load_site("x", root, params, cache_dir=tmp_path / "fresh", workers=1)
    load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1)
    zero_array(bundle_folder(tmp_path / "cache") / "hashes.npy")
    lines: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sites = list(pool.map(lambda _: load_site("x", root, params, cache_dir=tmp_path / "cache", workers=1,
                                                  report=lines.append), range(4)))
    assert lines and all(line.endswith("hashes.npy checksum mismatch; rebuilding") for line in lines)
    for site in sites:
        np.testing.assert_array_equal(site.hashes, fresh.hashes)
        np.testing.assert_array_equal(site.images, fresh.images)
    (param_dir,) = (tmp_path / "cache").iterdir()
    assert len(list(param_dir.iterdir())) == 1
