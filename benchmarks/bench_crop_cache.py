"""Crop + cache every image of the shared sites: cold, warm, and a naive loop, in one run.

    python benchmarks/bench_crop_cache.py [--data ../shared/data] [--size 224]

Prints a table and writes ``benchmarks/results/crop_cache.json``. The naive
baseline reads, converts, crops and resizes one image at a time in one
Python process, with no cache: what every run pays without ours.
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
from datasets.cache import CropParams, load_site  # noqa: E402
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
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "crop_cache.json"))
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "br35h").is_dir():
        sys.exit(f"no data in {data} (set --data or BRAINMRI_DATA)")
    params = CropParams(image_size=args.size)
    paths = [c.path for name, folder in SITES.items() for c in open_site(name, data / folder).list_files()[0]]

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for phase in ("cold", "warm"):
            start = time.perf_counter()
            counts = [len(load_site(name, data / folder, params, cache_dir=cache, workers=args.workers).samples)
                      for name, folder in SITES.items()]
            rows.append({"method": f"crop cache, {phase}", "seconds": time.perf_counter() - start,
                         "images": sum(counts)})
    start = time.perf_counter()
    count = naive(paths, args.size)
    rows.append({"method": "naive per-image loop, no cache", "seconds": time.perf_counter() - start, "images": count})
    baseline = rows[-1]["seconds"]
    for row in rows:
        row["images_per_second"] = row["images"] / row["seconds"]
        row["speedup_vs_naive"] = baseline / row["seconds"]

    print(f"{'method':<34} {'images':>7} {'seconds':>8} {'img/s':>9} {'x naive':>8}")
    for row in rows:
        print(f"{row['method']:<34} {row['images']:>7} {row['seconds']:>8.2f} {row['images_per_second']:>9.0f} "
              f"{row['speedup_vs_naive']:>8.1f}")
    result = {"benchmark": "crop_cache", "image_size": args.size, "files": len(paths), "workers": args.workers,
              "cpu_count": os.cpu_count(), "machine": platform.platform(), "opencv": cv2.__version__,
              "numpy": np.__version__, "goals": {"cold_seconds": 30, "warm_seconds": 2}, "rows": rows,
              "date": time.strftime("%Y-%m-%d")}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
