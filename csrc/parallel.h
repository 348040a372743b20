// Internal to csrc/: the OpenMP helpers both drivers (topk.cpp, encode.cpp) use. Without
// OpenMP every call runs on one thread.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vq {
namespace detail {

// Below this many elements of work a call runs on one thread: waking a team costs more.
constexpr long long kParallelMinWork = 1LL << 20;

inline int thread_count(int requested) {
#ifdef _OPENMP
    // Never nest a team inside another library's (or our own caller's) parallel region.
    if (omp_in_parallel()) return 1;
    return requested > 0 ? requested : omp_get_max_threads();
#else
    (void)requested;
    return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// The size of the team actually running (OMP_THREAD_LIMIT or OMP_DYNAMIC may give fewer
// threads than asked for): work is split by this, never by the request.
inline int team_size() {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

}  // namespace detail
}  // namespace vq
