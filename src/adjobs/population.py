"""Models that score feature rows against other rows: population analysis and ``rare``.

Population analysis (``over_field_name``, spec ``analysis.md`` A.3) compares each *person*
(over value) with the population of all persons for the same *attribute* (partition value,
by value), not with its own history. :class:`PopulationModels` keeps, per attribute, a
robust location and scale of the persons' features, learnt from each bucket's
cross-section (median and median absolute deviation) with exponential forgetting, and
scores each person in a bucket by the tail probability of a Student-t (4 degrees of
freedom: heavy tails, so that a wide population does not flag its ordinary members).

``rare`` (A.2) flags by values that are rare in time. :class:`RareModels` keeps, per
partition, in how many buckets each by value occurred. The probability of a value is the
share of all past occurrences that belong to values at most as frequent as it, a brand new
value counting with the share of first occurrences; so a job whose values are mostly new
does not flag new values, and one with a stable set of values does. As in ES, nothing is
flagged before :data:`RARE_MIN_BUCKETS` buckets of history.

Both work one bucket at a time, vectorised over the bucket's rows; the rows of a bucket
are contiguous and sorted by (partition, by, over), as :mod:`adjobs.features` gives them.
"""

from __future__ import annotations

import numpy as np

from ._model import COUNT_RATIO_BOUNDS
from .features import Features

#: Student-t degrees of freedom of the population model.
STUDENT_DOF = 4.0
#: Per-bucket forgetting of the population history (ES's decay rate for 30 min buckets).
DECAY_PER_BUCKET = 0.0005 * 20
#: Persons an attribute must have seen (over all buckets) before a probability below
#: :data:`WARMUP_PROBABILITY` is given.
POPULATION_MIN_SAMPLES = 8
WARMUP_PROBABILITY = 0.05
#: The smallest scale, relative to the location (ES's minimum coefficient of variation).
MIN_CV = 1e-4
#: ``rare`` needs this many buckets of history before it flags anything (ES docs).
RARE_MIN_BUCKETS = 20
#: A median absolute deviation times this estimates a normal standard deviation.
MAD_TO_SIGMA = 1.4826


def student_t_sf(t: np.ndarray, dof: float = STUDENT_DOF) -> np.ndarray:
    """Survival function of Student's t with ``dof`` degrees of freedom (vectorised).

    For 4 degrees of freedom the CDF has a closed form; other values use the regularised
    incomplete beta via its continued fraction, which we do not need here.
    """
    if dof != 4.0:
        raise ValueError("only 4 degrees of freedom are implemented")
    t = np.asarray(t, dtype=float)
    # x = t / sqrt(t^2 + 4), which is +-1 to the last bit long before t^2 overflows
    huge = np.abs(t) > 1e150
    x = np.where(huge, np.sign(t), t / np.sqrt(np.where(huge, 1.0, t) ** 2 + 4.0))
    # CDF of t(4): 1/2 + x (3 - x^2) / 4 ... written for the upper tail.
    return np.clip(0.5 - x * (1.5 - 0.5 * x * x) / 2.0, 0.0, 1.0)


def tail_probability(z: np.ndarray, side: int) -> np.ndarray:
    """Probability of a value at least as extreme as ``z`` standard units."""
    if side > 0:
        return student_t_sf(z)
    if side < 0:
        return student_t_sf(-z)
    return np.minimum(1.0, 2.0 * student_t_sf(np.abs(z)))


