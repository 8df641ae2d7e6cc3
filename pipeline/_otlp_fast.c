/*
 * pipeline._otlp_fast: OTLP ExportTraceServiceRequest wire format -> SPAN_SCHEMA column buffers.
 *
 * The pure-Python decoder (pipeline.otlp.request_to_table) reads every attribute through
 * protobuf's Python objects (~0.5 us per access, ~20 attributes per span). This walks the protobuf
 * wire format once and writes the column buffers directly (hex ids, strings, int64s, and the
 * attribute JSON text exactly as orjson writes what the Python path builds), so Python only wraps
 * the buffers in Arrow arrays.
 *
 * Contract (pipeline.otlp.decode_protobuf):
 *   - it is only called on bytes that upb's ParseFromString accepted (well-formed, valid UTF-8
 *     strings), but it trusts nothing: every length and offset is bounds-checked, the recursion is
 *     capped, and anything unexpected makes it give up;
 *   - `walk(body)` returns the columns, or None ("bail out"): then the caller uses the Python path
 *     on the parsed message, so the output is identical by construction. It bails out on whatever
 *     is rare and subtle to mirror: a span the Python path would reject, a repeated attribute key,
 *     a singular message field sent twice (protobuf merges those), a time over INT64_MAX, a
 *     non-string call id / source / service.name, unknown groups, and columns over 2 GiB.
 *
 * Wire format facts mirrored from upb: a known field with an unexpected wire type is an unknown
 * field (skipped); scalars repeated on the wire: the last one wins; enums are int32 (truncated);
 * a oneof holds the field that came last, except that a message field meeting itself is merged.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { OK = 0, BAIL = 1, NOMEM = 2, DONE = 3 };

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

#define TRY(expr)                    \
    do {                             \
        int _r = (expr);             \
        if (_r != OK) return _r;     \
    } while (0)

/* AnyValue nesting cap (upb's own parse depth limit is 100 messages, so this never bails on
 * anything upb accepted; it only protects the C stack). */
#define MAX_DEPTH 128
/* Arrow string offsets are int32. */
#define MAX_COLUMN_BYTES ((size_t)INT32_MAX)

/* ---------------------------------------------------------------------------------------------
 * Growable byte buffers
 */
typedef struct {
    uint8_t *d;
    size_t n, cap;
} Buf;

static int buf_grow(Buf *b, size_t extra) {
    if (extra > SIZE_MAX / 4 - b->n) return NOMEM;
    size_t need = b->n + extra;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < need) cap *= 2;
    /* Raw allocator: the memory may be handed to an OwnedBuffer and freed from any thread. */
    uint8_t *d = PyMem_RawRealloc(b->d, cap);
    if (d == NULL) return NOMEM;
    b->d = d;
    b->cap = cap;
    return OK;
}

static inline int buf_reserve(Buf *b, size_t extra) {
    if (b->cap - b->n >= extra) return OK;
    return buf_grow(b, extra);
}

static inline int buf_put(Buf *b, const void *s, size_t n) {
    TRY(buf_reserve(b, n));
    if (n) memcpy(b->d + b->n, s, n);
    b->n += n;
    return OK;
}

#define BUF_LIT(b, lit) buf_put((b), (lit), sizeof(lit) - 1)

static inline int buf_byte(Buf *b, uint8_t c) {
    TRY(buf_reserve(b, 1));
    b->d[b->n++] = c;
    return OK;
}

static void buf_free(Buf *b) {
    PyMem_RawFree(b->d);
    b->d = NULL;
    b->n = b->cap = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Arrow string columns: int32 offsets, data, optional validity bitmap
 */
typedef struct {
    Buf offsets, data, validity;
    int64_t rows, nulls;
    int nullable;
} StrCol;

static int col_init(StrCol *c, int nullable) {
    memset(c, 0, sizeof(*c));
    c->nullable = nullable;
    int32_t zero = 0;
    return buf_put(&c->offsets, &zero, sizeof(zero));
}

/* Close the current row: its bytes are data[previous offset, data.n). */
static int col_commit(StrCol *c, int valid) {
    if (c->data.n > MAX_COLUMN_BYTES) return BAIL;
    int32_t offset = (int32_t)c->data.n;
    TRY(buf_put(&c->offsets, &offset, sizeof(offset)));
    if (c->nullable) {
        if (c->rows % 8 == 0) TRY(buf_byte(&c->validity, 0));
        if (valid) c->validity.d[c->validity.n - 1] |= (uint8_t)(1u << (c->rows % 8));
    }
    if (!valid) c->nulls++;
    c->rows++;
    return OK;
}

static int col_str(StrCol *c, const uint8_t *s, size_t n) {
    TRY(buf_put(&c->data, s, n));
    return col_commit(c, 1);
}

static int col_null(StrCol *c) { return col_commit(c, 0); }

/* A nullable column from an optional string: empty means null (the Python path's `x or None`). */
static int col_str_or_null(StrCol *c, const uint8_t *s, size_t n) {
    return n ? col_str(c, s, n) : col_null(c);
}

static void col_free(StrCol *c) {
    buf_free(&c->offsets);
    buf_free(&c->data);
    buf_free(&c->validity);
}

/* ---------------------------------------------------------------------------------------------
 * Wire format reading
 */
typedef struct {
    const uint8_t *p, *end;
} Msg;

typedef struct {
    uint32_t field;
    int wt;
    uint64_t v;        /* varint, fixed64, fixed32 */
    const uint8_t *s;  /* length-delimited */
    size_t len;
} Field;

static inline uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline int read_varint(Msg *m, uint64_t *out) {
    if (m->p < m->end && *m->p < 0x80) { /* nearly every tag and length */
        *out = *m->p++;
        return OK;
    }
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (m->p >= m->end) return BAIL;
        uint8_t b = *m->p++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            return OK;
        }
    }
    return BAIL;
}

/* The next field of a message: OK (f filled), DONE at the end, BAIL if malformed or a group. */
static ALWAYS_INLINE int next_field(Msg *m, Field *f) {
    if (m->p >= m->end) return DONE;
    uint64_t tag;
    TRY(read_varint(m, &tag));
    if (tag > UINT32_MAX || (tag >> 3) == 0) return BAIL;
    f->field = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    switch (f->wt) {
        case 0:
            return read_varint(m, &f->v);
        case 1:
            if (m->end - m->p < 8) return BAIL;
            f->v = load_le64(m->p);
            m->p += 8;
            return OK;
        case 2: {
            uint64_t n;
            TRY(read_varint(m, &n));
            if (n > (uint64_t)(m->end - m->p)) return BAIL;
            f->s = m->p;
            f->len = (size_t)n;
            m->p += n;
            return OK;
        }
        case 5:
            if (m->end - m->p < 4) return BAIL;
            f->v = load_le32(m->p);
            m->p += 4;
            return OK;
        default: /* 3/4: groups (legal in unknown fields, rare: let Python handle them); 6/7 invalid */
            return BAIL;
    }
}

#define FOR_FIELDS(m, f, r) while (((r) = next_field(&(m), &(f))) == OK)
#define END_FIELDS(r)              \
    do {                           \
        if ((r) != DONE) return (r); \
    } while (0)

static inline Msg msg_of(const uint8_t *s, size_t n) {
    Msg m = {s, s + n};
    return m;
}

/* ---------------------------------------------------------------------------------------------
 * JSON text, byte for byte as orjson.dumps writes the Python path's values
 */
static const char HEX[] = "0123456789abcdef";
/* 0: copy; 'u': \u00XX; else the character after the backslash. */
static uint8_t ESCAPE[256];

static void init_escape(void) {
    for (int i = 0; i < 0x20; i++) ESCAPE[i] = 'u';
    ESCAPE['\b'] = 'b';
    ESCAPE['\t'] = 't';
    ESCAPE['\n'] = 'n';
    ESCAPE['\f'] = 'f';
    ESCAPE['\r'] = 'r';
    ESCAPE['"'] = '"';
    ESCAPE['\\'] = '\\';
}

/* Does any of these 8 bytes need escaping (< 0x20, '"' or '\\')? May say yes wrongly only when
 * another byte of the word does need it (the usual has-less-than / has-zero-byte tricks). */
static inline int word_needs_escape(uint64_t v) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t control = (v - 0x20 * ones) & ~v & highs;
    uint64_t q = v ^ (0x22 * ones);
    uint64_t b = v ^ (0x5c * ones);
    return ((control | ((q - ones) & ~q) | ((b - ones) & ~b)) & highs) != 0;
}

