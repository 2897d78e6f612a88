"""The crop cache: decode, validate, crop and resize each image once.

Layout on disk (``CACHE`` defaults to ``~/.cache/brainmri`` or
``$BRAINMRI_CACHE``)::

    CACHE/crops-<size>px-<params digest>/<content digest>/
        images.npy   (N, size, size) uint8 crops, in sample order
        boxes.npy    (N, 4) int32 crop boxes (x0, y0, x1, y1) in the original
        hashes.npy   (N, W) uint64 perceptual hashes of the crops (leakage audit)
        features.npy (N, F) float64 shortcut features of the original files
                     (``datasets.shortcuts.FEATURE_NAMES``; NaN where one does not apply)
        meta.json    content hashes, crop flags, feature names and the bad files of the bundle

A bundle is keyed by the crop parameters and by the sorted SHA-256 content
hashes of the site's files, so renaming or moving files keeps the cache, and
changing one image or one parameter rebuilds. When a bundle is rebuilt, the
rows of images already cropped with the same parameters in other bundles are
reused, so only new files are decoded. Bundles are written into a temporary
folder and renamed into place, so two processes building at once never see
a half-written bundle (the later one simply discards its copy).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from datasets.records import BadFile, Sample
from datasets.sites import Candidate, check_classes, open_site
from datasets.shortcuts import FEATURE_NAMES
from datasets.validation import DEFAULT_MAX_PIXELS

#: Bumped when the crop, hash or feature algorithm changes, so old bundles are not reused.
#: 2: shortcut features (``features.npy``).
CACHE_VERSION = 2

ProgressCallback = Callable[[int, int], None]


def default_cache_dir() -> Path:
    """``$BRAINMRI_CACHE`` if set, else ``~/.cache/brainmri``."""
    return Path(os.environ.get("BRAINMRI_CACHE", Path.home() / ".cache" / "brainmri"))


@dataclasses.dataclass(frozen=True)
class CropParams:
    """Everything that changes the cached pixels (the digest adds the cache version and feature names)."""

    image_size: int = 224
    margin: float = 0.0
    crop: bool = True
    threshold: int = 45
    max_pixels: int = DEFAULT_MAX_PIXELS

    def digest(self) -> str:
        text = json.dumps({**dataclasses.asdict(self), "version": CACHE_VERSION, "features": FEATURE_NAMES},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclasses.dataclass
class CachedSite:
    """A site's valid images, cropped, with their records.

    Attributes:
        name: site name.
        root: site folder.
        samples: valid samples, aligned with ``images``.
        images: (N, S, S) uint8 crops.
        boxes: (N, 4) int32 crop boxes in original pixel coordinates.
        flags: N crop flags (``"ok"``, ``"blank"``, ``"no_contour"``, ``"touches_border"``).
        hashes: (N, W) uint64 perceptual hashes.
        features: (N, F) float64 shortcut features of the original files, columns
            ``datasets.shortcuts.FEATURE_NAMES`` (see ``image_features``).
        bad_files: files skipped, with reasons.
        cache_hit: True when nothing had to be decoded.
    """

    name: str
    root: str
    samples: list[Sample]
    images: np.ndarray
    boxes: np.ndarray
    flags: list[str]
    hashes: np.ndarray
    features: np.ndarray
    bad_files: list[BadFile]
    cache_hit: bool = False

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], np.int32)

    def digest(self) -> str:
        """Short digest of the site's content (sorted content hashes)."""
        return hashlib.sha256("".join(sorted(s.sha256 for s in self.samples)).encode()).hexdigest()[:16]

    def subset(self, keep: Sequence[int]) -> "CachedSite":
        keep = np.asarray(keep, np.int64)
        return dataclasses.replace(
            self, samples=[self.samples[i] for i in keep], images=self.images[keep],
            boxes=self.boxes[keep], flags=[self.flags[i] for i in keep], hashes=self.hashes[keep],
            features=self.features[keep])


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_files(paths: Sequence[str]) -> list[str | None]:
    def one(path: str) -> str | None:
        try:
            return file_sha256(path)
        except OSError:
            return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, paths, chunksize=64))


def _read_bytes(path: str) -> bytes:
    """The file's bytes; ``ImageRejected("unreadable")`` on OSError, as ``read_image_file`` does."""
    from datasets.validation import ImageRejected

    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        detail = f"{type(error).__name__}: {error.strerror or error}"
        raise ImageRejected("unreadable", detail) from error


