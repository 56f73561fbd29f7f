/*
 * adjobs_time.h: parse one timestamp with a program compiled by
 * adjobs.timeformat.compile_time_format.
 *
 * The Python module's docstring is the specification (lenient Java
 * DateTimeFormatter parsing, SMART resolution, decision D1 for epoch values)
 * and TimeFormat.parse is the reference implementation; this file must give
 * bit-identical answers. It compiles as C99 and as C++17, has no allocation,
 * no mutable globals and no locale dependence beyond strtod reading '.' as the
 * decimal point (the C locale is in effect: Python never changes LC_NUMERIC).
 *
 * Program (native int32): [version, kind, ops...]; ops (patterns only):
 *   OP_LITERAL  n b1..bn
 *   OP_NUMBER   field min max subsequent sign_allowed reduced_width reduced_base
 *   OP_FRACTION
 *   OP_TEXT     field
 *   OP_OFFSET   colon n b1..bn
 */
#ifndef ADJOBS_TIME_H
#define ADJOBS_TIME_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ADJOBS_TIME_PROGRAM_VERSION 1

#define ADJOBS_TIME_OK 0
#define ADJOBS_TIME_INVALID 1     /* the text is an invalid date */
#define ADJOBS_TIME_BAD_PROGRAM 2 /* malformed program: a bug, never valid */

enum {
    ADJOBS_KIND_EPOCH = 0,
    ADJOBS_KIND_EPOCH_MS = 1,
    ADJOBS_KIND_PATTERN = 2
};

enum {
    ADJOBS_OP_LITERAL = 1,
    ADJOBS_OP_NUMBER = 2,
    ADJOBS_OP_FRACTION = 3,
    ADJOBS_OP_TEXT = 4,
    ADJOBS_OP_OFFSET = 5
};

enum {
    ADJOBS_F_YEAR_OF_ERA = 0,
    ADJOBS_F_MONTH = 1,
    ADJOBS_F_DAY_OF_MONTH = 2,
    ADJOBS_F_DAY_OF_YEAR = 3,
    ADJOBS_F_DAY_OF_WEEK = 4,
    ADJOBS_F_HOUR_OF_DAY = 5,
    ADJOBS_F_CLOCK_HOUR_OF_DAY = 6,
    ADJOBS_F_HOUR_OF_AMPM = 7,
    ADJOBS_F_CLOCK_HOUR_OF_AMPM = 8,
    ADJOBS_F_AMPM = 9,
    ADJOBS_F_MINUTE = 10,
    ADJOBS_F_SECOND = 11,
    ADJOBS_F_NANO = 12,
    ADJOBS_F_OFFSET = 13,
    ADJOBS_F_COUNT = 14
};

#define ADJOBS_TIME_MIN_MS (-62135596800000LL) /* 0001-01-01T00:00:00.000Z */
#define ADJOBS_TIME_MAX_MS 253402300799999LL   /* 9999-12-31T23:59:59.999Z */
/* Longest trimmed epoch text accepted; longer is invalid (documented in Python). */
#define ADJOBS_TIME_MAX_EPOCH_TEXT 511
/* Any field value above this is invalid after resolution, so stop early. */
#define ADJOBS_TIME_NUMBER_CAP 1000000000000000LL
#define ADJOBS_TIME_MAX_OFFSET_SECONDS (18 * 3600)

/* Parsed field values; `set` has bit f when field f was parsed. */
typedef struct {
    int64_t value[ADJOBS_F_COUNT];
    uint32_t set;
} adjobs_time_fields;

static inline int adjobs_time_is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* Java DateTimeParseContext.setParsedField: a second value must equal the first. */
static inline int adjobs_time_set(adjobs_time_fields *f, int32_t field, int64_t v)
{
    uint32_t bit = (uint32_t)1 << field;
    if ((f->set & bit) && f->value[field] != v) return ADJOBS_TIME_INVALID;
    f->value[field] = v;
    f->set |= bit;
    return ADJOBS_TIME_OK;
}

static inline int adjobs_time_has(const adjobs_time_fields *f, int field)
{
    return (f->set >> field) & 1u;
}

/* ---------------------------------------------------------------- calendar */

static inline int adjobs_time_is_leap(int64_t y)
{
    return (y % 4 == 0) && (y % 100 != 0 || y % 400 == 0);
}

static inline int64_t adjobs_time_month_length(int64_t y, int64_t m)
{
    if (m == 2) return adjobs_time_is_leap(y) ? 29 : 28;
    return (m == 4 || m == 6 || m == 9 || m == 11) ? 30 : 31;
}