static inline uint8_t *escape_byte(uint8_t *w, uint8_t ch) {
    uint8_t e = ESCAPE[ch];
    if (e == 0) {
        *w++ = ch;
    } else if (e == 'u') {
        memcpy(w, "\\u00", 4);
        w[4] = (uint8_t)HEX[ch >> 4];
        w[5] = (uint8_t)HEX[ch & 15];
        w += 6;
    } else {
        w[0] = '\\';
        w[1] = e;
        w += 2;
    }
    return w;
}

static int json_string(Buf *o, const uint8_t *s, size_t n) {
    if (n > (SIZE_MAX / 8)) return NOMEM;
    TRY(buf_reserve(o, 6 * n + 2));
    uint8_t *w = o->d + o->n;
    *w++ = '"';
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        if (!word_needs_escape(v)) {
            memcpy(w, &v, 8);
            w += 8;
        } else {
            for (size_t j = i; j < i + 8; j++) w = escape_byte(w, s[j]);
        }
    }
    for (; i < n; i++) w = escape_byte(w, s[i]);
    *w++ = '"';
    o->n = (size_t)(w - o->d);
    return OK;
}

static int json_int(Buf *o, int64_t v) {
    char tmp[24];
    int i = 24;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) tmp[--i] = '-';
    return buf_put(o, tmp + i, (size_t)(24 - i));
}

/* orjson's float format from the shortest round-trip digits (Python's repr gives the same digits):
 * value = 0.D * 10^kk; plain decimal when -5 < kk <= 16 ("100.0", "0.00001"), else scientific with
 * the exponent's sign always written ("1e+16", "1.5e-7"). */
static int json_double(Buf *o, uint64_t bits) {
    double d;
    memcpy(&d, &bits, sizeof(d));
    if (d != d) return BUF_LIT(o, "\"NaN\"");
    if (d > 1.7976931348623157e308) return BUF_LIT(o, "\"Infinity\"");
    if (d < -1.7976931348623157e308) return BUF_LIT(o, "\"-Infinity\"");
    char *repr = PyOS_double_to_string(d, 'r', 0, 0, NULL);
    if (repr == NULL) {
        PyErr_Clear();
        return NOMEM;
    }
    char digits[32];
    int n = 0, point = -1, exponent = 0, negative = 0, ok = 1;
    const char *p = repr;
    if (*p == '-') {
        negative = 1;
        p++;
    }
    for (; *p && *p != 'e' && *p != 'E'; p++) {
        if (*p == '.') {
            point = n;
        } else if (*p >= '0' && *p <= '9' && n < (int)sizeof(digits)) {
            digits[n++] = *p;
        } else {
            ok = 0;
            break;
        }
    }
    if (ok && (*p == 'e' || *p == 'E')) {
        p++;
        int sign = 1;
        if (*p == '+' || *p == '-') sign = (*p++ == '-') ? -1 : 1;
        int e = 0;
        if (!*p) ok = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9' || e > 100000) {
                ok = 0;
                break;
            }
            e = e * 10 + (*p - '0');
        }
        exponent = sign * e;
    }
    PyMem_Free(repr);
    if (!ok || n == 0) return BAIL;
    int kk = (point < 0 ? n : point) + exponent;
    int start = 0;
    while (start < n && digits[start] == '0') {
        start++;
        kk--;
    }
    while (n > start && digits[n - 1] == '0') n--;
    if (start == n) return negative ? BUF_LIT(o, "-0.0") : BUF_LIT(o, "0.0");
    const char *D = digits + start;
    int len = n - start;
    char out[64];
    int w = 0;
    if (negative) out[w++] = '-';
    if (kk > -5 && kk <= 16) {
        if (kk <= 0) {
            out[w++] = '0';
            out[w++] = '.';
            for (int i = 0; i < -kk; i++) out[w++] = '0';
            memcpy(out + w, D, (size_t)len);
            w += len;
        } else if (kk >= len) {
            memcpy(out + w, D, (size_t)len);
            w += len;
            for (int i = len; i < kk; i++) out[w++] = '0';
            out[w++] = '.';
            out[w++] = '0';
        } else {
            memcpy(out + w, D, (size_t)kk);
            w += kk;
            out[w++] = '.';
            memcpy(out + w, D + kk, (size_t)(len - kk));
            w += len - kk;
        }
    } else {
        out[w++] = D[0];
        if (len > 1) {
            out[w++] = '.';
            memcpy(out + w, D + 1, (size_t)(len - 1));
            w += len - 1;
        }
        int e = kk - 1;
        out[w++] = 'e';
        out[w++] = e < 0 ? '-' : '+';
        if (e < 0) e = -e;
        char tmp[8];
        int t = 8;
        do {
            tmp[--t] = (char)('0' + e % 10);
            e /= 10;
        } while (e && t > 0);
        memcpy(out + w, tmp + t, (size_t)(8 - t));
        w += 8 - t;
    }
    return buf_put(o, out, (size_t)w);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int json_base64(Buf *o, const uint8_t *s, size_t n) {
    if (n > SIZE_MAX / 2) return NOMEM;
    TRY(buf_reserve(o, (n + 2) / 3 * 4 + 2));
    uint8_t *w = o->d + o->n;
    *w++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        w[0] = (uint8_t)B64[v >> 18];
        w[1] = (uint8_t)B64[(v >> 12) & 63];
        w[2] = (uint8_t)B64[(v >> 6) & 63];
        w[3] = (uint8_t)B64[v & 63];
        w += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        w[0] = (uint8_t)B64[v >> 18];
        w[1] = (uint8_t)B64[(v >> 12) & 63];
        w[2] = '=';
        w[3] = '=';
        w += 4;
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8);
        w[0] = (uint8_t)B64[v >> 18];
        w[1] = (uint8_t)B64[(v >> 12) & 63];
        w[2] = (uint8_t)B64[(v >> 6) & 63];
        w[3] = '=';
        w += 4;
    }
    *w++ = '"';
    o->n = (size_t)(w - o->d);
    return OK;
}

static int put_hex(Buf *o, const uint8_t *s, size_t n) {
    if (n > SIZE_MAX / 4) return NOMEM;
    TRY(buf_reserve(o, 2 * n));
    uint8_t *w = o->d + o->n;
    for (size_t i = 0; i < n; i++) {
        w[2 * i] = (uint8_t)HEX[s[i] >> 4];
        w[2 * i + 1] = (uint8_t)HEX[s[i] & 15];
    }
    o->n += 2 * n;
    return OK;
}

/* ---------------------------------------------------------------------------------------------
 * AnyValue and KeyValue lists
 */
enum { AV_NONE = 0, AV_STRING = 1, AV_BOOL = 2, AV_INT = 3, AV_DOUBLE = 4, AV_ARRAY = 5, AV_KVLIST = 6, AV_BYTES = 7 };

typedef struct {
    int kind;
    uint64_t v;
    const uint8_t *s;
    size_t len;
} AnyValue;

/* Which oneof case an AnyValue holds after upb parsed it, and its payload. */
static int any_value(const uint8_t *s, size_t n, AnyValue *out) {
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    out->kind = AV_NONE;
    FOR_FIELDS(m, f, r) {
        switch (f.field) {
            case AV_ARRAY:
            case AV_KVLIST:
                if (f.wt != 2) break;
                if (out->kind == (int)f.field) return BAIL; /* merged by protobuf */
                /* fall through */
            case AV_STRING:
            case AV_BYTES:
                if (f.wt != 2) break;
                out->kind = (int)f.field;
                out->s = f.s;
                out->len = f.len;
                break;
            case AV_BOOL:
            case AV_INT:
                if (f.wt != 0) break;
                out->kind = (int)f.field;
                out->v = f.v;
                break;
            case AV_DOUBLE:
                if (f.wt != 1) break;
                out->kind = AV_DOUBLE;
                out->v = f.v;
                break;
            default:
                break;
        }
    }
    END_FIELDS(r);
    return OK;
}

typedef struct {
    const uint8_t *s;
    size_t len;
} Slice;

typedef struct {
    const uint8_t *key;
    size_t klen;
    const uint8_t *value; /* AnyValue bytes; NULL when the KeyValue has no value */
    size_t vlen;
    uint32_t hash;
} Entry;

typedef struct {
    const char *key;
    size_t klen;
    int found;
    const uint8_t *value;
    size_t vlen;
} Want;

