"""Persisted anomaly results and the query semantics of the four results APIs.

Result documents (buckets, records, influencers) are kept in ES's shapes (analysis.md A.4) in
three SQLite tables that live in the job store's database. The write functions run inside the
caller's transaction (the store's connection has ``isolation_level=None``: they never BEGIN or
COMMIT); the read functions return the REST bodies of get_buckets, get_records,
get_influencers and get_overall_buckets.

Why three tables rather than one ``results`` table: the three kinds are filtered and sorted on
different fields (``anomaly_score`` / ``record_score`` / ``influencer_score``, the record's
split values, the influencer's field name and value) and have different identities. One table
per kind gives each a narrow unique key and indexes that lead with ``job_id`` and the kind's
own sort column, with no ``result_type`` column in every index.

Identity of a result (ES document ids without the constant bucket span):

* bucket: ``(job_id, timestamp)``;
* record: ``(job_id, timestamp, detector_index, partition_field_value, by_field_value,
  over_field_value)``, as ES's ``AnomalyRecord.getId()`` (held as the JSON text ``ident``, so
  that a missing value and ``""`` stay distinct and NULLs cannot defeat the unique key);
* influencer: ``(job_id, timestamp, influencer_field_name, influencer_field_value)``.

Writing a result whose identity exists replaces it, as re-indexing a document with the same id
does in ES. Documents are stored as compact JSON exactly as written and returned as stored;
only :func:`update_scores` changes them (the normalised scores, never the ``initial_*`` ones).

Defaults and semantics come from Elasticsearch's source:

* ``GetBucketsAction`` / ``BucketsQueryBuilder``: sort ``timestamp``, ascending, from 0,
  size 100; a non-``timestamp`` sort gets ``timestamp`` (same direction) as a second key;
  ``timestamp`` with from/size/start/end/anomaly_score is a 400; with ``timestamp`` the
  interim filter is not applied to the bucket and an absent bucket is a 404
  (``JobResultsProvider.buckets``, ``QueryPage.emptyQueryPage``);
* ``expand`` (``JobResultsProvider.expandBucket``): only buckets with bucket influencers get
  ``records``, at most 10,000, sorted by ``probability`` ascending then the records'
  secondary keys; the ``records`` key is absent when there are none (``Bucket.toXContent``);
* ``GetRecordsAction`` / ``RecordsQueryBuilder``: sort ``record_score``, descending, missing
  values last, then ``record_score, over_field_value, partition_field_value,
  by_field_value, field_name, function`` in the same direction;
* ``GetInfluencersAction``: sort ``influencer_score``, descending, no further key;
* ``ResultsFilterBuilder``: ``start <= timestamp < end``; a score threshold applies only when
  it is > 0 (``score >= threshold``); ``exclude_interim`` keeps results that are not interim;
* ``PageParams``: ``from``/``size`` < 0 are 400s; ES's ``index.max_result_window`` makes
  ``from + size > 10000`` a 400;
* ``GetOverallBucketsAction`` / ``TransportGetOverallBucketsAction`` /
  ``OverallBucketsProvider`` / ``OverallBucketsAggregator``: see
  :func:`get_overall_buckets`.

Ties left open by ES's sort keys (Lucene breaks them by document order) are broken here by the
row's insertion order (``rowid``), ascending, so that paging is stable.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _jsontext
from .errors import ApiError, illegal_argument

__all__ = [
    "DEFAULT_FROM",
    "DEFAULT_SIZE",
    "MAX_RESULT_WINDOW",
    "RESERVED_FIELD_NAMES",
    "RESULTS_SCHEMA",
    "ResultBatch",
    "create_results_tables",
    "delete_interim",
    "delete_results",
    "encode_rows",
    "format_bucket_span",
    "get_buckets",
    "get_influencers",
    "get_overall_buckets",
    "get_records",
    "is_term_field_name",
    "iter_for_renormalisation",
    "record_ident",
    "update_scores",
    "write_results",
]

#: The names ES keeps for its own fields (``ReservedFieldNames``): those of every result,
#: state and stats document it stores, ``raw_score`` (ours, stored with records and
#: influencers) and the document metadata. A by, over, partition or influencer field with
#: one of these names (its part before any ``.``) is not copied into results as a
#: top-level key, as ES does not, so it can never overwrite a result's own field.
RESERVED_FIELD_NAMES = frozenset([
    "_id", "_index", "all_field_values", "job_id", "result_type", "timestamp", "is_interim",
    "bucket_span", "detector_index", "probability", "multi_bucket_impact", "record_score",
    "initial_record_score", "raw_score", "function", "function_description", "field_name",
    "typical", "actual", "geo_results", "typical_point", "actual_point", "influencers",
    "causes", "by_field_name", "by_field_value", "correlated_by_field_value",
    "partition_field_name", "partition_field_value", "over_field_name", "over_field_value",
    "anomaly_score", "initial_anomaly_score", "raw_anomaly_score", "bucket_influencers",
    "event_count", "processing_time_ms", "scheduled_events", "influencer_field_name",
    "influencer_field_value", "influencer_field_values", "influencer_score",
    "initial_influencer_score", "category_id", "terms", "regex", "max_matching_length",
    "examples", "num_matches", "preferred_to_categories", "mlcategory",
    "processed_record_count", "processed_field_count", "input_bytes", "input_record_count",
    "input_field_count", "invalid_date_count", "missing_field_count",
    "out_of_order_timestamp_count", "empty_bucket_count", "sparse_bucket_count",
    "bucket_count", "latest_record_timestamp", "earliest_record_timestamp",
    "last_data_time", "latest_empty_bucket_timestamp", "latest_sparse_bucket_timestamp",
    "model_feature", "model_lower", "model_upper", "model_median", "forecast_lower",
    "forecast_upper", "forecast_prediction", "forecast_id", "forecast_start_timestamp",
    "forecast_end_timestamp", "forecast_create_timestamp", "forecast_expiry_timestamp",
    "forecast_messages", "forecast_progress", "forecast_status", "forecast_memory_bytes",
    "model_bytes", "peak_model_bytes", "total_by_field_count", "total_over_field_count",
    "total_partition_field_count", "bucket_allocation_failures_count", "memory_status",
    "log_time", "description", "snapshot_id", "snapshot_doc_count",
    "latest_result_time_stamp", "retain", "min_version",
    "minimum_bucket_processing_time_ms", "maximum_bucket_processing_time_ms",
    "average_bucket_processing_time_ms", "exponential_average_bucket_processing_time_ms",
    "exponential_average_calculation_context", "search_count", "total_search_time_ms",
    "incremental_metric_value_ms", "latest_timestamp", "previous_exponential_average_ms",
])


def is_term_field_name(name: str) -> bool:
    """Whether a data field's name may be a top-level key of a result (ES
    ``ReservedFieldNames.isValidFieldName``): not reserved, nor under a reserved name."""
    return name.split(".", 1)[0] not in RESERVED_FIELD_NAMES


#: ES ``PageParams.DEFAULT_FROM`` / ``DEFAULT_SIZE``.
DEFAULT_FROM = 0
DEFAULT_SIZE = 100
#: ES ``index.max_result_window`` default: ``from + size`` may not exceed it.
MAX_RESULT_WINDOW = 10_000
#: ES ``JobResultsProvider.RECORDS_SIZE_PARAM``: records put in one expanded bucket.
EXPAND_RECORDS_SIZE = 10_000
#: ES ``TransportGetOverallBucketsAction.ChunkedBucketSearcher``: overall buckets searched
#: per chunk, and the most overall buckets one request may produce.
OVERALL_BUCKETS_PER_CHUNK = 1_000
OVERALL_MAX_RESULT_COUNT = 10_000
#: Rows fetched per query by :func:`iter_for_renormalisation`.
_RENORMALISATION_CHUNK = 2_000

# No ';' inside comments: the store runs schema scripts statement by statement (split on ';').
RESULTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS result_buckets (
    job_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,                  -- bucket start, epoch ms
    anomaly_score REAL NOT NULL,
    initial_anomaly_score REAL,
    event_count INTEGER,
    is_interim INTEGER NOT NULL,                 -- 0 or 1
    doc TEXT NOT NULL                            -- the ES document, compact JSON
);
CREATE UNIQUE INDEX IF NOT EXISTS result_buckets_identity
    ON result_buckets (job_id, timestamp);
CREATE INDEX IF NOT EXISTS result_buckets_by_score
    ON result_buckets (job_id, anomaly_score, timestamp);
CREATE INDEX IF NOT EXISTS result_buckets_interim
    ON result_buckets (job_id, timestamp) WHERE is_interim;
CREATE TABLE IF NOT EXISTS result_records (
    job_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    ident TEXT NOT NULL,                         -- JSON [detector_index, partition, by, over]
    detector_index INTEGER NOT NULL,
    record_score REAL NOT NULL,
    initial_record_score REAL,
    probability REAL,
    raw_score REAL,                              -- the doc's raw_score, if it has one
    is_interim INTEGER NOT NULL,
    partition_field_value TEXT,
    by_field_value TEXT,
    over_field_value TEXT,
    field_name TEXT,
    function TEXT,
    doc TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS result_records_identity
    ON result_records (job_id, timestamp, ident);
CREATE INDEX IF NOT EXISTS result_records_by_score
    ON result_records (job_id, record_score, over_field_value, partition_field_value,
                       by_field_value, field_name, function, timestamp, is_interim);
CREATE INDEX IF NOT EXISTS result_records_by_probability
    ON result_records (job_id, probability);
CREATE INDEX IF NOT EXISTS result_records_interim
    ON result_records (job_id, timestamp) WHERE is_interim;
CREATE TABLE IF NOT EXISTS result_influencers (
    job_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    influencer_field_name TEXT NOT NULL,
    influencer_field_value TEXT NOT NULL,
    influencer_score REAL NOT NULL,
    initial_influencer_score REAL,
    probability REAL,
    raw_score REAL,
    is_interim INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS result_influencers_identity
    ON result_influencers (job_id, timestamp, influencer_field_name, influencer_field_value);
CREATE INDEX IF NOT EXISTS result_influencers_by_score
    ON result_influencers (job_id, influencer_score, timestamp, is_interim);
CREATE INDEX IF NOT EXISTS result_influencers_by_field
    ON result_influencers (job_id, influencer_field_name, influencer_field_value, timestamp);
CREATE INDEX IF NOT EXISTS result_influencers_interim
    ON result_influencers (job_id, timestamp) WHERE is_interim
"""

