# The state walk of a Normaliser (adjobs.scoring) over many finalised buckets in one call,
# and the normalised score itself.
#
# Normalising bucket by bucket costs a few dozen numpy calls per bucket and level, which is
# most of an upload's analysis time. Here the histogram of discretised raw scores and the
# scope table are stepped bucket by bucket in C, and every score of a bucket is normalised
# against the state right after it: the number of scores, the zeros, the noise-percentile
# key, the tail fit and, per score, how many scores lie below it and its scope's max.
# Normaliser.normalise scores against the current state with the same C function
# (normalised_score), so batched and bucket-by-bucket scores are bit-identical.
#
# Shape (as _core and _model): `walk_raw` checks arguments, then `with nogil:` blocks run
# `noexcept nogil` kernels that report failure by status code. It also lays out the dense
# histogram the walk needs (the keys held, 0 and the new scores' keys), which with numpy
# cost more than the walk itself for the few dozen scores of a chunk's buckets.

cimport cython
from libc.math cimport ceil, exp, floor, fmax, fmin, isnan, log1p, pow, rint, sqrt
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport calloc, free, qsort

import numpy as np

cdef enum:
    OK = 0
    NO_MEMORY = 1


cdef struct ScoreRules:
    # The normaliser's constants (adjobs.scoring.Normaliser); see score_rules.
    const double* knot_x  # percentiles, ascending, from 0 to 100
    const double* knot_y  # their scores, non-decreasing
    int64_t knots
    double noise_fraction  # noise percentile / 100
    double noise_knot  # the knot score at the noise percentile
    double noise_multiplier10  # 10 * the noise multiplier
    double discretisation
    double percentile_power  # 1 / bucket factor
    double z  # the Wilson interval's z, and its square
    double z2
    double cap_slope
    double max_score
    int64_t tail_min


cdef inline double knot_score(const ScoreRules* rules, double x) noexcept nogil:
    """np.interp(x, knot_x, knot_y), to the bit: the same search and the same arithmetic."""
    cdef const double* xp = rules.knot_x
    cdef const double* fp = rules.knot_y
    cdef int64_t last = rules.knots - 1, lo = 0, hi = last, mid
    cdef double slope, out
    if isnan(x):
        return x
    if x < xp[0]:
        return fp[0]
    if x > xp[last]:
        return fp[last]
    # the largest j with xp[j] <= x
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xp[mid] <= x:
            lo = mid
        else:
            hi = mid
    if xp[hi] <= x:
        lo = hi
    if lo == last or xp[lo] == x:
        return fp[lo]
    slope = (fp[lo + 1] - fp[lo]) / (xp[lo + 1] - xp[lo])
    out = slope * (x - xp[lo]) + fp[lo]
    if isnan(out):
        out = slope * (x - xp[lo + 1]) + fp[lo + 1]
        if isnan(out) and fp[lo] == fp[lo + 1]:
            out = fp[lo]
    return out


cdef inline double clip(double x, double lo, double hi) noexcept nogil:
    # np.clip's order: a NaN stays NaN
    return hi if x > hi else (lo if x < lo else x)


@cython.cdivision(True)
cdef inline double cap_from_raw(const ScoreRules* rules, double raw) noexcept nogil:
    """The probability cap of a raw score (adjobs.scoring._probability_cap_from_raw)."""
    return clip(100.0 * (0.05 - 0.95 * rules.cap_slope * log1p(499.0 * fmin(raw, 1.0))),
                0.0, rules.max_score)


