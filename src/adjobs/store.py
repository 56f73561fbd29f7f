"""The embedded job store: one SQLite database in WAL mode under a data directory.

What a job keeps between uploads lives here: its configuration, its total data counts
(which hold the out-of-order baseline), its bucket-diagnostics window while it is open,
its categorical string table and its last finalised bucket. Every write is one
transaction, and a successful ``commit`` has been fsynced (``synchronous=FULL``), so a
kill -9 after a call returns loses nothing that the call reported (D6).

``Store.in_memory()`` runs the same code on a private ``:memory:`` database, so that an
in-memory :class:`~adjobs.service.JobService` behaves exactly like a stored one.

Several processes may open one data directory: SQLite serialises their writes, and
:mod:`adjobs.ownership` makes sure only one of them writes a given job.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ApiError, job_already_exists
from .results import (
    RESULTS_SCHEMA,
    delete_results,
    iter_for_renormalisation,
    rescored_batch,
    update_scores,
    write_results,
)

DATABASE_NAME = "adjobs.db"
#: Bumped whenever the tables change; ``_MIGRATIONS[n]`` upgrades version n to n + 1.
SCHEMA_VERSION = 3
#: ``PRAGMA application_id``: "ADJB". Tells our database from any other SQLite file.
APPLICATION_ID = 0x41444A42
#: How long a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,              -- JobConfig.to_dict(), JSON
    counts TEXT NOT NULL,              -- total DataCounts.to_state(), JSON
    diagnostics TEXT,                  -- bucket-diagnostics window while open, JSON
    last_finalized_bucket_end INTEGER,
    string_count INTEGER NOT NULL DEFAULT 0,
    open_since INTEGER                 -- epoch ms, set while a process has the job open
);
CREATE TABLE job_strings (
    job_id TEXT NOT NULL,
    code INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (job_id, code)
) WITHOUT ROWID;
"""

_MIGRATIONS: dict[int, str] = {
    # Version 2: the analysis (issue 5). Its state is one blob per job, rewritten with
    # every upload in the upload's transaction; ``stats`` is what a closed job's stats
    # show without unpacking it.
    1: """
CREATE TABLE analysis_state (
    job_id TEXT PRIMARY KEY,
    state BLOB NOT NULL,
    stats TEXT NOT NULL
) WITHOUT ROWID;
"""
    + RESULTS_SCHEMA,
    # Version 3: a state longer than one SQLite value may be (SQLITE_MAX_LENGTH, 1e9 bytes:
    # some 120,000 series) is stored in parts: the first in analysis_state, the others here.
    2: """
CREATE TABLE analysis_state_parts (
    job_id TEXT NOT NULL,
    part INTEGER NOT NULL,                       -- 1, 2, ...: the state's later parts
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, part)
)
""",
}
#: The longest part of an analysis state stored as one SQLite value: well below SQLite's
#: own limit of 1e9 bytes a value.
STATE_PART_BYTES = 256 * 1024 * 1024


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, and the schema must go in with the version.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


class StoreError(ApiError):
    """The data directory or its database cannot be used, or a write failed.

    Nothing that was committed before is touched: the store never repairs, truncates or
    replaces a database it cannot read.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(500, "store_exception", reason)


@dataclass
class AnalysisCommit:
    """What an upload or a flush changed in a job's analysis."""

    #: The analysis state; None: the one stored is still right (it is not written again).
    state: bytes | None
    stats: dict
    results: Any  # an object with buckets, records, influencers (adjobs.results)
    #: Re-normalisation (A.6): the stored results from ``rescore_since`` on are passed to
    #: ``rescore``, which returns their new scores.
    rescore_since: int | None = None
    rescore: Callable[[list[dict]], list[dict]] | None = None
    #: ``rescored_batch(results, rescore_since, rescore)``, done by whoever knows a faster
    #: way for its own batch (optional).
    rescore_batch: Callable[[Any, int], Any] | None = None
    #: Whether the stored results are rescored too, or only the batch's (theirs wait).
    rescore_stored: bool = True


