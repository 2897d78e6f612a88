"""Perceptual hashes of brain crops and fast near-duplicate search.

The hash (:data:`HASH_DESCRIPTION`) is built for the leakage audit: two files
that hold the same scan (re-encoded, resized, brighter or darker, with other
black borders, or cropped a little differently by the crop step) must get
hashes a few bits apart, while different scans, including neighbouring slices
of one patient, must not. Steps, all vectorised over the batch:

1. Shrink each crop to 64x64 (``cv2.INTER_AREA``; linear when enlarging).
2. Normalise position and scale by intensity moments: the window is centred
   on the intensity centroid and spans ``+-1.6`` standard deviations of the
   intensity mass along each axis, resampled to 32x32 with a tent filter
   (zero outside the image). Black borders add no mass, and a crop box that
   is a few pixels larger or smaller barely moves the moments, so the window
   lands on the same anatomy. This is what makes the hash robust to the crop
   step, whose box changes noticeably when a file is re-encoded or resized.
3. Replace each of the 1024 values by its rank (a per-image histogram
   equalisation; equal values share the lowest rank): any increasing
   intensity change (brightness, contrast, gamma) leaves the ranks nearly
   unchanged.
4. 2-D DCT-II (matrix products) and keep the 128 lowest-frequency
   coefficients in order of ``u + v`` (the DC term skipped).
5. Each bit = coefficient above the image's median coefficient; 128 bits are
   packed little-endian into two ``uint64`` words. Exactly half the bits are
   set (barring ties), so distances are even numbers.

Threshold choice, measured on the shared BR35H, NAV and MOS images (4,564
crops of 128x128 from ``brain_crop.crop_brain``) with
``python benchmarks/bench_audit.py --threshold-table``, which also writes the
full table to ``benchmarks/results/audit_threshold.md``. "Copies missed": of
4,400 synthetic copies (400 random images, each re-encoded at JPEG quality 30
and 50, resized 0.5x and 1.5x, given black borders, brightness +-15 %, gamma
0.8 and 1.25, contrast 1.2, and a combination; every copy decoded and
cropped again), the share farther than the threshold from its original.
"Pairs": all pairs of real crops within the threshold (10.4 million pairs in
all). "Different": of those, an estimate of pairs of different scans (an
independent check, the correlation of band-passed crops after alignment,
below 0.6 on up to 100 sampled pairs per distance). "Labels differ": pairs of
a tumour and a no-tumour image (false matches unless a label is wrong).
"Largest group": biggest group of BR35H near-duplicates (chaining).

=========  =============  =====  =========  =============  =============
threshold  copies missed  pairs  different  labels differ  largest group
=========  =============  =====  =========  =============  =============
16         3.2 %          10220  0          0              24
20         1.8 %          11237  0          0              24
24         1.4 %          11794  0          0              24
26         1.1 %          11958  0          0              24
28         0.9 %          12113  6          0              24
30         0.8 %          12244  25         9              24
32         0.6 %          12484  87         61             31
36         0.3 %          14096  862        610            145
=========  =============  =====  =========  =============  =============

:data:`DEFAULT_THRESHOLD_BITS` = 28 is the largest threshold with no
tumour / no-tumour pair and no chaining of BR35H groups; by eye, 24 of 24
random pairs at distance 24 and 21 of 24 at distance 28 are the same scan
(the other three: two neighbouring slices of one patient and one different
scan), against about 9 of 24 at 32.
For comparison, plain ``imagehash.phash`` of the crop (64 bits) misses 6.4 %
of the copies at 6 bits, where it already pairs tumour with no-tumour
images, and chains BR35H groups from 10 bits on.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 128
WORDS = HASH_BITS // 64
SHRINK_SIZE = 64
WINDOW_SIZE = 32
WINDOW_SPREAD = 1.6
CHUNK = 1024  # images hashed at a time (bounds memory, keeps arrays in cache)

HASH_DESCRIPTION = (
    "moment-normalised rank DCT hash, 128 bits: crop shrunk to 64x64, window centred on the "
    "intensity centroid spanning +-1.6 standard deviations resampled to 32x32, values replaced "
    "by their ranks, 2-D DCT, 128 lowest-frequency coefficients (u+v order, DC skipped) "
    "thresholded at their median"
)
DEFAULT_THRESHOLD_BITS = 28


def _dct_matrix(size: int) -> np.ndarray:
    """Orthonormal DCT-II matrix, (size, size) float32: ``coefficients = M @ x``."""
    frequency = np.arange(size)[:, None]
    position = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * position + 1) * frequency / (2 * size)) * np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


def _low_frequency_order(size: int, count: int) -> np.ndarray:
    """Flat indices of the ``count`` lowest frequencies of a (size, size) DCT, by ``u + v``, DC skipped."""
    u, v = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    order = np.lexsort((u.ravel(), (u + v).ravel()))
    return order[1:count + 1]


_DCT = _dct_matrix(WINDOW_SIZE)
_LOW_FREQUENCIES = _low_frequency_order(WINDOW_SIZE, HASH_BITS)


def _tent_weights(centres: np.ndarray, step: np.ndarray, length: int) -> np.ndarray:
    """Resampling weights (N, K, length) for output samples at ``centres`` (N, K).

    A tent of half-width ``max(step, 1)`` input pixels around each centre
    (linear interpolation when enlarging, area-like averaging when shrinking).
    Weights are normalised over the pixel grid extended beyond the image, so
    pixels outside the image count as 0 and a constant image stays constant.
    """
    width = np.maximum(step, 1.0).astype(np.float32)[:, None, None]
    margin = int(np.ceil(width.max())) + 1
    position = np.arange(-margin, length + margin, dtype=np.float32)[None, None, :]
    weights = np.abs(position - centres.astype(np.float32)[:, :, None])
    weights /= width
    np.subtract(1.0, weights, out=weights)
    np.maximum(weights, 0.0, out=weights)
    weights /= weights.sum(axis=2, keepdims=True)
    return weights[:, :, margin:margin + length]


def _moment_windows(images: np.ndarray) -> np.ndarray:
    """Moment-normalised windows (N, 32, 32) float32 of (N, H, W) float32 images.

    Degenerate case: an all-black image (no mass) gets the whole image as its
    window.
    """
    count, height, width = images.shape
    rows = np.arange(height, dtype=np.float64)
    columns = np.arange(width, dtype=np.float64)
    row_mass = images.sum(axis=2, dtype=np.float64)  # (N, H)
    column_mass = images.sum(axis=1, dtype=np.float64)  # (N, W)
    total = row_mass.sum(axis=1)
    empty = total <= 0
    total = np.where(empty, 1.0, total)
    centre_y = row_mass @ rows / total
    centre_x = column_mass @ columns / total
    spread_y = np.sqrt(np.maximum(row_mass @ rows**2 / total - centre_y**2, 0.0))
    spread_x = np.sqrt(np.maximum(column_mass @ columns**2 / total - centre_x**2, 0.0))
    # Blank images: the whole image (a uniform distribution has std side / sqrt(12)).
    centre_y = np.where(empty, (height - 1) / 2, centre_y)
    centre_x = np.where(empty, (width - 1) / 2, centre_x)
    spread_y = np.where(empty | (spread_y <= 0), height / np.sqrt(12), spread_y)
    spread_x = np.where(empty | (spread_x <= 0), width / np.sqrt(12), spread_x)

    offsets = np.arange(WINDOW_SIZE) - (WINDOW_SIZE - 1) / 2
    step_y = 2 * WINDOW_SPREAD * spread_y / WINDOW_SIZE
    step_x = 2 * WINDOW_SPREAD * spread_x / WINDOW_SIZE
    row_weights = _tent_weights(centre_y[:, None] + offsets[None, :] * step_y[:, None], step_y, height)
    column_weights = _tent_weights(centre_x[:, None] + offsets[None, :] * step_x[:, None], step_x, width)
    return row_weights @ images @ column_weights.transpose(0, 2, 1)


def _tied_ranks(values: np.ndarray) -> np.ndarray:
    """Per-row ranks (N, K) float32 of (N, K) values, 0..K-1; equal values share the lowest rank."""
    order = np.argsort(values, axis=1)  # the order among equal values does not matter
    sorted_values = np.take_along_axis(values, order, axis=1)
    positions = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    run_starts = np.where(np.diff(sorted_values, axis=1, prepend=-np.inf) > 0, positions, 0)
    ranks = np.empty(values.shape, dtype=np.float32)
    np.put_along_axis(ranks, order, np.maximum.accumulate(run_starts, axis=1).astype(np.float32), axis=1)
    return ranks


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack (N, B) bool bits little-endian into (N, ceil(B / 64)) uint64 words (zero padded)."""
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2:
        raise ValueError(f"bits must be 2-D (N, B), got shape {bits.shape}")
    padding = (-bits.shape[1]) % 64
    if padding:
        bits = np.concatenate([bits, np.zeros((bits.shape[0], padding), dtype=bool)], axis=1)
    packed = np.packbits(bits, axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64)