typedef struct {
    StrCol trace_id, span_id, parent_span_id, trace_state, name, kind, status_code, status_message,
        service_name, scope_name, scope_version, call_id, source, attributes, resource_attributes, links,
        event_name, event_attributes;
    Buf start_ns, end_ns, event_time, event_offsets;
    Buf ingested_at;        /* walk_records: the record's time, per row */
    int64_t ingested_at_ns; /* of the request being walked */
    int64_t rows, events;
    /* scratch: a stack of KeyValue entries (one frame per kvlist being written) and a hash table */
    Entry *entries;
    size_t n_entries, cap_entries;
    uint32_t *table;
    size_t cap_table;
    Buf resource_json;
    /* the current span's events and links */
    Slice *event_slices, *link_slices;
    size_t n_events, cap_events, n_links, cap_links;
    /* the typed `minivoice` column: one MvCol per field */
    struct MvCol *mv;
    int64_t mv_rows; /* the rows the MvCol buffers are sized for (count_spans) */
} Ctx;

static int push_entry(Ctx *c, const Entry *e) {
    if (c->n_entries == c->cap_entries) {
        size_t cap = c->cap_entries ? c->cap_entries * 2 : 64;
        if (cap > SIZE_MAX / sizeof(Entry)) return NOMEM;
        Entry *d = PyMem_Realloc(c->entries, cap * sizeof(Entry));
        if (d == NULL) return NOMEM;
        c->entries = d;
        c->cap_entries = cap;
    }
    c->entries[c->n_entries++] = *e;
    return OK;
}

static inline uint32_t key_hash(const uint8_t *k, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, k, 8);
        memcpy(&b, k + n - 8, 8);
        h = (h ^ a) * 0xff51afd7ed558ccdull;
        h = (h ^ b) * 0xc4ceb9fe1a85ec53ull;
        if (n > 16) {
            memcpy(&a, k + n / 2 - 4, 8);
            h = (h ^ a) * 0xff51afd7ed558ccdull;
        }
    } else {
        for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 0x100000001b3ull;
    }
    h ^= h >> 29;
    return (uint32_t)(h ^ (h >> 32));
}

/* True if two entries of [base, top) share a key: then the Python dict keeps the first position
 * with the last value; rare, so the Python path handles it. */
static int has_duplicate(Ctx *c, size_t base, size_t top, int *dup) {
    size_t count = top - base;
    *dup = 0;
    if (count < 2) return OK;
    size_t size = 16;
    while (size < 2 * count) size *= 2;
    if (size > c->cap_table) {
        uint32_t *t = PyMem_Realloc(c->table, size * sizeof(uint32_t));
        if (t == NULL) return NOMEM;
        c->table = t;
        c->cap_table = size;
    }
    memset(c->table, 0, size * sizeof(uint32_t));
    size_t mask = size - 1;
    for (size_t i = base; i < top; i++) {
        Entry *e = &c->entries[i];
        size_t slot = e->hash & mask;
        while (c->table[slot]) {
            Entry *other = &c->entries[c->table[slot] - 1];
            if (other->hash == e->hash && other->klen == e->klen && memcmp(other->key, e->key, e->klen) == 0) {
                *dup = 1;
                return OK;
            }
            slot = (slot + 1) & mask;
        }
        if (i + 1 > UINT32_MAX) return BAIL;
        c->table[slot] = (uint32_t)(i + 1);
    }
    return OK;
}

static int json_value(Ctx *c, Buf *o, const uint8_t *s, size_t n, int depth);

/* Push the key and value of a KeyValue message onto the entry stack. */
static int push_key_value(Ctx *c, const uint8_t *s, size_t n) {
    Entry e = {(const uint8_t *)"", 0, NULL, 0, 0};
    Msg kv = msg_of(s, n);
    Field g = {0, 0, 0, NULL, 0};
    int q;
    FOR_FIELDS(kv, g, q) {
        if (g.wt != 2) continue;
        if (g.field == 1) {
            e.key = g.s;
            e.klen = g.len;
        } else if (g.field == 2) {
            if (e.value != NULL) return BAIL; /* merged by protobuf */
            e.value = g.s;
            e.vlen = g.len;
        }
    }
    END_FIELDS(q);
    e.hash = key_hash(e.key, e.klen);
    return push_entry(c, &e);
}

/* The entries [base, n_entries) as a JSON object (the Python path's attributes_dict + orjson),
 * popping them. `wants` collects the values of some keys. */
static int json_entries(Ctx *c, Buf *o, size_t base, int depth, Want *wants, int n_wants) {
    size_t top = c->n_entries;
    int dup;
    TRY(has_duplicate(c, base, top, &dup));
    if (dup) return BAIL;
    TRY(buf_byte(o, '{'));
    for (size_t i = base; i < top; i++) {
        /* a copy: the recursion below may move c->entries */
        Entry e = c->entries[i];
        if (i > base) TRY(buf_byte(o, ','));
        TRY(json_string(o, e.key, e.klen));
        TRY(buf_byte(o, ':'));
        if (e.value == NULL) {
            TRY(BUF_LIT(o, "null"));
        } else {
            TRY(json_value(c, o, e.value, e.vlen, depth + 1));
        }
        for (int w = 0; w < n_wants; w++) {
            if (wants[w].klen == e.klen && memcmp(wants[w].key, e.key, e.klen) == 0) {
                wants[w].found = 1;
                wants[w].value = e.value;
                wants[w].vlen = e.vlen;
            }
        }
        c->n_entries = top; /* drop what the recursion pushed */
    }
    c->n_entries = base;
    return buf_byte(o, '}');
}

/* The KeyValue messages found as field `field_no` of message [s, s+n), as a JSON object. */
static int json_dict(Ctx *c, Buf *o, const uint8_t *s, size_t n, uint32_t field_no, int depth, Want *wants,
                     int n_wants) {
    if (depth > MAX_DEPTH) return BAIL;
    size_t base = c->n_entries;
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.field == field_no && f.wt == 2) TRY(push_key_value(c, f.s, f.len));
    }
    END_FIELDS(r);
    return json_entries(c, o, base, depth, wants, n_wants);
}

static int json_value(Ctx *c, Buf *o, const uint8_t *s, size_t n, int depth) {
    if (depth > MAX_DEPTH) return BAIL;
    AnyValue a;
    TRY(any_value(s, n, &a));
    switch (a.kind) {
        case AV_STRING:
            return json_string(o, a.s, a.len);
        case AV_BOOL:
            return a.v ? BUF_LIT(o, "true") : BUF_LIT(o, "false");
        case AV_INT:
            return json_int(o, (int64_t)a.v);
        case AV_DOUBLE:
            return json_double(o, a.v);
        case AV_BYTES:
            return json_base64(o, a.s, a.len);
        case AV_KVLIST:
            return json_dict(c, o, a.s, a.len, 1, depth + 1, NULL, 0);
        case AV_ARRAY: {
            TRY(buf_byte(o, '['));
            Msg m = msg_of(a.s, a.len);
            Field f = {0, 0, 0, NULL, 0};
            int r, first = 1;
            FOR_FIELDS(m, f, r) {
                if (f.field != 1 || f.wt != 2) continue;
                if (!first) TRY(buf_byte(o, ','));
                first = 0;
                TRY(json_value(c, o, f.s, f.len, depth + 1));
            }
            END_FIELDS(r);
            return buf_byte(o, ']');
        }
        default:
            return BUF_LIT(o, "null");
    }
}

/* A promoted attribute (call id, source, service.name): the string, or null when absent or empty
 * AnyValue. Other types go through `str()` in the Python path: bail out. */
static int promoted(StrCol *col, const Want *w) {
    if (!w->found || w->value == NULL) return col_null(col);
    AnyValue a;
    TRY(any_value(w->value, w->vlen, &a));
    if (a.kind == AV_NONE) return col_null(col);
    if (a.kind != AV_STRING) return BAIL;
    return col_str(col, a.s, a.len);
}

/* ---------------------------------------------------------------------------------------------
 * The typed `minivoice` column (pipeline/schema.py: MINIVOICE_FIELDS and the conversion rules),
 * handed to Python as one Arrow struct array through the Arrow C data interface (a PyCapsule):
 * one import instead of an Array.from_buffers call per field.
 *
 * A field takes its attribute's value when the value has the field's type: string <- string,
 * int64 <- int, float64 <- double or int (converted), bool <- bool, list<string> <- an array of
 * strings only; anything else is null. The struct itself is never null.
 */
enum { MV_STRING = 0, MV_INT = 1, MV_DOUBLE = 2, MV_BOOL = 3, MV_STRINGS = 4 };

typedef struct {
    uint8_t *key;
    size_t klen;
    uint32_t hash;
    int kind;
} MvField;

/* Set by set_minivoice_fields (pipeline.otlp does it at import); walk() defers to Python until then. */
static MvField *mv_fields = NULL;
static int mv_count = -1;
static uint32_t *mv_table = NULL; /* open addressing over the key hash: field index + 1, 0 = empty */
static size_t mv_mask = 0;

