"""The shortcut baseline beside each training set of RESULTS.md.

    python benchmarks/shortcut_baselines.py [--data ../shared/data] [--size 128]

For each leakage policy of the protocol (BR35H training, NAV validation, MOS
test), the shortcut baseline (``datasets.shortcuts``) fit on the BR35H
images that policy keeps and measured on NAV and MOS: all images, leak-free
(no near-duplicate in that training set) and source-disjoint (no
near-duplicate anywhere in BR35H). These are the numbers a model trained on
that set has to beat before its AUC says anything about anatomy. Prints a
table and writes ``benchmarks/results/shortcut_baselines.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datasets.audit import LEAKAGE_POLICIES, apply_leakage_policy, audit_sites, leaked_flags  # noqa: E402
from datasets.cache import CropParams, load_site  # noqa: E402
from datasets.phash import DEFAULT_THRESHOLD_BITS  # noqa: E402
from datasets.shortcuts import shortcut_baseline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BRAINMRI_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "shortcut_baselines.json"))
    arguments = parser.parse_args()
    data = Path(arguments.data)
    results = []
    for crop in (True, False):
        params = CropParams(image_size=arguments.size, crop=crop)
        sites = {name: load_site(name, data / name, params) for name in ("br35h", "nav", "mos")}
        audit = audit_sites(sites, DEFAULT_THRESHOLD_BITS)
        policies = LEAKAGE_POLICIES if crop else ("purge-train",)
        for policy in policies:
            kept, _ = apply_leakage_policy(audit, {n: s.samples for n, s in sites.items()}, policy=policy,
                                           train_site="br35h", eval_sites=["nav", "mos"])
            row = {"crop": crop, "policy": policy}
            keep_train = {s.key for s in kept["br35h"]}
            train = sites["br35h"].subset([i for i, s in enumerate(sites["br35h"].samples) if s.key in keep_train])
            row["train_images"] = len(train.samples)
            for name in ("nav", "mos"):
                keys = {s.key for s in kept[name]}
                site = sites[name].subset([i for i, s in enumerate(sites[name].samples) if s.key in keys])
                leaked = leaked_flags(site.hashes, train.hashes, DEFAULT_THRESHOLD_BITS)
                near = leaked_flags(site.hashes, sites["br35h"].hashes, DEFAULT_THRESHOLD_BITS) | leaked
                for subset, keep in (("all", np.ones(len(site.samples), bool)), ("leak-free", ~leaked),
                                     ("source-disjoint", ~near)):
                    value = shortcut_baseline(train.features, train.labels, site.features[keep], site.labels[keep],
                                              n_resamples=arguments.resamples, seed=arguments.seed)
                    row[f"{name} {subset}"] = {**value, "images": int(keep.sum()),
                                               "no_tumour": int((site.labels[keep] == 0).sum())}
            results.append(row)

    def cell(value: dict) -> str:
        if value["auc"] is None or np.isnan(value["auc"]):
            return f"– ({value['images']})"
        return f"{value['auc']:.3f} [{value['ci'][0]:.3f}, {value['ci'][1]:.3f}] ({value['images']})"

    columns = [f"{name} {subset}" for name in ("nav", "mos") for subset in ("all", "leak-free", "source-disjoint")]
    print("| training set | train images | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for row in results:
        label = f"{row['policy']}{'' if row['crop'] else ', crop=false'}"
        print(f"| {label} | {row['train_images']} | " + " | ".join(cell(row[c]) for c in columns) + " |")

    def plain(value):
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, float) and np.isnan(value):
            return None
        return value

    Path(arguments.output).write_text(json.dumps(plain({"seed": arguments.seed, "image_size": arguments.size,
                                                        "resamples": arguments.resamples, "rows": results}),
                                                 indent=1))
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
