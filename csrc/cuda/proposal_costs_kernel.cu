// CUDA kernels of boxsup::proposal_costs and proposal_costs_batched.
//
// A batch of images of different sizes runs in one launch per stage. Stage 1 maps one thread to
// one pixel (consecutive pixels to consecutive lanes, so logits reads coalesce), computes the
// log-sum-exp in one online pass and reduces each warp's runs of equal units with a segmented
// shuffle scan before one atomic per run. Stage 2 maps one warp to one candidate: lanes split its
// bit words, fold the unit statistics of the set bits, reduce with shuffles, and lane 0 finalises
// with the same math::finalize_candidate the CPU kernel calls.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <climits>
#include <vector>

#include "../common/checks.h"
#include "../common/proposal_math.h"

namespace boxsup {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kChunk = 8;  // per-box / per-label sums a lane folds at once in stage 2

struct ImageMeta {
  const void* units;      // int32 or int64, as given (no conversion pass)
  int32_t units_are_int64;
  const void* logits;
  const int64_t* members;
  int64_t pixel_begin;    // prefix over images of H * W
  int64_t cand_begin;     // prefix of N
  int64_t unit_begin;     // prefix of U_alloc (count / min / max arrays)
  int64_t inbox_begin;    // prefix of U_alloc * M
  int64_t ce_begin;       // prefix of U_alloc * J
  int64_t box_begin;      // prefix of M (boxes, ranges, slots, pixel counts)
  int64_t label_begin;    // prefix of J
  int64_t nm_begin;       // prefix of N * M (outputs)
  int64_t scratch_begin;  // prefix of N * (5 + M)
  int64_t scratch_ce_begin;  // prefix of N * J
  int64_t num_candidates, num_units;
  int32_t height, width, num_classes, num_boxes, num_labels, num_words;
};

struct DeviceTables {
  const ImageMeta* meta;
  int num_images;
  const double* boxes;          // [sum M, 4]
  const int64_t* box_ranges;    // [sum M, 4]: col begin, col end, row begin, row end
  const int32_t* label_slot;    // [sum M]
  const int64_t* box_pixels;    // [sum M]
  const int64_t* labels;        // [sum J] distinct labels
  int32_t* count;               // [sum U]
  int32_t* min_x;
  int32_t* min_y;
  int32_t* max_x;
  int32_t* max_y;
  int32_t* inbox;               // [sum U * M]
  double* ce;                   // [sum U * J]
  int* bad_unit;
  int* bad_logit;
};

__device__ __forceinline__ int find_image(const ImageMeta* meta, int num_images, int64_t index, bool by_pixel) {
  int lo = 0, hi = num_images - 1;
  while (lo < hi) {  // last image whose begin <= index
    const int mid = (lo + hi + 1) >> 1;
    const int64_t begin = by_pixel ? meta[mid].pixel_begin : meta[mid].cand_begin;
    if (begin <= index) lo = mid; else hi = mid - 1;
  }
  return lo;
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

template <typename scalar_t>
__global__ void unit_statistics_kernel(DeviceTables t, int64_t total_pixels) {
  const int lane = threadIdx.x & 31;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + (threadIdx.x & ~31); base < total_pixels;
       base += warp_stride) {
    const int64_t g = base + lane;
    const bool valid = g < total_pixels;
    const int b = find_image(t.meta, t.num_images, valid ? g : total_pixels - 1, true);
    const ImageMeta& im = t.meta[b];
    const int64_t p = (valid ? g : total_pixels - 1) - im.pixel_begin;
    const int64_t hw = static_cast<int64_t>(im.height) * im.width;
    const int32_t y = static_cast<int32_t>(p / im.width), x = static_cast<int32_t>(p % im.width);
    int64_t u = -1;
    if (valid) {
      u = im.units_are_int64 ? static_cast<const int64_t*>(im.units)[p]
                             : static_cast<int64_t>(static_cast<const int32_t*>(im.units)[p]);
    }
    if (valid && (u < 0 || u >= im.num_units)) {
      atomicExch(t.bad_unit, 1);
      u = -1;
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
    const int64_t unit = im.unit_begin + u;

    const int32_t cnt = segmented_scan<int32_t>(active ? 1 : 0, lane, start, AddOp());
    const int32_t mnx = segmented_scan<int32_t>(x, lane, start, MinOp());
    const int32_t mxx = segmented_scan<int32_t>(x, lane, start, MaxOp());
    const int32_t mny = segmented_scan<int32_t>(y, lane, start, MinOp());
    const int32_t mxy = segmented_scan<int32_t>(y, lane, start, MaxOp());
    if (writer) {
      atomicAdd(t.count + unit, cnt);
      atomicMin(t.min_x + unit, mnx);
      atomicMax(t.max_x + unit, mxx);
      atomicMin(t.min_y + unit, mny);
      atomicMax(t.max_y + unit, mxy);
    }

    // Loops below run to the warp's largest count so every lane takes part in each shuffle.
    int max_boxes = active ? im.num_boxes : 0;
    int max_labels = active ? im.num_labels : 0;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      max_boxes = max(max_boxes, __shfl_xor_sync(kFullMask, max_boxes, offset));
      max_labels = max(max_labels, __shfl_xor_sync(kFullMask, max_labels, offset));
    }
    for (int m = 0; m < max_boxes; ++m) {
      int32_t inside = 0;
      if (active && m < im.num_boxes) {
        const int64_t* r = t.box_ranges + 4 * (im.box_begin + m);
        inside = x >= r[0] && x < r[1] && y >= r[2] && y < r[3];
      }
      const int32_t sum = segmented_scan<int32_t>(inside, lane, start, AddOp());
      if (writer && m < im.num_boxes && sum > 0) atomicAdd(t.inbox + im.inbox_begin + u * im.num_boxes + m, sum);
    }
    if (max_labels == 0) continue;

    // Online log-sum-exp over the classes: one read of the pixel's logits.
    float lse = 0.0f;
    bool finite = true;
    const scalar_t* logits = static_cast<const scalar_t*>(im.logits);
    if (active) {
      float mx = -INFINITY, s = 0.0f;
      for (int c = 0; c < im.num_classes; ++c) {
        const float v = static_cast<float>(logits[c * hw + p]);
        finite = finite && isfinite(v);
        if (v > mx) {
          s = s * expf(mx - v) + 1.0f;
          mx = v;
        } else {
          s += expf(v - mx);
        }
      }
      lse = mx + logf(s);
      if (!finite) atomicExch(t.bad_logit, 1);
    }
    for (int j = 0; j < max_labels; ++j) {
      double nll = 0.0;
      if (active && finite && j < im.num_labels) {
        const int64_t label = t.labels[im.label_begin + j];
        nll = static_cast<double>(lse - static_cast<float>(logits[label * hw + p]));
      }
      const double sum = segmented_scan<double>(nll, lane, start, AddOp());
      if (writer && j < im.num_labels) atomicAdd(t.ce + im.ce_begin + u * im.num_labels + j, sum);
    }
  }
}

struct FoldOutputs {
  int64_t* area;
  float* bbox;
  float* iou_box;
  float* iou_mask;
  float* mean_ce;
  int64_t* scratch;     // [sum N * (5 + M)]
  double* scratch_ce;   // [sum N * J]
};

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ int64_t warp_reduce_int(int64_t v, int op) {  // 0 sum, 1 min, 2 max
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const int64_t o = __shfl_xor_sync(kFullMask, v, offset);
    v = op == 0 ? v + o : (op == 1 ? (o < v ? o : v) : (o > v ? o : v));
  }
  return v;
}