_TABLES = ("result_buckets", "result_records", "result_influencers")


@dataclass
class ResultBatch:
    """Result documents in ES's shapes (A.4), to be written by :func:`write_results`.

    Any object with ``buckets``, ``records`` and ``influencers`` lists will do (an optional
    true ``replaces_interim`` attribute makes :func:`write_results` drop every interim result
    of the job first). :mod:`adjobs.analysis` fills these as buckets are finalised.
    """

    buckets: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    influencers: list[dict] = field(default_factory=list)
    #: Drop every interim result of the job before writing these.
    replaces_interim: bool = False
    #: Rows :func:`encode_rows` made ahead of :func:`write_results`: ``id(doc) -> (job_id,
    #: doc, row)``. A document is never changed once in a batch (a rescored one is a new
    #: copy, with no row yet), so its row stays right.
    rows: dict[int, tuple[str, Mapping[str, Any], tuple]] = field(
        default_factory=dict, repr=False, compare=False)
    #: What the analysis that made the batch knows of its documents' scores, for its own
    #: rescoring (opaque here; a batch others joined no longer matches it, and it says so).
    scores: Any = field(default=None, repr=False, compare=False)

    def extend(self, other: ResultBatch) -> None:
        self.buckets.extend(other.buckets)
        self.records.extend(other.records)
        self.influencers.extend(other.influencers)
        self.replaces_interim = self.replaces_interim or other.replaces_interim
        self.rows.update(getattr(other, "rows", {}))


def create_results_tables(db: sqlite3.Connection) -> None:
    """Run :data:`RESULTS_SCHEMA` statement by statement (idempotent, no implicit COMMIT)."""
    for statement in RESULTS_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


# ------------------------------------------------------------------------------------------
# Write side


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, should one slip into a document.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encode_function(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode`` for dicts and lists, with the C encoder that ``encode`` builds on
    every call built once: the same text. It keeps no markers to find cycles with, which
    result documents never have."""
    make = json.encoder.c_make_encoder
    if make is None or encoder.indent is not None:
        return encoder.encode
    strings = (json.encoder.encode_basestring_ascii if encoder.ensure_ascii
               else json.encoder.encode_basestring)
    c_encoder = make(None, encoder.default, strings, None, encoder.key_separator,
                     encoder.item_separator, encoder.sort_keys, encoder.skipkeys,
                     encoder.allow_nan)
    return lambda value: "".join(c_encoder(value, 0))


def _compiled_first(fallback: Callable[[Any], str]) -> Callable[[Any], str]:
    """An encoder writing what ``fallback`` writes: :func:`adjobs._jsontext.encode` where it
    can (the same text, two to three times faster), ``fallback`` where it declines (numpy
    values, non-finite floats, anything not plainly JSON), so errors are the json module's."""
    def encode(value: Any) -> str:
        text = _jsontext.encode(value)
        return fallback(value) if text is None else text
    return encode


#: One encoder for every document: json.dumps builds a new one per call for these options.
_dumps = _compiled_first(_encode_function(
    json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)))


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


