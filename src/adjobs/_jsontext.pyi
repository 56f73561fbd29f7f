# Stubs for the compiled writer of result documents' JSON and rows (src/adjobs/_jsontext.pyx).
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

def encode(value: Any) -> str | None:
    """``json.dumps(value, separators=(",", ":"), allow_nan=False)``'s text, or None where
    that is for the json module to write or reject (other types, subclasses, non-finite
    floats, keys that are not strs, nesting deeper than 32)."""

class RowWriter:
    """The rows of adjobs.results' tables, made from dicts as ``_bucket_row``,
    ``_record_row`` and ``_influencer_row`` make them (which it calls for other mappings);
    ``dumps``/``dumps_ident`` write the texts that :func:`encode` declines."""

    def __init__(self, dumps: Callable[[Any], str], dumps_ident: Callable[[Any], str],
                 python_rows: Sequence[Callable[[Any, Any], tuple]]) -> None: ...
    def row(self, kind: int, job_id: Any, doc: Any) -> tuple:
        """The row of one document: ``kind`` 0 bucket, 1 record, 2 influencer."""
    def rows(self, kind: int, job_id: Any, docs: Iterable[Any],
             made: Mapping[int, tuple]) -> list[tuple]:
        """Each document's row: the one ``made`` holds for it (``id(doc) -> (job_id, doc,
        row)``) if it is this document's for this job, else a new one."""