/* The span count is known before the walk (count_spans), so the per-row buffers are allocated
 * once, at their final size, and zeroed. Only the attributes a span has are touched: a null int64,
 * double or bool costs nothing, and the offsets of null strings and lists are filled in when the
 * next value (or the export) comes. */
typedef struct MvCol {
    Buf validity; /* one bit per row, zeroed: set for the valid rows */
    Buf values;   /* int64, double: 8 bytes per row; bool: one bit per row; string, list: int32 offsets */
    Buf data;     /* string: the bytes; list: int32 offsets of the element strings in child_data */
    Buf child_data;
    int64_t valid, elements;
    int64_t filled; /* string, list: offsets[0..filled] are written */
    int64_t seen;   /* the row this field was last found in, + 1 (a key twice in one span defers) */
} MvCol;

/* A Buf of exactly `n` zero bytes (at least 8 allocated, so no exported pointer is NULL). */
static int buf_zeroed(Buf *b, size_t n) {
    b->d = PyMem_RawCalloc(n + 8, 1);
    if (b->d == NULL) return NOMEM;
    b->n = n;
    b->cap = n + 8;
    return OK;
}

static int mv_col_init(MvCol *m, int kind, int64_t rows) {
    memset(m, 0, sizeof(*m));
    size_t r = (size_t)rows, bitmap = (r + 7) / 8;
    TRY(buf_zeroed(&m->validity, bitmap));
    switch (kind) {
        case MV_INT:
        case MV_DOUBLE:
            TRY(buf_zeroed(&m->values, 8 * r));
            break;
        case MV_BOOL:
            TRY(buf_zeroed(&m->values, bitmap));
            break;
        default: /* string, list: offsets[0] = 0 */
            TRY(buf_zeroed(&m->values, 4 * (r + 1)));
            break;
    }
    TRY(buf_reserve(&m->data, kind == MV_STRINGS ? 64 : 4 * r + 8));
    TRY(buf_reserve(&m->child_data, 8));
    if (kind == MV_STRINGS) {
        int32_t zero = 0;
        TRY(buf_put(&m->data, &zero, sizeof(zero)));
    }
    return OK;
}

static void mv_col_free(MvCol *m) {
    buf_free(&m->validity);
    buf_free(&m->values);
    buf_free(&m->data);
    buf_free(&m->child_data);
}

static inline int mv_lookup(const Entry *e) {
    size_t slot = e->hash & mv_mask;
    uint32_t at;
    while ((at = mv_table[slot]) != 0) {
        const MvField *f = &mv_fields[at - 1];
        if (f->hash == e->hash && f->klen == e->klen && memcmp(f->key, e->key, e->klen) == 0) return (int)at - 1;
        slot = (slot + 1) & mv_mask;
    }
    return -1;
}

static inline void set_bit(Buf *b, int64_t row) { b->d[row / 8] |= (uint8_t)(1u << (row % 8)); }

/* String and list offsets: rows before `row` not written yet are null (empty): they end at `end`. */
static inline int mv_fill(MvCol *m, int64_t row, size_t end) {
    if (end > MAX_COLUMN_BYTES) return BAIL;
    int32_t offset = (int32_t)end;
    for (int64_t k = m->filled + 1; k <= row; k++) memcpy(m->values.d + 4 * (size_t)k, &offset, sizeof(offset));
    if (row > m->filled) m->filled = row;
    return OK;
}

/* The elements of an ArrayValue, if every one is a string; otherwise nothing is kept (*valid = 0). */
static int mv_strings(MvCol *m, const uint8_t *s, size_t n, int *valid) {
    size_t data_n = m->data.n, child_n = m->child_data.n;
    int64_t elements = m->elements;
    Msg am = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    *valid = 0;
    FOR_FIELDS(am, f, r) {
        if (f.field != 1 || f.wt != 2) continue; /* an unknown field, as for upb */
        AnyValue item;
        TRY(any_value(f.s, f.len, &item));
        if (item.kind != AV_STRING) {
            m->data.n = data_n;
            m->child_data.n = child_n;
            m->elements = elements;
            return OK;
        }
        TRY(buf_put(&m->child_data, item.s, item.len));
        if (m->child_data.n > MAX_COLUMN_BYTES) return BAIL;
        int32_t offset = (int32_t)m->child_data.n;
        TRY(buf_put(&m->data, &offset, sizeof(offset)));
        m->elements++;
    }
    END_FIELDS(r);
    *valid = 1;
    return OK;
}

/* Row `row` of a field of `kind` from the attribute's AnyValue bytes (NULL: no value): written only
 * when the value converts (mv_col_init's zeroed buffers already say null). */
static int mv_append(MvCol *m, int kind, int64_t row, const uint8_t *value, size_t vlen) {
    if (value == NULL) return OK;
    AnyValue a;
    TRY(any_value(value, vlen, &a));
    switch (kind) {
        case MV_STRING:
            if (a.kind != AV_STRING) return OK;
            TRY(mv_fill(m, row, m->data.n));
            TRY(buf_put(&m->data, a.s, a.len));
            TRY(mv_fill(m, row + 1, m->data.n));
            break;
        case MV_INT:
            if (a.kind != AV_INT) return OK;
            memcpy(m->values.d + 8 * (size_t)row, &a.v, 8); /* two's complement: the int64 */
            break;
        case MV_DOUBLE:
            if (a.kind == AV_DOUBLE) {
                memcpy(m->values.d + 8 * (size_t)row, &a.v, 8);
            } else if (a.kind == AV_INT) {
                double d = (double)(int64_t)a.v; /* round to nearest, as Python's float(int) */
                memcpy(m->values.d + 8 * (size_t)row, &d, 8);
            } else {
                return OK;
            }
            break;
        case MV_BOOL:
            if (a.kind != AV_BOOL) return OK;
            if (a.v != 0) set_bit(&m->values, row);
            break;
        default: { /* MV_STRINGS */
            if (a.kind != AV_ARRAY) return OK;
            TRY(mv_fill(m, row, (size_t)m->elements));
            int valid;
            TRY(mv_strings(m, a.s, a.len, &valid));
            if (!valid) return OK;
            TRY(mv_fill(m, row + 1, (size_t)m->elements));
            break;
        }
    }
    set_bit(&m->validity, row);
    m->valid++;
    return OK;
}

/* The `minivoice` row of the span whose attributes are the entries [base, top). */
static int mv_row(Ctx *c, size_t base, size_t top) {
    int64_t row = c->rows;
    if (row >= c->mv_rows) return BAIL; /* more spans than counted: never, but never overrun */
    for (size_t i = base; i < top; i++) {
        const Entry *e = &c->entries[i];
        int field = mv_lookup(e);
        if (field < 0) continue;
        MvCol *m = &c->mv[field];
        if (m->seen == row + 1) return BAIL; /* a repeated key: the Python path (last one wins) */
        m->seen = row + 1;
        TRY(mv_append(m, mv_fields[field].kind, row, e->value, e->vlen));
    }
    return OK;
}

/* Close the columns: the offsets of the trailing null rows. */
static int mv_finish(Ctx *c) {
    for (int i = 0; i < mv_count; i++) {
        MvCol *m = &c->mv[i];
        int kind = mv_fields[i].kind;
        if (kind == MV_STRING) TRY(mv_fill(m, c->rows, m->data.n));
        if (kind == MV_STRINGS) TRY(mv_fill(m, c->rows, (size_t)m->elements));
    }
    return OK;
}

/* Arrow C data interface (https://arrow.apache.org/docs/format/CDataInterface.html): ABI-stable. */
#ifndef ARROW_C_DATA_INTERFACE
#define ARROW_C_DATA_INTERFACE
#define ARROW_FLAG_DICTIONARY_ORDERED 1
#define ARROW_FLAG_NULLABLE 2
#define ARROW_FLAG_MAP_KEYS_SORTED 4
struct ArrowSchema {
    const char *format;
    const char *name;
    const char *metadata;
    int64_t flags;
    int64_t n_children;
    struct ArrowSchema **children;
    struct ArrowSchema *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};
struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};
#endif

/* What an exported array node owns. Raw allocator throughout: Arrow may release from any thread. */
typedef struct {
    uint8_t *owned[3];
    const void *buffers[3];
    struct ArrowArray **children;
    int64_t n_children;
} ExportNode;

