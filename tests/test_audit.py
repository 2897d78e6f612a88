"""Perceptual hash, near-duplicate search and the leakage audit."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.audit import (
    LEAKAGE_POLICIES,
    AuditSite,
    apply_leakage_policy,
    audit_pairs_caption,
    audit_pairs_montage,
    caption_band,
    format_audit_table,
    leaked_keys,
    run_audit,
)
from datasets.phash import (
    DEFAULT_THRESHOLD_BITS,
    HASH_DESCRIPTION,
    duplicate_groups,
    hamming_distance_matrix,
    near_duplicate_pairs,
    perceptual_hash,
)
from datasets.records import Sample

CANVAS = 160
CROP = 112


# ---------------------------------------------------------------- synthetic brains


def ellipse(centre, axes, angle) -> np.ndarray:
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])), angle, 0, 360, 1, -1)
    return mask.astype(bool)


def make_brain(shape_seed: int, texture_seed: int) -> np.ndarray:
    """(160, 160) uint8 head on black: skull ring, smooth texture, dark/bright blobs.

    ``shape_seed`` fixes the head outline, ``texture_seed`` the inside, so two
    calls with one shape seed give similar-looking but different images.
    """
    shape_rng = np.random.default_rng(shape_seed)
    texture_rng = np.random.default_rng(texture_seed + 1000)
    centre = CANVAS / 2 + shape_rng.uniform(-6, 6, 2)
    axes = CANVAS * shape_rng.uniform(0.28, 0.36, 2)
    angle = shape_rng.uniform(-20, 20)
    head, brain = ellipse(centre, axes, angle), ellipse(centre, axes - 6, angle)
    field = cv2.GaussianBlur(texture_rng.normal(0, 1, (CANVAS, CANVAS)).astype(np.float32), (0, 0), 5)
    field = (field - field.min()) / np.ptp(field)
    image = np.zeros((CANVAS, CANVAS), np.float32)
    image[brain] = 70 + 110 * field[brain]
    for _ in range(4):
        blob = ellipse(centre + texture_rng.uniform(-0.5, 0.5, 2) * axes, texture_rng.uniform(4, 12, 2),
                       texture_rng.uniform(0, 180)) & brain
        image[blob] = texture_rng.choice([25.0, 235.0])
    image[head & ~brain] = 215
    image = cv2.GaussianBlur(image, (0, 0), 1.0) + texture_rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def crop(image: np.ndarray) -> np.ndarray:
    """Crop to the box of pixels above 30 (after blur) and resize to 112x112, like the crop cache."""
    rows, columns = np.nonzero(cv2.GaussianBlur(image, (5, 5), 0) > 30)
    box = image[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    return cv2.resize(box, (CROP, CROP), interpolation=cv2.INTER_AREA)


def jpeg(image, quality):
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


def rescale(image, factor):
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)


def intensity(image, gain=1.0, gamma=1.0):
    return np.clip(255 * (image / 255.0) ** gamma * gain, 0, 255).astype(np.uint8)


#: Each makes a copy of a full image; the copy is then cropped again.
COPIES = {
    "jpeg-30": lambda image: jpeg(image, 30),
    "jpeg-50": lambda image: jpeg(image, 50),
    "resize-0.5": lambda image: rescale(image, 0.5),
    "resize-1.5": lambda image: rescale(image, 1.5),
    "padded-recropped": lambda image: cv2.copyMakeBorder(image, 30, 5, 12, 40, cv2.BORDER_CONSTANT, value=0),
    "brightness+15%": lambda image: intensity(image, gain=1.15),
    "brightness-15%": lambda image: intensity(image, gain=0.85),
    "gamma-0.8": lambda image: intensity(image, gamma=0.8),
    "gamma-1.25": lambda image: intensity(image, gamma=1.25),
    "jpeg-40-half-brighter": lambda image: jpeg(intensity(rescale(image, 0.5), gain=1.1), 40),
}

BRAINS = 16


@pytest.fixture(scope="module")
def brains() -> list[np.ndarray]:
    return [make_brain(seed, seed) for seed in range(BRAINS)]


@pytest.fixture(scope="module")
def brain_hashes(brains) -> np.ndarray:
    return perceptual_hash(np.stack([crop(image) for image in brains]))


# ---------------------------------------------------------------- perceptual_hash


def test_hash_shape_dtype_and_determinism(brains, brain_hashes):
    crops = np.stack([crop(image) for image in brains])
    assert brain_hashes.shape == (BRAINS, 2) and brain_hashes.dtype == np.uint64
    np.testing.assert_array_equal(perceptual_hash(crops), brain_hashes)
    np.testing.assert_array_equal(perceptual_hash(crops[3:5]), brain_hashes[3:5])  # batch-independent
    # Median threshold over 128 coefficients: 64 bits set.
    assert np.bitwise_count(brain_hashes).sum(axis=1).tolist() == [64] * BRAINS


def test_hash_degenerate_inputs():
    assert perceptual_hash(np.zeros((0, 64, 64), np.uint8)).shape == (0, 2)
    blank = perceptual_hash(np.stack([np.zeros((50, 70), np.uint8), np.full((50, 70), 200, np.uint8)]))
    assert hamming_distance_matrix(blank, blank)[0, 1] == 0
    tiny = perceptual_hash(np.random.default_rng(0).integers(0, 256, (2, 5, 9), dtype=np.uint8))
    assert tiny.shape == (2, 2)


@pytest.mark.parametrize("bad", [np.zeros((64, 64), np.uint8), np.zeros((2, 64, 64), np.float32),
                                 np.zeros((2, 0, 64), np.uint8)])
def test_hash_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        perceptual_hash(bad)


@pytest.mark.parametrize("name", sorted(COPIES))
def test_planted_copies_are_found(name, brains, brain_hashes):
    copies = perceptual_hash(np.stack([crop(COPIES[name](image)) for image in brains]))
    distance = np.bitwise_count(brain_hashes ^ copies).sum(axis=1)
    assert distance.max() <= DEFAULT_THRESHOLD_BITS - 8, distance.tolist()


def test_black_borders_do_not_matter(brains, brain_hashes):
    crops = [crop(image) for image in brains]
    bordered = [cv2.resize(np.pad(c, ((20, 0), (0, 14))), (CROP, CROP), interpolation=cv2.INTER_AREA) for c in crops]
    distance = np.bitwise_count(brain_hashes ^ perceptual_hash(np.stack(bordered))).sum(axis=1)
    assert distance.max() <= 8, distance.tolist()


def test_similar_but_different_images_do_not_match(brain_hashes):
    # Same head outline, other texture and blobs.
    similar = perceptual_hash(np.stack([crop(make_brain(seed, seed + 500)) for seed in range(BRAINS)]))
    distance = np.bitwise_count(brain_hashes ^ similar).sum(axis=1)
    assert distance.min() > DEFAULT_THRESHOLD_BITS + 8, distance.tolist()
    # Different brains do not match each other either.
    i, _, _ = near_duplicate_pairs(np.concatenate([brain_hashes, similar]), threshold=DEFAULT_THRESHOLD_BITS)
    assert i.size == 0


def test_audit_finds_exactly_the_planted_copies(brains, brain_hashes):
    # Site "one": all brains; site "two": copies of brains 0..5 plus 6 other brains.
    copies = [crop(COPIES[name](brains[k])) for k, name in enumerate(sorted(COPIES)[:6])]
    others = [crop(make_brain(100 + k, 100 + k)) for k in range(6)]
    one = [Sample(f"/d/one/{k}.png", f"{k:02d}.png", "one", k % 2, "x", "") for k in range(BRAINS)]
    two = [Sample(f"/d/two/{k}.png", f"{k:02d}.png", "two", k % 2, "x", "") for k in range(12)]
    two_hashes = perceptual_hash(np.stack(copies + others))
    result = run_audit([AuditSite("one", one, brain_hashes), AuditSite("two", two, two_hashes)])
    expected = [(f"one/{k:02d}.png", f"two/{k:02d}.png") for k in range(6)]
    assert sorted((p["a"], p["b"]) for p in result.pairs) == expected
    assert result.overlap["one"]["two"]["images"] == 6 and result.overlap["two"]["one"]["images"] == 6


# ---------------------------------------------------------------- search primitives


def brute_popcount(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def popcount(row_a, row_b) -> int:
        return sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(row_a, row_b))

    return np.array([[popcount(row_a, row_b) for row_b in b] for row_a in a])


@pytest.mark.parametrize("words", [1, 2, 3])
def test_hamming_distance_matrix_matches_brute_force(words):
    rng = np.random.default_rng(words)
    a = rng.integers(0, 2**64, (7, words), dtype=np.uint64)
    b = rng.integers(0, 2**64, (5, words), dtype=np.uint64)
    distance = hamming_distance_matrix(a, b)
    assert distance.dtype == np.uint16 and distance.shape == (7, 5)
    np.testing.assert_array_equal(distance, brute_popcount(a, b))
    assert hamming_distance_matrix(a, a).diagonal().tolist() == [0] * 7


def test_hamming_distance_matrix_worked_example():
    a = np.array([[0b1011, 0]], np.uint64)
    b = np.array([[0b0001, 0], [0b1011, 2**63], [0, 0]], np.uint64)
    assert hamming_distance_matrix(a, b).tolist() == [[2, 1, 3]]
    with pytest.raises(ValueError):
        hamming_distance_matrix(a, b[:, :1])
    with pytest.raises(ValueError):
        hamming_distance_matrix(a.astype(np.int64), b)


def near_hashes(seed: int, count: int, words: int) -> np.ndarray:
    """Random hashes where about half are a few bit flips from an earlier one."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, (count, words), dtype=np.uint64)
    for k in range(1, count, 2):
        source = hashes[rng.integers(0, k)].copy()
        for _ in range(rng.integers(0, 6)):
            word, bit = rng.integers(0, words), rng.integers(0, 64)
            source[word] ^= np.uint64(1) << np.uint64(bit)
        hashes[k] = source
    return hashes


