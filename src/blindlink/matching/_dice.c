/* Dice coefficients of Bloom-filter encodings, with exactly anonlink's results.
 *
 * Three entry points, for the matching engine's three uses:
 *   threshold_pairs  requester rows against a range of custodian rows (all-pairs chunks), the
 *                    threshold (and an optional per-row top k) applied inside the kernel so that
 *                    only candidates leave it;
 *   offer_groups     requester rows against custodian rows that share a block (LSH bands, key
 *                    groups), each requester row's best k kept across blocks and calls, each
 *                    pair once; as blocking always has, every pair at or above the threshold
 *                    is kept too (anonlink's popcount bound belongs to its all-pairs scan);
 *   pair_dice        the Dice coefficient of each pair of an explicit list.
 * and popcounts, the popcount of each encoding; for blocking, band_keys (an LSH band's bits of
 * each record), group_keys (records grouped by key, a radix sort) and heap_pairs (the best k
 * kept); and merge_kept, the union of two candidate lists, each record's best k and the pairs
 * at or above the threshold.
 *
 * Each runs one of three code paths, chosen at run time (set_path): AVX-512 with VPOPCNTQ, AVX2,
 * or portable C. All compute the same integers (popcounts of ANDs) and then the same double
 * division as anonlink, (2 * common) / (double)(a + b), so their values are bit-identical.
 *
 * For all-pairs chunks the custodian encodings are interleaved in blocks of 8 records, word by
 * word ([block][word][record of the block]), so that one vector instruction counts one word of
 * 8 custodian records against the requester record's word broadcast from a register. A cheap
 * float test that never rejects a candidate (see survives()) leaves only likely candidates for
 * the exact test, which is anonlink's: its popcount-difference filter, then score >= threshold.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
#define DICE_X86 1
#include <immintrin.h>
#else
#define DICE_X86 0
#endif

#define LANES 8           /* custodian records per interleaved block */
#define TILE_BLOCKS 256   /* custodian blocks scanned per requester record at a time (256 KiB at
                             1024 bits: the tile stays in L2 while every requester row passes) */
#define MAX_BYTES (1 << 20) /* float32 holds popcounts of up to 2^23 bits exactly */

enum { PATH_SCALAR = 0, PATH_AVX2 = 1, PATH_AVX512 = 2 };
static const char *PATH_NAMES[] = {"scalar", "avx2", "avx512"};
static int active_path = PATH_SCALAR;

/* ---------------------------------------------------------------- portable C */

static inline uint32_t popcount64(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return (uint32_t)__builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (uint32_t)((x * 0x0101010101010101ULL) >> 56);
#endif
}

static inline uint64_t load64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

/* Popcount of u AND v over n bytes. */
static uint32_t common_scalar(const uint8_t *u, const uint8_t *v, Py_ssize_t n) {
    uint32_t c = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) c += popcount64(load64(u + i) & load64(v + i));
    for (; i < n; i++) c += popcount64((uint64_t)(u[i] & v[i]));
    return c;
}

/* The float pre-test of a custodian record's common bits c with the requester record (see
 * float_scale): lanes pass when !test or c * scale - pop_b[lane] >= pop. */
typedef struct {
    const float *pop_b; /* custodian popcounts, from the first lane scanned */
    float scale, pop;
    int test;
    /* For the AVX-512 path's early exit: after the first `split` words, c is at most the count
     * so far plus the bits the rest of either record has, rest_a or rest_b[lane]; a block none
     * of whose lanes can pass with that bound is dropped without counting the rest. */
    Py_ssize_t split;
    uint32_t rest_a;
    const uint32_t *rest_b; /* from the first lane scanned */
} Filter;

/* Record the passing lanes of block b given their bitmask: lane index (from the first block
 * scanned) and common bits. */
static inline Py_ssize_t keep_lanes(unsigned mask, Py_ssize_t b, const uint32_t *c,
                                    uint32_t *hits, uint32_t *hit_counts, Py_ssize_t n) {
    while (mask) {
        int l = __builtin_ctz(mask);
        mask &= mask - 1;
        hits[n] = (uint32_t)(b * LANES + l);
        hit_counts[n++] = c[l];
    }
    return n;
}

/* Common bits of requester record `a` (w words) with each record of `nblocks` interleaved
 * blocks, kept where the filter passes; returns how many were kept. */
static Py_ssize_t scan_blocks_scalar(const uint64_t *a, const uint64_t *blocks, Py_ssize_t nblocks,
                                     Py_ssize_t w, const Filter *f, uint32_t *hits,
                                     uint32_t *hit_counts) {
    Py_ssize_t n = 0;
    for (Py_ssize_t b = 0; b < nblocks; b++) {
        const uint64_t *block = blocks + b * w * LANES;
        uint32_t c[LANES] = {0};
        for (Py_ssize_t k = 0; k < w; k++) {
            uint64_t word = a[k];
            for (int l = 0; l < LANES; l++) c[l] += popcount64(word & block[k * LANES + l]);
        }
        unsigned mask = 0;
        for (int l = 0; l < LANES; l++)
            if (!f->test || (float)c[l] * f->scale - f->pop_b[b * LANES + l] >= f->pop)
                mask |= 1u << l;
        n = keep_lanes(mask, b, c, hits, hit_counts, n);
    }
    return n;
}

/* ---------------------------------------------------------------- x86 vector paths */
#if DICE_X86

__attribute__((target("popcnt"))) static uint32_t common_popcnt(const uint8_t *u,
                                                                const uint8_t *v,
                                                                Py_ssize_t n) {
    uint64_t c = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) c += (uint64_t)_mm_popcnt_u64(load64(u + i) & load64(v + i));
    for (; i < n; i++) c += (uint64_t)_mm_popcnt_u32((uint32_t)(u[i] & v[i]));
    return (uint32_t)c;
}

/* AVX2 has no vector popcount: count nibbles with a shuffle table (Mula's method), summing
 * byte counts for at most 31 words (31 * 8 < 256) before widening them with VPSADBW. */
#define AVX2_TARGET __attribute__((target("avx2,popcnt")))

AVX2_TARGET static inline __m256i nibble_counts(__m256i x) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1,
                                           1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low));
    __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
    return _mm256_add_epi8(lo, hi);
}

/* Which of 8 lanes, given their common bits (int32, lane order), pass the filter. */
AVX2_TARGET static inline unsigned filter_mask(__m256i counts, Py_ssize_t b, const Filter *f) {
    if (!f->test) return 0xFF;
    __m256 lhs = _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(counts), _mm256_set1_ps(f->scale)),
                               _mm256_loadu_ps(f->pop_b + b * LANES));
    return (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(lhs, _mm256_set1_ps(f->pop), _CMP_GE_OQ));
}

/* The filter on 8 lanes' common bits, then the kept lanes. */
AVX2_TARGET static inline Py_ssize_t filter_lanes(__m256i counts, Py_ssize_t b, const Filter *f,
                                                  uint32_t *hits, uint32_t *hit_counts,
                                                  Py_ssize_t n) {
    unsigned mask = filter_mask(counts, b, f);
    if (!mask) return n;
    uint32_t c[LANES];
    _mm256_storeu_si256((__m256i *)c, counts);
    return keep_lanes(mask, b, c, hits, hit_counts, n);
}

