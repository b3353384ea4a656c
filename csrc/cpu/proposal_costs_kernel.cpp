// CPU kernel of boxsup::proposal_costs and proposal_costs_batched.
//
// Stage 1 makes one pass over the logits, row by row: per pixel the log-sum-exp over classes
// (vectorised, see row_logsumexp), then per-unit statistics: pixel count, tight box, pixels inside
// each box, and fixed-point CE sums for the distinct labels. Stage 2 folds, for each candidate, the
// prefix sums of the units whose bits are set, run by run. The arithmetic (log-sum-exp, NLL, fixed
// point, box rule, fold, final IoUs and means) is common/proposal_math.h's, shared with the CUDA kernel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../common/checks.h"
#include "../common/op_types.h"
#include "../common/proposal_math.h"
#include "for_each_image.h"
#include "vec.h"

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

// lse[i] = log(sum_c exp(x_c[i])) for `count` pixels whose class scores start at channel[c], with
// math::logsumexp_classes (the function the CUDA kernel calls per pixel); bad[i] is non-zero when a
// score is NaN or +-inf. Eight pixels at a time keep their running maxima and sums in registers.
BOXSUP_TARGET_CLONES
void row_logsumexp(const float* const* channel, int64_t num_classes, int64_t count, float* __restrict lse,
                   float* __restrict bad) {
  int64_t i = 0;
#ifdef BOXSUP_HAVE_VECTOR_FLOAT
  for (; i + 8 <= count; i += 8) {
    math::vfloat8 check;
    const math::vfloat8 value =
        math::logsumexp_classes([&](int64_t c) { return math::load8(channel[c] + i); }, num_classes, &check);
    math::store8(lse + i, value);
    math::store8(bad + i, check);
  }
#endif
  for (; i < count; ++i)
    lse[i] = math::logsumexp_classes([&](int64_t c) { return channel[c][i]; }, num_classes, bad + i);
}

// One image's inputs, checked, with the small per-box tables on the host.
struct ImageInputs : ImageDims {
  at::Tensor units, members, logits;
  std::string where;
  std::vector<double> boxes;      // [M * 4]
  std::vector<int64_t> labels;    // [M]
  std::vector<int64_t> box_info;  // [M * kBoxInfoFields]
  std::vector<int64_t> ce_boxes;  // boxes that own a CE column (the first box of each label)
};

ImageInputs prepare_image(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                          const at::Tensor& boxes, const at::Tensor& labels, const std::string& where) {
  check_image_args(units, members, logits, boxes, labels, where);
  ImageInputs in;
  in.where = where;
  in.units = units.contiguous();
  in.members = members.contiguous();
  in.logits = logits.contiguous();
  static_cast<ImageDims&>(in) = image_dims(units, members, logits.size(0), boxes.size(0));
  const at::Tensor b = boxes.to(at::kDouble).contiguous();
  const at::Tensor l = labels.to(at::kLong).contiguous();
  in.boxes.assign(b.data_ptr<double>(), b.data_ptr<double>() + 4 * in.num_boxes);
  in.labels.assign(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + in.num_boxes);
  in.box_info.resize(in.num_boxes * math::kBoxInfoFields);
  for (int64_t m = 0; m < in.num_boxes; ++m) {
    if (in.labels[m] < 0 || in.labels[m] >= in.num_classes) fail_label(where, m, in.labels[m], in.num_classes);
    if (!math::box_is_valid(in.boxes.data() + 4 * m)) fail_box(where, m, in.boxes.data() + 4 * m);
    int64_t* info = in.box_info.data() + m * math::kBoxInfoFields;
    math::box_info(in.boxes.data() + 4 * m, in.labels.data(), m, in.height, in.width, info);
    if (info[math::kSlot] == m) in.ce_boxes.push_back(m);
  }
  return in;
}

// Unit statistics of one image, row-major: sums [(U + 1) * S] (row u + 1 holds unit u while
// accumulating; row 0 stays zero, so an in-place running sum turns the rows into the exclusive
// prefix sums math::UnitTable expects) and corners [4 * U] (four arrays).
struct UnitStats {
  int64_t units = 0, columns = 0;
  std::vector<int64_t> sums;
  std::vector<int32_t> corners;
  double max_nll = 0.0;  // largest pixel NLL above the bound, 0 when none

