// Math shared by the CPU and CUDA kernels of boxsup::proposal_costs.
//
// Everything here is a HOST_DEVICE inline function, so the CPU tests exercise exactly the
// arithmetic the GPU runs (the detectron2 / torchvision habit for box_iou_rotated).
#pragma once

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

// Per-unit integer statistics, stored as rows of (kUnitIntFields + M) int32 values:
// pixel count, tight box (min x, min y, max x, max y; inclusive) and, per box m, the number of
// the unit's pixels whose centre lies in box m. CE sums live in a separate double array [U, J]
// (J = distinct labels), so boxes sharing a class share one sum.
constexpr int kCount = 0;
constexpr int kMinX = 1;
constexpr int kMinY = 2;
constexpr int kMaxX = 3;
constexpr int kMaxY = 4;
constexpr int kUnitIntFields = 5;
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

// Lane helpers, so the exp/log below are written once for a scalar float (CPU and CUDA) and for
// the CPU's SIMD vectors (GCC/Clang vector extensions, 8 floats: one AVX2 register, two SSE ones).
HOST_DEVICE_INLINE float select_less(float a, float b, float if_less, float otherwise) {
  return a < b ? if_less : otherwise;
}
HOST_DEVICE_INLINE int32_t truncate_to_int(float v) { return static_cast<int32_t>(v); }
HOST_DEVICE_INLINE float int_to_float(int32_t v) { return static_cast<float>(v); }
HOST_DEVICE_INLINE float reinterpret_as_float(int32_t bits) { return bits_to_float(bits); }
HOST_DEVICE_INLINE int32_t reinterpret_as_int(float value) { return float_to_bits(value); }

#if !defined(__CUDACC__) && !defined(__HIPCC__) && (defined(__GNUC__) || defined(__clang__))
#define BOXSUP_HAVE_VECTOR_FLOAT 1
typedef float vfloat8 __attribute__((vector_size(32)));
typedef int32_t vint8 __attribute__((vector_size(32)));
inline vfloat8 splat8(float v) { return vfloat8{v, v, v, v, v, v, v, v}; }
inline vfloat8 select_less(vfloat8 a, vfloat8 b, vfloat8 if_less, vfloat8 otherwise) {
  return a < b ? if_less : otherwise;
}
inline vfloat8 select_less(vfloat8 a, float b, vfloat8 if_less, vfloat8 otherwise) {
  return select_less(a, splat8(b), if_less, otherwise);
}
inline vfloat8 select_less(vfloat8 a, vfloat8 b, float if_less, vfloat8 otherwise) {
  return select_less(a, b, splat8(if_less), otherwise);
}
inline vfloat8 select_less(vfloat8 a, float b, float if_less, vfloat8 otherwise) {
  return select_less(a, splat8(b), splat8(if_less), otherwise);
}
inline vint8 truncate_to_int(vfloat8 v) { return __builtin_convertvector(v, vint8); }
inline vfloat8 int_to_float(vint8 v) { return __builtin_convertvector(v, vfloat8); }
inline vfloat8 reinterpret_as_float(vint8 bits) { return (vfloat8)bits; }  // bit cast
inline vint8 reinterpret_as_int(vfloat8 value) { return (vint8)value; }  // bit cast
#endif

// exp(x) for x <= 0 (softmax numerators after subtracting the maximum), branch-free: Cephes expf
// range reduction and polynomial, relative error about 2e-7. Inputs below -87 flush to
// exp(-87) ~ 1.6e-38, which cannot change a sum that holds exp(0) = 1.
template <typename F>
HOST_DEVICE_INLINE F exp_nonpositive(F x) {
  x = select_less(x, -87.0f, -87.0f, x);
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
  return y * reinterpret_as_float((truncate_to_int(n) + 127) << 23);
}

