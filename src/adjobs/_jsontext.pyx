# The JSON text of result documents (adjobs.results): what json.dumps writes with
# separators=(",", ":"), ensure_ascii and allow_nan=False, to the character.
#
# A commit encodes every result document of an upload, hundreds at a time. The json module's
# C encoder builds a list of small strings per document and joins them; here the text goes
# straight into one growing buffer. Result documents hold only dicts, lists, strs, ints,
# floats, bools and None. Anything else (numpy scalars, subclasses, non-finite floats, keys
# that are not strs, deep nesting) is left to the json module: `encode` returns None, and
# the caller encodes that document as before, so the json module also raises its errors.

from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free
from cpython.number cimport PyNumber_Float
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.math cimport isfinite
from libc.stdint cimport uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

cdef extern from "adjobs_float.h":
    int ADJOBS_FLOAT_REPR_MAX
    # repr(value)'s text for a finite value, from std::to_chars; -1: ask Python
    int adjobs_float_repr(double value, char* out)

cdef extern from "Python.h":
    bint PyDict_CheckExact(object)
    bint PyList_CheckExact(object)
    bint PyTuple_CheckExact(object)
    bint PyUnicode_CheckExact(object)
    bint PyLong_CheckExact(object)
    bint PyFloat_CheckExact(object)
    Py_ssize_t PyList_GET_SIZE(object)
    Py_ssize_t PyTuple_GET_SIZE(object)
    void* PyList_GET_ITEM(object, Py_ssize_t)
    void* PyTuple_GET_ITEM(object, Py_ssize_t)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    int PyUnicode_KIND(object)
    int PyUnicode_1BYTE_KIND
    void* PyUnicode_DATA(object)
    # as a code point number (Cython would make a Py_UCS4 a one-character str)
    uint32_t PyUnicode_READ(int kind, void* data, Py_ssize_t index)
    char* PyOS_double_to_string(double value, char format_code, int precision, int flags,
                                int* kind)
    int Py_DTSF_ADD_DOT_0
    void PyErr_Clear()
    int PyDict_Next(object, Py_ssize_t* position, PyObject** key, PyObject** value)

cdef enum:
    DONE = 0
    UNSUPPORTED = 1  # for the json module to encode (or to reject)
    NO_MEMORY = 2

#: Containers deeper than this are left to the json module (documents nest 3 deep).
cdef int MAX_DEPTH = 32
cdef int FIRST_CAPACITY = 1024

cdef const char* HEX = b"0123456789abcdef"


cdef struct Text:
    char* data
    Py_ssize_t length
    Py_ssize_t capacity


cdef int reserve(Text* out, Py_ssize_t more) noexcept:
    cdef Py_ssize_t want = out.capacity
    cdef char* grown
    if out.length + more <= out.capacity:
        return DONE
    while want < out.length + more:
        want *= 2
    grown = <char*>realloc(out.data, want)
    if grown == NULL:
        return NO_MEMORY
    out.data = grown
    out.capacity = want
    return DONE


cdef inline int put(Text* out, const char* text, Py_ssize_t length) noexcept:
    if reserve(out, length) != DONE:
        return NO_MEMORY
    memcpy(out.data + out.length, text, length)
    out.length += length
    return DONE


cdef inline void put_unit(char* at, uint32_t unit) noexcept:
    # \uXXXX, lowercase hex as the json module writes it
    at[0] = c'\\'
    at[1] = c'u'
    at[2] = HEX[(unit >> 12) & 0xF]
    at[3] = HEX[(unit >> 8) & 0xF]
    at[4] = HEX[(unit >> 4) & 0xF]
    at[5] = HEX[unit & 0xF]


