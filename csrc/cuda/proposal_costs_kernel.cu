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
// (cuda_scratch_budget_bytes: BOXSUP_CUDA_SCRATCH_MB, default 2048) is split into groups that fit.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "../common/checks.h"
#include "../common/op_types.h"
#include "../common/proposal_math.h"
#include "device_utils.cuh"
#include "scratch_budget.h"

namespace boxsup {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 8;  // sum columns a lane folds at once in stage 4
constexpr unsigned long long kNone = ULLONG_MAX;

enum LogitType : int32_t { kLogitFloat = 0, kLogitHalf = 1, kLogitBFloat16 = 2 };

struct ImageMeta {
  const void* units;   // int32 or int64, as given
  const void* logits;  // float32, float16 or bfloat16, as given (each image in its own dtype)
  const int64_t* members;
  int64_t* area;  // this image's own outputs
  float* bbox;
  float* iou_box;
  float* iou_mask;
  float* mean_ce;
  int64_t pixel_begin;    // prefix over images of H * W (images with candidates only)
  int64_t cand_begin;     // prefix of N
  int64_t box_begin;      // prefix of M
  int64_t unit_begin;     // prefix of U (corners)
  int64_t sums_begin;     // prefix of (U + 1) * S (sums, column-major per image)
  int64_t column_begin;   // prefix of S (images with candidates only)
  int64_t scratch_begin;  // prefix of N * S
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
  int64_t* scratch;  // per candidate [S]: its folded sums
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

__device__ __forceinline__ int find_image(const ImageMeta* meta, int num_images, int64_t index, Index by) {
  return owning_image(num_images, index, [&](int i) { return begin_of(meta[i], by); });
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

struct AddOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MinOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a < b ? a : b;
  }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};

__global__ void box_prepare_kernel(Batch t, int64_t total_boxes) {
  const GridStride items = thread_items();
  for (int64_t i = items.first; i < total_boxes; i += items.step) {
    const ImageMeta& im = t.meta[find_image(t.meta, t.num_images, i, Index::kBox)];
    const int64_t m = i - im.box_begin;
    const int64_t label = t.labels[i];
    if (label < 0 || label >= im.num_classes) atomicMin(&t.status->bad_label, static_cast<unsigned long long>(i));
    if (!math::box_is_valid(t.boxes + 4 * i)) atomicMin(&t.status->bad_box, static_cast<unsigned long long>(i));
    math::box_info(t.boxes + 4 * i, t.labels + im.box_begin, m, im.height, im.width,
                   t.box_info + i * math::kBoxInfoFields);
  }
}

// ---------------------------------------------------------------------------------------------
// Stage 2, per pixel. Consecutive lanes that hold the same (image, unit) form a segment; each
// statistic is scanned over the segment and added by its last lane (the writer) with one atomic.

// One lane's place in its warp: its segment's first lane, and whether it writes the segment's sums
// (the last lane of a segment that holds a unit).
struct Segment {
  int lane, start;
  bool writer;
};

// Inactive lanes (no pixel, or a bad unit id) pass a key of their own, so they form their own segments.
__device__ __forceinline__ Segment warp_segment(int64_t key, int lane, bool active) {
  const int64_t prev = __shfl_up_sync(kFullMask, key, 1);
  const bool head = lane == 0 || key != prev;
  const unsigned heads = __ballot_sync(kFullMask, head);
  const int start = 31 - __clz(heads & (lane == 31 ? kFullMask : ((1u << (lane + 1)) - 1)));
  const bool tail = lane == 31 || ((heads >> (lane + 1)) & 1u);
  return {lane, start, tail && active};
}

// Where a writer adds its unit's statistics: column k at sums[k * rows], corner i at corners[i * corner_stride].
struct UnitSlot {
  int64_t* sums;
  int64_t rows;
  int32_t* corners;
  int64_t corner_stride;
};

// The unit of pixel p of image b; -1, with the image flagged, when its id is outside [0, U).
__device__ __forceinline__ int64_t checked_unit(const Batch& t, const ImageMeta& im, int b, int64_t p) {
  const int64_t u = load_unit(im.units, im.units_are_int64, p);
  if (u >= 0 && u < im.num_units) return u;
  atomicMin(&t.status->bad_unit_image, static_cast<unsigned long long>(b));
  return -1;
}

// Pixel count (column 0) and tight-box corners of each segment's unit.
__device__ __forceinline__ void add_count_and_corners(const Segment& s, const UnitSlot& slot, bool active, int32_t x,
                                                      int32_t y) {
  const int64_t cnt = segmented_scan<long long>(active ? 1 : 0, s.lane, s.start, AddOp());
  const int32_t mnx = segmented_scan<int32_t>(x, s.lane, s.start, MinOp());
  const int32_t mny = segmented_scan<int32_t>(y, s.lane, s.start, MinOp());
  const int32_t mxx = segmented_scan<int32_t>(x, s.lane, s.start, MaxOp());
  const int32_t mxy = segmented_scan<int32_t>(y, s.lane, s.start, MaxOp());
  if (s.writer) {
    atomic_add_int64(slot.sums, cnt);
    atomicMin(slot.corners, mnx);
    atomicMin(slot.corners + slot.corner_stride, mny);
    atomicMax(slot.corners + 2 * slot.corner_stride, mxx);
    atomicMax(slot.corners + 3 * slot.corner_stride, mxy);
  }
}

// Pixels inside box m (column 1 + m) of each segment's unit. The loop runs to the warp's largest box
// count so every lane takes part in each shuffle.
__device__ __forceinline__ void add_box_counts(const Batch& t, const ImageMeta& im, const Segment& s,
                                               const UnitSlot& slot, int my_boxes, int max_boxes, int32_t x,
                                               int32_t y) {
  const int64_t* info = t.box_info + im.box_begin * math::kBoxInfoFields;
  for (int m = 0; m < max_boxes; ++m) {
    const int64_t inside = (m < my_boxes && math::pixel_in_box(info + m * math::kBoxInfoFields, x, y)) ? 1 : 0;
    if (!__any_sync(kFullMask, inside)) continue;  // no lane in box m: nothing to add (warp-uniform)
    const int64_t sum = segmented_scan<long long>(inside, s.lane, s.start, AddOp());
    if (s.writer && m < my_boxes && sum > 0) atomic_add_int64(slot.sums + (1 + m) * slot.rows, sum);
  }
}

// Fixed-point CE sums (column 1 + M + m for each box m that owns a column) of each segment's unit.
// Only pixels of images with boxes read their logits (and can fail the finiteness check).
__device__ __forceinline__ void add_ce_sums(const Batch& t, const ImageMeta& im, int b, int64_t p, const Segment& s,
                                            const UnitSlot& slot, int my_boxes, int max_boxes) {
  const int64_t hw = static_cast<int64_t>(im.height) * im.width;
  const int64_t* info = t.box_info + im.box_begin * math::kBoxInfoFields;
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
    const int64_t sum = segmented_scan<long long>(fixed, s.lane, s.start, AddOp());
    if (s.writer && owns_column) atomic_add_int64(slot.sums + (1 + im.num_boxes + m) * slot.rows, sum);
  }
}