AVX2_TARGET static inline Py_ssize_t scan_blocks_avx2_w(const uint64_t *a, const uint64_t *blocks,
                                                        Py_ssize_t nblocks, Py_ssize_t w,
                                                        const Filter *f, uint32_t *hits,
                                                        uint32_t *hit_counts) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    Py_ssize_t n = 0;
    for (Py_ssize_t b = 0; b < nblocks; b++) {
        const uint64_t *block = blocks + b * w * LANES;
        __m256i sum0 = zero, sum1 = zero;
        for (Py_ssize_t k0 = 0; k0 < w; k0 += 31) {
            Py_ssize_t k1 = k0 + 31 < w ? k0 + 31 : w;
            __m256i bytes0 = zero, bytes1 = zero;
            for (Py_ssize_t k = k0; k < k1; k++) {
                __m256i word = _mm256_set1_epi64x((long long)a[k]);
                const __m256i *p = (const __m256i *)(block + k * LANES);
                bytes0 = _mm256_add_epi8(
                    bytes0, nibble_counts(_mm256_and_si256(word, _mm256_loadu_si256(p))));
                bytes1 = _mm256_add_epi8(
                    bytes1, nibble_counts(_mm256_and_si256(word, _mm256_loadu_si256(p + 1))));
            }
            sum0 = _mm256_add_epi64(sum0, _mm256_sad_epu8(bytes0, zero));
            sum1 = _mm256_add_epi64(sum1, _mm256_sad_epu8(bytes1, zero));
        }
        /* Lanes 0-3 in sum0's and 4-7 in sum1's 64-bit elements: interleave their low halves,
         * then put them back in lane order. */
        __m256i mixed = _mm256_blend_epi32(sum0, _mm256_slli_epi64(sum1, 32), 0xAA);
        n = filter_lanes(_mm256_permutevar8x32_epi32(mixed, order), b, f, hits, hit_counts, n);
    }
    return n;
}

AVX2_TARGET static Py_ssize_t scan_blocks_avx2(const uint64_t *a, const uint64_t *blocks,
                                               Py_ssize_t nblocks, Py_ssize_t w, const Filter *f,
                                               uint32_t *hits, uint32_t *hit_counts) {
    switch (w) { /* constant word counts let the compiler unroll and keep `a` in registers */
    case 16: return scan_blocks_avx2_w(a, blocks, nblocks, 16, f, hits, hit_counts);
    case 32: return scan_blocks_avx2_w(a, blocks, nblocks, 32, f, hits, hit_counts);
    case 8: return scan_blocks_avx2_w(a, blocks, nblocks, 8, f, hits, hit_counts);
    default: return scan_blocks_avx2_w(a, blocks, nblocks, w, f, hits, hit_counts);
    }
}

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")))

/* Add the popcounts of words [k0, k1) of a AND the block's lanes to even and odd. */
#define AVX512_COUNT_WORDS(k0, k1)                                                              \
    for (Py_ssize_t k = (k0); k < (k1); k++) {                                                  \
        __m512i x = _mm512_and_si512(_mm512_set1_epi64((long long)a[k]),                       \
                                     _mm512_loadu_si512(block + k * LANES));                    \
        if ((k - (k0)) % 2) odd = _mm512_add_epi64(odd, _mm512_popcnt_epi64(x));                \
        else even = _mm512_add_epi64(even, _mm512_popcnt_epi64(x));                             \
    }

AVX512_TARGET static inline Py_ssize_t scan_blocks_avx512_w(const uint64_t *a,
                                                            const uint64_t *blocks,
                                                            Py_ssize_t nblocks, Py_ssize_t w,
                                                            const Filter *f, uint32_t *hits,
                                                            uint32_t *hit_counts) {
    Py_ssize_t n = 0;
    const Py_ssize_t split = f->test ? f->split : w;
    const __m256i rest_a = _mm256_set1_epi32((int)f->rest_a);
    for (Py_ssize_t b = 0; b < nblocks; b++) {
        const uint64_t *block = blocks + b * w * LANES;
        __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
        AVX512_COUNT_WORDS(0, split)
        if (split < w) {
            __m256i so_far = _mm512_cvtepi64_epi32(_mm512_add_epi64(even, odd));
            __m256i rest = _mm256_min_epu32(
                rest_a, _mm256_loadu_si256((const __m256i *)(f->rest_b + b * LANES)));
            if (!filter_mask(_mm256_add_epi32(so_far, rest), b, f)) continue;
            AVX512_COUNT_WORDS(split, w)
        }
        n = filter_lanes(_mm512_cvtepi64_epi32(_mm512_add_epi64(even, odd)), b, f, hits,
                         hit_counts, n);
    }
    return n;
}

AVX512_TARGET static Py_ssize_t scan_blocks_avx512(const uint64_t *a, const uint64_t *blocks,
                                                   Py_ssize_t nblocks, Py_ssize_t w,
                                                   const Filter *f, uint32_t *hits,
                                                   uint32_t *hit_counts) {
    switch (w) {
    case 16: return scan_blocks_avx512_w(a, blocks, nblocks, 16, f, hits, hit_counts);
    case 32: return scan_blocks_avx512_w(a, blocks, nblocks, 32, f, hits, hit_counts);
    case 8: return scan_blocks_avx512_w(a, blocks, nblocks, 8, f, hits, hit_counts);
    default: return scan_blocks_avx512_w(a, blocks, nblocks, w, f, hits, hit_counts);
    }
}

AVX512_TARGET static uint32_t common_avx512(const uint8_t *u, const uint8_t *v, Py_ssize_t n) {
    __m512i sum = _mm512_setzero_si512();
    Py_ssize_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512i x = _mm512_and_si512(_mm512_loadu_si512(u + i), _mm512_loadu_si512(v + i));
        sum = _mm512_add_epi64(sum, _mm512_popcnt_epi64(x));
    }
    if (i < n) {
        __mmask64 tail = (1ULL << (n - i)) - 1; /* n - i < 64 */
        __m512i x = _mm512_and_si512(_mm512_maskz_loadu_epi8(tail, u + i),
                                     _mm512_maskz_loadu_epi8(tail, v + i));
        sum = _mm512_add_epi64(sum, _mm512_popcnt_epi64(x));
    }
    return (uint32_t)_mm512_reduce_add_epi64(sum);
}