cdef int put_string(Text* out, object value) noexcept:
    """A str quoted and escaped as the json module's ensure_ascii encoder does."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(value), i
    cdef int kind = PyUnicode_KIND(value)
    cdef void* data = PyUnicode_DATA(value)
    cdef const unsigned char* latin1
    cdef uint32_t c
    cdef char* at
    if kind == PyUnicode_1BYTE_KIND:
        # Keys and most values are printable ASCII, nothing to escape: copied whole.
        latin1 = <const unsigned char*>data
        for i in range(n):
            c = latin1[i]
            if c < 0x20 or c > 0x7E or c == 0x22 or c == 0x5C:
                break
        else:
            if reserve(out, n + 2) != DONE:
                return NO_MEMORY
            at = out.data + out.length
            at[0] = c'"'
            memcpy(at + 1, latin1, n)
            at[n + 1] = c'"'
            out.length += n + 2
            return DONE
    # at most 12 characters per code point (a surrogate pair), and the quotes
    if reserve(out, 12 * n + 2) != DONE:
        return NO_MEMORY
    at = out.data + out.length
    at[0] = c'"'
    at += 1
    for i in range(n):
        c = PyUnicode_READ(kind, data, i)
        if c >= 0x20 and c <= 0x7E and c != 0x22 and c != 0x5C:
            at[0] = <char>c
            at += 1
            continue
        if c == 0x22 or c == 0x5C:
            at[0] = c'\\'
            at[1] = <char>c
            at += 2
        elif c == 0x08 or c == 0x0C or c == 0x0A or c == 0x0D or c == 0x09:
            at[0] = c'\\'
            at[1] = (c'b' if c == 0x08 else c'f' if c == 0x0C else c'n' if c == 0x0A
                     else c'r' if c == 0x0D else c't')
            at += 2
        elif c >= 0x10000:
            c -= 0x10000
            put_unit(at, 0xD800 | ((c >> 10) & 0x3FF))
            put_unit(at + 6, 0xDC00 | (c & 0x3FF))
            at += 12
        else:
            put_unit(at, c)
            at += 6
    at[0] = c'"'
    at += 1
    out.length = at - out.data
    return DONE


cdef int put_int(Text* out, object value) noexcept:
    cdef int overflow = 0
    cdef long long number = PyLong_AsLongLongAndOverflow(value, &overflow)
    cdef unsigned long long magnitude
    cdef char digits[24]
    cdef int at = 24
    if overflow:
        return UNSUPPORTED
    if number == -1:
        PyErr_Clear()  # -1 is also the error value; an exact int cannot fail here
    magnitude = <unsigned long long>(-(number + 1)) + 1 if number < 0 else <unsigned long long>number
    while True:
        at -= 1
        digits[at] = <char>(48 + magnitude % 10)  # '0' + digit
        magnitude //= 10
        if magnitude == 0:
            break
    if number < 0:
        at -= 1
        digits[at] = c'-'
    return put(out, &digits[at], 24 - at)


cdef int put_float(Text* out, double value) noexcept:
    cdef char* text
    cdef Py_ssize_t n = 0
    cdef int status
    if not isfinite(value):
        return UNSUPPORTED  # the json module raises its ValueError
    # float.__repr__, which the json module writes: written in place by adjobs_float.h
    # (dtoa, below, costs most of a document's time), by Python where that cannot
    if reserve(out, ADJOBS_FLOAT_REPR_MAX) != DONE:
        return NO_MEMORY
    n = adjobs_float_repr(value, out.data + out.length)
    if n >= 0:
        out.length += n
        return DONE
    n = 0
    text = PyOS_double_to_string(value, c'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    if text == NULL:
        PyErr_Clear()
        return NO_MEMORY
    while text[n] != 0:
        n += 1
    status = put(out, text, n)
    PyMem_Free(text)
    return status


cdef int put_value(Text* out, object value, int depth) noexcept:
    cdef Py_ssize_t i, n, position = 0
    cdef PyObject* key
    cdef PyObject* item
    cdef int status
    cdef bint first = True, is_list
    if value is None:
        return put(out, b"null", 4)
    if value is True:
        return put(out, b"true", 4)
    if value is False:
        return put(out, b"false", 5)
    if PyUnicode_CheckExact(value):
        return put_string(out, value)
    if PyFloat_CheckExact(value):
        return put_float(out, PyFloat_AS_DOUBLE(value))
    if PyLong_CheckExact(value):
        return put_int(out, value)
    if depth >= MAX_DEPTH:
        return UNSUPPORTED
    if PyDict_CheckExact(value):
        if put(out, b"{", 1) != DONE:
            return NO_MEMORY
        while PyDict_Next(value, &position, &key, &item):
            if not PyUnicode_CheckExact(<object>key):
                return UNSUPPORTED  # the json module converts or rejects other keys
            if not first and put(out, b",", 1) != DONE:
                return NO_MEMORY
            first = False
            status = put_string(out, <object>key)
            if status == DONE:
                status = put(out, b":", 1)
            if status == DONE:
                status = put_value(out, <object>item, depth + 1)
            if status != DONE:
                return status
        return put(out, b"}", 1)
    if PyList_CheckExact(value) or PyTuple_CheckExact(value):
        is_list = PyList_CheckExact(value)
        n = PyList_GET_SIZE(value) if is_list else PyTuple_GET_SIZE(value)
        if put(out, b"[", 1) != DONE:
            return NO_MEMORY
        for i in range(n):
            item = <PyObject*>(PyList_GET_ITEM(value, i) if is_list
                               else PyTuple_GET_ITEM(value, i))
            if i and put(out, b",", 1) != DONE:
                return NO_MEMORY
            status = put_value(out, <object>item, depth + 1)
            if status != DONE:
                return status
        return put(out, b"]", 1)
    return UNSUPPORTED


def encode(value):
    """The compact JSON text of ``value`` as ``json.dumps(value, separators=(",", ":"),
    allow_nan=False)`` writes it, or None where that is for the json module to write (or to
    reject): a value of another type than dict, list, tuple, str, int, float, bool or None
    (subclasses included), a non-finite float, a key that is not a str, or containers
    nested deeper than 32."""
    return encode_text(value)


cdef object encode_text(object value):
    """:func:`encode`'s text, or None."""
    cdef Text out
    cdef int status
    out.data = <char*>malloc(FIRST_CAPACITY)
    if out.data == NULL:
        return None
    out.length = 0
    out.capacity = FIRST_CAPACITY
    try:
        status = put_value(&out, value, 0)
        if status != DONE:
            return None
        return PyUnicode_DecodeASCII(out.data, out.length, NULL)
    finally:
        free(out.data)


