# Online time-series models: the per-series model behind anomaly probabilities.
#
# What the model does is described in shared/spec/analysis.md A.5; this is our own maths,
# not ml-cpp's. Per series and per bucket:
#
# * Decomposition. A slow baseline (about a day) anchors the seasonal components: a daily
#   profile (per-phase values) and an hour-of-week profile learned on what the daily one
#   leaves. Six one-step predictors run side by side: {no season, daily, daily+weekly} x
#   {slow, fast} level. Each keeps a robust running error; the best one is used, and a
#   seasonal one only once its period has been observed twice and it beats the simpler
#   model by a margin ("test whether seasonality explains variance before using it").
# * Residual distribution. A robust scale (winsorised mean absolute residual) shared by
#   five shapes: Cauchy, t(2), t(4), Laplace, Gaussian; their weights come from decayed
#   log-likelihoods (a one-of-N prior in the spirit of A.5), which count several times
#   over once history is long, so that the weights concentrate as ES's do. Heavy shapes win on spiky
#   data, so ordinary spikes do not give tiny probabilities; the Gaussian wins on clean
#   noise, so a real outlier there does. The evidence is tempered while history is short
#   (no early certainty that tails are light), and an outlier process learns how often
#   large residuals come and how large they are, so recurring spikes stop being news while
#   a single anomaly does not mask the next one.
# * Multi-bucket feature: the mean of the last 12 residuals, winsorised so that one spike
#   does not keep it unusual for 12 buckets, with its own residual model.
# * Change acceptance: a run of large residuals of one sign (a level shift) is taken as
#   the new level after `run_length` buckets, so a shift is flagged, then learned.
#
# Shape of the hot loop (as _core): `step` checks arguments and allocates outputs, then
# one `with nogil:` block runs `noexcept nogil` kernels. State lives in float64 arrays
# owned by the Python wrapper (adjobs/model.py), so a job can be saved and resumed exactly.

from libc.math cimport INFINITY, NAN, atan, erfc, exp, expm1, fabs, isnan, log, log1p, sqrt
from libc.float cimport DBL_MAX
from libc.stdint cimport int8_t, int64_t

import numpy as np

# ---------------------------------------------------------------------------------------
# Layout of the per-series state

cdef enum:
    NC = 5          # residual shapes: Cauchy, t2, t4, Laplace, Gaussian
    NM = 6          # decomposition models: season k = m // 2, level speed j = m % 2
    MB = 12         # multi-bucket window (MULTIBUCKET_FEATURES_WINDOW_LENGTH, A.5)
    # residual block: count, robust scale, outlier process, decayed log-likelihood per shape
    RB_N = 0
    RB_S = 1
    RB_PI = 2       # decayed frequency of outliers
    RB_OM = 3       # decayed number of outliers
    RB_MU = 4       # mean of log(|outlier| / scale)
    RB_VAR = 5      # and its variance
    RB_LL = 6
    RB = 6 + NC
    # scalars of one series
    X_N = 0         # buckets with a value
    X_FIRST = 1     # first bucket index with a value
    X_LAST = 2      # last bucket index with a value
    X_BASE = 3      # slow baseline: the daily mean level
    X_BDEV = 4      # winsorised mean |x - baseline|: clips what seasonal learning sees
    X_RUN = 5       # signed length of the current run of large residuals
    X_RUNSUM = 6    # sum of those residuals
    X_LEV = 7       # NM one-step levels
    X_ERR = 7 + NM  # NM winsorised mean absolute one-step errors (clip the levels)
    X_MSE = 7 + 2 * NM  # NM mean squared one-step errors (choose the model)
    X_SINGLE = 7 + 3 * NM
    X_MULTI = 7 + 3 * NM + RB
    # added after the first release (a restored older state gets them zeroed, at the end)
    X_COUNT = 7 + 3 * NM + 2 * RB      # decayed mean records per bucket (ES sample count)
    X_COUNT_N = 7 + 3 * NM + 2 * RB + 1  # buckets with a record count
    X_MULTI_SLOW = 7 + 3 * NM + 2 * RB + 2  # the multi-bucket feature against the slow level
    X_LAST_OUT = 7 + 3 * NM + 3 * RB + 2    # outlier sign of the last bucket (0: none)...
    X_OUT_BEFORE = 7 + 3 * NM + 3 * RB + 3  # ...and of the bucket before it
    X_LAST_SIZE = 7 + 3 * NM + 3 * RB + 4   # log(|residual| / scale) of the last bucket
    X_SPIKES = 7 + 3 * NM + 3 * RB + 5      # isolated spikes seen (decayed), and the mean
    X_SPIKE_MU = 7 + 3 * NM + 3 * RB + 6    # and variance of their log sizes
    X_SPIKE_VAR = 7 + 3 * NM + 3 * RB + 7
    X_MULTI_MEDIAN = 7 + 3 * NM + 3 * RB + 8  # residual block of the median feature
    NSCAL = 7 + 3 * NM + 4 * RB + 8
    # ring of the last MB buckets: one-step residuals, bucket numbers, slow-level residuals
    # winsorised for the mean and, more widely, for the median
    RING_TIME = MB
    RING_SLOW = 2 * MB
    RING_MEDIAN = 3 * MB
    NRING = 4 * MB

# Parameter vector (adjobs/model.py DEFAULT_PARAMS names them, in this order).
cdef enum:
    P_ALPHA_SLOW = 0
    P_ALPHA_FAST = 1
    P_LEVEL_CLIP = 2
    P_BASE_DAYS = 3
    P_GAMMA_DAILY = 4
    P_GAMMA_WEEKLY = 5
    P_GAIN_DAILY = 6
    P_GAIN_WEEKLY = 7
    P_TEST_DAYS = 8
    P_SCALE_RATE = 9
    P_DECAY = 10
    P_LL_CAP = 11
    P_MIX_MAP = 12
    P_RUN_SIGMA = 13
    P_RUN_LENGTH = 14
    P_WARM_BUCKETS = 15
    P_WARM_SECONDS = 16
    P_MIN_CV = 17
    P_INFLATE = 18
    P_SEASON_PERIODS = 19
    P_TEMPER = 20
    P_OUT_SIGMA = 21
    P_OUT_RATE = 22
    P_OUT_PRIOR = 23
    P_MB_CLIP = 24
    P_SHAPE_EVIDENCE = 25
    P_PHASE_OUTLIER_MIN = 26
    P_COUNT_VARIANCE = 27
    P_SLOW_MULTI_BUCKET = 28
    P_SPIKE_HABIT_WINDOW = 29
    P_SPIKE_HABIT_MIN = 30
    P_MEDIAN_MULTI_BUCKET = 31
    NPARAM = 32

# Unit-scale constants of the five shapes, Cauchy, t2, t4, Laplace, Gaussian.
# KAPPA: fixed point s = E[min(|Z|, 3 s)], the value the winsorised mean absolute
# residual converges to for that shape (numerical quadrature), so scale = s / KAPPA.
cdef double KAPPA[5]
KAPPA[:] = [1.664655, 1.131371, 0.941487, 0.940480, 0.792039]
# Half-width of the central 95% interval (model plot bounds, A.4 boundspercentile 95).
cdef double Q95[5]
Q95[:] = [12.706205, 4.302653, 2.776445, 2.995732, 1.959964]
# log of the density's normalising constant: lgamma((v+1)/2) - lgamma(v/2) - log(v pi)/2
# for t(v); -log 2 for Laplace; -log(2 pi)/2 for the Gaussian.
cdef double LOGC[5]
LOGC[:] = [-1.1447298858494002, -1.0397207708399179, -0.9808292530117262,
           -0.6931471805599453, -0.9189385332046727]

