"""Job configuration: parse and validate a put_job body the way Elasticsearch does.

:func:`parse_job_config` turns a ``PUT _ml/anomaly_detectors/<id>`` body into an
immutable :class:`JobConfig`; :meth:`JobConfig.to_dict` gives back the job object as
``GET _ml/anomaly_detectors/<id>`` shows it, and :meth:`JobConfig.from_dict` reads that
object back exactly. :func:`apply_update` applies a ``_update`` body.

Validation follows ES's ``Job``, ``AnalysisConfig``, ``Detector``, ``DataDescription``,
``AnalysisLimits`` and ``Messages`` classes; reasons are ES's texts where ES has one.
Error types follow one rule:

* unknown field, wrong JSON type, or a value that cannot be read as the declared type
  (e.g. ``"yes"`` for a boolean, an unknown ``format``) -> 400
  ``x_content_parse_exception``, reason naming the parser and the field
  (``[job_details] unknown field [foo]``);
* a byte-size string ES cannot parse -> 400 ``parse_exception`` (ES's
  ``ElasticsearchParseException``);
* every other rejection -> 400 ``illegal_argument_exception`` with ES's message.
  (ES reports some of these as ``status_exception`` nested inside an
  ``x_content_parse_exception``; adjobs reports the innermost message flat.)

adjobs limits, beyond ES's own rules: at most :data:`MAX_DETECTORS` detectors, at most
:data:`MAX_INPUT_FIELDS` distinct input fields (time field plus analysis fields) and
field names of at most :data:`MAX_FIELD_NAME_BYTES` UTF-8 bytes.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import (
    ApiError,
    illegal_argument,
    parse_exception,
    x_content_parse_exception,
)

__all__ = [
    "DEFAULT_BUCKET_SPAN",
    "JOB_VERSION",
    "MAX_DETECTORS",
    "MAX_FIELD_NAME_BYTES",
    "MAX_INPUT_FIELDS",
    "Detector",
    "JobConfig",
    "apply_update",
    "check_supported",
    "parse_job_config",
    "validate_job_id",
]

# --------------------------------------------------------------------------- limits

#: Most detectors one job may have (adjobs limit; ES has none).
MAX_DETECTORS = 100
#: Most distinct input fields (time field + analysis fields) per job (adjobs limit).
MAX_INPUT_FIELDS = 64
#: Longest field name, in UTF-8 bytes (adjobs limit).
MAX_FIELD_NAME_BYTES = 1024
#: Longest job id (ES ``MlStrings.ID_LENGTH_LIMIT``).
ID_LENGTH_LIMIT = 64
#: ``job_version`` written into new jobs: the ES version whose API adjobs mirrors.
JOB_VERSION = "9.1.0"
#: Default ``bucket_span`` (ES ``AnalysisConfig.Builder.DEFAULT_BUCKET_SPAN``).
DEFAULT_BUCKET_SPAN = "5m"

_DEFAULT_MODEL_MEMORY_LIMIT_MB = 1024
_DEFAULT_CATEGORIZATION_EXAMPLES_LIMIT = 4
_DEFAULT_MODEL_SNAPSHOT_RETENTION_DAYS = 10
_DEFAULT_DAILY_MODEL_SNAPSHOT_RETENTION_AFTER_DAYS = 1
_MIN_BACKGROUND_PERSIST_INTERVAL_S = 3600
_SHARED_RESULTS_INDEX = "shared"
_ML_CATEGORY = "mlcategory"
# ES RecordWriter.CONTROL_FIELD_NAME: the native process reserves this name.
_CONTROL_FIELD_NAME = "."

# ES rule without the undocumented '.' that MlStrings also allows: the spec keeps ids
# free of dots so that an id is always a safe file name.
_VALID_ID = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?")

# --------------------------------------------------------------------------- functions

# ES DetectorFunction: full names, plus the short aliases that map onto them.
_FUNCTION_SHORTCUTS = {
    "nzc": "non_zero_count",
    "low_nzc": "low_non_zero_count",
    "high_nzc": "high_non_zero_count",
    "dc": "distinct_count",
    "low_dc": "low_distinct_count",
    "high_dc": "high_distinct_count",
}
_COUNT_WITHOUT_FIELD_FUNCTIONS = frozenset(
    {
        "count",
        "high_count",
        "low_count",
        "non_zero_count",
        "low_non_zero_count",
        "high_non_zero_count",
        "time_of_day",
        "time_of_week",
    }
)
# Functions whose field_name is numeric: the field is a metric input to the model.
_METRIC_FUNCTIONS = frozenset(
    {
        "metric",
        "mean",
        "low_mean",
        "high_mean",
        "avg",
        "low_avg",
        "high_avg",
        "median",
        "low_median",
        "high_median",
        "min",
        "max",
        "sum",
        "low_sum",
        "high_sum",
        "non_null_sum",
        "low_non_null_sum",
        "high_non_null_sum",
        "varp",
        "low_varp",
        "high_varp",
    }
)
_FIELD_NAME_FUNCTIONS = _METRIC_FUNCTIONS | {
    "distinct_count",
    "low_distinct_count",
    "high_distinct_count",
    "info_content",
    "low_info_content",
    "high_info_content",
    "lat_long",
}
_BY_FIELD_NAME_FUNCTIONS = frozenset({"rare", "freq_rare"})
_OVER_FIELD_NAME_FUNCTIONS = frozenset({"freq_rare"})
_NO_OVER_FIELD_NAME_FUNCTIONS = frozenset(
    {"non_zero_count", "low_non_zero_count", "high_non_zero_count"}
)
#: ES functions adjobs recognises but cannot run yet.
UNSUPPORTED_FUNCTIONS = frozenset(
    {
        "freq_rare",
        "info_content",
        "high_info_content",
        "low_info_content",
        "lat_long",
        "time_of_day",
        "time_of_week",
    }
)
_ALL_FUNCTIONS = (
    _COUNT_WITHOUT_FIELD_FUNCTIONS | _FIELD_NAME_FUNCTIONS | _BY_FIELD_NAME_FUNCTIONS
)

_EXCLUDE_FREQUENT_VALUES = ("all", "none", "by", "over")

# --------------------------------------------------------------------------- field sets

_JOB_FIELDS = frozenset(
    {
        "job_id",
        "job_type",
        "job_version",
        "groups",
        "description",
        "create_time",
        "finished_time",
        "model_snapshot_id",
        "analysis_config",
        "analysis_limits",
        "data_description",
        "model_plot_config",
        "renormalization_window_days",
        "background_persist_interval",
        "results_retention_days",
        "model_snapshot_retention_days",
        "daily_model_snapshot_retention_after_days",
        "custom_settings",
        "results_index_name",
        "allow_lazy_open",
        "datafeed_config",
    }
)
_ANALYSIS_CONFIG_FIELDS = frozenset(
    {
        "bucket_span",
        "categorization_field_name",
        "categorization_filters",
        "categorization_analyzer",
        "per_partition_categorization",
        "latency",
        "summary_count_field_name",
        "detectors",
        "influencers",
        "multivariate_by_fields",
        "model_prune_window",
    }
)
_DETECTOR_FIELDS = frozenset(
    {
        "detector_description",
        "function",
        "field_name",
        "by_field_name",
        "over_field_name",
        "partition_field_name",
        "use_null",
        "exclude_frequent",
        "custom_rules",
        "detector_index",
    }
)
_DATA_DESCRIPTION_FIELDS = frozenset(
    {"format", "time_field", "time_format", "field_delimiter", "quote_character"}
)
_ANALYSIS_LIMITS_FIELDS = frozenset(
    {"model_memory_limit", "categorization_examples_limit"}
)
_MODEL_PLOT_FIELDS = frozenset({"enabled", "terms", "annotations_enabled"})
_PER_PARTITION_FIELDS = frozenset({"enabled", "stop_on_warn"})
_UPDATE_FIELDS = frozenset(
    {
        "job_id",
        "groups",
        "description",
        "detectors",
        "model_plot_config",
        "analysis_limits",
        "background_persist_interval",
        "renormalization_window_days",
        "results_retention_days",
        "model_snapshot_retention_days",
        "daily_model_snapshot_retention_after_days",
        "categorization_filters",
        "custom_settings",
        "allow_lazy_open",
        "model_prune_window",
    }
)
_DETECTOR_UPDATE_FIELDS = frozenset({"detector_index", "description", "custom_rules"})

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


# =========================================================================== public types


@dataclass(frozen=True)
class Detector:
    """One detector of a job, as ES stores it (function full name, fields, options)."""

    detector_index: int
    function: str
    detector_description: str
    field_name: str | None = None
    by_field_name: str | None = None
    over_field_name: str | None = None
    partition_field_name: str | None = None
    use_null: bool = False
    exclude_frequent: str | None = None
    # Kept verbatim (adjobs does not evaluate rules); excluded from hashing because
    # rule objects are dicts.
    custom_rules: tuple = field(default=(), hash=False)

    def to_dict(self) -> dict:
        """Return the detector as ES serialises it (optional keys only when set)."""
        out: dict[str, Any] = {
            "detector_description": self.detector_description,
            "function": self.function,
        }
        for key in (
            "field_name",
            "by_field_name",
            "over_field_name",
            "partition_field_name",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.use_null:
            out["use_null"] = True
        if self.exclude_frequent is not None:
            out["exclude_frequent"] = self.exclude_frequent
        if self.custom_rules:
            out["custom_rules"] = copy.deepcopy(list(self.custom_rules))
        out["detector_index"] = self.detector_index
        return out


@dataclass(frozen=True)
class JobConfig:
    """A validated anomaly-detection job configuration (treat as read-only).

    The attributes the ingest path needs are typed and precomputed:
    ``bucket_span_ms``, ``latency_ms``, ``time_field``, ``time_format``, ``format``,
    ``field_delimiter``, ``quote_character`` and the field sets ``analysis_fields``
    (the set A of post-data.md §1.4, in first-occurrence order), ``numeric_fields``
    and ``categorical_fields`` (a partition of A). Everything else is kept so that
    :meth:`to_dict` reproduces the ES job object.
    """

    job_id: str
    create_time: int
    job_version: str
    bucket_span: str
    bucket_span_ms: int
    latency: str | None
    latency_ms: int
    detectors: tuple[Detector, ...]
    influencers: tuple[str, ...]
    time_field: str
    time_format: str
    format: str
    field_delimiter: str | None
    quote_character: str | None
    analysis_fields: tuple[str, ...]
    numeric_fields: tuple[str, ...]
    categorical_fields: tuple[str, ...]
    summary_count_field_name: str | None = None
    categorization_field_name: str | None = None
    categorization_filters: tuple[str, ...] | None = None
    categorization_analyzer: Any = field(default=None, hash=False)
    per_partition_categorization_enabled: bool = False
    per_partition_categorization_stop_on_warn: bool = False
    multivariate_by_fields: bool | None = None
    model_prune_window: str | None = None
    model_memory_limit_mb: int = _DEFAULT_MODEL_MEMORY_LIMIT_MB
    categorization_examples_limit: int = _DEFAULT_CATEGORIZATION_EXAMPLES_LIMIT
    description: str | None = None
    groups: tuple[str, ...] = ()
    model_plot_config: dict | None = field(default=None, hash=False)
    renormalization_window_days: int | None = None
    background_persist_interval: str | None = None
    model_snapshot_retention_days: int | None = _DEFAULT_MODEL_SNAPSHOT_RETENTION_DAYS
    daily_model_snapshot_retention_after_days: int | None = None
    results_retention_days: int | None = None
    custom_settings: dict | None = field(default=None, hash=False)
    results_index_name: str = _SHARED_RESULTS_INDEX
    allow_lazy_open: bool = False

    def to_dict(self) -> dict:
        """Return the job object as ``GET _ml/anomaly_detectors`` shows it.

        Key order and omissions follow ES's ``Job.toXContent``: ``groups`` only when
        non-empty, ``description`` only when set, optional settings only when set.
        """
        job: dict[str, Any] = {
            "job_id": self.job_id,
            "job_type": "anomaly_detector",
            "job_version": self.job_version,
            "create_time": self.create_time,
        }
        if self.custom_settings is not None:
            job["custom_settings"] = copy.deepcopy(self.custom_settings)
        if self.groups:
            job["groups"] = list(self.groups)
        if self.description is not None:
            job["description"] = self.description
        job["analysis_config"] = self._analysis_config_dict()
        job["analysis_limits"] = {
            "model_memory_limit": f"{self.model_memory_limit_mb}mb",
            "categorization_examples_limit": self.categorization_examples_limit,
        }
        data_description: dict[str, Any] = {}
        if self.format != "xcontent":
            data_description["format"] = self.format
        data_description["time_field"] = self.time_field
        data_description["time_format"] = self.time_format
        if self.field_delimiter is not None:
            data_description["field_delimiter"] = self.field_delimiter
        if self.quote_character is not None:
            data_description["quote_character"] = self.quote_character
        job["data_description"] = data_description
        if self.model_plot_config is not None:
            job["model_plot_config"] = copy.deepcopy(self.model_plot_config)
        optional = (
            ("renormalization_window_days", self.renormalization_window_days),
            ("background_persist_interval", self.background_persist_interval),
            ("model_snapshot_retention_days", self.model_snapshot_retention_days),
            (
                "daily_model_snapshot_retention_after_days",
                self.daily_model_snapshot_retention_after_days,
            ),
            ("results_retention_days", self.results_retention_days),
        )
        for key, value in optional:
            if value is not None:
                job[key] = value
        job["results_index_name"] = self.results_index_name
        job["allow_lazy_open"] = self.allow_lazy_open
        return job

    def _analysis_config_dict(self) -> dict:
        analysis: dict[str, Any] = {"bucket_span": self.bucket_span}
        if self.categorization_field_name is not None:
            analysis["categorization_field_name"] = self.categorization_field_name
        if self.categorization_filters is not None:
            analysis["categorization_filters"] = list(self.categorization_filters)
        if self.categorization_analyzer is not None:
            analysis["categorization_analyzer"] = copy.deepcopy(
                self.categorization_analyzer
            )
        # ES shows per-partition settings only when categorization is in use.
        if self.categorization_field_name is not None:
            analysis["per_partition_categorization"] = {
                "enabled": self.per_partition_categorization_enabled,
                "stop_on_warn": self.per_partition_categorization_stop_on_warn,
            }
        if self.latency is not None:
            analysis["latency"] = self.latency
        if self.summary_count_field_name is not None:
            analysis["summary_count_field_name"] = self.summary_count_field_name
        analysis["detectors"] = [detector.to_dict() for detector in self.detectors]
        analysis["influencers"] = list(self.influencers)
        if self.multivariate_by_fields is not None:
            analysis["multivariate_by_fields"] = self.multivariate_by_fields
        if self.model_prune_window is not None:
            analysis["model_prune_window"] = self.model_prune_window
        return analysis

    @classmethod
    def from_dict(cls, job: dict) -> JobConfig:
        """Rebuild a config from :meth:`to_dict` output (as persisted by the store).

        The object is validated again, so ``JobConfig.from_dict(c.to_dict()) == c``
        and ``from_dict(d).to_dict() == d`` for any ``d`` produced by ``to_dict``.
        """
        if not isinstance(job, dict):
            raise _expected_object("job_details", job)
        job_id = job.get("job_id")
        if not isinstance(job_id, str):
            raise illegal_argument("[job_id] must not be null.")
        validate_job_id(job_id)
        create_time = job.get("create_time")
        if isinstance(create_time, bool) or not isinstance(create_time, int):
            raise illegal_argument("[create_time] must not be null.")
        job_version = job.get("job_version", JOB_VERSION)
        if not isinstance(job_version, str):
            raise _wrong_type("job_details", "job_version", job_version)
        body = {
            key: value
            for key, value in job.items()
            if key not in ("job_type", "job_version", "create_time")
        }
        return _build_job(
            job_id,
            body,
            creating=False,
            create_time_ms=create_time,
            job_version=job_version,
        )


# =========================================================================== entry points


def validate_job_id(job_id: str) -> None:
    """Check a job id against ES's rule, before it reaches the store or a file path.

    Lowercase letters, digits, ``-`` and ``_``; starts and ends with a letter or digit;
    at most 64 characters. (ES also accepts ``.`` inside ids; adjobs does not, so an id
    is always a safe file name.)

    Raises
    ------
    ApiError
        400 ``illegal_argument_exception`` with ES's ``Messages.INVALID_ID`` or
        ``JOB_CONFIG_ID_TOO_LONG`` text.
    """
    if not isinstance(job_id, str) or _VALID_ID.fullmatch(job_id) is None:
        raise illegal_argument(
            f"Invalid job_id; '{job_id}' can contain lowercase alphanumeric (a-z and 0-9), "
            "hyphens or underscores; must start and end with alphanumeric"
        )
    if len(job_id) > ID_LENGTH_LIMIT:
        raise illegal_argument(
            f"The job id cannot contain more than {ID_LENGTH_LIMIT} characters."
        )


def check_supported(config: JobConfig) -> None:
    """Refuse, with a 400, a valid ES job whose settings adjobs cannot honour yet:
    categorization, detector ``custom_rules`` and ``exclude_frequent`` (but ``none``).
    Running it without them would give results that silently differ from ES's (rules that
    never skip, categories never made, frequent values never left out)."""
    if config.categorization_field_name is not None:
        raise illegal_argument(
            "categorization (categorization_field_name, mlcategory) is not supported by "
            "adjobs yet"
        )
    for detector in config.detectors:
        if detector.custom_rules:
            raise illegal_argument(
                f"custom_rules (detector [{detector.detector_index}]) are not supported by "
                "adjobs yet"
            )
        if detector.exclude_frequent not in (None, "none"):
            raise illegal_argument(
                f"exclude_frequent [{detector.exclude_frequent}] (detector "
                f"[{detector.detector_index}]) is not supported by adjobs yet"
            )


def parse_job_config(
    job_id: str, body: Any, *, create_time_ms: int | None = None
) -> JobConfig:
    """Parse and validate a put_job body, as ES's put_job does.

    Parameters
    ----------
    job_id
        The id from the request path; validated with :func:`validate_job_id`.
    body
        The decoded JSON body (a dict). ``job_id`` inside it must equal ``job_id``.
    create_time_ms
        Creation time to record (epoch ms); defaults to now.

    Returns
    -------
    JobConfig
        The validated configuration with ES defaults filled in.

    Raises
    ------
    ApiError
        400 with ES's error text; see the module docstring for the error types.
    """
    validate_job_id(job_id)
    if create_time_ms is None:
        create_time_ms = time.time_ns() // 1_000_000
    return _build_job(
        job_id,
        body,
        creating=True,
        create_time_ms=create_time_ms,
        job_version=JOB_VERSION,
    )


def apply_update(config: JobConfig, update_body: Any) -> JobConfig:
    """Apply an ``_update`` body to ``config`` and return the new configuration.

    Updatable, as in ES: ``description``, ``groups``, ``analysis_limits`` (the model
    memory limit may only grow), ``model_plot_config``, ``renormalization_window_days``,
    ``results_retention_days``, ``model_snapshot_retention_days``,
    ``daily_model_snapshot_retention_after_days``, ``custom_settings``,
    ``background_persist_interval``, ``categorization_filters``, ``model_prune_window``,
    ``allow_lazy_open`` and ``detectors`` (``description`` / ``custom_rules`` by
    ``detector_index``). Any other field is rejected, named in the reason.
    """
    if update_body is None:
        raise parse_exception("request body is required")
    update = _expect_object(update_body, "job_update")
    _reject_unknown(update, _UPDATE_FIELDS, "job_update")
    body_id = _get_str(update, "job_id", "job_update")
    if body_id is not None and body_id != config.job_id:
        raise _inconsistent_id(body_id, config.job_id)

    job = config.to_dict()
    analysis = job["analysis_config"]
    if "groups" in update:
        job["groups"] = _get_str_list(update, "groups", "job_update")
    description = _get_str(update, "description", "job_update", nullable=True)
    if description is not None:
        job["description"] = description
    if "detectors" in update:
        _apply_detector_updates(analysis["detectors"], update["detectors"])
    if "model_plot_config" in update:
        job["model_plot_config"] = _parse_model_plot_config(
            update["model_plot_config"], "job_update"
        )
    if "analysis_limits" in update:
        job["analysis_limits"] = _updated_analysis_limits(
            config, update["analysis_limits"]
        )
    if "background_persist_interval" in update:
        interval = _get_str(update, "background_persist_interval", "job_update")
        job["background_persist_interval"] = _parse_time_value(
            interval, "background_persist_interval"
        ).string_rep
    for key in (
        "renormalization_window_days",
        "results_retention_days",
        "model_snapshot_retention_days",
        "daily_model_snapshot_retention_after_days",
    ):
        if key in update:
            job[key] = _get_long(update, key, "job_update")
    if "categorization_filters" in update:
        analysis["categorization_filters"] = _get_str_list(
            update, "categorization_filters", "job_update"
        )
    if "custom_settings" in update:
        job["custom_settings"] = copy.deepcopy(
            _expect_object(update["custom_settings"], "job_update", "custom_settings")
        )
    if "allow_lazy_open" in update:
        job["allow_lazy_open"] = _get_bool(update, "allow_lazy_open", "job_update")
    if "model_prune_window" in update:
        window = _get_str(update, "model_prune_window", "job_update")
        analysis["model_prune_window"] = _parse_time_value(
            window, "model_prune_window"
        ).string_rep
    # Rebuilding re-runs every ES check on the merged job (as ES's Job.Builder.build does).
    return JobConfig.from_dict(job)


def _apply_detector_updates(detectors: list[dict], raw_updates: Any) -> None:
    for raw in _object_list(raw_updates, "job_update", "detectors"):
        _reject_unknown(raw, _DETECTOR_UPDATE_FIELDS, "detector_update")
        index = _get_long(raw, "detector_index", "detector_update")
        if index is None:
            raise illegal_argument("Required [detector_index]")
        if index < 0:
            raise illegal_argument(
                f"Supplied detector_index [{index}] must not be negative"
            )
        if index >= len(detectors):
            raise illegal_argument(
                f"Supplied detector_index [{index}] is >= the number of detectors "
                f"[{len(detectors)}]"
            )
        detector = detectors[index]
        description = _get_str(raw, "description", "detector_update", nullable=True)
        if description is not None:
            detector["detector_description"] = description
        if "custom_rules" in raw:
            rules = _object_list(raw["custom_rules"], "detector_update", "custom_rules")
            detector["custom_rules"] = copy.deepcopy(rules)


def _updated_analysis_limits(config: JobConfig, raw: Any) -> dict:
    limits = _parse_analysis_limits(raw, "job_update")
    memory_mb = limits.get("model_memory_limit", config.model_memory_limit_mb)
    if memory_mb < config.model_memory_limit_mb:
        raise illegal_argument(
            "Invalid update value for analysis_limits: model_memory_limit cannot be "
            f"decreased; existing is {config.model_memory_limit_mb}, update had {memory_mb}"
        )
    return {
        "model_memory_limit": f"{memory_mb}mb",
        "categorization_examples_limit": limits.get(
            "categorization_examples_limit", config.categorization_examples_limit
        ),
    }


# =========================================================================== job building


def _build_job(
    job_id: str, body: Any, *, creating: bool, create_time_ms: int, job_version: str
) -> JobConfig:
    """Validate a job body (put_job when ``creating``, else a stored job) into a config."""
    if body is None:
        raise parse_exception("request body is required")
    job = _expect_object(body, "job_details")
    _reject_unknown(job, _JOB_FIELDS, "job_details")
    body_id = _get_str(job, "job_id", "job_details")
    if body_id is not None and body_id != job_id:
        raise _inconsistent_id(body_id, job_id)
    if "datafeed_config" in job:
        raise illegal_argument(
            "adjobs does not support datafeeds: remove [datafeed_config] from the job and "
            "post data to the job directly"
        )
    _get_str(job, "job_type", "job_details")
    # Parse the sections first, then run the job-level checks (ES's order).
    analysis = None
    if "analysis_config" in job:
        analysis = _parse_analysis_config(
            _expect_object(job["analysis_config"], "job_details", "analysis_config")
        )
    data = None
    if "data_description" in job:
        data = _parse_data_description(
            _expect_object(job["data_description"], "job_details", "data_description")
        )
    limits = (
        _parse_analysis_limits(job["analysis_limits"], "job_details")
        if "analysis_limits" in job
        else {}
    )
    model_plot = (
        _parse_model_plot_config(job["model_plot_config"], "job_details")
        if "model_plot_config" in job
        else None
    )
    groups = _get_str_list(job, "groups", "job_details") or []
    description = _get_str(job, "description", "job_details", nullable=True)
    renormalization_days = _get_long(job, "renormalization_window_days", "job_details")
    results_retention_days = _get_long(job, "results_retention_days", "job_details")
    snapshot_retention_days = _DEFAULT_MODEL_SNAPSHOT_RETENTION_DAYS
    if "model_snapshot_retention_days" in job:
        snapshot_retention_days = _get_long(
            job, "model_snapshot_retention_days", "job_details"
        )
    daily_retention_days = _get_long(
        job, "daily_model_snapshot_retention_after_days", "job_details"
    )
    persist_interval = None
    if "background_persist_interval" in job:
        persist_interval = _parse_time_value(
            _get_str(job, "background_persist_interval", "job_details"),
            "background_persist_interval",
        )
    custom_settings = None
    if "custom_settings" in job:
        custom_settings = copy.deepcopy(
            _expect_object(job["custom_settings"], "job_details", "custom_settings")
        )
    results_index_name = _get_str(job, "results_index_name", "job_details")
    allow_lazy_open = _get_bool(job, "allow_lazy_open", "job_details") or False
    model_snapshot_id = _get_str(job, "model_snapshot_id", "job_details", nullable=True)

    # ES Job.Builder.validateInputFields, in ES's order.
    if analysis is None:
        raise illegal_argument("An analysis_config must be set")
    if data is None:
        raise illegal_argument("A data_description must be set")
    if data["time_field"] in analysis["es_analysis_fields"]:
        raise illegal_argument(
            "data_description.time_field may not be used in the analysis_config"
        )
    if persist_interval is not None:
        _check_multiple_of_seconds(persist_interval, "background_persist_interval")
        _check_not_less_than(
            _MIN_BACKGROUND_PERSIST_INTERVAL_S,
            "background_persist_interval",
            persist_interval.nanos // 1_000_000_000,
        )
    _check_not_less_than(0, "renormalization_window_days", renormalization_days)
    _check_not_less_than(0, "results_retention_days", results_retention_days)
    _check_not_less_than(0, "model_snapshot_retention_days", snapshot_retention_days)
    _check_not_less_than(
        0, "daily_model_snapshot_retention_after_days", daily_retention_days
    )
    if (
        snapshot_retention_days is not None
        and daily_retention_days is not None
        and daily_retention_days > snapshot_retention_days
    ):
        # ES builds this text with MessageFormat, which drops the single quotes.
        raise illegal_argument(
            f"The value of daily_model_snapshot_retention_after_days [{daily_retention_days:,}] "
            f"cannot be greater than model_snapshot_retention_days [{snapshot_retention_days:,}]"
        )
    for group in groups:
        if _VALID_ID.fullmatch(group) is None or len(group) > ID_LENGTH_LIMIT:
            raise illegal_argument(
                f"Invalid group id '{group}'; must be non-empty string and may contain "
                "lowercase alphanumeric (a-z and 0-9), hyphens or underscores; must start "
                "and end with alphanumeric"
            )
        if group == job_id:
            raise ApiError(
                400,
                "resource_already_exists_exception",
                f"job and group names must be unique but job [{job_id}] and group "
                f"[{job_id}] have the same name",
            )
    if results_index_name and _VALID_ID.fullmatch(results_index_name) is None:
        raise illegal_argument(
            f"Invalid results_index_name; '{results_index_name}' can contain lowercase "
            "alphanumeric (a-z and 0-9), hyphens or underscores; must start and end with "
            "alphanumeric"
        )
    _check_detectors_unique(analysis["detectors"])
    if creating:
        illegal = [
            name
            for name, value in (
                ("model_snapshot_id", model_snapshot_id),
                ("finished_time", job.get("finished_time")),
                ("create_time", job.get("create_time")),
            )
            if value is not None
        ]
        if illegal:
            raise illegal_argument(
                f"The job is configured with fields [{','.join(illegal)}] that are illegal "
                "to set at job creation"
            )

    # adjobs limits.
    _check_field_name_length(data["time_field"])
    input_fields = set(analysis["analysis_fields"]) | {data["time_field"]}
    if len(input_fields) > MAX_INPUT_FIELDS:
        raise illegal_argument(
            f"adjobs limit exceeded: a job may use at most {MAX_INPUT_FIELDS} input fields "
            f"(time field plus analysis fields); this job uses {len(input_fields)}"
        )

    # Defaults that ES fills in when a job is created.
    if (
        daily_retention_days is None
        and snapshot_retention_days is not None
        and snapshot_retention_days > _DEFAULT_DAILY_MODEL_SNAPSHOT_RETENTION_AFTER_DAYS
    ):
        daily_retention_days = _DEFAULT_DAILY_MODEL_SNAPSHOT_RETENTION_AFTER_DAYS
    if not results_index_name:
        results_index_name = _SHARED_RESULTS_INDEX
    elif (
        results_index_name != _SHARED_RESULTS_INDEX
        and not results_index_name.startswith("custom-")
    ):
        results_index_name = "custom-" + results_index_name

    return JobConfig(
        job_id=job_id,
        create_time=create_time_ms,
        job_version=job_version,
        bucket_span=analysis["bucket_span"].string_rep,
        bucket_span_ms=analysis["bucket_span"].nanos // 1_000_000,
        latency=analysis["latency"].string_rep
        if analysis["latency"] is not None
        else None,
        latency_ms=analysis["latency"].nanos // 1_000_000
        if analysis["latency"] is not None
        else 0,
        detectors=analysis["detectors"],
        influencers=tuple(analysis["influencers"]),
        time_field=data["time_field"],
        time_format=data["time_format"],
        format=data["format"],
        field_delimiter=data["field_delimiter"],
        quote_character=data["quote_character"],
        analysis_fields=analysis["analysis_fields"],
        numeric_fields=analysis["numeric_fields"],
        categorical_fields=analysis["categorical_fields"],
        summary_count_field_name=analysis["summary_count_field_name"],
        categorization_field_name=analysis["categorization_field_name"],
        categorization_filters=analysis["categorization_filters"],
        categorization_analyzer=analysis["categorization_analyzer"],
        per_partition_categorization_enabled=analysis["per_partition_enabled"],
        per_partition_categorization_stop_on_warn=analysis[
            "per_partition_stop_on_warn"
        ],
        multivariate_by_fields=analysis["multivariate_by_fields"],
        model_prune_window=analysis["model_prune_window"],
        model_memory_limit_mb=limits.get(
            "model_memory_limit", _DEFAULT_MODEL_MEMORY_LIMIT_MB
        ),
        categorization_examples_limit=limits.get(
            "categorization_examples_limit", _DEFAULT_CATEGORIZATION_EXAMPLES_LIMIT
        ),
        description=description,
        groups=tuple(groups),
        model_plot_config=model_plot,
        renormalization_window_days=renormalization_days,
        background_persist_interval=persist_interval.string_rep
        if persist_interval
        else None,
        model_snapshot_retention_days=snapshot_retention_days,
        daily_model_snapshot_retention_after_days=daily_retention_days,
        results_retention_days=results_retention_days,
        custom_settings=custom_settings,
        results_index_name=results_index_name,
        allow_lazy_open=allow_lazy_open,
    )


def _check_detectors_unique(detectors: Iterable[Detector]) -> None:
    """ES ``validateDetectorsAreUnique``: detectors equal up to their index are refused."""
    seen: list[tuple] = []
    for detector in detectors:
        key = (
            detector.function,
            detector.detector_description,
            detector.field_name,
            detector.by_field_name,
            detector.over_field_name,
            detector.partition_field_name,
            detector.use_null,
            detector.exclude_frequent,
            detector.custom_rules,
        )
        if key in seen:
            raise illegal_argument(
                f"Duplicate detectors are not allowed: [{detector.detector_description}]"
            )
        seen.append(key)


# =========================================================================== analysis_config


def _parse_analysis_config(raw: dict) -> dict:
    """Parse ``analysis_config`` and run ES's ``AnalysisConfig.Builder.build`` checks."""
    parser = "analysis_config"
    _reject_unknown(raw, _ANALYSIS_CONFIG_FIELDS, parser)
    if "detectors" not in raw:
        raise illegal_argument("Required [detectors]")
    raw_detectors = _object_list(raw["detectors"], parser, "detectors")
    if len(raw_detectors) > MAX_DETECTORS:
        raise illegal_argument(
            f"adjobs limit exceeded: a job may have at most {MAX_DETECTORS} detectors; "
            f"this job has {len(raw_detectors)}"
        )
    # ES numbers detectors by position, ignoring any detector_index in the body.
    detectors = tuple(
        _parse_detector(item, index) for index, item in enumerate(raw_detectors)
    )

    bucket_span = _parse_time_value(DEFAULT_BUCKET_SPAN, "bucket_span")
    if "bucket_span" in raw:
        bucket_span = _parse_time_value(
            _get_str(raw, "bucket_span", parser), "bucket_span"
        )
    latency = None
    if "latency" in raw:
        latency = _parse_time_value(_get_str(raw, "latency", parser), "latency")
    model_prune_window = None
    if "model_prune_window" in raw:
        window = _parse_time_value(
            _get_str(raw, "model_prune_window", parser), "model_prune_window"
        )
        model_prune_window = window.string_rep
    categorization_field = _get_str(raw, "categorization_field_name", parser)
    categorization_filters = _get_str_list(raw, "categorization_filters", parser)
    summary_count_field = _get_str(raw, "summary_count_field_name", parser)
    influencers = _get_str_list(raw, "influencers", parser) or []
    multivariate_by_fields = _get_bool(raw, "multivariate_by_fields", parser)
    categorization_analyzer = None
    if "categorization_analyzer" in raw:
        analyzer = raw["categorization_analyzer"]
        if not isinstance(analyzer, (str, dict)):
            raise _wrong_type(parser, "categorization_analyzer", analyzer)
        categorization_analyzer = copy.deepcopy(analyzer)
    per_partition_enabled = per_partition_stop_on_warn = False
    if "per_partition_categorization" in raw:
        per_partition = _expect_object(
            raw["per_partition_categorization"], parser, "per_partition_categorization"
        )
        _reject_unknown(
            per_partition, _PER_PARTITION_FIELDS, "per_partition_categorization"
        )
        per_partition_enabled = bool(
            _get_bool(per_partition, "enabled", "per_partition_categorization")
        )
        per_partition_stop_on_warn = bool(
            _get_bool(per_partition, "stop_on_warn", "per_partition_categorization")
        )
        if per_partition_stop_on_warn and not per_partition_enabled:
            raise illegal_argument(
                "stop_on_warn cannot be true in per_partition_categorization when enabled is false"
            )

    # ES AnalysisConfig.Builder.build, in ES's order.
    _check_positive(bucket_span, "bucket_span")
    _check_multiple_of_seconds(bucket_span, "bucket_span")
    if latency is not None:
        if latency.nanos < 0:
            raise illegal_argument(
                f"latency cannot be less than 0. Value = {latency.human}"
            )
        _check_multiple_of_seconds(latency, "latency")
    if not detectors:
        raise illegal_argument("No detectors configured")
    _verify_field_name(summary_count_field)
    _verify_field_name(categorization_field)
    term_fields = [
        name
        for detector in detectors
        for name in (
            detector.by_field_name,
            detector.over_field_name,
            detector.partition_field_name,
        )
        if name is not None
    ]
    uses_ml_category = _ML_CATEGORY in term_fields
    if uses_ml_category and categorization_field is None:
        raise illegal_argument(
            "categorization_field_name must be set for mlcategory to be available"
        )
    if categorization_field is not None and not uses_ml_category:
        raise illegal_argument(
            "categorization_field_name is set but mlcategory is not used in any detector "
            "by/over/partition field"
        )
    if categorization_analyzer is not None and categorization_field is None:
        raise illegal_argument(
            "categorization_analyzer requires setting categorization_field_name"
        )
    if categorization_filters:
        _verify_categorization_filters(
            categorization_filters, categorization_field, categorization_analyzer
        )
    if per_partition_enabled:
        _verify_per_partition(detectors, categorization_field)
    if summary_count_field and any(d.function == "metric" for d in detectors):
        raise illegal_argument(
            "The 'metric' function cannot be used in jobs that will take pre-summarized input"
        )
    _verify_no_inconsistent_nested_field_names(term_fields + influencers)

    for name in influencers + [categorization_field, summary_count_field]:
        _check_field_name_length(name)

    analysis_fields, numeric_fields = _analysis_fields(
        detectors, influencers, categorization_field, summary_count_field
    )
    numeric = set(numeric_fields)
    es_analysis_fields = {
        name
        for name in (
            term_fields
            + influencers
            + [categorization_field, summary_count_field]
            + [d.field_name for d in detectors]
        )
        if name
    }
    return {
        "detectors": detectors,
        "bucket_span": bucket_span,
        "latency": latency,
        "model_prune_window": model_prune_window,
        "categorization_field_name": categorization_field,
        "categorization_filters": tuple(categorization_filters)
        if categorization_filters is not None
        else None,
        "categorization_analyzer": categorization_analyzer,
        "per_partition_enabled": per_partition_enabled,
        "per_partition_stop_on_warn": per_partition_stop_on_warn,
        "summary_count_field_name": summary_count_field,
        "influencers": influencers,
        "multivariate_by_fields": multivariate_by_fields,
        "analysis_fields": analysis_fields,
        "numeric_fields": numeric_fields,
        "categorical_fields": tuple(
            name for name in analysis_fields if name not in numeric
        ),
        "es_analysis_fields": es_analysis_fields,
    }