class PopulationModels:
    """Per attribute: a decaying robust location and scale of the persons' features.

    ``count_scaled``: the statistic columns (means, medians, variances) whose spread depends
    on the records behind them: a person's is scaled by sqrt(the attribute's median records
    per person in the bucket / the person's own), as ES's count variance scale does. A
    state saved before this existed restores with none.
    """

    def __init__(self, bucket_span_s: int, side: int, statistics: int,
                 count_scaled: tuple[int, ...] = ()) -> None:
        self.bucket_span_s = bucket_span_s
        self.side = side
        self.statistics = statistics
        self.count_scaled = tuple(int(j) for j in count_scaled)
        #: (partition, by) -> row of the arrays below.
        self.attributes: dict[tuple[int, int], int] = {}
        self.location = np.zeros((0, statistics))
        self.scale = np.zeros((0, statistics))
        self.weight = np.zeros(0)  # effective number of past persons

    @property
    def nbytes(self) -> int:
        return int(self.location.nbytes + self.scale.nbytes + self.weight.nbytes
                   + 120 * len(self.attributes))

    def _attribute_rows(self, partition: np.ndarray, by: np.ndarray) -> np.ndarray:
        rows = np.empty(len(partition), dtype=np.int64)
        for i, key in enumerate(zip(partition.tolist(), by.tolist(), strict=True)):
            row = self.attributes.get(key)
            if row is None:
                row = self.attributes[key] = len(self.attributes)
            rows[i] = row
        grow = len(self.attributes) - len(self.weight)
        if grow > 0:
            self.location = np.vstack([self.location, np.zeros((grow, self.statistics))])
            self.scale = np.vstack([self.scale, np.zeros((grow, self.statistics))])
            self.weight = np.concatenate([self.weight, np.zeros(grow)])
        return rows

    def step(self, features: Features, buckets: np.ndarray, learn: bool = True) -> dict:
        """Probability of every feature row; ``typical`` is the population's location."""
        out = _outputs(len(features), self.statistics)
        # A row without a value (an overflowed sum: NaN) is neither learnt nor scored.
        valued = np.isfinite(features.values).all(axis=1)
        for start, end in _bucket_runs(features):
            rows = np.arange(start, end)[valued[start:end]]
            if len(rows):
                self._bucket(features, rows, out["probability"], out["typical"],
                             out["statistic"])
        return out

    def _bucket(self, f: Features, rows: np.ndarray, probability: np.ndarray,
                typical: np.ndarray, statistic: np.ndarray) -> None:
        part, by = f.partition[rows], f.by[rows]
        values = f.values[rows]
        attribute = self._attribute_rows(part, by)
        unique, group = np.unique(attribute, return_inverse=True)
        group = group.reshape(-1)
        sizes = np.bincount(group, minlength=len(unique)).astype(float)
        k = self.statistics
        median = np.empty((len(unique), k))
        mad = np.empty((len(unique), k))
        for j in range(k):
            median[:, j] = _group_median(values[:, j], group, len(unique))
            deviation = np.abs(values[:, j] - median[group, j])
            mad[:, j] = _group_median(deviation, group, len(unique)) * MAD_TO_SIGMA
        w = self.weight[unique][:, None]
        location = (w * self.location[unique] + sizes[:, None] * median) / (w + sizes[:, None])
        spread = (w * self.scale[unique] + sizes[:, None] * mad) / (w + sizes[:, None])
        floor = np.maximum(MIN_CV * np.abs(location), 1e-12)
        spread = np.maximum(spread, floor)
        z = (values - location[group]) / spread[group]
        if self.count_scaled:
            # usual / own records, bounded as the series models bound theirs
            counts = f.count[rows]
            usual = _group_median(counts, group, len(unique))[group]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                ratio = usual / counts
            widen = np.sqrt(np.clip(np.where(np.isfinite(ratio), ratio, 1.0),
                                    *COUNT_RATIO_BOUNDS))
            z[:, list(self.count_scaled)] /= widen[:, None]
        p = tail_probability(z, self.side)
        worst = np.argmin(p, axis=1)
        p_row = p[np.arange(len(p)), worst]
        if k > 1:
            p_row = 1.0 - (1.0 - p_row) ** k
        history = self.weight[unique] + sizes
        young = history[group] < POPULATION_MIN_SAMPLES
        p_row = np.where(young, np.maximum(p_row, WARMUP_PROBABILITY), p_row)
        probability[rows] = p_row
        typical[rows] = location[group]
        statistic[rows] = worst
        # Learn: the bucket's cross-section joins the decayed history.
        keep = 1.0 - DECAY_PER_BUCKET
        self.location[unique] = location
        self.scale[unique] = np.maximum(spread, floor)
        self.weight[unique] = keep * history

    def state(self) -> dict:
        keys = np.array(list(self.attributes), dtype=np.int64).reshape(-1, 2)
        return {
            "keys": keys,
            "location": self.location.copy(),
            "scale": self.scale.copy(),
            "weight": self.weight.copy(),
            "meta": np.array([self.bucket_span_s, self.side, self.statistics], dtype=np.int64),
            "count_scaled": np.array(self.count_scaled, dtype=np.int64),
        }

    @classmethod
    def from_state(cls, state: dict) -> PopulationModels:
        span, side, statistics = (int(x) for x in state["meta"])
        # a state from before the count variance scale: the job keeps judging without it
        scaled = tuple(int(j) for j in state.get("count_scaled", ()))
        if any(not 0 <= j < statistics for j in scaled):
            raise ValueError(f"population state names statistic columns {scaled} of "
                             f"{statistics}")
        models = cls(span, side, statistics, scaled)
        models.attributes = {(int(a), int(b)): i for i, (a, b) in enumerate(state["keys"])}
        models.location = np.array(state["location"], dtype=float).reshape(-1, statistics)
        models.scale = np.array(state["scale"], dtype=float).reshape(-1, statistics)
        models.weight = np.array(state["weight"], dtype=float)
        return models


