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
        manifest.json  cache version, and the size and CRC-32 of each file above (written last)

A bundle is keyed by the crop parameters (with the cache version and
``brain_crop.CROP_VERSION``) and by the sorted SHA-256 content hashes of the
site's files, so renaming or moving files keeps the cache, and changing one
image, one parameter or the crop algorithm rebuilds. When a bundle is
rebuilt, the rows of images already cropped with the same parameters in other
(verified) bundles are reused, so only new files are decoded. Bundles are
written into a temporary folder and renamed into place, so two processes
building at once never see a half-written bundle (the later one simply
discards its copy).

Every load verifies the bundle against its manifest: each file present, of
the recorded size and CRC-32, and of the shapes ``meta.json`` implies. A
damaged, truncated, partial or missing part (or a bundle without a manifest)
is reported in one line naming the file and why, and the bundle is rebuilt.
CRC-32 of the ~150 MB of a 3,000-image 224 px bundle costs about 0.1 s.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import mmap
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from datasets.records import BadFile, Sample
from datasets.sites import Candidate, check_classes, open_site
from datasets.shortcuts import FEATURE_NAMES
from datasets.validation import DEFAULT_MAX_PIXELS

#: Bumped when the crop, hash or feature algorithm or the bundle layout changes, so old bundles are not reused.
#: 2: shortcut features (``features.npy``). 3: ``manifest.json`` with a checksum of every file.
CACHE_VERSION = 3

#: The files of a bundle besides the manifest, in the order they are checked.
BUNDLE_PARTS = ("meta.json", "images.npy", "boxes.npy", "hashes.npy", "features.npy")
MANIFEST = "manifest.json"

ProgressCallback = Callable[[int, int], None]


class BundleDamaged(ValueError):
    """A crop-cache bundle file that is missing, damaged or inconsistent.

    Attributes:
        path: the file.
        problem: why, e.g. ``"checksum mismatch"``.
    """

    def __init__(self, path: Path, problem: str):
        super().__init__(f"crop cache: {path} {problem}")
        self.path = path
        self.problem = problem


def crop_algorithm_version() -> int:
    """``brain_crop.CROP_VERSION`` (1 where the package does not define it)."""
    import brain_crop

    return int(getattr(brain_crop, "CROP_VERSION", 1))


