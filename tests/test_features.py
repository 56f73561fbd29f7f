"""Bucket features against a record-by-record computation in plain Python."""

from __future__ import annotations

import statistics as stats
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adjobs.features import (
    DetectorColumns,
    detector_features,
    event_counts,
    influence_alternatives,
    influencer_shares,
    side_of,
    statistics_of,
)

SPAN = 60_000
FUNCTIONS = [
    "count",
    "low_count",
    "non_zero_count",
    "distinct_count",
    "mean",
    "high_mean",
    "median",
    "min",
    "max",
    "sum",
    "non_null_sum",
    "varp",
    "metric",
    "rare",
]


def _columns(function: str, *, partition: bool, by: bool, over: bool, use_null=False):
    metric = function not in ("count", "low_count", "non_zero_count", "distinct_count", "rare")
    return DetectorColumns(
        value=0 if metric else -1,
        distinct=3 if function == "distinct_count" else -1,
        partition=0 if partition else -1,
        by=1 if by else -1,
        over=2 if over else -1,
        use_null=use_null,
    )


def _reference(function, columns, times, numeric, codes, weights):
    """One Python dict per (bucket, partition, by, over), filled record by record."""
    groups = defaultdict(list)
    for i in range(len(times)):
        key_codes = []
        skip = False
        for column in (columns.partition, columns.by, columns.over):
            code = int(codes[i, column]) if column >= 0 else -1
            if column >= 0 and code < 0 and not columns.use_null:
                skip = True
            key_codes.append(code)
        value = float(numeric[i, columns.value]) if columns.value >= 0 else None
        if value is not None and not np.isfinite(value):
            skip = True
        if columns.distinct >= 0 and codes[i, columns.distinct] < 0:
            skip = True
        weight = 1.0 if weights is None else float(weights[i])
        if not (np.isfinite(weight) and weight > 0):
            skip = True
        if skip:
            continue
        bucket = int(times[i]) // SPAN * SPAN
        distinct = int(codes[i, columns.distinct]) if columns.distinct >= 0 else None
        groups[(bucket, *key_codes)].append((value, weight, distinct))
    out = {}
    for key, members in groups.items():
        values = [m[0] for m in members]
        w = [m[1] for m in members]
        total = sum(w)
        result = []
        for statistic in statistics_of(function):
            if statistic in ("count", "rare"):
                result.append(total)
            elif statistic == "distinct_count":
                result.append(float(len({m[2] for m in members})))
            elif statistic == "sum":
                # a summarised record's value is the sum of the records it stands for
                result.append(sum(values))
            elif statistic == "min":
                result.append(min(values))
            elif statistic == "max":
                result.append(max(values))
            elif statistic == "median":
                result.append(stats.median(values))
            else:
                mean = sum(v * x for v, x in zip(values, w)) / total
                if statistic == "mean":
                    result.append(mean)
                else:
                    result.append(sum(x * (v - mean) ** 2 for v, x in zip(values, w)) / total)
        out[key] = (result, total, len(members))
    return out


records = st.integers(min_value=0, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5 * SPAN - 1), min_size=n, max_size=n),
        st.lists(
            st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.just(float("nan"))),
            min_size=n,
            max_size=n,
        ),
        st.lists(st.lists(st.integers(-1, 2), min_size=4, max_size=4), min_size=n, max_size=n),
        st.one_of(st.none(), st.lists(st.sampled_from([1.0, 2.0, 0.0, 7.5]), min_size=n,
                                      max_size=n)),
    )
)