def _outputs(n: int, statistics: int) -> dict:
    """What a model returns per feature row: probability 1 (nothing unusual) until scored."""
    return {"probability": np.ones(n), "typical": np.zeros((n, statistics)),
            "statistic": np.zeros(n, dtype=np.int64)}


def _bucket_runs(features: Features) -> list[tuple[int, int]]:
    """``(start, end)`` of each bucket's rows (rows are sorted by bucket)."""
    n = len(features)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, features.bucket[1:] != features.bucket[:-1]])
    return list(zip(starts.tolist(), np.r_[starts[1:], n].tolist(), strict=True))


def _group_median(values: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    order = np.lexsort((values, group))
    sorted_values = values[order]
    sizes = np.bincount(group, minlength=groups)
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    return (sorted_values[first + (sizes - 1) // 2] + sorted_values[first + sizes // 2]) / 2


class RareModels:
    """Per partition: in how many buckets each by value occurred."""

    def __init__(self) -> None:
        #: partition -> {by value: buckets it occurred in}
        self.counts: dict[int, dict[int, int]] = {}
        #: partition -> buckets seen since the partition's first record
        self.buckets: dict[int, int] = {}
        #: partition -> last bucket counted (a bucket counts once)
        self.last_bucket: dict[int, int] = {}

    @property
    def nbytes(self) -> int:
        return 100 * sum(len(c) for c in self.counts.values()) + 100 * len(self.buckets)

    def step(self, features: Features, buckets: np.ndarray, learn: bool = True) -> dict:
        out = _outputs(len(features), 1)
        probability, typical = out["probability"], out["typical"]
        for start, end in _bucket_runs(features):
            bucket = int(features.bucket[start])
            for row in range(start, end):
                part = int(features.partition[row])
                counts = self.counts.setdefault(part, {})
                seen = self.buckets.get(part, 0)
                value = int(features.by[row])
                n_v = counts.get(value, 0)
                total = sum(counts.values())
                if seen >= RARE_MIN_BUCKETS and total:
                    distinct = len(counts)
                    at_most = sum(c for c in counts.values() if c <= n_v) if n_v else 0
                    p = min(1.0, (1.0 + distinct + at_most) / (1.0 + total))
                    probability[row] = p
                typical[row, 0] = total / seen if seen else 0.0
            # Learn after scoring the whole bucket: its own values are not "history".
            for row in range(start, end):
                part = int(features.partition[row])
                counts = self.counts[part]
                value = int(features.by[row])
                counts[value] = counts.get(value, 0) + 1
                if self.last_bucket.get(part) != bucket:
                    self.last_bucket[part] = bucket
                    self.buckets[part] = self.buckets.get(part, 0) + 1
        return out

    def state(self) -> dict:
        rows = [(p, v, c) for p, counts in self.counts.items() for v, c in counts.items()]
        parts = [(p, self.buckets.get(p, 0), self.last_bucket.get(p, -1)) for p in self.counts]
        return {
            "counts": np.array(rows, dtype=np.int64).reshape(-1, 3),
            "partitions": np.array(parts, dtype=np.int64).reshape(-1, 3),
        }

    @classmethod
    def from_state(cls, state: dict) -> RareModels:
        models = cls()
        for p, v, c in np.asarray(state["counts"]).tolist():
            models.counts.setdefault(p, {})[v] = c
        for p, seen, last in np.asarray(state["partitions"]).tolist():
            models.counts.setdefault(p, {})
            models.buckets[p] = seen
            if last != -1:
                models.last_bucket[p] = last
        return models