#: json.dumps's defaults with compact separators, built once: json.dumps builds a new
#: encoder per call when given separators.
_dumps_ident = _compiled_first(_encode_function(json.JSONEncoder(separators=(",", ":"))))


def record_ident(doc: Mapping[str, Any]) -> str:
    """The identity of a record within its job and bucket, as stored in ``ident``."""
    return _dumps_ident(
        [
            int(doc.get("detector_index", 0)),
            doc.get("partition_field_value"),
            doc.get("by_field_value"),
            doc.get("over_field_value"),
        ]
    )


def _bucket_row(job_id: str, doc: Mapping[str, Any]) -> tuple:
    return (
        job_id,
        int(doc["timestamp"]),
        float(doc.get("anomaly_score", 0.0)),
        _float_or_none(doc.get("initial_anomaly_score")),
        doc.get("event_count"),
        1 if doc.get("is_interim") else 0,
        _dumps(doc),
    )


def _record_row(job_id: str, doc: Mapping[str, Any]) -> tuple:
    return (
        job_id,
        int(doc["timestamp"]),
        record_ident(doc),
        int(doc.get("detector_index", 0)),
        float(doc.get("record_score", 0.0)),
        _float_or_none(doc.get("initial_record_score")),
        _float_or_none(doc.get("probability")),
        _float_or_none(doc.get("raw_score")),
        1 if doc.get("is_interim") else 0,
        doc.get("partition_field_value"),
        doc.get("by_field_value"),
        doc.get("over_field_value"),
        doc.get("field_name"),
        doc.get("function"),
        _dumps(doc),
    )


def _influencer_row(job_id: str, doc: Mapping[str, Any]) -> tuple:
    return (
        job_id,
        int(doc["timestamp"]),
        str(doc["influencer_field_name"]),
        str(doc["influencer_field_value"]),
        float(doc.get("influencer_score", 0.0)),
        _float_or_none(doc.get("initial_influencer_score")),
        _float_or_none(doc.get("probability")),
        _float_or_none(doc.get("raw_score")),
        1 if doc.get("is_interim") else 0,
        _dumps(doc),
    )


#: The kinds of documents, numbered as :class:`adjobs._jsontext.RowWriter` numbers them.
_KINDS = ("buckets", "records", "influencers")
_BUCKETS, _RECORDS, _INFLUENCERS = range(3)
#: Makes the rows of dicts in compiled code, as the three functions above make them (which
#: it calls for other mappings).
_row_writer = _jsontext.RowWriter(_dumps, _dumps_ident,
                                  (_bucket_row, _record_row, _influencer_row))


def encode_rows(job_id: str, batch: ResultBatch, go_on: Callable[[], bool]) -> None:
    """Make rows for the documents of ``batch`` that have none yet, while ``go_on()``, so
    that :func:`write_results` only inserts them: the service makes them while it would
    otherwise wait for the next chunk to be read, rather than in the commit."""
    row = _row_writer.row
    for kind, name in enumerate(_KINDS):
        for doc in getattr(batch, name):
            if not go_on():
                return
            if id(doc) not in batch.rows:
                try:
                    batch.rows[id(doc)] = (job_id, doc, row(kind, job_id, doc))
                except ValueError:
                    pass  # a NaN: write_results raises it, in the commit, as ever


def _rows(job_id: str, docs: list, made: Mapping[int, tuple], kind: int) -> list[tuple]:
    """The rows of ``docs`` (of ``_KINDS[kind]``): those :func:`encode_rows` made, and the
    others."""
    return _row_writer.rows(kind, job_id, docs, made)


def write_results(db: sqlite3.Connection, job_id: str, batch: Any) -> None:
    """Store a batch of result documents (inside the caller's transaction).

    Before writing, every interim result of the job whose timestamp is that of a document in
    the batch is deleted: a finalised bucket replaces the interim results of its bucket, and
    new interim results replace older interim ones. A document whose identity is already
    stored replaces it. Raises ``ValueError`` for a document holding NaN or infinity.
    """
    buckets = list(batch.buckets)
    records = list(batch.records)
    influencers = list(batch.influencers)
    made = getattr(batch, "rows", None) or {}
    if getattr(batch, "replaces_interim", False):
        # Then no interim result is left for the batch to replace.
        delete_interim(db, job_id)
    elif buckets or records or influencers:
        stamps: set[int] | None = None  # the batch's, worked out if any interim is stored
        for table in _TABLES:
            # Look up the few interim timestamps stored (from the partial index) rather than
            # run one DELETE per timestamp of the batch, which may hold hundreds of buckets.
            interim = db.execute(
                f"SELECT DISTINCT timestamp FROM {table} INDEXED BY {table}_interim"
                " WHERE job_id = ? AND is_interim",
                (job_id,),
            ).fetchall()
            if not interim:
                continue
            if stamps is None:
                stamps = {int(doc["timestamp"])
                          for doc in itertools.chain(buckets, records, influencers)}
            replaced = sorted(stamps.intersection(stamp for (stamp,) in interim))
            if replaced:
                db.executemany(
                    f"DELETE FROM {table} INDEXED BY {table}_interim"
                    " WHERE job_id = ? AND timestamp = ? AND is_interim",
                    [(job_id, stamp) for stamp in replaced],
                )
    if buckets:
        _insert(db, "INSERT OR REPLACE INTO result_buckets (job_id, timestamp, anomaly_score,"
                " initial_anomaly_score, event_count, is_interim, doc)",
                _rows(job_id, buckets, made, _BUCKETS))
    if records:
        _insert(db, "INSERT OR REPLACE INTO result_records (job_id, timestamp, ident,"
                " detector_index, record_score, initial_record_score, probability, raw_score,"
                " is_interim, partition_field_value, by_field_value, over_field_value,"
                " field_name, function, doc)",
                _rows(job_id, records, made, _RECORDS))
    if influencers:
        _insert(db, "INSERT OR REPLACE INTO result_influencers (job_id, timestamp,"
                " influencer_field_name, influencer_field_value, influencer_score,"
                " initial_influencer_score, probability, raw_score, is_interim, doc)",
                _rows(job_id, influencers, made, _INFLUENCERS))


#: Rows one INSERT writes: SQLite runs one statement of many rows faster than as many
#: statements (farequote's 833 result rows: 2.39 -> 1.97 ms), and 16 rows of at most 15
#: columns stay within the oldest SQLite's 999 parameters.
_ROWS_PER_INSERT = 16


