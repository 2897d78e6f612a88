"""Leakage audit: near-duplicate images within and across sites.

The public sites share images (same scan, other name, often re-encoded,
resized or re-windowed), and BR35H repeats scans inside itself. The audit
compares the perceptual hashes of every site's crops (:mod:`datasets.phash`)
and reports:

* per site: images, bad files, groups of near-duplicates inside the site;
* for every ordered pair of sites (A, B): how many images of A have a
  near-duplicate in B, and how many of those disagree on the binary label;
* every cross-site pair, and every pair (within or across sites) whose
  labels disagree (label noise).

:func:`apply_leakage_policy` then removes leaked images before training or
evaluation, and :func:`leaked_keys` gives the eval images that have a copy in
the training site (for a "leak-free subset" metric).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from brain_crop import resize_square
from brain_crop.preview import write_png

from datasets.phash import DEFAULT_THRESHOLD_BITS, HASH_DESCRIPTION, duplicate_groups, near_duplicate_pairs
from datasets.records import Sample, check_site_name

LEAKAGE_POLICIES = ("purge-train", "purge-eval", "dedupe-train", "report-only")

_RED = (255, 64, 64)
_WHITE = (255, 255, 255)


@dataclasses.dataclass
class AuditSite:
    """One site's valid images and their hashes.

    Attributes:
        name: site name.
        samples: valid images only, in the same order as ``hashes``.
        hashes: (N, W) uint64 from :func:`datasets.phash.perceptual_hash`.
        bad_files: number of files of the site that were skipped.
    """

    name: str
    samples: list[Sample]
    hashes: np.ndarray
    bad_files: int = 0


@dataclasses.dataclass
class AuditResult:
    """Everything the audit found; :meth:`to_json` gives a JSON-ready dict.

    Attributes:
        threshold_bits: largest Hamming distance counted as a near-duplicate.
        hash_description: how the hashes were made.
        site_names: sites in the order they were given.
        sites: per site ``images``, ``bad_files``, ``duplicate_groups_within``
            (groups of size >= 2), ``images_in_duplicate_groups_within``,
            ``distinct_images`` (images left when each group counts once) and
            ``label_disagreements_within`` (images with a near-duplicate of
            the other label in the same site).
        overlap: ``overlap[A][B]`` for every ordered pair A != B: ``images``
            (images of A with a near-duplicate in B) and
            ``label_disagreements`` (images of A with a near-duplicate in B of
            the other label).
        pairs: every cross-site pair ``{"a", "b", "distance"}`` (sample keys;
            each unordered pair once, ``a`` from the site given first).
        label_disagreement_pairs: every near-duplicate pair, within or across
            sites, whose labels differ: keys, distance, both labels and
            subclasses, and ``same_site``.
        groups_within: per site, the duplicate groups (size >= 2) as sorted
            lists of sample keys, sorted by first key.
    """

    threshold_bits: int
    hash_description: str
    site_names: list[str]
    sites: dict[str, dict[str, int]]
    overlap: dict[str, dict[str, dict[str, int]]]
    pairs: list[dict]
    label_disagreement_pairs: list[dict]
    groups_within: dict[str, list[list[str]]]

    def to_json(self) -> dict:
        """A dict of plain ints, strings, lists and dicts (``json.dumps``-ready).

        Keys: ``threshold_bits``, ``hash``, ``sites``, ``overlap`` (a list of
        ``{"site": A, "other": B, "images": N, "label_disagreements": K}`` for
        every ordered pair), ``pairs``, ``label_disagreement_pairs`` and
        ``duplicate_groups_within``.
        """
        return {
            "threshold_bits": int(self.threshold_bits),
            "hash": self.hash_description,
            "sites": {name: dict(summary) for name, summary in self.sites.items()},
            "overlap": [{"site": a, "other": b, **{key: int(value) for key, value in counts.items()}}
                        for a, row in self.overlap.items() for b, counts in row.items()],
            "pairs": [dict(pair) for pair in self.pairs],
            "label_disagreement_pairs": [dict(pair) for pair in self.label_disagreement_pairs],
            "duplicate_groups_within": {
                name: [list(group) for group in groups] for name, groups in self.groups_within.items()
            },
        }


def _check_sites(sites: Sequence[AuditSite]) -> int:
    """Validate the sites; return the hash width in words (0 when no site has hashes)."""
    names = [site.name for site in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique, got {names}")
    width = None
    for site in sites:
        check_site_name(site.name)
        hashes = np.asarray(site.hashes)
        if hashes.ndim != 2 or hashes.dtype != np.uint64:
            raise ValueError(
                f"site {site.name!r}: hashes must be (N, W) uint64, got shape {hashes.shape} dtype {hashes.dtype}"
            )
        if len(site.samples) != hashes.shape[0]:
            raise ValueError(f"site {site.name!r}: {len(site.samples)} samples but {hashes.shape[0]} hashes")
        if width is not None and hashes.shape[0] and hashes.shape[1] != width:
            raise ValueError(f"site {site.name!r}: hashes have {hashes.shape[1]} words, other sites {width}")
        if hashes.shape[0]:
            width = hashes.shape[1]
    return width or 0


def _disagreement(first: Sample, second: Sample, distance: int) -> dict:
    return {
        "a": first.key,
        "b": second.key,
        "distance": int(distance),
        "label_a": int(first.label),
        "label_b": int(second.label),
        "subclass_a": first.subclass,
        "subclass_b": second.subclass,
        "same_site": first.site == second.site,
    }


def run_audit(sites: Sequence[AuditSite], *, threshold_bits: int = DEFAULT_THRESHOLD_BITS) -> AuditResult:
    """Find near-duplicate images within and across sites.

    Args:
        sites: the sites, in the order reports should list them.
        threshold_bits: largest Hamming distance that counts as a
            near-duplicate (see :mod:`datasets.phash` for the measured
            trade-off), >= 0.

    Returns:
        An :class:`AuditResult`. Sites without images are allowed (all
        counts 0).
    """
    if int(threshold_bits) != threshold_bits or threshold_bits < 0:
        raise ValueError(f"threshold_bits must be an int >= 0, got {threshold_bits!r}")
    threshold_bits = int(threshold_bits)
    _check_sites(sites)

    summaries: dict[str, dict[str, int]] = {}
    groups_within: dict[str, list[list[str]]] = {}
    disagreements: list[dict] = []
    for site in sites:
        i, j, distance = near_duplicate_pairs(site.hashes, threshold=threshold_bits)
        labels = np.array([sample.label for sample in site.samples], dtype=np.int64)
        group_ids = duplicate_groups(len(site.samples), i, j)
        sizes = np.bincount(group_ids, minlength=1) if len(site.samples) else np.zeros(0, np.int64)
        members = np.split(np.argsort(group_ids, kind="stable"), np.cumsum(sizes)[:-1])
        groups = [sorted(site.samples[k].key for k in group) for group in members if len(group) >= 2]
        groups_within[site.name] = sorted(groups)
        differ = labels[i] != labels[j]
        for first, second, d in zip(i[differ], j[differ], distance[differ]):
            disagreements.append(_disagreement(site.samples[first], site.samples[second], d))
        summaries[site.name] = {
            "images": len(site.samples),
            "bad_files": int(site.bad_files),
            "duplicate_groups_within": len(groups),
            "images_in_duplicate_groups_within": int(sizes[sizes >= 2].sum()),
            "distinct_images": int(sizes.size),
            "label_disagreements_within": int(np.unique(np.concatenate([i[differ], j[differ]])).size),
        }

    overlap: dict[str, dict[str, dict[str, int]]] = {site.name: {} for site in sites}
    pairs: list[dict] = []
    for position, site_a in enumerate(sites):
        for site_b in sites[position + 1:]:
            if site_a.samples and site_b.samples:
                i, j, distance = near_duplicate_pairs(site_a.hashes, site_b.hashes, threshold=threshold_bits)
            else:
                i, j, distance = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint16)
            labels_a = np.array([sample.label for sample in site_a.samples], dtype=np.int64)
            labels_b = np.array([sample.label for sample in site_b.samples], dtype=np.int64)
            differ = labels_a[i] != labels_b[j]
            overlap[site_a.name][site_b.name] = {
                "images": int(np.unique(i).size),
                "label_disagreements": int(np.unique(i[differ]).size),
            }
            overlap[site_b.name][site_a.name] = {
                "images": int(np.unique(j).size),
                "label_disagreements": int(np.unique(j[differ]).size),
            }
            for first, second, d, disagree in zip(i, j, distance, differ):
                sample_a, sample_b = site_a.samples[first], site_b.samples[second]
                pairs.append({"a": sample_a.key, "b": sample_b.key, "distance": int(d)})
                if disagree:
                    disagreements.append(_disagreement(sample_a, sample_b, d))

    return AuditResult(
        threshold_bits=threshold_bits,
        hash_description=HASH_DESCRIPTION,
        site_names=[site.name for site in sites],
        sites=summaries,
        overlap=overlap,
        pairs=pairs,
        label_disagreement_pairs=disagreements,
        groups_within=groups_within,
    )


def _site_of(key: str) -> str:
    return key.split("/", 1)[0]


def leaked_keys(result: AuditResult, train_site: str) -> dict[str, set[str]]:
    """For every other site, the sample keys with a near-duplicate in ``train_site``.

    Returns:
        ``{site: set of Sample.key}`` for every audited site except
        ``train_site`` (empty sets where nothing leaked).
    """
    if train_site not in result.site_names:
        raise ValueError(f"train site {train_site!r} was not audited (sites: {result.site_names})")
    leaked: dict[str, set[str]] = {name: set() for name in result.site_names if name != train_site}
    for pair in result.pairs:
        site_a, site_b = _site_of(pair["a"]), _site_of(pair["b"])
        if site_a == train_site:
            leaked[site_b].add(pair["b"])
        elif site_b == train_site:
            leaked[site_a].add(pair["a"])
    return leaked


def _train_keys_leaking(result: AuditResult, train_site: str, eval_sites: Sequence[str]) -> set[str]:
    """Keys of ``train_site`` with a near-duplicate in any of ``eval_sites``."""
    targets = set(eval_sites)
    found: set[str] = set()
    for pair in result.pairs:
        site_a, site_b = _site_of(pair["a"]), _site_of(pair["b"])
        if site_a == train_site and site_b in targets:
            found.add(pair["a"])
        elif site_b == train_site and site_a in targets:
            found.add(pair["b"])
    return found


def apply_leakage_policy(
    result: AuditResult,
    sites: dict[str, list[Sample]],
    *,
    policy: str,
    train_site: str,
    eval_sites: Sequence[str],
) -> tuple[dict[str, list[Sample]], dict[str, int]]:
    """Remove leaked images according to ``policy``.

    Policies:
        ``"purge-train"``: drop every training image that is a near-duplicate
            of a validation or test image, and keep one image per duplicate
            group inside the training site: the first by relative path. A
            group with any leaked member is dropped whole (its members are
            copies of the leaked scan). Eval sites are kept as they are.
        ``"purge-eval"``: keep training as it is; drop the eval images that
            have a near-duplicate in the training site.
        ``"dedupe-train"``: keep one image per duplicate group inside the
            training site (the first by relative path) and nothing else:
            images shared with the eval sites stay, as in studies that only
            deduplicate their training set. Evaluate on the leak-free subsets.
        ``"report-only"``: keep everything.

    Args:
        result: the audit of (at least) ``train_site`` and ``eval_sites``.
        sites: samples per site (any sites; samples the audit does not know,
            for example bad files, are never removed).
        policy: one of :data:`LEAKAGE_POLICIES`.
        train_site: the training site.
        eval_sites: validation and test sites, distinct from ``train_site``.

    Returns:
        ``(kept, removed)``: kept samples per site of ``sites`` (order
        preserved) and the number removed per site.
    """
    if policy not in LEAKAGE_POLICIES:
        raise ValueError(f"unknown leakage policy {policy!r}; choose one of {', '.join(LEAKAGE_POLICIES)}")
    for name in [train_site, *eval_sites]:
        if name not in result.site_names:
            raise ValueError(f"site {name!r} was not audited (sites: {result.site_names})")
        if name not in sites:
            raise ValueError(f"site {name!r} has no samples in 'sites' (given: {sorted(sites)})")
    if train_site in eval_sites:
        raise ValueError(f"train site {train_site!r} must not also be an eval site")

    drop: dict[str, set[str]] = {name: set() for name in sites}
    if policy in ("purge-train", "dedupe-train"):
        leaking = _train_keys_leaking(result, train_site, eval_sites) if policy == "purge-train" else set()
        drop[train_site] |= leaking
        for group in result.groups_within.get(train_site, []):
            drop[train_site].update(group if leaking.intersection(group) else group[1:])
    elif policy == "purge-eval":
        leaked = leaked_keys(result, train_site)
        for name in eval_sites:
            drop[name] |= leaked[name]

    kept = {name: [sample for sample in samples if sample.key not in drop[name]] for name, samples in sites.items()}
    removed = {name: len(sites[name]) - len(kept[name]) for name in sites}
    return kept, removed


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, keeping its start (the site) and end (the file name)."""
    if len(text) <= limit:
        return text
    head = max(1, limit // 3)
    return text[:head] + ".." + text[-(limit - head - 2):]


def _tile(image: np.ndarray, tile: int) -> np.ndarray:
    """Fit a (H, W) or (H, W, 3) uint8 image into a black (tile, tile, 3) square, aspect kept."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"loaded image must be (H, W) or (H, W, 3), got shape {image.shape}")
    return cv2.cvtColor(resize_square(image.astype(np.uint8), tile), cv2.COLOR_GRAY2RGB)


def wrap_text(text: str, width: int, font: int, scale: float, thickness: int = 1) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels in the OpenCV ``font``."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(candidate, font, scale, thickness)[0][0] <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def caption_band(paragraphs: Sequence[str], width: int, scale: float = 0.45) -> np.ndarray:
    """(H, width, 3) uint8 black band with the paragraphs written in white, wrapped to the width."""
    font, thickness, margin = cv2.FONT_HERSHEY_SIMPLEX, 1, 6
    line_height = int(round(30 * scale)) + 4
    lines = [line for paragraph in paragraphs for line in wrap_text(paragraph, width - 2 * margin, font, scale)]
    band = np.zeros((len(lines) * line_height + 2 * margin, width, 3), np.uint8)
    for index, line in enumerate(lines, start=1):
        cv2.putText(band, line, (margin, margin + index * line_height - 5), font, scale, _WHITE, thickness,
                    cv2.LINE_AA)
    return band


def audit_pairs_caption(result: AuditResult, shown: int) -> list[str]:
    """What ``audit_pairs.png`` shows, as the paragraphs of its caption."""
    disagreeing = sum(not pair["same_site"] for pair in result.label_disagreement_pairs)
    return [
        f"Cross-site near-duplicate pairs of the leakage audit: {shown} of {len(result.pairs)}. Each pair: an "
        "image of the site given first (left, upper key site/file) beside its near-duplicate in another site "
        "(right, lower key).",
        f"d: Hamming distance between the two perceptual hashes of the brain crops (0 = same hash; pairs at "
        f"d <= {result.threshold_bits} bits count as copies).",
        f"Order: pairs whose labels differ first (red frame; {disagreeing} here), then by decreasing d: the "
        "pairs closest to the threshold, the ones most worth checking by eye, come first, so the first rows "
        f"often all read d={result.threshold_bits}.",
    ]


def audit_pairs_montage(
    result: AuditResult,
    load_image: Callable[[str], np.ndarray],
    *,
    max_pairs: int = 24,
    tile: int = 160,
) -> np.ndarray:
    """A picture of cross-site near-duplicate pairs for checking by eye.

    Pairs whose labels disagree come first, framed and labelled in red; then
    the others by decreasing distance (the ones closest to the threshold are
    the ones worth checking). Each pair shows both images side by side with
    the two keys (shortened) and the distance below; three pairs per row,
    under a caption (:func:`audit_pairs_caption`) saying what the pairs are,
    their order and what ``d`` means.

    Args:
        result: an audit result.
        load_image: returns the (H, W) grey or (H, W, 3) RGB uint8 image of a
            sample key; the only I/O.
        max_pairs: most pairs shown, >= 1.
        tile: side of each image square in pixels, >= 32.

    Returns:
        (H, W, 3) uint8 RGB montage, W = columns * (2 * tile + 6) + 6. With
        no cross-site pairs, a single black panel saying so.
    """
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if tile < 32:
        raise ValueError(f"tile must be >= 32, got {tile}")
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.35 * tile / 160 + 0.05, 1
    line_height = int(14 * tile / 160) + 4
    caption = 2 * line_height + 6
    cell_width, cell_height, gap = 2 * tile, tile + caption, 6
    max_chars = max(8, int(cell_width / (20 * scale)))

    disagreeing = {(pair["a"], pair["b"]) for pair in result.label_disagreement_pairs if not pair["same_site"]}

    def priority(pair: dict) -> tuple:
        return (pair["a"], pair["b"]) not in disagreeing, -pair["distance"], pair["a"], pair["b"]

    shown = sorted(result.pairs, key=priority)[:max_pairs]
    if not shown:
        panel = np.zeros((cell_height, cell_width, 3), np.uint8)
        cv2.putText(panel, "no cross-site near-duplicates", (6, cell_height // 2), font, scale, _WHITE, thickness,
                    cv2.LINE_AA)
        return panel

    columns = min(3, len(shown))
    rows = -(-len(shown) // columns)
    montage = np.zeros((rows * (cell_height + gap) + gap, columns * (cell_width + gap) + gap, 3), np.uint8)
    for index, pair in enumerate(shown):
        top = gap + (index // columns) * (cell_height + gap)
        left = gap + (index % columns) * (cell_width + gap)
        red = (pair["a"], pair["b"]) in disagreeing
        colour = _RED if red else _WHITE
        montage[top:top + tile, left:left + tile] = _tile(load_image(pair["a"]), tile)
        montage[top:top + tile, left + tile:left + 2 * tile] = _tile(load_image(pair["b"]), tile)
        if red:
            cv2.rectangle(montage, (left, top), (left + cell_width - 1, top + tile - 1), _RED, 2)
        first = _shorten(pair["a"], max_chars)
        second = _shorten(pair["b"], max_chars - 6) + f"  d={pair['distance']}"
        for line, text in enumerate((first, second), start=1):
            cv2.putText(montage, text, (left + 2, top + tile + line * line_height), font, scale, colour, thickness,
                        cv2.LINE_AA)
    return np.concatenate([caption_band(audit_pairs_caption(result, len(shown)), montage.shape[1]), montage])


def format_audit_table(result: AuditResult) -> str:
    """A short console table: per-site counts, then the overlap matrix.

    The matrix cell (row A, column B) is the number of images of A with a
    near-duplicate in B, then in brackets how many of them disagree on the
    label with such a near-duplicate (``248 (0)``).
    """
    names = result.site_names
    width = max([5, *(len(name) for name in names)])
    lines = [f"Leakage audit: near-duplicates at <= {result.threshold_bits} bits"]
    header = f"{'site':<{width}}  {'images':>7}  {'bad':>5}  {'dup groups':>10}  {'in groups':>9}  {'distinct':>8}"
    lines += [header, "-" * len(header)]
    for name in names:
        site = result.sites[name]
        lines.append(
            f"{name:<{width}}  {site['images']:>7}  {site['bad_files']:>5}  {site['duplicate_groups_within']:>10}"
            f"  {site['images_in_duplicate_groups_within']:>9}  {site['distinct_images']:>8}"
        )
    if len(names) > 1:
        cells = {}
        for a in names:
            for b in names:
                if a == b:
                    cells[a, b] = "-"
                    continue
                counts = result.overlap[a][b]
                cells[a, b] = f"{counts['images']} ({counts['label_disagreements']})"
        column = max([width, *(len(text) for text in cells.values())])
        lines += ["", "images of ROW with a near-duplicate in COLUMN (of them, with a near-duplicate of the other "
                      "label):"]
        lines.append(" " * width + "".join(f"  {b:>{column}}" for b in names))
        for a in names:
            lines.append(f"{a:<{width}}" + "".join(f"  {cells[a, b]:>{column}}" for b in names))
        lines.append(
            f"cross-site pairs: {len(result.pairs)}; pairs with disagreeing labels: "
            f"{sum(not pair['same_site'] for pair in result.label_disagreement_pairs)} across sites, "
            f"{sum(pair['same_site'] for pair in result.label_disagreement_pairs)} within sites"
        )
    return "\n".join(lines)


def audit_sites(sites: Mapping[str, Any], threshold_bits: int = DEFAULT_THRESHOLD_BITS) -> AuditResult:
    """:func:`run_audit` on loaded sites (``datasets.cache.CachedSite`` by name)."""
    return run_audit([AuditSite(name, site.samples, site.hashes, len(site.bad_files))
                      for name, site in sites.items()], threshold_bits=threshold_bits)


def audit_shortcuts(sites: Mapping[str, Any], train_site: str, *, n_resamples: int = 1000, seed: int = 0,
                    train_site_hashes: np.ndarray | None = None, threshold_bits: int = DEFAULT_THRESHOLD_BITS) -> dict:
    """:func:`datasets.shortcuts.shortcut_audit` on loaded sites (``CachedSite`` with ``features``) by name.

    The baseline is fit on ``sites[train_site]`` as passed: give the training
    set that was used (after the leakage policy) to measure what a model
    trained on it could score without anatomy.

    Each other site also gets ``baseline_source_disjoint``: the baseline's
    AUC on its images with no near-duplicate among ``train_site_hashes``
    (default: the hashes of ``sites[train_site]``), with ``images``. A
    baseline fit on files that include copies of an evaluation site's images
    recognises the copies; on the source-disjoint images it measures the
    shortcut alone.
    """
    from datasets.shortcuts import json_ready, shortcut_audit, shortcut_baseline

    result = shortcut_audit({name: (site.features, site.labels) for name, site in sites.items()}, train_site,
                            n_resamples=n_resamples, seed=seed)
    train = sites[train_site]
    reference = train.hashes if train_site_hashes is None else train_site_hashes
    for name, site in sites.items():
        if name == train_site:
            continue
        keep = ~leaked_flags(site.hashes, reference, threshold_bits)
        disjoint = shortcut_baseline(train.features, train.labels, site.features[keep], site.labels[keep],
                                     n_resamples=n_resamples, seed=seed)
        result["sites"][name]["baseline_source_disjoint"] = json_ready({**disjoint, "images": int(keep.sum())})
    return result


def write_audit_outputs(result: AuditResult, sites: Mapping[str, Any], output: Path,
                        extra: Mapping[str, Any] | None = None) -> list[Path]:
    """``audit.json``, ``audit_pairs.png`` and ``bad_files.json`` into ``output``; returns their paths.

    ``extra``: more top-level keys of ``audit.json`` (``shortcuts``, ``quality``).
    """
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / "audit.json", output / "audit_pairs.png", output / "bad_files.json"]
    paths[0].write_text(json.dumps({**result.to_json(), **(extra or {})}, indent=1))
    from datasets.cache import image_lookup

    montage = audit_pairs_montage(result, image_lookup(sites))
    write_png(paths[1], montage)
    bad = {name: [dataclasses.asdict(b) for b in site.bad_files] for name, site in sites.items()}
    paths[2].write_text(json.dumps(bad, indent=1))
    return paths


def leaked_flags(hashes: np.ndarray, train_hashes: np.ndarray, threshold_bits: int) -> np.ndarray:
    """(N,) bool: which of the (N, W) uint64 ``hashes`` have a near-duplicate among ``train_hashes``.

    Either side empty gives all False.
    """
    flags = np.zeros(len(hashes), bool)
    if len(train_hashes) and len(hashes):
        rows, _, _ = near_duplicate_pairs(hashes, train_hashes, threshold=threshold_bits)
        flags[rows] = True
    return flags


def audit_report(sites: Mapping[str, Any], train_site: str, output: Path, *, threshold_bits: int | None = None,
                 seed: int = 0, say: Callable[[str], None] | None = None) -> tuple[str, list[Path]]:
    """The leakage, shortcut and data-quality audits of loaded sites, written into ``output``.

    ``sites``: ``datasets.cache.CachedSite`` by name; the shortcut baseline is fit on ``sites[train_site]``.
    ``threshold_bits``: Hamming distance of near-duplicates (None: :data:`DEFAULT_THRESHOLD_BITS`); ``seed``:
    of the bootstraps and the classifiers; ``say``: progress lines. Returns the three tables as one text
    (leakage, shortcuts, quality, each with its heading) and the paths of the files written.
    """
    from datasets.cache import image_lookup
    from datasets.quality import cross_validated_review, format_quality_table, write_quality_outputs
    from datasets.shortcuts import format_shortcut_table

    say = say or (lambda line: None)
    bits = DEFAULT_THRESHOLD_BITS if threshold_bits is None else threshold_bits
    result = audit_sites(sites, bits)
    say("shortcut audit...")
    shortcuts = audit_shortcuts(sites, train_site, seed=seed, threshold_bits=bits)
    say("data-quality review...")
    quality = {name: cross_validated_review(site, seed=seed, threshold_bits=bits) for name, site in sites.items()}
    paths = write_audit_outputs(result, sites, output, {"shortcuts": shortcuts, "quality": quality})
    paths += write_quality_outputs(quality, image_lookup(sites), output)
    text = "\n".join([
        format_audit_table(result), "",
        "Shortcut audit: AUC of non-anatomical image statistics alone for tumour vs no tumour",
        format_shortcut_table(shortcuts), "",
        "Data-quality review: probably not MRI (CT-like skull ring) and candidate label errors (cleanlab)",
        format_quality_table(quality)])
    return text, paths
