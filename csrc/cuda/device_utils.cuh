// Device-side helpers both CUDA kernel files use: launch sizes, grid-stride loops, warp reductions,
// the search for the image of a batch that owns an index, and unit-id loads.
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

namespace boxsup {

constexpr unsigned kFullMask = 0xffffffffu;

// Blocks for `work` items at `per_block` items a block, capped at 32 blocks per SM (the kernels
// loop over the rest).
inline int64_t blocks_for(int64_t work, int64_t per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, sms * 32));
}

// A grid-stride loop: for (i = first; i < total; i += step).
struct GridStride {
  int64_t first, step;
};
// One thread per item.
__device__ __forceinline__ GridStride thread_items() {
  return {blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, static_cast<int64_t>(gridDim.x) * blockDim.x};
}
// One warp per item.
__device__ __forceinline__ GridStride warp_items() {
  return {static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32,
          static_cast<int64_t>(gridDim.x) * (blockDim.x / 32)};
}
// One thread per item, the warps' first items aligned to 32, so every lane of a warp runs each
// iteration (the warp-collective kernels; lanes past the end take part without an item).
__device__ __forceinline__ GridStride warp_aligned_thread_items() {
  return {static_cast<int64_t>(blockIdx.x) * blockDim.x + (threadIdx.x & ~31),
          static_cast<int64_t>(gridDim.x) * blockDim.x};
}

// Reductions over the 32 lanes of a warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_min(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = min(v, static_cast<T>(__shfl_xor_sync(kFullMask, v, offset)));
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, static_cast<T>(__shfl_xor_sync(kFullMask, v, offset)));
  return v;
}

// The image of a batch that owns `index`: the last of `count` images whose begin(i) <= index.
// Images with nothing of that kind share the next image's begin, so they are never picked.
template <typename Begin>
__device__ __forceinline__ int owning_image(int count, int64_t index, const Begin& begin) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (begin(mid) <= index) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Unit id of pixel p from a units map given as int32 or int64.
__device__ __forceinline__ int64_t load_unit(const void* units, bool units_are_int64, int64_t p) {
  return units_are_int64 ? static_cast<const int64_t*>(units)[p]
                         : static_cast<int64_t>(static_cast<const int32_t*>(units)[p]);
}

}  // namespace boxsup
