// Operator schemas of the boxsup library.
//
// Kernels register themselves per backend in cpu/ and cuda/ (TORCH_LIBRARY_IMPL), so a CPU-only
// build simply has no CUDA kernel and this file needs no #ifdef; the Python module with the build
// facts is bindings.cpp.
#include <torch/library.h>

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
  m.def(
      "paint_labels(Tensor units, Tensor members, Tensor chosen, Tensor labels, Tensor? boxes, bool clip=True, "
      "int unassigned=-1) -> Tensor");
  m.def(
      "paint_labels_batched(Tensor[] units, Tensor[] members, Tensor[] chosen, Tensor[] labels, Tensor[] boxes, "
      "bool clip=True, int unassigned=-1) -> Tensor[]");
}