static void node_release(struct ArrowArray *a) {
    ExportNode *p = (ExportNode *)a->private_data;
    if (p != NULL) {
        for (int64_t i = 0; i < p->n_children; i++) {
            struct ArrowArray *child = p->children[i];
            if (child == NULL) continue;
            if (child->release != NULL) child->release(child);
            PyMem_RawFree(child);
        }
        PyMem_RawFree(p->children);
        for (int i = 0; i < 3; i++) PyMem_RawFree(p->owned[i]);
        PyMem_RawFree(p);
    }
    a->private_data = NULL;
    a->release = NULL;
}

/* Make `a` an array node owning the given buffers (moved out of the Bufs; NULL: absent) with room
 * for `n_children` children (node_child). */
static int node_init(struct ArrowArray *a, int64_t length, int64_t null_count, Buf **bufs, int n_buffers,
                     int64_t n_children) {
    memset(a, 0, sizeof(*a));
    ExportNode *p = PyMem_RawCalloc(1, sizeof(ExportNode));
    if (p == NULL) return NOMEM;
    if (n_children > 0) {
        p->children = PyMem_RawCalloc((size_t)n_children, sizeof(struct ArrowArray *));
        if (p->children == NULL) {
            PyMem_RawFree(p);
            return NOMEM;
        }
    }
    p->n_children = n_children;
    for (int i = 0; i < n_buffers; i++) {
        if (bufs[i] == NULL) continue;
        p->owned[i] = bufs[i]->d;
        p->buffers[i] = bufs[i]->d;
        bufs[i]->d = NULL;
        bufs[i]->n = bufs[i]->cap = 0;
    }
    a->length = length;
    a->null_count = null_count;
    a->n_buffers = n_buffers;
    a->n_children = n_children;
    a->buffers = p->buffers;
    a->children = p->children;
    a->release = node_release;
    a->private_data = p;
    return OK;
}

static int node_child(struct ArrowArray *parent, int64_t index, struct ArrowArray **out) {
    ExportNode *p = (ExportNode *)parent->private_data;
    struct ArrowArray *child = PyMem_RawCalloc(1, sizeof(struct ArrowArray));
    if (child == NULL) return NOMEM;
    p->children[index] = child;
    *out = child;
    return OK;
}

/* The struct array (no validity: never null) with one child per field; the MvCols are emptied. */
static int mv_export(Ctx *c, struct ArrowArray *out) {
    Buf *no_buffer[1] = {NULL};
    memset(out, 0, sizeof(*out));
    TRY(mv_finish(c));
    TRY(node_init(out, c->rows, 0, no_buffer, 1, mv_count));
    for (int i = 0; i < mv_count; i++) {
        MvCol *m = &c->mv[i];
        struct ArrowArray *child;
        TRY(node_child(out, i, &child));
        int kind = mv_fields[i].kind;
        if (kind == MV_STRING) {
            Buf *bufs[3] = {&m->validity, &m->values, &m->data};
            TRY(node_init(child, c->rows, c->rows - m->valid, bufs, 3, 0));
        } else if (kind == MV_STRINGS) {
            Buf *bufs[2] = {&m->validity, &m->values};
            TRY(node_init(child, c->rows, c->rows - m->valid, bufs, 2, 1));
            struct ArrowArray *strings;
            TRY(node_child(child, 0, &strings));
            Buf *string_bufs[3] = {NULL, &m->data, &m->child_data};
            TRY(node_init(strings, m->elements, 0, string_bufs, 3, 0));
        } else {
            Buf *bufs[2] = {&m->validity, &m->values};
            TRY(node_init(child, c->rows, c->rows - m->valid, bufs, 2, 0));
        }
    }
    return OK;
}

static void capsule_release(PyObject *capsule) {
    struct ArrowArray *a = PyCapsule_GetPointer(capsule, "arrow_array");
    if (a == NULL) {
        PyErr_Clear();
        return;
    }
    if (a->release != NULL) a->release(a); /* not imported (an importer moves it out) */
    PyMem_RawFree(a);
}

/* The `minivoice` column as an "arrow_array" PyCapsule (the ArrowArray is moved out of the Ctx). */
static PyObject *mv_capsule(Ctx *c) {
    struct ArrowArray *a = PyMem_RawCalloc(1, sizeof(struct ArrowArray));
    if (a == NULL) return PyErr_NoMemory();
    if (mv_export(c, a) != OK) {
        if (a->release != NULL) a->release(a);
        PyMem_RawFree(a);
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(a, "arrow_array", capsule_release);
    if (capsule == NULL) {
        a->release(a);
        PyMem_RawFree(a);
    }
    return capsule;
}

/* ---------------------------------------------------------------------------------------------
 * Spans
 */
static const char *const KINDS[] = {"UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"};
static const char *const STATUSES[] = {"UNSET", "OK", "ERROR"};

static int all_zero(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i]) return 0;
    return 1;
}

typedef struct {
    const uint8_t *service_name;
    size_t service_name_len;
    int has_service_name;
    const uint8_t *scope_name, *scope_version;
    size_t scope_name_len, scope_version_len;
} SpanContext;

static int put_int64(Buf *b, uint64_t v) {
    if (v > (uint64_t)INT64_MAX) return BAIL; /* the Python path raises: let it */
    int64_t x = (int64_t)v;
    return buf_put(b, &x, sizeof(x));
}

static int json_link(Ctx *c, Buf *o, const uint8_t *s, size_t n) {
    const uint8_t *trace_id = NULL, *span_id = NULL;
    size_t trace_len = 0, span_len = 0;
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.wt != 2) continue;
        if (f.field == 1) {
            trace_id = f.s;
            trace_len = f.len;
        } else if (f.field == 2) {
            span_id = f.s;
            span_len = f.len;
        }
    }
    END_FIELDS(r);
    TRY(BUF_LIT(o, "{\"trace_id\":\""));
    TRY(put_hex(o, trace_id, trace_len));
    TRY(BUF_LIT(o, "\",\"span_id\":\""));
    TRY(put_hex(o, span_id, span_len));
    TRY(BUF_LIT(o, "\",\"attributes\":"));
    TRY(json_dict(c, o, s, n, 4, 0, NULL, 0));
    return buf_byte(o, '}');
}

static int push_slice(Slice **items, size_t *count, size_t *cap, const uint8_t *s, size_t len) {
    if (*count == *cap) {
        size_t grown = *cap ? *cap * 2 : 16;
        if (grown > SIZE_MAX / sizeof(Slice)) return NOMEM;
        Slice *d = PyMem_Realloc(*items, grown * sizeof(Slice));
        if (d == NULL) return NOMEM;
        *items = d;
        *cap = grown;
    }
    (*items)[(*count)++] = (Slice){s, len};
    return OK;
}

