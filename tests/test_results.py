"""Persisted results and the query semantics of the four results APIs (adjobs.results)."""

from __future__ import annotations

import copy
import json
import sqlite3
from dataclasses import dataclass, field

import numpy as np
import pytest

from adjobs import results
from adjobs.errors import ApiError
from adjobs.results import ResultBatch

J = "job"
H = 3_600_000
T0 = 1_700_006_400_000  # 2023-11-15T00:00:00Z: a multiple of a day, so of every span used


# ------------------------------------------------------------------------------------------
# Helpers: realistic ES-shaped documents (analysis.md A.4)


def bucket(ts, score, *, job=J, span=3600, interim=False, influencers=("bucket_time",),
           initial=None, event_count=12):
    initial = score if initial is None else initial
    return {
        "job_id": job,
        "timestamp": ts,
        "anomaly_score": score,
        "bucket_span": span,
        "initial_anomaly_score": initial,
        "event_count": event_count,
        "is_interim": interim,
        "bucket_influencers": [
            {
                "job_id": job,
                "result_type": "bucket_influencer",
                "influencer_field_name": name,
                "initial_anomaly_score": initial,
                "anomaly_score": score,
                "raw_anomaly_score": 1.25,
                "probability": 1e-4,
                "timestamp": ts,
                "bucket_span": span,
                "is_interim": interim,
            }
            for name in influencers
        ],
        "processing_time_ms": 3,
        "result_type": "bucket",
    }


def record(ts, score, *, job=J, det=0, by=None, over=None, partition=None, p=0.001,
           interim=False, function="mean", field_name="responsetime", initial=None):
    doc = {
        "job_id": job,
        "result_type": "record",
        "probability": p,
        "multi_bucket_impact": -5.0,
        "record_score": score,
        "initial_record_score": score if initial is None else initial,
        "bucket_span": 3600,
        "detector_index": det,
        "is_interim": interim,
        "timestamp": ts,
        "function": function,
        "function_description": function,
        "typical": [100.0],
        "actual": [250.5],
        "field_name": field_name,
    }
    for kind, name, value in (("partition_field", "region", partition),
                              ("by_field", "airline", by), ("over_field", "client", over)):
        if value is not None:
            doc[f"{kind}_name"] = name
            doc[f"{kind}_value"] = value
            doc[name] = value
    return doc


def influencer(ts, score, *, job=J, name="airline", value="AAL", p=0.01, interim=False):
    return {
        "job_id": job,
        "result_type": "influencer",
        "influencer_field_name": name,
        "influencer_field_value": value,
        name: value,
        "influencer_score": score,
        "initial_influencer_score": score,
        "probability": p,
        "bucket_span": 3600,
        "is_interim": interim,
        "timestamp": ts,
    }


@pytest.fixture
def db():
    connection = sqlite3.connect(":memory:", isolation_level=None)
    # As the job store runs a schema script: statement by statement, inside its transaction.
    connection.execute("BEGIN IMMEDIATE")
    for statement in results.RESULTS_SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)
    connection.execute("COMMIT")
    yield connection
    connection.close()


def write(db, job=J, *, buckets=(), records=(), influencers=()):
    """Write as the job store does: one transaction owned by the caller."""
    db.execute("BEGIN IMMEDIATE")
    results.write_results(db, job, ResultBatch(list(buckets), list(records), list(influencers)))
    db.execute("COMMIT")


def stamps(docs):
    return [doc["timestamp"] for doc in docs]


def scores(docs, key):
    return [doc[key] for doc in docs]


def raises(status, type_, reason, fn, *args, **kwargs):
    with pytest.raises(ApiError) as caught:
        fn(*args, **kwargs)
    assert (caught.value.status, caught.value.type, caught.value.reason) == (status, type_,
                                                                            reason)


# ------------------------------------------------------------------------------------------
# Schema and transactions


def test_schema_runs_inside_the_callers_transaction_and_is_idempotent():
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.execute("BEGIN")
    results.create_results_tables(connection)
    assert connection.in_transaction
    connection.execute("ROLLBACK")
    assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    results.create_results_tables(connection)
    results.create_results_tables(connection)
    tables = {row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"result_buckets", "result_records", "result_influencers"}


def test_writes_stay_in_the_callers_transaction(db):
    db.execute("BEGIN IMMEDIATE")
    results.write_results(db, J, ResultBatch([bucket(T0, 1.0)], [record(T0, 2.0)],
                                             [influencer(T0, 3.0)]))
    results.update_scores(db, J, [{"result_type": "record", "timestamp": T0,
                                   "detector_index": 0, "record_score": 9.0}])
    results.delete_interim(db, J)
    results.delete_results(db, J, T0 + H)
    assert db.in_transaction
    db.execute("ROLLBACK")
    assert results.get_buckets(db, J)["count"] == 0
    assert results.get_records(db, J)["count"] == 0
    assert results.get_influencers(db, J)["count"] == 0


def test_documents_come_back_exactly_as_written(db):
    b = bucket(T0, 0.1 + 0.2, influencers=("bucket_time", "airline"))
    r = record(T0, 12.3456, by="Äir ✈", p=1.0000000000000002e-300)
    r["anomaly_score_explanation"] = {"anomaly_type": "spike", "upper_confidence_bound": 1e17}
    i = influencer(T0, 33.0, value='quote " and \\ backslash')
    write(db, buckets=[b], records=[r], influencers=[i])
    got_b = results.get_buckets(db, J)["buckets"][0]
    got_r = results.get_records(db, J)["records"][0]
    got_i = results.get_influencers(db, J)["influencers"][0]
    assert got_b == b and list(got_b) == list(b)
    assert got_r == r and list(got_r) == list(r)
    assert got_i == i and list(got_i) == list(i)
    assert got_b["anomaly_score"] == 0.30000000000000004
    assert isinstance(got_b["bucket_influencers"][0]["anomaly_score"], float)


def test_results_are_kept_per_job(db):
    write(db, "a", buckets=[bucket(T0, 1.0, job="a")], records=[record(T0, 1.0, job="a")],
          influencers=[influencer(T0, 1.0, job="a")])
    write(db, "b", buckets=[bucket(T0, 2.0, job="b")])
    assert results.get_buckets(db, "a")["buckets"][0]["job_id"] == "a"
    assert results.get_buckets(db, "b")["buckets"][0]["anomaly_score"] == 2.0
    assert results.get_records(db, "b")["count"] == 0
    assert results.get_influencers(db, "c") == {"count": 0, "influencers": []}


# ------------------------------------------------------------------------------------------
# get_buckets


@pytest.fixture
def six_buckets(db):
    # Scores 10, 80, 0, 80, 50 at T0..T0+4h, and an interim bucket scoring 95 at T0+5h.
    write(db, buckets=[bucket(T0 + k * H, s) for k, s in enumerate([10.0, 80.0, 0.0, 80.0,
                                                                     50.0])])
    write(db, buckets=[bucket(T0 + 5 * H, 95.0, interim=True)])
    return db


def test_buckets_default_is_every_bucket_by_ascending_timestamp(six_buckets):
    body = results.get_buckets(six_buckets, J)
    assert body["count"] == 6
    assert stamps(body["buckets"]) == [T0 + k * H for k in range(6)]
    assert all("records" not in b for b in body["buckets"])


