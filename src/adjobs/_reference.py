"""Pure-Python reference implementation of the upload reading and counting rules.

This module is the readable twin of the native core (``_core``): it implements
``docs/ingest-semantics.md`` (rules [R1]-[R6], [C1]-[C6] and "Records → counts") and
sections 1, 2, 3, 5 and 6c of ``shared/spec/post-data.md`` literally, one byte at a time,
with the standard library only. It is not fast; parity tests hold ``_core`` to it.

The limits are module-level constants (copied from :mod:`adjobs.plan`) and are read at
call time, so tests can lower them (``monkeypatch.setattr(_reference, "MAX_DEPTH", 4)``);
the native core takes the same constants.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field

from . import plan as _plan
from .plan import IngestPlan

__all__ = [
    "MALFORMED_JSON_REASON",
    "MAX_DEPTH",
    "MAX_DISTINCT_VALUES",
    "MAX_DOCUMENT_BYTES",
    "MAX_MALFORMED_DOCUMENTS",
    "MAX_QUOTED_LINES",
    "BucketDiagnostics",
    "Failure",
    "JobIngestState",
    "Record",
    "StringTable",
    "UploadResult",
    "open_job_state",
    "parse_decimal",
    "read_csv",
    "read_json",
    "run_upload",
]

# Limits (docs/ingest-semantics.md "Limits"). Read at call time so tests may override them;
# all must be >= 1.
MAX_DEPTH = _plan.MAX_DEPTH
MAX_DOCUMENT_BYTES = _plan.MAX_DOCUMENT_BYTES
MAX_MALFORMED_DOCUMENTS = _plan.MAX_MALFORMED_DOCUMENTS
MAX_QUOTED_LINES = _plan.MAX_QUOTED_LINES
MAX_DISTINCT_VALUES = _plan.MAX_DISTINCT_VALUES

MALFORMED_JSON_REASON = "The input JSON data is malformed."
PARSE_EXCEPTION = "parse_exception"
ILLEGAL_ARGUMENT_EXCEPTION = "illegal_argument_exception"

#: ln(avg) - ln(count) above this makes a reported bucket sparse (spec 2.4).
SPARSITY_THRESHOLD = 2.0
#: The window never holds fewer buckets than this (spec 2.1).
MIN_WINDOW_BUCKETS = 10

_BOM = b"\xef\xbb\xbf"
_NEWLINE = 0x0A
_OPEN_BRACE = 0x7B
_CLOSE_BRACE = 0x7D
_OPEN_BRACKET = 0x5B
_CLOSE_BRACKET = 0x5D
_QUOTE = 0x22
_BACKSLASH = 0x5C
_SLASH = 0x2F
_STAR = 0x2A
_COMMA = 0x2C
_COLON = 0x3A
_MINUS = 0x2D
_JSON_WHITESPACE = frozenset(b" \t\r\n")
_DIGITS = frozenset(b"0123456789")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {
    ord('"'): '"',
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}
_REPLACEMENT_CHARACTER = "\ufffd"

# Numeric field text: optional ASCII whitespace, sign, digits with optional fraction (or a
# bare fraction), optional exponent, optional ASCII whitespace ("Records → counts").
_JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_TOKEN_DELIMITERS = frozenset(b',]}:[{"/')
_DECIMAL_NUMBER = re.compile(
    rb"[ \t\n\r\f\v]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t\n\r\f\v]*"
)


# ---------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------


@dataclass
class Record:
    """One record as read from the body, before counting.

    Attributes
    ----------
    n_fields : int
        JSON: number of leaf fields ([R4], spec 3.3). CSV: number of header columns ([C1]).
    values : dict of str to str
        Input fields present in the record, mapped to their text ([R4], [C5]). Only
        ``plan.input_fields`` are kept.
    missing : int
        Number of input fields not present (JSON: absent or null; CSV: beyond the row, [C5]).
    malformed : bool
        Whether the record is a malformed JSON document or junk ([R5], [R2]).
    start, end : int
        Byte offsets of the record in the body, ``body[start:end]``.
    """

    n_fields: int
    values: dict[str, str]
    missing: int
    malformed: bool
    start: int
    end: int


@dataclass
class Failure:
    """Why an upload stopped early ([R6], [C3]-[C6]).

    Attributes
    ----------
    type : str
        ``"parse_exception"`` or ``"illegal_argument_exception"``.
    reason : str
        Human-readable reason, e.g. ``"The input JSON data is malformed."``.
    line : int
        1-based line of the first problem.
    offset : int
        0-based byte offset of the first problem.
    consumed : int
        ``input_bytes`` to report for the upload (spec D2).
    """

    type: str
    reason: str
    line: int
    offset: int
    consumed: int


@dataclass
class UploadResult:
    """What one upload produced.

    Attributes
    ----------
    counts : dict
        The upload's own counters (see :func:`run_upload`).
    failure : Failure or None
        Set when the upload failed; the counts still cover the records before it.
    time_ms : list of int
        Times of the processed records, in order.
    numeric : list of list of float
        One column per ``plan.numeric_fields``; NaN when absent or not a number.
    codes : list of list of int
        One column per ``plan.categorical_fields``; -1 when absent.
    """

    counts: dict
    failure: Failure | None
    time_ms: list[int]
    numeric: list[list[float]]
    codes: list[list[int]]


# ---------------------------------------------------------------------------------------
# Small arithmetic helpers
# ---------------------------------------------------------------------------------------


def _trunc_div(numerator: int, denominator: int) -> int:
    """Integer division truncating toward zero (Java ``/``), unlike Python's ``//``."""
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator < 0) == (denominator < 0) else -quotient