cdef double WINSOR = 3.0        # the k of KAPPA
cdef double SQRT2 = 1.4142135623730951
cdef double INV_PI = 0.3183098861837907
cdef double DAY = 86400.0
cdef double WEEK = 604800.0
cdef double TINY = 1e-300       # scale floor of a series that is exactly zero
cdef double COUNT_RATIO_MIN = 1e-6  # bounds of usual / this bucket's records (count_scale)
cdef double COUNT_RATIO_MAX = 1e6
# Under each shape, a residual within LAZY_Z[c] of its scale has a one-sided tail
# (0.5 tail2) of at least 0.0205: step's lazy_below may be at most LAZY_MAX_BELOW, which
# leaves a margin. (Cauchy to Gaussian; the tests check each bound.)
cdef double LAZY_Z[5]
LAZY_Z[:] = [15.5, 4.78, 2.97, 3.19, 2.04]
LAZY_MAX_BELOW = 0.02

#: The same bounds for Python (the population models scale their persons within them).
COUNT_RATIO_BOUNDS = (COUNT_RATIO_MIN, COUNT_RATIO_MAX)


ctypedef struct Params:
    double alpha[2]
    double level_clip
    double base_rate
    double gamma_daily
    double gamma_weekly
    double gain[3]
    double test_rate
    double scale_rate
    double decay
    double ll_cap
    int mix_map
    double run_sigma
    double run_length
    double warm_buckets
    double warm_seconds
    double min_cv
    double inflate
    double season_periods
    double temper_buckets
    double out_sigma
    double out_rate
    double out_prior
    double mb_clip
    double shape_evidence
    double phase_outlier_min
    int count_variance
    int slow_multi_bucket
    double spike_habit_window
    double spike_habit_min
    double median_multi_bucket
    double lazy_below        # see step(): 0 evaluates every multi-bucket feature
    double span
    int64_t daily_res        # buckets per daily phase (0: no daily component)
    int64_t daily_phases
    int64_t weekly_res       # buckets per weekly phase (0: no weekly component)
    int64_t weekly_phases