@pytest.mark.parametrize("block", [1, 3, 7, 2048])
@pytest.mark.parametrize("threshold", [0, 4, 30])
def test_near_duplicate_pairs_match_brute_force(block, threshold):
    a, b = near_hashes(1, 23, 2), near_hashes(1, 17, 2)  # b shares its first rows with a
    full = brute_popcount(a, a)
    i, j, distance = near_duplicate_pairs(a, threshold=threshold, block=block)
    expected = [(x, y, full[x, y]) for x in range(23) for y in range(x + 1, 23) if full[x, y] <= threshold]
    assert list(zip(i.tolist(), j.tolist(), distance.tolist())) == expected
    cross = brute_popcount(a, b)
    i, j, distance = near_duplicate_pairs(a, b, threshold=threshold, block=block)
    expected = [(x, y, cross[x, y]) for x in range(23) for y in range(17) if cross[x, y] <= threshold]
    assert list(zip(i.tolist(), j.tolist(), distance.tolist())) == expected
    assert i.dtype == np.int64 and distance.dtype == np.uint16


def test_near_duplicate_pairs_edge_cases():
    empty = np.zeros((0, 2), np.uint64)
    some = near_hashes(0, 4, 2)
    for result in (near_duplicate_pairs(empty, threshold=3), near_duplicate_pairs(empty, some, threshold=3)):
        assert [len(x) for x in result] == [0, 0, 0]
    with pytest.raises(ValueError):
        near_duplicate_pairs(some, threshold=-1)
    with pytest.raises(ValueError):
        near_duplicate_pairs(some, threshold=1, block=0)


