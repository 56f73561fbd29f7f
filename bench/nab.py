"""NAB benchmark of the anomaly detection (``python -m bench.nab --library``).

Modes
-----
``--library``
    The figure that counts: one real job per file (``mean(value)``, bucket span = the file's
    sampling interval) through ``adjobs.JobService``, each row scored by the
    ``initial_record_score / 100`` of its bucket's record (0 without one), two files at a time.
``--direct``
    A quicker look at the model alone, for experiments: every file of the NAB subset goes through :class:`adjobs.model.SeriesModels` on its own
    (one series per file, one bucket per row, bucket span = the file's sampling interval,
    values fed in blocks of ``--block`` rows). Each row's probabilities become a score in 0..1
    the way a job scores a record: ``scoring.combine_single_multi`` -> ``scoring.raw_score`` ->
    a per-series ``scoring.Normaliser`` (updated with the bucket, then asked for the causal
    initial record score) -> ``/ 100``. Its normalisation is simpler than a job's (one
    scope, every bucket's score), and its figures can be far from ``--library``'s (36.0 against
    51.2 standard with the same model): judge a change with ``--library``.

Scores are reported as NAB allows (shared/spec/analysis.md, "How to evaluate adjobs on NAB"):
the three profiles at the corpus-optimal threshold (an exhaustive sweep with ``adjobs.nab``;
the only fitted number), at the fixed thresholds 0.50 and 0.75, the false alarms >= 0.75 per
10,000 scored rows of ``artificialNoAnomaly``, rows/s of the model alone and of the whole
scoring, peak RSS and total seconds. Scores are causal: row t's score uses rows <= t only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from adjobs import nab, scoring
from adjobs.model import DEFAULT_PARAMS, SeriesModels
from bench._common import peak_rss_mb

FIXED_THRESHOLDS = (0.50, 0.75)


def bucket_indices(f: nab.NabFile, span: int) -> np.ndarray:
    """Bucket number since the epoch of every row: rows are buckets.

    A few files have duplicate, off-grid or backward timestamps; a row then takes the next
    bucket after its predecessor's, so every row stays one bucket and the time of day stays
    close to the timestamp's.
    """
    seconds = f.timestamps.astype("datetime64[s]").astype(np.int64)
    raw = seconds // span
    # b[i] = max(raw[i], b[i-1] + 1)  <=>  b[i] - i = running max of (raw[i] - i)
    steps = np.arange(len(raw))
    return np.maximum.accumulate(raw - steps) + steps


def model_outputs(f: nab.NabFile, block: int,
                  params: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Step one file through a fresh model, ``block`` rows per call; outputs per row."""
    span = f.sampling_seconds
    models = SeriesModels(span, 1, params)
    models.add_series(0)
    buckets = bucket_indices(f, span)
    values = f.values.reshape(-1, 1)
    parts = []
    for start in range(0, f.n, block):
        parts.append(models.step(values[start:start + block], buckets[start:start + block]))
    return {k: np.concatenate([p[k][:, 0] for p in parts]) for k in parts[0]}


def row_scores(f: nab.NabFile, out: Mapping[str, np.ndarray]) -> np.ndarray:
    """Causal row scores in 0..1: the normalised record score of each bucket / 100.

    The normaliser is updated with each bucket's raw score and then normalises it, as a job
    does when it finalises a bucket. Runs of zero raw scores are added in one update: a
    bucket with raw score 0 always normalises to 0, and the scope's age is reset either way.
    """
    p = scoring.combine_single_multi(np.nan_to_num(out["p_single"], nan=1.0),
                                     np.nan_to_num(out["p_multi"], nan=1.0))
    raw = np.asarray(scoring.raw_score(p), dtype=np.float64)
    norm = scoring.Normaliser(f.sampling_seconds)
    scores = np.zeros(f.n)
    pending = 0
    for i in np.flatnonzero(raw > 0.0):
        # zeros since the last positive score, then this bucket
        zeros = i - pending
        if zeros:
            norm.update(np.zeros(zeros))
        norm.update(raw[i:i + 1])
        scores[i] = norm.normalise(raw[i:i + 1], probabilities=p[i:i + 1])[0] / 100.0
        pending = i + 1
    return scores


def direct_scores(corpus: nab.Corpus, block: int,
                  params: Mapping[str, float] | None = None) -> tuple[dict, dict, float]:
    """Scores of every file, the raw model outputs, and the seconds spent in the model."""
    scores, outputs = {}, {}
    model_seconds = 0.0
    for f in corpus:
        start = time.perf_counter()
        out = model_outputs(f, block, params)
        model_seconds += time.perf_counter() - start
        outputs[f.name] = out
        scores[f.name] = row_scores(f, out)
    return scores, outputs, model_seconds


def job_config(f: nab.NabFile) -> dict:
    """The job of analysis.md's "How to evaluate adjobs on NAB": ``mean(value)``, one bucket
    per row, the CSV read as the NAB README says."""
    return {
        "analysis_config": {
            "bucket_span": f"{f.sampling_seconds}s",
            "detectors": [{"function": "mean", "field_name": "value"}],
        },
        "data_description": {
            "format": "delimited",
            "field_delimiter": ",",
            "time_field": "timestamp",
            "time_format": "yyyy-MM-dd HH:mm:ss",
        },
    }


