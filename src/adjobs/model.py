"""Per-series time-series models: what turns a bucket's value into an anomaly probability.

:class:`SeriesModels` holds the models of many series that share a bucket span and steps them
together over blocks of buckets in the compiled kernel (``adjobs._model``). The model is
described at the top of ``_model.pyx`` and follows shared/spec/analysis.md A.5: a learned
decomposition (level, daily and weekly profiles used once they explain variance), a robust
residual distribution chosen among heavy- and light-tailed shapes, a 12-bucket multi-bucket
feature with its own residual model, a warm-up, a minimum coefficient of variation and
decayed forgetting.

Its whole state is a dict of numpy arrays (:meth:`SeriesModels.state`), so a job can save it
after each upload and resume exactly: stepping in one call or in several calls with a save and
restore in between gives bit-identical outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from adjobs import _model

__all__ = [
    "DEFAULT_PARAMS",
    "OUTPUTS",
    "SeriesModels",
    "combined_probability",
    "multi_bucket_impact",
]

#: Parameters of the model, in the kernel's order. One set for every series: nothing here is
#: tuned per data set. Rates are per bucket unless the name says otherwise.
DEFAULT_PARAMS: dict[str, float] = {
    "alpha_slow": 0.02,       # level gain of the slow one-step predictors
    "alpha_fast": 0.9,        # level gain of the fast ones (random-walk-like series)
    "level_clip": 4.0,        # a level moves by at most this many mean absolute errors
    "base_days": 3.0,         # time constant of the baseline the profiles are learned against
    "gamma_daily": 0.15,      # daily profile gain per observation of a phase
    "gamma_weekly": 0.02,     # weekly profile gain per observation of a phase
    "gain_daily": 0.8,        # daily profile used only if it cuts the error to this fraction
    "gain_weekly": 0.9,       # weekly profile likewise, on top of the daily one
    "test_days": 5.0,         # time constant of the errors that choose the predictor
    "scale_rate": 0.01,       # rate of the robust residual scale
    "decay": 0.02,            # forgetting of the shape weights per 30-minute bucket (A.5)
    "ll_cap": 4.0,            # most log-odds one observation may move between shapes
    "mix_map": 0.0,           # 1: probability of the most likely shape only, 0: mixture
    "run_sigma": 4.0,         # a residual beyond this many sigmas extends a run...
    "run_length": 12.0,       # ...and a run this long is accepted as a new level
    "warm_buckets": 4.0,      # A.5 / Prelert: "at least 4 buckets and 2 h"
    "warm_seconds": 7200.0,
    "min_cv": 1e-4,           # minimum coefficient of variation (A.5)
    "inflate": 0.0,           # widening of the distribution while history is short
    "season_periods": 3.0,    # periods observed before a profile may be used
    "temper_buckets": 1000.0,  # shape evidence counts n / (n + this): heavy tails early
    "out_sigma": 4.0,         # a residual beyond this many sigmas is an outlier...
    "out_rate": 0.01,        # ...whose frequency is learned at this rate per bucket
    "out_prior": 16.0,         # outliers seen before they count as half normal
    "mb_clip": 2.0,           # sigmas at which residuals enter the 12-bucket mean
    # How many times over the decayed shape log-likelihoods count once history is long.
    # At 1 (what jobs created before it existed keep) the mixture never left the heavy
    # shapes: a real anomaly in a clean series got p ~ 1e-3, held down by the probability
    # cap (A.6). NAB (bench.nab --library) 44.1 -> 51.2 standard at 10 (flat from 7 to
    # 14); with slow_multi_bucket, 54.8 at 10 and flat at 55.0-55.2 from 12 to 25.
    "shape_evidence": 15.0,
    # A daily phase whose same-sign outliers have come this often (a decayed frequency at
    # the daily profile's gain: 0.2 is "more than one lately") makes outliers there
    # habitual: the spike at 2 am every night stops being news, a spike at another time, or
    # the absence of a habitual jump, is still news. NAB: FP rows 97 -> 91 with the same 36
    # windows found (51.2 -> 51.8 standard, 41.7 -> 42.8 low FP).
    "phase_outlier_min": 0.2,
    # 1: a mean, median or variance of fewer records than the series usually has is judged
    # with a wider distribution, of more records with a narrower one (ES's count variance
    # scale, usual / this bucket's records). Off for jobs created before it existed.
    "count_variance": 1.0,
    # 1: a second multi-bucket feature, the 12-bucket mean residual against the slow level of
    # the series' season (ES's residual against its slowly adapting trend), next to the one
    # against the one-step prediction: a change the fast level follows bucket by bucket (a
    # day at a lower level, bursts that come closer together) is still seen. NAB
    # (bench.nab --library): 51.8 -> 55.1 standard, with shape_evidence 15.
    "slow_multi_bucket": 1.0,
    # An isolated spike (one outlier bucket between ordinary ones) within this many seconds
    # of the time of day of recent isolated spikes of the same sign, whose decayed frequency
    # there (at the daily profile's gain a day) adds up to spike_habit_min, is part of the
    # series: a nightly job that wanders by 40 minutes. Bursts are never excused nor teach
    # it, nor is a spike much larger than its isolated spikes have been. NAB: FP rows
    # 92 -> 82 with the same 38 windows (55.2 -> 56.2 standard); flat for windows of 30 to
    # 60 minutes and minimums of 0.25 to 0.35 (at 0.2, windows are lost).
    "spike_habit_window": 2700.0,
    "spike_habit_min": 0.3,
    # A third multi-bucket feature: the median of the last 12 residuals against the slow
    # level of the season, winsorised at this many sigmas (0: none). The 12-bucket mean is
    # winsorised at mb_clip (one spike must not keep it unusual for 12 buckets), so it sees
    # a shift of 20 sigmas as one of 2, and a series that has spikes hides a run of them; a
    # median is not moved by a few spikes, so it sees the shift at nearly its size. It is
    # judged once the season may be used (season_periods). NAB (bench.nab --library):
    # 56.2 / 48.0 / 60.5 -> 57.7 / 49.2 / 62.7 (38 -> 40 windows); 57.6-57.7 / 48.8-49.4 /
    # 62.0-62.7 from 6 to 8 sigmas; 57.1-57.4 / 48.2-48.8 / 61.7-61.9 from 10 to 16;
    # 56.8 / 47.7 / 61.5 unbounded (a shift then gets p ~ 1e-30 and crowds the top of the
    # normaliser); at 5, 55.8 / 47.3 / 60.6 (the spikes' run is no longer found).
    "median_multi_bucket": 7.0,
}
#: Parameters added after the first release, with the value that reproduces how a job
#: created before them behaves: a stored model state without them gets these appended.
#: (A phase_outlier_min above 1 is never reached: no habitual outliers.)
_ADDED_PARAMS = {"shape_evidence": 1.0, "phase_outlier_min": 2.0, "count_variance": 0.0,
                 "slow_multi_bucket": 0.0, "spike_habit_window": 0.0, "spike_habit_min": 1.0,
                 "median_multi_bucket": 0.0}

#: Output arrays of :meth:`SeriesModels.step`, each of shape ``(buckets, series)``.
OUTPUTS = ("p_single", "p_multi", "typical", "lower", "upper")

_DAILY_CAP = 288   # phases of the daily profile at most (5-minute phases)
_WEEKLY_CAP = 168  # phases of the weekly profile at most (hour of week)
_STATE_VERSION = 1


def combined_probability(p_single: np.ndarray, p_multi: np.ndarray) -> np.ndarray:
    """Record probability from the single- and multi-bucket probabilities: the smaller one.

    NaN (no value in the bucket) stays NaN.
    """
    return np.fmin(np.asarray(p_single), np.asarray(p_multi))


def multi_bucket_impact(p_single: np.ndarray, p_multi: np.ndarray) -> np.ndarray:
    """-5 (only the single bucket is unusual) .. +5 (only the multi-bucket mean is), A.5."""
    ls = -np.log(np.clip(p_single, 1e-300, 1.0))
    lm = -np.log(np.clip(p_multi, 1e-300, 1.0))
    total = ls + lm
    with np.errstate(invalid="ignore", divide="ignore"):
        impact = np.where(total > 0, 5.0 * (lm - ls) / np.where(total > 0, total, 1.0), 0.0)
    return impact


def _probe_cells(probes: tuple[np.ndarray, ...] | None, shape: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Probes as the kernel takes them: cell numbers ascending, the order that sorts them
    (to put the probabilities back in the caller's order), their values and record counts
    (NaN: none)."""
    if probes is None:
        return (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0),
                np.empty(0))
    if len(probes) not in (3, 4):
        raise ValueError("probes are (rows, series, values) or (rows, series, values, counts)")
    rows, series, values = (np.asarray(a) for a in probes[:3])
    counts = np.asarray(probes[3]) if len(probes) == 4 else np.full(values.shape, np.nan)
    if not rows.shape == series.shape == values.shape == counts.shape or rows.ndim != 1:
        raise ValueError("probes need rows, series, values (and counts) of one length")
    if len(rows) and (rows.min() < 0 or rows.max() >= shape[0] or series.min() < 0
                      or series.max() >= shape[1]):
        raise ValueError("probe cells must lie inside values")
    cells = rows.astype(np.int64) * shape[1] + series.astype(np.int64)
    order = np.argsort(cells, kind="stable")
    return (np.ascontiguousarray(cells[order]), order,
            np.ascontiguousarray(values[order], dtype=np.float64),
            np.ascontiguousarray(counts[order], dtype=np.float64))


