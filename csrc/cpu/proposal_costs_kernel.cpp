// CPU kernel of boxsup::proposal_costs and proposal_costs_batched.
//
// Stage 1 makes one pass over the logits, row by row: per pixel the log-sum-exp over classes
// (vectorised, see row_logsumexp), then per-unit statistics — pixel count, tight box, pixels inside
// each box, and CE sums for the distinct labels. Stage 2 folds, for each candidate, the statistics
// of the units whose bits are set, run by run (prefix sums, see fold_run). The arithmetic lives in common/proposal_math.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "../common/checks.h"
#include "../common/proposal_math.h"

// Compile the hot loop for AVX2 as well as the baseline ISA and pick at load time, so one build
// runs everywhere and uses 8-wide vectors where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define BOXSUP_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define BOXSUP_TARGET_CLONES
#endif

namespace boxsup {
namespace {

constexpr int64_t kBlock = 256;  // pixels per vectorised block

#ifdef BOXSUP_HAVE_VECTOR_FLOAT
inline math::vfloat8 load8(const float* p) {
  math::vfloat8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, math::vfloat8 v) { std::memcpy(p, &v, sizeof(v)); }
#endif

// lse[i] = log(sum_c exp(x_c[i])) for `count` pixels whose class scores start at channel[c].
// bad[i] becomes NaN when a score is NaN or +-inf (x * 0 is 0 only for finite x). Eight pixels at a
// time keep all their running maxima and sums in registers across the classes.
BOXSUP_TARGET_CLONES
void row_logsumexp(const float* const* channel, int64_t num_classes, int64_t count, float* __restrict lse,
                   float* __restrict bad) {
  int64_t i = 0;
#ifdef BOXSUP_HAVE_VECTOR_FLOAT
  for (; i + 8 <= count; i += 8) {
    math::vfloat8 top = load8(channel[0] + i);
    math::vfloat8 check = top * 0.0f;
    for (int64_t c = 1; c < num_classes; ++c) {
      const math::vfloat8 v = load8(channel[c] + i);
      top = v > top ? v : top;
      check += v * 0.0f;
    }
    math::vfloat8 sum = math::splat8(0.0f);
    for (int64_t c = 0; c < num_classes; ++c) sum += math::exp_nonpositive(load8(channel[c] + i) - top);
    store8(lse + i, top + math::log_at_least_one(sum));
    store8(bad + i, check);
  }
#endif
  for (; i < count; ++i) {
    float top = channel[0][i];
    float check = top * 0.0f;
    for (int64_t c = 1; c < num_classes; ++c) {
      const float v = channel[c][i];
      top = v > top ? v : top;
      check += v * 0.0f;
    }
    float sum = 0.0f;
    for (int64_t c = 0; c < num_classes; ++c) sum += math::exp_nonpositive(channel[c][i] - top);
    lse[i] = top + math::log_at_least_one(sum);
    bad[i] = check;
  }
}

struct UnitStats {
  std::vector<int32_t> ints;  // [U, 5 + M]
  std::vector<double> ce;     // [U, J]
};

void init_unit_stats(UnitStats& stats, int64_t num_units, int64_t num_boxes, int64_t num_labels) {
  const int64_t stride = math::kUnitIntFields + num_boxes;
  stats.ints.assign(num_units * stride, 0);
  for (int64_t u = 0; u < num_units; ++u) {
    int32_t* row = stats.ints.data() + u * stride;
    row[math::kMinX] = math::kEmptyMin;
    row[math::kMinY] = math::kEmptyMin;
    row[math::kMaxX] = math::kEmptyMax;
    row[math::kMaxY] = math::kEmptyMax;
  }
  stats.ce.assign(num_units * num_labels, 0.0);
}

// Stage 1 over rows [row_begin, row_end) of one image.
template <typename unit_t, typename logit_t>
void accumulate_rows(const ImageInputs& in, int64_t num_units, int64_t row_begin, int64_t row_end, UnitStats& stats,
                     std::atomic<bool>& bad_unit, std::atomic<bool>& bad_logit) {
  const int64_t H = in.height, W = in.width, C = in.num_classes, M = in.num_boxes;
  const int64_t J = static_cast<int64_t>(in.distinct_labels.size());
  const int64_t stride = math::kUnitIntFields + M;
  const unit_t* units = in.units.data_ptr<unit_t>();
  const logit_t* logits = in.logits.data_ptr<logit_t>();
  const bool need_logits = J > 0;

  std::vector<int64_t> col_begin(M), col_end(M), row_lo(M), row_hi(M);
  for (int64_t m = 0; m < M; ++m) {
    const double* box = in.boxes_host.data() + 4 * m;
    math::pixel_range(box[0], box[2], W, &col_begin[m], &col_end[m]);
    math::pixel_range(box[1], box[3], H, &row_lo[m], &row_hi[m]);
  }
  std::vector<float> lse(kBlock), bad(kBlock);
  std::vector<float> converted(std::is_same<logit_t, float>::value ? 0 : C * kBlock);
  std::vector<const float*> channel(C);
  std::vector<const float*> label_row(J);
  int32_t* ints = stats.ints.data();
  double* ce = stats.ce.data();

  for (int64_t y = row_begin; y < row_end; ++y) {
    const unit_t* unit_row = units + y * W;
    for (int64_t x0 = 0; x0 < W; x0 += kBlock) {
      const int64_t count = std::min(kBlock, W - x0);
      if (need_logits) {
        for (int64_t c = 0; c < C; ++c) {
          const logit_t* src = logits + (c * H + y) * W + x0;
          if constexpr (std::is_same<logit_t, float>::value) {
            channel[c] = src;
          } else {
            float* dst = converted.data() + c * kBlock;
            for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<float>(src[i]);
            channel[c] = dst;
          }
        }
        row_logsumexp(channel.data(), C, count, lse.data(), bad.data());
        float bad_sum = 0.0f;
        for (int64_t i = 0; i < count; ++i) bad_sum += bad[i];
        if (!(bad_sum == 0.0f)) bad_logit = true;
        for (int64_t j = 0; j < J; ++j) label_row[j] = channel[in.distinct_labels[j]];
      }
      for (int64_t i = 0; i < count; ++i) {
        const int64_t u = static_cast<int64_t>(unit_row[x0 + i]);
        if (u < 0 || u >= num_units) {
          bad_unit = true;
          continue;
        }
        const int32_t x = static_cast<int32_t>(x0 + i);
        int32_t* row = ints + u * stride;
        row[math::kCount] += 1;
        row[math::kMinX] = x < row[math::kMinX] ? x : row[math::kMinX];
        row[math::kMaxX] = x > row[math::kMaxX] ? x : row[math::kMaxX];
        row[math::kMinY] = static_cast<int32_t>(y) < row[math::kMinY] ? static_cast<int32_t>(y) : row[math::kMinY];
        row[math::kMaxY] = static_cast<int32_t>(y);  // rows are visited in increasing order per chunk
        double* ce_row = ce + u * J;
        for (int64_t j = 0; j < J; ++j) ce_row[j] += static_cast<double>(lse[i] - label_row[j][i]);
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      if (y < row_lo[m] || y >= row_hi[m]) continue;
      for (int64_t x = col_begin[m]; x < col_end[m]; ++x) {
        const int64_t u = static_cast<int64_t>(unit_row[x]);
        if (u >= 0 && u < num_units) ints[u * stride + math::kUnitIntFields + m] += 1;
      }
    }
  }
}

void merge_unit_stats(UnitStats& into, const UnitStats& from, int64_t num_units, int64_t stride, int64_t num_labels) {
  at::parallel_for(0, num_units, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      math::merge_unit_ints(into.ints.data() + u * stride, from.ints.data() + u * stride,
                               static_cast<int>(stride - math::kUnitIntFields));
      for (int64_t j = 0; j < num_labels; ++j) into.ce[u * num_labels + j] += from.ce[u * num_labels + j];
    }
  });
}

// Unit statistics rearranged for folding runs of units: prefix sums of the pixel count and of the
// per-box and per-label sums, and the tight-box corners as separate arrays.
struct FoldTables {
  std::vector<int64_t> count_prefix;  // [U + 1]
  std::vector<int64_t> inbox_prefix;  // [(U + 1) * M]
  std::vector<double> ce_prefix;      // [(U + 1) * J]
  std::vector<int32_t> min_x, min_y, max_x, max_y;  // [U]
};

FoldTables build_fold_tables(const UnitStats& stats, int64_t num_units, int64_t M, int64_t J) {
  const int64_t stride = math::kUnitIntFields + M;
  FoldTables t;
  t.count_prefix.assign(num_units + 1, 0);
  t.inbox_prefix.assign((num_units + 1) * M, 0);
  t.ce_prefix.assign((num_units + 1) * J, 0.0);
  t.min_x.resize(num_units);
  t.min_y.resize(num_units);
  t.max_x.resize(num_units);
  t.max_y.resize(num_units);
  for (int64_t u = 0; u < num_units; ++u) {
    const int32_t* row = stats.ints.data() + u * stride;
    t.count_prefix[u + 1] = t.count_prefix[u] + row[math::kCount];
    for (int64_t m = 0; m < M; ++m)
      t.inbox_prefix[(u + 1) * M + m] = t.inbox_prefix[u * M + m] + row[math::kUnitIntFields + m];
    for (int64_t j = 0; j < J; ++j) t.ce_prefix[(u + 1) * J + j] = t.ce_prefix[u * J + j] + stats.ce[u * J + j];
    t.min_x[u] = row[math::kMinX];
    t.min_y[u] = row[math::kMinY];
    t.max_x[u] = row[math::kMaxX];
    t.max_y[u] = row[math::kMaxY];
  }
  return t;
}

// Adds units [first, last) to a candidate's accumulators (layout of math::init_candidate_ints).
// Units without pixels carry empty corners (kEmptyMin / kEmptyMax), so min/max skip them.
inline void fold_run(const FoldTables& t, int64_t first, int64_t last, int64_t M, int64_t J, int64_t* acc,
                     double* ce_acc) {
  acc[math::kCount] += t.count_prefix[last] - t.count_prefix[first];
  for (int64_t m = 0; m < M; ++m) acc[math::kUnitIntFields + m] += t.inbox_prefix[last * M + m] - t.inbox_prefix[first * M + m];
  for (int64_t j = 0; j < J; ++j) ce_acc[j] += t.ce_prefix[last * J + j] - t.ce_prefix[first * J + j];
  int32_t min_x = math::kEmptyMin, min_y = math::kEmptyMin, max_x = math::kEmptyMax, max_y = math::kEmptyMax;
  for (int64_t u = first; u < last; ++u) {
    min_x = t.min_x[u] < min_x ? t.min_x[u] : min_x;
    min_y = t.min_y[u] < min_y ? t.min_y[u] : min_y;
    max_x = t.max_x[u] > max_x ? t.max_x[u] : max_x;
    max_y = t.max_y[u] > max_y ? t.max_y[u] : max_y;
  }
  acc[math::kMinX] = min_x < acc[math::kMinX] ? min_x : acc[math::kMinX];
  acc[math::kMinY] = min_y < acc[math::kMinY] ? min_y : acc[math::kMinY];
  acc[math::kMaxX] = max_x > acc[math::kMaxX] ? max_x : acc[math::kMaxX];
  acc[math::kMaxY] = max_y > acc[math::kMaxY] ? max_y : acc[math::kMaxY];
}

struct CostOutputs {
  at::Tensor area, bbox, iou_box, iou_mask, mean_ce;
};

CostOutputs allocate_outputs(const ImageInputs& in) {
  const auto opts = at::TensorOptions().device(in.units.device());
  return {at::empty({in.num_candidates}, opts.dtype(at::kLong)),
          at::empty({in.num_candidates, 4}, opts.dtype(at::kFloat)),
          at::empty({in.num_candidates, in.num_boxes}, opts.dtype(at::kFloat)),
          at::empty({in.num_candidates, in.num_boxes}, opts.dtype(at::kFloat)),
          at::empty({in.num_candidates, in.num_boxes}, opts.dtype(at::kFloat))};
}

CostOutputs proposal_costs_one_image(const ImageInputs& in) {
  CostOutputs out = allocate_outputs(in);
  const int64_t N = in.num_candidates, M = in.num_boxes;
  if (N == 0) return out;
  const int64_t J = static_cast<int64_t>(in.distinct_labels.size());
  const int64_t num_units = in.num_words * 64;
  const int64_t stride = math::kUnitIntFields + M;

  // Stage 1: per-unit statistics, one partial set per worker, merged afterwards.
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), in.height));
  std::vector<UnitStats> partial(workers);
  std::atomic<bool> bad_unit{false}, bad_logit{false};
  const int64_t rows_per_worker = (in.height + workers - 1) / workers;
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      UnitStats& stats = partial[w];
      init_unit_stats(stats, num_units, M, J);
      const int64_t r0 = w * rows_per_worker, r1 = std::min(in.height, r0 + rows_per_worker);
      AT_DISPATCH_INDEX_TYPES(in.units.scalar_type(), "proposal_costs_units", [&] {
        using unit_t = index_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.logits.scalar_type(), "proposal_costs", [&] {
          accumulate_rows<unit_t, scalar_t>(in, num_units, r0, r1, stats, bad_unit, bad_logit);
        });
      });
    }
  });
  TORCH_CHECK(!bad_unit, "units has ids outside [0, 64 * members.size(1)) = [0, ", num_units,
              "): members is narrower than the units need, or units has negative ids");
  TORCH_CHECK(!bad_logit, "logits must be finite; found NaN or inf");
  UnitStats& stats = partial[0];
  for (int64_t w = 1; w < workers; ++w) merge_unit_stats(stats, partial[w], num_units, stride, J);

  // Stage 2: fold the statistics of each candidate's units. Sums over a run of consecutive set bits
  // come from prefix sums in O(1); the tight box is a (vectorised) min/max over the run. Per-pixel
  // candidates are long runs; superpixel candidates, short ones.
  const FoldTables tables = build_fold_tables(stats, num_units, M, J);
  const int64_t* members = in.members.data_ptr<int64_t>();
  int64_t* area = out.area.data_ptr<int64_t>();
  float* bbox = out.bbox.data_ptr<float>();
  float* iou_box = out.iou_box.data_ptr<float>();
  float* iou_mask = out.iou_mask.data_ptr<float>();
  float* mean_ce = out.mean_ce.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> acc(stride);
    std::vector<double> ce_acc(J);
    for (int64_t n = begin; n < end; ++n) {
      math::init_candidate_ints(acc.data(), static_cast<int>(M));
      std::fill(ce_acc.begin(), ce_acc.end(), 0.0);
      const uint64_t* words = reinterpret_cast<const uint64_t*>(members + n * in.num_words);
      int64_t run_start = -1;
      uint64_t carry = 0;  // the previous word's top bit
      for (int64_t w = 0; w < in.num_words; ++w) {
        const uint64_t x = words[w];
        const uint64_t previous = (x << 1) | carry;
        uint64_t edges = (x & ~previous) | (~x & previous);  // run starts and (exclusive) run ends
        carry = x >> 63;
        while (edges) {
          const int64_t position = w * 64 + __builtin_ctzll(edges);
          edges &= edges - 1;
          if (run_start < 0) {
            run_start = position;
          } else {
            fold_run(tables, run_start, position, M, J, acc.data(), ce_acc.data());
            run_start = -1;
          }
        }
      }
      if (run_start >= 0) fold_run(tables, run_start, in.num_words * 64, M, J, acc.data(), ce_acc.data());
      math::finalize_candidate(acc.data(), ce_acc.data(), in.boxes_host.data(), in.label_slot.data(),
                               in.box_pixels.data(), static_cast<int>(M), area + n, bbox + 4 * n, iou_box + n * M,
                               iou_mask + n * M, mean_ce + n * M);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> proposal_costs_cpu(
    const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits, const at::Tensor& boxes,
    const at::Tensor& labels) {
  const ImageInputs in = prepare_image_inputs(units, members, logits, boxes, labels, "");
  CostOutputs out = proposal_costs_one_image(in);
  return {out.area, out.bbox, out.iou_box, out.iou_mask, out.mean_ce};
}

CostLists proposal_costs_batched_cpu(at::TensorList units, at::TensorList members, at::TensorList logits,
                                     at::TensorList boxes, at::TensorList labels) {
  const std::vector<ImageInputs> inputs = prepare_batch_inputs(units, members, logits, boxes, labels);
  const size_t B = inputs.size();
  std::vector<CostOutputs> outs(B);
  // Many images: one image per worker (nested parallel_for calls run inline). One image: its rows in parallel.
  at::parallel_for(0, static_cast<int64_t>(B), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) outs[b] = proposal_costs_one_image(inputs[b]);
  });
  CostLists result;
  for (auto& o : outs) {
    std::get<0>(result).push_back(o.area);
    std::get<1>(result).push_back(o.bbox);
    std::get<2>(result).push_back(o.iou_box);
    std::get<3>(result).push_back(o.iou_mask);
    std::get<4>(result).push_back(o.mean_ce);
  }
  return result;
}

}  // namespace
}  // namespace boxsup

TORCH_LIBRARY_IMPL(boxsup, CPU, m) {
  m.impl("proposal_costs", &boxsup::proposal_costs_cpu);
  m.impl("proposal_costs_batched", &boxsup::proposal_costs_batched_cpu);
}