__global__ void unit_statistics_kernel(Batch t, int64_t total_pixels) {
  const int lane = threadIdx.x & 31;
  const GridStride warps = warp_aligned_thread_items();
  for (int64_t base = warps.first; base < total_pixels; base += warps.step) {
    const int64_t g = base + lane;
    const bool valid = g < total_pixels;
    const int b = find_image(t.meta, t.num_images, valid ? g : total_pixels - 1, Index::kPixel);
    const ImageMeta& im = t.meta[b];
    const int64_t p = (valid ? g : total_pixels - 1) - im.pixel_begin;
    const int32_t y = static_cast<int32_t>(p / im.width), x = static_cast<int32_t>(p % im.width);
    const int64_t u = valid ? checked_unit(t, im, b, p) : -1;
    const bool active = u >= 0;

    const Segment segment = warp_segment(active ? (static_cast<int64_t>(b) << 40) + u : -1 - lane, lane, active);
    const UnitSlot slot{t.sums + im.sums_begin + (u + 1), im.num_units + 1, t.corners + im.unit_begin + u,
                        t.total_units};
    add_count_and_corners(segment, slot, active, x, y);
    const int my_boxes = active ? im.num_boxes : 0;
    const int max_boxes = warp_max(my_boxes);
    if (max_boxes == 0) continue;
    add_box_counts(t, im, segment, slot, my_boxes, max_boxes, x, y);
    add_ce_sums(t, im, b, p, segment, slot, my_boxes, max_boxes);
  }
}

