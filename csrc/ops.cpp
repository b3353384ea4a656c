// Operator schemas of the boxsup library, the shared input checks, and the build-facts module.
//
// Kernels register themselves per backend in cpu/ and cuda/ (TORCH_LIBRARY_IMPL), so a CPU-only
// build simply has no CUDA kernel and this file needs no #ifdef.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <sstream>

#include "common/checks.h"
#include "common/proposal_math.h"

#ifndef BOXSUP_VERSION
#define BOXSUP_VERSION "0.0.0"
#endif

namespace boxsup {

namespace {

std::string shape_of(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

}  // namespace

ImageInputs prepare_image_inputs(const at::Tensor& units, const at::Tensor& members, const at::Tensor& logits,
                                 const at::Tensor& boxes, const at::Tensor& labels, const std::string& where) {
  TORCH_CHECK(units.dim() == 2, "units", where, " must have shape [H, W], got ", shape_of(units));
  TORCH_CHECK(units.scalar_type() == at::kInt || units.scalar_type() == at::kLong,
              "units", where, " must be int32 or int64, got ", units.scalar_type());
  TORCH_CHECK(members.dim() == 2, "members", where, " must have shape [N, ceil(U / 64)], got ", shape_of(members));
  TORCH_CHECK(members.scalar_type() == at::kLong, "members", where, " must be int64 bit words, got ",
              members.scalar_type());
  TORCH_CHECK(logits.dim() == 3, "logits", where, " must have shape [C, H, W], got ", shape_of(logits));
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kHalf ||
                  logits.scalar_type() == at::kBFloat16,
              "logits", where, " must be float32, float16 or bfloat16, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(1) == units.size(0) && logits.size(2) == units.size(1), "logits", where,
              " must match units in H and W: logits ", shape_of(logits), " vs units ", shape_of(units));
  TORCH_CHECK(logits.size(0) >= 1, "logits", where, " must have at least one class channel");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes", where, " must have shape [M, 4], got ",
              shape_of(boxes));
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), "boxes", where, " must be a floating dtype, got ",
              boxes.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == boxes.size(0), "labels", where,
              " must have shape [M] with M = boxes.size(0) = ", boxes.size(0), ", got ", shape_of(labels));
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt, "labels", where,
              " must be int64, got ", labels.scalar_type());
  const auto device = units.device();
  TORCH_CHECK(members.device() == device && logits.device() == device && boxes.device() == device &&
                  labels.device() == device,
              "units, members, logits, boxes and labels", where, " must be on one device, got ", units.device(),
              ", ", members.device(), ", ", logits.device(), ", ", boxes.device(), ", ", labels.device());

  ImageInputs in;
  in.height = units.size(0);
  in.width = units.size(1);
  in.num_candidates = members.size(0);
  in.num_words = members.size(1);
  in.num_classes = logits.size(0);
  in.num_boxes = boxes.size(0);
  TORCH_CHECK(in.height * in.width == 0 || in.num_words > 0 || in.num_candidates == 0, "members", where,
              " has no words, but the image has units; expected shape [N, ceil(U / 64)]");
  in.units = units.contiguous();
  in.members = members.contiguous();
  in.logits = logits.contiguous();
  in.boxes = boxes.to(at::kDouble).contiguous();

  at::Tensor boxes_cpu = in.boxes.cpu();
  at::Tensor labels_cpu = labels.to(at::kLong).cpu().contiguous();
  const double* b = boxes_cpu.data_ptr<double>();
  const int64_t* l = labels_cpu.data_ptr<int64_t>();
  in.boxes_host.assign(b, b + 4 * in.num_boxes);
  in.label_slot.resize(in.num_boxes);
  in.box_pixels.resize(in.num_boxes);
  for (int64_t m = 0; m < in.num_boxes; ++m) {
    TORCH_CHECK(l[m] >= 0 && l[m] < in.num_classes, "labels", where, "[", m, "] = ", l[m],
                " is outside [0, C) with C = ", in.num_classes, " logit channels");
    auto it = std::find(in.distinct_labels.begin(), in.distinct_labels.end(), l[m]);
    if (it == in.distinct_labels.end()) {
      in.label_slot[m] = static_cast<int32_t>(in.distinct_labels.size());
      in.distinct_labels.push_back(l[m]);
    } else {
      in.label_slot[m] = static_cast<int32_t>(it - in.distinct_labels.begin());
    }
    in.box_pixels[m] = math::box_pixel_count(b + 4 * m, in.height, in.width);
  }
  return in;
}

