"""Tests for adjobs.config (put_job parsing/validation) and adjobs.errors.

Expected reasons are ES's texts (Messages.java, Detector.java, AnalysisConfig.java,
DataDescription.java, Job.java, TimeValue.java, TimeUtils.java, ByteSizeValue.java).
"""

from __future__ import annotations

import copy
import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adjobs.config import (
    JobConfig,
    apply_update,
    parse_job_config,
    validate_job_id,
)
from adjobs.errors import (
    ApiError,
    illegal_argument,
    job_already_exists,
    job_not_found,
    job_not_open,
    malformed_json,
    parse_exception,
)

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def time_format_module():
    """The real time-format module that config.py delegates pattern checks to."""
    return importlib.import_module("adjobs.timeformat")


def job_body(*detectors, data_description=None, **analysis):
    """A minimal valid put_job body with the given detectors and analysis options."""
    analysis_config = {
        "detectors": list(detectors) or [{"function": "count"}],
        **analysis,
    }
    return {
        "analysis_config": analysis_config,
        "data_description": {} if data_description is None else data_description,
    }


def parse(body, job_id="test-job"):
    return parse_job_config(job_id, body, create_time_ms=1_700_000_000_000)


def assert_error(excinfo, status, error_type, reason):
    error = excinfo.value
    assert (error.status, error.type, error.reason) == (status, error_type, reason)


def rejects(body, error_type, reason, job_id="test-job", status=400):
    with pytest.raises(ApiError) as excinfo:
        parse(body, job_id)
    assert_error(excinfo, status, error_type, reason)


IAE = "illegal_argument_exception"
XCP = "x_content_parse_exception"


# --------------------------------------------------------------------------- errors.py


def test_error_body_has_es_shape():
    error = ApiError(400, "parse_exception", "bad", line=3, offset=17)
    assert error.to_body() == {
        "error": {
            "root_cause": [
                {"type": "parse_exception", "reason": "bad", "line": 3, "offset": 17}
            ],
            "type": "parse_exception",
            "reason": "bad",
            "line": 3,
            "offset": 17,
        },
        "status": 400,
    }
    assert str(error) == "bad"


def test_error_helpers_use_es_texts():
    assert job_not_found("x").to_body() == {
        "error": {
            "root_cause": [
                {
                    "type": "resource_not_found_exception",
                    "reason": "No known job with id 'x'",
                }
            ],
            "type": "resource_not_found_exception",
            "reason": "No known job with id 'x'",
        },
        "status": 404,
    }
    error = job_already_exists("x")
    assert (error.status, error.type, error.reason) == (
        400,
        "resource_already_exists_exception",
        "The job cannot be created with the Id 'x'. The Id is already used.",
    )
    error = job_not_open("x")
    assert (error.status, error.type, error.reason) == (
        409,
        "status_exception",
        "Cannot perform requested action because job [x] is not open",
    )
    assert (illegal_argument("r").status, illegal_argument("r").type) == (400, IAE)
    assert parse_exception("r").type == "parse_exception"
    error = malformed_json(line=2, offset=40)
    assert (error.status, error.type, error.reason, error.extra) == (
        400,
        "parse_exception",
        "The input JSON data is malformed.",
        {"line": 2, "offset": 40},
    )


# --------------------------------------------------------------------------- job ids


@pytest.mark.parametrize("job_id", ["a", "0", "job-1", "a_b-c9", "x" * 64, "1-2_3"])
def test_valid_job_ids(job_id):
    validate_job_id(job_id)


@pytest.mark.parametrize(
    "job_id",
    ["../x", "_x", "x_", "-x", "Ab", "A", "a.b", "", "a/b", "a b", "_all", "é", "a*"],
)
def test_invalid_job_ids(job_id):
    with pytest.raises(ApiError) as excinfo:
        validate_job_id(job_id)
    assert_error(
        excinfo,
        400,
        IAE,
        f"Invalid job_id; '{job_id}' can contain lowercase alphanumeric (a-z and 0-9), "
        "hyphens or underscores; must start and end with alphanumeric",
    )


def test_job_id_longer_than_64_characters():
    with pytest.raises(ApiError) as excinfo:
        validate_job_id("x" * 65)
    assert_error(
        excinfo, 400, IAE, "The job id cannot contain more than 64 characters."
    )


def test_put_job_validates_path_id_first():
    rejects(
        job_body(),
        IAE,
        "Invalid job_id; '../x' can contain lowercase alphanumeric (a-z and 0-9), hyphens "
        "or underscores; must start and end with alphanumeric",
        job_id="../x",
    )


@given(st.text(alphabet="abz09-_.A/", max_size=70))
def test_job_id_rule_property(job_id):
    ok = (
        0 < len(job_id) <= 64
        and job_id[0] in "abz09"
        and job_id[-1] in "abz09"
        and all(ch in "abz09-_" for ch in job_id)
    )
    try:
        validate_job_id(job_id)
        accepted = True
    except ApiError:
        accepted = False
    assert accepted == ok


# --------------------------------------------------------------------------- analysis fields (§1.4)


def test_analysis_fields_metric_by():
    config = parse(
        job_body(
            {
                "function": "metric",
                "field_name": "responsetime",
                "by_field_name": "airline",
            }
        )
    )
    assert config.analysis_fields == ("responsetime", "airline")
    assert config.numeric_fields == ("responsetime",)
    assert config.categorical_fields == ("airline",)


def test_analysis_fields_plain_count():
    config = parse(job_body({"function": "count"}))
    assert config.analysis_fields == ()
    assert config.numeric_fields == () and config.categorical_fields == ()