/* Days since 1970-01-01, proleptic Gregorian (Howard Hinnant's days_from_civil). */
static inline int64_t adjobs_time_days_from_civil(int64_t y, int64_t m, int64_t d)
{
    int64_t era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* ------------------------------------------------------------- epoch (D1) */

static inline int adjobs_time_parse_epoch(const char *text, size_t len, int seconds, int64_t *out_ms)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t start = 0, end = len, i, int_digits = 0, frac_digits = 0;
    int plain_integer = 1;
    double value, whole;
    int64_t min_whole = seconds ? ADJOBS_TIME_MIN_MS / 1000 : ADJOBS_TIME_MIN_MS;
    int64_t max_whole = seconds ? ADJOBS_TIME_MAX_MS / 1000 : ADJOBS_TIME_MAX_MS;

    /* Java String.trim: strip bytes <= 0x20 at both ends. */
    while (start < end && s[start] <= 0x20) start++;
    while (end > start && s[end - 1] <= 0x20) end--;

    {
        /* Fast path, one pass: [+-]? digits{1,18} and nothing else. Anything
           else falls through to the full grammar below, which gives the same
           answer for these texts (its own plain-integer path). */
        size_t j = start;
        int64_t v = 0;
        int negative = 0;
        if (j < end && (s[j] == '+' || s[j] == '-')) { negative = s[j] == '-'; j++; }
        if (end - j >= 1 && end - j <= 18) {
            size_t first = j;
            while (j < end && adjobs_time_is_digit(s[j])) { v = v * 10 + (s[j] - '0'); j++; }
            if (j == end && j > first) {
                if (negative) v = -v;
                if (v < min_whole || v > max_whole) return ADJOBS_TIME_INVALID;
                *out_ms = seconds ? v * 1000 : v;
                return ADJOBS_TIME_OK;
            }
        }
    }

    /* Grammar: [+-]? (digits [. digits*] | . digits) ([eE] [+-]? digits)? */
    i = start;
    if (i < end && (s[i] == '+' || s[i] == '-')) i++;
    while (i < end && adjobs_time_is_digit(s[i])) { i++; int_digits++; }
    if (i < end && s[i] == '.') {
        plain_integer = 0;
        i++;
        while (i < end && adjobs_time_is_digit(s[i])) { i++; frac_digits++; }
    }
    if (int_digits + frac_digits == 0) return ADJOBS_TIME_INVALID;
    if (i < end && (s[i] == 'e' || s[i] == 'E')) {
        size_t exp_digits = 0;
        plain_integer = 0;
        i++;
        if (i < end && (s[i] == '+' || s[i] == '-')) i++;
        while (i < end && adjobs_time_is_digit(s[i])) { i++; exp_digits++; }
        if (exp_digits == 0) return ADJOBS_TIME_INVALID;
    }
    if (i != end) return ADJOBS_TIME_INVALID;

    if (plain_integer && int_digits <= 18) {
        /* Fast exact path. Every in-range integer is exact as a double, so this
           equals reading a double and truncating. */
        int64_t v = 0;
        size_t j = start;
        int negative = 0;
        if (s[j] == '+' || s[j] == '-') { negative = s[j] == '-'; j++; }
        for (; j < end; j++) v = v * 10 + (s[j] - '0');
        if (negative) v = -v;
        if (v < min_whole || v > max_whole) return ADJOBS_TIME_INVALID;
        *out_ms = seconds ? v * 1000 : v;
        return ADJOBS_TIME_OK;
    }

    {
        /* strtod is correctly rounded (as Python's float()); the grammar above
           already excluded everything else strtod would accept (hex, inf, nan). */
        char buffer[ADJOBS_TIME_MAX_EPOCH_TEXT + 1];
        size_t n = end - start;
        if (n > ADJOBS_TIME_MAX_EPOCH_TEXT) return ADJOBS_TIME_INVALID;
        memcpy(buffer, s + start, n);
        buffer[n] = '\0';
        value = strtod(buffer, NULL);
    }
    whole = trunc(value); /* +-inf stays inf and fails the range test */
    if (!(whole >= (double)min_whole && whole <= (double)max_whole)) return ADJOBS_TIME_INVALID;
    *out_ms = seconds ? (int64_t)whole * 1000 : (int64_t)whole;
    return ADJOBS_TIME_OK;
}

/* ----------------------------------------------------------- pattern ops */

/* Java's lenient NumberPrinterParser.parse (see OP_NUMBER). */
static inline int adjobs_time_op_number(const unsigned char *s, size_t len, size_t *pos,
                                        adjobs_time_fields *f, const int32_t *a)
{
    int32_t field = a[0], min_width = a[1], max_width = a[2], subsequent = a[3];
    int32_t sign_allowed = a[4], reduced_width = a[5], reduced_base = a[6];
    size_t p = *pos, start, min_end, max_end;
    int64_t effective_max = (int64_t)max_width + subsequent, total = 0;
    int negative = 0;

    if (p == len) return ADJOBS_TIME_INVALID;
    if (s[p] == '+' || s[p] == '-') {
        if (!sign_allowed) return ADJOBS_TIME_INVALID;
        negative = s[p] == '-';
        p++;
    }
    if ((size_t)min_width > len - p) return ADJOBS_TIME_INVALID;
    min_end = p + (size_t)min_width;
    start = p;
    if (subsequent > 0) {
        /* Adjacent value parsing: count the digits, leave room for what follows. */
        max_end = (size_t)effective_max < len - p ? p + (size_t)effective_max : len;
        while (p < max_end && adjobs_time_is_digit(s[p])) p++;
        if (p < min_end) return ADJOBS_TIME_INVALID;
        effective_max = (int64_t)(p - start) - subsequent;
        if (effective_max < min_width) effective_max = min_width;
        p = start;
    }
    max_end = (size_t)effective_max < len - p ? p + (size_t)effective_max : len;
    while (p < max_end) {
        if (!adjobs_time_is_digit(s[p])) {
            if (p < min_end) return ADJOBS_TIME_INVALID;
            break;
        }
        total = total * 10 + (s[p] - '0');
        p++;
        if (total > ADJOBS_TIME_NUMBER_CAP) return ADJOBS_TIME_INVALID;
    }
    if (negative) total = -total;
    if (reduced_width > 0 && (int64_t)(p - start) == reduced_width && total >= 0) {
        int64_t century = 1;
        int32_t k;
        for (k = 0; k < reduced_width; k++) century *= 10;
        total += reduced_base - reduced_base % century;
        if (total < reduced_base) total += century;
    }
    *pos = p;
    return adjobs_time_set(f, field, total);
}