static int cpu_has(int path) {
    __builtin_cpu_init();
    if (path == PATH_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
    if (path == PATH_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    return 1;
}
#else
static int cpu_has(int path) { return path == PATH_SCALAR; }
#endif

static uint32_t common(const uint8_t *u, const uint8_t *v, Py_ssize_t n) {
#if DICE_X86
    if (active_path == PATH_AVX512) return common_avx512(u, v, n);
    if (active_path == PATH_AVX2) return common_popcnt(u, v, n);
#endif
    return common_scalar(u, v, n);
}

static Py_ssize_t scan_blocks(const uint64_t *a, const uint64_t *blocks, Py_ssize_t nblocks,
                              Py_ssize_t w, const Filter *f, uint32_t *hits,
                              uint32_t *hit_counts) {
#if DICE_X86
    if (active_path == PATH_AVX512)
        return scan_blocks_avx512(a, blocks, nblocks, w, f, hits, hit_counts);
    if (active_path == PATH_AVX2) return scan_blocks_avx2(a, blocks, nblocks, w, f, hits, hit_counts);
#endif
    return scan_blocks_scalar(a, blocks, nblocks, w, f, hits, hit_counts);
}

/* ---------------------------------------------------------------- anonlink's arithmetic */

static inline double dice_value(uint32_t common_bits, uint32_t a, uint32_t b) {
    return (double)(2 * (uint64_t)common_bits) / (double)(a + b);
}

/* anonlink's bound on |popcount difference| for a requester record of popcount a:
 * (uint32_t)(2 * a * (1 / threshold - 1)) when threshold > 0, else the bit length. Its C++
 * converts the double as x86-64 compilers do (a 64-bit truncating conversion whose low 32 bits
 * are kept; out of range gives INT64_MIN, whose low bits are 0), reproduced here so that tiny
 * thresholds give the same pairs. */
static uint32_t max_popcount_difference(uint32_t a, double threshold, Py_ssize_t bits) {
    if (!(threshold > 0)) return (uint32_t)bits;
    double bound = (double)(2 * a) * (1 / threshold - 1);
    if (!(bound >= -9223372036854775808.0 && bound < 9223372036854775808.0)) return 0;
    return (uint32_t)(uint64_t)(int64_t)bound;
}

/* A necessary condition for dice_value(c, a, b) >= threshold (threshold > 0), in float: with
 * scale = 2 / (threshold * (1 - 2^-16)) as a float, c * scale - b >= a. The 2^-16 margin is far
 * wider than float rounding (2^-24 per operation), so no candidate is ever rejected. */
static inline float float_scale(double threshold) {
    return (float)(2.0 / (threshold * (1.0 - 1.0 / 65536)));
}

/* ---------------------------------------------------------------- growing results */

typedef struct {
    double *sims;
    int64_t *rows_a;
    int64_t *rows_b;
    Py_ssize_t size, capacity;
} Pairs;

static int pairs_push(Pairs *p, double sim, int64_t a, int64_t b) {
    if (p->size == p->capacity) {
        Py_ssize_t capacity = p->capacity ? 2 * p->capacity : 4096;
        double *s = realloc(p->sims, capacity * sizeof(double));
        if (s) p->sims = s;
        int64_t *ra = realloc(p->rows_a, capacity * sizeof(int64_t));
        if (ra) p->rows_a = ra;
        int64_t *rb = realloc(p->rows_b, capacity * sizeof(int64_t));
        if (rb) p->rows_b = rb;
        if (!s || !ra || !rb) return -1;
        p->capacity = capacity;
    }
    p->sims[p->size] = sim;
    p->rows_a[p->size] = a;
    p->rows_b[p->size] = b;
    p->size++;
    return 0;
}

static void pairs_free(Pairs *p) {
    free(p->sims);
    free(p->rows_a);
    free(p->rows_b);
}

static PyObject *pairs_result(Pairs *p) {
    /* y# turns a NULL pointer into None: an empty result is empty bytes. */
    const char *none = "";
    PyObject *result = Py_BuildValue(
        "(y#y#y#)", p->size ? (const char *)p->sims : none, p->size * (Py_ssize_t)sizeof(double),
        p->size ? (const char *)p->rows_a : none, p->size * (Py_ssize_t)sizeof(int64_t),
        p->size ? (const char *)p->rows_b : none, p->size * (Py_ssize_t)sizeof(int64_t));
    pairs_free(p);
    return result;
}

/* ---------------------------------------------------------------- top k per requester record */

/* A requester record's best k so far: a heap whose root is the worst kept pair (lowest score,
 * then highest custodian row), as anonlink's priority queue. */
typedef struct {
    double score;
    int64_t index;
} Node;

static inline int worse(Node x, Node y) {
    return x.score < y.score || (x.score == y.score && x.index > y.index);
}

static void heap_offer(Node *heap, Py_ssize_t *size, Py_ssize_t k, Node node) {
    Py_ssize_t i;
    if (*size < k) {
        i = (*size)++;
        while (i > 0 && worse(node, heap[(i - 1) / 2])) {
            heap[i] = heap[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        heap[i] = node;
        return;
    }
    if (!worse(heap[0], node)) return;
    i = 0;
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= k) break;
        if (child + 1 < k && worse(heap[child + 1], heap[child])) child++;
        if (!worse(heap[child], node)) break;
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = node;
}

/* The heap's nodes, best first (score descending, then custodian row ascending). */
static void heap_sorted(Node *heap, Py_ssize_t size) {
    for (Py_ssize_t i = 1; i < size; i++) {
        Node node = heap[i];
        Py_ssize_t j = i;
        while (j > 0 && worse(heap[j - 1], node)) {
            heap[j] = heap[j - 1];
            j--;
        }
        heap[j] = node;
    }
}

/* ---------------------------------------------------------------- Python entry points */

static int check_buffer(Py_buffer *view, Py_ssize_t items, Py_ssize_t item_size,
                        const char *name) {
    if (view->len < items * item_size) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd needed", name, view->len,
                     items * item_size);
        return -1;
    }
    return 0;
}

static PyObject *py_popcounts(PyObject *self, PyObject *args) {
    Py_buffer enc, out;
    Py_ssize_t n, nbytes;
    if (!PyArg_ParseTuple(args, "y*nnw*", &enc, &n, &nbytes, &out)) return NULL;
    PyObject *result = NULL;
    if (check_buffer(&enc, n, nbytes, "encodings") == 0 &&
        check_buffer(&out, n, sizeof(uint32_t), "out") == 0) {
        const uint8_t *e = enc.buf;
        uint32_t *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) o[i] = common(e + i * nbytes, e + i * nbytes, nbytes);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&enc);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_pair_dice(PyObject *self, PyObject *args) {
    Py_buffer ea, eb, ra, rb, pa, pb, out;
    Py_ssize_t na, nb, nbytes, n;
    if (!PyArg_ParseTuple(args, "y*y*nnny*y*y*y*nw*", &ea, &eb, &na, &nb, &nbytes, &ra, &rb, &pa,
                          &pb, &n, &out))
        return NULL;
    PyObject *result = NULL;
    if (check_buffer(&ea, na, nbytes, "encodings_a") == 0 &&
        check_buffer(&eb, nb, nbytes, "encodings_b") == 0 &&
        check_buffer(&ra, n, sizeof(int64_t), "rows_a") == 0 &&
        check_buffer(&rb, n, sizeof(int64_t), "rows_b") == 0 &&
        check_buffer(&pa, na, sizeof(uint32_t), "popcounts_a") == 0 &&
        check_buffer(&pb, nb, sizeof(uint32_t), "popcounts_b") == 0 &&
        check_buffer(&out, n, sizeof(double), "out") == 0) {
        const int64_t *rows_a = ra.buf, *rows_b = rb.buf;
        Py_ssize_t bad = -1;
        for (Py_ssize_t i = 0; i < n && bad < 0; i++)
            if (rows_a[i] < 0 || rows_a[i] >= na || rows_b[i] < 0 || rows_b[i] >= nb) bad = i;
        if (bad >= 0) {
            PyErr_Format(PyExc_IndexError, "pair %zd names a row outside the encodings", bad);
        } else {
            const uint8_t *a = ea.buf, *b = eb.buf;
            const uint32_t *pop_a = pa.buf, *pop_b = pb.buf;
            double *o = out.buf;
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t i = 0; i < n; i++) {
                int64_t x = rows_a[i], y = rows_b[i];
                uint32_t total = pop_a[x] + pop_b[y];
                o[i] = total ? dice_value(common(a + x * nbytes, b + y * nbytes, nbytes),
                                          pop_a[x], pop_b[y])
                             : 0.0;
            }
            Py_END_ALLOW_THREADS
            result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&ea);
    PyBuffer_Release(&eb);
    PyBuffer_Release(&ra);
    PyBuffer_Release(&rb);
    PyBuffer_Release(&pa);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&out);
    return result;
}

/* The all-pairs scan of one chunk. Inputs as documented in threshold_pairs' docstring. */
typedef struct {
    const uint64_t *a;      /* requester words, row-major (na, w) */
    const uint32_t *pop_a;
    const uint64_t *blocks; /* custodian, interleaved (nblocks, w, 8) */
    const uint32_t *pop_b;  /* (nblocks * 8) */
    Py_ssize_t na, w, bits, b0, b1, k;
    double threshold;
} Scan;