PaintInputs prepare_paint_inputs(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                                 const at::Tensor& labels, const c10::optional<at::Tensor>& boxes) {
  TORCH_CHECK(units.dim() == 2, "units must have shape [H, W], got ", shape_of(units));
  TORCH_CHECK(units.scalar_type() == at::kInt || units.scalar_type() == at::kLong,
              "units must be int32 or int64, got ", units.scalar_type());
  TORCH_CHECK(members.dim() == 2 && members.scalar_type() == at::kLong,
              "members must be int64 bit words of shape [N, ceil(U / 64)], got ", members.scalar_type(), " ",
              shape_of(members));
  TORCH_CHECK(chosen.dim() == 1, "chosen must have shape [M], got ", shape_of(chosen));
  TORCH_CHECK(!at::isFloatingType(chosen.scalar_type()), "chosen must be an integer tensor, got ",
              chosen.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == chosen.size(0),
              "labels must have shape [M] with M = chosen.size(0) = ", chosen.size(0), ", got ", shape_of(labels));
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()), "labels must be an integer tensor, got ",
              labels.scalar_type());
  TORCH_CHECK(members.device() == units.device() && chosen.device() == units.device() &&
                  labels.device() == units.device(),
              "units, members, chosen and labels must be on one device");
  PaintInputs in;
  in.units = units.contiguous();
  in.members = members.contiguous();
  in.height = units.size(0);
  in.width = units.size(1);
  in.num_candidates = members.size(0);
  in.num_words = members.size(1);
  at::Tensor c = chosen.to(at::kLong).cpu().contiguous();
  at::Tensor l = labels.to(at::kLong).cpu().contiguous();
  in.chosen.assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  in.labels.assign(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel());
  for (size_t m = 0; m < in.chosen.size(); ++m) {
    TORCH_CHECK(in.chosen[m] >= -1 && in.chosen[m] < in.num_candidates, "chosen[", m, "] = ", in.chosen[m],
                " is outside [-1, N) with N = ", in.num_candidates, " candidates");
    TORCH_CHECK(in.labels[m] >= 0 && in.labels[m] <= 255, "labels[", m, "] = ", in.labels[m],
                " does not fit a uint8 label map [0, 255]");
  }
  if (boxes.has_value()) {
    const at::Tensor& b = *boxes;
    TORCH_CHECK(b.dim() == 2 && b.size(1) == 4 && b.size(0) == chosen.size(0),
                "boxes must have shape [M, 4] with M = chosen.size(0) = ", chosen.size(0), ", got ", shape_of(b));
    TORCH_CHECK(at::isFloatingType(b.scalar_type()), "boxes must be a floating dtype, got ", b.scalar_type());
    TORCH_CHECK(b.device() == units.device(), "boxes must be on the device of units");
    at::Tensor bc = b.to(at::kDouble).cpu().contiguous();
    in.boxes.assign(bc.data_ptr<double>(), bc.data_ptr<double>() + bc.numel());
  }
  return in;
}

std::vector<ImageInputs> prepare_batch_inputs(at::TensorList units, at::TensorList members, at::TensorList logits,
                                              at::TensorList boxes, at::TensorList labels) {
  const size_t count = units.size();
  TORCH_CHECK(members.size() == count && logits.size() == count && boxes.size() == count && labels.size() == count,
              "proposal_costs_batched needs one units, members, logits, boxes and labels tensor per image; got ",
              units.size(), ", ", members.size(), ", ", logits.size(), ", ", boxes.size(), ", ", labels.size());
  std::vector<ImageInputs> inputs;
  inputs.reserve(count);
  for (size_t b = 0; b < count; ++b) {
    inputs.push_back(prepare_image_inputs(units[b], members[b], logits[b], boxes[b], labels[b],
                                          " (image " + std::to_string(b) + ")"));
    TORCH_CHECK(units[b].device() == units[0].device(), "all images of a batch must be on one device; image ", b,
                " is on ", units[b].device(), ", image 0 on ", units[0].device());
  }
  return inputs;
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

}  // namespace boxsup

TORCH_LIBRARY(boxsup, m) {
  m.def(
      "proposal_costs(Tensor units, Tensor members, Tensor logits, Tensor boxes, Tensor labels) -> "
      "(Tensor area, Tensor bbox, Tensor iou_box, Tensor iou_mask, Tensor mean_ce)");
  m.def(
      "proposal_costs_batched(Tensor[] units, Tensor[] members, Tensor[] logits, Tensor[] boxes, "
      "Tensor[] labels) -> (Tensor[] area, Tensor[] bbox, Tensor[] iou_box, Tensor[] iou_mask, "
      "Tensor[] mean_ce)");
  m.def("pack_masks(Tensor masks) -> Tensor");
  m.def("unpack_masks(Tensor words, int length) -> Tensor");
  m.def("paint_labels(Tensor units, Tensor members, Tensor chosen, Tensor labels, Tensor? boxes) -> Tensor");
}

namespace {
bool cuda_compiled() {
#ifdef BOXSUP_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "boxsup_ext compiled kernels (ops are registered under torch.ops.boxsup)";
  module.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled in");
  module.def("version", []() { return std::string(BOXSUP_VERSION); }, "package version the kernels were built for");
  module.def("num_threads", []() { return at::get_num_threads(); }, "threads at::parallel_for uses");
  module.def("parallel_info", []() { return at::get_parallel_info(); }, "ATen's parallel backend description");
}