def print_to_stderr(line: str) -> None:
    """The default ``report`` of :func:`load_site`: one line on standard error."""
    print(line, file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """``$BRAINMRI_CACHE`` if set, else ``~/.cache/brainmri``."""
    return Path(os.environ.get("BRAINMRI_CACHE", Path.home() / ".cache" / "brainmri"))


@dataclasses.dataclass(frozen=True)
class CropParams:
    """Everything that changes the cached pixels (the digest adds the cache and crop versions and feature names)."""

    image_size: int = 224
    margin: float = 0.0
    crop: bool = True
    threshold: int = 45
    max_pixels: int = DEFAULT_MAX_PIXELS

    def digest(self) -> str:
        text = json.dumps({**dataclasses.asdict(self), "version": CACHE_VERSION, "features": FEATURE_NAMES,
                           "crop_version": crop_algorithm_version()}, sort_keys=True)
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
    """Hex SHA-256 of a regular file's bytes (``validation.open_regular_file``: a FIFO is never opened)."""
    from datasets.validation import open_regular_file

    digest = hashlib.sha256()
    with open_regular_file(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_files(paths: Sequence[str], threads: int = 4) -> list[str | tuple[str, str]]:
    """Content hash of each path, or ``(reason, detail)`` where it cannot be read (``threads`` slices at once)."""
    from datasets.validation import ImageRejected

    def one(path: str) -> str | tuple[str, str]:
        try:
            return file_sha256(path)
        except ImageRejected as rejected:
            return rejected.reason, rejected.detail
        except OSError as error:
            return "unreadable", f"{type(error).__name__}: {error.strerror or error}"

    slices = [paths[start::threads] for start in range(threads)]  # one task per thread, not per file
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        hashed = list(pool.map(lambda part: [one(path) for path in part], slices))
    result: list = [None] * len(paths)
    for start, part in enumerate(hashed):
        result[start::threads] = part
    return result


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
    from datasets.validation import ImageRejected, decode_image_bytes, read_regular_file

    cv2.setNumThreads(1)
    try:
        data = read_regular_file(path)
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


def _npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in the ``.npy`` format, as ``np.save`` writes it."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _array_from_npy_bytes(data: bytes | mmap.mmap, path: Path) -> np.ndarray:
    """The array in ``.npy`` bytes, read-only and without a copy; BundleDamaged if the header is bad."""
    header = io.BytesIO(memoryview(data)[:1 << 16])
    try:
        major, _ = np.lib.format.read_magic(header)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(header)
        count = int(np.prod(shape, dtype=np.int64))
        array = np.frombuffer(data, dtype, count=count, offset=header.tell())
    except (ValueError, TypeError) as error:
        raise BundleDamaged(path, f"is not a valid .npy file ({error})") from None
    return array.reshape(shape, order="F" if fortran_order else "C")


def _read_manifest(folder: Path) -> dict:
    """The bundle's manifest, checked for its version and its list of parts (BundleDamaged if not)."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BundleDamaged(path, "is missing (a bundle of an older cache version, or a damaged one)") from None
    except OSError as error:
        raise BundleDamaged(path, f"cannot be read ({error.strerror or error})") from None
    except ValueError:
        raise BundleDamaged(path, "is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        found = manifest.get("version") if isinstance(manifest, dict) else None
        raise BundleDamaged(path, f"is of cache version {found!r}, expected {CACHE_VERSION}")
    parts = manifest.get("parts")
    for name in BUNDLE_PARTS:
        entry = parts.get(name) if isinstance(parts, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("crc32"), int)):
            raise BundleDamaged(path, f"has no size and checksum for {name}")
    return manifest


def _read_verified_parts(folder: Path) -> dict[str, bytes | mmap.mmap]:
    """The bytes of every bundle part (``.npy`` memory-mapped), each checked against the manifest's size and CRC-32.

    Sizes are checked for all parts (from ``os.stat``) before any is read,
    so a missing or truncated file is named as such. Raises BundleDamaged.
    """
    manifest = _read_manifest(folder)
    for name in BUNDLE_PARTS:
        path, expected = folder / name, manifest["parts"][name]["bytes"]
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise BundleDamaged(path, "is missing") from None
        except OSError as error:
            raise BundleDamaged(path, f"cannot be read ({error.strerror or error})") from None
        if size != expected:
            raise BundleDamaged(path, f"has {size} bytes, the manifest says {expected} (truncated or overwritten)")
    parts = {}
    for name in BUNDLE_PARTS:
        path = folder / name
        try:
            data = _map_file(path) if name.endswith(".npy") else path.read_bytes()
        except (OSError, ValueError) as error:
            raise BundleDamaged(path, f"cannot be read ({getattr(error, 'strerror', None) or error})") from None
        if len(data) != manifest["parts"][name]["bytes"] or zlib.crc32(data) != manifest["parts"][name]["crc32"]:
            raise BundleDamaged(path, "checksum mismatch")
        parts[name] = data
    return parts


def _map_file(path: Path) -> mmap.mmap | bytes:
    """The file's bytes, memory-mapped read-only (no copy; ``b""`` for an empty file)."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _load_bundle(folder: Path, params: CropParams) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(meta, images, boxes, hashes, features)`` of a verified bundle folder (arrays read-only).

    images (N, S, S) uint8, boxes (N, 4) int32, hashes (N, W) uint64,
    features (N, F) float64, N = ``len(meta["sha256"])``, S = ``params.image_size``.

    Raises:
        BundleDamaged: naming the first file that is missing, damaged
            (size, checksum) or inconsistent with ``meta.json`` or ``params``.
    """
    parts = _read_verified_parts(folder)
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(parts["meta.json"])
        rows, flags, bad = len(meta["sha256"]), meta["flags"], meta["bad"]
        feature_names = tuple(meta["feature_names"])
    except (ValueError, KeyError, TypeError):
        raise BundleDamaged(meta_path, "is not a valid bundle description") from None
    if feature_names != FEATURE_NAMES or len(flags) != rows or not isinstance(bad, dict):
        raise BundleDamaged(meta_path, f"does not match this version (features {list(feature_names)}, "
                                       f"{rows} rows, {len(flags)} flags)")
    size = params.image_size
    expected = {"images.npy": ((rows, size, size), np.uint8), "boxes.npy": ((rows, 4), np.int32),
                "hashes.npy": (None, np.uint64), "features.npy": ((rows, len(FEATURE_NAMES)), np.float64)}
    arrays = {}
    for name, (shape, dtype) in expected.items():
        array = _array_from_npy_bytes(parts[name], folder / name)
        wrong_shape = array.shape != shape if shape else (array.ndim != 2 or len(array) != rows)
        if wrong_shape or array.dtype != dtype:
            raise BundleDamaged(folder / name, f"holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} "
                                               f"{shape or (rows, 'W')}")
        arrays[name] = array
    return meta, arrays["images.npy"], arrays["boxes.npy"], arrays["hashes.npy"], arrays["features.npy"]


def _reusable_rows(param_dir: Path, wanted: set[str], params: CropParams) -> dict[str, tuple]:
    """Rows already computed in other verified bundles of the same parameters, by content hash.

    Damaged bundles are passed over silently (the one being rebuilt has been reported).
    """
    found: dict[str, tuple] = {}
    if not param_dir.exists():
        return found
    for folder in sorted(param_dir.iterdir()):
        if folder.name.startswith(".") or not (folder / MANIFEST).exists() or not wanted - found.keys():
            continue
        try:
            meta, images, boxes, _, features = _load_bundle(folder, params)
        except BundleDamaged:
            continue
        for row, (sha, flag) in enumerate(zip(meta["sha256"], meta["flags"])):
            if sha in wanted and sha not in found:
                found[sha] = (np.array(images[row]), tuple(int(v) for v in boxes[row]), flag, "", "",
                              features[row].copy())
        for sha, (reason, detail) in meta["bad"].items():
            if sha in wanted and sha not in found:
                found[sha] = (None, (0, 0, 0, 0), "", reason, detail, None)
    return found


def _bundle_problem(folder: Path, params: CropParams) -> BundleDamaged | None:
    """None when the bundle at ``folder`` loads and verifies, else what is wrong with it."""
    try:
        _load_bundle(folder, params)
    except BundleDamaged as damage:
        return damage
    return None


def _discard_folder(folder: Path) -> None:
    """Move a damaged bundle out of the way (atomically), then delete it; gone already is fine."""
    aside = Path(tempfile.mkdtemp(prefix=".damaged-", dir=folder.parent))
    try:
        os.rename(folder, aside / folder.name)
    except FileNotFoundError:
        pass
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _write_bundle(folder: Path, meta: dict, images: np.ndarray, boxes: np.ndarray, hashes: np.ndarray,
                  features: np.ndarray, params: CropParams) -> None:
    """Write the parts and then the manifest into a temporary folder, and rename it to ``folder``.

    A bundle already at ``folder`` is kept when it verifies (another process
    finished first) and replaced when it does not (a damaged bundle).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        contents = {"meta.json": json.dumps(meta).encode(), "images.npy": _npy_bytes(images),
                    "boxes.npy": _npy_bytes(boxes), "hashes.npy": _npy_bytes(hashes),
                    "features.npy": _npy_bytes(features)}
        for name in BUNDLE_PARTS:
            (temporary / name).write_bytes(contents[name])
        manifest = {"version": CACHE_VERSION, "crop_version": crop_algorithm_version(),
                    "parts": {name: {"bytes": len(data), "crc32": zlib.crc32(data)} for name, data in contents.items()}}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for _ in range(3):
            try:
                os.rename(temporary, folder)
                return
            except OSError:
                if not folder.exists():
                    raise
                if _bundle_problem(folder, params) is None:  # another process finished the same bundle first
                    return
                _discard_folder(folder)
        raise OSError(f"crop cache: could not put the rebuilt bundle in place at {folder}")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def load_site(name: str, root: str | os.PathLike, params: CropParams = CropParams(), *,
              cache_dir: str | os.PathLike | None = None, workers: int | None = None,
              progress: ProgressCallback | None = None, report: Callable[[str], None] | None = None,
              follow_external_symlinks: bool = False) -> CachedSite:
    """List, validate, crop and cache a site; later calls load the verified bundle in well under a second.

    Args:
        name: site name (registry key or any valid name).
        root: site folder.
        params: crop parameters (part of the cache key).
        cache_dir: cache root; default :func:`default_cache_dir`.
        workers: processes for decoding (default: all CPU cores).
        progress: called as ``progress(done, total)`` while decoding.
        report: receives the one line that says a damaged bundle is rebuilt
            (default: standard error).
        follow_external_symlinks: read symlinks that resolve outside the site
            folder (skipped as ``symlink_outside_site`` otherwise).

    Returns:
        The cached site. Bad files are skipped and listed in ``bad_files``.

    Raises:
        ValueError: missing folder, bad layout, no valid images or one class
            only; :class:`BundleDamaged` when a bundle just written does not verify.
    """
    report = report or print_to_stderr
    site = open_site(name, root)
    candidates, bad_files = site.list_files(follow_external_symlinks=follow_external_symlinks)
    shas = _hash_files([c.path for c in candidates])
    readable: list[tuple[Candidate, str]] = []
    for candidate, sha in zip(candidates, shas):
        if isinstance(sha, tuple):
            bad_files.append(BadFile(candidate.path, candidate.relative_path, name, *sha))
        else:
            readable.append((candidate, sha))

    param_dir = Path(cache_dir or default_cache_dir()) / f"crops-{params.image_size}px-{params.digest()}"
    bundle = param_dir / _bundle_key([sha for _, sha in readable])
    wanted = {sha for _, sha in readable}
    loaded = None
    if bundle.exists():
        try:
            loaded = _load_site_bundle(bundle, params, wanted)
        except BundleDamaged as damage:
            report(f"{damage}; rebuilding")
    cache_hit = loaded is not None
    files = sorted({sha: path for path, sha in ((c.path, s) for c, s in readable)}.items())
    for attempt in range(3):  # another process replacing the same damaged bundle may move it under us
        if loaded is not None:
            break
        _build_bundle(bundle, param_dir, files, params, workers, progress)
        try:
            loaded = _load_site_bundle(bundle, params, wanted)
        except BundleDamaged:
            if attempt == 2:
                raise
    meta, images, boxes, hashes, features = loaded
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


def _load_site_bundle(bundle: Path, params: CropParams, wanted: set[str]) -> tuple:
    """:func:`_load_bundle`, also checking that ``meta.json`` accounts for every content hash in ``wanted``."""
    loaded = _load_bundle(bundle, params)
    meta = loaded[0]
    unknown = wanted - set(meta["sha256"]) - set(meta["bad"])
    if unknown:
        raise BundleDamaged(bundle / "meta.json", f"does not list {len(unknown)} of the site's files")
    return loaded


def _build_bundle(bundle: Path, param_dir: Path, files: list[tuple[str, str]], params: CropParams,
                  workers: int | None, progress: ProgressCallback | None) -> None:
    """Crop every distinct content hash once (reusing rows of other bundles) and write the bundle."""
    from datasets.phash import perceptual_hash

    results = _reusable_rows(param_dir, {sha for sha, _ in files}, params)
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
            # forkserver, not fork: a child forked from a process whose OpenCV or TensorFlow thread pools
            # are running can wait forever on a lock held by a thread that was not copied (seen in
            # cv2.setNumThreads); forkserver children start from a clean single-threaded server.
            context = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
            executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
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
        "crop_version": crop_algorithm_version(),
        "params": dataclasses.asdict(params),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sha256": good,
        "flags": [results[sha][2] for sha in good],
        "feature_names": list(FEATURE_NAMES),
        "bad": {sha: [results[sha][3], results[sha][4]] for sha, _ in files if results[sha][0] is None},
    }
    _write_bundle(bundle, meta, images, boxes, hashes, features, params)


def image_lookup(sites: Mapping[str, CachedSite]) -> Callable[[str], np.ndarray]:
    """``lookup(key) -> (S, S) uint8 crop`` of any sample of ``sites`` by ``Sample.key`` (KeyError if unknown)."""
    index = {sample.key: (site, row) for site in sites.values() for row, sample in enumerate(site.samples)}

    def lookup(key: str) -> np.ndarray:
        site, row = index[key]
        return site.images[row]

    return lookup


def load_sites(specs: Sequence[tuple[str, str]], params: CropParams, *, cache_dir: str | os.PathLike | None = None,
               report: Callable[[str], None] | None = None,
               progress: Callable[[str], ProgressCallback] | None = None,
               follow_external_symlinks: bool = False) -> dict[str, CachedSite]:
    """Load (validate, crop, cache) each ``(name, path)`` site, in order.

    ``report(line)`` receives a summary line per site, its bad files and
    any damaged bundle being rebuilt (without ``report``, only the latter,
    on standard error); ``progress(label)`` makes the decoding progress
    callback of each site; ``follow_external_symlinks`` as in :func:`load_site`.
    Raises ValueError for a site name given twice, before any work.
    """
    from datasets.validation import format_bad_file_summary

    names = [name for name, _ in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"site names must be unique; given more than once: {', '.join(repeated)}")
    damage_report = report
    report = report or (lambda line: None)
    sites: dict[str, CachedSite] = {}
    for name, path in specs:
        start = time.time()
        site = load_site(name, path, params, cache_dir=cache_dir or None,
                         progress=progress(f"cropping {name}") if progress else None, report=damage_report,
                         follow_external_symlinks=follow_external_symlinks)
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


def matching_pool(sites: dict) -> tuple[np.ndarray | None, dict[str, int]]:
    """Histogram-matching references of ``sites``: their crops whose crop flag is ``"ok"``.

    A crop flagged ``blank`` or ``no_contour`` (the whole image, no head
    found) or ``touches_border`` (the head reaches the image edge, so part
    of it may be missing) is left out: its histogram is not a whole head's.

    Args:
        sites: name -> site with ``images`` (N, S, S) uint8 and ``flags`` (N crop flags).

    Returns:
        ``(pool, left_out)``: (R, S, S) uint8 crops of every site in order
        (None without sites) and the count of crops left out per flag.
    """
    if not sites:
        return None, {}
    kept, left_out = [], {}
    for site in sites.values():
        usable = np.array([flag == "ok" for flag in site.flags], bool)
        kept.append(site.images[usable])
        for flag in site.flags:
            if flag != "ok":
                left_out[flag] = left_out.get(flag, 0) + 1
    return np.concatenate(kept), dict(sorted(left_out.items()))


def pool_left_out_text(left_out: dict[str, int]) -> str:
    """``"; 48 left out for their crop flag: 48 touches_border"``, or "" when none was."""
    if not left_out:
        return ""
    return (f"; {sum(left_out.values())} left out for their crop flag: "
            + ", ".join(f"{count} {flag}" for flag, count in left_out.items()))