def _analysis_fields(
    detectors: Iterable[Detector],
    influencers: list[str],
    categorization_field: str | None,
    summary_count_field: str | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return (A, numeric fields) of post-data.md §1.4, in first-occurrence order.

    Order: each detector's field_name, by, over, partition; then influencers, the
    categorization field and the summary count field. Empty names and ``mlcategory``
    are dropped. Numeric fields are metric-function field names and the summary count
    field, in A's order.
    """
    ordered: dict[str, None] = {}
    numeric: set[str] = set()
    for detector in detectors:
        for name in (
            detector.field_name,
            detector.by_field_name,
            detector.over_field_name,
            detector.partition_field_name,
        ):
            if name:
                ordered.setdefault(name)
        if detector.field_name and detector.function in _METRIC_FUNCTIONS:
            numeric.add(detector.field_name)
    for name in [*influencers, categorization_field, summary_count_field]:
        if name:
            ordered.setdefault(name)
    if summary_count_field:
        numeric.add(summary_count_field)
    ordered.pop(_ML_CATEGORY, None)
    analysis_fields = tuple(ordered)
    return analysis_fields, tuple(name for name in analysis_fields if name in numeric)


def _verify_categorization_filters(
    filters: list[str], categorization_field: str | None, analyzer: Any
) -> None:
    if analyzer is not None:
        raise illegal_argument(
            "categorization_filters cannot be used with categorization_analyzer - instead "
            "specify them as pattern_replace char_filters in the analyzer"
        )
    if categorization_field is None:
        raise illegal_argument(
            "categorization_filters require setting categorization_field_name"
        )
    if len(set(filters)) != len(filters):
        raise illegal_argument("categorization_filters contain duplicates")
    if any(item == "" for item in filters):
        raise illegal_argument(
            "categorization_filters are not allowed to contain empty strings"
        )
    for item in filters:
        # Python's re stands in for java.util.regex; the two agree on common syntax.
        try:
            re.compile(item)
        except re.error:
            raise illegal_argument(
                f"categorization_filters contains invalid regular expression '{item}'"
            ) from None


def _verify_per_partition(
    detectors: Iterable[Detector], categorization_field: str | None
) -> None:
    """ES ``verifyConfigConsistentWithPerPartitionCategorization``."""
    if categorization_field is None:
        raise illegal_argument(
            "categorization_field_name must be set when per-partition categorization is enabled"
        )
    single_partition_field = None
    for detector in detectors:
        terms = {
            detector.by_field_name,
            detector.over_field_name,
            detector.partition_field_name,
        }
        if _ML_CATEGORY in terms:
            if detector.partition_field_name == _ML_CATEGORY:
                raise illegal_argument(
                    "mlcategory cannot be used as a partition_field_name when per-partition "
                    "categorization is enabled"
                )
            if detector.partition_field_name is None:
                raise illegal_argument(
                    "partition_field_name must be set for detectors that reference mlcategory "
                    "when per-partition categorization is enabled"
                )
        if detector.partition_field_name is not None:
            previous, single_partition_field = (
                single_partition_field,
                detector.partition_field_name,
            )
            if previous is not None and previous != detector.partition_field_name:
                raise illegal_argument(
                    "partition_field_name cannot vary between detectors when per-partition "
                    f"categorization is enabled: [{previous}] and "
                    f"[{detector.partition_field_name}] are used"
                )


def _verify_no_inconsistent_nested_field_names(term_fields: list[str]) -> None:
    """ES forbids ``a`` together with ``a.b`` among by/over/partition/influencer fields.

    Like ES, only neighbours in sorted order are compared, so the check is exactly ES's.
    """
    previous = None
    for name in sorted(set(term_fields) - {""}):
        if previous is not None and name.startswith(previous + "."):
            raise illegal_argument(
                f"Fields [{previous}] and [{name}] cannot both be used in the same analysis_config"
            )
        previous = name


# =========================================================================== detectors


def _parse_detector(raw: dict, index: int) -> Detector:
    """Parse one detector and run ES's ``Detector.Builder.build`` checks."""
    parser = "detector"
    _reject_unknown(raw, _DETECTOR_FIELDS, parser)
    function_name = _get_str(raw, "function", parser)
    if function_name is not None:
        function_name = _resolve_function(function_name)
    field_name = _get_str(raw, "field_name", parser)
    by_field = _get_str(raw, "by_field_name", parser)
    over_field = _get_str(raw, "over_field_name", parser)
    partition_field = _get_str(raw, "partition_field_name", parser)
    use_null = bool(_get_bool(raw, "use_null", parser))
    exclude_frequent = None
    if "exclude_frequent" in raw:
        value = _get_str(raw, "exclude_frequent", parser)
        if value.lower() not in _EXCLUDE_FREQUENT_VALUES:
            raise x_content_parse_exception(
                f"[{parser}] failed to parse field [exclude_frequent]: expected one of "
                f"[all, none, by, over] but found [{value}]"
            )
        exclude_frequent = value.lower()
    custom_rules: tuple = ()
    if "custom_rules" in raw:
        custom_rules = tuple(
            copy.deepcopy(_object_list(raw["custom_rules"], parser, "custom_rules"))
        )
    _get_long(raw, "detector_index", parser)  # accepted (ES declares it) and ignored
    description = _get_str(raw, "detector_description", parser)
    if function_name is None:
        raise illegal_argument("[function] must not be null.")

    _check_detector_fields(
        function_name, field_name, by_field, over_field, partition_field
    )
    for name in (field_name, by_field, over_field, partition_field):
        _check_field_name_length(name)
    if description is None:
        description = _default_detector_description(
            function_name,
            field_name,
            by_field,
            over_field,
            use_null,
            partition_field,
            exclude_frequent,
        )
    return Detector(
        detector_index=index,
        function=function_name,
        detector_description=description,
        field_name=field_name,
        by_field_name=by_field,
        over_field_name=over_field,
        partition_field_name=partition_field,
        use_null=use_null,
        exclude_frequent=exclude_frequent,
        custom_rules=custom_rules,
    )


def _resolve_function(name: str) -> str:
    full_name = _FUNCTION_SHORTCUTS.get(name, name)
    if full_name in UNSUPPORTED_FUNCTIONS:
        raise illegal_argument(
            f"The '{full_name}' function is not supported by adjobs yet; supported functions: "
            + ", ".join(sorted(_ALL_FUNCTIONS - UNSUPPORTED_FUNCTIONS))
        )
    if full_name not in _ALL_FUNCTIONS:
        raise illegal_argument(f"Unknown function '{name}'")
    return full_name


def _check_detector_fields(
    function: str,
    field_name: str | None,
    by_field: str | None,
    over_field: str | None,
    partition_field: str | None,
) -> None:
    """The field rules of ES ``Detector.Builder.build``, in ES's order and wording."""
    has_field, has_by, has_over = bool(field_name), bool(by_field), bool(over_field)
    if (
        not (has_field or has_by or has_over)
        and function not in _COUNT_WITHOUT_FIELD_FUNCTIONS
    ):
        raise illegal_argument(
            "Unless a count or temporal function is used one of field_name, by_field_name or "
            "over_field_name must be set"
        )
    if not has_field and function in _FIELD_NAME_FUNCTIONS:
        raise illegal_argument(
            f"field_name must be set when the '{function}' function is used"
        )
    if has_field and function not in _FIELD_NAME_FUNCTIONS:
        raise illegal_argument(f"field_name cannot be used with function '{function}'")
    if not has_by and function in _BY_FIELD_NAME_FUNCTIONS:
        raise illegal_argument(
            f"by_field_name must be set when the '{function}' function is used"
        )
    if not has_over and function in _OVER_FIELD_NAME_FUNCTIONS:
        raise illegal_argument(
            f"over_field_name must be set when the '{function}' function is used"
        )
    if has_over and function in _NO_OVER_FIELD_NAME_FUNCTIONS:
        raise illegal_argument(
            f"over_field_name cannot be used with function '{function}'"
        )
    for name in (field_name, by_field, over_field, partition_field):
        _verify_field_name(name)
    if partition_field:
        if partition_field == by_field:
            raise illegal_argument(
                f"partition_field_name and by_field_name cannot be the same: '{partition_field}'"
            )
        if partition_field == over_field:
            raise illegal_argument(
                f"partition_field_name and over_field_name cannot be the same: '{partition_field}'"
            )
    if has_by and by_field == over_field:
        raise illegal_argument(
            f"by_field_name and over_field_name cannot be the same: '{by_field}'"
        )
    # The native process reserves these words (ES keeps the rule for the C++ side).
    for reserved in ("count", "by", "over"):
        for role, value in (
            ("by_field_name", by_field),
            ("over_field_name", over_field),
        ):
            if value == reserved:
                raise illegal_argument(
                    f"'{reserved}' is not a permitted value for {role}"
                )


def _verify_field_name(name: str | None) -> None:
    """ES ``Detector.Builder.verifyFieldName``: no ``"``, ``\\`` or control characters, not ``.``."""
    if name is None:
        return
    if '"' in name or "\\" in name or any(_is_iso_control(ch) for ch in name):
        raise illegal_argument(
            f"Invalid field name '{name}'. Field names including over, by and partition fields "
            'cannot contain any of these characters: ",\\'
        )
    if name == _CONTROL_FIELD_NAME:
        raise illegal_argument(
            f"Invalid field name '{name}'. Field names including over, by and partition fields "
            f"cannot be '{_CONTROL_FIELD_NAME}'"
        )


def _is_iso_control(ch: str) -> bool:
    code = ord(ch)
    return code <= 0x1F or 0x7F <= code <= 0x9F


def _check_field_name_length(name: str | None) -> None:
    if (
        name is not None
        and len(name.encode("utf-8", "surrogatepass")) > MAX_FIELD_NAME_BYTES
    ):
        raise illegal_argument(
            f"adjobs limit exceeded: field name [{name[:64]}...] is "
            f"{len(name.encode('utf-8', 'surrogatepass'))} bytes long; field names may be at "
            f"most {MAX_FIELD_NAME_BYTES} bytes (UTF-8)"
        )


def _default_detector_description(
    function: str,
    field_name: str | None,
    by_field: str | None,
    over_field: str | None,
    use_null: bool,
    partition_field: str | None,
    exclude_frequent: str | None,
) -> str:
    """ES ``DefaultDetectorDescription.of``, e.g. ``mean(responsetime) by airline``."""
    parts = [function]
    if field_name:
        parts.append(f"({_quote_field(field_name)})")
    if by_field:
        parts.append(f" by {_quote_field(by_field)}")
    if over_field:
        parts.append(f" over {_quote_field(over_field)}")
    if use_null:
        parts.append(" usenull=true")
    if partition_field:
        parts.append(f" partitionfield={_quote_field(partition_field)}")
    if exclude_frequent is not None:
        parts.append(f" excludefrequent={exclude_frequent}")
    return "".join(parts)


def _quote_field(name: str) -> str:
    """ES ``MlStrings.doubleQuoteIfNotAlphaNumeric`` (Java ``\\W`` is ASCII-only)."""
    if re.search(r"[^a-zA-Z0-9_]", name) is None:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# =========================================================================== other sections


def _parse_data_description(raw: dict) -> dict:
    """Parse ``data_description`` (ES ``DataDescription``, 7.x formats kept, D8)."""
    parser = "data_description"
    _reject_unknown(raw, _DATA_DESCRIPTION_FIELDS, parser)
    data_format = "xcontent"
    if "format" in raw:
        value = _get_str(raw, "format", parser)
        upper = value.upper()
        if upper in ("DELIMITED", "DELINEATED"):  # "delineated" is ES's legacy alias
            data_format = "delimited"
        elif upper == "XCONTENT":
            data_format = "xcontent"
        else:
            raise x_content_parse_exception(
                f"[{parser}] failed to parse field [format]: unknown format [{value}]; "
                "expected [xcontent] or [delimited]"
            )
    time_field = "time"
    if "time_field" in raw:
        time_field = _get_str(raw, "time_field", parser)
    time_format = "epoch_ms"
    if "time_format" in raw:
        time_format = _get_str(raw, "time_format", parser)
        _validate_time_format(time_format)
    field_delimiter = _get_single_char(raw, "field_delimiter", parser)
    quote_character = _get_single_char(raw, "quote_character", parser)
    if data_format == "delimited":
        field_delimiter = "\t" if field_delimiter is None else field_delimiter
        quote_character = '"' if quote_character is None else quote_character
    return {
        "format": data_format,
        "time_field": time_field,
        "time_format": time_format,
        "field_delimiter": field_delimiter,
        "quote_character": quote_character,
    }


def _validate_time_format(time_format: str) -> None:
    """Reject a pattern from which no full timestamp can be derived (post-data.md §4)."""
    if time_format in ("epoch", "epoch_ms"):
        return
    # Imported here: the time-format module is a sibling that the config must not
    # require at import time.
    from .timeformat import TimeFormatError, compile_time_format

    try:
        compile_time_format(time_format)
    except TimeFormatError:
        raise illegal_argument(f"Invalid Time format string '{time_format}'") from None


def _get_single_char(raw: dict, key: str, parser: str) -> str | None:
    value = _get_str(raw, key, parser)
    if value is not None and len(value) != 1:
        raise x_content_parse_exception(
            f"[{parser}] failed to parse field [{key}]: String must be a single character, "
            f"found [{value}]"
        )
    return value


def _parse_analysis_limits(raw: Any, parent: str) -> dict:
    """Parse ``analysis_limits``; returns only the keys that were given (ES units: MiB)."""
    parser = "analysis_limits"
    limits = _expect_object(raw, parent, parser)
    _reject_unknown(limits, _ANALYSIS_LIMITS_FIELDS, parser)
    out: dict[str, int] = {}
    if "model_memory_limit" in limits:
        value = limits["model_memory_limit"]
        if isinstance(value, str):
            memory_mb = _byte_size_to_mb(value, "model_memory_limit")
        elif _is_number(value):
            memory_mb = _get_long(limits, "model_memory_limit", parser)
        else:
            raise _wrong_type(parser, "model_memory_limit", value)
        if memory_mb < 1:
            raise illegal_argument(
                f"model_memory_limit must be at least 1 MiB. Value = {memory_mb:,}"
            )
        out["model_memory_limit"] = memory_mb
    if "categorization_examples_limit" in limits:
        examples = _get_long(limits, "categorization_examples_limit", parser)
        _check_not_less_than(0, "categorization_examples_limit", examples)
        out["categorization_examples_limit"] = examples
    return out


def _parse_model_plot_config(raw: Any, parent: str) -> dict:
    """Parse ``model_plot_config``; ``annotations_enabled`` defaults to ``enabled`` (ES)."""
    parser = "model_plot_config"
    config = _expect_object(raw, parent, parser)
    _reject_unknown(config, _MODEL_PLOT_FIELDS, parser)
    enabled = _get_bool(config, "enabled", parser)
    if enabled is None:
        raise illegal_argument("Required [enabled]")
    out: dict[str, Any] = {"enabled": enabled}
    terms = _get_str(config, "terms", parser)
    if terms is not None:
        out["terms"] = terms
    annotations = _get_bool(config, "annotations_enabled", parser)
    out["annotations_enabled"] = enabled if annotations is None else annotations
    return out


# =========================================================================== time values


@dataclass(frozen=True)
class _TimeValue:
    """An ES ``TimeValue``: a whole number of one unit."""

    duration: int
    unit: str

    @property
    def nanos(self) -> int:
        # Java's TimeUnit.toNanos saturates instead of overflowing.
        return max(
            _LONG_MIN, min(_LONG_MAX, self.duration * _TIME_UNIT_NANOS[self.unit])
        )

    @property
    def string_rep(self) -> str:
        """ES ``getStringRep``: how the value is echoed in the job object (e.g. ``1h``)."""
        return (
            str(self.duration) if self.duration < 0 else f"{self.duration}{self.unit}"
        )

    @property
    def human(self) -> str:
        """ES ``toString`` (``toHumanReadableString(1)``), used in error messages."""
        if self.duration < 0:
            return str(self.duration)
        nanos = self.nanos
        if nanos == 0:
            return "0s"
        for suffix in ("d", "h", "m", "s", "ms", "micros", "nanos"):
            scale = _TIME_UNIT_NANOS[suffix]
            if nanos >= scale:
                return _format_one_decimal(nanos / scale) + suffix
        raise AssertionError("unreachable")


_TIME_UNIT_NANOS = {
    "nanos": 1,
    "micros": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
}


def _format_one_decimal(value: float) -> str:
    """Java ``TimeValue.formatDecimal(value, 1)``: one decimal, truncated, ``.0`` dropped."""
    text = repr(value)
    integral, _, fraction = text.partition(".")
    digit = fraction[:1]
    return integral if not digit or digit == "0" else f"{integral}.{digit}"


def _parse_time_value(text: str, setting: str) -> _TimeValue:
    """ES ``TimeValue.parseTimeValue``: ``<integer><unit>``, units nanos/micros/ms/s/m/h/d.

    ``m`` is case-sensitive (``M`` would mean months); the other units are not. Bare
    ``0`` and ``-1`` need no unit. Exact integers, no floating point.
    """
    normalized = _java_trim(text.lower())
    for suffix in ("nanos", "micros", "ms", "s"):
        if normalized.endswith(suffix):
            return _TimeValue(
                _parse_time_number(text, normalized, suffix, setting), suffix
            )
    if text.endswith("m"):
        return _TimeValue(_parse_time_number(text, normalized, "m", setting), "m")
    for suffix in ("h", "d"):
        if normalized.endswith(suffix):
            return _TimeValue(
                _parse_time_number(text, normalized, suffix, setting), suffix
            )
    if re.fullmatch(r"-0*1", normalized):
        return _TimeValue(-1, "ms")
    if re.fullmatch(r"0+", normalized):
        return _TimeValue(0, "ms")
    raise illegal_argument(
        f"failed to parse setting [{setting}] with value [{text}] as a time value: unit is "
        "missing or unrecognized"
    )


def _parse_time_number(text: str, normalized: str, suffix: str, setting: str) -> int:
    number = _java_trim(normalized[: len(normalized) - len(suffix)])
    value = _java_parse_long(number)
    if value is None:
        if _looks_like_java_double(number):
            raise illegal_argument(
                f"failed to parse [{text}], fractional time values are not supported"
            )
        raise illegal_argument(f"failed to parse [{text}]")
    if value < -1:
        raise illegal_argument(
            f"failed to parse setting [{setting}] with value [{text}] as a time value: negative "
            "durations are not supported"
        )
    return value


def _check_positive(value: _TimeValue, setting: str) -> None:
    if value.nanos <= 0:
        raise illegal_argument(
            f"{setting} cannot be less or equal than 0. Value = {value.human}"
        )


def _check_multiple_of_seconds(value: _TimeValue, setting: str) -> None:
    if value.nanos % 1_000_000_000 != 0:
        raise illegal_argument(
            f"{setting} has to be a multiple of 1s; actual was '{value.human}'"
        )


# =========================================================================== byte sizes

_BYTE_UNITS = (
    ("k", 2**10),
    ("kb", 2**10),
    ("m", 2**20),
    ("mb", 2**20),
    ("g", 2**30),
    ("gb", 2**30),
    ("t", 2**40),
    ("tb", 2**40),
    ("p", 2**50),
    ("pb", 2**50),
)


def _byte_size_to_mb(text: str, setting: str) -> int:
    """ES ``ByteSizeValue.parseBytesSizeValue(...).getMb()``: whole MiB, truncated."""
    size = _parse_byte_size(text, setting)
    return size // 2**20 if size >= 0 else -((-size) // 2**20)


def _parse_byte_size(text: str, setting: str) -> int:
    if text in ("0", "0b", "0B"):
        return 0
    if text in ("1b", "1B"):
        return 1
    if text in ("-1", "-1b", "-1B"):
        return -1
    lower = _java_trim(text.lower())
    for suffix, scale in _BYTE_UNITS:
        if lower.endswith(suffix):
            return _parse_byte_number(
                text, _java_trim(lower[: -len(suffix)]), scale, setting
            )
    if lower.endswith("b"):
        number = _java_parse_long(_java_trim(lower[:-1]))
        if number is None:
            raise parse_exception(
                f"failed to parse setting [{setting}] with value [{text}]"
            )
        if number < -1:
            raise parse_exception(
                f"failed to parse setting [{setting}] with value [{text}] as a size in bytes"
            )
        return number
    raise parse_exception(
        f"failed to parse setting [{setting}] with value [{text}] as a size in bytes: unit is "
        "missing or unrecognized"
    )


def _parse_byte_number(text: str, number: str, scale: int, setting: str) -> int:
    whole = _java_parse_long(number)
    if whole is not None:
        # ES refuses -1 with a unit and anything below it.
        if whole < 0 or whole * scale > _LONG_MAX:
            raise parse_exception(
                f"failed to parse setting [{setting}] with value [{text}] as a size in bytes"
            )
        return whole * scale
    # ES accepts up to two decimals and rounds the byte count up.
    match = re.fullmatch(r"([+-]?)(\d*)\.(\d*)", number)
    if match is None or not (match.group(2) or match.group(3)) or match.group(1) == "-":
        raise parse_exception(
            f"failed to parse setting [{setting}] with value [{text}]"
        )
    if len(match.group(3)) > 2:
        raise parse_exception(
            f"failed to parse setting [{setting}] with more than two decimals in value [{text}]"
        )
    fraction = match.group(3) or "0"
    numerator = int((match.group(2) or "0") + fraction) * scale
    size = -(-numerator // 10 ** len(fraction))
    if size > _LONG_MAX:
        raise parse_exception(
            f"failed to parse setting [{setting}] with value beyond {_LONG_MAX}: [{text}]"
        )
    return size


# =========================================================================== JSON reading


def _token(value: Any) -> str:
    """The Jackson token name ES reports for a JSON value."""
    if value is None:
        return "VALUE_NULL"
    if isinstance(value, bool):
        return "VALUE_BOOLEAN"
    if isinstance(value, (int, float)):
        return "VALUE_NUMBER"
    if isinstance(value, str):
        return "VALUE_STRING"
    if isinstance(value, list):
        return "START_ARRAY"
    if isinstance(value, dict):
        return "START_OBJECT"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _wrong_type(parser: str, key: str, value: Any) -> ApiError:
    return x_content_parse_exception(
        f"[{parser}] {key} doesn't support values of type: {_token(value)}"
    )


def _expected_object(parser: str, value: Any) -> ApiError:
    return x_content_parse_exception(
        f"[{parser}] Expected START_OBJECT but was: {_token(value)}"
    )


def _inconsistent_id(body_id: str, path_id: str) -> ApiError:
    return illegal_argument(
        f"Inconsistent job_id; '{body_id}' specified in the body differs from '{path_id}' "
        "specified as a URL argument"
    )


def _expect_object(value: Any, parser: str, key: str | None = None) -> dict:
    """Return ``value`` if it is a JSON object, else the ES error for field ``key``."""
    if isinstance(value, dict):
        return value
    if key is None:
        raise _expected_object(parser, value)
    raise _wrong_type(parser, key, value)


def _reject_unknown(obj: dict, allowed: frozenset, parser: str) -> None:
    for key in obj:
        if key not in allowed:
            raise x_content_parse_exception(f"[{parser}] unknown field [{key}]")


def _object_list(value: Any, parser: str, key: str) -> list[dict]:
    """An ES object-array field: a list of objects, or one object standing for a list."""
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise _wrong_type(parser, key, value)
    for item in value:
        if not isinstance(item, dict):
            raise _wrong_type(parser, key, item)
    return value


def _get_str(obj: dict, key: str, parser: str, *, nullable: bool = False) -> str | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, str) or (value is None and nullable):
        return value
    raise _wrong_type(parser, key, value)


def _get_str_list(obj: dict, key: str, parser: str) -> list[str] | None:
    """An ES string-array field: a list of strings, or one string standing for a list."""
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _wrong_type(parser, key, value)
    for item in value:
        if not isinstance(item, str):
            raise _wrong_type(parser, key, item)
    return list(value)


def _get_long(obj: dict, key: str, parser: str) -> int | None:
    """An ES long field: a JSON number (fraction truncated, as ES does) or numeric string."""
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _wrong_type(parser, key, value)
    if isinstance(value, str):
        number = _java_parse_long(_java_trim(value))
        if number is None and _looks_like_java_double(_java_trim(value)):
            number = _truncate_float(float(_java_trim(value).rstrip("dDfF")))
    elif isinstance(value, float):
        number = _truncate_float(value)
    else:
        number = value
    if number is None or not _LONG_MIN <= number <= _LONG_MAX:
        raise x_content_parse_exception(
            f"[{parser}] failed to parse field [{key}]: value [{value}] is not a valid long"
        )
    return number


def _truncate_float(value: float) -> int | None:
    return int(value) if math.isfinite(value) else None


def _get_bool(obj: dict, key: str, parser: str) -> bool | None:
    """An ES boolean field: ``true``/``false``, or the strings ``"true"``/``"false"``."""
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in ("true", "false"):
            return value == "true"
        raise x_content_parse_exception(
            f"[{parser}] failed to parse field [{key}]: Failed to parse value [{value}] as only "
            "[true] or [false] are allowed."
        )
    raise _wrong_type(parser, key, value)


def _check_not_less_than(minimum: int, name: str, value: int | None) -> None:
    """ES ``Messages.JOB_CONFIG_FIELD_VALUE_TOO_LOW`` (MessageFormat groups digits)."""
    if value is not None and value < minimum:
        raise illegal_argument(
            f"{name} cannot be less than {minimum:,}. Value = {value:,}"
        )


def _java_trim(text: str) -> str:
    """Java ``String.trim``: strips characters up to U+0020, nothing else."""
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


def _java_parse_long(text: str) -> int | None:
    """Java ``Long.parseLong``: optional sign and ASCII digits, within 64 bits."""
    if re.fullmatch(r"[+-]?[0-9]+", text) is None:
        return None
    value = int(text)
    return value if _LONG_MIN <= value <= _LONG_MAX else None


def _looks_like_java_double(text: str) -> bool:
    """Roughly Java ``Double.parseDouble`` acceptance (decimal forms, NaN, Infinity)."""
    return (
        re.fullmatch(
            r"[+-]?(NaN|Infinity|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[fFdD]?)", text
        )
        is not None
    )
