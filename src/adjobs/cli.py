"""Command line: ``adjobs run`` posts files to a job, ``adjobs demo`` shows it on
generated data.

Output is JSON on stdout (one document), progress goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from .errors import ApiError
from .ingest import iter_chunks


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.enabled = sys.stderr.isatty()
        self._last_draw = 0.0

    def advance(self, size: int) -> None:
        self.done += size
        now = time.monotonic()
        if self.enabled and now - self._last_draw > 0.1:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-9) / 1e6
        if self.total:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            text = f"\r{self.label} [{bar:<30}] {share:6.1%} {rate:7.1f} MB/s"
        else:
            text = f"\r{self.label} {self.done / 1e6:10.1f} MB {rate:7.1f} MB/s"
        sys.stderr.write(text)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


def _read_with_progress(stream: BinaryIO, progress: Progress) -> Iterator[bytes]:
    for chunk in iter_chunks(stream):
        progress.advance(len(chunk))
        yield chunk


def _job_id_for(config_path: str, config: dict) -> str:
    if isinstance(config.get("job_id"), str):
        return config["job_id"]
    stem = pathlib.Path(config_path).stem.lower()
    return re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_") or "job"


def run_job(config: dict, job_id: str, paths: list[str], *, out: Any = None) -> dict:
    """Create the job, open it, post each file as one upload, close it.

    Returns ``{"job_id", "uploads": [{"file", "data_counts" | "error"}], "totals"}``.
    """
    from .service import JobService

    service = JobService()
    body = {key: value for key, value in config.items() if key != "job_id"}
    service.put_job(job_id, body)
    service.open_job(job_id)
    uploads = []
    for path in paths:
        if path == "-":
            stream, total = sys.stdin.buffer, None
        else:
            try:
                stream = open(path, "rb")  # noqa: SIM115 - closed in the finally below
            except OSError as error:
                uploads.append({"file": path, "error": {"type": "illegal_argument_exception",
                                "reason": f"cannot read data file [{path}]: {error.strerror}"}})
                continue
            total = os.fstat(stream.fileno()).st_size
        progress = Progress(pathlib.Path(path).name, total)
        try:
            counts = service.post_data(job_id, _read_with_progress(stream, progress))
            uploads.append({"file": path, "data_counts": counts})
        except ApiError as error:
            uploads.append({"file": path, "error": error.to_body()["error"]})
        finally:
            progress.close()
            if stream is not sys.stdin.buffer:
                stream.close()
    service.flush_job(job_id)
    service.close_job(job_id)
    totals = service.get_job_stats(job_id)["jobs"][0]["data_counts"]
    return {"job_id": job_id, "uploads": uploads, "totals": totals}


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        with open(args.job, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        print(f"adjobs: cannot read job config {args.job}: {error}", file=sys.stderr)
        return 2
    job_id = args.job_id or _job_id_for(args.job, config)
    try:
        report = run_job(config, job_id, args.data)
    except ApiError as error:
        print(json.dumps(error.to_body(), indent=2))
        return 1
    print(json.dumps(report, indent=2))
    return 1 if any("error" in upload for upload in report["uploads"]) else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import datagen

    with tempfile.TemporaryDirectory(prefix="adjobs-demo-") as folder:
        path = pathlib.Path(folder) / "farequote-demo.ndjson"
        records = datagen.write_ndjson(path, datagen.generate_records(seed=args.seed))
        report = run_job(datagen.demo_job_config(), "farequote-demo", [str(path)])
    report["generated"] = {
        "records": records,
        "seed": args.seed,
        "airlines": len(datagen.AIRLINES),
        "incident": {key: getattr(datagen.INCIDENT, key, None)
                     for key in ("airline", "start_ms", "end_ms", "description")},
    }
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adjobs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="create a job, post files to it, print the counts")
    run.add_argument("job", help="job configuration (JSON, the body of put_job)")
    run.add_argument("data", nargs="+", help="data files, one upload each ('-' = stdin)")
    run.add_argument("--job-id", help="job id (default: job_id in the config, or its file name)")
    run.set_defaults(handler=_cmd_run)
    demo = commands.add_parser("demo", help="run a job over generated farequote-shaped data")
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(handler=_cmd_demo)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