def test_buckets_start_is_inclusive_and_end_exclusive(six_buckets):
    body = results.get_buckets(six_buckets, J, start=T0 + H, end=T0 + 3 * H)
    assert (body["count"], stamps(body["buckets"])) == (2, [T0 + H, T0 + 2 * H])
    assert stamps(results.get_buckets(six_buckets, J, start=T0 + 4 * H)["buckets"]) == [
        T0 + 4 * H, T0 + 5 * H]
    assert stamps(results.get_buckets(six_buckets, J, end=T0 + 1)["buckets"]) == [T0]


def test_buckets_anomaly_score_threshold_is_inclusive(six_buckets):
    body = results.get_buckets(six_buckets, J, anomaly_score=50.0)
    assert body["count"] == 4
    assert stamps(body["buckets"]) == [T0 + H, T0 + 3 * H, T0 + 4 * H, T0 + 5 * H]
    assert results.get_buckets(six_buckets, J, anomaly_score=80.0)["count"] == 3
    # ES applies no filter for a threshold <= 0.
    assert results.get_buckets(six_buckets, J, anomaly_score=-1.0)["count"] == 6


def test_buckets_exclude_interim(six_buckets):
    body = results.get_buckets(six_buckets, J, exclude_interim=True)
    assert body["count"] == 5
    assert T0 + 5 * H not in stamps(body["buckets"])


def test_buckets_sorted_by_score_break_ties_by_timestamp_in_the_same_direction(six_buckets):
    up = results.get_buckets(six_buckets, J, sort="anomaly_score")["buckets"]
    assert [(b["anomaly_score"], b["timestamp"]) for b in up] == [
        (0.0, T0 + 2 * H), (10.0, T0), (50.0, T0 + 4 * H), (80.0, T0 + H), (80.0, T0 + 3 * H),
        (95.0, T0 + 5 * H)]
    down = results.get_buckets(six_buckets, J, sort="anomaly_score", desc=True)["buckets"]
    assert [(b["anomaly_score"], b["timestamp"]) for b in down] == [
        (95.0, T0 + 5 * H), (80.0, T0 + 3 * H), (80.0, T0 + H), (50.0, T0 + 4 * H),
        (10.0, T0), (0.0, T0 + 2 * H)]
    assert stamps(results.get_buckets(six_buckets, J, desc=True)["buckets"]) == [
        T0 + k * H for k in range(5, -1, -1)]


def test_buckets_sort_on_other_fields(db):
    write(db, buckets=[bucket(T0, 5.0, event_count=30), bucket(T0 + H, 5.0, event_count=10),
                       bucket(T0 + 2 * H, 5.0, event_count=20)])
    body = results.get_buckets(db, J, sort="event_count")
    assert scores(body["buckets"], "event_count") == [10, 20, 30]
    body = results.get_buckets(db, J, sort="initial_anomaly_score", desc=True)
    assert stamps(body["buckets"]) == [T0 + 2 * H, T0 + H, T0]


def test_buckets_unknown_sort_field_is_a_400_naming_it(six_buckets):
    raises(400, "query_shard_exception", "No mapping found for [nope] in order to sort on",
           results.get_buckets, six_buckets, J, sort="nope")


def test_buckets_paging_and_count_is_all_matching(six_buckets):
    body = results.get_buckets(six_buckets, J, from_=1, size=2)
    assert (body["count"], stamps(body["buckets"])) == (6, [T0 + H, T0 + 2 * H])
    body = results.get_buckets(six_buckets, J, from_=4, size=5, desc=True)
    assert (body["count"], stamps(body["buckets"])) == (6, [T0 + H, T0])
    assert results.get_buckets(six_buckets, J, size=0) == {"count": 6, "buckets": []}
    assert results.get_buckets(six_buckets, J, from_=6) == {"count": 6, "buckets": []}
    body = results.get_buckets(six_buckets, J, anomaly_score=50.0, from_=1, size=1)
    assert (body["count"], stamps(body["buckets"])) == (4, [T0 + 3 * H])


def test_page_validation_uses_es_messages(six_buckets):
    for fn in (results.get_buckets, results.get_records, results.get_influencers):
        raises(400, "illegal_argument_exception", "Parameter [from] cannot be < 0",
               fn, six_buckets, J, from_=-1)
        raises(400, "illegal_argument_exception", "Parameter [size] cannot be < 0",
               fn, six_buckets, J, size=-1)
        raises(400, "illegal_argument_exception",
               "Result window is too large, from + size must be less than or equal to: "
               "[10000] but was [10001]. See the scroll api for a more efficient way to "
               "request large data sets. This limit can be set by changing the "
               "[index.max_result_window] index level setting.",
               fn, six_buckets, J, from_=9901, size=100)
        # The limits themselves are allowed.
        assert fn(six_buckets, J, from_=9900, size=100)["count"] == fn(six_buckets, J)["count"]
        assert fn(six_buckets, J, from_=0, size=10_000) == fn(six_buckets, J)
    assert results.get_buckets(six_buckets, J, from_=0, size=10_000)["count"] == 6


def test_bucket_by_timestamp(six_buckets):
    body = results.get_buckets(six_buckets, J, timestamp=T0 + H)
    assert body["count"] == 1
    assert body["buckets"] == [bucket(T0 + H, 80.0)]
    # ES does not apply the interim filter to a bucket asked for by timestamp.
    body = results.get_buckets(six_buckets, J, timestamp=T0 + 5 * H, exclude_interim=True)
    assert stamps(body["buckets"]) == [T0 + 5 * H]


def test_bucket_by_timestamp_not_found_is_a_404(six_buckets):
    raises(404, "resource_not_found_exception", "Could not find requested buckets",
           results.get_buckets, six_buckets, J, timestamp=T0 + 1)


@pytest.mark.parametrize("param", ["from_", "size", "start", "end", "anomaly_score"])
def test_timestamp_with_a_range_or_page_parameter_is_a_400(six_buckets, param):
    raises(400, "illegal_argument_exception",
           "Param [timestamp] is incompatible with [from,size,start,end,anomaly_score]",
           results.get_buckets, six_buckets, J, timestamp=T0, **{param: 0})


# ------------------------------------------------------------------------------------------
# expand


@pytest.fixture
def expandable(db):
    write(
        db,
        buckets=[bucket(T0, 70.0), bucket(T0 + H, 20.0, influencers=()), bucket(T0 + 2 * H, 5.0)],
        records=[
            record(T0, 20.0, p=0.01, by="c"),
            record(T0, 60.0, p=0.001, by="b"),
            record(T0, 40.0, p=0.001, by="a"),
            record(T0, 40.0, p=0.001, by="0", det=1),
            record(T0, 90.0, p=1e-6, by="z", interim=True),
            # A bucket without bucket influencers is not expanded, even with records.
            record(T0 + H, 30.0, p=0.02),
        ],
    )
    return db


def test_expand_adds_records_sorted_by_probability_then_es_secondary_keys(expandable):
    body = results.get_buckets(expandable, J, expand=True)
    first, second, third = body["buckets"]
    assert [(r["probability"], r["record_score"], r["by_field_value"])
            for r in first["records"]] == [
        (1e-6, 90.0, "z"), (0.001, 40.0, "0"), (0.001, 40.0, "a"), (0.001, 60.0, "b"),
        (0.01, 20.0, "c")]
    # ES writes "records" right after "initial_anomaly_score"; the rest is the document.
    keys = list(first)
    assert keys[keys.index("initial_anomaly_score") + 1] == "records"
    assert {k: v for k, v in first.items() if k != "records"} == bucket(T0, 70.0)
    assert "records" not in second  # no bucket influencers
    assert "records" not in third  # bucket influencers but no records
    assert body["count"] == 3


