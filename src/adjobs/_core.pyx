# Native ingest core: reads uploads (JSON and CSV) into records and counts them.
#
# The reading contract is docs/ingest-semantics.md; rule names in comments ([R5], [C3])
# refer to it, and spec section numbers to shared/spec/post-data.md. Directives are set
# once, in setup.py.
#
# Shape of the hot loop (two phases, as in pandas' tslibs): the `def` methods check
# arguments and manage Python objects; one `with nogil:` block then runs `noexcept nogil`
# kernels that return status codes. Errors cross the boundary as data (code, line, byte
# offset), and a malformed record is counted, never raised.
#
# JSON is read in two gears. The fast gear runs simdjson's stage 1 over a window of the
# upload and walks the structural index (`_walk`). Whenever anything is unusual (a syntax
# error, a comment, junk, the line rule, limits) it hands over to the tolerant gear
# (`_tol_*`), a byte-level reader that is the authority on the rules, and takes back
# control at the next document that stage 1 indexed consistently.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.pythread cimport (
    NOWAIT_LOCK,
    PY_LOCK_ACQUIRED,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_start_new_thread,
    PyThread_type_lock,
)
from libc.math cimport NAN, log
from posix.unistd cimport getpid
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc, strtod
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

cimport adjobs._simdjson as sj

import numpy as np

ctypedef void (*thread_function)(void *) noexcept nogil

cdef extern from "pythread.h":
    unsigned long PYTHREAD_INVALID_THREAD_ID

cdef extern from "adjobs_time.h" nogil:
    int adjobs_time_parse(const int32_t *prog, size_t prog_len, const char *text,
                          size_t length, int32_t default_year, int64_t *out_ms) noexcept

# ---------------------------------------------------------------------------------------
# Limits (mirrored in adjobs/plan.py and documented in docs/ingest-semantics.md)

DEF MAX_FIELDS = 64
DEF PATH_CAPACITY = 2048
DEF KEY_CAPACITY = 2048

cdef int64_t max_depth = 256
cdef int64_t max_document_bytes = 8 * 1024 * 1024
cdef int64_t max_malformed = 100
cdef int64_t max_quoted_lines = 10000
cdef int64_t max_distinct_values = 1000000
# Below this many buffered bytes a non-final feed waits for more data before indexing,
# so that stage 1 always runs over reasonably large windows.
cdef int64_t min_window_bytes = 1 << 20


def set_limits(*, depth=None, document_bytes=None, malformed=None, quoted_lines=None,
               distinct_values=None, window_bytes=None):
    """Override reader limits (tests use small ones). Returns the previous values."""
    global max_depth, max_document_bytes, max_malformed, max_quoted_lines
    global max_distinct_values, min_window_bytes
    previous = dict(depth=max_depth, document_bytes=max_document_bytes,
                    malformed=max_malformed, quoted_lines=max_quoted_lines,
                    distinct_values=max_distinct_values, window_bytes=min_window_bytes)
    if depth is not None:
        max_depth = depth
    if document_bytes is not None:
        max_document_bytes = document_bytes
    if malformed is not None:
        max_malformed = malformed
    if quoted_lines is not None:
        max_quoted_lines = quoted_lines
    if distinct_values is not None:
        max_distinct_values = distinct_values
    if window_bytes is not None:
        min_window_bytes = window_bytes
    return previous


# Field kinds (adjobs/plan.py)
cdef enum:
    KIND_TEXT = 0
    KIND_NUMERIC = 1
    KIND_CATEGORICAL = 2

# Upload status codes; `failure_kind` maps them to exceptions in Python.
cdef enum:
    FAIL_NONE = 0
    FAIL_MALFORMED_LIMIT = 1
    FAIL_TRUNCATED = 2
    FAIL_CSV_QUOTE = 3
    FAIL_CSV_HEADER = 4
    FAIL_CSV_ROW_TOO_LARGE = 5
    FAIL_NO_MEMORY = 6

# Results of the JSON gears.
cdef enum:
    R_OK = 0
    R_ERROR = 1        # grammar error at cursor.err_pos
    R_LIMIT = 2        # the cursor reached its limit (data end, line rule, size limit)
    R_WAIT = 3         # need more data
    R_FALLBACK = 4     # fast gear: hand over to the tolerant gear
    R_DONE = 5
    R_FAILED = 6       # the upload failed
    R_RESUME = 7       # tolerant gear: the fast gear can take over again

# Streaming states of the tolerant gear between documents.
cdef enum:
    TOP = 0
    TOP_LINE_COMMENT = 1
    TOP_BLOCK_COMMENT = 2
    TOP_JUNK = 3
    TOP_SKIP = 4

cdef inline bint is_ws(uint8_t c) noexcept nogil:
    return c == 32 or c == 10 or c == 13 or c == 9

cdef inline bint is_digit(uint8_t c) noexcept nogil:
    return c >= 48 and c <= 57

cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a // b  # Cython's // on C ints follows Python: floor
    return q

cdef inline int64_t trunc_div(int64_t a, int64_t b) noexcept nogil:
    # Java's long division truncates toward zero (spec §5, q(x) = x / 1000).
    cdef int64_t q = floor_div(a, b)
    if q < 0 and q * b != a:
        q += 1
    return q


# ---------------------------------------------------------------------------------------
# Growable byte and value buffers (plain C; nogil)

cdef struct ByteBuf:
    uint8_t *data
    int64_t length
    int64_t capacity

cdef int bytebuf_reserve(ByteBuf *b, int64_t extra) noexcept nogil:
    cdef int64_t want = b.length + extra
    cdef int64_t cap
    cdef uint8_t *fresh
    if want <= b.capacity:
        return 0
    cap = b.capacity * 2 if b.capacity > 0 else 256
    while cap < want:
        cap *= 2
    # Padding lets simdjson read past the end of a window without copying.
    fresh = <uint8_t *>realloc(b.data, cap + sj.ADJOBS_PADDING)
    if fresh == NULL:
        return -1
    b.data = fresh
    b.capacity = cap
    return 0

cdef int bytebuf_append(ByteBuf *b, const uint8_t *p, int64_t n) noexcept nogil:
    if bytebuf_reserve(b, n) != 0:
        return -1
    memcpy(b.data + b.length, p, n)
    b.length += n
    return 0


cdef struct ValueBuf:
    char *data
    int64_t count
    int64_t capacity
    int64_t item_size

cdef int valuebuf_grow(ValueBuf *v) noexcept nogil:
    cdef int64_t cap = v.capacity * 2 if v.capacity > 0 else 4096
    cdef char *fresh = <char *>realloc(v.data, cap * v.item_size)
    if fresh == NULL:
        return -1
    v.data = fresh
    v.capacity = cap
    return 0


# ---------------------------------------------------------------------------------------
# Numbers

cdef double *POW10 = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                      1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]

cdef double parse_decimal(const uint8_t *p, int64_t n) noexcept nogil:
    """A numeric field's text as a double, NaN when it is not a decimal number.

    Grammar: optional ASCII whitespace around, sign, digits with optional fraction,
    optional exponent. Plain inputs take an exact fast path (Clinger: mantissa below 2**53
    and a power of ten up to 22 are both exact, so one multiply or divide is correctly
    rounded); anything else goes to strtod, which is correctly rounded too, so the result
    always equals Python's float() of the same text.
    """
    cdef int64_t i = 0, end = n
    cdef bint negative = False, any_digit = False
    cdef uint64_t mantissa = 0
    cdef int digits = 0, exponent = 0, exp_sign = 1, exp_value = 0
    cdef bint exact = True
    cdef char stack[128]
    cdef int64_t start
    while i < end and p[i] <= 32:
        i += 1
    while end > i and p[end - 1] <= 32:
        end -= 1
    if i >= end:
        return NAN
    start = i
    if p[i] == 43 or p[i] == 45:  # + -
        negative = p[i] == 45
        i += 1
    while i < end and is_digit(p[i]):
        any_digit = True
        if digits < 19:
            if mantissa != 0 or p[i] != 48:
                mantissa = mantissa * 10 + (p[i] - 48)
                digits += 1
        else:
            exact = False
        if digits >= 19:
            exact = False
        i += 1
    if i < end and p[i] == 46:  # .
        i += 1
        while i < end and is_digit(p[i]):
            any_digit = True
            if digits < 19:
                if mantissa != 0 or p[i] != 48:
                    mantissa = mantissa * 10 + (p[i] - 48)
                    digits += 1
                exponent -= 1
            else:
                exact = False
            i += 1
    if not any_digit:
        return NAN
    if i < end and (p[i] == 101 or p[i] == 69):  # e E
        i += 1
        if i < end and (p[i] == 43 or p[i] == 45):
            exp_sign = -1 if p[i] == 45 else 1
            i += 1
        if i >= end or not is_digit(p[i]):
            return NAN
        while i < end and is_digit(p[i]):
            if exp_value < 100000:
                exp_value = exp_value * 10 + (p[i] - 48)
            i += 1
        exponent += exp_sign * exp_value
    if i != end:
        return NAN
    if exact and mantissa < (<uint64_t>1 << 53) and -22 <= exponent <= 22:
        if exponent >= 0:
            return (-1.0 if negative else 1.0) * (<double>mantissa) * POW10[exponent]
        return (-1.0 if negative else 1.0) * (<double>mantissa) / POW10[-exponent]
    if end - start >= 127:
        return NAN  # longer than any number worth keeping; documented limit
    memcpy(stack, p + start, end - start)
    stack[end - start] = 0
    return strtod(stack, NULL)


cdef bint valid_json_number(const uint8_t *p, int64_t n) noexcept nogil:
    # RFC 8259: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    cdef int64_t i = 0
    if i < n and p[i] == 45:
        i += 1
    if i >= n:
        return False
    if p[i] == 48:
        i += 1
    elif is_digit(p[i]):
        while i < n and is_digit(p[i]):
            i += 1
    else:
        return False
    if i < n and p[i] == 46:
        i += 1
        if i >= n or not is_digit(p[i]):
            return False
        while i < n and is_digit(p[i]):
            i += 1
    if i < n and (p[i] == 101 or p[i] == 69):
        i += 1
        if i < n and (p[i] == 43 or p[i] == 45):
            i += 1
        if i >= n or not is_digit(p[i]):
            return False
        while i < n and is_digit(p[i]):
            i += 1
    return i == n


# ---------------------------------------------------------------------------------------
# Strings

cdef inline int hex_value(uint8_t c) noexcept nogil:
    if c >= 48 and c <= 57:
        return c - 48
    if c >= 97 and c <= 102:
        return c - 87
    if c >= 65 and c <= 70:
        return c - 55
    return -1

cdef inline int64_t put_utf8(uint8_t *out, uint32_t cp) noexcept nogil:
    if cp < 0x80:
        out[0] = <uint8_t>cp
        return 1
    if cp < 0x800:
        out[0] = <uint8_t>(0xC0 | (cp >> 6))
        out[1] = <uint8_t>(0x80 | (cp & 0x3F))
        return 2
    if cp < 0x10000:
        out[0] = <uint8_t>(0xE0 | (cp >> 12))
        out[1] = <uint8_t>(0x80 | ((cp >> 6) & 0x3F))
        out[2] = <uint8_t>(0x80 | (cp & 0x3F))
        return 3
    out[0] = <uint8_t>(0xF0 | (cp >> 18))
    out[1] = <uint8_t>(0x80 | ((cp >> 12) & 0x3F))
    out[2] = <uint8_t>(0x80 | ((cp >> 6) & 0x3F))
    out[3] = <uint8_t>(0x80 | (cp & 0x3F))
    return 4

