// CPU kernels of boxsup::pack_masks, unpack_masks and paint_labels.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../common/checks.h"
#include "../common/paint_inputs.h"
#include "../common/proposal_math.h"
#include "for_each_image.h"

namespace boxsup {
namespace {

at::Tensor pack_masks_cpu(const at::Tensor& masks) {
  check_pack_masks_input(masks);
  const at::Tensor in = masks.contiguous();
  const int64_t N = in.size(0), L = in.size(1), W64 = (L + 63) / 64;
  at::Tensor out = at::zeros({N, W64}, in.options().dtype(at::kLong));
  const bool* src = in.data_ptr<bool>();
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, N * W64, 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t n = k / W64, w = k % W64;
      const bool* bits = src + n * L + w * 64;
      const int64_t count = std::min<int64_t>(64, L - w * 64);
      uint64_t word = 0;
      for (int64_t b = 0; b < count; ++b) word |= static_cast<uint64_t>(bits[b]) << b;
      dst[k] = word;
    }
  });
  return out;
}

at::Tensor unpack_masks_cpu(const at::Tensor& words, int64_t length) {
  check_unpack_masks_input(words, length);
  const at::Tensor in = words.contiguous();
  const int64_t N = in.size(0), W64 = in.size(1);
  at::Tensor out = at::empty({N, length}, in.options().dtype(at::kBool));
  const uint64_t* src = reinterpret_cast<const uint64_t*>(in.data_ptr<int64_t>());
  bool* dst = out.data_ptr<bool>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t i = 0; i < length; ++i) dst[n * length + i] = (src[n * W64 + (i >> 6)] >> (i & 63)) & 1;
    }
  });
  return out;
}

inline bool has_unit(const uint64_t* row, int64_t unit, int64_t num_words) {
  return unit >= 0 && (unit >> 6) < num_words && ((row[unit >> 6] >> (unit & 63)) & 1);
}

template <typename unit_t>
at::Tensor paint_labels_impl(const PaintInputs& in) {
  const int64_t H = in.height, W = in.width, W64 = in.num_words;
  const int64_t M = static_cast<int64_t>(in.chosen.size());
  const unit_t* units = in.units.data_ptr<unit_t>();
  const uint64_t* members = reinterpret_cast<const uint64_t*>(in.members.data_ptr<int64_t>());
  for (int64_t p = 0; p < H * W; ++p) {
    const int64_t u = static_cast<int64_t>(units[p]);
    if (u < 0 || u >= in.num_units()) fail_units(in.where, in.num_units());
  }
  std::vector<PixelRect> rect(M);
  for (int64_t m = 0; m < M; ++m) rect[m] = paint_rect(in, m, in.clip);
  // Painted area of each region (clipped to its box when clipping).
  std::vector<int64_t> area(M, 0);
  for (int64_t m = 0; m < M; ++m) {
    if (in.chosen[m] < 0) continue;
    const uint64_t* row = members + in.chosen[m] * W64;
    for (int64_t y = rect[m].row_begin; y < rect[m].row_end; ++y)
      for (int64_t x = rect[m].col_begin; x < rect[m].col_end; ++x) area[m] += has_unit(row, units[y * W + x], W64);
  }
  const std::vector<int64_t> order = paint_order(in.chosen, area);

  at::Tensor out = at::zeros({H, W}, in.units.options().dtype(at::kByte));
  uint8_t* dst = out.data_ptr<uint8_t>();
  // Later regions in `order` are smaller and end on top: paint in order, each overwriting.
  for (int64_t m : order) {
    const uint64_t* row = members + in.chosen[m] * W64;
    const uint8_t label = static_cast<uint8_t>(in.labels[m]);
    at::parallel_for(rect[m].row_begin, rect[m].row_end, 16, [&](int64_t y0, int64_t y1) {
      for (int64_t y = y0; y < y1; ++y)
        for (int64_t x = rect[m].col_begin; x < rect[m].col_end; ++x)
          if (has_unit(row, units[y * W + x], W64)) dst[y * W + x] = label;
    });
  }
  // Boxes without a candidate: their still-unpainted pixels become `unassigned` (ignore, usually).
  if (in.unassigned >= 0) {
    for (int64_t m = 0; m < M; ++m) {
      if (in.chosen[m] >= 0) continue;
      const PixelRect box = paint_rect(in, m, true);
      for (int64_t y = box.row_begin; y < box.row_end; ++y)
        for (int64_t x = box.col_begin; x < box.col_end; ++x)
          if (math::takes_unassigned(dst[y * W + x])) dst[y * W + x] = static_cast<uint8_t>(in.unassigned);
    }
  }
  return out;
}

at::Tensor paint_labels_cpu(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                            const at::Tensor& labels, const std::optional<at::Tensor>& boxes, bool clip,
                            int64_t unassigned) {
  const PaintInputs in = prepare_paint_inputs(units, members, chosen, labels, boxes, clip, unassigned, "");
  return AT_DISPATCH_INDEX_TYPES(in.units.scalar_type(), "paint_labels",
                                 [&] { return paint_labels_impl<index_t>(in); });
}

std::vector<at::Tensor> paint_labels_batched_cpu(at::TensorList units, at::TensorList members, at::TensorList chosen,
                                                 at::TensorList labels, at::TensorList boxes, bool clip,
                                                 int64_t unassigned) {
  const std::vector<PaintInputs> inputs = prepare_paint_batch(units, members, chosen, labels, boxes, clip, unassigned);
  const size_t B = inputs.size();
  std::vector<at::Tensor> out(B);
  for_each_image(B, [&](size_t b) {
    out[b] = AT_DISPATCH_INDEX_TYPES(inputs[b].units.scalar_type(), "paint_labels",
                                     [&] { return paint_labels_impl<index_t>(inputs[b]); });
  });
  return out;
}

}  // namespace
}  // namespace boxsup

TORCH_LIBRARY_IMPL(boxsup, CPU, m) {
  m.impl("pack_masks", &boxsup::pack_masks_cpu);
  m.impl("unpack_masks", &boxsup::unpack_masks_cpu);
  m.impl("paint_labels", &boxsup::paint_labels_cpu);
  m.impl("paint_labels_batched", &boxsup::paint_labels_batched_cpu);
}