@settings(max_examples=60, deadline=None)
@given(
    data=records,
    function=st.sampled_from(FUNCTIONS),
    splits=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    use_null=st.booleans(),
)
def test_features_equal_a_record_by_record_computation(data, function, splits, use_null):
    times_list, values, code_rows, weight_list = data
    times = np.sort(np.array(times_list, dtype=np.int64))
    numeric = np.array(values, dtype=float).reshape(-1, 1)
    codes = np.array(code_rows, dtype=np.int32).reshape(-1, 4)
    weights = None if weight_list is None else np.array(weight_list)
    columns = _columns(function, partition=splits[0], by=splits[1], over=splits[2],
                       use_null=use_null)
    got = detector_features(function, columns, times, numeric, codes, SPAN, weights)
    expected = _reference(function, columns, times, numeric, codes, weights)
    keys = list(zip(got.bucket.tolist(), got.partition.tolist(), got.by.tolist(),
                    got.over.tolist()))
    assert keys == sorted(expected)
    for row, key in enumerate(keys):
        result, total, members = expected[key]
        np.testing.assert_allclose(got.values[row], result, rtol=1e-9, atol=1e-9)
        assert got.count[row] == pytest.approx(total)
        assert got.size[row] == members
        # The records behind the row are the ones that fall in its bucket and series.
        behind = got.order[got.first[row]:got.first[row] + got.size[row]]
        assert np.all(times[behind] // SPAN * SPAN == key[0])


def test_a_worked_example_of_mean_by_airline():
    # Two airlines over two one-minute buckets; AAL's second bucket has one missing value.
    times = np.array([0, 10_000, 20_000, 30_000, 60_000, 70_000, 80_000], dtype=np.int64)
    numeric = np.array([[10.0], [20.0], [5.0], [7.0], [100.0], [np.nan], [3.0]])
    codes = np.array([[0], [0], [1], [1], [0], [0], [1]], dtype=np.int32)
    columns = DetectorColumns(value=0, distinct=-1, partition=0, by=-1, over=-1, use_null=False)
    got = detector_features("mean", columns, times, numeric, codes, SPAN)
    assert got.bucket.tolist() == [0, 0, 60_000, 60_000]
    assert got.partition.tolist() == [0, 1, 0, 1]
    assert got.values[:, 0].tolist() == [15.0, 6.0, 100.0, 3.0]
    assert got.count.tolist() == [2.0, 2.0, 1.0, 1.0]
    buckets, counts = event_counts(times, SPAN)
    assert buckets.tolist() == [0, 60_000] and counts.tolist() == [4, 3]


@pytest.mark.parametrize(("function", "values", "expected"), [
    ("median", [9e307, 9e307], 9e307),  # the midpoint of two huge values, halved first
    ("median", [-1.7e308, 1.7e308], 0.0),
    ("median", [3.0, 4.0], 3.5),  # exact, as ever
    ("sum", [1e308, 1e308], None),  # finite values whose sum overflows: no value
    ("mean", [1e308, 1e308], 1e308),  # ... but their mean is finite, and is the value
    ("mean", [1.7e308, 1.5e308], 1.6e308),
    ("varp", [1e200, -1e200], None),
    ("sum", [1e308, -1e308], 0.0),
])
def test_a_statistic_that_overflows_has_no_value_and_a_median_never_overflows(
        function, values, expected):
    times = np.array([0, 10_000], dtype=np.int64)
    numeric = np.array([[v] for v in values])
    codes = np.zeros((2, 0), dtype=np.int32)
    columns = DetectorColumns(value=0, distinct=-1, partition=-1, by=-1, over=-1,
                              use_null=False)
    got = detector_features(function, columns, times, numeric, codes, SPAN)
    assert got.count.tolist() == [2.0]  # both records are behind the row, whatever its value
    if expected is None:
        assert np.isnan(got.values[0, 0])
    else:
        assert got.values[0, 0] == expected


def test_event_counts_count_dense_runs_and_long_gaps_alike():
    # Out of order, negative times, and (second) a gap of a million buckets, which is
    # counted by sorting rather than by a count per bucket.
    times = np.array([120_500, -1, 0, 59_999, 120_000, -60_001], dtype=np.int64)
    buckets, counts = event_counts(times, SPAN)
    assert buckets.tolist() == [-120_000, -60_000, 0, 120_000]
    assert counts.tolist() == [1, 1, 2, 2]
    gap = np.append(times, 10**6 * SPAN + 5)
    buckets, counts = event_counts(gap, SPAN)
    assert buckets.tolist() == [-120_000, -60_000, 0, 120_000, 10**6 * SPAN]
    assert counts.tolist() == [1, 1, 2, 2, 1]
    empty_buckets, empty_counts = event_counts(np.empty(0, dtype=np.int64), SPAN)
    assert len(empty_buckets) == len(empty_counts) == 0


def test_influencer_shares_rank_values_by_their_share_of_the_records():
    times = np.zeros(5, dtype=np.int64)
    codes = np.array([[0, 4], [0, 4], [0, 5], [0, -1], [1, 4]], dtype=np.int32)
    columns = DetectorColumns(value=-1, distinct=-1, partition=0, by=-1, over=-1, use_null=False)
    got = detector_features("count", columns, times, np.empty((5, 0)), codes, SPAN)
    shares = influencer_shares(got, codes, 1, np.array([0, 1]))
    assert shares[0] == [(4, 0.5), (5, 0.25)]
    assert shares[1] == [(4, 1.0)]


@pytest.mark.parametrize(
    ("function", "side", "statistics"),
    [
        ("count", 0, ("count",)),
        ("high_count", 1, ("count",)),
        ("low_non_zero_count", -1, ("count",)),
        ("max", 1, ("max",)),
        ("min", -1, ("min",)),
        ("metric", 0, ("min", "mean", "max")),
        ("low_median", -1, ("median",)),
        ("high_distinct_count", 1, ("distinct_count",)),
    ],
)
def test_sides_and_statistics(function, side, statistics):
    assert side_of(function) == side
    assert statistics_of(function) == statistics


def test_stable_order_is_lexsorts_order():
    from adjobs.features import stable_order

    rng = np.random.default_rng(7)
    partition = rng.integers(-1, 4, 500).astype(np.int32)
    bucket = rng.integers(10**9, 10**9 + 6, 500)
    keys = [partition, bucket]
    assert stable_order(keys).tolist() == np.lexsort(keys).tolist()
    # Packed widths of 8, 16 and 64 bits (6 x 5, 6 x 2000 and 6 x 20000 values).
    for spread in (5, 2000, 20000):
        many = [rng.integers(0, spread, 500).astype(np.int32), bucket]
        assert stable_order(many).tolist() == np.lexsort(many).tolist()
    # Ties keep their order; the last key sorts first.
    small = [np.array([1, 0, 1, 0], dtype=np.int32), np.array([5, 5, 4, 4])]
    assert stable_order(small).tolist() == [3, 2, 1, 0]
    # A key of one value changes nothing.
    assert stable_order([np.full(3, 9, dtype=np.int32), np.array([2, 1, 2])]).tolist() == [
        1, 0, 2]
    # Ranges too wide to pack, and float keys, go to lexsort: same order.
    wide = [np.array([2**40, 0, 2**40]), np.array([2**40, 2**40, 0])]
    assert stable_order(wide).tolist() == np.lexsort(wide).tolist() == [2, 1, 0]
    with_values = [np.array([0.5, 0.25, 0.75]), np.array([1, 1, 0])]
    assert stable_order(with_values).tolist() == [2, 1, 0]
    assert stable_order([np.zeros(0, dtype=np.int64)]).tolist() == []


def test_influence_alternatives_take_each_value_out_or_alone():
    columns = DetectorColumns(value=0, distinct=-1, partition=-1, by=-1, over=-1,
                              use_null=False)
    numeric = np.array([[1.0], [2.0], [3.0], [10.0], [5.0]])
    members = np.array([0, 1, 2, 3, 4])
    hosts = np.array([7, 7, 8, 9, -1])  # the last record has no host
    weights = np.array([1.0, 1.0, 1.0, 2.0, 1.0])

    def alt(statistic, complement, w=None):
        codes, values, _ = influence_alternatives(statistic, complement, columns, numeric, w,
                                                  members, hosts)
        assert codes.tolist() == [7, 8, 9]
        return values.tolist()

    # without host 7 (records 0, 1), 8 (record 2), 9 (record 3)
    assert alt("count", True) == [3.0, 4.0, 4.0]
    assert alt("sum", True) == [18.0, 18.0, 11.0]
    assert alt("mean", True) == [6.0, 4.5, 2.75]
    assert np.allclose(alt("varp", True), [np.var([3.0, 10.0, 5.0]), np.var([1, 2, 10, 5.0]),
                                           np.var([1, 2, 3, 5.0])])
    # summary counts weigh records: host 9's record counts twice
    assert alt("count", True, weights) == [4.0, 5.0, 4.0]
    # ... but not a sum: a summarised record's value is already its records' sum
    assert alt("sum", True, weights) == [18.0, 18.0, 11.0]
    assert alt("sum", False, weights) == [3.0, 3.0, 10.0]
    assert alt("mean", True, weights) == [28.0 / 4, 28.0 / 5, 11.0 / 4]
    # and the records behind each alternative, for the count variance scale of a mean
    _, _, behind = influence_alternatives("mean", True, columns, numeric, weights, members,
                                          hosts)
    assert behind.tolist() == [4.0, 5.0, 4.0]
    _, _, alone = influence_alternatives("max", False, columns, numeric, weights, members,
                                         hosts)
    assert alone.tolist() == [2.0, 1.0, 2.0]
    # alone, for the extremes
    assert alt("max", False) == [2.0, 3.0, 10.0]
    assert alt("min", False) == [1.0, 3.0, 10.0]
    # a mean of no records is NaN (ES skips that value)
    codes, values, _ = influence_alternatives("mean", True, columns, numeric[:2], None,
                                              np.array([0, 1]), np.array([7, 7]))
    assert codes.tolist() == [7] and np.isnan(values[0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-40, 40), st.integers(1, 30), st.booleans(),
                          st.booleans()), min_size=1, max_size=4),
       st.integers(1, 400), st.integers(0, 2**32 - 1))
