// CUDA kernels of boxsup::proposal_costs and proposal_costs_batched.
//
// A batch of images of different sizes, candidate counts and logit dtypes runs in one launch per
// stage, with one packed upload of the per-image tables and one synchronisation (the error and
// overflow flags, read at the end):
//   1. box_prepare_kernel: per box, checks the label and coordinates and computes its pixel ranges,
//      pixel count and CE column (math::box_info, the CPU's function).
//   2. unit_statistics_kernel: one thread per pixel (consecutive pixels on consecutive lanes, so the
//      logits reads coalesce): math::logsumexp_classes and math::pixel_nll per pixel, then the runs of
//      lanes that share a unit are reduced with a segmented shuffle scan before one atomic per run.
//      Sums are int64 (counts and fixed-point CE, math::to_fixed), so the order of the atomics does not
//      change a bit: results are deterministic and equal the CPU kernel's.
//   3. prefix_scan_kernel: one warp per (image, column) turns per-unit sums into exclusive prefix sums.
//   4. fold_candidates_kernel: one warp per candidate; lanes split its bit words and fold the runs of
//      set bits with math::fold_sums / math::fold_corners, reduce with shuffles, and finalise with
//      math::finalize_bbox / math::finalize_box, the functions the CPU kernel calls.
// Each image gets its own output tensors. A batch whose scratch tables would exceed the budget
// (BOXSUP_CUDA_SCRATCH_MB, default 2048) is split into groups that fit.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../common/checks.h"
#include "../common/proposal_math.h"

namespace boxsup {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kChunk = 8;  // sum columns a lane folds at once in stage 4
constexpr unsigned long long kNone = ULLONG_MAX;

enum LogitType : int32_t { kLogitFloat = 0, kLogitHalf = 1, kLogitBFloat16 = 2 };

struct ImageMeta {
  const void* units;       // int32 or int64, as given
  const void* logits;      // float32, float16 or bfloat16, as given (each image in its own dtype)
  const int64_t* members;
  int64_t* area;           // this image's own outputs
  float* bbox;
  float* iou_box;
  float* iou_mask;
  float* mean_ce;
  int64_t pixel_begin;     // prefix over images of H * W (images with candidates only)
  int64_t cand_begin;      // prefix of N
  int64_t box_begin;       // prefix of M
  int64_t unit_begin;      // prefix of U (corners)
  int64_t sums_begin;      // prefix of (U + 1) * S (sums, column-major per image)
  int64_t column_begin;    // prefix of S (images with candidates only)
  int64_t scratch_begin;   // prefix of N * S
  int64_t num_units, num_columns;
  double ce_scale, ce_unscale, nll_bound;
  int32_t height, width, num_classes, num_boxes, num_words;
  int32_t units_are_int64, logit_type;
};

// Written by the kernels, read once at the end: the first offending box (flat index over the batch)
// and image of each error kind, kNone when none.
struct Status {
  unsigned long long bad_label, bad_box, bad_unit_image, bad_logit_image;
};

struct Batch {
  const ImageMeta* meta;
  int num_images;
  Status* status;
  unsigned long long* max_nll;  // [B] bits of the largest pixel NLL above the image's bound (0: none)
  const double* boxes;          // [sum M, 4]
  const int64_t* labels;        // [sum M]
  int64_t* box_info;            // [sum M, kBoxInfoFields]
  int64_t* sums;                // per image [S, U + 1]
  int32_t* corners;             // [4, sum U]
  int64_t total_units;
  int64_t* scratch;             // per candidate [S]: its folded sums
};

enum class Index { kPixel, kCandidate, kBox, kColumn };

__device__ __forceinline__ int64_t begin_of(const ImageMeta& m, Index by) {
  switch (by) {
    case Index::kPixel: return m.pixel_begin;
    case Index::kCandidate: return m.cand_begin;
    case Index::kBox: return m.box_begin;
    default: return m.column_begin;
  }
}

// The image that owns `index`: the last image whose begin <= index. Images with nothing of that kind
// share the next image's begin, so they are never picked.
__device__ __forceinline__ int find_image(const ImageMeta* meta, int num_images, int64_t index, Index by) {
  int lo = 0, hi = num_images - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (begin_of(meta[mid], by) <= index) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ float load_logit(const ImageMeta& im, int64_t index) {
  switch (im.logit_type) {
    case kLogitFloat: return static_cast<const float*>(im.logits)[index];
    case kLogitHalf: return static_cast<float>(static_cast<const c10::Half*>(im.logits)[index]);
    default: return static_cast<float>(static_cast<const c10::BFloat16*>(im.logits)[index]);
  }
}

__device__ __forceinline__ void atomic_add_int64(int64_t* address, int64_t value) {
  atomicAdd(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(value));
}

// Inclusive scan of v over the lanes of this lane's segment [start, lane].
template <typename T, typename Op>
__device__ __forceinline__ T segmented_scan(T v, int lane, int start, Op op) {
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const T other = __shfl_up_sync(kFullMask, v, offset);
    if (lane - offset >= start) v = op(v, other);
  }
  return v;
}

struct AddOp { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct MinOp { template <typename T> __device__ T operator()(T a, T b) const { return a < b ? a : b; } };
struct MaxOp { template <typename T> __device__ T operator()(T a, T b) const { return a > b ? a : b; } };

__global__ void box_prepare_kernel(Batch t, int64_t total_boxes) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total_boxes;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const ImageMeta& im = t.meta[find_image(t.meta, t.num_images, i, Index::kBox)];
    const int64_t m = i - im.box_begin;
    const int64_t label = t.labels[i];
    if (label < 0 || label >= im.num_classes) atomicMin(&t.status->bad_label, static_cast<unsigned long long>(i));
    if (!math::box_is_valid(t.boxes + 4 * i)) atomicMin(&t.status->bad_box, static_cast<unsigned long long>(i));
    math::box_info(t.boxes + 4 * i, t.labels + im.box_begin, m, im.height, im.width,
                   t.box_info + i * math::kBoxInfoFields);
  }
}