cdef int64_t unescape_into(const uint8_t *p, int64_t n, uint8_t *out,
                           int64_t *bad_at) noexcept nogil:
    """Unescape string content p[0:n) (between the quotes) into out (>= n bytes).

    Returns the output length, or -1 with *bad_at = offset of the bad escape [R3]. A lone
    surrogate escape becomes U+FFFD.
    """
    cdef int64_t i = 0, o = 0, start
    cdef int h0, h1, h2, h3
    cdef uint32_t cp, low
    cdef uint8_t c
    while i < n:
        c = p[i]
        if c != 92:
            out[o] = c
            o += 1
            i += 1
            continue
        start = i
        if i + 1 >= n:
            bad_at[0] = start
            return -1
        c = p[i + 1]
        i += 2
        if c == 34 or c == 92 or c == 47:
            out[o] = c
        elif c == 98:
            out[o] = 8
        elif c == 102:
            out[o] = 12
        elif c == 110:
            out[o] = 10
        elif c == 114:
            out[o] = 13
        elif c == 116:
            out[o] = 9
        elif c == 117:
            if i + 4 > n:
                bad_at[0] = start
                return -1
            h0 = hex_value(p[i])
            h1 = hex_value(p[i + 1])
            h2 = hex_value(p[i + 2])
            h3 = hex_value(p[i + 3])
            if h0 < 0 or h1 < 0 or h2 < 0 or h3 < 0:
                bad_at[0] = start
                return -1
            cp = <uint32_t>((h0 << 12) | (h1 << 8) | (h2 << 4) | h3)
            i += 4
            if 0xD800 <= cp <= 0xDBFF:
                # A high surrogate pairs with a following \uDC00-\uDFFF escape.
                if (i + 6 <= n and p[i] == 92 and p[i + 1] == 117 and hex_value(p[i + 2]) >= 0
                        and hex_value(p[i + 3]) >= 0 and hex_value(p[i + 4]) >= 0
                        and hex_value(p[i + 5]) >= 0):
                    low = <uint32_t>((hex_value(p[i + 2]) << 12) | (hex_value(p[i + 3]) << 8)
                                     | (hex_value(p[i + 4]) << 4) | hex_value(p[i + 5]))
                    if 0xDC00 <= low <= 0xDFFF:
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                        i += 6
                    else:
                        cp = 0xFFFD
                else:
                    cp = 0xFFFD
            elif 0xDC00 <= cp <= 0xDFFF:
                cp = 0xFFFD
            o += put_utf8(out + o, cp)
            continue
        else:
            bad_at[0] = start
            return -1
        o += 1
    return o


cdef inline int64_t utf8_sequence_length(const uint8_t *p, int64_t n) noexcept nogil:
    """Length of the valid UTF-8 sequence at p (n bytes available), 0 if invalid, -1 if
    it may be valid but is cut off by the end of the data."""
    cdef uint8_t c = p[0]
    cdef int64_t need
    cdef uint8_t lo = 0x80, hi = 0xBF
    if c < 0x80:
        return 1
    if c >= 0xC2 and c <= 0xDF:
        need = 2
    elif c == 0xE0:
        need = 3
        lo = 0xA0
    elif c == 0xED:
        need = 3  # no encoded surrogates
        hi = 0x9F
    elif c >= 0xE1 and c <= 0xEF:
        need = 3
    elif c == 0xF0:
        need = 4
        lo = 0x90
    elif c >= 0xF1 and c <= 0xF3:
        need = 4
    elif c == 0xF4:
        need = 4
        hi = 0x8F
    else:
        return 0
    if n < 2:
        return -1
    if p[1] < lo or p[1] > hi:
        return 0
    if need >= 3:
        if n < 3:
            return -1
        if p[2] < 0x80 or p[2] > 0xBF:
            return 0
    if need == 4:
        if n < 4:
            return -1
        if p[3] < 0x80 or p[3] > 0xBF:
            return 0
    return need


# ---------------------------------------------------------------------------------------
# The job's string table: by/over/partition/influencer values interned to int32 codes
# with an open-addressing table keyed on the raw bytes, so a lookup never allocates.