static inline int adjobs_time_op_fraction(const unsigned char *s, size_t len, size_t *pos,
                                          adjobs_time_fields *f)
{
    size_t p = *pos, start = p, end = len - p < 9 ? len : p + 9;
    int64_t total = 0;
    int digits;
    if (p == len) return ADJOBS_TIME_OK; /* absent at the end of the text */
    while (p < end && adjobs_time_is_digit(s[p])) { total = total * 10 + (s[p] - '0'); p++; }
    for (digits = (int)(p - start); digits < 9; digits++) total *= 10;
    *pos = p;
    return adjobs_time_set(f, ADJOBS_F_NANO, total);
}

static inline int adjobs_time_starts_with(const unsigned char *s, size_t len, size_t pos,
                                          const char *word)
{
    size_t n = strlen(word);
    return n <= len - pos && memcmp(s + pos, word, n) == 0;
}

static inline int adjobs_time_op_text(const unsigned char *s, size_t len, size_t *pos,
                                      adjobs_time_fields *f, int32_t field)
{
    static const char *const month_full[12] = {
        "January", "February", "March", "April", "May", "June", "July",
        "August", "September", "October", "November", "December"};
    static const char *const month_short[12] = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    static const char *const weekday_full[7] = {
        "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"};
    static const char *const weekday_short[7] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    static const char *const ampm[2] = {"AM", "PM"};
    const char *const *lists[2];
    int list_count, count, first_value, l, i;
    int32_t fallback[7];

    if (field == ADJOBS_F_MONTH) {
        lists[0] = month_full; lists[1] = month_short; list_count = 2; count = 12; first_value = 1;
    } else if (field == ADJOBS_F_DAY_OF_WEEK) {
        lists[0] = weekday_full; lists[1] = weekday_short; list_count = 2; count = 7; first_value = 1;
    } else if (field == ADJOBS_F_AMPM) {
        lists[0] = ampm; lists[1] = ampm; list_count = 1; count = 2; first_value = 0;
    } else {
        return ADJOBS_TIME_BAD_PROGRAM;
    }
    /* Full names before short ones: Java's longest match first. */
    for (l = 0; l < list_count; l++) {
        for (i = 0; i < count; i++) {
            if (adjobs_time_starts_with(s, len, *pos, lists[l][i])) {
                *pos += strlen(lists[l][i]);
                return adjobs_time_set(f, field, first_value + i);
            }
        }
    }
    /* No name: Java falls back to a lenient signed number. */
    fallback[0] = field; fallback[1] = 1; fallback[2] = 9; fallback[3] = 0;
    fallback[4] = 1; fallback[5] = 0; fallback[6] = 0;
    return adjobs_time_op_number(s, len, pos, f, fallback);
}

/* Two ASCII digits at p with a value <= 59, else -1 (OffsetIdPrinterParser.parseDigits). */
static inline int adjobs_time_two_digits(const unsigned char *s, size_t len, size_t p)
{
    int v;
    if (len - p < 2 || !adjobs_time_is_digit(s[p]) || !adjobs_time_is_digit(s[p + 1])) return -1;
    v = (s[p] - '0') * 10 + (s[p + 1] - '0');
    return v <= 59 ? v : -1;
}

static inline int adjobs_time_op_offset(const unsigned char *s, size_t len, size_t *pos,
                                        adjobs_time_fields *f, int32_t colon,
                                        const int32_t *zero_text, int32_t zero_len)
{
    size_t p = *pos;
    int32_t k;
    int sign, hours, parts[2] = {0, 0}, unit;

    if (p == len) return ADJOBS_TIME_INVALID;
    if ((size_t)zero_len <= len - p) {
        for (k = 0; k < zero_len && s[p + (size_t)k] == (unsigned char)zero_text[k]; k++) {}
        if (k == zero_len) {
            *pos = p + (size_t)zero_len;
            return adjobs_time_set(f, ADJOBS_F_OFFSET, 0);
        }
    }
    if (s[p] != '+' && s[p] != '-') return ADJOBS_TIME_INVALID;
    sign = s[p] == '-' ? -1 : 1;
    p++;
    hours = adjobs_time_two_digits(s, len, p);
    if (hours < 0) return ADJOBS_TIME_INVALID;
    p += 2;
    /* Lenient: optional minutes, then optional seconds, colon-prefixed if the pattern has one. */
    for (unit = 0; unit < 2; unit++) {
        size_t sep = colon ? 1 : 0;
        int v;
        if (colon && !(p < len && s[p] == ':')) break;
        if (sep > len - p) break;
        v = adjobs_time_two_digits(s, len, p + sep);
        if (v < 0) break;
        parts[unit] = v;
        p += sep + 2;
    }
    if (hours > 23) return ADJOBS_TIME_INVALID;
    *pos = p;
    return adjobs_time_set(f, ADJOBS_F_OFFSET,
                           (int64_t)sign * (hours * 3600 + parts[0] * 60 + parts[1]));
}

/* ------------------------------------------------------------- resolving */

/* Move `source` into `target` (Java updateCheckConflict). */
static inline int adjobs_time_fold(adjobs_time_fields *f, int source, int target, int64_t v)
{
    f->set &= ~((uint32_t)1 << source);
    return adjobs_time_set(f, target, v);
}

