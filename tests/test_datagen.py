"""Tests of adjobs.datagen, the seeded farequote-shaped data generator."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from adjobs import datagen
from adjobs.datagen import (
    AIRLINES,
    FAREQUOTE_START_MS,
    INCIDENT,
    demo_job_config,
    generate_batches,
    generate_records,
    incident_window,
    write_csv,
    write_ndjson,
)

DAY_MS = 86_400_000
SEED = 42


@pytest.fixture(scope="module")
def records() -> list[tuple[int, str, float]]:
    # The default: 5 days at the rate of the real file, with the incident.
    print(f"datagen seed={SEED}")
    return list(generate_records(seed=SEED))


def _ndjson_bytes(records, **kwargs) -> bytes:
    buffer = io.BytesIO()
    write_ndjson(buffer, records, **kwargs)
    return buffer.getvalue()


def _csv_bytes(records, **kwargs) -> bytes:
    buffer = io.BytesIO()
    write_csv(buffer, records, **kwargs)
    return buffer.getvalue()


def test_same_seed_gives_same_bytes_and_other_seed_differs():
    first = _ndjson_bytes(generate_records(seed=7, days=1))
    again = _ndjson_bytes(generate_records(seed=7, days=1))
    other = _ndjson_bytes(generate_records(seed=8, days=1))
    assert first == again
    assert first != other
    assert _csv_bytes(generate_records(seed=7, days=1)) == _csv_bytes(
        generate_records(seed=7, days=1)
    )


def test_batches_and_tuples_write_identical_bytes():
    from_batches = _ndjson_bytes(generate_batches(seed=3, days=1))
    from_tuples = _ndjson_bytes(list(generate_records(seed=3, days=1)))
    assert from_batches == from_tuples


def test_record_count_and_time_range(records):
    # The real file has 86,274 rows over 5 days; the incident adds about 2 h x 2 x AAL's rate.
    expected = sum(p.records_per_5_days for p in datagen.AIRLINE_PROFILES)
    assert abs(len(records) - expected) < 0.03 * expected
    times = [t for t, _, _ in records]
    assert times[0] >= FAREQUOTE_START_MS
    assert times[-1] < FAREQUOTE_START_MS + 5 * DAY_MS
    # Data covers the whole period, not just its start.
    assert times[-1] > FAREQUOTE_START_MS + 5 * DAY_MS - 3_600_000


def test_times_ascend(records):
    times = np.array([t for t, _, _ in records])
    assert np.all(np.diff(times) >= 0)


def test_scale_multiplies_the_record_count():
    base = sum(len(b.time_ms) for b in generate_batches(days=1, incident=False))
    scaled = sum(len(b.time_ms) for b in generate_batches(days=1, scale=4, incident=False))
    assert 3.8 * base < scaled < 4.2 * base


def test_start_and_days_are_honoured():
    start = 1_700_000_000_000
    times = [t for t, _, _ in generate_records(days=0.5, start_ms=start)]
    assert start <= times[0] and times[-1] < start + DAY_MS // 2


def test_all_19_airlines_present(records):
    assert len(AIRLINES) == 19
    assert {a for _, a, _ in records} == set(AIRLINES)


def test_airline_means_follow_the_profiles(records):
    by_airline: dict[str, list[float]] = {}
    for time_ms, airline, value in records:
        if not INCIDENT.start_ms <= time_ms < INCIDENT.end_ms:
            by_airline.setdefault(airline, []).append(value)
    for profile in datagen.AIRLINE_PROFILES:
        mean = float(np.mean(by_airline[profile.airline]))
        assert mean == pytest.approx(profile.mean_ms, rel=0.05)


def test_incident_is_in_the_stated_window(records):
    assert INCIDENT.airline == "AAL"
    assert INCIDENT.end_ms - INCIDENT.start_ms == 2 * 3_600_000
    start = datetime.fromtimestamp(INCIDENT.start_ms / 1000, tz=UTC)
    assert start == datetime(2021, 2, 10, 11, tzinfo=UTC)

    inside = [v for t, a, v in records if a == "AAL" and INCIDENT.start_ms <= t < INCIDENT.end_ms]
    outside = [
        v for t, a, v in records if a == "AAL" and not INCIDENT.start_ms <= t < INCIDENT.end_ms
    ]
    assert np.mean(inside) > 4 * np.mean(outside)
    # The count burst: AAL's rate inside the window is about 3x its average.
    outside_rate = len(outside) / (5 * DAY_MS - (INCIDENT.end_ms - INCIDENT.start_ms))
    inside_rate = len(inside) / (INCIDENT.end_ms - INCIDENT.start_ms)
    assert inside_rate > 2 * outside_rate

    # Other airlines are unaffected in the window.
    for airline in ("AWE", "JZA"):
        during = [
            v for t, a, v in records if a == airline and INCIDENT.start_ms <= t < INCIDENT.end_ms
        ]
        assert np.mean(during) < 1.2 * datagen.AIRLINE_PROFILES[AIRLINES.index(airline)].mean_ms


def test_incident_can_be_disabled():
    values = [
        v
        for t, a, v in generate_records(incident=False)
        if a == "AAL" and INCIDENT.start_ms <= t < INCIDENT.end_ms
    ]
    assert np.mean(values) < 150


def test_incident_window_moves_with_start():
    shifted = incident_window(FAREQUOTE_START_MS + DAY_MS)
    assert shifted.start_ms == INCIDENT.start_ms + DAY_MS
    assert shifted.end_ms == INCIDENT.end_ms + DAY_MS


def test_ndjson_lines_parse_and_round_trip(records):
    text = _ndjson_bytes(records).decode("ascii")
    lines = text.split("\n")
    assert lines[-1] == ""  # every line, the last included, ends with \n
    lines = lines[:-1]
    assert len(lines) == len(records)
    for line, (time_ms, airline, value) in zip(lines, records):
        doc = json.loads(line)
        assert list(doc) == ["@timestamp", "airline", "responsetime"]
        parsed = datetime.strptime(doc["@timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert int(parsed.timestamp() * 1000 + 0.5) == time_ms
        assert doc["@timestamp"].endswith("Z")
        assert doc["airline"] == airline
        assert doc["responsetime"] == value


def test_ndjson_line_layout():
    line = _ndjson_bytes([(1613069994000, "AAL", 132.2046)])
    assert (
        line
        == b'{"@timestamp":"2021-02-11T18:59:54.000Z","airline":"AAL","responsetime":132.2046}\n'
    )
    small = _ndjson_bytes([(0, "UAL", 0.05)], time_format="epoch_ms")
    assert small == b'{"time":0,"airline":"UAL","responsetime":0.0500}\n'


def test_ndjson_epoch_ms(records):
    lines = _ndjson_bytes(records[:1000], time_format="epoch_ms").splitlines()
    for line, (time_ms, airline, value) in zip(lines, records):
        assert json.loads(line) == {"time": time_ms, "airline": airline, "responsetime": value}


def test_csv_parses_with_csv_module(records):
    text = _csv_bytes(records).decode("ascii")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["time", "airline", "responsetime"]
    assert len(rows) == len(records) + 1
    for row, (time_ms, airline, value) in zip(rows[1:], records):
        parsed = datetime.strptime(row[0], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert int(parsed.timestamp() * 1000 + 0.5) == time_ms
        assert row[1] == airline
        assert float(row[2]) == value


def test_csv_epoch_ms():
    data = _csv_bytes([(1613069994000, "AAL", 132.2046)], time_format="epoch_ms")
    assert data == b"time,airline,responsetime\n1613069994000,AAL,132.2046\n"


def test_writers_accept_paths_and_text_files(tmp_path):
    some = list(generate_records(days=0.1))
    path = tmp_path / "data.ndjson"
    assert write_ndjson(path, some) == len(some)
    text = io.StringIO()
    write_ndjson(text, some)
    assert path.read_bytes().decode("ascii") == text.getvalue()
    csv_path = tmp_path / "data.csv"
    assert write_csv(str(csv_path), some) == len(some)


def test_writers_reject_bad_input():
    with pytest.raises(ValueError, match="time_format"):
        _ndjson_bytes([], time_format="epoch")
    with pytest.raises(ValueError, match="airline"):
        _ndjson_bytes([(0, "XXX", 1.0)])
    with pytest.raises(ValueError, match="non-negative"):
        _ndjson_bytes([(0, "AAL", -1.0)])


def test_demo_job_config_matches_writers():
    ndjson = demo_job_config()
    detector = ndjson["analysis_config"]["detectors"][0]
    assert detector == {
        "function": "mean",
        "field_name": "responsetime",
        "partition_field_name": "airline",
    }
    assert ndjson["analysis_config"]["bucket_span"] == "15m"
    assert ndjson["analysis_config"]["influencers"] == ["airline"]
    assert ndjson["data_description"] == {
        "time_field": "@timestamp",
        "time_format": "yyyy-MM-dd'T'HH:mm:ss.SSSX",
    }
    assert demo_job_config(time_format="epoch_ms")["data_description"] == {
        "time_field": "time",
        "time_format": "epoch_ms",
    }
    delimited = demo_job_config(delimited=True)["data_description"]
    assert delimited["format"] == "delimited"
    assert delimited["field_delimiter"] == ","
    assert delimited["time_field"] == "time"
    # Each call returns a fresh dict.
    assert demo_job_config() is not demo_job_config()
    # Buckets of 15 minutes line up with the incident window.
    assert INCIDENT.start_ms % 900_000 == 0 and INCIDENT.end_ms % 900_000 == 0
