"""What a site's source-disjoint subset is made of: a captioned montage of one class, by model score.

The source-disjoint subset of a test site holds its images with no
near-duplicate anywhere in the training site as given (``near_train_site``
false in a run's ``predictions.csv``). On MOS it is 860 tumour and only 37
no-tumour images, so its AUC is decided by how those 37 are ranked; this
script shows them, highest tumour probability first, with score and original
size on each tile, so that a reader can see what the subset measures.

Usage:
    python benchmarks/source_disjoint_review.py --predictions runs/x/predictions.csv \\
        --data ../shared/data/mos --site mos --label 0 --output benchmarks/results/mos_disjoint_no_tumour.png
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import sys

import cv2
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TILE = 128
COLUMNS = 8


def subset_rows(predictions: pathlib.Path, site: str, label: int) -> list[dict]:
    """Rows of ``predictions`` for ``site``'s source-disjoint images of ``label``, highest score first."""
    with open(predictions, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["site"] == site
                and row["near_train_site"].lower() in ("false", "0") and int(row["label"]) == label]
    return sorted(rows, key=lambda row: -float(row["score"]))


def tile(path: pathlib.Path, score: float) -> np.ndarray:
    """(TILE, TILE, 3) uint8: the image resized, its score and original size written on it."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        picture = np.zeros((TILE, TILE, 3), np.uint8)
        cv2.putText(picture, "unreadable", (4, TILE // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1)
        return picture
    height, width = image.shape
    picture = cv2.cvtColor(cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    cv2.rectangle(picture, (0, 0), (TILE - 1, 15), (0, 0, 0), -1)
    cv2.putText(picture, f"{score:.2f}  {width}x{height}", (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 255, 255), 1,
                cv2.LINE_AA)
    return picture


def montage(rows: list[dict], data: pathlib.Path, caption: list[str]) -> np.ndarray:
    """The tiles of ``rows`` in a grid of COLUMNS under a caption band; (H, W, 3) uint8 BGR."""
    from datasets.audit import caption_band

    tiles = [tile(data / row["relative_path"], float(row["score"])) for row in rows]
    while not tiles or len(tiles) % COLUMNS:
        tiles.append(np.zeros((TILE, TILE, 3), np.uint8))
    grid = np.vstack([np.hstack(tiles[start:start + COLUMNS]) for start in range(0, len(tiles), COLUMNS)])
    return np.concatenate([caption_band(caption, grid.shape[1]), grid])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", required=True, type=pathlib.Path, help="a run's predictions.csv")
    parser.add_argument("--data", required=True, type=pathlib.Path, help="the site's folder")
    parser.add_argument("--site", default="mos")
    parser.add_argument("--label", type=int, choices=(0, 1), default=0, help="0: no tumour, 1: tumour")
    parser.add_argument("--output", type=pathlib.Path, required=True)
    args = parser.parse_args()
    rows = subset_rows(args.predictions, args.site, args.label)
    if not rows:
        parser.error(f"no source-disjoint images of label {args.label} for site {args.site!r} in {args.predictions}")
    kind = "no-tumour" if args.label == 0 else "tumour"
    caption = [f"The {len(rows)} {kind} images of {args.site} with no near-duplicate in the training site "
               f"(source-disjoint subset), highest tumour probability first. On each tile: the model's "
               f"probability of tumour and the file's original width x height. Model: {args.predictions.parent.name}."]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.output), montage(rows, args.data, caption))
    print(f"{len(rows)} images, scores {float(rows[-1]['score']):.2f} to {float(rows[0]['score']):.2f}; "
          f"wrote {args.output}")


if __name__ == "__main__":
    main()