static int span_row(Ctx *c, const SpanContext *sc, const uint8_t *s, size_t n) {
    const uint8_t *trace_id = (const uint8_t *)"", *span_id = (const uint8_t *)"",
                  *parent = (const uint8_t *)"", *trace_state = (const uint8_t *)"",
                  *name = (const uint8_t *)"", *status = NULL;
    size_t trace_len = 0, span_len = 0, parent_len = 0, state_len = 0, name_len = 0, status_len = 0;
    int32_t kind = 0;
    uint64_t start = 0, end = 0;
    size_t base = c->n_entries;
    c->n_events = c->n_links = 0;
    /* one pass: scalars (the last one wins), attributes onto the entry stack, events and links
     * remembered in order (the fields may come in any order, interleaved) */
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        switch (f.field) {
            case 1:
                if (f.wt == 2) trace_id = f.s, trace_len = f.len;
                break;
            case 2:
                if (f.wt == 2) span_id = f.s, span_len = f.len;
                break;
            case 3:
                if (f.wt == 2) trace_state = f.s, state_len = f.len;
                break;
            case 4:
                if (f.wt == 2) parent = f.s, parent_len = f.len;
                break;
            case 5:
                if (f.wt == 2) name = f.s, name_len = f.len;
                break;
            case 6:
                if (f.wt == 0) kind = (int32_t)(uint32_t)f.v;
                break;
            case 7:
                if (f.wt == 1) start = f.v;
                break;
            case 8:
                if (f.wt == 1) end = f.v;
                break;
            case 9:
                if (f.wt == 2) TRY(push_key_value(c, f.s, f.len));
                break;
            case 11:
                if (f.wt == 2) TRY(push_slice(&c->event_slices, &c->n_events, &c->cap_events, f.s, f.len));
                break;
            case 13:
                if (f.wt == 2) TRY(push_slice(&c->link_slices, &c->n_links, &c->cap_links, f.s, f.len));
                break;
            case 15:
                if (f.wt == 2) {
                    if (status != NULL) return BAIL; /* merged by protobuf */
                    status = f.s;
                    status_len = f.len;
                }
                break;
            default:
                break;
        }
    }
    END_FIELDS(r);
    /* the Python path rejects these (with a message built from repr(name)): let it */
    if (trace_len != 16 || span_len != 8 || (parent_len != 0 && parent_len != 8)) return BAIL;
    if (all_zero(trace_id, 16) || all_zero(span_id, 8)) return BAIL;

    int32_t code = 0;
    const uint8_t *message = (const uint8_t *)"";
    size_t message_len = 0;
    if (status != NULL) {
        Msg sm = msg_of(status, status_len);
        FOR_FIELDS(sm, f, r) {
            if (f.field == 2 && f.wt == 2) message = f.s, message_len = f.len;
            if (f.field == 3 && f.wt == 0) code = (int32_t)(uint32_t)f.v;
        }
        END_FIELDS(r);
    }

    TRY(mv_row(c, base, c->n_entries));
    Want wants[2] = {{"minivoice.call_id", 17, 0, NULL, 0}, {"callscope.source", 16, 0, NULL, 0}};
    TRY(json_entries(c, &c->attributes.data, base, 0, wants, 2));
    TRY(col_commit(&c->attributes, 1));
    TRY(promoted(&c->call_id, &wants[0]));
    TRY(promoted(&c->source, &wants[1]));

    TRY(put_hex(&c->trace_id.data, trace_id, 16));
    TRY(col_commit(&c->trace_id, 1));
    TRY(put_hex(&c->span_id.data, span_id, 8));
    TRY(col_commit(&c->span_id, 1));
    if (parent_len) {
        TRY(put_hex(&c->parent_span_id.data, parent, 8));
        TRY(col_commit(&c->parent_span_id, 1));
    } else {
        TRY(col_null(&c->parent_span_id));
    }
    TRY(col_str_or_null(&c->trace_state, trace_state, state_len));
    TRY(col_str(&c->name, name, name_len));
    const char *kind_name = (kind >= 0 && kind < 6) ? KINDS[kind] : "UNSPECIFIED";
    TRY(col_str(&c->kind, (const uint8_t *)kind_name, strlen(kind_name)));
    TRY(put_int64(&c->start_ns, start));
    TRY(put_int64(&c->end_ns, end));
    TRY(buf_put(&c->ingested_at, &c->ingested_at_ns, sizeof(c->ingested_at_ns)));
    const char *status_name = (code >= 0 && code < 3) ? STATUSES[code] : "UNSET";
    TRY(col_str(&c->status_code, (const uint8_t *)status_name, strlen(status_name)));
    TRY(col_str_or_null(&c->status_message, message, message_len));
    if (sc->has_service_name)
        TRY(col_str(&c->service_name, sc->service_name, sc->service_name_len));
    else
        TRY(col_null(&c->service_name));
    TRY(col_str_or_null(&c->scope_name, sc->scope_name, sc->scope_name_len));
    TRY(col_str_or_null(&c->scope_version, sc->scope_version, sc->scope_version_len));
    TRY(col_str(&c->resource_attributes, c->resource_json.d, c->resource_json.n));

    for (size_t i = 0; i < c->n_events; i++) {
        const uint8_t *event = c->event_slices[i].s;
        size_t event_len = c->event_slices[i].len;
        uint64_t time = 0;
        const uint8_t *event_name = (const uint8_t *)"";
        size_t event_name_len = 0;
        size_t event_base = c->n_entries;
        Msg em = msg_of(event, event_len);
        FOR_FIELDS(em, f, r) {
            if (f.field == 1 && f.wt == 1) time = f.v;
            if (f.field == 2 && f.wt == 2) event_name = f.s, event_name_len = f.len;
            if (f.field == 3 && f.wt == 2) TRY(push_key_value(c, f.s, f.len));
        }
        END_FIELDS(r);
        TRY(put_int64(&c->event_time, time));
        TRY(col_str(&c->event_name, event_name, event_name_len));
        TRY(json_entries(c, &c->event_attributes.data, event_base, 0, NULL, 0));
        TRY(col_commit(&c->event_attributes, 1));
        if (c->events == INT32_MAX) return BAIL;
        c->events++;
    }
    int32_t event_offset = (int32_t)c->events;
    TRY(buf_put(&c->event_offsets, &event_offset, sizeof(event_offset)));

    if (c->n_links) {
        Buf *o = &c->links.data;
        TRY(buf_byte(o, '['));
        for (size_t i = 0; i < c->n_links; i++) {
            if (i) TRY(buf_byte(o, ','));
            TRY(json_link(c, o, c->link_slices[i].s, c->link_slices[i].len));
        }
        TRY(buf_byte(o, ']'));
        TRY(col_commit(&c->links, 1));
    } else {
        TRY(col_null(&c->links));
    }
    c->rows++;
    return OK;
}

static int scope_spans(Ctx *c, SpanContext *sc, const uint8_t *s, size_t n) {
    const uint8_t *scope = NULL;
    size_t scope_len = 0;
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.field == 1 && f.wt == 2) {
            if (scope != NULL) return BAIL; /* merged by protobuf */
            scope = f.s;
            scope_len = f.len;
        }
    }
    END_FIELDS(r);
    sc->scope_name = sc->scope_version = (const uint8_t *)"";
    sc->scope_name_len = sc->scope_version_len = 0;
    if (scope != NULL) {
        Msg sm = msg_of(scope, scope_len);
        FOR_FIELDS(sm, f, r) {
            if (f.field == 1 && f.wt == 2) sc->scope_name = f.s, sc->scope_name_len = f.len;
            if (f.field == 2 && f.wt == 2) sc->scope_version = f.s, sc->scope_version_len = f.len;
        }
        END_FIELDS(r);
    }
    m = msg_of(s, n);
    FOR_FIELDS(m, f, r) {
        if (f.field == 2 && f.wt == 2) TRY(span_row(c, sc, f.s, f.len));
    }
    END_FIELDS(r);
    return OK;
}

static int resource_spans(Ctx *c, const uint8_t *s, size_t n) {
    const uint8_t *resource = NULL;
    size_t resource_len = 0;
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.field == 1 && f.wt == 2) {
            if (resource != NULL) return BAIL; /* merged by protobuf */
            resource = f.s;
            resource_len = f.len;
        }
    }
    END_FIELDS(r);
    SpanContext sc;
    memset(&sc, 0, sizeof(sc));
    c->resource_json.n = 0;
    if (resource != NULL) {
        Want want = {"service.name", 12, 0, NULL, 0};
        TRY(json_dict(c, &c->resource_json, resource, resource_len, 1, 0, &want, 1));
        if (want.found && want.value != NULL) {
            AnyValue a;
            TRY(any_value(want.value, want.vlen, &a));
            if (a.kind == AV_STRING) {
                sc.has_service_name = 1;
                sc.service_name = a.s;
                sc.service_name_len = a.len;
            } else if (a.kind != AV_NONE) {
                return BAIL; /* str() of another type: the Python path */
            }
        }
    } else {
        TRY(BUF_LIT(&c->resource_json, "{}"));
    }
    m = msg_of(s, n);
    FOR_FIELDS(m, f, r) {
        if (f.field == 2 && f.wt == 2) TRY(scope_spans(c, &sc, f.s, f.len));
    }
    END_FIELDS(r);
    return OK;
}

static int request(Ctx *c, const uint8_t *s, size_t n) {
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.field == 1 && f.wt == 2) TRY(resource_spans(c, f.s, f.len));
    }
    END_FIELDS(r);
    return OK;
}

/* ---------------------------------------------------------------------------------------------
 * Validation: are all spans usable (ids as validate_request wants, times within int64)?
 */
static int valid_span(const uint8_t *s, size_t n) {
    size_t trace_len = 0, span_len = 0, parent_len = 0;
    const uint8_t *trace_id = NULL, *span_id = NULL;
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        switch (f.field) {
            case 1:
                if (f.wt == 2) trace_id = f.s, trace_len = f.len;
                break;
            case 2:
                if (f.wt == 2) span_id = f.s, span_len = f.len;
                break;
            case 4:
                if (f.wt == 2) parent_len = f.len;
                break;
            case 7:
            case 8:
                if (f.wt == 1 && f.v > (uint64_t)INT64_MAX) return BAIL;
                break;
            case 11:
                if (f.wt == 2) {
                    Msg em = msg_of(f.s, f.len);
                    Field g = {0, 0, 0, NULL, 0};
                    int q;
                    FOR_FIELDS(em, g, q) {
                        if (g.field == 1 && g.wt == 1 && g.v > (uint64_t)INT64_MAX) return BAIL;
                    }
                    END_FIELDS(q);
                }
                break;
            default:
                break;
        }
    }
    END_FIELDS(r);
    if (trace_len != 16 || span_len != 8 || (parent_len != 0 && parent_len != 8)) return BAIL;
    if (all_zero(trace_id, 16) || all_zero(span_id, 8)) return BAIL;
    return OK;
}