@cython.cdivision(True)
cdef double normalised_score(
    const ScoreRules* rules, double raw, int64_t d, double cap, int64_t n, int64_t zeros,
    int64_t noise_key, int64_t below, double scope_max, int64_t tail_k, int64_t tail_u,
    int64_t tail_excess,
) noexcept nogil:
    """One raw score (``d`` discretised) normalised against a state of ``n`` scores, of
    which ``zeros`` are 0 and ``below`` are below ``d``: the minimum of the noise, percentile
    and max-score ceilings and the probability ``cap``, in [0, 100], to 4 decimals (the
    rules are documented on adjobs.scoring.Normaliser)."""
    cdef double fn = <double>n, relax, noise, frac, tail, beta, z2n, centre, half, lo, hi
    cdef double pct, ratio, max_ceiling, score
    if not raw > 0.0:
        return 0.0
    # 1. noise ceiling, lifted out of the way when most scores are 0
    relax = rules.max_score * fmax(
        2.0 * fmin((<double>zeros / fn) / rules.noise_fraction, 1.0) - 1.0, 0.0)
    noise = rules.noise_knot * fmax(
        1.0 + rules.noise_multiplier10 * <double>(d - noise_key) / rules.discretisation,
        0.0) + relax
    # 2. percentile ceiling: the fraction below, raised by the tail fit, in a Wilson interval
    frac = <double>below / fn
    if tail_k >= rules.tail_min and tail_excess > 0 and d > tail_u:
        beta = <double>tail_excess / <double>tail_k
        tail = (<double>tail_k / fn) * exp(-<double>(d - tail_u) / beta)
        frac = fmax(frac, 1.0 - tail)
    z2n = rules.z2 / fn
    centre = (frac + 0.5 * z2n) / (1.0 + z2n)
    half = (rules.z / (1.0 + z2n)) * sqrt(frac * (1.0 - frac) / fn + 0.25 * z2n / fn)
    lo = clip(centre - half, 0.0, 1.0)
    hi = clip(centre + half, 0.0, 1.0)
    pct = 0.5 * (knot_score(rules, 100.0 * pow(lo, rules.percentile_power))
                 + knot_score(rules, 100.0 * pow(hi, rules.percentile_power)))
    # 3. max-score ceiling
    if scope_max > 0.0:
        ratio = fmin(raw / scope_max, 1.0)
        max_ceiling = rules.max_score * fmin(1.5 * ratio, 0.5 + 0.5 * ratio)
    else:
        max_ceiling = rules.max_score
    # 4. the probability cap, given
    score = fmin(fmin(noise, pct), fmin(max_ceiling, cap))
    score = clip(score, 0.0, rules.max_score)
    return rint(score * 10000.0) / 10000.0 + 0.0


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


cdef inline void free_all(int64_t* a, int64_t* b, int64_t* c, double* d) noexcept nogil:
    free(a)
    free(b)
    free(c)
    free(d)


cdef int walk_steps(
    const ScoreRules* rules, int64_t[::1] counts, const int64_t[::1] keys,
    const int64_t[::1] entry_key, const double[::1] entry_raw, const int64_t[::1] entry_scope,
    const int64_t[::1] step_entries, const int64_t[::1] step_zeros, const int64_t[::1] step_age,
    uint8_t[::1] present, double[::1] scope_max, int64_t[::1] scope_age,
    int64_t forget_after, double tail_fraction, double[::1] out_score, uint8_t[::1] out_big,
) noexcept nogil:
    cdef int64_t n_keys = keys.shape[0], n_scopes = present.shape[0]
    cdef int64_t n_steps = step_entries.shape[0]
    cdef int64_t* count_tree = <int64_t*>calloc(n_keys + 1, sizeof(int64_t))
    cdef int64_t* sum_tree = <int64_t*>calloc(n_keys + 1, sizeof(int64_t))
    cdef int64_t* touched_at = <int64_t*>calloc(n_scopes + 1, sizeof(int64_t))
    cdef double* old_max = <double*>calloc(n_scopes + 1, sizeof(double))
    cdef int64_t i, t, e, s, first = 0, last, n = 0, total_sum = 0, zeros, k, u_slot
    cdef int64_t positive, above, noise_key, u, excess
    cdef uint8_t big
    if count_tree == NULL or sum_tree == NULL or touched_at == NULL or old_max == NULL:
        free_all(count_tree, sum_tree, touched_at, old_max)
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
            noise_key = keys[fenwick_lower_bound(
                count_tree, n_keys, <int64_t>ceil(rules.noise_fraction * <double>n))]
            # The tail fit (Normaliser._tail): u is the (k + 1)-th largest score, the excess
            # the sum of the k largest minus k u.
            positive = n - zeros
            k = <int64_t>(tail_fraction * <double>n)
            if k < rules.tail_min:
                k = rules.tail_min
            if k > positive - 1:
                k = positive - 1
            u = excess = 0
            if k >= rules.tail_min:
                u_slot = fenwick_lower_bound(count_tree, n_keys, n - k)
                u = keys[u_slot]
                above = n - fenwick_prefix(count_tree, u_slot + 1)
                excess = total_sum - fenwick_prefix(sum_tree, u_slot + 1) - above * u
            for e in range(first, last):
                out_score[e] = normalised_score(
                    rules, entry_raw[e], keys[entry_key[e]], cap_from_raw(rules, entry_raw[e]),
                    n, zeros, noise_key, fenwick_prefix(count_tree, entry_key[e]),
                    scope_max[entry_scope[e]], k, u, excess)
        first = last
    free_all(count_tree, sum_tree, touched_at, old_max)
    return OK