// Rows 1..U of each column hold per-unit sums (row 0 is zero); an inclusive scan over rows 0..U makes
// row u the sum over units < u. Integer additions, modular: exact in any order.
__global__ void prefix_scan_kernel(Batch t, int64_t total_columns) {
  const int lane = threadIdx.x & 31;
  const GridStride items = warp_items();
  for (int64_t w = items.first; w < total_columns; w += items.step) {
    const ImageMeta& im = t.meta[find_image(t.meta, t.num_images, w, Index::kColumn)];
    const int64_t rows = im.num_units + 1;
    unsigned long long* column =
        reinterpret_cast<unsigned long long*>(t.sums + im.sums_begin + (w - im.column_begin) * rows);
    unsigned long long carry = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += 32) {
      const int64_t r = r0 + lane;
      unsigned long long v = segmented_scan(r < rows ? column[r] : 0ull, lane, 0, AddOp());
      v += carry;
      if (r < rows) column[r] = v;
      carry = __shfl_sync(kFullMask, v, 31);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Stage 4, one warp per candidate.

// Folds candidate n's sums into folded[0 .. S) (written by lane 0, visible to the warp on return) and
// its corners into corner (every lane holds the warp's result). Lanes split the member words and fold
// their runs of set bits, kChunk sum columns at a time.
__device__ __forceinline__ void fold_candidate(const Batch& t, const ImageMeta& im, int64_t n, int lane,
                                               int64_t* folded, int64_t* corner) {
  const uint64_t* words = reinterpret_cast<const uint64_t*>(im.members) + n * im.num_words;
  const int64_t S = im.num_columns;
  const math::UnitTable table{t.sums + im.sums_begin, 1, im.num_units + 1, t.corners + im.unit_begin, t.total_units};
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
}

// Candidate n's outputs from its folded sums and corners: area and bbox (lane 0), and one
// (candidate, box) pair of iou_box, iou_mask and mean_ce per lane.
__device__ __forceinline__ void write_candidate(const Batch& t, const ImageMeta& im, int64_t n, int lane,
                                                const int64_t* folded, const int64_t* corner) {
  const int64_t M = im.num_boxes;
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
                       t.boxes + 4 * (im.box_begin + m), info[math::kPixels], im.iou_box + n * M + m,
                       im.iou_mask + n * M + m, im.mean_ce + n * M + m);
  }
}

__global__ void fold_candidates_kernel(Batch t, int64_t total_candidates) {
  const int lane = threadIdx.x & 31;
  const GridStride items = warp_items();
  for (int64_t c = items.first; c < total_candidates; c += items.step) {
    const ImageMeta& im = t.meta[find_image(t.meta, t.num_images, c, Index::kCandidate)];
    const int64_t n = c - im.cand_begin;
    int64_t* folded = t.scratch + im.scratch_begin + n * im.num_columns;
    int64_t corner[math::kCornerFields];
    fold_candidate(t, im, n, lane, folded, corner);
    write_candidate(t, im, n, lane, folded, corner);
    __syncwarp();  // the next candidate's lane-0 writes go to another row, but keep lanes together
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

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
              "proposal_costs", where, ": sizes beyond int32 (H = ", im.height, ", W = ", im.width,
              ", W64 = ", im.num_words, ", M = ", im.num_boxes, ", C = ", im.num_classes,
              ") are not supported on CUDA");
  const auto opts = at::TensorOptions().device(units.device());
  const int64_t N = im.num_candidates, M = im.num_boxes;
  im.area = at::empty({N}, opts.dtype(at::kLong));
  im.bbox = at::empty({N, 4}, opts.dtype(at::kFloat));
  im.iou_box = at::empty({N, M}, opts.dtype(at::kFloat));
  im.iou_mask = at::empty({N, M}, opts.dtype(at::kFloat));
  im.mean_ce = at::empty({N, M}, opts.dtype(at::kFloat));
  return im;
}

// What the kernels of a group cover and its tables hold: the totals over its images.
struct GroupSizes {
  int64_t pixels = 0, candidates = 0, boxes = 0, units = 0, sums = 0, columns = 0, scratch = 0;
};