  void init(int64_t num_units, int64_t num_columns) {
    columns = num_columns;
    units = num_units;
    sums.assign((num_units + 1) * num_columns, 0);
    corners.resize(num_units * math::kCornerFields);
    std::fill(corners.begin(), corners.begin() + 2 * num_units, math::kEmptyMin);
    std::fill(corners.begin() + 2 * num_units, corners.end(), math::kEmptyMax);
  }

  math::UnitTable table() const { return {sums.data(), columns, 1, corners.data(), units}; }
};

struct Flags {
  std::atomic<bool> bad_unit{false}, bad_logit{false};
};

// Stage 1, row y: adds the row's pixels inside each box to their units' column 1 + m.
template <typename unit_t>
void count_box_pixels(const ImageInputs& in, int64_t y, const unit_t* unit_row, UnitStats& stats) {
  const int64_t S = stats.columns, num_units = stats.units;
  int64_t* sums = stats.sums.data();
  for (int64_t m = 0; m < in.num_boxes; ++m) {
    const int64_t* info = in.box_info.data() + m * math::kBoxInfoFields;
    if (y < info[math::kRowBegin] || y >= info[math::kRowEnd]) continue;
    for (int64_t x = info[math::kColBegin]; x < info[math::kColEnd]; ++x) {
      const int64_t u = static_cast<int64_t>(unit_row[x]);
      if (u >= 0 && u < num_units) sums[(u + 1) * S + 1 + m] += 1;
    }
  }
}

// Stage 1 over rows [row_begin, row_end) of one image.
template <typename unit_t, typename logit_t>
void accumulate_rows(const ImageInputs& in, int64_t row_begin, int64_t row_end, double ce_scale, double nll_bound,
                     UnitStats& stats, Flags& flags) {
  const int64_t H = in.height, W = in.width, C = in.num_classes, M = in.num_boxes;
  const int64_t S = stats.columns, num_units = stats.units;
  const int64_t num_ce = static_cast<int64_t>(in.ce_boxes.size());
  const unit_t* units = in.units.data_ptr<unit_t>();
  const logit_t* logits = in.logits.data_ptr<logit_t>();
  const bool need_logits = M > 0;

  std::vector<float> lse(kBlock), bad(kBlock);
  std::vector<float> converted(std::is_same<logit_t, float>::value ? 0 : C * kBlock);
  std::vector<const float*> channel(C);
  std::vector<const float*> label_row(num_ce);
  int64_t* sums = stats.sums.data();
  int32_t* min_x = stats.corners.data();
  int32_t* min_y = min_x + num_units;
  int32_t* max_x = min_y + num_units;
  int32_t* max_y = max_x + num_units;
  double max_nll = stats.max_nll;

  for (int64_t y = row_begin; y < row_end; ++y) {
    const unit_t* unit_row = units + y * W;
    const int32_t y32 = static_cast<int32_t>(y);
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
        if (!(bad_sum == 0.0f)) flags.bad_logit = true;
        for (int64_t j = 0; j < num_ce; ++j) label_row[j] = channel[in.labels[in.ce_boxes[j]]];
      }
      for (int64_t i = 0; i < count; ++i) {
        const int64_t u = static_cast<int64_t>(unit_row[x0 + i]);
        if (u < 0 || u >= num_units) {
          flags.bad_unit = true;
          continue;
        }
        const int32_t x = static_cast<int32_t>(x0 + i);
        int64_t* row = sums + (u + 1) * S;
        row[0] += 1;
        min_x[u] = x < min_x[u] ? x : min_x[u];
        min_y[u] = y32 < min_y[u] ? y32 : min_y[u];
        max_x[u] = x > max_x[u] ? x : max_x[u];
        max_y[u] = y32;  // rows are visited in increasing order per worker
        for (int64_t j = 0; j < num_ce; ++j) {
          const double nll = math::pixel_nll(lse[i], label_row[j][i]);
          if (nll > nll_bound) max_nll = nll > max_nll ? nll : max_nll;
          row[1 + M + in.ce_boxes[j]] += math::to_fixed(nll, ce_scale);
        }
      }
    }
    count_box_pixels(in, y, unit_row, stats);
  }
  stats.max_nll = max_nll;
}