def test_expand_leaves_out_interim_records_when_asked(expandable):
    first = results.get_buckets(expandable, J, expand=True, exclude_interim=True)["buckets"][0]
    assert [r["by_field_value"] for r in first["records"]] == ["0", "a", "b", "c"]


def test_expand_with_timestamp(expandable):
    body = results.get_buckets(expandable, J, timestamp=T0, expand=True)
    assert len(body["buckets"][0]["records"]) == 5
    assert "records" not in results.get_buckets(expandable, J, timestamp=T0)["buckets"][0]


# ------------------------------------------------------------------------------------------
# get_records


@pytest.fixture
def five_records(db):
    write(db, records=[
        record(T0 + H, 90.0, p=1e-5),                      # a
        record(T0, 50.0, by="x", p=0.002),                 # b
        record(T0, 50.0, by="y", p=0.003),                 # c
        record(T0, 50.0, det=1, p=0.004),                  # d: no by value
        record(T0 + 2 * H, 10.0, p=0.02, interim=True),    # e
    ])
    return db


def labels(records):
    names = {(T0 + H, 0, None): "a", (T0, 0, "x"): "b", (T0, 0, "y"): "c", (T0, 1, None): "d",
             (T0 + 2 * H, 0, None): "e"}
    return "".join(names[(r["timestamp"], r["detector_index"], r.get("by_field_value"))]
                   for r in records)


def test_records_default_is_record_score_descending(five_records):
    body = results.get_records(five_records, J)
    # Ties on record_score: over, partition, by value descending, a missing value last.
    assert (body["count"], labels(body["records"])) == (5, "acbde")


def test_records_ascending_keeps_missing_values_last(five_records):
    assert labels(results.get_records(five_records, J, desc=False)["records"]) == "ebcda"


def test_records_none_means_es_default(five_records):
    body = results.get_records(five_records, J, sort=None, desc=None, from_=None, size=None,
                               record_score=None, exclude_interim=None)
    assert labels(body["records"]) == "acbde"


def test_records_sorted_by_timestamp_use_the_secondary_keys(five_records):
    body = results.get_records(five_records, J, sort="timestamp")
    assert labels(body["records"]) == "eacbd"
    assert labels(results.get_records(five_records, J, sort="timestamp", desc=False)[
        "records"]) == "bcdae"


def test_record_secondary_keys_are_over_then_partition_then_by(db):
    write(db, records=[record(T0, 5.0, over="a", partition="z", by="q"),
                       record(T0, 5.0, over="b", partition="y", by="p"),
                       record(T0, 5.0, over="b", partition="y", by="r"),
                       record(T0, 5.0, over="b", partition="x", by="s")])
    got = [(r["over_field_value"], r["partition_field_value"], r["by_field_value"])
           for r in results.get_records(db, J)["records"]]
    assert got == [("b", "y", "r"), ("b", "y", "p"), ("b", "x", "s"), ("a", "z", "q")]
    got = [r["by_field_value"] for r in results.get_records(db, J, desc=False)["records"]]
    assert got == ["q", "s", "p", "r"]


def test_records_sorted_by_probability(five_records):
    body = results.get_records(five_records, J, sort="probability", desc=False)
    assert labels(body["records"]) == "abcde"


def test_records_filters(five_records):
    body = results.get_records(five_records, J, record_score=50.0)
    assert (body["count"], labels(body["records"])) == (4, "acbd")
    body = results.get_records(five_records, J, start=T0 + H)
    assert (body["count"], labels(body["records"])) == (2, "ae")
    body = results.get_records(five_records, J, end=T0 + H)
    assert (body["count"], labels(body["records"])) == (3, "cbd")
    body = results.get_records(five_records, J, exclude_interim=True)
    assert (body["count"], labels(body["records"])) == (4, "acbd")


def test_records_paging(five_records):
    body = results.get_records(five_records, J, from_=1, size=2)
    assert (body["count"], labels(body["records"])) == (5, "cb")
    assert results.get_records(five_records, J, from_=5) == {"count": 5, "records": []}


def test_records_unknown_sort_field(five_records):
    raises(400, "query_shard_exception", "No mapping found for [score] in order to sort on",
           results.get_records, five_records, J, sort="score")


def test_record_ties_beyond_es_keys_follow_insertion_order(db):
    write(db, records=[record(T0 + k * H, 7.0) for k in (2, 0, 1)])
    assert stamps(results.get_records(db, J)["records"]) == [T0 + 2 * H, T0, T0 + H]
    assert stamps(results.get_records(db, J, desc=False)["records"]) == [T0 + 2 * H, T0,
                                                                        T0 + H]


# ------------------------------------------------------------------------------------------
# get_influencers


@pytest.fixture
def four_influencers(db):
    write(db, influencers=[
        influencer(T0, 40.0, value="AAL"),
        influencer(T0, 75.0, value="JZA"),
        influencer(T0 + H, 40.0, value="ACA"),
        influencer(T0 + 2 * H, 90.0, value="AAL", interim=True),
    ])
    return db


def values(influencers):
    return [(i["influencer_field_value"], i["influencer_score"]) for i in influencers]


def test_influencers_default_is_influencer_score_descending(four_influencers):
    body = results.get_influencers(four_influencers, J)
    assert body["count"] == 4
    assert values(body["influencers"]) == [("AAL", 90.0), ("JZA", 75.0), ("AAL", 40.0),
                                           ("ACA", 40.0)]


def test_influencers_ascending_and_other_sorts(four_influencers):
    body = results.get_influencers(four_influencers, J, desc=False)
    assert values(body["influencers"]) == [("AAL", 40.0), ("ACA", 40.0), ("JZA", 75.0),
                                           ("AAL", 90.0)]
    body = results.get_influencers(four_influencers, J, sort="influencer_field_value",
                                   desc=False)
    assert values(body["influencers"]) == [("AAL", 40.0), ("AAL", 90.0), ("ACA", 40.0),
                                           ("JZA", 75.0)]
    body = results.get_influencers(four_influencers, J, sort="timestamp")
    assert stamps(body["influencers"]) == [T0 + 2 * H, T0 + H, T0, T0]


def test_influencers_filters_and_paging(four_influencers):
    body = results.get_influencers(four_influencers, J, influencer_score=75.0)
    assert (body["count"], values(body["influencers"])) == (2, [("AAL", 90.0), ("JZA", 75.0)])
    body = results.get_influencers(four_influencers, J, start=T0 + H, end=T0 + 2 * H)
    assert (body["count"], values(body["influencers"])) == (1, [("ACA", 40.0)])
    body = results.get_influencers(four_influencers, J, exclude_interim=True)
    assert body["count"] == 3
    body = results.get_influencers(four_influencers, J, from_=1, size=2)
    assert (body["count"], values(body["influencers"])) == (4, [("JZA", 75.0), ("AAL", 40.0)])
    raises(400, "query_shard_exception",
           "No mapping found for [record_score] in order to sort on",
           results.get_influencers, four_influencers, J, sort="record_score")


# ------------------------------------------------------------------------------------------
# Interim results and deletion


