# Extern declarations for our shim over simdjson (ext/adjobs_simdjson.h).
# Only the calls the core uses are declared.
from libc.stdint cimport int64_t, uint8_t, uint32_t


cdef extern from "adjobs_simdjson.h" nogil:
    ctypedef struct adjobs_indexer:
        pass

    enum:
        ADJOBS_INDEX_OK
        ADJOBS_INDEX_UNCLOSED_STRING
        ADJOBS_INDEX_INVALID
        ADJOBS_INDEX_NO_MEMORY
        ADJOBS_INDEX_EMPTY

    const size_t ADJOBS_PADDING

    adjobs_indexer *adjobs_indexer_new() noexcept
    void adjobs_indexer_free(adjobs_indexer *ix) noexcept
    int adjobs_indexer_run(adjobs_indexer *ix, const uint8_t *buf, size_t length,
                           const uint32_t **indexes, size_t *count) noexcept
    const char *adjobs_simdjson_kernel() noexcept
    const char *adjobs_simdjson_version() noexcept
    int64_t adjobs_bare_scan(const uint8_t *buf, size_t length, size_t capacity_hint) noexcept
    size_t adjobs_count_newlines(const uint8_t *p, size_t n) noexcept
    const uint8_t *adjobs_memrchr(const uint8_t *p, int c, size_t n) noexcept
