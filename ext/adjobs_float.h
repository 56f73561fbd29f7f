/*
 * adjobs_float.h: the text of Python's repr() of a finite double, from the
 * C++17 standard library's shortest round-trip conversion.
 *
 * repr() takes the shortest digit string that reads back as the same double
 * (the nearest such string when there are several: David Gay's dtoa, mode 0),
 * then lays it out as PyOS_double_to_string(value, 'r', 0, Py_DTSF_ADD_DOT_0)
 * does. std::to_chars(first, last, value, std::chars_format::scientific) gives
 * the same digits (the shortest that round-trip, the nearest of them, ties to
 * even), in roughly a tenth of dtoa's time; result documents hold thousands of
 * floats per upload. tests/test_jsontext.py holds the two to the same text.
 *
 * adjobs_float_repr returns the length written to out (at most
 * ADJOBS_FLOAT_REPR_MAX bytes, no NUL), or -1 where this library has no
 * floating-point to_chars (or it fails): the caller then asks Python.
 */
#ifndef ADJOBS_FLOAT_H
#define ADJOBS_FLOAT_H

/* "-d.dddddddddddddddde-308" is 24 characters; "0.000ddddddddddddddddd" 22. */
#define ADJOBS_FLOAT_REPR_MAX 32

#if defined(__cplusplus)
#include <charconv>
#include <system_error>
#endif

#if defined(__cplusplus) && defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L

static inline int adjobs_float_repr(double value, char *out)
{
    char scientific[ADJOBS_FLOAT_REPR_MAX];
    std::to_chars_result done = std::to_chars(scientific, scientific + sizeof scientific,
                                              value, std::chars_format::scientific);
    if (done.ec != std::errc()) {
        return -1;
    }
    /* scientific is "[-]d[.ddd]e(+|-)dd[d]": split it into sign, digits and exponent. */
    const char *at = scientific;
    char *write = out;
    if (*at == '-') {
        *write++ = '-';
        at++;
    }
    char digits[20];
    int n = 0;
    while (at < done.ptr && *at != 'e') {
        if (*at != '.') {
            if (n == (int)sizeof digits) {
                return -1;
            }
            digits[n++] = *at;
        }
        at++;
    }
    if (at == done.ptr || n == 0) {
        return -1;
    }
    at++; /* 'e' */
    int negative_exponent = *at == '-';
    at++; /* the exponent's sign, always written */
    int exponent = 0;
    while (at < done.ptr) {
        exponent = exponent * 10 + (*at++ - '0');
    }
    if (negative_exponent) {
        exponent = -exponent;
    }
    /* Python's decpt: the digits are 0.d1d2... times 10 ** decpt. */
    int decpt = exponent + 1;
    if (decpt <= -4 || decpt > 16) {
        /* d[.ddd]e(+|-)XX, at least two exponent digits */
        *write++ = digits[0];
        if (n > 1) {
            *write++ = '.';
            for (int i = 1; i < n; i++) {
                *write++ = digits[i];
            }
        }
        *write++ = 'e';
        int magnitude = exponent;
        if (exponent < 0) {
            *write++ = '-';
            magnitude = -exponent;
        } else {
            *write++ = '+';
        }
        if (magnitude >= 100) {
            *write++ = (char)('0' + magnitude / 100);
        }
        *write++ = (char)('0' + magnitude / 10 % 10);
        *write++ = (char)('0' + magnitude % 10);
    } else if (decpt <= 0) {
        /* 0.000ddd */
        *write++ = '0';
        *write++ = '.';
        for (int i = decpt; i < 0; i++) {
            *write++ = '0';
        }
        for (int i = 0; i < n; i++) {
            *write++ = digits[i];
        }
    } else if (decpt >= n) {
        /* ddd000.0 */
        for (int i = 0; i < n; i++) {
            *write++ = digits[i];
        }
        for (int i = n; i < decpt; i++) {
            *write++ = '0';
        }
        *write++ = '.';
        *write++ = '0';
    } else {
        /* dd.ddd */
        for (int i = 0; i < n; i++) {
            if (i == decpt) {
                *write++ = '.';
            }
            *write++ = digits[i];
        }
    }
    return (int)(write - out);
}

#else

static inline int adjobs_float_repr(double value, char *out)
{
    (void)value;
    (void)out;
    return -1;
}

#endif

#endif /* ADJOBS_FLOAT_H */