def _insert(db: sqlite3.Connection, insert: str, rows: list[tuple]) -> None:
    """``insert`` (``INSERT ... (columns)``) of ``rows`` in order, _ROWS_PER_INSERT a
    statement (the rows past the last whole group one at a time)."""
    if not rows:
        return
    one = "(" + ", ".join(["?"] * len(rows[0])) + ")"
    whole = len(rows) - len(rows) % _ROWS_PER_INSERT
    if whole:
        flat = itertools.chain.from_iterable
        db.executemany(f"{insert} VALUES " + ", ".join([one] * _ROWS_PER_INSERT),
                       [tuple(flat(rows[i:i + _ROWS_PER_INSERT]))
                        for i in range(0, whole, _ROWS_PER_INSERT)])
    if whole < len(rows):
        db.executemany(f"{insert} VALUES {one}", rows[whole:])


def delete_interim(db: sqlite3.Connection, job_id: str) -> int:
    """Delete every interim result of the job; return how many were deleted."""
    deleted = 0
    for table in _TABLES:
        deleted += db.execute(
            f"DELETE FROM {table} INDEXED BY {table}_interim WHERE job_id = ? AND is_interim",
            (job_id,),
        ).rowcount
    return deleted


def delete_results(
    db: sqlite3.Connection, job_id: str, start_ms: int | None = None, end_ms: int | None = None
) -> int:
    """Delete the job's results with ``start_ms <= timestamp < end_ms`` (either bound may be
    None: unbounded); return how many were deleted. ``delete_results(db, job)`` clears all."""
    where, params = _time_filter(job_id, start_ms, end_ms)
    deleted = 0
    for table in _TABLES:
        deleted += db.execute(
            f"DELETE FROM {table} INDEXED BY {table}_identity WHERE {where}", params
        ).rowcount
    return deleted


def _json_number(value: Any) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"a score must be finite, not {number}")
    return repr(number)


def update_scores(
    db: sqlite3.Connection, job_id: str, changes: Iterable[Mapping[str, Any]]
) -> int:
    """Apply renormalised scores; return how many stored results changed.

    Each change names one result by ``result_type`` and its identity fields, exactly as in
    the result document (a document from :func:`iter_for_renormalisation` with its scores
    changed is a valid change), and carries the new score:

    * ``{"result_type": "bucket", "timestamp", "anomaly_score"?, "bucket_influencers"?:
      [{"influencer_field_name", "anomaly_score"}, ...]}``: bucket influencers are matched by
      ``influencer_field_name``; without ``anomaly_score`` the bucket's score becomes the
      max of its bucket influencers' scores (as ES's renormaliser sets it);
    * ``{"result_type": "record", "timestamp", "detector_index", "partition_field_value"?,
      "by_field_value"?, "over_field_value"?, "record_score"}``;
    * ``{"result_type": "influencer", "timestamp", "influencer_field_name",
      "influencer_field_value", "influencer_score"}``.

    The ``initial_*`` scores are never changed; a change naming no stored result is ignored.
    """
    records: list[tuple] = []
    influencers: list[tuple] = []
    buckets: list[Mapping[str, Any]] = []
    for change in changes:
        kind = change.get("result_type")
        if kind == "record":
            score = change["record_score"]
            records.append((float(score), _json_number(score), job_id,
                            int(change["timestamp"]), record_ident(change)))
        elif kind == "influencer":
            score = change["influencer_score"]
            influencers.append((float(score), _json_number(score), job_id,
                                int(change["timestamp"]), str(change["influencer_field_name"]),
                                str(change["influencer_field_value"])))
        elif kind == "bucket":
            buckets.append(change)
        else:
            raise ValueError(f"unknown result_type {kind!r} in a score change")
    updated = 0
    if records:
        updated += db.executemany(
            "UPDATE result_records INDEXED BY result_records_identity SET record_score = ?,"
            " doc = json_set(doc, '$.record_score', json(?))"
            " WHERE job_id = ? AND timestamp = ? AND ident = ?",
            records,
        ).rowcount
    if influencers:
        updated += db.executemany(
            "UPDATE result_influencers INDEXED BY result_influencers_identity"
            " SET influencer_score = ?,"
            " doc = json_set(doc, '$.influencer_score', json(?))"
            " WHERE job_id = ? AND timestamp = ? AND influencer_field_name = ?"
            " AND influencer_field_value = ?",
            influencers,
        ).rowcount
    if buckets:
        updated += _update_buckets(db, job_id, buckets)
    return updated


#: Timestamps per ``IN (...)`` query of :func:`_update_buckets` (SQLite's variable limit).
_BUCKETS_PER_QUERY = 500


def _update_buckets(
    db: sqlite3.Connection, job_id: str, changes: list[Mapping[str, Any]]
) -> int:
    """The bucket changes of :func:`update_scores`, applied in order to the stored documents
    read in a few queries, then written back with one ``executemany``."""
    stamps = sorted({int(change["timestamp"]) for change in changes})
    docs: dict[int, dict] = {}
    for i in range(0, len(stamps), _BUCKETS_PER_QUERY):
        part = stamps[i:i + _BUCKETS_PER_QUERY]
        rows = db.execute(
            "SELECT timestamp, doc FROM result_buckets INDEXED BY result_buckets_identity"
            f" WHERE job_id = ? AND timestamp IN ({', '.join('?' * len(part))})",
            [job_id, *part],
        ).fetchall()
        docs.update((stamp, json.loads(doc)) for stamp, doc in rows)
    changed: dict[int, dict] = {}
    updated = 0  # each change that applied counts, as one UPDATE per change would
    for change in changes:
        stamp = int(change["timestamp"])
        doc = docs.get(stamp)
        if doc is not None and _change_bucket(doc, change):
            changed[stamp] = doc
            updated += 1
    db.executemany(
        "UPDATE result_buckets SET anomaly_score = ?, doc = ? WHERE job_id = ? AND timestamp = ?",
        [(doc["anomaly_score"], _dumps(doc), job_id, stamp) for stamp, doc in changed.items()],
    )
    return updated


def _change_bucket(doc: dict, change: Mapping[str, Any]) -> bool:
    """Apply one bucket change to its stored document; whether it changed the scores."""
    new_scores = {
        str(item["influencer_field_name"]): float(item["anomaly_score"])
        for item in change.get("bucket_influencers") or ()
    }
    influencers = doc.get("bucket_influencers") or []
    for influencer in influencers:
        name = influencer.get("influencer_field_name")
        if name in new_scores:
            influencer["anomaly_score"] = new_scores[name]
    if "anomaly_score" in change:
        score = float(change["anomaly_score"])
    elif new_scores:
        score = max((float(item.get("anomaly_score", 0.0)) for item in influencers),
                    default=0.0)
    else:
        return False
    _json_number(score)
    doc["anomaly_score"] = score
    return True


