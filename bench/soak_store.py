"""Kill -9 soak of the durable job store: many crashes on one data directory.

Run from the repository root::

    python -m bench.soak_store --json                     # 1000 iterations, temporary dir
    python -m bench.soak_store --iterations 200 --dir DIR  # keep the data directory

Each iteration starts the worker of ``tests/store_crash_worker.py`` on the same data
directory, SIGKILLs it (at a random moment, or at a set point every eighth iteration from
the sixth: an upload stalled half way, an upload returned but not acknowledged, all
uploads acknowledged), then checks the store in this process exactly as
``tests/test_store_crash.py`` does: ``PRAGMA integrity_check``, the job's counts equal to
the acknowledged uploads' (or those plus the whole in-flight upload, never part of it), its
categorical values, its diagnostics window, and an ``open_job`` here without clean-up.

The run stops at the first iteration that finds a violation (after it the reference no
longer describes the store). The JSON report has the figures; ``violations`` must be 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from bench._common import REPO_ROOT, log, machine_info

WORKER_FILE = REPO_ROOT / "tests" / "store_crash_worker.py"
DEFAULT_ITERATIONS = 1000
DEFAULT_SEED = 20240607
#: As in tests/test_store_crash.py: iteration k with k % 8 in here kills at a set point.
SET_POINTS = {5: "stall", 6: "held", 7: "done"}


def _load_harness():
    spec = importlib.util.spec_from_file_location("store_crash_worker", WORKER_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def run(iterations: int, directory: Path, seed: int) -> dict:
    harness_module = _load_harness()
    import adjobs

    harness = harness_module.CrashHarness(directory)
    rng = random.Random(seed)
    started = time.perf_counter()
    stopped_at = None
    try:
        for k in range(iterations):
            if harness.run_iteration(rng, SET_POINTS.get(k % 8)):
                stopped_at = k
                break
            if (k + 1) % 50 == 0:
                figures = harness.figures
                log(
                    f"{k + 1}/{iterations} iterations, {figures.acked_uploads} acknowledged "
                    f"uploads, in flight counted {figures.in_flight_counted} / lost "
                    f"{figures.in_flight_lost}, {time.perf_counter() - started:.0f} s"
                )
    finally:
        harness.close()
    elapsed = time.perf_counter() - started

    with adjobs.JobService(directory) as service:
        integrity = service.store.integrity_check()
        stored = service.store.load(harness_module.JOB_ID)
        totals = service.get_job_stats(harness_module.JOB_ID)["jobs"][0]["data_counts"]
    figures = harness.figures
    database = directory / "adjobs.db"
    return {
        "iterations": figures.iterations,
        "acked_uploads": figures.acked_uploads,
        "acked_malformed_uploads": figures.acked_malformed,
        "in_flight_counted": figures.in_flight_counted,
        "in_flight_lost": figures.in_flight_lost,
        "killed_between_uploads": figures.killed_between_uploads,
        "killed_before_job_open": figures.killed_before_ready,
        "test_process_reopens": figures.test_process_reopens,
        "kill_modes": figures.kill_modes,
        "violations": len(harness.violations),
        "first_violations": harness.violations[:5],
        "stopped_at_iteration": stopped_at,
        "integrity_ok": integrity == ["ok"],
        "elapsed_s": round(elapsed, 1),
        "seconds_per_iteration": round(elapsed / max(1, figures.iterations), 3),
        "final_job": {
            "processed_record_count": totals["processed_record_count"],
            "input_bytes": totals["input_bytes"],
            "categorical_values": stored.string_count,
            "database_bytes": database.stat().st_size,
        },
        "leftover_files": sorted(
            p.name
            for p in directory.iterdir()
            if p.name not in ("adjobs.db", "adjobs.db-wal", "adjobs.db-shm", "locks")
        ),
        "seed": seed,
        "machine": {
            k: v
            for k, v in machine_info().items()
            if k in ("cpu", "logical_cpus", "python", "adjobs")
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m bench.soak_store --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak_store", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="a new data directory, kept; default: a temporary one, removed",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    options = parser.parse_args(argv)
    if options.iterations < 1:
        parser.error("--iterations must be at least 1")
    if options.dir is not None and options.dir.exists() and any(options.dir.iterdir()):
        parser.error(f"--dir {options.dir} is not empty (the checks start from an empty store)")
    if options.dir is not None:
        report = run(options.iterations, options.dir, options.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="adjobs-soak-") as scratch:
            report = run(options.iterations, Path(scratch) / "data", options.seed)
    if options.json:
        json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    if report["violations"] or not report["integrity_ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
