// The device memory a batched CUDA proposal_costs call may use for its scratch tables.
#pragma once

#include <cstdint>

namespace boxsup {

// BOXSUP_CUDA_SCRATCH_MB in bytes (whole megabytes; default 2048, also for 0, negative or
// non-numeric values). Read by the op on each call, so a caller may change it between calls.
int64_t cuda_scratch_budget_bytes();

}  // namespace boxsup
