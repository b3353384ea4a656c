// CUDA kernels of boxsup::pack_masks, unpack_masks and paint_labels.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
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

// Painting, batched: every image of a call in one launch per stage, no synchronisation but the final
// read of the units flag. Regions (one per box with a candidate, in box order) are painted by rank
// (math::paint_rank over their painted areas, computed on the device), so no host sort is needed.
struct PaintRegion {
  const uint64_t* row;  // member bits of the chosen candidate (nullptr: a box without a candidate)
  int64_t c0, c1, r0, r1;  // where it may paint (its box when clipping, else the image)
  int32_t label;
};

struct PaintImage {
  const void* units;
  uint8_t* out;
  int64_t pixel_begin, region_begin;
  int64_t height, width, words;
  int32_t units_are_int64, num_regions;   // regions with a candidate come first,
  int32_t num_unassigned;                 // then the rectangles of boxes without one
};

struct PaintBatch {
  const PaintImage* images;
  int num_images;
  const PaintRegion* regions;
  unsigned long long* area;  // [sum R], zeroed
  int64_t* rank;             // [sum R]
  unsigned long long* bad_unit_image;
  int32_t unassigned;
};

__device__ __forceinline__ int find_paint_image(const PaintImage* images, int count, int64_t pixel) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (images[mid].pixel_begin <= pixel) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ int64_t unit_at(const PaintImage& im, int64_t p) {
  return im.units_are_int64 ? static_cast<const int64_t*>(im.units)[p]
                            : static_cast<int64_t>(static_cast<const int32_t*>(im.units)[p]);
}

__device__ __forceinline__ bool in_rect(const PaintRegion& r, int64_t x, int64_t y) {
  return x >= r.c0 && x < r.c1 && y >= r.r0 && y < r.r1;
}

__device__ __forceinline__ bool covers(const PaintRegion& r, int64_t unit, int64_t x, int64_t y, int64_t words) {
  return in_rect(r, x, y) && unit >= 0 && (unit >> 6) < words && ((r.row[unit >> 6] >> (unit & 63)) & 1);
}

// Painted area of every region: lanes that hit the same region add once per warp.
__global__ void region_area_kernel(PaintBatch t, int64_t total_pixels) {
  const int lane = threadIdx.x & 31;
  for (int64_t base = blockIdx.x * static_cast<int64_t>(blockDim.x) + (threadIdx.x & ~31); base < total_pixels;
       base += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = base + lane;
    const bool valid = g < total_pixels;
    const PaintImage& im = t.images[find_paint_image(t.images, t.num_images, valid ? g : total_pixels - 1)];
    const int64_t p = (valid ? g : total_pixels - 1) - im.pixel_begin;
    const int64_t unit = unit_at(im, p);
    if (valid && (unit < 0 || unit >= im.words * 64))
      atomicMin(t.bad_unit_image, static_cast<unsigned long long>(&im - t.images));
    const int64_t y = p / im.width, x = p % im.width;
    const int mine = valid ? im.num_regions : 0;
    int most = mine;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) most = max(most, __shfl_xor_sync(kFullMask, most, offset));
    for (int k = 0; k < most; ++k) {
      long long key = -1 - lane;
      if (k < mine && covers(t.regions[im.region_begin + k], unit, x, y, im.words)) key = im.region_begin + k;
      const unsigned peers = __match_any_sync(kFullMask, key);
      if (key >= 0 && lane == __ffs(peers) - 1) atomicAdd(t.area + key, static_cast<unsigned long long>(__popc(peers)));
    }
  }
}

__global__ void region_rank_kernel(PaintBatch t, int64_t total_regions) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total_regions;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int lo = 0, hi = t.num_images - 1;  // the image whose regions hold k
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (t.images[mid].region_begin <= k) lo = mid; else hi = mid - 1;
    }
    const PaintImage& im = t.images[lo];
    t.rank[k] = math::paint_rank(reinterpret_cast<const int64_t*>(t.area) + im.region_begin, im.num_regions,
                                 k - im.region_begin);
  }
}

// Each pixel takes the label of the covering region of highest rank; a pixel no region covers, inside
// the rectangle of a box without a candidate, takes `unassigned` (when >= 0); the rest is 0.
__global__ void paint_kernel(PaintBatch t, int64_t total_pixels) {
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < total_pixels;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PaintImage& im = t.images[find_paint_image(t.images, t.num_images, g)];
    const int64_t p = g - im.pixel_begin;
    const int64_t unit = unit_at(im, p);
    const int64_t y = p / im.width, x = p % im.width;
    const PaintRegion* regions = t.regions + im.region_begin;
    int64_t best = -1;
    uint8_t label = 0;
    for (int k = 0; k < im.num_regions; ++k) {
      const int64_t rank = t.rank[im.region_begin + k];
      if (rank > best && covers(regions[k], unit, x, y, im.words)) {
        best = rank;
        label = static_cast<uint8_t>(regions[k].label);
      }
    }
    if (t.unassigned >= 0 && math::takes_unassigned(label)) {
      for (int k = 0; k < im.num_unassigned; ++k) {
        if (in_rect(regions[im.num_regions + k], x, y)) {
          label = static_cast<uint8_t>(t.unassigned);
          break;
        }
      }
    }
    im.out[p] = label;
  }
}

