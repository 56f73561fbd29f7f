# The state walk of a Normaliser (adjobs.scoring) over many finalised buckets in one call.
#
# Normalising bucket by bucket costs a few dozen numpy calls per bucket and level, which is
# most of an upload's analysis time. Here the histogram of discretised raw scores and the
# scope table are stepped bucket by bucket in C, and for every bucket that has scores the
# integer facts its normalisation needs are written out: the number of scores, the zeros,
# the noise-percentile key, the tail fit and, per score, how many scores lie below it and
# its scope's max. adjobs.scoring turns those into normalised scores with the same numpy
# code as Normaliser.normalise, so batched and bucket-by-bucket scores are bit-identical.
#
# Shape (as _core and _model): `walk` checks arguments, then one `with nogil:` block runs
# `noexcept nogil` kernels that report failure by status code.

from libc.math cimport ceil
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport calloc, free

import numpy as np

cdef enum:
    OK = 0
    NO_MEMORY = 1


cdef inline void fenwick_add(int64_t* tree, int64_t size, int64_t i,
                             int64_t amount) noexcept nogil:
    i += 1
    while i <= size:
        tree[i - 1] += amount
        i += i & -i


cdef inline int64_t fenwick_prefix(const int64_t* tree, int64_t i) noexcept nogil:
    """Sum of the first ``i`` slots."""
    cdef int64_t total = 0
    while i > 0:
        total += tree[i - 1]
        i -= i & -i
    return total


cdef inline int64_t fenwick_lower_bound(const int64_t* tree, int64_t size,
                                        int64_t target) noexcept nogil:
    """The smallest slot whose prefix sum (inclusive) reaches ``target`` (>= 1)."""
    cdef int64_t position = 0, step = 1
    while step * 2 <= size:
        step *= 2
    while step > 0:
        if position + step <= size and tree[position + step - 1] < target:
            position += step
            target -= tree[position - 1]
        step //= 2
    return position


cdef int walk_steps(
    int64_t[::1] counts, const int64_t[::1] keys,
    const int64_t[::1] entry_key, const double[::1] entry_raw, const int64_t[::1] entry_scope,
    const int64_t[::1] step_entries, const int64_t[::1] step_zeros, const int64_t[::1] step_age,
    uint8_t[::1] present, double[::1] scope_max, int64_t[::1] scope_age,
    int64_t forget_after, double noise_fraction, int64_t tail_min, double tail_fraction,
    int64_t[::1] out_n, int64_t[::1] out_zeros, int64_t[::1] out_noise_key,
    int64_t[::1] out_tail_k, int64_t[::1] out_tail_u, int64_t[::1] out_tail_excess,
    int64_t[::1] out_below, double[::1] out_scope_max, uint8_t[::1] out_big,
) noexcept nogil:
    cdef int64_t n_keys = keys.shape[0], n_scopes = present.shape[0]
    cdef int64_t n_steps = step_entries.shape[0]
    cdef int64_t* count_tree = <int64_t*>calloc(n_keys + 1, sizeof(int64_t))
    cdef int64_t* sum_tree = <int64_t*>calloc(n_keys + 1, sizeof(int64_t))
    cdef int64_t* touched_at = <int64_t*>calloc(n_scopes + 1, sizeof(int64_t))
    cdef double* old_max = <double*>calloc(n_scopes + 1, sizeof(double))
    cdef int64_t i, t, e, s, first = 0, last, n = 0, total_sum = 0, zeros, k, u_slot, u
    cdef int64_t positive, above
    cdef uint8_t big
    if count_tree == NULL or sum_tree == NULL or touched_at == NULL or old_max == NULL:
        free(count_tree); free(sum_tree); free(touched_at); free(old_max)
        return NO_MEMORY
    for i in range(n_keys):
        if counts[i]:
            fenwick_add(count_tree, n_keys, i, counts[i])
            fenwick_add(sum_tree, n_keys, i, counts[i] * keys[i])
            n += counts[i]
            total_sum += counts[i] * keys[i]
    for s in range(n_scopes):
        touched_at[s] = -1
    for t in range(n_steps):
        last = first + step_entries[t]
        # Histogram: the step's scores and its unscoped zeros (keys[0] is 0).
        for e in range(first, last):
            counts[entry_key[e]] += 1
            fenwick_add(count_tree, n_keys, entry_key[e], 1)
            fenwick_add(sum_tree, n_keys, entry_key[e], keys[entry_key[e]])
        n += last - first
        for e in range(first, last):
            total_sum += keys[entry_key[e]]
        if step_zeros[t]:
            counts[0] += step_zeros[t]
            fenwick_add(count_tree, n_keys, 0, step_zeros[t])
            n += step_zeros[t]
        # Scopes: every scope ages, those with a score take its max (Normaliser.update).
        for s in range(n_scopes):
            if present[s]:
                scope_age[s] += step_age[t]
        big = 0
        for e in range(first, last):
            s = entry_scope[e]
            if touched_at[s] != t:
                touched_at[s] = t
                old_max[s] = scope_max[s] if present[s] else 0.0
                scope_max[s] = old_max[s]
                present[s] = 1
                scope_age[s] = 0
            if entry_raw[e] > scope_max[s]:
                scope_max[s] = entry_raw[e]
        for e in range(first, last):
            s = entry_scope[e]
            if scope_max[s] > 1.1 * old_max[s]:
                big = 1
        out_big[t] = big
        for s in range(n_scopes):
            if present[s] and scope_age[s] >= forget_after:
                present[s] = 0
        if last > first:
            zeros = counts[0]
            out_n[t] = n
            out_zeros[t] = zeros
            out_noise_key[t] = keys[fenwick_lower_bound(
                count_tree, n_keys, <int64_t>ceil(noise_fraction * <double>n))]
            # The tail fit (Normaliser._tail_fraction): u is the (k + 1)-th largest score,
            # the excess the sum of the k largest minus k u.
            positive = n - zeros
            k = <int64_t>(tail_fraction * <double>n)
            if k < tail_min:
                k = tail_min
            if k > positive - 1:
                k = positive - 1
            out_tail_k[t] = k
            if k >= tail_min:
                u_slot = fenwick_lower_bound(count_tree, n_keys, n - k)
                u = keys[u_slot]
                above = n - fenwick_prefix(count_tree, u_slot + 1)
                out_tail_u[t] = u
                out_tail_excess[t] = (total_sum - fenwick_prefix(sum_tree, u_slot + 1)
                                      - above * u)
            for e in range(first, last):
                out_below[e] = fenwick_prefix(count_tree, entry_key[e])
                out_scope_max[e] = scope_max[entry_scope[e]]
        first = last
    free(count_tree); free(sum_tree); free(touched_at); free(old_max)
    return OK


