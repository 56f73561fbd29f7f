"""The durable job store behind ``JobService(path=DIR)``: what survives a close, a reopen and a
process restart (post-data.md §2.3, §6.4, §6b, Examples 4 and 5), one owner per job, id
expressions and stats shapes on closed jobs (rest-api.md §4.3), reset and delete, the
all-or-nothing rule for a cut-off upload, and backups.

Process restarts are real: part of a scenario runs in a child Python process (``CHILD``), which
runs a list of ``JobService`` calls on the data directory and prints each result as a JSON line.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys

import pytest
from conftest import SPEC_EXAMPLES, metric_job, spec_cases, strip_clock

import adjobs
from adjobs import store as store_module
from adjobs.errors import ApiError

# A child process: argv = data directory, JSON list of [method, *args]. Prints one JSON line per
# call (the result, or {"error": [status, type, reason]}). Two pseudo-calls: "wait" prints
# "ready" and blocks until a line arrives on stdin; "kill" sends itself SIGKILL (kill -9).
CHILD = r"""
import json, os, signal, sys
import adjobs
from adjobs.errors import ApiError

service = adjobs.JobService(sys.argv[1])
for op, *args in json.loads(sys.argv[2]):
    if op == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if op == "wait":
        print(json.dumps("ready"), flush=True)
        sys.stdin.readline()
        continue
    try:
        result = getattr(service, op)(*args)
    except ApiError as error:
        result = {"error": [error.status, error.type, error.reason]}
    print(json.dumps(result), flush=True)
service.close()
"""


def run_child(directory, ops: list) -> tuple[int, list]:
    """Run ``ops`` in a new process; its exit code and one result per call that completed."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(directory), json.dumps(ops)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, -9), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


@contextlib.contextmanager
def child_holding(directory, ops: list):
    """Run ``ops`` in a new process up to its "wait"; yield the results so far while the child
    keeps running (and keeps whatever it has open); then let it finish."""
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), json.dumps([*ops, ["wait"]])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            results = []
            for line in proc.stdout:
                value = json.loads(line)
                if value == "ready":
                    break
                results.append(value)
            else:
                pytest.fail(f"child ended early: {proc.stderr.read()}")
            yield results
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.stdin.close()
            assert proc.wait() == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()