__global__ void unit_statistics_kernel(Batch t, int64_t total_pixels) {
  const int lane = threadIdx.x & 31;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + (threadIdx.x & ~31); base < total_pixels;
       base += warp_stride) {
    const int64_t g = base + lane;
    const bool valid = g < total_pixels;
    const int b = find_image(t.meta, t.num_images, valid ? g : total_pixels - 1, Index::kPixel);
    const ImageMeta& im = t.meta[b];
    const int64_t p = (valid ? g : total_pixels - 1) - im.pixel_begin;
    const int64_t hw = static_cast<int64_t>(im.height) * im.width;
    const int32_t y = static_cast<int32_t>(p / im.width), x = static_cast<int32_t>(p % im.width);
    int64_t u = -1;
    if (valid) {
      u = im.units_are_int64 ? static_cast<const int64_t*>(im.units)[p]
                             : static_cast<int64_t>(static_cast<const int32_t*>(im.units)[p]);
      if (u < 0 || u >= im.num_units) {
        atomicMin(&t.status->bad_unit_image, static_cast<unsigned long long>(b));
        u = -1;
      }
    }
    const bool active = valid && u >= 0;

    // Segments: runs of lanes holding the same (image, unit); inactive lanes are their own segments.
    const int64_t key = active ? (static_cast<int64_t>(b) << 40) + u : -1 - lane;
    const int64_t prev = __shfl_up_sync(kFullMask, key, 1);
    const bool head = lane == 0 || key != prev;
    const unsigned heads = __ballot_sync(kFullMask, head);
    const int start = 31 - __clz(heads & (lane == 31 ? kFullMask : ((1u << (lane + 1)) - 1)));
    const bool tail = lane == 31 || ((heads >> (lane + 1)) & 1u);
    const bool writer = tail && active;
    const int64_t rows = im.num_units + 1;
    int64_t* sums = t.sums + im.sums_begin + (u + 1);  // column k of unit u at sums[k * rows]
    int32_t* corners = t.corners + im.unit_begin + u;  // corner i at corners[i * total_units]

    const int64_t cnt = segmented_scan<long long>(active ? 1 : 0, lane, start, AddOp());
    const int32_t mnx = segmented_scan<int32_t>(x, lane, start, MinOp());
    const int32_t mny = segmented_scan<int32_t>(y, lane, start, MinOp());
    const int32_t mxx = segmented_scan<int32_t>(x, lane, start, MaxOp());
    const int32_t mxy = segmented_scan<int32_t>(y, lane, start, MaxOp());
    if (writer) {
      atomic_add_int64(sums, cnt);
      atomicMin(corners, mnx);
      atomicMin(corners + t.total_units, mny);
      atomicMax(corners + 2 * t.total_units, mxx);
      atomicMax(corners + 3 * t.total_units, mxy);
    }

    // The loops below run to the warp's largest box count so every lane takes part in each shuffle.
    const int my_boxes = active ? im.num_boxes : 0;
    int max_boxes = my_boxes;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) max_boxes = max(max_boxes, __shfl_xor_sync(kFullMask, max_boxes, offset));
    if (max_boxes == 0) continue;
    const int64_t* info = t.box_info + im.box_begin * math::kBoxInfoFields;
    for (int m = 0; m < max_boxes; ++m) {
      const int64_t inside = (m < my_boxes && math::pixel_in_box(info + m * math::kBoxInfoFields, x, y)) ? 1 : 0;
      if (!__any_sync(kFullMask, inside)) continue;  // no lane in box m: nothing to add (warp-uniform)
      const int64_t sum = segmented_scan<long long>(inside, lane, start, AddOp());
      if (writer && m < my_boxes && sum > 0) atomic_add_int64(sums + (1 + m) * rows, sum);
    }

    // Cross-entropy: only pixels of images with boxes read their logits (and can fail the check).
    float lse = 0.0f;
    bool finite = false;
    if (my_boxes > 0) {
      float check;
      lse = math::logsumexp_classes([&](int64_t c) { return load_logit(im, c * hw + p); },
                                    static_cast<int64_t>(im.num_classes), &check);
      finite = check == 0.0f;
      if (!finite) atomicMin(&t.status->bad_logit_image, static_cast<unsigned long long>(b));
    }
    for (int m = 0; m < max_boxes; ++m) {
      const bool owns_column = m < my_boxes && info[m * math::kBoxInfoFields + math::kSlot] == m;
      if (!__any_sync(kFullMask, owns_column)) continue;  // box m shares an earlier box's column (warp-uniform)
      int64_t fixed = 0;
      if (owns_column && finite) {
        const int64_t label = t.labels[im.box_begin + m];
        if (label >= 0 && label < im.num_classes) {
          const double nll = math::pixel_nll(lse, load_logit(im, label * hw + p));
          if (nll > im.nll_bound) atomicMax(t.max_nll + b, static_cast<unsigned long long>(__double_as_longlong(nll)));
          fixed = math::to_fixed(nll, im.ce_scale);
        }
      }
      const int64_t sum = segmented_scan<long long>(fixed, lane, start, AddOp());
      if (writer && owns_column) atomic_add_int64(sums + (1 + im.num_boxes + m) * rows, sum);
    }
  }
}

