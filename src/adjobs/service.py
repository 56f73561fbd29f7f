"""The job service: the ``_ml`` anomaly-detection REST API as Python methods.

Method names and arguments follow elasticsearch-py's ``ml`` namespace, and each method
returns the dict the REST response body would hold, so the HTTP server is a thin layer
over this class. Every failure is an :class:`~adjobs.errors.ApiError` carrying the REST
status, ``type`` and ``reason``.

Jobs live in memory for now; one lock per job runs its operations one at a time (D10).
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import _core
from .config import JobConfig, apply_update, parse_job_config
from .counts import DataCounts
from .errors import ApiError, job_already_exists, job_not_found, job_not_open, malformed_json
from .ingest import iter_chunks, plan_for
from .plan import IngestPlan
from .timeparams import parse_time_param

RecordListener = Callable[[Any, Any, Any], None]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _OpenState:
    ingest: _core.JobIngestState
    opened_at: int


@dataclass
class _JobEntry:
    config: JobConfig
    plan: IngestPlan
    totals: DataCounts = field(default_factory=DataCounts)
    open: _OpenState | None = None
    strings: _core.StringTable = field(default_factory=_core.StringTable)
    lock: threading.Lock = field(default_factory=threading.Lock)
    listeners: list[RecordListener] = field(default_factory=list)
    last_finalized_bucket_end: int | None = None


class JobService:
    """Anomaly-detection jobs, managed through the REST API's operations.

    Parameters
    ----------
    path
        Where jobs are stored. ``None`` keeps everything in memory.
    """

    def __init__(self, path: str | None = None) -> None:
        if path is not None:
            raise ApiError(
                400,
                "illegal_argument_exception",
                "a persistent store is not available yet; use JobService() for an in-memory one",
            )
        self._jobs: dict[str, _JobEntry] = {}
        self._registry_lock = threading.Lock()

    # --------------------------------------------------------------------------------
    # Jobs

    def put_job(self, job_id: str, body: dict | None = None, **kwargs: Any) -> dict:
        """Create a job (``PUT _ml/anomaly_detectors/<job_id>``)."""
        config = parse_job_config(job_id, {**(body or {}), **kwargs})
        plan = plan_for(config)
        with self._registry_lock:
            if job_id in self._jobs:
                raise job_already_exists(job_id)
            self._jobs[job_id] = _JobEntry(config=config, plan=plan)
        return config.to_dict()

    def update_job(self, job_id: str, body: dict | None = None, **kwargs: Any) -> dict:
        """Change a job's updatable settings (``POST …/<job_id>/_update``)."""
        entry = self._entry(job_id)
        with entry.lock:
            entry.config = apply_update(entry.config, {**(body or {}), **kwargs})
            return entry.config.to_dict()

    def get_jobs(self, job_id: str | None = None, allow_no_match: bool = True) -> dict:
        """Jobs matching an id expression (``GET _ml/anomaly_detectors/<expr>``)."""
        ids = self._expand(job_id, allow_no_match)
        jobs = [self._jobs[i].config.to_dict() for i in ids]
        return {"count": len(jobs), "jobs": jobs}

    def delete_job(self, job_id: str, force: bool = False, **_: Any) -> dict:
        """Delete a job and everything it holds."""
        entry = self._entry(job_id)
        with entry.lock:
            if entry.open is not None and not force:
                raise ApiError(
                    409,
                    "status_exception",
                    f"Cannot delete job [{job_id}] because the job is opened",
                )
            entry.open = None
            with self._registry_lock:
                self._jobs.pop(job_id, None)
        return {"acknowledged": True}

    def reset_job(self, job_id: str, **_: Any) -> dict:
        """Clear a closed job's counts and results, keeping its configuration."""
        entry = self._entry(job_id)
        with entry.lock:
            if entry.open is not None:
                raise ApiError(
                    409,
                    "status_exception",
                    f"Can only reset a job when it is closed; job [{job_id}] is opened",
                )
            entry.totals = DataCounts()
            entry.strings = _core.StringTable()
            entry.last_finalized_bucket_end = None
        return {"acknowledged": True}

    # --------------------------------------------------------------------------------
    # Open, post, flush, close

    def open_job(self, job_id: str, **_: Any) -> dict:
        """Open a job so that it accepts data. Opening an open job is a no-op."""
        entry = self._entry(job_id)
        with entry.lock:
            if entry.open is None:
                state = _core.JobIngestState(
                    entry.plan.bucket_span_ms,
                    entry.plan.latency_ms,
                    latest_ms=entry.totals.latest_record_timestamp,
                    earliest_ms=entry.totals.earliest_record_timestamp,
                    strings=entry.strings,
                )
                entry.open = _OpenState(ingest=state, opened_at=_now_ms())
        return {"opened": True, "node": "adjobs"}

    def post_data(
        self,
        job_id: str,
        data: Any,
        reset_start: str | int | None = None,
        reset_end: str | int | None = None,
    ) -> dict:
        """Send data to an open job; returns this upload's data counts (HTTP 202).

        ``data`` is bytes or str (the data itself), an ``os.PathLike`` file, a binary
        file object, a list of dicts, or an iterable of byte chunks. Records counted
        before a failure stay counted in the job's totals.
        """
        entry = self._jobs.get(job_id)
        if entry is None:
            # ES 6.5+: an unknown job is simply "not open" for post_data (§6.2).
            raise job_not_open(job_id)
        with entry.lock:
            if entry.open is None:
                raise job_not_open(job_id)
            self._parse_reset(reset_start, reset_end)
            return self._upload(entry, data)

    def _parse_reset(self, reset_start: Any, reset_end: Any) -> None:
        start = parse_time_param("start", reset_start) if reset_start not in (None, "") else None
        end = parse_time_param("end", reset_end) if reset_end not in (None, "") else None
        if start is not None and end is not None and end < start:
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"Invalid time range: end time '{reset_end}' is earlier than start time "
                f"'{reset_start}'.",
            )

    def _upload(self, entry: _JobEntry, data: Any) -> dict:
        job_id = entry.config.job_id
        state = entry.open.ingest
        totals = entry.totals
        incremental = DataCounts()
        # Diagnostics counts produced since the last hand-over move in first (§1.2).
        self._move_diagnostics(state, incremental, totals)
        upload = _core.Upload(entry.plan, state)
        delimited = entry.plan.format == "csv"
        try:
            for chunk in iter_chunks(data, delimited=delimited):
                upload.feed(chunk)
                self._deliver(entry, upload)
                if upload.failure:
                    break
            upload.finish()
            self._deliver(entry, upload)
        finally:
            self._account(upload, incremental, totals)
        if upload.failure:
            raise self._failure_error(entry, upload)
        now = _now_ms()
        if not (delimited and upload.input_bytes == 0):
            # ES's CSV reader returns before "finish reporting" on an empty body (§6c).
            incremental.last_data_time = totals.last_data_time = now
        state.diagnostics.flush()
        self._move_diagnostics(state, incremental, totals)
        totals.log_time = now
        k = entry.plan.analysed_fields_per_record
        return incremental.to_dict(job_id, k, with_log_time=False)

    @staticmethod
    def _account(upload: _core.Upload, incremental: DataCounts, totals: DataCounts) -> None:
        consumed = upload.consumed_at_failure if upload.failure else upload.input_bytes
        deltas = {
            "processed_record_count": upload.processed_record_count,
            "input_bytes": consumed,
            "input_field_count": upload.input_field_count,
            "invalid_date_count": upload.invalid_date_count,
            "missing_field_count": upload.missing_field_count,
            "out_of_order_timestamp_count": upload.out_of_order_timestamp_count,
        }
        incremental.add_counters(**deltas)
        totals.add_counters(**deltas)
        if upload.processed_record_count:
            totals.latest_record_timestamp = upload.state.latest_ms
        incremental.latest_record_timestamp = upload.latest_record_timestamp
        if upload.earliest_record_timestamp is not None:
            incremental.earliest_record_timestamp = upload.earliest_record_timestamp
            totals.earliest_record_timestamp = upload.earliest_record_timestamp

    @staticmethod
    def _move_diagnostics(
        state: _core.JobIngestState, incremental: DataCounts, totals: DataCounts
    ) -> None:
        diagnostics = state.diagnostics
        buckets, empty, sparse = diagnostics.take_counts()
        for copy in (incremental, totals):
            copy.add_counters(bucket_count=buckets, empty_bucket_count=empty,
                              sparse_bucket_count=sparse)
            # "latest empty/sparse" are the diagnostics' since-open values (§1.3).
            copy.move_forward("latest_empty_bucket_timestamp", diagnostics.latest_empty_bucket_ms)
            copy.move_forward(
                "latest_sparse_bucket_timestamp", diagnostics.latest_sparse_bucket_ms
            )

    @staticmethod
    def _deliver(entry: _JobEntry, upload: _core.Upload) -> None:
        times, numeric, codes = upload.take_batch()
        if len(times):
            for listener in entry.listeners:
                listener(times, numeric, codes)

    @staticmethod
    def _failure_error(entry: _JobEntry, upload: _core.Upload) -> ApiError:
        line, offset = upload.problem or (1, 0)
        failure = upload.failure
        if failure in (_core.FAILURE_MALFORMED_LIMIT, _core.FAILURE_TRUNCATED):
            return malformed_json(line, offset)
        if failure == _core.FAILURE_CSV_HEADER:
            header = ", ".join(upload.csv_header or [])
            return ApiError(
                400,
                "illegal_argument_exception",
                f"Field configured for analysis '{upload.csv_missing_field}' is not in the "
                f"CSV header '[{header}]'",
                line=line,
                offset=offset,
            )
        if failure == _core.FAILURE_CSV_QUOTE:
            return ApiError(
                400,
                "parse_exception",
                f"unterminated quoted value in the row starting on line {line} "
                "(or a quoted value spanning more than 10000 lines)",
                line=line,
                offset=offset,
            )
        if failure == _core.FAILURE_CSV_ROW_TOO_LARGE:
            return ApiError(
                400,
                "parse_exception",
                f"the row starting on line {line} is larger than the 8MiB row limit",
                line=line,
                offset=offset,
            )
        return ApiError(500, "exception", "out of memory while reading the upload")

    def flush_job(
        self,
        job_id: str,
        calc_interim: bool | None = None,
        start: str | int | None = None,
        end: str | int | None = None,
        advance_time: str | int | None = None,
        skip_time: str | int | None = None,
        **_: Any,
    ) -> dict:
        """Flush an open job (§6b). Data counts do not change."""
        parsed = {
            name: parse_time_param(name, value)
            for name, value in (
                ("start", start),
                ("end", end),
                ("advance_time", advance_time),
                ("skip_time", skip_time),
            )
            if value not in (None, "")
        }
        if not calc_interim:
            for name in ("start", "end"):
                if name in parsed:
                    raise ApiError(
                        400,
                        "illegal_argument_exception",
                        f"Invalid flush parameters: unexpected '{name}'.",
                    )
        elif "end" in parsed and "start" not in parsed:
            raise ApiError(
                400,
                "illegal_argument_exception",
                "Invalid flush parameters: 'start' has not been specified.",
            )
        if "start" in parsed and "end" in parsed and parsed["end"] < parsed["start"]:
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"Invalid time range: end time '{end}' is earlier than start time '{start}'.",
            )
        if (
            "advance_time" in parsed
            and "skip_time" in parsed
            and parsed["advance_time"] // 1000 <= parsed["skip_time"] // 1000
        ):
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"advance_time [{advance_time}] must be later than skip_time [{skip_time}]",
            )
        entry = self._jobs.get(job_id)
        if entry is None:
            raise job_not_open(job_id)
        with entry.lock:
            if entry.open is None:
                raise job_not_open(job_id)
            span = entry.plan.bucket_span_ms
            finalized = entry.last_finalized_bucket_end
            latest = entry.totals.latest_record_timestamp
            if latest is not None:
                # Every bucket before the latest record's bucket is complete.
                finalized = max(finalized or 0, latest // span * span)
            if "skip_time" in parsed:
                skip = parsed["skip_time"]
                finalized = max(finalized or 0, -(-skip // span) * span)
            if "advance_time" in parsed:
                finalized = max(finalized or 0, parsed["advance_time"] // span * span)
            entry.last_finalized_bucket_end = finalized
        response: dict = {"flushed": True}
        if finalized:
            response["last_finalized_bucket_end"] = finalized
        return response

    def close_job(self, job_id: str, force: bool = False, allow_no_match: bool = True,
                  **_: Any) -> dict:
        """Close jobs matching an id expression; their counts stay."""
        for one_id in self._expand(job_id, allow_no_match):
            entry = self._jobs[one_id]
            with entry.lock:
                entry.open = None
        return {"closed": True}

    # --------------------------------------------------------------------------------
    # Stats

    def get_job_stats(self, job_id: str | None = None, allow_no_match: bool = True) -> dict:
        """Stats of jobs matching an id expression (§1.3, rest-api §4.3)."""
        jobs = [self._stats(self._jobs[i]) for i in self._expand(job_id, allow_no_match)]
        return {"count": len(jobs), "jobs": jobs}

    def _stats(self, entry: _JobEntry) -> dict:
        job_id = entry.config.job_id
        k = entry.plan.analysed_fields_per_record
        now = _now_ms()
        stats: dict = {
            "job_id": job_id,
            "data_counts": entry.totals.to_dict(job_id, k),
            "model_size_stats": {
                "job_id": job_id,
                "result_type": "model_size_stats",
                "model_bytes": 0,
                "peak_model_bytes": 0,
                "model_bytes_exceeded": 0,
                "model_bytes_memory_limit": entry.config.model_memory_limit_mb * 1024 * 1024,
                "total_by_field_count": 0,
                "total_over_field_count": 0,
                "total_partition_field_count": 0,
                "bucket_allocation_failures_count": 0,
                "memory_status": "ok",
                "assignment_memory_basis": "model_memory_limit",
                "categorized_doc_count": 0,
                "total_category_count": 0,
                "frequent_category_count": 0,
                "rare_category_count": 0,
                "dead_category_count": 0,
                "failed_category_count": 0,
                "categorization_status": "ok",
                "log_time": now,
            },
            "forecasts_stats": {
                "total": 0,
                "forecasted_jobs": 0,
            },
            "state": "opened" if entry.open is not None else "closed",
            "timing_stats": {
                "job_id": job_id,
                "bucket_count": 0,
                "total_bucket_processing_time_ms": 0.0,
                "exponential_average_bucket_processing_time_per_hour_ms": 0.0,
            },
        }
        if entry.open is not None:
            stats["node"] = {"id": "adjobs", "name": "adjobs", "attributes": {}}
            stats["assignment_explanation"] = ""
            stats["open_time"] = f"{max(0, now - entry.open.opened_at) // 1000}s"
        return stats

    # --------------------------------------------------------------------------------
    # Helpers

    def add_record_listener(self, job_id: str, listener: RecordListener) -> None:
        """Call ``listener(time_ms, numeric, codes)`` with the numpy arrays of every
        batch of processed records (the analysis feeds on the same arrays)."""
        self._entry(job_id).listeners.append(listener)

    def string_values(self, job_id: str) -> list[str]:
        """The job's interned categorical values; a code in ``codes`` indexes this."""
        return self._entry(job_id).strings.values()

    def _entry(self, job_id: str) -> _JobEntry:
        entry = self._jobs.get(job_id)
        if entry is None:
            raise job_not_found(job_id)
        return entry

    def _expand(self, expression: str | None, allow_no_match: bool) -> list[str]:
        """Job ids matching ``_all``, ``*``, wildcards or a comma list (ES order: sorted)."""
        if expression in (None, "", "_all", "*"):
            ids = sorted(self._jobs)
            if not ids and not allow_no_match and expression not in (None, ""):
                raise job_not_found(expression)
            return ids
        matched: set[str] = set()
        for token in (part.strip() for part in str(expression).split(",")):
            if not token:
                continue
            if "*" in token:
                hits = [i for i in self._jobs if fnmatch.fnmatchcase(i, token)]
                if not hits and not allow_no_match:
                    raise job_not_found(token)
                matched.update(hits)
            elif token in self._jobs:
                matched.add(token)
            else:
                raise job_not_found(token)
        return sorted(matched)
