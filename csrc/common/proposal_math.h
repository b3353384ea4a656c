// Math shared by the CPU and CUDA kernels of boxsup::proposal_costs and paint_labels.
//
// Everything here is a HOST_DEVICE inline function: the per-pixel log-sum-exp and cross-entropy
// terms, the box pixel rule, the fold of unit statistics into candidates and the final IoUs and
// means. The CPU and CUDA kernels only map work to threads and reduce; the arithmetic is this file's,
// so the CPU tests exercise the GPU's arithmetic (the detectron2 / torchvision habit for
// box_iou_rotated), and both backends give the same bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HOST_DEVICE __host__ __device__
#define HOST_DEVICE_INLINE __host__ __device__ __forceinline__
#else
#define HOST_DEVICE
#define HOST_DEVICE_INLINE inline
#endif

namespace boxsup {
namespace math {

// Empty tight-box corners: min/max start here, so a unit or candidate without pixels folds to nothing.
constexpr int32_t kEmptyMin = std::numeric_limits<int32_t>::max();
constexpr int32_t kEmptyMax = -1;

HOST_DEVICE_INLINE float bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
#endif
}

HOST_DEVICE_INLINE int32_t float_to_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(value);
#else
  int32_t out;
  std::memcpy(&out, &value, sizeof(out));
  return out;
#endif
}

// The lane operations of the exp/log below, so that they are written once for a scalar float (CPU
// and CUDA) and for the CPU's SIMD vectors (cpu/vec.h specialises Lanes for its 8-float vectors).
// A class template rather than overloads: a specialisation declared after these templates is still
// found where they are instantiated.
template <typename F>
struct Lanes;

template <>
struct Lanes<float> {
  HOST_DEVICE_INLINE static float select_less(float a, float b, float if_less, float otherwise) {
    return a < b ? if_less : otherwise;
  }
  HOST_DEVICE_INLINE static int32_t truncate_to_int(float v) { return static_cast<int32_t>(v); }
  HOST_DEVICE_INLINE static float int_to_float(int32_t v) { return static_cast<float>(v); }
  HOST_DEVICE_INLINE static float reinterpret_as_float(int32_t bits) { return bits_to_float(bits); }
  HOST_DEVICE_INLINE static int32_t reinterpret_as_int(float value) { return float_to_bits(value); }
};

// exp(x) for x <= 0 (softmax numerators after subtracting the maximum), branch-free: Cephes expf
// range reduction and polynomial, relative error about 2e-7. Inputs below -87 flush to
// exp(-87) ~ 1.6e-38, which cannot change a sum that holds exp(0) = 1.
template <typename F>
HOST_DEVICE_INLINE F exp_nonpositive(F x) {
  using L = Lanes<F>;
  x = L::select_less(x, -87.0f, -87.0f, x);
  // Round x * log2(e) to the nearest integer with the 1.5 * 2^23 trick (exact in float32).
  const float shifter = 12582912.0f;
  F n = x * 1.44269504088896341f + shifter;
  n = n - shifter;
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F y = p * r * r + r + 1.0f;
  return y * L::reinterpret_as_float((L::truncate_to_int(n) + 127) << 23);
}

