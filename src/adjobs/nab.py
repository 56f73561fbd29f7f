"""NAB scorer: the Numenta Anomaly Benchmark's scoring rules, vectorised with numpy.

What is scored (spec ``analysis.md`` B.2-B.4; NAB v1.1 ``nab/sweeper.py``):

* A detector gives one anomaly score per row. A row is a *detection* when
  ``score >= threshold``; one threshold for the whole corpus.
* The first ``min(floor(0.15 * n), 750)`` rows of a file are *probationary*: detections there
  are ignored, and they are not threshold candidates.
* Scaled sigmoid ``sigma(y) = 2 / (1 + exp(5 y)) - 1``, and exactly ``-1`` for ``y >= 3``.
* Inside a window of ``w`` rows ending at row ``r``, a detection at row ``i`` is worth
  ``A_TP * sigma(y) / sigma(-1)`` with ``y = -(r - i + 1) / w``: exactly ``A_TP`` on the
  first row, a little above 0 on the last. Only the best, i.e. the earliest, scored detection
  of a window counts; a window without one costs ``-A_FN``. A window only exists for the
  scorer if at least one of its rows is past the probationary period.
* A detection outside every window is worth ``A_FP * sigma(y)`` with
  ``y = |i - r_prev| / (w_prev - 1)`` against the previous window (slightly negative just
  after it, ``-A_FP`` three window-widths later), and ``-A_FP`` before the first window.
* Raw corpus score = sum over files. ``null`` = the raw score of a detector that flags
  nothing (``-A_FN`` per scored window), ``perfect`` = ``A_TP`` per window in the labels, and
  ``normalised = 100 * (raw - null) / (perfect - null)``.

The corpus lives in place under ``<root>/data/<folder>/<file>.csv`` and
``<root>/labels/combined_windows.json``; nothing is copied. Windows are held as inclusive row
index ranges ``[l, r]`` (an edge is the first row whose timestamp equals the label's, as in
NAB; the labels' ``.000000`` suffix is parsed away).

The TP/FP/FN/TN counts are NAB's row counts over the scored rows (a window with three detected
rows has three TP rows); window-level counts are ``windows_detected`` / ``windows_missed``.

``python -m adjobs.nab --baselines [--json]`` prints the synthetic baselines of the spec's
anchor table (null, first-row, mid-row, last-row, every-row at threshold 1.0) on the corpus.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BASELINES",
    "PROFILES",
    "Corpus",
    "CostMatrix",
    "NabFile",
    "baseline_scores",
    "default_root",
    "false_alarms",
    "load_corpus",
    "optimal_threshold",
    "probation_length",
    "scaled_sigmoid",
    "score_corpus",
    "sweep",
]

PROBATION_FRACTION = 0.15
PROBATION_MAX = 750
NO_DETECTION_THRESHOLD = 1.1  # NAB's first sweep threshold: above every score, flags nothing
_FOLDER_NO_ANOMALY = "artificialNoAnomaly"


@dataclass(frozen=True)
class CostMatrix:
    """One NAB application profile (``config/profiles.json``): weights of TP, FN and FP."""

    tp: float
    fn: float
    fp: float


PROFILES: dict[str, CostMatrix] = {
    "standard": CostMatrix(tp=1.0, fn=1.0, fp=0.11),
    "reward_low_FP_rate": CostMatrix(tp=1.0, fn=1.0, fp=0.22),
    "reward_low_FN_rate": CostMatrix(tp=1.0, fn=2.0, fp=0.11),
}


def _cost(profile: str | CostMatrix | Mapping[str, float]) -> tuple[str, CostMatrix]:
    """A profile name, a :class:`CostMatrix` or NAB's ``{"tpWeight", "fnWeight", "fpWeight"}``."""
    if isinstance(profile, str):
        try:
            return profile, PROFILES[profile]
        except KeyError:
            raise ValueError(f"unknown NAB profile {profile!r}; one of {list(PROFILES)}") from None
    if isinstance(profile, CostMatrix):
        return "custom", profile
    return "custom", CostMatrix(
        tp=float(profile["tpWeight"]), fn=float(profile["fnWeight"]), fp=float(profile["fpWeight"])
    )


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that are not scored: ``min(floor(0.15 n), 750)``."""
    return int(min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_MAX))


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's ``2 * sigmoid(-5 y) - 1``, and exactly ``-1`` where ``y >= 3`` (``sweeper.py``)."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):  # exp overflows to inf far right of a window: value -1
        s = 2.0 * (1.0 / (1.0 + np.exp(5.0 * y))) - 1.0
    return np.where(y >= 3.0, -1.0, s)


_SIGMA_MAX = float(scaled_sigmoid(-1.0))  # sigma(-1) = tanh(2.5): the first row of a window


class NabFile:
    """One data file: its rows, its windows, and the per-row position weights.

    ``windows`` is an ``(k, 2)`` int array of inclusive row ranges, sorted and disjoint.
    ``window_id[i]`` is the window holding row ``i`` (``-1`` outside windows) and ``sigma[i]``
    the scaled sigmoid of the row's position: inside a window the TP value before
    ``A_TP / sigma(-1)``, outside it the FP value before ``A_FP``.
    """

    def __init__(
        self,
        name: str,
        timestamps: np.ndarray,
        values: np.ndarray,
        windows: Iterable[tuple[int, int]] = (),
        label_rows: Iterable[int] = (),
        probation: int | None = None,
    ) -> None:
        self.name = name
        self.timestamps = np.asarray(timestamps)
        self.values = np.asarray(values, dtype=np.float64)
        n = len(self.timestamps)
        if len(self.values) != n:
            raise ValueError(f"{name}: {n} timestamps but {len(self.values)} values")
        self.n = n
        self.probation = probation_length(n) if probation is None else int(probation)
        self.windows = np.asarray(list(windows), dtype=np.int64).reshape(-1, 2)
        self.label_rows = np.asarray(list(label_rows), dtype=np.int64)
        left, right = self.windows[:, 0], self.windows[:, 1]
        if np.any(left < 0) or np.any(right >= n) or np.any(right - left < 1):
            # NAB divides by (width - 1) to place a false positive after a window
            raise ValueError(f"{name}: windows must lie inside the file and span >= 2 rows")
        if np.any(left[1:] <= right[:-1]):
            raise ValueError(f"{name}: windows must be sorted and disjoint")

        rows = np.arange(n)
        width = right - left + 1
        # inside windows: a run-length fill of the window id
        cover = np.zeros(n + 1, dtype=np.int64)
        np.add.at(cover, left, 1)
        np.add.at(cover, right + 1, -1)
        inside = np.cumsum(cover[:n]) > 0
        wid = np.searchsorted(left, rows, side="right") - 1
        self.window_id = np.where(inside, wid, -1)
        y = np.empty(n, dtype=np.float64)
        w_in = self.window_id[inside]
        y[inside] = -(right[w_in] - rows[inside] + 1) / width[w_in].astype(np.float64)
        # outside: relative to the previous window's right edge; 3.0 (-> -1) before any window
        prev = np.searchsorted(right, rows[~inside], side="left") - 1
        has_prev = prev >= 0
        out_y = np.full(len(prev), 3.0)
        p = prev[has_prev]
        out_y[has_prev] = np.abs(right[p] - rows[~inside][has_prev]) / (width[p] - 1.0)
        y[~inside] = out_y
        self.position = y
        self.sigma = scaled_sigmoid(y)
        for arr in (self.timestamps, self.values, self.windows, self.label_rows,
                    self.window_id, self.position, self.sigma):
            arr.flags.writeable = False

    @classmethod
    def synthetic(
        cls,
        name: str,
        n: int,
        windows: Iterable[tuple[int, int]] = (),
        probation: int | None = None,
    ) -> NabFile:
        """A file of ``n`` zero-valued rows at 5-minute steps with the given row windows."""
        start = np.datetime64("2020-01-01T00:00:00", "s")
        ts = start + np.arange(n) * np.timedelta64(300, "s")
        return cls(name, ts, np.zeros(n), windows, probation=probation)

    @property
    def folder(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def scored_windows(self) -> int:
        """Windows with at least one row past the probationary period (NAB ignores the rest)."""
        return int(np.count_nonzero(self.windows[:, 1] >= self.probation))

    @property
    def sampling_seconds(self) -> int:
        """The most common step between consecutive timestamps, in seconds."""
        steps = np.diff(self.timestamps).astype("timedelta64[s]").astype(np.int64)
        steps = steps[steps > 0]
        if len(steps) == 0:
            return 0
        vals, counts = np.unique(steps, return_counts=True)
        return int(vals[np.argmax(counts)])

    def __repr__(self) -> str:
        return (f"NabFile({self.name!r}, n={self.n}, probation={self.probation}, "
                f"windows={self.windows.tolist()})")


class Corpus:
    """An ordered set of :class:`NabFile`, keyed by ``"<folder>/<file>.csv"``."""

    def __init__(self, files: Iterable[NabFile], root: pathlib.Path | None = None,
                 n_labelled_windows: int | None = None) -> None:
        self.files: dict[str, NabFile] = {f.name: f for f in files}
        self.root = root
        total = sum(len(f.windows) for f in self.files.values())
        # NAB's ``perfect`` counts the windows in the labels file
        self.n_labelled_windows = total if n_labelled_windows is None else n_labelled_windows

    def __iter__(self):
        return iter(self.files.values())

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, name: str) -> NabFile:
        return self.files[name]

    @property
    def n_rows(self) -> int:
        return sum(f.n for f in self)

    @property
    def n_windows(self) -> int:
        return sum(len(f.windows) for f in self)

    @property
    def n_window_rows(self) -> int:
        return int(sum(int((f.windows[:, 1] - f.windows[:, 0] + 1).sum()) for f in self))

    def folder(self, folder: str) -> list[NabFile]:
        return [f for f in self if f.folder == folder]

    def summary(self) -> dict:
        return {
            "root": str(self.root) if self.root else None,
            "files": len(self),
            "rows": self.n_rows,
            "windows": self.n_windows,
            "window_rows": self.n_window_rows,
            "scored_rows": sum(f.n - f.probation for f in self),
        }


# --------------------------------------------------------------------------------------------
# Loading


def default_root() -> pathlib.Path:
    """``$ADJOBS_NAB_DIR``, else ``$ADJOBS_SHARED_DIR/nab``, else ``shared/nab`` next to the
    repository this module was imported from (``<repo>/../shared``, an editable install),
    else next to the working directory (``../shared``: a checkout the package was installed
    from, as the README runs it)."""
    env = os.environ.get("ADJOBS_NAB_DIR")
    if env:
        return pathlib.Path(env)
    shared = os.environ.get("ADJOBS_SHARED_DIR")
    if shared:
        return pathlib.Path(shared) / "nab"
    beside_source = pathlib.Path(__file__).resolve().parents[3] / "shared" / "nab"
    if beside_source.is_dir():
        return beside_source
    return pathlib.Path.cwd().parent / "shared" / "nab"


def _read_series(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != "timestamp,value":
        raise ValueError(f"{path}: expected the header 'timestamp,value'")
    body = [ln.split(",", 1) for ln in lines[1:] if ln.strip()]
    if any(len(parts) != 2 for parts in body):
        raise ValueError(f"{path}: every row must be 'timestamp,value'")
    ts = np.array([t.strip() for t, _ in body], dtype="datetime64[s]")
    values = np.array([v for _, v in body], dtype=np.float64)
    return ts, values


def _row_of(ts: np.ndarray, stamp: str, where: str) -> int:
    """First row whose timestamp equals a label's (``2014-02-19 10:50:00.000000`` form)."""
    t = np.datetime64(stamp.strip())
    if t != t.astype("datetime64[s]"):
        raise ValueError(f"{where}: label {stamp!r} is not on a whole second")
    hits = np.flatnonzero(ts == t.astype("datetime64[s]"))
    if len(hits) == 0:
        raise ValueError(f"{where}: label {stamp!r} matches no row")
    return int(hits[0])


