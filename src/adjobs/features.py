"""Bucket features: what each detector measures per bucket and series, from record arrays.

The ingest core hands over processed records as numpy arrays (``times`` in epoch ms, a
``float64`` column per numeric field, an ``int32`` code per categorical field, ``-1`` when
absent). A detector turns the records of finalised buckets into one *feature* per
(bucket, series), where a series is a (partition value, by value, over value) combination
(spec ``analysis.md`` A.2, A.3):

=================================  ==========================================================
function                           feature of the series in the bucket
=================================  ==========================================================
count, high_count, low_count       number of records (weighted by the summary count field)
non_zero_count (nzc), high_/low_   the same; buckets without records are not modelled
distinct_count (dc), high_/low_    number of distinct values of ``field_name``
mean (avg), high_/low_             mean of ``field_name`` (weighted by the summary count)
median, high_/low_                 median of ``field_name``
min, max                           minimum, maximum
sum, high_/low_                    sum (a bucket without records is 0)
non_null_sum, high_/low_           sum (a bucket without records is not modelled)
varp, high_/low_                   population variance within the bucket
metric                             min, mean and max, modelled as three features
rare                               number of records of the by value (modelled by rarity)
=================================  ==========================================================

Everything is vectorised: records are sorted once by (bucket, partition, by, over) and
reduced with ``ufunc.reduceat``; nothing loops over records in Python.

Records whose split fields are missing are not analysed by that detector unless the
detector has ``use_null: true``, in which case "missing" is a value of its own (ES).
Records whose metric field is missing or not a number are ignored by metric functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _grouping
from .config import Detector, JobConfig

#: Functions whose feature is a count of records.
COUNT_FUNCTIONS = frozenset(
    {
        "count",
        "high_count",
        "low_count",
        "non_zero_count",
        "high_non_zero_count",
        "low_non_zero_count",
    }
)
DISTINCT_COUNT_FUNCTIONS = frozenset(
    {"distinct_count", "high_distinct_count", "low_distinct_count"}
)
#: Metric functions by the statistic they take of the field.
METRIC_STATISTIC = {
    "mean": "mean",
    "high_mean": "mean",
    "low_mean": "mean",
    "avg": "mean",
    "high_avg": "mean",
    "low_avg": "mean",
    "median": "median",
    "high_median": "median",
    "low_median": "median",
    "min": "min",
    "max": "max",
    "sum": "sum",
    "high_sum": "sum",
    "low_sum": "sum",
    "non_null_sum": "sum",
    "high_non_null_sum": "sum",
    "low_non_null_sum": "sum",
    "varp": "varp",
    "high_varp": "varp",
    "low_varp": "varp",
    "metric": "metric",
}
#: Functions for which a bucket where the series has no records has the feature 0 (it is
#: modelled); for the others such a bucket is skipped.
ZERO_WHEN_EMPTY = frozenset({"count", "high_count", "low_count", "sum", "high_sum", "low_sum"})
#: How each statistic is shown in a record's ``function_description``.
DESCRIPTION = {
    "count": "count",
    "distinct_count": "distinct_count",
    "mean": "mean",
    "median": "median",
    "min": "min",
    "max": "max",
    "sum": "sum",
    "varp": "varp",
    "rare": "rare",
}


def side_of(function: str) -> int:
    """+1 for high_ functions and max, -1 for low_ functions and min, 0 otherwise.

    ``max`` and ``min`` only look one way in ES: an unusually low maximum is not reported.
    """
    if function.startswith("high_") or function == "max":
        return 1
    if function.startswith("low_") or function == "min":
        return -1
    return 0


def statistics_of(function: str) -> tuple[str, ...]:
    """The statistics a function models: one, or three for ``metric``."""
    if function in COUNT_FUNCTIONS:
        return ("count",)
    if function in DISTINCT_COUNT_FUNCTIONS:
        return ("distinct_count",)
    if function == "rare":
        return ("rare",)
    statistic = METRIC_STATISTIC[function]
    return ("min", "mean", "max") if statistic == "metric" else (statistic,)


@dataclass(frozen=True)
class DetectorColumns:
    """Where a detector's fields are in the record arrays (-1: not used)."""

    value: int  # numeric column of field_name (metric functions)
    distinct: int  # categorical column of field_name (distinct_count)
    partition: int  # categorical columns of the split fields
    by: int
    over: int
    use_null: bool

    @classmethod
    def of(cls, detector: Detector, config: JobConfig) -> DetectorColumns:
        numeric = list(config.numeric_fields)
        categorical = list(config.categorical_fields)

        def column(name: str | None, names: list[str]) -> int:
            return names.index(name) if name and name in names else -1

        return cls(
            value=column(detector.field_name, numeric)
            if detector.function in METRIC_STATISTIC
            else -1,
            distinct=column(detector.field_name, categorical)
            if detector.function in DISTINCT_COUNT_FUNCTIONS
            else -1,
            partition=column(detector.partition_field_name, categorical),
            by=column(detector.by_field_name, categorical),
            over=column(detector.over_field_name, categorical),
            use_null=detector.use_null,
        )