#: What :func:`iter_for_renormalisation` reads with ``scores_only``: the columns holding a
#: stored result's identity, score and raw score (each equal to the document's field, None
#: where the document has none).
_SCORE_COLUMNS = {
    "result_records": ("detector_index", "partition_field_value", "by_field_value",
                       "over_field_value", "record_score", "raw_score"),
    "result_influencers": ("influencer_field_name", "influencer_field_value",
                           "influencer_score", "raw_score"),
}
_SCORE_RESULT_TYPES = {"result_records": "record", "result_influencers": "influencer"}


def _scores_doc(table: str, stamp: int, values: list) -> dict:
    doc: dict[str, Any] = {"result_type": _SCORE_RESULT_TYPES[table], "timestamp": stamp}
    for name, value in zip(_SCORE_COLUMNS[table], values, strict=True):
        if value is not None:
            doc[name] = value
    return doc


def rescored_batch(batch: Any, since_ms: int, rescore: Callable[[list[dict]], list[dict]]
                   ) -> ResultBatch:
    """``batch`` with its results from ``since_ms`` on rescored by ``rescore`` before they
    are written: the same documents, and the same changes, as writing the batch, reading it
    back with :func:`iter_for_renormalisation` (``scored_buckets_only``, ``scores_only``)
    and applying the changes with :func:`update_scores`, without parsing it back.

    Each change applies to every document of the batch with its identity (the row that an
    ``UPDATE`` would find is the one of them written last). Changed documents are copies.
    """
    # What iter_for_renormalisation would read back, in the order it would read it: the
    # documents themselves, which hold the identity, score and raw score it reads, and more.
    read_back = [
        *_read_back(batch.buckets, since_ms, scored_buckets_only=True),
        *_read_back(batch.records, since_ms),
        *_read_back(batch.influencers, since_ms),
    ]
    record_scores: dict[tuple[int, str], float] = {}
    influencer_scores: dict[tuple[int, str, str], float] = {}
    bucket_changes: dict[int, list[Mapping[str, Any]]] = {}
    for change in rescore(read_back):
        kind = change.get("result_type")
        stamp = int(change["timestamp"])
        if kind == "record":
            _json_number(change["record_score"])
            record_scores[(stamp, record_ident(change))] = float(change["record_score"])
        elif kind == "influencer":
            _json_number(change["influencer_score"])
            influencer_scores[(stamp, str(change["influencer_field_name"]),
                               str(change["influencer_field_value"]))] = float(
                change["influencer_score"])
        elif kind == "bucket":
            bucket_changes.setdefault(stamp, []).append(change)
        else:
            raise ValueError(f"unknown result_type {kind!r} in a score change")

    buckets = list(batch.buckets)
    if bucket_changes:
        for i, doc in enumerate(buckets):
            changes = bucket_changes.get(int(doc["timestamp"]))
            if changes:
                doc = {**doc, "bucket_influencers": [
                    dict(item) for item in doc.get("bucket_influencers") or ()]}
                for change in changes:
                    _change_bucket(doc, change)
                buckets[i] = doc
    # A document's identity is only worked out in a bucket with a change: most have none.
    records = list(batch.records)
    if record_scores:
        stamps = {stamp for stamp, _ in record_scores}
        for i, doc in enumerate(records):
            stamp = int(doc["timestamp"])
            if stamp in stamps:
                score = record_scores.get((stamp, record_ident(doc)))
                if score is not None:
                    records[i] = {**doc, "record_score": score}
    influencers = list(batch.influencers)
    if influencer_scores:
        stamps = {stamp for stamp, _, _ in influencer_scores}
        for i, doc in enumerate(influencers):
            stamp = int(doc["timestamp"])
            if stamp in stamps:
                score = influencer_scores.get((stamp, str(doc["influencer_field_name"]),
                                               str(doc["influencer_field_value"])))
                if score is not None:
                    influencers[i] = {**doc, "influencer_score": score}
    return ResultBatch(
        buckets=buckets,
        records=records,
        influencers=influencers,
        replaces_interim=bool(getattr(batch, "replaces_interim", False)),
        rows=getattr(batch, "rows", None) or {},
    )


_first = operator.itemgetter(0)


def _read_back(docs: Iterable[Mapping[str, Any]], since_ms: int, *,
               scored_buckets_only: bool = False) -> list:
    """The documents that :func:`iter_for_renormalisation` would read back of those in a
    batch (from ``since_ms`` on, not interim; buckets with bucket influencers only if
    ``scored_buckets_only``), in timestamp order, documents of one timestamp in batch order."""
    eligible = []
    for doc in docs:
        stamp = int(doc["timestamp"])
        if stamp >= since_ms and not doc.get("is_interim"):
            if scored_buckets_only:
                influencers = doc.get("bucket_influencers")
                if not (isinstance(influencers, list) and influencers):
                    continue
            eligible.append((stamp, doc))
    eligible.sort(key=_first)  # stable: a timestamp's documents keep their order
    return [doc for _, doc in eligible]


def iter_for_renormalisation(
    db: sqlite3.Connection,
    job_id: str,
    since_ms: int | None = None,
    *,
    include_interim: bool = False,
    scored_buckets_only: bool = False,
    scores_only: bool = False,
) -> Iterator[dict]:
    """The stored documents with ``timestamp >= since_ms``: all buckets, then all records, then
    all influencers, each kind in (timestamp, insertion) order, interim ones left out unless
    asked for.

    Each document carries what renormalisation needs: buckets their ``bucket_influencers``
    (``raw_anomaly_score``, ``probability``), records and influencers their ``probability``
    (and ``raw_score`` when the writer put one in the document). Rows are read in chunks, so
    a job of any size streams, and :func:`update_scores` may be called between items.
    ``scored_buckets_only`` leaves out the buckets without bucket influencers (most of them,
    in a quiet job): there is nothing in them to renormalise. With ``scores_only``, records
    and influencers are read from their columns as just their identity, score and raw score
    (what renormalisation reads), not parsed from the documents, which costs far more.
    """
    for table in _TABLES:
        light = scores_only and table in _SCORE_COLUMNS
        last: tuple[int, int] | None = None
        while True:
            where, params = _time_filter(job_id, since_ms, None)
            if not include_interim:
                where += " AND NOT is_interim"
            if scored_buckets_only and table == "result_buckets":
                # Decided by SQLite's JSON parser: far cheaper than json.loads of every doc.
                where += " AND json_array_length(doc, '$.bucket_influencers') > 0"
            if last is not None:
                where += " AND (timestamp > ? OR (timestamp = ? AND rowid > ?))"
                params += [last[0], last[0], last[1]]
            columns = ", ".join(_SCORE_COLUMNS[table]) if light else "doc"
            rows = db.execute(
                f"SELECT timestamp, rowid, {columns} FROM {table} INDEXED BY {table}_identity"
                f" WHERE {where}"
                " ORDER BY timestamp, rowid LIMIT ?",
                [*params, _RENORMALISATION_CHUNK],
            ).fetchall()
            for stamp, rowid, *values in rows:
                last = (stamp, rowid)
                if light:
                    yield _scores_doc(table, stamp, values)
                else:
                    yield json.loads(values[0])
            if len(rows) < _RENORMALISATION_CHUNK:
                break