def test_final_results_replace_the_interim_results_of_their_bucket(db):
    write(db, buckets=[bucket(T0, 30.0, interim=True), bucket(T0 + H, 8.0, interim=True)],
          records=[record(T0, 30.0, by="x", interim=True), record(T0, 25.0, by="y",
                                                                  interim=True)],
          influencers=[influencer(T0, 30.0, value="y", interim=True)])
    write(db, buckets=[bucket(T0, 40.0)], records=[record(T0, 40.0, by="x")])
    body = results.get_buckets(db, J)
    assert [(b["timestamp"], b["anomaly_score"], b["is_interim"]) for b in body["buckets"]] == [
        (T0, 40.0, False), (T0 + H, 8.0, True)]
    assert [(r["by_field_value"], r["is_interim"]) for r in
            results.get_records(db, J)["records"]] == [("x", False)]
    assert results.get_influencers(db, J)["count"] == 0



def test_only_the_interim_results_of_the_batchs_buckets_and_job_are_replaced(db):
    for job in (J, "other"):
        write(db, job, buckets=[bucket(T0 + k * H, 5.0 + k, job=job, interim=True)
                                for k in range(3)],
              records=[record(T0 + k * H, 5.0 + k, job=job, interim=True) for k in (0, 2)],
              influencers=[influencer(T0 + H, 6.0, job=job, interim=True)])
    # Final results for T0 and T0 + H among many buckets that had no interim results.
    write(db, buckets=[bucket(T0 + k * H, 50.0 + k) for k in range(-300, 2)],
          records=[record(T0 + H, 51.0)])
    body = results.get_buckets(db, J, start=T0 - H, size=10)
    assert [(b["timestamp"], b["anomaly_score"], b["is_interim"]) for b in body["buckets"]] == [
        (T0 - H, 49.0, False), (T0, 50.0, False), (T0 + H, 51.0, False),
        (T0 + 2 * H, 7.0, True)]
    assert [(r["timestamp"], r["record_score"], r["is_interim"]) for r in
            results.get_records(db, J)["records"]] == [(T0 + H, 51.0, False),
                                                      (T0 + 2 * H, 7.0, True)]
    assert results.get_influencers(db, J)["count"] == 0  # its bucket is final now
    # The other job's interim results are all still there.
    assert results.get_buckets(db, "other")["count"] == 3
    assert results.get_records(db, "other")["count"] == 2
    assert results.get_influencers(db, "other")["count"] == 1

def test_new_interim_results_replace_older_interim_ones(db):
    write(db, records=[record(T0, 30.0, by="x", interim=True),
                       record(T0, 25.0, by="y", interim=True)])
    write(db, records=[record(T0, 35.0, by="y", interim=True)])
    assert values_of(results.get_records(db, J)["records"]) == [("y", 35.0)]


def values_of(records):
    return [(r["by_field_value"], r["record_score"]) for r in records]


def test_rewriting_a_result_replaces_it(db):
    write(db, buckets=[bucket(T0, 10.0)], records=[record(T0, 10.0, by="x")],
          influencers=[influencer(T0, 10.0)])
    write(db, buckets=[bucket(T0, 20.0)], records=[record(T0, 20.0, by="x")],
          influencers=[influencer(T0, 20.0)])
    assert scores(results.get_buckets(db, J)["buckets"], "anomaly_score") == [20.0]
    assert values_of(results.get_records(db, J)["records"]) == [("x", 20.0)]
    assert scores(results.get_influencers(db, J)["influencers"], "influencer_score") == [20.0]


def test_a_batch_is_written_in_groups_of_rows_each_in_its_place(db):
    from adjobs.results import _ROWS_PER_INSERT

    n = 2 * _ROWS_PER_INSERT + 5  # two whole groups and five rows on their own
    # a bucket written twice in the batch: the later one stays, as row by row
    buckets = [bucket(T0 + i * H, float(i)) for i in range(n)] + [bucket(T0, 99.0)]
    records = [record(T0 + i * H, float(i), by=f"b{i}") for i in range(n)]
    write(db, buckets=buckets, records=records,
          influencers=[influencer(T0 + i * H, float(i)) for i in range(n)])
    got = results.get_buckets(db, J, size=100)["buckets"]
    assert stamps(got) == [T0 + i * H for i in range(n)]
    assert scores(got, "anomaly_score") == [99.0] + [float(i) for i in range(1, n)]
    assert values_of(results.get_records(db, J, size=100, sort="timestamp", desc=False)["records"]) == [
        (f"b{i}", float(i)) for i in range(n)]
    assert results.get_influencers(db, J, size=100)["count"] == n
    # rows in the order written (ties in a sort fall back to it)
    assert [row[0] for row in db.execute(
        "SELECT timestamp FROM result_records ORDER BY rowid")] == [T0 + i * H for i in range(n)]


def test_record_identity_is_detector_and_split_values(db):
    write(db, records=[
        record(T0, 1.0), record(T0, 2.0, det=1), record(T0, 3.0, by=""), record(T0, 4.0, by="a"),
        record(T0, 5.0, over="a"), record(T0, 6.0, partition="a"),
        record(T0, 7.0, partition="a", by="a"), record(T0 + H, 8.0),
    ])
    assert results.get_records(db, J)["count"] == 8
    assert results.record_ident(record(T0, 0.0, by="a", det=2)) == '[2,null,"a",null]'


def test_delete_interim(db):
    write(db, buckets=[bucket(T0, 1.0), bucket(T0 + H, 2.0, interim=True)],
          records=[record(T0, 1.0), record(T0 + H, 2.0, interim=True)],
          influencers=[influencer(T0 + H, 2.0, interim=True)])
    db.execute("BEGIN")
    assert results.delete_interim(db, J) == 3
    db.execute("COMMIT")
    assert stamps(results.get_buckets(db, J)["buckets"]) == [T0]
    assert stamps(results.get_records(db, J)["records"]) == [T0]
    assert results.get_influencers(db, J)["count"] == 0


@dataclass
class AnalysisBatch:
    """A batch as adjobs.analysis builds it: with ``replaces_interim``."""

    buckets: list = field(default_factory=list)
    records: list = field(default_factory=list)
    influencers: list = field(default_factory=list)
    replaces_interim: bool = False


def test_a_batch_that_replaces_interim_drops_every_interim_result_first(db):
    write(db, buckets=[bucket(T0 + 5 * H, 2.0, interim=True)])
    results.write_results(db, J, AnalysisBatch(buckets=[bucket(T0, 1.0)]))
    assert results.get_buckets(db, J)["count"] == 2
    results.write_results(db, J, AnalysisBatch(buckets=[bucket(T0 + H, 1.0)],
                                               replaces_interim=True))
    assert stamps(results.get_buckets(db, J)["buckets"]) == [T0, T0 + H]


@pytest.fixture
def three_jobs_of_results(db):
    for job in ("a", "b"):
        write(db, job, buckets=[bucket(T0 + k * H, 1.0, job=job) for k in range(5)],
              records=[record(T0 + k * H, 1.0, job=job) for k in range(5)],
              influencers=[influencer(T0 + k * H, 1.0, job=job) for k in range(5)])
    return db