def test_duplicate_groups_worked_example():
    groups = duplicate_groups(7, np.array([0, 3, 1, 6]), np.array([3, 5, 2, 5]))
    assert groups.tolist() == [0, 1, 1, 0, 2, 0, 0]
    assert duplicate_groups(3, [], []).tolist() == [0, 1, 2]
    assert duplicate_groups(0, [], []).tolist() == []
    with pytest.raises(ValueError):
        duplicate_groups(3, [0], [3])


# ---------------------------------------------------------------- audit on a tiny three-site example

#: Well separated patterns (>= 16 bits apart); ^k flips a few low bits.
P = [0, 0xFFFF, 0xFFFF0000, 0xFFFF00000000, 0xFFFF000000000000, 0x00FF00FF00FF00FF]

TINY = {
    # site: [(file, hash, label)]
    "tr": [("a.png", P[0], 1), ("b.png", P[0] ^ 1, 1), ("c.png", P[1], 0), ("d.png", P[2], 0),
           ("e.png", P[2] ^ 3, 0), ("f.png", P[3], 1), ("g.png", P[4], 1), ("h.png", P[4] ^ 1, 1)],
    "va": [("x.png", P[1] ^ 1, 0), ("y.png", P[5], 1)],
    "te": [("p.png", P[0] ^ 2, 0), ("q.png", P[2] ^ 4, 0), ("r.png", P[5] ^ 1, 1)],
}


