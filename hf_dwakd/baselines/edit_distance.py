"""Minimum edit distance between byte strings: nearest-string search and token-sequence alignment (MinED).

Numba kernels, because both are nested scans over short strings that Python would run a hundred times slower:
the vocabulary map compares ~10^4 unmatched tokens against a 10^4-10^5 vocabulary, and every training example
aligns its two tokenizations with a dynamic program that computes one edit distance per pair of tokens.
"""

import numba
import numpy as np

_UNREACHABLE = 1 << 30


def pack(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """All strings in one uint8 buffer; string k is `flat[offsets[k]:offsets[k + 1]]`."""
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(string) for string in strings])
    flat = np.frombuffer(b"".join(strings), dtype=np.uint8)
    return flat, offsets


@numba.njit(cache=True)
def _levenshtein(a, b, bound, row):
    """Edit distance of a and b (unit costs), or bound + 1 as soon as it is certain to exceed bound."""
    for j in range(b.shape[0] + 1):
        row[j] = j
    for i in range(1, a.shape[0] + 1):
        diagonal = row[0]
        row[0] = i
        row_min = i
        for j in range(1, b.shape[0] + 1):
            above = row[j]
            value = min(diagonal + (a[i - 1] != b[j - 1]), row[j - 1] + 1, above + 1)
            diagonal = above
            row[j] = value
            row_min = min(row_min, value)
        if row_min > bound:  # every later row only grows from this one
            return bound + 1
    return min(row[b.shape[0]], bound + 1)


@numba.njit(cache=True)
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(cache=True)
def _byte_sets(flat, offsets):
    """(n, 4) uint64: the set of byte values in each string, as 256 bits."""
    sets = np.zeros((offsets.shape[0] - 1, 4), dtype=np.uint64)
    for k in range(offsets.shape[0] - 1):
        for byte in flat[offsets[k] : offsets[k + 1]]:
            sets[k, byte >> 6] |= np.uint64(1) << np.uint64(byte & 63)
    return sets


@numba.njit(cache=True)
def _missing_bytes_bound(a, b):
    """A lower bound of the edit distance from the byte sets of two strings: each byte value present in one
    string and absent from the other needs an edit of its own, on that string's side."""
    only_a = 0
    only_b = 0
    for word in range(4):
        only_a += _popcount(a[word] & ~b[word])
        only_b += _popcount(b[word] & ~a[word])
    return max(only_a, only_b)


@numba.njit(parallel=True, cache=True)
def _nearest_kernel(query_flat, query_offsets, cand_flat, cand_offsets, by_length, length_starts, best_ids, best):
    longest = length_starts.shape[0] - 2
    query_sets = _byte_sets(query_flat, query_offsets)
    cand_sets = _byte_sets(cand_flat, cand_offsets)
    for q in numba.prange(query_offsets.shape[0] - 1):
        query = query_flat[query_offsets[q] : query_offsets[q + 1]]
        row = np.empty(longest + 1, dtype=np.int64)
        best[q] = _UNREACHABLE
        best_ids[q] = -1
        # Ring d holds the candidates whose length differs by d, whose distance is at least d: stop once the
        # best found cannot be beaten by any later ring.
        for d in range(max(query.shape[0], longest) + 1):
            if best[q] <= d:
                break
            for side in range(2 if d > 0 else 1):
                length = query.shape[0] - d if side == 0 else query.shape[0] + d
                if length < 0 or length > longest:
                    continue
                for k in range(length_starts[length], length_starts[length + 1]):
                    c = by_length[k]
                    if _missing_bytes_bound(query_sets[q], cand_sets[c]) >= best[q]:
                        continue
                    candidate = cand_flat[cand_offsets[c] : cand_offsets[c + 1]]
                    distance = _levenshtein(query, candidate, best[q] - 1, row)
                    if distance < best[q]:
                        best[q] = distance
                        best_ids[q] = c
                        if distance <= d:
                            break
                if best[q] <= d:
                    break


def nearest_strings(queries: list[bytes], candidates: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the index of a candidate at minimum edit distance, and that distance.

    Candidates are scanned by increasing length difference (shorter first), then by index, and the scan stops
    once the length difference alone rules out anything better; ties go to the first found in that order.
    """
    if not candidates:
        raise ValueError("nearest_strings needs at least one candidate string.")
    query_flat, query_offsets = pack(queries)
    cand_flat, cand_offsets = pack(candidates)
    lengths = np.diff(cand_offsets)
    by_length = np.argsort(lengths, kind="stable")
    length_starts = np.searchsorted(lengths[by_length], np.arange(lengths.max() + 2)).astype(np.int64)
    best_ids = np.empty(len(queries), dtype=np.int64)
    best = np.empty(len(queries), dtype=np.int64)
    _nearest_kernel(query_flat, query_offsets, cand_flat, cand_offsets, by_length, length_starts, best_ids, best)
    return best_ids, best


@numba.njit(cache=True)
def _dtw_kernel(a_flat, a_offsets, b_flat, b_offsets, partner_count, partner):
    n, m = a_offsets.shape[0] - 1, b_offsets.shape[0] - 1
    longest = max(np.max(np.diff(a_offsets)), np.max(np.diff(b_offsets)))
    row = np.empty(longest + 1, dtype=np.int64)
    total = np.empty((n, m), dtype=np.float64)
    for i in range(n):
        a = a_flat[a_offsets[i] : a_offsets[i + 1]]
        for j in range(m):
            b = b_flat[b_offsets[j] : b_offsets[j + 1]]
            cost = _levenshtein(a, b, _UNREACHABLE, row)
            if i == 0 and j == 0:
                total[i, j] = cost
            elif i == 0:
                total[i, j] = cost + total[i, j - 1]
            elif j == 0:
                total[i, j] = cost + total[i - 1, j]
            else:
                total[i, j] = cost + min(total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
    # Walk the cheapest path back from the last pair; on ties prefer the diagonal, then a step in a.
    partner_count[:] = 0
    i, j = n - 1, m - 1
    while True:
        partner_count[i] += 1
        partner[i] = j
        if i == 0 and j == 0:
            break
        diagonal = total[i - 1, j - 1] if i > 0 and j > 0 else np.inf
        up = total[i - 1, j] if i > 0 else np.inf
        left = total[i, j - 1] if j > 0 else np.inf
        if diagonal <= up and diagonal <= left:
            i, j = i - 1, j - 1
        elif up <= left:
            i -= 1
        else:
            j -= 1


def align_sequences(a: list[bytes], b: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic-time-warping alignment of two token sequences, each pair of tokens costing their edit distance.

    Returns, for each token of `a`, how many tokens of `b` the cheapest monotone path pairs it with, and one of
    them (the only one where the count is 1).
    """
    if not a or not b:
        raise ValueError("align_sequences needs two non-empty token sequences.")
    partner_count = np.empty(len(a), dtype=np.int64)
    partner = np.empty(len(a), dtype=np.int64)
    _dtw_kernel(*pack(a), *pack(b), partner_count, partner)
    return partner_count, partner