@dataclass
class Features:
    """One detector's features for some finalised buckets, one row per (bucket, series).

    Rows are sorted by (bucket, partition, by, over). Codes are the job's string-table
    codes, ``-1`` for "missing" (only with ``use_null``) or for a split field the detector
    does not have.
    """

    bucket: np.ndarray  # int64, bucket start (epoch ms)
    partition: np.ndarray  # int32
    by: np.ndarray  # int32
    over: np.ndarray  # int32
    values: np.ndarray  # float64, shape (rows, statistics)
    count: np.ndarray  # float64, records behind the row (summary-count weighted)
    #: ``order[first[i]:first[i] + size[i]]`` are the indices (into the arrays given to
    #: :func:`detector_features`) of the records behind row ``i``.
    order: np.ndarray
    first: np.ndarray
    size: np.ndarray

    def __len__(self) -> int:
        return len(self.bucket)


def _empty(statistics: int) -> Features:
    none = np.empty(0, dtype=np.int64)
    return Features(
        bucket=none,
        partition=np.empty(0, np.int32),
        by=np.empty(0, np.int32),
        over=np.empty(0, np.int32),
        values=np.empty((0, statistics)),
        count=np.empty(0),
        order=none,
        first=none,
        size=none,
    )


def _split_codes(codes: np.ndarray, column: int, n: int) -> np.ndarray:
    if column < 0:
        return _no_split(n)
    return codes[:, column]


#: -1 for every record of a split the detector does not have: one read-only array, sliced
#: (grown when a batch is larger, up to _NO_SPLIT_HELD records), not a new one per batch.
_NO_SPLIT = np.full(0, -1, dtype=np.int32)
_NO_SPLIT_HELD = 1 << 20


def _no_split(n: int) -> np.ndarray:
    global _NO_SPLIT
    if n > _NO_SPLIT_HELD:
        return np.full(n, -1, dtype=np.int32)
    if len(_NO_SPLIT) < n:
        codes = np.full(min(max(n, 2 * len(_NO_SPLIT)), _NO_SPLIT_HELD), -1, dtype=np.int32)
        codes.flags.writeable = False
        _NO_SPLIT = codes
    return _NO_SPLIT[:n]


#: Packed sort keys stay below this, clear of int64 overflow.
_PACKED_KEY_LIMIT = 2**62
#: The unsigned types packed keys narrow to, each with the number of values it holds.
_NARROW_KEYS = ((np.uint8, 1 << 8), (np.uint16, 1 << 16))


def stable_order(keys: list[np.ndarray]) -> np.ndarray:
    """``np.lexsort(keys)`` (the last key sorts first, ties keep their order), faster.

    Integer keys whose ranges multiply to less than 2**62 are packed into one int64 key per
    row (as narrow as the ranges allow), and a stable argsort of that gives the same order
    as lexsort at a fraction of the cost; other keys (floats, very wide ranges) go to lexsort.
    """
    packed = _packed(keys)
    if packed is None:
        return np.lexsort(keys)
    return np.argsort(packed, kind="stable")