// log(x) for a finite x >= 1 (a softmax denominator that includes exp(0) = 1): Cephes logf,
// relative error about 1e-7, branch-free.
template <typename F>
HOST_DEVICE_INLINE F log_at_least_one(F x) {
  using L = Lanes<F>;
  const auto bits = L::reinterpret_as_int(x);
  F e = L::int_to_float((bits >> 23) - 127);
  F m = L::reinterpret_as_float((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  // Move m into [sqrt(1/2), sqrt(2)) so the polynomial argument stays small.
  e = L::select_less(m, 1.41421356f, e, e + 1.0f);
  m = L::select_less(m, 1.41421356f, m, m * 0.5f);
  const F t = m - 1.0f;
  const F z = t * t;
  F p = t * 7.0376836292e-2f - 1.1514610310e-1f;
  p = p * t + 1.1676998740e-1f;
  p = p * t - 1.2420140846e-1f;
  p = p * t + 1.4249322787e-1f;
  p = p * t - 1.6668057665e-1f;
  p = p * t + 2.0000714765e-1f;
  p = p * t - 2.4999993993e-1f;
  p = p * t + 3.3333331174e-1f;
  F y = p * t * z;
  y = y - z * 0.5f;
  return e * 0.693147180559945f + (t + y);
}

// ---------------------------------------------------------------------------------------------
// Stage 1, per pixel: the log-sum-exp of its class scores and its cross-entropy terms.

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
// log(sum_c exp(load(c))) over num_classes >= 1 scores, two passes (maximum, then the shifted sum)
// with the branch-free exp/log above. *check becomes non-zero (NaN) when a score is NaN or +-inf:
// x * 0 is 0 only for finite x. F is float (CPU scalar and CUDA) or an 8-lane CPU vector; the CPU
// and CUDA kernels both call this, and neither contracts a * b + c into an FMA (-ffp-contract=off,
// nvcc --fmad=false), so they round identically.
template <typename F, typename Load>
HOST_DEVICE_INLINE F logsumexp_classes(const Load& load, int64_t num_classes, F* check) {
  F top = load(0);
  F bad = top * 0.0f;
  for (int64_t c = 1; c < num_classes; ++c) {
    const F v = load(c);
    top = v > top ? v : top;
    bad += v * 0.0f;
  }
  F sum = F();
  for (int64_t c = 0; c < num_classes; ++c) sum += exp_nonpositive(load(c) - top);
  *check = bad;
  return top + log_at_least_one(sum);
}

// -log softmax(x)[label] of one pixel, from its log-sum-exp and the label's score, in float64 so it
// cannot overflow. Never negative: lse >= the largest score >= the label's score.
HOST_DEVICE_INLINE double pixel_nll(float lse, float label_score) {
  return static_cast<double>(lse) - static_cast<double>(label_score);
}

// Cross-entropy sums are int64 fixed point: each pixel's NLL is rounded to a multiple of 2^-e and
// the integers are summed. Integer sums do not depend on the order of the additions, so results are
// the same run to run, thread count to thread count, and CPU to GPU. The exponent is chosen per image
// so that the image's total, pixels * nll_bound * 2^e, stays below 2^62; a pixel whose NLL exceeds
// nll_bound is reported (see kernels) and the image is recomputed with its largest NLL as the bound.
constexpr double kDefaultNllBound = 1024.0;
constexpr int kMaxCeExponent = 32;

HOST_DEVICE_INLINE int ce_exponent(int64_t pixels, double nll_bound) {
  const double total = static_cast<double>(pixels > 1 ? pixels : 1) * (nll_bound > 1.0 ? nll_bound : 1.0);
  int k = 0;
  frexp(total, &k);  // total < 2^k
  const int e = 62 - k;
  return e < kMaxCeExponent ? e : kMaxCeExponent;
}

HOST_DEVICE_INLINE int64_t to_fixed(double nll, double scale) {
  const double x = nll * scale + 0.5;  // nll >= 0: round half up
  // Saturate instead of an undefined conversion; such a pixel is above the bound and its image reruns.
  return x < 9.0e18 ? static_cast<int64_t>(x) : INT64_MAX;
}

// ---------------------------------------------------------------------------------------------
// Boxes: the pixel rule, checks, and the per-box facts every kernel uses.

// Columns [begin, end) of a W-pixel row whose centres x + 0.5 lie in [lo, hi): the half-open
// pixel convention of every box in this package. Works for rows too.
HOST_DEVICE_INLINE void pixel_range(double lo, double hi, int64_t size, int64_t* begin, int64_t* end) {
  // x + 0.5 >= lo  <=>  x >= ceil(lo - 0.5);   x + 0.5 < hi  <=>  x < ceil(hi - 0.5).
  if (!(lo == lo) || !(hi == hi)) {  // NaN coordinate: empty range
    *begin = 0;
    *end = 0;
    return;
  }
  // Clamp before converting so infinite or huge coordinates stay defined.
  const double limit = static_cast<double>(size) + 1.0;
  double b = lo - 0.5;
  double e = hi - 0.5;
  b = b < -1.0 ? -1.0 : (b > limit ? limit : b);
  e = e < -1.0 ? -1.0 : (e > limit ? limit : e);
  int64_t bi = static_cast<int64_t>(b);
  if (static_cast<double>(bi) < b) bi += 1;  // ceil
  int64_t ei = static_cast<int64_t>(e);
  if (static_cast<double>(ei) < e) ei += 1;
  bi = bi < 0 ? 0 : (bi > size ? size : bi);
  ei = ei < 0 ? 0 : (ei > size ? size : ei);
  *begin = bi;
  *end = ei > bi ? ei : bi;
}

// A box is usable when its coordinates are finite and x0 <= x1, y0 <= y1 (zero area is allowed).
HOST_DEVICE_INLINE bool box_is_valid(const double* box) {
  for (int i = 0; i < 4; ++i)
    if (!(box[i] - box[i] == 0.0)) return false;  // NaN or +-inf
  return box[0] <= box[2] && box[1] <= box[3];
}

// What the kernels need of box m, one row of kBoxInfoFields int64 per box: its pixel ranges, its
// pixel count inside the image, and the CE column it reads (the first box with the same label, so
// boxes of one class share one sum).
enum BoxInfoField : int { kColBegin = 0, kColEnd, kRowBegin, kRowEnd, kPixels, kSlot, kBoxInfoFields };

HOST_DEVICE_INLINE void box_info(const double* box, const int64_t* labels, int64_t m, int64_t height, int64_t width,
                                 int64_t* info) {
  pixel_range(box[0], box[2], width, &info[kColBegin], &info[kColEnd]);
  pixel_range(box[1], box[3], height, &info[kRowBegin], &info[kRowEnd]);
  info[kPixels] = (info[kColEnd] - info[kColBegin]) * (info[kRowEnd] - info[kRowBegin]);
  int64_t slot = m;
  for (int64_t k = 0; k < m; ++k) {
    if (labels[k] == labels[m]) {
      slot = k;
      break;
    }
  }
  info[kSlot] = slot;
}

HOST_DEVICE_INLINE bool pixel_in_box(const int64_t* info, int64_t x, int64_t y) {
  return x >= info[kColBegin] && x < info[kColEnd] && y >= info[kRowBegin] && y < info[kRowEnd];
}

// IoU of two continuous rectangles (x0, y0, x1, y1); 0 when the union is empty.
HOST_DEVICE_INLINE double rect_iou(double ax0, double ay0, double ax1, double ay1, const double* b) {
  const double area_a = (ax1 > ax0 ? ax1 - ax0 : 0.0) * (ay1 > ay0 ? ay1 - ay0 : 0.0);
  const double area_b = (b[2] > b[0] ? b[2] - b[0] : 0.0) * (b[3] > b[1] ? b[3] - b[1] : 0.0);
  const double iw = (ax1 < b[2] ? ax1 : b[2]) - (ax0 > b[0] ? ax0 : b[0]);
  const double ih = (ay1 < b[3] ? ay1 : b[3]) - (ay0 > b[1] ? ay0 : b[1]);
  const double inter = (iw > 0 ? iw : 0.0) * (ih > 0 ? ih : 0.0);
  const double uni = area_a + area_b - inter;
  return uni > 0 ? inter / uni : 0.0;
}

// ---------------------------------------------------------------------------------------------
// Stage 2: the fold of unit statistics into candidates.
//
// Per image, the unit statistics are S = 1 + 2M int64 columns: 0 the pixel count, 1 + m the pixels
// inside box m, 1 + M + m the fixed-point CE sum of column m (used when m is a box's slot), kept as
// exclusive prefix sums over units (U + 1 rows, row u = the sum over units < u), and four int32
// corner arrays (min x, min y, max x, max y; kEmptyMin / kEmptyMax for units without pixels).
// The layout is the backend's choice (row-major on the CPU, column-major on the GPU); this view
// hides it, so both backends fold with the same functions.
constexpr int kCornerFields = 4;

HOST_DEVICE_INLINE int64_t sum_columns(int64_t num_boxes) { return 1 + 2 * num_boxes; }

struct UnitTable {
  const int64_t* prefix;  // element (u, k) at prefix[u * row_stride + k * col_stride]
  int64_t row_stride, col_stride;
  const int32_t* corners;  // corner i of unit u at corners[i * corner_stride + u]: four arrays, which
  int64_t corner_stride;   // the CPU's run folds read with vector instructions

  HOST_DEVICE_INLINE int64_t at(int64_t u, int64_t k) const { return prefix[u * row_stride + k * col_stride]; }
};

// Adds columns [k0, k1) of units [first, last) to acc[0 .. k1 - k0). The subtraction is modular, so
// prefix sums that wrap around int64 across images still give exact differences.
HOST_DEVICE_INLINE void fold_sums(const UnitTable& t, int64_t first, int64_t last, int64_t k0, int64_t k1,
                                  int64_t* acc) {
  for (int64_t k = k0; k < k1; ++k)
    acc[k - k0] += static_cast<int64_t>(static_cast<uint64_t>(t.at(last, k)) - static_cast<uint64_t>(t.at(first, k)));
}

// Tight-box corners of units [first, last) merged into corner[0..3] (min x, min y, max x, max y).
HOST_DEVICE_INLINE void fold_corners(const UnitTable& t, int64_t first, int64_t last, int64_t* corner) {
  int32_t min_x = kEmptyMin, min_y = kEmptyMin, max_x = kEmptyMax, max_y = kEmptyMax;
  const int32_t* a = t.corners;
  const int32_t* b = t.corners + t.corner_stride;
  const int32_t* c = t.corners + 2 * t.corner_stride;
  const int32_t* d = t.corners + 3 * t.corner_stride;
  for (int64_t u = first; u < last; ++u) {
    min_x = a[u] < min_x ? a[u] : min_x;
    min_y = b[u] < min_y ? b[u] : min_y;
    max_x = c[u] > max_x ? c[u] : max_x;
    max_y = d[u] > max_y ? d[u] : max_y;
  }
  corner[0] = min_x < corner[0] ? min_x : corner[0];
  corner[1] = min_y < corner[1] ? min_y : corner[1];
  corner[2] = max_x > corner[2] ? max_x : corner[2];
  corner[3] = max_y > corner[3] ? max_y : corner[3];
}

HOST_DEVICE_INLINE void init_corners(int64_t* corner) {
  corner[0] = kEmptyMin;
  corner[1] = kEmptyMin;
  corner[2] = kEmptyMax;
  corner[3] = kEmptyMax;
}

HOST_DEVICE_INLINE int count_trailing_zeros(uint64_t x) {  // x != 0
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(x)) - 1;
#else
  return __builtin_ctzll(x);
#endif
}

// Takes the lowest run of set bits out of *bits (non-zero): bits [*start, *end) of the word.
HOST_DEVICE_INLINE void next_run(uint64_t* bits, int* start, int* end) {
  const int s = count_trailing_zeros(*bits);
  const uint64_t rest = ~(*bits >> s);
  const int length = rest == 0 ? 64 - s : count_trailing_zeros(rest);
  *start = s;
  *end = s + length;
  *bits = (s + length >= 64) ? 0 : (*bits & (~uint64_t(0) << (s + length)));
}

// Area and tight box (x0, y0, x1, y1; half-open; zeros when empty) of a candidate from its folded
// pixel count and corners. bbox_double receives the same box in float64 for the IoUs.
HOST_DEVICE_INLINE void finalize_bbox(int64_t count, const int64_t* corner, int64_t* area_out, float* bbox_out,
                                      double* bbox_double) {
  *area_out = count;
  double b[4] = {0.0, 0.0, 0.0, 0.0};
  if (count > 0) {
    b[0] = static_cast<double>(corner[0]);
    b[1] = static_cast<double>(corner[1]);
    b[2] = static_cast<double>(corner[2] + 1);
    b[3] = static_cast<double>(corner[3] + 1);
  }
  for (int i = 0; i < 4; ++i) {
    bbox_out[i] = static_cast<float>(b[i]);
    bbox_double[i] = b[i];
  }
}

// Outputs of one (candidate, box) pair: IoU of the box with the candidate's tight box, pixel IoU of
// the candidate with the box's pixels, and the mean CE (+inf for an empty candidate).
HOST_DEVICE_INLINE void finalize_box(int64_t count, const double* bbox, int64_t inside, int64_t ce_fixed,
                                     double ce_unscale, const double* box, int64_t box_pixels, float* iou_box_out,
                                     float* iou_mask_out, float* mean_ce_out) {
  if (count > 0) {
    *iou_box_out = static_cast<float>(rect_iou(bbox[0], bbox[1], bbox[2], bbox[3], box));
    const double inter = static_cast<double>(inside);
    const double uni = static_cast<double>(count) + static_cast<double>(box_pixels) - inter;
    *iou_mask_out = static_cast<float>(uni > 0 ? inter / uni : 0.0);
    *mean_ce_out = static_cast<float>(static_cast<double>(ce_fixed) * ce_unscale / static_cast<double>(count));
  } else {
    *iou_box_out = 0.0f;
    *iou_mask_out = 0.0f;
    *mean_ce_out = INFINITY;
  }
}

// ---------------------------------------------------------------------------------------------
// Painting: the order in which the chosen regions of one image are painted.

// Position of region k among `count` regions in paint order: larger painted area first, ties in
// region (box) order, so smaller regions are painted later and end on top. A pixel covered by
// several regions takes the label of the covering region with the highest rank.
HOST_DEVICE_INLINE int64_t paint_rank(const int64_t* area, int64_t count, int64_t k) {
  int64_t rank = 0;
  for (int64_t j = 0; j < count; ++j) rank += (area[j] > area[k]) || (area[j] == area[k] && j < k);
  return rank;
}

// Whether a pixel inside the box of a box without a candidate takes the `unassigned` label: only
// while it is still background (0), whether no region covers it or one labelled 0 does.
HOST_DEVICE_INLINE bool takes_unassigned(uint8_t painted) { return painted == 0; }

}  // namespace math
}  // namespace boxsup
