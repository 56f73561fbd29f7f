"""Ingest benchmark: adjobs ``post_data`` against bare simdjson, an orjson loop and pandas.

Run from the repository root::

    python -m bench.ingest --json              # full run: >=100 MB NDJSON, >=50 MB CSV
    python -m bench.ingest --json --big        # also post a >=1 GB NDJSON file, with peak RSS
    python -m bench.ingest --quick             # small inputs, smoke run
    python -m bench.ingest --baselines-only    # only the orjson and pandas baselines

Inputs come from :mod:`adjobs.datagen` with a fixed seed (printed) and are cached in
``bench/.cache/`` (which ignores itself in git). NDJSON and CSV hold the same records.

Every configuration runs in its own fresh subprocess (so that its peak RSS is its own) and
is timed as the median of at least 5 runs after a warm-up run, which also means that files
are read from the page cache, not from the disk. Each speed is reported in MB/s (10**6
bytes) and records/s, and the headline figures are ratios against baselines measured in the
same command:

* ``ndjson.adjobs_vs_bare``: adjobs over a minimal simdjson ``iterate_many`` loop that only
  visits keys and raw values (``adjobs._core.bare_simdjson_scan``); target >= 0.5;
* ``ndjson.adjobs_vs_orjson``: adjobs over a Python loop with orjson + ciso8601 doing the
  same per-record work (:func:`orjson_loop`); target >= 15;
* ``csv.adjobs_vs_pandas``: adjobs on the CSV over ``pandas.read_csv`` +
  ``pandas.to_datetime`` (:func:`pandas_csv`); target >= 8;
* ``big_file``: seconds and peak RSS of posting the >= 1 GB file; target <= 200 MB.

The bare and orjson baselines get the file already in memory (read once, outside the
timing), while adjobs reads it from the path itself: the comparison is conservative for
adjobs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench._common import (
    MIN_REPEATS,
    bench_parser,
    cache_dir,
    fingerprint,
    load_average,
    load_note,
    log,
    machine_info,
    median_seconds,
    peak_rss_mb,
    ratio,
    run_and_print,
    run_worker,
    throughput,
)

MB = 1_000_000
#: Input sizes (bytes) of a full run and of a ``--quick`` run.
TARGET_BYTES = {"ndjson": 100 * MB, "csv": 50 * MB, "big": 1000 * MB}
QUICK_TARGET_BYTES = {"ndjson": 5 * MB, "csv": 3 * MB, "big": 50 * MB}
#: What each ratio should reach.
TARGETS = {
    "ndjson.adjobs_vs_bare": ">= 0.5",
    "ndjson.adjobs_vs_orjson": ">= 15",
    "csv.adjobs_vs_pandas": ">= 8",
    "big_file.peak_rss_mb": "<= 200",
}
BIG_REPEATS = MIN_REPEATS

# The demo job's view of the data (see adjobs.datagen.demo_job_config): the orjson loop
# checks the same fields and uses the same bucket span.
TIME_FIELD = "@timestamp"
ANALYSIS_FIELDS = ("responsetime", "airline")
BUCKET_SPAN_MS = 15 * 60 * 1000


# --- baselines (plain functions, also used by tests/perf) -------------------------------------


def orjson_loop(
    data: bytes,
    *,
    time_field: str = TIME_FIELD,
    analysis_fields: tuple[str, ...] = ANALYSIS_FIELDS,
    bucket_span_ms: int = BUCKET_SPAN_MS,
) -> dict:
    """Count NDJSON records the way ``post_data`` does, in plain Python with orjson + ciso8601.

    Per record: parse the line, count its fields, count missing analysis fields, parse the
    ISO time with ciso8601, apply the out-of-order rule (out of order if the record's second
    is before the second of the start of the latest accepted record's bucket) and count the
    record in its bucket. This is the best a careful pure-Python implementation does, and
    what adjobs has to beat.

    Parameters
    ----------
    data : bytes
        NDJSON, one flat document per line.
    time_field : str
        Key of the ISO 8601 time.
    analysis_fields : tuple of str
        Fields the job analyses.
    bucket_span_ms : int
        Bucket span of the job.

    Returns
    -------
    dict
        Counts named as in the ES data-counts object, plus ``bucket_count`` (distinct
        buckets seen).
    """
    import ciso8601
    import orjson

    loads = orjson.loads
    parse = ciso8601.parse_datetime
    latest = 0
    # Second of the start of the latest accepted record's bucket: recomputed only when the
    # latest time moves, as a careful implementation would.
    latest_bucket_s = 0
    processed = out_of_order = invalid = missing = input_fields = 0
    buckets: dict[int, int] = {}
    bucket_get = buckets.get
    for line in data.splitlines():
        if not line:
            continue
        document = loads(line)
        n_fields = len(document)
        if n_fields > 1:
            input_fields += n_fields - 1  # one field is taken to be the time
        for name in analysis_fields:
            if name not in document:
                missing += 1
        text = document.get(time_field)
        if text is None:
            missing += 1
            invalid += 1
            continue
        try:
            time_ms = round(parse(text).timestamp() * 1000)
        except (ValueError, TypeError):
            invalid += 1
            continue
        if time_ms // 1000 < latest_bucket_s:
            out_of_order += 1
            continue
        if time_ms > latest:
            latest = time_ms
            latest_bucket_s = (latest - latest % bucket_span_ms) // 1000
        processed += 1
        bucket = time_ms - time_ms % bucket_span_ms
        buckets[bucket] = bucket_get(bucket, 0) + 1
    return {
        "processed_record_count": processed,
        "input_field_count": input_fields,
        "invalid_date_count": invalid,
        "missing_field_count": missing,
        "out_of_order_timestamp_count": out_of_order,
        "bucket_count": len(buckets),
    }


def pandas_csv(path: str | os.PathLike) -> int:
    """Read the benchmark CSV with ``pandas.read_csv`` and parse its time column.

    ``format="ISO8601"`` selects pandas' fast ISO parser, so the baseline is pandas at its
    best with the default C reader.

    Returns
    -------
    int
        The number of rows read.
    """
    import pandas as pd

    frame = pd.read_csv(path)
    frame["time"] = pd.to_datetime(frame["time"], format="ISO8601", utc=True)
    return len(frame)


# --- inputs -----------------------------------------------------------------------------------


def _datagen_version() -> str:
    # Cached files are named after the generator's source, so a change to it regenerates them.
    from adjobs import datagen

    return fingerprint(Path(datagen.__file__).read_bytes())


class _ByteCounter:
    """A write-only file that only counts bytes: sizes a scale without touching the disk."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def _scale_for(targets: dict[str, int], kinds: list[str], seed: int) -> float:
    """Smallest round scale at which every kind of file reaches its target size."""
    from adjobs import datagen

    writers = {"ndjson": datagen.write_ndjson, "big": datagen.write_ndjson}
    writers["csv"] = datagen.write_csv
    needed = 0.0
    for kind in kinds:
        counter = _ByteCounter()
        writers[kind](counter, datagen.generate_batches(seed=seed))
        needed = max(needed, targets[kind] / counter.size)
    # 3 % headroom for Poisson noise, rounded up to a tenth so names stay readable.
    return -(-needed * 1.03 * 10 // 1) / 10


def ensure_input(kind: str, *, scale: float, seed: int, directory: Path) -> dict:
    """Generate (or reuse from the cache) one benchmark input.

    Parameters
    ----------
    kind : {"ndjson", "csv", "big"}
        ``"big"`` is NDJSON too.
    scale, seed : float, int
        Passed to :func:`adjobs.datagen.generate_batches`.
    directory : Path
        Cache directory.

    Returns
    -------
    dict
        ``path``, ``bytes`` and ``records`` of the file.
    """
    from adjobs import datagen

    suffix = "csv" if kind == "csv" else "ndjson"
    stem = f"farequote-seed{seed}-scale{scale:g}-{_datagen_version()}"
    path = directory / f"{stem}.{suffix}"
    meta_path = path.with_suffix(path.suffix + ".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("bytes") == path.stat().st_size:
            return meta
    log(f"generating {path.name} (seed={seed}, scale={scale:g}) ...")
    partial = path.with_suffix(path.suffix + ".partial")
    writer = datagen.write_csv if kind == "csv" else datagen.write_ndjson
    records = writer(partial, datagen.generate_batches(seed=seed, scale=scale))
    # Rename only when complete, so an interrupted run never leaves a truncated cached file.
    partial.replace(path)
    meta = {"path": str(path), "bytes": path.stat().st_size, "records": records}
    meta_path.write_text(json.dumps(meta))
    return meta


# --- workers: each runs in its own subprocess ---------------------------------------------------


def _worker_adjobs(path: Path, records: int, delimited: bool, repeats: int) -> dict:
    import adjobs
    from adjobs.datagen import demo_job_config

    body = demo_job_config(delimited=delimited)
    service = adjobs.JobService()
    run_index = iter(range(1_000_000))

    def setup() -> tuple:
        job_id = f"bench-ingest-{next(run_index)}"
        service.put_job(job_id, body)
        service.open_job(job_id)
        return (job_id,)

    def post(job_id: str) -> dict:
        return service.post_data(job_id, path)

    def check_and_clean(args: tuple, counts: dict) -> None:
        (job_id,) = args
        processed = counts["processed_record_count"]
        service.close_job(job_id)
        service.delete_job(job_id)
        if processed != records:
            raise SystemExit(
                f"adjobs processed {processed} records of {records} in {path}: counts={counts}"
            )

    seconds, runs = median_seconds(post, repeats=repeats, setup=setup, teardown=check_and_clean)
    return {"seconds_median": seconds, "seconds_runs": runs}


def _worker_bare(path: Path, records: int, repeats: int) -> dict:
    from adjobs import _core

    data = path.read_bytes()
    expected_fields = 3 * records  # time, airline, responsetime

    def check(args: tuple, fields: int) -> None:
        if fields != expected_fields:
            raise SystemExit(f"bare_simdjson_scan visited {fields} fields, not {expected_fields}")

    seconds, runs = median_seconds(
        _core.bare_simdjson_scan, repeats=repeats, setup=lambda: (data,), teardown=check
    )
    return {"seconds_median": seconds, "seconds_runs": runs}


def _worker_orjson(path: Path, records: int, repeats: int) -> dict:
    data = path.read_bytes()

    def check(args: tuple, counts: dict) -> None:
        if counts["processed_record_count"] != records:
            raise SystemExit(f"orjson loop processed {counts}, expected {records} records")

    seconds, runs = median_seconds(
        orjson_loop, repeats=repeats, setup=lambda: (data,), teardown=check
    )
    return {"seconds_median": seconds, "seconds_runs": runs}


def _worker_pandas(path: Path, records: int, repeats: int) -> dict:
    def check(args: tuple, rows: int) -> None:
        if rows != records:
            raise SystemExit(f"pandas read {rows} rows, expected {records}")

    seconds, runs = median_seconds(
        pandas_csv, repeats=repeats, setup=lambda: (path,), teardown=check
    )
    return {"seconds_median": seconds, "seconds_runs": runs}


CASES = ("adjobs-ndjson", "adjobs-csv", "bare-ndjson", "orjson-ndjson", "pandas-csv")


def _run_worker_main(case: str, path: Path, records: int, repeats: int) -> None:
    if case == "adjobs-ndjson":
        result = _worker_adjobs(path, records, delimited=False, repeats=repeats)
    elif case == "adjobs-csv":
        result = _worker_adjobs(path, records, delimited=True, repeats=repeats)
    elif case == "bare-ndjson":
        result = _worker_bare(path, records, repeats)
    elif case == "orjson-ndjson":
        result = _worker_orjson(path, records, repeats)
    elif case == "pandas-csv":
        result = _worker_pandas(path, records, repeats)
    else:
        raise SystemExit(f"unknown case {case!r}")
    result["case"] = case
    result["vm_hwm_mb"] = round(peak_rss_mb(), 1)
    json.dump(result, sys.stdout)


# --- driver ---------------------------------------------------------------------------------------


def _measure(case: str, data: dict, repeats: int) -> dict:
    """Run one configuration in a fresh subprocess and return its figures."""
    log(f"measuring {case} on {Path(data['path']).name} ({repeats} runs) ...")
    args = ["--worker", case, "--file", data["path"]]
    args += ["--records", str(data["records"]), "--repeats", str(repeats)]
    try:
        result = run_worker("bench.ingest", args)
    except RuntimeError as error:
        return {"error": str(error)}
    seconds = result["seconds_median"]
    figures = {
        "seconds_median": round(seconds, 4),
        "seconds_runs": [round(s, 4) for s in result["seconds_runs"]],
        **throughput(seconds, data["bytes"], data["records"]),
        "peak_rss_mb": result["peak_rss_mb"],
    }
    return figures


def _missing_modules(*names: str) -> str | None:
    import importlib.util

    absent = [n for n in names if importlib.util.find_spec(n) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (pip install {' '.join(absent)})"
    return None


def _mb_per_s(figures: dict | None) -> float | None:
    return figures.get("mb_per_s") if figures else None


def run(options: argparse.Namespace) -> dict:
    """Generate the inputs, measure every configuration and assemble the report."""
    targets = QUICK_TARGET_BYTES if options.quick else TARGET_BYTES
    repeats = options.repeats
    seed = options.seed
    log(f"bench.ingest seed={seed}")
    directory = cache_dir(options.cache_dir)
    load_before = load_average()

    scale = _scale_for(targets, ["ndjson", "csv"], seed)
    ndjson = ensure_input("ndjson", scale=scale, seed=seed, directory=directory)
    csv = ensure_input("csv", scale=scale, seed=seed, directory=directory)
    for kind, data in (("ndjson", ndjson), ("csv", csv)):
        if data["bytes"] < targets[kind]:
            raise SystemExit(f"{kind} input is {data['bytes']} bytes, below {targets[kind]}")

    with_adjobs = not options.baselines_only
    report: dict = {
        "benchmark": "ingest",
        "seed": seed,
        "quick": options.quick,
        "repeats": repeats,
        "machine": machine_info(),
        "inputs": {"ndjson": ndjson, "csv": csv},
        "targets": TARGETS,
    }

    results: dict[str, dict | None] = {}
    results["orjson_loop"] = (
        {"skipped": reason}
        if (reason := _missing_modules("orjson", "ciso8601"))
        else _measure("orjson-ndjson", ndjson, repeats)
    )
    results["pandas"] = (
        {"skipped": reason}
        if (reason := _missing_modules("pandas"))
        else _measure("pandas-csv", csv, repeats)
    )
    if with_adjobs:
        results["bare_simdjson"] = _measure("bare-ndjson", ndjson, repeats)
        results["adjobs_ndjson"] = _measure("adjobs-ndjson", ndjson, repeats)
        results["adjobs_csv"] = _measure("adjobs-csv", csv, repeats)

    report["ndjson"] = {
        "adjobs": results.get("adjobs_ndjson"),
        "bare_simdjson": results.get("bare_simdjson"),
        "orjson_loop": results["orjson_loop"],
        "adjobs_vs_bare": ratio(
            _mb_per_s(results.get("adjobs_ndjson")), _mb_per_s(results.get("bare_simdjson"))
        ),
        "adjobs_vs_orjson": ratio(
            _mb_per_s(results.get("adjobs_ndjson")), _mb_per_s(results["orjson_loop"])
        ),
    }
    report["csv"] = {
        "adjobs": results.get("adjobs_csv"),
        "pandas": results["pandas"],
        "adjobs_vs_pandas": ratio(
            _mb_per_s(results.get("adjobs_csv")), _mb_per_s(results["pandas"])
        ),
    }

    report["big_file"] = None
    if options.big and with_adjobs:
        big_scale = _scale_for(targets, ["big"], seed)
        big = ensure_input("big", scale=big_scale, seed=seed, directory=directory)
        report["inputs"]["big"] = big
        if big["bytes"] < targets["big"]:
            raise SystemExit(f"big input is {big['bytes']} bytes, below {targets['big']}")
        figures = _measure("adjobs-ndjson", big, BIG_REPEATS)
        report["big_file"] = {
            **figures,
            "bytes": big["bytes"],
            "meets_rss_target": figures.get("peak_rss_mb", float("inf")) <= 200,
        }

    load_after = load_average()
    report["load"] = {
        "before": load_before,
        "after": load_after,
        "note": load_note(load_before, load_after),
    }
    return report


def _print_table(report: dict) -> None:
    print(f"ingest benchmark, seed {report['seed']}, {report['machine']['cpu']}")
    print(f"simdjson kernel: {report['machine']['simdjson_kernel']}; {report['load']['note']}")
    for section in ("ndjson", "csv"):
        size = report["inputs"][section]["bytes"] / MB
        print(f"\n{section} ({size:.0f} MB, {report['inputs'][section]['records']} records)")
        for name, figures in report[section].items():
            if isinstance(figures, dict):
                if "mb_per_s" in figures:
                    print(
                        f"  {name:<14} {figures['mb_per_s']:>8.1f} MB/s "
                        f"{figures['records_per_s']:>12,} rec/s  "
                        f"peak RSS {figures['peak_rss_mb']:.0f} MB"
                    )
                else:
                    print(f"  {name:<14} {figures}")
            elif figures is not None:
                print(f"  {name:<14} {figures}")
    if report["big_file"]:
        print(f"\nbig file: {report['big_file']}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m bench.ingest --help``)."""
    parser = bench_parser("bench.ingest", __doc__.split("\n")[0], "small inputs, for a smoke run")
    parser.add_argument("--big", action="store_true", help="also post a >=1 GB NDJSON file")
    parser.add_argument(
        "--baselines-only",
        action="store_true",
        help="measure only the orjson and pandas baselines (no adjobs needed)",
    )
    # Internal: one configuration, in a subprocess started by the driver.
    parser.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)

    if options.worker:
        _run_worker_main(
            options.worker, options.file, options.records, options.repeats or MIN_REPEATS
        )
        return
    run_and_print(parser, options, run, _print_table)


if __name__ == "__main__":
    main()
