"""Data counts: the running totals of a job and the per-upload copy (spec §1).

ES keeps two copies of the counters: the job's running total (shown by job stats and
persisted) and an incremental copy reset at the start of every upload (the POST
response). :class:`DataCounts` is one copy; it serialises in ES's field order (§1.1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

COUNTERS = (
    "processed_record_count",
    "input_bytes",
    "input_field_count",
    "invalid_date_count",
    "missing_field_count",
    "out_of_order_timestamp_count",
    "empty_bucket_count",
    "sparse_bucket_count",
    "bucket_count",
)
TIMESTAMPS = (
    "earliest_record_timestamp",
    "latest_record_timestamp",
    "last_data_time",
    "latest_empty_bucket_timestamp",
    "latest_sparse_bucket_timestamp",
)


@dataclass
class DataCounts:
    """One copy of a job's data counts."""

    processed_record_count: int = 0
    input_bytes: int = 0
    input_field_count: int = 0
    invalid_date_count: int = 0
    missing_field_count: int = 0
    out_of_order_timestamp_count: int = 0
    empty_bucket_count: int = 0
    sparse_bucket_count: int = 0
    bucket_count: int = 0
    earliest_record_timestamp: int | None = None
    latest_record_timestamp: int | None = None
    last_data_time: int | None = None
    latest_empty_bucket_timestamp: int | None = None
    latest_sparse_bucket_timestamp: int | None = None
    log_time: int | None = None

    @property
    def input_record_count(self) -> int:
        return (
            self.processed_record_count
            + self.out_of_order_timestamp_count
            + self.invalid_date_count
        )

    def processed_field_count(self, analysed_fields_per_record: int) -> int:
        """``max(0, processed * k - missing)`` (§1.2), computed from this copy."""
        return max(
            0, self.processed_record_count * analysed_fields_per_record - self.missing_field_count
        )

    def add_counters(self, **deltas: int) -> None:
        for name, delta in deltas.items():
            setattr(self, name, getattr(self, name) + delta)

    def move_forward(self, name: str, value: int | None) -> None:
        """Set a "latest ..." timestamp only when it moves later (§1.5)."""
        if value is not None and value > 0:
            current = getattr(self, name)
            if current is None or value > current:
                setattr(self, name, value)

    def to_dict(
        self, job_id: str, analysed_fields_per_record: int, *, with_log_time: bool = True
    ) -> dict:
        """Serialise in ES's field order, omitting null dates (§1.1)."""
        out: dict = {
            "job_id": job_id,
            "processed_record_count": self.processed_record_count,
            "processed_field_count": self.processed_field_count(analysed_fields_per_record),
            "input_bytes": self.input_bytes,
            "input_field_count": self.input_field_count,
            "invalid_date_count": self.invalid_date_count,
            "missing_field_count": self.missing_field_count,
            "out_of_order_timestamp_count": self.out_of_order_timestamp_count,
            "empty_bucket_count": self.empty_bucket_count,
            "sparse_bucket_count": self.sparse_bucket_count,
            "bucket_count": self.bucket_count,
        }
        for name in TIMESTAMPS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["input_record_count"] = self.input_record_count
        if with_log_time and self.log_time is not None:
            out["log_time"] = self.log_time
        return out

    def to_state(self) -> dict:
        """Every stored field, for persistence."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict) -> DataCounts:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in state.items() if key in known})
