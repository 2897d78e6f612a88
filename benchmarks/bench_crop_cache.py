"""Crop + cache every image of the shared sites: cold, warm, and a naive loop, in one run.

    python benchmarks/bench_crop_cache.py [--data ../shared/data] [--size 224]

Prints a table and writes ``benchmarks/results/crop_cache.json``. The naive
baseline reads, converts, crops and resizes one image at a time in one
Python process, with no cache: what every run pays without ours. Warm loads
(every bundle verified against its manifest's CRC-32s) are timed
``--repeats`` times, the median reported: all sites, BR35H alone (3,000
images) and, within the latter, reading and verifying its bundle.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brain_crop import crop_brain  # noqa: E402
from datasets.cache import CropParams, _bundle_key, _hash_files, _load_bundle, load_site  # noqa: E402
from datasets.sites import open_site  # noqa: E402

SITES = {"br35h": "br35h", "nav": "nav", "mos": "mos"}


def naive(paths: list[str], size: int) -> int:
    done = 0
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if image is None:
            continue
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        crop_brain(image, size)
        done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BRAINMRI_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5, help="warm loads timed; the median is reported")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "crop_cache.json"))
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "br35h").is_dir():
        sys.exit(f"no data in {data} (set --data or BRAINMRI_DATA)")
    params = CropParams(image_size=args.size)
    paths = [c.path for name, folder in SITES.items() for c in open_site(name, data / folder).list_files()[0]]

    def load_all(cache: str) -> int:
        return sum(len(load_site(name, data / folder, params, cache_dir=cache, workers=args.workers).samples)
                   for name, folder in SITES.items())

    def timed(function, repeats: int) -> tuple[float, list[float], object]:
        times, value = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            value = function()
            times.append(time.perf_counter() - start)
        return statistics.median(times), times, value

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        seconds, _, count = timed(lambda: load_all(cache), 1)
        rows.append({"method": "crop cache, cold", "seconds": seconds, "images": count})
        seconds, times, count = timed(lambda: load_all(cache), args.repeats)
        rows.append({"method": "crop cache, warm", "seconds": seconds, "images": count, "all_seconds": times})
        seconds, times, site = timed(lambda: load_site("br35h", data / "br35h", params, cache_dir=cache,
                                                       workers=args.workers), args.repeats)
        rows.append({"method": "crop cache, warm, br35h only", "seconds": seconds, "images": len(site.samples),
                     "all_seconds": times})
        shas = _hash_files([c.path for c in open_site("br35h", data / "br35h").list_files()[0]])
        bundle = Path(cache) / f"crops-{params.image_size}px-{params.digest()}" / _bundle_key(shas)
        seconds, times, _ = timed(lambda: _load_bundle(bundle, params), args.repeats)
        rows.append({"method": "  of which read + verify bundle", "seconds": seconds, "images": len(site.samples),
                     "all_seconds": times,
                     "bundle_bytes": sum(p.stat().st_size for p in bundle.iterdir())})
    start = time.perf_counter()
    count = naive(paths, args.size)
    rows.append({"method": "naive per-image loop, no cache", "seconds": time.perf_counter() - start, "images": count})
    baseline = rows[-1]["seconds"]
    for row in rows:
        row["images_per_second"] = row["images"] / row["seconds"]
        row["speedup_vs_naive"] = baseline / row["seconds"] if row["images"] == count else None

    print(f"{'method':<34} {'images':>7} {'seconds':>8} {'img/s':>9} {'x naive':>8}")
    for row in rows:
        speedup = "-" if row["speedup_vs_naive"] is None else f"{row['speedup_vs_naive']:.1f}"
        print(f"{row['method']:<34} {row['images']:>7} {row['seconds']:>8.2f} {row['images_per_second']:>9.0f} "
              f"{speedup:>8}")
    result = {"benchmark": "crop_cache", "image_size": args.size, "files": len(paths), "workers": args.workers,
              "cpu_count": os.cpu_count(), "machine": platform.platform(), "opencv": cv2.__version__,
              "numpy": np.__version__, "repeats": args.repeats,
              "goals": {"cold_seconds": 30, "warm_seconds": 2, "warm_br35h_seconds": 1}, "rows": rows,
              "date": time.strftime("%Y-%m-%d")}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