def load_corpus(
    root: str | os.PathLike | None = None,
    windows_file: str = "combined_windows.json",
    labels_file: str = "combined_labels.json",
) -> Corpus:
    """Load every file named in the windows JSON, in its order. Cached per resolved path."""
    base = pathlib.Path(root) if root is not None else default_root()
    return _load_corpus_cached(str(base.resolve()), windows_file, labels_file)


@functools.lru_cache(maxsize=4)
def _load_corpus_cached(root: str, windows_file: str, labels_file: str) -> Corpus:
    base = pathlib.Path(root)
    windows = json.loads((base / "labels" / windows_file).read_text())
    labels_path = base / "labels" / labels_file
    points = json.loads(labels_path.read_text()) if labels_path.exists() else {}
    files = []
    for name, limits in windows.items():
        ts, values = _read_series(base / "data" / name)
        rows = [(_row_of(ts, a, name), _row_of(ts, b, name)) for a, b in limits]
        label_rows = [_row_of(ts, p, name) for p in points.get(name, [])]
        files.append(NabFile(name, ts, values, rows, label_rows))
    return Corpus(files, root=base)


# --------------------------------------------------------------------------------------------
# Scoring


def _scores_for(scores_by_file: Mapping[str, object], corpus: Corpus,
                names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Check the per-file score arrays: one finite score per row, every file present."""
    wanted = list(corpus.files) if names is None else list(names)
    missing = [n for n in wanted if n not in scores_by_file]
    if missing:
        raise ValueError(f"no scores for {len(missing)} file(s), e.g. {missing[:3]}")
    if names is None:
        extra = [n for n in scores_by_file if n not in corpus.files]
        if extra:
            raise ValueError(f"scores for {len(extra)} unknown file(s), e.g. {extra[:3]}")
    out = {}
    for name in wanted:
        s = np.asarray(scores_by_file[name], dtype=np.float64)
        f = corpus[name]
        if s.shape != (f.n,):
            raise ValueError(f"{name}: {s.shape[0] if s.ndim else 0} scores for {f.n} rows")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name}: scores must be finite")
        out[name] = s
    return out


def _normalise(raw: float, null: float, perfect: float) -> float | None:
    if perfect == null:
        return None  # no scored window: NAB's normalisation is undefined
    return 100.0 * (raw - null) / (perfect - null)


def score_corpus(
    scores_by_file: Mapping[str, object],
    threshold: float,
    profile: str | CostMatrix | Mapping[str, float] = "standard",
    corpus: Corpus | None = None,
) -> dict:
    """Score per-row anomaly scores (``{file name: array}``) at one corpus-wide threshold.

    Returns ``raw``, ``null``, ``perfect``, ``normalised`` (0 = null detector, 100 = every
    window detected on its first row), NAB's row counts ``tp``/``fp``/``fn``/``tn`` over
    scored rows, ``windows``/``windows_detected``/``windows_missed`` and ``per_file`` raw
    scores.
    """
    corpus = load_corpus() if corpus is None else corpus
    name, cm = _cost(profile)
    scores = _scores_for(scores_by_file, corpus)
    raw_total = 0.0
    per_file = {}
    tp = fp = fn = tn = 0
    n_windows = detected = 0
    for f in corpus:
        p = f.probation
        det = scores[f.name][p:] >= threshold
        wid = f.window_id[p:]
        sig = f.sigma[p:]
        inside = wid >= 0
        fp_rows = det & ~inside
        fp_score = float(np.sum(cm.fp * sig[fp_rows]))
        # earliest detected row of each window: flatnonzero is ascending, unique keeps firsts
        tp_rows = np.flatnonzero(det & inside)
        hit_windows, first = np.unique(wid[tp_rows], return_index=True)
        tp_score = float(np.sum(sig[tp_rows[first]] * cm.tp / _SIGMA_MAX))
        scored = len(np.unique(wid[inside]))
        file_raw = tp_score + fp_score - cm.fn * (scored - len(hit_windows))
        per_file[f.name] = file_raw
        raw_total += file_raw
        n_windows += scored
        detected += len(hit_windows)
        n_tp, n_fp = len(tp_rows), int(np.count_nonzero(fp_rows))
        tp += n_tp
        fp += n_fp
        fn += int(np.count_nonzero(inside)) - n_tp
        tn += int(np.count_nonzero(~inside)) - n_fp
    null = -cm.fn * n_windows
    perfect = cm.tp * corpus.n_labelled_windows
    return {
        "profile": name,
        "threshold": float(threshold),
        "raw": raw_total,
        "null": null,
        "perfect": perfect,
        "normalised": _normalise(raw_total, null, perfect),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "windows": n_windows,
        "windows_detected": detected,
        "windows_missed": n_windows - detected,
        "per_file": per_file,
    }


def sweep(
    scores_by_file: Mapping[str, object],
    profile: str | CostMatrix | Mapping[str, float] = "standard",
    corpus: Corpus | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw corpus score at every candidate threshold, highest threshold first.

    The candidates are :data:`NO_DETECTION_THRESHOLD` (above every score: flags nothing) and
    every distinct score of a scored row, as NAB's ``calcScoreByThreshold``. One sort, no
    re-scoring: each scored row becomes an *event* that changes the raw score by a fixed
    amount from its own score downwards. An FP row adds ``A_FP * sigma``. Inside a window,
    lowering the threshold only matters when a row *earlier* than every row already in
    enters (the earliest detection is the best), so each window contributes one event per
    such record row, worth the rise from the previous record (from ``-A_FN`` for the first).
    ``raw(t) = -A_FN * scored windows + sum of events with score >= t``.
    """
    corpus = load_corpus() if corpus is None else corpus
    _, cm = _cost(profile)
    scores = _scores_for(scores_by_file, corpus)
    ev_score, ev_gain, candidates = [], [], []
    n_windows = 0
    offset = 0  # makes window ids unique across files
    for f in corpus:
        p = f.probation
        s = scores[f.name][p:]
        wid = f.window_id[p:]
        sig = f.sigma[p:]
        row = np.arange(p, f.n)
        candidates.append(s)
        out = wid < 0
        ev_score.append(s[out])
        ev_gain.append(cm.fp * sig[out])
        inside = ~out
        if not inside.any():
            continue
        ws, ww, wr, wsig = s[inside], wid[inside] + offset, row[inside], sig[inside]
        offset += len(f.windows)
        n_windows += len(np.unique(ww))
        order = np.lexsort((wr, -ws, ww))  # by window, then score descending, then row
        ws, ww, wr, wsig = ws[order], ww[order], wr[order], wsig[order]
        # running minimum row within each window; decreasing group offsets restart it
        key = (offset - ww) * np.int64(f.n + 1) + wr
        running = np.minimum.accumulate(key)
        record = np.r_[True, running[1:] != running[:-1]]
        value = wsig[record] * cm.tp / _SIGMA_MAX
        group = ww[record]
        before = np.r_[-cm.fn, value[:-1]]
        before[np.r_[True, group[1:] != group[:-1]]] = -cm.fn
        ev_score.append(ws[record])
        ev_gain.append(value - before)
    es = np.concatenate(ev_score) if ev_score else np.empty(0)
    eg = np.concatenate(ev_gain) if ev_gain else np.empty(0)
    order = np.argsort(-es, kind="stable")
    cum = np.r_[0.0, np.cumsum(eg[order])]
    ascending = es[order][::-1]
    thresholds = np.unique(np.concatenate(candidates) if candidates else np.empty(0))[::-1]
    # events with score >= t are the first (len - #events below t) in descending order
    taken = len(es) - np.searchsorted(ascending, thresholds, side="left")
    base = -cm.fn * n_windows
    # "flag nothing": NAB's 1.1, or just above the top score if scores go beyond 1
    top = NO_DETECTION_THRESHOLD
    if len(thresholds) and thresholds[0] >= top:
        top = float(np.nextafter(thresholds[0], np.inf))
    return np.r_[top, thresholds], base + np.r_[0.0, cum[taken]]


def optimal_threshold(
    scores_by_file: Mapping[str, object],
    profile: str | CostMatrix | Mapping[str, float] = "standard",
    corpus: Corpus | None = None,
) -> dict:
    """The corpus-optimal threshold by an exhaustive :func:`sweep`, scored by
    :func:`score_corpus`. Ties go to the highest threshold (NAB's stable sort keeps the first
    of its descending list). Returns :func:`score_corpus`'s dict (``threshold`` included)."""
    corpus = load_corpus() if corpus is None else corpus
    thresholds, raw = sweep(scores_by_file, profile, corpus)
    best = int(np.argmax(raw))
    return score_corpus(scores_by_file, float(thresholds[best]), profile, corpus)


def false_alarms(
    scores_by_file: Mapping[str, object],
    threshold: float = 0.75,
    corpus: Corpus | None = None,
    folder: str = _FOLDER_NO_ANOMALY,
    include_probation: bool = False,
) -> dict:
    """Rows with ``score >= threshold`` per 10,000 rows on a folder without anomalies.

    Every such row is a false alarm on ``artificialNoAnomaly``. By default only scored rows
    (past the probationary period) count, as NAB scores them; ``include_probation`` counts
    every row. ``scores_by_file`` may hold other files too; those of the folder must be there.
    """
    corpus = load_corpus() if corpus is None else corpus
    files = corpus.folder(folder)
    if not files:
        raise ValueError(f"no files in folder {folder!r}")
    scores = _scores_for(scores_by_file, corpus, [f.name for f in files])
    rows = alarms = 0
    for f in files:
        s = scores[f.name] if include_probation else scores[f.name][f.probation:]
        rows += len(s)
        alarms += int(np.count_nonzero(s >= threshold))
    return {
        "folder": folder,
        "threshold": float(threshold),
        "files": len(files),
        "rows": rows,
        "alarms": alarms,
        "per_10k_rows": 1e4 * alarms / rows if rows else 0.0,
    }


# --------------------------------------------------------------------------------------------
# Synthetic baselines (the spec's unit-test anchor table)

BASELINES = ("null", "first_row", "mid_row", "last_row", "every_row")


def baseline_scores(kind: str, corpus: Corpus | None = None) -> dict[str, np.ndarray]:
    """Per-file scores of a synthetic detector: 1.0 on the chosen rows, 0 elsewhere.

    ``null`` flags nothing; ``first_row`` / ``mid_row`` / ``last_row`` flag row ``l``,
    ``(l + r) // 2`` or ``r`` of every window ``[l, r]``; ``every_row`` flags every row.
    """
    corpus = load_corpus() if corpus is None else corpus
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; one of {BASELINES}")
    out = {}
    for f in corpus:
        s = np.ones(f.n) if kind == "every_row" else np.zeros(f.n)
        left, right = f.windows[:, 0], f.windows[:, 1]
        if kind == "first_row":
            s[left] = 1.0
        elif kind == "mid_row":
            s[(left + right) // 2] = 1.0
        elif kind == "last_row":
            s[right] = 1.0
        out[f.name] = s
    return out


def baselines_report(corpus: Corpus | None = None, threshold: float = 1.0) -> dict:
    """Every baseline scored on every profile at ``threshold`` (per-file scores left out)."""
    corpus = load_corpus() if corpus is None else corpus
    results = {}
    for kind in BASELINES:
        scores = baseline_scores(kind, corpus)
        results[kind] = {}
        for profile in PROFILES:
            r = score_corpus(scores, threshold, profile, corpus)
            r.pop("per_file")
            r.pop("profile")
            r.pop("threshold")
            results[kind][profile] = r
    return {"corpus": corpus.summary(), "threshold": threshold, "baselines": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adjobs.nab",
        description="NAB scorer. --baselines scores the spec's synthetic anchor detectors.",
    )
    parser.add_argument("--baselines", action="store_true",
                        help="score null / first-row / mid-row / last-row / every-row")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--data", default=None,
                        help="NAB directory with data/ and labels/ (default: %(default)s -> "
                             "$ADJOBS_NAB_DIR or <repo>/../shared/nab)")
    args = parser.parse_args(argv)
    if not args.baselines:
        parser.print_help()
        return 2
    report = baselines_report(load_corpus(args.data))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    c = report["corpus"]
    print(f"NAB corpus {c['root']}: {c['files']} files, {c['rows']} rows, "
          f"{c['windows']} windows; threshold {report['threshold']}")
    print(f"{'detector':<10} " + " ".join(f"{p:>20}" for p in PROFILES))
    for kind, by_profile in report["baselines"].items():
        cells = " ".join(f"{by_profile[p]['normalised']:>20.2f}" for p in PROFILES)
        print(f"{kind:<10} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
