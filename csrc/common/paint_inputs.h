// The checked inputs of paint_labels, prepared on the host for either backend, and the paint order.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "op_types.h"
#include "proposal_math.h"

namespace boxsup {

// Checked arguments of paint_labels: units and members on their device, the small per-box tables on
// the host (chosen, labels and boxes may be given on the host, which saves a round trip).
struct PaintInputs : ImageDims {
  at::Tensor units, members;
  std::vector<int64_t> chosen, labels;
  std::vector<int64_t> box_info;  // [M * kBoxInfoFields] when boxes were given
  bool clip = false;
  int64_t unassigned = -1;  // label for the free pixels of a box without a candidate; -1: leave them
  std::string where;
};

// Where region m may paint: the pixels of its box when `within_box`, else the whole image.
struct PixelRect {
  int64_t col_begin, col_end, row_begin, row_end;
};
inline PixelRect paint_rect(const PaintInputs& in, size_t m, bool within_box) {
  if (!within_box) return {0, in.width, 0, in.height};
  const int64_t* info = in.box_info.data() + m * math::kBoxInfoFields;
  return {info[math::kColBegin], info[math::kColEnd], info[math::kRowBegin], info[math::kRowEnd]};
}

// Checks the arguments (checks.h), then the values of chosen, labels and boxes, and builds the tables.
PaintInputs prepare_paint_inputs(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                                 const at::Tensor& labels, const std::optional<at::Tensor>& boxes, bool clip,
                                 int64_t unassigned, const std::string& where);

// paint_labels_batched's inputs: the lists checked (one tensor of each per image, one device), then
// prepare_paint_inputs per image. Both backends call it.
std::vector<PaintInputs> prepare_paint_batch(at::TensorList units, at::TensorList members, at::TensorList chosen,
                                             at::TensorList labels, at::TensorList boxes, bool clip,
                                             int64_t unassigned);

// The paint order (math::paint_rank): the boxes that have a candidate, by descending painted area
// (ties in box order), so smaller regions are painted last and end on top.
std::vector<int64_t> paint_order(const std::vector<int64_t>& chosen, const std::vector<int64_t>& area);

}  // namespace boxsup