def library_file_scores(root: Path, f: nab.NabFile) -> np.ndarray:
    """Post one file to a real job and score each row by the ``initial_record_score`` / 100
    of its bucket's record (0 where the bucket has none)."""
    import adjobs

    span_ms = f.sampling_seconds * 1000
    with adjobs.JobService() as service:
        service.put_job("nab", job_config(f))
        service.open_job("nab")
        service.post_data("nab", root / "data" / f.name)
        service.flush_job("nab")
        by_bucket: dict[int, float] = {}
        start = 0
        while True:
            # Pages of at most 10,000 (ES's result window), walking forward in time.
            page = service.get_records("nab", start=start, sort="timestamp", desc=False,
                                       size=10_000)["records"]
            for record in page:
                by_bucket[record["timestamp"]] = max(by_bucket.get(record["timestamp"], 0.0),
                                                     record["initial_record_score"])
            if len(page) < 10_000:
                break
            start = page[-1]["timestamp"] + 1
    ms = f.timestamps.astype("datetime64[ms]").astype(np.int64)
    buckets = ms // span_ms * span_ms
    return np.array([by_bucket.get(int(b), 0.0) for b in buckets]) / 100.0


def _use_params(params: Mapping[str, float]) -> None:
    """Make ``params`` every job's model defaults, in this (worker) process only."""
    from adjobs import model

    model.DEFAULT_PARAMS.update(params)


def library_scores(corpus: nab.Corpus, root: Path, workers: int = 2,
                   params: Mapping[str, float] | None = None) -> dict:
    """Every file through its own job, ``workers`` files at a time (processes), the jobs'
    models with ``params`` over the defaults."""
    from concurrent.futures import ProcessPoolExecutor

    files = list(corpus)
    with ProcessPoolExecutor(max_workers=workers, initializer=_use_params,
                             initargs=(dict(params or {}),)) as pool:
        results = pool.map(library_file_scores, [root] * len(files), files)
        return {f.name: scores for f, scores in zip(files, results, strict=True)}


def evaluate(corpus: nab.Corpus, scores: Mapping[str, np.ndarray]) -> dict:
    """Profiles at the corpus-optimal thresholds and at the fixed ones, and false alarms."""

    def brief(r: dict) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                if k in ("threshold", "normalised", "windows_detected", "windows_missed",
                         "tp", "fp")}

    report: dict = {"corpus_optimal": {}, "fixed": {}}
    for profile in nab.PROFILES:
        report["corpus_optimal"][profile] = brief(nab.optimal_threshold(scores, profile, corpus))
    for t in FIXED_THRESHOLDS:
        report["fixed"][f"{t:.2f}"] = {
            profile: brief(nab.score_corpus(scores, t, profile, corpus))
            for profile in nab.PROFILES
        }
    fa = nab.false_alarms(scores, 0.75, corpus)
    report["false_alarms_0.75_artificialNoAnomaly"] = {
        "alarms": fa["alarms"], "rows": fa["rows"], "per_10k_rows": round(fa["per_10k_rows"], 3)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nab", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--direct", action="store_true", help="SeriesModels on every file")
    mode.add_argument("--library", action="store_true",
                      help="real jobs through adjobs.JobService (the figure that counts)")
    parser.add_argument("--data", default=None, help="NAB directory (default: adjobs.nab's)")
    parser.add_argument("--block", type=int, default=1000, help="rows per model call")
    parser.add_argument("--workers", type=int, default=2,
                        help="--library: files analysed at once (processes)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a model parameter (experiments only)")
    parser.add_argument("--per-file", action="store_true",
                        help="add each file's raw standard score at the optimal threshold")
    args = parser.parse_args(argv)
    params = {}
    for item in args.param:
        name, _, value = item.partition("=")
        if name not in DEFAULT_PARAMS:
            parser.error(f"unknown parameter {name!r}")
        params[name] = float(value)

    t0 = time.perf_counter()
    corpus = nab.load_corpus(args.data)
    load_seconds = time.perf_counter() - t0
    if args.library:
        t1 = time.perf_counter()
        scores = library_scores(corpus, Path(args.data) if args.data else nab.default_root(),
                                args.workers, params)
        score_seconds = time.perf_counter() - t1
        model_seconds = float("nan")
    else:
        t1 = time.perf_counter()
        scores, _, model_seconds = direct_scores(corpus, args.block, params or None)
        score_seconds = time.perf_counter() - t1
    report = {
        "mode": "library" if args.library else "direct",
        "score": "initial_record_score / 100 of each row's bucket (real jobs)" if args.library
        else "scoring.Normaliser initial record score / 100 "
             "(combine_single_multi -> raw_score -> Normaliser)",
        "params": params or "defaults",
        "corpus": corpus.summary(),
    }
    report.update(evaluate(corpus, scores))
    if args.per_file:
        best = nab.optimal_threshold(scores, "standard", corpus)
        report["per_file_standard_raw"] = {k: round(v, 3) for k, v in best["per_file"].items()}
    rows = corpus.n_rows
    report["performance"] = {
        "rows": rows,
        "model_seconds": None if args.library else round(model_seconds, 3),
        "model_rows_per_s": None if args.library else round(rows / model_seconds),
        "model_and_scoring_rows_per_s": round(rows / score_seconds),
        "load_seconds": round(load_seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "bytes_per_series": {str(s): SeriesModels(s).bytes_per_series
                             for s in sorted({f.sampling_seconds for f in corpus})},
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