# ------------------------------------------------------------------------------------------
# Read side: shared pieces


def _time_filter(job_id: str, start: int | None, end: int | None) -> tuple[str, list]:
    where = "job_id = ?"
    params: list[Any] = [job_id]
    if start is not None:
        where += " AND timestamp >= ?"
        params.append(int(start))
    if end is not None:
        where += " AND timestamp < ?"
        params.append(int(end))
    return where, params


def _filters(
    job_id: str,
    start: int | None,
    end: int | None,
    score_column: str,
    threshold: float,
    exclude_interim: bool,
) -> tuple[str, list]:
    where, params = _time_filter(job_id, start, end)
    if threshold > 0.0:  # ES ResultsFilterBuilder.score: no filter unless > 0
        where += f" AND {score_column} >= ?"
        params.append(float(threshold))
    if exclude_interim:
        where += " AND NOT is_interim"
    return where, params


def _page_params(from_: int | None, size: int | None) -> tuple[int, int]:
    """``from``/``size`` with their defaults for ``None``, checked as ES checks them."""
    from_ = DEFAULT_FROM if from_ is None else int(from_)
    size = DEFAULT_SIZE if size is None else int(size)
    _check_page(from_, size)
    return from_, size


def _check_page(from_: int, size: int) -> None:
    if from_ < 0:
        raise illegal_argument("Parameter [from] cannot be < 0")
    if size < 0:
        raise illegal_argument("Parameter [size] cannot be < 0")
    if from_ + size > MAX_RESULT_WINDOW:
        raise illegal_argument(
            "Result window is too large, from + size must be less than or equal to: "
            f"[{MAX_RESULT_WINDOW}] but was [{from_ + size}]. See the scroll api for a more "
            "efficient way to request large data sets. This limit can be set by changing the "
            "[index.max_result_window] index level setting."
        )


def _json_field(name: str) -> tuple[str, bool]:
    return f"json_extract(doc, '$.{name}')", True


# Sortable fields per kind: name -> (SQL expression, may be missing). A field outside these
# is what ES answers for an unmapped sort field.
_BUCKET_SORT: dict[str, tuple[str, bool]] = {
    "timestamp": ("timestamp", False),
    "anomaly_score": ("anomaly_score", False),
    "initial_anomaly_score": ("initial_anomaly_score", True),
    "event_count": ("event_count", True),
    "is_interim": ("is_interim", False),
    "job_id": ("job_id", False),
    "bucket_span": _json_field("bucket_span"),
    "processing_time_ms": _json_field("processing_time_ms"),
    "result_type": _json_field("result_type"),
}
_RECORD_SORT: dict[str, tuple[str, bool]] = {
    "timestamp": ("timestamp", False),
    "record_score": ("record_score", False),
    "initial_record_score": ("initial_record_score", True),
    "probability": ("probability", True),
    "detector_index": ("detector_index", False),
    "is_interim": ("is_interim", False),
    "job_id": ("job_id", False),
    "partition_field_value": ("partition_field_value", True),
    "by_field_value": ("by_field_value", True),
    "over_field_value": ("over_field_value", True),
    "field_name": ("field_name", True),
    "function": ("function", True),
    **{
        name: _json_field(name)
        for name in (
            "bucket_span", "multi_bucket_impact", "function_description", "by_field_name",
            "over_field_name", "partition_field_name", "correlated_by_field_value",
            "result_type",
        )
    },
}
_INFLUENCER_SORT: dict[str, tuple[str, bool]] = {
    "timestamp": ("timestamp", False),
    "influencer_score": ("influencer_score", False),
    "initial_influencer_score": ("initial_influencer_score", True),
    "probability": ("probability", True),
    "influencer_field_name": ("influencer_field_name", False),
    "influencer_field_value": ("influencer_field_value", False),
    "is_interim": ("is_interim", False),
    "job_id": ("job_id", False),
    "bucket_span": _json_field("bucket_span"),
    "result_type": _json_field("result_type"),
}
#: ES ``RecordsQueryBuilder.SECONDARY_SORT``.
_RECORD_SECONDARY_SORT = (
    "record_score", "over_field_value", "partition_field_value", "by_field_value",
    "field_name", "function",
)


def _sort_term(fields: Mapping[str, tuple[str, bool]], name: str, desc: bool) -> str:
    if name not in fields:
        raise ApiError(
            400, "query_shard_exception", f"No mapping found for [{name}] in order to sort on"
        )
    expression, nullable = fields[name]
    if desc:
        return f"{expression} DESC"  # SQLite puts NULLs last when descending, as ES does
    return f"{expression} ASC NULLS LAST" if nullable else f"{expression} ASC"


def _record_order(sort: str, desc: bool) -> str:
    terms = [_sort_term(_RECORD_SORT, sort, desc)]
    terms += [_sort_term(_RECORD_SORT, name, desc) for name in _RECORD_SECONDARY_SORT]
    return ", ".join([*terms, "rowid ASC"])


def _page(
    db: sqlite3.Connection, table: str, where: str, params: list, order: str, from_: int,
    size: int,
) -> tuple[int, list[dict]]:
    count = db.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()[0]
    if size == 0 or from_ >= count:
        return count, []
    # Two steps: order and page the rowids (from indexes, without dragging the documents
    # through a sort), then read the page's documents.
    rowids = [
        row[0]
        for row in db.execute(
            f"SELECT rowid FROM {table} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, size, from_],
        )
    ]
    docs: dict[int, str] = {}
    for i in range(0, len(rowids), 500):
        part = rowids[i : i + 500]
        docs.update(db.execute(
            f"SELECT rowid, doc FROM {table} WHERE rowid IN ({', '.join('?' * len(part))})",
            part,
        ).fetchall())
    return count, [_as_shown(docs[rowid]) for rowid in rowids]


def _bucket_records(
    db: sqlite3.Connection, job_id: str, timestamp: int, include_interim: bool
) -> list[dict]:
    where = "job_id = ? AND timestamp = ?"
    if not include_interim:
        where += " AND NOT is_interim"
    order = _record_order("probability", False)
    # The planner, without statistics, would walk the probability index of the whole job.
    rows = db.execute(
        f"SELECT doc FROM result_records INDEXED BY result_records_identity WHERE {where}"
        f" ORDER BY {order} LIMIT ?",
        (job_id, int(timestamp), EXPAND_RECORDS_SIZE),
    ).fetchall()
    return [_as_shown(row[0]) for row in rows]