// Rows 1..U of each column hold per-unit sums (row 0 is zero); an inclusive scan over rows 0..U makes
// row u the sum over units < u. Integer additions, modular: exact in any order.
__global__ void prefix_scan_kernel(Batch t, int64_t total_columns) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; w < total_columns;
       w += warps) {
    const ImageMeta& im = t.meta[find_image(t.meta, t.num_images, w, Index::kColumn)];
    const int64_t rows = im.num_units + 1;
    unsigned long long* column =
        reinterpret_cast<unsigned long long*>(t.sums + im.sums_begin + (w - im.column_begin) * rows);
    unsigned long long carry = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += 32) {
      const int64_t r = r0 + lane;
      unsigned long long v = r < rows ? column[r] : 0ull;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned long long other = __shfl_up_sync(kFullMask, v, offset);
        if (lane >= offset) v += other;
      }
      v += carry;
      if (r < rows) column[r] = v;
      carry = __shfl_sync(kFullMask, v, 31);
    }
  }
}

__device__ __forceinline__ int64_t warp_sum(int64_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ int64_t warp_min(int64_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = min(v, static_cast<int64_t>(__shfl_xor_sync(kFullMask, v, offset)));
  return v;
}

__device__ __forceinline__ int64_t warp_max(int64_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, static_cast<int64_t>(__shfl_xor_sync(kFullMask, v, offset)));
  return v;
}

