from typing import Any

import numpy as np
from numpy.typing import NDArray

FAILURE_NONE: int
FAILURE_MALFORMED_LIMIT: int
FAILURE_TRUNCATED: int
FAILURE_CSV_QUOTE: int
FAILURE_CSV_HEADER: int
FAILURE_CSV_ROW_TOO_LARGE: int
FAILURE_NO_MEMORY: int

def set_limits(
    *,
    depth: int | None = ...,
    document_bytes: int | None = ...,
    malformed: int | None = ...,
    quoted_lines: int | None = ...,
    distinct_values: int | None = ...,
    window_bytes: int | None = ...,
) -> dict[str, int]: ...
def simdjson_kernel() -> str: ...
def simdjson_version() -> str: ...
def bare_simdjson_scan(data: bytes | bytearray | memoryview) -> int: ...
def parse_time(program: bytes, text: bytes, default_year: int) -> int | None: ...
def parse_number(text: bytes) -> float: ...

class StringTable:
    limit_hits: int
    def __len__(self) -> int: ...
    def lookup(self, value: str) -> int: ...
    def values(self) -> list[str]: ...
    def raw_values(self, start: int = ...) -> list[bytes]: ...
    def extend(self, values: list[bytes]) -> None: ...
    def truncate(self, count: int) -> None: ...

class BucketDiagnostics:
    bucket_count: int
    empty_bucket_count: int
    sparse_bucket_count: int
    latest_empty_bucket_ms: int | None
    latest_sparse_bucket_ms: int | None
    def __init__(self, bucket_span_ms: int, latency_ms: int) -> None: ...
    def add(self, time_ms: int) -> None: ...
    def flush(self) -> None: ...
    def take_counts(self) -> tuple[int, int, int]: ...
    def get_state(self) -> dict[str, Any]: ...
    def set_state(self, state: dict[str, Any]) -> None: ...

class JobIngestState:
    latest_ms: int | None
    earliest_ms: int | None
    diagnostics: BucketDiagnostics
    strings: StringTable
    def __init__(
        self,
        bucket_span_ms: int,
        latency_ms: int,
        latest_ms: int | None = ...,
        earliest_ms: int | None = ...,
        strings: StringTable | None = ...,
    ) -> None: ...

class Upload:
    state: JobIngestState
    processed_record_count: int
    input_field_count: int
    invalid_date_count: int
    missing_field_count: int
    out_of_order_timestamp_count: int
    malformed_document_count: int
    input_bytes: int
    failure: int
    problem_line: int
    problem_offset: int
    consumed_at_failure: int
    csv_missing_field: str | None
    def __init__(self, plan: Any, state: JobIngestState) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def finish(self) -> None: ...
    @property
    def latest_record_timestamp(self) -> int | None: ...
    @property
    def earliest_record_timestamp(self) -> int | None: ...
    @property
    def csv_header(self) -> list[str] | None: ...
    @property
    def problem(self) -> tuple[int, int] | None: ...
    def take_batch(
        self,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int32]]: ...
