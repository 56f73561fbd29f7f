"""Every worked example of post-data.md §9 (examples.json) and the §7 values, through the
public library API."""

from __future__ import annotations

import pytest
from conftest import metric_job, open_job, spec_cases, strip_clock


@pytest.mark.parametrize("case", spec_cases(), ids=lambda case: case["name"])
def test_spec_example(service, case):
    job_id = open_job(service, case["config"], "case")
    got = []
    for step in case["steps"]:
        if "upload" in step:
            got.append(strip_clock(service.post_data(job_id, step["upload"])))
        else:
            service.close_job(job_id)
            service.open_job(job_id)
    got.append(strip_clock(service.get_job_stats(job_id)["jobs"][0]["data_counts"]))
    assert got == [expected["counts"] for expected in case["expected"]]


BODY_178 = (
    b'{"airline":"AAL","responsetime":132.2046,"sourcetype":"post-data-job","time":1403481600}\n'
    b'{"airline":"JZA","responsetime":990.4628,"sourcetype":"post-data-job","time":1403481700}\n'
)
BODY_192 = (
    b'{"airline":"AAL","responsetime":"132.2046","time":"1403481600"} '
    b'{"airline":"JZA","responsetime":"990.4628","time":"1403481600"} '
    b'{"airline":"JZA","responsetime":"244.1276","time":"1403485200"}\n'
)


def test_post_data_yml_flush_and_close(service):
    """§7.1 test 1: counts, flush's last_finalized_bucket_end, close, stats after close."""
    job_id = open_job(service, metric_job())
    response = service.post_data(job_id, BODY_178)
    assert len(BODY_178) == 178
    assert response["processed_record_count"] == 2
    assert response["processed_field_count"] == 4
    assert response["input_bytes"] == 178
    assert response["input_field_count"] == 6
    assert response["earliest_record_timestamp"] == 1403481600000
    assert response["latest_record_timestamp"] == 1403481700000
    assert "log_time" not in response
    assert service.flush_job(job_id) == {
        "flushed": True,
        "last_finalized_bucket_end": 1403481600000,
    }
    assert service.close_job(job_id) == {"closed": True}
    stats = service.get_job_stats(job_id)["jobs"][0]
    assert stats["state"] == "closed"
    assert stats["data_counts"]["processed_field_count"] == 4
    assert "open_time" not in stats and "node" not in stats


def test_flush_without_data_omits_last_finalized_bucket_end(service):
    job_id = open_job(service, metric_job())
    assert service.flush_job(job_id) == {"flushed": True}


def test_flush_with_skip_time_rounds_up_to_the_bucket(service):
    job_id = open_job(service, metric_job())
    service.post_data(job_id, '{"airline":"AAL","responsetime":1,"time":1403481600}')
    response = service.flush_job(job_id, skip_time="1403488700")
    assert response["last_finalized_bucket_end"] == 1403488800000


def test_jobs_get_stats_yml(service):
    """§7.2: the 192-byte folded body gives 3/6/6, then stats after flush."""
    job_id = open_job(service, metric_job(), "job-stats-test")
    assert len(BODY_192) == 192
    service.post_data(job_id, BODY_192)
    service.flush_job(job_id)
    stats = service.get_job_stats(job_id)["jobs"][0]
    counts = stats["data_counts"]
    assert (counts["processed_record_count"], counts["processed_field_count"]) == (3, 6)
    assert counts["input_field_count"] == 6
    assert stats["state"] == "opened" and "open_time" in stats and "node" in stats


def test_stats_id_expressions(service):
    for job_id in ("job-stats-test", "jobs-get-stats-datafeed-job"):
        service.put_job(job_id, metric_job())
    assert service.get_job_stats("_all")["count"] == 2
    assert service.get_job_stats("*")["count"] == 2
    assert service.get_job_stats()["count"] == 2
    assert service.get_job_stats("job-stats-test,jobs-get-stats-datafeed-job")["count"] == 2
    assert service.get_job_stats("missing-*", allow_no_match=True)["count"] == 0
    with pytest.raises(Exception) as raised:
        service.get_job_stats("missing-*", allow_no_match=False)
    assert raised.value.status == 404
    with pytest.raises(Exception) as raised:
        service.get_job_stats("unknown-job")
    assert raised.value.status == 404


def test_rolling_upgrade_reopen_keeps_counts(service):
    """§7.4: after close and reopen the job still shows its two records."""
    job_id = open_job(service, metric_job("60s"))
    service.post_data(job_id, BODY_178)
    service.close_job(job_id)
    service.open_job(job_id)
    counts = service.get_job_stats(job_id)["jobs"][0]["data_counts"]
    assert counts["processed_record_count"] == 2
    # D4: no k = 1 quirk after a reopen
    assert counts["processed_field_count"] == 4
