# The groups of records that share a key (adjobs.features.stable_groups): a stable counting
# sort of small integer keys.
#
# A detector's features group the records of a run of buckets by (bucket, series): a few
# integer columns whose ranges multiply to a few thousand values. numpy packs them into one
# key (four passes over the records per column), sorts it (a radix sort: two more) and
# finds where the key changes (three more); here one pass counts the packed keys and
# another places each record, in input order within its key. A stable sort's order is
# unique, so it is np.argsort(packed, kind="stable")'s, bit for bit.
#
# Shape (as _core and _model): `stable_groups` checks arguments, then `with nogil:` runs
# `noexcept nogil` kernels that report failure by status code.

cimport cython
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

import numpy as np

cdef enum:
    OK = 0
    NO_MEMORY = 1
    MAX_KEYS = 4

#: Packed keys take at most this many values (the counting array's length), and at most
#: this many per record: beyond either, numpy's sort is the better way.
MAX_KEY_VALUES = 1 << 20
KEY_VALUES_PER_RECORD = 4


cdef struct Column:
    # One key column: its items, where it is read (an int32 or int64 array, strided).
    const char* data
    Py_ssize_t stride
    bint wide  # int64 (else int32)
    int64_t low
    int64_t scale


cdef inline int64_t item(const Column* column, Py_ssize_t i) noexcept nogil:
    if column.wide:
        return (<const int64_t*>(column.data + i * column.stride))[0]
    return (<const int32_t*>(column.data + i * column.stride))[0]


cdef void column_range(const Column* column, Py_ssize_t n, int64_t* low,
                       int64_t* high) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t v, lo = item(column, 0), hi = lo
    for i in range(1, n):
        v = item(column, i)
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
    low[0] = lo
    high[0] = hi


cdef int count_sort(const Column* columns, int n_columns, Py_ssize_t n, int64_t values,
                    int64_t* order, int64_t* first, Py_ssize_t* n_groups) noexcept nogil:
    """order: the records by packed key, input order within a key; first: where each run
    of one key starts in order."""
    cdef int64_t* at = <int64_t*>calloc(values + 1, sizeof(int64_t))
    cdef int64_t* key = <int64_t*>malloc(max(n, 1) * sizeof(int64_t))
    cdef Py_ssize_t i
    cdef int j
    cdef int64_t k, total = 0, count, groups = 0
    if at == NULL or key == NULL:
        free(at)
        free(key)
        return NO_MEMORY
    for i in range(n):
        k = 0
        for j in range(n_columns):
            k += (item(&columns[j], i) - columns[j].low) * columns[j].scale
        key[i] = k
        at[k] += 1
    # counts -> where each key's records start; the keys present start the groups
    for k in range(values):
        count = at[k]
        at[k] = total
        if count:
            first[groups] = total
            groups += 1
        total += count
    for i in range(n):
        order[at[key[i]]] = i
        at[key[i]] += 1
    n_groups[0] = groups
    free(at)
    free(key)
    return OK


@cython.boundscheck(False)
@cython.wraparound(False)
def stable_groups(keys):
    """``(order, first)`` of integer ``keys`` (least significant first, as np.lexsort takes
    them; int32 or int64, one length): the records ordered by key, ties in input order, and
    where each run of equal keys starts in that order. None where the keys' ranges multiply
    to more than ``max(MAX_KEY_VALUES, KEY_VALUES_PER_RECORD * records)`` values, or for
    other dtypes or no records: then numpy's way."""
    cdef Column columns[MAX_KEYS]
    cdef const int32_t[:] narrow
    cdef const int64_t[:] wide
    cdef int n_columns = len(keys), j
    cdef Py_ssize_t n, n_groups = 0
    cdef int64_t scale = 1, low, high, limit
    cdef int status
    if n_columns == 0 or n_columns > MAX_KEYS:
        return None
    n = len(keys[0])
    if n == 0:
        return None
    for j in range(n_columns):
        array = keys[j]
        if not isinstance(array, np.ndarray) or array.ndim != 1 or len(array) != n:
            return None
        # the arrays are the caller's, held by `keys` while the kernel reads them
        if array.dtype == np.int64:
            wide = array
            columns[j].data = <const char*>&wide[0]
            columns[j].stride = wide.strides[0]
            columns[j].wide = True
        elif array.dtype == np.int32:
            narrow = array
            columns[j].data = <const char*>&narrow[0]
            columns[j].stride = narrow.strides[0]
            columns[j].wide = False
        else:
            return None
    limit = max(MAX_KEY_VALUES, KEY_VALUES_PER_RECORD * n)
    with nogil:
        for j in range(n_columns):
            column_range(&columns[j], n, &low, &high)
            columns[j].low = low
            columns[j].scale = scale
            # (as unsigned: keys spanning most of int64 would overflow a signed difference)
            if <uint64_t>high - <uint64_t>low >= <uint64_t>limit:
                scale = -1
                break
            if scale * (high - low + 1) > limit:
                scale = -1
                break
            scale *= high - low + 1
    if scale < 0:
        return None
    order = np.empty(n, dtype=np.intp)
    first = np.empty(min(n, scale), dtype=np.intp)
    cdef int64_t[::1] order_view = order, first_view = first
    with nogil:
        status = count_sort(columns, n_columns, n, scale, &order_view[0], &first_view[0],
                            &n_groups)
    if status == NO_MEMORY:
        raise MemoryError("no memory to group the records")
    return order, first[:n_groups]
