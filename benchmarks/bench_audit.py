"""Leakage audit: hashing and near-duplicate search speed, and the threshold trade-off.

    python benchmarks/bench_audit.py [--data ../shared/data] [--images 10000]
    python benchmarks/bench_audit.py --threshold-table

The default mode hashes and searches 10,000 crops of 128x128 (every real
image of the shared sites, decoded and cropped once and cached in the temp
folder, plus slightly perturbed copies to reach 10,000; synthetic phantoms
when the data is absent). Decoding is not timed. It times hashing, the search
within all images and across two halves, and the whole audit of three sites,
against the naive way (``imagehash.phash`` per PIL image and a Python double
loop over pairs, run on a subset and extrapolated). Prints a table and writes
``benchmarks/results/audit.json``.

``--threshold-table`` measures copies missed versus matches of different
scans at several thresholds on the real data (see :mod:`datasets.phash`) and
writes ``benchmarks/results/audit_threshold.json`` and the table inside
``benchmarks/results/audit_threshold.md`` (text outside the table markers is
kept). Montages of real pairs per distance band are written to the temp
folder for checking by eye.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brain_crop import crop_brain  # noqa: E402
from datasets.audit import AuditSite, run_audit  # noqa: E402
from datasets.phash import (  # noqa: E402
    DEFAULT_THRESHOLD_BITS,
    HASH_DESCRIPTION,
    duplicate_groups,
    hamming_distance_matrix,
    near_duplicate_pairs,
    perceptual_hash,
)
from datasets.records import Sample  # noqa: E402

SITES = ("br35h", "nav", "mos")
CROP_SIZE = 128
RESULTS = REPO / "benchmarks" / "results"
SCRATCH = Path(tempfile.gettempdir()) / "brainmri-bench-audit"
TABLE_START, TABLE_END = "<!-- threshold table: start -->", "<!-- threshold table: end -->"


# ---------------------------------------------------------------- data


def read_grey(path: str) -> np.ndarray | None:
    from datasets.validation import ImageRejected, read_image_file

    try:
        return read_image_file(path)
    except ImageRejected:
        return None


def real_crops(data: Path) -> dict[str, np.ndarray]:
    """Every real image of the shared sites cropped to 128x128, cached in the temp folder.

    Returns arrays ``keys``, ``paths``, ``labels``, ``subclasses`` and ``crops`` (N, 128, 128) uint8.
    """
    from datasets.sites import open_site

    cache = SCRATCH / f"crops-{CROP_SIZE}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return {name: stored[name] for name in stored.files}
    keys, paths, labels, subclasses, crops = [], [], [], [], []
    for site in SITES:
        for candidate in open_site(site, data / site).list_files()[0]:
            image = read_grey(candidate.path)
            if image is None:
                continue
            keys.append(f"{site}/{candidate.relative_path}")
            paths.append(candidate.path)
            labels.append(candidate.label)
            subclasses.append(candidate.subclass)
            crops.append(crop_brain(image, CROP_SIZE)[0])
    stored = {"keys": np.array(keys), "paths": np.array(paths), "labels": np.array(labels),
              "subclasses": np.array(subclasses), "crops": np.stack(crops)}
    SCRATCH.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **stored)
    return stored


def synthetic_crops(count: int) -> np.ndarray:
    from datasets.synthetic import PROFILES, make_phantom

    rng = np.random.default_rng(0)
    return np.stack([make_phantom(rng, CROP_SIZE, bool(k % 2), PROFILES["a"]) for k in range(count)])


def perturb(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slightly changed copy of a (S, S) crop: JPEG, gain, a few pixels of shift/zoom."""
    size = crop.shape[0]
    margin = int(rng.integers(1, 6))
    image = cv2.resize(crop[margin:size - margin, margin:size - margin], (size, size))
    image = np.clip(image.astype(np.float32) * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)
    quality = int(rng.integers(40, 95))
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


# ---------------------------------------------------------------- timing mode