__global__ void fold_candidates_kernel(Batch t, int64_t total_candidates) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; c < total_candidates;
       c += warps) {
    const ImageMeta& im = t.meta[find_image(t.meta, t.num_images, c, Index::kCandidate)];
    const int64_t n = c - im.cand_begin;
    const uint64_t* words = reinterpret_cast<const uint64_t*>(im.members) + n * im.num_words;
    const int64_t S = im.num_columns, M = im.num_boxes;
    const math::UnitTable table{t.sums + im.sums_begin, 1, im.num_units + 1, t.corners + im.unit_begin,
                                t.total_units};
    int64_t* folded = t.scratch + im.scratch_begin + n * S;

    int64_t corner[math::kCornerFields];
    math::init_corners(corner);
    for (int64_t k0 = 0; k0 < S; k0 += kChunk) {
      const int64_t k1 = min(S, k0 + kChunk);
      int64_t acc[kChunk];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) acc[i] = 0;
      for (int64_t w = lane; w < im.num_words; w += 32) {
        uint64_t bits = words[w];
        while (bits) {
          int s, e;
          math::next_run(&bits, &s, &e);
          const int64_t first = w * 64 + s, last = w * 64 + e;
          math::fold_sums(table, first, last, k0, k1, acc);
          if (k0 == 0) math::fold_corners(table, first, last, corner);
        }
      }
#pragma unroll
      for (int i = 0; i < kChunk; ++i) acc[i] = warp_sum(acc[i]);
      if (lane == 0)
        for (int64_t k = k0; k < k1; ++k) folded[k] = acc[k - k0];
    }
    corner[0] = warp_min(corner[0]);
    corner[1] = warp_min(corner[1]);
    corner[2] = warp_max(corner[2]);
    corner[3] = warp_max(corner[3]);
    __syncwarp();  // lane 0's `folded` writes are visible to the warp from here

    const int64_t count = folded[0];
    int64_t area;
    float bbox[4];
    double box[4];
    math::finalize_bbox(count, corner, &area, bbox, box);
    if (lane == 0) {
      im.area[n] = area;
      for (int i = 0; i < 4; ++i) im.bbox[4 * n + i] = bbox[i];
    }
    for (int64_t m = lane; m < M; m += 32) {
      const int64_t* info = t.box_info + (im.box_begin + m) * math::kBoxInfoFields;
      math::finalize_box(count, box, folded[1 + m], folded[1 + M + info[math::kSlot]], im.ce_unscale,
                         t.boxes + 4 * (im.box_begin + m), info[math::kPixels], im.iou_box + n * M + m, im.iou_mask + n * M + m,
                         im.mean_ce + n * M + m);
    }
    __syncwarp();  // the next candidate's lane-0 writes go to another row, but keep lanes together
  }
}

// One image of a call, checked, with its own outputs.
struct CudaImage : ImageDims {
  at::Tensor units, members, logits, boxes, labels;
  at::Tensor area, bbox, iou_box, iou_mask, mean_ce;
  std::string where;
  double nll_bound = math::kDefaultNllBound;

  // Device bytes this image needs beyond its inputs and outputs (sums, corners, fold scratch).
  int64_t scratch_bytes() const {
    return ((num_units() + 1) * num_columns() + num_candidates * num_columns()) * 8 + num_units() * 16;
  }
};