static int count_scope_spans(const uint8_t *s, size_t n, int64_t *count) {
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.field == 2 && f.wt == 2) {
            TRY(valid_span(f.s, f.len));
            (*count)++;
        }
    }
    END_FIELDS(r);
    return OK;
}

static int count_resource_spans(const uint8_t *s, size_t n, int64_t *count) {
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.field == 2 && f.wt == 2) TRY(count_scope_spans(f.s, f.len, count));
    }
    END_FIELDS(r);
    return OK;
}

static int count_valid_spans(const uint8_t *s, size_t n, int64_t *count) {
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.field == 1 && f.wt == 2) TRY(count_resource_spans(f.s, f.len, count));
    }
    END_FIELDS(r);
    return OK;
}

/* The number of spans in a request (no validation): what the walk will make rows of. */
static int count_spans(const uint8_t *s, size_t n, int64_t *count) {
    Msg m = msg_of(s, n);
    Field f = {0, 0, 0, NULL, 0};
    int r;
    FOR_FIELDS(m, f, r) {
        if (f.field != 1 || f.wt != 2) continue;
        Msg rm = msg_of(f.s, f.len);
        Field g = {0, 0, 0, NULL, 0};
        int q;
        FOR_FIELDS(rm, g, q) {
            if (g.field != 2 || g.wt != 2) continue;
            Msg sm = msg_of(g.s, g.len);
            Field h = {0, 0, 0, NULL, 0};
            int t;
            FOR_FIELDS(sm, h, t) {
                if (h.field == 2 && h.wt == 2) (*count)++;
            }
            END_FIELDS(t);
        }
        END_FIELDS(q);
    }
    END_FIELDS(r);
    return *count > INT32_MAX ? BAIL : OK;
}

/* ---------------------------------------------------------------------------------------------
 * Python interface
 */
static StrCol *ctx_columns(Ctx *c, int i) {
    StrCol *cols[] = {&c->trace_id,      &c->span_id,      &c->parent_span_id, &c->trace_state,
                      &c->name,          &c->kind,         &c->status_code,    &c->status_message,
                      &c->service_name,  &c->scope_name,   &c->scope_version,  &c->call_id,
                      &c->source,        &c->attributes,   &c->resource_attributes, &c->links,
                      &c->event_name,    &c->event_attributes};
    return i < (int)(sizeof(cols) / sizeof(cols[0])) ? cols[i] : NULL;
}

/* Column order of the returned tuple (pipeline.otlp._FAST_STRING_COLUMNS mirrors it). */
static const int NULLABLE[] = {0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0};
#define N_STRING_COLUMNS 18

/* `rows`: the number of spans in the request (count_spans); per-row buffers are sized for it. */
static int ctx_init(Ctx *c, int64_t rows) {
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < N_STRING_COLUMNS; i++) TRY(col_init(ctx_columns(c, i), NULLABLE[i]));
    if (mv_count < 0) return BAIL; /* set_minivoice_fields not called: the Python path */
    c->mv = PyMem_Calloc((size_t)mv_count + 1, sizeof(MvCol));
    if (c->mv == NULL) return NOMEM;
    c->mv_rows = rows;
    for (int i = 0; i < mv_count; i++) TRY(mv_col_init(&c->mv[i], mv_fields[i].kind, rows));
    /* the other per-row buffers, at their final size too (spans' string columns) */
    size_t r = (size_t)rows;
    for (int i = 0; i < N_STRING_COLUMNS - 2; i++) {
        StrCol *col = ctx_columns(c, i);
        TRY(buf_reserve(&col->offsets, 4 * r));
        if (col->nullable) TRY(buf_reserve(&col->validity, r / 8 + 1));
    }
    TRY(buf_reserve(&c->trace_id.data, 32 * r));
    TRY(buf_reserve(&c->span_id.data, 16 * r));
    TRY(buf_reserve(&c->start_ns, 8 * r));
    TRY(buf_reserve(&c->end_ns, 8 * r));
    TRY(buf_reserve(&c->ingested_at, 8 * r));
    TRY(buf_reserve(&c->event_offsets, 4 * r + 4));
    int32_t zero = 0;
    return buf_put(&c->event_offsets, &zero, sizeof(zero));
}

static void ctx_free(Ctx *c) {
    for (int i = 0; i < N_STRING_COLUMNS; i++) col_free(ctx_columns(c, i));
    buf_free(&c->start_ns);
    buf_free(&c->end_ns);
    buf_free(&c->event_time);
    buf_free(&c->event_offsets);
    buf_free(&c->ingested_at);
    buf_free(&c->resource_json);
    PyMem_Free(c->entries);
    PyMem_Free(c->table);
    PyMem_Free(c->event_slices);
    PyMem_Free(c->link_slices);
    if (c->mv != NULL)
        for (int i = 0; i < mv_count; i++) mv_col_free(&c->mv[i]);
    PyMem_Free(c->mv);
}

/* A read-only buffer (buffer protocol) owning a Buf's memory: Arrow wraps it without a copy
 * (pa.py_buffer) and keeps it alive as long as any array uses it. */
typedef struct {
    PyObject_HEAD
    uint8_t *d;
    Py_ssize_t n;
} OwnedBuffer;

static int owned_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    OwnedBuffer *b = (OwnedBuffer *)self;
    static uint8_t empty[1];
    return PyBuffer_FillInfo(view, self, b->d ? b->d : empty, b->n, 1, flags);
}

static void owned_dealloc(PyObject *self) {
    PyMem_RawFree(((OwnedBuffer *)self)->d);
    Py_TYPE(self)->tp_free(self);
}

static PyBufferProcs owned_as_buffer = {owned_getbuffer, NULL};

static PyTypeObject OwnedBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pipeline._otlp_fast.OwnedBuffer",
    .tp_basicsize = sizeof(OwnedBuffer),
    .tp_dealloc = owned_dealloc,
    .tp_as_buffer = &owned_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Read-only bytes made by the decoder (buffer protocol).",
};

/* Move a Buf's memory into a new OwnedBuffer (the Buf is left empty). */
static PyObject *bytes_of(Buf *b) {
    OwnedBuffer *o = PyObject_New(OwnedBuffer, &OwnedBufferType);
    if (o == NULL) return NULL;
    if (b->d != NULL && b->cap > b->n + 4096) { /* give back what doubling over-allocated */
        uint8_t *d = PyMem_RawRealloc(b->d, b->n ? b->n : 1);
        if (d != NULL) b->d = d;
    }
    o->d = b->d;
    o->n = (Py_ssize_t)b->n;
    b->d = NULL;
    b->n = b->cap = 0;
    return (PyObject *)o;
}

static PyObject *column_tuple(StrCol *col) {
    PyObject *validity;
    if (col->nullable && col->nulls) {
        validity = bytes_of(&col->validity);
        if (validity == NULL) return NULL;
    } else {
        validity = Py_NewRef(Py_None);
    }
    PyObject *offsets = bytes_of(&col->offsets);
    PyObject *data = offsets ? bytes_of(&col->data) : NULL;
    if (data == NULL) {
        Py_DECREF(validity);
        Py_XDECREF(offsets);
        return NULL;
    }
    return Py_BuildValue("(NNNL)", validity, offsets, data, (long long)col->nulls);
}

PyDoc_STRVAR(walk_doc,
             "walk(body: bytes) -> tuple | None\n\n"
             "The span columns of an ExportTraceServiceRequest that upb already parsed: (rows,\n"
             "string columns as (validity, offsets, data, null_count) in a fixed order, start_ns,\n"
             "end_ns, event offsets, event count, event times, the minivoice struct column as an\n"
             "\"arrow_array\" PyCapsule). None: use the Python path (also before set_minivoice_fields).");

/* The columns of `n` requests, rows in order (`times`: each request's ingested_at_ns, or NULL).
 * None when any request has something left to the Python path. */
