// CUDA kernels of boxsup::pack_masks, unpack_masks and paint_labels.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../common/checks.h"
#include "../common/proposal_math.h"

namespace boxsup {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

int64_t blocks_for(int64_t work) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, sms * 32));
}

__global__ void pack_kernel(const bool* masks, int64_t length, int64_t words_per_row, int64_t total_words,
                            uint64_t* out) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total_words;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = k / words_per_row, w = k % words_per_row;
    const bool* bits = masks + n * length + w * 64;
    const int64_t count = min(static_cast<int64_t>(64), length - w * 64);
    uint64_t word = 0;
    for (int64_t b = 0; b < count; ++b) word |= static_cast<uint64_t>(bits[b]) << b;
    out[k] = word;
  }
}

__global__ void unpack_kernel(const uint64_t* words, int64_t words_per_row, int64_t length, int64_t total,
                              bool* out) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = k / length, i = k % length;
    out[k] = (words[n * words_per_row + (i >> 6)] >> (i & 63)) & 1;
  }
}

at::Tensor pack_masks_cuda(const at::Tensor& masks) {
  check_pack_masks_input(masks);
  const at::cuda::CUDAGuard guard(masks.device());
  const at::Tensor in = masks.contiguous();
  const int64_t N = in.size(0), L = in.size(1), W64 = (L + 63) / 64;
  at::Tensor out = at::zeros({N, W64}, in.options().dtype(at::kLong));
  if (N * W64 == 0) return out;
  pack_kernel<<<blocks_for(N * W64), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      in.data_ptr<bool>(), L, W64, N * W64, reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor unpack_masks_cuda(const at::Tensor& words, int64_t length) {
  check_unpack_masks_input(words, length);
  const at::cuda::CUDAGuard guard(words.device());
  const at::Tensor in = words.contiguous();
  at::Tensor out = at::empty({in.size(0), length}, in.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  unpack_kernel<<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint64_t*>(in.data_ptr<int64_t>()), in.size(1), length, out.numel(),
      out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

struct PaintRegion {
  const uint64_t* row;  // member bits of the chosen candidate
  int64_t c0, c1, r0, r1;
  int32_t label;
};

__device__ __forceinline__ bool covers(const PaintRegion& r, int64_t unit, int64_t x, int64_t y, int64_t words) {
  return x >= r.c0 && x < r.c1 && y >= r.r0 && y < r.r1 && unit >= 0 && (unit >> 6) < words &&
         ((r.row[unit >> 6] >> (unit & 63)) & 1);
}

// Painted area of every region: one ballot per warp and region, one atomic per warp.
template <typename unit_t>
__global__ void region_area_kernel(const unit_t* units, int64_t height, int64_t width, int64_t words,
                                   const PaintRegion* regions, int num_regions, unsigned long long* area,
                                   int* bad_unit) {
  const int lane = threadIdx.x & 31;
  const int64_t total = height * width;
  for (int64_t base = blockIdx.x * static_cast<int64_t>(blockDim.x) + (threadIdx.x & ~31); base < total;
       base += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = base + lane;
    const bool valid = p < total;
    const int64_t unit = valid ? static_cast<int64_t>(units[p]) : -1;
    if (valid && (unit < 0 || unit >= words * 64)) atomicExch(bad_unit, 1);
    const int64_t y = valid ? p / width : 0, x = valid ? p % width : 0;
    for (int k = 0; k < num_regions; ++k) {
      const unsigned hits = __ballot_sync(kFullMask, valid && covers(regions[k], unit, x, y, words));
      if (lane == 0 && hits) atomicAdd(area + k, static_cast<unsigned long long>(__popc(hits)));
    }
  }
}

// Each pixel takes the label of the last region in paint order (the smallest) that covers it.
template <typename unit_t>
__global__ void paint_kernel(const unit_t* units, int64_t height, int64_t width, int64_t words,
                             const PaintRegion* regions, const int32_t* order, int num_regions, uint8_t* out) {
  const int64_t total = height * width;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t unit = static_cast<int64_t>(units[p]);
    const int64_t y = p / width, x = p % width;
    uint8_t label = 0;
    for (int k = num_regions - 1; k >= 0; --k) {
      const PaintRegion& r = regions[order[k]];
      if (covers(r, unit, x, y, words)) {
        label = static_cast<uint8_t>(r.label);
        break;
      }
    }
    out[p] = label;
  }
}

// Pixels still background inside the rectangle of a box without a candidate take `label`.
__global__ void mark_unassigned_kernel(int64_t height, int64_t width, const int64_t* rects, int num_rects,
                                       uint8_t label, uint8_t* out) {
  const int64_t total = height * width;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (out[p] != 0) continue;
    const int64_t y = p / width, x = p % width;
    for (int k = 0; k < num_rects; ++k) {
      if (math::pixel_in_box(rects + k * math::kBoxInfoFields, x, y)) {
        out[p] = label;
        break;
      }
    }
  }
}

at::Tensor paint_labels_cuda(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                             const at::Tensor& labels, const c10::optional<at::Tensor>& boxes, bool clip,
                             int64_t unassigned) {
  const PaintInputs in = prepare_paint_inputs(units, members, chosen, labels, boxes, clip, unassigned);
  const at::cuda::CUDAGuard guard(units.device());
  const int64_t H = in.height, W = in.width, W64 = in.num_words;
  at::Tensor out = at::zeros({H, W}, in.units.options().dtype(at::kByte));
  const uint64_t* member_rows = reinterpret_cast<const uint64_t*>(in.members.data_ptr<int64_t>());
  std::vector<PaintRegion> regions;
  for (size_t m = 0; m < in.chosen.size(); ++m) {
    if (in.chosen[m] < 0) continue;
    PaintRegion r{member_rows + in.chosen[m] * W64, 0, W, 0, H, static_cast<int32_t>(in.labels[m])};
    if (in.clip) {
      const int64_t* info = in.box_info.data() + m * math::kBoxInfoFields;
      r.c0 = info[0];
      r.c1 = info[1];
      r.r0 = info[2];
      r.r1 = info[3];
    }
    regions.push_back(r);
  }
  const int R = static_cast<int>(regions.size());
  if (H * W == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor regions_dev = at::empty({static_cast<int64_t>(std::max(R, 1) * sizeof(PaintRegion))},
                                     at::TensorOptions().dtype(at::kByte));
  if (R) std::memcpy(regions_dev.data_ptr(), regions.data(), R * sizeof(PaintRegion));
  regions_dev = regions_dev.to(units.device());
  const PaintRegion* regions_ptr = reinterpret_cast<const PaintRegion*>(regions_dev.data_ptr());
  at::Tensor area = at::zeros({std::max(R, 1)}, out.options().dtype(at::kLong));
  at::Tensor bad = at::zeros({1}, out.options().dtype(at::kInt));
  AT_DISPATCH_INDEX_TYPES(in.units.scalar_type(), "paint_labels_cuda", [&] {
    region_area_kernel<index_t><<<blocks_for(H * W), kThreads, 0, stream>>>(
        in.units.data_ptr<index_t>(), H, W, W64, regions_ptr, R,
        reinterpret_cast<unsigned long long*>(area.data_ptr<int64_t>()), bad.data_ptr<int32_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (bad.item<int32_t>() != 0) fail_units("", W64 * 64);
  const at::Tensor area_host = area.cpu();
  const int64_t* a = area_host.data_ptr<int64_t>();
  // The shared paint order over the regions (region k is the k-th box with a candidate).
  const std::vector<int64_t> region_chosen(R, 0);
  const std::vector<int64_t> order = paint_order(region_chosen, std::vector<int64_t>(a, a + R));
  at::Tensor order_host = at::empty({std::max(R, 1)}, at::TensorOptions().dtype(at::kInt));
  std::copy(order.begin(), order.end(), order_host.data_ptr<int32_t>());
  const at::Tensor order_dev = order_host.to(units.device());
  AT_DISPATCH_INDEX_TYPES(in.units.scalar_type(), "paint_labels_cuda", [&] {
    paint_kernel<index_t><<<blocks_for(H * W), kThreads, 0, stream>>>(
        in.units.data_ptr<index_t>(), H, W, W64, regions_ptr, order_dev.data_ptr<int32_t>(), R,
        out.data_ptr<uint8_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (in.unassigned >= 0) {
    std::vector<int64_t> rects;
    for (size_t m = 0; m < in.chosen.size(); ++m)
      if (in.chosen[m] < 0)
        rects.insert(rects.end(), in.box_info.begin() + m * math::kBoxInfoFields,
                     in.box_info.begin() + (m + 1) * math::kBoxInfoFields);
    if (!rects.empty()) {
      at::Tensor rects_host = at::empty({static_cast<int64_t>(rects.size())}, at::TensorOptions().dtype(at::kLong));
      std::copy(rects.begin(), rects.end(), rects_host.data_ptr<int64_t>());
      const at::Tensor rects_dev = rects_host.to(units.device());
      mark_unassigned_kernel<<<blocks_for(H * W), kThreads, 0, stream>>>(
          H, W, rects_dev.data_ptr<int64_t>(), static_cast<int>(rects.size() / math::kBoxInfoFields),
          static_cast<uint8_t>(in.unassigned), out.data_ptr<uint8_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  return out;
}

}  // namespace
}  // namespace boxsup

TORCH_LIBRARY_IMPL(boxsup, CUDA, m) {
  m.impl("pack_masks", &boxsup::pack_masks_cuda);
  m.impl("unpack_masks", &boxsup::unpack_masks_cuda);
  m.impl("paint_labels", &boxsup::paint_labels_cuda);
}