@pytest.mark.parametrize(("start", "end", "left"), [
    (T0 + H, T0 + 3 * H, [0, 3, 4]),
    (T0 + H + 1, T0 + 3 * H + 1, [0, 1, 4]),
    (T0 + 3 * H, None, [0, 1, 2]),
    (None, T0 + 2 * H, [2, 3, 4]),
    (None, None, []),
])
def test_delete_results_in_a_range(three_jobs_of_results, start, end, left):
    db = three_jobs_of_results
    db.execute("BEGIN")
    assert results.delete_results(db, "a", start, end) == 3 * (5 - len(left))
    db.execute("COMMIT")
    expected = [T0 + k * H for k in left]
    assert stamps(results.get_buckets(db, "a")["buckets"]) == expected
    assert stamps(results.get_records(db, "a", sort="timestamp", desc=False)["records"]) == \
        expected
    assert sorted(stamps(results.get_influencers(db, "a")["influencers"])) == expected
    assert results.get_buckets(db, "b")["count"] == 5


# ------------------------------------------------------------------------------------------
# Renormalisation


def test_update_record_and_influencer_scores_leaves_everything_else(db):
    r = record(T0, 80.0, by="x", p=0.1 + 0.2)
    other = record(T0, 70.0, by="y")
    i = influencer(T0, 60.0, value="x")
    write(db, records=[r, other], influencers=[i])
    db.execute("BEGIN")
    changed = results.update_scores(db, J, [
        {"result_type": "record", "timestamp": T0, "detector_index": 0, "by_field_value": "x",
         "record_score": 12.5},
        {"result_type": "influencer", "timestamp": T0, "influencer_field_name": "airline",
         "influencer_field_value": "x", "influencer_score": 0.1 + 0.7},
    ])
    db.execute("COMMIT")
    assert changed == 2
    got = results.get_records(db, J)["records"]
    assert got == [other, {**r, "record_score": 12.5}]
    assert list(got[1]) == list(r)
    assert got[1]["initial_record_score"] == 80.0
    assert got[1]["probability"] == 0.30000000000000004
    got_i = results.get_influencers(db, J)["influencers"][0]
    assert got_i == {**i, "influencer_score": 0.7999999999999999}
    # The indexed score follows: filters and sorts see the new score.
    assert results.get_records(db, J, record_score=50.0)["count"] == 1
    assert results.get_influencers(db, J, influencer_score=1.0)["count"] == 0


def test_update_bucket_scores(db):
    write(db, buckets=[bucket(T0, 90.0, influencers=("bucket_time", "airline")),
                       bucket(T0 + H, 50.0)])
    db.execute("BEGIN")
    changed = results.update_scores(db, J, [{
        "result_type": "bucket", "timestamp": T0,
        "bucket_influencers": [{"influencer_field_name": "bucket_time", "anomaly_score": 20.0},
                               {"influencer_field_name": "airline", "anomaly_score": 30.0}],
    }])
    db.execute("COMMIT")
    assert changed == 1
    got = results.get_buckets(db, J, timestamp=T0)["buckets"][0]
    # Without an explicit anomaly_score the bucket takes its bucket influencers' max.
    assert got["anomaly_score"] == 30.0
    assert got["initial_anomaly_score"] == 90.0
    assert [(b["anomaly_score"], b["initial_anomaly_score"])
            for b in got["bucket_influencers"]] == [(20.0, 90.0), (30.0, 90.0)]
    assert stamps(results.get_buckets(db, J, sort="anomaly_score", desc=True)["buckets"]) == [
        T0 + H, T0]
    results.update_scores(db, J, [{"result_type": "bucket", "timestamp": T0 + H,
                                   "anomaly_score": 5.0}])
    got = results.get_buckets(db, J, timestamp=T0 + H)["buckets"][0]
    assert got == {**bucket(T0 + H, 50.0), "anomaly_score": 5.0}
    assert results.get_buckets(db, J, anomaly_score=10.0)["count"] == 1


def test_update_bucket_scores_in_bulk_apply_in_order_across_queries(db, monkeypatch):
    monkeypatch.setattr(results, "_BUCKETS_PER_QUERY", 2)
    write(db, buckets=[bucket(T0 + k * H, 40.0 + k, influencers=("bucket_time", "airline"))
                       for k in range(5)])
    db.execute("BEGIN")
    changed = results.update_scores(db, J, [
        {"result_type": "bucket", "timestamp": T0 + k * H,
         "bucket_influencers": [{"influencer_field_name": "airline", "anomaly_score": 10.0 + k}]}
        for k in (4, 0, 2)
    ] + [
        # The same bucket again: applied on top of the change before it.
        {"result_type": "bucket", "timestamp": T0 + 2 * H,
         "bucket_influencers": [{"influencer_field_name": "bucket_time",
                                 "anomaly_score": 1.0}]},
        {"result_type": "bucket", "timestamp": T0 + 3 * H},  # changes nothing
        {"result_type": "bucket", "timestamp": T0 + 9 * H, "anomaly_score": 3.0},  # not stored
    ])
    db.execute("COMMIT")
    assert changed == 4
    got = {b["timestamp"]: b for b in results.get_buckets(db, J)["buckets"]}
    # Each bucket takes the max of its bucket influencers' scores.
    assert [got[T0 + k * H]["anomaly_score"] for k in range(5)] == [
        40.0, 41.0, 12.0, 43.0, 44.0]
    assert [b["anomaly_score"] for b in got[T0 + 2 * H]["bucket_influencers"]] == [1.0, 12.0]
    assert [b["anomaly_score"] for b in got[T0 + 4 * H]["bucket_influencers"]] == [44.0, 14.0]
    assert stamps(results.get_buckets(db, J, anomaly_score=42.0)["buckets"]) == [
        T0 + 3 * H, T0 + 4 * H]


def test_update_scores_ignores_unknown_results_and_rejects_bad_changes(db):
    write(db, records=[record(T0, 1.0, by="x")])
    assert results.update_scores(db, J, [
        {"result_type": "record", "timestamp": T0, "detector_index": 0, "record_score": 2.0},
        {"result_type": "bucket", "timestamp": T0, "anomaly_score": 2.0},
        {"result_type": "influencer", "timestamp": T0, "influencer_field_name": "a",
         "influencer_field_value": "b", "influencer_score": 2.0},
    ]) == 0
    assert values_of(results.get_records(db, J)["records"]) == [("x", 1.0)]
    with pytest.raises(ValueError, match="result_type"):
        results.update_scores(db, J, [{"result_type": "model_plot", "timestamp": T0}])
    with pytest.raises(ValueError, match="finite"):
        results.update_scores(db, J, [{"result_type": "record", "timestamp": T0,
                                       "by_field_value": "x", "record_score": float("nan")}])


def test_iter_for_renormalisation(db, monkeypatch):
    monkeypatch.setattr(results, "_RENORMALISATION_CHUNK", 2)
    write(db, buckets=[bucket(T0 + k * H, 10.0 + k) for k in range(4)],
          records=[record(T0 + k * H, 20.0 + k, by=by) for k in (3, 1, 2) for by in "ba"],
          influencers=[influencer(T0 + k * H, 30.0 + k) for k in range(4)])
    write(db, buckets=[bucket(T0 + 4 * H, 9.0, interim=True)],
          records=[record(T0 + 4 * H, 9.0, interim=True)])
    docs = list(results.iter_for_renormalisation(db, J, T0 + H))
    assert [(d["result_type"], d["timestamp"]) for d in docs] == (
        [("bucket", T0 + k * H) for k in (1, 2, 3)]
        + [("record", T0 + k * H) for k in (1, 1, 2, 2, 3, 3)]
        + [("influencer", T0 + k * H) for k in (1, 2, 3)])
    # Within a timestamp, insertion order.
    assert [d.get("by_field_value") for d in docs if d["result_type"] == "record"] == list(
        "bababa")
    assert docs[0] == bucket(T0 + H, 11.0)
    assert docs[0]["bucket_influencers"][0]["raw_anomaly_score"] == 1.25
    with_interim = list(results.iter_for_renormalisation(db, J, T0 + 4 * H,
                                                         include_interim=True))
    assert [(d["result_type"], d["is_interim"]) for d in with_interim] == [
        ("bucket", True), ("record", True)]
    assert len(list(results.iter_for_renormalisation(db, J))) == 14



