"""The compiled writer of result documents' JSON (adjobs._jsontext) against the json module."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adjobs import _jsontext, results

#: A job of each airline's mean response time, influenced by the airline.
AIRLINE_MEANS = {
    "analysis_config": {"bucket_span": "10m", "influencers": ["airline"],
                        "detectors": [{"function": "mean", "field_name": "responsetime",
                                       "partition_field_name": "airline"}]},
    "data_description": {"time_field": "time", "time_format": "epoch"}}

def _json_module(value):
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# Every code point, lone surrogates and astral ones included.
_text = st.text(st.characters(codec=None, categories=None), max_size=12)
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | _text)
_documents = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner, inner)
                   | st.dictionaries(_text, inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_documents)
def test_plain_json_values_are_written_as_the_json_module_writes_them(value):
    assert _jsontext.encode(value) == _json_module(value)


@pytest.mark.parametrize("value, text", [
    ({"a": [1, -0.0, 1e16, 5e-324]}, '{"a":[1,-0.0,1e+16,5e-324]}'),
    (["\x7f\x00\n\t\"\\/", "é\U0001f600\ud800"],
     '["\\u007f\\u0000\\n\\t\\"\\\\/","\\u00e9\\ud83d\\ude00\\ud800"]'),
    ([-(2**63), 2**63 - 1, True, None, {}, ()], '[-9223372036854775808,9223372036854775807,true,null,{},[]]'),
])
def test_edge_values_have_the_json_modules_text(value, text):
    assert _jsontext.encode(value) == text == _json_module(value)


def test_floats_of_every_magnitude_have_reprs_text():
    # The digits come from std::to_chars (ext/adjobs_float.h), the layout copies repr's:
    # random bit patterns (every exponent, subnormals included), the decimals that scores
    # are rounded to, and the boundaries of each layout and of the exponent's digits.
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**64, size=300_000, dtype=np.uint64).view(np.float64)
    values = bits[np.isfinite(bits)].tolist()
    values += (rng.random(50_000) * 100).round(4).tolist()
    values += [float(f"{m}e{e}") for m, e in zip(
        rng.integers(1, 10**17, size=50_000).tolist(), rng.integers(-30, 30, size=50_000).tolist(),
        strict=True)]
    for exponent in range(-1074, 1024):
        power = 2.0**exponent
        values += [power, -power, math.nextafter(power, 0.0)]
    for exponent in range(-323, 309):
        power = float(f"1e{exponent}")
        values += [power, math.nextafter(power, 0.0), math.nextafter(power, math.inf)]
    values += [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e16,
               9999999999999998.0, 1e-4, 9.999999999999999e-05, 0.1, 0.3, 2 / 3, 1e22, 1e23]
    assert _jsontext.encode(values) == "[" + ",".join(map(repr, values)) + "]"


class _Float(float):
    pass


@pytest.mark.parametrize("value", [
    {"score": math.nan}, [math.inf], {1: "not a str key"}, [np.float64(0.5)], [np.int64(3)],
    [_Float(0.5)], {"big": 2**64}, [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    [object()],
])
def test_what_is_not_plainly_json_is_left_to_the_json_module(value):
    assert _jsontext.encode(value) is None


def test_the_result_encoder_keeps_the_json_modules_text_and_errors():
    doc = {"job_id": "j", "timestamp": 1, "record_score": 12.5, "typical": [np.float64(0.25)],
           "big": 2**70}
    assert results._dumps(doc) == (
        '{"job_id":"j","timestamp":1,"record_score":12.5,"typical":[0.25],'
        '"big":1180591620717411303424}')
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        results._dumps({"record_score": math.nan})
    with pytest.raises(TypeError, match="not JSON serializable"):
        results._dumps({"x": object()})
    assert results.record_ident({"detector_index": 2, "partition_field_value": "é"}) == (
        '[2,"\\u00e9",null,null]')


def test_an_analysed_uploads_documents_are_all_written_by_the_compiled_encoder():
    import adjobs

    rng = np.random.default_rng(3)
    lines = []
    for bucket in range(300):
        for airline in ("AAL", "ÉLY"):
            value = rng.normal(100.0, 5.0) + (400.0 if bucket == 250 and airline == "AAL" else 0)
            lines.append(json.dumps({"time": 1_600_000_000 + 600 * bucket, "airline": airline,
                                     "responsetime": value}))
    with adjobs.JobService() as service:
        service.put_job("j", AIRLINE_MEANS)
        service.open_job("j")
        service.post_data("j", "\n".join(lines))
        service.flush_job("j")
        batch = service.get_records("j", size=5)["records"]
        assert batch and batch[0]["partition_field_value"] == "AAL"
        batch = results.ResultBatch(
            buckets=service.get_buckets("j", size=1000, expand=True)["buckets"],
            records=service.get_records("j", size=1000)["records"],
            influencers=service.get_influencers("j", size=1000)["influencers"])
    documents = [*batch.buckets, *batch.records, *batch.influencers]
    assert len(batch.buckets) >= 290 and batch.records and batch.influencers
    for doc in documents:
        assert _jsontext.encode(doc) == _json_module(doc)


def _python_row(kind, doc):
    return (results._bucket_row, results._record_row, results._influencer_row)[kind]("j", doc)


def _outcome(make):
    try:
        return make()
    except Exception as error:  # noqa: BLE001 - the error is what is compared
        return type(error), str(error)


class _Doc(dict):
    pass


@pytest.mark.parametrize("kind, doc", [
    (0, {"timestamp": 1, "anomaly_score": 2.5, "initial_anomaly_score": 3, "event_count": 7,
         "is_interim": True, "bucket_influencers": []}),
    (0, {"timestamp": "12", "anomaly_score": "0.5", "is_interim": 1}),  # strs made numbers
    (0, {"timestamp": np.int64(5), "anomaly_score": np.float64(1.5), "event_count": None}),
    (0, {"anomaly_score": 1.0}),  # no timestamp: KeyError
    (0, {"timestamp": 1, "anomaly_score": "x"}),  # not a number: ValueError
    (0, {"timestamp": 1, "anomaly_score": math.nan}),  # NaN: ValueError from the json module
    (0, {"timestamp": 1.9, "anomaly_score": True, "initial_anomaly_score": False}),
    (1, {"timestamp": 3, "detector_index": 2, "partition_field_value": "é", "record_score": 4,
         "initial_record_score": 5.5, "probability": 1e-9, "raw_score": 0.25, "is_interim": 0,
         "by_field_value": "b", "over_field_value": None, "field_name": "f", "function": "mean",
         "typical": [np.float64(0.5)]}),
    (1, {"timestamp": 3, "by_field_value": np.str_("s"), "detector_index": np.int32(1)}),
    (1, {"timestamp": 3, "detector_index": "1", "partition_field_value": 2**70}),
    (1, {"timestamp": 3, "partition_field_value": ["a"], "record_score": math.inf}),
    (2, {"timestamp": 4, "influencer_field_name": "airline", "influencer_field_value": "AAL",
         "influencer_score": 9, "initial_influencer_score": 9.5, "probability": 0.01,
         "raw_score": 1.5, "is_interim": "yes"}),
    (2, {"timestamp": 4, "influencer_field_name": 7, "influencer_field_value": None}),
    (2, {"timestamp": 4, "influencer_field_name": "airline"}),  # no value: KeyError
    (1, _Doc(timestamp=3, record_score=2.0)),  # not a dict: the Python function
])
def test_compiled_rows_are_the_python_functions_rows_and_errors(kind, doc):
    expected = _outcome(lambda: _python_row(kind, doc))
    assert _outcome(lambda: results._row_writer.row(kind, "j", doc)) == expected
    assert _outcome(lambda: results._rows("j", [doc], {}, kind)) == (
        [expected] if isinstance(expected, tuple) and expected[0] == "j" else expected)


def test_an_analysed_uploads_rows_are_the_python_functions_rows(monkeypatch):
    import adjobs
    from adjobs import store

    written = []

    def write_results(db, job_id, batch):
        written.append(batch)
        return results.write_results(db, job_id, batch)

    monkeypatch.setattr(store, "write_results", write_results)

    rng = np.random.default_rng(5)
    docs = [{"time": 1_600_000_000 + 600 * b, "airline": airline,
             "responsetime": rng.normal(100.0, 5.0) + (300.0 if (b, airline) == (200, "ÉLY") else 0)}
            for b in range(260) for airline in ("AAL", "ÉLY", "KLM")]
    with adjobs.JobService() as service:
        service.put_job("j", AIRLINE_MEANS)
        service.open_job("j")
        service.post_data("j", docs)
    (batch,) = written
    for kind, name in enumerate(("buckets", "records", "influencers")):
        found = getattr(batch, name)
        assert found, name
        assert results._rows("j", found, {}, kind) == [_python_row(kind, doc) for doc in found]
