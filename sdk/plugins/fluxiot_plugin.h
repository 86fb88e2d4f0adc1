/*
 * fluxiot_plugin.h - the FluxIoT WebAssembly plugin SDK (ABI version 1), for C compiled to wasm32
 * with clang and lld (no libc, no WASI). The ABI itself is described in docs/PLUGIN_DEV.md.
 *
 * A plugin is one C file that includes this header and ends with FLUXIOT_PLUGIN(setup, handle):
 *
 *     #include "fluxiot_plugin.h"
 *
 *     static void handle(const fx_config *cfg, const fx_message *msg, fx_buf *out) {
 *         fx_obj o = fx_obj_begin(out);
 *         fx_obj_int(&o, "bytes", msg->payload_len);
 *         fx_obj_end(&o);
 *     }
 *
 *     FLUXIOT_PLUGIN(0, handle)
 *
 * The header defines the exports `alloc`, `dealloc` and `process` (and `fx_live_allocations`, the
 * number of blocks the allocator has handed out and not had back) and the import `env.log`.
 * `process` parses the host's input, calls `setup` once per call (may be 0) and `handle` once per
 * message, and writes `{"results": [...]}` with exactly one result per message. A handler writes
 * exactly one JSON value into `out`: a telemetry object, a list of them, or an error
 * (`fx_result_error`); a handler that writes nothing gets `{"error": "no result"}`.
 *
 * Build with sdk/plugins/build.sh, or:
 *     clang --target=wasm32 -O2 -std=c11 -ffreestanding -nostdlib -mbulk-memory -I sdk/plugins \
 *         -Wl,--no-entry -Wl,--strip-debug -Wl,-z,stack-size=65536 -o plugin.wasm plugin.c
 */
#ifndef FLUXIOT_PLUGIN_H
#define FLUXIOT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "fluxiot_plugin.h targets wasm32: build with clang --target=wasm32"
#endif

#define FX_ABI_VERSION 1

#define FX_EXPORT(name) __attribute__((export_name(name)))
#define FX_IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
#define FX_UNUSED __attribute__((unused))

/* ------------------------------------------------------------------------------------------------
 * Logging: env.log(level, ptr, len). The host checks the message is UTF-8 and keeps at most 4,096
 * bytes of it; a pointer or length outside the memory fails the call.
 */

enum { FX_TRACE = 0, FX_DEBUG = 1, FX_INFO = 2, FX_WARN = 3, FX_ERROR = 4 };

FX_IMPORT("env", "log") void fx_host_log(int32_t level, const char *ptr, int32_t len);

static FX_UNUSED size_t fx_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static FX_UNUSED void fx_log(int level, const char *message) {
    fx_host_log(level, message, (int32_t)fx_strlen(message));
}

static FX_UNUSED void fx_log_n(int level, const char *message, size_t len) {
    fx_host_log(level, message, (int32_t)len);
}

/* With -mbulk-memory memcpy/memmove/memset compile to memory.copy / memory.fill. clang may also emit
 * calls to them (and to memcmp) for struct copies and __builtin_mem*, so they are defined (weak). */