def test_the_counting_sort_gives_numpys_stable_order_and_runs(columns, n, seed):
    from adjobs import _grouping

    rng = np.random.default_rng(seed)
    keys = []
    for low, width, wide, strided in columns:
        values = rng.integers(low, low + width, 2 * n).astype(np.int64 if wide else np.int32)
        keys.append(values[::2] if strided else values[:n])
    grouped = _grouping.stable_groups(keys)
    assert grouped is not None  # at most 30**4 values: counted
    order, first = grouped
    assert order.tolist() == np.lexsort(keys).tolist()
    rows = np.stack([key[order] for key in keys], axis=1)
    assert first.tolist() == [0] + [i for i in range(1, n) if (rows[i] != rows[i - 1]).any()]


def test_the_counting_sort_leaves_wide_ranges_other_dtypes_and_no_records_to_numpy():
    from adjobs import _grouping

    wide = np.array([0, _grouping.MAX_KEY_VALUES], dtype=np.int64)  # 2**20 + 1 values
    assert _grouping.stable_groups([wide]) is None
    # ranges that multiply past the limit, each small
    assert _grouping.stable_groups([np.arange(2000, dtype=np.int32)] * 2) is None
    assert _grouping.stable_groups([np.zeros(3, dtype=np.int16)]) is None
    assert _grouping.stable_groups([np.zeros(3)]) is None  # floats
    assert _grouping.stable_groups([np.zeros(0, dtype=np.int64)]) is None
    assert _grouping.stable_groups([np.zeros(3, dtype=np.int64)] * 5) is None  # five columns
    extremes = np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max])
    assert _grouping.stable_groups([extremes]) is None  # a range past int64's reach
    # up to four records' worth of values per record is counted, however many values
    many = np.arange(2 * _grouping.MAX_KEY_VALUES, dtype=np.int64)[::-1].copy()
    order, first = _grouping.stable_groups([many])
    assert order[:3].tolist() == [len(many) - 1, len(many) - 2, len(many) - 3]
    assert len(first) == len(many)


def test_stable_groups_are_lexsorts_order_and_its_runs_of_equal_keys():
    from adjobs.features import stable_groups

    rng = np.random.default_rng(3)
    for keys in ([rng.integers(-1, 4, 300).astype(np.int32), rng.integers(0, 50, 300)],
                 [rng.integers(0, 3, 300).astype(float), rng.integers(0, 5, 300)],  # floats
                 [np.array([2**40, 0, 2**40]), np.array([2**30, 5, 2**30])]):  # too wide to pack
        order, starts = stable_groups(keys)
        assert order.tolist() == np.lexsort(keys).tolist()
        rows = np.stack([key[order] for key in keys], axis=1)
        changes = [0] + [i for i in range(1, len(rows)) if (rows[i] != rows[i - 1]).any()]
        assert starts.tolist() == changes
    order, starts = stable_groups([np.zeros(0, dtype=np.int64)])
    assert order.tolist() == [] and starts.tolist() == []