def test_iter_for_renormalisation_can_leave_out_buckets_without_bucket_influencers(
        db, monkeypatch):
    monkeypatch.setattr(results, "_RENORMALISATION_CHUNK", 2)
    # Quiet buckets (no bucket influencers) between scored ones, over several chunks.
    write(db, buckets=[bucket(T0 + k * H, 10.0 + k, influencers=() if k % 2 else ("x", "y"))
                       for k in range(6)],
          records=[record(T0 + H, 20.0)], influencers=[influencer(T0 + 2 * H, 30.0)])
    docs = list(results.iter_for_renormalisation(db, J, T0 + H, scored_buckets_only=True))
    assert [(d["result_type"], d["timestamp"]) for d in docs] == [
        ("bucket", T0 + 2 * H), ("bucket", T0 + 4 * H), ("record", T0 + H),
        ("influencer", T0 + 2 * H)]
    assert docs[0] == bucket(T0 + 2 * H, 12.0, influencers=("x", "y"))
    assert len(list(results.iter_for_renormalisation(db, J, T0 + H))) == 7  # all 5 buckets

def test_iter_for_renormalisation_scores_only_reads_identity_and_scores_from_columns(
        db, monkeypatch):
    monkeypatch.setattr(results, "_RENORMALISATION_CHUNK", 2)
    write(db, buckets=[bucket(T0 + H, 12.0, influencers=("x", "y"))],
          records=[{**record(T0 + H, 20.5, by="a", partition="p", det=1), "raw_score": 3.25},
                   record(T0 + 2 * H, 7.0, over="o")],  # no raw_score: left out
          influencers=[{**influencer(T0 + H, 30.0, value="AAL"), "raw_score": 1.5}])
    light = list(results.iter_for_renormalisation(db, J, T0, scored_buckets_only=True,
                                                   scores_only=True))
    assert light == [
        bucket(T0 + H, 12.0, influencers=("x", "y")),  # buckets stay whole documents
        {"result_type": "record", "timestamp": T0 + H, "detector_index": 1,
         "partition_field_value": "p", "by_field_value": "a", "record_score": 20.5,
         "raw_score": 3.25},
        {"result_type": "record", "timestamp": T0 + 2 * H, "detector_index": 0,
         "over_field_value": "o", "record_score": 7.0},
        {"result_type": "influencer", "timestamp": T0 + H, "influencer_field_name": "airline",
         "influencer_field_value": "AAL", "influencer_score": 30.0, "raw_score": 1.5},
    ]
    # A light document names its stored result for update_scores as the whole one does.
    db.execute("BEGIN")
    assert results.update_scores(db, J, [{**light[1], "record_score": 10.0},
                                         {**light[3], "influencer_score": 5.0}]) == 2
    db.execute("COMMIT")
    assert [r["record_score"] for r in results.get_records(db, J)["records"]] == [10.0, 7.0]


def test_renormalise_while_iterating(db, monkeypatch):
    monkeypatch.setattr(results, "_RENORMALISATION_CHUNK", 3)
    originals = [record(T0 + k * H, 50.0 + k, by="x") for k in range(7)]
    write(db, buckets=[bucket(T0 + k * H, 40.0) for k in range(7)], records=originals)
    db.execute("BEGIN")
    seen = 0
    for doc in results.iter_for_renormalisation(db, J, T0):
        seen += 1
        if doc["result_type"] == "record":
            changed = copy.deepcopy(doc)
            changed["record_score"] = doc["record_score"] / 2
            assert results.update_scores(db, J, [changed]) == 1
        else:
            changed = copy.deepcopy(doc)
            for item in changed["bucket_influencers"]:
                item["anomaly_score"] = 1.0
            del changed["anomaly_score"]
            assert results.update_scores(db, J, [changed]) == 1
    db.execute("COMMIT")
    assert seen == 14
    got = results.get_records(db, J, sort="timestamp", desc=False)["records"]
    assert got == [{**r, "record_score": r["record_score"] / 2} for r in originals]
    assert set(scores(results.get_buckets(db, J)["buckets"], "anomaly_score")) == {1.0}
    assert set(scores(results.get_buckets(db, J)["buckets"], "initial_anomaly_score")) == {
        40.0}


# ------------------------------------------------------------------------------------------
# get_overall_buckets


SPANS = {"a": 3600, "b": 7200}


@pytest.fixture
def two_jobs(db):
    # Job a: 1h buckets. Job b: 2h buckets. Overall buckets have the largest span, 2h.
    write(db, "a", buckets=[bucket(T0, 10.0, job="a"), bucket(T0 + H, 60.0, job="a"),
                            bucket(T0 + 2 * H, 20.0, job="a"), bucket(T0 + 3 * H, 30.0, job="a"),
                            bucket(T0 + 4 * H, 5.0, job="a", interim=True)])
    write(db, "b", buckets=[bucket(T0, 40.0, job="b", span=7200),
                            bucket(T0 + 2 * H, 90.0, job="b", span=7200),
                            bucket(T0 + 8 * H, 70.0, job="b", span=7200)])
    write(db, "other", buckets=[bucket(T0, 100.0, job="other")])
    return db


def ob(ts, span, score, jobs, interim=False):
    return {"timestamp": ts, "bucket_span": span, "overall_score": score,
            "jobs": [{"job_id": j, "max_anomaly_score": s} for j, s in jobs],
            "is_interim": interim, "result_type": "overall_bucket"}


def test_overall_buckets_top_1(two_jobs):
    body = results.get_overall_buckets(two_jobs, ["b", "a"], SPANS)
    assert body == {"count": 5, "overall_buckets": [
        ob(T0, 7200, 60.0, [("a", 60.0), ("b", 40.0)]),
        ob(T0 + 2 * H, 7200, 90.0, [("a", 30.0), ("b", 90.0)]),
        ob(T0 + 4 * H, 7200, 5.0, [("a", 5.0)], interim=True),
        # An empty span between two buckets, as ES's date_histogram gives it.
        ob(T0 + 6 * H, 7200, 0.0, []),
        ob(T0 + 8 * H, 7200, 70.0, [("b", 70.0)]),
    ]}


def test_overall_buckets_top_2_averages_the_jobs_that_have_buckets(two_jobs):
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, top_n=2)
    assert [(o["timestamp"], o["overall_score"]) for o in body["overall_buckets"]] == [
        (T0, 50.0), (T0 + 2 * H, 60.0), (T0 + 4 * H, 5.0), (T0 + 6 * H, 0.0), (T0 + 8 * H, 70.0)]
    assert results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, top_n=5)[
        "overall_buckets"][0]["overall_score"] == 50.0