static PyObject *walk_bodies(Py_ssize_t n, const uint8_t *const *bodies, const size_t *lens, const int64_t *times) {
    Ctx c;
    int64_t rows = 0;
    int r = OK;
    for (Py_ssize_t i = 0; r == OK && i < n; i++) r = count_spans(bodies[i], lens[i], &rows);
    if (r == OK) r = ctx_init(&c, rows);
    else memset(&c, 0, sizeof(c));
    for (Py_ssize_t i = 0; r == OK && i < n; i++) {
        c.ingested_at_ns = times != NULL ? times[i] : 0;
        r = request(&c, bodies[i], lens[i]);
    }
    if (r == OK && c.rows != rows) r = BAIL; /* the MvCol buffers are sized for `rows` */
    PyObject *result = NULL;
    if (r == OK) {
        PyObject *strings = PyTuple_New(N_STRING_COLUMNS);
        for (int i = 0; strings != NULL && i < N_STRING_COLUMNS; i++) {
            PyObject *col = column_tuple(ctx_columns(&c, i));
            if (col == NULL) {
                Py_CLEAR(strings);
                break;
            }
            PyTuple_SET_ITEM(strings, i, col);
        }
        PyObject *minivoice = strings != NULL ? mv_capsule(&c) : NULL;
        if (minivoice == NULL) {
            Py_CLEAR(strings);
        } else if (times == NULL) {
            result = Py_BuildValue("(LNNNNLNN)", (long long)c.rows, strings, bytes_of(&c.start_ns),
                                   bytes_of(&c.end_ns), bytes_of(&c.event_offsets), (long long)c.events,
                                   bytes_of(&c.event_time), minivoice);
        } else {
            result = Py_BuildValue("(LNNNNLNNN)", (long long)c.rows, strings, bytes_of(&c.start_ns),
                                   bytes_of(&c.end_ns), bytes_of(&c.event_offsets), (long long)c.events,
                                   bytes_of(&c.event_time), minivoice, bytes_of(&c.ingested_at));
        }
    } else if (r == BAIL) {
        result = Py_NewRef(Py_None);
    } else {
        PyErr_NoMemory();
    }
    ctx_free(&c);
    return result;
}

static PyObject *walk(PyObject *module, PyObject *arg) {
    (void)module;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "walk() takes bytes");
        return NULL;
    }
    const uint8_t *body = (const uint8_t *)PyBytes_AS_STRING(arg);
    size_t len = (size_t)PyBytes_GET_SIZE(arg);
    return walk_bodies(1, &body, &len, NULL);
}

PyDoc_STRVAR(walk_records_doc,
             "walk_records(records: Sequence[tuple[bytes, int]]) -> tuple | None\n\n"
             "walk() of several requests (body, ingested_at_ns) at once, rows in order, plus an int64\n"
             "ingested_at_ns column. None if any request has something left to the Python path.");

static PyObject *walk_records(PyObject *module, PyObject *arg) {
    (void)module;
    PyObject *seq = PySequence_Fast(arg, "walk_records() takes a sequence of (body, ingested_at_ns)");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const uint8_t **bodies = PyMem_Malloc(sizeof(*bodies) * (size_t)(n + 1));
    size_t *lens = PyMem_Malloc(sizeof(*lens) * (size_t)(n + 1));
    int64_t *times = PyMem_Malloc(sizeof(*times) * (size_t)(n + 1));
    PyObject *result = NULL;
    if (bodies == NULL || lens == NULL || times == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *body;
        long long time;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "O!L", &PyBytes_Type, &body, &time)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "each record is a tuple (bytes, int)");
            goto done;
        }
        bodies[i] = (const uint8_t *)PyBytes_AS_STRING(body); /* alive: `seq` holds the tuple */
        lens[i] = (size_t)PyBytes_GET_SIZE(body);
        times[i] = (int64_t)time;
    }
    result = walk_bodies(n, bodies, lens, times);
done:
    PyMem_Free(bodies);
    PyMem_Free(lens);
    PyMem_Free(times);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(count_valid_doc,
             "count_valid(body: bytes) -> int | None\n\n"
             "The number of spans in an ExportTraceServiceRequest that upb already parsed, if every\n"
             "one is usable (validate_request would accept it). None: some span is not, or the body\n"
             "has something this walker leaves to Python; run validate_request.");

static PyObject *count_valid(PyObject *module, PyObject *arg) {
    (void)module;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "count_valid() takes bytes");
        return NULL;
    }
    int64_t count = 0;
    int r = count_valid_spans((const uint8_t *)PyBytes_AS_STRING(arg), (size_t)PyBytes_GET_SIZE(arg), &count);
    if (r != OK) Py_RETURN_NONE;
    return PyLong_FromLongLong((long long)count);
}

PyDoc_STRVAR(json_double_doc, "json_double(x: float) -> bytes: x as orjson writes it (for tests).");

static PyObject *py_json_double(PyObject *module, PyObject *arg) {
    (void)module;
    double d = PyFloat_AsDouble(arg);
    if (d == -1.0 && PyErr_Occurred()) return NULL;
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    Buf b = {NULL, 0, 0};
    int r = json_double(&b, bits);
    PyObject *result = NULL;
    if (r == OK)
        result = PyBytes_FromStringAndSize(b.n ? (const char *)b.d : "", (Py_ssize_t)b.n);
    else if (r == BAIL)
        PyErr_SetString(PyExc_ValueError, "unexpected repr");
    else
        PyErr_NoMemory();
    buf_free(&b);
    return result;
}

PyDoc_STRVAR(set_minivoice_fields_doc,
             "set_minivoice_fields(fields: Sequence[tuple[str, int]]) -> None\n\n"
             "The fields of the minivoice column, in order: (span attribute, kind) with kind 0 string,\n"
             "1 int64, 2 float64, 3 bool, 4 list<string> (pipeline.otlp.MINIVOICE_KINDS).");

static void mv_fields_free(MvField *fields, Py_ssize_t n) {
    if (fields == NULL) return;
    for (Py_ssize_t i = 0; i < n; i++) PyMem_RawFree(fields[i].key);
    PyMem_RawFree(fields);
}

static PyObject *set_minivoice_fields(PyObject *module, PyObject *arg) {
    (void)module;
    PyObject *seq = PySequence_Fast(arg, "set_minivoice_fields() takes a sequence of (attribute, kind)");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > 4096) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many minivoice fields");
        return NULL;
    }
    size_t size = 16;
    while (size < 4 * (size_t)n) size *= 2;
    MvField *fields = PyMem_RawCalloc((size_t)n + 1, sizeof(MvField));
    uint32_t *table = PyMem_RawCalloc(size, sizeof(uint32_t));
    if (fields == NULL || table == NULL) {
        PyMem_RawFree(fields);
        PyMem_RawFree(table);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *key;
        Py_ssize_t klen;
        int kind;
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "s#i", &key, &klen, &kind)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "each field is a tuple (attribute, kind)");
            goto fail;
        }
        if (kind < MV_STRING || kind > MV_STRINGS) {
            PyErr_Format(PyExc_ValueError, "field %zd: unknown kind %d", i, kind);
            goto fail;
        }
        fields[i].key = PyMem_RawMalloc((size_t)klen + 1);
        if (fields[i].key == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(fields[i].key, key, (size_t)klen);
        fields[i].klen = (size_t)klen;
        fields[i].hash = key_hash(fields[i].key, fields[i].klen);
        fields[i].kind = kind;
        size_t slot = fields[i].hash & (size - 1);
        while (table[slot]) {
            const MvField *other = &fields[table[slot] - 1];
            if (other->klen == fields[i].klen && memcmp(other->key, fields[i].key, fields[i].klen) == 0) {
                PyErr_Format(PyExc_ValueError, "attribute %R is listed twice", item);
                goto fail;
            }
            slot = (slot + 1) & (size - 1);
        }
        table[slot] = (uint32_t)i + 1;
    }
    Py_DECREF(seq);
    mv_fields_free(mv_fields, mv_count);
    PyMem_RawFree(mv_table);
    mv_fields = fields;
    mv_count = (int)n;
    mv_table = table;
    mv_mask = size - 1;
    Py_RETURN_NONE;
fail:
    mv_fields_free(fields, n);
    PyMem_RawFree(table);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"set_minivoice_fields", set_minivoice_fields, METH_O, set_minivoice_fields_doc},
    {"walk", walk, METH_O, walk_doc},
    {"walk_records", walk_records, METH_O, walk_records_doc},
    {"count_valid", count_valid, METH_O, count_valid_doc},
    {"json_double", py_json_double, METH_O, json_double_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pipeline._otlp_fast",
    "OTLP ExportTraceServiceRequest wire format to span columns (see pipeline.otlp).", -1, methods,
};

PyMODINIT_FUNC PyInit__otlp_fast(void) {
    init_escape();
    if (PyType_Ready(&OwnedBufferType) < 0) return NULL;
    return PyModule_Create(&module_def);
}