def perceptual_hash(images: np.ndarray) -> np.ndarray:
    """Perceptual hashes of a batch of greyscale crops (see the module docstring).

    Args:
        images: (N, H, W) uint8, values 0..255, any H, W >= 1 (N may be 0).

    Returns:
        (N, 2) uint64: 128 bits per image. Compare with
        :func:`hamming_distance_matrix`; copies of one scan are at most
        :data:`DEFAULT_THRESHOLD_BITS` apart. Blank (constant) images get
        the all-zero hash.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    count, height, width = images.shape
    if height < 1 or width < 1:
        raise ValueError(f"images must have H, W >= 1, got {height}x{width}")
    if count == 0:
        return np.zeros((0, WORDS), dtype=np.uint64)
    if count > CHUNK:
        return np.concatenate([perceptual_hash(images[start:start + CHUNK]) for start in range(0, count, CHUNK)])

    if (height, width) == (SHRINK_SIZE, SHRINK_SIZE):
        small = images.astype(np.float32)
    else:
        interpolation = cv2.INTER_AREA if height >= SHRINK_SIZE and width >= SHRINK_SIZE else cv2.INTER_LINEAR
        small = np.stack(
            [cv2.resize(image, (SHRINK_SIZE, SHRINK_SIZE), interpolation=interpolation) for image in images]
        ).astype(np.float32)

    # Rounding removes float noise so that equal grey levels (black
    # background, blank images) tie exactly and share one rank.
    windows = np.round(_moment_windows(small).reshape(count, -1), 2)
    ranks = _tied_ranks(windows).reshape(count, WINDOW_SIZE, WINDOW_SIZE)
    coefficients = (_DCT @ ranks @ _DCT.T).reshape(count, -1)[:, _LOW_FREQUENCIES]
    median = np.median(coefficients, axis=1, keepdims=True)
    return pack_bits(coefficients > median)


def _check_hashes(hashes: np.ndarray, name: str) -> np.ndarray:
    hashes = np.asarray(hashes)
    if hashes.ndim != 2 or hashes.dtype != np.uint64:
        raise ValueError(f"{name} must be a (N, W) uint64 array, got shape {hashes.shape} dtype {hashes.dtype}")
    return hashes


def hamming_distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All Hamming distances between two sets of hashes.

    Args:
        a: (N, W) uint64 hashes.
        b: (M, W) uint64 hashes, same W.

    Returns:
        (N, M) uint16 numbers of differing bits, 0..64*W.
    """
    a = _check_hashes(a, "a")
    b = _check_hashes(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"hash widths differ: {a.shape[1]} vs {b.shape[1]} words")
    distance = np.zeros((a.shape[0], b.shape[0]), dtype=np.uint16)
    for word in range(a.shape[1]):
        distance += np.bitwise_count(a[:, word, None] ^ b[None, :, word])
    return distance