def test_analysis_fields_categorization():
    config = parse(
        job_body(
            {"function": "count", "by_field_name": "mlcategory"},
            categorization_field_name="message",
        )
    )
    assert config.analysis_fields == ("message",)
    assert config.categorical_fields == ("message",)
    assert config.to_dict()["analysis_config"]["per_partition_categorization"] == {
        "enabled": False,
        "stop_on_warn": False,
    }


def test_analysis_fields_nested_metric_with_influencer():
    config = parse(
        job_body(
            {"function": "mean", "field_name": "metrics.cpu", "by_field_name": "host"},
            influencers=["dc"],
        )
    )
    assert config.analysis_fields == ("metrics.cpu", "host", "dc")
    assert len(config.analysis_fields) == 3
    assert config.numeric_fields == ("metrics.cpu",)
    assert config.categorical_fields == ("host", "dc")


def test_analysis_fields_order_dedup_and_summary_count():
    config = parse(
        job_body(
            {
                "function": "sum",
                "field_name": "bytes",
                "by_field_name": "host",
                "partition_field_name": "dc",
            },
            {
                "function": "high_count",
                "over_field_name": "user",
                "partition_field_name": "dc",
            },
            {"function": "distinct_count", "field_name": "url", "by_field_name": ""},
            influencers=["host", "region"],
            summary_count_field_name="doc_count",
        )
    )
    assert config.analysis_fields == (
        "bytes",
        "host",
        "dc",
        "user",
        "url",
        "region",
        "doc_count",
    )
    assert config.numeric_fields == ("bytes", "doc_count")
    # distinct_count counts distinct values: its field is categorical.
    assert config.categorical_fields == ("host", "dc", "user", "url", "region")


# --------------------------------------------------------------------------- bucket_span / latency


@pytest.mark.parametrize(
    "text, millis, echoed",
    [
        ("1h", 3_600_000, "1h"),
        ("60m", 3_600_000, "60m"),
        ("3600s", 3_600_000, "3600s"),
        ("1d", 86_400_000, "1d"),
        ("90s", 90_000, "90s"),
        ("5000ms", 5_000, "5000ms"),
        ("1000000micros", 1_000, "1000000micros"),
        ("2000000000nanos", 2_000, "2000000000nanos"),
        ("1H", 3_600_000, "1h"),
        (" 2h ", 7_200_000, "2h"),
        ("15S", 15_000, "15s"),
    ],
)
def test_bucket_span_units(text, millis, echoed):
    config = parse(job_body(bucket_span=text))
    assert config.bucket_span_ms == millis
    assert config.to_dict()["analysis_config"]["bucket_span"] == echoed


def test_bucket_span_default_is_5m():
    config = parse(job_body())
    assert (config.bucket_span, config.bucket_span_ms) == ("5m", 300_000)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1500ms", "bucket_span has to be a multiple of 1s; actual was '1.5s'"),
        ("90500ms", "bucket_span has to be a multiple of 1s; actual was '1.5m'"),
        ("0s", "bucket_span cannot be less or equal than 0. Value = 0s"),
        ("0", "bucket_span cannot be less or equal than 0. Value = 0s"),
        ("-1", "bucket_span cannot be less or equal than 0. Value = -1"),
        ("-1h", "bucket_span cannot be less or equal than 0. Value = -1"),
        (
            "5M",
            (
                "failed to parse setting [bucket_span] with value [5M] as a time value: unit is "
                "missing or unrecognized"
            ),
        ),
        (
            "300",
            (
                "failed to parse setting [bucket_span] with value [300] as a time value: unit is "
                "missing or unrecognized"
            ),
        ),
        ("1.5h", "failed to parse [1.5h], fractional time values are not supported"),
        ("xh", "failed to parse [xh]"),
        (
            "-2s",
            (
                "failed to parse setting [bucket_span] with value [-2s] as a time value: "
                "negative durations are not supported"
            ),
        ),
        # ES saturates at 2^63-1 ns, which is not a whole number of seconds.
        ("106752d", "bucket_span has to be a multiple of 1s; actual was '106751.9d'"),
    ],
)
def test_bucket_span_errors(text, reason):
    rejects(job_body(bucket_span=text), IAE, reason)


def test_bucket_span_must_be_a_string():
    rejects(
        job_body(bucket_span=3600),
        XCP,
        "[analysis_config] bucket_span doesn't support values of type: VALUE_NUMBER",
    )


@settings(max_examples=200)
@given(
    st.integers(min_value=1, max_value=100_000), st.sampled_from(["s", "m", "h", "d"])
)
def test_bucket_span_exact_integer_millis(count, unit):
    unit_ms = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[unit]
    config = parse(job_body(bucket_span=f"{count}{unit}"))
    assert config.bucket_span_ms == count * unit_ms
    assert config.bucket_span == f"{count}{unit}"


def test_latency():
    assert parse(job_body()).latency_ms == 0
    assert "latency" not in parse(job_body()).to_dict()["analysis_config"]
    config = parse(job_body(latency="2m"))
    assert (config.latency, config.latency_ms) == ("2m", 120_000)
    assert parse(job_body(latency="0")).to_dict()["analysis_config"]["latency"] == "0ms"
    rejects(job_body(latency="-1"), IAE, "latency cannot be less than 0. Value = -1")
    rejects(
        job_body(latency="500ms"),
        IAE,
        "latency has to be a multiple of 1s; actual was '500ms'",
    )


# --------------------------------------------------------------------------- detectors


def test_detectors_required_and_non_empty():
    rejects(
        {"analysis_config": {}, "data_description": {}}, IAE, "Required [detectors]"
    )
    rejects(
        {"analysis_config": {"detectors": []}, "data_description": {}},
        IAE,
        "No detectors configured",
    )