def process_file(path: str, params: CropParams) -> tuple[np.ndarray | None, tuple[int, int, int, int], str, str,
                                                        str, np.ndarray | None]:
    """Read, validate, crop and featurise one file, decoding it once.

    Returns:
        ``(crop, box, flag, reason, detail, features)``: ``crop`` is a (S, S)
        uint8 array and ``features`` a float64 (F,) row of
        ``datasets.shortcuts.image_features``, or both None with a reason
        code when the file is bad.
    """
    import cv2

    from brain_crop import crop_brain, resize_square
    from datasets.shortcuts import image_features
    from datasets.validation import ImageRejected, decode_image_bytes

    cv2.setNumThreads(1)
    try:
        data = _read_bytes(path)
        image = decode_image_bytes(data, max_pixels=params.max_pixels)
    except ImageRejected as error:
        return None, (0, 0, 0, 0), "", error.reason, error.detail, None
    if params.crop:
        crop, found = crop_brain(image, params.image_size, margin=params.margin, threshold=params.threshold)
        box, flag = (found.x0, found.y0, found.x1, found.y1), found.flag
    else:
        height, width = image.shape[:2]
        crop, box, flag = resize_square(image, params.image_size), (0, 0, width, height), "ok"
    return crop, box, flag, "", "", image_features(data, image, box)


def _process_chunk(args: tuple[list[str], CropParams]) -> list[tuple]:
    paths, params = args
    return [process_file(path, params) for path in paths]


def _bundle_key(shas: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(shas))).encode()).hexdigest()[:20]