def _bucket_start(time_ms: int, bucket_span_ms: int) -> int:
    """Start of the bucket holding ``time_ms``: a true floor, also for negatives (spec 2.1)."""
    return (time_ms // bucket_span_ms) * bucket_span_ms


def _line_of(body: bytes, offset: int) -> int:
    """1-based line number of ``offset``: one plus the ``\\n`` bytes before it ([R1])."""
    return body.count(b"\n", 0, offset) + 1


def parse_decimal(text: str) -> float:
    """Read a numeric field's text as a decimal number, NaN when it is not one.

    Parameters
    ----------
    text : str
        Field text.

    Returns
    -------
    float
        The value; NaN unless the whole text matches the decimal-number grammar
        ("Records → counts"). Out-of-range values become +/-inf, as ``float`` does.
    """
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return math.nan
    if _DECIMAL_NUMBER.fullmatch(raw) is None:
        return math.nan
    return float(raw)


# ---------------------------------------------------------------------------------------
# JSON reader ([R1]-[R6])
# ---------------------------------------------------------------------------------------


class _Truncated(Exception):
    """The body ended while a document was open ([R6])."""


class _Broken(Exception):
    """A document is malformed at ``position`` ([R5] a-c); resynchronise from there."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


class _LineBreak(Exception):
    """The line rule fired ([R5] d): the document ends just before ``position`` (a ``{``)."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


class _JsonReader:
    """Byte-level reader of one JSON body.

    The document parser is recursive descent over bytes. Every byte of an open document
    is fetched through :meth:`_at`, which enforces the size limit ([R5] c) and detects
    truncation ([R6]); every ``\\n`` consumed inside a document goes through
    :meth:`_newline`, which applies the line rule ([R5] d). Completed fields are
    recorded as soon as their value ends, so an exception keeps them ([R5]).
    """

    def __init__(self, body: bytes, input_fields: tuple[str, ...]) -> None:
        self.body = body
        self.size = len(body)
        self.input_fields = input_fields
        self.input_set = frozenset(input_fields)
        # Per-document state, reset by _reset_document.
        self.limit = self.size
        self.depth = 0
        self.open_objects = 0
        self.seen_newline = False
        self.n_fields = 0
        self.values: dict[str, str] = {}
        self.in_string = False

    # -- byte access ---------------------------------------------------------------------

    def _at(self, index: int) -> int:
        """Byte ``index`` of the open document (raises on the size limit or end of body)."""
        if index >= self.limit and self.limit < self.size:
            # [R5 c] the document is still open at the first byte past the limit.
            raise _Broken(self.limit)
        if index >= self.size:
            raise _Truncated  # [R6]
        return self.body[index]

    def _newline(self, index: int) -> None:
        """Apply the line rule to the ``\\n`` at ``index`` ([R5] d)."""
        if self.seen_newline:
            return  # only the first \n after the opening { matters
        self.seen_newline = True
        following = index + 1
        # The document ends at this \n, so the byte after it is not subject to the size limit.
        if following < self.size and self.body[following] == _OPEN_BRACE:
            raise _LineBreak(following)

    def _skip_whitespace(self, index: int) -> int:
        """Skip whitespace and comments inside a document ([R3]); return the next byte's index."""
        while True:
            byte = self._at(index)
            if byte == _NEWLINE:
                self._newline(index)
                index += 1
            elif byte in _JSON_WHITESPACE:
                index += 1
            elif byte == _SLASH:
                second = self._at(index + 1)
                if second == _SLASH:
                    # Line comment: up to (not including) the \n, which is then whitespace.
                    index += 2
                    while self._at(index) != _NEWLINE:
                        index += 1
                elif second == _STAR:
                    index += 2
                    while True:
                        byte = self._at(index)
                        if byte == _NEWLINE:
                            self._newline(index)  # [R5 d] counts \n inside comments too
                        elif byte == _STAR and self._at(index + 1) == _SLASH:
                            index += 2
                            break
                        index += 1
                else:
                    raise _Broken(index)  # "/" must start a comment
            else:
                return index

    # -- scalars ---------------------------------------------------------------------------

    def _string(self, index: int) -> tuple[str, int]:
        """Read the JSON string starting at ``index`` (a ``"``); return its text and end."""
        code_points: list[int] = []
        index += 1
        self.in_string = True  # a break inside a string resynchronises inside it ([R5])
        while True:
            byte = self._at(index)
            if byte == _QUOTE:
                self.in_string = False
                return _join_code_points(code_points), index + 1
            if byte == _BACKSLASH:
                escape = self._at(index + 1)
                simple = _SIMPLE_ESCAPES.get(escape)
                if simple is not None:
                    code_points.append(ord(simple))
                    index += 2
                elif escape == ord("u"):
                    for digit_index in range(index + 2, index + 6):
                        if self._at(digit_index) not in _HEX_DIGITS:
                            raise _Broken(index)  # a bad escape breaks at its backslash
                    code_points.append(int(self.body[index + 2 : index + 6], 16))
                    index += 6
                else:
                    raise _Broken(index)  # a bad escape breaks at its backslash
            elif byte < 0x20:
                raise _Broken(index)  # [R3] no raw control bytes in strings
            elif byte < 0x80:
                code_points.append(byte)
                index += 1
            else:
                code_point, index = self._utf8_sequence(index)
                code_points.append(code_point)

    def _utf8_sequence(self, index: int) -> tuple[int, int]:
        """Decode one multi-byte UTF-8 sequence; the first byte that cannot continue a
        valid sequence is the error position ([R3], RFC 3629)."""
        lead = self._at(index)
        if 0xC2 <= lead <= 0xDF:
            ranges = [(0x80, 0xBF)]
            code_point = lead & 0x1F
        elif lead == 0xE0:
            ranges = [(0xA0, 0xBF), (0x80, 0xBF)]
            code_point = lead & 0x0F
        elif 0xE1 <= lead <= 0xEC or 0xEE <= lead <= 0xEF:
            ranges = [(0x80, 0xBF), (0x80, 0xBF)]
            code_point = lead & 0x0F
        elif lead == 0xED:  # excludes UTF-16 surrogates
            ranges = [(0x80, 0x9F), (0x80, 0xBF)]
            code_point = lead & 0x0F
        elif lead == 0xF0:
            ranges = [(0x90, 0xBF), (0x80, 0xBF), (0x80, 0xBF)]
            code_point = lead & 0x07
        elif 0xF1 <= lead <= 0xF3:
            ranges = [(0x80, 0xBF)] * 3
            code_point = lead & 0x07
        elif lead == 0xF4:  # nothing above U+10FFFF
            ranges = [(0x80, 0x8F), (0x80, 0xBF), (0x80, 0xBF)]
            code_point = lead & 0x07
        else:
            raise _Broken(index)
        lead_index = index
        for low, high in ranges:
            index += 1
            byte = self._at(index)
            if not low <= byte <= high:
                raise _Broken(lead_index)  # an invalid sequence breaks at its lead byte
            code_point = (code_point << 6) | (byte & 0x3F)
        return code_point, index + 1

    def _token(self, index: int, fetch) -> tuple[str, int]:
        """A number or literal: the run of bytes up to a delimiter (whitespace or one of
        ``,]}:[{"/``), which must be exactly a JSON number, ``true``, ``false`` or
        ``null``; otherwise the grammar breaks at its first byte ([R3])."""
        start = index
        while True:
            byte = fetch(index)
            if byte < 0 or byte in _JSON_WHITESPACE or byte in _TOKEN_DELIMITERS:
                break
            index += 1
        text = self.body[start:index]
        if text in (b"true", b"false", b"null") or _JSON_NUMBER.fullmatch(text):
            return text.decode("ascii"), index
        raise _Broken(start)

    def _scalar(self, index: int) -> tuple[str | None, int]:
        """Read a scalar value; its text (None for ``null``) and end."""
        byte = self._at(index)
        if byte == _QUOTE:
            return self._string(index)
        text, end = self._token(index, self._at)
        return (None if text == "null" else text), end

    # -- containers ------------------------------------------------------------------------

    def _enter(self, index: int) -> None:
        if self.depth + 1 > MAX_DEPTH:
            raise _Broken(index)  # [R5 b] the bracket that goes too deep
        self.depth += 1

    def _record_field(self, name: str, text: str) -> None:
        # [R4] every occurrence counts; the last non-null value wins (D3).
        self.n_fields += 1
        if name in self.input_set:
            self.values[name] = text

    def _value(self, index: int, name: str | None, leaves: list[str] | None) -> int:
        """Read one value. With ``leaves`` None it is the field ``name`` ([R4]); inside an
        array (``leaves`` a list) its non-null scalar leaves are appended instead."""
        byte = self._at(index)
        if byte == _OPEN_BRACE:
            if leaves is None:
                return self._object(index, name + ".", None)
            return self._object(index, "", leaves)
        if byte == _OPEN_BRACKET:
            if leaves is None:
                items: list[str] = []
                end = self._array(index, items)
                # The array is counted only once it has been read completely ([R4]).
                self._record_field(name, ",".join(items))
                return end
            return self._array(index, leaves)
        text, end = self._scalar(index)
        if text is not None:  # [R4] null is ignored entirely
            if leaves is None:
                self._record_field(name, text)
            else:
                leaves.append(text)
        return end

    def _object(self, index: int, prefix: str, leaves: list[str] | None) -> int:
        """Read the object opening at ``index``; return the index after its ``}``."""
        self._enter(index)
        self.open_objects += 1
        index = self._skip_whitespace(index + 1)
        byte = self._at(index)
        if byte != _CLOSE_BRACE:
            while True:
                if byte != _QUOTE:
                    raise _Broken(index)
                key, index = self._string(index)
                index = self._skip_whitespace(index)
                if self._at(index) != _COLON:
                    raise _Broken(index)
                index = self._skip_whitespace(index + 1)
                index = self._value(index, prefix + key, leaves)
                index = self._skip_whitespace(index)
                byte = self._at(index)
                if byte == _CLOSE_BRACE:
                    break
                if byte != _COMMA:
                    raise _Broken(index)
                index = self._skip_whitespace(index + 1)
                byte = self._at(index)
        self.open_objects -= 1
        self.depth -= 1
        return index + 1

    def _array(self, index: int, leaves: list[str]) -> int:
        """Read the array opening at ``index`` into ``leaves``; return the index after ``]``."""
        self._enter(index)
        index = self._skip_whitespace(index + 1)
        if self._at(index) != _CLOSE_BRACKET:
            while True:
                index = self._value(index, None, leaves)
                index = self._skip_whitespace(index)
                byte = self._at(index)
                if byte == _CLOSE_BRACKET:
                    break
                if byte != _COMMA:
                    raise _Broken(index)
                index = self._skip_whitespace(index + 1)
        self.depth -= 1
        return index + 1

    # -- documents -------------------------------------------------------------------------

    def _reset_document(self, start: int) -> None:
        self.limit = start + MAX_DOCUMENT_BYTES
        self.depth = 0
        self.open_objects = 0
        self.seen_newline = False
        self.n_fields = 0
        self.values = {}
        self.in_string = False

    def _make_record(self, start: int, end: int, malformed: bool) -> Record:
        missing = sum(1 for name in self.input_fields if name not in self.values)
        return Record(self.n_fields, self.values, missing, malformed, start, end)

    def _resynchronise(self, position: int, open_objects: int, in_string: bool) -> int | None:
        """Skip the rest of a malformed document ([R5]); return its end, None at end of body.

        Only strings (ending at an unescaped ``"`` or at any ``\\n``) and object depth are
        tracked, starting at the error position itself, inside the string when the break
        was inside one. A backslash in a string escapes the next byte, whatever it is.
        """
        body = self.body
        depth = open_objects
        index = position
        while index < self.size:
            byte = body[index]
            if in_string:
                if byte == _NEWLINE or byte == _QUOTE:
                    in_string = False
                elif byte == _BACKSLASH:
                    index += 1  # the escaped byte cannot close the string
            elif byte == _QUOTE:
                in_string = True
            elif byte == _OPEN_BRACE:
                if index > 0 and body[index - 1] == _NEWLINE:
                    return index  # a { starting a line starts the next document
                depth += 1
            elif byte == _CLOSE_BRACE:
                depth -= 1
                if depth == 0:
                    return index + 1
            index += 1
        return None

    def read_document(self, start: int) -> tuple[Record | None, int | None]:
        """Read the document opening at ``start``.

        Returns
        -------
        record : Record or None
            The record, or None when the body ended while it was open ([R6]).
        error_position : int or None
            Where the document became malformed, if it did.
        """
        self._reset_document(start)
        try:
            end = self._object(start, "", None)
        except _LineBreak as line_break:
            # [R5 d] the document ends at the \n; the { after it starts the next one.
            return self._make_record(start, line_break.position, True), line_break.position
        except _Broken as broken:
            end = self._resynchronise(broken.position, self.open_objects, self.in_string)
            if end is None:
                return None, broken.position
            return self._make_record(start, end, True), broken.position
        except _Truncated:
            return None, None
        return self._make_record(start, end, False), None

    # -- top level ([R2]) ------------------------------------------------------------------

    def _top_level_fetch(self, index: int) -> int:
        return self.body[index] if index < self.size else -1

    def skip_top_level_token(self, index: int) -> int | None:
        """End of the skippable item at ``index`` ([R2]), or None when it starts junk."""
        body = self.body
        byte = body[index]
        if byte in _JSON_WHITESPACE or byte in (_OPEN_BRACKET, _CLOSE_BRACKET, _COMMA):
            return index + 1
        if byte == _SLASH:
            if index + 1 < self.size and body[index + 1] == _SLASH:
                newline = body.find(b"\n", index + 2)
                return self.size if newline < 0 else newline
            if index + 1 < self.size and body[index + 1] == _STAR:
                close = body.find(b"*/", index + 2)
                return self.size if close < 0 else close + 2  # unterminated: to the end
            return None
        if byte == _QUOTE:
            self.limit = self.size  # no size limit between documents
            try:
                return self._string(index)[1]
            except (_Broken, _Truncated):
                return None
        try:
            return self._token(index, self._top_level_fetch)[1]
        except _Broken:
            return None


def _join_code_points(code_points: list[int]) -> str:
    """Build a string, pairing surrogate escapes; a lone surrogate becomes U+FFFD ([R3])."""
    characters: list[str] = []
    index = 0
    while index < len(code_points):
        code_point = code_points[index]
        if 0xD800 <= code_point <= 0xDBFF:
            if index + 1 < len(code_points) and 0xDC00 <= code_points[index + 1] <= 0xDFFF:
                low = code_points[index + 1]
                characters.append(chr(0x10000 + ((code_point - 0xD800) << 10) + (low - 0xDC00)))
                index += 2
                continue
            characters.append(_REPLACEMENT_CHARACTER)
        elif 0xDC00 <= code_point <= 0xDFFF:
            characters.append(_REPLACEMENT_CHARACTER)
        else:
            characters.append(chr(code_point))
        index += 1
    return "".join(characters)


def _malformed_json_failure(body: bytes, problem: int, consumed: int) -> Failure:
    return Failure(
        PARSE_EXCEPTION, MALFORMED_JSON_REASON, _line_of(body, problem), problem, consumed
    )


def read_json(body: bytes, plan: IngestPlan) -> tuple[list[Record], Failure | None]:
    """Split a JSON body into records ([R1]-[R6]).

    Parameters
    ----------
    body : bytes
        The whole request body (after HTTP decompression).
    plan : IngestPlan
        Supplies ``input_fields``, the fields whose values are kept.

    Returns
    -------
    records : list of Record
        Every record read, in order, up to the failure point.
    failure : Failure or None
        Set when the upload fails ([R6]).
    """
    # Each nesting level costs two Python frames in the recursive-descent reader.
    needed_frames = 3 * MAX_DEPTH + 200
    if sys.getrecursionlimit() < needed_frames:
        sys.setrecursionlimit(needed_frames)

    reader = _JsonReader(body, plan.input_fields)
    records: list[Record] = []
    malformed_count = 0
    first_problem: int | None = None
    size = len(body)
    index = len(_BOM) if body.startswith(_BOM) else 0  # [R1] skipped, but counted

    while index < size:
        if body[index] == _OPEN_BRACE:
            record, error_position = reader.read_document(index)
            if record is None:
                # [R6] the body ended while this document was open: it is not counted.
                if first_problem is None:
                    first_problem = index if error_position is None else error_position
                return records, _malformed_json_failure(body, first_problem, size)
            index = record.end
        else:
            next_index = reader.skip_top_level_token(index)
            if next_index is not None:
                index = next_index
                continue
            # [R2] junk: one malformed document with no fields, up to the next {.
            junk_end = body.find(b"{", index + 1)
            junk_end = size if junk_end < 0 else junk_end
            missing = len(plan.input_fields)
            record = Record(0, {}, missing, True, index, junk_end)
            error_position = index
            index = junk_end
        records.append(record)
        if record.malformed:
            malformed_count += 1
            if first_problem is None:
                first_problem = error_position
            if malformed_count >= MAX_MALFORMED_DOCUMENTS:
                # [R6] the 100th malformed document is counted, then the upload fails.
                return records, _malformed_json_failure(body, first_problem, record.end)
    return records, None


# ---------------------------------------------------------------------------------------
# Delimited (CSV) reader ([C1]-[C6])
# ---------------------------------------------------------------------------------------


class _CsvError(Exception):
    def __init__(self, reason: str, position: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


def _read_csv_row(
    body: bytes, start: int, delimiter: bytes, quote: bytes
) -> tuple[list[bytes], int, int]:
    """Read the row starting at ``start`` ([C2], [C3]).

    Returns
    -------
    cells : list of bytes
        The row's cells, the trailing ``\\r`` of the row already stripped.
    content_end : int
        End of the row's bytes after stripping one trailing ``\\r``.
    next_start : int
        Where the next row starts (after the ``\\n``, or the end of the body).
    """
    size = len(body)
    row_limit = start + MAX_DOCUMENT_BYTES

    def check_size(index: int) -> None:
        # [C6] a row longer than the size limit fails; the terminating \n does not count.
        if index >= row_limit:
            raise _CsvError(
                f"CSV row starting on line {_line_of(body, start)} is longer than "
                f"{MAX_DOCUMENT_BYTES} bytes",
                row_limit,
            )

    cells: list[bytes] = []
    index = start
    while True:
        # One cell starts at `index`.
        cell = bytearray()
        if body.startswith(quote, index):
            quote_start = index
            lines_in_value = 1
            check_size(index)
            index += len(quote)
            while True:
                if index >= size:
                    raise _CsvError(
                        "unexpected end of file while reading quoted column beginning on "
                        f"line {_line_of(body, quote_start)} and ending on line "
                        f"{_line_of(body, size)}",
                        quote_start,
                    )
                check_size(index)
                if body.startswith(quote, index):
                    if body.startswith(quote, index + len(quote)):
                        cell += quote  # "" stands for one quote
                        index += 2 * len(quote)
                        continue
                    index += len(quote)  # closing quote
                    break
                if body[index] == _NEWLINE:
                    lines_in_value += 1
                    if lines_in_value > MAX_QUOTED_LINES:
                        quote_line = _line_of(body, quote_start)
                        raise _CsvError(
                            "max number of lines to read exceeded while reading quoted column "
                            f"beginning on line {quote_line} and ending on line "
                            f"{quote_line + lines_in_value - 1}",
                            quote_start,
                        )
                cell.append(body[index])
                index += 1
        # Unquoted text, or the text after a closing quote, up to the delimiter or row end.
        row_end = body.find(b"\n", index)
        row_end = size if row_end < 0 else row_end
        stop = body.find(delimiter, index, row_end)
        stop = row_end if stop < 0 else stop
        if stop > index:
            check_size(stop - 1)
        cell += body[index:stop]
        index = stop
        cells.append(bytes(cell))
        if index < size and body[index] != _NEWLINE:
            check_size(index)
            index += len(delimiter)
            continue
        break
    next_start = index + 1 if index < size else size
    content_end = index
    if content_end > start and body[content_end - 1] == 0x0D:
        content_end -= 1  # [C2] one trailing \r is stripped from each row
        cells[-1] = cells[-1][:-1]
    return cells, content_end, next_start


def _csv_failure(body: bytes, error: _CsvError, row_start: int) -> Failure:
    # D2: a failed CSV upload consumed the bytes up to the row where the error was found.
    return Failure(
        PARSE_EXCEPTION, error.reason, _line_of(body, error.position), error.position, row_start
    )


def read_csv(body: bytes, plan: IngestPlan) -> tuple[list[Record], Failure | None]:
    """Split a delimited body into records ([C1]-[C6]).

    Parameters
    ----------
    body : bytes
        The whole request body.
    plan : IngestPlan
        Supplies ``input_fields``, ``field_delimiter`` and ``quote_character``.

    Returns
    -------
    records : list of Record
        One record per non-empty row after the header, up to the failure point.
    failure : Failure or None
        Set when the upload fails ([C3], [C4], [C6]).
    """
    delimiter = plan.field_delimiter.encode("utf-8")
    quote = plan.quote_character.encode("utf-8")
    size = len(body)
    index = len(_BOM) if body.startswith(_BOM) else 0  # [C2]
    header: list[str] | None = None
    column_of: dict[str, int] = {}
    records: list[Record] = []

    while index < size:
        row_start = index
        try:
            cells, content_end, index = _read_csv_row(body, row_start, delimiter, quote)
        except _CsvError as error:
            return records, _csv_failure(body, error, row_start)
        if content_end == row_start:
            continue  # [C2] empty rows are not records (nor a header)
        texts = [cell.decode("utf-8", errors="replace") for cell in cells]
        if header is None:
            header = texts  # [C1]
            for column, name in enumerate(header):
                column_of.setdefault(name, column)  # a repeated column name: the first one
            for name in plan.input_fields:
                if name not in column_of:
                    # [C4] checked against the header before any row is read.
                    reason = (
                        f"Field configured for analysis '{name}' is not in the CSV header "
                        f"'[{', '.join(header)}]'"
                    )
                    failure = Failure(
                        ILLEGAL_ARGUMENT_EXCEPTION,
                        reason,
                        _line_of(body, row_start),
                        row_start,
                        row_start,
                    )
                    return records, failure
            continue
        values: dict[str, str] = {}
        missing = 0
        for name in plan.input_fields:
            column = column_of[name]
            if column < len(texts):
                values[name] = texts[column]  # an empty cell is present ([C5])
            else:
                missing += 1  # [C5] beyond the row's last cell
        records.append(Record(len(header), values, missing, False, row_start, index))
    return records, None


# ---------------------------------------------------------------------------------------
# Bucket diagnostics (spec section 2)
# ---------------------------------------------------------------------------------------


class BucketDiagnostics:
    """Empty and sparse bucket detection over a moving window (spec 2.1-2.4).

    Parameters
    ----------
    bucket_span_ms : int
        Bucket span in milliseconds (> 0).
    latency_ms : int
        Analysis latency in milliseconds (>= 0).

    Attributes
    ----------
    latest_empty_bucket_ms, latest_sparse_bucket_ms : int or None
        Start of the latest empty / sparse bucket reported since this object was created,
        if any and > 0. Never reset; only moves forward (spec 1.3, 2.4).
    """

    def __init__(self, bucket_span_ms: int, latency_ms: int) -> None:
        self.bucket_span_ms = bucket_span_ms
        # W = max(ceil(lat / span), 10) (spec 2.1).
        self.capacity = max(-(-latency_ms // bucket_span_ms), MIN_WINDOW_BUCKETS)
        self._counts = [0] * self.capacity
        self._latest: int | None = None  # None: the window is empty
        self._earliest = 0
        self._moving = 0
        self._last_flushed = -1  # spec 2.1: initially -1, so buckets <= -1 are never reported
        self._bucket_count = 0
        self._empty_bucket_count = 0
        self._sparse_bucket_count = 0
        self.latest_empty_bucket_ms: int | None = None
        self.latest_sparse_bucket_ms: int | None = None

    def _slot(self, bucket_start: int) -> int:
        return (bucket_start // self.bucket_span_ms) % self.capacity

    def _size(self) -> int:
        return (self._latest - self._earliest) // self.bucket_span_ms + 1

    def add(self, t_ms: int) -> None:
        """Add one processed record (or the phantom seed, spec 2.3) at ``t_ms`` (spec 2.2)."""
        span = self.bucket_span_ms
        bucket = _bucket_start(t_ms, span)
        if self._latest is None:
            self._latest = self._earliest = bucket
        while bucket > self._latest:
            next_bucket = self._latest + span
            if self._slot(next_bucket) == self._slot(self._earliest):
                if self._moving == 0 and bucket - self._latest > self.capacity * span:
                    # A full window of zeros: report the run of empty buckets at once.
                    skip = (bucket - self._latest) // span - self.capacity
                    self._report_empty_run(self._earliest, skip)
                    self._earliest += skip * span
                    self._latest += skip * span
                    continue
                # The window is full: report the earliest bucket, then drop it.
                earliest_count = self._counts[self._slot(self._earliest)]
                self._report(self._earliest, earliest_count)
                self._moving -= earliest_count
                self._earliest += span
            self._counts[self._slot(next_bucket)] = 0
            self._latest = next_bucket
        self._counts[self._slot(bucket)] += 1
        self._moving += 1
        self._earliest = min(self._earliest, bucket)

    def _report_empty_run(self, first: int, n: int) -> None:
        """Report ``n`` consecutive empty buckets from ``first``, as ``_report`` would."""
        span = self.bucket_span_ms
        last = first + (n - 1) * span
        if n <= 0 or last <= self._last_flushed:
            return
        lowest = max(first, -(-(self._last_flushed + 1) // span) * span)
        reported = (last - lowest) // span + 1
        self._bucket_count += reported
        self._empty_bucket_count += reported
        self._last_flushed = last
        if last > 0:
            self.latest_empty_bucket_ms = max(self.latest_empty_bucket_ms or last, last)

    def _report(self, bucket_start: int, count: int) -> None:
        """Report one bucket, at most once (spec 2.4)."""
        if bucket_start <= self._last_flushed:
            return
        self._last_flushed = bucket_start
        self._bucket_count += 1
        if count == 0:
            self._empty_bucket_count += 1
            if bucket_start > 0 and (
                self.latest_empty_bucket_ms is None or bucket_start > self.latest_empty_bucket_ms
            ):
                self.latest_empty_bucket_ms = bucket_start
            return
        average = self._moving / self._size()
        if math.log(average) - math.log(count) > SPARSITY_THRESHOLD:
            self._sparse_bucket_count += 1
            if bucket_start > 0 and (
                self.latest_sparse_bucket_ms is None or bucket_start > self.latest_sparse_bucket_ms
            ):
                self.latest_sparse_bucket_ms = bucket_start

    def flush(self) -> None:
        """End-of-upload flush: report every bucket from the earliest up to but excluding
        the latest, in time order (spec 2.4)."""
        if self._latest is None:
            return
        bucket = self._earliest
        while bucket < self._latest:
            self._report(bucket, self._counts[self._slot(bucket)])
            bucket += self.bucket_span_ms

    def take_counts(self) -> tuple[int, int, int]:
        """Return ``(bucket_count, empty_bucket_count, sparse_bucket_count)`` produced since
        the last call, and reset them."""
        counts = (self._bucket_count, self._empty_bucket_count, self._sparse_bucket_count)
        self._bucket_count = self._empty_bucket_count = self._sparse_bucket_count = 0
        return counts


# ---------------------------------------------------------------------------------------
# Job state and counting
# ---------------------------------------------------------------------------------------


class StringTable:
    """The job's interned by/over/partition/influencer values.

    A value's code is its index, first seen first. Past :data:`MAX_DISTINCT_VALUES`
    distinct values, new values get code -1 and each such lookup counts in
    ``series_limit_hits``.
    """

    def __init__(self) -> None:
        self.values: list[str] = []
        self._codes: dict[str, int] = {}
        self.series_limit_hits = 0

    def __len__(self) -> int:
        return len(self.values)

    def intern(self, text: str) -> int:
        """Code of ``text``, adding it when new and the table is not full."""
        code = self._codes.get(text)
        if code is not None:
            return code
        if len(self.values) >= MAX_DISTINCT_VALUES:
            self.series_limit_hits += 1
            return -1
        code = len(self.values)
        self.values.append(text)
        self._codes[text] = code
        return code


@dataclass(kw_only=True)
class JobIngestState:
    """What survives between uploads of an open job.

    Attributes
    ----------
    latest_ms : int or None
        Total ``latest_record_timestamp``, the source of ``L`` (spec 5).
    earliest_ms : int or None
        Total ``earliest_record_timestamp``.
    diagnostics : BucketDiagnostics
        The bucket diagnostics window since the job was opened.
    strings : StringTable
        The job's interned categorical values.
    """

    latest_ms: int | None = None
    earliest_ms: int | None = None
    diagnostics: BucketDiagnostics
    strings: StringTable = field(default_factory=StringTable)


def open_job_state(
    plan: IngestPlan,
    latest_ms: int | None = None,
    earliest_ms: int | None = None,
    strings: StringTable | None = None,
) -> JobIngestState:
    """State of a job being opened, with the diagnostics seeded (spec 2.3).

    Parameters
    ----------
    plan : IngestPlan
        Supplies the bucket span and latency.
    latest_ms, earliest_ms : int or None
        The persisted ``latest_record_timestamp`` / ``earliest_record_timestamp``.
    strings : StringTable, optional
        The job's string table, kept across a reopen.
    """
    diagnostics = BucketDiagnostics(plan.bucket_span_ms, plan.latency_ms)
    if latest_ms is not None:
        diagnostics.add(latest_ms)  # the phantom seed
    return JobIngestState(
        latest_ms=latest_ms,
        earliest_ms=earliest_ms,
        diagnostics=diagnostics,
        strings=strings if strings is not None else StringTable(),
    )


def _compile_time_parser(time_format: str):
    # Imported lazily: the time-format module is independent of the reading rules.
    from .timeformat import compile_time_format

    return compile_time_format(time_format)


def run_upload(plan: IngestPlan, state: JobIngestState, body: bytes) -> UploadResult:
    """Read one upload and count its records ("Records → counts", spec 1.2, 5).

    The diagnostics are fed but not flushed: the job service flushes them at the end of
    a successful upload (spec 1.2).

    Parameters
    ----------
    plan : IngestPlan
        The job's ingest plan.
    state : JobIngestState
        The open job's state; updated in place.
    body : bytes
        The request body.

    Returns
    -------
    UploadResult
        ``counts`` holds ``processed_record_count``, ``input_bytes``, ``input_field_count``,
        ``invalid_date_count``, ``missing_field_count``, ``out_of_order_timestamp_count``,
        ``latest_record_timestamp`` (incremental rule of spec 1.3; None if absent),
        ``earliest_record_timestamp`` (None unless this upload set the job's first) and
        ``malformed_document_count``.
    """
    reader = read_json if plan.format == "json" else read_csv
    records, failure = reader(body, plan)
    parse_time = _compile_time_parser(plan.time_format).parse

    span = plan.bucket_span_ms
    latency_s = _trunc_div(plan.latency_ms, 1000)
    time_field = plan.time_field
    numeric_fields = plan.numeric_fields
    categorical_fields = plan.categorical_fields
    strings = state.strings
    diagnostics = state.diagnostics

    processed = input_fields = invalid_dates = missing_fields = out_of_order = malformed = 0
    latest = state.latest_ms if state.latest_ms is not None else 0  # L, spec 5
    latest_this_upload = 0
    incremental_latest: int | None = None
    incremental_earliest: int | None = None
    time_ms: list[int] = []
    numeric: list[list[float]] = [[] for _ in numeric_fields]
    codes: list[list[int]] = [[] for _ in categorical_fields]

    for record in records:
        if record.malformed:
            malformed += 1
        fields_for_record = max(record.n_fields - 1, 0)  # f, spec 1.2
        missing_fields += record.missing  # 1. before the date is examined
        time_text = record.values.get(time_field)
        t = None if time_text is None else parse_time(time_text, plan.default_year)
        if t is None:  # 2. invalid date (an absent time field is invalid)
            invalid_dates += 1
            input_fields += fields_for_record
            continue
        # Categorical values of every record with a valid time get codes, out-of-order
        # ones included (docs/ingest-semantics.md, "Records → counts").
        record_codes = [
            -1 if record.values.get(name) is None else strings.intern(record.values[name])
            for name in categorical_fields
        ]
        # 3. out of order relative to the start of the latest record's bucket (spec 5).
        if _trunc_div(t, 1000) < _trunc_div(_bucket_start(latest, span), 1000) - latency_s:
            out_of_order += 1
            input_fields += fields_for_record
            if t > latest_this_upload:
                latest_this_upload = t
                incremental_latest = t
            continue
        # 4. processed.
        latest = max(latest, t)
        latest_this_upload = latest
        processed += 1
        input_fields += fields_for_record
        incremental_latest = latest
        state.latest_ms = latest
        if state.earliest_ms is None:
            state.earliest_ms = incremental_earliest = t
        diagnostics.add(t)
        time_ms.append(t)
        for column, name in zip(numeric, numeric_fields):
            text = record.values.get(name)
            column.append(math.nan if text is None else parse_decimal(text))
        for column, code in zip(codes, record_codes):
            column.append(code)

    counts = {
        "processed_record_count": processed,
        "input_bytes": failure.consumed if failure is not None else len(body),
        "input_field_count": input_fields,
        "invalid_date_count": invalid_dates,
        "missing_field_count": missing_fields,
        "out_of_order_timestamp_count": out_of_order,
        "latest_record_timestamp": incremental_latest,
        "earliest_record_timestamp": incremental_earliest,
        "malformed_document_count": malformed,
    }
    return UploadResult(counts, failure, time_ms, numeric, codes)