void merge_unit_stats(UnitStats& into, const UnitStats& from) {
  const int64_t S = into.columns, num_units = into.units;
  at::parallel_for(0, num_units, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t k = (begin + 1) * S; k < (end + 1) * S; ++k) into.sums[k] += from.sums[k];
    for (int64_t u = begin; u < end; ++u) {
      for (int64_t i = 0; i < 2; ++i)
        into.corners[i * num_units + u] = std::min(into.corners[i * num_units + u], from.corners[i * num_units + u]);
      for (int64_t i = 2; i < 4; ++i)
        into.corners[i * num_units + u] = std::max(into.corners[i * num_units + u], from.corners[i * num_units + u]);
    }
  });
  into.max_nll = std::max(into.max_nll, from.max_nll);
}

// Rows 1..U hold per-unit sums; after this, row u holds the sum over units < u.
void to_prefix_sums(UnitStats& stats) {
  const int64_t S = stats.columns, num_units = stats.units;
  int64_t* sums = stats.sums.data();
  for (int64_t u = 1; u <= num_units; ++u)
    for (int64_t k = 0; k < S; ++k)
      sums[u * S + k] =
          static_cast<int64_t>(static_cast<uint64_t>(sums[u * S + k]) + static_cast<uint64_t>(sums[(u - 1) * S + k]));
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

// Stage 1 for one image with the CE fixed point of `nll_bound`; returns the largest pixel NLL above
// the bound (0 when none, i.e. the sums are exact and cannot have overflowed).
double unit_statistics(const ImageInputs& in, double nll_bound, UnitStats& stats) {
  const int64_t num_units = in.num_units();
  const int64_t S = in.num_columns();
  const double ce_scale = std::ldexp(1.0, math::ce_exponent(in.height * in.width, nll_bound));
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), in.height));
  std::vector<UnitStats> partial(workers);
  Flags flags;
  const int64_t rows_per_worker = (in.height + workers - 1) / workers;
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      UnitStats& part = partial[w];
      part.init(num_units, S);
      const int64_t r0 = w * rows_per_worker, r1 = std::min(in.height, r0 + rows_per_worker);
      AT_DISPATCH_INDEX_TYPES(in.units.scalar_type(), "proposal_costs_units", [&] {
        using unit_t = index_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.logits.scalar_type(), "proposal_costs", [&] {
          accumulate_rows<unit_t, scalar_t>(in, r0, r1, ce_scale, nll_bound, part, flags);
        });
      });
    }
  });
  if (flags.bad_unit) fail_units(in.where, num_units);
  if (flags.bad_logit) fail_logits(in.where);
  stats = std::move(partial[0]);
  for (int64_t w = 1; w < workers; ++w) merge_unit_stats(stats, partial[w]);
  return stats.max_nll;
}

// Stage 2 for one candidate: adds the statistics of its units (the set bits of its `num_words`
// member words) to acc[0 .. S) and corner, run by run over consecutive set bits. Runs may cross
// word boundaries here (long per-pixel runs fold in one step).
void fold_candidate(const math::UnitTable& table, const uint64_t* words, int64_t num_words, int64_t S, int64_t* acc,
                    int64_t* corner) {
  int64_t run_start = -1;
  uint64_t carry = 0;  // the previous word's top bit
  for (int64_t w = 0; w < num_words; ++w) {
    const uint64_t x = words[w];
    const uint64_t previous = (x << 1) | carry;
    uint64_t edges = x ^ previous;  // run starts and (exclusive) run ends
    carry = x >> 63;
    while (edges) {
      const int64_t position = w * 64 + math::count_trailing_zeros(edges);
      edges &= edges - 1;
      if (run_start < 0) {
        run_start = position;
      } else {
        math::fold_sums(table, run_start, position, 0, S, acc);
        math::fold_corners(table, run_start, position, corner);
        run_start = -1;
      }
    }
  }
  if (run_start >= 0) {
    const int64_t num_units = num_words * 64;
    math::fold_sums(table, run_start, num_units, 0, S, acc);
    math::fold_corners(table, run_start, num_units, corner);
  }
}