def test_function_required():
    rejects(job_body({"field_name": "x"}), IAE, "[function] must not be null.")


def test_unknown_function():
    rejects(job_body({"function": "foo"}), IAE, "Unknown function 'foo'")
    rejects(job_body({"function": "COUNT"}), IAE, "Unknown function 'COUNT'")


@pytest.mark.parametrize(
    "function",
    [
        "freq_rare",
        "info_content",
        "high_info_content",
        "low_info_content",
        "lat_long",
        "time_of_day",
        "time_of_week",
    ],
)
def test_known_but_unsupported_functions(function):
    with pytest.raises(ApiError) as excinfo:
        parse(
            job_body(
                {
                    "function": function,
                    "field_name": "f",
                    "by_field_name": "b",
                    "over_field_name": "o",
                }
            )
        )
    error = excinfo.value
    assert (error.status, error.type) == (400, IAE)
    assert error.reason.startswith(
        f"The '{function}' function is not supported by adjobs yet"
    )


SUPPORTED_WITH_FIELD = [
    "distinct_count",
    "low_distinct_count",
    "high_distinct_count",
    "dc",
    "low_dc",
    "high_dc",
    "mean",
    "high_mean",
    "low_mean",
    "avg",
    "high_avg",
    "low_avg",
    "median",
    "high_median",
    "low_median",
    "min",
    "max",
    "sum",
    "high_sum",
    "low_sum",
    "non_null_sum",
    "high_non_null_sum",
    "low_non_null_sum",
    "varp",
    "high_varp",
    "low_varp",
    "metric",
]
SUPPORTED_COUNTS = [
    "count",
    "high_count",
    "low_count",
    "non_zero_count",
    "low_non_zero_count",
    "high_non_zero_count",
    "nzc",
    "low_nzc",
    "high_nzc",
]


@pytest.mark.parametrize("function", SUPPORTED_WITH_FIELD)
def test_field_functions_accepted(function):
    config = parse(job_body({"function": function, "field_name": "value"}))
    assert config.detectors[0].field_name == "value"


@pytest.mark.parametrize("function", SUPPORTED_COUNTS)
def test_count_functions_accepted(function):
    parse(job_body({"function": function}))


def test_shortcuts_resolve_to_full_names():
    config = parse(
        job_body(
            {"function": "nzc"},
            {"function": "dc", "field_name": "u"},
            {"function": "high_dc", "field_name": "v"},
        )
    )
    assert [d.function for d in config.detectors] == [
        "non_zero_count",
        "distinct_count",
        "high_distinct_count",
    ]
    assert [d.detector_description for d in config.detectors] == [
        "non_zero_count",
        "distinct_count(u)",
        "high_distinct_count(v)",
    ]


@pytest.mark.parametrize(
    "detector, reason",
    [
        (
            {"function": "mean"},
            (
                "Unless a count or temporal function is used one of field_name, by_field_name or "
                "over_field_name must be set"
            ),
        ),
        (
            {"function": "rare"},
            (
                "Unless a count or temporal function is used one of field_name, by_field_name or "
                "over_field_name must be set"
            ),
        ),
        (
            {"function": "mean", "by_field_name": "b"},
            "field_name must be set when the 'mean' function is used",
        ),
        (
            {"function": "dc", "by_field_name": "b"},
            "field_name must be set when the 'distinct_count' function is used",
        ),
        (
            {"function": "count", "field_name": "f"},
            "field_name cannot be used with function 'count'",
        ),
        (
            {"function": "rare", "field_name": "f", "by_field_name": "b"},
            "field_name cannot be used with function 'rare'",
        ),
        (
            {"function": "rare", "over_field_name": "o"},
            "by_field_name must be set when the 'rare' function is used",
        ),
        (
            {"function": "nzc", "over_field_name": "o"},
            "over_field_name cannot be used with function 'non_zero_count'",
        ),
        (
            {"function": "count", "by_field_name": "x", "partition_field_name": "x"},
            "partition_field_name and by_field_name cannot be the same: 'x'",
        ),
        (
            {"function": "count", "over_field_name": "x", "partition_field_name": "x"},
            "partition_field_name and over_field_name cannot be the same: 'x'",
        ),
        (
            {"function": "count", "by_field_name": "x", "over_field_name": "x"},
            "by_field_name and over_field_name cannot be the same: 'x'",
        ),
        (
            {"function": "count", "by_field_name": "count"},
            "'count' is not a permitted value for by_field_name",
        ),
        (
            {"function": "count", "over_field_name": "count"},
            "'count' is not a permitted value for over_field_name",
        ),
        (
            {"function": "count", "by_field_name": "by"},
            "'by' is not a permitted value for by_field_name",
        ),
        (
            {"function": "count", "over_field_name": "by"},
            "'by' is not a permitted value for over_field_name",
        ),
        (
            {"function": "count", "by_field_name": "over"},
            "'over' is not a permitted value for by_field_name",
        ),
        (
            {"function": "count", "over_field_name": "over"},
            "'over' is not a permitted value for over_field_name",
        ),
        (
            {"function": "mean", "field_name": 'a"b'},
            (
                "Invalid field name 'a\"b'. Field names including over, by and partition fields cannot "
                'contain any of these characters: ",\\'
            ),
        ),
        (
            {"function": "count", "by_field_name": "a\\b"},
            (
                "Invalid field name 'a\\b'. Field names including over, by and partition fields cannot "
                'contain any of these characters: ",\\'
            ),
        ),
        (
            {"function": "count", "partition_field_name": "a\tb"},
            (
                "Invalid field name 'a\tb'. Field names including over, by and partition fields cannot "
                'contain any of these characters: ",\\'
            ),
        ),
        (
            {"function": "count", "by_field_name": "."},
            (
                "Invalid field name '.'. Field names including over, by and partition fields cannot "
                "be '.'"
            ),
        ),
    ],
)
def test_detector_rules(detector, reason):
    rejects(job_body(detector), IAE, reason)