def _load_bundle(folder: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(meta, images (memory-mapped), boxes, hashes, features)`` of a bundle folder.

    Raises OSError or ValueError for a missing or damaged file, and ValueError
    when the features were computed with other feature columns.
    """
    meta = json.loads((folder / "meta.json").read_text())
    if tuple(meta.get("feature_names", ())) != FEATURE_NAMES:
        raise ValueError(f"bundle {folder} has features {meta.get('feature_names')}, expected {FEATURE_NAMES}")
    return (meta, np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "boxes.npy"),
            np.load(folder / "hashes.npy"), np.load(folder / "features.npy"))


def _reusable_rows(param_dir: Path, wanted: set[str]) -> dict[str, tuple]:
    """Rows already computed in other bundles of the same parameters, by content hash."""
    found: dict[str, tuple] = {}
    if not param_dir.exists():
        return found
    for folder in param_dir.iterdir():
        if not (folder / "meta.json").exists() or not wanted - found.keys():
            continue
        try:
            meta, images, boxes, _, features = _load_bundle(folder)
        except (OSError, ValueError):
            continue
        for row, (sha, flag) in enumerate(zip(meta["sha256"], meta["flags"])):
            if sha in wanted and sha not in found:
                found[sha] = (np.array(images[row]), tuple(int(v) for v in boxes[row]), flag, "", "",
                              features[row].copy())
        for sha, (reason, detail) in meta["bad"].items():
            if sha in wanted and sha not in found:
                found[sha] = (None, (0, 0, 0, 0), "", reason, detail, None)
    return found


def _write_bundle(folder: Path, meta: dict, images: np.ndarray, boxes: np.ndarray, hashes: np.ndarray,
                  features: np.ndarray) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        np.save(temporary / "images.npy", images)
        np.save(temporary / "boxes.npy", boxes)
        np.save(temporary / "hashes.npy", hashes)
        np.save(temporary / "features.npy", features)
        (temporary / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(temporary, folder)
        except OSError:  # another process finished the same bundle first
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def load_site(name: str, root: str | os.PathLike, params: CropParams = CropParams(), *,
              cache_dir: str | os.PathLike | None = None, workers: int | None = None,
              progress: ProgressCallback | None = None) -> CachedSite:
    """List, validate, crop and cache a site; later calls load the bundle in well under a second.

    Args:
        name: site name (registry key or any valid name).
        root: site folder.
        params: crop parameters (part of the cache key).
        cache_dir: cache root; default :func:`default_cache_dir`.
        workers: processes for decoding (default: all CPU cores).
        progress: called as ``progress(done, total)`` while decoding.

    Returns:
        The cached site. Bad files are skipped and listed in ``bad_files``.

    Raises:
        ValueError: missing folder, bad layout, no valid images or one class only.
    """
    site = open_site(name, root)
    candidates, bad_files = site.list_files()
    shas = _hash_files([c.path for c in candidates])
    readable: list[tuple[Candidate, str]] = []
    for candidate, sha in zip(candidates, shas):
        if sha is None:
            bad_files.append(BadFile(candidate.path, candidate.relative_path, name, "unreadable",
                                     "the file could not be opened"))
        else:
            readable.append((candidate, sha))

    param_dir = Path(cache_dir or default_cache_dir()) / f"crops-{params.image_size}px-{params.digest()}"
    bundle = param_dir / _bundle_key([sha for _, sha in readable])
    cache_hit = (bundle / "meta.json").exists()
    if not cache_hit:
        _build_bundle(bundle, param_dir, sorted({sha: path for path, sha in
                                                 ((c.path, s) for c, s in readable)}.items()),
                      params, workers, progress)
    meta, images, boxes, hashes, features = _load_bundle(bundle)
    row_of = {sha: row for row, sha in enumerate(meta["sha256"])}

    samples, rows = [], []
    for candidate, sha in readable:
        if sha in row_of:
            rows.append(row_of[sha])
            samples.append(Sample(candidate.path, candidate.relative_path, name, candidate.label,
                                  candidate.subclass, sha))
        else:
            reason, detail = meta["bad"][sha]
            bad_files.append(BadFile(candidate.path, candidate.relative_path, name, reason, detail))
    check_classes(name, [s.label for s in samples])
    rows_array = np.asarray(rows, np.int64)
    bad_files.sort(key=lambda b: b.relative_path)
    return CachedSite(name=name, root=str(site.root), samples=samples,
                      images=np.ascontiguousarray(images[rows_array]), boxes=boxes[rows_array],
                      flags=[meta["flags"][r] for r in rows], hashes=hashes[rows_array],
                      features=features[rows_array], bad_files=bad_files, cache_hit=cache_hit)


def _build_bundle(bundle: Path, param_dir: Path, files: list[tuple[str, str]], params: CropParams,
                  workers: int | None, progress: ProgressCallback | None) -> None:
    """Crop every distinct content hash once (reusing rows of other bundles) and write the bundle."""
    from datasets.phash import perceptual_hash

    results = _reusable_rows(param_dir, {sha for sha, _ in files})
    todo = [(sha, path) for sha, path in files if sha not in results]
    total, done = len(files), len(files) - len(todo)
    if progress:
        progress(done, total)
    if todo:
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo) // 16 + 1))
        chunk = max(1, min(64, len(todo) // (workers * 4) + 1))
        chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
        jobs = [([path for _, path in part], params) for part in chunks]
        if workers == 1:
            outputs = map(_process_chunk, jobs)
            executor = None
        else:
            executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
            outputs = executor.map(_process_chunk, jobs)
        try:
            for part, output in zip(chunks, outputs):
                for (sha, _), result in zip(part, output):
                    results[sha] = result
                done += len(part)
                if progress:
                    progress(done, total)
        finally:
            if executor is not None:  # an exception (e.g. a stop signal) cancels what has not started
                executor.shutdown(cancel_futures=True)

    good = [sha for sha, _ in files if results[sha][0] is not None]
    size = params.image_size
    images = np.zeros((len(good), size, size), np.uint8)
    boxes = np.zeros((len(good), 4), np.int32)
    features = np.zeros((len(good), len(FEATURE_NAMES)), np.float64)
    for row, sha in enumerate(good):
        images[row] = results[sha][0]
        boxes[row] = results[sha][1]
        features[row] = results[sha][5]
    hashes = perceptual_hash(images)
    meta = {
        "version": CACHE_VERSION,
        "params": dataclasses.asdict(params),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sha256": good,
        "flags": [results[sha][2] for sha in good],
        "feature_names": list(FEATURE_NAMES),
        "bad": {sha: [results[sha][3], results[sha][4]] for sha, _ in files if results[sha][0] is None},
    }
    _write_bundle(bundle, meta, images, boxes, hashes, features)


def image_lookup(sites: Mapping[str, CachedSite]) -> Callable[[str], np.ndarray]:
    """``lookup(key) -> (S, S) uint8 crop`` of any sample of ``sites`` by ``Sample.key`` (KeyError if unknown)."""
    index = {sample.key: (site, row) for site in sites.values() for row, sample in enumerate(site.samples)}

    def lookup(key: str) -> np.ndarray:
        site, row = index[key]
        return site.images[row]

    return lookup


def load_sites(specs: Sequence[tuple[str, str]], params: CropParams, *, cache_dir: str | os.PathLike | None = None,
               report: Callable[[str], None] | None = None,
               progress: Callable[[str], ProgressCallback] | None = None) -> dict[str, CachedSite]:
    """Load (validate, crop, cache) each ``(name, path)`` site, in order.

    ``report(line)`` receives a summary line per site and its bad files;
    ``progress(label)`` makes the decoding progress callback of each site.
    Raises ValueError for a site name given twice, before any work.
    """
    from datasets.validation import format_bad_file_summary

    names = [name for name, _ in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"site names must be unique; given more than once: {', '.join(repeated)}")
    report = report or (lambda line: None)
    sites: dict[str, CachedSite] = {}
    for name, path in specs:
        start = time.time()
        site = load_site(name, path, params, cache_dir=cache_dir or None,
                         progress=progress(f"cropping {name}") if progress else None)
        source = "cache" if site.cache_hit else "decoded"
        report(f"site {name}: {len(site.samples)} images ({int(site.labels.sum())} tumour), "
               f"{len(site.bad_files)} skipped, {source} in {time.time() - start:.1f} s")
        if len(site.bad_files) <= 20:
            for bad in site.bad_files:
                report(f"  {bad.message()}")
        for line in format_bad_file_summary(name, site.bad_files):
            report(line)
        sites[name] = site
    return sites