# The rows of adjobs.results' three tables. A document's row is a tuple of about ten
# columns read from it, then its text: Python spent about a third as long on the columns
# as on the text. The columns are read here as results._bucket_row, _record_row and
# _influencer_row read them (the same conversions, in the same order; PyNumber_Float is
# Python's float(), where Cython's float() would parse a str its own way), for documents
# that are dicts; other mappings go to those functions.

cdef enum:
    BUCKET = 0
    RECORD = 1
    INFLUENCER = 2


cdef inline object float_or_none(object value):
    return None if value is None else PyNumber_Float(value)


cdef class RowWriter:
    """Makes the rows that adjobs.results writes, with its encoders for the texts this
    module leaves to the json module (``dumps`` for documents, ``dumps_ident`` for record
    identities) and its row functions for documents that are not dicts."""

    cdef object dumps
    cdef object dumps_ident
    cdef tuple python_rows

    def __init__(self, dumps, dumps_ident, python_rows):
        self.dumps = dumps
        self.dumps_ident = dumps_ident
        self.python_rows = tuple(python_rows)

    cdef object text(self, object doc):
        cdef object text = encode_text(doc)
        return self.dumps(doc) if text is None else text

    cdef tuple bucket_row(self, object job_id, dict doc):
        return (
            job_id,
            int(doc["timestamp"]),
            PyNumber_Float(doc.get("anomaly_score", 0.0)),
            float_or_none(doc.get("initial_anomaly_score")),
            doc.get("event_count"),
            1 if doc.get("is_interim") else 0,
            self.text(doc),
        )

    cdef tuple record_row(self, object job_id, dict doc):
        cdef list identity = [
            int(doc.get("detector_index", 0)),
            doc.get("partition_field_value"),
            doc.get("by_field_value"),
            doc.get("over_field_value"),
        ]
        cdef object ident = encode_text(identity)
        if ident is None:
            ident = self.dumps_ident(identity)
        return (
            job_id,
            int(doc["timestamp"]),
            ident,
            int(doc.get("detector_index", 0)),
            PyNumber_Float(doc.get("record_score", 0.0)),
            float_or_none(doc.get("initial_record_score")),
            float_or_none(doc.get("probability")),
            float_or_none(doc.get("raw_score")),
            1 if doc.get("is_interim") else 0,
            doc.get("partition_field_value"),
            doc.get("by_field_value"),
            doc.get("over_field_value"),
            doc.get("field_name"),
            doc.get("function"),
            self.text(doc),
        )

    cdef tuple influencer_row(self, object job_id, dict doc):
        return (
            job_id,
            int(doc["timestamp"]),
            str(doc["influencer_field_name"]),
            str(doc["influencer_field_value"]),
            PyNumber_Float(doc.get("influencer_score", 0.0)),
            float_or_none(doc.get("initial_influencer_score")),
            float_or_none(doc.get("probability")),
            float_or_none(doc.get("raw_score")),
            1 if doc.get("is_interim") else 0,
            self.text(doc),
        )

    cpdef tuple row(self, int kind, object job_id, object doc):
        """The row of one document of ``kind`` (0 bucket, 1 record, 2 influencer)."""
        if type(doc) is not dict:
            return self.python_rows[kind](job_id, doc)
        if kind == BUCKET:
            return self.bucket_row(job_id, <dict>doc)
        if kind == RECORD:
            return self.record_row(job_id, <dict>doc)
        return self.influencer_row(job_id, <dict>doc)

    def rows(self, int kind, object job_id, object docs, object made):
        """The rows of ``docs``: for each, the row ``made`` holds for it (``id(doc) ->
        (job_id, doc, row)``) if it is this document's for this job, else a new one."""
        cdef list out = []
        cdef object ready
        for doc in docs:
            ready = made.get(id(doc))
            if ready is not None and ready[1] is doc and ready[0] == job_id:
                out.append(ready[2])
            else:
                out.append(self.row(kind, job_id, doc))
        return out