def tiny_sites() -> list[AuditSite]:
    sites = []
    for name, rows in TINY.items():
        samples = [Sample(f"/data/{name}/{file}", file, name, label, "tumour" if label else "no_tumour", "")
                   for file, _, label in rows]
        hashes = np.array([[value] for _, value, _ in rows], dtype=np.uint64)
        sites.append(AuditSite(name, samples, hashes, bad_files={"tr": 0, "va": 1, "te": 2}[name]))
    return sites


@pytest.fixture()
def tiny_result():
    return run_audit(tiny_sites(), threshold_bits=2)


def test_audit_site_summaries(tiny_result):
    assert tiny_result.sites["tr"] == {
        "images": 8, "bad_files": 0, "duplicate_groups_within": 3, "images_in_duplicate_groups_within": 6,
        "distinct_images": 5, "label_disagreements_within": 0,
    }
    assert tiny_result.sites["te"]["images"] == 3 and tiny_result.sites["te"]["bad_files"] == 2
    assert tiny_result.sites["te"]["duplicate_groups_within"] == 0
    assert tiny_result.groups_within["tr"] == [
        ["tr/a.png", "tr/b.png"], ["tr/d.png", "tr/e.png"], ["tr/g.png", "tr/h.png"],
    ]


def test_audit_ordered_overlap_and_pairs(tiny_result):
    overlap = tiny_result.overlap
    assert overlap["tr"]["te"] == {"images": 3, "label_disagreements": 2}  # a, b, d
    assert overlap["te"]["tr"] == {"images": 2, "label_disagreements": 1}  # p, q
    assert overlap["tr"]["va"] == {"images": 1, "label_disagreements": 0}
    assert overlap["va"]["tr"] == {"images": 1, "label_disagreements": 0}
    assert overlap["va"]["te"] == overlap["te"]["va"] == {"images": 1, "label_disagreements": 0}
    assert tiny_result.pairs == [
        {"a": "tr/c.png", "b": "va/x.png", "distance": 1},
        {"a": "tr/a.png", "b": "te/p.png", "distance": 1},
        {"a": "tr/b.png", "b": "te/p.png", "distance": 2},
        {"a": "tr/d.png", "b": "te/q.png", "distance": 1},
        {"a": "va/y.png", "b": "te/r.png", "distance": 1},
    ]


def test_audit_label_disagreements(tiny_result):
    pairs = tiny_result.label_disagreement_pairs
    assert [(p["a"], p["b"]) for p in pairs] == [("tr/a.png", "te/p.png"), ("tr/b.png", "te/p.png")]
    assert pairs[0]["label_a"] == 1 and pairs[0]["label_b"] == 0
    assert pairs[0]["subclass_a"] == "tumour" and pairs[0]["subclass_b"] == "no_tumour"
    assert pairs[0]["same_site"] is False