cdef inline uint64_t hash_bytes(const uint8_t *p, int64_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef int64_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h ^ (h >> 29)

cdef class StringTable:
    """Distinct categorical values of one job, code = order of first appearance."""
    cdef int32_t *slots        # code per slot, -1 empty
    cdef uint64_t *slot_hashes
    cdef int64_t slot_count
    cdef ByteBuf arena
    cdef ValueBuf offsets      # int64 start per code; lengths from the next start
    cdef public int64_t limit_hits

    def __cinit__(self):
        self.slot_count = 1024
        self.slots = <int32_t *>malloc(self.slot_count * sizeof(int32_t))
        self.slot_hashes = <uint64_t *>malloc(self.slot_count * sizeof(uint64_t))
        if self.slots == NULL or self.slot_hashes == NULL:
            raise MemoryError()
        memset(self.slots, 0xFF, self.slot_count * sizeof(int32_t))
        self.offsets.item_size = sizeof(int64_t)
        self.limit_hits = 0

    def __dealloc__(self):
        free(self.slots)
        free(self.slot_hashes)
        free(self.arena.data)
        free(self.offsets.data)

    def __len__(self):
        return self.offsets.count

    cdef inline int64_t _start(self, int64_t code) noexcept nogil:
        return (<int64_t *>self.offsets.data)[code]

    cdef inline int64_t _end(self, int64_t code) noexcept nogil:
        if code + 1 < self.offsets.count:
            return (<int64_t *>self.offsets.data)[code + 1]
        return self.arena.length

    cdef int _grow(self) noexcept nogil:
        cdef int64_t new_count = self.slot_count * 2, i, j, code
        cdef int32_t *slots = <int32_t *>malloc(new_count * sizeof(int32_t))
        cdef uint64_t *hashes = <uint64_t *>malloc(new_count * sizeof(uint64_t))
        if slots == NULL or hashes == NULL:
            free(slots)
            free(hashes)
            return -1
        memset(slots, 0xFF, new_count * sizeof(int32_t))
        for i in range(self.slot_count):
            code = self.slots[i]
            if code < 0:
                continue
            j = <int64_t>(self.slot_hashes[i] & <uint64_t>(new_count - 1))
            while slots[j] >= 0:
                j = (j + 1) & (new_count - 1)
            slots[j] = <int32_t>code
            hashes[j] = self.slot_hashes[i]
        free(self.slots)
        free(self.slot_hashes)
        self.slots = slots
        self.slot_hashes = hashes
        self.slot_count = new_count
        return 0

    cdef int32_t intern(self, const uint8_t *p, int64_t n) noexcept nogil:
        cdef uint64_t h = hash_bytes(p, n)
        cdef int64_t j = <int64_t>(h & <uint64_t>(self.slot_count - 1))
        cdef int32_t code
        cdef int64_t start
        while True:
            code = self.slots[j]
            if code < 0:
                break
            if self.slot_hashes[j] == h:
                start = self._start(code)
                if self._end(code) - start == n and memcmp(self.arena.data + start, p, n) == 0:
                    return code
            j = (j + 1) & (self.slot_count - 1)
        if self.offsets.count >= max_distinct_values:
            self.limit_hits += 1
            return -1
        if self.offsets.count >= self.offsets.capacity and valuebuf_grow(&self.offsets) != 0:
            return -1
        code = <int32_t>self.offsets.count
        (<int64_t *>self.offsets.data)[code] = self.arena.length
        if bytebuf_append(&self.arena, p, n) != 0:
            return -1
        self.offsets.count += 1
        self.slots[j] = code
        self.slot_hashes[j] = h
        if self.offsets.count * 2 > self.slot_count:
            self._grow()
        return code

    def lookup(self, value) -> int:
        """Code of ``value`` (str), interning it if new."""
        cdef bytes raw = value.encode("utf-8", "surrogateescape")
        return self.intern(<const uint8_t *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))

    def raw_values(self, int64_t start=0) -> list:
        """Interned values as bytes, from code ``start`` on (what the store persists)."""
        cdef int64_t code
        return [(<char *>self.arena.data)[self._start(code):self._end(code)]
                for code in range(max(start, 0), self.offsets.count)]

    def extend(self, values) -> None:
        """Intern ``values`` (bytes) in order: restores a persisted table's codes."""
        cdef bytes raw
        cdef int32_t code
        for raw in values:
            code = self.intern(<const uint8_t *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
            if code != self.offsets.count - 1:
                raise ValueError(f"value {raw!r} is a duplicate or over the limit")

    def truncate(self, int64_t count) -> None:
        """Forget codes ``count`` and later (an upload that was cut off is rolled back)."""
        cdef int64_t code, j
        cdef uint64_t h
        if count < 0 or count >= self.offsets.count:
            return
        self.arena.length = self._start(count)
        self.offsets.count = count
        memset(self.slots, 0xFF, self.slot_count * sizeof(int32_t))
        for code in range(count):
            h = hash_bytes(self.arena.data + self._start(code), self._end(code) - self._start(code))
            j = <int64_t>(h & <uint64_t>(self.slot_count - 1))
            while self.slots[j] >= 0:
                j = (j + 1) & (self.slot_count - 1)
            self.slots[j] = <int32_t>code
            self.slot_hashes[j] = h

    def values(self) -> list:
        """All interned values, index = code."""
        cdef int64_t code
        out = []
        for code in range(self.offsets.count):
            out.append((<char *>self.arena.data)[self._start(code):self._end(code)]
                       .decode("utf-8", "replace"))
        return out


# ---------------------------------------------------------------------------------------
# Bucket diagnostics (spec §2): a window of per-bucket counts that reports each bucket
# once, as empty, sparse or neither.

cdef class BucketDiagnostics:
    cdef int64_t span
    cdef int64_t capacity
    cdef int64_t *counts
    cdef bint empty
    cdef int64_t latest, earliest, moving, last_flushed
    cdef public int64_t bucket_count, empty_bucket_count, sparse_bucket_count
    cdef public object latest_empty_bucket_ms, latest_sparse_bucket_ms
    cdef int64_t _latest_empty, _latest_sparse
    cdef bint _has_empty, _has_sparse

    def __cinit__(self, int64_t bucket_span_ms, int64_t latency_ms):
        if bucket_span_ms <= 0:
            raise ValueError("bucket span must be positive")
        self.span = bucket_span_ms
        # W = max(ceil(latency / span), 10) buckets (§2.1)
        self.capacity = max((latency_ms + bucket_span_ms - 1) // bucket_span_ms, 10)
        self.counts = <int64_t *>malloc(self.capacity * sizeof(int64_t))
        if self.counts == NULL:
            raise MemoryError()
        memset(self.counts, 0, self.capacity * sizeof(int64_t))
        self.empty = True
        self.moving = 0
        # ES starts lastFlushed at -1, so a bucket starting before -1 ms is never
        # reported on a fresh window; kept as is (§2.1).
        self.last_flushed = -1
        self.latest_empty_bucket_ms = None
        self.latest_sparse_bucket_ms = None

    def __dealloc__(self):
        free(self.counts)

    cdef inline int64_t _slot(self, int64_t bucket) noexcept nogil:
        cdef int64_t index = floor_div(bucket, self.span)
        cdef int64_t slot = index % self.capacity
        if slot < 0:
            slot += self.capacity
        return slot

    cdef inline int64_t _size(self) noexcept nogil:
        return (self.latest - self.earliest) // self.span + 1

    cdef void _report(self, int64_t bucket, int64_t count) noexcept nogil:
        cdef double average
        if bucket <= self.last_flushed:
            return
        self.last_flushed = bucket
        self.bucket_count += 1
        if count == 0:
            self.empty_bucket_count += 1
            self._latest_empty = bucket
            self._has_empty = True
        else:
            average = <double>self.moving / <double>self._size()
            if log(average) - log(<double>count) > 2.0:
                self.sparse_bucket_count += 1
                self._latest_sparse = bucket
                self._has_sparse = True

    cdef void _report_empty_run(self, int64_t first, int64_t n) noexcept nogil:
        """Report buckets first, first + span, ... (n of them), all empty, as _report would."""
        cdef int64_t last = first + (n - 1) * self.span
        cdef int64_t lowest = -floor_div(-(self.last_flushed + 1), self.span) * self.span
        if n <= 0 or last <= self.last_flushed:
            return
        if first > lowest:
            lowest = first
        self.bucket_count += (last - lowest) // self.span + 1
        self.empty_bucket_count += (last - lowest) // self.span + 1
        self.last_flushed = last
        self._latest_empty = last
        self._has_empty = True

    cdef void add_nogil(self, int64_t time_ms) noexcept nogil:
        cdef int64_t bucket = floor_div(time_ms, self.span) * self.span
        cdef int64_t slot, skip
        if self.empty:
            self.empty = False
            self.latest = bucket
            self.earliest = bucket
            memset(self.counts, 0, self.capacity * sizeof(int64_t))
        while bucket > self.latest:
            # Full when the next slot is the earliest bucket's (§2.2, literally: with a
            # latency of 10+ spans a record may land one bucket beyond the window).
            if self._slot(self.latest + self.span) == self._slot(self.earliest):
                if self.moving == 0 and bucket - self.latest > self.capacity * self.span:
                    # A full window of zeros: one step at a time would take hours for a
                    # jump of years, so report the run of empty buckets at once.
                    skip = (bucket - self.latest) // self.span - self.capacity
                    self._report_empty_run(self.earliest, skip)
                    self.earliest += skip * self.span
                    self.latest += skip * self.span
                    continue
                slot = self._slot(self.earliest)
                self._report(self.earliest, self.counts[slot])
                self.moving -= self.counts[slot]
                self.earliest += self.span
            self.latest += self.span
            self.counts[self._slot(self.latest)] = 0
        self.counts[self._slot(bucket)] += 1
        self.moving += 1
        if bucket < self.earliest:
            self.earliest = bucket

    def add(self, int64_t time_ms):
        self.add_nogil(time_ms)
        self._publish()

    def flush(self):
        """End-of-upload flush: report every bucket before the latest (§2.4)."""
        cdef int64_t bucket
        if not self.empty:
            bucket = self.earliest
            while bucket < self.latest:
                self._report(bucket, self.counts[self._slot(bucket)])
                bucket += self.span
        self._publish()

    cdef void _publish(self):
        # "latest" values only ever move forward and are reported only when > 0 (§1.3).
        if self._has_empty and self._latest_empty > 0:
            self.latest_empty_bucket_ms = self._latest_empty
        if self._has_sparse and self._latest_sparse > 0:
            self.latest_sparse_bucket_ms = self._latest_sparse

    def take_counts(self):
        """(bucket_count, empty_bucket_count, sparse_bucket_count) since the last take."""
        self._publish()
        counts = (self.bucket_count, self.empty_bucket_count, self.sparse_bucket_count)
        self.bucket_count = self.empty_bucket_count = self.sparse_bucket_count = 0
        return counts

    def get_state(self) -> dict:
        """The whole window as plain ints, so that a store can commit it (D6)."""
        return {
            "span": self.span,
            "capacity": self.capacity,
            "empty": bool(self.empty),
            "latest": self.latest,
            "earliest": self.earliest,
            "moving": self.moving,
            "last_flushed": self.last_flushed,
            "counts": [self.counts[i] for i in range(self.capacity)],
            "pending": [self.bucket_count, self.empty_bucket_count, self.sparse_bucket_count],
            "latest_empty": self._latest_empty if self._has_empty else None,
            "latest_sparse": self._latest_sparse if self._has_sparse else None,
            "published": [self.latest_empty_bucket_ms, self.latest_sparse_bucket_ms],
        }

    def set_state(self, dict state) -> None:
        """Restore a window saved by :meth:`get_state` (same span and latency)."""
        cdef int64_t i
        if state["span"] != self.span or state["capacity"] != self.capacity:
            raise ValueError("the saved diagnostics window has a different span or latency")
        counts = state["counts"]
        if len(counts) != self.capacity:
            raise ValueError("the saved diagnostics window is damaged")
        for i in range(self.capacity):
            self.counts[i] = counts[i]
        self.empty = state["empty"]
        self.latest = state["latest"]
        self.earliest = state["earliest"]
        self.moving = state["moving"]
        self.last_flushed = state["last_flushed"]
        self.bucket_count, self.empty_bucket_count, self.sparse_bucket_count = state["pending"]
        self._has_empty = state["latest_empty"] is not None
        self._latest_empty = state["latest_empty"] or 0
        self._has_sparse = state["latest_sparse"] is not None
        self._latest_sparse = state["latest_sparse"] or 0
        self.latest_empty_bucket_ms, self.latest_sparse_bucket_ms = state["published"]


# ---------------------------------------------------------------------------------------
# State that outlives one upload

cdef class JobIngestState:
    """What an open job carries from one upload to the next."""
    cdef public object latest_ms      # total latest_record_timestamp, or None
    cdef public object earliest_ms    # total earliest_record_timestamp, or None
    cdef public BucketDiagnostics diagnostics
    cdef public StringTable strings

    def __init__(self, int64_t bucket_span_ms, int64_t latency_ms, latest_ms=None,
                 earliest_ms=None, StringTable strings=None):
        self.latest_ms = latest_ms
        self.earliest_ms = earliest_ms
        self.diagnostics = BucketDiagnostics(bucket_span_ms, latency_ms)
        self.strings = strings if strings is not None else StringTable()
        if latest_ms is not None:
            # The phantom record of §2.3: gaps across a close count as empty buckets.
            self.diagnostics.add_nogil(latest_ms)


# ---------------------------------------------------------------------------------------
# One record while it is being read, and once resolved

cdef struct Accumulator:
    int64_t n_fields
    uint64_t present
    int64_t value_start[MAX_FIELDS]   # into the upload buffer, or into scratch
    int64_t value_length[MAX_FIELDS]
    bint value_in_scratch[MAX_FIELDS]

cdef struct Cursor:
    int64_t pos
    int64_t limit          # min(data end, line-rule position, size limit)
    int64_t data_end
    int64_t line_break     # position of the '{' that breaks the document [R5 d]
    int64_t size_limit
    int64_t err_pos
    bint err_in_string
    bint limit_in_string
    int64_t open_objects
    bint final


@cython.no_gc_clear  # __dealloc__ first waits for a read still going, which uses the fields
cdef class Upload:
    """Reads one upload (streamed in chunks) and counts its records.

    Parameters mirror :class:`adjobs.plan.IngestPlan`; ``state`` is the job's
    :class:`JobIngestState`, updated as records are processed.
    """
    # plan
    cdef bint is_csv
    cdef int64_t n_inputs
    cdef int64_t field_name_start[MAX_FIELDS]
    cdef int64_t field_name_length[MAX_FIELDS]
    cdef bytes field_names_blob
    cdef int field_kind[MAX_FIELDS]
    cdef int field_column[MAX_FIELDS]     # numeric/categorical output column
    cdef uint64_t all_inputs_mask
    cdef bint any_dotted_field
    cdef uint64_t name_length_mask        # bit n set when some input name has n bytes (n < 64)
    cdef bytes time_program
    cdef const int32_t *time_program_ops
    cdef size_t time_program_length
    cdef const uint8_t *field_names
    cdef int32_t default_year
    cdef int64_t span, latency_s
    cdef uint8_t delimiter, quote
    cdef public JobIngestState state
    cdef StringTable strings
    cdef BucketDiagnostics diagnostics
    cdef int n_numeric, n_categorical

    # input
    cdef ByteBuf buf
    cdef int64_t buf_base          # body offset of buf.data[0]
    cdef int64_t lines_before      # newlines in the body before buf.data[0]
    cdef int64_t pos               # next unread byte in buf
    cdef bint started, finished
    cdef sj.adjobs_indexer *indexer
    cdef const uint32_t *index
    cdef size_t index_count
    cdef int64_t index_base        # buf position of the indexed window, -1 when none
    cdef int64_t index_end

    # scratch for unescaped strings, joined arrays and the key path
    cdef ByteBuf scratch
    cdef uint8_t path[PATH_CAPACITY + KEY_CAPACITY]
    cdef uint8_t key[KEY_CAPACITY]
    cdef int64_t _last_key_length
    cdef bint capture_any
    cdef Accumulator acc

    # tolerant gear, streaming states
    cdef int top_state
    cdef int64_t skip_depth
    cdef bint skip_in_string, skip_escape, skip_prev_newline, comment_prev_star
    cdef int64_t junk_start

    # pending malformed record (resolved, waiting for its end)
    cdef bint pending
    cdef int64_t pending_start
    cdef bint pending_time_ok
    cdef int64_t pending_time
    cdef int64_t pending_fields, pending_missing
    cdef double pending_numeric[MAX_FIELDS]
    cdef int32_t pending_codes[MAX_FIELDS]

    # CSV
    cdef bint csv_header_done
    cdef int64_t csv_header_columns
    cdef int csv_column_of_input[MAX_FIELDS]
    cdef int64_t csv_max_column
    cdef object csv_header_names
    cdef public object csv_missing_field

    # counters (this upload)
    cdef public int64_t processed_record_count, input_field_count, invalid_date_count
    cdef public int64_t missing_field_count, out_of_order_timestamp_count
    cdef public int64_t malformed_document_count, input_bytes
    cdef int64_t latest_total          # L
    cdef bint have_latest_total
    cdef int64_t latest_this_upload
    cdef bint upload_latest_set
    cdef int64_t upload_latest         # incremental latest_record_timestamp
    cdef bint earliest_set_here
    cdef int64_t earliest_here
    cdef bint job_has_earliest

    # outputs
    cdef ValueBuf out_times, out_numeric, out_codes

    # failure
    cdef public int failure
    cdef bint problem_seen
    cdef public int64_t problem_line, problem_offset
    cdef public int64_t consumed_at_failure

    # a chunk read on a native thread (feed_in_background): reading_done is held until it
    # ends; the thread appends the chunk (held by chunk_owner) to the buffer, then reads it.
    # One thread reads every chunk of the upload: it waits for work_ready between chunks,
    # and holds worker_gone until it has stopped (worker_stop, at finish or dealloc).
    cdef PyThread_type_lock reading_done
    cdef PyThread_type_lock work_ready
    cdef PyThread_type_lock worker_gone
    cdef bint reading_in_background
    cdef bint worker_started, worker_stop
    cdef int worker_pid  # the process the thread runs in (a forked child has no such thread)
    cdef object chunk_owner
    cdef const uint8_t *chunk_data
    cdef int64_t chunk_length
    cdef bint chunk_no_memory

    def __cinit__(self):
        self.indexer = sj.adjobs_indexer_new()
        if self.indexer == NULL:
            raise MemoryError()
        self.reading_done = PyThread_allocate_lock()
        self.work_ready = PyThread_allocate_lock()
        self.worker_gone = PyThread_allocate_lock()
        if self.reading_done == NULL or self.work_ready == NULL or self.worker_gone == NULL:
            raise MemoryError()
        self.index_base = -1
        self.out_times.item_size = sizeof(int64_t)

    def __dealloc__(self):
        if self.reading_done != NULL:
            # the thread still uses the buffers freed below (unless the process forked: then
            # it is the parent's)
            if self.reading_in_background and not (self.worker_started
                                                   and self.worker_pid != getpid()):
                with nogil:
                    PyThread_acquire_lock(self.reading_done, WAIT_LOCK)
            self._stop_worker()
            PyThread_free_lock(self.reading_done)
        if self.work_ready != NULL:
            PyThread_free_lock(self.work_ready)
        if self.worker_gone != NULL:
            PyThread_free_lock(self.worker_gone)
        sj.adjobs_indexer_free(self.indexer)
        free(self.buf.data)
        free(self.scratch.data)
        free(self.out_times.data)
        free(self.out_numeric.data)
        free(self.out_codes.data)

    def __init__(self, plan, JobIngestState state not None):
        cdef int i
        cdef int64_t offset = 0
        names = list(plan.input_fields)
        if not 1 <= len(names) <= MAX_FIELDS:
            raise ValueError(f"a job reads between 1 and {MAX_FIELDS} input fields")
        self.is_csv = plan.format == "csv"
        self.n_inputs = len(names)
        encoded = [name.encode("utf-8") for name in names]
        self.field_names_blob = b"".join(encoded)
        self.all_inputs_mask = (~<uint64_t>0) if self.n_inputs == 64 else ((<uint64_t>1 << self.n_inputs) - 1)
        self.name_length_mask = 0
        self.any_dotted_field = False
        for i in range(self.n_inputs):
            self.field_name_start[i] = offset
            self.field_name_length[i] = len(encoded[i])
            offset += len(encoded[i])
            if len(encoded[i]) < 64:
                self.name_length_mask |= <uint64_t>1 << len(encoded[i])
            else:
                self.name_length_mask |= <uint64_t>1 << 63
            if b"." in encoded[i]:
                self.any_dotted_field = True
        self.field_kind[0] = KIND_TEXT
        self.n_numeric = 0
        self.n_categorical = 0
        for i in range(1, self.n_inputs):
            self.field_kind[i] = plan.field_kinds[i - 1]
            if self.field_kind[i] == KIND_NUMERIC:
                self.field_column[i] = self.n_numeric
                self.n_numeric += 1
            elif self.field_kind[i] == KIND_CATEGORICAL:
                self.field_column[i] = self.n_categorical
                self.n_categorical += 1
        self.out_numeric.item_size = sizeof(double) * max(self.n_numeric, 1)
        self.out_codes.item_size = sizeof(int32_t) * max(self.n_categorical, 1)
        self.time_program = bytes(plan.time_program)
        if len(self.time_program) % 4 or not self.time_program:
            raise ValueError("time_program must be a non-empty int32 array")
        self.time_program_ops = <const int32_t *>PyBytes_AS_STRING(self.time_program)
        self.time_program_length = len(self.time_program) // 4
        self.field_names = <const uint8_t *>PyBytes_AS_STRING(self.field_names_blob)
        self.default_year = plan.default_year
        self.span = plan.bucket_span_ms
        self.latency_s = plan.latency_ms // 1000
        self.delimiter = ord(plan.field_delimiter)
        self.quote = ord(plan.quote_character)
        self.state = state
        self.strings = state.strings
        self.diagnostics = state.diagnostics
        self.have_latest_total = state.latest_ms is not None
        # §5: L starts from the total latest_record_timestamp, 0 if null.
        self.latest_total = state.latest_ms if self.have_latest_total else 0
        self.job_has_earliest = state.earliest_ms is not None
        self.top_state = TOP

    # ----------------------------------------------------------------------------------
    # Python-facing API

    def feed(self, data):
        """Read the next chunk of the upload (bytes-like)."""
        if self._take_chunk(data):
            with nogil:
                self._process(False)
            self._sync_state()

    def feed_in_background(self, data):
        """Start reading the next chunk (bytes-like) on a native thread and return at once;
        :meth:`wait` ends the read. The thread copies the chunk into the upload's buffer
        (that copy, and dropping what was read before, are work the caller need not wait
        for), so the chunk must stay as it is until :meth:`wait` returns; then the caller
        may reuse it.

        The thread never needs the GIL, so the caller's Python code runs meanwhile (the
        service analyses the records of the previous chunk). Until :meth:`wait` returns,
        nothing may touch this upload or the string table and diagnostics of its job's
        state: the thread writes them.
        """
        cdef unsigned long thread
        cdef const uint8_t[::1] view
        self._check_idle()
        if self.finished:
            raise RuntimeError("upload already finished")
        if self.failure != FAIL_NONE:
            return
        owner = memoryview(data).cast("B")
        view = owner
        if view.shape[0] == 0:
            return
        self._forget_thread_of_parent()
        self.chunk_owner = owner
        self.chunk_data = &view[0]
        self.chunk_length = view.shape[0]
        self.chunk_no_memory = False
        PyThread_acquire_lock(self.reading_done, NOWAIT_LOCK)
        self.reading_in_background = True
        if not self.worker_started:
            # work_ready held: the new thread waits for it; worker_gone held until it stops
            PyThread_acquire_lock(self.work_ready, NOWAIT_LOCK)
            PyThread_acquire_lock(self.worker_gone, NOWAIT_LOCK)
            self.worker_stop = False
            thread = PyThread_start_new_thread(<thread_function>_reading_worker, <void *>self)
            if thread == PYTHREAD_INVALID_THREAD_ID:
                PyThread_release_lock(self.worker_gone)
                # No thread to be had: read here instead.
                with nogil:
                    _read_chunk(self)
                return
            self.worker_started = True
            self.worker_pid = getpid()
        PyThread_release_lock(self.work_ready)  # the chunk is ready

    def close(self):
        """Stop the reading thread (:meth:`finish` does too): for an upload given up before
        its end, so that it holds no thread while it is kept (an error refers to it)."""
        self._check_idle()
        self._stop_worker()

    cdef int _forget_thread_of_parent(self) except -1:
        """In a process forked while this upload had a reading thread, that thread is not
        there: start afresh (its locks may be held for good: no thread here waits on them,
        and new ones are made)."""
        if not self.worker_started or self.worker_pid == getpid():
            return 0
        PyThread_free_lock(self.work_ready)
        PyThread_free_lock(self.worker_gone)
        self.work_ready = PyThread_allocate_lock()
        self.worker_gone = PyThread_allocate_lock()
        self.worker_started = False
        if self.work_ready == NULL or self.worker_gone == NULL:
            raise MemoryError()
        return 0

    cdef void _stop_worker(self):
        """Let the reading thread end, and wait until it has (no chunk is being read)."""
        if self.worker_started and self.worker_pid != getpid():
            self.worker_started = False  # forked: the thread is the parent's
            return
        if not self.worker_started:
            return
        self.worker_stop = True
        PyThread_release_lock(self.work_ready)
        with nogil:
            PyThread_acquire_lock(self.worker_gone, WAIT_LOCK)
        PyThread_release_lock(self.worker_gone)
        self.worker_started = False

    cdef bint _take_chunk(self, data) except -1:
        """Copy a chunk into the buffer if this upload reads on; whether it does."""
        cdef const uint8_t[::1] view
        cdef int status
        self._check_idle()
        if self.finished:
            raise RuntimeError("upload already finished")
        if self.failure != FAIL_NONE:
            return False
        view = memoryview(data).cast("B")
        if view.shape[0] == 0:
            return False
        with nogil:
            status = self._append(&view[0], view.shape[0])
        if status != 0:
            raise MemoryError()
        return True

    def wait(self):
        """End the read :meth:`feed_in_background` started (at once if none runs)."""
        if not self.reading_in_background:
            return
        if self.worker_started and self.worker_pid != getpid():
            raise RuntimeError("the process forked while a chunk of this upload was being "
                               "read: the read cannot end here")
        with nogil:
            PyThread_acquire_lock(self.reading_done, WAIT_LOCK)
        PyThread_release_lock(self.reading_done)
        self.reading_in_background = False
        self.chunk_owner = None
        self.chunk_data = NULL
        self.chunk_length = 0
        if self.chunk_no_memory:
            raise MemoryError()  # as feed would have: the chunk was not taken
        self._sync_state()

    @property
    def reading(self):
        """Whether the chunk :meth:`feed_in_background` started is still being read."""
        if not self.reading_in_background:
            return False
        if PyThread_acquire_lock(self.reading_done, NOWAIT_LOCK) == PY_LOCK_ACQUIRED:
            PyThread_release_lock(self.reading_done)  # for wait() to take
            return False
        return True

    cdef _check_idle(self):
        if self.reading_in_background:
            raise RuntimeError("a chunk is still being read: wait() first")

    def finish(self):
        """The body has ended: read what is left and apply the end-of-body rules."""
        self._check_idle()
        if self.finished:
            return
        self.finished = True
        self._stop_worker()
        if self.failure == FAIL_NONE:
            with nogil:
                self._process(True)
        self._sync_state()

    cdef void _sync_state(self):
        if self.have_latest_total:
            self.state.latest_ms = self.latest_total
        if self.earliest_set_here:
            self.state.earliest_ms = self.earliest_here
        self.diagnostics._publish()

    @property
    def latest_record_timestamp(self):
        """The incremental copy's latest_record_timestamp (§1.3), or None."""
        return self.upload_latest if self.upload_latest_set else None

    @property
    def earliest_record_timestamp(self):
        """Set only by the upload that processed the job's first record (§1.3)."""
        return self.earliest_here if self.earliest_set_here else None

    @property
    def csv_header(self):
        return self.csv_header_names

    @property
    def problem(self):
        """(line, offset) of the first problem in the upload, or None."""
        return (self.problem_line, self.problem_offset) if self.problem_seen else None

    def take_batch(self):
        """Arrays for the records processed since the last call, then forget them.

        Returns ``(time_ms int64[n], numeric float64[n, n_numeric], codes int32[n,
        n_categorical])`` in processing order.
        """
        cdef int64_t n = self.out_times.count
        self._check_idle()
        times = np.empty(n, dtype=np.int64)
        numeric = np.empty((n, self.n_numeric), dtype=np.float64)
        codes = np.empty((n, self.n_categorical), dtype=np.int32)
        cdef int64_t[::1] times_view = times
        cdef double[:, ::1] numeric_view = numeric
        cdef int32_t[:, ::1] codes_view = codes
        if n:
            memcpy(&times_view[0], self.out_times.data, n * sizeof(int64_t))
            if self.n_numeric:
                memcpy(&numeric_view[0, 0], self.out_numeric.data, n * self.n_numeric * sizeof(double))
            if self.n_categorical:
                memcpy(&codes_view[0, 0], self.out_codes.data, n * self.n_categorical * sizeof(int32_t))
        self.out_times.count = 0
        self.out_numeric.count = 0
        self.out_codes.count = 0
        return times, numeric, codes

    # ----------------------------------------------------------------------------------
    # Buffer management

    cdef int _append(self, const uint8_t *p, int64_t n) noexcept nogil:
        self.input_bytes += n
        # Drop what has been read so that memory stays bounded by the window plus one
        # document; remember how many lines went with it for error positions.
        if self.pos > 0:
            self._discard_read()
        if bytebuf_append(&self.buf, p, n) != 0:
            return -1
        memset(self.buf.data + self.buf.length, 0, sj.ADJOBS_PADDING)
        return 0

    cdef void _discard_read(self) noexcept nogil:
        cdef int64_t n = self.pos
        self.lines_before += <int64_t>sj.adjobs_count_newlines(self.buf.data, n)
        memmove(self.buf.data, self.buf.data + n, self.buf.length - n)
        self.buf.length -= n
        self.buf_base += n
        self.pos = 0
        self.index_base = -1
        if self.junk_start >= 0:
            self.junk_start -= n

    cdef void _note_problem(self, int64_t at) noexcept nogil:
        # Line and byte offset of the first problem, reported with a failure [R6].
        if self.problem_seen:
            return
        self.problem_seen = True
        self.problem_offset = self.buf_base + at
        self.problem_line = 1 + self.lines_before + <int64_t>sj.adjobs_count_newlines(self.buf.data, at)

    cdef void _fail(self, int code, int64_t consumed) noexcept nogil:
        if self.failure == FAIL_NONE:
            self.failure = code
            self.consumed_at_failure = consumed

    cdef void _process(self, bint final) noexcept nogil:
        if not self.started:
            # [R1] [C2] a UTF-8 BOM at the start of the body is skipped (and counted).
            if self.buf.length < 3 and not final:
                return
            self.started = True
            if (self.buf.length >= 3 and self.buf.data[0] == 0xEF and self.buf.data[1] == 0xBB
                    and self.buf.data[2] == 0xBF):
                self.pos = 3
        if self.is_csv:
            self._csv_process(final)
        else:
            self._json_process(final)

    # ----------------------------------------------------------------------------------
    # Records → counts (spec §1.2, §5)

    cdef inline const uint8_t *_value_ptr(self, int field) noexcept nogil:
        if self.acc.value_in_scratch[field]:
            return self.scratch.data + self.acc.value_start[field]
        return self.buf.data + self.acc.value_start[field]

    cdef void _resolve_into_pending(self, int64_t start) noexcept nogil:
        """Turn the accumulator into values that do not point into any buffer."""
        cdef int i, column
        cdef const uint8_t *text
        cdef int64_t length, time_ms = 0
        cdef uint64_t present = self.acc.present
        cdef uint64_t missing_mask = self.all_inputs_mask & ~present
        self.pending = True
        self.pending_start = start
        self.pending_fields = self.acc.n_fields
        self.pending_missing = 0
        while missing_mask:
            missing_mask &= missing_mask - 1
            self.pending_missing += 1
        self.pending_time_ok = False
        if present & 1:
            text = self._value_ptr(0)
            length = self.acc.value_length[0]
            self.pending_time_ok = adjobs_time_parse(
                self.time_program_ops, self.time_program_length,
                <const char *>text, <size_t>length, self.default_year, &time_ms) == 0
        self.pending_time = time_ms
        if not self.pending_time_ok:
            return
        for i in range(1, self.n_inputs):
            column = self.field_column[i]
            if self.field_kind[i] == KIND_NUMERIC:
                if present & (<uint64_t>1 << i):
                    self.pending_numeric[column] = parse_decimal(self._value_ptr(i), self.acc.value_length[i])
                else:
                    self.pending_numeric[column] = NAN
            elif self.field_kind[i] == KIND_CATEGORICAL:
                if present & (<uint64_t>1 << i):
                    self.pending_codes[column] = self.strings.intern(
                        self._value_ptr(i), self.acc.value_length[i])
                else:
                    self.pending_codes[column] = -1

    cdef int _commit_pending(self, bint malformed, int64_t end) noexcept nogil:
        """Count the pending record; returns R_FAILED when it was the last allowed one."""
        cdef int64_t f, t
        self.pending = False
        f = self.pending_fields - 1 if self.pending_fields > 0 else 0
        if self.pending_missing > 0:
            self.missing_field_count += self.pending_missing
        if not self.pending_time_ok:
            self.invalid_date_count += 1
            self.input_field_count += f
        else:
            t = self.pending_time
            if trunc_div(t, 1000) < (trunc_div(floor_div(self.latest_total, self.span) * self.span, 1000)
                                     - self.latency_s):
                self.out_of_order_timestamp_count += 1
                self.input_field_count += f
                # Only the incremental copy sees out-of-order times (§1.2 step 3).
                if t > self.latest_this_upload:
                    self.latest_this_upload = t
                    self.upload_latest = t
                    self.upload_latest_set = True
            else:
                if t > self.latest_total:
                    self.latest_total = t
                self.have_latest_total = True
                self.latest_this_upload = self.latest_total
                self.processed_record_count += 1
                self.input_field_count += f
                self.upload_latest = self.latest_total
                self.upload_latest_set = True
                if not self.job_has_earliest:
                    self.job_has_earliest = True
                    self.earliest_set_here = True
                    self.earliest_here = t
                self.diagnostics.add_nogil(t)
                if self._emit(t) != 0:
                    self._fail(FAIL_NO_MEMORY, self.buf_base + end)
                    return R_FAILED
        if malformed:
            self.malformed_document_count += 1
            if self.malformed_document_count >= max_malformed:
                self._fail(FAIL_MALFORMED_LIMIT, self.buf_base + end)
                return R_FAILED
        return R_OK

    cdef int _emit(self, int64_t t) noexcept nogil:
        cdef int64_t n = self.out_times.count
        if n >= self.out_times.capacity:
            if valuebuf_grow(&self.out_times) != 0:
                return -1
        if n >= self.out_numeric.capacity:
            if valuebuf_grow(&self.out_numeric) != 0:
                return -1
        if n >= self.out_codes.capacity:
            if valuebuf_grow(&self.out_codes) != 0:
                return -1
        (<int64_t *>self.out_times.data)[n] = t
        if self.n_numeric:
            memcpy(self.out_numeric.data + n * self.out_numeric.item_size, self.pending_numeric,
                   self.n_numeric * sizeof(double))
        if self.n_categorical:
            memcpy(self.out_codes.data + n * self.out_codes.item_size, self.pending_codes,
                   self.n_categorical * sizeof(int32_t))
        self.out_times.count += 1
        self.out_numeric.count += 1
        self.out_codes.count += 1
        return 0

    cdef inline int _finish_record(self, int64_t start, int64_t end, bint malformed) noexcept nogil:
        self._resolve_into_pending(start)
        return self._commit_pending(malformed, end)

    # ----------------------------------------------------------------------------------
    # Field names [R4]

    cdef inline void _acc_reset(self) noexcept nogil:
        self.acc.n_fields = 0
        self.acc.present = 0
        self.scratch.length = 0

    cdef int _match(self, const uint8_t *prefix, int64_t prefix_length,
                    const uint8_t *name, int64_t name_length) noexcept nogil:
        """Index of the input field named prefix + name, or -1."""
        cdef int64_t total = prefix_length + name_length
        cdef int i
        cdef const uint8_t *names
        if total < 63 and not (self.name_length_mask >> total) & 1:
            return -1
        names = self.field_names
        for i in range(self.n_inputs):
            if self.field_name_length[i] != total:
                continue
            if prefix_length and memcmp(names + self.field_name_start[i], prefix, prefix_length) != 0:
                continue
            if memcmp(names + self.field_name_start[i] + prefix_length, name, name_length) == 0:
                return i
        return -1

    cdef inline void _set_value(self, int field, int64_t start, int64_t length,
                                bint in_scratch) noexcept nogil:
        self.acc.present |= <uint64_t>1 << field
        self.acc.value_start[field] = start
        self.acc.value_length[field] = length
        self.acc.value_in_scratch[field] = in_scratch

    cdef int _scratch_reserve(self, int64_t n) noexcept nogil:
        return bytebuf_reserve(&self.scratch, n)

    # ----------------------------------------------------------------------------------
    # JSON: the driver

    cdef void _json_process(self, bint final) noexcept nogil:
        cdef int result
        cdef int64_t cut, resume_at
        while self.failure == FAIL_NONE:
            if self.top_state != TOP:
                result = self._tol_streaming(final)
                if result != R_OK:
                    return
                continue
            if self.pos >= self.buf.length:
                break
            if not final and self.buf.length - self.pos < min_window_bytes:
                return
            cut = self._choose_cut(final)
            result = self._index(self.pos, cut)
            if result == sj.ADJOBS_INDEX_OK:
                result = self._walk(0, &resume_at)
                if result == R_DONE:
                    self.pos = cut
                    continue
                self.pos = resume_at
                if result == R_WAIT:
                    # The window's last document runs past the cut: index again from it,
                    # unless it is the first one (then only the tolerant gear progresses).
                    if resume_at > self.index_base:
                        continue
                # R_FALLBACK, or a document the fast gear cannot finish
                result = self._tol_run(final, True)
            else:
                self.index_base = -1
                result = self._tol_run(final, False)
            if result == R_WAIT or result == R_FAILED:
                return
        if final and self.failure == FAIL_NONE:
            self._end_of_body()

    cdef void _end_of_body(self) noexcept nogil:
        # Streaming states that are still open when the body ends [R2] [R6].
        if self.top_state == TOP_JUNK:
            self.top_state = TOP
            self._acc_reset()
            self._finish_record(self.junk_start, self.buf.length, True)
        elif self.top_state == TOP_SKIP:
            self._fail(FAIL_TRUNCATED, self.buf_base + self.buf.length)
        self.top_state = TOP

    cdef int64_t _choose_cut(self, bint final) noexcept nogil:
        """End of the next window: after the last newline or '}' in the buffered data.

        A newline is never inside a valid string, so cutting after one keeps stage 1 in
        step; single-line bodies (a JSON array from a client) are cut after a '}'. A bad
        guess only costs speed: stage 1 then reports an unclosed string and the tolerant
        gear reads the window.
        """
        cdef int64_t length = self.buf.length - self.pos
        cdef int64_t half = length // 2
        cdef const uint8_t *hit
        if final:
            return self.buf.length
        hit = sj.adjobs_memrchr(self.buf.data + self.pos + half, 10, length - half)
        if hit == NULL:
            hit = sj.adjobs_memrchr(self.buf.data + self.pos + half, 125, length - half)
        if hit == NULL:
            return self.buf.length
        return (hit - self.buf.data) + 1

    cdef int _index(self, int64_t start, int64_t end) noexcept nogil:
        cdef int status
        # stage 1 may read up to the padding past `end`; the bytes there belong to the
        # buffer (or its zeroed padding), so no copy is needed.
        status = sj.adjobs_indexer_run(self.indexer, self.buf.data + start, <size_t>(end - start),
                                       &self.index, &self.index_count)
        if status == sj.ADJOBS_INDEX_OK:
            self.index_base = start
            self.index_end = end
        else:
            self.index_base = -1
        return status

    cdef int64_t _index_lookup(self, int64_t position) noexcept nogil:
        """Index entry of a '{' at buffer position, or -1 when stage 1 did not see a
        structural '{' there (then its view of strings is out of step)."""
        cdef int64_t lo = 0, hi = <int64_t>self.index_count - 1, mid
        cdef uint32_t target
        if self.index_base < 0 or position < self.index_base or position >= self.index_end:
            return -1
        target = <uint32_t>(position - self.index_base)
        while lo <= hi:
            mid = (lo + hi) >> 1
            if self.index[mid] == target:
                return mid
            if self.index[mid] < target:
                lo = mid + 1
            else:
                hi = mid - 1
        return -1

    # ----------------------------------------------------------------------------------
    # JSON: the fast gear over simdjson's structural index

    cdef inline int64_t _string_end(self, const uint8_t *base, int64_t open_at,
                                    int64_t next_at) noexcept nogil:
        """Closing quote of the string opened at open_at, given the next structural."""
        cdef int64_t q = next_at - 1
        while q > open_at and is_ws(base[q]):
            q -= 1
        if q <= open_at or base[q] != 34:
            return -1
        return q

    cdef int _walk(self, size_t first, int64_t *resume_at) noexcept nogil:
        cdef const uint8_t *base = self.buf.data + self.index_base
        cdef const uint32_t *index = self.index
        cdef size_t n = self.index_count
        cdef size_t i = first
        cdef uint8_t c
        cdef int result
        while i < n:
            c = base[index[i]]
            if c == 123:
                result = self._walk_record(base, index, n, &i)
                if result == R_OK:
                    continue
                resume_at[0] = self.index_base + index[i]
                return result
            if c == 91 or c == 93 or c == 44:  # [ ] , between documents [R2]
                i += 1
                continue
            resume_at[0] = self.index_base + index[i]
            return R_FALLBACK
        return R_DONE

    cdef int _walk_record(self, const uint8_t *base, const uint32_t *index, size_t n,
                          size_t *cursor) noexcept nogil:
        """Read one document starting at index[*cursor] ('{'). On R_OK *cursor is past
        it; otherwise *cursor still points at its '{'."""
        cdef size_t i = cursor[0] + 1
        cdef int64_t start = index[cursor[0]]
        cdef int64_t o, next_o, q, length, path_length = 0, out_length, bad
        cdef int64_t depth = 1, array_depth = 0
        cdef uint8_t c
        cdef uint8_t kinds[258]        # container kinds, '{' or '['
        cdef int64_t path_lengths[258]
        cdef int field = -1, capture = -1
        cdef int64_t capture_start = 0
        cdef bint capture_any = False, field_mode
        cdef const uint8_t *first_newline
        cdef const uint8_t *key_text
        cdef int64_t key_length
        cdef int expect = 0
        if max_depth + 2 > 258:
            return R_FALLBACK
        self._acc_reset()
        kinds[0] = 123
        path_lengths[0] = 0
        # State machine over structurals. `expect` is what may come next:
        # 0 key or '}', 1 key, 2 value, 3 value or ']', 4 ',' or closer
        while True:
            if i >= n:
                return R_WAIT
            o = index[i]
            c = base[o]
            if expect == 0 or expect == 1:
                if c == 125 and expect == 0:
                    pass  # handled as a closer below
                elif c != 34:
                    return R_FALLBACK
                else:
                    q = self._string_end(base, o, index[i + 1])
                    if q < 0 or i + 1 >= n or base[index[i + 1]] != 58:
                        return R_FALLBACK
                    key_text = base + o + 1
                    key_length = q - o - 1
                    field_mode = array_depth == 0
                    field = -1
                    if memchr(key_text, 92, key_length) != NULL:
                        if key_length > KEY_CAPACITY:
                            return R_FALLBACK
                        out_length = unescape_into(key_text, key_length, self.key, &bad)
                        if out_length < 0:
                            return R_FALLBACK
                        key_text = self.key
                        key_length = out_length
                    if field_mode:
                        if path_length == 0:
                            field = self._match(NULL, 0, key_text, key_length)
                        elif path_length <= PATH_CAPACITY:
                            field = self._match(self.path, path_length, key_text, key_length)
                        # Remember the key for a nested object's prefix.
                        if key_length <= KEY_CAPACITY and key_text != self.key:
                            memcpy(self.key, key_text, key_length)
                    self._last_key_length = key_length
                    i += 2
                    expect = 2
                    continue
            if expect == 2 or expect == 3:
                if c == 93 and expect == 3:
                    pass  # closer below
                elif c == 123 or c == 91:
                    # [R5 d] a '{' that starts the line after the document's first line
                    if c == 123 and o > 0 and base[o - 1] == 10:
                        first_newline = <const uint8_t *>memchr(base + start, 10, o - 1 - start)
                        if first_newline == NULL:
                            return R_FALLBACK
                    if depth >= max_depth:
                        return R_FALLBACK
                    kinds[depth] = c
                    if c == 123:
                        if array_depth == 0:
                            # descend: prefix += key + "."
                            length = self._last_key_length
                            if path_length + length + 1 <= PATH_CAPACITY:
                                memcpy(self.path + path_length, self.key, length)
                                self.path[path_length + length] = 46
                            path_lengths[depth] = path_length
                            path_length = path_length + length + 1
                        expect = 0
                    else:
                        if array_depth == 0:
                            capture = field
                            capture_start = self.scratch.length
                            capture_any = False
                        array_depth += 1
                        expect = 3
                    depth += 1
                    i += 1
                    continue
                elif c == 34:
                    q = self._string_end(base, o, index[i + 1])
                    if q < 0:
                        return R_FALLBACK
                    length = q - o - 1
                    if array_depth == 0:
                        self.acc.n_fields += 1
                        if field >= 0:
                            if memchr(base + o + 1, 92, length) != NULL:
                                if self._scratch_reserve(length) != 0:
                                    return R_FALLBACK
                                out_length = unescape_into(base + o + 1, length,
                                                           self.scratch.data + self.scratch.length, &bad)
                                if out_length < 0:
                                    return R_FALLBACK
                                self._set_value(field, self.scratch.length, out_length, True)
                                self.scratch.length += out_length
                            else:
                                self._set_value(field, self.index_base + o + 1, length, False)
                    else:
                        if memchr(base + o + 1, 92, length) != NULL:
                            if self._scratch_reserve(length + 1) != 0:
                                return R_FALLBACK
                            if capture >= 0:
                                if capture_any:
                                    self.scratch.data[self.scratch.length] = 44
                                    self.scratch.length += 1
                                out_length = unescape_into(base + o + 1, length,
                                                           self.scratch.data + self.scratch.length, &bad)
                                if out_length < 0:
                                    return R_FALLBACK
                                self.scratch.length += out_length
                                capture_any = True
                            else:
                                out_length = unescape_into(base + o + 1, length,
                                                           self.scratch.data + self.scratch.length, &bad)
                                if out_length < 0:
                                    return R_FALLBACK
                        elif capture >= 0:
                            if self._scratch_reserve(length + 1) != 0:
                                return R_FALLBACK
                            if capture_any:
                                self.scratch.data[self.scratch.length] = 44
                                self.scratch.length += 1
                            memcpy(self.scratch.data + self.scratch.length, base + o + 1, length)
                            self.scratch.length += length
                            capture_any = True
                    i += 1
                    expect = 4
                    continue
                else:
                    next_o = index[i + 1]
                    q = next_o
                    while q > o and is_ws(base[q - 1]):
                        q -= 1
                    length = q - o
                    if c == 110:
                        if length != 4 or memcmp(base + o, b"null", 4) != 0:
                            return R_FALLBACK
                    else:
                        if c == 116:
                            if length != 4 or memcmp(base + o, b"true", 4) != 0:
                                return R_FALLBACK
                        elif c == 102:
                            if length != 5 or memcmp(base + o, b"false", 5) != 0:
                                return R_FALLBACK
                        elif not valid_json_number(base + o, length):
                            return R_FALLBACK
                        if array_depth == 0:
                            self.acc.n_fields += 1
                            if field >= 0:
                                self._set_value(field, self.index_base + o, length, False)
                        elif capture >= 0:
                            if self._scratch_reserve(length + 1) != 0:
                                return R_FALLBACK
                            if capture_any:
                                self.scratch.data[self.scratch.length] = 44
                                self.scratch.length += 1
                            memcpy(self.scratch.data + self.scratch.length, base + o, length)
                            self.scratch.length += length
                            capture_any = True
                    i += 1
                    expect = 4
                    continue
            # expect == 4, or a closer allowed by expect 0/3
            if c == 44 and expect == 4:
                expect = 1 if kinds[depth - 1] == 123 else 2
                i += 1
                continue
            if c == 125 and kinds[depth - 1] == 123 and expect != 1 and expect != 2 and expect != 3:
                depth -= 1
                i += 1
                if depth == 0:
                    if o + 1 - start > max_document_bytes:
                        return R_FALLBACK
                    cursor[0] = i
                    if self._finish_record(self.index_base + start, self.index_base + o + 1,
                                           False) == R_FAILED:
                        return R_FAILED
                    return R_OK
                if array_depth == 0:
                    path_length = path_lengths[depth]
                expect = 4
                continue
            if c == 93 and kinds[depth - 1] == 91 and (expect == 4 or expect == 3):
                depth -= 1
                array_depth -= 1
                i += 1
                if array_depth == 0:
                    # [R4] an array is one field, present even when empty
                    self.acc.n_fields += 1
                    if capture >= 0:
                        self._set_value(capture, capture_start, self.scratch.length - capture_start, True)
                    capture = -1
                expect = 4
                continue
            return R_FALLBACK

    # ----------------------------------------------------------------------------------
    # JSON: the tolerant gear (byte level; the authority on [R2]-[R6])

    cdef int _tol_run(self, bint final, bint resumable) noexcept nogil:
        """Read from self.pos until the fast gear can take over, the indexed window (or
        the failed one) is passed, or data runs out."""
        cdef int64_t started_at = self.pos
        cdef int64_t stop = self.index_end if resumable else self._choose_cut(final)
        cdef int64_t p, entry, resume_at
        cdef uint8_t c
        cdef int result
        if not resumable:
            self.index_end = stop
        while self.failure == FAIL_NONE:
            if self.top_state != TOP:
                result = self._tol_streaming(final)
                if result != R_OK:
                    return result
                continue
            p = self.pos
            while p < self.buf.length and is_ws(self.buf.data[p]):
                p += 1
            self.pos = p
            if p >= self.buf.length:
                return R_OK if final else R_WAIT
            if p >= stop:
                return R_OK
            c = self.buf.data[p]
            if c == 123:
                if resumable and p > started_at:
                    entry = self._index_lookup(p)
                    if entry >= 0:
                        result = self._walk(<size_t>entry, &resume_at)
                        if result == R_DONE:
                            self.pos = self.index_end
                            return R_OK
                        if result == R_FAILED:
                            return R_FAILED
                        self.pos = resume_at
                        started_at = resume_at
                        if result == R_WAIT and resume_at > self.index_base:
                            return R_OK
                        continue
                result = self._tol_document(p, final)
                if result != R_OK:
                    return result
            elif c == 91 or c == 93 or c == 44:  # [R2] [ ] , between documents
                self.pos = p + 1
            elif c == 47:  # '/'
                if p + 1 >= self.buf.length:
                    if not final:
                        return R_WAIT
                    self._start_junk(p)
                elif self.buf.data[p + 1] == 47:
                    self.top_state = TOP_LINE_COMMENT
                    self.pos = p + 2
                elif self.buf.data[p + 1] == 42:
                    self.top_state = TOP_BLOCK_COMMENT
                    self.comment_prev_star = False
                    self.pos = p + 2
                else:
                    self._start_junk(p)
            else:
                result = self._tol_top_scalar(p, final)
                if result != R_OK:
                    return result
        return R_FAILED

    cdef void _start_junk(self, int64_t p) noexcept nogil:
        # [R2] junk: one malformed document with no fields, up to the next '{'
        self._note_problem(p)
        self.top_state = TOP_JUNK
        self.junk_start = p
        self.pos = p + 1

    cdef int _tol_streaming(self, bint final) noexcept nogil:
        """Continue a streaming state (comment, junk, resynchronisation)."""
        cdef int64_t p = self.pos, length = self.buf.length
        cdef const uint8_t *hit
        cdef uint8_t c
        if self.top_state == TOP_LINE_COMMENT:
            hit = <const uint8_t *>memchr(self.buf.data + p, 10, length - p)
            if hit != NULL:
                self.pos = (hit - self.buf.data) + 1
                self.top_state = TOP
                return R_OK
            self.pos = length
            if final:
                self.top_state = TOP
                return R_OK
            return R_WAIT
        if self.top_state == TOP_BLOCK_COMMENT:
            while p < length:
                c = self.buf.data[p]
                p += 1
                if c == 47 and self.comment_prev_star:
                    self.pos = p
                    self.top_state = TOP
                    return R_OK
                self.comment_prev_star = c == 42
            self.pos = length
            if final:
                self.top_state = TOP  # an unterminated comment runs to the end [R2]
                return R_OK
            return R_WAIT
        if self.top_state == TOP_JUNK:
            hit = <const uint8_t *>memchr(self.buf.data + p, 123, length - p)
            if hit == NULL and not final:
                self.pos = length
                return R_WAIT
            self.pos = (hit - self.buf.data) if hit != NULL else length
            self.top_state = TOP
            self._acc_reset()
            if self._finish_record(self.junk_start, self.pos, True) == R_FAILED:
                return R_FAILED
            return R_OK
        # TOP_SKIP [R5]: skip to the '}' that closes the document or to a '{' that
        # starts a line, tracking strings (which also end at a newline).
        while p < length:
            c = self.buf.data[p]
            if self.skip_in_string:
                if self.skip_escape:
                    self.skip_escape = False
                elif c == 92:
                    self.skip_escape = True
                elif c == 34 or c == 10:
                    self.skip_in_string = False
            elif c == 34:
                self.skip_in_string = True
            elif c == 123:
                if self.skip_prev_newline:
                    return self._end_skip(p)
                self.skip_depth += 1
            elif c == 125:
                self.skip_depth -= 1
                if self.skip_depth <= 0:
                    return self._end_skip(p + 1)
            self.skip_prev_newline = c == 10
            p += 1
        self.pos = length
        if final:
            # The body ended while skipping: the document is truncated [R6].
            self._fail(FAIL_TRUNCATED, self.buf_base + length)
            return R_FAILED
        return R_WAIT

    cdef int _end_skip(self, int64_t end) noexcept nogil:
        self.pos = end
        self.top_state = TOP
        if self._commit_pending(True, end) == R_FAILED:
            return R_FAILED
        return R_OK

    cdef int _tol_top_scalar(self, int64_t p, bint final) noexcept nogil:
        """A scalar between documents is skipped when valid, junk otherwise [R2]."""
        cdef Cursor cur
        cdef int64_t content_start, content_end
        cdef bint escaped
        cdef int result
        cur.pos = p
        cur.data_end = self.buf.length
        cur.limit = self.buf.length
        cur.line_break = INT64_MAX
        cur.size_limit = INT64_MAX
        cur.final = final
        if self.buf.data[p] == 34:
            result = self._tol_string(&cur, &content_start, &content_end, &escaped)
        else:
            result = self._tol_token(&cur, &content_start, &content_end, True)
        if result == R_OK:
            self.pos = cur.pos
            return R_OK
        if result == R_LIMIT and not final and self.buf.length - p <= max_document_bytes:
            return R_WAIT
        self._start_junk(p)
        return R_OK

    cdef int _tol_document(self, int64_t start, bint final) noexcept nogil:
        cdef Cursor cur
        cdef const uint8_t *newline
        cdef int64_t q
        cdef int result
        cur.pos = start
        cur.data_end = self.buf.length
        cur.final = final
        cur.line_break = INT64_MAX
        newline = <const uint8_t *>memchr(self.buf.data + start, 10, self.buf.length - start)
        if newline != NULL:
            q = newline - self.buf.data
            if q + 1 < self.buf.length and self.buf.data[q + 1] == 123:
                cur.line_break = q + 1
        cur.size_limit = start + max_document_bytes
        cur.limit = cur.data_end
        if cur.line_break < cur.limit:
            cur.limit = cur.line_break
        if cur.size_limit < cur.limit:
            cur.limit = cur.size_limit
        cur.open_objects = 0
        cur.err_in_string = False
        cur.limit_in_string = False
        self._acc_reset()
        self.capture_any = False
        result = self._tol_object(&cur, 1, True, -1, 0)
        if result == R_OK:
            self.pos = cur.pos
            if self._finish_record(start, cur.pos, False) == R_FAILED:
                return R_FAILED
            return R_OK
        if result == R_ERROR:
            return self._begin_skip(start, cur.err_pos, cur.err_in_string, cur.open_objects)
        # R_LIMIT
        if cur.pos >= cur.line_break:
            # [R5 d] the document ends at the newline; the '{' starts the next one.
            self._note_problem(cur.line_break)
            self.pos = cur.line_break
            if self._finish_record(start, cur.line_break, True) == R_FAILED:
                return R_FAILED
            return R_OK
        if cur.pos >= cur.size_limit:
            return self._begin_skip(start, cur.size_limit, cur.limit_in_string, cur.open_objects)
        if not final:
            self.pos = start
            return R_WAIT
        self._note_problem(start)
        self._fail(FAIL_TRUNCATED, self.buf_base + self.buf.length)
        return R_FAILED

    cdef int _begin_skip(self, int64_t start, int64_t err_pos, bint in_string,
                         int64_t open_objects) noexcept nogil:
        self._note_problem(err_pos)
        self._resolve_into_pending(start)
        self.top_state = TOP_SKIP
        self.skip_depth = open_objects
        self.skip_in_string = in_string
        self.skip_escape = False
        self.skip_prev_newline = err_pos > 0 and self.buf.data[err_pos - 1] == 10
        self.pos = err_pos
        return R_OK

    cdef int _tol_ws(self, Cursor *cur) noexcept nogil:
        """Skip whitespace and comments inside a document [R3]."""
        cdef int64_t p = cur.pos
        cdef const uint8_t *hit
        cdef uint8_t c
        while True:
            if p >= cur.limit:
                cur.pos = p
                return R_LIMIT
            c = self.buf.data[p]
            if is_ws(c):
                p += 1
                continue
            if c != 47:
                cur.pos = p
                return R_OK
            if p + 1 >= cur.limit:
                cur.pos = cur.limit
                return R_LIMIT
            if self.buf.data[p + 1] == 47:
                hit = <const uint8_t *>memchr(self.buf.data + p + 2, 10, cur.limit - p - 2)
                if hit == NULL:
                    cur.pos = cur.limit
                    return R_LIMIT
                p = (hit - self.buf.data) + 1
            elif self.buf.data[p + 1] == 42:
                p += 2
                while True:
                    if p + 1 >= cur.limit:
                        cur.pos = cur.limit
                        return R_LIMIT
                    if self.buf.data[p] == 42 and self.buf.data[p + 1] == 47:
                        p += 2
                        break
                    p += 1
            else:
                cur.err_pos = p
                cur.err_in_string = False
                return R_ERROR

    cdef int _tol_string(self, Cursor *cur, int64_t *content_start, int64_t *content_end,
                         bint *escaped) noexcept nogil:
        """Validate the string at cur.pos ('"') [R3]; on R_OK cur.pos is past it."""
        cdef int64_t p = cur.pos + 1, sequence
        cdef uint8_t c, e
        escaped[0] = False
        while True:
            if p >= cur.limit:
                cur.pos = p
                cur.limit_in_string = True
                return R_LIMIT
            c = self.buf.data[p]
            if c == 34:
                content_start[0] = cur.pos + 1
                content_end[0] = p
                cur.pos = p + 1
                return R_OK
            if c == 92:
                escaped[0] = True
                if p + 1 >= cur.limit:
                    cur.pos = cur.limit
                    cur.limit_in_string = True
                    return R_LIMIT
                e = self.buf.data[p + 1]
                if e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116:
                    p += 2
                elif e == 117:
                    if p + 6 > cur.limit:
                        cur.pos = cur.limit
                        cur.limit_in_string = True
                        return R_LIMIT
                    if (hex_value(self.buf.data[p + 2]) < 0 or hex_value(self.buf.data[p + 3]) < 0
                            or hex_value(self.buf.data[p + 4]) < 0 or hex_value(self.buf.data[p + 5]) < 0):
                        cur.err_pos = p
                        cur.err_in_string = True
                        return R_ERROR
                    p += 6
                else:
                    cur.err_pos = p
                    cur.err_in_string = True
                    return R_ERROR
            elif c < 32:
                cur.err_pos = p
                cur.err_in_string = True
                return R_ERROR
            elif c < 128:
                p += 1
            else:
                sequence = utf8_sequence_length(self.buf.data + p, cur.limit - p)
                if sequence == 0:
                    cur.err_pos = p
                    cur.err_in_string = True
                    return R_ERROR
                if sequence < 0:
                    cur.pos = cur.limit
                    cur.limit_in_string = True
                    return R_LIMIT
                p += sequence

    cdef int _tol_token(self, Cursor *cur, int64_t *token_start, int64_t *token_end,
                        bint end_is_delimiter) noexcept nogil:
        """A number or literal at cur.pos: the run up to a delimiter, validated."""
        cdef int64_t p = cur.pos, length
        cdef uint8_t c
        while p < cur.limit:
            c = self.buf.data[p]
            if (is_ws(c) or c == 44 or c == 93 or c == 125 or c == 58 or c == 91 or c == 123
                    or c == 34 or c == 47):
                break
            p += 1
        if p >= cur.limit and not (end_is_delimiter and cur.final and p >= cur.data_end):
            cur.pos = p
            return R_LIMIT
        length = p - cur.pos
        if not ((length == 4 and memcmp(self.buf.data + cur.pos, b"true", 4) == 0)
                or (length == 5 and memcmp(self.buf.data + cur.pos, b"false", 5) == 0)
                or (length == 4 and memcmp(self.buf.data + cur.pos, b"null", 4) == 0)
                or valid_json_number(self.buf.data + cur.pos, length)):
            cur.err_pos = cur.pos
            cur.err_in_string = False
            return R_ERROR
        token_start[0] = cur.pos
        token_end[0] = p
        cur.pos = p
        return R_OK

    cdef int _capture_append(self, const uint8_t *text, int64_t length, bint unescape) noexcept nogil:
        cdef int64_t out_length, bad
        if self._scratch_reserve(length + 1) != 0:
            return -1
        if self.capture_any:
            self.scratch.data[self.scratch.length] = 44
            self.scratch.length += 1
        if unescape:
            out_length = unescape_into(text, length, self.scratch.data + self.scratch.length, &bad)
        else:
            memcpy(self.scratch.data + self.scratch.length, text, length)
            out_length = length
        self.scratch.length += out_length
        self.capture_any = True
        return 0

    cdef int _tol_value(self, Cursor *cur, int64_t depth, bint field_mode, int field,
                        int capture, int64_t path_length, int64_t key_length) noexcept nogil:
        """One value. In field mode it is the value of field `field` (-1: not an input
        field); inside arrays it is a leaf appended to `capture` (-1: none)."""
        cdef uint8_t c = self.buf.data[cur.pos]
        cdef int64_t start, end, capture_start, out_length, bad, new_path
        cdef bint escaped
        cdef int result
        if c == 123:
            if depth >= max_depth:
                cur.err_pos = cur.pos
                cur.err_in_string = False
                return R_ERROR
            new_path = path_length
            if field_mode:
                new_path = path_length + key_length + 1
                if new_path <= PATH_CAPACITY:
                    memcpy(self.path + path_length, self.key, key_length)
                    self.path[path_length + key_length] = 46
            return self._tol_object(cur, depth + 1, field_mode, capture, new_path)
        if c == 91:
            if depth >= max_depth:
                cur.err_pos = cur.pos
                cur.err_in_string = False
                return R_ERROR
            if field_mode:
                capture = field
                capture_start = self.scratch.length
                self.capture_any = False
            result = self._tol_array(cur, depth + 1, capture)
            if result != R_OK:
                return result
            if field_mode:
                self.acc.n_fields += 1
                if field >= 0:
                    self._set_value(field, capture_start, self.scratch.length - capture_start, True)
            return R_OK
        if c == 34:
            result = self._tol_string(cur, &start, &end, &escaped)
            if result != R_OK:
                return result
            if field_mode:
                self.acc.n_fields += 1
                if field >= 0:
                    if escaped:
                        if self._scratch_reserve(end - start) != 0:
                            return R_ERROR
                        out_length = unescape_into(self.buf.data + start, end - start,
                                                   self.scratch.data + self.scratch.length, &bad)
                        self._set_value(field, self.scratch.length, out_length, True)
                        self.scratch.length += out_length
                    else:
                        self._set_value(field, start, end - start, False)
            elif capture >= 0:
                self._capture_append(self.buf.data + start, end - start, escaped)
            return R_OK
        result = self._tol_token(cur, &start, &end, False)
        if result != R_OK:
            return result
        if c == 110:  # null: not a field, not present, no override [R4]
            return R_OK
        if field_mode:
            self.acc.n_fields += 1
            if field >= 0:
                self._set_value(field, start, end - start, False)
        elif capture >= 0:
            self._capture_append(self.buf.data + start, end - start, False)
        return R_OK

    cdef int _tol_object(self, Cursor *cur, int64_t depth, bint field_mode, int capture,
                         int64_t path_length) noexcept nogil:
        cdef int result, field
        cdef int64_t key_start, key_end, key_length, bad
        cdef bint escaped
        cur.pos += 1
        cur.open_objects += 1
        result = self._tol_ws(cur)
        if result != R_OK:
            return result
        if self.buf.data[cur.pos] == 125:
            cur.pos += 1
            cur.open_objects -= 1
            return R_OK
        while True:
            if self.buf.data[cur.pos] != 34:
                cur.err_pos = cur.pos
                cur.err_in_string = False
                return R_ERROR
            result = self._tol_string(cur, &key_start, &key_end, &escaped)
            if result != R_OK:
                return result
            field = -1
            key_length = key_end - key_start
            if field_mode:
                if key_length <= KEY_CAPACITY:
                    if escaped:
                        key_length = unescape_into(self.buf.data + key_start, key_end - key_start,
                                                   self.key, &bad)
                    else:
                        memcpy(self.key, self.buf.data + key_start, key_length)
                    if path_length <= PATH_CAPACITY:
                        field = self._match(self.path, path_length, self.key, key_length)
                else:
                    key_length = PATH_CAPACITY + 1  # too long to be any field's prefix
            result = self._tol_ws(cur)
            if result != R_OK:
                return result
            if self.buf.data[cur.pos] != 58:
                cur.err_pos = cur.pos
                cur.err_in_string = False
                return R_ERROR
            cur.pos += 1
            result = self._tol_ws(cur)
            if result != R_OK:
                return result
            result = self._tol_value(cur, depth, field_mode, field, capture, path_length,
                                     key_length if key_length <= KEY_CAPACITY else 0)
            if result != R_OK:
                return result
            result = self._tol_ws(cur)
            if result != R_OK:
                return result
            if self.buf.data[cur.pos] == 44:
                cur.pos += 1
                result = self._tol_ws(cur)
                if result != R_OK:
                    return result
                continue
            if self.buf.data[cur.pos] == 125:
                cur.pos += 1
                cur.open_objects -= 1
                return R_OK
            cur.err_pos = cur.pos
            cur.err_in_string = False
            return R_ERROR

    cdef int _tol_array(self, Cursor *cur, int64_t depth, int capture) noexcept nogil:
        cdef int result
        cur.pos += 1
        result = self._tol_ws(cur)
        if result != R_OK:
            return result
        if self.buf.data[cur.pos] == 93:
            cur.pos += 1
            return R_OK
        while True:
            result = self._tol_value(cur, depth, False, -1, capture, 0, 0)
            if result != R_OK:
                return result
            result = self._tol_ws(cur)
            if result != R_OK:
                return result
            if self.buf.data[cur.pos] == 44:
                cur.pos += 1
                result = self._tol_ws(cur)
                if result != R_OK:
                    return result
                continue
            if self.buf.data[cur.pos] == 93:
                cur.pos += 1
                return R_OK
            cur.err_pos = cur.pos
            cur.err_in_string = False
            return R_ERROR

    # ----------------------------------------------------------------------------------
    # Delimited (CSV) format [C1]-[C6]

    cdef int _csv_row_end(self, int64_t start, bint final, int64_t *content_end,
                          int64_t *next_start) noexcept nogil:
        """Find the row starting at `start`: its content end (without '\\n' and one
        '\\r') and the start of the next row. R_OK, R_WAIT, or R_FAILED."""
        cdef int64_t length = self.buf.length, p, lines = 0
        cdef const uint8_t *newline
        cdef uint8_t c
        cdef bint in_quotes = False, cell_start = True
        newline = <const uint8_t *>memchr(self.buf.data + start, 10, length - start)
        p = (newline - self.buf.data) if newline != NULL else length
        if memchr(self.buf.data + start, self.quote, p - start) == NULL:
            if newline == NULL and not final:
                if length - start > max_document_bytes:
                    self._note_problem(start)
                    self._fail(FAIL_CSV_ROW_TOO_LARGE, self.buf_base + start)
                    return R_FAILED
                return R_WAIT
            next_start[0] = p + 1 if newline != NULL else length
        else:
            # A quoted cell may hold newlines: walk the cells [C3].
            p = start
            while True:
                if p >= length:
                    if not final:
                        if length - start > max_document_bytes:
                            self._note_problem(start)
                            self._fail(FAIL_CSV_ROW_TOO_LARGE, self.buf_base + start)
                            return R_FAILED
                        return R_WAIT
                    if in_quotes:
                        self._note_problem(start)
                        self._fail(FAIL_CSV_QUOTE, self.buf_base + start)
                        return R_FAILED
                    next_start[0] = length
                    break
                c = self.buf.data[p]
                if in_quotes:
                    if c == self.quote:
                        if p + 1 < length and self.buf.data[p + 1] == self.quote:
                            p += 2
                            continue
                        if p + 1 >= length and not final:
                            return R_WAIT  # cannot tell a closing quote from a doubled one yet
                        in_quotes = False
                    elif c == 10:
                        lines += 1
                        if lines >= max_quoted_lines:  # at most 10,000 lines [C3]
                            self._note_problem(start)
                            self._fail(FAIL_CSV_QUOTE, self.buf_base + start)
                            return R_FAILED
                    p += 1
                    continue
                if c == 10:
                    next_start[0] = p + 1
                    break
                if cell_start and c == self.quote:
                    in_quotes = True
                    cell_start = False
                elif c == self.delimiter:
                    cell_start = True
                else:
                    cell_start = False
                p += 1
        if p > start and self.buf.data[p - 1] == 13:
            p -= 1
        content_end[0] = p
        return R_OK

    cdef int64_t _csv_cells(self, int64_t start, int64_t end, int64_t *cell_starts,
                            int64_t *cell_ends, uint8_t *cell_quoted, int64_t wanted) noexcept nogil:
        """Split row content into cells; records spans of the first `wanted` cells and
        returns the total number of cells. Quoted cells' spans include the quotes."""
        cdef int64_t p = start, cells = 0, cell_begin
        cdef bint quoted
        cdef const uint8_t *hit
        while True:
            cell_begin = p
            quoted = False
            if p < end and self.buf.data[p] == self.quote:
                quoted = True
                p += 1
                while p < end:
                    if self.buf.data[p] == self.quote:
                        if p + 1 < end and self.buf.data[p + 1] == self.quote:
                            p += 2
                            continue
                        p += 1
                        break
                    p += 1
            hit = <const uint8_t *>memchr(self.buf.data + p, self.delimiter, end - p)
            if cells < wanted:
                cell_starts[cells] = cell_begin
                cell_ends[cells] = (hit - self.buf.data) if hit != NULL else end
                cell_quoted[cells] = quoted
            cells += 1
            if hit == NULL:
                return cells
            p = (hit - self.buf.data) + 1

    cdef int64_t _csv_cell_text(self, int64_t start, int64_t end, bint quoted) noexcept nogil:
        """Write the cell's text into scratch; returns its scratch offset (-1 on OOM)."""
        cdef int64_t p = start + 1, out
        if self._scratch_reserve(end - start) != 0:
            return -1
        out = self.scratch.length
        while p < end:
            if self.buf.data[p] == self.quote:
                if p + 1 < end and self.buf.data[p + 1] == self.quote:
                    self.scratch.data[self.scratch.length] = self.quote
                    self.scratch.length += 1
                    p += 2
                    continue
                p += 1
                # text after the closing quote is appended as is [C3]
                memcpy(self.scratch.data + self.scratch.length, self.buf.data + p, end - p)
                self.scratch.length += end - p
                return out
            self.scratch.data[self.scratch.length] = self.buf.data[p]
            self.scratch.length += 1
            p += 1
        return out

    def _csv_read_header(self, bint final):
        """Parse the header row (with the GIL: it happens once). Returns True when the
        header is complete and valid."""
        cdef int64_t content_end, next_start, cells, i
        cdef int result
        cdef int64_t starts[4096]
        cdef int64_t ends[4096]
        cdef uint8_t quoted[4096]
        cdef int64_t offset
        while True:
            if self.pos >= self.buf.length:
                return False
            result = self._csv_row_end(self.pos, final, &content_end, &next_start)
            if result != R_OK:
                return False
            if content_end > self.pos:
                break
            self.pos = next_start  # leading empty rows are skipped [C2]
        cells = self._csv_cells(self.pos, content_end, starts, ends, quoted, 4096)
        names = []
        for i in range(min(cells, 4096)):
            if quoted[i]:
                self.scratch.length = 0
                offset = self._csv_cell_text(starts[i], ends[i], True)
                text = (<char *>self.scratch.data)[offset:self.scratch.length]
            else:
                text = (<char *>self.buf.data)[starts[i]:ends[i]]
            names.append(text.decode("utf-8", "replace"))
        self.csv_header_names = names
        self.csv_header_columns = cells
        self.csv_max_column = 0
        fields = self._input_field_names()
        for i, name in enumerate(fields):
            if name not in names:
                self._note_problem(self.pos)
                self._fail(FAIL_CSV_HEADER, self.buf_base + self.pos)
                self.csv_missing_field = name
                return False
            self.csv_column_of_input[i] = names.index(name)
            self.csv_max_column = max(self.csv_max_column, self.csv_column_of_input[i] + 1)
        self.pos = next_start
        self.csv_header_done = True
        return True

    def _input_field_names(self):
        blob = self.field_names_blob
        return [blob[self.field_name_start[i]:self.field_name_start[i] + self.field_name_length[i]]
                .decode("utf-8") for i in range(self.n_inputs)]

    cdef void _csv_process(self, bint final) noexcept nogil:
        cdef int64_t content_end, next_start, cells, i, column, offset
        cdef int result
        cdef int64_t starts[MAX_FIELDS * 4]
        cdef int64_t ends[MAX_FIELDS * 4]
        cdef uint8_t quoted[MAX_FIELDS * 4]
        if not self.csv_header_done:
            with gil:
                if not self._csv_read_header(final):
                    return
        while self.failure == FAIL_NONE and self.pos < self.buf.length:
            result = self._csv_row_end(self.pos, final, &content_end, &next_start)
            if result != R_OK:
                return
            if content_end == self.pos:
                self.pos = next_start  # empty row [C2]
                continue
            cells = self._csv_cells(self.pos, content_end, starts, ends, quoted, self.csv_max_column)
            self._acc_reset()
            self.acc.n_fields = self.csv_header_columns  # f comes from the header [C1]
            for i in range(self.n_inputs):
                column = self.csv_column_of_input[i]
                if column >= cells:
                    continue  # missing [C5]
                if quoted[column]:
                    offset = self._csv_cell_text(starts[column], ends[column], True)
                    if offset < 0:
                        self._fail(FAIL_NO_MEMORY, self.buf_base + self.pos)
                        return
                    self._set_value(i, offset, self.scratch.length - offset, True)
                else:
                    self._set_value(i, starts[column], ends[column] - starts[column], False)
            if self._finish_record(self.pos, next_start, False) == R_FAILED:
                return
            self.pos = next_start


# ---------------------------------------------------------------------------------------
# Module-level helpers

def simdjson_kernel() -> str:
    """Name of the simdjson kernel chosen at run time for this CPU (e.g. "haswell")."""
    return sj.adjobs_simdjson_kernel().decode()


def simdjson_version() -> str:
    return sj.adjobs_simdjson_version().decode()


def bare_simdjson_scan(data) -> int:
    """Baseline for benchmarks: simdjson's on-demand document stream over ``data``
    (NDJSON), visiting every key and raw value. Returns the number of fields visited.

    The padded copy is made before timing-relevant work would start in a real upload too
    (our reader copies chunks into a padded buffer), so callers time the whole call.
    """
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef size_t n = view.shape[0]
    cdef uint8_t *padded = <uint8_t *>malloc(n + sj.ADJOBS_PADDING)
    cdef int64_t fields
    if padded == NULL:
        raise MemoryError()
    try:
        with nogil:
            if n:
                memcpy(padded, &view[0], n)
            memset(padded + n, 0, sj.ADJOBS_PADDING)
            fields = sj.adjobs_bare_scan(padded, n, n + 1)
    finally:
        free(padded)
    if fields < 0:
        raise ValueError("simdjson could not read the data")
    return fields


def parse_time(program: bytes, text: bytes, int default_year):
    """Parse one timestamp with a compiled time-format program (tests and debugging)."""
    cdef int64_t out = 0
    cdef int status = adjobs_time_parse(<const int32_t *>PyBytes_AS_STRING(program),
                                        <size_t>(len(program) // 4),
                                        PyBytes_AS_STRING(text), <size_t>len(text),
                                        default_year, &out)
    return out if status == 0 else None


def parse_number(text: bytes) -> float:
    """A numeric field's text as the core reads it (NaN when not a number)."""
    return parse_decimal(<const uint8_t *>PyBytes_AS_STRING(text), len(text))


cdef void _read_chunk(Upload upload) noexcept nogil:
    # A chunk of Upload.feed_in_background: plain C on the upload's buffers.
    if upload._append(upload.chunk_data, upload.chunk_length) != 0:
        upload.chunk_no_memory = True
    else:
        upload._process(False)
    PyThread_release_lock(upload.reading_done)


cdef void _reading_worker(Upload upload) noexcept nogil:
    # The thread of Upload.feed_in_background, one per upload: reads each chunk as it is
    # handed over, until told to stop. Started through a cast to the thread API's void *
    # signature, so it takes no reference: the upload waits for it to stop before it goes.
    while True:
        PyThread_acquire_lock(upload.work_ready, WAIT_LOCK)
        if upload.worker_stop:
            break
        _read_chunk(upload)
    PyThread_release_lock(upload.worker_gone)


FAILURE_NONE = FAIL_NONE
FAILURE_MALFORMED_LIMIT = FAIL_MALFORMED_LIMIT
FAILURE_TRUNCATED = FAIL_TRUNCATED
FAILURE_CSV_QUOTE = FAIL_CSV_QUOTE
FAILURE_CSV_HEADER = FAIL_CSV_HEADER
FAILURE_CSV_ROW_TOO_LARGE = FAIL_CSV_ROW_TOO_LARGE
FAILURE_NO_MEMORY = FAIL_NO_MEMORY
