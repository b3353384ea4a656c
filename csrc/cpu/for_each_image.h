// The CPU batched ops run their images in parallel, one image per worker (nested parallel_for
// calls run inline); whatever the thread count, the error reported is that of the first failing image.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <exception>
#include <vector>

namespace boxsup {

template <typename Fn>
void for_each_image(size_t count, const Fn& fn) {
  std::vector<std::exception_ptr> errors(count);
  at::parallel_for(0, static_cast<int64_t>(count), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      try {
        fn(static_cast<size_t>(b));
      } catch (...) {
        errors[b] = std::current_exception();
      }
    }
  });
  for (const auto& error : errors)
    if (error) std::rethrow_exception(error);
}

}  // namespace boxsup
