// Host-side input checks shared by the CPU and CUDA kernels, and the messages of the errors that a
// kernel finds in the data (so both backends raise the same words).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace boxsup {

// " (image b)" inside the batched ops, "" for the single-image ones.
std::string image_where(bool batched, size_t image);

// Ranks, dtypes, shapes and devices of one image's proposal_costs arguments; reads no data, so it
// never synchronises. Throws c10::Error naming the argument (and the image, through `where`).
void check_image_args(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                      const at::Tensor& boxes, const at::Tensor& labels, const std::string& where);

// The lists of proposal_costs_batched: one tensor of each kind per image, every image on one device.
void check_batch_args(at::TensorList units, at::TensorList members, at::TensorList logits, at::TensorList boxes,
                      at::TensorList labels);

// Ranks, dtypes and devices of one image's paint_labels arguments (boxes apart: check_paint_boxes),
// and the range of `unassigned`; reads no data.
void check_paint_args(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                      const at::Tensor& labels, int64_t unassigned, const std::string& where);

// The boxes of paint_labels: [M, 4] floating, with M = chosen.size(0), on the device of units or the CPU.
void check_paint_boxes(const at::Tensor& boxes, const at::Tensor& units, int64_t num_chosen, const std::string& where);

// The lists of paint_labels_batched: one tensor of each kind per image, units of every image on one device.
void check_paint_batch_args(at::TensorList units, at::TensorList members, at::TensorList chosen, at::TensorList labels,
                            at::TensorList boxes);

// Checks of the other ops' arguments.
void check_pack_masks_input(const at::Tensor& masks);
void check_unpack_masks_input(const at::Tensor& words, int64_t length);

// Errors found in the values. Checked in this order, the first image first.
[[noreturn]] void fail_label(const std::string& where, int64_t box, int64_t value, int64_t num_classes);
[[noreturn]] void fail_box(const std::string& where, int64_t box, const double* coordinates);
[[noreturn]] void fail_units(const std::string& where, int64_t num_units);
[[noreturn]] void fail_logits(const std::string& where);

}  // namespace boxsup