def _profile_phases(double span, int64_t period, int64_t min_phases, int64_t cap,
                    int64_t min_width):
    """(buckets per phase, phases) of a profile over ``period`` seconds, (0, 0) when the
    span does not divide it into ``min_phases``: phases hold whole buckets, divide the period,
    are at least ``min_width`` seconds wide and at most ``cap`` in number."""
    cdef int64_t ispan = <int64_t>span, res
    if not (ispan > 0 and ispan == span and period % ispan == 0
            and period // ispan >= min_phases):
        return 0, 0
    res = 1
    while (period // (ispan * res)) > cap or ispan * res < min_width:
        res += 1
        while period % (ispan * res) != 0:
            res += 1
    return res, period // (ispan * res)


def layout(double span, int64_t daily_cap, int64_t weekly_cap):
    """Sizes of the state arrays for a bucket span: (scalars, ring, daily, weekly) widths.

    A daily profile needs a span that divides a day into at least 4 phases; its phases are
    at least 5 minutes wide and at most ``daily_cap`` (finer spans share a phase). The
    weekly profile is per hour of week (per bucket above an hour).
    """
    d_res, d_n = _profile_phases(span, 86400, 4, daily_cap, 300)
    w_res, w_n = _profile_phases(span, 604800, 7, weekly_cap, 3600)
    return {"scalars": NSCAL, "ring": NRING, "daily": d_n, "weekly": w_n,
            # the widths the first release stored (the rest is appended since)
            "scalars_first_release": X_COUNT, "ring_first_release": RING_SLOW,
            "daily_res": d_res, "weekly_res": w_res, "params": NPARAM,
            "shapes": NC, "models": NM}


# ---------------------------------------------------------------------------------------
# Residual distribution: five shapes sharing one robust scale

cdef inline double tail2(int c, double z) noexcept nogil:
    """P(|Z| >= z) for a unit-scale shape, written to keep precision far in the tail."""
    cdef double q, s1
    if z <= 0.0:
        return 1.0
    if c == 0:
        return 2.0 * INV_PI * atan(1.0 / z)
    if c == 1:
        q = sqrt(2.0 + z * z)
        return 2.0 / (q * (q + z))
    if c == 2:
        q = sqrt(4.0 + z * z)
        s1 = 4.0 / (q * (q + z))  # 1 - z / q
        return s1 * s1 * (3.0 - s1) * 0.5
    if c == 3:
        return exp(-z)
    return erfc(z / SQRT2)


cdef inline double log_density(int c, double z) noexcept nogil:
    """log f(z) of a unit-scale shape."""
    if c == 0:
        return LOGC[0] - log1p(z * z)
    if c == 1:
        return LOGC[1] - 1.5 * log1p(z * z * 0.5)
    if c == 2:
        return LOGC[2] - 2.5 * log1p(z * z * 0.25)
    if c == 3:
        return LOGC[3] - fabs(z)
    return LOGC[4] - 0.5 * z * z


cdef inline void shape_weights(const double* blk, double* w, const Params* P) noexcept nogil:
    cdef int c
    cdef double top = -INFINITY, total = 0.0
    # Evidence is tempered while history is short: a day of clean noise does not prove that
    # the tails are light, so early on the heavy shapes keep some weight. Once history is
    # long it counts shape_evidence times over: the decayed log-likelihoods remember only
    # the last few dozen buckets, and taken at face value they left every shape a weight
    # that kept clean series from ever giving a small probability.
    cdef double temper = P.shape_evidence * blk[RB_N] / (blk[RB_N] + P.temper_buckets)
    for c in range(NC):
        if blk[RB_LL + c] > top:
            top = blk[RB_LL + c]
    # exp(temper * 0) is exactly 1 for a finite temper (for any other it is NaN): the most
    # likely shape needs no exp.
    cdef bint finite_temper = temper * 0.0 == 0.0
    for c in range(NC):
        if finite_temper and blk[RB_LL + c] == top:
            w[c] = 1.0
        else:
            w[c] = exp(temper * (blk[RB_LL + c] - top))
        total += w[c]
    for c in range(NC):
        w[c] /= total


cdef inline double shape_scale(const double* blk, int c, double floor,
                               const Params* P) noexcept nogil:
    # Few observations: widen the distribution, as a posterior over the scale would.
    cdef double sig = blk[RB_S] / KAPPA[c]
    if sig < floor:
        sig = floor
    return sig * (1.0 + P.inflate / (blk[RB_N] + 1.0))


cdef inline void block_scales(const double* blk, double floor, const Params* P,
                              double* sig) noexcept nogil:
    """shape_scale of every shape (the same operations): a block's probability, its lazy
    test and its update all use the scales it had before the bucket, so a cell computes
    them once, and the widening, common to the five, once."""
    cdef double widen = 1.0 + P.inflate / (blk[RB_N] + 1.0)
    cdef double s
    cdef int c
    for c in range(NC):
        s = blk[RB_S] / KAPPA[c]
        if s < floor:
            s = floor
        sig[c] = s * widen


cdef double block_probability(const double* blk, double r, const double* scales, int side,
                              const Params* P, double* half_width,
                              double outlier_floor=0.0) noexcept nogil:
    """Tail probability of residual r: one-sided for side +1/-1, two-sided for 0.
    ``scales``: the block's block_scales. ``outlier_floor``: the least weight of the outlier
    process (habitual outliers)."""
    cdef double w[5]
    cdef double p = 0.0, h = 0.0, sig, t, pc, best = -1.0, pi, sd, po
    cdef int c
    if blk[RB_N] < 1.0:
        half_width[0] = NAN
        return 1.0
    shape_weights(blk, w, P)
    for c in range(NC):
        sig = scales[c]
        t = tail2(c, fabs(r) / sig)
        if side == 0:
            pc = t
        elif side * r > 0.0:
            pc = 0.5 * t
        else:
            pc = 1.0 - 0.5 * t
        if P.mix_map:
            if w[c] > best:
                best = w[c]
                p = pc
        else:
            p += w[c] * pc
        h += w[c] * Q95[c] * sig
    half_width[0] = h
    # Outlier process: large residuals that keep coming (regular spikes, bursts) are part of
    # the series. Their frequency and typical size relative to the scale are learned, and
    # weighted by how many have been seen, so that one anomaly does not mask the next.
    if blk[RB_OM] > 0.0:
        pi = blk[RB_PI] * blk[RB_OM] / (blk[RB_OM] + P.out_prior)
        if pi < outlier_floor:
            pi = outlier_floor
        sd = sqrt(blk[RB_VAR]) if blk[RB_VAR] > 0.25 else 0.5
        sig = scales[4]
        po = 0.5 * erfc((log(fabs(r) / sig + 1e-300) - blk[RB_MU]) / (SQRT2 * sd))
        if side != 0 and side * r < 0.0:
            po = 1.0
        p = (1.0 - pi) * p + pi * po
    return p


cdef void block_update(double* blk, double r, double floor, const double* scales,
                       const Params* P) noexcept nogil:
    """Learn residual r. ``scales``: the block's block_scales (before it learns)."""
    cdef double ll[5]
    cdef double n = blk[RB_N], a, rate, top = -INFINITY, sig, mult, keep
    cdef int c
    if n >= 1.0:
        # shape by shape, so that each log_density is compiled for its shape
        ll[0] = log_density(0, fabs(r) / scales[0]) - log(scales[0])
        ll[1] = log_density(1, fabs(r) / scales[1]) - log(scales[1])
        ll[2] = log_density(2, fabs(r) / scales[2]) - log(scales[2])
        ll[3] = log_density(3, fabs(r) / scales[3]) - log(scales[3])
        ll[4] = log_density(4, fabs(r) / scales[4]) - log(scales[4])
        for c in range(NC):
            if ll[c] > top:
                top = ll[c]
        # One observation may move the odds between shapes by at most e^ll_cap, so a
        # single wild value does not rule a shape out for good.
        keep = 1.0 - P.decay
        for c in range(NC):
            if ll[c] < top - P.ll_cap:
                ll[c] = top - P.ll_cap
            blk[RB_LL + c] = keep * blk[RB_LL + c] + ll[c] - top
    sig = scales[4]  # (the log-likelihoods are no part of a scale)
    if n >= 1.0:
        if fabs(r) > P.out_sigma * sig:
            blk[RB_OM] = blk[RB_OM] * (1.0 - P.out_rate) + 1.0
            blk[RB_PI] += P.out_rate * (1.0 - blk[RB_PI])
            a = log(fabs(r) / sig)
            rate = 1.0 / blk[RB_OM] if blk[RB_OM] > 10.0 else 0.1
            if blk[RB_OM] < 1.5:
                blk[RB_MU] = a
                blk[RB_VAR] = 0.0
            else:
                mult = a - blk[RB_MU]
                blk[RB_MU] += rate * mult
                blk[RB_VAR] = (1.0 - rate) * (blk[RB_VAR] + rate * mult * mult)
        else:
            blk[RB_OM] *= 1.0 - P.out_rate
            blk[RB_PI] *= 1.0 - P.out_rate
    # Winsorised mean absolute residual; running mean at first, then a decayed one whose
    # rate starts 4x higher (A.5's initial decay multiplier) and relaxes.
    a = fabs(r)
    if n >= 4.0:
        sig = blk[RB_S]
        if sig < floor * KAPPA[4]:
            sig = floor * KAPPA[4]
        if a > WINSOR * sig:
            a = WINSOR * sig
    mult = 1.0 + 3.0 * exp(-n * P.scale_rate)
    rate = P.scale_rate * mult
    if rate < 1.0 / (n + 1.0):
        rate = 1.0 / (n + 1.0)
    blk[RB_S] += rate * (a - blk[RB_S])
    blk[RB_N] = n + 1.0


# ---------------------------------------------------------------------------------------
# One bucket of one series

cdef inline double clip(double v, double lim) noexcept nogil:
    if v > lim:
        return lim
    if v < -lim:
        return -lim
    return v


cdef inline double robust_mean_abs(double current, double a, double n, double rate,
                                   double inv_count) noexcept nogil:
    """``inv_count``: 1 / (n + 1), the least rate (the caller's, which needs it too)."""
    if n >= 4.0 and a > WINSOR * current:
        a = WINSOR * current
    if rate < inv_count:
        rate = inv_count
    return current + rate * (a - current)


cdef inline double prediction_floor(const Params* P, const double* sc, double yhat,
                                    double x) noexcept nogil:
    """Minimum coefficient of variation (A.5): the smallest scale a residual is measured
    with, relative to the prediction, the baseline or the observation, whichever is largest:
    a series of exact zeros has no scale, and a first non-zero value is measured against its
    own size."""
    cdef double size = fabs(yhat)
    if fabs(sc[X_BASE]) > size:
        size = fabs(sc[X_BASE])
    if fabs(x) > size:
        size = fabs(x)
    size *= P.min_cv
    return size if size > TINY else TINY


cdef inline double phase_habit(const double* doutliers, int64_t pd, int64_t phases,
                               double sign) noexcept nogil:
    """How often outliers of ``sign`` came at phase ``pd`` or a neighbouring one (the time
    of a daily spike wobbles by a bucket)."""
    cdef double habit = sign * doutliers[pd]
    # the neighbours (pd + 1) % phases and (pd - 1) % phases, told without a division
    cdef double other = sign * doutliers[pd + 1 if pd + 1 < phases else 0]
    if other > habit:
        habit = other
    other = sign * doutliers[pd - 1 if pd > 0 else phases - 1]
    if other > habit:
        habit = other
    return habit


cdef inline double window_habit(const double* spikes, int64_t pd, int64_t phases,
                                double sign, int64_t k) noexcept nogil:
    """How often isolated spikes of ``sign`` came within ``k`` phases of ``pd``."""
    cdef double total = 0.0, x
    cdef int64_t d
    if 2 * k + 1 > phases:
        k = (phases - 1) // 2
    for d in range(-k, k + 1):
        x = sign * spikes[(pd + d + phases) % phases]
        if x > 0.0:
            total += x
    return total


cdef inline double log_size(double r, double gaussian_scale) noexcept nogil:
    """log(|r| / scale), the size of a residual as the outlier process measures it (the
    scale: the single-bucket block's Gaussian shape_scale)."""
    return log(fabs(r) / gaussian_scale + 1e-300)


cdef inline bint spike_of_usual_size(const double* sc, double r,
                                     double gaussian_scale) noexcept nogil:
    """Whether |r| is no larger than the isolated spikes seen so far: its log size at most
    1.5 standard deviations above theirs (0.5 at the least: about twice their usual size)."""
    cdef double sd
    if sc[X_SPIKES] <= 0.0:
        return False
    sd = sqrt(sc[X_SPIKE_VAR]) if sc[X_SPIKE_VAR] > 0.25 else 0.5
    return log_size(r, gaussian_scale) <= sc[X_SPIKE_MU] + 1.5 * sd


cdef inline double sorted_median_of(double* v, int n) noexcept nogil:
    """The median of v[0], ..., v[n - 1], n >= 1 (sorts them in place: n is at most MB)."""
    cdef int i, j
    cdef double x
    for i in range(1, n):
        x = v[i]
        j = i - 1
        while j >= 0 and v[j] > x:
            v[j + 1] = v[j]
            j -= 1
        v[j + 1] = x
    if n % 2:
        return v[n // 2]
    return 0.5 * (v[n // 2 - 1] + v[n // 2])


cdef inline void put_in_order(double* v, int i, int j) noexcept nogil:
    """Compare and exchange: v[i] <= v[j] after. Two comparisons, the minimum's and the
    maximum's, so that the compiler uses its min and max, not a branch; equal values
    come out as two copies of one, which can only change the sign of a zero."""
    cdef double a = v[i], b = v[j]
    v[i] = b if b < a else a
    v[j] = b if a < b else a


cdef inline double median_of(double* v, int n) noexcept nogil:
    """sorted_median_of, without its branches (whose comparisons of residuals come out
    either way at random, and mispredicted cost more than all the rest of the median): the
    values, then infinities up to MB (which sort after them), go through a sorting network.
    Equal doubles are the same but for the sign of a zero, and the network may change the
    signs of equal zeros: where the middle is a zero, sorted_median_of is asked."""
    cdef double s[MB]
    cdef int j
    cdef double low, high
    for j in range(MB):
        s[j] = v[j] if j < n else INFINITY
    # A network for 12 inputs (MB, ES's window): 39 comparators in 9 layers, the layers
    # apart (tests/test_model.py sorts every input of 0s and 1s with it, which proves it)
    put_in_order(s, 0, 8)
    put_in_order(s, 1, 7)
    put_in_order(s, 2, 6)
    put_in_order(s, 3, 11)
    put_in_order(s, 4, 10)
    put_in_order(s, 5, 9)

    put_in_order(s, 0, 1)
    put_in_order(s, 2, 5)
    put_in_order(s, 3, 4)
    put_in_order(s, 6, 9)
    put_in_order(s, 7, 8)
    put_in_order(s, 10, 11)

    put_in_order(s, 0, 2)
    put_in_order(s, 1, 6)
    put_in_order(s, 5, 10)
    put_in_order(s, 9, 11)

    put_in_order(s, 0, 3)
    put_in_order(s, 1, 2)
    put_in_order(s, 4, 6)
    put_in_order(s, 5, 7)
    put_in_order(s, 8, 11)
    put_in_order(s, 9, 10)

    put_in_order(s, 1, 4)
    put_in_order(s, 3, 5)
    put_in_order(s, 6, 8)
    put_in_order(s, 7, 10)

    put_in_order(s, 1, 3)
    put_in_order(s, 2, 5)
    put_in_order(s, 6, 9)
    put_in_order(s, 8, 10)

    put_in_order(s, 2, 3)
    put_in_order(s, 4, 5)
    put_in_order(s, 6, 7)
    put_in_order(s, 8, 9)

    put_in_order(s, 4, 6)
    put_in_order(s, 5, 7)

    put_in_order(s, 3, 4)
    put_in_order(s, 5, 6)
    put_in_order(s, 7, 8)
    high = s[n // 2]
    low = s[n // 2 - 1] if n % 2 == 0 else high
    if high == 0.0 or low == 0.0:
        return sorted_median_of(v, n)
    if n % 2:
        return high
    return 0.5 * (low + high)


cdef inline double count_scale(const double* sc, double count, const Params* P) noexcept nogil:
    """sqrt(usual records per bucket / this bucket's records): the factor on the spread of a
    mean of ``count`` records (1 without a count, or before one was learnt). The ratio is
    held within [1e-6, 1e6]: summary counts at the ends of the double range (1e-200 against
    1e200, an infinite sum) must not make the spread 0 or infinite."""
    cdef double ratio
    if not P.count_variance or not count > 0.0 or sc[X_COUNT_N] < 1.0:
        return 1.0
    ratio = sc[X_COUNT] / count
    if not ratio >= COUNT_RATIO_MIN:  # also NaN
        ratio = COUNT_RATIO_MIN if ratio < COUNT_RATIO_MIN else 1.0
    elif ratio > COUNT_RATIO_MAX:
        ratio = COUNT_RATIO_MAX
    return sqrt(ratio)


cdef inline void learn_count(double* sc, double count, const Params* P) noexcept nogil:
    """The usual records per bucket: a running mean, then decayed as the slow baseline."""
    cdef double g, learnt
    if not (count > 0.0 and count <= DBL_MAX):
        return
    g = 1.0 / (sc[X_COUNT_N] + 1.0)
    if g < P.base_rate:
        g = P.base_rate
    learnt = sc[X_COUNT] + g * (count - sc[X_COUNT])
    if learnt > 0.0 and learnt <= DBL_MAX:
        sc[X_COUNT] = learnt
        sc[X_COUNT_N] += 1.0


def lazy_bounds():
    """LAZY_Z: per shape, the residual (in its scale) up to which its tail is surely wide."""
    return [LAZY_Z[c] for c in range(NC)]


def median(values):
    """median_of: the median of 1 to MB values, none NaN (tests hold it to a stable sort)."""
    cdef double v[MB]
    cdef int j, n = len(values)
    if not 1 <= n <= MB:
        raise ValueError(f"1 to {MB} values, got {n}")
    for j in range(n):
        v[j] = values[j]
        if isnan(v[j]):
            raise ValueError("a NaN has no place in a sort")
    return median_of(v, n)


def tail(int c, double z):
    """tail2: P(|Z| >= z) under shape c (0 Cauchy, 1 t2, 2 t4, 3 Laplace, 4 Gaussian)."""
    if not 0 <= c < NC:
        raise ValueError(f"no shape {c}")
    return tail2(c, z)


cdef inline bint surely_ordinary(const double* blk, double r, const double* scales,
                                 const Params* P) noexcept nogil:
    """Whether block_probability(blk, r) is surely at least LAZY_MAX_BELOW, told without it:
    |r| is within LAZY_Z[c] scales of every shape c (a mixture of tails that wide is as
    wide), and within out_sigma of the Gaussian one, so below every outlier the outlier
    process has learnt (the log size of each was above log(out_sigma)): that part's p is
    then at least 1/2. A block with no history gives 1."""
    cdef int c
    if blk[RB_N] < 1.0:
        return True
    if isnan(r):
        return False
    for c in range(NC):
        if fabs(r) > LAZY_Z[c] * scales[c]:
            return False
    return fabs(r) <= P.out_sigma * scales[4]


cdef inline double multi_probability(const double* blk, double r, const double* scales,
                                     int side, const Params* P, bint lazy) noexcept nogil:
    """block_probability of a multi-bucket feature, or 1 where ``lazy`` and its p is surely
    at least lazy_below (the caller has found the cell cannot be a record)."""
    cdef double half_width
    if lazy and surely_ordinary(blk, r, scales, P):
        return 1.0
    return block_probability(blk, r, scales, side, P, &half_width)


ctypedef struct BucketPhases:
    # Phases of one bucket in the seasonal profiles, the same for every series of a row:
    # step_block finds them once a row (a 64-bit integer division is slow).
    int64_t daily
    int64_t daily_before    # that of the bucket before
    int64_t weekly


cdef inline void bucket_phases(const Params* P, int64_t b, BucketPhases* phases) noexcept nogil:
    phases.daily = phases.daily_before = phases.weekly = 0
    if P.daily_res > 0:
        phases.daily = (b // P.daily_res) % P.daily_phases
        # as a series that had the bucket before stored its number, a double
        phases.daily_before = (<int64_t><double>(b - 1) // P.daily_res) % P.daily_phases
    if P.weekly_res > 0:
        phases.weekly = (b // P.weekly_res) % P.weekly_phases


cdef int step_one(const Params* P, double x, double count, int64_t b,
                  const BucketPhases* phases, int side, double* sc,
                  double* ring, double* daily, double* dcount, double* doutliers,
                  double* dspikes, double* weekly, double* wcount, double* out, const double* probes,
                  const double* probe_counts, Py_ssize_t n_probes,
                  double* probe_out) noexcept nogil:
    """Advance one series by one bucket. out = p_single, p_multi, typical, lower, upper.
    ``phases``: those of bucket ``b`` (bucket_phases).

    ``count``: the records behind a mean, median or variance (NaN for other features, or
    none known): with ``count_variance`` the residual is judged in units of a bucket of the
    series' usual count.
    ``probes`` are other values this bucket could have had (the feature without one
    influencer value's records, ``probe_counts`` of them): ``probe_out`` gets their
    single-bucket probability against the same state, before the bucket is learnt (1 where
    there is nothing to compare with)."""
    cdef int64_t pd = phases.daily, pw = phases.weekly, slot
    cdef int m, k, best_m, allowed, mb_count, mb_slow_count
    cdef double seas[3]
    cdef double e[6]
    cdef double n = sc[X_N], hist, sd, sw, yhat, r, floor_, hw
    cdef double score, best_score, ps, pm, mbv, sig, lim, dev, dc, g, shift, err_floor
    cdef double inv_count, mse_rate
    cdef double run, t_rate, habit = 0.0, outlier, root, rs, r_slow, mbv_slow, pm_slow
    cdef double spike_habit, spike, size_dev, mbv_median, pm_median
    cdef double median_values[MB]
    cdef int mb_median_count
    cdef int64_t last_phase
    cdef bint warm, lazy, single_skipped
    # block_scales of the four residual blocks against floor_ (a multi-bucket block's only
    # once its feature has values enough to be judged and learnt), and of a probe's floor
    cdef double single_scales[NC]
    cdef double multi_scales[NC]
    cdef double slow_scales[NC]
    cdef double median_scales[NC]
    cdef double probe_scales[NC]
    cdef double outlier_scale = 0.0

    cdef Py_ssize_t j
    cdef double hwp, pv
    for j in range(n_probes):
        probe_out[j] = 1.0
    if n < 1.0:
        if isnan(x):
            out[0] = out[1] = out[2] = out[3] = out[4] = NAN
            return 0
        sc[X_N] = 1.0
        sc[X_FIRST] = <double>b
        sc[X_LAST] = <double>b
        sc[X_BASE] = x
        sc[X_BDEV] = 0.0
        sc[X_RUN] = 0.0
        sc[X_RUNSUM] = 0.0
        for m in range(NM):
            sc[X_LEV + m] = x
            sc[X_ERR + m] = 0.0
            sc[X_MSE + m] = 0.0
        for m in range(RB):
            sc[X_SINGLE + m] = 0.0
            sc[X_MULTI + m] = 0.0
            sc[X_MULTI_SLOW + m] = 0.0
            sc[X_MULTI_MEDIAN + m] = 0.0
        sc[X_COUNT] = 0.0
        sc[X_COUNT_N] = 0.0
        learn_count(sc, count, P)
        for m in range(MB):
            ring[m] = NAN
            ring[RING_TIME + m] = -1.0
            ring[RING_SLOW + m] = NAN
            ring[RING_MEDIAN + m] = NAN
        out[0] = out[1] = 1.0
        out[2] = x
        out[3] = out[4] = NAN
        return 0

    # Predictions of the six models, and which one is trusted for this bucket
    seas[0] = 0.0
    sd = daily[pd] if P.daily_res > 0 and dcount[pd] > 0.0 else 0.0
    sw = weekly[pw] if P.weekly_res > 0 and wcount[pw] > 0.0 else 0.0
    seas[1] = sd
    seas[2] = sd + sw
    hist = (<double>b - sc[X_FIRST]) * P.span
    allowed = 1
    if P.daily_res > 0 and hist >= P.season_periods * DAY:
        allowed = 2
        if P.weekly_res > 0 and hist >= P.season_periods * WEEK:
            allowed = 3
    best_m = 0
    best_score = INFINITY
    for m in range(NM):
        k = m // 2
        if k >= allowed:
            break
        score = sc[X_MSE + m] / P.gain[k]
        if score < best_score:
            best_score = score
            best_m = m
    yhat = sc[X_LEV + best_m] + seas[best_m // 2]

    # Minimum coefficient of variation (A.5): flat data never gives infinite anomalies
    floor_ = prediction_floor(P, sc, yhat, x)
    block_scales(&sc[X_SINGLE], floor_, P, single_scales)
    if isnan(x):
        # no value: the model does not move; report what it expected
        block_probability(&sc[X_SINGLE], 0.0, single_scales, 0, P, &hw)
        out[0] = out[1] = NAN
        out[2] = yhat
        out[3] = yhat - hw
        out[4] = yhat + hw
        return 0
    r = x - yhat
    for m in range(NM):
        e[m] = x - sc[X_LEV + m] - seas[m // 2]
    # The residual in units of a bucket with the series' usual number of records: a mean of
    # fewer records varies more, of more records less (ES model_t::varianceScale)
    root = count_scale(sc, count, P)
    rs = r / root

    # Multi-bucket features (empty buckets left out): the mean residual of the last MB
    # buckets against the one-step prediction, and the mean residual of the MB - 1 before
    # this one against the slow level of the same season. The first sees a jump the
    # one-step level has not followed yet; the second a change the fast level follows
    # bucket by bucket (a day at a lower level, bursts coming closer together), as ES's
    # residual against its slowly adapting trend does. It leaves the bucket itself to the
    # other two features: with it, every spike would count in all three.
    # With median_multi_bucket, a third: the median of the last MB slow-level residuals. A
    # mean must be winsorised near the noise (mb_clip) or one spike would keep it unusual
    # for MB buckets, so it cannot tell a shift of 2 sigmas from one of 20, and a series
    # with a habit of spikes hides a run of them (every bucket a spike for an hour). A median
    # is not moved by a few spikes, so it is winsorised only far out (median_multi_bucket
    # sigmas: a shift may not give an arbitrarily small probability); it includes this
    # bucket, since one bucket cannot move it alone.
    slot = b % MB
    # winsorised: one spike must not keep the 12-bucket mean unusual for 12 buckets
    sig = sc[X_SINGLE + RB_S] / KAPPA[4]
    if sig < floor_:
        sig = floor_
    ring[slot] = clip(rs, P.mb_clip * sig) if sc[X_SINGLE + RB_N] >= 4.0 else rs
    ring[RING_TIME + slot] = <double>b
    r_slow = (x - sc[X_LEV + (best_m // 2) * 2] - seas[best_m // 2]) / root
    ring[RING_SLOW + slot] = (clip(r_slow, P.mb_clip * sig) if sc[X_SINGLE + RB_N] >= 4.0
                              else r_slow)
    ring[RING_MEDIAN + slot] = (clip(r_slow, P.median_multi_bucket * sig)
                                if sc[X_SINGLE + RB_N] >= 4.0 else r_slow)
    mbv = 0.0
    mbv_slow = 0.0
    mb_count = 0
    mb_slow_count = 0
    mb_median_count = 0
    for m in range(MB):
        if ring[RING_TIME + m] > <double>(b - MB):
            if not isnan(ring[m]):
                mbv += ring[m]
                mb_count += 1
            if m != slot and not isnan(ring[RING_SLOW + m]):
                mbv_slow += ring[RING_SLOW + m]
                mb_slow_count += 1
            if P.median_multi_bucket > 0.0 and not isnan(ring[RING_MEDIAN + m]):
                median_values[mb_median_count] = ring[RING_MEDIAN + m]
                mb_median_count += 1
    if mb_count > 0:  # (a division by zero here would end the step silently)
        mbv /= mb_count
    if mb_slow_count > 0:
        mbv_slow /= mb_slow_count
    # (the median is judged and learnt only from MB // 2 values on)
    mbv_median = (median_of(median_values, mb_median_count) if mb_median_count >= MB // 2
                  else 0.0)
    if mb_count >= MB // 2:
        block_scales(&sc[X_MULTI], floor_, P, multi_scales)
    if mb_slow_count >= MB // 2:
        block_scales(&sc[X_MULTI_SLOW], floor_, P, slow_scales)
    if mb_median_count >= MB // 2:
        block_scales(&sc[X_MULTI_MEDIAN], floor_, P, median_scales)

    # Spikes at the same time of day: a phase (or its neighbour) that has had more than one
    # recent outlier of this sign makes outliers there part of the series, not news.
    if P.daily_res > 0 and dcount[pd] >= 2.0:
        habit = phase_habit(doutliers, pd, P.daily_phases, 1.0 if r > 0.0 else -1.0)
        if habit < P.phase_outlier_min:
            habit = 0.0
    # An isolated spike (one outlier bucket between ordinary ones) near the time of day of
    # recent isolated spikes: the nightly job at 03:00, give or take 40 minutes, is part of
    # the series. Only a bucket after an ordinary one can be such a spike, so a burst (an
    # outlier right after an outlier) is never excused, and bursts never teach the habit;
    # nor is a spike much larger than the isolated spikes seen so far (a 30-sigma one where
    # the nightly job makes 12).
    if (P.spike_habit_window > 0.0 and P.daily_res > 0 and sc[X_LAST_OUT] == 0.0
            and sc[X_LAST] == <double>(b - 1) and spike_of_usual_size(sc, rs, single_scales[4])):
        spike_habit = window_habit(
            dspikes, pd, P.daily_phases, 1.0 if r > 0.0 else -1.0,
            <int64_t>(P.spike_habit_window / (P.daily_res * P.span) + 0.5))
        if spike_habit >= P.spike_habit_min and spike_habit > habit:
            habit = spike_habit if spike_habit < 1.0 else 1.0
    # With lazy_below, a cell can be a record only through a feature whose p is below
    # lazy_below: a feature whose p surely is not is taken as 1, unevaluated (the single
    # one's interval with it). In the warm-up no p is below 0.05: nothing needs evaluating.
    warm = n < P.warm_buckets or hist < P.warm_seconds
    single_skipped = P.lazy_below > 0.0 and (
        warm or surely_ordinary(&sc[X_SINGLE], rs, single_scales, P))
    if single_skipped:
        ps = 1.0
        hw = NAN
    else:
        ps = block_probability(&sc[X_SINGLE], rs, single_scales, side, P, &hw, habit)
        hw *= root
    lazy = P.lazy_below > 0.0 and (ps >= P.lazy_below or warm)
    if mb_count >= MB // 2 and n >= MB:
        pm = 1.0 if lazy and warm else multi_probability(&sc[X_MULTI], mbv, multi_scales,
                                                         side, P, lazy)
        if P.slow_multi_bucket and mb_slow_count >= MB // 2:
            # the more unusual of the two, Sidak-corrected for looking at both
            pm_slow = 1.0 if lazy and warm else multi_probability(
                &sc[X_MULTI_SLOW], mbv_slow, slow_scales, side, P, lazy)
            if pm_slow < pm:
                pm = pm_slow
            # The median judges a level only once the season may be used: before that, the
            # slow-level residuals carry the daily cycle. The median and the mean of the
            # same residuals are two summaries of one sample: still two looks.
            if mb_median_count >= MB // 2 and hist >= P.season_periods * DAY:
                pm_median = 1.0 if lazy and warm else multi_probability(
                    &sc[X_MULTI_MEDIAN], mbv_median, median_scales, side, P, lazy)
                if pm_median < pm:
                    pm = pm_median
            pm = -expm1(2.0 * log1p(-pm)) if pm < 1.0 else 1.0
    else:
        pm = 1.0
    if single_skipped and not warm and pm < P.lazy_below:
        # a record through its multi-bucket p: its single-bucket p is wanted exactly too
        ps = block_probability(&sc[X_SINGLE], rs, single_scales, side, P, &hw, habit)
        hw *= root
    # Warm-up: "at least 4 buckets and 2 h" of history before anything is unusual
    if warm:
        if ps < 0.05:
            ps = 0.05
        if pm < 0.05:
            pm = 0.05
    out[0] = ps
    out[1] = pm
    out[2] = yhat
    out[3] = yhat - hw
    out[4] = yhat + hw
    for j in range(n_probes):
        if isnan(probes[j]):
            continue
        block_scales(&sc[X_SINGLE], prediction_floor(P, sc, yhat, probes[j]), P,
                     probe_scales)
        pv = block_probability(&sc[X_SINGLE],
                               (probes[j] - yhat) / count_scale(sc, probe_counts[j], P),
                               probe_scales, side, P, &hwp)
        if (n < P.warm_buckets or hist < P.warm_seconds) and pv < 0.05:
            pv = 0.05
        probe_out[j] = pv

    # ---- learn
    block_update(&sc[X_SINGLE], rs, floor_, single_scales, P)
    if mb_count >= MB // 2:
        block_update(&sc[X_MULTI], mbv, floor_, multi_scales, P)
    if mb_slow_count >= MB // 2:
        block_update(&sc[X_MULTI_SLOW], mbv_slow, floor_, slow_scales, P)
    if mb_median_count >= MB // 2:
        block_update(&sc[X_MULTI_MEDIAN], mbv_median, floor_, median_scales, P)

    t_rate = P.test_rate
    # the least learning rate, a running mean's, divided once for all the means below
    inv_count = 1.0 / (n + 1.0)
    # Squared errors, not winsorised: the rare large errors that a profile avoids (a jump at
    # the same time every day) are exactly the evidence for using it.
    mse_rate = t_rate if t_rate > inv_count else inv_count
    for m in range(NM):
        err_floor = sc[X_ERR + m]
        if err_floor < floor_:
            err_floor = floor_
        lim = P.level_clip * err_floor if n >= 4.0 else INFINITY
        sc[X_LEV + m] += P.alpha[m % 2] * clip(e[m], lim)
        sc[X_ERR + m] = robust_mean_abs(err_floor, fabs(e[m]), n, t_rate, inv_count)
        # A residual beyond 1e154 (a value near the double range) squares to infinity,
        # which would leave every error NaN for good: it counts as the largest double.
        square = e[m] * e[m]
        if square > DBL_MAX:
            square = DBL_MAX
        sc[X_MSE + m] += mse_rate * (square - sc[X_MSE + m])

    # Change acceptance: a run of large residuals of one sign becomes the new level
    sig = sc[X_SINGLE + RB_S] / KAPPA[4]
    if sig < floor_:
        sig = floor_
    run = sc[X_RUN]
    if fabs(rs) > P.run_sigma * sig:
        if (r > 0.0) == (run > 0.0) and run != 0.0:
            sc[X_RUN] = run + (1.0 if r > 0.0 else -1.0)
            sc[X_RUNSUM] += r
        else:
            sc[X_RUN] = 1.0 if r > 0.0 else -1.0
            sc[X_RUNSUM] = r
    else:
        sc[X_RUN] = 0.0
        sc[X_RUNSUM] = 0.0
    if fabs(sc[X_RUN]) >= P.run_length:
        shift = sc[X_RUNSUM] / fabs(sc[X_RUN])
        for m in range(NM):
            sc[X_LEV + m] = x - seas[m // 2]
        sc[X_BASE] += shift
        sc[X_RUN] = 0.0
        sc[X_RUNSUM] = 0.0

    # Baseline and seasonal profiles, learned on winsorised deviations from the baseline
    dev = x - sc[X_BASE]
    sc[X_BDEV] = robust_mean_abs(sc[X_BDEV], fabs(dev), n, t_rate, inv_count)
    dc = clip(dev, WINSOR * sc[X_BDEV]) if n >= 4.0 else dev
    g = P.base_rate
    if g < inv_count:
        g = inv_count
    sc[X_BASE] += g * dc
    if P.daily_res > 0:
        g = P.gamma_daily
        if g < 1.0 / (dcount[pd] + 1.0):
            g = 1.0 / (dcount[pd] + 1.0)
        daily[pd] += g * (dc - daily[pd])
        # signed decayed frequency of outliers at this phase, at the profile's gain from the
        # start (not the running mean's 1 / count): one outlier, 0.15, never makes a habit,
        # so the first bucket of an incident does not excuse the next one
        outlier = 0.0
        if sc[X_SINGLE + RB_N] >= 4.0:
            outlier_scale = shape_scale(&sc[X_SINGLE], 4, floor_, P)  # learnt this bucket
            if fabs(rs) > P.out_sigma * outlier_scale:
                outlier = 1.0 if r > 0.0 else -1.0
        doutliers[pd] += P.gamma_daily * (outlier - doutliers[pd])
        dcount[pd] += 1.0
        # Now the last bucket is known to have been an isolated spike or not: its phase
        # learns which, at the profile's gain a day (so one spike, 0.15, is not a habit):
        # a phase of several buckets forgets by 1 / (buckets per phase) of that a bucket.
        if sc[X_LAST] == <double>(b - 1):
            last_phase = phases.daily_before
            spike = (sc[X_LAST_OUT] if sc[X_LAST_OUT] != 0.0 and outlier == 0.0
                     and sc[X_OUT_BEFORE] == 0.0 else 0.0)
            g = P.gamma_daily if spike != 0.0 else P.gamma_daily / P.daily_res
            dspikes[last_phase] += g * (spike - dspikes[last_phase])
            if spike != 0.0:  # the sizes of isolated spikes, a running then decayed mean
                g = 1.0 / (sc[X_SPIKES] + 1.0)
                if g < P.gamma_daily:
                    g = P.gamma_daily
                size_dev = sc[X_LAST_SIZE] - sc[X_SPIKE_MU]
                sc[X_SPIKE_MU] += g * size_dev
                sc[X_SPIKE_VAR] += g * (size_dev * size_dev * (1.0 - g) - sc[X_SPIKE_VAR])
                sc[X_SPIKES] += 1.0
            sc[X_OUT_BEFORE] = sc[X_LAST_OUT]
        else:
            sc[X_OUT_BEFORE] = 0.0
        sc[X_LAST_OUT] = outlier
        # its size matters only if it turns out to be an isolated spike
        sc[X_LAST_SIZE] = log_size(rs, outlier_scale) if outlier != 0.0 else 0.0
    if P.weekly_res > 0:
        g = P.gamma_weekly
        if g < 1.0 / (wcount[pw] + 1.0):
            g = 1.0 / (wcount[pw] + 1.0)
        weekly[pw] += g * (dc - sd - weekly[pw])
        wcount[pw] += 1.0

    learn_count(sc, count, P)
    sc[X_N] = n + 1.0
    sc[X_LAST] = <double>b
    return 0


cdef int step_block(const Params* P, const double[:, ::1] values,
                    const double[:, ::1] counts, const int64_t[::1] buckets,
                    const int8_t[::1] side, double[:, ::1] scalars, double[:, ::1] ring,
                    double[:, ::1] daily, double[:, ::1] dcount, double[:, ::1] doutliers,
                    double[:, ::1] dspikes, double[:, ::1] weekly, double[:, ::1] wcount,
                    double[:, :, ::1] out,
                    const int64_t[::1] probe_cell, const double[::1] probe_values,
                    const double[::1] probe_counts, double[::1] probe_out) noexcept nogil:
    # probe_cell[j] = row * series + column, ascending: the probes of one cell are adjacent
    cdef Py_ssize_t i, s, j = 0, j_end, n_probes = probe_cell.shape[0]
    cdef int64_t cell
    cdef double o[5]
    cdef double* dp
    cdef double* dn
    cdef double* dout
    cdef double* dspk
    cdef double* wp
    cdef double* wn
    cdef int status
    cdef bint with_counts = counts.shape[0] > 0
    cdef BucketPhases phases
    o[0] = o[1] = o[2] = o[3] = o[4] = NAN  # step_one always writes all five
    for i in range(values.shape[0]):
        bucket_phases(P, buckets[i], &phases)
        for s in range(values.shape[1]):
            dp = &daily[s, 0] if daily.shape[1] > 0 else NULL
            dn = &dcount[s, 0] if daily.shape[1] > 0 else NULL
            dout = &doutliers[s, 0] if daily.shape[1] > 0 else NULL
            dspk = &dspikes[s, 0] if daily.shape[1] > 0 else NULL
            wp = &weekly[s, 0] if weekly.shape[1] > 0 else NULL
            wn = &wcount[s, 0] if weekly.shape[1] > 0 else NULL
            cell = i * values.shape[1] + s
            j_end = j
            while j_end < n_probes and probe_cell[j_end] == cell:
                j_end += 1
            status = step_one(P, values[i, s], counts[i, s] if with_counts else NAN,
                              buckets[i], &phases, side[s], &scalars[s, 0],
                              &ring[s, 0], dp, dn, dout, dspk, wp, wn, o,
                              &probe_values[j] if j_end > j else NULL,
                              &probe_counts[j] if j_end > j else NULL, j_end - j,
                              &probe_out[j] if j_end > j else NULL)
            j = j_end
            if status != 0:
                return status
            out[0, i, s] = o[0]
            out[1, i, s] = o[1]
            out[2, i, s] = o[2]
            out[3, i, s] = o[3]
            out[4, i, s] = o[4]
    return 0


def step(double span, const double[::1] params, const double[:, ::1] values,
         const double[:, ::1] counts, const int64_t[::1] buckets, const int8_t[::1] side,
         double[:, ::1] scalars,
         double[:, ::1] ring, double[:, ::1] daily, double[:, ::1] dcount,
         double[:, ::1] doutliers, double[:, ::1] dspikes,
         double[:, ::1] weekly, double[:, ::1] wcount, int64_t daily_res,
         int64_t weekly_res, const int64_t[::1] probe_cell, const double[::1] probe_values,
         const double[::1] probe_counts, double lazy_below=0.0):
    """Step S series over B buckets; returns a (5, B, S) array: p_single, p_multi,
    typical, lower, upper, and the single-bucket probability of each probe. The state arrays
    are updated in place.

    ``buckets`` must be strictly increasing and after every series' last bucket; the
    caller (adjobs.model.SeriesModels) checks that, and the shapes, before calling.
    A probe is another value of one (bucket row, series) cell, ``probe_cell = row * S +
    series``, ascending; it is judged against the cell's state before the bucket is learnt.
    ``lazy_below`` (0 to LAZY_MAX_BELOW; 0: off): a feature whose p is surely at least this
    is taken as 1, unevaluated (for the single-bucket one, its interval too: lower and upper
    NaN). Every cell with min(p_single, p_multi) below it gets both exactly, as without;
    the others get p_single and p_multi of at least lazy_below, as without.
    """
    cdef Params P
    cdef Py_ssize_t nb = values.shape[0], ns = values.shape[1]
    cdef int status
    if params.shape[0] != NPARAM:
        raise ValueError(f"expected {NPARAM} parameters, got {params.shape[0]}")
    if buckets.shape[0] != nb or side.shape[0] != ns or scalars.shape[0] != ns:
        raise ValueError("values, buckets, side and state disagree in shape")
    if counts.shape[0] != 0 and (counts.shape[0] != nb or counts.shape[1] != ns):
        raise ValueError("counts must have the shape of values (or no rows)")
    if probe_counts.shape[0] != probe_values.shape[0]:
        raise ValueError("one count per probe value")
    if scalars.shape[1] != NSCAL or ring.shape[1] != NRING or ring.shape[0] != ns:
        raise ValueError("state arrays have the wrong width")
    if (daily.shape[0] != ns or dcount.shape[0] != ns or dcount.shape[1] != daily.shape[1]
            or doutliers.shape[0] != ns or doutliers.shape[1] != daily.shape[1]
            or dspikes.shape[0] != ns or dspikes.shape[1] != daily.shape[1]):
        raise ValueError("daily state has the wrong shape")
    if weekly.shape[0] != ns or wcount.shape[0] != ns or wcount.shape[1] != weekly.shape[1]:
        raise ValueError("weekly state has the wrong shape")
    if (daily_res > 0) != (daily.shape[1] > 0) or (weekly_res > 0) != (weekly.shape[1] > 0):
        raise ValueError("seasonal resolution and state disagree")
    if probe_cell.shape[0] != probe_values.shape[0]:
        raise ValueError("one probe value per probe cell")
    if probe_cell.shape[0] and (np.any(np.diff(probe_cell) < 0) or probe_cell[0] < 0
                                or probe_cell[probe_cell.shape[0] - 1] >= nb * ns):
        raise ValueError("probe cells must be ascending cells of the block")
    P.alpha[0] = params[P_ALPHA_SLOW]
    P.alpha[1] = params[P_ALPHA_FAST]
    P.level_clip = params[P_LEVEL_CLIP]
    P.base_rate = 1.0 - exp(-span / (params[P_BASE_DAYS] * DAY))
    P.gamma_daily = params[P_GAMMA_DAILY]
    P.gamma_weekly = params[P_GAMMA_WEEKLY]
    P.gain[0] = 1.0
    P.gain[1] = params[P_GAIN_DAILY]
    P.gain[2] = params[P_GAIN_DAILY] * params[P_GAIN_WEEKLY]
    P.test_rate = 1.0 - exp(-span / (params[P_TEST_DAYS] * DAY))
    P.scale_rate = params[P_SCALE_RATE]
    # A.5: decay per bucket scaled by the bucket length against the 30-minute standard
    P.decay = params[P_DECAY] * span / 1800.0
    if P.decay > 0.5:
        P.decay = 0.5
    P.ll_cap = params[P_LL_CAP]
    P.mix_map = params[P_MIX_MAP] != 0.0
    P.run_sigma = params[P_RUN_SIGMA]
    P.run_length = params[P_RUN_LENGTH]
    P.warm_buckets = params[P_WARM_BUCKETS]
    P.warm_seconds = params[P_WARM_SECONDS]
    P.min_cv = params[P_MIN_CV]
    P.inflate = params[P_INFLATE]
    P.season_periods = params[P_SEASON_PERIODS]
    P.temper_buckets = params[P_TEMPER]
    P.out_sigma = params[P_OUT_SIGMA]
    P.out_rate = params[P_OUT_RATE]
    P.out_prior = params[P_OUT_PRIOR]
    P.mb_clip = params[P_MB_CLIP]
    P.shape_evidence = params[P_SHAPE_EVIDENCE]
    P.phase_outlier_min = params[P_PHASE_OUTLIER_MIN]
    P.count_variance = params[P_COUNT_VARIANCE] != 0.0
    P.slow_multi_bucket = params[P_SLOW_MULTI_BUCKET] != 0.0
    P.spike_habit_window = params[P_SPIKE_HABIT_WINDOW]
    P.spike_habit_min = params[P_SPIKE_HABIT_MIN]
    P.median_multi_bucket = params[P_MEDIAN_MULTI_BUCKET]
    if not 0.0 <= lazy_below <= LAZY_MAX_BELOW:
        raise ValueError(f"lazy_below must be in [0, {LAZY_MAX_BELOW}], got {lazy_below}")
    P.lazy_below = lazy_below
    P.span = span
    P.daily_res = daily_res
    P.daily_phases = daily.shape[1]
    P.weekly_res = weekly_res
    P.weekly_phases = weekly.shape[1]
    out = np.empty((5, nb, ns), dtype=np.float64)
    probe_p = np.ones(probe_cell.shape[0], dtype=np.float64)
    cdef double[:, :, ::1] out_v = out
    cdef double[::1] probe_v = probe_p
    with nogil:
        status = step_block(&P, values, counts, buckets, side, scalars, ring, daily, dcount,
                            doutliers, dspikes, weekly, wcount, out_v, probe_cell, probe_values,
                            probe_counts, probe_v)
    if status != 0:
        raise RuntimeError(f"model kernel failed with status {status}")
    return out, probe_p