// The table row of one image, whose tables start at `at` (the totals of the images before it): its
// pointers, offsets and fixed-point scales, from shapes alone (no synchronisation).
ImageMeta image_meta(const CudaImage& in, const GroupSizes& at) {
  ImageMeta m;
  m.units = in.units.data_ptr();
  m.logits = in.logits.data_ptr();
  m.members = in.members.data_ptr<int64_t>();
  m.area = in.area.data_ptr<int64_t>();
  m.bbox = in.bbox.data_ptr<float>();
  m.iou_box = in.iou_box.data_ptr<float>();
  m.iou_mask = in.iou_mask.data_ptr<float>();
  m.mean_ce = in.mean_ce.data_ptr<float>();
  m.pixel_begin = at.pixels;
  m.cand_begin = at.candidates;
  m.box_begin = at.boxes;
  m.unit_begin = at.units;
  m.sums_begin = at.sums;
  m.column_begin = at.columns;
  m.scratch_begin = at.scratch;
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
  m.logit_type = in.logits.scalar_type() == at::kFloat  ? kLogitFloat
                 : in.logits.scalar_type() == at::kHalf ? kLogitHalf
                                                        : kLogitBFloat16;
  return m;
}

// Adds one image to the totals. Images without candidates need no pixel pass, no sums and no scan
// (the CPU skips them too).
void add_image(const CudaImage& in, GroupSizes& sizes) {
  const bool has_work = in.num_candidates > 0;
  sizes.pixels += has_work ? in.height * in.width : 0;
  sizes.candidates += in.num_candidates;
  sizes.boxes += in.num_boxes;
  sizes.units += has_work ? in.num_units() : 0;
  sizes.sums += has_work ? (in.num_units() + 1) * in.num_columns() : 0;
  sizes.columns += has_work ? in.num_columns() : 0;
  sizes.scratch += in.num_candidates * in.num_columns();
}

// A group of images on the device, for its kernels: the packed upload (status, per-image NLL maxima,
// then the image table), the concatenated boxes and labels, and the scratch tables. The tensors
// stay alive with it while the kernels run.
struct GroupTables {
  std::vector<ImageMeta> meta;  // the host copy of the image table
  GroupSizes sizes;
  size_t head_bytes = 0;  // status and NLL maxima, at the start of `packed`
  at::Tensor host, packed, boxes, labels, box_info, sums, corners, scratch;
  Batch batch;
};

// Packs images [first, last) and allocates their tables. With boxes_only, only the box tables are
// sized: the label and box checks run, the other stages have no work.
GroupTables pack_group(const std::vector<CudaImage>& images, size_t first, size_t last, bool boxes_only) {
  const size_t B = last - first;
  const at::Device device = images[first].units.device();
  GroupTables g;
  g.meta.resize(B);
  std::vector<at::Tensor> box_parts, label_parts;
  for (size_t i = 0; i < B; ++i) {
    const CudaImage& in = images[first + i];
    g.meta[i] = image_meta(in, g.sizes);
    add_image(in, g.sizes);
    if (in.num_boxes > 0) {
      box_parts.push_back(in.boxes);
      label_parts.push_back(in.labels);
    }
  }

  // One packed upload: status, per-image NLL maxima, then the image table.
  g.head_bytes = sizeof(Status) + B * sizeof(unsigned long long);
  const size_t bytes = g.head_bytes + B * sizeof(ImageMeta);
  g.host = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* host = static_cast<uint8_t*>(g.host.data_ptr());
  const Status initial{kNone, kNone, kNone, kNone};
  std::memcpy(host, &initial, sizeof(Status));
  std::memset(host + sizeof(Status), 0, B * sizeof(unsigned long long));
  std::memcpy(host + g.head_bytes, g.meta.data(), B * sizeof(ImageMeta));
  g.packed = g.host.to(device, at::kByte, /*non_blocking=*/true, /*copy=*/false);

  const auto on_device = at::TensorOptions().device(device);
  GroupSizes& n = g.sizes;
  g.boxes = n.boxes > 0 ? at::cat(box_parts, 0).to(at::kDouble).contiguous()
                        : at::empty({0, 4}, on_device.dtype(at::kDouble));
  g.labels =
      n.boxes > 0 ? at::cat(label_parts, 0).to(at::kLong).contiguous() : at::empty({0}, on_device.dtype(at::kLong));
  g.box_info = at::empty({n.boxes, math::kBoxInfoFields}, on_device.dtype(at::kLong));
  if (boxes_only) n = GroupSizes{0, 0, n.boxes, 0, 0, 0, 0};
  g.sums = at::zeros({n.sums}, on_device.dtype(at::kLong));
  g.corners = at::empty({math::kCornerFields, n.units}, on_device.dtype(at::kInt));
  if (n.units > 0) {
    g.corners.narrow(0, 0, 2).fill_(math::kEmptyMin);
    g.corners.narrow(0, 2, 2).fill_(math::kEmptyMax);
  }
  g.scratch = at::empty({n.scratch}, on_device.dtype(at::kLong));

  uint8_t* base = static_cast<uint8_t*>(g.packed.data_ptr());
  Batch& t = g.batch;
  t.status = reinterpret_cast<Status*>(base);
  t.max_nll = reinterpret_cast<unsigned long long*>(base + sizeof(Status));
  t.meta = reinterpret_cast<const ImageMeta*>(base + g.head_bytes);
  t.num_images = static_cast<int>(B);
  t.boxes = g.boxes.data_ptr<double>();
  t.labels = g.labels.data_ptr<int64_t>();
  t.box_info = g.box_info.data_ptr<int64_t>();
  t.sums = g.sums.data_ptr<int64_t>();
  t.corners = g.corners.data_ptr<int32_t>();
  t.total_units = n.units;
  t.scratch = g.scratch.data_ptr<int64_t>();
  return g;
}

