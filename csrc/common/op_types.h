// Host-side types that the CPU and CUDA kernels share: the sizes of one image's arguments, and the
// outputs of proposal_costs (one image) and proposal_costs_batched (lists over the images).
#pragma once

#include <torch/types.h>

#include <tuple>
#include <vector>

#include "proposal_math.h"

namespace boxsup {

// The sizes of one image's arguments, read once from the checked tensors (units [H, W], members
// [N, W64], logits [C, H, W], boxes [M, 4]); paint has no logits (C = 0).
struct ImageDims {
  int64_t height = 0, width = 0, num_candidates = 0, num_words = 0, num_classes = 0, num_boxes = 0;

  int64_t num_units() const { return num_words * 64; }  // the unit ids the member rows can name
  int64_t num_columns() const { return math::sum_columns(num_boxes); }
};
inline ImageDims image_dims(const at::Tensor& units, const at::Tensor& members, int64_t num_classes,
                            int64_t num_boxes) {
  return {units.size(0), units.size(1), members.size(0), members.size(1), num_classes, num_boxes};
}

// The five outputs of proposal_costs: area, bbox, iou_box, iou_mask, mean_ce.
using CostTuple = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

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

}  // namespace boxsup
