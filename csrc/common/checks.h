// Host-side input checks shared by the CPU and CUDA kernels, and the messages of the errors that a
// kernel finds in the data (so both backends raise the same words).
#pragma once

#include <torch/types.h>

#include <string>
#include <tuple>
#include <vector>

#include "proposal_math.h"

namespace boxsup {

// " (image b)" inside proposal_costs_batched, "" for the single-image op.
std::string image_where(bool batched, size_t image);

// Ranks, dtypes, shapes and devices of one image's proposal_costs arguments; reads no data, so it
// never synchronises. Throws c10::Error naming the argument (and the image, through `where`).
void check_image_args(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                      const at::Tensor& boxes, const at::Tensor& labels, const std::string& where);

// The lists of proposal_costs_batched: one tensor of each kind per image, every image on one device.
void check_batch_args(at::TensorList units, at::TensorList members, at::TensorList logits, at::TensorList boxes,
                      at::TensorList labels);

// Errors found in the values. Checked in this order, the first image first.
[[noreturn]] void fail_label(const std::string& where, int64_t box, int64_t value, int64_t num_classes);
[[noreturn]] void fail_box(const std::string& where, int64_t box, const double* coordinates);
[[noreturn]] void fail_units(const std::string& where, int64_t num_units);
[[noreturn]] void fail_logits(const std::string& where);

// The sizes of one image's arguments, read once from the checked tensors (units [H, W], members
// [N, W64], logits [C, H, W], boxes [M, 4]); paint has no logits (C = 0).
struct ImageDims {
  int64_t height = 0, width = 0, num_candidates = 0, num_words = 0, num_classes = 0, num_boxes = 0;

  int64_t num_units() const { return num_words * 64; }  // the unit ids the member rows can name
  int64_t num_columns() const { return math::sum_columns(num_boxes); }
};
inline ImageDims image_dims(const at::Tensor& units, const at::Tensor& members, int64_t num_classes, int64_t num_boxes) {
  return {units.size(0), units.size(1), members.size(0), members.size(1), num_classes, num_boxes};
}

// The five per-image output lists of proposal_costs_batched.
using CostLists = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                             std::vector<at::Tensor>, std::vector<at::Tensor>>;

// The lists of a batch from per-image results (any type with area, bbox, iou_box, iou_mask, mean_ce).
template <typename ImageResult>
CostLists cost_lists(const std::vector<ImageResult>& images) {
  CostLists lists;
  for (const ImageResult& r : images) {
    std::get<0>(lists).push_back(r.area);
    std::get<1>(lists).push_back(r.bbox);
    std::get<2>(lists).push_back(r.iou_box);
    std::get<3>(lists).push_back(r.iou_mask);
    std::get<4>(lists).push_back(r.mean_ce);
  }
  return lists;
}

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

PaintInputs prepare_paint_inputs(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                                 const at::Tensor& labels, const c10::optional<at::Tensor>& boxes, bool clip,
                                 int64_t unassigned, const std::string& where);

// The lists of paint_labels_batched: one tensor of each kind per image, units of every image on one device.
void check_paint_batch_args(at::TensorList units, at::TensorList members, at::TensorList chosen, at::TensorList labels,
                            at::TensorList boxes);

// The paint order (math::paint_rank): the boxes that have a candidate, by descending painted area
// (ties in box order), so smaller regions are painted last and end on top.
std::vector<int64_t> paint_order(const std::vector<int64_t>& chosen, const std::vector<int64_t>& area);

// Checks of the other ops' arguments, shared by both backends.
void check_pack_masks_input(const at::Tensor& masks);
void check_unpack_masks_input(const at::Tensor& words, int64_t length);

}  // namespace boxsup