def test_audit_within_site_label_disagreement():
    samples = [Sample(f"/s/{k}.png", f"{k}.png", "s", k, "x", "") for k in (0, 1)]
    result = run_audit([AuditSite("s", samples, np.array([[5], [5]], np.uint64))], threshold_bits=0)
    assert result.sites["s"]["label_disagreements_within"] == 2
    assert result.label_disagreement_pairs[0]["same_site"] is True


def test_audit_json(tiny_result):
    data = json.loads(json.dumps(tiny_result.to_json()))
    assert {"threshold_bits", "hash", "sites", "overlap", "pairs", "label_disagreement_pairs"} <= set(data)
    assert data["threshold_bits"] == 2 and isinstance(data["threshold_bits"], int)
    assert data["hash"] == HASH_DESCRIPTION
    overlap = {(row["site"], row["other"]): row for row in data["overlap"]}
    assert len(overlap) == 6 and overlap[("te", "tr")] == {"site": "te", "other": "tr", "images": 2,
                                                           "label_disagreements": 1}
    assert all(isinstance(v, int) for v in data["sites"]["tr"].values())
    assert isinstance(data["pairs"][0]["distance"], int) and len(data["pairs"]) == 5


def test_leaked_keys(tiny_result):
    assert leaked_keys(tiny_result, "tr") == {"va": {"va/x.png"}, "te": {"te/p.png", "te/q.png"}}
    assert leaked_keys(tiny_result, "va") == {"tr": {"tr/c.png"}, "te": {"te/r.png"}}
    with pytest.raises(ValueError):
        leaked_keys(tiny_result, "nope")


def policy_outcome(result, policy):
    sites = {site.name: site.samples for site in tiny_sites()}
    sites["extra"] = [Sample("/e/z.png", "z.png", "extra", 1, "x", "")]
    kept, removed = apply_leakage_policy(result, sites, policy=policy, train_site="tr", eval_sites=["va", "te"])
    return {name: [s.relative_path for s in samples] for name, samples in kept.items()}, removed


def test_policy_purge_train(tiny_result):
    kept, removed = policy_outcome(tiny_result, "purge-train")
    # c leaks to va; a, b (group) and d (group with e) leak to te; g/h group keeps g.
    assert kept["tr"] == ["f.png", "g.png"]
    assert removed == {"tr": 6, "va": 0, "te": 0, "extra": 0}
    assert kept["te"] == ["p.png", "q.png", "r.png"] and kept["extra"] == ["z.png"]


def test_policy_purge_eval(tiny_result):
    kept, removed = policy_outcome(tiny_result, "purge-eval")
    assert removed == {"tr": 0, "va": 1, "te": 2, "extra": 0}
    assert kept["va"] == ["y.png"] and kept["te"] == ["r.png"] and len(kept["tr"]) == 8


def test_policy_dedupe_train(tiny_result):
    kept, removed = policy_outcome(tiny_result, "dedupe-train")
    # One image per within-site group (a/b, d/e, g/h); leaked c and d stay.
    assert kept["tr"] == ["a.png", "c.png", "d.png", "f.png", "g.png"]
    assert removed == {"tr": 3, "va": 0, "te": 0, "extra": 0}


def test_policy_report_only(tiny_result):
    kept, removed = policy_outcome(tiny_result, "report-only")
    assert removed == {"tr": 0, "va": 0, "te": 0, "extra": 0} and len(kept["tr"]) == 8


def test_policy_errors(tiny_result):
    sites = {site.name: site.samples for site in tiny_sites()}
    assert LEAKAGE_POLICIES == ("purge-train", "purge-eval", "dedupe-train", "report-only")
    with pytest.raises(ValueError, match="unknown leakage policy"):
        apply_leakage_policy(tiny_result, sites, policy="purge-all", train_site="tr", eval_sites=["va"])
    with pytest.raises(ValueError):
        apply_leakage_policy(tiny_result, sites, policy="purge-train", train_site="tr", eval_sites=["tr", "va"])
    with pytest.raises(ValueError):
        apply_leakage_policy(tiny_result, sites, policy="purge-train", train_site="tr", eval_sites=["zz"])