def test_detector_option_types():
    rejects(
        job_body({"function": "count", "use_null": "yes"}),
        XCP,
        "[detector] failed to parse field [use_null]: Failed to parse value [yes] as only "
        "[true] or [false] are allowed.",
    )
    rejects(
        job_body({"function": "count", "exclude_frequent": "some"}),
        XCP,
        "[detector] failed to parse field [exclude_frequent]: expected one of "
        "[all, none, by, over] but found [some]",
    )
    rejects(
        job_body({"function": "count", "by_field_name": 5}),
        XCP,
        "[detector] by_field_name doesn't support values of type: VALUE_NUMBER",
    )
    rejects(
        job_body({"function": "count", "colour": "red"}),
        XCP,
        "[detector] unknown field [colour]",
    )


def test_default_detector_descriptions():
    config = parse(
        job_body(
            {
                "function": "mean",
                "field_name": "response time",
                "by_field_name": "airline",
                "over_field_name": "user",
                "partition_field_name": "dc",
                "use_null": True,
                "exclude_frequent": "ALL",
            },
            {"function": "count", "partition_field_name": "a b"},
            {"function": "max", "field_name": "x", "detector_description": "mine"},
        )
    )
    assert [d.detector_description for d in config.detectors] == [
        (
            'mean("response time") by airline over user usenull=true partitionfield=dc '
            "excludefrequent=all"
        ),
        'count partitionfield="a b"',
        "mine",
    ]
    first = config.to_dict()["analysis_config"]["detectors"][0]
    assert first == {
        "detector_description": first["detector_description"],
        "function": "mean",
        "field_name": "response time",
        "by_field_name": "airline",
        "over_field_name": "user",
        "partition_field_name": "dc",
        "use_null": True,
        "exclude_frequent": "all",
        "detector_index": 0,
    }


def test_detector_index_in_body_is_ignored_and_custom_rules_kept():
    rules = [
        {
            "actions": ["skip_result"],
            "conditions": [{"applies_to": "actual", "operator": "lt", "value": 10}],
        }
    ]
    config = parse(
        job_body(
            {"function": "count", "detector_index": 7},
            {"function": "max", "field_name": "v", "custom_rules": rules},
        )
    )
    assert [d.detector_index for d in config.detectors] == [0, 1]
    assert config.to_dict()["analysis_config"]["detectors"][1]["custom_rules"] == rules
    rules[0]["actions"] = ["mutated"]
    assert config.detectors[1].custom_rules[0]["actions"] == ["skip_result"]


def test_single_detector_object_is_accepted_as_a_list():
    config = parse(
        {
            "analysis_config": {"detectors": {"function": "count"}},
            "data_description": {},
        }
    )
    assert len(config.detectors) == 1


def test_duplicate_detectors():
    rejects(
        job_body({"function": "count"}, {"function": "count"}),
        IAE,
        "Duplicate detectors are not allowed: [count]",
    )


# --------------------------------------------------------------------------- analysis_config rules


def test_nested_field_names():
    rejects(
        job_body({"function": "count", "by_field_name": "a"}, influencers=["a.b"]),
        IAE,
        "Fields [a] and [a.b] cannot both be used in the same analysis_config",
    )
    rejects(
        job_body(
            {
                "function": "count",
                "by_field_name": "a.b",
                "partition_field_name": "a.b.c",
            }
        ),
        IAE,
        "Fields [a.b] and [a.b.c] cannot both be used in the same analysis_config",
    )
    parse(job_body({"function": "count", "by_field_name": "a.b"}, influencers=["a.c"]))
    # Metric field names are not term fields: ES allows them to nest.
    parse(job_body({"function": "mean", "field_name": "a", "by_field_name": "a.b"}))


def test_categorization_rules():
    rejects(
        job_body({"function": "count", "by_field_name": "mlcategory"}),
        IAE,
        "categorization_field_name must be set for mlcategory to be available",
    )
    rejects(
        job_body({"function": "count"}, categorization_field_name="message"),
        IAE,
        "categorization_field_name is set but mlcategory is not used in any detector "
        "by/over/partition field",
    )
    rejects(
        job_body({"function": "count"}, categorization_filters=["x"]),
        IAE,
        "categorization_filters require setting categorization_field_name",
    )
    base = {"function": "count", "by_field_name": "mlcategory"}
    rejects(
        job_body(
            base, categorization_field_name="m", categorization_filters=["a", "a"]
        ),
        IAE,
        "categorization_filters contain duplicates",
    )
    rejects(
        job_body(base, categorization_field_name="m", categorization_filters=[""]),
        IAE,
        "categorization_filters are not allowed to contain empty strings",
    )
    rejects(
        job_body(base, categorization_field_name="m", categorization_filters=["(x"]),
        IAE,
        "categorization_filters contains invalid regular expression '(x'",
    )
    rejects(
        job_body(
            base,
            categorization_field_name="m",
            per_partition_categorization={"enabled": True},
        ),
        IAE,
        "partition_field_name must be set for detectors that reference mlcategory when "
        "per-partition categorization is enabled",
    )


