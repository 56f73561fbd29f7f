"""Command line: ``adjobs run`` posts files to a job, ``adjobs demo`` shows it on
generated data, and ``stats``/``reset``/``delete``/``backup`` look after the store.

Jobs live in the data directory: ``--data-dir``, else ``$ADJOBS_DATA_DIR``, else
``./adjobs-data``. Output is JSON on stdout (one document); progress goes to stderr when
it is a terminal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import BinaryIO

from .config import parse_job_config
from .errors import ApiError
from .ingest import iter_chunks
from .service import JobService
from .store import DATABASE_NAME

DEFAULT_DATA_DIR = "adjobs-data"
DATA_DIR_ENV = "ADJOBS_DATA_DIR"
API_KEY_ENV = "ADJOBS_API_KEY"


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


#: Settings that a job keeps from its creation and that do not change what it computes.
_BOOKKEEPING = ("job_id", "job_version", "create_time", "description")


def _prepare_job(service: JobService, job_id: str, config: dict, replace: bool) -> str:
    """Create the job, or reuse the stored one when its settings match the file.

    Returns ``"created"``, ``"replaced"`` or ``"continued"``.
    """
    body = {key: value for key, value in config.items() if key != "job_id"}
    wanted = parse_job_config(job_id, body).to_dict()
    try:
        existing = service.get_jobs(job_id)["jobs"]
    except ApiError as error:
        if error.status != 404:
            raise
        existing = []
    if existing and not replace:
        stored = existing[0]
        differing = sorted(
            key for key in set(wanted) | set(stored)
            if key not in _BOOKKEEPING and wanted.get(key) != stored.get(key)
        )
        if differing:
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"job [{job_id}] already exists in {service.path} with different settings "
                f"({', '.join(differing)}); pass --replace to delete it and start again, or "
                "--job-id to use another id",
            )
        return "continued"
    if existing:
        service.delete_job(job_id, force=True)
    service.put_job(job_id, body)
    return "replaced" if existing else "created"


def run_job(service: JobService, config: dict, job_id: str, paths: list[str], *,
            replace: bool = False, top: int = 5) -> dict:
    """Create the job (or continue the stored one), open it, post each file as one
    upload in order, flush and close it.

    Every file is checked for readability before the job is touched, and the first upload
    that fails stops the run: posting later files would move the out-of-order baseline
    past the failed one, so that re-posting it later would count it all as out of order.

    Returns ``{"job_id", "job", "data_dir", "uploads": [{"file", "data_counts" |
    "error"}], "not_posted": [...], "totals", "top_records", "top_influencers"}``: the
    ``top`` records and influencers with the highest scores.
    """
    for path in paths:
        if path != "-" and not os.access(path, os.R_OK):
            reason = "no such file" if not os.path.exists(path) else "not readable"
            raise ApiError(400, "illegal_argument_exception",
                           f"cannot read data file [{path}]: {reason}; nothing was posted")
    how = _prepare_job(service, job_id, config, replace)
    service.open_job(job_id)
    uploads: list[dict] = []
    remaining = list(paths)
    try:
        while remaining:
            path = remaining.pop(0)
            upload = _post_file(service, job_id, path)
            uploads.append(upload)
            if "error" in upload:
                break
    finally:
        # Reached on Ctrl-C too: the interrupted upload counted nothing (all or nothing),
        # and the job is closed so that the next run can open it.
        service.flush_job(job_id)
        service.close_job(job_id)
    totals = service.get_job_stats(job_id)["jobs"][0]["data_counts"]
    return {
        "job_id": job_id,
        "job": how,
        "data_dir": str(service.path) if service.path is not None else None,
        "uploads": uploads,
        "not_posted": remaining,
        "totals": totals,
        "top_records": [_summary(record) for record in
                        service.get_records(job_id, size=top)["records"]],
        "top_influencers": [_summary(influencer) for influencer in
                            service.get_influencers(job_id, size=top)["influencers"]],
    }


def _summary(result: dict) -> dict:
    """The part of a record or influencer a person reads first, with an ISO time."""
    stamp = datetime.datetime.fromtimestamp(result["timestamp"] / 1000, datetime.UTC)
    summary = {"time": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")}
    score = result.get("record_score", result.get("influencer_score"))
    summary["score"] = round(score, 1)
    for key in ("function", "field_name", "partition_field_value", "by_field_value",
                "over_field_value", "influencer_field_name", "influencer_field_value",
                "actual", "typical"):
        if key in result:
            summary[key] = result[key]
    summary["probability"] = float(f"{result['probability']:.3g}")
    return summary


def _post_file(service: JobService, job_id: str, path: str) -> dict:
    if path == "-":
        stream, total = sys.stdin.buffer, None
    else:
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed in the finally below
        except OSError as error:
            return {"file": path, "error": {"type": "illegal_argument_exception",
                    "reason": f"cannot read data file [{path}]: {error.strerror}"}}
        total = os.fstat(stream.fileno()).st_size
    progress = Progress(pathlib.Path(path).name, total)
    try:
        counts = service.post_data(job_id, _read_with_progress(stream, progress))
        return {"file": path, "data_counts": counts}
    except ApiError as error:
        return {"file": path, "error": error.to_body()["error"]}
    finally:
        progress.close()
        if stream is not sys.stdin.buffer:
            stream.close()


def _data_dir(args: argparse.Namespace) -> str:
    return args.data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR


def _service(args: argparse.Namespace) -> JobService:
    if getattr(args, "in_memory", False):
        return JobService()
    return JobService(_data_dir(args))


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        with open(args.job, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        print(f"adjobs: cannot read job config {args.job}: {error}", file=sys.stderr)
        return 2
    job_id = args.job_id or _job_id_for(args.job, config)
    try:
        with _service(args) as service:
            report = run_job(service, config, job_id, args.data, replace=args.replace)
    except ApiError as error:
        print(json.dumps(error.to_body(), indent=2))
        return 1
    except KeyboardInterrupt:
        print("adjobs: interrupted; the upload in progress counted nothing and the job is "
              "closed", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2))
    return 1 if any("error" in upload for upload in report["uploads"]) else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import datagen

    with tempfile.TemporaryDirectory(prefix="adjobs-demo-") as folder:
        path = pathlib.Path(folder) / "farequote-demo.ndjson"
        records = datagen.write_ndjson(path, datagen.generate_records(seed=args.seed))
        try:
            with _service(args) as service:
                report = run_job(service, datagen.demo_job_config(), "farequote-demo",
                                 [str(path)], replace=True)
        except ApiError as error:
            print(json.dumps(error.to_body(), indent=2))
            return 1
    report["generated"] = {
        "records": records,
        "seed": args.seed,
        "airlines": len(datagen.AIRLINES),
        "incident": {key: getattr(datagen.INCIDENT, key, None)
                     for key in ("airline", "start_ms", "end_ms", "description")},
    }
    print(json.dumps(report, indent=2))
    return 0


def _cmd_store(args: argparse.Namespace) -> int:
    """stats / reset / delete / backup: one store operation, its result as JSON."""
    store = pathlib.Path(_data_dir(args)) / DATABASE_NAME
    if not store.is_file():
        # Do not create an empty store where the user mistyped the directory.
        print(json.dumps(ApiError(
            404, "resource_not_found_exception",
            f"no job store at '{store}'; pass --data-dir or set ${DATA_DIR_ENV}").to_body(),
            indent=2))
        return 1
    try:
        with _service(args) as service:
            if args.command == "stats":
                result = service.get_job_stats(args.job_id, allow_no_match=True)
            elif args.command == "reset":
                result = service.reset_job(args.job_id)
            elif args.command == "delete":
                result = service.delete_job(args.job_id)
            else:
                service.store.backup(args.destination)
                result = {"backup": args.destination}
    except ApiError as error:
        print(json.dumps(error.to_body(), indent=2))
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from .server import parse_size, serve

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        limit = parse_size(args.max_content_length)
    except ValueError as error:
        print(f"adjobs serve: --max-content-length: {error}", file=sys.stderr)
        return 2
    try:
        service = _service(args)
    except ApiError as error:
        print(f"adjobs serve: {error.reason}", file=sys.stderr)
        return 1
    where = service.path if service.path is not None else "memory (nothing is kept)"
    logging.getLogger("adjobs.server").info("jobs are stored in %s", where)
    serve(service, host=args.host, port=args.port,
          api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
          max_content_length=limit, body_idle_timeout=args.body_timeout)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adjobs", description=__doc__)
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--data-dir",
        help=f"where jobs are stored (default: ${DATA_DIR_ENV}, else ./{DEFAULT_DATA_DIR})",
    )
    volatile = argparse.ArgumentParser(add_help=False)
    volatile.add_argument("--in-memory", action="store_true",
                          help="keep jobs in memory only; nothing is written")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[store, volatile],
                              help="create a job, post files to it, print the counts")
    run.add_argument("job", help="job configuration (JSON, the body of put_job)")
    run.add_argument("data", nargs="+", help="data files, one upload each ('-' = stdin)")
    run.add_argument("--job-id", help="job id (default: job_id in the config, or its file name)")
    run.add_argument("--replace", action="store_true",
                     help="delete a stored job of the same id first, instead of continuing it")
    run.set_defaults(handler=_cmd_run)
    demo = commands.add_parser("demo", parents=[store, volatile],
                               help="run a job over generated farequote-shaped data")
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(handler=_cmd_demo)
    stats = commands.add_parser("stats", parents=[store], help="job stats, as _stats returns")
    stats.add_argument("job_id", nargs="?", default="_all",
                       help="id, comma list or wildcard (default _all)")
    for name, text in (("reset", "clear a closed job's counts, keep its config"),
                       ("delete", "delete a closed job and everything it holds")):
        command = commands.add_parser(name, parents=[store], help=text)
        command.add_argument("job_id")
    backup = commands.add_parser("backup", parents=[store],
                                 help="copy the store consistently, even while it is in use")
    backup.add_argument("destination", help="the SQLite file to write")
    serve = commands.add_parser("serve", parents=[store, volatile],
                                help="serve the Elasticsearch ML job API over HTTP")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=9200)
    serve.add_argument("--api-key", help=f"require 'Authorization: ApiKey KEY' (or ${API_KEY_ENV})")
    serve.add_argument("--max-content-length", default="100mb",
                       help="largest request body, e.g. 100mb (larger gets 413)")
    serve.add_argument("--body-timeout", type=float, default=120.0, metavar="SECONDS",
                       help="cut off an upload whose body stalls this long (408)")
    serve.set_defaults(handler=_cmd_serve)
    for name in ("stats", "reset", "delete", "backup"):
        commands.choices[name].set_defaults(handler=_cmd_store)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:
        # `adjobs stats | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