def error_of(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call(*args, **kwargs)
    return raised.value


def example_4_5() -> dict:
    return next(case for case in spec_cases() if case["name"] == "spec-ex4-5")


COUNT_JOB = {
    "analysis_config": {"bucket_span": "1h", "detectors": [{"function": "count"}]},
    "data_description": {"time_format": "epoch"},
}
T0 = 1699999200  # an hour boundary (Example 4)
HOUR = 3600

# The job totals after Example 4's three uploads (post-data.md §9), all fields.
EXAMPLE_4_TOTALS = {
    "job_id": "case",
    "processed_record_count": 201,
    "processed_field_count": 0,
    "input_bytes": 4221,
    "input_field_count": 0,
    "invalid_date_count": 0,
    "missing_field_count": 0,
    "out_of_order_timestamp_count": 0,
    "empty_bucket_count": 1,
    "sparse_bucket_count": 1,
    "bucket_count": 3,
    "earliest_record_timestamp": 1699999200000,
    "latest_record_timestamp": 1700010099000,
    "latest_empty_bucket_timestamp": 1700006400000,
    "latest_sparse_bucket_timestamp": 1700002800000,
    "input_record_count": 201,
}

BODY_178 = (
    '{"airline":"AAL","responsetime":132.2046,"sourcetype":"post-data-job","time":1403481600}\n'
    '{"airline":"JZA","responsetime":990.4628,"sourcetype":"post-data-job","time":1403481700}\n'
)


def lines(times) -> str:
    """Example 4's line shape: ``{"time": <n>}`` and a newline (21 bytes for 10-digit times)."""
    return "".join(f'{{"time": {t}}}\n' for t in times)


def airline_lines(rows) -> str:
    return "".join(
        f'{{"time":{t},"airline":"{airline}","responsetime":{value}}}\n'
        for t, airline, value in rows
    )


# --------------------------------------------------------------------------------------------
# The store file


def test_store_is_an_sqlite_wal_database_with_our_ids(tmp_path):
    directory = tmp_path / "data"
    with adjobs.JobService(directory) as service:
        assert service.path == directory
        assert service.store.directory == directory
        service.put_job("job", COUNT_JOB)
    database = directory / store_module.DATABASE_NAME
    assert database.name == "adjobs.db"
    db = sqlite3.connect(database)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
        assert db.execute("PRAGMA application_id").fetchone()[0] == store_module.APPLICATION_ID
        assert store_module.APPLICATION_ID == 0x41444A42
        assert db.execute("SELECT job_id FROM jobs").fetchall() == [("job",)]
    finally:
        db.close()


def test_in_memory_service_has_no_path_and_forgets_everything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with adjobs.JobService() as service:
        assert service.path is None
        service.put_job("job", COUNT_JOB)
        assert service.get_jobs()["count"] == 1
    with adjobs.JobService() as other:
        assert other.get_jobs() == {"count": 0, "jobs": []}
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# What survives a close, a reopen and a restart


def test_example_4_then_example_5_across_a_process_restart(tmp_path):
    """Example 4 runs in a child process that closes the job and exits; Example 5 continues in
    this process: totals, both out-of-order baselines and the latest empty/sparse timestamps
    came through, and the reopen seeded the phantom record (§2.3)."""
    case = example_4_5()
    steps = case["steps"]
    expected = [e["counts"] for e in case["expected"]]
    split = next(i for i, step in enumerate(steps) if "reopen" in step)
    assert split == 3
    ops = [["put_job", "case", case["config"]], ["open_job", "case"]]
    ops += [["post_data", "case", step["upload"]] for step in steps[:split]]
    ops += [["close_job", "case"]]
    code, results = run_child(tmp_path, ops)
    assert code == 0
    assert [strip_clock(r) for r in results[2:5]] == expected[:3]
    assert results[5] == {"closed": True}

    with adjobs.JobService(tmp_path) as service:
        stats = service.get_job_stats("case")["jobs"][0]
        assert stats["state"] == "closed"
        counts = stats["data_counts"]
        assert strip_clock(counts) == EXAMPLE_4_TOTALS
        # the wall-clock fields of the last upload came through as well
        assert counts["last_data_time"] == results[4]["last_data_time"]
        assert isinstance(counts["log_time"], int)

        assert service.open_job("case") == {"opened": True, "node": "adjobs"}
        upload_a = service.post_data("case", steps[4]["upload"])
        assert strip_clock(upload_a) == expected[3]
        assert upload_a["bucket_count"] == 3 and upload_a["empty_bucket_count"] == 2
        upload_b = service.post_data("case", steps[5]["upload"])
        assert strip_clock(upload_b) == expected[4]
        assert upload_b["latest_record_timestamp"] == 1700006400000
        final = strip_clock(service.get_job_stats("case")["jobs"][0]["data_counts"])
        assert final == expected[5]
        assert final["bucket_count"] == 6 and final["out_of_order_timestamp_count"] == 3

    # and once more from a third process: the totals of Example 5 were committed
    code, results = run_child(tmp_path, [["get_job_stats", "case"]])
    stats = results[0]["jobs"][0]
    assert stats["state"] == "closed"
    assert strip_clock(stats["data_counts"]) == expected[5]


def test_totals_survive_restart_in_the_same_process(tmp_path):
    case = example_4_5()
    with adjobs.JobService(tmp_path) as service:
        service.put_job("case", case["config"])
        service.open_job("case")
        for step in case["steps"][:3]:
            service.post_data("case", step["upload"])
    with adjobs.JobService(tmp_path) as service:
        assert strip_clock(service.get_job_stats("case")["jobs"][0]["data_counts"]) == (
            EXAMPLE_4_TOTALS
        )
        service.open_job("case")
        # the out-of-order baseline (latest 1700010099000, bucket T0+3h) came back
        response = service.post_data("case", lines([T0 + 2 * HOUR]))
        assert response["out_of_order_timestamp_count"] == 1
        assert response["processed_record_count"] == 0
        assert "earliest_record_timestamp" not in response


def test_reopen_seeds_phantom_but_a_killed_owner_leaves_its_window(tmp_path):
    """Upload 1 leaves bucket T0+1h (100 records) open in the diagnostics window. A clean close
    discards the window: the reopen seeds one phantom record there, so upload 2 reports that
    bucket with count 1, which is sparse (avg 101/2). After a kill -9 the committed window is
    restored instead: the bucket is reported with its 100 records, not sparse (avg 201/3)."""
    upload_1 = lines([T0]) + lines(range(T0 + HOUR, T0 + HOUR + 100))
    upload_2 = lines(range(T0 + 2 * HOUR, T0 + 2 * HOUR + 100))
    code, results = run_child(
        tmp_path,
        [
            ["put_job", "clean", COUNT_JOB],
            ["put_job", "killed", COUNT_JOB],
            ["open_job", "clean"],
            ["open_job", "killed"],
            ["post_data", "clean", upload_1],
            ["post_data", "killed", upload_1],
            ["close_job", "clean"],
            ["kill"],
        ],
    )
    assert code == -9
    first = strip_clock(results[4])
    assert first["processed_record_count"] == 101
    assert (first["bucket_count"], first["sparse_bucket_count"]) == (1, 1)  # T0: 1 of avg 50.5
    assert first["latest_sparse_bucket_timestamp"] == T0 * 1000
    assert strip_clock(results[5]) == {**first, "job_id": "killed"}

    with adjobs.JobService(tmp_path) as service:
        stats = service.get_job_stats("_all")["jobs"]
        # the lock died with the process: the killed job is closed, its counts committed
        assert [s["state"] for s in stats] == ["closed", "closed"]
        assert strip_clock(stats[1]["data_counts"]) == {
            **strip_clock(stats[0]["data_counts"]), "job_id": "killed"
        }
        assert stats[1]["data_counts"]["processed_record_count"] == 101

        service.open_job("clean")
        service.open_job("killed")
        clean = strip_clock(service.post_data("clean", upload_2))
        killed = strip_clock(service.post_data("killed", upload_2))

    assert clean["processed_record_count"] == killed["processed_record_count"] == 100
    assert clean["latest_record_timestamp"] == killed["latest_record_timestamp"] == (
        (T0 + 2 * HOUR + 99) * 1000
    )
    assert (clean["bucket_count"], clean["empty_bucket_count"], clean["sparse_bucket_count"]) == (
        1, 0, 1
    )
    assert clean["latest_sparse_bucket_timestamp"] == (T0 + HOUR) * 1000
    assert (
        killed["bucket_count"], killed["empty_bucket_count"], killed["sparse_bucket_count"]
    ) == (1, 0, 0)
    # "latest sparse" is the diagnostics' since-open value, restored with the window
    assert killed["latest_sparse_bucket_timestamp"] == T0 * 1000

    # the killed job continues exactly as a job that was never interrupted
    with adjobs.JobService() as memory:
        memory.put_job("killed", COUNT_JOB)
        memory.open_job("killed")
        memory.post_data("killed", upload_1)
        assert strip_clock(memory.post_data("killed", upload_2)) == killed


def test_in_memory_and_stored_services_agree(tmp_path):
    """Every worked example, plus a malformed upload, gives identical responses and totals in
    memory and on disk, where each reopen also restarts the stored service."""
    for number, case in enumerate(spec_cases()):
        directory = tmp_path / f"case{number}"
        memory = adjobs.JobService()
        stored = adjobs.JobService(directory)
        got = {"memory": [], "stored": []}
        try:
            for service in (memory, stored):
                service.put_job("case", case["config"])
                service.open_job("case")
            for step in case["steps"]:
                if "upload" in step:
                    got["memory"].append(strip_clock(memory.post_data("case", step["upload"])))
                    got["stored"].append(strip_clock(stored.post_data("case", step["upload"])))
                else:
                    memory.close_job("case")
                    memory.open_job("case")
                    stored.close()
                    stored = adjobs.JobService(directory)
                    stored.open_job("case")
            # the case's last upload again, cut off inside a final document: a 400
            last = next(step["upload"] for step in reversed(case["steps"]) if "upload" in step)
            truncated = last + '{"time'
            errors = [error_of(s.post_data, "case", truncated) for s in (memory, stored)]
            assert errors[0].to_body() == errors[1].to_body()
            assert errors[0].status == 400 and errors[0].type == "parse_exception"
            for name, service in (("memory", memory), ("stored", stored)):
                service.close_job("case")
                got[name].append(
                    strip_clock(service.get_job_stats("case")["jobs"][0]["data_counts"])
                )
                got[name].append(service.string_values("case"))
        finally:
            memory.close()
            stored.close()
        assert got["memory"] == got["stored"], case["name"]
        expected = [e["counts"] for e in case["expected"]]
        assert got["stored"][: len(expected) - 1] == expected[:-1], case["name"]
        with adjobs.JobService(directory) as restarted:
            counts = restarted.get_job_stats("case")["jobs"][0]["data_counts"]
            assert strip_clock(counts) == got["stored"][-2], case["name"]


def test_malformed_upload_commits_what_it_counted(tmp_path):
    """D2/D6: the 400 of a truncated upload still commits its records; another service on the
    same directory sees them while the job is open, and so does the next process."""
    body = lines([T0, T0 + 1]) + '{"time": 16999'
    assert len(body) == 56
    with adjobs.JobService(tmp_path) as owner, adjobs.JobService(tmp_path) as other:
        owner.put_job("job", COUNT_JOB)
        owner.open_job("job")
        error = error_of(owner.post_data, "job", body)
        assert (error.status, error.type, error.reason) == (
            400, "parse_exception", "The input JSON data is malformed."
        )
        assert error.extra == {"line": 3, "offset": 42}
        in_memory = owner.get_job_stats("job")["jobs"][0]["data_counts"]
        seen = other.get_job_stats("job")["jobs"][0]
        assert seen["state"] == "opened"
        assert seen["data_counts"] == in_memory
        assert in_memory["processed_record_count"] == 2
        assert in_memory["input_bytes"] == 56
        assert in_memory["latest_record_timestamp"] == (T0 + 1) * 1000
        assert "last_data_time" not in in_memory  # a failed upload does not finish reporting
    code, results = run_child(tmp_path, [["get_job_stats", "job"]])
    assert code == 0
    assert results[0]["jobs"][0]["data_counts"] == in_memory


def test_config_and_updates_survive_restart(tmp_path):
    body = {**metric_job("15m"), "description": "first"}
    with adjobs.JobService(tmp_path) as service:
        created = service.put_job("job", body)
        updated = service.update_job("job", {"description": "second"})
    assert created["description"] == "first"
    assert updated == {**created, "description": "second"}
    with adjobs.JobService(tmp_path) as service:
        assert service.get_jobs("job") == {"count": 1, "jobs": [updated]}
        service.open_job("job")
        reupdated = service.update_job("job", {"description": "third"})  # while open
    with adjobs.JobService(tmp_path) as service:
        assert service.get_jobs("job")["jobs"] == [reupdated]
        assert reupdated["description"] == "third"
        assert reupdated["analysis_config"]["bucket_span"] == "15m"
        error = error_of(service.put_job, "job", body)
        assert (error.status, error.type) == (400, "resource_already_exists_exception")


def test_categorical_values_survive_restart(tmp_path):
    with adjobs.JobService(tmp_path) as service:
        service.put_job("job", metric_job())
        service.open_job("job")
        service.post_data("job", BODY_178)
        assert service.string_values("job") == ["AAL", "JZA"]
    with adjobs.JobService(tmp_path) as service:
        assert service.string_values("job") == ["AAL", "JZA"]  # closed job, from the store
        service.open_job("job")
        service.post_data("job", airline_lines([(1403481800, "KLM", 1), (1403481900, "AAL", 2)]))
        assert service.string_values("job") == ["AAL", "JZA", "KLM"]
    with adjobs.JobService(tmp_path) as service:
        assert service.string_values("job") == ["AAL", "JZA", "KLM"]
        counts = service.get_job_stats("job")["jobs"][0]["data_counts"]
        assert counts["processed_record_count"] == 4
        assert counts["processed_field_count"] == 8  # D4: k = 2 after the reopen, too


def test_flush_result_survives_restart(tmp_path):
    with adjobs.JobService(tmp_path) as service:
        service.put_job("job", metric_job())
        service.open_job("job")
        service.post_data("job", BODY_178)
        assert service.flush_job("job", skip_time="1403488700") == {
            "flushed": True,
            "last_finalized_bucket_end": 1403488800000,
        }
    with adjobs.JobService(tmp_path) as service:
        service.open_job("job")
        assert service.flush_job("job") == {
            "flushed": True,
            "last_finalized_bucket_end": 1403488800000,
        }


# --------------------------------------------------------------------------------------------
# Closing


def test_context_manager_and_close_release_the_jobs(tmp_path):
    with adjobs.JobService(tmp_path) as service:
        service.put_job("a", COUNT_JOB)
        service.put_job("b", COUNT_JOB)
        service.open_job("a")
        service.open_job("b")
        assert service.store.load("a").open_since is not None
    with adjobs.JobService(tmp_path) as second:
        assert [s["state"] for s in second.get_job_stats()["jobs"]] == ["closed", "closed"]
        assert second.store.load("a").open_since is None
        assert second.store.load("a").diagnostics is None
        second.open_job("a")
    third = adjobs.JobService(tmp_path)
    third.open_job("a")
    third.open_job("b")
    assert third.open_job("b") == {"opened": True, "node": "adjobs"}  # no-op when open
    third.close()
    with adjobs.JobService(tmp_path) as fourth:
        assert fourth.open_job("a") == {"opened": True, "node": "adjobs"}
        assert fourth.close_job("a") == {"closed": True}
        assert fourth.close_job("a") == {"closed": True}  # closing a closed job is a no-op


# --------------------------------------------------------------------------------------------
# One owner per job


OWNED_REASON = (
    "Cannot perform requested action because job [job] is opened by another process using "
    "the same data directory"
)


def assert_cannot_touch(service, job_id: str = "job") -> None:
    """Every write of ``service`` to a job that someone else has open is a 409."""
    calls = [
        (service.open_job, (job_id,), {}),
        (service.reset_job, (job_id,), {}),
        (service.delete_job, (job_id,), {}),
        (service.delete_job, (job_id,), {"force": True}),
        (service.close_job, (job_id,), {}),
        (service.close_job, ("_all",), {}),
        (service.update_job, (job_id, {"description": "x"}), {}),
    ]
    # post_data and flush_job included: they say who has the job rather than "not open".
    calls += [(service.post_data, (job_id, lines([T0])), {}), (service.flush_job, (job_id,), {})]
    for call, args, kwargs in calls:
        error = error_of(call, *args, **kwargs)
        assert (error.status, error.type, error.reason) == (409, "status_exception", OWNED_REASON)


def test_second_service_in_the_same_process_cannot_touch_an_open_job(tmp_path):
    with adjobs.JobService(tmp_path) as owner, adjobs.JobService(tmp_path) as other:
        owner.put_job("job", {**metric_job(), "description": "mine"})
        owner.open_job("job")
        owner.post_data("job", BODY_178)
        assert_cannot_touch(other)
        seen = other.get_job_stats("job")["jobs"][0]
        assert seen["state"] == "opened"
        assert set(seen) >= {"node", "open_time", "assignment_explanation"}
        assert seen["data_counts"] == owner.get_job_stats("job")["jobs"][0]["data_counts"]
        assert seen["data_counts"]["processed_record_count"] == 2
        assert other.get_jobs("job")["jobs"][0]["description"] == "mine"  # reads still work
        # the owner is unaffected
        assert owner.post_data("job", lines([]))["processed_record_count"] == 0
        owner.close_job("job")
        assert other.get_job_stats("job")["jobs"][0]["state"] == "closed"
        assert other.open_job("job") == {"opened": True, "node": "adjobs"}
        assert_cannot_touch(owner)
        assert other.delete_job("job", force=True) == {"acknowledged": True}
        assert error_of(owner.get_job_stats, "job").status == 404


def test_another_process_cannot_touch_an_open_job(tmp_path):
    ops = [["put_job", "job", metric_job()], ["open_job", "job"], ["post_data", "job", BODY_178]]
    with adjobs.JobService(tmp_path) as service:
        with child_holding(tmp_path, ops) as results:
            committed = results[2]
            assert strip_clock(committed)["processed_record_count"] == 2
            stats = service.get_job_stats("job")["jobs"][0]
            assert stats["state"] == "opened"
            assert re.fullmatch(r"\d+s", stats["open_time"])
            counts = stats["data_counts"]
            assert counts["processed_record_count"] == 2
            assert counts["input_bytes"] == 178
            assert counts["last_data_time"] == committed["last_data_time"]
            assert_cannot_touch(service)
        # the child closed the job and exited
        stats = service.get_job_stats("job")["jobs"][0]
        assert stats["state"] == "closed"
        assert stats["data_counts"] == counts
        assert service.open_job("job") == {"opened": True, "node": "adjobs"}
        assert service.post_data("job", BODY_178)["out_of_order_timestamp_count"] == 0


def test_lock_files_live_under_the_data_directory(tmp_path):
    with adjobs.JobService(tmp_path) as service:
        service.put_job("job", COUNT_JOB)
        service.open_job("job")
        assert (tmp_path / "locks" / "job.lock").is_file()
        service.close_job("job")
        service.delete_job("job")
        assert not (tmp_path / "locks" / "job.lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("adjobs.db")) == [
        "locks"
    ]


# --------------------------------------------------------------------------------------------
# Id expressions on closed jobs, stats shapes


def test_id_expressions_work_on_closed_jobs_after_restart(tmp_path):
    with adjobs.JobService(tmp_path) as service:
        for job_id in ("beta", "alpha-2", "alpha"):
            service.put_job(job_id, COUNT_JOB)
        service.open_job("alpha")
        service.post_data("alpha", lines([T0]))
    with adjobs.JobService(tmp_path) as service:
        def ids(call, expression, **kwargs):
            return [job["job_id"] for job in call(expression, **kwargs)["jobs"]]

        for call in (service.get_jobs, service.get_job_stats):
            assert ids(call, None) == ["alpha", "alpha-2", "beta"]
            assert ids(call, "_all") == ["alpha", "alpha-2", "beta"]
            assert ids(call, "*") == ["alpha", "alpha-2", "beta"]
            assert ids(call, "alpha*") == ["alpha", "alpha-2"]
            assert ids(call, "beta,alpha") == ["alpha", "beta"]
            assert ids(call, "beta, alpha*") == ["alpha", "alpha-2", "beta"]
            assert ids(call, "*-2") == ["alpha-2"]
            assert ids(call, "gamma*") == []
            assert ids(call, "gamma*,beta") == ["beta"]
            for expression, kwargs in (
                ("gamma", {}),
                ("gamma", {"allow_no_match": True}),
                ("alpha,gamma", {}),
                ("gamma*", {"allow_no_match": False}),
                ("gamma*,beta", {"allow_no_match": False}),
            ):
                error = error_of(call, expression, **kwargs)
                assert (error.status, error.type) == (404, "resource_not_found_exception")
            error = error_of(call, "alpha,gamma")
            assert error.reason == "No known job with id 'gamma'"
        assert service.get_jobs("alpha*")["count"] == 2
        stats = service.get_job_stats("alpha*")["jobs"]
        assert [s["data_counts"]["processed_record_count"] for s in stats] == [1, 0]
        assert service.close_job("alpha*") == {"closed": True}
        for job_id in ("alpha", "alpha-2", "beta"):
            service.delete_job(job_id)
        for call in (service.get_jobs, service.get_job_stats):
            assert call("_all") == {"count": 0, "jobs": []}
            assert call("*", allow_no_match=True)["count"] == 0
            assert error_of(call, "_all", allow_no_match=False).status == 404
            assert error_of(call, "*", allow_no_match=False).status == 404


DATA_COUNTS_REQUIRED = {
    "job_id", "processed_record_count", "processed_field_count", "input_bytes",
    "input_field_count", "input_record_count", "invalid_date_count", "missing_field_count",
    "out_of_order_timestamp_count", "empty_bucket_count", "sparse_bucket_count", "bucket_count",
}
MODEL_SIZE_REQUIRED = {
    "job_id", "result_type", "model_bytes", "bucket_allocation_failures_count",
    "total_by_field_count", "total_over_field_count", "total_partition_field_count",
    "memory_status", "log_time", "categorization_status", "categorized_doc_count",
    "total_category_count", "frequent_category_count", "rare_category_count",
    "dead_category_count", "failed_category_count",
}
TIMING_REQUIRED = {
    "job_id", "bucket_count", "total_bucket_processing_time_ms",
    "exponential_average_bucket_processing_time_per_hour_ms",
}
STATS_REQUIRED = {
    "job_id", "data_counts", "model_size_stats", "forecasts_stats", "timing_stats", "state",
}


def check_stats_shape(stats: dict, job_id: str, state: str) -> None:
    assert stats["job_id"] == job_id
    assert stats["state"] == state
    assert DATA_COUNTS_REQUIRED <= set(stats["data_counts"])
    assert stats["data_counts"]["job_id"] == job_id
    model = stats["model_size_stats"]
    assert MODEL_SIZE_REQUIRED <= set(model)
    assert (model["job_id"], model["result_type"]) == (job_id, "model_size_stats")
    assert (model["memory_status"], model["categorization_status"]) == ("ok", "ok")
    assert isinstance(model["log_time"], int)
    assert set(stats["forecasts_stats"]) >= {"total", "forecasted_jobs"}
    assert TIMING_REQUIRED <= set(stats["timing_stats"])
    assert stats["timing_stats"]["job_id"] == job_id
    if state == "closed":
        assert set(stats) == STATS_REQUIRED
    else:
        assert set(stats) == STATS_REQUIRED | {"node", "assignment_explanation", "open_time"}
        assert stats["node"] == {"id": "adjobs", "name": "adjobs", "attributes": {}}
        assert re.fullmatch(r"\d+s", stats["open_time"])


def test_stats_shapes_for_closed_and_open_jobs(tmp_path):
    with adjobs.JobService(tmp_path) as service:
        service.put_job("fresh", COUNT_JOB)
        service.put_job("used", {**metric_job(), "analysis_limits": {"model_memory_limit": "64mb"}})
        service.open_job("used")
        service.post_data("used", BODY_178)
        check_stats_shape(service.get_job_stats("used")["jobs"][0], "used", "opened")
        service.close_job("used")
    with adjobs.JobService(tmp_path) as service:
        fresh, used = service.get_job_stats()["jobs"]
        check_stats_shape(fresh, "fresh", "closed")
        check_stats_shape(used, "used", "closed")
        assert fresh["data_counts"] == {
            "job_id": "fresh",
            **dict.fromkeys(sorted(DATA_COUNTS_REQUIRED - {"job_id"}), 0),
        }
        assert used["model_size_stats"]["model_bytes_memory_limit"] == 64 * 1024 * 1024
        assert strip_clock(used["data_counts"]) == {
            "job_id": "used",
            "processed_record_count": 2,
            "processed_field_count": 4,
            "input_bytes": 178,
            "input_field_count": 6,
            "invalid_date_count": 0,
            "missing_field_count": 0,
            "out_of_order_timestamp_count": 0,
            "empty_bucket_count": 0,
            "sparse_bucket_count": 0,
            "bucket_count": 0,
            "earliest_record_timestamp": 1403481600000,
            "latest_record_timestamp": 1403481700000,
            "input_record_count": 2,
        }
        service.open_job("fresh")
        check_stats_shape(service.get_job_stats("fresh")["jobs"][0], "fresh", "opened")


# --------------------------------------------------------------------------------------------
# Reset and delete


def test_reset_clears_counts_and_strings_but_keeps_the_config(tmp_path):
    with adjobs.JobService(tmp_path) as service:
        config = service.put_job("job", {**metric_job(), "description": "keep me"})
        service.open_job("job")
        service.post_data("job", BODY_178)
        assert service.flush_job("job", skip_time="1403488700")["last_finalized_bucket_end"] == (
            1403488800000
        )
        error = error_of(service.reset_job, "job")
        assert (error.status, error.type, error.reason) == (
            409,
            "status_exception",
            "Can only reset a job when it is closed; job [job] is opened",
        )
        service.close_job("job")
        assert service.reset_job("job") == {"acknowledged": True}
        assert service.string_values("job") == []
    with adjobs.JobService(tmp_path) as service:
        assert service.get_jobs("job")["jobs"] == [config]
        stats = service.get_job_stats("job")["jobs"][0]
        assert stats["data_counts"] == {
            "job_id": "job",
            **dict.fromkeys(sorted(DATA_COUNTS_REQUIRED - {"job_id"}), 0),
        }
        assert service.string_values("job") == []
        stored = service.store.load("job")
        assert (stored.string_count, stored.last_finalized_bucket_end) == (0, None)
        service.open_job("job")
        # an hour before the old latest record: processed, not out of order
        response = strip_clock(service.post_data("job", airline_lines([(1403478000, "KLM", 5)])))
        assert response["processed_record_count"] == 1
        assert response["out_of_order_timestamp_count"] == 0
        assert response["earliest_record_timestamp"] == 1403478000000
        assert response["bucket_count"] == 0  # no phantom record from before the reset
        assert service.string_values("job") == ["KLM"]
        assert service.flush_job("job") == {
            "flushed": True,
            "last_finalized_bucket_end": 1403478000000,
        }
    with adjobs.JobService(tmp_path) as service:
        assert service.get_jobs("job")["jobs"] == [config]
        assert error_of(service.reset_job, "nope").status == 404


def test_delete_removes_everything(tmp_path):
    with adjobs.JobService(tmp_path) as service:
        service.put_job("job", {**metric_job(), "description": "old"})
        service.put_job("other", metric_job())
        service.open_job("job")
        service.post_data("job", BODY_178)
        error = error_of(service.delete_job, "job")
        assert (error.status, error.type, error.reason) == (
            409,
            "status_exception",
            "Cannot delete job [job] because the job is opened",
        )
        assert service.delete_job("job", force=True) == {"acknowledged": True}
        assert error_of(service.post_data, "job", BODY_178).status == 409
        assert service.get_jobs()["count"] == 1
    db = sqlite3.connect(tmp_path / "adjobs.db")
    try:
        assert db.execute("SELECT count(*) FROM jobs WHERE job_id = 'job'").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM job_strings").fetchone() == (0,)
    finally:
        db.close()
    assert not (tmp_path / "locks" / "job.lock").exists()
    with adjobs.JobService(tmp_path) as service:
        for call in (service.get_jobs, service.get_job_stats, service.string_values):
            error = error_of(call, "job")
            assert (error.status, error.reason) == (404, "No known job with id 'job'")
        assert error_of(service.delete_job, "job").status == 404
        assert error_of(service.open_job, "job").status == 404
        # the id is free again, and the new job starts from nothing
        fresh = service.put_job("job", metric_job())
        assert "description" not in fresh
        service.open_job("job")
        response = strip_clock(service.post_data("job", BODY_178))
        assert response["earliest_record_timestamp"] == 1403481600000
        assert response["processed_record_count"] == 2
        assert service.string_values("job") == ["AAL", "JZA"]
        service.close_job("job")
        assert service.delete_job("job") == {"acknowledged": True}  # a closed job
        assert service.get_jobs()["jobs"][0]["job_id"] == "other"


# --------------------------------------------------------------------------------------------
# A cut-off upload counts nothing


class CutOffReader:
    """A binary stream that delivers ``data`` and then breaks, like a dropped connection."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.reads = 0

    def read(self, _size: int = -1) -> bytes:
        self.reads += 1
        if self.reads == 1:
            return self._data
        raise ConnectionResetError("client went away")


def cut_off_generator(data: bytes, error: BaseException):
    yield data
    raise error


# Committed before the cut-off: bucket 1403481600 (latest), airlines AAL and JZA.
FIRST = BODY_178
# The cut-off upload: many records in later buckets, with new airlines. Were any of it kept,
# it would move the latest timestamp, report buckets and add strings.
CUT = airline_lines(
    (1403485200 + i * 30, f"N{i % 5}", i) for i in range(40000)
).encode()
# After the cut-off: one record in the first hour, which is in order only if nothing of CUT was
# kept, and one two hours later (an empty bucket between).
AFTER = airline_lines([(1403481650, "AAL", 1.5), (1403488800, "KLM", 7.5)])


@pytest.mark.parametrize("stored", [True, False], ids=["stored", "memory"])
@pytest.mark.parametrize("source", ["reader", "generator", "interrupt"])
def test_cut_off_upload_counts_nothing(tmp_path, stored, source, monkeypatch):
    assert len(CUT) > (1 << 20)  # bigger than one chunk: records are read before the break
    # Hand the records of each chunk over as read, so the analysis has seen some of them.
    monkeypatch.setattr("adjobs.service.DELIVERY_RECORDS", 1000)
    service = adjobs.JobService(tmp_path) if stored else adjobs.JobService()
    reference = adjobs.JobService()
    with service, reference:
        for each in (service, reference):
            each.put_job("job", metric_job())
            each.open_job("job")
            each.post_data("job", FIRST)
        delivered = []
        service.add_record_listener("job", lambda times, *_: delivered.append(len(times)))
        before = service.get_job_stats("job")["jobs"][0]["data_counts"]
        window = service._open["job"].ingest.diagnostics.get_state()
        committed = service.store.load("job")

        if source == "reader":
            data, error = CutOffReader(CUT), ConnectionResetError
        elif source == "generator":
            data, error = cut_off_generator(CUT, ValueError("bad chunk")), ValueError
        else:  # Ctrl-C while the upload is read
            data, error = cut_off_generator(CUT, KeyboardInterrupt()), KeyboardInterrupt
        with pytest.raises(error):  # the data source's exception propagates as it is
            service.post_data("job", data)
        assert sum(delivered) > 1000  # the records were read, then thrown away

        assert service.get_job_stats("job")["jobs"][0]["data_counts"] == before
        assert service.string_values("job") == ["AAL", "JZA"]
        assert service._open["job"].ingest.latest_ms == 1403481700000
        assert service._open["job"].ingest.diagnostics.get_state() == window
        assert service.store.load("job") == committed

        response = strip_clock(service.post_data("job", AFTER))
        assert response == strip_clock(reference.post_data("job", AFTER))
        assert response["processed_record_count"] == 2
        assert response["out_of_order_timestamp_count"] == 0
        assert (response["bucket_count"], response["empty_bucket_count"]) == (2, 1)
        assert response["latest_empty_bucket_timestamp"] == 1403485200000
        assert service.string_values("job") == reference.string_values("job")
        assert service.string_values("job") == ["AAL", "JZA", "KLM"]
        totals = strip_clock(service.get_job_stats("job")["jobs"][0]["data_counts"])
        assert totals == strip_clock(reference.get_job_stats("job")["jobs"][0]["data_counts"])
        assert totals["input_bytes"] == 178 + len(AFTER)
    if stored:
        with adjobs.JobService(tmp_path) as restarted:
            assert strip_clock(restarted.get_job_stats("job")["jobs"][0]["data_counts"]) == (
                totals
            )
            assert restarted.string_values("job") == ["AAL", "JZA", "KLM"]


def test_cut_off_upload_in_a_stored_job_is_invisible_to_other_services(tmp_path):
    with adjobs.JobService(tmp_path) as owner, adjobs.JobService(tmp_path) as other:
        owner.put_job("job", metric_job())
        owner.open_job("job")
        owner.post_data("job", FIRST)
        before = other.get_job_stats("job")["jobs"][0]["data_counts"]
        with pytest.raises(ConnectionResetError):
            owner.post_data("job", CutOffReader(CUT))
        assert other.get_job_stats("job")["jobs"][0]["data_counts"] == before
        assert other.string_values("job") == ["AAL", "JZA"]
        assert before["processed_record_count"] == 2


# --------------------------------------------------------------------------------------------
# Backup


def test_backup_produces_a_readable_copy(tmp_path):
    directory = tmp_path / "data"
    copy = tmp_path / "copy"
    copy.mkdir()
    with adjobs.JobService(directory) as service:
        service.put_job("closed-job", {**metric_job(), "description": "backed up"})
        service.open_job("closed-job")
        service.post_data("closed-job", BODY_178)
        service.close_job("closed-job")
        service.put_job("open-job", COUNT_JOB)
        service.open_job("open-job")
        service.post_data("open-job", lines([T0, T0 + HOUR]))
        service.store.backup(copy / "adjobs.db")
        expected_stats = service.get_job_stats()["jobs"]
        expected_configs = service.get_jobs()["jobs"]
        # the original keeps working after the backup
        assert service.post_data("open-job", lines([T0 + 2 * HOUR]))["bucket_count"] == 1
    db = sqlite3.connect(copy / "adjobs.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
        assert db.execute("PRAGMA application_id").fetchone()[0] == store_module.APPLICATION_ID
    finally:
        db.close()
    with adjobs.JobService(copy) as restored:
        assert restored.store.integrity_check() == ["ok"]
        assert restored.get_jobs()["jobs"] == expected_configs
        stats = restored.get_job_stats()["jobs"]
        assert [s["state"] for s in stats] == ["closed", "closed"]
        assert [s["data_counts"] for s in stats] == [s["data_counts"] for s in expected_stats]
        assert stats[1]["data_counts"]["processed_record_count"] == 2
        assert restored.string_values("closed-job") == ["AAL", "JZA"]
        restored.open_job("open-job")
        # the copy holds the state of the backup, not the upload after it
        assert restored.post_data("open-job", lines([T0 + 2 * HOUR]))["bucket_count"] == 1
    with adjobs.JobService(directory) as original:
        counts = original.get_job_stats("open-job")["jobs"][0]["data_counts"]
        assert counts["processed_record_count"] == 3


def test_examples_file_is_the_one_the_spec_describes():
    # Guards the fixtures above: Example 4's uploads are 2100, 21 and 2100 bytes.
    case = json.loads(SPEC_EXAMPLES.read_text())["cases"]
    steps = next(c for c in case if c["name"] == "spec-ex4-5")["steps"]
    assert [len(s["upload"]) for s in steps if "upload" in s] == [2100, 21, 2100, 42, 42]


def test_a_version_1_store_is_migrated_in_place_and_keeps_its_jobs(tmp_path):
    """A store written before the analysis (schema 1) gains the results and analysis
    tables on open; its jobs and counts are kept, and they analyse from then on."""
    import json
    import sqlite3

    from adjobs import store as store_module

    db = sqlite3.connect(tmp_path / store_module.DATABASE_NAME, isolation_level=None)
    for statement in store_module._SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA application_id={store_module.APPLICATION_ID}")
    db.execute("PRAGMA user_version=1")
    config = {"analysis_config": {"bucket_span": "1h", "detectors": [{"function": "count"}]},
              "data_description": {"time_field": "t", "time_format": "epoch"}}
    with adjobs.JobService() as scratch:
        stored_config = scratch.put_job("old", config)
        counts = scratch.get_job_stats("old")["jobs"][0]["data_counts"]
    db.execute("INSERT INTO jobs (job_id, config, counts) VALUES (?, ?, ?)",
               ("old", json.dumps(stored_config),
                json.dumps(adjobs.counts.DataCounts().to_state())))
    db.close()
    with adjobs.JobService(tmp_path) as service:
        assert service.get_job_stats("old")["jobs"][0]["data_counts"] == counts
        service.open_job("old")
        service.post_data("old", [{"t": 1_700_000_000 + 3600 * i} for i in range(30)])
        service.flush_job("old")
        assert service.get_buckets("old")["count"] == 29
    db = sqlite3.connect(tmp_path / store_module.DATABASE_NAME)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"analysis_state", "analysis_state_parts", "result_buckets",
                "result_records"} <= tables
    finally:
        db.close()