def near_duplicate_pairs(
    a: np.ndarray, b: np.ndarray | None = None, *, threshold: int, block: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of hashes at Hamming distance ``<= threshold``.

    Works block by block (``block`` x ``block`` distances at a time), so
    memory stays bounded and there is no Python loop over pairs.

    Args:
        a: (N, W) uint64 hashes.
        b: (M, W) uint64 hashes, or None to search within ``a`` (then only
            pairs with ``i < j`` are returned).
        threshold: largest distance reported, >= 0.
        block: rows and columns per block, >= 1.

    Returns:
        ``(i, j, distance)``: int64 indices into ``a`` and ``b`` (or ``a``),
        and uint16 distances, sorted by ``i`` then ``j``. Empty arrays when
        nothing matches.
    """
    a = _check_hashes(a, "a")
    within = b is None
    b = a if within else _check_hashes(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"hash widths differ: {a.shape[1]} vs {b.shape[1]} words")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")

    found_i, found_j, found_distance = [], [], []
    for start_a in range(0, a.shape[0], block):
        for start_b in range(start_a if within else 0, b.shape[0], block):
            distance = hamming_distance_matrix(a[start_a:start_a + block], b[start_b:start_b + block])
            i, j = np.nonzero(distance <= threshold)
            if within:
                upper = i + start_a < j + start_b
                i, j = i[upper], j[upper]
            found_distance.append(distance[i, j])
            found_i.append(i + start_a)
            found_j.append(j + start_b)
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint16)
    i = np.concatenate(found_i).astype(np.int64)
    j = np.concatenate(found_j).astype(np.int64)
    distance = np.concatenate(found_distance).astype(np.uint16)
    order = np.lexsort((j, i))
    return i[order], j[order], distance[order]


def duplicate_groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the "near-duplicate" graph.

    Args:
        n: number of items, >= 0.
        i: (P,) int indices of one side of each pair, 0..n-1.
        j: (P,) int indices of the other side.

    Returns:
        (n,) int64 group ids, numbered 0, 1, ... in order of each group's
        smallest member; items without a pair are groups of their own.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    i = np.asarray(i, dtype=np.int64).ravel()
    j = np.asarray(j, dtype=np.int64).ravel()
    if i.shape != j.shape:
        raise ValueError(f"i and j must have the same length, got {i.shape} and {j.shape}")
    if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"pair indices must lie in 0..{n - 1}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first_member = np.unique(labels, return_index=True)
    renumber = np.empty(first_member.size, dtype=np.int64)
    renumber[np.argsort(first_member)] = np.arange(first_member.size)
    return renumber[labels]