/* Java SMART resolution of the parsed fields, then epoch milliseconds. */
static inline int adjobs_time_resolve(adjobs_time_fields *f, int32_t default_year, int64_t *out_ms)
{
    int64_t year, month, day, hour, minute, second, nano, extra_days = 0, days, offset, ms;
    int field;

    if (!adjobs_time_has(f, ADJOBS_F_YEAR_OF_ERA)) adjobs_time_set(f, ADJOBS_F_YEAR_OF_ERA, default_year);
    year = f->value[ADJOBS_F_YEAR_OF_ERA];
    f->set &= ~((uint32_t)1 << ADJOBS_F_YEAR_OF_ERA);
    /* Year-of-era is 1..999999999 in Java; above 10000 the result is out of
       range even with an 18 h offset, and the arithmetic stays small. */
    if (year < 1 || year > 10000) return ADJOBS_TIME_INVALID;

    if (adjobs_time_has(f, ADJOBS_F_MONTH) && adjobs_time_has(f, ADJOBS_F_DAY_OF_MONTH)) {
        int64_t length;
        month = f->value[ADJOBS_F_MONTH];
        day = f->value[ADJOBS_F_DAY_OF_MONTH];
        f->set &= ~(((uint32_t)1 << ADJOBS_F_MONTH) | ((uint32_t)1 << ADJOBS_F_DAY_OF_MONTH));
        if (month < 1 || month > 12 || day < 1 || day > 31) return ADJOBS_TIME_INVALID;
        length = adjobs_time_month_length(year, month);
        if (day > length) day = length; /* SMART: Feb 30 -> Feb 28/29 */
    } else if (adjobs_time_has(f, ADJOBS_F_DAY_OF_YEAR)) {
        int64_t doy = f->value[ADJOBS_F_DAY_OF_YEAR];
        f->set &= ~((uint32_t)1 << ADJOBS_F_DAY_OF_YEAR);
        if (doy < 1 || doy > (adjobs_time_is_leap(year) ? 366 : 365)) return ADJOBS_TIME_INVALID;
        month = 1;
        while (doy > adjobs_time_month_length(year, month)) {
            doy -= adjobs_time_month_length(year, month);
            month++;
        }
        day = doy;
    } else {
        return ADJOBS_TIME_INVALID; /* no date */
    }

    if (adjobs_time_has(f, ADJOBS_F_CLOCK_HOUR_OF_DAY)) {
        int64_t ch = f->value[ADJOBS_F_CLOCK_HOUR_OF_DAY];
        if (ch != 0 && (ch < 1 || ch > 24)) return ADJOBS_TIME_INVALID;
        if (adjobs_time_fold(f, ADJOBS_F_CLOCK_HOUR_OF_DAY, ADJOBS_F_HOUR_OF_DAY, ch == 24 ? 0 : ch))
            return ADJOBS_TIME_INVALID;
    }
    if (adjobs_time_has(f, ADJOBS_F_CLOCK_HOUR_OF_AMPM)) {
        int64_t ch = f->value[ADJOBS_F_CLOCK_HOUR_OF_AMPM];
        if (ch != 0 && (ch < 1 || ch > 12)) return ADJOBS_TIME_INVALID;
        if (adjobs_time_fold(f, ADJOBS_F_CLOCK_HOUR_OF_AMPM, ADJOBS_F_HOUR_OF_AMPM, ch == 12 ? 0 : ch))
            return ADJOBS_TIME_INVALID;
    }
    if (adjobs_time_has(f, ADJOBS_F_AMPM) && adjobs_time_has(f, ADJOBS_F_HOUR_OF_AMPM)) {
        int64_t ap = f->value[ADJOBS_F_AMPM], hap = f->value[ADJOBS_F_HOUR_OF_AMPM];
        if (ap < 0 || ap > 1 || hap < 0 || hap > 11) return ADJOBS_TIME_INVALID;
        f->set &= ~((uint32_t)1 << ADJOBS_F_AMPM);
        if (adjobs_time_fold(f, ADJOBS_F_HOUR_OF_AMPM, ADJOBS_F_HOUR_OF_DAY, ap * 12 + hap))
            return ADJOBS_TIME_INVALID;
    }

    if (!adjobs_time_has(f, ADJOBS_F_HOUR_OF_DAY)) return ADJOBS_TIME_INVALID; /* no time */
    {
        int has_minute = adjobs_time_has(f, ADJOBS_F_MINUTE);
        int has_second = adjobs_time_has(f, ADJOBS_F_SECOND);
        int has_nano = adjobs_time_has(f, ADJOBS_F_NANO);
        /* Java's resolveTimeLenient cannot skip a level. */
        if ((!has_minute && (has_second || has_nano)) || (has_minute && !has_second && has_nano))
            return ADJOBS_TIME_INVALID;
        hour = f->value[ADJOBS_F_HOUR_OF_DAY];
        minute = has_minute ? f->value[ADJOBS_F_MINUTE] : 0;
        second = has_second ? f->value[ADJOBS_F_SECOND] : 0;
        nano = has_nano ? f->value[ADJOBS_F_NANO] : 0;
        f->set &= ~(((uint32_t)1 << ADJOBS_F_HOUR_OF_DAY) | ((uint32_t)1 << ADJOBS_F_MINUTE) |
                    ((uint32_t)1 << ADJOBS_F_SECOND) | ((uint32_t)1 << ADJOBS_F_NANO));
    }
    if (minute < 0 || minute > 59) return ADJOBS_TIME_INVALID;
    if (hour == 24 && minute == 0 && second == 0 && nano == 0) {
        hour = 0; /* SMART: 24:00 is the next day's midnight */
        extra_days = 1;
    } else if (hour < 0 || hour > 23 || second < 0 || second > 59) {
        return ADJOBS_TIME_INVALID;
    }

    /* Cross-check the fields left over against the resolved date and time. */
    for (field = 0; field < ADJOBS_F_COUNT; field++) {
        int64_t expected;
        if (!adjobs_time_has(f, field) || field == ADJOBS_F_OFFSET) continue;
        switch (field) {
        case ADJOBS_F_AMPM: expected = hour / 12; break;
        case ADJOBS_F_HOUR_OF_AMPM: expected = hour % 12; break;
        case ADJOBS_F_MONTH: expected = month; break;
        case ADJOBS_F_DAY_OF_MONTH: expected = day; break;
        case ADJOBS_F_DAY_OF_YEAR:
            expected = adjobs_time_days_from_civil(year, month, day) -
                       adjobs_time_days_from_civil(year, 1, 1) + 1;
            break;
        case ADJOBS_F_DAY_OF_WEEK: {
            int64_t d = (adjobs_time_days_from_civil(year, month, day) + 3) % 7;
            expected = (d < 0 ? d + 7 : d) + 1; /* ISO, Monday = 1 */
            break;
        }
        default: return ADJOBS_TIME_BAD_PROGRAM;
        }
        if (f->value[field] != expected) return ADJOBS_TIME_INVALID;
    }

    offset = adjobs_time_has(f, ADJOBS_F_OFFSET) ? f->value[ADJOBS_F_OFFSET] : 0;
    if (offset < -ADJOBS_TIME_MAX_OFFSET_SECONDS || offset > ADJOBS_TIME_MAX_OFFSET_SECONDS)
        return ADJOBS_TIME_INVALID;
    days = adjobs_time_days_from_civil(year, month, day) + extra_days;
    ms = (days * 86400 + hour * 3600 + minute * 60 + second - offset) * 1000 + nano / 1000000;
    if (ms < ADJOBS_TIME_MIN_MS || ms > ADJOBS_TIME_MAX_MS) return ADJOBS_TIME_INVALID;
    *out_ms = ms;
    return ADJOBS_TIME_OK;
}

