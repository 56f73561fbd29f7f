"""A job's analysis: from finalised buckets of records to scored results in ES's shapes.

One :class:`JobAnalysis` per open job. The service hands it the record arrays of every
batch the ingest core produces (:meth:`JobAnalysis.add_records`). Records wait in a buffer
until their bucket is *finalised*, which happens when a record arrives past the bucket's
end plus the latency, or on flush with ``advance_time`` (spec ``analysis.md`` A.1). Then,
for all newly finalised buckets at once:

1. each detector computes its features per (bucket, series) (:mod:`adjobs.features`);
2. the series models (:mod:`adjobs.model`) give every (bucket, series) a single-bucket and a
   multi-bucket probability, vectorised across series, bucket by bucket in compiled code;
3. probabilities become raw scores and then 0-100 scores (:mod:`adjobs.scoring`): records
   per series, influencers per influencer value, bucket influencers per influencer field
   plus ``bucket_time``, and the bucket's ``anomaly_score``;
4. the documents (:mod:`adjobs.results` shapes) wait in :attr:`JobAnalysis.pending` until
   the service commits them with the upload, in the same transaction as the counts (D6).

The whole state (models, normaliser, series registry, buffered records) is serialised by
:meth:`JobAnalysis.get_state` at each commit, so a reopen, or a restart after a kill -9,
continues from the last acknowledged upload.

Interim results correct the incomplete bucket's count and sum features as ES's
``CInterimBucketCorrector`` does: the bucket's *completeness* is its record count so far
over the decayed mean record count of finalised buckets, and a feature is moved toward
the model's typical value by at most ``(1 - completeness) * typical``, so an unfinished
bucket does not look like a drop.

Influence, as ES finds it: for an influencer field that is not one of the detector's split
fields, each value's records are removed from the anomalous feature (counts, sums, means,
varp; counts and sums only when the anomaly is high) or kept alone (min, max), the model
judges that value again against the state the bucket met, and the influence is
``1 - ln p_rest / ln p`` (or ``ln p_own / ln p``); values of influence >= 0.4 influence the
record. A split field's value influences its own series' records.

Simplifications, each documented in the README: median, distinct count, metric, rare and
population detectors keep the share of the anomalous series' records that carry a value as
its influence (cut-off 0.4); a gap of more than :data:`MAX_EMPTY_BUCKETS` empty buckets is
stepped over (the models see the jump) instead of being processed bucket by bucket.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _jsontext, _normaliser, scoring
from .config import Detector, JobConfig
from .features import (
    COUNT_FUNCTIONS,
    COUNT_SCALED,
    DESCRIPTION,
    RETEST,
    RETEST_HIGH_ONLY,
    ZERO_WHEN_EMPTY,
    DetectorColumns,
    detector_features,
    event_counts,
    influence_alternatives,
    influencer_shares,
    side_of,
    stable_groups,
    statistics_of,
)
from .model import SeriesModels
from .population import PopulationModels, RareModels
from .results import ResultBatch, is_term_field_name, rescored_batch

#: The levels of results, each normalised on its own.
LEVELS = ("record", "influencer", "bucket")
#: Records are written for (bucket, series) whose probability is below this
#: (ES ``maximumAnomalousProbability``): above it the raw score is 0 anyway.
RECORD_PROBABILITY = 0.035
#: A cell can be a record only if min(p_single, p_multi) is below this: their
#: Sidak-corrected minimum (scoring.combine_single_multi) is below RECORD_PROBABILITY only
#: then (a millionth above the exact bound, for the rounding of the correction).
_CAN_BE_A_RECORD_BELOW = (1.0 - math.sqrt(1.0 - RECORD_PROBABILITY)) * (1.0 + 1e-6)
#: An influencer value must carry at least this share of an anomaly (ES's cut-off).
INFLUENCE_CUTOFF = 0.4
#: ES ``xpack.ml.max_anomaly_records``: records kept per bucket, most unlikely first.
MAX_RECORDS_PER_BUCKET = 500
#: A gap longer than this many buckets is stepped over rather than walked bucket by bucket.
MAX_EMPTY_BUCKETS = 10_000
#: Probabilities are clamped up to this before their logarithm is taken.
SMALLEST = scoring.SMALLEST_PROBABILITY
#: Functions whose interim feature is corrected for the part of the bucket still to come:
#: ES corrects counts and sums, which grow as records arrive (means, extremes and
#: distinct counts do not grow with the record count).
INTERIM_CORRECTED = COUNT_FUNCTIONS | frozenset(
    {"sum", "high_sum", "low_sum", "non_null_sum", "high_non_null_sum", "low_non_null_sum"}
)
#: Decay of the mean record count per finalised bucket, per 30-minute bucket (A.5's model
#: decay rate, which ES's interim corrector uses too).
BUCKET_COUNT_DECAY = 0.0005
#: The most entries of a detector's table from split codes to model columns.
_COLUMN_TABLE_LIMIT = 1 << 18
#: Records buffered for buckets not yet finalised are kept in chunks, compacted into one
#: when there are more than this many.
_COMPACT_CHUNKS = 64


@dataclass
class _Rows:
    """What one detector found anomalous in some buckets: one entry per record."""

    bucket: np.ndarray
    probability: np.ndarray
    impact: np.ndarray
    actual: np.ndarray  # (rows, statistics)
    typical: np.ndarray
    statistic: list[str]
    partition: np.ndarray
    by: np.ndarray
    over: np.ndarray
    feature_row: np.ndarray  # row of the detector's Features, for influencers
    features: Any
    #: Per bucket of the run: how many series had a probability (the others are 0).
    evaluated: np.ndarray | None = None
    #: Influence by remove and retest, per record index: {influencer column: [(value code,
    #: influence)]}, for the influencer fields that are not the detector's split fields;
    #: records not in it keep the share of records (see :data:`features.RETEST`).
    influences: dict[int, dict[int, list[tuple[int, float]]]] | None = None


def _toward_typical(values: np.ndarray, typical: np.ndarray, completeness: float
                    ) -> np.ndarray:
    """``values`` of a bucket still filling up moved toward ``typical`` by at most
    ``(1 - completeness) * typical`` (ES ``CInterimBucketCorrector::corrections``); a value
    or a typical that is not finite stays as it is."""
    still_to_come = (1.0 - completeness) * typical
    with np.errstate(invalid="ignore"):
        correction = np.clip(typical - values, np.minimum(0.0, still_to_come),
                             np.maximum(0.0, still_to_come))
        present = np.isfinite(values) & np.isfinite(correction)
        return np.where(present, values + correction, values)


class _ColumnModels:
    """:class:`~adjobs.model.SeriesModels` with the bookkeeping a detector needs: the
    first bucket of every column (a count is 0, not missing, only from then on)."""

    def __init__(self, bucket_span_s: int) -> None:
        self.models = SeriesModels(bucket_span_s)
        # room for more columns than there are, doubled when full: a job adding series one
        # by one (a new partition at a time) copies the array O(log n) times, not n times
        self._first_bucket = np.empty(0, dtype=np.int64)

    @property
    def first_bucket(self) -> np.ndarray:
        """The first bucket (start, ms) of every column."""
        return self._first_bucket[:self.models.n_series]

    @property
    def size(self) -> int:
        return self.models.n_series

    @property
    def bytes_per_column(self) -> int:
        return self.models.bytes_per_series + 8

    @property
    def nbytes(self) -> int:
        return self.models.n_series * self.bytes_per_column

    def add_series(self, side: int, statistics: int, first_bucket: int) -> int:
        first = self.models.add_series(side)
        for _ in range(statistics - 1):
            self.models.add_series(side)
        if len(self._first_bucket) < first + statistics:
            grown = np.empty(max(2 * len(self._first_bucket), first + statistics, 16),
                             dtype=np.int64)
            grown[:first] = self._first_bucket[:first]
            self._first_bucket = grown
        self._first_bucket[first:first + statistics] = first_bucket
        return first

    def step(self, values: np.ndarray, bucket_index: np.ndarray,
             probes: tuple[np.ndarray, ...] | None = None,
             counts: np.ndarray | None = None) -> dict:
        # Only cells that can be records need both probabilities exactly (SeriesModels.step).
        return self.models.step(values, bucket_index, probes, counts,
                                lazy_below=_CAN_BE_A_RECORD_BELOW)

    def state(self) -> dict:
        return {**self.models.state(), "first_bucket": self.first_bucket}

    @classmethod
    def from_state(cls, state: dict) -> _ColumnModels:
        models = cls.__new__(cls)
        models._first_bucket = np.array(state["first_bucket"], dtype=np.int64)
        models.models = SeriesModels.from_state(
            {k: v for k, v in state.items() if k != "first_bucket"})
        return models


class _DetectorAnalysis:
    """One detector: its series registry and models."""

    def __init__(self, detector: Detector, config: JobConfig) -> None:
        self.detector = detector
        self.function = detector.function
        self.columns = DetectorColumns.of(detector, config)
        self.statistics = statistics_of(detector.function)
        self.side = side_of(detector.function)
        self.population = bool(detector.over_field_name) and self.function != "rare"
        span_s = config.bucket_span_ms // 1000
        if self.function == "rare":
            self.models: Any = RareModels()
        elif self.population:
            self.models = PopulationModels(
                span_s, self.side, len(self.statistics),
                tuple(j for j, name in enumerate(self.statistics) if name in COUNT_SCALED))
        else:
            self.models = _ColumnModels(span_s)
        #: (partition, by, over) code triple -> first model column of the series.
        self.series: dict[tuple[int, int, int], int] = {}
        #: Population and rare detectors, which model no series of their own: the codes
        #: of the (partition, by, over) values they have seen, one set per field, for the
        #: model size stats' entity counts.
        self.entities: tuple[set[int], set[int], set[int]] = (set(), set(), set())
        #: The buckets (starts, ms) in which a series was not modelled because the memory
        #: limit was reached, in the run analysed last.
        self.refused_buckets = np.empty(0, np.int64)
        #: The first model column of every series by its packed split codes, and the sizes
        #: the codes were packed with (_known_columns); None until needed again.
        self._column_table: tuple[np.ndarray, tuple[int, int, int]] | None = None
        #: (the series dict, its size, _series_columns' answer) as last listed.
        self._series_listing: tuple[dict, int, np.ndarray, dict] | None = None
        categorical = list(config.categorical_fields)
        splits = {detector.partition_field_name, detector.by_field_name,
                  detector.over_field_name}
        #: Influencer fields whose influence on this detector's anomalies is found by
        #: removing a value's records and testing again (ES), and how.
        self.retest_columns = [categorical.index(name) for name in config.influencers
                               if name in categorical and name not in splits]
        self.retest = (RETEST.get(self.statistics[0])
                       if len(self.statistics) == 1 and not self.population
                       and self.function != "rare" and self.retest_columns else None)
        #: While interim results are computed: (start of the incomplete bucket, its
        #: completeness in [0, 1]); None otherwise. Set by :meth:`JobAnalysis.interim`.
        self.incomplete_bucket: tuple[int, float] | None = None

    # -- state ---------------------------------------------------------------------------

    def get_state(self) -> dict:
        keys = np.array(list(self.series), dtype=np.int64).reshape(-1, 3)
        columns = np.array(list(self.series.values()), dtype=np.int64)
        # (field index, code) pairs: 0 partition, 1 by, 2 over
        entities = np.array([(field, code) for field, codes in enumerate(self.entities)
                             for code in sorted(codes)], dtype=np.int64).reshape(-1, 2)
        return {"keys": keys, "columns": columns, "entities": entities,
                "models": self.models.state()}

    def set_state(self, state: dict) -> None:
        self.series = {
            tuple(int(x) for x in key): int(column)
            for key, column in zip(state["keys"], state["columns"], strict=True)
        }
        self.entities = (set(), set(), set())
        # a state saved before entities were kept has none: counted anew from here
        for field, code in state.get("entities", np.empty((0, 2), np.int64)).tolist():
            self.entities[field].add(code)
        self.models = type(self.models).from_state(state["models"])
        self._column_table = None

    def _series_columns(self) -> tuple[np.ndarray, dict[int, tuple[int, int, int]]]:
        """Every series' first model column, ascending, and the series of each such column:
        listed again only after series were added (a series keeps its column)."""
        listing = self._series_listing
        if listing is None or listing[0] is not self.series or listing[1] != len(self.series):
            columns = np.array(sorted(self.series.values()), dtype=np.int64)
            key_of = {column: key for key, column in self.series.items()}
            listing = self._series_listing = (self.series, len(self.series), columns, key_of)
        return listing[2], listing[3]

    @property
    def series_count(self) -> int:
        return len(self.series)

    @property
    def person_field(self) -> str:
        """The person field (ES): ``over`` in population analysis, else ``by`` ("": none)."""
        return self.detector.over_field_name or self.detector.by_field_name or ""

    def person_codes(self, rows: _Rows) -> np.ndarray:
        """Each row's value of :attr:`person_field` (-1, no name, for a detector without)."""
        if self.detector.over_field_name:
            return rows.over
        if self.detector.by_field_name:
            return rows.by
        return np.full(len(rows.bucket), -1, dtype=np.int64)

    # -- analysis ------------------------------------------------------------------------

    def analyse(
        self,
        buckets: np.ndarray,
        span_ms: int,
        times: np.ndarray,
        numeric: np.ndarray,
        codes: np.ndarray,
        weights: np.ndarray | None,
        budget: Callable[[int], bool] = lambda _: True,
    ) -> _Rows:
        """Features of ``buckets`` (ascending starts) from their records, stepped through
        the models; the rows below :data:`RECORD_PROBABILITY`. ``budget(bytes)`` says
        whether a new series of that size may still be modelled (the memory limit)."""
        features = detector_features(
            self.function, self.columns, times, numeric, codes, span_ms, weights
        )
        if self.function == "rare" or self.population:
            for seen, field_codes in zip(self.entities, (features.partition, features.by,
                                                         features.over), strict=True):
                seen.update(np.unique(field_codes[field_codes >= 0]).tolist())
            if (self.population and self.incomplete_bucket is not None
                    and self.function in INTERIM_CORRECTED):
                self._correct_incomplete_persons(features)
            out = self.models.step(features, buckets)
            return self._rows(features, out, buckets)
        return self._series_rows(features, buckets, span_ms, budget, numeric, codes, weights)

    def _known_columns(self, features: Any) -> np.ndarray | None:
        """The first model column of each feature row's series, looked up in a table over
        the packed split codes, when every row's series is known; None otherwise (then new
        series are registered the long way, in the order that gives them their columns)."""
        if not len(features):
            return np.empty(0, dtype=np.int64)
        if not self.series:
            return None
        splits = (features.partition, features.by, features.over)
        # codes are >= -1: shifted by one, a triple packs into one index
        needed = tuple(int(split.max()) + 2 for split in splits)
        if self._column_table is None or any(
                need > size for need, size in zip(needed, self._column_table[1], strict=True)):
            self._column_table = self._column_lookup(needed)
            if self._column_table is None:
                return None
        table, (_, by_size, over_size) = self._column_table
        packed = ((features.partition.astype(np.int64) + 1) * by_size + (features.by + 1)) \
            * over_size + (features.over + 1)
        columns = table[packed]
        return columns if columns.min() >= 0 else None

    def _column_lookup(self, needed: tuple[int, int, int]
                       ) -> tuple[np.ndarray, tuple[int, int, int]] | None:
        """A table for :meth:`_known_columns`, room to spare for codes up to twice those
        ``needed``, if it stays small (2 MiB at most); unknown series hold -1."""
        keys = np.array(list(self.series), dtype=np.int64).reshape(-1, 3) + 1
        sizes = tuple(max(2 * need, int(keys[:, i].max()) + 1, 2)
                      for i, need in enumerate(needed))
        if sizes[0] * sizes[1] * sizes[2] > _COLUMN_TABLE_LIMIT:
            return None
        table = np.full(sizes[0] * sizes[1] * sizes[2], -1, dtype=np.int64)
        table[(keys[:, 0] * sizes[1] + keys[:, 1]) * sizes[2] + keys[:, 2]] = np.fromiter(
            self.series.values(), dtype=np.int64, count=len(self.series))
        return table, sizes

    def _series_rows(
        self, features: Any, buckets: np.ndarray, span_ms: int, budget: Callable[[int], bool],
        numeric: np.ndarray | None = None, codes: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> _Rows:
        k = len(self.statistics)
        row_column = self._known_columns(features)
        if row_column is None:
            unique, first_row, inverse = _unique_series(features)
            first_columns = np.empty(len(unique), dtype=np.int64)
            for i, key in enumerate(map(tuple, unique.tolist())):
                column = self.series.get(key)
                if column is None:
                    if not budget(k * self.models.bytes_per_column):
                        first_columns[i] = -1
                        continue
                    column = self.series[key] = self.models.add_series(
                        self.side, k, int(features.bucket[first_row[i]])
                    )
                first_columns[i] = column
            row_column = first_columns[inverse]
            self._column_table = None  # series were added (or refused): built anew
            if (first_columns < 0).any():
                self.refused_buckets = np.unique(features.bucket[row_column < 0])
        n_columns = self.models.size
        if n_columns == 0 or len(buckets) == 0:
            return _empty_rows(k, np.zeros(len(buckets), dtype=np.int64))
        known = row_column >= 0
        bucket_row = np.searchsorted(buckets, features.bucket)
        values = np.full((len(buckets), n_columns), np.nan)
        if self.function in ZERO_WHEN_EMPTY:
            # A series counts 0 in a bucket without its records, from its first bucket on.
            values[buckets[:, None] >= self.models.first_bucket[None, :]] = 0.0
        for j in range(k):
            values[bucket_row[known], row_column[known] + j] = features.values[known, j]
        counts = None
        scaled = [j for j, statistic in enumerate(self.statistics) if statistic in COUNT_SCALED]
        if scaled:
            counts = np.full(values.shape, np.nan)
            for j in scaled:
                counts[bucket_row[known], row_column[known] + j] = features.count[known]
        if self.incomplete_bucket is not None and self.function in INTERIM_CORRECTED:
            self._correct_incomplete_bucket(values, buckets, span_ms)
        before = self.models.state() if self.retest is not None and codes is not None else None
        out = self.models.step(values, buckets // span_ms, counts=counts)
        p_single, p_multi = out["p_single"], out["p_multi"]
        # A series is as unusual as its most unusual statistic, corrected for k looks.
        series_columns, column_key = self._series_columns()
        if k == 1:
            # one column per series: all of them, in order, unless some are not series
            every = len(series_columns) == n_columns
            p = _record_probabilities(p_single if every else p_single[:, series_columns],
                                      p_multi if every else p_multi[:, series_columns])
            worst = np.zeros(p.shape, dtype=np.intp)
        else:
            combined = scoring.combine_single_multi(p_single, p_multi)
            block = np.stack([combined[:, series_columns + j] for j in range(k)], axis=2)
            block = np.where(np.isnan(block), np.inf, block)
            worst = np.argmin(block, axis=2)
            p = np.take_along_axis(block, worst[..., None], axis=2)[..., 0]
            p = np.where(np.isfinite(p), 1.0 - (1.0 - p) ** k, p)
        evaluated = np.isfinite(p).sum(axis=1)
        hit_bucket, hit_series = np.nonzero(p < RECORD_PROBABILITY)
        if len(hit_bucket) == 0:
            return _empty_rows(k, evaluated)
        columns = series_columns[hit_series]
        stat_index = worst[hit_bucket, hit_series]
        chosen = columns + stat_index
        impact = scoring.multi_bucket_impact(
            p_single[hit_bucket, chosen], p_multi[hit_bucket, chosen]
        )
        if k == 1:
            actual = values[hit_bucket, columns][:, None]
            typical = out["typical"][hit_bucket, columns][:, None]
        else:
            actual = np.stack([values[hit_bucket, columns + j] for j in range(k)], axis=1)
            typical = np.stack([out["typical"][hit_bucket, columns + j] for j in range(k)],
                               axis=1)
        # Back from model columns to series keys and to the feature rows behind them.
        keys = np.array([column_key[c] for c in columns.tolist()], dtype=np.int64)
        # Feature rows are unique per (bucket, column): look the hits up by that key.
        modelled = np.flatnonzero(known)
        row_keys = bucket_row[modelled] * n_columns + row_column[modelled]
        wanted = hit_bucket * n_columns + columns
        feature_row = np.full(len(wanted), -1, dtype=np.int64)
        if len(row_keys):
            order = np.argsort(row_keys, kind="stable")
            at = np.minimum(np.searchsorted(row_keys[order], wanted), len(order) - 1)
            hit = row_keys[order][at] == wanted
            feature_row[hit] = modelled[order[at][hit]]
        return _Rows(
            bucket=buckets[hit_bucket],
            probability=p[hit_bucket, hit_series],
            impact=np.atleast_1d(impact).astype(float),
            actual=actual,
            typical=typical,
            statistic=[self.statistics[i] for i in stat_index.tolist()],
            partition=keys[:, 0],
            by=keys[:, 1],
            over=keys[:, 2],
            feature_row=feature_row,
            features=features,
            evaluated=evaluated,
            influences=None if before is None else self._retest_influences(
                before, values, counts, buckets // span_ms, features, feature_row, hit_bucket,
                columns, p_single, out["typical"], numeric, codes, weights),
        )

    def _retest_influences(
        self, before: dict, values: np.ndarray, counts: np.ndarray | None,
        bucket_index: np.ndarray, features: Any,
        feature_row: np.ndarray, hit_bucket: np.ndarray, columns: np.ndarray,
        p_single: np.ndarray, typical: np.ndarray, numeric: np.ndarray, codes: np.ndarray,
        weights: np.ndarray | None,
    ) -> dict[int, dict[int, list[tuple[int, float]]]]:
        """ES's influence of each influencer value on each record: the record's feature
        without that value's records (or of them alone, for min and max), judged again by
        the model against the state the bucket met; ``1 - ln p_rest / ln p`` (or
        ``ln p_own / ln p``), in [0, 1]. One value, or a single-bucket probability of 1,
        gives every value influence 1 (ES). The models are stepped again from ``before``
        with the same values, which leaves them where the first step did."""
        statistic = self.statistics[0]
        complement = self.retest == "complement"
        influences: dict[int, dict[int, list[tuple[int, float]]]] = {}
        probe_rows, probe_series, probe_values, probe_counts, owners = [], [], [], [], []
        for i, (row, column, frow) in enumerate(zip(hit_bucket.tolist(), columns.tolist(),
                                                    feature_row.tolist(), strict=True)):
            if frow < 0:
                continue
            first, size = int(features.first[frow]), int(features.size[frow])
            members = features.order[first:first + size]
            p_record = p_single[row, column]
            influences[i] = {c: [] for c in self.retest_columns}
            if statistic in RETEST_HIGH_ONLY and not values[row, column] > typical[row, column]:
                continue  # a drop in a count or sum: ES names no influencer
            for c in self.retest_columns:
                present, alternatives, alternative_counts = influence_alternatives(
                    statistic, complement, self.columns, numeric, weights, members,
                    codes[members, c])
                if len(present) <= 1 or not p_record < 1.0:
                    influences[i][c] = [(code, 1.0) for code in present.tolist()]
                    continue
                tested = np.isfinite(alternatives)  # a mean of no records: ES skips it
                probe_rows.extend([row] * int(tested.sum()))
                probe_series.extend([column] * int(tested.sum()))
                probe_values.extend(alternatives[tested].tolist())
                # only a mean or a variance is judged by its records (as the cell's own value)
                probe_counts.extend(alternative_counts[tested].tolist()
                                    if statistic in COUNT_SCALED
                                    else [np.nan] * int(tested.sum()))
                owners.extend((i, c, code) for code in present[tested].tolist())
        if owners:
            self.models = type(self.models).from_state(before)
            again = self.models.step(values, bucket_index, probes=(
                np.array(probe_rows), np.array(probe_series), np.array(probe_values),
                np.array(probe_counts, dtype=np.float64)), counts=counts)
            for (i, c, code), p_other in zip(owners, again["probe_p"].tolist(), strict=True):
                log_p = np.log(max(p_single[hit_bucket[i], columns[i]], SMALLEST))
                ratio = np.log(max(p_other, SMALLEST)) / log_p
                influence = 1.0 - ratio if complement else ratio
                influences[i][c].append((code, min(max(influence, 0.0), 1.0)))
        return influences

    def _correct_incomplete_bucket(
        self, values: np.ndarray, buckets: np.ndarray, span_ms: int
    ) -> None:
        """Move the incomplete bucket's values toward what the models expect there, by at
        most ``(1 - completeness) * typical`` (ES ``CInterimBucketCorrector::corrections``).

        The typical value of a bucket does not depend on the bucket's own value, so one
        probing step (its state thrown away) gives it."""
        start, completeness = self.incomplete_bucket
        row = int(np.searchsorted(buckets, start))
        if row >= len(buckets) or buckets[row] != start or completeness >= 1.0:
            return
        saved = self.models.state()
        typical = self.models.step(values, buckets // span_ms)["typical"][row]
        self.models = type(self.models).from_state(saved)
        values[row] = _toward_typical(values[row], typical, completeness)

    def _correct_incomplete_persons(self, features: Any) -> None:
        """The population form of :meth:`_correct_incomplete_bucket`: each person's value in
        the incomplete bucket moves toward its attribute's learnt location (what the
        population model expects of a person), by at most ``(1 - completeness)`` of it."""
        start, completeness = self.incomplete_bucket
        rows = np.flatnonzero(features.bucket == start)
        if completeness >= 1.0 or not len(rows):
            return
        models = self.models
        typical = np.full((len(rows), features.values.shape[1]), np.nan)
        for i, key in enumerate(zip(features.partition[rows].tolist(),
                                    features.by[rows].tolist(), strict=True)):
            attribute = models.attributes.get(key)
            if attribute is not None and models.weight[attribute] > 0:
                typical[i] = models.location[attribute]
        features.values[rows] = _toward_typical(features.values[rows], typical, completeness)

    def _rows(self, features: Any, out: dict, buckets: np.ndarray) -> _Rows:
        """Rows of the population and rare models, which score feature rows directly."""
        p = out["probability"]
        hit = np.flatnonzero(p < RECORD_PROBABILITY)
        k = len(self.statistics)
        return _Rows(
            bucket=features.bucket[hit],
            probability=p[hit],
            impact=np.full(len(hit), -5.0),
            actual=features.values[hit].reshape(len(hit), k),
            typical=out["typical"][hit].reshape(len(hit), k),
            statistic=[self.statistics[int(i)] for i in out["statistic"][hit]],
            partition=features.partition[hit],
            by=features.by[hit],
            over=features.over[hit],
            feature_row=hit,
            features=features,
            evaluated=np.bincount(np.searchsorted(buckets, features.bucket),
                                  minlength=len(buckets))[:len(buckets)],
        )


@dataclass
class _ListedRows:
    """What a record document takes from a detector's :class:`_Rows`, as Python values (the
    same values; reading numpy arrays one item at a time costs more than listing them)."""

    impact: list[float]
    actual: list[list[float]]
    typical: list[list[float]]
    partition: list[int]
    by: list[int]
    over: list[int]
    feature_row: list[int]

    @classmethod
    def of(cls, rows: _Rows) -> _ListedRows:
        return cls(rows.impact.tolist(), rows.actual.tolist(), rows.typical.tolist(),
                   rows.partition.tolist(), rows.by.tolist(), rows.over.tolist(),
                   np.asarray(rows.feature_row).tolist())


def _record_probabilities(p_single: np.ndarray, p_multi: np.ndarray) -> np.ndarray:
    """:func:`scoring.combine_single_multi` of the cells that can be records (below
    :data:`RECORD_PROBABILITY`), +inf for cells without a probability, and 1 for the others
    (the combination is never below the smaller of the two, so they cannot be records)."""
    lower = np.fmin(p_single, p_multi)  # NaN only where both are
    p = np.where(np.isnan(lower), np.inf, 1.0)
    could = lower < RECORD_PROBABILITY
    if could.any():  # (most buckets of a quiet series have none)
        p[could] = scoring.combine_single_multi(p_single[could], p_multi[could])
    return p


def _unique_series(features: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (partition, by, over) code triples of the feature rows, in ascending
    order, with the first row and the index of each row's triple (``np.unique(axis=0)``)."""
    triples = (features.partition, features.by, features.over)
    # Codes are >= -1: shifted by one, the triple packs into one int64 in the same order,
    # and a 1-D unique is much cheaper than one over rows.
    sizes = [int(split.max()) + 2 for split in triples]
    if sizes[0] * sizes[1] * sizes[2] >= 2**62:
        stacked = np.stack(triples, axis=1)
        unique, first_row, inverse = np.unique(stacked, axis=0, return_index=True,
                                               return_inverse=True)
        return unique, first_row, inverse.reshape(-1)
    packed = np.zeros(len(features), dtype=np.int64)
    for split, size in zip(triples, sizes, strict=True):
        packed = packed * size + (split.astype(np.int64) + 1)
    # np.unique(packed, return_index=True, return_inverse=True), from the same stable
    # order but sorted by stable_groups (a radix sort for the usual few thousand series).
    order, starts = stable_groups([packed])
    first_row = order[starts]
    new_series = np.zeros(len(order), dtype=np.intp)
    new_series[starts] = 1
    inverse = np.empty(len(order), dtype=np.intp)
    inverse[order] = np.cumsum(new_series) - 1
    unique = np.stack([split[first_row] for split in triples], axis=1)
    return unique, first_row, inverse


def _scope_key(*parts: str) -> str:
    """A fixed-width key for a tuple of names: the parts are length-prefixed, so no two
    tuples share a key whatever characters the values hold, and the normaliser's scope table
    stays 32 characters a scope however long the values are. Short names (the usual case,
    the same few per bucket) come from a bounded cache."""
    if sum(map(len, parts)) <= _CACHED_SCOPE_CHARS:
        return _cached_digest(parts)
    return _digest(parts)


#: Scope names up to this many characters in all are digested once and cached.
_CACHED_SCOPE_CHARS = 256


def _digest(parts: tuple[str, ...]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


_cached_digest = functools.lru_cache(maxsize=1 << 14)(_digest)


def record_scope(partition_field: str, partition_value: str, person_field: str,
                 person_value: str) -> str:
    """The scope of a record's maximum score (A.6 ceiling 3), as ES's ``CMaximumScoreScope``:
    its partition field and value and its person field and value (the ``over`` field of a
    population detector, else the ``by`` field). A detector with neither split has the one
    scope ""."""
    if not partition_field and not person_field:
        return ""
    return _scope_key(partition_field, partition_value, person_field, person_value)


def influencer_scope(field_name: str, field_value: str) -> str:
    """The scope of an influencer's maximum score: its field and value (ES scopes an
    influencer result by both), so one value's big anomaly does not hold down another's."""
    return _scope_key(field_name, field_value)


def _identity(doc: dict) -> dict:
    """The fields that name a stored record or influencer (adjobs.results.update_scores)."""
    keys = ("result_type", "timestamp", "detector_index", "partition_field_value",
            "by_field_value", "over_field_value", "influencer_field_name",
            "influencer_field_value")
    return {key: doc[key] for key in keys if key in doc}


def _big_bucket_updates(old: list[float], fresh: np.ndarray, buckets: list[int]
                        ) -> tuple[list[float], set[int]]:
    """Bucket influencers' renormalised scores as ES writes them: each takes its ``fresh``
    score where that is a big update of its ``old`` one (scoring.big_updates) and keeps the
    old one elsewhere; a bucket (``buckets`` names each item's) is rewritten when one of its
    bucket influencers had a big update. Returns the scores and the buckets to rewrite."""
    big = scoring.big_updates(old, fresh).tolist()
    scores = [new if changed else was
              for new, was, changed in zip(fresh.tolist(), old, big, strict=True)]
    return scores, {bucket for bucket, changed in zip(buckets, big, strict=True) if changed}


def _empty_rows(k: int, evaluated: np.ndarray) -> _Rows:
    none = np.empty(0, dtype=np.int64)
    return _Rows(
        evaluated=evaluated,
        bucket=none,
        probability=np.empty(0),
        impact=np.empty(0),
        actual=np.empty((0, k)),
        typical=np.empty((0, k)),
        statistic=[],
        partition=none,
        by=none,
        over=none,
        feature_row=none,
        features=None,
    )


class _ScoredRun:
    """Every record of a run of buckets with what each level's normaliser is given, flat and
    in bucket order, so that a run of a few hundred buckets costs a few numpy calls rather
    than several per bucket.

    Records are kept most unlikely first within their bucket (ties in detector and row
    order), at most :data:`MAX_RECORDS_PER_BUCKET` a bucket. A bucket *scores* if it keeps a
    record. Per scoring bucket: its influencers, one per (field, value) of its records'
    influencers, as unlikely as the most unlikely of those records, in order of first
    appearance; its bucket influencers, ``bucket_time`` over all its records and then one
    per influencer field with influencers, each the least extreme probability of its group.
    """

    def __init__(self, bucket_count: int) -> None:
        self.bucket_count = bucket_count
        #: Each detector's rows as Python values (None for a detector without any).
        self.listed: list[_ListedRows | None] = []
        #: Records: detector, row in that detector's rows, bucket position, probability,
        #: max-score scope, influencers (field, value code).
        self.detector: list[int] = []
        self.row: list[int] = []
        self.bucket = np.empty(0, dtype=np.int64)
        self.probability = np.empty(0)
        self.scopes: list[str] = []
        self.influencers: list[list[tuple[str, int]]] = []
        #: Influencers: bucket position, (field, value code), probability, scope.
        self.influencer_bucket: list[int] = []
        self.influencer_keys: list[tuple[str, int]] = []
        self.influencer_probability = np.empty(0)
        self.influencer_scopes: list[str] = []
        #: Bucket influencers: bucket position, field name, probability.
        self.field_bucket: list[int] = []
        self.field_names: list[str] = []
        self.field_probability = np.empty(0)
        self._counts: tuple[list[int], list[int], list[int]] | None = None

    def raw_scores(self) -> None:
        """Raw scores of every level, in one call (elementwise: as level by level)."""
        levels = (self.probability, self.influencer_probability, self.field_probability)
        raw = np.atleast_1d(scoring.raw_score(np.concatenate(levels)))
        first, second = len(levels[0]), len(levels[0]) + len(levels[1])
        self.raw, self.influencer_raw, self.field_raw = raw[:first], raw[first:second], raw[second:]

    def counts(self) -> tuple[list[int], list[int], list[int]]:
        """Records, influencers and bucket influencers per bucket of the run, as :meth:`walk`
        counts them with its steps (counted so here if it has not walked yet)."""
        if self._counts is None:
            self._counts = tuple(_normaliser.level_steps(
                self.bucket, self.influencer_bucket, self.field_bucket,
                np.zeros(self.bucket_count, dtype=np.int64))[1].tolist())
        return self._counts

    def walk(self, normalisers: dict[str, scoring.Normaliser], evaluated: np.ndarray
             ) -> tuple[dict[str, np.ndarray], bool]:
        """Each level's normaliser stepped through the run (Normaliser.walk), every score
        normalised against the state right after its bucket; whether a step was a big
        change. A scoring bucket is a step of its own at every level; the buckets between
        are one quiet step per run of them. The series (or values) that were not unusual
        score 0: they count in the quantiles as zeros."""
        if self.bucket_count == 0:
            self._counts = ([], [], [])
            return {level: np.empty(0) for level in LEVELS}, False
        levels, counts = _normaliser.level_steps(self.bucket, self.influencer_bucket,
                                                 self.field_bucket, evaluated)
        self._counts = tuple(counts.tolist())
        steps = dict(zip(LEVELS, levels, strict=True))
        given = {"record": (self.raw, self.scopes),
                 "influencer": (self.influencer_raw, self.influencer_scopes),
                 "bucket": (self.field_raw, self.field_names)}
        scores: dict[str, np.ndarray] = {}
        big_change = False
        for level in LEVELS:
            raw, scopes = given[level]
            # raw scores as raw_score gives them, steps as level_steps does
            scores[level], big = normalisers[level].walk_checked(raw, scopes, *steps[level])
            big_change |= bool(big.any())
        return scores, big_change


@dataclass
class _RunScores:
    """What rescoring needs of the finalised documents of one run, as arrays in the order of
    the documents (:meth:`JobAnalysis.rescore_batch` reads these rather than the documents,
    which by then are scattered through memory): the time, raw score, score as written and
    scope of every record and influencer; the buckets with bucket influencers and those."""

    bucket_count: int
    record_time: np.ndarray
    record_raw: np.ndarray
    record_score: np.ndarray
    record_scopes: list[str]
    #: (detector, partition code, by code, over code) of every record: its identity.
    record_codes: np.ndarray
    influencer_time: np.ndarray
    influencer_raw: np.ndarray
    influencer_score: np.ndarray
    influencer_scopes: list[str]
    influencer_keys: list[tuple[str, int]]
    #: Positions in the run of the buckets with bucket influencers, their times and how
    #: many bucket influencers each has.
    scored_bucket: np.ndarray
    scored_time: np.ndarray
    field_count: np.ndarray
    field_raw: np.ndarray
    field_score: np.ndarray
    field_names: list[str]

    @classmethod
    def of(cls, run: _ScoredRun, found: list[_Rows], buckets: np.ndarray,
           scores: dict[str, np.ndarray]) -> _RunScores:
        fields = np.asarray(run.counts()[2], dtype=np.int64)
        detector = np.asarray(run.detector, dtype=np.int64)
        row = np.asarray(run.row, dtype=np.int64)
        codes = np.empty((len(detector), 4), dtype=np.int64)
        codes[:, 0] = detector
        for d, rows in enumerate(found):
            mine = np.flatnonzero(detector == d)
            if len(mine):
                for j, split in enumerate((rows.partition, rows.by, rows.over), start=1):
                    codes[mine, j] = np.asarray(split, dtype=np.int64)[row[mine]]
        scored = np.flatnonzero(fields > 0)
        return cls(
            bucket_count=len(buckets),
            record_time=buckets[run.bucket], record_raw=run.raw,
            record_score=scores["record"], record_scopes=run.scopes, record_codes=codes,
            influencer_time=buckets[np.asarray(run.influencer_bucket, dtype=np.int64)],
            influencer_raw=run.influencer_raw, influencer_score=scores["influencer"],
            influencer_scopes=run.influencer_scopes, influencer_keys=run.influencer_keys,
            scored_bucket=scored, scored_time=buckets[scored], field_count=fields[scored],
            field_raw=run.field_raw,
            field_score=scores["bucket"], field_names=run.field_names)


#: The first bytes of a state blob written by :func:`_pack_state`. Blobs written before it
#: are ``np.savez`` zip files, which start with ``b"PK"``; :func:`_unpack_state` reads both.
_STATE_MAGIC = b"ADJOBS-STATE\x00\x00\x00\x01"
#: Each array's bytes start at a multiple of this from the start of the blob.
_STATE_ALIGNMENT = 8


def _pack_state(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """``meta`` (JSON) and ``arrays`` as one blob: the magic, the length of a JSON header
    (little-endian uint64), the header, then each array's raw bytes, C order, aligned.

    ``np.savez`` wrote a zip member with an npy header per array, which cost more than the
    rest of a commit's state: this is one ``json.dumps`` and one join.
    """
    layout = []
    parts: list[Any] = []
    offset = 0
    for name, value in arrays.items():
        array = np.asarray(value)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would make 0-d arrays 1-d)
            array = array.copy(order="C")
        if array.dtype.hasobject or array.dtype.fields is not None:
            raise ValueError(f"state array {name!r} has dtype {array.dtype}, not a plain one")
        layout.append([name, array.dtype.str, list(array.shape)])
        parts.append(array.data if array.nbytes else b"")
        offset += array.nbytes
        padding = -offset % _STATE_ALIGNMENT
        if padding:
            parts.append(bytes(padding))
            offset += padding
    described = {"meta": meta, "arrays": layout}
    # Compact JSON from the compiled writer of result documents, json's where it declines
    # (a non-finite float): either reads back the same.
    header = (_jsontext.encode(described) or json.dumps(described)).encode()
    header += b" " * (-(len(_STATE_MAGIC) + 8 + len(header)) % _STATE_ALIGNMENT)
    return b"".join([_STATE_MAGIC, len(header).to_bytes(8, "little"), header, *parts])


def _unpack_state(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``meta`` and arrays of a state blob: one of :func:`_pack_state`'s, or an
    ``np.savez`` zip of older versions (its ``meta`` array holding the JSON). The arrays are
    writable copies, owned by the caller."""
    if not blob.startswith(_STATE_MAGIC):
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            return meta, {name: data[name] for name in data.files if name != "meta"}
    start = len(_STATE_MAGIC) + 8
    length = int.from_bytes(blob[len(_STATE_MAGIC):start], "little")
    header = json.loads(blob[start:start + length])
    offset = start + length
    arrays: dict[str, np.ndarray] = {}
    for name, dtype_str, shape in header["arrays"]:
        dtype = np.dtype(dtype_str)
        count = math.prod(shape)
        arrays[name] = np.frombuffer(blob, dtype=dtype, count=count,
                                     offset=offset).reshape(tuple(shape)).copy()
        offset += count * dtype.itemsize
        offset += -offset % _STATE_ALIGNMENT
    if offset != len(blob):
        raise ValueError(f"a state blob of {len(blob)} bytes whose header describes {offset}")
    return header["meta"], arrays


class JobAnalysis:
    """The analysis of one open job. Not thread-safe: the service holds the job's lock."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self.job_id = config.job_id
        self.span_ms = config.bucket_span_ms
        self.span_s = config.bucket_span_ms // 1000
        self.latency_ms = config.latency_ms
        self.detectors = [_DetectorAnalysis(d, config) for d in config.detectors]
        categorical = list(config.categorical_fields)
        numeric = list(config.numeric_fields)
        self.influencer_columns = [
            (name, categorical.index(name)) for name in config.influencers if name in categorical
        ]
        self.summary_column = (
            numeric.index(config.summary_count_field_name)
            if config.summary_count_field_name in numeric
            else -1
        )
        #: One normaliser per level of results (A.6): each has its own quantiles.
        self.normalisers = {level: scoring.Normaliser(self.span_s) for level in LEVELS}
        #: Start of the first bucket not finalised yet (None before any record).
        self.next_bucket: int | None = None
        #: Records of buckets not finalised yet, as chunks of (times, numeric, codes).
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending = ResultBatch()
        #: The scores of pending's documents, a run at a time (finalise); take_pending hands
        #: them out with the batch (its ``scores``), for rescore_batch.
        self._pending_scores: list[_RunScores] = []
        #: A normaliser's maximum grew by more than 10%: older scores are re-normalised at
        #: the next commit (A.6).
        self.renormalise = False
        #: While the results stored by earlier commits wait to be re-normalised (an
        #: upload's commit rescores its own results, the next flush or close the stored ones
        #: too, as ES's flush and close wait for its renormaliser and an upload does not):
        #: the earliest start (ms) of the windows due since, which the settling pass reaches
        #: back to however far the window has moved meanwhile (as ES's renormaliser widens
        #: its window to the earliest change it merged). None when none wait.
        self.behind_since: int | None = None
        #: Whether a commit has written results (before that, none wait to be rescored).
        self.results_written = False
        days = config.renormalization_window_days
        self.renormalization_window_ms = (
            days * 86_400_000 if days is not None
            else max(30 * 86_400_000, 100 * config.bucket_span_ms)
        )
        self.memory_limit_bytes = config.model_memory_limit_mb * 1024 * 1024
        self.memory_status = "ok"
        self.allocation_failures = 0
        #: The latest bucket counted in allocation_failures, and the bytes by which the
        #: last refused allocation went over the limit.
        self.last_failure_bucket: int | None = None
        self.bytes_exceeded = 0
        self.peak_model_bytes = 0
        self.bucket_count = 0
        self.total_processing_ms = 0.0
        self.average_processing_ms: float | None = None
        self.names: list[str] = []
        #: The code of the empty value, once a record had one: ES takes an empty field
        #: value for a missing one (no series, no influencer; a null one with use_null).
        self.empty_code: int | None = None
        #: Decayed sum of the record counts of finalised buckets and of their weights: the
        #: expected count of a whole bucket, against which an interim bucket's completeness
        #: is measured.
        self.final_count_sum = 0.0
        self.final_count_weight = 0.0

    # -- input ---------------------------------------------------------------------------

    def add_records(self, times: np.ndarray, numeric: np.ndarray, codes: np.ndarray) -> None:
        """Buffer a batch of processed records; finalise the buckets they complete."""
        if len(times) == 0:
            return
        if self.empty_code is not None:
            codes = np.where(codes == self.empty_code, -1, codes).astype(codes.dtype, copy=False)
        if self.next_bucket is not None:
            # Records of finalised buckets (possible with latency) are ignored, as ES does.
            keep = times >= self.next_bucket
            if not keep.all():
                times, numeric, codes = times[keep], numeric[keep], codes[keep]
                if len(times) == 0:
                    return
        else:
            self.next_bucket = int(times.min()) // self.span_ms * self.span_ms
        self._chunks.append((times, numeric, codes))
        if len(self._chunks) > _COMPACT_CHUNKS:
            self._compact()
        latest = int(times.max())
        boundary = (latest - self.latency_ms) // self.span_ms * self.span_ms
        if boundary > self.next_bucket:
            self.finalise(boundary)

    def _compact(self) -> None:
        if len(self._chunks) > 1:
            self._chunks = [
                (
                    np.concatenate([c[0] for c in self._chunks]),
                    np.concatenate([c[1] for c in self._chunks]),
                    np.concatenate([c[2] for c in self._chunks]),
                )
            ]

    def _take_before(self, boundary: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return the buffered records of buckets starting before ``boundary``."""
        self._compact()
        if not self._chunks:
            # No records held (a second advance_time, or skip_time before any data): the
            # empty arrays keep the ingest core's column counts, which the features index.
            return (np.empty(0, np.int64),
                    np.empty((0, len(self.config.numeric_fields)), np.float64),
                    np.empty((0, len(self.config.categorical_fields)), np.int32))
        times, numeric, codes = self._chunks[0]
        before = times < boundary
        count = int(np.count_nonzero(before))
        if before[:count].all():
            # Records in time order (the usual case): the records taken are a prefix, and
            # slices cost nothing where a mask would copy every array.
            taken = times[:count], numeric[:count], codes[:count]
            rest = times[count:], numeric[count:], codes[count:]
            self._chunks = [rest] if count < len(times) else []
            return taken
        taken = times[before], numeric[before], codes[before]
        after = ~before
        self._chunks = [(times[after], numeric[after], codes[after])] if after.any() else []
        return taken

    # -- finalising -----------------------------------------------------------------------

    def finalise(self, boundary: int) -> None:
        """Finalise every bucket that starts before ``boundary``."""
        if self.next_bucket is None or boundary <= self.next_bucket:
            return
        started = time.perf_counter()
        times, numeric, codes = self._take_before(boundary)
        buckets = self._bucket_range(self.next_bucket, boundary, times)
        events = event_counts(times, self.span_ms)
        results, scores = self._analyse(buckets, times, numeric, codes, events, interim=False)
        results.replaces_interim = True
        self.pending.extend(results)
        self._pending_scores.append(scores)
        self.next_bucket = boundary
        self._learn_bucket_counts(buckets, *events)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self._time(len(buckets), elapsed_ms)

    def _learn_bucket_counts(self, buckets: np.ndarray, event_buckets: np.ndarray,
                             event_count: np.ndarray) -> None:
        """Add the finalised buckets' record counts (:func:`event_counts` of their records)
        to the decayed mean, oldest first."""
        if len(buckets) == 0:
            return
        counts = np.zeros(len(buckets), dtype=np.int64)
        counts[np.searchsorted(buckets, event_buckets)] = event_count
        keep = np.exp(-BUCKET_COUNT_DECAY * self.span_s / scoring.STANDARD_BUCKET_LENGTH)
        ages = np.arange(len(buckets) - 1, -1, -1, dtype=np.float64)
        weights = keep**ages
        aged = keep ** len(buckets)
        self.final_count_sum = self.final_count_sum * aged + float(weights @ counts)
        self.final_count_weight = self.final_count_weight * aged + float(weights.sum())

    def completeness(self, bucket_records: int) -> float:
        """How complete a bucket with ``bucket_records`` records so far probably is: the
        ratio to the mean count of finalised buckets, in [0, 1]; 1 before any history."""
        if self.final_count_weight <= 0.0 or self.final_count_sum <= 0.0:
            return 1.0
        expected = self.final_count_sum / self.final_count_weight
        return min(max(bucket_records / expected, 0.0), 1.0)

    def reset_buckets(self, start: int, end: int) -> None:
        """``reset_start``/``reset_end``: forget the records held for the buckets in
        [``start``, ``end``) (widened to whole buckets) that are not finalised yet, so the
        data posted next makes them anew. As in ES, a finalised bucket cannot be reset: its
        records are gone, and so it keeps its results."""
        if self.next_bucket is None:
            return
        first = max(start // self.span_ms * self.span_ms, self.next_bucket)
        stop = -(-end // self.span_ms) * self.span_ms
        if first >= stop:
            return
        self._compact()
        if not self._chunks:
            return
        times, numeric, codes = self._chunks[0]
        keep = (times < first) | (times >= stop)
        if not keep.all():
            self._chunks = [(times[keep], numeric[keep], codes[keep])] if keep.any() else []

    def skip(self, until: int) -> None:
        """``skip_time``: drop the buffered records before ``until``; no results, no learning."""
        self._take_before(until)
        self.next_bucket = until if self.next_bucket is None else max(self.next_bucket, until)

    def interim(self, start: int | None = None, end: int | None = None) -> ResultBatch:
        """Results for the buckets not finalised yet, from what they hold so far
        (``calc_interim``); with ``start``/``end`` (ms), only for the buckets that overlap
        [start, end). Nothing is learnt; the final results replace them."""
        if self.next_bucket is None or not self._chunks:
            return ResultBatch(replaces_interim=True)
        self._compact()
        times, numeric, codes = self._chunks[0]
        last = int(times.max()) // self.span_ms * self.span_ms
        first, stop = self.next_bucket, last + self.span_ms
        if start is not None:
            first = max(first, start // self.span_ms * self.span_ms)
        if end is not None:
            stop = min(stop, -(-end // self.span_ms) * self.span_ms)
        if stop <= first:
            return ResultBatch(replaces_interim=True)
        if (first, stop) != (self.next_bucket, last + self.span_ms):
            inside = (times >= first) & (times < stop)
            times, numeric, codes = times[inside], numeric[inside], codes[inside]
        buckets = self._bucket_range(first, stop, times)
        saved = [d.get_state() for d in self.detectors]
        normalisers = {level: n.to_state() for level, n in self.normalisers.items()}
        incomplete = (last, self.completeness(int(np.count_nonzero(times >= last))))
        try:
            for detector in self.detectors:
                detector.incomplete_bucket = incomplete
            results, _ = self._analyse(buckets, times, numeric, codes,
                                       event_counts(times, self.span_ms), interim=True)
        finally:
            for detector, state in zip(self.detectors, saved, strict=True):
                detector.incomplete_bucket = None
                detector.set_state(state)
            self.normalisers = {level: scoring.Normaliser.from_state(state)
                                for level, state in normalisers.items()}
        results.replaces_interim = True
        return results

    def _bucket_range(self, first: int, boundary: int, times: np.ndarray) -> np.ndarray:
        count = (boundary - first) // self.span_ms
        if count <= MAX_EMPTY_BUCKETS:
            return first + self.span_ms * np.arange(count, dtype=np.int64)
        # A long gap: only the buckets that hold records.
        return np.unique(times // self.span_ms * self.span_ms)

    def _time(self, buckets: int, elapsed_ms: float) -> None:
        if buckets <= 0:
            return
        self.bucket_count += buckets
        self.total_processing_ms += elapsed_ms
        per_bucket = elapsed_ms / buckets
        if self.average_processing_ms is None:
            self.average_processing_ms = per_bucket
        else:
            # ES: an exponential average with a factor of 0.01 per bucket.
            alpha = 1 - 0.99**buckets
            self.average_processing_ms += alpha * (per_bucket - self.average_processing_ms)

    # -- one run of buckets -------------------------------------------------------------

    def _analyse(
        self,
        buckets: np.ndarray,
        times: np.ndarray,
        numeric: np.ndarray,
        codes: np.ndarray,
        events: tuple[np.ndarray, np.ndarray],
        *,
        interim: bool,
    ) -> tuple[ResultBatch, _RunScores]:
        """The documents of ``buckets`` and their scores (:class:`_RunScores`)."""
        weights = numeric[:, self.summary_column] if self.summary_column >= 0 else None
        used = [self.model_bytes()]

        def budget(more: int) -> bool:
            if used[0] + more > self.memory_limit_bytes:
                # ES's model_bytes_exceeded: by how much the last refused allocation went over
                self.bytes_exceeded = used[0] + more - self.memory_limit_bytes
                return False
            used[0] += more
            return True

        for detector in self.detectors:
            detector.refused_buckets = detector.refused_buckets[:0]
        found = [
            detector.analyse(buckets, self.span_ms, times, numeric, codes, weights, budget)
            for detector in self.detectors
        ]
        refused = np.unique(np.concatenate([d.refused_buckets for d in self.detectors]))
        if len(refused):
            # ES counts the buckets in which new entities could not be allocated, each once
            # (an interim run's buckets are not counted again when finalised).
            self.memory_status = "hard_limit"
            if self.last_failure_bucket is not None:
                refused = refused[refused > self.last_failure_bucket]
            if len(refused):
                self.allocation_failures += len(refused)
                self.last_failure_bucket = int(refused[-1])
        # the records of each bucket that has any: (bucket starts, counts), from event_counts
        event_count = dict(zip(events[0].tolist(), events[1].tolist(), strict=True))
        evaluated = sum(rows.evaluated for rows in found)
        run = self._score_run(found, buckets, codes)
        # Each level is updated and normalised over the whole run at once, each bucket
        # against the state right after it (Normaliser.walk); then the documents.
        scores, big_change = run.walk(self.normalisers, evaluated)
        self.renormalise |= big_change
        return (self._documents(run, found, buckets, event_count, scores, interim),
                _RunScores.of(run, found, buckets, scores))

    def _bucket_doc(self, bucket: int, score: float, event_count: int, interim: bool,
                    bucket_influencers: list[dict]) -> dict:
        return {
            "job_id": self.job_id,
            "timestamp": bucket,
            "anomaly_score": score,
            "bucket_span": self.span_s,
            "initial_anomaly_score": score,
            "event_count": int(event_count),
            "is_interim": interim,
            "bucket_influencers": bucket_influencers,
            "processing_time_ms": 0,
            "result_type": "bucket",
        }

    def _name(self, code: int) -> str:
        return self.names[code] if 0 <= code < len(self.names) else ""

    def _score_run(self, found: list[_Rows], buckets: np.ndarray,
                   codes: np.ndarray) -> _ScoredRun:
        """The probabilities of every level of a run of buckets (:class:`_ScoredRun`), and
        their raw scores."""
        run = _ScoredRun(len(buckets))
        sizes = [len(rows.bucket) for rows in found]
        run.listed = [_ListedRows.of(rows) if size else None
                      for rows, size in zip(found, sizes, strict=True)]
        if sum(sizes):
            detector = np.repeat(np.arange(len(found)), sizes)
            row = np.concatenate([np.arange(size) for size in sizes])
            probability = np.concatenate([np.asarray(rows.probability, dtype=float)
                                          for rows in found])
            bucket = np.searchsorted(buckets, np.concatenate([rows.bucket for rows in found]))
            # Most unlikely first within a bucket; ties stay in detector and row order.
            order = np.lexsort((probability, bucket))
            bucket = bucket[order]
            starts = np.empty(len(order), dtype=bool)
            starts[:1] = True
            np.not_equal(bucket[1:], bucket[:-1], out=starts[1:])
            position = np.arange(len(order))
            rank = position - np.maximum.accumulate(np.where(starts, position, 0))
            kept = rank < MAX_RECORDS_PER_BUCKET
            order, run.bucket = order[kept], bucket[kept]
            run.detector, run.row = detector[order].tolist(), row[order].tolist()
            run.probability = probability[order]
            self._record_scopes_and_influencers(run, found, codes)
            self._influencers_and_fields(run)
        run.raw_scores()
        return run

    def _record_scopes_and_influencers(self, run: _ScoredRun, found: list[_Rows],
                                       codes: np.ndarray) -> None:
        scope_of: dict[tuple[int, int, int], str] = {}
        for d, r in zip(run.detector, run.row, strict=True):
            analysis, listed = self.detectors[d], run.listed[d]
            person = (listed.over[r] if analysis.detector.over_field_name
                      else listed.by[r] if analysis.detector.by_field_name else -1)
            key = (d, listed.partition[r], person)
            scope = scope_of.get(key)
            if scope is None:
                scope = scope_of[key] = record_scope(
                    analysis.detector.partition_field_name or "", self._name(key[1]),
                    analysis.person_field, self._name(key[2]))
            run.scopes.append(scope)
            run.influencers.append(self._influencers_of(analysis.detector, found[d], listed, r,
                                                        codes))

    def _influencers_and_fields(self, run: _ScoredRun) -> None:
        """Each scoring bucket's influencers and its bucket influencers' probabilities."""
        probabilities = run.probability.tolist()
        record_bucket = run.bucket.tolist()
        # every bucket influencer's probabilities, one group after the other
        grouped: list[float] = []
        group_sizes: list[int] = []
        influencer_probability: list[float] = []
        start = 0
        while start < len(record_bucket):
            bucket = record_bucket[start]
            end = start + 1
            while end < len(record_bucket) and record_bucket[end] == bucket:
                end += 1
            # Records are most unlikely first: an influencer is as unlikely as the record
            # it first appears in.
            first_seen: dict[tuple[str, int], float] = {}
            for i in range(start, end):
                for key in run.influencers[i]:
                    if key not in first_seen:
                        first_seen[key] = probabilities[i]
            run.influencer_bucket.extend([bucket] * len(first_seen))
            run.influencer_keys.extend(first_seen)
            influencer_probability.extend(first_seen.values())
            run.field_bucket.append(bucket)
            run.field_names.append("bucket_time")
            grouped.extend(probabilities[start:end])
            group_sizes.append(end - start)
            for name, _ in self.influencer_columns:
                mine = [p for (field_name, _), p in first_seen.items() if field_name == name]
                if mine:
                    run.field_bucket.append(bucket)
                    run.field_names.append(name)
                    grouped.extend(mine)
                    group_sizes.append(len(mine))
            start = end
        run.influencer_probability = np.array(influencer_probability, dtype=float)
        run.influencer_scopes = [influencer_scope(name, self._name(code))
                                 for name, code in run.influencer_keys]
        run.field_probability = scoring.grouped_least_extreme_probabilities(
            np.array(grouped, dtype=float), group_sizes)

    def _documents(self, run: _ScoredRun, found: list[_Rows], buckets: np.ndarray,
                   events: dict[int, int], scores: dict[str, np.ndarray],
                   interim: bool) -> ResultBatch:
        """The documents of a run of buckets from its scores at every level: per bucket its
        records, its influencers and the bucket with its bucket influencers."""
        batch = ResultBatch()
        records, influencers, fields = run.counts()
        # Python floats (the same values) from here on: cheaper to read one at a time.
        probability, raw = run.probability.tolist(), run.raw.tolist()
        record_score = scores["record"].tolist()
        influencer_probability = run.influencer_probability.tolist()
        influencer_raw = run.influencer_raw.tolist()
        influencer_score = scores["influencer"].tolist()
        field_probability, field_raw = run.field_probability.tolist(), run.field_raw.tolist()
        field_score = scores["bucket"].tolist()
        # Every level's items are in bucket order, as its scores are (Normaliser.walk).
        at_record = at_influencer = at_field = 0
        listed = run.listed
        job_id, span_s, name_of = self.job_id, self.span_s, self._name
        detectors = [analysis.detector for analysis in self.detectors]
        add_bucket, add_record = batch.buckets.append, batch.records.append
        add_influencer = batch.influencers.append
        quiet = self._bucket_doc(0, 0.0, 0, interim, [])
        for index, bucket in enumerate(buckets.tolist()):
            count = events.get(bucket, 0)
            if not records[index]:
                # a bucket with nothing unusual: its document but for time and count
                add_bucket({**quiet, "timestamp": bucket, "event_count": count,
                            "bucket_influencers": []})
                continue
            for i in range(at_record, at_record + records[index]):
                d = run.detector[i]
                add_record(self._record(
                    bucket, detectors[d], found[d], listed[d], run.row[i],
                    probability[i], raw[i], record_score[i], run.influencers[i], interim))
            at_record += records[index]
            for i in range(at_influencer, at_influencer + influencers[index]):
                name, code = run.influencer_keys[i]
                value = name_of(code)
                influencer = {
                    "job_id": job_id,
                    "result_type": "influencer",
                    "influencer_field_name": name,
                    "influencer_field_value": value,
                    "influencer_score": influencer_score[i],
                    "initial_influencer_score": influencer_score[i],
                    "probability": influencer_probability[i],
                    "raw_score": influencer_raw[i],
                    "bucket_span": span_s,
                    "is_interim": interim,
                    "timestamp": bucket,
                }
                if is_term_field_name(name):
                    influencer[name] = value
                add_influencer(influencer)
            at_influencer += influencers[index]
            bucket_influencers = [
                {
                    "job_id": job_id,
                    "result_type": "bucket_influencer",
                    "influencer_field_name": run.field_names[i],
                    "initial_anomaly_score": field_score[i],
                    "anomaly_score": field_score[i],
                    "raw_anomaly_score": field_raw[i],
                    "probability": field_probability[i],
                    "timestamp": bucket,
                    "bucket_span": span_s,
                    "is_interim": interim,
                }
                for i in range(at_field, at_field + fields[index])
            ]
            # the largest of its bucket influencers' scores (those just listed)
            score = max(field_score[at_field:at_field + fields[index]])
            at_field += fields[index]
            add_bucket(self._bucket_doc(bucket, score, count, interim, bucket_influencers))
        return batch

    def _influencers_of(
        self, detector: Detector, rows: _Rows, listed: _ListedRows, r: int, codes: np.ndarray
    ) -> list[tuple[str, int]]:
        """Influencer (field, value code) pairs of one record."""
        out = []
        splits = {
            detector.partition_field_name: listed.partition[r],
            detector.by_field_name: listed.by[r],
            detector.over_field_name: listed.over[r],
        }
        feature_row = listed.feature_row[r]
        for name, column in self.influencer_columns:
            if name in splits and splits[name] >= 0:
                out.append((name, splits[name]))
                continue
            retested = rows.influences.get(r) if rows.influences is not None else None
            if retested is not None and column in retested:
                ranked = sorted(retested[column], key=lambda pair: -pair[1])
                out.extend((name, code) for code, influence in ranked
                           if influence >= INFLUENCE_CUTOFF)
                continue
            if feature_row < 0 or rows.features is None:
                continue
            shares = influencer_shares(rows.features, codes, column, np.array([feature_row]))[0]
            for code, share in shares:
                if share >= INFLUENCE_CUTOFF:
                    out.append((name, code))
        return out

    def _record(
        self,
        bucket: int,
        detector: Detector,
        rows: _Rows,
        listed: _ListedRows,
        r: int,
        probability: float,
        raw: float,
        score: float,
        influencers: list[tuple[str, int]],
        interim: bool,
    ) -> dict:
        statistic = rows.statistic[r]
        k = rows.actual.shape[1]
        column = self.detectors[detector.detector_index].statistics.index(statistic) \
            if k > 1 else 0
        doc: dict[str, Any] = {
            "job_id": self.job_id,
            "result_type": "record",
            "probability": probability,
            "multi_bucket_impact": listed.impact[r],
            "record_score": score,
            "initial_record_score": score,
            "raw_score": raw,
            "bucket_span": self.span_s,
            "detector_index": detector.detector_index,
            "is_interim": interim,
            "timestamp": bucket,
            "function": detector.function,
            "function_description": DESCRIPTION.get(statistic, statistic),
            "typical": [listed.typical[r][column]],
            "actual": [listed.actual[r][column]],
        }
        if detector.field_name:
            doc["field_name"] = detector.field_name
        # The split and influencer fields as top-level keys, each the list of its values
        # (ES's inputFieldMap: a set per field, the splits' first), added after the rest.
        terms: dict[str, dict[str, None]] = {}
        for name_key, value_key, name, codes in (
            ("partition_field_name", "partition_field_value", detector.partition_field_name,
             listed.partition),
            ("by_field_name", "by_field_value", detector.by_field_name, listed.by),
            ("over_field_name", "over_field_value", detector.over_field_name, listed.over),
        ):
            if name:
                value = self._name(codes[r])
                doc[name_key] = name
                doc[value_key] = value
                terms.setdefault(name, {})[value] = None
        if influencers:
            grouped: dict[str, list[str]] = {}
            for name, code in influencers:
                grouped.setdefault(name, []).append(self._name(code))
            doc["influencers"] = [
                {"influencer_field_name": name, "influencer_field_values": values}
                for name, values in grouped.items()
            ]
            for name, values in grouped.items():
                terms.setdefault(name, {}).update(dict.fromkeys(values))
        if detector.over_field_name and detector.function != "rare":
            cause = {key: doc[key] for key in ("probability", "function", "function_description",
                                               "typical", "actual") if key in doc}
            if detector.field_name:
                cause["field_name"] = detector.field_name
            for key in ("over_field_name", "over_field_value", "by_field_name", "by_field_value",
                        "partition_field_name", "partition_field_value"):
                if key in doc:
                    cause[key] = doc[key]
            doc["causes"] = [cause]
        for name, values in terms.items():
            if is_term_field_name(name):
                doc[name] = list(values)
        return doc

    # -- renormalisation ---------------------------------------------------------------------

    def take_renormalisation(self, *, settle: bool) -> tuple[int | None, bool]:
        """For a commit: the start (ms) of the window whose scores are re-normalised, or
        None; and whether the results stored before are too. They are when ``settle`` (a
        flush or a close); else only the commit's own results are, and the stored ones
        wait for the next flush or close (:attr:`stored_behind`)."""
        if self.next_bucket is None:
            return None, False
        since = max(0, self.next_bucket - self.renormalization_window_ms)
        wanted, self.renormalise = self.renormalise, False
        if wanted and self.results_written:
            self.behind_since = since if self.behind_since is None else min(
                self.behind_since, since)
        if settle and self.behind_since is not None:
            earliest, self.behind_since = self.behind_since, None
            return earliest, True
        return (since if wanted else None), False

    @property
    def stored_behind(self) -> bool:
        """Whether stored results wait to be re-normalised (:attr:`behind_since`)."""
        return self.behind_since is not None

    def _record_doc_scope(self, doc: dict) -> str:
        """A stored record's max-score scope, as it was scored: the field names come from its
        detector, since a record read back by its columns carries only the values."""
        detector = self.detectors[int(doc.get("detector_index", 0))]
        config = detector.detector
        person_value = doc.get("over_field_value" if config.over_field_name else "by_field_value")
        return record_scope(config.partition_field_name or "",
                            doc.get("partition_field_value") or "", detector.person_field,
                            person_value or "")

    def rescore(self, docs: list[dict]) -> list[dict]:
        """New scores for stored results (``record_score``, ``influencer_score``, bucket
        influencers' ``anomaly_score``) from their raw scores and today's normalisers;
        only those whose change is big (:func:`scoring.big_updates`), the only ones ES's
        renormaliser writes. ``initial_*`` scores stay as they were."""
        changes: list[dict] = []
        records = [d for d in docs if d["result_type"] == "record" and "raw_score" in d]
        if records:
            # Records share a few scopes (a partition or person each): each worked out once.
            keys = [(d.get("detector_index", 0), d.get("partition_field_value"),
                     d.get("by_field_value"), d.get("over_field_value")) for d in records]
            scopes: dict[tuple, str] = {}
            for key, d in zip(keys, records, strict=True):
                if key not in scopes:
                    scopes[key] = self._record_doc_scope(d)
            scores = self.normalisers["record"].normalise(
                np.array([d["raw_score"] for d in records]), [scopes[key] for key in keys])
            big = scoring.big_updates([d["record_score"] for d in records], scores)
            for i in np.flatnonzero(big).tolist():
                changes.append({**_identity(records[i]), "record_score": float(scores[i])})
        influencers = [d for d in docs if d["result_type"] == "influencer" and "raw_score" in d]
        if influencers:
            values = [(d["influencer_field_name"], d["influencer_field_value"])
                      for d in influencers]
            value_scopes = {value: influencer_scope(*value) for value in dict.fromkeys(values)}
            scores = self.normalisers["influencer"].normalise(
                np.array([d["raw_score"] for d in influencers]),
                [value_scopes[value] for value in values])
            big = scoring.big_updates([d["influencer_score"] for d in influencers], scores)
            for i in np.flatnonzero(big).tolist():
                changes.append({**_identity(influencers[i]),
                                "influencer_score": float(scores[i])})
        buckets = [d for d in docs if d["result_type"] == "bucket" and d["bucket_influencers"]]
        items = [(d, bi) for d in buckets for bi in d["bucket_influencers"]]
        if items:
            scores = self.normalisers["bucket"].normalise(
                np.array([bi["raw_anomaly_score"] for _, bi in items]),
                [bi["influencer_field_name"] for _, bi in items])
            scores, moved = _big_bucket_updates([bi["anomaly_score"] for _, bi in items],
                                                scores, [doc["timestamp"] for doc, _ in items])
            # A bucket that moved is written whole: its bucket influencers' scores as they
            # now stand (the new one where the change was big, the old one elsewhere).
            new: dict[int, list[dict]] = {}
            for (doc, bi), score in zip(items, scores, strict=True):
                if doc["timestamp"] in moved:
                    new.setdefault(doc["timestamp"], []).append(
                        {"influencer_field_name": bi["influencer_field_name"],
                         "anomaly_score": score})
            for stamp in sorted(moved):
                changes.append({"result_type": "bucket", "timestamp": stamp,
                                "bucket_influencers": new[stamp]})
        return changes

    def rescore_batch(self, batch: ResultBatch, since_ms: int) -> ResultBatch:
        """``results.rescored_batch(batch, since_ms, self.rescore)``, the same documents: the
        batch's own results from ``since_ms`` on with today's scores, changed ones copied.

        The batch's documents are rescored where they are, rather than turned into changes
        and matched back by identity, when no two of them share an identity (the usual
        case: a bucket is finalised once); otherwise rescored_batch's way. A batch
        take_pending gave out, as finalise made it, is rescored from the scores it carries
        (:meth:`_rescore_runs`) without reading its documents."""
        fast = self._rescore_runs(batch, since_ms)
        if fast is not None:
            return fast
        records = [(i, doc) for i, doc in enumerate(batch.records)
                   if doc["timestamp"] >= since_ms and not doc.get("is_interim")
                   and "raw_score" in doc]
        influencers = [(i, doc) for i, doc in enumerate(batch.influencers)
                       if doc["timestamp"] >= since_ms and not doc.get("is_interim")
                       and "raw_score" in doc]
        # most buckets have no bucket influencers: that is looked at first
        buckets = [(i, doc) for i, doc in enumerate(batch.buckets)
                   if doc.get("bucket_influencers") and doc["timestamp"] >= since_ms
                   and not doc.get("is_interim") and isinstance(doc["bucket_influencers"], list)]
        record_keys = [(doc["timestamp"], doc.get("detector_index", 0),
                        doc.get("partition_field_value"), doc.get("by_field_value"),
                        doc.get("over_field_value")) for _, doc in records]
        values = [(doc["influencer_field_name"], doc["influencer_field_value"])
                  for _, doc in influencers]
        if (len(set(record_keys)) < len(record_keys)
                or len({(doc["timestamp"], *value) for (_, doc), value
                        in zip(influencers, values, strict=True)}) < len(values)
                or len({doc["timestamp"] for _, doc in buckets}) < len(buckets)):
            return rescored_batch(batch, since_ms, self.rescore)
        out = ResultBatch(buckets=list(batch.buckets), records=list(batch.records),
                          influencers=list(batch.influencers),
                          replaces_interim=bool(getattr(batch, "replaces_interim", False)),
                          rows=getattr(batch, "rows", None) or {})
        if records:
            scopes: dict[tuple, str] = {}
            for key, (_, doc) in zip(record_keys, records, strict=True):
                if key[1:] not in scopes:
                    scopes[key[1:]] = self._record_doc_scope(doc)
            scores = self.normalisers["record"].normalise(
                np.array([doc["raw_score"] for _, doc in records]),
                [scopes[key[1:]] for key in record_keys])
            big = scoring.big_updates([doc["record_score"] for _, doc in records], scores)
            for at in np.flatnonzero(big).tolist():
                i, doc = records[at]
                out.records[i] = {**doc, "record_score": float(scores[at])}
        if influencers:
            value_scopes = {value: influencer_scope(*value) for value in dict.fromkeys(values)}
            scores = self.normalisers["influencer"].normalise(
                np.array([doc["raw_score"] for _, doc in influencers]),
                [value_scopes[value] for value in values])
            big = scoring.big_updates([doc["influencer_score"] for _, doc in influencers],
                                      scores)
            for at in np.flatnonzero(big).tolist():
                i, doc = influencers[at]
                out.influencers[i] = {**doc, "influencer_score": float(scores[at])}
        if buckets:
            items = [(i, bi) for i, doc in buckets for bi in doc["bucket_influencers"]]
            scores, moved = _big_bucket_updates(
                [bi["anomaly_score"] for _, bi in items],
                self.normalisers["bucket"].normalise(
                    np.array([bi["raw_anomaly_score"] for _, bi in items]),
                    [bi["influencer_field_name"] for _, bi in items]),
                [i for i, _ in items])
            at = 0
            for i, doc in buckets:
                mine = doc["bucket_influencers"]
                new = scores[at:at + len(mine)]
                at += len(mine)
                if i not in moved:
                    continue
                # a bucket that moved: its bucket influencers as they now stand, and the
                # bucket the largest of them
                copies = [{**bi, "anomaly_score": score}
                          for bi, score in zip(mine, new, strict=True)]
                out.buckets[i] = {**doc, "bucket_influencers": copies,
                                  "anomaly_score": max(new)}
        return out

    def _rescore_runs(self, batch: ResultBatch, since_ms: int) -> ResultBatch | None:
        """:meth:`rescore_batch` of a batch take_pending gave out, from the scores of its runs
        (_RunScores) it carries: the same documents, the same copies. None if ``batch``
        carries none of this analysis's, or has other documents than finalise made (interim
        ones joined it), or if two of its documents could share an identity (the scores name
        documents by position, rescored_batch by identity)."""
        scores = getattr(batch, "scores", None)
        if scores is None or scores[0] is not self:
            return None
        runs = scores[1]
        if (sum(run.bucket_count for run in runs) != len(batch.buckets)
                or sum(len(run.record_time) for run in runs) != len(batch.records)
                or sum(len(run.influencer_time) for run in runs) != len(batch.influencers)):
            return None  # the batch changed since (interim results joined it)

        def joined(name: str, dtype: Any = np.float64) -> np.ndarray:
            return (np.concatenate([getattr(run, name) for run in runs]) if runs
                    else np.empty(0, dtype=dtype))

        record_codes = (np.concatenate([run.record_codes for run in runs]) if runs
                        else np.empty((0, 4), dtype=np.int64))
        influencer_keys = [key for run in runs for key in run.influencer_keys]
        # Identities are values; documents are named by codes: one value per code used.
        used = set(record_codes[:, 1:].ravel().tolist()) | {c for _, c in influencer_keys}
        if len({self._name(code) for code in used}) < len(used):
            return None
        record_time = joined("record_time", np.int64)
        influencer_time = joined("influencer_time", np.int64)
        bucket_time = joined("scored_time", np.int64)
        if (len(set(zip(record_time.tolist(), *record_codes.T.tolist()))) < len(record_time)
                or len(set(zip(influencer_time.tolist(), influencer_keys))) < len(influencer_keys)
                or len(set(bucket_time.tolist())) < len(bucket_time)):
            return None
        out = ResultBatch(buckets=list(batch.buckets), records=list(batch.records),
                          influencers=list(batch.influencers),
                          replaces_interim=bool(getattr(batch, "replaces_interim", False)),
                          rows=getattr(batch, "rows", None) or {})
        for level, stamps, docs, scopes in (
                ("record", record_time, out.records,
                 [scope for run in runs for scope in run.record_scopes]),
                ("influencer", influencer_time, out.influencers,
                 [scope for run in runs for scope in run.influencer_scopes])):
            chosen = np.flatnonzero(stamps >= since_ms)
            if not len(chosen):
                continue
            scores = self.normalisers[level].normalise(
                joined(f"{level}_raw")[chosen], [scopes[i] for i in chosen.tolist()])
            moved = scoring.big_updates(joined(f"{level}_score")[chosen], scores)
            score_name = f"{level}_score"
            for i, score in zip(chosen[moved].tolist(), scores[moved].tolist(), strict=True):
                docs[i] = {**docs[i], score_name: score}
        # buckets with bucket influencers, by position in the batch
        offsets = np.cumsum([0] + [run.bucket_count for run in runs])
        scored = (np.concatenate([run.scored_bucket + offset
                                  for run, offset in zip(runs, offsets.tolist(), strict=False)])
                  if runs else np.empty(0, dtype=np.int64))
        field_count = joined("field_count", np.int64)
        chosen = bucket_time >= since_ms
        if chosen.any():
            field_chosen = np.repeat(chosen, field_count)
            names = [name for run in runs for name in run.field_names]
            scores = self.normalisers["bucket"].normalise(
                joined("field_raw")[field_chosen],
                [name for name, keep in zip(names, field_chosen.tolist(), strict=True) if keep])
            counts = field_count[chosen]
            starts = np.cumsum(counts) - counts
            stored = joined("field_score")[field_chosen]
            big = scoring.big_updates(stored, scores)
            moved = np.logical_or.reduceat(big, starts)
            # as _big_bucket_updates: the new score where the change is big, else the old
            new = np.where(big, scores, stored).tolist()
            for i, start, count in zip(scored[chosen][moved].tolist(),
                                       starts[moved].tolist(), counts[moved].tolist(),
                                       strict=True):
                doc = out.buckets[i]
                mine = new[start:start + count]
                # a bucket that moved: its bucket influencers as they now stand, and the
                # bucket the largest of them
                copies = [{**bi, "anomaly_score": score}
                          for bi, score in zip(doc["bucket_influencers"], mine, strict=True)]
                out.buckets[i] = {**doc, "bucket_influencers": copies, "anomaly_score": max(mine)}
        return out

    # -- bookkeeping ------------------------------------------------------------------------

    def take_pending(self) -> ResultBatch:
        pending, self.pending = self.pending, ResultBatch()
        # the scores go with the batch (and are freed with it), as this analysis's
        pending.scores, self._pending_scores = (self, self._pending_scores), []
        return pending

    def note_values_refused(self, refused: int) -> bool:
        """The job's table of categorical values (``MAX_DISTINCT_VALUES``) refused
        ``refused`` new values: the entities they name cannot be modelled, which ES would
        report as its memory limit, ``hard_limit``. Whether the status changed."""
        if refused <= 0 or self.memory_status == "hard_limit":
            return False
        self.memory_status = "hard_limit"
        return True

    def model_bytes(self) -> int:
        return int(sum(d.models.nbytes for d in self.detectors))

    def model_size_stats(self) -> dict:
        """The analysis part of ``model_size_stats`` (rest-api §4.3)."""
        model_bytes = self.model_bytes()
        self.peak_model_bytes = max(self.peak_model_bytes, model_bytes)
        values: dict[str, set] = {"by": set(), "over": set(), "partition": set()}
        for detector in self.detectors:
            config = detector.detector
            index = config.detector_index
            # with use_null, a configured field's null value is an entity too (-1), as ES
            # registers it
            configured = (config.partition_field_name, config.by_field_name,
                          config.over_field_name)
            lowest = [-1 if config.use_null and field else 0 for field in configured]
            for key in detector.series:
                for name, code, least in zip(("partition", "by", "over"), key, lowest,
                                             strict=True):
                    if code >= least:
                        values[name].add((index, code))
            for name, codes in zip(("partition", "by", "over"), detector.entities,
                                   strict=True):
                values[name].update((index, code) for code in codes)
        return {
            "model_bytes": model_bytes,
            "peak_model_bytes": self.peak_model_bytes,
            "model_bytes_exceeded": self.bytes_exceeded,
            "total_by_field_count": len(values["by"]),
            "total_over_field_count": len(values["over"]),
            "total_partition_field_count": len(values["partition"]),
            "bucket_allocation_failures_count": self.allocation_failures,
            "memory_status": self.memory_status,
        }

    def timing_stats(self) -> dict:
        average = self.average_processing_ms or 0.0
        return {
            "bucket_count": self.bucket_count,
            "total_bucket_processing_time_ms": round(self.total_processing_ms, 3),
            "average_bucket_processing_time_ms": round(average, 3),
            "exponential_average_bucket_processing_time_ms": round(average, 3),
            "exponential_average_bucket_processing_time_per_hour_ms": round(
                average * max(1, 3600 // max(1, self.span_s)), 3),
        }

    def stats(self) -> dict:
        """What a closed job's stats show: kept next to the state at every commit."""
        return {"model_size_stats": self.model_size_stats(), "timing_stats": self.timing_stats()}

    def sync_names(self, strings: Any) -> None:
        """Catch up with the job's string table (codes -> values for the documents)."""
        if len(strings) > len(self.names):
            known = len(self.names)
            self.names.extend(
                value.decode("utf-8", "replace") for value in strings.raw_values(known)
            )
            if self.empty_code is None and "" in self.names[known:]:
                self.empty_code = self.names.index("", known)
        elif len(strings) < len(self.names):  # rolled back
            del self.names[len(strings):]
            if self.empty_code is not None and self.empty_code >= len(self.names):
                self.empty_code = None

    def get_state(self) -> bytes:
        """Everything needed to continue exactly where this analysis is, as bytes."""
        self._compact()
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {
            "next_bucket": self.next_bucket,
            "bucket_count": self.bucket_count,
            "total_processing_ms": self.total_processing_ms,
            "average_processing_ms": self.average_processing_ms,
            "memory_status": self.memory_status,
            "allocation_failures": self.allocation_failures,
            "stored_behind": self.stored_behind,
            "behind_since": self.behind_since,
            "results_written": self.results_written,
            "last_failure_bucket": self.last_failure_bucket,
            "bytes_exceeded": self.bytes_exceeded,
            "peak_model_bytes": self.peak_model_bytes,
            # floats, not the numpy floats they may be: the same JSON, from the fast writer
            "final_count_sum": float(self.final_count_sum),
            "final_count_weight": float(self.final_count_weight),
            "normalisers": {level: n.to_state() for level, n in self.normalisers.items()},
            "detectors": [],
        }
        if self._chunks:
            times, numeric, codes = self._chunks[0]
            arrays["buffer_times"], arrays["buffer_numeric"], arrays["buffer_codes"] = (
                times, numeric, codes)
        for d, detector in enumerate(self.detectors):
            state = detector.get_state()
            arrays[f"d{d}_keys"] = state["keys"]
            arrays[f"d{d}_columns"] = state["columns"]
            if len(state["entities"]):
                arrays[f"d{d}_entities"] = state["entities"]
            names = []
            for name, value in state["models"].items():
                if isinstance(value, np.ndarray):
                    arrays[f"d{d}_m_{name}"] = value
                    names.append(name)
                else:
                    meta.setdefault("model_meta", {})[f"{d}:{name}"] = value
            meta["detectors"].append(names)
        return _pack_state(meta, arrays)

    def set_state(self, blob: bytes) -> None:
        """Continue from a blob of :meth:`get_state`, of this version or an older one."""
        meta, data = _unpack_state(blob)
        self.next_bucket = meta["next_bucket"]
        self.bucket_count = meta["bucket_count"]
        self.total_processing_ms = meta["total_processing_ms"]
        self.average_processing_ms = meta["average_processing_ms"]
        self.memory_status = meta["memory_status"]
        self.allocation_failures = meta["allocation_failures"]
        # States saved before these were kept: counted anew from here; and results were
        # written, and rescored with every commit then.
        self.behind_since = meta.get("behind_since")
        self.results_written = meta.get("results_written", True)
        self.last_failure_bucket = meta.get("last_failure_bucket")
        self.bytes_exceeded = meta.get("bytes_exceeded", 0)
        self.peak_model_bytes = meta["peak_model_bytes"]
        # States saved before interim correction existed have no count history yet.
        self.final_count_sum = meta.get("final_count_sum", 0.0)
        self.final_count_weight = meta.get("final_count_weight", 0.0)
        self.normalisers = {level: scoring.Normaliser.from_state(state)
                            for level, state in meta["normalisers"].items()}
        if "buffer_times" in data:
            self._chunks = [(data["buffer_times"], data["buffer_numeric"],
                             data["buffer_codes"])]
        else:
            self._chunks = []
        model_meta = meta.get("model_meta", {})
        for d, detector in enumerate(self.detectors):
            models = {name: data[f"d{d}_m_{name}"] for name in meta["detectors"][d]}
            for key, value in model_meta.items():
                index, _, name = key.partition(":")
                if int(index) == d:
                    models[name] = value
            detector.set_state(
                {"keys": data[f"d{d}_keys"], "columns": data[f"d{d}_columns"],
                 "models": models,
                 **({"entities": data[f"d{d}_entities"]} if f"d{d}_entities" in data else {})}
            )
