"""Shortcut audit of the shared sites: the numbers, and what computing them costs.

    python benchmarks/bench_shortcuts.py [--data ../shared/data] [--size 128] [--resamples 1000]

Prints the shortcut table (each feature's AUC alone, the feature classifier
fit on BR35H and applied to NAV and MOS, cross-validated within each site,
site separability) and writes ``benchmarks/results/shortcuts.json``.

Timings, from an empty temporary cache (after one read of every file, so
that every build finds the files in the operating system's cache):

* crop cache, cold: decode + validate + crop + features of every file, once;
* crop cache, cold, no features: the same build with the features switched
  off (what the cache cost before it stored them);
* naive second pass: read and decode every file again, one process, only to
  compute the features (the obvious way to add an audit to a cached
  pipeline); the naive total is the cold build without features plus this;
* crop cache, warm: loading the bundles;
* ``shortcut_audit`` itself on the cached features, for both classifiers.

The baseline is also given for the protocol's training set: the BR35H images
left after the ``purge-train`` leakage policy (no near-duplicate in NAV or
MOS, one image per duplicate group), since nearly all of NAV and the MOS
no-tumour images have near-duplicates in BR35H, and a classifier on file
facts can recognise a copy as well as a shortcut.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import sklearn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import datasets.shortcuts as shortcuts  # noqa: E402
from datasets.audit import apply_leakage_policy, audit_sites, leaked_keys  # noqa: E402
from datasets.cache import CachedSite, CropParams, load_site  # noqa: E402
from datasets.sites import open_site  # noqa: E402
from datasets.validation import decode_image_bytes  # noqa: E402

SITES = ("br35h", "nav", "mos")
TRAIN = "br35h"


def load_all(data: Path, params: CropParams, cache: str, workers: int) -> tuple[dict[str, CachedSite], float]:
    start = time.perf_counter()
    sites = {name: load_site(name, data / name, params, cache_dir=cache, workers=workers) for name in SITES}
    return sites, time.perf_counter() - start


def naive_second_pass(sites: dict[str, CachedSite]) -> tuple[float, float]:
    """Read, decode and featurise every valid file again, one at a time: (decode seconds, feature seconds)."""
    decoding = featurising = 0.0
    for site in sites.values():
        for sample, box in zip(site.samples, site.boxes):
            start = time.perf_counter()
            data = Path(sample.path).read_bytes()
            grey = decode_image_bytes(data)
            middle = time.perf_counter()
            shortcuts.image_features(data, grey, tuple(int(v) for v in box))
            decoding, featurising = decoding + middle - start, featurising + time.perf_counter() - middle
    return decoding, featurising


def protocol_training_set(sites: dict[str, CachedSite]) -> tuple[CachedSite, dict[str, CachedSite]]:
    """BR35H after ``purge-train``, and each eval site's images without a copy in all of BR35H."""
    audit = audit_sites(sites)
    eval_sites = [name for name in SITES if name != TRAIN]
    kept, _ = apply_leakage_policy(audit, {name: site.samples for name, site in sites.items()},
                                   policy="purge-train", train_site=TRAIN, eval_sites=eval_sites)
    keys = {sample.key for sample in kept[TRAIN]}
    train = sites[TRAIN].subset([row for row, s in enumerate(sites[TRAIN].samples) if s.key in keys])
    leaked = leaked_keys(audit, TRAIN)
    leak_free = {name: sites[name].subset([row for row, s in enumerate(sites[name].samples)
                                           if s.key not in leaked[name]]) for name in eval_sites}
    return train, leak_free


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BRAINMRI_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "shortcuts.json"))
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / TRAIN).is_dir():
        sys.exit(f"no data in {data} (set --data or BRAINMRI_DATA)")
    params = CropParams(image_size=args.size)

    for name in SITES:  # every build below then reads from the operating system's file cache alike
        for candidate in open_site(name, data / name).list_files()[0]:
            Path(candidate.path).read_bytes()
    timings = []
    with tempfile.TemporaryDirectory() as cache:
        sites, seconds = load_all(data, params, cache, args.workers)
        images = sum(len(site.samples) for site in sites.values())
        timings.append({"method": "crop cache, cold (decode + crop + features)", "seconds": seconds})
        _, seconds = load_all(data, params, cache, args.workers)
        timings.append({"method": "crop cache, warm", "seconds": seconds})
    if multiprocessing.get_start_method() == "fork":  # worker processes inherit the switched-off features
        empty = np.full(len(shortcuts.FEATURE_NAMES), np.nan)
        with tempfile.TemporaryDirectory() as cache, \
                mock.patch.object(shortcuts, "image_features", lambda data, grey, box: empty):
            _, seconds = load_all(data, params, cache, args.workers)
        timings.append({"method": "crop cache, cold, no features", "seconds": seconds})
        decoding, featurising = naive_second_pass(sites)
        second_pass = decoding + featurising
        timings.append({"method": "naive second pass for the features", "seconds": second_pass})
        timings.append({"method": "  of which image_features (one process)", "seconds": featurising})
        timings.append({"method": "naive total (cold, no features + second pass)",
                        "seconds": seconds + second_pass})
    cold = timings[0]["seconds"]
    for row in timings:
        row["images"] = images
        row["images_per_second"] = images / row["seconds"]
        row["seconds_vs_ours_cold"] = row["seconds"] / cold

    features = {name: (site.features, site.labels) for name, site in sites.items()}
    audits = {}
    for classifier in shortcuts.CLASSIFIERS:
        start = time.perf_counter()
        audits[classifier] = shortcuts.shortcut_audit(features, TRAIN, n_resamples=args.resamples,
                                                      seed=args.seed, classifier=classifier)
        timings.append({"method": f"shortcut_audit, {classifier}", "seconds": time.perf_counter() - start,
                        "images": images})
    result = audits[shortcuts.DEFAULT_CLASSIFIER]

    train, leak_free = protocol_training_set(sites)
    protocol = {"train_images": len(train.samples), "train_tumour": int(train.labels.sum()), "baseline": {}}
    for classifier in shortcuts.CLASSIFIERS:
        rows = {}
        for name in leak_free:
            applied = shortcuts.shortcut_baseline(train.features, train.labels, sites[name].features,
                                                  sites[name].labels, n_resamples=args.resamples,
                                                  seed=args.seed, classifier=classifier)
            rows[name] = {"auc": applied["auc"], "ci": applied["ci"]}
        rows["cross_validated_on_train"] = shortcuts.cross_validated_auc(
            train.features, train.labels, seed=args.seed, n_resamples=args.resamples, classifier=classifier)
        protocol["baseline"][classifier] = rows
    protocol["leak_free_eval_images"] = {name: {"images": len(site.samples), "tumour": int(site.labels.sum())}
                                         for name, site in leak_free.items()}
    protocol = shortcuts.json_ready(protocol)

    print(shortcuts.format_shortcut_table(result))
    other = audits["logistic"]
    print("\nlogistic instead: baseline " + ", ".join(
        f"{name} {other['sites'][name]['baseline']['auc']:.3f}" for name in SITES if name != TRAIN)
        + "; cross-validated " + ", ".join(
        f"{name} {other['sites'][name]['cross_validated']['auc']:.3f}" for name in SITES))
    print(f"fit on the {protocol['train_images']} BR35H images left by purge-train: " + "; ".join(
        f"{classifier}: " + ", ".join(f"{name} {rows[name]['auc']:.3f}" for name in leak_free)
        for classifier, rows in protocol["baseline"].items()))
    print(f"\n{'method':<48} {'seconds':>8} {'x ours cold':>12}")
    for row in timings:
        ratio = f"{row['seconds_vs_ours_cold']:.2f}" if "seconds_vs_ours_cold" in row else ""
        print(f"{row['method']:<48} {row['seconds']:>8.2f} {ratio:>12}")

    output = {"benchmark": "shortcuts", "image_size": args.size, "images": images, "workers": args.workers,
              "cpu_count": os.cpu_count(), "machine": platform.platform(), "opencv": cv2.__version__,
              "numpy": np.__version__, "scikit_learn": sklearn.__version__,
              "goals": {"cold_seconds": 60}, "timings": timings, "audit": result,
              "audit_logistic": audits["logistic"], "protocol_training_set": protocol,
              "date": time.strftime("%Y-%m-%d")}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(output, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
