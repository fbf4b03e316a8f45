// The one threading API of the CPU kernels: OpenMP, with at most at::get_num_threads() threads,
// so that torch.set_num_threads limits every kernel.
// OpenMP rather than at::parallel_for because the assign scan and the soft-assign passes need a
// dynamic schedule: their tasks' cost depends on the data, and static chunks leave threads idle.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>

namespace wvq::cpu {

// Splits whose shape must not depend on the thread count (so that floating-point results do
// not either) aim for this many tasks, which keeps up to 16 threads busy.
inline constexpr int64_t kFixedSplitTasks = 16;

namespace detail {

// One thread per `grain` items (rounded up), at most at::get_num_threads(); 1 below `grain`
// items, and inside a parallel region, where more threads would only oversubscribe the cores.
inline int threads_for(int64_t items, int64_t grain) {
  if (items < grain || omp_in_parallel() || at::in_parallel_region()) return 1;
  const int64_t wanted = (items + grain - 1) / grain;
  return static_cast<int>(std::min<int64_t>(wanted, at::get_num_threads()));
}

// An exception must not leave an OpenMP region (the process would terminate): the first one
// thrown by any thread is kept and rethrown by the calling thread after the region.
class FirstError {
 public:
  template <class F>
  void run(const F& f) noexcept {
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
};

}  // namespace detail

// body(first, last) on one contiguous slice of [begin, end) per thread, the slices equal and the
// threads counted by threads_for (as at::parallel_for): for work whose cost is even over the range.
template <class Body>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const Body& body) {
  if (begin >= end) return;
  const int threads = detail::threads_for(end - begin, std::max<int64_t>(grain, 1));
  if (threads == 1) {
    body(begin, end);
    return;
  }
  detail::FirstError error;
#pragma omp parallel num_threads(threads)
  {
    const int64_t slice = (end - begin + omp_get_num_threads() - 1) / omp_get_num_threads();
    const int64_t first = begin + omp_get_thread_num() * slice;
    if (first < end) error.run([&] { body(first, std::min(end, first + slice)); });
  }
  error.rethrow();
}

// body(task) for every task in [0, count), handed to the threads one at a time as they become
// free (a dynamic schedule): for tasks whose cost depends on the data.
template <class Body>
void parallel_tasks(int64_t count, const Body& body) {
  const int threads = detail::threads_for(count, 1);
  if (threads == 1) {
    for (int64_t task = 0; task < count; ++task) body(task);
    return;
  }
  detail::FirstError error;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t task = 0; task < count; ++task) error.run([&] { body(task); });
  error.rethrow();
}

}  // namespace wvq::cpu