class SeriesModels:
    """Models of series that share one bucket span, stepped together.

    Parameters
    ----------
    bucket_span_s : int
        Bucket span in seconds. Daily and weekly profiles exist when the span divides a day
        (into at least 4 phases) or a week.
    capacity : int
        Series to allocate room for; more can be added (the arrays grow).
    params : mapping, optional
        Overrides of :data:`DEFAULT_PARAMS` (for experiments; jobs use the defaults).
    """

    def __init__(self, bucket_span_s: int, capacity: int = 1,
                 params: Mapping[str, float] | None = None) -> None:
        if int(bucket_span_s) != bucket_span_s or bucket_span_s <= 0:
            raise ValueError(f"bucket span must be a positive whole number of seconds, "
                             f"got {bucket_span_s!r}")
        self.bucket_span_s = int(bucket_span_s)
        merged = dict(DEFAULT_PARAMS)
        for key, value in (params or {}).items():
            if key not in merged:
                raise ValueError(f"unknown model parameter {key!r}")
            merged[key] = float(value)
        self._params = np.array(list(merged.values()), dtype=np.float64)
        lay = _model.layout(float(self.bucket_span_s), _DAILY_CAP, _WEEKLY_CAP)
        self._layout = lay
        self._n = 0
        self._last_bucket = np.iinfo(np.int64).min
        cap = max(1, int(capacity))
        self._side = np.zeros(cap, dtype=np.int8)
        self._scalars = np.zeros((cap, lay["scalars"]))
        self._ring = np.zeros((cap, lay["ring"]))
        self._daily = np.zeros((cap, lay["daily"]))
        self._daily_count = np.zeros((cap, lay["daily"]))
        self._daily_outliers = np.zeros((cap, lay["daily"]))
        self._daily_spikes = np.zeros((cap, lay["daily"]))
        self._weekly = np.zeros((cap, lay["weekly"]))
        self._weekly_count = np.zeros((cap, lay["weekly"]))

    # -- series -------------------------------------------------------------------------

    @property
    def n_series(self) -> int:
        return self._n

    @property
    def params(self) -> dict[str, float]:
        return dict(zip(DEFAULT_PARAMS, self._params.tolist(), strict=True))

    @property
    def bytes_per_series(self) -> int:
        """Bytes of state one series needs (all of it is in the arrays of :meth:`state`)."""
        lay = self._layout
        return 8 * (lay["scalars"] + lay["ring"] + 4 * lay["daily"] + 2 * lay["weekly"]) + 1

    def add_series(self, side: int = 0) -> int:
        """Add a series; ``side`` 0 two-sided, +1 high values only, -1 low only. Returns its
        index (the column of ``values`` in :meth:`step`)."""
        if side not in (-1, 0, 1):
            raise ValueError(f"side must be -1, 0 or +1, got {side!r}")
        if self._n == len(self._side):
            self._grow(2 * self._n)
        self._side[self._n] = side
        self._n += 1
        return self._n - 1

    def _grow(self, cap: int) -> None:
        for name in ("_side", "_scalars", "_ring", "_daily", "_daily_count", "_daily_outliers",
                     "_daily_spikes", "_weekly",
                     "_weekly_count"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    # -- stepping -----------------------------------------------------------------------

    def step(self, values: np.ndarray, bucket_index: np.ndarray,
             probes: tuple[np.ndarray, ...] | None = None,
             counts: np.ndarray | None = None,
             lazy_below: float = 0.0) -> dict[str, np.ndarray]:
        """Feed ``values[b, s]`` (NaN: no value) for buckets ``bucket_index[b]``.

        Bucket indices count bucket spans since the epoch; they must increase strictly and
        come after every bucket already stepped (gaps are fine). Returns :data:`OUTPUTS`, each
        ``(buckets, series)``; a NaN value gives NaN probabilities.

        ``counts[b, s]``: the records behind a value that is a mean, median or variance
        (NaN or absent: not such a value, or not known). Such a value is judged against a
        distribution widened by ``sqrt(usual records per bucket / counts)`` (ES's count
        variance scale), and the series learns its usual count.

        ``probes`` = (rows, series, values[, counts]): other values the cells
        ``(rows[j], series[j])`` could have had, of that many records; ``"probe_p"`` in the
        result is the single-bucket probability of each against the state the cell's own
        value met (influence by remove and retest).

        ``lazy_below`` (0 to ``_model.LAZY_MAX_BELOW``; 0, the default: off) is for callers
        that only need the cells with ``min(p_single, p_multi) < lazy_below``: those get
        exactly what they get without it. Another cell may get another ``p_single`` and
        ``p_multi`` than without, but ones that are at least ``lazy_below`` as the exact
        ones are: the features whose p is surely at least ``lazy_below`` are taken as 1, not
        computed (most of them, on ordinary data), and where the single-bucket one is,
        ``lower`` and ``upper`` are NaN. ``typical`` and the state are as without.
        """
        values = np.ascontiguousarray(values, dtype=np.float64)
        if values.ndim == 1 and self._n == 1:
            values = values.reshape(-1, 1)
        buckets = np.ascontiguousarray(bucket_index, dtype=np.int64)
        if values.ndim != 2 or values.shape[1] != self._n:
            raise ValueError(f"values must have shape (buckets, {self._n})")
        if buckets.shape != (values.shape[0],):
            raise ValueError("one bucket index per row of values")
        if len(buckets):
            if not (buckets[1:] > buckets[:-1]).all():
                raise ValueError("bucket indices must increase strictly")
            if buckets[0] <= self._last_bucket:
                raise ValueError(f"bucket {buckets[0]} is not after the last one stepped "
                                 f"({self._last_bucket})")
        if np.isinf(values).any():
            raise ValueError("values must be finite or NaN")
        if counts is None:
            counts = np.empty((0, values.shape[1]))
        else:
            counts = np.ascontiguousarray(counts, dtype=np.float64).reshape(values.shape)
        n = self._n
        lay = self._layout
        cells, order, probe_values, probe_counts = _probe_cells(probes, values.shape)
        out, probe_p = _model.step(
            float(self.bucket_span_s), self._params, values, counts, buckets,
            self._side[:n],
            self._scalars[:n], self._ring[:n], self._daily[:n], self._daily_count[:n],
            self._daily_outliers[:n], self._daily_spikes[:n],
            self._weekly[:n], self._weekly_count[:n], lay["daily_res"], lay["weekly_res"],
            cells, probe_values, probe_counts, lazy_below)
        if len(buckets):
            self._last_bucket = int(buckets[-1])
        result = dict(zip(OUTPUTS, out, strict=True))
        if probes is not None:
            result["probe_p"] = np.empty(len(order))
            result["probe_p"][order] = probe_p
        return result

    # -- persistence --------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """The whole state as numpy arrays (copies); :meth:`from_state` restores it."""
        n = self._n
        return {
            "version": np.array(_STATE_VERSION, dtype=np.int64),
            "bucket_span_s": np.array(self.bucket_span_s, dtype=np.int64),
            "last_bucket": np.array(self._last_bucket, dtype=np.int64),
            "params": self._params.copy(),
            "side": self._side[:n].copy(),
            "scalars": self._scalars[:n].copy(),
            "ring": self._ring[:n].copy(),
            "daily": self._daily[:n].copy(),
            "daily_count": self._daily_count[:n].copy(),
            "daily_outliers": self._daily_outliers[:n].copy(),
            "daily_spikes": self._daily_spikes[:n].copy(),
            "weekly": self._weekly[:n].copy(),
            "weekly_count": self._weekly_count[:n].copy(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> SeriesModels:
        """Rebuild models from :meth:`state`; stepping then continues exactly."""
        if int(state["version"]) != _STATE_VERSION:
            raise ValueError(f"model state version {int(state['version'])} is not "
                             f"{_STATE_VERSION}")
        params = np.asarray(state["params"], dtype=np.float64)
        missing = len(DEFAULT_PARAMS) - params.shape[0]
        if params.ndim == 1 and 0 < missing <= len(_ADDED_PARAMS):
            # an older job: it keeps the behaviour it was created with
            params = np.concatenate([params, list(_ADDED_PARAMS.values())[-missing:]])
        if params.shape != (len(DEFAULT_PARAMS),):
            raise ValueError("model state has the wrong number of parameters")
        side = np.asarray(state["side"], dtype=np.int8)
        n = len(side)
        self = cls(int(state["bucket_span_s"]), max(1, n),
                   dict(zip(DEFAULT_PARAMS, params.tolist(), strict=True)))
        lay = self._layout
        widths = {"scalars": lay["scalars"], "ring": lay["ring"], "daily": lay["daily"],
                  "daily_count": lay["daily"], "daily_outliers": lay["daily"],
                  "daily_spikes": lay["daily"],
                  "weekly": lay["weekly"], "weekly_count": lay["weekly"]}
        for key, width in widths.items():
            if key in ("daily_outliers", "daily_spikes") and key not in state:
                continue  # a state from before it existed: no habits learnt yet
            arr = np.asarray(state[key], dtype=np.float64)
            first = lay.get(f"{key}_first_release")
            if (first is not None and arr.ndim == 2 and arr.shape[0] == n
                    and first <= arr.shape[1] < width):
                # an older state: what was added since (always at the end) starts empty,
                # zero scalars and no slow-level residuals in the ring yet
                fill = 0.0 if key == "scalars" else np.nan
                arr = np.concatenate([arr, np.full((n, width - arr.shape[1]), fill)], axis=1)
            if arr.shape != (n, width):
                raise ValueError(f"model state {key!r} has shape {arr.shape}, "
                                 f"expected {(n, width)}")
            getattr(self, "_" + key)[:n] = arr
        self._side[:n] = side
        self._n = n
        self._last_bucket = int(state["last_bucket"])
        return self