cdef class Rules:
    """A normaliser's constants, held for the kernels (adjobs.scoring.Normaliser builds one).

    ``knot_x``/``knot_y``: the knot points (percentiles from 0 to 100, ascending; scores
    non-decreasing). ``noise_percentile`` in (0, 100], ``percentile_power`` = 1 / bucket
    factor, ``z``/``z2``: the Wilson interval's z and z**2."""

    cdef ScoreRules rules
    cdef object knot_x, knot_y  # the arrays the struct points into

    def __init__(self, knot_x, knot_y, double noise_percentile, double noise_multiplier,
                 double percentile_power, double z, double z2, double cap_slope,
                 double max_score, double discretisation, int64_t tail_min):
        self.knot_x = np.ascontiguousarray(knot_x, dtype=np.float64).copy()
        self.knot_y = np.ascontiguousarray(knot_y, dtype=np.float64).copy()
        if self.knot_x.ndim != 1 or self.knot_x.shape != self.knot_y.shape or \
                self.knot_x.size < 2:
            raise ValueError("need at least two knots, one score each")
        cdef const double[::1] kx = self.knot_x
        cdef const double[::1] ky = self.knot_y
        self.rules.knot_x = &kx[0]
        self.rules.knot_y = &ky[0]
        self.rules.knots = kx.shape[0]
        self.rules.noise_fraction = noise_percentile / 100.0
        self.rules.noise_knot = knot_score(&self.rules, noise_percentile)
        self.rules.noise_multiplier10 = 10.0 * noise_multiplier
        self.rules.discretisation = discretisation
        self.rules.percentile_power = percentile_power
        self.rules.z = z
        self.rules.z2 = z2
        self.rules.cap_slope = cap_slope
        self.rules.max_score = max_score
        self.rules.tail_min = tail_min

    @property
    def noise_knot(self) -> float:
        """The knot score at the noise percentile (np.interp of the knots)."""
        return self.rules.noise_knot


cdef int compare_int64(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0], y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef int64_t find_key(const int64_t* keys, int64_t n, int64_t key) noexcept nogil:
    """The position of ``key`` in the ascending ``keys`` (it is there)."""
    cdef int64_t lo = 0, hi = n - 1, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cython.boundscheck(False)
