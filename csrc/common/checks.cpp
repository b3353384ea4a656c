// Input checks and data-error messages of the boxsup ops (see checks.h); both backends call them.
#include "checks.h"

#include <cstdlib>
#include <sstream>

namespace boxsup {

namespace {

std::string shape_of(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

void check_units(const at::Tensor& units, const std::string& where) {
  TORCH_CHECK(units.dim() == 2, "units", where, " must have shape [H, W], got ", shape_of(units));
  TORCH_CHECK(units.scalar_type() == at::kInt || units.scalar_type() == at::kLong, "units", where,
              " must be int32 or int64, got ", units.scalar_type());
}

// Image b of a batch on the device of image 0.
void check_batch_device(at::TensorList units, size_t b) {
  TORCH_CHECK(units[b].device() == units[0].device(), "all images of a batch must be on one device; image ", b,
              " is on ", units[b].device(), ", image 0 on ", units[0].device());
}

}  // namespace

std::string image_where(bool batched, size_t image) {
  return batched ? " (image " + std::to_string(image) + ")" : std::string();
}

void check_image_args(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                      const at::Tensor& boxes, const at::Tensor& labels, const std::string& where) {
  check_units(units, where);
  TORCH_CHECK(members.dim() == 2, "members", where, " must have shape [N, ceil(U / 64)], got ", shape_of(members));
  TORCH_CHECK(members.scalar_type() == at::kLong, "members", where, " must be int64 bit words, got ",
              members.scalar_type());
  TORCH_CHECK(logits.dim() == 3, "logits", where, " must have shape [C, H, W], got ", shape_of(logits));
  TORCH_CHECK(
      logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kHalf || logits.scalar_type() == at::kBFloat16,
      "logits", where, " must be float32, float16 or bfloat16, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(1) == units.size(0) && logits.size(2) == units.size(1), "logits", where,
              " must match units in H and W: logits ", shape_of(logits), " vs units ", shape_of(units));
  TORCH_CHECK(logits.size(0) >= 1, "logits", where, " must have at least one class channel");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes", where, " must have shape [M, 4], got ", shape_of(boxes));
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), "boxes", where, " must be a floating dtype, got ",
              boxes.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == boxes.size(0), "labels", where,
              " must have shape [M] with M = boxes.size(0) = ", boxes.size(0), ", got ", shape_of(labels));
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt, "labels", where,
              " must be int32 or int64, got ", labels.scalar_type());
  const auto device = units.device();
  TORCH_CHECK(
      members.device() == device && logits.device() == device && boxes.device() == device && labels.device() == device,
      "units, members, logits, boxes and labels", where, " must be on one device, got ", units.device(), ", ",
      members.device(), ", ", logits.device(), ", ", boxes.device(), ", ", labels.device());
  TORCH_CHECK(units.numel() == 0 || members.size(1) > 0 || members.size(0) == 0, "members", where,
              " has no words, but the image has units; expected shape [N, ceil(U / 64)]");
}

void check_batch_args(at::TensorList units, at::TensorList members, at::TensorList logits, at::TensorList boxes,
                      at::TensorList labels) {
  const size_t count = units.size();
  TORCH_CHECK(members.size() == count && logits.size() == count && boxes.size() == count && labels.size() == count,
              "proposal_costs_batched needs one units, members, logits, boxes and labels tensor per image; got ",
              units.size(), ", ", members.size(), ", ", logits.size(), ", ", boxes.size(), ", ", labels.size());
  for (size_t b = 0; b < count; ++b) {
    check_image_args(units[b], members[b], logits[b], boxes[b], labels[b], image_where(true, b));
    check_batch_device(units, b);
  }
}

