// CUDA kernels of boxsup::pack_masks, unpack_masks and paint_labels.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../common/checks.h"
#include "../common/paint_inputs.h"
#include "../common/proposal_math.h"
#include "device_utils.cuh"

namespace boxsup {
namespace {

constexpr int kThreads = 256;

__global__ void pack_kernel(const bool* masks, int64_t length, int64_t words_per_row, int64_t total_words,
                            uint64_t* out) {
  const GridStride items = thread_items();
  for (int64_t k = items.first; k < total_words; k += items.step) {
    const int64_t n = k / words_per_row, w = k % words_per_row;
    const bool* bits = masks + n * length + w * 64;
    const int64_t count = min(static_cast<int64_t>(64), length - w * 64);
    uint64_t word = 0;
    for (int64_t b = 0; b < count; ++b) word |= static_cast<uint64_t>(bits[b]) << b;
    out[k] = word;
  }
}

__global__ void unpack_kernel(const uint64_t* words, int64_t words_per_row, int64_t length, int64_t total, bool* out) {
  const GridStride items = thread_items();
  for (int64_t k = items.first; k < total; k += items.step) {
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
  pack_kernel<<<blocks_for(N * W64, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
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
  unpack_kernel<<<blocks_for(out.numel(), kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint64_t*>(in.data_ptr<int64_t>()), in.size(1), length, out.numel(), out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Painting, batched: every image of a call in one launch per stage, no synchronisation but the final
// read of the units flag. Regions (one per box with a candidate, in box order) are painted by rank
// (math::paint_rank over their painted areas, computed on the device), so no host sort is needed.
struct PaintRegion {
  const uint64_t* row;     // member bits of the chosen candidate (nullptr: a box without a candidate)
  int64_t c0, c1, r0, r1;  // where it may paint (its box when clipping, else the image)
  int32_t label;
};

struct PaintImage {
  const void* units;
  uint8_t* out;
  int64_t pixel_begin, region_begin;
  int64_t height, width, words;
  int32_t units_are_int64, num_regions;  // regions with a candidate come first,
  int32_t num_unassigned;                // then the rectangles of boxes without one
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
  return owning_image(count, pixel, [&](int i) { return images[i].pixel_begin; });
}

__device__ __forceinline__ int64_t unit_at(const PaintImage& im, int64_t p) {
  return load_unit(im.units, im.units_are_int64, p);
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
  const GridStride warps = warp_aligned_thread_items();
  for (int64_t base = warps.first; base < total_pixels; base += warps.step) {
    const int64_t g = base + lane;
    const bool valid = g < total_pixels;
    const PaintImage& im = t.images[find_paint_image(t.images, t.num_images, valid ? g : total_pixels - 1)];
    const int64_t p = (valid ? g : total_pixels - 1) - im.pixel_begin;
    const int64_t unit = unit_at(im, p);
    if (valid && (unit < 0 || unit >= im.words * 64))
      atomicMin(t.bad_unit_image, static_cast<unsigned long long>(&im - t.images));
    const int64_t y = p / im.width, x = p % im.width;
    const int mine = valid ? im.num_regions : 0;
    const int most = warp_max(mine);
    for (int k = 0; k < most; ++k) {
      long long key = -1 - lane;
      if (k < mine && covers(t.regions[im.region_begin + k], unit, x, y, im.words)) key = im.region_begin + k;
      const unsigned peers = __match_any_sync(kFullMask, key);
      if (key >= 0 && lane == __ffs(peers) - 1) atomicAdd(t.area + key, static_cast<unsigned long long>(__popc(peers)));
    }
  }
}

__global__ void region_rank_kernel(PaintBatch t, int64_t total_regions) {
  const GridStride items = thread_items();
  for (int64_t k = items.first; k < total_regions; k += items.step) {
    const PaintImage& im = t.images[owning_image(t.num_images, k, [&](int i) { return t.images[i].region_begin; })];
    t.rank[k] = math::paint_rank(reinterpret_cast<const int64_t*>(t.area) + im.region_begin, im.num_regions,
                                 k - im.region_begin);
  }
}

// Each pixel takes the label of the covering region of highest rank; a pixel no region covers, inside
// the rectangle of a box without a candidate, takes `unassigned` (when >= 0); the rest is 0.
__global__ void paint_kernel(PaintBatch t, int64_t total_pixels) {
  const GridStride items = thread_items();
  for (int64_t g = items.first; g < total_pixels; g += items.step) {
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

// The regions of one image, appended to `regions`: those with a candidate (in box order), then,
// when `unassigned` >= 0, the rectangles of the boxes without one.
void add_regions(const PaintInputs& in, PaintImage& im, std::vector<PaintRegion>& regions) {
  const uint64_t* rows = reinterpret_cast<const uint64_t*>(in.members.data_ptr<int64_t>());
  im.region_begin = static_cast<int64_t>(regions.size());
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
}

// The host tables of a paint call: one PaintImage per image (writing into out[b]) and the regions.
struct PaintTables {
  std::vector<PaintImage> images;
  std::vector<PaintRegion> regions;
  int64_t pixels = 0;
};

PaintTables paint_tables(const std::vector<PaintInputs>& inputs, const std::vector<at::Tensor>& out) {
  const size_t B = inputs.size();
  PaintTables tables;
  tables.images.resize(B);
  for (size_t b = 0; b < B; ++b) {
    const PaintInputs& in = inputs[b];
    PaintImage& im = tables.images[b];
    im.units = in.units.data_ptr();
    im.out = out[b].data_ptr<uint8_t>();
    im.pixel_begin = tables.pixels;
    im.height = in.height;
    im.width = in.width;
    im.words = in.num_words;
    im.units_are_int64 = in.units.scalar_type() == at::kLong;
    add_regions(in, im, tables.regions);
    tables.pixels += in.height * in.width;
  }
  for (size_t b = 0; b + 1 < B; ++b)  // images without pixels are never found by a pixel index
    if (tables.images[b].height * tables.images[b].width == 0)
      tables.images[b].pixel_begin = tables.images[b + 1].pixel_begin;
  return tables;
}

// The inputs of one call share `unassigned` (prepare_paint_inputs stores it in each).
std::vector<at::Tensor> paint_batch(const std::vector<PaintInputs>& inputs) {
  const size_t B = inputs.size();
  std::vector<at::Tensor> out(B);
  if (B == 0) return out;
  const at::Device device = inputs[0].units.device();
  for (size_t b = 0; b < B; ++b)  // paint_kernel writes every pixel
    out[b] = at::empty({inputs[b].height, inputs[b].width}, inputs[b].units.options().dtype(at::kByte));
  const PaintTables tables = paint_tables(inputs, out);
  const int64_t pixels = tables.pixels;
  if (pixels == 0) return out;

  // One packed upload: the units flag, zeroed areas, then the image and region tables.
  const size_t R = tables.regions.size();
  const size_t flag_bytes = sizeof(unsigned long long), area_bytes = R * sizeof(unsigned long long);
  const size_t image_offset = flag_bytes + area_bytes, region_offset = image_offset + B * sizeof(PaintImage);
  const size_t bytes = region_offset + R * sizeof(PaintRegion);
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = static_cast<uint8_t*>(host.data_ptr());
  const unsigned long long none = ULLONG_MAX;
  std::memcpy(h, &none, flag_bytes);
  std::memset(h + flag_bytes, 0, area_bytes);
  std::memcpy(h + image_offset, tables.images.data(), B * sizeof(PaintImage));
  if (R) std::memcpy(h + region_offset, tables.regions.data(), R * sizeof(PaintRegion));
  const at::Tensor packed = host.to(device, at::kByte, /*non_blocking=*/true, /*copy=*/false);
  const at::Tensor rank = at::empty({static_cast<int64_t>(std::max<size_t>(R, 1))}, packed.options().dtype(at::kLong));
  uint8_t* d = static_cast<uint8_t*>(packed.data_ptr());
  PaintBatch t;
  t.images = reinterpret_cast<const PaintImage*>(d + image_offset);
  t.num_images = static_cast<int>(B);
  t.regions = reinterpret_cast<const PaintRegion*>(d + region_offset);
  t.area = reinterpret_cast<unsigned long long*>(d + flag_bytes);
  t.rank = rank.data_ptr<int64_t>();
  t.bad_unit_image = reinterpret_cast<unsigned long long*>(d);
  t.unassigned = static_cast<int32_t>(inputs[0].unassigned);

  const auto stream = at::cuda::getCurrentCUDAStream();
  region_area_kernel<<<blocks_for(pixels, kThreads), kThreads, 0, stream>>>(t, pixels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (R) {
    region_rank_kernel<<<blocks_for(static_cast<int64_t>(R), kThreads), kThreads, 0, stream>>>(t,
                                                                                               static_cast<int64_t>(R));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  paint_kernel<<<blocks_for(pixels, kThreads), kThreads, 0, stream>>>(t, pixels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The one synchronisation: was every unit id inside its members' width?
  const at::Tensor flag = packed.narrow(0, 0, static_cast<int64_t>(flag_bytes)).cpu();
  unsigned long long bad;
  std::memcpy(&bad, flag.data_ptr(), sizeof(bad));
  if (bad != none) fail_units(inputs[bad].where, inputs[bad].num_units());
  return out;
}

at::Tensor paint_labels_cuda(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                             const at::Tensor& labels, const std::optional<at::Tensor>& boxes, bool clip,
                             int64_t unassigned) {
  std::vector<PaintInputs> inputs{prepare_paint_inputs(units, members, chosen, labels, boxes, clip, unassigned, "")};
  const at::cuda::CUDAGuard guard(units.device());
  return paint_batch(inputs)[0];
}

std::vector<at::Tensor> paint_labels_batched_cuda(at::TensorList units, at::TensorList members, at::TensorList chosen,
                                                  at::TensorList labels, at::TensorList boxes, bool clip,
                                                  int64_t unassigned) {
  std::vector<PaintInputs> inputs = prepare_paint_batch(units, members, chosen, labels, boxes, clip, unassigned);
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