__attribute__((weak)) void *memcpy(void *dst, const void *src, size_t n) {
    __builtin_memcpy(dst, src, n);
    return dst;
}
__attribute__((weak)) void *memmove(void *dst, const void *src, size_t n) {
    __builtin_memmove(dst, src, n);
    return dst;
}
__attribute__((weak)) void *memset(void *dst, int c, size_t n) {
    __builtin_memset(dst, c, n);
    return dst;
}
__attribute__((weak)) int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Allocator: power-of-two size classes (16 B to 16 MiB) with a free list each, carved from the heap
 * above __heap_base and grown with memory.grow. Every block has an 8-byte header (class and an
 * in-use mark); dealloc reads the class from the header, so `len` may be smaller than what was
 * asked for (the host passes the output's length, not its capacity). Freeing a block twice or a
 * pointer that alloc did not return traps.
 */

#define FX_MIN_CLASS 4
#define FX_MAX_CLASS 24
#define FX_HEADER 8u
#define FX_IN_USE 0x46580000u /* "FX" */
#define FX_FREE 0x66780000u   /* "fx" */

extern unsigned char __heap_base;

static uintptr_t fx_heap_top;
static uintptr_t fx_heap_end;
static void *fx_free_lists[FX_MAX_CLASS + 1];
static int32_t fx_live;

static void *fx_alloc(size_t n) {
    if (n > ((size_t)1 << FX_MAX_CLASS) - FX_HEADER) return 0;
    size_t need = n + FX_HEADER;
    unsigned k = FX_MIN_CLASS;
    while (((size_t)1 << k) < need) k++;
    size_t size = (size_t)1 << k;
    uint32_t *block = (uint32_t *)fx_free_lists[k];
    if (block) {
        fx_free_lists[k] = *(void **)(block + 2);
    } else {
        if (!fx_heap_top) {
            fx_heap_top = ((uintptr_t)&__heap_base + 7u) & ~(uintptr_t)7u;
            fx_heap_end = (uintptr_t)__builtin_wasm_memory_size(0) * 65536u;
        }
        if (fx_heap_top + size > fx_heap_end || fx_heap_top + size < fx_heap_top) {
            size_t missing = fx_heap_top + size - fx_heap_end;
            size_t pages = (missing + 65535u) / 65536u;
            if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
            fx_heap_end += pages * 65536u;
        }
        block = (uint32_t *)fx_heap_top;
        fx_heap_top += size;
    }
    block[0] = FX_IN_USE | k;
    block[1] = (uint32_t)n;
    fx_live++;
    return (unsigned char *)block + FX_HEADER;
}

static void fx_free(void *ptr) {
    if (!ptr) return;
    uint32_t *block = (uint32_t *)((unsigned char *)ptr - FX_HEADER);
    uint32_t k = block[0] & 0xffffu;
    if ((block[0] & 0xffff0000u) != FX_IN_USE || k < FX_MIN_CLASS || k > FX_MAX_CLASS) __builtin_trap();
    block[0] = FX_FREE | k;
    *(void **)(block + 2) = fx_free_lists[k];
    fx_free_lists[k] = block;
    fx_live--;
}

/* The usable size of a block (at least what was asked for). */
static size_t fx_capacity(const void *ptr) {
    const uint32_t *block = (const uint32_t *)((const unsigned char *)ptr - FX_HEADER);
    return ((size_t)1 << (block[0] & 0xffffu)) - FX_HEADER;
}

static void *fx_realloc(void *ptr, size_t used, size_t n) {
    if (ptr && fx_capacity(ptr) >= n) return ptr;
    void *fresh = fx_alloc(n);
    if (!fresh) return 0;
    if (ptr) {
        __builtin_memcpy(fresh, ptr, used);
        fx_free(ptr);
    }
    return fresh;
}

/* Called when the plugin cannot go on without memory: logs and traps (the call fails). */
__attribute__((noreturn)) static FX_UNUSED void fx_out_of_memory(void) {
    fx_log(FX_ERROR, "out of memory");
    __builtin_trap();
}

/* The ABI's exports. alloc(len) returns 0 when there is no memory left. */
FX_EXPORT("alloc") int32_t fx_abi_alloc(int32_t len) { return (int32_t)(uintptr_t)fx_alloc((size_t)(uint32_t)len); }

FX_EXPORT("dealloc") void fx_abi_dealloc(int32_t ptr, int32_t len) {
    (void)len;
    fx_free((void *)(uintptr_t)(uint32_t)ptr);
}

FX_EXPORT("fx_live_allocations") int32_t fx_live_allocations(void) { return fx_live; }

/* ------------------------------------------------------------------------------------------------
 * Strings and the output buffer (JSON writing).
 */

typedef struct {
    const char *ptr;
    size_t len;
} fx_str;

static FX_UNUSED int fx_str_eq(fx_str s, const char *literal) {
    size_t n = fx_strlen(literal);
    if (s.len != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (s.ptr[i] != literal[i]) return 0;
    return 1;
}

static FX_UNUSED int fx_str_ends_with(fx_str s, const char *suffix) {
    size_t n = fx_strlen(suffix);
    if (s.len < n) return 0;
    for (size_t i = 0; i < n; i++)
        if (s.ptr[s.len - n + i] != suffix[i]) return 0;
    return 1;
}

/* A growable byte buffer; start with fx_buf b = {0}; (the output of a handler is one). */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} fx_buf;

static __attribute__((noinline)) void fx_buf_grow(fx_buf *b, size_t want) {
    size_t cap = b->cap < 248 ? 248 : b->cap; /* a 256-byte block */
    while (cap < want) cap = cap * 2 + FX_HEADER; /* the next size class */
    char *fresh = (char *)fx_realloc(b->data, b->len, cap);
    if (!fresh) fx_out_of_memory();
    b->data = fresh;
    b->cap = fx_capacity(fresh);
}

static inline void fx_buf_reserve(fx_buf *b, size_t extra) {
    if (b->len + extra > b->cap) fx_buf_grow(b, b->len + extra);
}

static FX_UNUSED void fx_buf_write(fx_buf *b, const void *src, size_t n) {
    fx_buf_reserve(b, n);
    __builtin_memcpy(b->data + b->len, src, n);
    b->len += n;
}

static FX_UNUSED void fx_buf_putc(fx_buf *b, char c) {
    fx_buf_reserve(b, 1);
    b->data[b->len++] = c;
}

static FX_UNUSED void fx_buf_puts(fx_buf *b, const char *s) { fx_buf_write(b, s, fx_strlen(s)); }

static FX_UNUSED void fx_buf_free(fx_buf *b) {
    fx_free(b->data);
    b->data = 0;
    b->len = 0;
    b->cap = 0;
}

/* A JSON string: quotes, and escapes for '"', '\\' and control characters (other bytes as they are:
 * keep them UTF-8). */
static FX_UNUSED void fx_buf_json_string(fx_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    fx_buf_reserve(b, n * 6 + 2); /* the worst case: every byte a \u00XX */
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
}

static FX_UNUSED void fx_buf_int(fx_buf *b, int64_t v) {
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    fx_buf_reserve(b, (size_t)n + 1);
    if (v < 0) b->data[b->len++] = '-';
    while (n) b->data[b->len++] = tmp[--n];
}

/* A number with at most `decimals` (0-9) digits after the point, trailing zeros dropped; NaN and
 * infinities (not JSON) are written as null. */
static FX_UNUSED void fx_buf_number(fx_buf *b, double v, int decimals) {
    if (v != v || v > 1.7976931348623157e308 || v < -1.7976931348623157e308) {
        fx_buf_puts(b, "null");
        return;
    }
    if (decimals < 0) decimals = 0;
    if (decimals > 9) decimals = 9;
    int64_t scale = 1;
    for (int i = 0; i < decimals; i++) scale *= 10;
    double scaled = v * (double)scale;
    if (scaled >= 9.0e15 || scaled <= -9.0e15) {
        /* Too big for the fixed form: mantissa digits and an exponent. */
        int exp = 0;
        double m = v < 0 ? -v : v;
        while (m >= 1.0e15) {
            m /= 10.0;
            exp++;
        }
        if (v < 0) fx_buf_putc(b, '-');
        fx_buf_int(b, (int64_t)(m + 0.5));
        fx_buf_putc(b, 'e');
        fx_buf_int(b, exp);
        return;
    }
    int64_t r = (int64_t)(scaled < 0 ? scaled - 0.5 : scaled + 0.5);
    uint64_t u = r < 0 ? (uint64_t)0 - (uint64_t)r : (uint64_t)r;
    uint64_t ip = u / (uint64_t)scale, fp = u % (uint64_t)scale;
    if (r < 0) fx_buf_putc(b, '-');
    fx_buf_int(b, (int64_t)ip);
    if (fp) {
        char digits[10];
        int n = decimals;
        for (int i = n - 1; i >= 0; i--) {
            digits[i] = (char)('0' + fp % 10);
            fp /= 10;
        }
        while (n > 0 && digits[n - 1] == '0') n--;
        fx_buf_putc(b, '.');
        fx_buf_write(b, digits, (size_t)n);
    }
}

/* A telemetry object under construction: fx_obj_begin, fx_obj_* per key, fx_obj_end. */
typedef struct {
    fx_buf *b;
    int count;
} fx_obj;

static FX_UNUSED fx_obj fx_obj_begin(fx_buf *b) {
    fx_buf_putc(b, '{');
    fx_obj o = {b, 0};
    return o;
}

static FX_UNUSED void fx_obj_key(fx_obj *o, const char *key, size_t key_len) {
    if (o->count++) fx_buf_putc(o->b, ',');
    fx_buf_json_string(o->b, key, key_len);
    fx_buf_putc(o->b, ':');
}

static FX_UNUSED void fx_obj_int(fx_obj *o, const char *key, int64_t v) {
    fx_obj_key(o, key, fx_strlen(key));
    fx_buf_int(o->b, v);
}

static FX_UNUSED void fx_obj_number(fx_obj *o, const char *key, double v, int decimals) {
    fx_obj_key(o, key, fx_strlen(key));
    fx_buf_number(o->b, v, decimals);
}

static FX_UNUSED void fx_obj_bool(fx_obj *o, const char *key, int v) {
    fx_obj_key(o, key, fx_strlen(key));
    fx_buf_puts(o->b, v ? "true" : "false");
}

static FX_UNUSED void fx_obj_string(fx_obj *o, const char *key, const char *s, size_t n) {
    fx_obj_key(o, key, fx_strlen(key));
    fx_buf_json_string(o->b, s, n);
}

/* A value that is already JSON text (e.g. a slice of the input). */
static FX_UNUSED void fx_obj_raw(fx_obj *o, const char *key, size_t key_len, const char *json, size_t n) {
    fx_obj_key(o, key, key_len);
    fx_buf_write(o->b, json, n);
}

static FX_UNUSED void fx_obj_end(fx_obj *o) { fx_buf_putc(o->b, '}'); }

/* The result of a message the plugin rejects: {"error": "<message>"}. */
static FX_UNUSED void fx_result_error(fx_buf *b, const char *message) {
    fx_buf_puts(b, "{\"error\":");
    fx_buf_json_string(b, message, fx_strlen(message));
    fx_buf_putc(b, '}');
}

/* ------------------------------------------------------------------------------------------------
 * JSON reading: a cursor over a JSON text. Functions return 1 on success, 0 on failure (and set
 * `err`); strings are slices of the input (escapes left as they are: see fx_json_unescape).
 */

typedef struct {
    const char *p;
    const char *end;
    int err;
} fx_json;

typedef struct {
    fx_json *j;
    char close;
    int first;
} fx_iter;

static FX_UNUSED fx_json fx_json_over(const char *text, size_t len) {
    fx_json j = {text, text + len, 0};
    return j;
}

/* (The loops below keep the cursor in locals: a char pointer may alias the cursor's fields, so
 * working through j->p would load and store it at every character.) */
static void fx_json_ws(fx_json *j) {
    const char *p = j->p, *end = j->end;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    j->p = p;
}

/* The next character after whitespace, or -1 at the end. */
static FX_UNUSED int fx_json_peek(fx_json *j) {
    fx_json_ws(j);
    return j->p < j->end ? (unsigned char)*j->p : -1;
}

static int fx_json_fail(fx_json *j) {
    j->err = 1;
    return 0;
}

static int fx_json_string(fx_json *j, fx_str *out) {
    fx_json_ws(j);
    const char *p = j->p, *end = j->end;
    if (p >= end || *p != '"') return fx_json_fail(j);
    const char *start = ++p;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            out->ptr = start;
            out->len = (size_t)(p - start);
            j->p = p + 1;
            return 1;
        }
        if (c == '\\') {
            if (++p >= end) break;
        } else if (c < 0x20) {
            break;
        }
        p++;
    }
    j->p = p;
    return fx_json_fail(j);
}