def _write_analysis(db: sqlite3.Connection, job_id: str, analysis: AnalysisCommit) -> None:
    batch = analysis.results
    if analysis.rescore is not None and analysis.rescore_since is not None:
        # The stored results are rescored before the batch is written and the batch in
        # memory: reading it back after writing it would parse what was just encoded. A
        # stored result the batch replaces is rescored in vain, then replaced.
        # rescore only looks at buckets with bucket influencers, and at the scores and
        # identities of records and influencers.
        if analysis.rescore_stored:
            docs = list(iter_for_renormalisation(db, job_id, analysis.rescore_since,
                                                 scored_buckets_only=True, scores_only=True))
            changes = analysis.rescore(docs)
            if changes:
                update_scores(db, job_id, changes)
        if analysis.rescore_batch is not None:
            batch = analysis.rescore_batch(batch, analysis.rescore_since)
        else:
            batch = rescored_batch(batch, analysis.rescore_since, analysis.rescore)
    write_results(db, job_id, batch)
    if analysis.state is None:
        updated = db.execute("UPDATE analysis_state SET stats = ? WHERE job_id = ?",
                             (json.dumps(analysis.stats), job_id)).rowcount
        if updated != 1:
            raise ValueError(f"no stored analysis state of job [{job_id}] to keep")
        return
    state = memoryview(analysis.state)
    db.execute(
        "INSERT OR REPLACE INTO analysis_state (job_id, state, stats) VALUES (?, ?, ?)",
        (job_id, state[:STATE_PART_BYTES], json.dumps(analysis.stats)),
    )
    db.execute("DELETE FROM analysis_state_parts WHERE job_id = ?", (job_id,))
    for part, start in enumerate(range(STATE_PART_BYTES, len(state), STATE_PART_BYTES), 1):
        db.execute("INSERT INTO analysis_state_parts (job_id, part, data) VALUES (?, ?, ?)",
                   (job_id, part, state[start:start + STATE_PART_BYTES]))


@dataclass
class StoredJob:
    """One row of ``jobs``, decoded."""

    job_id: str
    config: dict
    counts: dict
    diagnostics: dict | None
    last_finalized_bucket_end: int | None
    string_count: int
    open_since: int | None