def test_overall_score_threshold(two_jobs):
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, top_n=2, overall_score=55)
    assert stamps(body["overall_buckets"]) == [T0 + 2 * H, T0 + 8 * H]
    assert body["count"] == 2
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, overall_score=60.0)
    assert stamps(body["overall_buckets"]) == [T0, T0 + 2 * H, T0 + 8 * H]


def test_overall_buckets_exclude_interim(two_jobs):
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, exclude_interim=True)
    assert body["overall_buckets"][2:] == [ob(T0 + 4 * H, 7200, 0.0, []),
                                           ob(T0 + 6 * H, 7200, 0.0, []),
                                           ob(T0 + 8 * H, 7200, 70.0, [("b", 70.0)])]


def test_overall_buckets_start_and_end_are_aligned_to_the_span(two_jobs):
    # start rounds up to T0+2h (job a's T0+1h bucket is left out), end rounds down to T0+4h.
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, start=T0 + H,
                                       end=T0 + 5 * H)
    assert body == {"count": 1, "overall_buckets": [
        ob(T0 + 2 * H, 7200, 90.0, [("a", 30.0), ("b", 90.0)])]}
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, start=T0 + 2 * H,
                                       end=T0 + 4 * H)
    assert stamps(body["overall_buckets"]) == [T0 + 2 * H]


def test_overall_bucket_span_with_top_1_is_used_directly(two_jobs):
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, bucket_span=4 * 3600)
    assert body == {"count": 3, "overall_buckets": [
        ob(T0, 14400, 90.0, [("a", 60.0), ("b", 90.0)]),
        ob(T0 + 4 * H, 14400, 5.0, [("a", 5.0)], interim=True),
        ob(T0 + 8 * H, 14400, 70.0, [("b", 70.0)]),
    ]}


def test_overall_bucket_span_with_top_1_applies_the_threshold_to_the_wide_buckets(two_jobs):
    # Job a's max over the whole 4h bucket, though its 2h bucket T0+2h alone scores 30 < 70.
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, bucket_span=4 * 3600,
                                       overall_score=70.0)
    assert body["overall_buckets"] == [ob(T0, 14400, 90.0, [("a", 60.0), ("b", 90.0)]),
                                       ob(T0 + 8 * H, 14400, 70.0, [("b", 70.0)])]


def test_overall_bucket_span_with_top_2_aggregates_overall_buckets(two_jobs):
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, top_n=2,
                                       bucket_span=4 * 3600)
    assert body == {"count": 3, "overall_buckets": [
        ob(T0, 14400, 60.0, [("a", 60.0), ("b", 90.0)]),
        ob(T0 + 4 * H, 14400, 5.0, [("a", 5.0)], interim=True),
        ob(T0 + 8 * H, 14400, 70.0, [("b", 70.0)]),
    ]}
    # The threshold applies to the job-span overall buckets, before they are merged.
    body = results.get_overall_buckets(two_jobs, ["a", "b"], SPANS, top_n=2,
                                       bucket_span=4 * 3600, overall_score=55.0)
    assert body["overall_buckets"] == [ob(T0, 14400, 60.0, [("a", 30.0), ("b", 90.0)]),
                                       ob(T0 + 8 * H, 14400, 70.0, [("b", 70.0)])]


def test_overall_buckets_of_one_job(two_jobs):
    body = results.get_overall_buckets(two_jobs, ["a"], SPANS, top_n=2, bucket_span=7200)
    assert body["overall_buckets"] == [ob(T0, 7200, 60.0, [("a", 60.0)]),
                                       ob(T0 + 2 * H, 7200, 30.0, [("a", 30.0)]),
                                       ob(T0 + 4 * H, 7200, 5.0, [("a", 5.0)], interim=True)]
    assert results.get_overall_buckets(two_jobs, [], SPANS) == {"count": 0,
                                                                "overall_buckets": []}
    assert results.get_overall_buckets(two_jobs, ["none"], {"none": 60}) == {
        "count": 0, "overall_buckets": []}


def test_overall_bucket_span_below_the_largest_job_span_is_a_400(two_jobs):
    raises(400, "status_exception",
           "Param [bucket_span] must be greater or equal to the max bucket_span [2h]",
           results.get_overall_buckets, two_jobs, ["a", "b"], SPANS, bucket_span=3600)
    raises(400, "status_exception",
           "Param [bucket_span] must be greater or equal to the max bucket_span [120m]",
           results.get_overall_buckets, two_jobs, ["a", "b"], SPANS, bucket_span=3600,
           span_reps={"a": "1h", "b": "120m"})
    assert results.format_bucket_span(5400) == "90m"
    assert results.format_bucket_span(86400) == "1d"
    assert results.format_bucket_span(90) == "90s"


def test_overall_top_n_must_be_positive(two_jobs):
    raises(400, "illegal_argument_exception", "[topN] parameter must be positive, found [0]",
           results.get_overall_buckets, two_jobs, ["a"], SPANS, top_n=0)


def test_overall_empty_spans_are_filled_only_within_a_chunk_of_1000(db):
    write(db, "m", buckets=[bucket(T0, 3.0, job="m", span=60),
                            bucket(T0 + 999 * 60_000, 4.0, job="m", span=60)])
    body = results.get_overall_buckets(db, ["m"], {"m": 60})
    assert body["count"] == 1000
    assert scores(body["overall_buckets"], "overall_score") == [3.0] + [0.0] * 998 + [4.0]
    write(db, "n", buckets=[bucket(T0, 3.0, job="n", span=60),
                            bucket(T0 + 1000 * 60_000, 4.0, job="n", span=60)])
    body = results.get_overall_buckets(db, ["n"], {"n": 60})
    assert stamps(body["overall_buckets"]) == [T0, T0 + 1000 * 60_000]


def test_more_than_10000_overall_buckets_is_a_400(db):
    write(db, "m", buckets=[bucket(T0 + k * 60_000, 1.0, job="m", span=60)
                            for k in range(10_001)])
    raises(400, "status_exception",
           "Unable to return more than [10000] results; please use parameters [start] and "
           "[end] to limit the time range",
           results.get_overall_buckets, db, ["m"], {"m": 60})
    body = results.get_overall_buckets(db, ["m"], {"m": 60}, end=T0 + 10_000 * 60_000)
    assert body["count"] == 10_000


def _rescore_by_raw_scores(docs):
    """A rescore in the form of JobAnalysis.rescore: records and influencers score 10 times
    their raw score, bucket influencers 7 times theirs; only the changed ones."""
    changes = []
    for doc in docs:
        kind = doc["result_type"]
        if kind in ("record", "influencer") and "raw_score" in doc:
            key = "record_score" if kind == "record" else "influencer_score"
            score = round(doc["raw_score"] * 10.0, 4)
            if score != doc[key]:
                identity = {k: doc[k] for k in (
                    "result_type", "timestamp", "detector_index", "partition_field_value",
                    "by_field_value", "over_field_value", "influencer_field_name",
                    "influencer_field_value") if k in doc}
                changes.append({**identity, key: score})
        elif kind == "bucket":
            new = [{"influencer_field_name": bi["influencer_field_name"],
                    "anomaly_score": round(bi["raw_anomaly_score"] * 7.0, 4)}
                   for bi in doc["bucket_influencers"]]
            if any(n["anomaly_score"] != bi["anomaly_score"]
                   for n, bi in zip(new, doc["bucket_influencers"], strict=True)):
                changes.append({"result_type": "bucket", "timestamp": doc["timestamp"],
                                "bucket_influencers": new})
    return changes