def naive_hash_seconds(crops: np.ndarray) -> tuple[float, list]:
    import imagehash
    from PIL import Image

    start = time.perf_counter()
    hashes = [imagehash.phash(Image.fromarray(crop)) for crop in crops]
    return time.perf_counter() - start, hashes


def naive_pairs_seconds(hashes: list, threshold: int) -> tuple[float, int, int]:
    start = time.perf_counter()
    found = pairs = 0
    for first in range(len(hashes)):
        for second in range(first + 1, len(hashes)):
            pairs += 1
            if hashes[first] - hashes[second] <= threshold:
                found += 1
    return time.perf_counter() - start, pairs, found


def timing(args) -> None:
    data = Path(args.data)
    if (data / "br35h").is_dir():
        base = real_crops(data)["crops"]
        source = "real shared images"
    else:
        base = synthetic_crops(min(args.images, 2000))
        source = "synthetic phantoms (no data found)"
    rng = np.random.default_rng(0)
    extra = [perturb(base[k], rng) for k in rng.integers(0, len(base), max(0, args.images - len(base)))]
    crops = np.concatenate([base, np.stack(extra)]) if extra else base[:args.images]
    count = len(crops)
    half = count // 2

    start = time.perf_counter()
    hashes = perceptual_hash(crops)
    hash_seconds = time.perf_counter() - start
    start = time.perf_counter()
    within = near_duplicate_pairs(hashes, threshold=DEFAULT_THRESHOLD_BITS)
    within_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cross = near_duplicate_pairs(hashes[:half], hashes[half:], threshold=DEFAULT_THRESHOLD_BITS)
    cross_seconds = time.perf_counter() - start
    thirds = np.array_split(np.arange(count), 3)
    sites = [AuditSite(f"site{k}", [Sample(f"/x/{n}", f"{n}.png", f"site{k}", int(n % 2), "x", "") for n in part],
                       hashes[part]) for k, part in enumerate(thirds)]
    start = time.perf_counter()
    result = run_audit(sites)
    audit_seconds = time.perf_counter() - start

    subset_hash, subset_pairs = min(args.naive_hash_subset, count), min(args.naive_pair_subset, count)
    naive_hash, naive_hashes = naive_hash_seconds(crops[:subset_hash])
    naive_loop, loop_pairs, _ = naive_pairs_seconds(naive_hashes[:subset_pairs], DEFAULT_THRESHOLD_BITS // 2)
    within_pairs = count * (count - 1) // 2
    cross_pairs = half * (count - half)
    naive_hash_full = naive_hash / subset_hash * count
    naive_search_full = naive_loop / loop_pairs * (within_pairs + cross_pairs)

    rows = [
        ("hash 128x128 crops", count, hash_seconds, naive_hash_full,
         f"imagehash.phash per PIL image: {subset_hash} timed, extrapolated"),
        ("search within (i<j)", within_pairs, within_seconds, naive_loop / loop_pairs * within_pairs,
         f"Python double loop: {loop_pairs} pairs timed, extrapolated"),
        ("search across halves", cross_pairs, cross_seconds, naive_loop / loop_pairs * cross_pairs,
         "Python double loop, extrapolated"),
        ("run_audit, 3 sites", count, audit_seconds, None, ""),
    ]
    total = hash_seconds + within_seconds + cross_seconds
    print(f"{count} crops ({source}), {os.cpu_count()} CPU cores, threshold {DEFAULT_THRESHOLD_BITS} bits")
    print(f"{'step':<24} {'items':>12} {'ours s':>8} {'naive s':>10} {'x faster':>9}  naive method")
    for name, items, ours, naive, note in rows:
        naive_text = f"{naive:>10.1f}" if naive is not None else f"{'-':>10}"
        ratio = f"{naive / ours:>9.0f}" if naive is not None else f"{'-':>9}"
        print(f"{name:<24} {items:>12} {ours:>8.2f} {naive_text} {ratio}  {note}")
    print(f"{'total hash + searches':<24} {'':>12} {total:>8.2f} {naive_hash_full + naive_search_full:>10.1f} "
          f"{(naive_hash_full + naive_search_full) / total:>9.0f}  (naive total extrapolated)")
    print(f"pairs found: within {len(within[0])}, across halves {len(cross[0])}; "
          f"audit cross-site pairs {len(result.pairs)}")

    output = {
        "benchmark": "audit", "images": count, "image_size": CROP_SIZE, "source": source,
        "cpu_count": os.cpu_count(), "machine": platform.platform(), "numpy": np.__version__,
        "opencv": cv2.__version__, "hash": HASH_DESCRIPTION, "threshold_bits": DEFAULT_THRESHOLD_BITS,
        "seconds": {"hash": hash_seconds, "search_within": within_seconds, "search_across_halves": cross_seconds,
                    "hash_plus_searches": total, "run_audit_three_sites": audit_seconds},
        "pairs_found": {"within": int(len(within[0])), "across_halves": int(len(cross[0])),
                        "audit_cross_site": len(result.pairs)},
        "naive_extrapolated": {
            "note": "imagehash.phash (64-bit) per PIL image and a Python double loop over pairs, "
                    "timed on a subset and extrapolated linearly to the full size",
            "hash_images_timed": subset_hash, "hash_seconds_timed": naive_hash,
            "pairs_timed": loop_pairs, "pair_loop_seconds_timed": naive_loop,
            "hash_seconds_extrapolated": naive_hash_full,
            "search_seconds_extrapolated": naive_search_full,
            "total_seconds_extrapolated": naive_hash_full + naive_search_full,
        },
        "speedup_total": (naive_hash_full + naive_search_full) / total,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit.json").write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {RESULTS / 'audit.json'}")


# ---------------------------------------------------------------- threshold mode


def jpeg(image, quality):
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


def rescale(image, factor):
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)


