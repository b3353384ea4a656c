// The Python module boxsup_ext._C: importing it loads the library, which registers the ops
// (torch.ops.boxsup), and its functions give the build facts that boxsup_ext.ops.build_info reports.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstring>
#include <string>

#ifndef BOXSUP_VERSION
#define BOXSUP_VERSION "0.0.0"
#endif
#ifndef BOXSUP_TORCH_VERSION
#define BOXSUP_TORCH_VERSION "unknown"
#endif

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
  // The marker is also found by boxsup_ext.ops in the library file when the library fails to load.
  static const char* const kBuiltAgainst = "boxsup-built-against-torch=" BOXSUP_TORCH_VERSION;
  module.def(
      "torch_version", []() { return std::string(kBuiltAgainst + std::strlen("boxsup-built-against-torch=")); },
      "torch.__version__ of the torch the kernels were built against");
  module.def("num_threads", []() { return at::get_num_threads(); }, "threads at::parallel_for uses");
}