/* ------------------------------------------------------------ fast path */

/* Returned by adjobs_time_parse_fast when it cannot decide: run the general path. */
#define ADJOBS_TIME_FALLBACK (-1)

/* Bit mask of the fields the fast path resolves itself. */
#define ADJOBS_TIME_FAST_FIELDS                                                      \
    (((uint32_t)1 << ADJOBS_F_YEAR_OF_ERA) | ((uint32_t)1 << ADJOBS_F_MONTH) |      \
     ((uint32_t)1 << ADJOBS_F_DAY_OF_MONTH) | ((uint32_t)1 << ADJOBS_F_HOUR_OF_DAY) | \
     ((uint32_t)1 << ADJOBS_F_MINUTE) | ((uint32_t)1 << ADJOBS_F_SECOND) |          \
     ((uint32_t)1 << ADJOBS_F_NANO) | ((uint32_t)1 << ADJOBS_F_OFFSET))

/*
 * The usual "date sep date sep date sep HH:mm:ss" head of a program: six
 * lenient numbers (1..9 digits, no adjacent run, no reduced year) for
 * year/month/day in any order then hour, minute, second, separated by
 * one-byte literals. ADJOBS_TIME_CORE_WORDS words after the two header words;
 * words where the mask is 0 (fields of the date, sign-allowed flags,
 * separators) are checked separately.
 */
#define ADJOBS_TIME_CORE_WORDS 63
#define ADJOBS_TIME_CORE_NUMBER(field, fmask) 2, field, 1, 9, 0, 0, 0, 0
#define ADJOBS_TIME_CORE_NUMBER_MASK(fmask) -1, fmask, -1, -1, -1, 0, -1, -1
static const int32_t adjobs_time_core_words[ADJOBS_TIME_CORE_WORDS] = {
    ADJOBS_TIME_CORE_NUMBER(0, 0), 1, 1, 0,
    ADJOBS_TIME_CORE_NUMBER(0, 0), 1, 1, 0,
    ADJOBS_TIME_CORE_NUMBER(0, 0), 1, 1, 0,
    ADJOBS_TIME_CORE_NUMBER(ADJOBS_F_HOUR_OF_DAY, -1), 1, 1, ':',
    ADJOBS_TIME_CORE_NUMBER(ADJOBS_F_MINUTE, -1), 1, 1, ':',
    ADJOBS_TIME_CORE_NUMBER(ADJOBS_F_SECOND, -1)};
static const int32_t adjobs_time_core_mask[ADJOBS_TIME_CORE_WORDS] = {
    ADJOBS_TIME_CORE_NUMBER_MASK(0), -1, -1, 0,
    ADJOBS_TIME_CORE_NUMBER_MASK(0), -1, -1, 0,
    ADJOBS_TIME_CORE_NUMBER_MASK(0), -1, -1, 0,
    ADJOBS_TIME_CORE_NUMBER_MASK(-1), -1, -1, -1,
    ADJOBS_TIME_CORE_NUMBER_MASK(-1), -1, -1, -1,
    ADJOBS_TIME_CORE_NUMBER_MASK(-1)};

