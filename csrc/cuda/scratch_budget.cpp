// The environment setting of the CUDA scratch budget (see scratch_budget.h), kept out of the kernel
// file, which takes the budget as an argument.
#include "scratch_budget.h"

#include <cstdlib>

namespace boxsup {

int64_t cuda_scratch_budget_bytes() {
  const char* env = std::getenv("BOXSUP_CUDA_SCRATCH_MB");
  const long long mb = env ? std::atoll(env) : 2048;
  return static_cast<int64_t>(mb > 0 ? mb : 2048) << 20;
}

}  // namespace boxsup