def pad(image, fraction):
    height, width = image.shape
    return cv2.copyMakeBorder(image, int(fraction * height), int(0.3 * fraction * height),
                              int(0.5 * fraction * width), int(fraction * width), cv2.BORDER_CONSTANT, value=0)


def intensity(image, gain=1.0, gamma=1.0, contrast=1.0):
    values = 255.0 * (image / 255.0) ** gamma * gain
    return np.clip((values - 128) * contrast + 128, 0, 255).astype(np.uint8)


#: Copies made from the full decoded image; each is cropped again.
COPIES = {
    "jpeg-30": lambda image: jpeg(image, 30),
    "jpeg-50": lambda image: jpeg(image, 50),
    "resize-0.5": lambda image: rescale(image, 0.5),
    "resize-1.5": lambda image: rescale(image, 1.5),
    "black-border-15%": lambda image: pad(image, 0.15),
    "brightness+15%": lambda image: intensity(image, gain=1.15),
    "brightness-15%": lambda image: intensity(image, gain=0.85),
    "gamma-0.8": lambda image: intensity(image, gamma=0.8),
    "gamma-1.25": lambda image: intensity(image, gamma=1.25),
    "contrast-1.2": lambda image: intensity(image, contrast=1.2),
    "border+half+bright+jpeg40": lambda image: jpeg(intensity(rescale(pad(image, 0.1), 0.6), gain=1.1), 40),
}