CudaImage make_image(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                     const at::Tensor& boxes, const at::Tensor& labels, const std::string& where) {
  CudaImage im;
  im.where = where;
  im.units = units.contiguous();
  im.members = members.contiguous();
  im.logits = logits.contiguous();
  im.boxes = boxes;
  im.labels = labels;
  static_cast<ImageDims&>(im) = image_dims(units, members, logits.size(0), boxes.size(0));
  TORCH_CHECK(im.height < INT32_MAX && im.width < INT32_MAX && im.num_words < INT32_MAX / 64 &&
                  im.num_boxes < INT32_MAX / 2 && im.num_classes < INT32_MAX,
              "proposal_costs", where, ": sizes beyond int32 (H = ", im.height, ", W = ", im.width, ", W64 = ",
              im.num_words, ", M = ", im.num_boxes, ", C = ", im.num_classes, ") are not supported on CUDA");
  const auto opts = at::TensorOptions().device(units.device());
  const int64_t N = im.num_candidates, M = im.num_boxes;
  im.area = at::empty({N}, opts.dtype(at::kLong));
  im.bbox = at::empty({N, 4}, opts.dtype(at::kFloat));
  im.iou_box = at::empty({N, M}, opts.dtype(at::kFloat));
  im.iou_mask = at::empty({N, M}, opts.dtype(at::kFloat));
  im.mean_ce = at::empty({N, M}, opts.dtype(at::kFloat));
  return im;
}

int64_t scratch_budget_bytes() {
  const char* env = std::getenv("BOXSUP_CUDA_SCRATCH_MB");
  const long long mb = env ? std::atoll(env) : 2048;
  return static_cast<int64_t>(mb > 0 ? mb : 2048) << 20;
}

int64_t blocks_for(int64_t work, int64_t per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, sms * 32));
}

