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