def test_summary_count_with_metric_function():
    rejects(
        job_body(
            {"function": "metric", "field_name": "v"},
            summary_count_field_name="doc_count",
        ),
        IAE,
        "The 'metric' function cannot be used in jobs that will take pre-summarized input",
    )
    rejects(
        job_body({"function": "count"}, summary_count_field_name='a"'),
        IAE,
        "Invalid field name 'a\"'. Field names including over, by and partition fields "
        'cannot contain any of these characters: ",\\',
    )


def test_influencers_accept_a_single_string():
    assert parse(job_body(influencers="host")).influencers == ("host",)
    rejects(
        job_body(influencers=[1]),
        XCP,
        "[analysis_config] influencers doesn't support values of type: VALUE_NUMBER",
    )


def test_optional_analysis_settings_are_kept():
    config = parse(
        job_body(
            {"function": "count", "by_field_name": "mlcategory"},
            categorization_field_name="message",
            categorization_filters=["\\d+"],
            multivariate_by_fields=True,
            model_prune_window="30d",
        )
    )
    analysis = config.to_dict()["analysis_config"]
    assert analysis["categorization_filters"] == ["\\d+"]
    assert analysis["multivariate_by_fields"] is True
    assert analysis["model_prune_window"] == "30d"


# --------------------------------------------------------------------------- job-level rules


def test_body_must_be_an_object():
    rejects(["x"], XCP, "[job_details] Expected START_OBJECT but was: START_ARRAY")
    rejects(None, "parse_exception", "request body is required")


def test_unknown_fields_are_named():
    rejects(job_body() | {"foo": 1}, XCP, "[job_details] unknown field [foo]")
    rejects(job_body(foo=1), XCP, "[analysis_config] unknown field [foo]")
    rejects(
        job_body(data_description={"foo": 1}),
        XCP,
        "[data_description] unknown field [foo]",
    )
    rejects(
        job_body() | {"analysis_limits": {"foo": 1}},
        XCP,
        "[analysis_limits] unknown field [foo]",
    )
    rejects(
        job_body() | {"model_plot_config": {"enabled": True, "foo": 1}},
        XCP,
        "[model_plot_config] unknown field [foo]",
    )


def test_wrong_section_types():
    rejects(
        {"analysis_config": "x", "data_description": {}},
        XCP,
        "[job_details] analysis_config doesn't support values of type: VALUE_STRING",
    )
    rejects(
        job_body() | {"description": 5},
        XCP,
        "[job_details] description doesn't support values of type: VALUE_NUMBER",
    )
    rejects(
        job_body() | {"allow_lazy_open": None},
        XCP,
        "[job_details] allow_lazy_open doesn't support values of type: VALUE_NULL",
    )


def test_job_id_in_body_must_match():
    parse(job_body() | {"job_id": "test-job"})
    rejects(
        job_body() | {"job_id": "other"},
        IAE,
        "Inconsistent job_id; 'other' specified in the body differs from 'test-job' "
        "specified as a URL argument",
    )


def test_required_sections():
    rejects({"data_description": {}}, IAE, "An analysis_config must be set")
    rejects(
        {"analysis_config": {"detectors": [{"function": "count"}]}},
        IAE,
        "A data_description must be set",
    )


def test_time_field_not_in_analysis_config():
    rejects(
        job_body({"function": "count", "by_field_name": "time"}),
        IAE,
        "data_description.time_field may not be used in the analysis_config",
    )


def test_datafeed_config_rejected():
    rejects(
        job_body() | {"datafeed_config": {"indices": ["x"]}},
        IAE,
        "adjobs does not support datafeeds: remove [datafeed_config] from the job and post "
        "data to the job directly",
    )


def test_settings_illegal_at_creation():
    rejects(
        job_body() | {"create_time": 5},
        IAE,
        "The job is configured with fields [create_time] that are illegal to set at job "
        "creation",
    )
    rejects(
        job_body() | {"model_snapshot_id": "1", "create_time": 5},
        IAE,
        "The job is configured with fields [model_snapshot_id,create_time] that are "
        "illegal to set at job creation",
    )


def test_groups():
    config = parse(job_body() | {"groups": ["g1", "team-a"]})
    assert config.groups == ("g1", "team-a")
    assert config.to_dict()["groups"] == ["g1", "team-a"]
    assert "groups" not in parse(job_body()).to_dict()
    rejects(
        job_body() | {"groups": ["Bad"]},
        IAE,
        "Invalid group id 'Bad'; must be non-empty string and may contain lowercase "
        "alphanumeric (a-z and 0-9), hyphens or underscores; must start and end with "
        "alphanumeric",
    )
    rejects(
        job_body() | {"groups": ["test-job"]},
        "resource_already_exists_exception",
        "job and group names must be unique but job [test-job] and group [test-job] have "
        "the same name",
    )


def test_retention_settings():
    config = parse(job_body())
    assert (
        config.model_snapshot_retention_days,
        config.daily_model_snapshot_retention_after_days,
    ) == (10, 1)
    one_day = parse(job_body() | {"model_snapshot_retention_days": 1}).to_dict()
    assert one_day["model_snapshot_retention_days"] == 1
    assert "daily_model_snapshot_retention_after_days" not in one_day
    rejects(
        job_body()
        | {
            "model_snapshot_retention_days": 2,
            "daily_model_snapshot_retention_after_days": 5,
        },
        IAE,
        "The value of daily_model_snapshot_retention_after_days [5] cannot be greater than "
        "model_snapshot_retention_days [2]",
    )
    rejects(
        job_body() | {"results_retention_days": -1},
        IAE,
        "results_retention_days cannot be less than 0. Value = -1",
    )
    rejects(
        job_body() | {"renormalization_window_days": -1},
        IAE,
        "renormalization_window_days cannot be less than 0. Value = -1",
    )
    assert (
        parse(job_body() | {"results_retention_days": "30"}).results_retention_days
        == 30
    )