@cython.wraparound(False)
def walk_raw(Rules rules, held_keys, held_counts, raw, entry_scope, step_entries, step_zeros,
             step_age, present, scope_max, scope_age, int64_t forget_after,
             double tail_fraction):
    """Step a normaliser's state through buckets and normalise every score against the
    state right after its step; see adjobs.scoring.Normaliser.walk.

    The state's histogram comes as held (ascending ``held_keys`` with their positive
    ``held_counts``), the scores as they are: each is discretised, and the keys held, 0 and
    the new ones make the dense histogram walked. Returns ``(scores, big, keys, counts)``:
    per entry its score, per step whether it was a big change, and the keys left with
    scores. ``present``, ``scope_max`` and ``scope_age`` (per scope) are updated in place."""
    cdef const int64_t[::1] hk = np.ascontiguousarray(held_keys, dtype=np.int64)
    cdef const int64_t[::1] hc = np.ascontiguousarray(held_counts, dtype=np.int64)
    cdef const double[::1] r = np.ascontiguousarray(raw, dtype=np.float64)
    cdef const int64_t[::1] es = np.ascontiguousarray(entry_scope, dtype=np.int64)
    cdef const int64_t[::1] se = np.ascontiguousarray(step_entries, dtype=np.int64)
    cdef const int64_t[::1] sz = np.ascontiguousarray(step_zeros, dtype=np.int64)
    cdef const int64_t[::1] sa = np.ascontiguousarray(step_age, dtype=np.int64)
    cdef uint8_t[::1] pres = present
    cdef double[::1] smax = scope_max
    cdef int64_t[::1] age = scope_age
    cdef int64_t n_entries = r.shape[0], n_held = hk.shape[0], n_steps = se.shape[0]
    cdef int64_t n_scopes = pres.shape[0], i, j, n_new = 0, n_keys = 0, total = 0, a, b
    cdef int status = OK
    if hc.shape[0] != n_held:
        raise ValueError("one count per key held")
    if es.shape[0] != n_entries:
        raise ValueError("one raw score and scope per entry")
    if sz.shape[0] != n_steps or sa.shape[0] != n_steps:
        raise ValueError("steps do not match the entries")
    if smax.shape[0] != n_scopes or age.shape[0] != n_scopes:
        raise ValueError("one max and age per scope")
    for i in range(n_steps):
        if se[i] < 0:
            raise ValueError("steps do not match the entries")
        total += se[i]
    if total != n_entries:
        raise ValueError("steps do not match the entries")
    for i in range(n_entries):
        if es[i] < 0 or es[i] >= n_scopes:
            raise ValueError("entry key or scope out of range")
    for i in range(1, n_held):
        if hk[i] <= hk[i - 1]:
            raise ValueError("keys held must ascend")
    entry_key_array = np.empty(n_entries, dtype=np.int64)
    keys_array = np.empty(n_held + n_entries + 1, dtype=np.int64)
    cdef int64_t[::1] ek = entry_key_array, keys = keys_array
    new_array = np.empty(n_entries + 1, dtype=np.int64)
    cdef int64_t[::1] fresh = new_array
    with nogil:
        # as np.floor(raw * DISCRETISATION_FACTOR + 0.5).astype(np.int64)
        for i in range(n_entries):
            ek[i] = <int64_t>floor(r[i] * rules.rules.discretisation + 0.5)
            fresh[i] = ek[i]
        fresh[n_entries] = 0
        n_new = n_entries + 1
        qsort(&fresh[0], n_new, sizeof(int64_t), compare_int64)
        # merge the held keys with the new ones, each key once
        a = b = 0
        while a < n_held or b < n_new:
            if b >= n_new or (a < n_held and hk[a] <= fresh[b]):
                j = hk[a]
                a += 1
            else:
                j = fresh[b]
                b += 1
            if n_keys == 0 or keys[n_keys - 1] != j:
                keys[n_keys] = j
                n_keys += 1
        for i in range(n_entries):
            ek[i] = find_key(&keys[0], n_keys, ek[i])
    counts_array = np.zeros(n_keys, dtype=np.int64)
    cdef int64_t[::1] counts = counts_array
    with nogil:
        for i in range(n_held):
            counts[find_key(&keys[0], n_keys, hk[i])] = hc[i]
    scores = np.zeros(n_entries, dtype=np.float64)
    big = np.zeros(n_steps, dtype=np.uint8)
    cdef double[::1] o_score = scores
    cdef uint8_t[::1] o_big = big
    cdef const int64_t[::1] walked = keys_array[:n_keys]
    with nogil:
        status = walk_steps(&rules.rules, counts, walked, ek, r, es, se, sz, sa, pres, smax,
                            age, forget_after, tail_fraction, o_score, o_big)
    if status == NO_MEMORY:
        raise MemoryError("no memory for the normaliser walk")
    kept = counts_array > 0
    return scores, big.astype(bool), keys_array[:n_keys][kept], counts_array[kept]


