"""What the ingest readers need to know about a job, flattened for the hot loop.

An :class:`IngestPlan` is derived once from a job's configuration and shared by the
native core (``_core``) and the pure-Python reference (``_reference``), so both read
uploads by exactly the same rules (see ``docs/ingest-semantics.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

# What the reader keeps of an analysis field's value for the output arrays.
KIND_TEXT = 0  # presence only (e.g. categorization field)
KIND_NUMERIC = 1  # float64 column, NaN when absent or not a number
KIND_CATEGORICAL = 2  # int32 code into the job's string table, -1 when absent

MAX_INPUT_FIELDS = 64
MAX_DEPTH = 256
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
MAX_MALFORMED_DOCUMENTS = 100
MAX_QUOTED_LINES = 10_000
MAX_DISTINCT_VALUES = 1_000_000


@dataclass(frozen=True)
class IngestPlan:
    """Everything an upload reader needs, in plain values.

    ``input_fields[0]`` is always the time field; the rest are the analysis fields
    (spec §1.4) in configuration order, each with a kind from ``field_kinds``.
    """

    format: str  # "json" or "csv"
    input_fields: tuple[str, ...]
    field_kinds: tuple[int, ...]  # one per input_fields[1:]
    time_format: str
    time_program: bytes
    default_year: int
    bucket_span_ms: int
    latency_ms: int
    field_delimiter: str = "\t"
    quote_character: str = '"'

    @property
    def time_field(self) -> str:
        return self.input_fields[0]

    @property
    def analysed_fields_per_record(self) -> int:
        """``k`` of spec §1.2: input fields minus the time field."""
        return len(self.input_fields) - 1

    @property
    def numeric_fields(self) -> tuple[str, ...]:
        return tuple(
            name
            for name, kind in zip(self.input_fields[1:], self.field_kinds)
            if kind == KIND_NUMERIC
        )

    @property
    def categorical_fields(self) -> tuple[str, ...]:
        return tuple(
            name
            for name, kind in zip(self.input_fields[1:], self.field_kinds)
            if kind == KIND_CATEGORICAL
        )
