"""Crop quality of the previous and the current brain-crop recipe on every shared image, in one run.

    python benchmarks/bench_crop_quality.py [--data ../shared/data] [--tile 200]

Decodes every file of the ``br35h``, ``nav`` and ``mos`` sites once
(``datasets.validation.read_image_file``; a bad file is named with its reason,
skipped and counted), crops it with ``brain_crop.crop_brain`` version 1 (the
previous recipe) and version 2 (``brain_crop.CROP_VERSION``), interleaved
image by image with one OpenCV thread so that both see the same machine
load, and reports per recipe:

* foreground mass kept (mean, worst image, images losing more than 1 %),
  under the two definitions below;
* mean area removed (``area_fraction_removed``);
* boxes covering more than 97 % of the image (count and share);
* time per image of ``crop_brain(image, 224)`` (box, cut, pad, resize).

It prints a table, writes ``benchmarks/results/crop_quality.json`` and a
montage of the hardest cases, ``benchmarks/results/crop_hardest.png``: the
images named in the crop's history (background speckle, burnt-in letters,
side bars), the images whose box changed most (lowest overlap of the two
boxes), and an even sample of those whose box still covers more than 97 % of
the image, each with the version-1 box in red and the version-2 box in green.

Foreground, the same for both recipes and independent of how either finds
its box (``brain_crop.foreground_mass_kept``): pixels above grey level 45
after a 5x5 Gaussian blur, weighted by their intensity.

* "all": every such pixel. Burnt-in letters, frame lines, banners, side bars
  and bright background speckle count as foreground here, so a recipe that
  leaves them outside the box, as version 2 does on purpose, loses "mass"
  under this definition; it is the definition of the earlier README table.
* "inner": the same pixels, except those closer to the image border than
  5 % of the shorter side, where frames, banners and most edge labels lie.
  A box that cuts the head anywhere but at the very edge of the image still
  loses mass here; leaving a frame out costs nothing. Side bars wider than
  5 %, text labels farther in and grey or speckled backgrounds still count.

Neither definition is ground truth; the montage shows what the boxes do.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brain_crop import (  # noqa: E402
    CROP_VERSION,
    CropBox,
    area_fraction_removed,
    crop_brain,
    foreground_mass_kept,
)
from brain_crop.preview import crop_preview_legend, stack_with_legend  # noqa: E402
from datasets.sites import open_site  # noqa: E402
from datasets.validation import ImageRejected, read_image_file  # noqa: E402

SITES = ("br35h", "nav", "mos")
VERSIONS = (1, CROP_VERSION)
CROP_SIZE = 224
#: Images named in the crop's history: speckle at grey 45-55, burnt-in corner letters, white side bars.
NAMED = ("nav/yes/Y185.jpg", "br35h/yes/y1004.jpg", "br35h/yes/y49.jpg", "nav/no/No16.jpg")
#: Foreground definitions: name -> border fraction left out (see the module docstring).
DEFINITIONS = {"all": 0.0, "inner": 0.05}
COVER_LIMIT = 0.97
LOSS_LIMIT = 0.99
COLOURS = {1: (230, 40, 40), CROP_VERSION: (0, 220, 0)}  # RGB
CHANGED_TILES = 18
STILL_TILES = 6


def read_sites(data: Path) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """``([(site/relative path, (H, W) uint8 image)], [skipped file: reason])`` of every listed file."""
    images, skipped = [], []
    for name in SITES:
        candidates, _ = open_site(name, data / name).list_files()
        for candidate in candidates:
            key = f"{name}/{candidate.relative_path}"
            try:
                images.append((key, read_image_file(candidate.path)))
            except ImageRejected as error:
                skipped.append(f"{key}: {error.reason}")
                print(f"skipped {key}: {error.reason}", file=sys.stderr)
    return images, skipped


def measure(images: list[tuple[str, np.ndarray]]) -> dict[int, dict]:
    """Boxes, timings and per-image numbers of every recipe, recipes interleaved per image."""
    cv2.setNumThreads(1)
    results = {version: {"boxes": [], "seconds": 0.0} for version in VERSIONS}
    for index, (_, image) in enumerate(images):
        # Alternate the order so that neither recipe always runs on a warm cache line.
        for version in (VERSIONS if index % 2 == 0 else VERSIONS[::-1]):
            start = time.perf_counter()
            _, box = crop_brain(image, CROP_SIZE, version=version)
            results[version]["seconds"] += time.perf_counter() - start
            results[version]["boxes"].append(box)
    for version, result in results.items():
        boxes = result["boxes"]
        result["cover"] = np.array([1.0 - area_fraction_removed(box, *image.shape) for box, (_, image)
                                    in zip(boxes, images)])
        for definition, border in DEFINITIONS.items():
            result[definition] = np.array([foreground_mass_kept(image, box, border_fraction=border)
                                           for box, (_, image) in zip(boxes, images)])
    return results


def summary(result: dict, keys: list[str]) -> dict:
    """The table row of one recipe (fractions in [0, 1], time in milliseconds)."""
    row = {}
    for definition in DEFINITIONS:
        kept = result[definition]
        worst = int(np.argmin(kept))
        row[definition] = {"mean_mass_kept": float(kept.mean()), "worst_mass_kept": float(kept[worst]),
                           "worst_image": keys[worst],
                           "worst_five": [[keys[index], float(kept[index])] for index in np.argsort(kept)[:5]],
                           "images_losing_over_1_percent": int((kept < LOSS_LIMIT).sum()),
                           "share_losing_over_1_percent": float((kept < LOSS_LIMIT).mean())}
    covering = result["cover"] > COVER_LIMIT
    row["mean_area_removed"] = float(1.0 - result["cover"].mean())
    row["boxes_covering_over_97_percent"] = int(covering.sum())
    row["share_covering_over_97_percent"] = float(covering.mean())
    row["ms_per_image"] = 1000.0 * result["seconds"] / len(keys)
    return row


def box_overlap(first: CropBox, second: CropBox) -> float:
    """Intersection over union of two boxes, in [0, 1]."""
    width = max(0, min(first.x1, second.x1) - max(first.x0, second.x0))
    height = max(0, min(first.y1, second.y1) - max(first.y0, second.y0))
    inter = width * height
    return inter / float(first.width * first.height + second.width * second.height - inter)


def comparison_tile(image: np.ndarray, boxes: dict[int, CropBox], title: str, note: str, tile: int) -> np.ndarray:
    """(tile + 32, tile, 3) uint8 RGB: a title band, the letterboxed image with every recipe's box, a note band."""
    band = 16
    height, width = image.shape
    scale = tile / max(height, width)
    resized = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((tile + 2 * band, tile, 3), np.uint8)
    top, left = band + (tile - resized.shape[0]) // 2, (tile - resized.shape[1]) // 2
    canvas[top:top + resized.shape[0], left:left + resized.shape[1]] = resized[:, :, None]
    for version, box in boxes.items():
        corner0 = (left + int(box.x0 * scale), top + int(box.y0 * scale))
        corner1 = (left + max(int(box.x1 * scale) - 1, 0), top + max(int(box.y1 * scale) - 1, 0))
        cv2.rectangle(canvas, corner0, corner1, COLOURS[version], 1)
    characters = max(1, tile // 7)
    for text, baseline in ((title[-characters:], band - 4), (note[:characters], tile + 2 * band - 4)):
        cv2.putText(canvas, text, (3, baseline), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def hardest_montage(images: list[tuple[str, np.ndarray]], results: dict[int, dict], tile: int,
                    columns: int = 6) -> tuple[np.ndarray, list[dict]]:
    """The montage of the hardest cases (see the module docstring) and the list of what it shows."""
    keys = [key for key, _ in images]
    index_of = {key: index for index, key in enumerate(keys)}
    old, new = results[1]["boxes"], results[CROP_VERSION]["boxes"]
    overlaps = np.array([box_overlap(first, second) for first, second in zip(old, new)])
    chosen: list[tuple[int, str]] = [(index_of[key], "named") for key in NAMED if key in index_of]
    taken = {index for index, _ in chosen}
    # BR35H, NAV and MOS share many copies of a scan; one tile per (image size, overlap) shows more kinds.
    seen = set()
    for index in (int(index) for index in np.argsort(overlaps, kind="stable")):
        if sum(group == "changed" for _, group in chosen) >= CHANGED_TILES:
            break
        kind = (images[index][1].shape, round(float(overlaps[index]), 2))
        if index not in taken and kind not in seen:
            chosen.append((index, "changed"))
            taken.add(index)
            seen.add(kind)
    still = [index for index in np.flatnonzero(results[CROP_VERSION]["cover"] > COVER_LIMIT) if index not in taken]
    if still:
        for position in np.linspace(0, len(still) - 1, min(STILL_TILES, len(still))).round().astype(int):
            chosen.append((int(still[position]), "still>97%"))
    tiles, shown = [], []
    for index, group in chosen:
        key, image = images[index]
        cover = results[CROP_VERSION]["cover"][index]
        note = f"{group} IoU {overlaps[index]:.2f} v{CROP_VERSION} {cover:.0%}"
        tiles.append(comparison_tile(image, {1: old[index], CROP_VERSION: new[index]}, key, note, tile))
        shown.append({"image": key, "group": group, "overlap": float(overlaps[index]), "cover_v2": float(cover),
                      "box_v1": list(old[index][:4]), "box_v2": list(new[index][:4])})
    rows = -(-len(tiles) // columns)
    step_y, step_x = tiles[0].shape[0] + 2, tile + 2
    grid = np.full((rows * step_y - 2, min(columns, len(tiles)) * step_x - 2, 3), 40, np.uint8)
    for position, canvas in enumerate(tiles):
        row, column = divmod(position, columns)
        grid[row * step_y:row * step_y + canvas.shape[0], column * step_x:column * step_x + tile] = canvas
    legend = crop_preview_legend((
        (COLOURS[1], "red box: version 1, the previous recipe (before)"),
        (COLOURS[CROP_VERSION], f"green box: version {CROP_VERSION}, the current recipe (after)"),
        (None, "top: site/file. bottom: why it is shown (named: a case named in the crop's history;"
               " changed: among"),
        (None, "  the boxes that changed most; still>97%: a sample of the boxes that still cover > 97 %"
               " of the image),"),
        (None, "  then the overlap (IoU) of the two boxes and the share of the image inside the"
               f" version-{CROP_VERSION} box"),
    ), width=grid.shape[1])
    return stack_with_legend(grid, legend), shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BRAINMRI_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--tile", type=int, default=200, help="montage tile side in pixels (>= 160)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "crop_quality.json"))
    parser.add_argument("--montage", default=str(REPO / "benchmarks" / "results" / "crop_hardest.png"))
    args = parser.parse_args()
    data = Path(args.data)
    if not all((data / name).is_dir() for name in SITES):
        sys.exit(f"no data in {data} (set --data or BRAINMRI_DATA)")
    if args.tile < 160:
        sys.exit(f"--tile must be at least 160 pixels, got {args.tile}")

    images, skipped = read_sites(data)
    keys = [key for key, _ in images]
    results = measure(images)
    rows = {version: summary(results[version], keys) for version in VERSIONS}

    header = (f"{'recipe':<10} {'foreground':<10} {'mean kept':>9} {'worst':>7} {'losing>1%':>10} "
              f"{'area removed':>12} {'box>97%':>12} {'ms/image':>8}")
    print(f"{len(images)} images ({len(skipped)} skipped)")
    print(header)
    for version, row in rows.items():
        for definition in DEFINITIONS:
            numbers = row[definition]
            print(f"{'v' + str(version):<10} {definition:<10} {numbers['mean_mass_kept']:>9.2%} "
                  f"{numbers['worst_mass_kept']:>7.1%} {numbers['share_losing_over_1_percent']:>10.1%} "
                  f"{row['mean_area_removed']:>12.1%} "
                  f"{row['boxes_covering_over_97_percent']:>5} ({row['share_covering_over_97_percent']:>4.1%}) "
                  f"{row['ms_per_image']:>8.2f}")
    for version, row in rows.items():
        print(f"v{version} worst images: " + ", ".join(f"{d} {row[d]['worst_image']}" for d in DEFINITIONS))
    changed = sum(tuple(a[:4]) != tuple(b[:4]) for a, b in zip(results[1]["boxes"], results[CROP_VERSION]["boxes"]))
    print(f"boxes changed: {changed} of {len(images)}; v{CROP_VERSION} / v1 time: "
          f"{rows[CROP_VERSION]['ms_per_image'] / rows[1]['ms_per_image']:.2f}x")

    montage, shown = hardest_montage(images, results, args.tile)
    Path(args.montage).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(args.montage, cv2.cvtColor(montage, cv2.COLOR_RGB2BGR)):
        sys.exit(f"could not write {args.montage}")
    named = {key: {f"v{version}": list(results[version]["boxes"][keys.index(key)][:4]) for version in VERSIONS}
             for key in NAMED if key in keys}
    result = {"benchmark": "crop_quality", "images": len(images), "skipped": skipped, "crop_size": CROP_SIZE,
              "definitions": {name: f"pixels above 45 after a 5x5 blur, intensity-weighted, border fraction {border}"
                              for name, border in DEFINITIONS.items()},
              "recipes": {f"v{version}": row for version, row in rows.items()}, "boxes_changed": changed,
              "named_images": named, "montage": shown, "cpu_count": os.cpu_count(),
              "machine": platform.platform(), "opencv": cv2.__version__, "numpy": np.__version__,
              "date": time.strftime("%Y-%m-%d")}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output} and {args.montage}")


if __name__ == "__main__":
    main()