def _with_raw(doc, raw):
    return {**doc, "raw_score": raw}


@pytest.mark.parametrize("replaces_interim", [False, True])
def test_a_batch_rescored_in_memory_is_stored_as_if_written_then_rescored(replaces_interim):
    since = T0 + H
    stored = ResultBatch(
        buckets=[bucket(T0, 5.0), bucket(T0 + H, 5.0, influencers=("bucket_time", "airline")),
                 bucket(T0 + 2 * H, 5.0, interim=True)],
        records=[_with_raw(record(T0, 5.0, by="AAL"), 1.0),
                 _with_raw(record(T0 + H, 5.0, by="AAL"), 2.0),
                 _with_raw(record(T0 + 2 * H, 5.0, by="AAL", interim=True), 3.0)],
        influencers=[_with_raw(influencer(T0, 5.0), 1.0),
                     _with_raw(influencer(T0 + H, 5.0), 2.0),
                     _with_raw(influencer(T0 + 2 * H, 5.0, interim=True), 3.0)],
    )
    quiet = bucket(T0 + 3 * H, 0.0)
    quiet["bucket_influencers"] = []
    batch = ResultBatch(
        # T0 + H again (replacing the stored bucket), the interim bucket finalised, a quiet
        # bucket, a scored one, and a new interim one, which is not rescored.
        buckets=[bucket(T0 + H, 9.0), bucket(T0 + 2 * H, 1.0), quiet,
                 bucket(T0 + 4 * H, 2.0, influencers=("bucket_time", "airline")),
                 bucket(T0 + 5 * H, 3.0, interim=True)],
        records=[_with_raw(record(T0 + H, 9.0, by="AAL"), 2.5),
                 _with_raw(record(T0 + 2 * H, 1.0, by="AAL"), 0.5),
                 _with_raw(record(T0 + 4 * H, 7.0, by="AAL"), 0.7),  # unchanged: 10 x 0.7
                 _with_raw(record(T0 + 4 * H, 1.0, by="JZA", partition="eu"), 0.25),
                 record(T0 + 4 * H, 1.0, by="KLM"),  # no raw score: not rescored
                 _with_raw(record(T0 + 5 * H, 1.0, by="AAL", interim=True), 4.0)],
        influencers=[_with_raw(influencer(T0 + H, 9.0), 2.5),
                     _with_raw(influencer(T0 + 4 * H, 1.0, value="JZA"), 0.25),
                     _with_raw(influencer(T0 + 5 * H, 1.0, interim=True), 4.0)],
        replaces_interim=replaces_interim,
    )

    def stored_rows(connection):
        rows = {}
        for table in ("result_buckets", "result_records", "result_influencers"):
            names = [c[1] for c in connection.execute(f"PRAGMA table_info({table})")]
            rows[table] = [
                {name: (json.loads(value) if name == "doc" else value)
                 for name, value in zip(["rowid", *names], row, strict=True)}
                for row in connection.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid")]
        return rows

    def database():
        connection = sqlite3.connect(":memory:", isolation_level=None)
        results.create_results_tables(connection)
        results.write_results(connection, J, copy.deepcopy(stored))
        return connection

    # As before: write the batch, read back everything from `since` on, rescore, update.
    written_first = database()
    results.write_results(written_first, J, copy.deepcopy(batch))
    docs = list(results.iter_for_renormalisation(written_first, J, since,
                                                 scored_buckets_only=True, scores_only=True))
    results.update_scores(written_first, J, _rescore_by_raw_scores(docs))
    # In memory: the stored results rescored, then the batch rescored before it is written.
    in_memory = database()
    docs = list(results.iter_for_renormalisation(in_memory, J, since,
                                                 scored_buckets_only=True, scores_only=True))
    results.update_scores(in_memory, J, _rescore_by_raw_scores(docs))
    given = copy.deepcopy(batch)
    rescored = results.rescored_batch(given, since, _rescore_by_raw_scores)
    assert given.records == batch.records  # the batch's own documents are left as they were
    results.write_results(in_memory, J, rescored)

    assert stored_rows(in_memory) == stored_rows(written_first)
    by_stamp = {doc["timestamp"]: doc for doc in rescored.buckets}
    assert by_stamp[T0 + H]["anomaly_score"] == 8.75
    assert [bi["anomaly_score"] for bi in by_stamp[T0 + 4 * H]["bucket_influencers"]] == [
        8.75, 8.75]
    assert by_stamp[T0 + 5 * H]["anomaly_score"] == 3.0  # interim: kept
    assert [doc["record_score"] for doc in rescored.records] == [25.0, 5.0, 7.0, 2.5, 1.0, 1.0]
    assert rescored.records[2] is given.records[2]  # unchanged: not copied
    assert [doc["influencer_score"] for doc in rescored.influencers] == [25.0, 2.5, 1.0]
    assert rescored.replaces_interim is replaces_interim


def test_documents_are_encoded_as_json_dumps_would_and_reject_nan():
    from adjobs.results import _dumps, record_ident

    doc = {"job_id": "j\u00e9", "timestamp": 1, "score": 0.1 + 0.2, "flags": [True, None],
           "nested": {"typical": [1e-300, 12.5]}, "value": np.float64(2.5)}
    assert _dumps(doc) == json.dumps({**doc, "value": 2.5}, separators=(",", ":"))
    with pytest.raises(ValueError, match="not JSON compliant"):
        _dumps({"x": float("nan")})
    ident = {"detector_index": 2, "partition_field_value": "\u00e9", "by_field_value": None}
    assert record_ident(ident) == json.dumps([2, "\u00e9", None, None], separators=(",", ":"))


def test_rows_made_ahead_are_the_rows_written_and_a_changed_copy_is_encoded_anew():
    def stored(connection):
        return {table: connection.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
                for table in ("result_buckets", "result_records", "result_influencers")}

    def written(batch):
        connection = sqlite3.connect(":memory:", isolation_level=None)
        results.create_results_tables(connection)
        results.write_results(connection, J, batch)
        return stored(connection)

    def batch():
        return ResultBatch(buckets=[bucket(T0, 10.0), bucket(T0 + H, 0.0, influencers=())],
                           records=[record(T0, 10.0, by="AAL"), record(T0, 5.0, by="JZA")],
                           influencers=[influencer(T0, 7.5)])

    expected = written(batch())
    ahead = batch()
    calls = []
    results.encode_rows(J, ahead, lambda: len(calls) < 3 and not calls.append(1))
    assert len(ahead.rows) == 3  # stopped when told to
    results.encode_rows(J, ahead, lambda: True)
    assert len(ahead.rows) == 5
    assert written(ahead) == expected
    # A rescored document is a new copy: written as it is now, not as its row made ahead.
    ahead.records[1] = {**ahead.records[1], "record_score": 50.0}
    changed = batch()
    changed.records[1]["record_score"] = 50.0
    assert written(ahead) == written(changed) != expected
    # Rows made for another job are not taken for this one.
    other = batch()
    results.encode_rows("other", other, lambda: True)
    assert written(other) == expected
    # A NaN has no row made ahead: writing raises, as without one.
    broken = batch()
    broken.records[0]["record_score"] = float("nan")
    results.encode_rows(J, broken, lambda: True)
    assert len(broken.rows) == 4
    with pytest.raises(ValueError):
        written(broken)