def stable_groups(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stable_order` of ``keys`` and where each run of equal keys starts in it (0
    first; empty for no rows)."""
    # small key ranges (the usual case): counted in C, the same order
    grouped = _grouping.stable_groups(keys)
    if grouped is not None:
        return grouped
    packed = _packed(keys)
    if packed is None:
        order = np.lexsort(keys)
        return order, run_starts(keys, order)
    order = np.argsort(packed, kind="stable")
    ordered = packed[order]
    change = np.empty(len(order), dtype=bool)
    change[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
    return order, np.flatnonzero(change)


def run_starts(keys: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """Where each run of equal keys starts in ``order`` (0 first; empty for no rows)."""
    change = np.zeros(len(order), dtype=bool)
    change[:1] = True
    for key in keys:
        ordered = key[order]
        change[1:] |= ordered[1:] != ordered[:-1]
    return np.flatnonzero(change)


def _packed(keys: list[np.ndarray]) -> np.ndarray | None:
    """The keys packed into one unsigned integer per row, the first least significant, as
    narrow as their ranges allow; None where they cannot be (not integers, or ranges whose
    product reaches 2**62)."""
    if not keys or len(keys[0]) == 0 or any(key.dtype.kind != "i" for key in keys):
        return None
    packed = None
    scale = 1
    for key in keys:  # least significant first, as lexsort takes them
        low, high = int(key.min()), int(key.max())
        width = high - low + 1
        if scale * width >= _PACKED_KEY_LIMIT:
            return None
        if width > 1:
            term = key.astype(np.int64)  # a copy, worked on in place
            term -= low
            if scale > 1:
                term *= scale
            if packed is None:
                packed = term
            else:
                packed += term
        scale *= width
    if packed is None:
        packed = np.zeros(len(keys[0]), dtype=np.int64)
    # numpy's stable sort is a radix sort for 8- and 16-bit keys: several times faster
    # than its merge sort on int64 (packed keys are usually small: buckets x series).
    for narrow, values in _NARROW_KEYS:
        if scale <= values:
            return packed.astype(narrow)
    return packed


def detector_features(
    function: str,
    columns: DetectorColumns,
    times: np.ndarray,
    numeric: np.ndarray,
    codes: np.ndarray,
    span_ms: int,
    weights: np.ndarray | None = None,
) -> Features:
    """Features of one detector over records of finalised buckets.

    Parameters
    ----------
    times, numeric, codes
        The record arrays of the ingest core: ``int64[n]``, ``float64[n, numeric fields]``,
        ``int32[n, categorical fields]``.
    span_ms
        The bucket span.
    weights
        The summary count of each record (``None``: every record counts once). Records
        with a missing or non-positive summary count are ignored.
    """
    statistics = statistics_of(function)
    n = len(times)
    keep = np.ones(n, dtype=bool)
    partition = _split_codes(codes, columns.partition, n)
    by = _split_codes(codes, columns.by, n)
    over = _split_codes(codes, columns.over, n)
    if not columns.use_null:
        for split, column in ((partition, columns.partition), (by, columns.by),
                              (over, columns.over)):
            if column >= 0:
                keep &= split >= 0
    value = None
    if columns.value >= 0:
        value = numeric[:, columns.value]
        keep &= np.isfinite(value)
    distinct = None
    if columns.distinct >= 0:
        distinct = codes[:, columns.distinct]
        keep &= distinct >= 0
    weight = None
    if weights is not None:
        weight = weights
        keep &= np.isfinite(weight) & (weight > 0)
    # index None: every record counts, and the arrays are used as they are, not copied
    index = None if keep.all() else np.flatnonzero(keep)
    if n == 0 or (index is not None and len(index) == 0):
        return _empty(len(statistics))

    def kept(array: np.ndarray) -> np.ndarray:
        return array if index is None else array[index]

    bucket_number = kept(times) // span_ms
    # Sort by series within buckets; within a series by value, for the median. A split the
    # detector does not have is -1 throughout: as a sort key it would change nothing.
    keys: list[np.ndarray] = [kept(split) for split, column in ((over, columns.over),
                                                                (by, columns.by),
                                                                (partition, columns.partition))
                              if column >= 0]
    keys.append(bucket_number)  # in the same order as the bucket starts, and compact
    if value is not None and "median" in statistics:
        # sorted by value within each row too; rows are still (bucket, series)
        order = stable_order([kept(value), *keys])
        first = run_starts(keys, order)
    else:
        order, first = stable_groups(keys)
    sorted_index = order if index is None else index[order]
    size = np.diff(np.append(first, len(order)))
    if weight is not None:
        w = weight[sorted_index]
        count = np.add.reduceat(w, first)
    else:
        # Records count once: sums of ones are their exact counts, and v * 1 is v.
        w = None
        count = size.astype(np.float64)
    values = np.empty((len(first), len(statistics)))
    v = value[sorted_index] if value is not None else None
    with np.errstate(over="ignore", invalid="ignore"):
        for column, statistic in enumerate(statistics):
            values[:, column] = _statistic(statistic, v, w, count, first, size, distinct,
                                           sorted_index)
    # A sum, mean or variance of finite values can still overflow (two records of 1e308). As
    # ES's models discard a value that is not finite, such a row's values are NaN: its series
    # has no value in that bucket (the models neither learn nor score it) and its records
    # stay counted.
    values[~np.isfinite(values)] = np.nan
    heads = sorted_index[first]  # a record of each row
    return Features(
        bucket=times[heads] // span_ms * span_ms,
        partition=partition[heads],
        by=by[heads],
        over=over[heads],
        values=values,
        count=count,
        order=sorted_index,
        first=first,
        size=size,
    )


def _statistic(
    statistic: str,
    v: np.ndarray | None,
    w: np.ndarray | None,
    count: np.ndarray,
    first: np.ndarray,
    size: np.ndarray,
    distinct: np.ndarray | None,
    sorted_index: np.ndarray,
) -> np.ndarray:
    if statistic in ("count", "rare"):
        return count
    if statistic == "distinct_count":
        group = np.repeat(np.arange(len(first)), size)
        pairs = np.unique(group.astype(np.int64) << 32 | distinct[sorted_index].astype(np.int64))
        return np.bincount((pairs >> 32).astype(np.int64), minlength=len(first)).astype(float)
    assert v is not None
    if statistic == "min":
        return np.minimum.reduceat(v, first)
    if statistic == "max":
        return np.maximum.reduceat(v, first)
    if statistic == "sum":
        # A summarised record's value is already the sum of the records it stands for (ES's
        # sum gatherer adds the value and ignores the count): not weighted.
        return np.add.reduceat(v, first)
    # Without summary counts every weight is 1, and v * 1 is v.
    weighted = v if w is None else v * w
    mean = np.add.reduceat(weighted, first) / count
    if statistic == "mean":
        overflowed = ~np.isfinite(mean)
        if overflowed.any():
            # The sum of finite values overflowed (two records of 1e308); their mean is
            # finite: summed as shares of it (each record's value times its weight's share
            # of the row's), it cannot overflow, as ES's running mean does not.
            share = 1.0 / np.repeat(count, size) if w is None else w / np.repeat(count, size)
            shares = np.add.reduceat(v * share, first)
            mean = np.where(overflowed, shares, mean)
        return mean
    if statistic == "varp":
        deviation = v - np.repeat(mean, size)
        squares = deviation * deviation if w is None else w * deviation * deviation
        return np.add.reduceat(squares, first) / count
    if statistic == "median":
        # Values are sorted within each group (the lexsort's first key).
        low = v[first + (size - 1) // 2]
        high = v[first + size // 2]
        middle = (low + high) / 2
        # halves first where the sum overflows (9e307 + 9e307), exact sums otherwise
        return np.where(np.isfinite(middle), middle, low / 2 + high / 2)
    raise ValueError(f"unknown statistic {statistic!r}")


def event_counts(times: np.ndarray, span_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bucket starts, records per bucket)`` of the records, buckets ascending."""
    index = times // span_ms
    if len(index) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    low = int(index.min())
    spanned = int(index.max()) - low + 1
    if spanned > 4 * len(index) + 1024:
        # Records spread over a long gap: sorting them is cheaper than counting every bucket.
        buckets, counts = np.unique(index * span_ms, return_counts=True)
        return buckets, counts
    # Counting beats sorting (np.unique) when the buckets are about as many as the records.
    counts = np.bincount(index - low, minlength=spanned)
    held = np.flatnonzero(counts)
    return (held + low) * span_ms, counts[held]


#: How ES tests an influencer value's part in an anomaly of each statistic (its
#: ``CProbabilityAndInfluenceCalculator``): "complement" features are recomputed without the
#: value's records, influence ``1 - ln p_rest / ln p``; "intersection" ones from the value's
#: records alone, influence ``ln p_own / ln p``. Counts and sums are only tested when the
#: anomaly is high (removing records cannot explain a drop). Other statistics (median,
#: distinct count, rare) keep the share of records.
RETEST = {"count": "complement", "sum": "complement", "mean": "complement",
          "varp": "complement", "min": "intersection", "max": "intersection"}
RETEST_HIGH_ONLY = frozenset({"count", "sum"})

#: Statistics whose spread depends on how many records are behind them: the models judge
#: them against the series' usual count (ES ``model_t::varianceScale``: mean, median and
#: variance features).
COUNT_SCALED = frozenset({"mean", "median", "varp"})


def influence_alternatives(statistic: str, complement: bool, columns: DetectorColumns,
                           numeric: np.ndarray, weights: np.ndarray | None,
                           members: np.ndarray, value_codes: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct influencer value among a feature row's records (``members``, with
    their codes ``value_codes``, -1 for none): the row's ``statistic`` without that value's
    records (``complement``) or of them alone, computed as :func:`detector_features` does,
    for all values at once. Returns (codes, alternatives, counts): NaN alternatives where
    there is no record to take a mean or an extreme of; counts are the (summary-count
    weighted) records behind each alternative."""
    present = value_codes >= 0
    codes, inverse = np.unique(value_codes[present], return_inverse=True)
    k = len(codes)
    w = weights[members] if weights is not None else np.ones(len(members))
    v = numeric[members, columns.value] if columns.value >= 0 else np.zeros(len(members))
    wv, vv = w[present], v[present]
    own_w = np.bincount(inverse, weights=wv, minlength=k)
    if statistic in ("min", "max"):  # of the value's records alone
        extreme = np.full(k, np.inf if statistic == "min" else -np.inf)
        (np.minimum if statistic == "min" else np.maximum).at(extreme, inverse, vv)
        return codes, extreme, own_w
    own_sum = np.bincount(inverse, weights=wv * vv, minlength=k)
    own_squares = np.bincount(inverse, weights=wv * vv * vv, minlength=k)
    if complement:
        count = w.sum() - own_w
        total = (w * v).sum() - own_sum
        squares = (w * v * v).sum() - own_squares
    else:
        count, total, squares = own_w, own_sum, own_squares
    if statistic == "count":
        return codes, count, count
    if statistic == "sum":
        # a summarised record's value is its records' sum already (detector_features)
        own = np.bincount(inverse, weights=vv, minlength=k)
        return codes, (v.sum() - own if complement else own), count
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
        if statistic == "mean":
            return codes, mean, count
        if statistic == "varp":
            return codes, np.where(count > 0, np.maximum(squares / count - mean * mean, 0.0),
                                   np.nan), count
    raise ValueError(f"no influence test for {statistic!r}")


def influencer_shares(
    features: Features, codes: np.ndarray, column: int, rows: np.ndarray
) -> list[list[tuple[int, float]]]:
    """For each row in ``rows``: the values of one influencer field among the row's
    records, with their share of the records, largest first.

    Only called for the few anomalous rows of a bucket, so a loop over those rows is fine.
    """
    out = []
    for row in rows:
        start = features.first[row]
        members = features.order[start:start + features.size[row]]
        values, counts = np.unique(codes[members, column], return_counts=True)
        present = values >= 0
        values, counts = values[present], counts[present]
        total = len(members)
        ranked = np.argsort(-counts, kind="stable")
        out.append([(int(values[i]), counts[i] / total) for i in ranked])
    return out