static int fx_json_number(fx_json *j, double *out) {
    fx_json_ws(j);
    const char *p = j->p;
    int neg = 0, exp10 = 0, digits = 0;
    uint64_t mant = 0;
    if (p < j->end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= j->end || *p < '0' || *p > '9') return fx_json_fail(j);
    for (; p < j->end && *p >= '0' && *p <= '9'; p++) {
        if (digits < 19) {
            mant = mant * 10 + (uint64_t)(*p - '0');
            if (mant) digits++;
        } else {
            exp10++;
        }
    }
    if (p < j->end && *p == '.') {
        p++;
        if (p >= j->end || *p < '0' || *p > '9') return fx_json_fail(j);
        for (; p < j->end && *p >= '0' && *p <= '9'; p++) {
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                if (mant) digits++;
                exp10--;
            }
        }
    }
    if (p < j->end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0, e = 0;
        if (p < j->end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= j->end || *p < '0' || *p > '9') return fx_json_fail(j);
        for (; p < j->end && *p >= '0' && *p <= '9'; p++)
            if (e < 100000) e = e * 10 + (*p - '0');
        exp10 += eneg ? -e : e;
    }
    /* mant x 10^exp10; exact powers of ten up to 1e22 keep one rounding for the common cases. */
    double v = (double)mant, scale = 1.0;
    int n = exp10 < 0 ? -exp10 : exp10;
    while (n-- > 0 && scale < 1e308) scale *= 10.0;
    v = exp10 < 0 ? v / scale : v * scale;
    j->p = p;
    *out = neg ? -v : v;
    return 1;
}

