// Host-side input checks and preparation shared by the CPU and CUDA kernels.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

namespace boxsup {

// One image's inputs, checked and made contiguous, plus the small host-side tables the kernels use.
struct ImageInputs {
  at::Tensor units;    // [H, W] int32 or int64
  at::Tensor members;  // [N, W64] int64
  at::Tensor logits;   // [C, H, W] float32 / float16 / bfloat16
  at::Tensor boxes;    // [M, 4] float64, on the op's device
  int64_t height = 0, width = 0, num_candidates = 0, num_words = 0, num_classes = 0, num_boxes = 0;
  std::vector<int64_t> distinct_labels;  // J distinct classes among the boxes' labels
  std::vector<int32_t> label_slot;       // [M] index into distinct_labels
  std::vector<int64_t> box_pixels;       // [M] image pixels inside each box
  std::vector<double> boxes_host;        // [M * 4]
};

// Checks the arguments of proposal_costs for one image; `where` names the image in a batch ("" or
// " (image 3)"). Throws c10::Error with a message naming the argument on bad input.
ImageInputs prepare_image_inputs(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                                 const at::Tensor& boxes, const at::Tensor& labels, const std::string& where);

// Checks the lists of proposal_costs_batched (one tensor of each kind per image, all images on one
// device) and prepares every image.
std::vector<ImageInputs> prepare_batch_inputs(at::TensorList units, at::TensorList members, at::TensorList logits,
                                              at::TensorList boxes, at::TensorList labels);

// The five per-image output lists of proposal_costs_batched.
using CostLists = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                             std::vector<at::Tensor>, std::vector<at::Tensor>>;

// Checks the arguments of paint_labels; returns chosen and labels on the host as int64.
struct PaintInputs {
  at::Tensor units, members;
  std::vector<int64_t> chosen, labels;
  std::vector<double> boxes;  // empty when no clipping
  int64_t height = 0, width = 0, num_candidates = 0, num_words = 0;
};
PaintInputs prepare_paint_inputs(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                                 const at::Tensor& labels, const c10::optional<at::Tensor>& boxes);

// Checks of the other ops' arguments, shared by both backends.
void check_pack_masks_input(const at::Tensor& masks);
void check_unpack_masks_input(const at::Tensor& words, int64_t length);

}  // namespace boxsup