def test_background_persist_interval():
    assert (
        parse(job_body() | {"background_persist_interval": "2h"}).to_dict()[
            "background_persist_interval"
        ]
        == "2h"
    )
    rejects(
        job_body() | {"background_persist_interval": "30m"},
        IAE,
        "background_persist_interval cannot be less than 3,600. Value = 1,800",
    )
    rejects(
        job_body() | {"background_persist_interval": "3600500ms"},
        IAE,
        "background_persist_interval has to be a multiple of 1s; actual was '1h'",
    )


def test_results_index_name():
    assert parse(job_body()).results_index_name == "shared"
    assert (
        parse(job_body() | {"results_index_name": "mine"}).results_index_name
        == "custom-mine"
    )
    rejects(
        job_body() | {"results_index_name": "Mine"},
        IAE,
        "Invalid results_index_name; 'Mine' can contain lowercase alphanumeric (a-z and "
        "0-9), hyphens or underscores; must start and end with alphanumeric",
    )


# --------------------------------------------------------------------------- data_description


def test_data_description_defaults():
    config = parse(job_body())
    assert (config.format, config.time_field, config.time_format) == (
        "xcontent",
        "time",
        "epoch_ms",
    )
    assert (config.field_delimiter, config.quote_character) == (None, None)
    assert config.to_dict()["data_description"] == {
        "time_field": "time",
        "time_format": "epoch_ms",
    }


@pytest.mark.parametrize("name", ["delimited", "DELIMITED", "delineated"])
def test_delimited_format(name):
    config = parse(
        job_body(
            data_description={
                "format": name,
                "time_field": "ts",
                "time_format": "epoch",
            }
        )
    )
    assert (config.format, config.field_delimiter, config.quote_character) == (
        "delimited",
        "\t",
        '"',
    )
    assert config.to_dict()["data_description"] == {
        "format": "delimited",
        "time_field": "ts",
        "time_format": "epoch",
        "field_delimiter": "\t",
        "quote_character": '"',
    }


def test_data_description_errors():
    rejects(
        job_body(data_description={"format": "json"}),
        XCP,
        "[data_description] failed to parse field [format]: unknown format [json]; "
        "expected [xcontent] or [delimited]",
    )
    rejects(
        job_body(data_description={"format": "delimited", "field_delimiter": ",;"}),
        XCP,
        "[data_description] failed to parse field [field_delimiter]: String must be a "
        "single character, found [,;]",
    )
    rejects(
        job_body(data_description={"time_field": None}),
        XCP,
        "[data_description] time_field doesn't support values of type: VALUE_NULL",
    )


def test_time_format_validated_by_timeformat_module(monkeypatch, time_format_module):
    seen = []
    real = time_format_module.compile_time_format

    def spy(fmt):
        seen.append(fmt)
        return real(fmt)

    monkeypatch.setattr(time_format_module, "compile_time_format", spy)
    config = parse(job_body(data_description={"time_format": "yyyy-MM-dd HH:mm:ssX"}))
    assert config.time_format == "yyyy-MM-dd HH:mm:ssX"
    rejects(
        job_body(data_description={"time_format": "bogus"}),
        IAE,
        "Invalid Time format string 'bogus'",
    )
    assert seen == ["yyyy-MM-dd HH:mm:ssX", "bogus"]
    # epoch formats never reach the pattern compiler
    parse(job_body(data_description={"time_format": "epoch"}))
    assert seen == ["yyyy-MM-dd HH:mm:ssX", "bogus"]


# --------------------------------------------------------------------------- analysis_limits


@pytest.mark.parametrize(
    "value, megabytes",
    [
        ("10mb", 10),
        ("10MB", 10),
        ("1gb", 1024),
        ("1500kb", 1),
        (2048, 2048),
        ("2g", 2048),
        ("1.5gb", 1536),
        ("1048576b", 1),
    ],
)
def test_model_memory_limit(value, megabytes):
    config = parse(job_body() | {"analysis_limits": {"model_memory_limit": value}})
    assert config.model_memory_limit_mb == megabytes
    assert config.to_dict()["analysis_limits"] == {
        "model_memory_limit": f"{megabytes}mb",
        "categorization_examples_limit": 4,
    }


def test_analysis_limits_errors():
    rejects(
        job_body() | {"analysis_limits": {"model_memory_limit": "0mb"}},
        IAE,
        "model_memory_limit must be at least 1 MiB. Value = 0",
    )
    rejects(
        job_body() | {"analysis_limits": {"model_memory_limit": "100kb"}},
        IAE,
        "model_memory_limit must be at least 1 MiB. Value = 0",
    )
    rejects(
        job_body() | {"analysis_limits": {"model_memory_limit": "10"}},
        "parse_exception",
        "failed to parse setting [model_memory_limit] with value [10] as a size in bytes: "
        "unit is missing or unrecognized",
    )
    rejects(
        job_body() | {"analysis_limits": {"model_memory_limit": "xmb"}},
        "parse_exception",
        "failed to parse setting [model_memory_limit] with value [xmb]",
    )
    rejects(
        job_body() | {"analysis_limits": {"categorization_examples_limit": -1}},
        IAE,
        "categorization_examples_limit cannot be less than 0. Value = -1",
    )


# --------------------------------------------------------------------------- adjobs limits


def test_detector_limit():
    detectors = [
        {"function": "count", "partition_field_name": f"p{i}"} for i in range(101)
    ]
    rejects(
        job_body(*detectors),
        IAE,
        "adjobs limit exceeded: a job may have at most 100 detectors; this job has 101",
    )
    distinct = [
        {"function": "count", "detector_description": f"d{i}"} for i in range(100)
    ]
    assert len(parse(job_body(*distinct)).detectors) == 100