static int fx_json_literal(fx_json *j, const char *word) {
    size_t n = fx_strlen(word);
    if ((size_t)(j->end - j->p) < n) return fx_json_fail(j);
    for (size_t i = 0; i < n; i++)
        if (j->p[i] != word[i]) return fx_json_fail(j);
    j->p += n;
    return 1;
}

/* Enter an object ('{') or an array ('['). */
static FX_UNUSED int fx_json_enter(fx_json *j, char open, fx_iter *it) {
    fx_json_ws(j);
    if (j->p >= j->end || *j->p != open) return fx_json_fail(j);
    j->p++;
    it->j = j;
    it->close = open == '{' ? '}' : ']';
    it->first = 1;
    return 1;
}

/* Move to the next member (objects: `key` gets its name, the cursor is then at its value) or element
 * (arrays: pass key = 0). Returns 0 at the end (the closing bracket consumed) or on an error. The
 * caller must read or skip each value before calling again. */
static FX_UNUSED int fx_iter_next(fx_iter *it, fx_str *key) {
    fx_json *j = it->j;
    if (j->err) return 0;
    fx_json_ws(j);
    if (j->p < j->end && *j->p == it->close) {
        j->p++;
        return 0;
    }
    if (!it->first) {
        if (j->p >= j->end || *j->p != ',') return fx_json_fail(j);
        j->p++;
    }
    it->first = 0;
    if (key) {
        if (!fx_json_string(j, key)) return 0;
        fx_json_ws(j);
        if (j->p >= j->end || *j->p != ':') return fx_json_fail(j);
        j->p++;
    }
    fx_json_ws(j);
    if (j->p >= j->end) return fx_json_fail(j);
    return 1;
}