// The four stages, on the current stream; a stage with no work is not launched.
void launch_stages(const Batch& t, const GroupSizes& n) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (n.boxes > 0) {
    box_prepare_kernel<<<blocks_for(n.boxes, kThreads), kThreads, 0, stream>>>(t, n.boxes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (n.pixels > 0) {
    unit_statistics_kernel<<<blocks_for(n.pixels, kThreads), kThreads, 0, stream>>>(t, n.pixels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (n.columns > 0) {
    prefix_scan_kernel<<<blocks_for(n.columns, kThreads / 32), kThreads, 0, stream>>>(t, n.columns);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (n.candidates > 0) {
    fold_candidates_kernel<<<blocks_for(n.candidates, kThreads / 32), kThreads, 0, stream>>>(t, n.candidates);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// What the kernels report: the error status, and per image the bits of its largest pixel NLL above
// its bound (0: none).
struct GroupReport {
  Status status;
  std::vector<unsigned long long> above;
};

// The one synchronisation: the status and NLL maxima back to the host.
GroupReport read_report(const GroupTables& g) {
  const at::Tensor head = g.packed.narrow(0, 0, static_cast<int64_t>(g.head_bytes)).to(at::kCPU);
  const uint8_t* bytes = static_cast<const uint8_t*>(head.data_ptr());
  GroupReport report;
  std::memcpy(&report.status, bytes, sizeof(Status));
  report.above.resize(g.meta.size());
  std::memcpy(report.above.data(), bytes + sizeof(Status), report.above.size() * sizeof(unsigned long long));
  return report;
}

// Raises the errors the kernels found, in the CPU kernel's order: labels and boxes of the first image
// that has a bad one (the label first), then units and logits of the first image that has bad ones
// (units first).
void raise_errors(const Status& status, const GroupTables& g, const std::vector<CudaImage>& images, size_t first) {
  const size_t B = g.meta.size();
  auto image_of_box = [&](unsigned long long index) {
    size_t i = 0;
    while (i + 1 < B && g.meta[i + 1].box_begin <= static_cast<int64_t>(index)) ++i;
    while (g.meta[i].box_begin + images[first + i].num_boxes <= static_cast<int64_t>(index)) ++i;
    return i;
  };
  if (status.bad_label != kNone && (status.bad_box == kNone || status.bad_label <= status.bad_box)) {
    const size_t i = image_of_box(status.bad_label);
    const int64_t m = static_cast<int64_t>(status.bad_label) - g.meta[i].box_begin;
    fail_label(images[first + i].where, m, g.labels[status.bad_label].item<int64_t>(), g.meta[i].num_classes);
  }
  if (status.bad_box != kNone) {
    const size_t i = image_of_box(status.bad_box);
    const int64_t m = static_cast<int64_t>(status.bad_box) - g.meta[i].box_begin;
    const at::Tensor coordinates = g.boxes[status.bad_box].cpu();
    fail_box(images[first + i].where, m, coordinates.data_ptr<double>());
  }
  if (status.bad_unit_image != kNone && status.bad_unit_image <= status.bad_logit_image) {
    const CudaImage& in = images[first + status.bad_unit_image];
    fail_units(in.where, in.num_units());
  }
  if (status.bad_logit_image != kNone) fail_logits(images[first + status.bad_logit_image].where);
}

// Raises the NLL bound of each image whose largest pixel NLL went above it. Returns whether none did
// (the group's CE sums are exact).
bool raise_nll_bounds(const std::vector<unsigned long long>& above, std::vector<CudaImage>& images, size_t first) {
  bool exact = true;
  for (size_t i = 0; i < above.size(); ++i) {
    if (above[i] == 0) continue;
    double nll;
    std::memcpy(&nll, &above[i], sizeof(nll));
    images[first + i].nll_bound = nll;
    exact = false;
  }
  return exact;
}

// Runs images [first, last) through the four kernels. Returns false when an image's pixel NLL went
// above its fixed-point bound (that image's bound is raised; the caller runs the group again).
// With boxes_only, only the label and box checks run.
bool run_group(std::vector<CudaImage>& images, size_t first, size_t last, bool boxes_only) {
  const GroupTables group = pack_group(images, first, last, boxes_only);
  launch_stages(group.batch, group.sizes);
  const GroupReport report = read_report(group);
  raise_errors(report.status, group, images, first);
  return raise_nll_bounds(report.above, images, first);
}

// The end of the group that starts at `first`: the consecutive images whose scratch fits the budget
// (an image over it runs alone).
size_t group_end(const std::vector<CudaImage>& images, size_t first, int64_t scratch_budget) {
  size_t last = first + 1;
  int64_t bytes = images[first].scratch_bytes();
  while (last < images.size() && bytes + images[last].scratch_bytes() <= scratch_budget)
    bytes += images[last++].scratch_bytes();
  return last;
}

CostLists run_images(std::vector<CudaImage>& images, int64_t scratch_budget) {
  int64_t total = 0;
  for (const CudaImage& in : images) total += in.scratch_bytes();
  // A batch split into groups has every image's labels and boxes checked first, so that a bad box
  // anywhere is reported before a bad unit, as on the CPU.
  if (total > scratch_budget && images.size() > 1) run_group(images, 0, images.size(), /*boxes_only=*/true);
  for (size_t first = 0; first < images.size();) {
    const size_t last = group_end(images, first, scratch_budget);
    // A pixel NLL above the default bound (absurd logits) raises that image's bound, and the group
    // runs once more; the raised bounds fit every pixel, so a second miss is a bug.
    bool exact = run_group(images, first, last, /*boxes_only=*/false);
    if (!exact) exact = run_group(images, first, last, /*boxes_only=*/false);
    TORCH_CHECK(exact, "proposal_costs: CE bound not met");
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
  return run_images(images, cuda_scratch_budget_bytes());
}

CostTuple proposal_costs_cuda(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                              const at::Tensor& boxes, const at::Tensor& labels) {
  const std::string where = image_where(false, 0);
  check_image_args(units, members, logits, boxes, labels, where);
  const at::cuda::CUDAGuard guard(units.device());
  std::vector<CudaImage> images{make_image(units, members, logits, boxes, labels, where)};
  CostLists out = run_images(images, cuda_scratch_budget_bytes());
  return {std::get<0>(out)[0], std::get<1>(out)[0], std::get<2>(out)[0], std::get<3>(out)[0], std::get<4>(out)[0]};
}

}  // namespace
}  // namespace boxsup

TORCH_LIBRARY_IMPL(boxsup, CUDA, m) {
  m.impl("proposal_costs", &boxsup::proposal_costs_cuda);
  m.impl("proposal_costs_batched", &boxsup::proposal_costs_batched_cuda);
}