__global__ void fold_candidates_kernel(DeviceTables t, FoldOutputs out, int64_t total_candidates) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; c < total_candidates;
       c += warps) {
    const int b = find_image(t.meta, t.num_images, c, false);
    const ImageMeta& im = t.meta[b];
    const int64_t n = c - im.cand_begin;
    const uint64_t* words = reinterpret_cast<const uint64_t*>(im.members) + n * im.num_words;
    const int M = im.num_boxes, J = im.num_labels;
    int64_t* acc = out.scratch + im.scratch_begin + n * (math::kUnitIntFields + M);
    double* ce_acc = out.scratch_ce + im.scratch_ce_begin + n * J;

    int64_t count = 0, mnx = math::kEmptyMin, mny = math::kEmptyMin, mxx = math::kEmptyMax, mxy = math::kEmptyMax;
    for (int w = lane; w < im.num_words; w += 32) {
      uint64_t bits = words[w];
      while (bits) {
        const int64_t u = im.unit_begin + static_cast<int64_t>(w) * 64 + (__ffsll(static_cast<long long>(bits)) - 1);
        bits &= bits - 1;
        const int32_t k = t.count[u];
        if (k == 0) continue;
        count += k;
        mnx = min(mnx, static_cast<int64_t>(t.min_x[u]));
        mny = min(mny, static_cast<int64_t>(t.min_y[u]));
        mxx = max(mxx, static_cast<int64_t>(t.max_x[u]));
        mxy = max(mxy, static_cast<int64_t>(t.max_y[u]));
      }
    }
    count = warp_reduce_int(count, 0);
    mnx = warp_reduce_int(mnx, 1);
    mny = warp_reduce_int(mny, 1);
    mxx = warp_reduce_int(mxx, 2);
    mxy = warp_reduce_int(mxy, 2);
    if (lane == 0) {
      acc[math::kCount] = count;
      acc[math::kMinX] = mnx;
      acc[math::kMinY] = mny;
      acc[math::kMaxX] = mxx;
      acc[math::kMaxY] = mxy;
    }
    // Per-box in-box counts and per-label CE sums, kChunk at a time.
    for (int k0 = 0; k0 < M + J; k0 += kChunk) {
      double sums[kChunk];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) sums[i] = 0.0;
      for (int w = lane; w < im.num_words; w += 32) {
        uint64_t bits = words[w];
        while (bits) {
          const int64_t local = static_cast<int64_t>(w) * 64 + (__ffsll(static_cast<long long>(bits)) - 1);
          bits &= bits - 1;
#pragma unroll
          for (int i = 0; i < kChunk; ++i) {
            const int k = k0 + i;
            if (k < M) sums[i] += t.inbox[im.inbox_begin + local * M + k];
            else if (k < M + J) sums[i] += t.ce[im.ce_begin + local * J + (k - M)];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const double s = warp_sum(sums[i]);
        const int k = k0 + i;
        if (lane == 0 && k < M) acc[math::kUnitIntFields + k] = static_cast<int64_t>(s + 0.5);
        else if (lane == 0 && k < M + J) ce_acc[k - M] = s;
      }
    }
    if (lane == 0) {
      const int64_t box = im.box_begin;
      math::finalize_candidate(acc, ce_acc, t.boxes + 4 * box, t.label_slot + box, t.box_pixels + box, M,
                               out.area + c, out.bbox + 4 * c, out.iou_box + im.nm_begin + n * M,
                               out.iou_mask + im.nm_begin + n * M, out.mean_ce + im.nm_begin + n * M);
    }
  }
}