/* Buffers of one scan: the custodian popcounts as floats, and one tile's kept lanes. */
typedef struct {
    float *pop_b;
    uint32_t *hits, *hit_counts;
    Py_ssize_t split;          /* see Filter */
    uint32_t *rest_a, *rest_b; /* bits in words [split, w) of each record */
} Work;

/* Row i's candidates among custodian rows [lo, hi) (within one tile of blocks), pushed to `out`
 * or offered to the row's heap. */
static int scan_tile(const Scan *s, const Work *work, Py_ssize_t i, Py_ssize_t lo, Py_ssize_t hi,
                     uint32_t max_diff, Pairs *out, Node *heap, Py_ssize_t *heap_size) {
    const uint32_t pop = s->pop_a[i];
    const Py_ssize_t first = lo / LANES, nblocks = (hi + LANES - 1) / LANES - first;
    /* The float test's bound: the threshold, or the row's k-th best score once it has k. */
    double bound = s->threshold;
    if (heap && *heap_size == s->k && heap[0].score > bound) bound = heap[0].score;
    Filter f = {work->pop_b + first * LANES, 0.0f, (float)pop, bound > 0,
                work->split, work->rest_a[i], work->rest_b + first * LANES};
    if (f.test) f.scale = float_scale(bound);
    Py_ssize_t kept = scan_blocks(s->a + i * s->w, s->blocks + first * s->w * LANES, nblocks, s->w,
                                  &f, work->hits, work->hit_counts);
    for (Py_ssize_t h = 0; h < kept; h++) {
        Py_ssize_t j = first * LANES + work->hits[h];
        if (j < lo || j >= hi) continue;
        uint32_t c = work->hit_counts[h], pb = s->pop_b[j];
        if ((pop > pb ? pop - pb : pb - pop) > max_diff) continue;
        double score = dice_value(c, pop, pb);
        if (!(score >= s->threshold)) continue;
        if (heap) {
            Node node = {score, j - s->b0};
            heap_offer(heap, heap_size, s->k, node);
        } else if (pairs_push(out, score, i, j - s->b0) < 0) {
            return -1;
        }
    }
    return 0;
}

/* anonlink's answer for a requester record with no bits set: nothing when threshold > 0, else
 * its first k custodian records (all without k) at similarity 0. */
static int empty_row(const Scan *s, Py_ssize_t i, Pairs *out) {
    if (s->threshold > 0) return 0;
    Py_ssize_t n = s->b1 - s->b0;
    if (s->k && s->k < n) n = s->k;
    for (Py_ssize_t j = 0; j < n; j++)
        if (pairs_push(out, 0.0, i, j) < 0) return -1;
    return 0;
}

static int scan(const Scan *s, Pairs *out) {
    int status = 0;
    const Py_ssize_t tile = TILE_BLOCKS * LANES, lanes = (s->b1 + LANES - 1) / LANES * LANES;
    const Py_ssize_t rows = s->na ? s->na : 1;
    Work work = {malloc(lanes * sizeof(float)),  malloc(tile * sizeof(uint32_t)),
                 malloc(tile * sizeof(uint32_t)), s->w >= 8 ? (5 * s->w + 7) / 8 : s->w,
                 calloc(rows, sizeof(uint32_t)),  calloc(lanes, sizeof(uint32_t))};
    uint32_t *max_diff = malloc(rows * sizeof(uint32_t));
    Node *heaps = s->k ? malloc(rows * s->k * sizeof(Node)) : NULL;
    Py_ssize_t *heap_sizes = s->k ? calloc(rows, sizeof(Py_ssize_t)) : NULL;
    if (!work.pop_b || !work.hits || !work.hit_counts || !work.rest_a || !work.rest_b ||
        !max_diff || (s->k && (!heaps || !heap_sizes))) {
        status = -1;
        goto done;
    }
    for (Py_ssize_t j = s->b0 / LANES * LANES; j < lanes; j++) {
        work.pop_b[j] = (float)s->pop_b[j];
        const uint64_t *block = s->blocks + j / LANES * s->w * LANES;
        for (Py_ssize_t k = work.split; k < s->w; k++)
            work.rest_b[j] += popcount64(block[k * LANES + j % LANES]);
    }
    for (Py_ssize_t i = 0; i < s->na; i++)
        for (Py_ssize_t k = work.split; k < s->w; k++)
            work.rest_a[i] += popcount64(s->a[i * s->w + k]);
    for (Py_ssize_t i = 0; i < s->na; i++)
        max_diff[i] = max_popcount_difference(s->pop_a[i], s->threshold, s->bits);
    /* Tiles of custodian rows aligned to blocks; every requester row passes over a tile. */
    for (Py_ssize_t lo = s->b0; lo < s->b1 && status == 0;) {
        Py_ssize_t hi = (lo / tile + 1) * tile;
        if (hi > s->b1) hi = s->b1;
        for (Py_ssize_t i = 0; i < s->na && status == 0; i++) {
            if (s->pop_a[i] == 0) continue;
            status = scan_tile(s, &work, i, lo, hi, max_diff[i], out,
                               s->k ? heaps + i * s->k : NULL, s->k ? heap_sizes + i : NULL);
        }
        lo = hi;
    }
    for (Py_ssize_t i = 0; i < s->na && status == 0; i++) {
        if (s->pop_a[i] == 0) {
            status = empty_row(s, i, out);
        } else if (s->k) {
            Node *heap = heaps + i * s->k;
            heap_sorted(heap, heap_sizes[i]);
            for (Py_ssize_t j = 0; j < heap_sizes[i] && status == 0; j++)
                status = pairs_push(out, heap[j].score, i, heap[j].index);
        }
    }
done:
    free(work.rest_a);
    free(work.rest_b);
    free(work.pop_b);
    free(work.hits);
    free(work.hit_counts);
    free(max_diff);
    free(heaps);
    free(heap_sizes);
    return status;
}

static PyObject *py_threshold_pairs(PyObject *self, PyObject *args) {
    Py_buffer a, pa, blocks, pb;
    Scan s;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnnnndn", &a, &pa, &blocks, &pb, &s.na, &s.w, &s.bits,
                          &s.b0, &s.b1, &s.threshold, &s.k))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t nblocks = (s.b1 + LANES - 1) / LANES;
    if (s.w <= 0 || s.w * 8 > MAX_BYTES || s.b0 < 0 || s.b1 < s.b0 || s.na < 0 || s.k < 0) {
        PyErr_SetString(PyExc_ValueError, "bad word count, row range or k");
    } else if (check_buffer(&a, s.na * s.w, 8, "requester") == 0 &&
               check_buffer(&pa, s.na, 4, "requester popcounts") == 0 &&
               check_buffer(&blocks, nblocks * s.w * LANES, 8, "custodian blocks") == 0 &&
               check_buffer(&pb, nblocks * LANES, 4, "custodian popcounts") == 0) {
        s.a = a.buf;
        s.pop_a = pa.buf;
        s.blocks = blocks.buf;
        s.pop_b = pb.buf;
        if (s.k > s.b1 - s.b0) s.k = s.b1 - s.b0;
        Pairs out = {0};
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = s.b1 > s.b0 ? scan(&s, &out) : 0;
        Py_END_ALLOW_THREADS
        if (status < 0) {
            pairs_free(&out);
            PyErr_NoMemory();
        } else {
            result = pairs_result(&out);
        }
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&pa);
    PyBuffer_Release(&blocks);
    PyBuffer_Release(&pb);
    return result;
}

/* ---------------------------------------------------------------- blocking: bands and keys */

/* LSH band keys: per record, the bits at `bits` positions packed into an integer, the first
 * position the most significant. `columns` is the encodings transposed (nbytes, n), so that
 * each sampled bit is read from one contiguous column; records are taken a block at a time,
 * so that a block's keys stay in the cache while their bits are added one by one. */