def test_input_field_limit():
    parse(job_body(influencers=[f"f{i}" for i in range(63)]))  # 63 + time = 64
    rejects(
        job_body(influencers=[f"f{i}" for i in range(64)]),
        IAE,
        "adjobs limit exceeded: a job may use at most 64 input fields (time field plus "
        "analysis fields); this job uses 65",
    )


def test_field_name_byte_limit():
    parse(job_body({"function": "max", "field_name": "é" * 512}))  # 1024 bytes
    name = "é" * 512 + "x"
    with pytest.raises(ApiError) as excinfo:
        parse(job_body({"function": "max", "field_name": name}))
    assert excinfo.value.type == IAE
    assert excinfo.value.reason.endswith(
        "is 1025 bytes long; field names may be at most 1024 bytes (UTF-8)"
    )


# --------------------------------------------------------------------------- to_dict / from_dict


RICH_BODY = {
    "job_id": "rich",
    "description": "a job",
    "groups": ["ops"],
    "analysis_config": {
        "bucket_span": "15m",
        "latency": "30s",
        "detectors": [
            {
                "function": "high_mean",
                "field_name": "cpu",
                "by_field_name": "host",
                "partition_field_name": "dc",
                "custom_rules": [
                    {
                        "actions": ["skip_result"],
                        "conditions": [
                            {"applies_to": "actual", "operator": "lt", "value": 5}
                        ],
                    }
                ],
            },
            {
                "function": "count",
                "by_field_name": "mlcategory",
                "detector_description": "cat",
            },
        ],
        "influencers": ["host", "dc"],
        "categorization_field_name": "message",
        "categorization_filters": ["\\d+"],
        "multivariate_by_fields": False,
    },
    "analysis_limits": {
        "model_memory_limit": "64mb",
        "categorization_examples_limit": 2,
    },
    "data_description": {
        "format": "delimited",
        "time_field": "ts",
        "time_format": "epoch",
        "field_delimiter": ",",
        "quote_character": "'",
    },
    "model_plot_config": {"enabled": True, "terms": "a,b"},
    "renormalization_window_days": 7,
    "background_persist_interval": "3h",
    "model_snapshot_retention_days": 20,
    "daily_model_snapshot_retention_after_days": 2,
    "results_retention_days": 30,
    "custom_settings": {"owner": {"team": "sre"}},
    "results_index_name": "mine",
    "allow_lazy_open": True,
}


def test_to_dict_is_the_es_job_object():
    job = parse(copy.deepcopy(RICH_BODY), job_id="rich").to_dict()
    assert job == {
        "job_id": "rich",
        "job_type": "anomaly_detector",
        "job_version": "9.1.0",
        "create_time": 1_700_000_000_000,
        "custom_settings": {"owner": {"team": "sre"}},
        "groups": ["ops"],
        "description": "a job",
        "analysis_config": {
            "bucket_span": "15m",
            "categorization_field_name": "message",
            "categorization_filters": ["\\d+"],
            "per_partition_categorization": {"enabled": False, "stop_on_warn": False},
            "latency": "30s",
            "detectors": [
                {
                    "detector_description": "high_mean(cpu) by host partitionfield=dc",
                    "function": "high_mean",
                    "field_name": "cpu",
                    "by_field_name": "host",
                    "partition_field_name": "dc",
                    "custom_rules": RICH_BODY["analysis_config"]["detectors"][0][
                        "custom_rules"
                    ],
                    "detector_index": 0,
                },
                {
                    "detector_description": "cat",
                    "function": "count",
                    "by_field_name": "mlcategory",
                    "detector_index": 1,
                },
            ],
            "influencers": ["host", "dc"],
            "multivariate_by_fields": False,
        },
        "analysis_limits": {
            "model_memory_limit": "64mb",
            "categorization_examples_limit": 2,
        },
        "data_description": {
            "format": "delimited",
            "time_field": "ts",
            "time_format": "epoch",
            "field_delimiter": ",",
            "quote_character": "'",
        },
        "model_plot_config": {
            "enabled": True,
            "terms": "a,b",
            "annotations_enabled": True,
        },
        "renormalization_window_days": 7,
        "background_persist_interval": "3h",
        "model_snapshot_retention_days": 20,
        "daily_model_snapshot_retention_after_days": 2,
        "results_retention_days": 30,
        "results_index_name": "custom-mine",
        "allow_lazy_open": True,
    }
    # Keys required by typed clients (rest-api.md §4.3).
    for key in (
        "allow_lazy_open",
        "analysis_config",
        "analysis_limits",
        "create_time",
        "daily_model_snapshot_retention_after_days",
        "data_description",
        "job_id",
        "job_type",
        "job_version",
        "model_snapshot_retention_days",
        "results_index_name",
    ):
        assert key in job


@pytest.mark.parametrize(
    "body",
    [
        RICH_BODY,
        job_body(),
        job_body(
            {"function": "mean", "field_name": "metrics.cpu", "by_field_name": "host"},
            influencers=["dc"],
            bucket_span="60m",
            summary_count_field_name="n",
        ),
    ],
)
def test_round_trip(body):
    config = parse(copy.deepcopy(body), job_id="rich")
    job = config.to_dict()
    again = JobConfig.from_dict(copy.deepcopy(job))
    assert again == config
    assert again.to_dict() == job
    assert hash(again) == hash(config)


