"""The job service: the ``_ml`` anomaly-detection REST API as Python methods.

Method names and arguments follow elasticsearch-py's ``ml`` namespace, and each method
returns the dict the REST response body would hold, so the HTTP server is a thin layer
over this class. Every failure is an :class:`~adjobs.errors.ApiError` carrying the REST
status, ``type`` and ``reason``.

Jobs live in a :class:`~adjobs.store.Store`: an SQLite database under ``path``, or a
private in-memory one. A job opened here is held in memory as well, and owned through
:mod:`adjobs.ownership`, so no other process writes it until it is closed. One lock per
job runs its operations one at a time (D10).

An upload is all or nothing unless it is *reported*: when ``post_data`` returns, or
raises the 400 of malformed data, everything it counted is committed (D6). An upload that
is cut off instead (the data source raises, the client goes away, the process dies, the
store cannot write) counts nothing at all: the job is rolled back to where it was before
the upload started. See ``docs/store.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from . import _core, ingest, results
from .analysis import JobAnalysis
from .config import JobConfig, apply_update, check_supported, parse_job_config
from .counts import DataCounts
from .errors import (
    ApiError,
    job_and_group_clash,
    job_not_found,
    job_not_open,
    malformed_json,
)
from .ingest import iter_chunks, plan_for
from .ownership import Claim, JobOwnership, owned_elsewhere
from .plan import IngestPlan
from .store import AnalysisCommit, Store, StoredJob
from .timeparams import parse_time_param, unparsable_time

#: Records an upload that is not analysed gathers before they are handed to the listeners
#: (8 bytes each, plus 8 per numeric and 4 per categorical field): fewer hand-overs than one
#: per chunk read, memory still bounded. An analysed upload hands each chunk's records to
#: the analysis as read, to analyse them while the next chunk is read.
DELIVERY_RECORDS = 1 << 18
#: The latest time (epoch ms) a 64-bit store can hold.
_LAST_MS = 2**63 - 1

RecordListener = Callable[[Any, Any, Any], None]
#: The records of some of an upload, as the ingest core gives them: (times, numeric, codes).
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


def _joined(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    times, numeric, codes = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    return times, numeric, codes


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _OpenJob:
    """A job opened by this service: its state in memory, and the claim that owns it."""

    config: JobConfig
    plan: IngestPlan
    totals: DataCounts
    ingest: _core.JobIngestState
    claim: Claim
    opened_at: int
    last_finalized_bucket_end: int | None
    committed_strings: int  # string-table codes below this are in the store
    analysis: JobAnalysis
    #: Whether the store holds an analysis state of this job (its latest commit's). It is
    #: not kept in memory too: it is as big as the models, and a failure reads it back.
    analysis_stored: bool = False


@dataclass
class _Checkpoint:
    """What an upload may change, taken before it starts, to roll a cut-off upload back."""

    totals: DataCounts
    latest_ms: int | None
    earliest_ms: int | None
    diagnostics: dict
    string_count: int
    #: new values the table of distinct values refused so far (a rolled-back upload's too
    #: would say hard_limit for values never counted)
    refused_values: int

    @classmethod
    def of(cls, job: _OpenJob) -> _Checkpoint:
        return cls(
            totals=dataclasses.replace(job.totals),
            latest_ms=job.ingest.latest_ms,
            earliest_ms=job.ingest.earliest_ms,
            diagnostics=job.ingest.diagnostics.get_state(),
            string_count=len(job.ingest.strings),
            refused_values=job.ingest.strings.limit_hits,
        )

    def restore(self, job: _OpenJob) -> None:
        """The counts and reading state as they were (the analysis: ``_roll_back_analysis``)."""
        job.totals = self.totals
        job.ingest.latest_ms = self.latest_ms
        job.ingest.earliest_ms = self.earliest_ms
        job.ingest.diagnostics.set_state(self.diagnostics)
        job.ingest.strings.truncate(self.string_count)
        job.ingest.strings.limit_hits = self.refused_values


class JobService:
    """Anomaly-detection jobs, managed through the REST API's operations.

    Parameters
    ----------
    path
        The data directory. Jobs are stored in ``<path>/adjobs.db`` and survive restarts;
        ``None`` keeps everything in memory for the life of the object.
    analyse
        ``False`` runs the ingest side only: data counts and diagnostics, no models and no
        results (the baseline of ``bench/analysis.py``).

    Use it as a context manager, or call :meth:`close`, to close the jobs it opened.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, analyse: bool = True) -> None:
        self._store = Store.open(path) if path is not None else Store.in_memory()
        #: False: jobs count and check their data but find no anomalies (ingest only).
        self.analyse = analyse
        self._ownership = JobOwnership(self._store.directory)
        self._open: dict[str, _OpenJob] = {}
        self._job_locks: dict[str, threading.Lock] = {}
        self._listeners: dict[str, list[RecordListener]] = {}
        self._registry_lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        """The data directory, or ``None`` for an in-memory service."""
        return self._store.directory

    @property
    def store(self) -> Store:
        return self._store

    def close(self) -> None:
        """Close every job this service has open, then the store. A job whose closing
        rescore cannot be written is closed with ``force`` (the rescore stays due in its
        stored state), so no job stays claimed; the first such error is raised once all
        are closed."""
        failure: BaseException | None = None
        try:
            for job_id in list(self._open):
                try:
                    self.close_job(job_id)
                except Exception as error:  # noqa: BLE001 - raised below, once all are closed
                    failure = failure or error
                    # its claim is released even if marking it closed fails too; the first
                    # failure is the one raised
                    with contextlib.suppress(Exception):
                        self.close_job(job_id, force=True)
        finally:
            self._store.close()
        if failure is not None:
            raise failure

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------
    # Jobs

    def put_job(self, job_id: str, body: dict | None = None, **kwargs: Any) -> dict:
        """Create a job (``PUT _ml/anomaly_detectors/<job_id>``)."""
        config = parse_job_config(job_id, {**(body or {}), **kwargs})
        check_supported(config)
        plan_for(config)  # rejects configs the reader cannot run, before storing them
        self._check_unique_names(config)
        self._store.create(job_id, config.to_dict(), DataCounts().to_state())
        return config.to_dict()

    def update_job(self, job_id: str, body: dict | None = None, **kwargs: Any) -> dict:
        """Change a job's updatable settings (``POST …/<job_id>/_update``)."""
        update = {**(body or {}), **kwargs}
        with self._job_lock(job_id):
            job = self._open.get(job_id)
            if job is not None:
                config = apply_update(job.config, update)
                check_supported(config)
                self._check_unique_names(config)
                self._store.save_config(job_id, config.to_dict())
                job.config = config
                return config.to_dict()
            with self._claimed(job_id) as stored:
                config = apply_update(JobConfig.from_dict(stored.config), update)
                check_supported(config)
                self._check_unique_names(config)
                self._store.save_config(job_id, config.to_dict())
                return config.to_dict()

    def get_jobs(self, job_id: str | None = None, allow_no_match: bool = True) -> dict:
        """Jobs matching an id expression (``GET _ml/anomaly_detectors/<expr>``)."""
        ids = self._expand(job_id, allow_no_match)
        configs = self._store.load_configs()
        jobs = [configs[i] for i in ids if i in configs]
        return {"count": len(jobs), "jobs": jobs}

    def delete_job(self, job_id: str, force: bool = False, **_: Any) -> dict:
        """Delete a job and everything it holds. An open job needs ``force``."""
        with self._job_lock(job_id):
            job = self._open.get(job_id)
            if job is not None:
                if not force:
                    raise ApiError(
                        409,
                        "status_exception",
                        f"Cannot delete job [{job_id}] because the job is opened",
                    )
                del self._open[job_id]
                claim = job.claim
            else:
                if self._store.load(job_id) is None:
                    raise job_not_found(job_id)
                claim = self._ownership.claim(job_id)
            try:
                self._store.delete(job_id)
            finally:
                claim.release(remove=True)
            self._listeners.pop(job_id, None)
        return {"acknowledged": True}

    def reset_job(self, job_id: str, **_: Any) -> dict:
        """Clear a closed job's counts and results, keeping its configuration."""
        with self._job_lock(job_id):
            if job_id in self._open:
                raise ApiError(
                    409,
                    "status_exception",
                    f"Can only reset a job when it is closed; job [{job_id}] is opened",
                )
            with self._claimed(job_id):
                self._store.reset(job_id, DataCounts().to_state())
        return {"acknowledged": True}

    # --------------------------------------------------------------------------------
    # Open, post, flush, close

    def open_job(self, job_id: str, **_: Any) -> dict:
        """Open a job so that it accepts data. Opening an open job is a no-op.

        The diagnostics are seeded with the phantom record of §2.3, so a gap across a
        close counts as empty buckets. A job whose owner died while it was open (a kill
        -9) instead continues from the window its last acknowledged upload committed.
        """
        with self._job_lock(job_id):
            if job_id in self._open:
                return {"opened": True, "node": "adjobs"}
            if self._store.load(job_id) is None:
                raise job_not_found(job_id)
            claim = self._ownership.claim(job_id)
            try:
                self._open[job_id] = self._load_open(job_id, claim)
            except BaseException:
                claim.release()
                raise
        return {"opened": True, "node": "adjobs"}

    def _load_open(self, job_id: str, claim: Claim) -> _OpenJob:
        stored = self._store.load(job_id)
        if stored is None:  # deleted by another process before we held the claim
            raise job_not_found(job_id)
        config = JobConfig.from_dict(stored.config)
        plan = plan_for(config)
        totals = DataCounts.from_state(stored.counts)
        strings = _core.StringTable()
        strings.extend(self._store.load_strings(job_id, stored.string_count))
        ingest = _core.JobIngestState(
            plan.bucket_span_ms,
            plan.latency_ms,
            latest_ms=totals.latest_record_timestamp,
            earliest_ms=totals.earliest_record_timestamp,
            strings=strings,
        )
        if stored.open_since is not None and stored.diagnostics is not None:
            ingest.diagnostics.set_state(stored.diagnostics)
        analysis = JobAnalysis(config)
        analysis_state, _ = self._store.load_analysis(job_id)
        has_state = analysis_state is not None
        if has_state:
            analysis.set_state(analysis_state)
        analysis.sync_names(strings)
        del analysis_state  # as big as the models: not kept (see _OpenJob.analysis_stored)
        now = _now_ms()
        self._store.mark_open(job_id, now, ingest.diagnostics.get_state())
        return _OpenJob(
            config=config,
            plan=plan,
            totals=totals,
            ingest=ingest,
            claim=claim,
            opened_at=now,
            last_finalized_bucket_end=stored.last_finalized_bucket_end,
            committed_strings=stored.string_count,
            analysis=analysis,
            analysis_stored=has_state,
        )

    def post_data(
        self,
        job_id: str,
        data: Any,
        reset_start: str | int | None = None,
        reset_end: str | int | None = None,
    ) -> dict:
        """Send data to an open job; returns this upload's data counts (HTTP 202).

        ``data`` is bytes or str (the data itself), an ``os.PathLike`` file, a binary
        file object, a list of dicts, or an iterable of byte chunks. The counts are
        committed before this returns, including those of records read before a 400
        for malformed data. If ``data`` raises instead, nothing of it is counted.
        """
        with self._job_lock(job_id):
            job = self._open.get(job_id)
            if job is None:
                raise self._not_open_here(job_id)
            reset_range = self._parse_reset(reset_start, reset_end)
            checkpoint = _Checkpoint.of(job)
            try:
                if reset_range is not None:
                    # Before the data, as ES tells its native process (spec 6.1).
                    job.analysis.reset_buckets(*reset_range)
                response, upload = self._upload(job, data)
                self._commit(job)
            except BaseException:
                checkpoint.restore(job)
                self._roll_back_analysis(job)
                raise
        if upload.failure:
            raise self._failure_error(upload)
        return response

    def _roll_back_analysis(self, job: _OpenJob) -> None:
        """Rebuild a job's analysis from the state its last commit stored: every change to
        the analysis is committed, so that is where it stood before the failed upload or
        flush."""
        try:
            state, _ = self._store.load_analysis(job.config.job_id)
            analysis = JobAnalysis(job.config)
            if state is not None:
                analysis.set_state(state)
            analysis.sync_names(job.ingest.strings)
        except BaseException:
            # The committed state cannot be read back, and what is in memory may hold
            # uncommitted changes: the job is closed here, and opening it again reads what
            # was committed.
            if self._open.get(job.config.job_id) is job:
                del self._open[job.config.job_id]
                job.claim.release()
            raise
        job.analysis = analysis

    def _not_open_here(self, job_id: str) -> ApiError:
        """409 for post/flush on a job not open in this service: "not open" as in ES 6.5+
        (an unknown job included, §6.2), or "opened by another process"."""
        try:
            if self._ownership.owned_by_other(job_id):
                return owned_elsewhere(job_id)
        except ApiError:  # an id that cannot name a lock file cannot be open anywhere
            pass
        return job_not_open(job_id)

    def _commit(self, job: _OpenJob) -> None:
        strings = job.ingest.strings
        analysis = self._analysis_commit(job)
        self._store.commit_upload(
            job.config.job_id,
            job.totals.to_state(),
            job.ingest.diagnostics.get_state(),
            strings.raw_values(job.committed_strings),
            job.committed_strings,
            analysis,
        )
        job.committed_strings = len(strings)
        job.analysis_stored = True

    @staticmethod
    def _analysis_commit(job: _OpenJob, interim: Any = None, unchanged: bool = False,
                         settle: bool = False) -> AnalysisCommit:
        """What the store commits of the job's analysis; ``unchanged``: its state is the one
        stored (by the last commit, of an analysis that has not changed since), which is
        then neither packed nor written again; ``settle`` (a flush, a close): the stored
        results are re-normalised too, if they wait for it."""
        analysis = job.analysis
        if analysis.note_values_refused(job.ingest.strings.limit_hits):
            unchanged = False  # the memory status changed: the state is packed anew
        pending = analysis.take_pending()
        if interim is not None:
            pending.extend(interim)
        held = (analysis.behind_since, analysis.results_written)
        rescore_since, rescore_stored = analysis.take_renormalisation(settle=settle)
        if pending.buckets or pending.records or pending.influencers:
            analysis.results_written = True
        if (analysis.behind_since, analysis.results_written) != held:
            unchanged = False  # what the state holds changed: it is packed anew
        # the stats first: they update the peak model size, which the state holds
        stats = analysis.stats()
        return AnalysisCommit(
            state=None if unchanged else analysis.get_state(),
            stats=stats,
            results=pending,
            rescore_since=rescore_since,
            rescore=analysis.rescore,
            rescore_batch=analysis.rescore_batch,
            rescore_stored=rescore_stored,
        )

    def _parse_reset(self, reset_start: Any, reset_end: Any) -> tuple[int, int] | None:
        """The ``[start, end)`` (ms) of the buckets an upload resets, if any."""
        # in whole seconds, as ES hands them to its native process
        start = (parse_time_param("start", reset_start) // 1000 * 1000
                 if reset_start not in (None, "") else None)
        end = (parse_time_param("end", reset_end) // 1000 * 1000
               if reset_end not in (None, "") else None)
        if start is not None and end is not None and end < start:
            raise ApiError(
                400,
                "illegal_argument_exception",
                f"Invalid time range: end time '{reset_end}' is earlier than start time "
                f"'{reset_start}'.",
            )
        if start is None:
            return None  # reset_end alone is validated, then ignored (spec 6.1)
        if end is None or end == start:
            end = start + 1000
        return start, end

    def _upload(self, job: _OpenJob, data: Any) -> tuple[dict | None, _core.Upload]:
        """Read one upload into the job's in-memory state; the caller commits it."""
        state = job.ingest
        incremental = DataCounts()
        # Diagnostics counts produced since the last hand-over move in first (§1.2).
        self._move_diagnostics(state, incremental, job.totals)
        upload = _core.Upload(job.plan, state)
        delimited = job.plan.format == "csv"
        chunks = iter_chunks(data, delimited=delimited, **(
            {"chunk_bytes": min(ingest.ANALYSED_CHUNK_BYTES, ingest.CHUNK_BYTES),
             "first_chunk_bytes": ingest.ANALYSED_FIRST_CHUNK_BYTES,
             "growth": ingest.ANALYSED_CHUNK_GROWTH} if self.analyse else {}))
        if self.analyse:
            try:
                self._read_alongside_analysis(job, upload, chunks)
            except BaseException:
                upload.close()  # the error may be kept, with the upload it refers to
                raise
        else:
            self._read(job, upload, chunks)
        self._account(upload, incremental, job.totals)
        if upload.failure:
            # Counted records stay counted (D6); the window is not flushed, as in ES.
            return None, upload
        now = _now_ms()
        if not (delimited and upload.input_bytes == 0):
            # ES's CSV reader returns before "finish reporting" on an empty body (§6c).
            incremental.last_data_time = job.totals.last_data_time = now
        state.diagnostics.flush()
        self._move_diagnostics(state, incremental, job.totals)
        job.totals.log_time = now
        k = job.plan.analysed_fields_per_record
        return incremental.to_dict(job.config.job_id, k, with_log_time=False), upload

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

    def _read(self, job: _OpenJob, upload: _core.Upload, chunks: Iterator[Any]) -> None:
        """Read the chunks one after the other, for the listeners only (no analysis)."""
        held: list[Batch] = []
        for chunk in chunks:
            upload.feed(chunk)
            self._deliver(job, upload, held)
            if upload.failure:
                break
        upload.finish()
        self._deliver(job, upload, held, last=True)

    def _read_alongside_analysis(self, job: _OpenJob, upload: _core.Upload,
                                 chunks: Iterator[Any]) -> None:
        """Read each chunk on a native thread while the analysis works through the records
        of the chunk before, as ES parses in one process and analyses in another.

        The results do not depend on how the records are split into batches: chunk by
        chunk gives the results of the whole upload at once. The string table and the
        upload are only touched while no chunk is being read.
        """
        waiting: Batch | None = None  # taken from the upload, not analysed yet
        for chunk in chunks:
            if waiting is None:  # nothing to analyse meanwhile: no thread to start
                upload.feed(chunk)
            else:
                try:
                    upload.feed_in_background(chunk)
                    job.analysis.add_records(*waiting)
                    # Time the commit would spend, spent while waiting for the reading.
                    results.encode_rows(job.config.job_id, job.analysis.pending,
                                        lambda: upload.reading)
                finally:
                    upload.wait()
            waiting = self._take_batch(job, upload)
            if upload.failure:
                break
        upload.finish()
        rest = [batch for batch in (waiting, self._take_batch(job, upload)) if batch is not None]
        if rest:
            job.analysis.add_records(*_joined(rest))

    def _take_batch(self, job: _OpenJob, upload: _core.Upload) -> Batch | None:
        """The records read since the last call, given to the listeners, with the names
        of their codes known to the analysis; None if there are none."""
        batch = upload.take_batch()
        if not len(batch[0]):
            return None
        for listener in self._listeners.get(job.config.job_id, ()):
            listener(*batch)
        job.analysis.sync_names(job.ingest.strings)
        return batch

    def _deliver(self, job: _OpenJob, upload: _core.Upload,
                 held: list[Batch], last: bool = False) -> None:
        """Hand the records read so far to the listeners once :data:`DELIVERY_RECORDS`
        have gathered in ``held`` (and at the ``last`` call)."""
        batch = upload.take_batch()
        if len(batch[0]):
            held.append(batch)
        if not held or (not last and sum(len(b[0]) for b in held) < DELIVERY_RECORDS):
            return
        times, numeric, codes = _joined(held)
        held.clear()
        for listener in self._listeners.get(job.config.job_id, ()):
            listener(times, numeric, codes)

    @staticmethod
    def _failure_error(upload: _core.Upload) -> ApiError:
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
        # in whole seconds, as ES hands them to its native process
        parsed = {
            name: parse_time_param(name, value) // 1000 * 1000
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
        with self._job_lock(job_id):
            job = self._open.get(job_id)
            if job is None:
                raise self._not_open_here(job_id)
            span = job.plan.bucket_span_ms
            finalized = job.last_finalized_bucket_end
            latest = job.totals.latest_record_timestamp
            analysis = job.analysis
            before = (analysis.next_bucket, analysis.bucket_count)
            if latest is not None:
                # Every bucket before the latest record's bucket is complete, but those still
                # inside the latency window may yet receive records: as in ES, only
                # advance_time finalises them (calc_interim scores them as interim).
                finalized = max(finalized or 0, (latest - job.plan.latency_ms) // span * span)
            if "skip_time" in parsed:
                # to the next bucket boundary (the last one there is, for a time past it)
                skip = min(-(-parsed["skip_time"] // span) * span, _LAST_MS // span * span)
                finalized = max(finalized or 0, skip)
                # Skipped buckets give no results and teach the models nothing.
                analysis.skip(skip)
            if "advance_time" in parsed:
                finalized = max(finalized or 0, parsed["advance_time"] // span * span)
            try:
                if finalized:
                    analysis.finalise(finalized)
                interim = None
                if calc_interim:
                    # [start, end) when given (end: a second after start when left out or
                    # equal, as ES's TimeRange makes it)
                    first, last = parsed.get("start"), parsed.get("end")
                    if first is not None and (last is None or last == first):
                        last = first + 1000
                    interim = analysis.interim(first, last)
                # Nothing skipped, finalised or scored as interim (which may note a memory
                # limit): the analysis is as the last commit left it, and so is its stored
                # state (not packed, nor written, again).
                unchanged = (interim is None and job.analysis_stored
                             and (analysis.next_bucket, analysis.bucket_count) == before)
                commit = self._analysis_commit(job, interim=interim, unchanged=unchanged,
                                               settle=True)
                self._store.save_finalized(job_id, finalized, commit)
            except BaseException:
                self._roll_back_analysis(job)
                raise
            job.analysis_stored = True
            job.last_finalized_bucket_end = finalized
        response: dict = {"flushed": True}
        if finalized:
            response["last_finalized_bucket_end"] = finalized
        return response

    def close_job(self, job_id: str, force: bool = False, allow_no_match: bool = True,
                  **_: Any) -> dict:
        """Close jobs matching an id expression; their counts stay.

        Closing a job that is not open is a no-op, as in ES; a job another process has
        open is a 409.
        """
        for one_id in self._expand(job_id, allow_no_match):
            with self._job_lock(one_id):
                job = self._open.get(one_id)
                if job is None:
                    if self._ownership.owned_by_other(one_id):
                        raise owned_elsewhere(one_id)
                    continue
                if job.analysis.stored_behind and not force:
                    # Stored results wait to be re-normalised: as ES's close waits for its
                    # renormaliser, they are before the job closes. (A forced close does
                    # not wait, as ES's does not: the rescore stays due in the stored state,
                    # for the next flush or close.)
                    try:
                        self._store.save_finalized(
                            one_id, job.last_finalized_bucket_end,
                            self._analysis_commit(job, settle=True))
                    except BaseException:
                        self._roll_back_analysis(job)
                        raise
                del self._open[one_id]
                try:
                    self._store.mark_closed(one_id)
                finally:
                    job.claim.release()
        return {"closed": True}

    # --------------------------------------------------------------------------------
    # Results (rest-api.md §1): read from the store, so they work on closed jobs too

    def get_buckets(self, job_id: str, timestamp: Any = None, **params: Any) -> dict:
        """Bucket results (``GET …/results/buckets[/<timestamp>]``)."""
        self._known(job_id)
        query = _ResultsQuery(params, ("anomaly_score", "desc", "end", "exclude_interim",
                                       "expand", "from", "size", "sort", "start"))
        if timestamp is not None:
            query.values["timestamp"] = query.time("timestamp", timestamp)
        return self._store.read_results(job_id, results.get_buckets, job_id, **query.values)

    def get_records(self, job_id: str, **params: Any) -> dict:
        """Anomaly records (``GET …/results/records``)."""
        self._known(job_id)
        query = _ResultsQuery(params, ("desc", "end", "exclude_interim", "from",
                                       "record_score", "size", "sort", "start"))
        return self._store.read_results(job_id, results.get_records, job_id, **query.values)

    def get_influencers(self, job_id: str, **params: Any) -> dict:
        """Influencer results (``GET …/results/influencers``)."""
        self._known(job_id)
        query = _ResultsQuery(params, ("desc", "end", "exclude_interim", "from",
                                       "influencer_score", "size", "sort", "start"))
        return self._store.read_results(job_id, results.get_influencers, job_id,
                                        **query.values)

    def get_overall_buckets(self, job_id: str, **params: Any) -> dict:
        """Overall buckets across the jobs an id expression matches."""
        allow_no_match = params.pop("allow_no_match", True)
        query = _ResultsQuery(params, ("bucket_span", "end", "exclude_interim",
                                       "overall_score", "start", "top_n"))
        ids = self._expand(job_id, allow_no_match not in (False, "false"))
        configs = self._store.load_configs()
        ids = [i for i in ids if i in configs]
        spans = {i: JobConfig.from_dict(configs[i]).bucket_span_ms // 1000 for i in ids}
        reps = {i: configs[i]["analysis_config"]["bucket_span"] for i in ids}
        return self._store.read_results(job_id, results.get_overall_buckets, ids, spans,
                                        span_reps=reps, **query.values)

    def _known(self, job_id: str) -> None:
        if job_id not in self._open and self._store.load(job_id) is None:
            raise job_not_found(job_id)

    # --------------------------------------------------------------------------------
    # Stats

    def get_job_stats(self, job_id: str | None = None, allow_no_match: bool = True) -> dict:
        """Stats of jobs matching an id expression (§1.3, rest-api §4.3).

        A job open here reports its in-memory totals; any other job reports what the
        store holds, which for a job open in another process is its last committed upload.
        The model and timing stats are always those of the last commit, as ES's are of the
        last bucket results it persisted: an upload in another thread may be changing the
        models meanwhile.
        """
        jobs = []
        for one_id in self._expand(job_id, allow_no_match):
            job = self._open.get(one_id)
            if job is not None:
                jobs.append(self._stats(job.config, job.plan, job.totals, job.opened_at,
                                        self._store.load_analysis_stats(one_id)))
                continue
            stored = self._store.load(one_id)
            if stored is None:  # deleted meanwhile
                continue
            config = JobConfig.from_dict(stored.config)
            opened_at = None
            if self._ownership.owned_by_other(one_id):
                opened_at = stored.open_since or _now_ms()
            jobs.append(self._stats(config, plan_for(config),
                                    DataCounts.from_state(stored.counts), opened_at,
                                    self._store.load_analysis_stats(one_id)))
        return {"count": len(jobs), "jobs": jobs}

    @staticmethod
    def _stats(config: JobConfig, plan: IngestPlan, totals: DataCounts,
               opened_at: int | None, analysis: dict | None) -> dict:
        job_id = config.job_id
        k = plan.analysed_fields_per_record
        now = _now_ms()
        stats: dict = {
            "job_id": job_id,
            "data_counts": totals.to_dict(job_id, k),
            "model_size_stats": {
                "job_id": job_id,
                "result_type": "model_size_stats",
                "model_bytes": 0,
                "peak_model_bytes": 0,
                "model_bytes_exceeded": 0,
                "model_bytes_memory_limit": config.model_memory_limit_mb * 1024 * 1024,
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
            "state": "opened" if opened_at is not None else "closed",
            "timing_stats": {
                "job_id": job_id,
                "bucket_count": 0,
                "total_bucket_processing_time_ms": 0.0,
                "exponential_average_bucket_processing_time_per_hour_ms": 0.0,
            },
        }
        if analysis is not None:
            stats["model_size_stats"].update(analysis["model_size_stats"])
            stats["timing_stats"].update(analysis["timing_stats"])
        if opened_at is not None:
            stats["node"] = {"id": "adjobs", "name": "adjobs", "attributes": {}}
            stats["assignment_explanation"] = ""
            stats["open_time"] = f"{max(0, now - opened_at) // 1000}s"
        return stats

    # --------------------------------------------------------------------------------
    # Helpers

    def add_record_listener(self, job_id: str, listener: RecordListener) -> None:
        """Call ``listener(time_ms, numeric, codes)`` with the numpy arrays of every
        batch of processed records (the analysis feeds on the same arrays).

        Batches arrive while an upload is read; an upload that is then cut off is rolled
        back in the job, so a listener that keeps state must allow for that.
        """
        with self._job_lock(job_id):
            if job_id not in self._open and self._store.load(job_id) is None:
                raise job_not_found(job_id)
            self._listeners.setdefault(job_id, []).append(listener)

    def string_values(self, job_id: str) -> list[str]:
        """The job's interned categorical values; a code in ``codes`` indexes this."""
        job = self._open.get(job_id)
        if job is not None:
            return job.ingest.strings.values()
        stored = self._store.load(job_id)
        if stored is None:
            raise job_not_found(job_id)
        return [value.decode("utf-8", "replace")
                for value in self._store.load_strings(job_id, stored.string_count)]

    def _job_lock(self, job_id: str) -> threading.Lock:
        with self._registry_lock:
            lock = self._job_locks.get(job_id)
            if lock is None:
                lock = self._job_locks[job_id] = threading.Lock()
            return lock

    def _claimed(self, job_id: str) -> _ClaimedJob:
        """Own a closed job for one write: 404 if unknown, 409 if another process has it."""
        return _ClaimedJob(self, job_id)

    def _groups(self) -> dict[str, list[str]]:
        """Each job group and the ids of its jobs."""
        groups: dict[str, list[str]] = {}
        for job_id, config in self._store.load_configs().items():
            for group in config.get("groups") or ():
                groups.setdefault(group, []).append(job_id)
        return groups

    def _check_unique_names(self, config: JobConfig) -> None:
        """A job id may not be another job's group, nor a group another job's id (ES)."""
        if config.job_id in self._groups():
            raise job_and_group_clash(config.job_id)
        others = set(self._store.job_ids()) - {config.job_id}
        for group in config.groups:
            if group in others:
                raise job_and_group_clash(group)

    def _expand(self, expression: str | None, allow_no_match: bool) -> list[str]:
        """Job ids matching ``_all``, ``*``, or a comma list of ids, group names and
        wildcards over both (ES order: sorted)."""
        known = self._store.job_ids()
        if expression in (None, "", "_all", "*"):
            if not known and not allow_no_match and expression not in (None, ""):
                raise job_not_found(expression)
            return known
        present = set(known)
        groups = self._groups()
        matched: set[str] = set()
        for token in (part.strip() for part in str(expression).split(",")):
            if not token:
                continue
            if "*" in token:
                hits = [i for i in known if fnmatch.fnmatchcase(i, token)]
                for group, members in groups.items():
                    if fnmatch.fnmatchcase(group, token):
                        hits.extend(members)
                if not hits and not allow_no_match:
                    raise job_not_found(token)
                matched.update(hits)
            elif token in present:
                matched.add(token)
            elif token in groups:
                matched.update(groups[token])
            else:
                raise job_not_found(token)
        return sorted(matched)


class _ClaimedJob:
    def __init__(self, service: JobService, job_id: str) -> None:
        self._service = service
        self._job_id = job_id
        self._claim: Claim | None = None

    def __enter__(self) -> StoredJob:
        service = self._service
        if service._store.load(self._job_id) is None:
            raise job_not_found(self._job_id)
        self._claim = service._ownership.claim(self._job_id)
        stored = service._store.load(self._job_id)
        if stored is None:
            self._claim.release()
            raise job_not_found(self._job_id)
        return stored

    def __exit__(self, *_: object) -> None:
        if self._claim is not None:
            self._claim.release()


def parse_boolean(name: str, value: Any, default: bool) -> bool:
    """ES's boolean parameter: true/false, or an empty value meaning true."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value)
    if text in ("", "true"):
        return True
    if text == "false":
        return False
    raise ApiError(
        400,
        "illegal_argument_exception",
        f"Failed to parse value [{text}] for parameter [{name}]: only [true] or [false] "
        "are allowed.",
    )


class _ResultsQuery:
    """The parameters of a results API, from Python or from REST strings, checked and
    converted for :mod:`adjobs.results` (``from`` becomes ``from_``; ``page`` is
    ``{"from", "size"}``, as elasticsearch-py sends it)."""

    _FLOATS = ("anomaly_score", "record_score", "influencer_score", "overall_score")
    _BOOLEANS = ("desc", "exclude_interim", "expand")
    _INTEGERS = ("from", "size", "top_n")

    def __init__(self, params: dict, allowed: tuple[str, ...]) -> None:
        params = dict(params)
        if "from_" in params:
            params["from"] = params.pop("from_")
        page = params.pop("page", None)
        if page is not None:
            if not isinstance(page, dict) or set(page) - {"from", "size"}:
                raise ApiError(400, "x_content_parse_exception",
                               "[page] must be an object with [from] and [size]")
            for key in ("from", "size"):
                if key in page:
                    params[key] = page[key]
        self.values: dict[str, Any] = {}
        for name, value in params.items():
            if value is None:
                continue
            if name not in allowed:
                raise ApiError(400, "illegal_argument_exception",
                               f"unrecognized parameter: [{name}]")
            key = "from_" if name == "from" else name
            if name in ("start", "end"):
                self.values[key] = self.time(name, value)
            elif name == "bucket_span":
                self.values[key] = self.span(value)
            elif name in self._FLOATS:
                self.values[key] = self.number(name, value, float)
            elif name in self._INTEGERS:
                self.values[key] = self.number(name, value, int)
            elif name in self._BOOLEANS:
                self.values[key] = self.boolean(name, value)
            else:
                self.values[key] = str(value)

    @staticmethod
    def time(name: str, value: Any) -> int:
        """Epoch ms: a number is milliseconds (ES's ``epoch_millis``), else a date; one
        beyond a 64-bit millisecond count (ES's ``long``) is a 400 ``parse_exception``."""
        millis: int | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            millis = int(value) if math.isfinite(value) else None
        else:
            text = str(value).strip()
            if not re.fullmatch(r"-?\d+", text):
                return parse_time_param(name, text)
            millis = int(text)
        if millis is None or not -(2**63) <= millis < 2**63:
            raise unparsable_time(name, value)
        return millis

    @staticmethod
    def number(name: str, value: Any, kind: type) -> Any:
        try:
            if isinstance(value, bool):
                raise TypeError(name)
            return kind(value)
        except (TypeError, ValueError):
            raise ApiError(400, "illegal_argument_exception",
                           f"Failed to parse [{name}] with value [{value}]") from None

    @staticmethod
    def boolean(name: str, value: Any) -> bool:
        return parse_boolean(name, value, False)

    @staticmethod
    def span(value: Any) -> int:
        from .config import _parse_time_value

        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return _parse_time_value(str(value), "bucket_span").nanos // 1_000_000_000