#if defined(__GNUC__) || defined(__clang__)
#define ADJOBS_TIME_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ADJOBS_TIME_ALWAYS_INLINE inline
#endif

/* A lenient number of 1..9 digits at *pos (the text must start with a digit), or -1. */
static ADJOBS_TIME_ALWAYS_INLINE int64_t adjobs_time_fast_digits(const unsigned char *s, size_t len, size_t *pos)
{
    size_t p = *pos, limit = len - p < 9 ? len : p + 9;
    unsigned d;
    int64_t total;
    if (p >= limit || (d = (unsigned)s[p] - '0') > 9u) return -1;
    total = d;
    for (p++; p < limit && (d = (unsigned)s[p] - '0') <= 9u; p++) total = total * 10 + d;
    *pos = p;
    return total;
}

/* The one-byte literal `sep` at *pos then a lenient number as above, or -1. */
static ADJOBS_TIME_ALWAYS_INLINE int64_t adjobs_time_fast_sep_digits(const unsigned char *s, size_t len,
                                                                   size_t *pos, int32_t sep)
{
    size_t p = *pos;
    if (p >= len || s[p] != (unsigned char)sep) return -1;
    *pos = p + 1;
    return adjobs_time_fast_digits(s, len, pos);
}

/*
 * Fast path for patterns made only of literals, plain unsigned numbers (no
 * adjacent-value run, no reduced year, at most 15 digits so the cap never
 * triggers), a fraction and an offset, that produce only year, month, day,
 * hour, minute, second, nano and offset, each once. It returns ADJOBS_TIME_OK
 * with exactly the general path's answer, or ADJOBS_TIME_FALLBACK on anything
 * else (any other op, a malformed op, a sign, a mismatch, a repeated field, an
 * out-of-range value...), so that every invalid or unusual input gets its
 * answer from the general path. The checks on each op are those of the
 * general interpreter, so a malformed program never yields OK here.
 */