def moment_view(crop: np.ndarray, size: int = 128) -> np.ndarray:
    """A crop resampled around its intensity centroid (+-2.5 std), float32, for the pair check."""
    image = crop.astype(np.float32)
    rows, columns = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    total = image.sum() or 1.0
    centre_x, centre_y = (image * columns).sum() / total, (image * rows).sum() / total
    spread_x = np.sqrt((image * (columns - centre_x) ** 2).sum() / total) or 1.0
    spread_y = np.sqrt((image * (rows - centre_y) ** 2).sum() / total) or 1.0
    step_x, step_y = 5 * spread_x / size, 5 * spread_y / size
    matrix = np.float32([[step_x, 0, centre_x - (size - 1) / 2 * step_x],
                         [0, step_y, centre_y - (size - 1) / 2 * step_y]])
    blurred = cv2.GaussianBlur(image, (0, 0), 0.5 * max(step_x, step_y)) if max(step_x, step_y) > 1 else image
    return cv2.warpAffine(blurred, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def pair_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Independent check of a pair: correlation of band-passed crops after affine alignment (ECC).

    Same scans give about 0.9-1.0, different scans about 0.1-0.6.
    """
    a, b = moment_view(first), moment_view(second)
    try:
        _, warp = cv2.findTransformECC(a, b, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5), None, 5)
        b = cv2.warpAffine(b, warp, b.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    except cv2.error:
        pass
    band_a = (cv2.GaussianBlur(a, (0, 0), 1.0) - cv2.GaussianBlur(a, (0, 0), 3.0))[12:-12, 12:-12].ravel()
    band_b = (cv2.GaussianBlur(b, (0, 0), 1.0) - cv2.GaussianBlur(b, (0, 0), 3.0))[12:-12, 12:-12].ravel()
    band_a, band_b = band_a - band_a.mean(), band_b - band_b.mean()
    return float(band_a @ band_b / (np.sqrt((band_a @ band_a) * (band_b @ band_b)) + 1e-9))


def pair_montage(crops, keys, first, second, distance, path: Path) -> None:
    tiles = []
    for a, b, d in zip(first, second, distance):
        tile = np.hstack([crops[a], crops[b]]).copy()
        cv2.putText(tile, f"d={d} {keys[a].split('/')[-1][:12]} | {keys[b].split('/')[-1][:12]}", (2, 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, 255, 1)
        tiles.append(np.pad(tile, 3))
    while len(tiles) % 4:
        tiles.append(np.zeros_like(tiles[0]))
    cv2.imwrite(str(path), np.vstack([np.hstack(tiles[r:r + 4]) for r in range(0, len(tiles), 4)]))


def imagehash_words(crops: np.ndarray) -> np.ndarray:
    """``imagehash.phash`` (64-bit DCT hash) of each crop as (N, 1) uint64."""
    import imagehash
    from PIL import Image

    bits = np.stack([imagehash.phash(Image.fromarray(crop)).hash.ravel() for crop in crops])
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def baseline_rows(crops, labels, sites, chosen, originals, thresholds) -> list[dict]:
    """The same measurements for plain ``imagehash.phash`` of the crop (no verification sampling)."""
    original = imagehash_words(crops[chosen])
    copies = []
    for make in COPIES.values():
        changed = imagehash_words(np.stack([crop_brain(make(image), CROP_SIZE)[0] for image in originals]))
        copies.append(np.bitwise_count(original ^ changed).sum(axis=1))
    copies = np.concatenate(copies)
    first, second, distance = near_duplicate_pairs(imagehash_words(crops), threshold=max(thresholds))
    br35h = np.flatnonzero(sites == "br35h")
    rows = []
    for threshold in thresholds:
        inside = distance <= threshold
        within = inside & (sites[first] == "br35h") & (sites[second] == "br35h")
        _, groups = np.unique(duplicate_groups(len(crops), first[within], second[within])[br35h], return_counts=True)
        rows.append({"threshold": threshold, "copies_missed_percent": float(100 * np.mean(copies > threshold)),
                     "real_pairs": int(inside.sum()),
                     "label_disagreeing_pairs": int((inside & (labels[first] != labels[second])).sum()),
                     "br35h_distinct_images": int(len(groups)), "br35h_largest_group": int(groups.max())})
    return rows


def threshold_table(args) -> None:
    data = Path(args.data)
    if not (data / "br35h").is_dir():
        sys.exit(f"no data in {data} (set --data or BRAINMRI_DATA)")
    stored = real_crops(data)
    keys, crops, labels = stored["keys"], stored["crops"], stored["labels"]
    sites = np.array([key.split("/")[0] for key in keys])
    thresholds = [int(t) for t in args.thresholds.split(",")]
    rng = np.random.default_rng(0)
    started = time.perf_counter()

    # (a) synthetic copies: transform the full decoded image, crop again, compare with the original crop.
    chosen = rng.choice(len(keys), args.copies, replace=False)
    originals = [read_grey(str(stored["paths"][k])) for k in chosen]
    original_hashes = perceptual_hash(crops[chosen])
    copy_distance = {}
    for name, make in COPIES.items():
        copies = perceptual_hash(np.stack([crop_brain(make(image), CROP_SIZE)[0] for image in originals]))
        copy_distance[name] = np.bitwise_count(original_hashes ^ copies).sum(axis=1)
    all_copies = np.concatenate(list(copy_distance.values()))
    baseline_thresholds = [int(t) for t in args.baseline_thresholds.split(",")]
    baseline = baseline_rows(crops, labels, sites, chosen, originals, baseline_thresholds)

    # (b) every pair of real crops, and an independent check of sampled pairs per distance value.
    hashes = perceptual_hash(crops)
    top = max(thresholds)
    first, second, distance = near_duplicate_pairs(hashes, threshold=top)
    checked = {}
    for value in range(top + 1):
        members = np.flatnonzero(distance == value)
        sample = members if len(members) <= args.checks else rng.choice(members, args.checks, replace=False)
        scores = np.array([pair_correlation(crops[first[k]], crops[second[k]]) for k in sample])
        checked[value] = (len(members), scores)
        if len(members) and value % 4 == 0 and value >= 16:
            picks = sample[:24]
            pair_montage(crops, keys, first[picks], second[picks], distance[picks], SCRATCH / f"pairs-d{value}.png")

    rows = []
    br35h = np.flatnonzero(sites == "br35h")
    for threshold in thresholds:
        bins = [checked[v] for v in range(threshold + 1) if checked[v][0]]
        estimate = lambda low, high: sum(n * np.mean((s >= low) & (s < high)) for n, s in bins if len(s))  # noqa: E731
        inside = distance <= threshold
        within = inside & (sites[first] == "br35h") & (sites[second] == "br35h")
        _, groups = np.unique(duplicate_groups(len(keys), first[within], second[within])[br35h], return_counts=True)
        rows.append({
            "threshold": threshold,
            "copies_missed_percent": float(100 * np.mean(all_copies > threshold)),
            "copies_missed_by_kind_percent": {k: float(100 * np.mean(v > threshold)) for k, v in copy_distance.items()},
            "real_pairs": int(inside.sum()),
            "different_estimate": float(estimate(-1.0, 0.6)),
            "uncertain_estimate": float(estimate(0.6, 0.9)),
            "same_scan_estimate": float(estimate(0.9, 2.0)),
            "label_disagreeing_pairs": int((inside & (labels[first] != labels[second])).sum()),
            "br35h_distinct_images": int(len(groups)),
            "br35h_largest_group": int(groups.max()),
        })
    random_pairs = rng.integers(0, len(keys), (20000, 2))
    random_distance = hamming_distance_matrix(hashes[random_pairs[:, 0]], hashes[random_pairs[:, 1]]).diagonal()

    header = ("| threshold (bits) | synthetic copies missed | real pairs within | of which different scans (est.) "
              "| uncertain (est.) | same scan (est.) | pairs with disagreeing labels | BR35H distinct images "
              "| largest BR35H group |")
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        lines.append(
            f"| {row['threshold']}{' (default)' if row['threshold'] == DEFAULT_THRESHOLD_BITS else ''} "
            f"| {row['copies_missed_percent']:.1f} % | {row['real_pairs']} | {row['different_estimate']:.0f} "
            f"| {row['uncertain_estimate']:.0f} | {row['same_scan_estimate']:.0f} | {row['label_disagreeing_pairs']} "
            f"| {row['br35h_distinct_images']} "
            f"| {row['br35h_largest_group']} |"
        )
    lines += [
        "",
        f"Hash: {HASH_DESCRIPTION}. Synthetic copies: {args.copies} random real images x {len(COPIES)} changes "
        f"({', '.join(COPIES)}), each decoded image changed, cropped again with `brain_crop.crop_brain` "
        f"({CROP_SIZE} px) and compared with its original crop. Real pairs: all "
        f"{len(keys) * (len(keys) - 1) // 2} pairs of the {len(keys)} real crops (BR35H, NAV, MOS together); "
        f"different / uncertain / same scan split by the correlation of band-passed crops after affine "
        f"alignment (< 0.6 / 0.6-0.9 / >= 0.9), from up to {args.checks} sampled pairs per distance value. "
        f"Pairs with disagreeing labels (tumour vs no tumour) are false matches unless a label is wrong. "
        f"Random pairs of real crops: median distance {np.median(random_distance):.0f} bits, "
        f"1st percentile {np.percentile(random_distance, 1):.0f} (includes true copies).",
        "",
        "| change | " + " | ".join(f"missed at {t}" for t in thresholds) + " | median distance |",
        "|---|" + "---|" * (len(thresholds) + 1),
    ]
    for name, values in copy_distance.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * np.mean(values > t):.1f} %" for t in thresholds)
                     + f" | {np.median(values):.0f} |")
    lines += [
        "",
        "Baseline, plain `imagehash.phash` (64-bit DCT hash) of the same crops:",
        "",
        "| threshold (bits) | synthetic copies missed | real pairs within | pairs with disagreeing labels "
        "| BR35H distinct images | largest BR35H group |",
        "|" + "---|" * 6,
    ]
    for row in baseline:
        lines.append(f"| {row['threshold']} | {row['copies_missed_percent']:.1f} % | {row['real_pairs']} "
                     f"| {row['label_disagreeing_pairs']} | {row['br35h_distinct_images']} "
                     f"| {row['br35h_largest_group']} |")
    table = "\n".join(lines)
    print(table)
    print(f"({time.perf_counter() - started:.0f} s; pair montages in {SCRATCH})")

    RESULTS.mkdir(parents=True, exist_ok=True)
    output = {"hash": HASH_DESCRIPTION, "default_threshold_bits": DEFAULT_THRESHOLD_BITS, "crop_size": CROP_SIZE,
              "images": int(len(keys)), "synthetic_originals": args.copies, "checks_per_distance": args.checks,
              "rows": rows, "imagehash_phash_baseline_rows": baseline,
              "random_pair_distance_percentiles": {
                  str(p): float(np.percentile(random_distance, p)) for p in (1, 5, 50)}}
    (RESULTS / "audit_threshold.json").write_text(json.dumps(output, indent=2) + "\n")
    markdown = RESULTS / "audit_threshold.md"
    block = f"{TABLE_START}\n{table}\n{TABLE_END}"
    text = markdown.read_text() if markdown.exists() else f"# Leakage audit threshold\n\n{block}\n"
    if TABLE_START in text and TABLE_END in text:
        text = text[:text.index(TABLE_START)] + block + text[text.index(TABLE_END) + len(TABLE_END):]
    markdown.write_text(text)
    print(f"wrote {markdown} and {RESULTS / 'audit_threshold.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BRAINMRI_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--naive-hash-subset", type=int, default=1000)
    parser.add_argument("--naive-pair-subset", type=int, default=400)
    parser.add_argument("--threshold-table", action="store_true", help="measure the threshold trade-off instead")
    parser.add_argument("--thresholds", default="16,20,24,26,28,30,32,36")
    parser.add_argument("--baseline-thresholds", default="4,6,8,10,12,14")
    parser.add_argument("--copies", type=int, default=400, help="real images turned into synthetic copies")
    parser.add_argument("--checks", type=int, default=100, help="pairs checked per distance value")
    args = parser.parse_args()
    threshold_table(args) if args.threshold_table else timing(args)


if __name__ == "__main__":
    main()