#define KEY_BLOCK 2048

static void band_keys(const uint8_t *columns, Py_ssize_t n, const int64_t *positions,
                      Py_ssize_t bits, uint64_t *out) {
    for (Py_ssize_t lo = 0; lo < n; lo += KEY_BLOCK) {
        Py_ssize_t m = n - lo < KEY_BLOCK ? n - lo : KEY_BLOCK;
        uint64_t *keys = out + lo;
        memset(keys, 0, m * sizeof(uint64_t));
        for (Py_ssize_t i = 0; i < bits; i++) {
            const uint8_t *column = columns + (positions[i] >> 3) * n + lo;
            const int shift = 7 - (int)(positions[i] & 7);
            for (Py_ssize_t r = 0; r < m; r++)
                keys[r] = (keys[r] << 1) | ((column[r] >> shift) & 1);
        }
    }
}

#define RADIX_BITS 8
#define RADIX (1 << RADIX_BITS)

/* keys and rows sorted by key, stably (an LSD radix sort over the bits the keys use), in place;
 * spare_keys and spare_rows are scratch of n items. */
static void sort_by_key(uint64_t *keys, int64_t *rows, uint64_t *spare_keys, int64_t *spare_rows,
                        Py_ssize_t n) {
    uint64_t used = 0;
    for (Py_ssize_t i = 0; i < n; i++) used |= keys[i];
    uint64_t *from_keys = keys, *to_keys = spare_keys;
    int64_t *from_rows = rows, *to_rows = spare_rows;
    for (int shift = 0; shift < 64 && (used >> shift); shift += RADIX_BITS) {
        Py_ssize_t offsets[RADIX] = {0};
        for (Py_ssize_t i = 0; i < n; i++) offsets[(from_keys[i] >> shift) & (RADIX - 1)]++;
        Py_ssize_t total = 0;
        for (int d = 0; d < RADIX; d++) {
            Py_ssize_t count = offsets[d];
            offsets[d] = total;
            total += count;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t to = offsets[(from_keys[i] >> shift) & (RADIX - 1)]++;
            to_keys[to] = from_keys[i];
            to_rows[to] = from_rows[i];
        }
        uint64_t *k = from_keys;
        from_keys = to_keys;
        to_keys = k;
        int64_t *r = from_rows;
        from_rows = to_rows;
        to_rows = r;
    }
    if (from_keys != keys) { /* an odd number of passes */
        memcpy(keys, from_keys, n * sizeof(uint64_t));
        memcpy(rows, from_rows, n * sizeof(int64_t));
    }
}

/* Both sides sorted by key: the keys both have, in increasing order, each as the start and
 * length of its run on either side. Returns the number of groups. */
static Py_ssize_t join_runs(const uint64_t *keys_a, Py_ssize_t na, const uint64_t *keys_b,
                            Py_ssize_t nb, int64_t *start_a, int64_t *count_a, int64_t *start_b,
                            int64_t *count_b) {
    Py_ssize_t i = 0, j = 0, groups = 0;
    while (i < na && j < nb) {
        uint64_t ka = keys_a[i], kb = keys_b[j];
        Py_ssize_t ei = i, ej = j;
        if (ka <= kb)
            while (ei < na && keys_a[ei] == ka) ei++;
        if (kb <= ka)
            while (ej < nb && keys_b[ej] == kb) ej++;
        if (ka == kb) {
            start_a[groups] = i;
            count_a[groups] = ei - i;
            start_b[groups] = j;
            count_b[groups] = ej - j;
            groups++;
        }
        i = ei;
        j = ej;
    }
    return groups;
}

/* A requester record's best k so far, each custodian row at most once (k > 0). Offers `node`
 * and returns the node that this offer leaves out of the best k: `node` itself when it does
 * not enter, the root it replaces when it does; index -1 when none (it entered a heap not yet
 * full, or was in the heap already). A node once left out is never re-admitted (the heap only
 * gets better), so the best k of the distinct pairs offered are kept however often each is. */
static Node offer_distinct(Node *heap, Py_ssize_t *size, Py_ssize_t k, Node node) {
    const Node none = {0.0, -1};
    if (*size == k && !worse(heap[0], node)) return heap[0].index == node.index ? none : node;
    for (Py_ssize_t h = 0; h < *size; h++)
        if (heap[h].index == node.index) return none;
    Node out = *size == k ? heap[0] : none;
    heap_offer(heap, size, k, node);
    return out;
}

/* Block-against-block comparisons: requester rows rows_a[start_a[g] : start_a[g] + count_a[g]]
 * against custodian rows rows_b[start_b[g] : ...] for each group g, offered to each requester
 * row's best k (heaps, kept across calls: k nodes per requester row, the unused ones with index
 * -1); the pairs at or above the threshold that are not (or no longer) among a row's best k go
 * to `out`, possibly more than once. */
typedef struct {
    const uint8_t *a, *b;
    const uint32_t *pop_a, *pop_b;
    const int64_t *rows_a, *rows_b, *start_a, *count_a, *start_b, *count_b;
    Py_ssize_t nbytes, groups, k;
    double threshold;
    Node *heaps; /* (na, k) */
} Groups;

/* Memory, not arithmetic, bounds block comparisons: a group's rows sit anywhere in the
 * encodings, and most groups are small. So the rows of consecutive groups are first copied
 * together into a window (a loop of independent loads, which the CPU overlaps, unlike loads
 * between comparisons), then compared there. A requester row is in at most one group of a
 * call (one key per record), so its heap is copied to the window and back once. */
#define WINDOW_ROWS 1024
#define GATHER_AHEAD 16

typedef struct {
    int64_t *rows_a, *rows_b; /* the window's rows, group after group */
    uint8_t *a, *b;
    uint32_t *pop_a, *pop_b;
    Node *heaps;
} Window;

static Py_ssize_t heap_size(const Node *heap, Py_ssize_t k) {
    Py_ssize_t size = 0;
    while (size < k && heap[size].index >= 0) size++;
    return size;
}

/* Requester row x (encoding u, popcount pa, heap `heap`) against custodian rows rows[0:n]
 * (encodings v, popcounts pop_b). */
static int compare_row(const Groups *g, int64_t x, const uint8_t *u, uint32_t pa, Node *heap,
                       const int64_t *rows, const uint8_t *v, const uint32_t *pop_b, Py_ssize_t n,
                       Pairs *out) {
    Py_ssize_t size = g->k ? heap_size(heap, g->k) : 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        uint32_t pb = pop_b[j];
        Node node = {pa + pb ? dice_value(common(u, v + j * g->nbytes, g->nbytes), pa, pb) : 0.0,
                     rows[j]};
        if (g->k) node = offer_distinct(heap, &size, g->k, node);
        if (node.index >= 0 && node.score >= g->threshold &&
            pairs_push(out, node.score, x, node.index) < 0)
            return -1;
    }
    return 0;
}

/* Copies rows' encodings and popcounts (and, with k > 0, their k heap nodes) to the window. */
static void gather(const uint8_t *from, const uint32_t *pop, const Node *heaps, Py_ssize_t k,
                   const int64_t *rows, Py_ssize_t n, Py_ssize_t nbytes, uint8_t *to,
                   uint32_t *to_pop, Node *to_heaps) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + GATHER_AHEAD < n) {
            int64_t ahead = rows[i + GATHER_AHEAD];
            for (Py_ssize_t at = 0; at < nbytes; at += 64)
                __builtin_prefetch(from + ahead * nbytes + at);
            __builtin_prefetch(from + ahead * nbytes + nbytes - 1);
            __builtin_prefetch(pop + ahead);
            if (k) __builtin_prefetch(heaps + ahead * k);
        }
        memcpy(to + i * nbytes, from + rows[i] * nbytes, nbytes);
        to_pop[i] = pop[rows[i]];
        for (Py_ssize_t h = 0; h < k; h++) to_heaps[i * k + h] = heaps[rows[i] * k + h];
    }
}

