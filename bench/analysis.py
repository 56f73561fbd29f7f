"""Analysis cost: farequote end to end with analysis against ingest only, same data.

``python -m bench.analysis --json`` posts the sorted farequote file (``../shared/data``,
read in place: the rows reversed under the header, as the README's stdin example does) to
the README's job (``mean(responsetime)`` partitioned on airline, influencer airline, 15m)
in a fresh in-memory :class:`adjobs.JobService`, then flushes it: once with analysis and
once with ``analyse=False``, alternating, medians of ``--repeats`` runs after one warm-up
each. ``ratio`` = analysed seconds / ingest-only seconds; the target is <= 1.5. The report
also holds the top records and influencers of the analysed run.
"""

from __future__ import annotations

import json
import os
import statistics
import time
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


def one_run(data: bytes, analyse: bool) -> tuple[float, dict]:
    import adjobs

    config = json.loads(JOB.read_text())
    config.pop("job_id", None)
    with adjobs.JobService(analyse=analyse) as service:
        service.put_job("farequote", config)
        service.open_job("farequote")
        start = time.perf_counter()
        counts = service.post_data("farequote", data)
        service.flush_job("farequote")
        seconds = time.perf_counter() - start
        top = {
            "records": service.get_records("farequote", size=5)["records"],
            "influencers": service.get_influencers("farequote", size=5)["influencers"],
            "processed_record_count": counts["processed_record_count"],
        }
    return seconds, top


def run(options) -> dict:
    data = sorted_farequote()
    load_before = load_average()
    runs: dict[str, list[float]] = {"analysed": [], "ingest_only": []}
    one_run(data, True)
    one_run(data, False)
    top: dict = {}
    for index in range(options.repeats):
        order = (True, False) if index % 2 == 0 else (False, True)
        for analyse in order:
            seconds, found = one_run(data, analyse)
            runs["analysed" if analyse else "ingest_only"].append(seconds)
            if analyse:
                top = found
    analysed = statistics.median(runs["analysed"])
    ingest = statistics.median(runs["ingest_only"])
    ratio = analysed / ingest
    return {
        "benchmark": "analysis",
        "input": {"file": str(FAREQUOTE), "bytes": len(data),
                  "records": top.get("processed_record_count")},
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
    options = parser.parse_args(argv)
    run_and_print(parser, options, run, _print_table)


if __name__ == "__main__":
    main()