def walk(counts, keys, entry_key, entry_raw, entry_scope, step_entries, step_zeros, step_age,
         present, scope_max, scope_age, int64_t forget_after, double noise_fraction,
         int64_t tail_min, double tail_fraction):
    """Step a normaliser's state through buckets; see adjobs.scoring.Normaliser.walk.

    ``counts`` (per key of the ascending ``keys``, ``keys[0] == 0``), ``present``,
    ``scope_max`` and ``scope_age`` (per scope) are updated in place. Returns per step
    ``(n, zeros, noise_key, tail_k, tail_u, tail_excess, big)`` and per entry
    ``(below, scope_max)``; the per-step facts are only written for steps with entries.
    """
    cdef int64_t n_steps = len(step_entries), n_entries = len(entry_key)
    if len(keys) == 0 or keys[0] != 0 or len(counts) != len(keys):
        raise ValueError("keys must start with 0 and have one count each")
    if len(entry_raw) != n_entries or len(entry_scope) != n_entries:
        raise ValueError("one raw score and scope per entry")
    if (len(step_zeros) != n_steps or len(step_age) != n_steps
            or int(np.sum(step_entries)) != n_entries or np.any(np.asarray(step_entries) < 0)):
        raise ValueError("steps do not match the entries")
    if len(scope_max) != len(present) or len(scope_age) != len(present):
        raise ValueError("one max and age per scope")
    if n_entries and (np.min(entry_key) < 0 or np.max(entry_key) >= len(keys)
                      or np.min(entry_scope) < 0 or np.max(entry_scope) >= len(present)):
        raise ValueError("entry key or scope out of range")
    out = {name: np.zeros(n_steps, dtype=np.int64)
           for name in ("n", "zeros", "noise_key", "tail_k", "tail_u", "tail_excess")}
    below = np.zeros(n_entries, dtype=np.int64)
    entry_scope_max = np.zeros(n_entries, dtype=np.float64)
    big = np.zeros(n_steps, dtype=np.uint8)
    cdef int status
    cdef int64_t[::1] c = counts, o_n = out["n"], o_z = out["zeros"], o_nk = out["noise_key"]
    cdef int64_t[::1] o_k = out["tail_k"], o_u = out["tail_u"], o_x = out["tail_excess"]
    cdef int64_t[::1] o_below = below, age = scope_age
    cdef double[::1] o_max = entry_scope_max, smax = scope_max
    cdef uint8_t[::1] o_big = big, pres = present
    cdef const int64_t[::1] k_ = keys, ek = entry_key, es = entry_scope
    cdef const int64_t[::1] se = step_entries, sz = step_zeros, sa = step_age
    cdef const double[::1] er = entry_raw
    with nogil:
        status = walk_steps(c, k_, ek, er, es, se, sz, sa, pres, smax, age, forget_after,
                            noise_fraction, tail_min, tail_fraction, o_n, o_z, o_nk, o_k, o_u,
                            o_x, o_below, o_max, o_big)
    if status == NO_MEMORY:
        raise MemoryError("no memory for the normaliser walk")
    out["big"] = big.astype(bool)
    return out, below, entry_scope_max