def scores(Rules rules, raw, discretised, cap, int64_t n, int64_t zeros, int64_t noise_key,
           below, scope_max, int64_t tail_k, int64_t tail_u, int64_t tail_excess):
    """Raw scores normalised against one state (Normaliser.normalise): ``n`` scores, of
    which ``zeros`` are 0, the noise-percentile key, the tail fit, and per score its
    discretised value, the count of scores below it, its scope's max and its probability
    cap (None: the cap of its raw score)."""
    cdef int64_t size = len(raw), i
    if n <= 0:
        raise ValueError("a state with no scores normalises nothing")
    if len(discretised) != size or len(below) != size or len(scope_max) != size or (
            cap is not None and len(cap) != size):
        raise ValueError("one discretised score, count below, scope max and cap per score")
    out = np.zeros(size, dtype=np.float64)
    cdef double[::1] o = out
    cdef const double[::1] r = np.ascontiguousarray(raw, dtype=np.float64)
    cdef const int64_t[::1] d = np.ascontiguousarray(discretised, dtype=np.int64)
    cdef const int64_t[::1] b = np.ascontiguousarray(below, dtype=np.int64)
    cdef const double[::1] m = np.ascontiguousarray(scope_max, dtype=np.float64)
    cdef const double[::1] c
    cdef bint capped = cap is not None
    if capped:
        c = np.ascontiguousarray(cap, dtype=np.float64)
    else:
        c = r  # unused
    with nogil:
        for i in range(size):
            o[i] = normalised_score(
                &rules.rules, r[i], d[i],
                c[i] if capped else cap_from_raw(&rules.rules, r[i]),
                n, zeros, noise_key, b[i], m[i], tail_k, tail_u, tail_excess)
    return out


def level_steps(records, influencers, fields, seen):
    """The steps of Normaliser.walk for each level of a run of buckets, ``(scores, zeros,
    buckets)`` per level (record, influencer, bucket), and the run's records, influencers
    and bucket influencers per bucket.

    ``records``, ``influencers`` and ``fields``: the bucket (position in the run) of each
    record, influencer and bucket influencer; ``seen``: per bucket, the series it looked at.
    A bucket with records is a step of its own; each run of the others is one quiet step.
    Its zeros are the series that scored nothing at the level: at the record level those it
    looked at less its records; at the influencer level less its influencers, or all it
    looked at if it has none; at the bucket level none (a quiet run counts one a bucket)."""
    cdef const int64_t[::1] looked = np.ascontiguousarray(seen, dtype=np.int64)
    cdef Py_ssize_t n = looked.shape[0], b, run = 0, steps = 0, k
    cdef int64_t run_zeros = 0, x
    counts = np.zeros((3, n), dtype=np.int64)
    cdef int64_t[:, ::1] count = counts
    for k, positions in enumerate((records, influencers, fields)):
        for x in positions:
            if x < 0 or x >= n:
                raise ValueError("a bucket position outside the run")
            count[k, x] += 1
    # at most one quiet run before each scoring bucket and one after the last
    out = np.zeros((9, 2 * n + 1), dtype=np.int64)
    cdef int64_t[:, ::1] o = out
    with nogil:
        for b in range(n + 1):
            if b < n and count[0, b] == 0:
                run += 1
                run_zeros += looked[b]
                continue
            if run:  # the quiet run that ends here
                o[1, steps] = o[4, steps] = run_zeros
                o[7, steps] = o[2, steps] = o[5, steps] = o[8, steps] = run
                steps += 1
                run = 0
                run_zeros = 0
            if b == n:
                break
            o[0, steps] = count[0, b]
            o[1, steps] = max(0, looked[b] - count[0, b])
            o[3, steps] = count[1, b]
            o[4, steps] = max(0, looked[b] - count[1, b]) if count[1, b] > 0 else looked[b]
            o[6, steps] = count[2, b]
            o[2, steps] = o[5, steps] = o[8, steps] = 1
            steps += 1
    levels = out[:, :steps]
    return (levels[0:3], levels[3:6], levels[6:9]), counts