def test_run_audit_rejects_bad_input():
    samples = [Sample("/s/0.png", "0.png", "s", 0, "x", "")]
    with pytest.raises(ValueError):
        run_audit([AuditSite("s", samples, np.zeros((2, 1), np.uint64))])
    with pytest.raises(ValueError):
        run_audit([AuditSite("s", samples, np.zeros((1, 1), np.uint64))] * 2)
    with pytest.raises(ValueError):
        run_audit([AuditSite("s", samples, np.zeros((1, 1), np.uint64))], threshold_bits=-1)


def test_empty_site_is_allowed():
    samples = [Sample("/s/0.png", "0.png", "s", 0, "x", "")]
    result = run_audit([
        AuditSite("s", samples, np.zeros((1, 2), np.uint64)),
        AuditSite("t", [], np.zeros((0, 1), np.uint64)),  # an empty site may come with any width
    ])
    assert result.sites["t"]["images"] == 0 and result.overlap["s"]["t"]["images"] == 0


def test_montage(tiny_result):
    shapes = {"tr": (90, 60), "va": (50, 50), "te": (40, 70)}
    loader = lambda key: np.full(shapes[key.split("/")[0]], 128, np.uint8)  # noqa: E731
    montage = audit_pairs_montage(tiny_result, loader, tile=64)
    assert montage.dtype == np.uint8 and montage.ndim == 3 and montage.shape[2] == 3
    # 5 pairs -> 3 columns, 2 rows of (64 + caption) high cells.
    assert montage.shape[1] == 3 * 2 * 64 + 4 * 6
    red = (montage[..., 0] > 200) & (montage[..., 1] < 100)
    assert red.any()  # label-disagreeing pairs are marked
    only_agreeing = run_audit(tiny_sites()[:2], threshold_bits=2)
    plain = audit_pairs_montage(only_agreeing, loader, tile=64)
    assert not ((plain[..., 0] > 200) & (plain[..., 1] < 100)).any()
    assert audit_pairs_montage(tiny_result, loader, tile=64, max_pairs=2).shape[1] == 2 * 2 * 64 + 3 * 6
    none = run_audit(tiny_sites()[:1], threshold_bits=2)
    assert audit_pairs_montage(none, loader, tile=64).shape == (64 + 2 * (int(14 * 64 / 160) + 4) + 6, 128, 3)


def test_format_audit_table(tiny_result):
    text = format_audit_table(tiny_result)
    lines = text.splitlines()
    assert "<= 2 bits" in lines[0]
    rows = [line.split() for line in lines]
    assert ["tr", "8", "0", "3", "6", "5"] in rows and ["va", "2", "1", "0", "0", "2"] in rows
    te_row = [line for line in lines if line.startswith("te ")][-1]
    assert te_row.split() == ["te", "2", "(1)", "1", "(0)", "-"]  # every cell gives its label disagreements
    tr_row = [line for line in lines if line.startswith("tr ")][-1]
    assert tr_row.split() == ["tr", "-", "1", "(0)", "3", "(2)"]
    assert "cross-site pairs: 5" in text


def test_montage_caption_says_what_the_pairs_are(tiny_result):
    shapes = {"tr": (90, 60), "va": (50, 50), "te": (40, 70)}
    loader = lambda key: np.full(shapes[key.split("/")[0]], 128, np.uint8)  # noqa: E731
    caption = " ".join(audit_pairs_caption(tiny_result, shown=5))
    assert "5 of 5" in caption and "d <= 2 bits" in caption and "Hamming distance" in caption
    assert "decreasing d" in caption and "labels differ first" in caption
    montage = audit_pairs_montage(tiny_result, loader, tile=64)
    band = caption_band(audit_pairs_caption(tiny_result, shown=5), montage.shape[1])
    np.testing.assert_array_equal(montage[:band.shape[0]], band)  # the caption sits on top
    assert (band > 128).any() and band.shape[0] >= 3 * 18  # written, wrapped on several lines
    assert montage.shape[0] == band.shape[0] + 2 * (64 + 2 * (int(14 * 64 / 160) + 4) + 6) + 3 * 6