/* Groups [first, last), whose rows fit the window. */
static int compare_window(const Groups *g, Window *w, Py_ssize_t first, Py_ssize_t last,
                          Pairs *out) {
    Py_ssize_t na = 0, nb = 0;
    for (Py_ssize_t i = first; i < last; i++) {
        memcpy(w->rows_a + na, g->rows_a + g->start_a[i], g->count_a[i] * sizeof(int64_t));
        memcpy(w->rows_b + nb, g->rows_b + g->start_b[i], g->count_b[i] * sizeof(int64_t));
        na += g->count_a[i];
        nb += g->count_b[i];
    }
    /* One gather per side, so that loads run ahead across groups. */
    gather(g->a, g->pop_a, g->heaps, g->k, w->rows_a, na, g->nbytes, w->a, w->pop_a, w->heaps);
    gather(g->b, g->pop_b, NULL, 0, w->rows_b, nb, g->nbytes, w->b, w->pop_b, NULL);
    na = nb = 0;
    for (Py_ssize_t i = first; i < last; i++) {
        const int64_t *rows_a = g->rows_a + g->start_a[i], *rows_b = g->rows_b + g->start_b[i];
        for (Py_ssize_t r = 0; r < g->count_a[i]; r++) {
            Py_ssize_t at = na + r;
            if (compare_row(g, rows_a[r], w->a + at * g->nbytes, w->pop_a[at],
                            w->heaps + at * g->k, rows_b, w->b + nb * g->nbytes, w->pop_b + nb,
                            g->count_b[i], out) < 0)
                return -1;
            for (Py_ssize_t h = 0; h < g->k; h++) /* the row's heap back from the window */
                g->heaps[rows_a[r] * g->k + h] = w->heaps[at * g->k + h];
        }
        na += g->count_a[i];
        nb += g->count_b[i];
    }
    return 0;
}

/* A group too large for the window, compared in place (its rows are reused from the cache). */
static int compare_large_group(const Groups *g, Py_ssize_t i, Pairs *out) {
    const int64_t *rows_b = g->rows_b + g->start_b[i];
    uint32_t *pop_b = malloc((g->count_b[i] ? g->count_b[i] : 1) * sizeof(uint32_t));
    uint8_t *b = malloc((g->count_b[i] ? g->count_b[i] : 1) * g->nbytes);
    int status = pop_b && b ? 0 : -1;
    if (status == 0)
        gather(g->b, g->pop_b, NULL, 0, rows_b, g->count_b[i], g->nbytes, b, pop_b, NULL);
    for (int64_t r = g->start_a[i]; r < g->start_a[i] + g->count_a[i] && status == 0; r++) {
        int64_t x = g->rows_a[r];
        status = compare_row(g, x, g->a + x * g->nbytes, g->pop_a[x],
                             g->k ? g->heaps + x * g->k : NULL, rows_b, b, pop_b, g->count_b[i],
                             out);
    }
    free(pop_b);
    free(b);
    return status;
}

static int compare_groups(const Groups *g, Pairs *out) {
    Window w = {malloc(WINDOW_ROWS * sizeof(int64_t)), malloc(WINDOW_ROWS * sizeof(int64_t)),
                malloc(WINDOW_ROWS * g->nbytes), malloc(WINDOW_ROWS * g->nbytes),
                malloc(WINDOW_ROWS * sizeof(uint32_t)), malloc(WINDOW_ROWS * sizeof(uint32_t)),
                malloc(WINDOW_ROWS * (g->k ? g->k : 1) * sizeof(Node))};
    int status = w.rows_a && w.rows_b && w.a && w.b && w.pop_a && w.pop_b && w.heaps ? 0 : -1;
    for (Py_ssize_t i = 0; i < g->groups && status == 0;) {
        if (g->count_a[i] > WINDOW_ROWS || g->count_b[i] > WINDOW_ROWS) {
            status = compare_large_group(g, i++, out);
            continue;
        }
        Py_ssize_t last = i, na = 0, nb = 0;
        while (last < g->groups && na + g->count_a[last] <= WINDOW_ROWS &&
               nb + g->count_b[last] <= WINDOW_ROWS) {
            na += g->count_a[last];
            nb += g->count_b[last];
            last++;
        }
        status = compare_window(g, &w, i, last, out);
        i = last;
    }
    free(w.rows_a);
    free(w.rows_b);
    free(w.a);
    free(w.b);
    free(w.pop_a);
    free(w.pop_b);
    free(w.heaps);
    return status;
}

/* Whether every group's slices lie within rows (of length n) and every row within [0, limit). */
static int groups_in_bounds(const int64_t *rows, Py_ssize_t n, Py_ssize_t limit,
                            const int64_t *start, const int64_t *count, Py_ssize_t groups) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= limit) return 0;
    for (Py_ssize_t i = 0; i < groups; i++)
        if (start[i] < 0 || count[i] < 0 || start[i] > n || count[i] > n - start[i]) return 0;
    return 1;
}