CostOutputs proposal_costs_one_image(const ImageInputs& in) {
  CostOutputs out = allocate_outputs(in);
  const int64_t N = in.num_candidates, M = in.num_boxes;
  if (N == 0) return out;
  const int64_t S = in.num_columns();

  // Stage 1: per-unit statistics, one partial set per worker, merged afterwards. A pixel NLL above
  // the fixed-point bound (absurd logits) makes the image run again with a bound that fits it.
  UnitStats stats;
  double nll_bound = math::kDefaultNllBound;
  const double above = unit_statistics(in, nll_bound, stats);
  if (above > 0.0) {
    nll_bound = above;
    unit_statistics(in, nll_bound, stats);
  }
  const double ce_unscale = std::ldexp(1.0, -math::ce_exponent(in.height * in.width, nll_bound));
  to_prefix_sums(stats);
  const math::UnitTable table = stats.table();

  // Stage 2: fold the statistics of each candidate's units, run by run over consecutive set bits.
  const int64_t* members = in.members.data_ptr<int64_t>();
  int64_t* area = out.area.data_ptr<int64_t>();
  float* bbox = out.bbox.data_ptr<float>();
  float* iou_box = out.iou_box.data_ptr<float>();
  float* iou_mask = out.iou_mask.data_ptr<float>();
  float* mean_ce = out.mean_ce.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> acc(S);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(acc.begin(), acc.end(), 0);
      int64_t corner[math::kCornerFields];
      math::init_corners(corner);
      fold_candidate(table, reinterpret_cast<const uint64_t*>(members + n * in.num_words), in.num_words, S, acc.data(),
                     corner);
      double box[4];
      math::finalize_bbox(acc[0], corner, area + n, bbox + 4 * n, box);
      for (int64_t m = 0; m < M; ++m) {
        const int64_t* info = in.box_info.data() + m * math::kBoxInfoFields;
        math::finalize_box(acc[0], box, acc[1 + m], acc[1 + M + info[math::kSlot]], ce_unscale, in.boxes.data() + 4 * m,
                           info[math::kPixels], iou_box + n * M + m, iou_mask + n * M + m, mean_ce + n * M + m);
      }
    }
  });
  return out;
}

CostTuple proposal_costs_cpu(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                             const at::Tensor& boxes, const at::Tensor& labels) {
  const ImageInputs in = prepare_image(units, members, logits, boxes, labels, image_where(false, 0));
  CostOutputs out = proposal_costs_one_image(in);
  return {out.area, out.bbox, out.iou_box, out.iou_mask, out.mean_ce};
}

CostLists proposal_costs_batched_cpu(at::TensorList units, at::TensorList members, at::TensorList logits,
                                     at::TensorList boxes, at::TensorList labels) {
  check_batch_args(units, members, logits, boxes, labels);
  const size_t B = units.size();
  std::vector<ImageInputs> inputs;
  inputs.reserve(B);
  for (size_t b = 0; b < B; ++b)
    inputs.push_back(prepare_image(units[b], members[b], logits[b], boxes[b], labels[b], image_where(true, b)));
  std::vector<CostOutputs> outs(B);
  // Many images: one per worker. One image: its rows in parallel (proposal_costs_one_image).
  for_each_image(B, [&](size_t b) { outs[b] = proposal_costs_one_image(inputs[b]); });
  return cost_lists(outs);
}

}  // namespace
}  // namespace boxsup

TORCH_LIBRARY_IMPL(boxsup, CPU, m) {
  m.impl("proposal_costs", &boxsup::proposal_costs_cpu);
  m.impl("proposal_costs_batched", &boxsup::proposal_costs_batched_cpu);
}
