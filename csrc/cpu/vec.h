// The CPU's 8-float SIMD vectors (GCC/Clang vector extensions: one AVX2 register, two SSE ones), with
// the lane operations that common/proposal_math.h's exp/log templates need, so the CPU kernel runs the
// same arithmetic eight pixels at a time. BOXSUP_HAVE_VECTOR_FLOAT is defined where they exist.
#pragma once

#include <cstdint>
#include <cstring>

#include "../common/proposal_math.h"

#if defined(__GNUC__) || defined(__clang__)
#define BOXSUP_HAVE_VECTOR_FLOAT 1

namespace boxsup {
namespace math {

typedef float vfloat8 __attribute__((vector_size(32)));
typedef int32_t vint8 __attribute__((vector_size(32)));

inline vfloat8 splat8(float v) { return vfloat8{v, v, v, v, v, v, v, v}; }
inline vfloat8 load8(const float* p) {
  vfloat8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, vfloat8 v) { std::memcpy(p, &v, sizeof(v)); }

template <>
struct Lanes<vfloat8> {
  static vfloat8 select_less(vfloat8 a, vfloat8 b, vfloat8 if_less, vfloat8 otherwise) {
    return a < b ? if_less : otherwise;
  }
  static vfloat8 select_less(vfloat8 a, float b, vfloat8 if_less, vfloat8 otherwise) {
    return select_less(a, splat8(b), if_less, otherwise);
  }
  static vfloat8 select_less(vfloat8 a, vfloat8 b, float if_less, vfloat8 otherwise) {
    return select_less(a, b, splat8(if_less), otherwise);
  }
  static vfloat8 select_less(vfloat8 a, float b, float if_less, vfloat8 otherwise) {
    return select_less(a, splat8(b), splat8(if_less), otherwise);
  }
  static vint8 truncate_to_int(vfloat8 v) { return __builtin_convertvector(v, vint8); }
  static vfloat8 int_to_float(vint8 v) { return __builtin_convertvector(v, vfloat8); }
  static vfloat8 reinterpret_as_float(vint8 bits) { return (vfloat8)bits; }  // bit cast
  static vint8 reinterpret_as_int(vfloat8 value) { return (vint8)value; }    // bit cast
};

}  // namespace math
}  // namespace boxsup

#endif