static inline int adjobs_time_parse_fast(const int32_t *prog, size_t prog_len,
                                         const unsigned char *s, size_t len,
                                         int32_t default_year, int64_t *out_ms)
{
    static const int64_t pow10[10] = {1000000000, 100000000, 10000000, 1000000, 100000,
                                      10000, 1000, 100, 10, 1};
    int64_t value[ADJOBS_F_COUNT];
    uint32_t set = 0;
    size_t ip = 2, pos = 0;
    int64_t year, month, day, hour, minute, second, nano, offset, extra_days = 0, days, ms, length;

    if (prog_len - 2 >= ADJOBS_TIME_CORE_WORDS) {
        const int32_t *c = prog + 2;
        uint32_t diff = 0;
        int i;
        for (i = 0; i < ADJOBS_TIME_CORE_WORDS; i++)
            diff |= (uint32_t)(c[i] ^ adjobs_time_core_words[i]) & (uint32_t)adjobs_time_core_mask[i];
        /* The three date fields: year, month and day of month in some order. */
        if (diff == 0 && (uint32_t)c[1] < 3u && (uint32_t)c[12] < 3u && (uint32_t)c[23] < 3u &&
            (((uint32_t)1 << c[1]) | ((uint32_t)1 << c[12]) | ((uint32_t)1 << c[23])) == 7u) {
            int64_t v0, v1, v2, v3, v4, v5;
            size_t p = 0;
            if ((v0 = adjobs_time_fast_digits(s, len, &p)) < 0 ||
                (v1 = adjobs_time_fast_sep_digits(s, len, &p, c[10])) < 0 ||
                (v2 = adjobs_time_fast_sep_digits(s, len, &p, c[21])) < 0 ||
                (v3 = adjobs_time_fast_sep_digits(s, len, &p, c[32])) < 0 ||
                (v4 = adjobs_time_fast_sep_digits(s, len, &p, ':')) < 0 ||
                (v5 = adjobs_time_fast_sep_digits(s, len, &p, ':')) < 0)
                return ADJOBS_TIME_FALLBACK;
            value[c[1]] = v0;
            value[c[12]] = v1;
            value[c[23]] = v2;
            value[ADJOBS_F_HOUR_OF_DAY] = v3;
            value[ADJOBS_F_MINUTE] = v4;
            value[ADJOBS_F_SECOND] = v5;
            set = ((uint32_t)1 << ADJOBS_F_YEAR_OF_ERA) | ((uint32_t)1 << ADJOBS_F_MONTH) |
                  ((uint32_t)1 << ADJOBS_F_DAY_OF_MONTH) | ((uint32_t)1 << ADJOBS_F_HOUR_OF_DAY) |
                  ((uint32_t)1 << ADJOBS_F_MINUTE) | ((uint32_t)1 << ADJOBS_F_SECOND);
            pos = p;
            ip = 2 + ADJOBS_TIME_CORE_WORDS;
        }
    }

    while (ip < prog_len) {
        int32_t op = prog[ip];
        if (op == ADJOBS_OP_NUMBER) {
            const int32_t *a = prog + ip + 1;
            int32_t field, max_width;
            size_t k, limit;
            int64_t total = 0;
            unsigned d;
            if (prog_len - ip < 8) return ADJOBS_TIME_FALLBACK;
            field = a[0];
            max_width = a[2];
            /* Plain unsigned number: no adjacent run (a[3]), no reduced year
               (a[5]), at most 15 digits so the cap cannot trigger; a field not
               seen yet. a[4] (sign allowed) does not matter: the first byte
               must be a digit here. */
            if ((uint32_t)field >= ADJOBS_F_COUNT || (uint32_t)max_width > 15u ||
                (uint32_t)a[1] > (uint32_t)max_width || (a[3] | a[5]) != 0 || ((set >> field) & 1u))
                return ADJOBS_TIME_FALLBACK;
            ip += 8;
            limit = (size_t)max_width < len - pos ? (size_t)max_width : len - pos;
            /* At least one digit, then as many as allowed. */
            if (limit == 0 || (d = (unsigned)s[pos] - '0') > 9u) return ADJOBS_TIME_FALLBACK;
            total = d;
            for (k = 1; k < limit && (d = (unsigned)s[pos + k] - '0') <= 9u; k++) total = total * 10 + d;
            if (k < (size_t)a[1]) return ADJOBS_TIME_FALLBACK;
            value[field] = total;
            set |= (uint32_t)1 << field;
            pos += k;
        } else if (op == ADJOBS_OP_LITERAL) {
            int32_t n, k;
            if (prog_len - ip < 2) return ADJOBS_TIME_FALLBACK;
            n = prog[ip + 1];
            ip += 2;
            if ((uint32_t)n > prog_len - ip || (size_t)(uint32_t)n > len - pos) return ADJOBS_TIME_FALLBACK;
            if (n == 1) { /* the usual separator */
                if (s[pos] != (unsigned char)prog[ip]) return ADJOBS_TIME_FALLBACK;
                pos++;
                ip++;
                continue;
            }
            for (k = 0; k < n; k++)
                if (s[pos + (size_t)k] != (unsigned char)prog[ip + (size_t)k]) return ADJOBS_TIME_FALLBACK;
            pos += (size_t)n;
            ip += (size_t)n;
        } else if (op == ADJOBS_OP_FRACTION) {
            size_t k, limit;
            int64_t total = 0;
            unsigned d;
            ip++;
            if (pos == len) continue; /* absent at the end of the text */
            if (set & ((uint32_t)1 << ADJOBS_F_NANO)) return ADJOBS_TIME_FALLBACK;
            limit = len - pos < 9 ? len - pos : 9;
            for (k = 0; k < limit && (d = (unsigned)s[pos + k] - '0') <= 9u; k++) total = total * 10 + d;
            value[ADJOBS_F_NANO] = total * pow10[k];
            set |= (uint32_t)1 << ADJOBS_F_NANO;
            pos += k;
        } else if (op == ADJOBS_OP_OFFSET) {
            int32_t colon, n;
            adjobs_time_fields tmp;
            if (prog_len - ip < 3) return ADJOBS_TIME_FALLBACK;
            colon = prog[ip + 1];
            n = prog[ip + 2];
            ip += 3;
            if (n < 1 || (size_t)n > prog_len - ip) return ADJOBS_TIME_FALLBACK;
            if (set & ((uint32_t)1 << ADJOBS_F_OFFSET)) return ADJOBS_TIME_FALLBACK;
            if (n == 1 && pos < len && s[pos] == (unsigned char)prog[ip]) {
                /* One-byte zero text ('Z'): matched first, as in adjobs_time_op_offset. */
                value[ADJOBS_F_OFFSET] = 0;
                pos++;
            } else {
                tmp.set = 0;
                if (adjobs_time_op_offset(s, len, &pos, &tmp, colon, prog + ip, n) != ADJOBS_TIME_OK)
                    return ADJOBS_TIME_FALLBACK;
                value[ADJOBS_F_OFFSET] = tmp.value[ADJOBS_F_OFFSET];
            }
            set |= (uint32_t)1 << ADJOBS_F_OFFSET;
            ip += (size_t)n;
        } else {
            return ADJOBS_TIME_FALLBACK; /* text fields, or a malformed program */
        }
    }
    if (pos != len) return ADJOBS_TIME_FALLBACK;

    /* adjobs_time_resolve restricted to these fields: no clock hours, no AM/PM,
       no day-of-year, and nothing left over to cross-check. */
    if ((set & ~ADJOBS_TIME_FAST_FIELDS) ||
        (set & (((uint32_t)1 << ADJOBS_F_MONTH) | ((uint32_t)1 << ADJOBS_F_DAY_OF_MONTH) |
                ((uint32_t)1 << ADJOBS_F_HOUR_OF_DAY))) !=
            (((uint32_t)1 << ADJOBS_F_MONTH) | ((uint32_t)1 << ADJOBS_F_DAY_OF_MONTH) |
             ((uint32_t)1 << ADJOBS_F_HOUR_OF_DAY)))
        return ADJOBS_TIME_FALLBACK;
    year = (set & ((uint32_t)1 << ADJOBS_F_YEAR_OF_ERA)) ? value[ADJOBS_F_YEAR_OF_ERA] : default_year;
    if (year < 1 || year > 10000) return ADJOBS_TIME_FALLBACK;
    month = value[ADJOBS_F_MONTH];
    day = value[ADJOBS_F_DAY_OF_MONTH];
    if (month < 1 || month > 12 || day < 1 || day > 31) return ADJOBS_TIME_FALLBACK;
    length = adjobs_time_month_length(year, month);
    if (day > length) day = length; /* SMART: Feb 30 -> Feb 28/29 */
    {
        int has_minute = (set >> ADJOBS_F_MINUTE) & 1u;
        int has_second = (set >> ADJOBS_F_SECOND) & 1u;
        int has_nano = (set >> ADJOBS_F_NANO) & 1u;
        if ((!has_minute && (has_second || has_nano)) || (has_minute && !has_second && has_nano))
            return ADJOBS_TIME_FALLBACK;
        hour = value[ADJOBS_F_HOUR_OF_DAY];
        minute = has_minute ? value[ADJOBS_F_MINUTE] : 0;
        second = has_second ? value[ADJOBS_F_SECOND] : 0;
        nano = has_nano ? value[ADJOBS_F_NANO] : 0;
    }
    if (minute < 0 || minute > 59) return ADJOBS_TIME_FALLBACK;
    if (hour == 24 && minute == 0 && second == 0 && nano == 0) {
        hour = 0; /* SMART: 24:00 is the next day's midnight */
        extra_days = 1;
    } else if (hour < 0 || hour > 23 || second < 0 || second > 59) {
        return ADJOBS_TIME_FALLBACK;
    }
    offset = (set & ((uint32_t)1 << ADJOBS_F_OFFSET)) ? value[ADJOBS_F_OFFSET] : 0;
    if (offset < -ADJOBS_TIME_MAX_OFFSET_SECONDS || offset > ADJOBS_TIME_MAX_OFFSET_SECONDS)
        return ADJOBS_TIME_FALLBACK;
    days = adjobs_time_days_from_civil(year, month, day) + extra_days;
    ms = (days * 86400 + hour * 3600 + minute * 60 + second - offset) * 1000 + nano / 1000000;
    if (ms < ADJOBS_TIME_MIN_MS || ms > ADJOBS_TIME_MAX_MS) return ADJOBS_TIME_FALLBACK;
    *out_ms = ms;
    return ADJOBS_TIME_OK;
}