template <typename T>
at::Tensor to_device(const std::vector<T>& host, at::ScalarType dtype, const at::Device& device) {
  at::Tensor cpu = at::empty({static_cast<int64_t>(host.size())}, at::TensorOptions().dtype(dtype));
  if (!host.empty()) std::memcpy(cpu.data_ptr(), host.data(), host.size() * sizeof(T));
  return cpu.to(device, /*non_blocking=*/false);
}

CostLists proposal_costs_batched_cuda(at::TensorList units, at::TensorList members, at::TensorList logits,
                                      at::TensorList boxes, at::TensorList labels) {
  CostLists result;
  if (units.empty() && members.empty() && logits.empty() && boxes.empty() && labels.empty()) return result;
  const at::cuda::CUDAGuard guard(units.empty() ? at::Device(at::kCUDA) : units[0].device());
  std::vector<ImageInputs> inputs = prepare_batch_inputs(units, members, logits, boxes, labels);
  const size_t B = inputs.size();
  const at::Device device = inputs[0].units.device();
  const at::ScalarType logit_type = inputs[0].logits.scalar_type();
  std::vector<ImageMeta> meta(B);
  std::vector<double> box_values;
  std::vector<int64_t> box_ranges, box_pixels, distinct;
  std::vector<int32_t> slots;
  std::vector<at::Tensor> keep_alive;
  int64_t pixels = 0, cands = 0, unit_total = 0, inbox_total = 0, ce_total = 0, nm_total = 0, scratch = 0,
          scratch_ce = 0;
  for (size_t b = 0; b < B; ++b) {
    ImageInputs& in = inputs[b];
    at::Tensor lg = in.logits.scalar_type() == logit_type ? in.logits : in.logits.to(logit_type).contiguous();
    keep_alive.push_back(lg);
    ImageMeta& m = meta[b];
    const int64_t M = in.num_boxes, J = static_cast<int64_t>(in.distinct_labels.size());
    m.units = in.units.data_ptr();
    m.units_are_int64 = in.units.scalar_type() == at::kLong;
    m.logits = lg.data_ptr();
    m.members = in.members.data_ptr<int64_t>();
    m.pixel_begin = pixels;
    m.cand_begin = cands;
    m.unit_begin = unit_total;
    m.inbox_begin = inbox_total;
    m.ce_begin = ce_total;
    m.box_begin = static_cast<int64_t>(slots.size());
    m.label_begin = static_cast<int64_t>(distinct.size());
    m.nm_begin = nm_total;
    m.scratch_begin = scratch;
    m.scratch_ce_begin = scratch_ce;
    m.num_candidates = in.num_candidates;
    m.num_units = in.num_words * 64;
    m.height = static_cast<int32_t>(in.height);
    m.width = static_cast<int32_t>(in.width);
    m.num_classes = static_cast<int32_t>(in.num_classes);
    m.num_boxes = static_cast<int32_t>(M);
    m.num_labels = static_cast<int32_t>(J);
    m.num_words = static_cast<int32_t>(in.num_words);
    for (int64_t k = 0; k < M; ++k) {
      const double* box = in.boxes_host.data() + 4 * k;
      int64_t c0, c1, r0, r1;
      math::pixel_range(box[0], box[2], in.width, &c0, &c1);
      math::pixel_range(box[1], box[3], in.height, &r0, &r1);
      box_ranges.insert(box_ranges.end(), {c0, c1, r0, r1});
    }
    box_values.insert(box_values.end(), in.boxes_host.begin(), in.boxes_host.end());
    box_pixels.insert(box_pixels.end(), in.box_pixels.begin(), in.box_pixels.end());
    slots.insert(slots.end(), in.label_slot.begin(), in.label_slot.end());
    distinct.insert(distinct.end(), in.distinct_labels.begin(), in.distinct_labels.end());
    pixels += in.num_candidates > 0 ? in.height * in.width : 0;  // images without candidates need no pass
    if (in.num_candidates == 0) m.pixel_begin = pixels;  // empty pixel range
    cands += in.num_candidates;
    unit_total += m.num_units;
    inbox_total += m.num_units * M;
    ce_total += m.num_units * J;
    nm_total += in.num_candidates * M;
    scratch += in.num_candidates * (math::kUnitIntFields + M);
    scratch_ce += in.num_candidates * J;
  }
  // find_image picks the last image whose begin <= index: give images without pixels (or
  // candidates) the begin of the next image so they are never picked.
  for (int b = static_cast<int>(B) - 2; b >= 0; --b) {
    if (inputs[b].num_candidates == 0) meta[b].pixel_begin = meta[b + 1].pixel_begin;
  }

  const auto i32 = at::TensorOptions().dtype(at::kInt).device(device);
  at::Tensor meta_dev = at::empty({static_cast<int64_t>(B * sizeof(ImageMeta))}, at::TensorOptions().dtype(at::kByte));
  std::memcpy(meta_dev.data_ptr(), meta.data(), B * sizeof(ImageMeta));
  meta_dev = meta_dev.to(device);
  at::Tensor boxes_dev = to_device(box_values, at::kDouble, device);
  at::Tensor ranges_dev = to_device(box_ranges, at::kLong, device);
  at::Tensor slots_dev = to_device(slots, at::kInt, device);
  at::Tensor pixels_dev = to_device(box_pixels, at::kLong, device);
  at::Tensor labels_dev = to_device(distinct, at::kLong, device);
  at::Tensor count = at::zeros({unit_total}, i32);
  at::Tensor min_x = at::full({unit_total}, math::kEmptyMin, i32);
  at::Tensor min_y = at::full({unit_total}, math::kEmptyMin, i32);
  at::Tensor max_x = at::full({unit_total}, math::kEmptyMax, i32);
  at::Tensor max_y = at::full({unit_total}, math::kEmptyMax, i32);
  at::Tensor inbox = at::zeros({inbox_total}, i32);
  at::Tensor ce = at::zeros({ce_total}, i32.dtype(at::kDouble));
  at::Tensor flags = at::zeros({2}, i32);

  DeviceTables t;
  t.meta = reinterpret_cast<const ImageMeta*>(meta_dev.data_ptr());
  t.num_images = static_cast<int>(B);
  t.boxes = boxes_dev.data_ptr<double>();
  t.box_ranges = ranges_dev.data_ptr<int64_t>();
  t.label_slot = slots_dev.data_ptr<int32_t>();
  t.box_pixels = pixels_dev.data_ptr<int64_t>();
  t.labels = labels_dev.data_ptr<int64_t>();
  t.count = count.data_ptr<int32_t>();
  t.min_x = min_x.data_ptr<int32_t>();
  t.min_y = min_y.data_ptr<int32_t>();
  t.max_x = max_x.data_ptr<int32_t>();
  t.max_y = max_y.data_ptr<int32_t>();
  t.inbox = inbox.data_ptr<int32_t>();
  t.ce = ce.data_ptr<double>();
  t.bad_unit = flags.data_ptr<int32_t>();
  t.bad_logit = flags.data_ptr<int32_t>() + 1;

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  if (pixels > 0) {
    const int64_t blocks = std::min<int64_t>((pixels + kThreads - 1) / kThreads, static_cast<int64_t>(sms) * 32);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logit_type, "proposal_costs_cuda", [&] {
      unit_statistics_kernel<scalar_t><<<static_cast<int>(blocks), kThreads, 0, stream>>>(t, pixels);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor flags_host = flags.cpu();
  TORCH_CHECK(flags_host[0].item<int32_t>() == 0, "units has ids outside [0, 64 * members.size(1)): members is ",
              "narrower than the units need, or units has negative ids");
  TORCH_CHECK(flags_host[1].item<int32_t>() == 0, "logits must be finite; found NaN or inf");

  const auto opts = at::TensorOptions().device(device);
  at::Tensor area = at::empty({cands}, opts.dtype(at::kLong));
  at::Tensor bbox = at::empty({cands, 4}, opts.dtype(at::kFloat));
  at::Tensor iou_box = at::empty({nm_total}, opts.dtype(at::kFloat));
  at::Tensor iou_mask = at::empty({nm_total}, opts.dtype(at::kFloat));
  at::Tensor mean_ce = at::empty({nm_total}, opts.dtype(at::kFloat));
  at::Tensor scratch_int = at::empty({scratch}, opts.dtype(at::kLong));
  at::Tensor scratch_double = at::empty({scratch_ce}, opts.dtype(at::kDouble));
  if (cands > 0) {
    FoldOutputs out{area.data_ptr<int64_t>(), bbox.data_ptr<float>(), iou_box.data_ptr<float>(),
                    iou_mask.data_ptr<float>(), mean_ce.data_ptr<float>(), scratch_int.data_ptr<int64_t>(),
                    scratch_double.data_ptr<double>()};
    const int64_t warps_per_block = kThreads / 32;
    const int64_t blocks = std::min<int64_t>((cands + warps_per_block - 1) / warps_per_block,
                                             static_cast<int64_t>(sms) * 32);
    fold_candidates_kernel<<<static_cast<int>(blocks), kThreads, 0, stream>>>(t, out, cands);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  for (size_t b = 0; b < B; ++b) {
    const ImageMeta& m = meta[b];
    const int64_t N = m.num_candidates, M = m.num_boxes;
    std::get<0>(result).push_back(area.narrow(0, m.cand_begin, N));
    std::get<1>(result).push_back(bbox.narrow(0, m.cand_begin, N));
    std::get<2>(result).push_back(iou_box.narrow(0, m.nm_begin, N * M).view({N, M}));
    std::get<3>(result).push_back(iou_mask.narrow(0, m.nm_begin, N * M).view({N, M}));
    std::get<4>(result).push_back(mean_ce.narrow(0, m.nm_begin, N * M).view({N, M}));
  }
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> proposal_costs_cuda(
    const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits, const at::Tensor& boxes,
    const at::Tensor& labels) {
  const auto out = proposal_costs_batched_cuda({units}, {members}, {logits}, {boxes}, {labels});
  return {std::get<0>(out)[0], std::get<1>(out)[0], std::get<2>(out)[0], std::get<3>(out)[0], std::get<4>(out)[0]};
}

}  // namespace
}  // namespace boxsup

TORCH_LIBRARY_IMPL(boxsup, CUDA, m) {
  m.impl("proposal_costs", &boxsup::proposal_costs_cuda);
  m.impl("proposal_costs_batched", &boxsup::proposal_costs_batched_cuda);
}