/* Skip one value of any kind (nesting at most 64 deep). */
static int fx_json_skip_depth(fx_json *j, int depth) {
    if (depth > 64) return fx_json_fail(j);
    int c = fx_json_peek(j);
    fx_str s;
    double d;
    fx_iter it;
    switch (c) {
    case '"':
        return fx_json_string(j, &s);
    case '{':
        if (!fx_json_enter(j, '{', &it)) return 0;
        while (fx_iter_next(&it, &s))
            if (!fx_json_skip_depth(j, depth + 1)) return 0;
        return !j->err;
    case '[':
        if (!fx_json_enter(j, '[', &it)) return 0;
        while (fx_iter_next(&it, 0))
            if (!fx_json_skip_depth(j, depth + 1)) return 0;
        return !j->err;
    case 't':
        return fx_json_literal(j, "true");
    case 'f':
        return fx_json_literal(j, "false");
    case 'n':
        return fx_json_literal(j, "null");
    default:
        return fx_json_number(j, &d);
    }
}

static FX_UNUSED int fx_json_skip(fx_json *j) { return fx_json_skip_depth(j, 0); }

/* The JSON text of the next value (a slice), skipping it. */
static FX_UNUSED int fx_json_raw(fx_json *j, fx_str *out) {
    fx_json_ws(j);
    const char *start = j->p;
    if (!fx_json_skip(j)) return 0;
    out->ptr = start;
    out->len = (size_t)(j->p - start);
    return 1;
}

static FX_UNUSED int fx_json_bool(fx_json *j, int *out) {
    int c = fx_json_peek(j);
    if (c == 't' && fx_json_literal(j, "true")) {
        *out = 1;
        return 1;
    }
    if (c == 'f' && fx_json_literal(j, "false")) {
        *out = 0;
        return 1;
    }
    return fx_json_fail(j);
}

/* Decode the escapes of a string slice into `out` (UTF-8); returns the decoded length, or -1. `out`
 * needs at most s.len bytes. */