def _as_shown(doc: str) -> dict:
    """A stored document as the APIs show it: without the ``raw_score`` that records and
    influencers keep for renormalisation, a field ES does not return."""
    shown = json.loads(doc)
    shown.pop("raw_score", None)
    return shown


def _with_records(bucket: dict, records: list[dict]) -> dict:
    # ES writes "records" right after "initial_anomaly_score".
    if "initial_anomaly_score" not in bucket:
        return {**bucket, "records": records}
    out: dict[str, Any] = {}
    for key, value in bucket.items():
        out[key] = value
        if key == "initial_anomaly_score":
            out["records"] = records
    return out


# ------------------------------------------------------------------------------------------
# Read side: the four APIs


def get_buckets(
    db: sqlite3.Connection,
    job_id: str,
    *,
    timestamp: int | None = None,
    expand: bool | None = False,
    exclude_interim: bool | None = False,
    start: int | None = None,
    end: int | None = None,
    anomaly_score: float | None = None,
    sort: str | None = "timestamp",
    desc: bool | None = False,
    from_: int | None = None,
    size: int | None = None,
) -> dict:
    """The get_buckets body ``{"count", "buckets"}``; times are epoch ms.

    ``None`` means "not given" for every parameter (so the caller can pass what it parsed):
    ``anomaly_score``, ``from_`` and ``size`` default to None rather than 0.0 / 0 / 100 because
    ES rejects ``timestamp`` together with any of them *when given*. With ``timestamp`` the one
    bucket starting then is returned (404 if there is none), interim or not.

    Raises
    ------
    ApiError
        400 for ``timestamp`` with from/size/start/end/anomaly_score, a bad page or an unknown
        sort field; 404 for a ``timestamp`` with no bucket.
    """
    if timestamp is not None and any(
        value is not None for value in (from_, size, start, end, anomaly_score)
    ):
        raise illegal_argument(
            "Param [timestamp] is incompatible with [from,size,start,end,anomaly_score]"
        )
    from_ = DEFAULT_FROM if from_ is None else int(from_)
    size = (1 if timestamp is not None else DEFAULT_SIZE) if size is None else int(size)
    sort = "timestamp" if sort is None else sort
    desc = bool(desc)
    _check_page(from_, size)
    order = _sort_term(_BUCKET_SORT, sort, desc)
    if sort != "timestamp":
        order += ", " + _sort_term(_BUCKET_SORT, "timestamp", desc)
    if timestamp is not None:
        where, params = "job_id = ? AND timestamp = ?", [job_id, int(timestamp)]
    else:
        where, params = _filters(job_id, start, end, "anomaly_score",
                                 float(anomaly_score or 0.0), bool(exclude_interim))
    count, buckets = _page(db, "result_buckets", where, params, order, from_, size)
    if timestamp is not None and not buckets:
        raise ApiError(404, "resource_not_found_exception", "Could not find requested buckets")
    if expand:
        for i, bucket in enumerate(buckets):
            if bucket.get("bucket_influencers"):
                records = _bucket_records(db, job_id, bucket["timestamp"],
                                          include_interim=not exclude_interim)
                if records:
                    buckets[i] = _with_records(bucket, records)
    return {"count": count, "buckets": buckets}


def get_records(
    db: sqlite3.Connection,
    job_id: str,
    *,
    exclude_interim: bool | None = False,
    start: int | None = None,
    end: int | None = None,
    record_score: float | None = 0.0,
    sort: str | None = "record_score",
    desc: bool | None = True,
    from_: int | None = DEFAULT_FROM,
    size: int | None = DEFAULT_SIZE,
) -> dict:
    """The get_records body ``{"count", "records"}`` (ES defaults: ``record_score``
    descending); ``None`` for any parameter means its default.

    Raises
    ------
    ApiError
        400 for a bad page or an unknown sort field.
    """
    from_, size = _page_params(from_, size)
    order = _record_order("record_score" if sort is None else sort,
                          True if desc is None else bool(desc))
    where, params = _filters(job_id, start, end, "record_score", float(record_score or 0.0),
                             bool(exclude_interim))
    count, records = _page(db, "result_records", where, params, order, from_, size)
    return {"count": count, "records": records}


def get_influencers(
    db: sqlite3.Connection,
    job_id: str,
    *,
    exclude_interim: bool | None = False,
    start: int | None = None,
    end: int | None = None,
    influencer_score: float | None = 0.0,
    sort: str | None = "influencer_score",
    desc: bool | None = True,
    from_: int | None = DEFAULT_FROM,
    size: int | None = DEFAULT_SIZE,
) -> dict:
    """The get_influencers body ``{"count", "influencers"}`` (ES defaults:
    ``influencer_score`` descending); ``None`` for any parameter means its default.

    Raises
    ------
    ApiError
        400 for a bad page or an unknown sort field.
    """
    from_, size = _page_params(from_, size)
    order = _sort_term(_INFLUENCER_SORT, "influencer_score" if sort is None else sort,
                       True if desc is None else bool(desc)) + ", rowid ASC"
    where, params = _filters(job_id, start, end, "influencer_score",
                             float(influencer_score or 0.0), bool(exclude_interim))
    count, influencers = _page(db, "result_influencers", where, params, order, from_, size)
    return {"count": count, "influencers": influencers}


def format_bucket_span(seconds: int) -> str:
    """A span in seconds as ES's ``TimeValue`` string, in the largest exact unit (``"1h"``)."""
    for unit, length in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % length == 0:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