void check_paint_args(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                      const at::Tensor& labels, int64_t unassigned, const std::string& where) {
  check_units(units, where);
  TORCH_CHECK(members.dim() == 2 && members.scalar_type() == at::kLong, "members", where,
              " must be int64 bit words of shape [N, ceil(U / 64)], got ", members.scalar_type(), " ",
              shape_of(members));
  TORCH_CHECK(chosen.dim() == 1, "chosen", where, " must have shape [M], got ", shape_of(chosen));
  TORCH_CHECK(!at::isFloatingType(chosen.scalar_type()), "chosen", where, " must be an integer tensor, got ",
              chosen.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == chosen.size(0), "labels", where,
              " must have shape [M] with M = chosen.size(0) = ", chosen.size(0), ", got ", shape_of(labels));
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()), "labels", where, " must be an integer tensor, got ",
              labels.scalar_type());
  TORCH_CHECK(members.device() == units.device(), "units and members", where, " must be on one device, got ",
              units.device(), " and ", members.device());
  for (const at::Tensor* t : {&chosen, &labels}) {
    TORCH_CHECK(t->device() == units.device() || t->device().is_cpu(), "chosen and labels", where,
                " must be on the device of units or on the CPU, got ", t->device());
  }
  TORCH_CHECK(unassigned >= -1 && unassigned <= 255, "unassigned", where,
              " must be -1 (leave) or a label in [0, 255], got ", unassigned);
}

void check_paint_boxes(const at::Tensor& boxes, const at::Tensor& units, int64_t num_chosen, const std::string& where) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == num_chosen, "boxes", where,
              " must have shape [M, 4] with M = chosen.size(0) = ", num_chosen, ", got ", shape_of(boxes));
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), "boxes", where, " must be a floating dtype, got ",
              boxes.scalar_type());
  TORCH_CHECK(boxes.device() == units.device() || boxes.device().is_cpu(), "boxes", where,
              " must be on the device of units or on the CPU, got ", boxes.device());
}

void check_paint_batch_args(at::TensorList units, at::TensorList members, at::TensorList chosen, at::TensorList labels,
                            at::TensorList boxes) {
  const size_t count = units.size();
  TORCH_CHECK(members.size() == count && chosen.size() == count && labels.size() == count && boxes.size() == count,
              "paint_labels_batched needs one units, members, chosen, labels and boxes tensor per image; got ",
              units.size(), ", ", members.size(), ", ", chosen.size(), ", ", labels.size(), ", ", boxes.size());
  for (size_t b = 0; b < count; ++b) check_batch_device(units, b);
}

void check_pack_masks_input(const at::Tensor& masks) {
  TORCH_CHECK(masks.dim() == 2, "masks must have shape [N, L] (flatten the pixel dims), got ", masks.sizes());
  TORCH_CHECK(masks.scalar_type() == at::kBool, "masks must be bool, got ", masks.scalar_type());
}

void check_unpack_masks_input(const at::Tensor& words, int64_t length) {
  TORCH_CHECK(words.dim() == 2 && words.scalar_type() == at::kLong,
              "words must be int64 bit words of shape [N, W64], got ", words.scalar_type(), " ", words.sizes());
  TORCH_CHECK(length >= 0 && length <= words.size(1) * 64, "length must be in [0, 64 * words.size(1)] = [0, ",
              words.size(1) * 64, "], got ", length);
}

void fail_label(const std::string& where, int64_t box, int64_t value, int64_t num_classes) {
  TORCH_CHECK(false, "labels", where, "[", box, "] = ", value, " is outside [0, C) with C = ", num_classes,
              " logit channels");
  std::abort();  // unreachable; TORCH_CHECK(false) throws
}

void fail_box(const std::string& where, int64_t box, const double* c) {
  TORCH_CHECK(false, "boxes", where, "[", box, "] = (", c[0], ", ", c[1], ", ", c[2], ", ", c[3],
              ") must be finite with x0 <= x1 and y0 <= y1");
  std::abort();
}

void fail_units(const std::string& where, int64_t num_units) {
  TORCH_CHECK(false, "units", where, " has ids outside [0, 64 * members.size(1)) = [0, ", num_units,
              "): members is narrower than the units need, or units has negative ids");
  std::abort();
}

void fail_logits(const std::string& where) {
  TORCH_CHECK(false, "logits", where, " must be finite; found NaN or inf");
  std::abort();
}

}  // namespace boxsup