static PyObject *py_band_keys(PyObject *self, PyObject *args) {
    Py_buffer columns, positions, out;
    Py_ssize_t nbytes, n, bits;
    if (!PyArg_ParseTuple(args, "y*nny*nw*", &columns, &nbytes, &n, &positions, &bits, &out))
        return NULL;
    PyObject *result = NULL;
    if (check_buffer(&columns, nbytes, n, "columns") == 0 &&
        check_buffer(&positions, bits, sizeof(int64_t), "positions") == 0 &&
        check_buffer(&out, n, sizeof(uint64_t), "out") == 0) {
        const int64_t *p = positions.buf;
        int bad = bits > 64;
        for (Py_ssize_t i = 0; i < bits; i++) bad |= p[i] < 0 || p[i] >= 8 * nbytes;
        if (bad) {
            PyErr_SetString(PyExc_ValueError,
                            "more than 64 bits, or a position outside the encodings");
        } else {
            Py_BEGIN_ALLOW_THREADS
            band_keys(columns.buf, n, p, bits, out.buf);
            Py_END_ALLOW_THREADS
            result = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&columns);
    PyBuffer_Release(&positions);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_group_keys(PyObject *self, PyObject *args) {
    Py_buffer buf[8];
    Py_ssize_t na, nb;
    if (!PyArg_ParseTuple(args, "w*w*nw*w*nw*w*w*w*", &buf[0], &buf[1], &na, &buf[2], &buf[3],
                          &nb, &buf[4], &buf[5], &buf[6], &buf[7]))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t most = na > nb ? na : nb, fewest = na < nb ? na : nb;
    if (check_buffer(&buf[0], na, 8, "keys_a") == 0 &&
        check_buffer(&buf[1], na, 8, "rows_a") == 0 &&
        check_buffer(&buf[2], nb, 8, "keys_b") == 0 &&
        check_buffer(&buf[3], nb, 8, "rows_b") == 0 &&
        check_buffer(&buf[4], fewest, 8, "start_a") == 0 &&
        check_buffer(&buf[5], fewest, 8, "count_a") == 0 &&
        check_buffer(&buf[6], fewest, 8, "start_b") == 0 &&
        check_buffer(&buf[7], fewest, 8, "count_b") == 0) {
        uint64_t *spare_keys = malloc((most ? most : 1) * sizeof(uint64_t));
        int64_t *spare_rows = malloc((most ? most : 1) * sizeof(int64_t));
        if (!spare_keys || !spare_rows) {
            PyErr_NoMemory();
        } else {
            Py_ssize_t groups;
            Py_BEGIN_ALLOW_THREADS
            sort_by_key(buf[0].buf, buf[1].buf, spare_keys, spare_rows, na);
            sort_by_key(buf[2].buf, buf[3].buf, spare_keys, spare_rows, nb);
            groups = join_runs(buf[0].buf, na, buf[2].buf, nb, buf[4].buf, buf[5].buf, buf[6].buf,
                               buf[7].buf);
            Py_END_ALLOW_THREADS
            result = PyLong_FromSsize_t(groups);
        }
        free(spare_keys);
        free(spare_rows);
    }
    for (int i = 0; i < 8; i++) PyBuffer_Release(&buf[i]);
    return result;
}

static PyObject *py_offer_groups(PyObject *self, PyObject *args) {
    Py_buffer buf[11];
    Py_ssize_t na, nb, nra, nrb;
    Groups g;
    if (!PyArg_ParseTuple(args, "y*y*nnny*y*y*y*nny*y*y*y*ndnw*", &buf[0], &buf[1], &na, &nb,
                          &g.nbytes, &buf[2], &buf[3], &buf[4], &buf[5], &nra, &nrb, &buf[6],
                          &buf[7], &buf[8], &buf[9], &g.groups, &g.threshold, &g.k, &buf[10]))
        return NULL;
    PyObject *result = NULL;
    if (g.nbytes <= 0 || g.groups < 0 || g.k < 0) {
        PyErr_SetString(PyExc_ValueError, "bad byte length, group count or k");
    } else if (check_buffer(&buf[0], na, g.nbytes, "encodings_a") == 0 &&
               check_buffer(&buf[1], nb, g.nbytes, "encodings_b") == 0 &&
               check_buffer(&buf[2], na, 4, "popcounts_a") == 0 &&
               check_buffer(&buf[3], nb, 4, "popcounts_b") == 0 &&
               check_buffer(&buf[4], nra, 8, "rows_a") == 0 &&
               check_buffer(&buf[5], nrb, 8, "rows_b") == 0 &&
               check_buffer(&buf[6], g.groups, 8, "start_a") == 0 &&
               check_buffer(&buf[7], g.groups, 8, "count_a") == 0 &&
               check_buffer(&buf[8], g.groups, 8, "start_b") == 0 &&
               check_buffer(&buf[9], g.groups, 8, "count_b") == 0 &&
               check_buffer(&buf[10], na * g.k, sizeof(Node), "heaps") == 0) {
        g.a = buf[0].buf;
        g.b = buf[1].buf;
        g.pop_a = buf[2].buf;
        g.pop_b = buf[3].buf;
        g.rows_a = buf[4].buf;
        g.rows_b = buf[5].buf;
        g.start_a = buf[6].buf;
        g.count_a = buf[7].buf;
        g.start_b = buf[8].buf;
        g.count_b = buf[9].buf;
        g.heaps = buf[10].buf;
        if (!groups_in_bounds(g.rows_a, nra, na, g.start_a, g.count_a, g.groups) ||
            !groups_in_bounds(g.rows_b, nrb, nb, g.start_b, g.count_b, g.groups)) {
            PyErr_SetString(PyExc_IndexError, "a group names rows outside the encodings");
        } else {
            Pairs out = {0};
            int status;
            Py_BEGIN_ALLOW_THREADS
            status = compare_groups(&g, &out);
            Py_END_ALLOW_THREADS
            if (status < 0) {
                pairs_free(&out);
                PyErr_NoMemory();
            } else {
                result = pairs_result(&out);
            }
        }
    }
    for (int i = 0; i < 11; i++) PyBuffer_Release(&buf[i]);
    return result;
}

/* The order of kept pairs: requester row, then similarity descending, then custodian row. */
static inline int precedes(double s1, int64_t a1, int64_t b1, double s2, int64_t a2, int64_t b2) {
    if (a1 != a2) return a1 < a2;
    if (s1 != s2) return s1 > s2;
    return b1 < b2;
}

static int in_order(const double *s, const int64_t *a, const int64_t *b, Py_ssize_t n) {
    for (Py_ssize_t i = 1; i < n; i++)
        if (precedes(s[i], a[i], b[i], s[i - 1], a[i - 1], b[i - 1])) return 0;
    return 1;
}

/* Per requester row, its heap best first, then its pairs left out of the heap (in the order of
 * kept pairs; each is worse than every pair still in the heap, which only ever improves). */
static Py_ssize_t heap_pairs(Node *heaps, Py_ssize_t na, Py_ssize_t k, const double *left_s,
                             const int64_t *left_a, const int64_t *left_b, Py_ssize_t n_left,
                             double *s, int64_t *a, int64_t *b) {
    Py_ssize_t out = 0, l = 0;
    for (Py_ssize_t x = 0; x < na; x++) {
        Node *heap = heaps + x * k;
        Py_ssize_t size = heap_size(heap, k);
        heap_sorted(heap, size);
        for (Py_ssize_t h = 0; h < size; h++, out++) {
            s[out] = heap[h].score;
            a[out] = x;
            b[out] = heap[h].index;
        }
        for (; l < n_left && left_a[l] == x; l++, out++) {
            s[out] = left_s[l];
            a[out] = x;
            b[out] = left_b[l];
        }
    }
    return out;
}

static PyObject *py_heap_pairs(PyObject *self, PyObject *args) {
    Py_buffer buf[7];
    Py_ssize_t na, k, n_left;
    if (!PyArg_ParseTuple(args, "w*nny*y*y*nw*w*w*", &buf[0], &na, &k, &buf[1], &buf[2], &buf[3],
                          &n_left, &buf[4], &buf[5], &buf[6]))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t room = na * k + n_left;
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k < 0");
    } else if (check_buffer(&buf[0], na * k, sizeof(Node), "heaps") == 0 &&
               check_buffer(&buf[1], n_left, 8, "left_sims") == 0 &&
               check_buffer(&buf[2], n_left, 8, "left_rows_a") == 0 &&
               check_buffer(&buf[3], n_left, 8, "left_rows_b") == 0 &&
               check_buffer(&buf[4], room, 8, "sims") == 0 &&
               check_buffer(&buf[5], room, 8, "rows_a") == 0 &&
               check_buffer(&buf[6], room, 8, "rows_b") == 0) {
        const int64_t *left_a = buf[2].buf;
        int rows_ok = in_order(buf[1].buf, left_a, buf[3].buf, n_left);
        for (Py_ssize_t i = 0; i < n_left && rows_ok; i++)
            rows_ok = left_a[i] >= 0 && left_a[i] < na;
        if (!rows_ok) {
            PyErr_SetString(PyExc_ValueError,
                            "left-out pairs out of order or rows outside [0, na)");
        } else {
            Py_ssize_t n = heap_pairs(buf[0].buf, na, k, buf[1].buf, left_a, buf[3].buf, n_left,
                                      buf[4].buf, buf[5].buf, buf[6].buf);
            if (in_order(buf[4].buf, buf[5].buf, buf[6].buf, n))
                result = PyLong_FromSsize_t(n);
            else /* a left-out pair better than one kept in its heap: not offered by offer_groups */
                PyErr_SetString(PyExc_ValueError, "left-out pairs rank above pairs in the heaps");
        }
    }
    for (int i = 0; i < 7; i++) PyBuffer_Release(&buf[i]);
    return result;
}

/* ---------------------------------------------------------------- merging kept pairs */

/* Two lists in that order merged into `out` (room for n1 + n2), each pair once, keeping those
 * at or above the threshold or among their requester row's best k. Returns the pairs kept. */
static Py_ssize_t merge_kept(const double *s1, const int64_t *a1, const int64_t *b1, Py_ssize_t n1,
                             const double *s2, const int64_t *a2, const int64_t *b2, Py_ssize_t n2,
                             double threshold, Py_ssize_t k, double *s, int64_t *a, int64_t *b) {
    Py_ssize_t i = 0, j = 0, out = 0, rank = 0;
    int64_t last_a = -1, last_b = -1;
    while (i < n1 || j < n2) {
        int first = j == n2 || (i < n1 && !precedes(s2[j], a2[j], b2[j], s1[i], a1[i], b1[i]));
        double score = first ? s1[i] : s2[j];
        int64_t x = first ? a1[i] : a2[j], y = first ? b1[i] : b2[j];
        if (first)
            i++;
        else
            j++;
        if (x == last_a && y == last_b) continue; /* the same pair again */
        rank = x == last_a ? rank + 1 : 0;
        last_a = x;
        last_b = y;
        if (rank < k || score >= threshold) {
            s[out] = score;
            a[out] = x;
            b[out] = y;
            out++;
        }
    }
    return out;
}

static PyObject *py_merge_kept(PyObject *self, PyObject *args) {
    Py_buffer buf[9];
    Py_ssize_t n1, n2, k;
    double threshold;
    if (!PyArg_ParseTuple(args, "y*y*y*ny*y*y*ndnw*w*w*", &buf[0], &buf[1], &buf[2], &n1, &buf[3],
                          &buf[4], &buf[5], &n2, &threshold, &k, &buf[6], &buf[7], &buf[8]))
        return NULL;
    PyObject *result = NULL;
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "k < 0");
    } else if (check_buffer(&buf[0], n1, 8, "sims_1") == 0 &&
               check_buffer(&buf[1], n1, 8, "rows_a_1") == 0 &&
               check_buffer(&buf[2], n1, 8, "rows_b_1") == 0 &&
               check_buffer(&buf[3], n2, 8, "sims_2") == 0 &&
               check_buffer(&buf[4], n2, 8, "rows_a_2") == 0 &&
               check_buffer(&buf[5], n2, 8, "rows_b_2") == 0 &&
               check_buffer(&buf[6], n1 + n2, 8, "sims") == 0 &&
               check_buffer(&buf[7], n1 + n2, 8, "rows_a") == 0 &&
               check_buffer(&buf[8], n1 + n2, 8, "rows_b") == 0) {
        if (!in_order(buf[0].buf, buf[1].buf, buf[2].buf, n1) ||
            !in_order(buf[3].buf, buf[4].buf, buf[5].buf, n2)) {
            PyErr_SetString(PyExc_ValueError, "pairs not in order of requester row, then "
                                              "similarity descending, then custodian row");
        } else {
            Py_ssize_t kept;
            Py_BEGIN_ALLOW_THREADS
            kept = merge_kept(buf[0].buf, buf[1].buf, buf[2].buf, n1, buf[3].buf, buf[4].buf,
                              buf[5].buf, n2, threshold, k, buf[6].buf, buf[7].buf, buf[8].buf);
            Py_END_ALLOW_THREADS
            result = PyLong_FromSsize_t(kept);
        }
    }
    for (int i = 0; i < 9; i++) PyBuffer_Release(&buf[i]);
    return result;
}