def _floor(value: int, interval: int) -> int:
    return (value // interval) * interval


def _ceil(value: int, interval: int) -> int:
    return -((-value) // interval) * interval


def _within_int64(value: int) -> int:
    """A bound rounded to the span past what SQLite holds, brought back to its edge: no
    bucket lies beyond it, so the query means the same."""
    return min(max(value, -(2**63)), 2**63 - 1)


def _overall_bucket(
    key: int, span_s: int, score: float, jobs: Sequence[tuple[str, float]], interim: bool
) -> dict:
    return {
        "timestamp": key,
        "bucket_span": span_s,
        "overall_score": score,
        "jobs": [{"job_id": job, "max_anomaly_score": value} for job, value in jobs],
        "is_interim": interim,
        "result_type": "overall_bucket",
    }


def _too_many_overall_buckets() -> ApiError:
    return ApiError(
        400,
        "status_exception",
        f"Unable to return more than [{OVERALL_MAX_RESULT_COUNT}] results; please use "
        "parameters [start] and [end] to limit the time range",
    )


def get_overall_buckets(
    db: sqlite3.Connection,
    job_ids: Sequence[str],
    bucket_spans: Mapping[str, int],
    *,
    top_n: int | None = 1,
    bucket_span: int | None = None,
    overall_score: float | None = 0.0,
    exclude_interim: bool | None = False,
    start: int | None = None,
    end: int | None = None,
    span_reps: Mapping[str, str] | None = None,
) -> dict:
    """The get_overall_buckets body ``{"count", "overall_buckets"}``, computed as ES does.

    ``job_ids`` are the expanded jobs, ``bucket_spans`` their bucket spans in seconds and
    ``span_reps`` (optional) their ``bucket_span`` strings, used in the error message;
    ``bucket_span`` is in seconds, ``start``/``end`` in epoch ms.

    With ``S`` the largest job bucket span, the overall buckets have span ``S``, or
    ``bucket_span`` directly when it is given and ``top_n`` is 1 or there is one job. Each
    overall bucket ``[t, t + span)`` (``t`` a multiple of the span since the epoch) gets, per
    job with buckets in it, the max bucket ``anomaly_score`` (``jobs``, by job id), and
    ``overall_score`` = the mean of the ``min(top_n, jobs with buckets)`` highest of those;
    it is interim if any of its buckets is. Overall buckets scoring below ``overall_score``
    are dropped. ``start`` is rounded up and ``end`` down to the span. Like ES's
    ``date_histogram`` searched in chunks of 1,000 spans from the first bucket, empty spans
    between two non-empty ones of the same chunk appear with score 0 and no jobs. When
    ``bucket_span`` is larger than the span used, consecutive overall buckets are merged into
    ``bucket_span`` intervals (max score, max per job, any interim), as ES's
    ``OverallBucketsAggregator`` does.

    Raises
    ------
    ApiError
        400 for ``top_n`` < 1, a ``bucket_span`` below the largest job span, or more than
        10,000 overall buckets.
    """
    top_n = 1 if top_n is None else int(top_n)
    if top_n <= 0:
        raise illegal_argument(f"[topN] parameter must be positive, found [{top_n}]")
    jobs = list(dict.fromkeys(job_ids))
    if not jobs:
        return {"count": 0, "overall_buckets": []}
    missing = [job for job in jobs if job not in bucket_spans]
    if missing:
        raise ValueError(f"no bucket span for job(s) {missing}")
    max_job = jobs[0]
    for job in jobs[1:]:
        if int(bucket_spans[job]) > int(bucket_spans[max_job]):
            max_job = job
    max_span = int(bucket_spans[max_job])
    if bucket_span is not None and int(bucket_span) < max_span:
        rep = (span_reps or {}).get(max_job) or format_bucket_span(max_span)
        raise ApiError(
            400,
            "status_exception",
            f"Param [bucket_span] must be greater or equal to the max bucket_span [{rep}]",
        )
    span = max_span
    if bucket_span is not None and (top_n == 1 or len(jobs) <= 1):
        span = int(bucket_span)
    aggregate_span = None
    if bucket_span is not None and int(bucket_span) != span:
        aggregate_span = int(bucket_span)
    span_ms = span * 1000
    threshold = float(overall_score or 0.0)

    where = f"job_id IN ({', '.join('?' * len(jobs))})"
    params: list[Any] = [*jobs]
    if start is not None:
        where += " AND timestamp >= ?"
        params.append(_within_int64(_ceil(int(start), span_ms)))
    if end is not None:
        where += " AND timestamp < ?"
        params.append(_within_int64(_floor(int(end), span_ms)))
    if exclude_interim:
        where += " AND NOT is_interim"
    rows = db.execute(
        "SELECT timestamp - (((timestamp % ?) + ?) % ?) AS span_key, job_id,"
        " max(anomaly_score), max(is_interim)"
        f" FROM result_buckets INDEXED BY result_buckets_identity WHERE {where}"
        " GROUP BY span_key, job_id ORDER BY span_key, job_id",
        [span_ms, span_ms, span_ms, *params],
    )

    def overall() -> Iterator[dict]:
        """The overall buckets of span ``span``, below-threshold ones dropped."""
        first: int | None = None
        previous: int | None = None
        chunk_ms = OVERALL_BUCKETS_PER_CHUNK * span_ms
        for key, group in itertools.groupby(rows, key=lambda row: row[0]):
            members = [(job, float(score), bool(interim)) for _, job, score, interim in group]
            if first is None:
                first = key
            if previous is not None and (previous - first) // chunk_ms == (key - first) // chunk_ms:
                for gap in range(previous + span_ms, key, span_ms):
                    if 0.0 >= threshold:
                        yield _overall_bucket(gap, span, 0.0, [], False)
            previous = key
            scores = sorted((score for _, score, _ in members), reverse=True)
            top = scores[: min(top_n, len(scores))]
            score = sum(top) / len(top) if top else 0.0
            if score < threshold:
                continue
            yield _overall_bucket(key, span, score,
                                  [(job, value) for job, value, _ in members],
                                  any(interim for _, _, interim in members))

    results: list[dict] = []
    if aggregate_span is None:
        for bucket in overall():
            results.append(bucket)
            if len(results) > OVERALL_MAX_RESULT_COUNT:
                raise _too_many_overall_buckets()
    else:
        results = _aggregate(overall(), aggregate_span)
    return {"count": len(results), "overall_buckets": results}


def _aggregate(buckets: Iterable[dict], span_s: int) -> list[dict]:
    """ES ``OverallBucketsAggregator``: merge overall buckets into ``span_s`` intervals."""
    span_ms = span_s * 1000
    done: list[dict] = []
    start: int | None = None
    best = 0.0
    per_job: dict[str, float] = {}
    interim = False
    for bucket in buckets:
        stamp = bucket["timestamp"]
        if start is None:
            start = _floor(stamp, span_ms)
        elif stamp >= start + span_ms:
            done.append(_overall_bucket(start, span_s, best, sorted(per_job.items()), interim))
            if len(done) > OVERALL_MAX_RESULT_COUNT:
                raise _too_many_overall_buckets()
            start, best, per_job, interim = _floor(stamp, span_ms), 0.0, {}, False
        best = max(best, bucket["overall_score"])
        for job in bucket["jobs"]:
            current = per_job.setdefault(job["job_id"], 0.0)
            if job["max_anomaly_score"] > current:
                per_job[job["job_id"]] = job["max_anomaly_score"]
        interim = interim or bucket["is_interim"]
    if start is not None:
        done.append(_overall_bucket(start, span_s, best, sorted(per_job.items()), interim))
    return done