# ---------------------------------------------------------------- real data


def real_data_dir() -> Path | None:
    candidate = Path(os.environ.get("BRAINMRI_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    return candidate if all((candidate / site).is_dir() for site in ("br35h", "nav", "mos")) else None


@pytest.mark.realdata
def test_real_sites_overlap():
    """Rediscovers the known overlaps of the public sites (all 4,564 images, about 10-15 s)."""
    root = real_data_dir()
    if root is None:
        pytest.skip("real BR35H/NAV/MOS images not found (set BRAINMRI_DATA)")
    from brain_crop import crop_brain
    from datasets.sites import open_site
    from datasets.validation import ImageRejected, read_image_file

    sites = []
    for name in ("br35h", "nav", "mos"):
        candidates, skipped = open_site(name, root / name).list_files()
        samples, crops, bad = [], [], len(skipped)
        for candidate in candidates:
            try:
                image = read_image_file(candidate.path)
            except ImageRejected:
                bad += 1
                continue
            scale = 256 / max(image.shape)  # smaller copies crop faster; the hash does not mind
            if scale < 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            crops.append(crop_brain(image, 128)[0])
            samples.append(Sample(candidate.path, candidate.relative_path, name, candidate.label,
                                  candidate.subclass, ""))
        sites.append(AuditSite(name, samples, perceptual_hash(np.stack(crops)), bad))
    result = run_audit(sites)
    by_name = {site.name: site for site in sites}

    nav_in_br35h = result.overlap["nav"]["br35h"]["images"]
    assert 215 <= nav_in_br35h <= len(by_name["nav"].samples)  # measured 248 of 253
    in_br35h = leaked_keys(result, "br35h")["mos"]
    notumor = {s.key for s in by_name["mos"].samples if s.subclass == "notumor"}
    assert 330 <= len(in_br35h & notumor) <= len(notumor)  # measured 368 of 405
    assert 20 <= len(in_br35h - notumor) <= 120  # measured 46 of 906 (45 meningioma, 1 glioma)
    br35h = result.sites["br35h"]
    assert br35h["duplicate_groups_within"] >= 450 and br35h["images_in_duplicate_groups_within"] >= 2300  # 605, 2753
    assert len(result.label_disagreement_pairs) <= 10  # measured 0


def test_shortcut_baseline_on_source_disjoint_images():
    """The baseline is measured again on the eval images that have no copy in the training site."""
    import types

    from datasets.audit import audit_shortcuts

    rng = np.random.default_rng(0)

    def site(labels, features, hashes):
        return types.SimpleNamespace(labels=np.asarray(labels), features=features, hashes=hashes)

    train_labels = np.tile([0, 1], 40)
    train_features = rng.normal(size=(80, 12))
    train_features[:, 9] += 3 * train_labels  # "sharpness" separates the classes in training
    train_hashes = rng.integers(0, 2 ** 63, size=(80, 2), dtype=np.uint64)
    eval_labels = np.tile([0, 1], 30)
    eval_features = rng.normal(size=(60, 12))
    eval_features[:40, 9] += 3 * eval_labels[:40]  # the shortcut holds on the 40 copies only
    eval_hashes = rng.integers(0, 2 ** 63, size=(60, 2), dtype=np.uint64)
    eval_hashes[:40] = train_hashes[:40]
    result = audit_shortcuts({"train": site(train_labels, train_features, train_hashes),
                              "test": site(eval_labels, eval_features, eval_hashes)}, "train", n_resamples=50)
    entry = result["sites"]["test"]
    assert entry["baseline"]["auc"] > 0.7
    assert entry["baseline_source_disjoint"]["images"] == 20
    assert abs(entry["baseline_source_disjoint"]["auc"] - 0.5) < 0.3
    assert "baseline_source_disjoint" not in result["sites"]["train"]