class Store:
    """Jobs in one SQLite database. Thread-safe: one connection behind a lock."""

    def __init__(self, connection: sqlite3.Connection, location: str,
                 directory: Path | None) -> None:
        self._db = connection
        self._lock = threading.RLock()
        self.location = location
        #: The data directory, or ``None`` for an in-memory store.
        self.directory = directory

    # --------------------------------------------------------------------------------
    # Opening

    @classmethod
    def open(cls, directory: str | os.PathLike) -> Store:
        """Open (creating if needed) the store in ``directory``.

        Raises
        ------
        StoreError
            The directory cannot be created or written, or the database is corrupted,
            belongs to another program, or was written by a newer adjobs.
        """
        folder = Path(directory)
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"the data directory '{folder}' is not a directory")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"cannot create the data directory '{folder}': {error.strerror or error}"
            ) from None
        database = folder / DATABASE_NAME
        _check_writable(folder, database)
        try:
            connection = sqlite3.connect(
                database, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the job store '{database}': {error}") from None
        store = cls(connection, str(database), folder)
        try:
            store._prepare(durable=True)
        except BaseException:
            connection.close()
            raise
        return store

    @classmethod
    def in_memory(cls) -> Store:
        """A private store that lives as long as the object."""
        store = cls(sqlite3.connect(":memory:", isolation_level=None,
                                    check_same_thread=False), ":memory:", None)
        store._prepare(durable=False)
        return store

    def _prepare(self, *, durable: bool) -> None:
        with self._failures("open"):
            db = self._db
            # Reading the header first turns a file that is not SQLite into an error
            # before anything is written to it.
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if application_id != APPLICATION_ID and (application_id != 0 or tables):
                raise StoreError(
                    f"'{self.location}' is not an adjobs job store (it is some other SQLite "
                    "database); point adjobs at another data directory"
                )
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the job store '{self.location}' has schema version {version}, written by "
                    f"a newer adjobs; this one reads versions up to {SCHEMA_VERSION}"
                )
            if durable:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"cannot switch '{self.location}' to WAL mode ({mode})")
                # FULL: each commit fsyncs the WAL, so it survives the OS crashing too.
                db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if tables:
                # Damage past the first page shows up only when read: look before the
                # first write, so that a damaged store is refused untouched.
                problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise StoreError(
                        f"the job store '{self.location}' is damaged ({'; '.join(problems)}); "
                        "restore it from a backup (adjobs never repairs it in place)"
                    )
            if version == SCHEMA_VERSION:
                return
            with self._transaction():
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    _run_script(db, _SCHEMA)
                    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    version = 1
                while version < SCHEMA_VERSION:
                    _run_script(db, _MIGRATIONS[version])
                    version += 1
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --------------------------------------------------------------------------------
    # Plumbing

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Turn SQLite's exceptions into :class:`StoreError` naming the database."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as error:
            message = str(error)
            if "not a database" in message or "malformed" in message:
                hint = "the file is corrupted or is not an adjobs store; restore it from a backup"
            elif "full" in message:
                hint = "free some disk space; nothing from the failed call was stored"
            elif "readonly" in message or "unable to open" in message:
                hint = "check the data directory's permissions"
            else:
                hint = "nothing from the failed call was stored"
            raise StoreError(
                f"job store '{self.location}' failed during {action}: {message} ({hint})"
            ) from None

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One immediate transaction, with SQLite's errors turned into StoreError."""
        with self._failures(action), self._transaction() as db:
            yield db

    # --------------------------------------------------------------------------------
    # Jobs

    def job_ids(self) -> list[str]:
        with self._lock, self._failures("listing jobs"):
            rows = self._db.execute("SELECT job_id FROM jobs ORDER BY job_id").fetchall()
        return [row[0] for row in rows]

    def load(self, job_id: str) -> StoredJob | None:
        with self._lock, self._failures(f"reading job [{job_id}]"):
            row = self._db.execute(
                "SELECT job_id, config, counts, diagnostics, last_finalized_bucket_end, "
                "string_count, open_since FROM jobs WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        return StoredJob(
            job_id=row[0],
            config=json.loads(row[1]),
            counts=json.loads(row[2]),
            diagnostics=json.loads(row[3]) if row[3] is not None else None,
            last_finalized_bucket_end=row[4],
            string_count=row[5],
            open_since=row[6],
        )

    def load_configs(self) -> dict[str, dict]:
        with self._lock, self._failures("reading jobs"):
            rows = self._db.execute("SELECT job_id, config FROM jobs").fetchall()
        return {job_id: json.loads(config) for job_id, config in rows}

    def load_strings(self, job_id: str, count: int) -> list[bytes]:
        """The first ``count`` interned values of a job, by code."""
        with self._lock, self._failures(f"reading job [{job_id}]"):
            rows = self._db.execute(
                "SELECT code, value FROM job_strings WHERE job_id = ? AND code < ? "
                "ORDER BY code",
                (job_id, count),
            ).fetchall()
        if len(rows) != count or (rows and rows[-1][0] != count - 1):
            raise StoreError(
                f"job store '{self.location}': job [{job_id}] should have {count} categorical "
                f"values but {len(rows)} are stored; restore the store from a backup"
            )
        return [bytes(value) for _, value in rows]

    def create(self, job_id: str, config: dict, counts: dict) -> None:
        try:
            with self._write(f"creating job [{job_id}]") as db:
                db.execute(
                    "INSERT INTO jobs (job_id, config, counts) VALUES (?, ?, ?)",
                    (job_id, json.dumps(config), json.dumps(counts)),
                )
        except sqlite3.IntegrityError:
            raise job_already_exists(job_id) from None

    def save_config(self, job_id: str, config: dict) -> None:
        with self._write(f"updating job [{job_id}]") as db:
            db.execute("UPDATE jobs SET config = ? WHERE job_id = ?",
                       (json.dumps(config), job_id))

    def mark_open(self, job_id: str, since_ms: int, diagnostics: dict) -> None:
        with self._write(f"opening job [{job_id}]") as db:
            db.execute("UPDATE jobs SET open_since = ?, diagnostics = ? WHERE job_id = ?",
                       (since_ms, json.dumps(diagnostics), job_id))

    def mark_closed(self, job_id: str) -> None:
        """A clean close: the diagnostics window is discarded (spec §6b)."""
        with self._write(f"closing job [{job_id}]") as db:
            db.execute("UPDATE jobs SET open_since = NULL, diagnostics = NULL WHERE job_id = ?",
                       (job_id,))

    def commit_upload(
        self,
        job_id: str,
        counts: dict,
        diagnostics: dict,
        new_strings: list[bytes],
        first_new_code: int,
        analysis: AnalysisCommit | None = None,
    ) -> None:
        """Everything one upload changed, in one transaction: counts, strings, and the
        analysis's state and new results."""
        with self._write(f"storing an upload to job [{job_id}]") as db:
            if analysis is not None:
                _write_analysis(db, job_id, analysis)
            if new_strings:
                db.executemany(
                    "INSERT INTO job_strings (job_id, code, value) VALUES (?, ?, ?)",
                    [(job_id, first_new_code + i, value) for i, value in enumerate(new_strings)],
                )
            db.execute(
                "UPDATE jobs SET counts = ?, diagnostics = ?, string_count = ? WHERE job_id = ?",
                (json.dumps(counts), json.dumps(diagnostics), first_new_code + len(new_strings),
                 job_id),
            )

    def save_finalized(self, job_id: str, last_finalized_bucket_end: int | None,
                       analysis: AnalysisCommit | None = None) -> None:
        with self._write(f"flushing job [{job_id}]") as db:
            if analysis is not None:
                _write_analysis(db, job_id, analysis)
            db.execute("UPDATE jobs SET last_finalized_bucket_end = ? WHERE job_id = ?",
                       (last_finalized_bucket_end, job_id))

    def reset(self, job_id: str, counts: dict) -> None:
        """Clear counts and everything learnt; keep the configuration."""
        with self._write(f"resetting job [{job_id}]") as db:
            db.execute("DELETE FROM job_strings WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM analysis_state WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM analysis_state_parts WHERE job_id = ?", (job_id,))
            delete_results(db, job_id)
            db.execute(
                "UPDATE jobs SET counts = ?, diagnostics = NULL, last_finalized_bucket_end = NULL,"
                " string_count = 0 WHERE job_id = ?",
                (json.dumps(counts), job_id),
            )

    def delete(self, job_id: str) -> None:
        with self._write(f"deleting job [{job_id}]") as db:
            db.execute("DELETE FROM job_strings WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM analysis_state WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM analysis_state_parts WHERE job_id = ?", (job_id,))
            delete_results(db, job_id)
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def load_analysis(self, job_id: str) -> tuple[bytes | None, dict | None]:
        """The analysis state blob and stats of a job (``None`` before its first bucket)."""
        with self._lock, self._failures(f"reading job [{job_id}]"):
            # one read transaction: the parts of one commit's state, never of two
            own = not self._db.in_transaction
            if own:
                self._db.execute("BEGIN")
            try:
                row = self._db.execute(
                    "SELECT state, stats FROM analysis_state WHERE job_id = ?", (job_id,)
                ).fetchone()
                parts = self._db.execute(
                    "SELECT data FROM analysis_state_parts WHERE job_id = ? ORDER BY part",
                    (job_id,)).fetchall()
            finally:
                if own and self._db.in_transaction:
                    self._db.execute("COMMIT")
        if row is None:
            return None, None
        state = b"".join([row[0], *(part[0] for part in parts)]) if parts else bytes(row[0])
        return state, json.loads(row[1])

    def load_analysis_stats(self, job_id: str) -> dict | None:
        with self._lock, self._failures(f"reading job [{job_id}]"):
            row = self._db.execute(
                "SELECT stats FROM analysis_state WHERE job_id = ?", (job_id,)
            ).fetchone()
        return json.loads(row[0]) if row is not None else None

    def read_results(self, job_id: str, query: Callable[..., dict], *args: Any,
                     **kwargs: Any) -> dict:
        """Run one of :mod:`adjobs.results`' read functions on this database."""
        with self._lock, self._failures(f"reading the results of job [{job_id}]"):
            return query(self._db, *args, **kwargs)

    # --------------------------------------------------------------------------------
    # Maintenance

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check``: ``["ok"]`` for a sound database."""
        with self._lock, self._failures("checking integrity"):
            return [row[0] for row in self._db.execute("PRAGMA integrity_check")]

    def backup(self, destination: str | os.PathLike) -> None:
        """Copy the whole store to ``destination`` (a new SQLite file), consistently, while
        other processes keep writing (SQLite's online backup)."""
        with self._failures(f"backup to '{destination}'"):
            target = sqlite3.connect(destination)
            try:
                with self._lock:
                    self._db.backup(target)
            finally:
                target.close()


def _check_writable(folder: Path, database: Path) -> None:
    """A clear error for a directory or database we may not write (root passes any mode
    check, so the probe actually writes)."""
    # One fixed name: a process killed between the write and the unlink leaves one
    # small file behind that the next start reuses, not one per process id.
    probe = folder / ".adjobs-write-probe"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"x")
        probe.unlink(missing_ok=True)
    except OSError as error:
        raise StoreError(
            f"the data directory '{folder}' is not writable: {error.strerror or error}"
        ) from None
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        raise StoreError(f"the job store '{database}' is not readable and writable")