/* ----------------------------------------------------------------- entry */

/* 0 = ok (*out_ms written), nonzero = invalid date (2 = malformed program). */
static inline int adjobs_time_parse(const int32_t *prog, size_t prog_len,
                                    const char *text, size_t len,
                                    int32_t default_year, int64_t *out_ms)
{
    const unsigned char *s = (const unsigned char *)text;
    adjobs_time_fields fields;
    size_t ip = 2, pos = 0;
    int rc;

    if (prog_len < 2 || prog[0] != ADJOBS_TIME_PROGRAM_VERSION) return ADJOBS_TIME_BAD_PROGRAM;
    if (prog[1] == ADJOBS_KIND_EPOCH) return adjobs_time_parse_epoch(text, len, 1, out_ms);
    if (prog[1] == ADJOBS_KIND_EPOCH_MS) return adjobs_time_parse_epoch(text, len, 0, out_ms);
    if (prog[1] != ADJOBS_KIND_PATTERN) return ADJOBS_TIME_BAD_PROGRAM;

    rc = adjobs_time_parse_fast(prog, prog_len, s, len, default_year, out_ms);
    if (rc != ADJOBS_TIME_FALLBACK) return rc;

    fields.set = 0;
    while (ip < prog_len) {
        int32_t op = prog[ip++];
        switch (op) {
        case ADJOBS_OP_LITERAL: {
            int32_t n, k;
            if (ip >= prog_len) return ADJOBS_TIME_BAD_PROGRAM;
            n = prog[ip++];
            if (n < 0 || (size_t)n > prog_len - ip) return ADJOBS_TIME_BAD_PROGRAM;
            if ((size_t)n > len - pos) return ADJOBS_TIME_INVALID;
            for (k = 0; k < n; k++)
                if (s[pos + (size_t)k] != (unsigned char)prog[ip + (size_t)k]) return ADJOBS_TIME_INVALID;
            pos += (size_t)n;
            ip += (size_t)n;
            break;
        }
        case ADJOBS_OP_NUMBER:
            if (prog_len - ip < 7) return ADJOBS_TIME_BAD_PROGRAM;
            if (prog[ip] < 0 || prog[ip] >= ADJOBS_F_COUNT || prog[ip + 1] < 0 || prog[ip + 2] < prog[ip + 1] ||
                prog[ip + 3] < 0 || prog[ip + 5] < 0 || prog[ip + 5] > 9)
                return ADJOBS_TIME_BAD_PROGRAM;
            rc = adjobs_time_op_number(s, len, &pos, &fields, prog + ip);
            if (rc) return rc;
            ip += 7;
            break;
        case ADJOBS_OP_FRACTION:
            rc = adjobs_time_op_fraction(s, len, &pos, &fields);
            if (rc) return rc;
            break;
        case ADJOBS_OP_TEXT:
            if (ip >= prog_len) return ADJOBS_TIME_BAD_PROGRAM;
            rc = adjobs_time_op_text(s, len, &pos, &fields, prog[ip++]);
            if (rc) return rc;
            break;
        case ADJOBS_OP_OFFSET: {
            int32_t colon, n;
            if (prog_len - ip < 2) return ADJOBS_TIME_BAD_PROGRAM;
            colon = prog[ip];
            n = prog[ip + 1];
            ip += 2;
            if (n < 1 || (size_t)n > prog_len - ip) return ADJOBS_TIME_BAD_PROGRAM;
            rc = adjobs_time_op_offset(s, len, &pos, &fields, colon, prog + ip, n);
            if (rc) return rc;
            ip += (size_t)n;
            break;
        }
        default:
            return ADJOBS_TIME_BAD_PROGRAM;
        }
    }
    if (pos != len) return ADJOBS_TIME_INVALID; /* unparsed text */
    return adjobs_time_resolve(&fields, default_year, out_ms);
}

#endif /* ADJOBS_TIME_H */
