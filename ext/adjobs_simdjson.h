/* A small shim over simdjson for adjobs' ingest core.
 *
 * The core walks simdjson's stage-1 structural index itself (see docs/ingest-semantics.md
 * for why: Elasticsearch's reading rules need resynchronisation after malformed documents,
 * comments and top-level arrays, which the on-demand document stream cannot do). Every
 * function here is noexcept, returns a status code and writes through out-params, so the
 * Cython side never needs `except +`.
 */
#ifndef ADJOBS_SIMDJSON_H
#define ADJOBS_SIMDJSON_H

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "simdjson.h"

enum adjobs_index_status {
    ADJOBS_INDEX_OK = 0,
    ADJOBS_INDEX_UNCLOSED_STRING = 1, /* the window ends inside a string */
    ADJOBS_INDEX_INVALID = 2,         /* invalid UTF-8 or a raw control byte inside a string */
    ADJOBS_INDEX_NO_MEMORY = 3,
    ADJOBS_INDEX_EMPTY = 4            /* nothing but whitespace */
};

static const size_t ADJOBS_PADDING = simdjson::SIMDJSON_PADDING;

struct adjobs_indexer {
    std::unique_ptr<simdjson::internal::dom_parser_implementation> impl;
    size_t capacity = 0;
};

static inline adjobs_indexer *adjobs_indexer_new() noexcept {
    return new (std::nothrow) adjobs_indexer();
}

static inline void adjobs_indexer_free(adjobs_indexer *ix) noexcept { delete ix; }

/* Index buf[0:len) (which must be readable up to len + ADJOBS_PADDING). On OK, *indexes
 * holds *count offsets of structural characters and scalar starts, followed by a sentinel
 * equal to len. */
static inline int adjobs_indexer_run(adjobs_indexer *ix, const uint8_t *buf, size_t len,
                                     const uint32_t **indexes, size_t *count) noexcept {
    *indexes = nullptr;
    *count = 0;
    if (len == 0) return ADJOBS_INDEX_EMPTY;
    if (!ix->impl || ix->capacity < len + 1) {
        size_t capacity = len + 1 > 2 * ix->capacity ? len + 1 : 2 * ix->capacity;
        std::unique_ptr<simdjson::internal::dom_parser_implementation> fresh;
        auto err = simdjson::get_active_implementation()->create_dom_parser_implementation(
            capacity, 1024, fresh);
        if (err) return ADJOBS_INDEX_NO_MEMORY;
        ix->impl = std::move(fresh);
        ix->capacity = capacity;
    }
    auto err = ix->impl->stage1(buf, len, simdjson::stage1_mode::regular);
    if (err == simdjson::UNCLOSED_STRING) return ADJOBS_INDEX_UNCLOSED_STRING;
    if (err == simdjson::EMPTY) return ADJOBS_INDEX_EMPTY;
    if (err) return ADJOBS_INDEX_INVALID;
    *indexes = ix->impl->structural_indexes.get();
    *count = ix->impl->n_structural_indexes;
    return ADJOBS_INDEX_OK;
}

static inline const char *adjobs_simdjson_kernel() noexcept {
    return simdjson::get_active_implementation()->name().data();
}

static inline const char *adjobs_simdjson_version() noexcept { return SIMDJSON_VERSION; }

/* The "bare simdjson" baseline of bench/ingest.py: on-demand iterate_many over the whole
 * buffer, visiting every key and the raw text of every top-level value. Returns the
 * number of fields visited, or -1 on error. */
static inline int64_t adjobs_bare_scan(const uint8_t *buf, size_t len, size_t capacity_hint) noexcept {
    simdjson::ondemand::parser parser;
    simdjson::ondemand::document_stream stream;
    (void)capacity_hint;
    if (parser.iterate_many(buf, len, simdjson::ondemand::DEFAULT_BATCH_SIZE).get(stream)) return -1;
    int64_t fields = 0;
    for (auto doc : stream) {
        simdjson::ondemand::object object;
        if (doc.get_object().get(object)) return -1;
        for (auto field : object) {
            std::string_view key = field.key_raw_json_token();
            simdjson::ondemand::value value;
            if (field.value().get(value)) return -1;
            std::string_view raw = value.raw_json_token();
            if (raw.empty()) return -1; /* also keeps the visit from being optimised out */
            fields += 1;
        }
    }
    return fields;
}

/* Count '\n' bytes; written so that compilers vectorise it at -O2/-O3. */
static inline size_t adjobs_count_newlines(const uint8_t *p, size_t n) noexcept {
    size_t total = 0;
    while (n > 0) {
        size_t block = n < 255 ? n : 255;
        uint8_t acc = 0;
        for (size_t i = 0; i < block; i++) acc = (uint8_t)(acc + (p[i] == '\n'));
        total += acc;
        p += block;
        n -= block;
    }
    return total;
}

/* Last occurrence of c in p[0:n), or NULL. */
static inline const uint8_t *adjobs_memrchr(const uint8_t *p, int c, size_t n) noexcept {
    return (const uint8_t *)memrchr(p, c, n);
}

#endif