// Runs images [first, last) through the four kernels. Returns false when an image's pixel NLL went
// above its fixed-point bound (that image's bound is raised; the caller runs the group again).
// With boxes_only, only the label and box checks run (the whole batch, before it is split into groups,
// so that a bad box anywhere is reported before a bad unit, as on the CPU).
bool run_group(std::vector<CudaImage>& images, size_t first, size_t last, bool boxes_only = false) {
  const size_t B = last - first;
  const at::Device device = images[first].units.device();
  const auto stream = at::cuda::getCurrentCUDAStream();

  // Host tables from shapes alone (no synchronisation): offsets, pointers, fixed-point scales.
  std::vector<ImageMeta> meta(B);
  std::vector<at::Tensor> box_parts, label_parts;
  int64_t pixels = 0, cands = 0, boxes = 0, units = 0, sums = 0, columns = 0, scratch = 0;
  for (size_t i = 0; i < B; ++i) {
    CudaImage& in = images[first + i];
    ImageMeta& m = meta[i];
    const bool has_work = in.num_candidates > 0;
    m.units = in.units.data_ptr();
    m.logits = in.logits.data_ptr();
    m.members = in.members.data_ptr<int64_t>();
    m.area = in.area.data_ptr<int64_t>();
    m.bbox = in.bbox.data_ptr<float>();
    m.iou_box = in.iou_box.data_ptr<float>();
    m.iou_mask = in.iou_mask.data_ptr<float>();
    m.mean_ce = in.mean_ce.data_ptr<float>();
    m.pixel_begin = pixels;
    m.cand_begin = cands;
    m.box_begin = boxes;
    m.unit_begin = units;
    m.sums_begin = sums;
    m.column_begin = columns;
    m.scratch_begin = scratch;
    m.num_units = in.num_units();
    m.num_columns = in.num_columns();
    const int exponent = math::ce_exponent(in.height * in.width, in.nll_bound);
    m.ce_scale = std::ldexp(1.0, exponent);
    m.ce_unscale = std::ldexp(1.0, -exponent);
    m.nll_bound = in.nll_bound;
    m.height = static_cast<int32_t>(in.height);
    m.width = static_cast<int32_t>(in.width);
    m.num_classes = static_cast<int32_t>(in.num_classes);
    m.num_boxes = static_cast<int32_t>(in.num_boxes);
    m.num_words = static_cast<int32_t>(in.num_words);
    m.units_are_int64 = in.units.scalar_type() == at::kLong;
    m.logit_type = in.logits.scalar_type() == at::kFloat ? kLogitFloat
                   : in.logits.scalar_type() == at::kHalf ? kLogitHalf : kLogitBFloat16;
    // Images without candidates need no pixel pass, no sums and no scan (the CPU skips them too).
    pixels += has_work ? in.height * in.width : 0;
    cands += in.num_candidates;
    boxes += in.num_boxes;
    units += has_work ? m.num_units : 0;
    sums += has_work ? (m.num_units + 1) * m.num_columns : 0;
    columns += has_work ? m.num_columns : 0;
    scratch += in.num_candidates * m.num_columns;
    if (in.num_boxes > 0) {
      box_parts.push_back(in.boxes);
      label_parts.push_back(in.labels);
    }
  }

  // One packed upload: status, per-image NLL maxima, then the image table.
  const size_t head_bytes = sizeof(Status) + B * sizeof(unsigned long long);
  const size_t bytes = head_bytes + B * sizeof(ImageMeta);
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  Status initial{kNone, kNone, kNone, kNone};
  std::memcpy(host.data_ptr(), &initial, sizeof(Status));
  std::memset(static_cast<uint8_t*>(host.data_ptr()) + sizeof(Status), 0, B * sizeof(unsigned long long));
  std::memcpy(static_cast<uint8_t*>(host.data_ptr()) + head_bytes, meta.data(), B * sizeof(ImageMeta));
  const at::Tensor packed = host.to(device, at::kByte, /*non_blocking=*/true, /*copy=*/false);

  const auto on_device = at::TensorOptions().device(device);
  const at::Tensor all_boxes =
      boxes > 0 ? at::cat(box_parts, 0).to(at::kDouble).contiguous() : at::empty({0, 4}, on_device.dtype(at::kDouble));
  const at::Tensor all_labels =
      boxes > 0 ? at::cat(label_parts, 0).to(at::kLong).contiguous() : at::empty({0}, on_device.dtype(at::kLong));
  at::Tensor box_info = at::empty({boxes, math::kBoxInfoFields}, on_device.dtype(at::kLong));
  if (boxes_only) pixels = units = sums = columns = cands = scratch = 0;
  at::Tensor sums_table = at::zeros({sums}, on_device.dtype(at::kLong));
  at::Tensor corners = at::empty({math::kCornerFields, units}, on_device.dtype(at::kInt));
  if (units > 0) {
    corners.narrow(0, 0, 2).fill_(math::kEmptyMin);
    corners.narrow(0, 2, 2).fill_(math::kEmptyMax);
  }
  at::Tensor scratch_table = at::empty({scratch}, on_device.dtype(at::kLong));

  Batch t;
  uint8_t* base = static_cast<uint8_t*>(packed.data_ptr());
  t.status = reinterpret_cast<Status*>(base);
  t.max_nll = reinterpret_cast<unsigned long long*>(base + sizeof(Status));
  t.meta = reinterpret_cast<const ImageMeta*>(base + head_bytes);
  t.num_images = static_cast<int>(B);
  t.boxes = all_boxes.data_ptr<double>();
  t.labels = all_labels.data_ptr<int64_t>();
  t.box_info = box_info.data_ptr<int64_t>();
  t.sums = sums_table.data_ptr<int64_t>();
  t.corners = corners.data_ptr<int32_t>();
  t.total_units = units;
  t.scratch = scratch_table.data_ptr<int64_t>();

  if (boxes > 0) {
    box_prepare_kernel<<<blocks_for(boxes, kThreads), kThreads, 0, stream>>>(t, boxes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (pixels > 0) {
    unit_statistics_kernel<<<blocks_for(pixels, kThreads), kThreads, 0, stream>>>(t, pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (columns > 0) {
    prefix_scan_kernel<<<blocks_for(columns, kThreads / 32), kThreads, 0, stream>>>(t, columns);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (cands > 0) {
    fold_candidates_kernel<<<blocks_for(cands, kThreads / 32), kThreads, 0, stream>>>(t, cands);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The one synchronisation: status and NLL maxima back to the host.
  const at::Tensor head = packed.narrow(0, 0, static_cast<int64_t>(head_bytes)).to(at::kCPU);
  Status status;
  std::memcpy(&status, head.data_ptr(), sizeof(Status));
  std::vector<unsigned long long> above(B);
  std::memcpy(above.data(), static_cast<const uint8_t*>(head.data_ptr()) + sizeof(Status), B * sizeof(unsigned long long));

  // Errors in the CPU kernel's order: labels and boxes of the first image that has a bad one (the
  // label first), then units and logits of the first image that has bad ones (units first).
  auto image_of_box = [&](unsigned long long index) {
    size_t i = 0;
    while (i + 1 < B && meta[i + 1].box_begin <= static_cast<int64_t>(index)) ++i;
    while (meta[i].box_begin + images[first + i].num_boxes <= static_cast<int64_t>(index)) ++i;
    return i;
  };
  if (status.bad_label != kNone && (status.bad_box == kNone || status.bad_label <= status.bad_box)) {
    const size_t i = image_of_box(status.bad_label);
    const int64_t m = static_cast<int64_t>(status.bad_label) - meta[i].box_begin;
    fail_label(images[first + i].where, m, all_labels[status.bad_label].item<int64_t>(), meta[i].num_classes);
  }
  if (status.bad_box != kNone) {
    const size_t i = image_of_box(status.bad_box);
    const int64_t m = static_cast<int64_t>(status.bad_box) - meta[i].box_begin;
    const at::Tensor coordinates = all_boxes[status.bad_box].cpu();
    fail_box(images[first + i].where, m, coordinates.data_ptr<double>());
  }
  if (status.bad_unit_image != kNone && status.bad_unit_image <= status.bad_logit_image) {
    const CudaImage& in = images[first + status.bad_unit_image];
    fail_units(in.where, in.num_units());
  }
  if (status.bad_logit_image != kNone) fail_logits(images[first + status.bad_logit_image].where);

  bool exact = true;
  for (size_t i = 0; i < B; ++i) {
    if (above[i] == 0) continue;
    double nll;
    std::memcpy(&nll, &above[i], sizeof(nll));
    images[first + i].nll_bound = nll;
    exact = false;
  }
  return exact;
}

CostLists run_images(std::vector<CudaImage>& images) {
  // Groups of consecutive images whose scratch fits the budget (an image over it runs alone).
  const int64_t budget = scratch_budget_bytes();
  int64_t total = 0;
  for (const CudaImage& in : images) total += in.scratch_bytes();
  if (total > budget && images.size() > 1) run_group(images, 0, images.size(), /*boxes_only=*/true);
  size_t first = 0;
  while (first < images.size()) {
    size_t last = first + 1;
    int64_t bytes = images[first].scratch_bytes();
    while (last < images.size() && bytes + images[last].scratch_bytes() <= budget) bytes += images[last++].scratch_bytes();
    // A pixel NLL above the default bound (absurd logits) runs the group once more with bounds that fit.
    if (!run_group(images, first, last)) TORCH_CHECK(run_group(images, first, last), "proposal_costs: CE bound not met");
    first = last;
  }
  return cost_lists(images);
}

CostLists proposal_costs_batched_cuda(at::TensorList units, at::TensorList members, at::TensorList logits,
                                      at::TensorList boxes, at::TensorList labels) {
  check_batch_args(units, members, logits, boxes, labels);  // devices first, then the guard
  if (units.empty()) return CostLists();
  const at::cuda::CUDAGuard guard(units[0].device());
  std::vector<CudaImage> images;
  images.reserve(units.size());
  for (size_t b = 0; b < units.size(); ++b)
    images.push_back(make_image(units[b], members[b], logits[b], boxes[b], labels[b], image_where(true, b)));
  return run_images(images);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> proposal_costs_cuda(
    const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits, const at::Tensor& boxes,
    const at::Tensor& labels) {
  const std::string where = image_where(false, 0);
  check_image_args(units, members, logits, boxes, labels, where);
  const at::cuda::CUDAGuard guard(units.device());
  std::vector<CudaImage> images{make_image(units, members, logits, boxes, labels, where)};
  CostLists out = run_images(images);
  return {std::get<0>(out)[0], std::get<1>(out)[0], std::get<2>(out)[0], std::get<3>(out)[0], std::get<4>(out)[0]};
}

}  // namespace
}  // namespace boxsup

TORCH_LIBRARY_IMPL(boxsup, CUDA, m) {
  m.impl("proposal_costs", &boxsup::proposal_costs_cuda);
  m.impl("proposal_costs_batched", &boxsup::proposal_costs_batched_cuda);
}
