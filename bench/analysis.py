"""Analysis cost: farequote end to end with analysis against ingest only, same data.

``python -m bench.analysis --json`` posts the sorted farequote file (``../shared/data``,
read in place: the rows reversed under the header, as the README's stdin example does) to
the README's job (``mean(responsetime)`` partitioned on airline, influencer airline, 15m)
in a fresh in-memory :class:`adjobs.JobService`, then flushes it: once with analysis and
once with ``analyse=False``, alternating, medians of ``--repeats`` runs after one warm-up
each. ``ratio`` = analysed seconds / ingest-only seconds; the target is <= 1.5. The report
also holds the top records and influencers of the analysed run. ``--breakdown`` adds the
median time of each stage of the analysed runs (the reading with the analysis alongside,
the upload's commit and its parts, the flush's commit), timed by wrapping those functions,
which costs a little: the ratio of such a run is not the one to quote. ``--uploads N``
posts the file as N uploads of consecutive rows (each with the header), as a client posting
in batches does; the target is for one upload.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from bench._common import REPO_ROOT, bench_parser, load_average, machine_info, run_and_print

TARGET_RATIO = 1.5
FAREQUOTE = (Path(os.environ.get("ADJOBS_SHARED_DIR") or REPO_ROOT.parent / "shared")
             / "data" / "farequote-2021.csv")
JOB = REPO_ROOT / "examples" / "farequote.json"


def sorted_farequote(path: Path = FAREQUOTE) -> bytes:
    """The file with its rows in time order (it ships newest first)."""
    header, *rows = path.read_bytes().rstrip(b"\n").split(b"\n")
    return b"\n".join([header, *reversed(rows)]) + b"\n"


def split_uploads(data: bytes, uploads: int) -> list[bytes]:
    """The CSV ``data`` as ``uploads`` parts of consecutive rows, each with the header."""
    header, *rows = data.rstrip(b"\n").split(b"\n")
    per = -(-len(rows) // uploads)
    return [b"\n".join([header, *rows[i:i + per]]) + b"\n" for i in range(0, len(rows), per)]


def one_run(parts: list[bytes], analyse: bool) -> tuple[float, dict]:
    import adjobs

    config = json.loads(JOB.read_text())
    config.pop("job_id", None)
    with adjobs.JobService(analyse=analyse) as service:
        service.put_job("farequote", config)
        service.open_job("farequote")
        start = time.perf_counter()
        processed = sum(service.post_data("farequote", part)["processed_record_count"]
                        for part in parts)
        service.flush_job("farequote")
        seconds = time.perf_counter() - start
        top = {
            "records": service.get_records("farequote", size=5)["records"],
            "influencers": service.get_influencers("farequote", size=5)["influencers"],
            "processed_record_count": processed,
        }
    return seconds, top


def _stages() -> list[tuple[object, str, str]]:
    """What ``--breakdown`` times: (owner, function name, stage name)."""
    from adjobs import analysis, service, store

    return [
        (service.JobService, "_upload", "upload_read_and_analyse"),
        (store.Store, "commit_upload", "upload_commit"),
        (store, "write_results", "commit_write_results"),
        (analysis.JobAnalysis, "rescore_batch", "commit_rescore"),
        (analysis.JobAnalysis, "get_state", "commit_pack_state"),
        (store.Store, "save_finalized", "flush_commit"),
    ]


@contextlib.contextmanager
def _timed_stages(enabled: bool) -> Iterator[dict[str, float] | None]:
    """While ``enabled``, a dict of each stage's seconds (summed over its calls) since the
    caller last cleared it; the functions are put back afterwards."""
    if not enabled:
        yield None
        return
    saved = []
    current: dict[str, float] = {}
    for owner, name, stage in _stages():
        original = getattr(owner, name)
        saved.append((owner, name, original))

        def timed(*args, _original=original, _stage=stage, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                current[_stage] = current.get(_stage, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)
    try:
        yield current
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def run(options) -> dict:
    data = sorted_farequote()
    parts = split_uploads(data, options.uploads)
    load_before = load_average()
    runs: dict[str, list[float]] = {"analysed": [], "ingest_only": []}
    one_run(parts, True)
    one_run(parts, False)
    top: dict = {}
    stages: dict[str, list[float]] = {}
    with _timed_stages(options.breakdown) as current:
        for index in range(options.repeats):
            order = (True, False) if index % 2 == 0 else (False, True)
            for analyse in order:
                if current is not None:
                    current.clear()
                seconds, found = one_run(parts, analyse)
                runs["analysed" if analyse else "ingest_only"].append(seconds)
                if analyse:
                    top = found
                    for stage, spent in (current or {}).items():
                        stages.setdefault(stage, []).append(spent)
    analysed = statistics.median(runs["analysed"])
    ingest = statistics.median(runs["ingest_only"])
    ratio = analysed / ingest
    return {
        "benchmark": "analysis",
        "input": {"file": str(FAREQUOTE), "bytes": len(data),
                  "records": top.get("processed_record_count"), "uploads": len(parts)},
        "repeats": options.repeats,
        "analysed_seconds": round(analysed, 4),
        "ingest_only_seconds": round(ingest, 4),
        "runs": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "ratio": round(ratio, 3),
        "target": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
        "top_records": [
            {k: r.get(k) for k in ("timestamp", "partition_field_value", "record_score",
                                   "probability", "actual", "typical")}
            for r in top.get("records", [])
        ],
        "top_influencers": [
            {k: r.get(k) for k in ("timestamp", "influencer_field_value", "influencer_score")}
            for r in top.get("influencers", [])
        ],
        **({"breakdown_ms": {stage: round(statistics.median(spent) * 1e3, 2)
                             for stage, spent in stages.items()}} if options.breakdown else {}),
        "load_average": {"before": load_before, "after": load_average()},
        "machine": machine_info(),
    }


def _print_table(report: dict) -> None:
    print(f"analysed {report['analysed_seconds']} s, ingest only "
          f"{report['ingest_only_seconds']} s, ratio {report['ratio']} "
          f"(target <= {report['target']}: {'met' if report['met'] else 'MISSED'})")
    for record in report["top_records"]:
        print(f"  {record}")


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("bench.analysis", __doc__.split("\n")[0], "3 repeats")
    parser.add_argument("--breakdown", action="store_true",
                        help="add the median time of each stage of the analysed runs")
    parser.add_argument("--uploads", type=int, default=1,
                        help="post the file as this many uploads (default 1)")
    options = parser.parse_args(argv)
    run_and_print(parser, options, run, _print_table)


if __name__ == "__main__":
    main()