def test_to_dict_returns_copies():
    config = parse(copy.deepcopy(RICH_BODY), job_id="rich")
    job = config.to_dict()
    job["custom_settings"]["owner"]["team"] = "changed"
    job["analysis_config"]["detectors"][0]["custom_rules"].clear()
    assert config.to_dict()["custom_settings"] == {"owner": {"team": "sre"}}
    assert config.detectors[0].custom_rules


@settings(max_examples=100)
@given(
    function=st.sampled_from(["mean", "max", "sum", "distinct_count", "varp"]),
    field=st.text(alphabet="abcxyz.-_ 1", min_size=1, max_size=8).filter(
        lambda s: s.strip(".") == s and ".." not in s and s != "."
    ),
    span=st.integers(min_value=1, max_value=1000),
    unit=st.sampled_from(["s", "m", "h", "d"]),
    groups=st.lists(st.sampled_from(["g1", "g2", "ops"]), max_size=3, unique=True),
    lazy=st.booleans(),
)
def test_round_trip_property(function, field, span, unit, groups, lazy):
    body = job_body(
        {"function": function, "field_name": field}, bucket_span=f"{span}{unit}"
    )
    body |= {"groups": groups, "allow_lazy_open": lazy}
    config = parse(body)
    assert JobConfig.from_dict(config.to_dict()) == config
    assert JobConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


# --------------------------------------------------------------------------- apply_update


def base_config():
    return parse(
        job_body({"function": "count"}, {"function": "max", "field_name": "v"})
    )


def update_rejects(update, error_type, reason):
    with pytest.raises(ApiError) as excinfo:
        apply_update(base_config(), update)
    assert_error(excinfo, 400, error_type, reason)


def test_update_simple_fields():
    config = base_config()
    updated = apply_update(
        config,
        {
            "description": "new",
            "groups": ["a", "b"],
            "allow_lazy_open": True,
            "renormalization_window_days": 3,
            "results_retention_days": 9,
            "model_snapshot_retention_days": 4,
            "daily_model_snapshot_retention_after_days": 2,
            "background_persist_interval": "2h",
            "custom_settings": {"k": "v"},
            "model_plot_config": {"enabled": False},
        },
    )
    job = updated.to_dict()
    assert (job["description"], job["groups"], job["allow_lazy_open"]) == (
        "new",
        ["a", "b"],
        True,
    )
    assert (job["renormalization_window_days"], job["results_retention_days"]) == (3, 9)
    assert (
        job["model_snapshot_retention_days"],
        job["daily_model_snapshot_retention_after_days"],
    ) == (4, 2)
    assert job["background_persist_interval"] == "2h"
    assert job["custom_settings"] == {"k": "v"}
    assert job["model_plot_config"] == {"enabled": False, "annotations_enabled": False}
    # Identity and creation facts are kept.
    assert (updated.job_id, updated.create_time, updated.job_version) == (
        config.job_id,
        config.create_time,
        config.job_version,
    )
    assert updated.detectors == config.detectors


def test_update_detectors():
    rules = [
        {
            "actions": ["skip_result"],
            "conditions": [{"applies_to": "actual", "operator": "gt", "value": 1}],
        }
    ]
    updated = apply_update(
        base_config(),
        {
            "detectors": [
                {"detector_index": 1, "description": "biggest", "custom_rules": rules}
            ]
        },
    )
    detector = updated.to_dict()["analysis_config"]["detectors"][1]
    assert detector["detector_description"] == "biggest"
    assert detector["custom_rules"] == rules
    update_rejects(
        {"detectors": [{"detector_index": 2, "description": "x"}]},
        IAE,
        "Supplied detector_index [2] is >= the number of detectors [2]",
    )
    update_rejects(
        {"detectors": [{"detector_index": 0, "function": "max"}]},
        XCP,
        "[detector_update] unknown field [function]",
    )


def test_update_analysis_limits_only_increase():
    updated = apply_update(
        base_config(), {"analysis_limits": {"model_memory_limit": "2gb"}}
    )
    assert updated.model_memory_limit_mb == 2048
    update_rejects(
        {"analysis_limits": {"model_memory_limit": "512mb"}},
        IAE,
        "Invalid update value for analysis_limits: model_memory_limit cannot be "
        "decreased; existing is 1024, update had 512",
    )
    kept = apply_update(
        base_config(), {"analysis_limits": {"categorization_examples_limit": 9}}
    )
    assert (kept.model_memory_limit_mb, kept.categorization_examples_limit) == (1024, 9)


def test_update_rejects_non_updatable_fields():
    update_rejects(
        {"analysis_config": {"bucket_span": "1h"}},
        XCP,
        "[job_update] unknown field [analysis_config]",
    )
    update_rejects(
        {"data_description": {}}, XCP, "[job_update] unknown field [data_description]"
    )
    update_rejects(
        {"job_id": "other"},
        IAE,
        "Inconsistent job_id; 'other' specified in the body differs from 'test-job' "
        "specified as a URL argument",
    )


def test_update_revalidates_the_merged_job():
    update_rejects(
        {"groups": ["Bad"]},
        IAE,
        "Invalid group id 'Bad'; must be non-empty string and may contain lowercase "
        "alphanumeric (a-z and 0-9), hyphens or underscores; must start and end "
        "with alphanumeric",
    )
    update_rejects(
        {"model_snapshot_retention_days": 0},
        IAE,
        "The value of daily_model_snapshot_retention_after_days [1] cannot be "
        "greater than model_snapshot_retention_days [0]",
    )
    update_rejects(
        {"background_persist_interval": "10m"},
        IAE,
        "background_persist_interval cannot be less than 3,600. Value = 600",
    )
    update_rejects(
        {"categorization_filters": ["x"]},
        IAE,
        "categorization_filters require setting categorization_field_name",
    )
