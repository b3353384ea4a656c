// Preparation of paint_labels' inputs (see paint_inputs.h).
#include "paint_inputs.h"

#include "checks.h"

namespace boxsup {

namespace {

// A small per-box tensor (chosen, labels, boxes) on the host: free when it is already there.
at::Tensor host_copy(const at::Tensor& t, at::ScalarType dtype) { return t.to(at::kCPU, dtype).contiguous(); }

// in.chosen and in.labels from the tensors, each value checked against its range.
void read_choices(const at::Tensor& chosen, const at::Tensor& labels, PaintInputs& in) {
  const at::Tensor c = host_copy(chosen, at::kLong);
  const at::Tensor l = host_copy(labels, at::kLong);
  in.chosen.assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  in.labels.assign(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel());
  for (size_t m = 0; m < in.chosen.size(); ++m) {
    TORCH_CHECK(in.chosen[m] >= -1 && in.chosen[m] < in.num_candidates, "chosen", in.where, "[", m,
                "] = ", in.chosen[m], " is outside [-1, N) with N = ", in.num_candidates, " candidates");
    TORCH_CHECK(in.labels[m] >= 0 && in.labels[m] <= 255, "labels", in.where, "[", m, "] = ", in.labels[m],
                " does not fit a uint8 label map [0, 255]");
  }
}

// in.box_info from the boxes (checked: shape, dtype, device, then each box's coordinates).
void read_boxes(const at::Tensor& boxes, const at::Tensor& units, PaintInputs& in) {
  check_paint_boxes(boxes, units, static_cast<int64_t>(in.chosen.size()), in.where);
  const at::Tensor bc = host_copy(boxes, at::kDouble);
  const double* box = bc.data_ptr<double>();
  in.box_info.resize(in.chosen.size() * math::kBoxInfoFields);
  for (size_t m = 0; m < in.chosen.size(); ++m) {
    if (!math::box_is_valid(box + 4 * m)) fail_box(in.where, static_cast<int64_t>(m), box + 4 * m);
    math::box_info(box + 4 * m, in.labels.data(), static_cast<int64_t>(m), in.height, in.width,
                   in.box_info.data() + m * math::kBoxInfoFields);
  }
}

}  // namespace

PaintInputs prepare_paint_inputs(const at::Tensor& units, const at::Tensor& members, const at::Tensor& chosen,
                                 const at::Tensor& labels, const std::optional<at::Tensor>& boxes, bool clip,
                                 int64_t unassigned, const std::string& where) {
  check_paint_args(units, members, chosen, labels, unassigned, where);
  PaintInputs in;
  in.units = units.contiguous();
  in.members = members.contiguous();
  static_cast<ImageDims&>(in) = image_dims(units, members, 0, chosen.size(0));
  in.unassigned = unassigned;
  in.where = where;
  read_choices(chosen, labels, in);
  if (boxes.has_value()) {
    read_boxes(*boxes, units, in);
    in.clip = clip;
  } else {
    TORCH_CHECK(unassigned < 0, "paint_labels", where,
                " needs boxes to mark the boxes without a candidate (unassigned = ", unassigned, ")");
  }
  return in;
}

std::vector<int64_t> paint_order(const std::vector<int64_t>& chosen, const std::vector<int64_t>& area) {
  std::vector<int64_t> regions, region_area;
  for (size_t m = 0; m < chosen.size(); ++m) {
    if (chosen[m] < 0) continue;
    regions.push_back(static_cast<int64_t>(m));
    region_area.push_back(area[m]);
  }
  const int64_t count = static_cast<int64_t>(regions.size());
  std::vector<int64_t> order(count);
  for (int64_t k = 0; k < count; ++k) order[math::paint_rank(region_area.data(), count, k)] = regions[k];
  return order;
}

std::vector<PaintInputs> prepare_paint_batch(at::TensorList units, at::TensorList members, at::TensorList chosen,
                                             at::TensorList labels, at::TensorList boxes, bool clip,
                                             int64_t unassigned) {
  check_paint_batch_args(units, members, chosen, labels, boxes);
  std::vector<PaintInputs> inputs;
  inputs.reserve(units.size());
  for (size_t b = 0; b < units.size(); ++b)
    inputs.push_back(prepare_paint_inputs(units[b], members[b], chosen[b], labels[b], boxes[b], clip, unassigned,
                                          image_where(true, b)));
  return inputs;
}

}  // namespace boxsup
