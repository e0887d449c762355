// The kernel gradient of a 3-D conv (2-D and 1-D as one slab, one row) on the CPU, called
// from XLA through its FFI (`jaxconv.native` compiles this file and registers the handler).
//
// JaxconvKernelGrad, for a conv C of stride s whose input is padded by lo (no dilation):
//
//   R[c, a, b, i, j] = sum_{n, d, h, w} x[n, s_d d + c - lo_d, s_h h + a - lo_h,
//                                          s_w w + b - lo_w, i] * y[n, d, h, w, j]
//
// with x (N, Di, Hi, Wi, Cx) C's input, zero outside its bounds, y (N, Do, Ho, Wo, Cy) a
// cotangent of C's output and R (kd, kh, kw, Cx, Cy). Depthwise (Cx = Cy groups of one
// channel), only i = j: R (kd, kh, kw, 1, Cy). In G groups (channels ordered (group,
// channel)), each group's channels of x against its channels of y: R (kd, kh, kw, Cx / G,
// Cy). It is the gradient of C in its kernel, and of the transposed conv T (whose output is
// C's input) with the roles of x and y as above.
//
// XLA's own route is an im2col of x and a matmul; here nothing is copied but tiles of y
// (and, against 256 channels or more, x's values for a register block): where y has over
// 32 channels, each tile goes into panels of 16 channels (contiguous loads), otherwise
// only where its channels are not a multiple of 8. y goes in tiles of about TILE_BYTES
// (PANEL_TILE_BYTES in panels); for each tap, every tile's pixels are multiplied into
// register blocks of R: up to MAX_ROWS rows (x's values, broadcast; 6, or 12 with
// AVX-512's 32 vector registers) by 16 columns (two 8-float vectors of y, or one of 16).
// With one group, the rows (b, i) of the consecutive taps b of a tap a that are inside x
// over the same columns of y are one contiguous run of x, so MAX_ROWS of them share each
// load of y even for a one-channel x. XLA's CPU thread pool shares out runs of tiles and,
// where there are too few pixels for enough runs, parts of R's rows; where
// SHARED_MIN_PARTS or more parts read the same tiles, each tile is copied once, before,
// for all of them.

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t TILE_BYTES = 32 << 10;  // of y: with the windows of x, in L1 and L2
constexpr int64_t PANEL_TILE_BYTES = 128 << 10;  // of y copied into panels, in L2
// items of work a thread: a late thread leaves its share (8 or 16: DCGAN G3's kernel gradient
// over a matmul 1.07 -> 1.08 and 1.10, CycleGAN's 0.86 -> 0.90 and 0.92, 2026-12-05)
constexpr int64_t RUNS_PER_THREAD = 4;
constexpr int64_t MIN_RUN_PIXELS = 1024;   // of y, in one run of tiles (see KernelGrad)
// Tiles copied once for all the row parts that read them, where there are at least
// SHARED_MIN_PARTS (and the copies fit SHARED_MAX_BYTES), rather than by each part as it
// goes. Kernel gradient alone over a matmul of its FLOPs, medians of 15 paired rounds in
// one process (2026-12-05, family 25 model 17): DCGAN G3 (8 parts) 1.13 -> 1.11, Mask
// R-CNN (8) 1.09 -> 1.08; with 2 parts, CycleGAN 0.87 -> 0.90 (a copy of all y, read back
// from L2, against a tile's copy read at once from L1).
constexpr int64_t SHARED_MIN_PARTS = 4;
constexpr int64_t SHARED_MAX_BYTES = 64 << 20;

typedef float v8 __attribute__((vector_size(32)));