static FX_UNUSED int fx_json_unescape(fx_str s, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (c != '\\') {
            out[o++] = c;
            continue;
        }
        if (++i >= s.len) return -1;
        c = s.ptr[i];
        switch (c) {
        case '"': case '\\': case '/': out[o++] = c; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            uint32_t cp = 0;
            for (int round = 0; round < 2; round++) {
                if (i + 4 >= s.len) return -1;
                uint32_t unit = 0;
                for (int k = 1; k <= 4; k++) {
                    char h = s.ptr[i + k];
                    unit <<= 4;
                    if (h >= '0' && h <= '9') unit |= (uint32_t)(h - '0');
                    else if (h >= 'a' && h <= 'f') unit |= (uint32_t)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') unit |= (uint32_t)(h - 'A' + 10);
                    else return -1;
                }
                i += 4;
                if (round == 0 && unit >= 0xD800 && unit < 0xDC00) {
                    cp = unit; /* a high surrogate: a \uDC00-\uDFFF must follow */
                    if (i + 2 >= s.len || s.ptr[i + 1] != '\\' || s.ptr[i + 2] != 'u') return -1;
                    i += 2;
                    continue;
                }
                if (round == 1) {
                    if (unit < 0xDC00 || unit > 0xDFFF) return -1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (unit - 0xDC00);
                } else {
                    if (unit >= 0xDC00 && unit <= 0xDFFF) return -1;
                    cp = unit;
                }
                break;
            }
            if (cp < 0x80) {
                out[o++] = (char)cp;
            } else if (cp < 0x800) {
                out[o++] = (char)(0xC0 | (cp >> 6));
                out[o++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                out[o++] = (char)(0xE0 | (cp >> 12));
                out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[o++] = (char)(0x80 | (cp & 0x3F));
            } else {
                out[o++] = (char)(0xF0 | (cp >> 18));
                out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                out[o++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return -1;
        }
    }
    return (int)o;
}

/* ------------------------------------------------------------------------------------------------
 * Base64 (standard alphabet, '=' padding optional). Returns the decoded length, or -1 on a bad
 * character or length. `out` needs at most (len / 4 + 1) * 3 bytes.
 */

static FX_UNUSED int fx_base64_decode(const char *in, size_t len, uint8_t *out) {
    while (len && in[len - 1] == '=') len--;
    if (len % 4 == 1) return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        uint32_t v;
        if (c >= 'A' && c <= 'Z') v = (uint32_t)(c - 'A');
        else if (c >= 'a' && c <= 'z') v = (uint32_t)(c - 'a' + 26);
        else if (c >= '0' && c <= '9') v = (uint32_t)(c - '0' + 52);
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else return -1;
        acc = (acc << 6) | v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return (int)o;
}

/* ------------------------------------------------------------------------------------------------
 * The plugin's entry point.
 */

/* The plugin's configuration (the input's "config" object, as JSON text). */
typedef struct {
    fx_str json;
} fx_config;

typedef struct {
    fx_str device;          /* JSON string contents, escapes as they are */
    fx_str topic;           /* JSON string contents, escapes as they are */
    const uint8_t *payload; /* the decoded payload bytes */
    size_t payload_len;
    uint32_t index;         /* 0-based position in the batch */
} fx_message;

/* Position a cursor at the value of `key` in the configuration; 0 when there is no such key. */
static FX_UNUSED int fx_config_find(const fx_config *cfg, const char *key, fx_json *value) {
    fx_json j = fx_json_over(cfg->json.ptr, cfg->json.len);
    fx_iter it;
    fx_str name;
    if (!fx_json_enter(&j, '{', &it)) return 0;
    while (fx_iter_next(&it, &name)) {
        if (fx_str_eq(name, key)) {
            *value = j;
            return 1;
        }
        if (!fx_json_skip(&j)) return 0;
    }
    return 0;
}

static FX_UNUSED double fx_config_number(const fx_config *cfg, const char *key, double fallback) {
    fx_json j;
    double v;
    return fx_config_find(cfg, key, &j) && fx_json_number(&j, &v) ? v : fallback;
}

static FX_UNUSED int fx_config_bool(const fx_config *cfg, const char *key, int fallback) {
    fx_json j;
    int v;
    return fx_config_find(cfg, key, &j) && fx_json_bool(&j, &v) ? v : fallback;
}

/* A string (its JSON contents, escapes as they are); 0 when missing or not a string. */
static FX_UNUSED int fx_config_string(const fx_config *cfg, const char *key, fx_str *out) {
    fx_json j;
    return fx_config_find(cfg, key, &j) && fx_json_string(&j, out);
}

/* setup(cfg, error): once per call, before the messages; return 0 if fine, or non-zero with *error
 * set (a static string) to give every message {"error": *error}. */
typedef int (*fx_setup_fn)(const fx_config *cfg, const char **error);
typedef void (*fx_handle_fn)(const fx_config *cfg, const fx_message *msg, fx_buf *out);

static uint64_t fx_pack(const fx_buf *b) { return ((uint64_t)(uintptr_t)b->data << 32) | (uint64_t)b->len; }

/* Handle the messages of the list at the cursor, appending their results to `out`. */
static void fx_run_messages(fx_json *m, const fx_config *cfg, const char *setup_error, fx_handle_fn handle,
                            fx_buf *out) {
    fx_iter list, fields;
    fx_str key;
    uint8_t *payload = 0;
    uint32_t index = 0;
    if (!fx_json_enter(m, '[', &list)) {
        fx_log(FX_ERROR, "\"messages\" is not a list");
        __builtin_trap();
    }
    while (fx_iter_next(&list, 0)) {
        fx_message msg = {{"", 0}, {"", 0}, 0, 0, index};
        fx_str b64 = {0, 0};
        if (!fx_json_enter(m, '{', &fields)) break;
        while (fx_iter_next(&fields, &key)) {
            if (fx_str_eq(key, "device")) fx_json_string(m, &msg.device);
            else if (fx_str_eq(key, "topic")) fx_json_string(m, &msg.topic);
            else if (fx_str_eq(key, "payload")) fx_json_string(m, &b64);
            else fx_json_skip(m);
        }
        if (m->err) break;
        if (index) fx_buf_putc(out, ',');
        size_t mark = out->len;
        if (setup_error) {
            fx_result_error(out, setup_error);
        } else {
            payload = (uint8_t *)fx_realloc(payload, 0, b64.len / 4 * 3 + 3);
            if (!payload) fx_out_of_memory();
            int n = fx_base64_decode(b64.ptr, b64.len, payload);
            if (n < 0) {
                fx_result_error(out, "payload is not base64");
            } else {
                msg.payload = payload;
                msg.payload_len = (size_t)n;
                handle(cfg, &msg, out);
                if (out->len == mark) fx_result_error(out, "no result");
            }
        }
        index++;
    }
    fx_free(payload);
    if (m->err) {
        fx_log(FX_ERROR, "unreadable messages");
        __builtin_trap();
    }
}

/* The input is {"config": {...}, "messages": [...]}: the host writes "config" first, so the
 * messages are handled in the one pass (the other order works too, with a second pass). */
static uint64_t fx_run(const char *input, size_t len, fx_setup_fn setup, fx_handle_fn handle) {
    fx_buf out = {0, 0, 0};
    fx_json j = fx_json_over(input, len);
    fx_config cfg = {{"{}", 2}};
    fx_str key, later = {0, 0};
    fx_iter top;
    int seen_config = 0, seen_messages = 0;
    const char *setup_error = 0;
    fx_buf_puts(&out, "{\"results\":[");
    if (fx_json_enter(&j, '{', &top)) {
        while (fx_iter_next(&top, &key)) {
            if (fx_str_eq(key, "config") && !seen_messages) {
                fx_json_raw(&j, &cfg.json);
                seen_config = 1;
            } else if (fx_str_eq(key, "messages") && !seen_messages) {
                seen_messages = 1;
                if (seen_config) {
                    if (setup && setup(&cfg, &setup_error) && !setup_error) setup_error = "bad configuration";
                    fx_run_messages(&j, &cfg, setup_error, handle, &out);
                } else {
                    fx_json_raw(&j, &later);
                }
            } else if (fx_str_eq(key, "config")) {
                fx_json_raw(&j, &cfg.json);
                seen_config = 1;
            } else {
                fx_json_skip(&j);
            }
        }
    }
    if (j.err || !seen_messages) {
        fx_log(FX_ERROR, "unreadable input");
        __builtin_trap();
    }
    if (later.ptr) {
        if (setup && setup(&cfg, &setup_error) && !setup_error) setup_error = "bad configuration";
        fx_json m = fx_json_over(later.ptr, later.len);
        fx_run_messages(&m, &cfg, setup_error, handle, &out);
    }
    fx_buf_puts(&out, "]}");
    return fx_pack(&out);
}

#define FLUXIOT_PLUGIN(setup, handle)                                                                   \
    FX_EXPORT("process") int64_t fx_abi_process(int32_t ptr, int32_t len) {                            \
        return (int64_t)fx_run((const char *)(uintptr_t)(uint32_t)ptr, (size_t)(uint32_t)len, (setup), \
                               (handle));                                                              \
    }

#endif /* FLUXIOT_PLUGIN_H */