// The inputs of one call share `unassigned` (prepare_paint_inputs stores it in each).
std::vector<at::Tensor> paint_batch(const std::vector<PaintInputs>& inputs) {
  const size_t B = inputs.size();
  std::vector<at::Tensor> out(B);
  if (B == 0) return out;
  const at::Device device = inputs[0].units.device();
  std::vector<PaintImage> images(B);
  std::vector<PaintRegion> regions;
  int64_t pixels = 0;
  for (size_t b = 0; b < B; ++b) {
    const PaintInputs& in = inputs[b];
    out[b] = at::empty({in.height, in.width}, in.units.options().dtype(at::kByte));  // paint_kernel writes every pixel
    PaintImage& im = images[b];
    im.units = in.units.data_ptr();
    im.out = out[b].data_ptr<uint8_t>();
    im.pixel_begin = pixels;
    im.region_begin = static_cast<int64_t>(regions.size());
    im.height = in.height;
    im.width = in.width;
    im.words = in.num_words;
    im.units_are_int64 = in.units.scalar_type() == at::kLong;
    const uint64_t* rows = reinterpret_cast<const uint64_t*>(in.members.data_ptr<int64_t>());
    for (int pass = 0; pass < 2; ++pass) {  // regions with a candidate, then boxes without one
      for (size_t m = 0; m < in.chosen.size(); ++m) {
        if ((in.chosen[m] >= 0) != (pass == 0)) continue;
        if (pass == 1 && in.unassigned < 0) break;
        const PixelRect rect = paint_rect(in, m, in.clip || pass == 1);
        regions.push_back({pass == 0 ? rows + in.chosen[m] * in.num_words : nullptr, rect.col_begin, rect.col_end,
                           rect.row_begin, rect.row_end, static_cast<int32_t>(in.labels[m])});
      }
      if (pass == 0) im.num_regions = static_cast<int32_t>(regions.size() - im.region_begin);
    }
    im.num_unassigned = static_cast<int32_t>(regions.size() - im.region_begin) - im.num_regions;
    pixels += in.height * in.width;
  }
  for (size_t b = 0; b + 1 < B; ++b)  // images without pixels are never found by a pixel index
    if (images[b].height * images[b].width == 0) images[b].pixel_begin = images[b + 1].pixel_begin;
  if (pixels == 0) return out;

  // One packed upload: the units flag, zeroed areas, then the image and region tables.
  const size_t R = regions.size();
  const size_t flag_bytes = sizeof(unsigned long long), area_bytes = R * sizeof(unsigned long long);
  const size_t image_offset = flag_bytes + area_bytes, region_offset = image_offset + B * sizeof(PaintImage);
  const size_t bytes = region_offset + R * sizeof(PaintRegion);
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = static_cast<uint8_t*>(host.data_ptr());
  const unsigned long long none = ULLONG_MAX;
  std::memcpy(h, &none, flag_bytes);
  std::memset(h + flag_bytes, 0, area_bytes);
  std::memcpy(h + image_offset, images.data(), B * sizeof(PaintImage));
  if (R) std::memcpy(h + region_offset, regions.data(), R * sizeof(PaintRegion));
  const at::Tensor packed = host.to(device, at::kByte, /*non_blocking=*/true, /*copy=*/false);
  const at::Tensor rank = at::empty({static_cast<int64_t>(std::max<size_t>(R, 1))}, packed.options().dtype(at::kLong));
  uint8_t* d = static_cast<uint8_t*>(packed.data_ptr());
  PaintBatch t{reinterpret_cast<const PaintImage*>(d + image_offset), static_cast<int>(B),
               reinterpret_cast<const PaintRegion*>(d + region_offset), reinterpret_cast<unsigned long long*>(d + flag_bytes),
               rank.data_ptr<int64_t>(), reinterpret_cast<unsigned long long*>(d), static_cast<int32_t>(inputs[0].unassigned)};
  const auto stream = at::cuda::getCurrentCUDAStream();
  region_area_kernel<<<blocks_for(pixels), kThreads, 0, stream>>>(t, pixels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (R) {
    region_rank_kernel<<<blocks_for(static_cast<int64_t>(R)), kThreads, 0, stream>>>(t, static_cast<int64_t>(R));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  paint_kernel<<<blocks_for(pixels), kThreads, 0, stream>>>(t, pixels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The one synchronisation: was every unit id inside its members' width?
  const at::Tensor flag = packed.narrow(0, 0, static_cast<int64_t>(flag_bytes)).cpu();
  unsigned long long bad;
  std::memcpy(&bad, flag.data_ptr(), sizeof(bad));
  if (bad != none) fail_units(inputs[bad].where, inputs[bad].num_units());
  return out;
}

at::Tensor paint_labels_cuda(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                             const at::Tensor& labels, const c10::optional<at::Tensor>& boxes, bool clip,
                             int64_t unassigned) {
  std::vector<PaintInputs> inputs{prepare_paint_inputs(units, members, chosen, labels, boxes, clip, unassigned, "")};
  const at::cuda::CUDAGuard guard(units.device());
  return paint_batch(inputs)[0];
}

std::vector<at::Tensor> paint_labels_batched_cuda(at::TensorList units, at::TensorList members, at::TensorList chosen,
                                                  at::TensorList labels, at::TensorList boxes, bool clip,
                                                  int64_t unassigned) {
  check_paint_batch_args(units, members, chosen, labels, boxes);
  std::vector<PaintInputs> inputs;
  for (size_t b = 0; b < units.size(); ++b)
    inputs.push_back(prepare_paint_inputs(units[b], members[b], chosen[b], labels[b], boxes[b], clip, unassigned,
                                          image_where(true, b)));
  if (inputs.empty()) return {};
  const at::cuda::CUDAGuard guard(units[0].device());
  return paint_batch(inputs);
}

}  // namespace
}  // namespace boxsup

TORCH_LIBRARY_IMPL(boxsup, CUDA, m) {
  m.impl("pack_masks", &boxsup::pack_masks_cuda);
  m.impl("unpack_masks", &boxsup::unpack_masks_cuda);
  m.impl("paint_labels", &boxsup::paint_labels_cuda);
  m.impl("paint_labels_batched", &boxsup::paint_labels_batched_cuda);
}