// A register block's rows: its 2 * MAX_ROWS sums, two vectors of y and a broadcast in the
// vector registers. With AVX-512's 32 (2026-12-05, family 25 model 17; kernel gradient
// alone over a matmul of its FLOPs, 6 rows against 12): DCGAN G3 1.31 -> 1.22, CycleGAN
// 1.21 -> 1.15, Mask R-CNN 1.26 -> 1.23, U-Net 16->32 1.20 -> 1.20. Blocks of 12 rows by
// two 16-float (AVX-512) vectors, in panels of 32 channels, were slower there: DCGAN G3 1.13
// -> 1.18, Mask R-CNN 1.11 -> 1.14.
#if defined(__AVX512F__)
constexpr int MAX_ROWS = 12;
#else
constexpr int MAX_ROWS = 6;
#endif

#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64)));
#endif

template <typename V = v8>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
inline void store(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// s in every lane: one vbroadcastss from memory (V{} + s costs an add and a shuffle: half
// the speed)
inline v8 splat(float s, v8) { return v8{s, s, s, s, s, s, s, s}; }
#if defined(__AVX512F__)
inline v16 splat(float s, v16) { return v16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }
#endif

int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -(-a / b); }
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// r[i][Lj:Lj+L] += x[h xh + w xw + i] * y[h yh + w + Lj : ...+L], h < nh, w < nw, in
// vectors V of L floats (w in y's pixels: y advances by ys floats a pixel)
template <int MR, int NV, typename V = v8>
void block(const float* x, int64_t xh, int64_t xw, const float* y, int64_t yh, int64_t ys,
           int64_t nh, int64_t nw, float* r, int64_t rs, bool fresh) {
  constexpr int L = sizeof(V) / sizeof(float);
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = fresh ? V{} : load<V>(r + i * rs + L * j);
  for (int64_t h = 0; h < nh; ++h) {
    const float* xr = x + h * xh;
    const float* yr = y + h * yh;
    for (int64_t w = 0; w < nw; ++w) {
      V yv[NV];
      for (int j = 0; j < NV; ++j) yv[j] = load<V>(yr + w * ys + L * j);
      for (int i = 0; i < MR; ++i) {
        const V xv = splat(xr[w * xw + i], V{});
        for (int j = 0; j < NV; ++j) acc[i][j] += xv * yv[j];
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) store(r + i * rs + L * j, acc[i][j]);
}

// With AVX-512, block<MR, 2>'s 16 columns can be one 16-float vector of y: half the
// broadcasts a product. Where x is read in place (kernel gradient alone over a matmul of its
// FLOPs, medians of 15 paired rounds in one process, 2026-12-05, family 25 model 17): V-Net
// 1.11 -> 1.00, 3-D U-Net 1.04 -> 0.96, U-Net 16->32 0.59 -> 0.53, CenterNet 0.90 -> 0.88,
// CycleGAN 0.84 -> 0.83; where x's rows are copied, not faster (DCGAN G3 0.95 -> 0.98, Mask
// R-CNN 1.11 -> 1.12: 8-float vectors there, see rows_times_tile).

using Block = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                       int64_t, float*, int64_t, bool);

// the block of MR rows by nv 8-float vectors; two in one 16-float vector where `wide` (and
// AVX-512)
template <int MR>
Block with_rows(int nv, bool wide) {
#if defined(__AVX512F__)
  if (nv == 2 && wide) return block<MR, 1, v16>;
#endif
  return nv == 2 ? block<MR, 2> : block<MR, 1>;
}

Block block_of(int mr, int nv, bool wide) {
  switch (mr) {
    case 1: return with_rows<1>(nv, wide);
    case 2: return with_rows<2>(nv, wide);
    case 3: return with_rows<3>(nv, wide);
    case 4: return with_rows<4>(nv, wide);
    case 5: return with_rows<5>(nv, wide);
#if defined(__AVX512F__)
    case 6: return with_rows<6>(nv, wide);
    case 7: return with_rows<7>(nv, wide);
    case 8: return with_rows<8>(nv, wide);
    case 9: return with_rows<9>(nv, wide);
    case 10: return with_rows<10>(nv, wide);
    case 11: return with_rows<11>(nv, wide);
    default: return with_rows<12>(nv, wide);
#else
    default: return with_rows<6>(nv, wide);
#endif
  }
}

// depthwise: r[8j:8j+8] += x[h xh + w xw + 8j : ...] * y[h yh + w ys + 8j : ...]
template <int NV>
void depthwise_block(const float* x, int64_t xh, int64_t xw, const float* y, int64_t yh,
                     int64_t ys, int64_t nh, int64_t nw, float* r) {
  v8 acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = load(r + 8 * j);
  for (int64_t h = 0; h < nh; ++h)
    for (int64_t w = 0; w < nw; ++w)
      for (int j = 0; j < NV; ++j)
        acc[j] += load(x + h * xh + w * xw + 8 * j) * load(y + h * yh + w * ys + 8 * j);
  for (int j = 0; j < NV; ++j) store(r + 8 * j, acc[j]);
}

struct Geometry {
  int64_t n, di, hi, wi, cx, d_o, ho, wo, cy, kd, kh, kw, sd, sh, sw, lo_d, lo_h, lo_w, groups;
  bool depthwise;
  int64_t cxg() const { return depthwise ? 1 : cx / groups; }  // R's rows of a tap
  int64_t cyg() const { return cy / groups; }                  // y's channels of a group
  int64_t cy8() const { return (cy + 7) / 8 * 8; }             // R's row stride
  int64_t cyg8() const { return (cyg() + 7) / 8 * 8; }
  // whether y's tiles are copied into panels of 16 channels (measured: up to 32 channels,
  // reading y where it is was as fast)
  bool panels() const { return !depthwise && cyg8() > 32; }
};

// A tile of one group's cy8 channels of y: pixels (h, w) of the tile at p = h rp + w,
// stride floats apart at base + p stride; or in panels of 16 channels (the last 8 where cy8
// is odd in vectors), panel j (channels 8j...) at base + 8j pixels, its pixels 16 (or 8)
// apart.
struct Tile {
  const float* base;
  int64_t rp, pixels, cy8, stride;
  bool panels;
};

// R's rows at r (rs floats apart), count of them, += (= where fresh) x's at x times the
// tile's pixels from p (nh rows of nw)
void rows_times_tile(const float* x, int64_t xh, int64_t xw, const Tile& t, int64_t p,
                     int64_t nh, int64_t nw, int64_t count, float* r, int64_t rs, bool fresh) {
  thread_local std::vector<float> xp;
  for (int64_t i = 0; i < count; i += MAX_ROWS) {
    const int mr = std::min<int64_t>(MAX_ROWS, count - i);
    // against 256 channels or more, x's rows too: MAX_ROWS values a pixel, contiguous (x's
    // pixels are often 2^k floats apart, which a cache set holds only 8 of)
    const float* xi = x + i;
    int64_t xih = xh, xiw = xw;
    const bool x_copied = t.panels && t.cy8 >= 256;
    if (x_copied) {
      xp.resize(nh * nw * MAX_ROWS);
      float* to = xp.data();
      for (int64_t h = 0; h < nh; ++h)
        for (int64_t w = 0; w < nw; ++w, to += MAX_ROWS)
          // a copy of constant size, in vector moves (a loop of floats: DCGAN G3's kernel
          // gradient over a matmul of its FLOPs 1.16, against 1.13)
          if (mr == MAX_ROWS)
            std::memcpy(to, xi + h * xh + w * xw, MAX_ROWS * sizeof(float));
          else
            std::memcpy(to, xi + h * xh + w * xw, mr * sizeof(float));
      xi = xp.data(), xih = nw * MAX_ROWS, xiw = MAX_ROWS;
    }
    for (int64_t j = 0; j < t.cy8 / 8; j += 2) {
      const int nv = std::min<int64_t>(2, t.cy8 / 8 - j);
      const int64_t ys = t.panels ? 8 * nv : t.stride;
      const float* y = t.base + (t.panels ? 8 * j * t.pixels : 8 * j) + p * ys;
      block_of(mr, nv, !x_copied)(xi, xih, xiw, y, t.rp * ys, ys, nh, nw, r + i * rs + 8 * j,
                                  rs, fresh);
    }
  }
}

// Rows [r0, r1) of R (rows (c, a, b, i), cy8 floats each; r at group's first column) +=
// the tile of the group's channels of y's rows [h0, h1) x columns [w0, w1) of image n at
// depth d; where fresh, = (the rows written once each, or zeroed, not read: the run's only
// tile)
void add_tile(const Geometry& g, const float* x, const Tile& t, int64_t n, int64_t d,
              int64_t h0, int64_t h1, int64_t w0, int64_t w1, int64_t r0, int64_t r1,
              int64_t group, float* r, bool fresh) {
  const int64_t cy8 = g.cy8(), cxg = g.cxg(), xh = g.sh * g.wi * g.cx, xw = g.sw * g.cx;
  const int64_t plane = g.kh * g.kw * cxg;  // R's rows of one depth tap c
  // R's rows [first, first + count), x's at xf, within [r0, r1)
  auto rows = [&](int64_t first, int64_t count, const float* xf, int64_t p, int64_t nh,
                  int64_t nw) {
    const int64_t lo = std::max(first, r0), hi = std::min(first + count, r1);
    if (lo < hi)
      rows_times_tile(xf + lo - first, xh, xw, t, p, nh, nw, hi - lo, r + lo * cy8, cy8, fresh);
  };
  // rows no pixel reaches, where fresh
  auto zero = [&](int64_t first, int64_t count) {
    if (!fresh) return;
    for (int64_t row = std::max(first, r0); row < std::min(first + count, r1); ++row)
      std::fill_n(r + row * cy8, g.cyg8(), 0.f);
  };
  const bool merged = g.groups == 1 && !g.depthwise;  // taps b in runs (see below)
  // y's columns whose tap b is inside x
  auto columns = [&](int64_t b) {
    return std::pair{std::max(w0, ceil_div(g.lo_w - b, g.sw)),
                     std::min(w1, floor_div(g.wi - 1 + g.lo_w - b, g.sw) + 1)};
  };
  for (int64_t c = 0; c < g.kd; ++c) {
    const int64_t xd = d * g.sd + c - g.lo_d, base = c * plane;
    if (xd < 0 || xd >= g.di) {
      zero(base, plane);
      continue;
    }
    const float* xs = x + group * cxg + (n * g.di + xd) * g.hi * g.wi * g.cx;
    for (int64_t a = 0; a < g.kh; ++a) {
      // y's rows whose tap a is inside x
      const int64_t ha = std::max(h0, ceil_div(g.lo_h - a, g.sh));
      const int64_t hb = std::min(h1, floor_div(g.hi - 1 + g.lo_h - a, g.sh) + 1);
      if (ha >= hb) {
        zero(base + a * g.kw * cxg, g.kw * cxg);
        continue;
      }
      const float* xa = xs + (ha * g.sh + a - g.lo_h) * g.wi * g.cx;
      const int64_t pa = (ha - h0) * t.rp;
      // Taps b in runs of the same columns inside x: with one group, their rows (b, i) are
      // one run of x, so that the blocks are as few and as deep as they can be (DCGAN G3's
      // 8x8 images, against one run where all taps are inside and the edge columns tap by
      // tap, in blocks of one column: its kernel gradient over a matmul of its FLOPs 1.00
      // -> 0.95; CenterNet 0.97 -> 0.92, the lecture decoder 2's at batch 256 0.94 -> 0.87,
      // 2026-12-05). In groups and depthwise, tap by tap.
      for (int64_t b = 0, e; b < g.kw; b = e) {
        const auto [wa, wb] = columns(b);
        for (e = b + 1; merged && e < g.kw && columns(e) == std::pair{wa, wb}; ++e) {
        }
        if (wa >= wb) {
          zero(base + (a * g.kw + b) * cxg, (e - b) * cxg);
          continue;
        }
        const float* xb = xa + (wa * g.sw + b - g.lo_w) * g.cx;
        const int64_t pb = pa + wa - w0;
        if (!g.depthwise) {
          rows(base + (a * g.kw + b) * cxg, (e - b) * cxg, xb, pb, hb - ha, wb - wa);
          continue;
        }
        float* rb = r + (base + a * g.kw + b) * cy8;
        const float* yb = t.base + pb * t.stride;
        const int64_t yh = t.rp * t.stride;
        int64_t j = 0;
        for (; j + 4 <= cy8 / 8; j += 4)
          depthwise_block<4>(xb + 8 * j, xh, xw, yb + 8 * j, yh, t.stride, hb - ha, wb - wa,
                             rb + 8 * j);
        for (; j < cy8 / 8; ++j)
          depthwise_block<1>(xb + 8 * j, xh, xw, yb + 8 * j, yh, t.stride, hb - ha, wb - wa,
                             rb + 8 * j);
      }
    }
  }
}

// Whether y's tiles are copied (into panels, or with their channels padded to 8k)
bool tiles_copied(const Geometry& g) { return g.panels() || g.cyg8() != g.cyg(); }

// The tile of one group's channels of y at yt (th rows of tw pixels): where it is, or
// copied into `at` (th tw cyg8 floats)
Tile tile_of(const Geometry& g, const float* yt, int64_t th, int64_t tw, float* at) {
  const int64_t cyg = g.cyg(), cyg8 = g.cyg8(), pixels = th * tw;
  if (!tiles_copied(g)) return Tile{yt, g.wo, pixels, cyg8, g.cy, false};
  if (cyg8 != cyg) std::fill_n(at, pixels * cyg8, 0.f);
  for (int64_t h = 0; h < th; ++h)
    for (int64_t w = 0; w < tw; ++w) {
      const float* from = yt + (h * g.wo + w) * g.cy;
      const int64_t q = h * tw + w;
      if (!g.panels()) {
        std::memcpy(at + q * cyg8, from, cyg * sizeof(float));
        continue;
      }
      int64_t c = 0;
      for (; c + 16 <= cyg; c += 16) {
        float* to = at + c * pixels + q * 16;
        store(to, load(from + c));
        store(to + 8, load(from + c + 8));
      }
      if (c < cyg)
        std::memcpy(at + c * pixels + q * (cyg8 - c), from + c, (cyg - c) * sizeof(float));
    }
  return Tile{at, tw, pixels, cyg8, cyg8, g.panels()};
}

// n floats at a cache line (64 bytes) in `storage`
float* aligned(std::vector<float>& storage, int64_t n) {
  storage.resize(n + 16);
  const auto address = reinterpret_cast<uintptr_t>(storage.data());
  return storage.data() + (64 - address % 64) % 64 / sizeof(float);
}

// The work shared by the threads: items of one group, equal runs of tiles and equal parts
// of R's rows (whole rows where the groups and runs give the threads enough work), claimed
// in turn by whichever thread is free. Each run of tiles sums into its own R; an item's sum
// does not depend on the thread that computes it, and the runs' sums are added in order:
// the result is the same from call to call.
struct Work {
  Geometry g;
  const float* x;
  const float* y;
  int64_t tile_h, tile_w, tiles_h, tiles_w, tiles, rows, runs, row_parts;
  std::vector<float*> partial;  // one R (rows, cy8) per run of tiles
  // where the row parts share tiles, each (group, tile) copied once, before the items
  std::vector<float> shared_storage;
  float* shared = nullptr;
  std::atomic<int64_t> next{0}, done{0}, next_copy{0}, copies_done{0};

  int64_t items() const { return g.groups * runs * row_parts; }
  int64_t copies() const { return shared ? g.groups * tiles : 0; }
  int64_t tile_floats() const { return (tile_h * tile_w * g.cyg8() + 15) / 16 * 16; }

  struct Place {
    int64_t n, d, h0, h1, w0, w1;
    const float* yt;  // the group's channels of its first pixel
  };
  Place place(int64_t tile, int64_t group) const {
    const int64_t n = tile / (g.d_o * tiles_h * tiles_w);
    const int64_t d = tile / (tiles_h * tiles_w) % g.d_o;
    const int64_t h0 = tile / tiles_w % tiles_h * tile_h, h1 = std::min(g.ho, h0 + tile_h);
    const int64_t w0 = tile % tiles_w * tile_w, w1 = std::min(g.wo, w0 + tile_w);
    const float* yt = y + (((n * g.d_o + d) * g.ho + h0) * g.wo + w0) * g.cy + group * g.cyg();
    return Place{n, d, h0, h1, w0, w1, yt};
  }

  void run() {
    for (int64_t copy; (copy = next_copy.fetch_add(1)) < copies();) {
      const Place at = place(copy % tiles, copy / tiles);
      tile_of(g, at.yt, at.h1 - at.h0, at.w1 - at.w0, shared + copy * tile_floats());
      copies_done.fetch_add(1, std::memory_order_release);
    }
    while (copies_done.load(std::memory_order_acquire) < copies()) std::this_thread::yield();
    const int64_t cy8 = g.cy8(), cyg = g.cyg(), cyg8 = g.cyg8(),
                  blocks = (rows + MAX_ROWS - 1) / MAX_ROWS;
    std::vector<float> storage;
    float* const own = shared || !tiles_copied(g) ? nullptr : aligned(storage, tile_floats());
    for (int64_t item; (item = next.fetch_add(1)) < items();) {
      const int64_t group = item / (runs * row_parts);
      const int64_t p = item / row_parts % runs, part = item % row_parts;
      const int64_t r0 = std::min(rows, MAX_ROWS * (blocks * part / row_parts));
      const int64_t r1 = std::min(rows, MAX_ROWS * (blocks * (part + 1) / row_parts));
      float* r = partial[p] + group * cyg;
      const int64_t first = p * tiles / runs, last = (p + 1) * tiles / runs;
      const bool fresh = !g.depthwise && last - first == 1;
      if (!fresh)
        for (int64_t row = r0; row < r1; ++row) std::fill_n(r + row * cy8, cyg8, 0.f);
      for (int64_t tile = first; tile < last; ++tile) {
        const Place at = place(tile, group);
        const int64_t th = at.h1 - at.h0, tw = at.w1 - at.w0;
        const Tile t = shared ? Tile{shared + (group * tiles + tile) * tile_floats(), tw,
                                     th * tw, cyg8, cyg8, g.panels()}
                              : tile_of(g, at.yt, th, tw, own);
        add_tile(g, x, t, at.n, at.d, at.h0, at.h1, at.w0, at.w1, r0, r1, group, r, fresh);
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// A result of many MiB is often fresh memory from mmap: written 4 KiB page by page, its
// page faults cost more than the sums (StyleGAN2's 38 MB: ~10 of 18 ms). Where the
// kernel backs madvised memory with 2 MiB pages (transparent_hugepage "madvise", a
// common default), asking for them makes the faults 512 times fewer.
void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> y,
                      ffi::ResultBuffer<ffi::F32> out, int64_t kd, int64_t kh, int64_t kw,
                      int64_t sd, int64_t sh, int64_t sw, int64_t lo_d, int64_t lo_h,
                      int64_t lo_w, int64_t groups, bool depthwise) {
  const auto xd = x.dimensions(), yd = y.dimensions();
  if (xd.size() != 5 || yd.size() != 5 || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("x and y: (N, D, H, W, C) with the same N");
  if (depthwise && (xd[4] != yd[4] || xd[4] % 8 != 0))
    return ffi::Error::InvalidArgument("depthwise: as many channels in x as in y, 8k");
  if (kd < 1 || kh < 1 || kw < 1 || sd < 1 || sh < 1 || sw < 1 || groups < 1)
    return ffi::Error::InvalidArgument("kernel size, stride and groups at least 1");
  if (groups > 1 && (depthwise || xd[4] % groups != 0 || yd[4] % (8 * groups) != 0))
    return ffi::Error::InvalidArgument("groups: of x's channels, and of 8k of y's");
  auto work = std::make_shared<Work>();
  Geometry& g = work->g;
  g = Geometry{xd[0], xd[1], xd[2], xd[3], xd[4], yd[1], yd[2], yd[3], yd[4], kd, kh, kw,
               sd, sh, sw, lo_d, lo_h, lo_w, groups, depthwise};
  work->x = x.typed_data();
  work->y = y.typed_data();
  const int64_t tile_bytes = g.panels() ? PANEL_TILE_BYTES : TILE_BYTES;
  const int64_t cy8 = g.cy8(), tile_pixels = tile_bytes / sizeof(float) / g.cyg8();
  work->tile_w = std::max<int64_t>(1, std::min(g.wo, std::max<int64_t>(8, tile_pixels)));
  work->tile_h = std::max<int64_t>(1, std::min(g.ho, tile_pixels / work->tile_w));
  work->tiles_w = (g.wo + work->tile_w - 1) / work->tile_w;
  work->tiles_h = (g.ho + work->tile_h - 1) / work->tile_h;
  work->tiles = g.n * g.d_o * work->tiles_h * work->tiles_w;
  const int64_t rows = kd * kh * kw * g.cxg();
  float* r = out->typed_data();
  advise_huge_pages(r, rows * g.cy * sizeof(float));
  if (work->tiles == 0) {  // no pixel of y: nothing summed
    std::fill(r, r + rows * g.cy, 0.f);
    return ffi::Error::Success();
  }
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t items = RUNS_PER_THREAD * threads;
  // runs of at least MIN_RUN_PIXELS (fewer Rs to clear and add), then parts of the rows
  const int64_t runs = std::clamp<int64_t>(g.n * g.d_o * g.ho * g.wo / MIN_RUN_PIXELS, 1,
                                           std::min(work->tiles, items));
  work->rows = rows;
  work->runs = runs;
  const int64_t split = (items + groups * runs - 1) / (groups * runs);
  work->row_parts = depthwise ? 1 : std::min(split, (rows + MAX_ROWS - 1) / MAX_ROWS);
  // the row parts of a run read its tiles: each copied once where they fit SHARED_MAX_BYTES
  const int64_t shared_floats = groups * work->tiles * work->tile_floats();
  if (tiles_copied(g) && work->row_parts >= SHARED_MIN_PARTS &&
      shared_floats * 4 <= SHARED_MAX_BYTES)
    work->shared = aligned(work->shared_storage, shared_floats);
  // one run of whole channels sums into the result itself
  std::vector<std::unique_ptr<float[]>> sums;
  const bool direct = runs == 1 && cy8 == g.cy;
  for (int64_t p = 0; p < runs; ++p) {
    if (!direct) sums.emplace_back(new float[rows * cy8]);
    work->partial.push_back(direct ? r : sums.back().get());
  }
  // The caller works too and waits only for items another thread has claimed: a task
  // that starts late finds none left, so a busy pool cannot stall the call.
  const int64_t count = work->items();
  for (int64_t t = 1; t < std::min(threads, count); ++t) pool.Schedule([work] { work->run(); });
  work->run();
  while (work->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
  if (direct) return ffi::Error::Success();
  std::fill(r, r + rows * g.cy, 0.f);
  for (const float* p : work->partial)
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t j = 0; j < g.cy; ++j) r[t * g.cy + j] += p[t * cy8 + j];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxconvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kd")
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sd")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("lo_d")
                                  .Attr<int64_t>("lo_h")
                                  .Attr<int64_t>("lo_w")
                                  .Attr<int64_t>("groups")
                                  .Attr<bool>("depthwise"));