// log(x) for a finite x >= 1 (a softmax denominator that includes exp(0) = 1): Cephes logf,
// relative error about 1e-7, branch-free.
template <typename F>
HOST_DEVICE_INLINE F log_at_least_one(F x) {
  const auto bits = reinterpret_as_int(x);
  F e = int_to_float((bits >> 23) - 127);
  F m = reinterpret_as_float((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  // Move m into [sqrt(1/2), sqrt(2)) so the polynomial argument stays small.
  e = select_less(m, 1.41421356f, e, e + 1.0f);
  m = select_less(m, 1.41421356f, m, m * 0.5f);
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

// Number of image pixels inside a box.
HOST_DEVICE_INLINE int64_t box_pixel_count(const double* box, int64_t height, int64_t width) {
  int64_t x0, x1, y0, y1;
  pixel_range(box[0], box[2], width, &x0, &x1);
  pixel_range(box[1], box[3], height, &y0, &y1);
  return (x1 - x0) * (y1 - y0);
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

// Merge of two units' integer statistics (the same unit seen by two workers).
HOST_DEVICE_INLINE void merge_unit_ints(int32_t* into, const int32_t* from, int num_boxes) {
  into[kCount] += from[kCount];
  into[kMinX] = from[kMinX] < into[kMinX] ? from[kMinX] : into[kMinX];
  into[kMinY] = from[kMinY] < into[kMinY] ? from[kMinY] : into[kMinY];
  into[kMaxX] = from[kMaxX] > into[kMaxX] ? from[kMaxX] : into[kMaxX];
  into[kMaxY] = from[kMaxY] > into[kMaxY] ? from[kMaxY] : into[kMaxY];
  for (int m = 0; m < num_boxes; ++m) into[kUnitIntFields + m] += from[kUnitIntFields + m];
}

HOST_DEVICE_INLINE void init_candidate_ints(int64_t* acc, int num_boxes) {
  acc[kCount] = 0;
  acc[kMinX] = kEmptyMin;
  acc[kMinY] = kEmptyMin;
  acc[kMaxX] = kEmptyMax;
  acc[kMaxY] = kEmptyMax;
  for (int m = 0; m < num_boxes; ++m) acc[kUnitIntFields + m] = 0;
}

// Outputs of one candidate n from its folded statistics. `ce_sum` is indexed by distinct label,
// `label_slot[m]` maps box m to its label's slot; `box_pixels[m]` is box m's pixel count.
HOST_DEVICE_INLINE void finalize_candidate(
    const int64_t* acc, const double* ce_sum, const double* boxes, const int32_t* label_slot,
    const int64_t* box_pixels, int num_boxes, int64_t* area_out, float* bbox_out, float* iou_box_out,
    float* iou_mask_out, float* mean_ce_out) {
  const int64_t area = acc[kCount];
  *area_out = area;
  double bx0 = 0, by0 = 0, bx1 = 0, by1 = 0;
  if (area > 0) {
    bx0 = static_cast<double>(acc[kMinX]);
    by0 = static_cast<double>(acc[kMinY]);
    bx1 = static_cast<double>(acc[kMaxX] + 1);
    by1 = static_cast<double>(acc[kMaxY] + 1);
  }
  bbox_out[0] = static_cast<float>(bx0);
  bbox_out[1] = static_cast<float>(by0);
  bbox_out[2] = static_cast<float>(bx1);
  bbox_out[3] = static_cast<float>(by1);
  for (int m = 0; m < num_boxes; ++m) {
    const double* box = boxes + 4 * m;
    if (area > 0) {
      iou_box_out[m] = static_cast<float>(rect_iou(bx0, by0, bx1, by1, box));
      const double inter = static_cast<double>(acc[kUnitIntFields + m]);
      const double uni = static_cast<double>(area) + static_cast<double>(box_pixels[m]) - inter;
      iou_mask_out[m] = static_cast<float>(uni > 0 ? inter / uni : 0.0);
      mean_ce_out[m] = static_cast<float>(ce_sum[label_slot[m]] / static_cast<double>(area));
    } else {
      iou_box_out[m] = 0.0f;
      iou_mask_out[m] = 0.0f;
      mean_ce_out[m] = std::numeric_limits<float>::infinity();
    }
  }
}

}  // namespace math
}  // namespace boxsup