static PyObject *py_set_path(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int p = 0; p < 3; p++) {
        if (strcmp(name, PATH_NAMES[p]) == 0) {
            if (!cpu_has(p)) {
                PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s Dice kernel", name);
                return NULL;
            }
            active_path = p;
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown Dice kernel path %s", name);
    return NULL;
}

static PyObject *py_get_path(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(PATH_NAMES[active_path]);
}

static PyObject *py_supported_paths(PyObject *self, PyObject *args) {
    PyObject *list = PyList_New(0);
    for (int p = 2; list && p >= 0; p--) {
        if (!cpu_has(p)) continue;
        PyObject *name = PyUnicode_FromString(PATH_NAMES[p]);
        if (!name || PyList_Append(list, name) < 0) Py_CLEAR(list);
        Py_XDECREF(name);
    }
    return list;
}

static PyMethodDef methods[] = {
    {"popcounts", py_popcounts, METH_VARARGS,
     "popcounts(encodings, n, nbytes, out): out[i] = popcount of encoding i (uint32)."},
    {"pair_dice", py_pair_dice, METH_VARARGS,
     "pair_dice(enc_a, enc_b, na, nb, nbytes, rows_a, rows_b, pop_a, pop_b, n, out): "
     "out[i] = Dice of (rows_a[i], rows_b[i]) (0 when both are empty)."},
    {"threshold_pairs", py_threshold_pairs, METH_VARARGS,
     "threshold_pairs(a_words, pop_a, blocks, pop_b, na, words, bits, b0, b1, threshold, k) -> "
     "(sims, rows_a, rows_b) as bytes (float64, int64, int64): anonlink's candidates of the "
     "na requester rows against custodian rows [b0, b1) (rows_b relative to b0); k > 0 keeps "
     "each requester row's best k."},
    {"band_keys", py_band_keys, METH_VARARGS,
     "band_keys(columns, nbytes, n, positions, bits, out): out[r] = the bits of record r at "
     "the positions (int64), the first the most significant; columns are the encodings "
     "transposed (nbytes, n)."},
    {"group_keys", py_group_keys, METH_VARARGS,
     "group_keys(keys_a, rows_a, na, keys_b, rows_b, nb, start_a, count_a, start_b, count_b) "
     "-> groups: sorts each side's keys (uint64) and rows (int64) by key, stably, in place, and "
     "writes the keys both sides have, in increasing order, as runs of the sorted sides."},
    {"offer_groups", py_offer_groups, METH_VARARGS,
     "offer_groups(enc_a, enc_b, na, nb, nbytes, pop_a, pop_b, rows_a, rows_b, nra, nrb, "
     "start_a, count_a, start_b, count_b, groups, threshold, k, heaps) -> (sims, rows_a, "
     "rows_b) as bytes: for each group, its requester rows against its custodian rows, offered "
     "to each requester row's best k (heaps: (na, k) nodes of a float64 similarity and an "
     "int64 custodian row, -1 where unused, kept across calls, each pair at most once); "
     "returns the pairs at or above the threshold left out of the best k (maybe repeated)."},
    {"heap_pairs", py_heap_pairs, METH_VARARGS,
     "heap_pairs(heaps, na, k, left_sims, left_rows_a, left_rows_b, n_left, sims, rows_a, "
     "rows_b) -> n: writes, per requester row, the pairs of its heap, best first, then its "
     "pairs left out of the heap (given in the order of merge_kept, each once)."},
    {"merge_kept", py_merge_kept, METH_VARARGS,
     "merge_kept(sims1, rows_a1, rows_b1, n1, sims2, rows_a2, rows_b2, n2, threshold, k, sims, "
     "rows_a, rows_b) -> n: merges two lists ordered by requester row, similarity descending, "
     "custodian row into the outputs, each pair once, keeping those at or above the "
     "threshold or among their row's best k."},
    {"set_path", py_set_path, METH_VARARGS, "set_path(name): scalar, avx2 or avx512."},
    {"get_path", py_get_path, METH_NOARGS, "The active code path."},
    {"supported_paths", py_supported_paths, METH_NOARGS,
     "The paths this CPU runs, fastest first."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dice", NULL, -1, methods};

PyMODINIT_FUNC PyInit__dice(void) {
    for (int p = 2; p >= 0; p--) {
        if (cpu_has(p)) {
            active_path = p;
            break;
        }
    }
    return PyModule_Create(&module);
}
