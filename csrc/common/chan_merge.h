// Exact merge of two sets of first and second moments (Chan, Golub and LeVeque):
// n = na + nb, delta = mean_b - mean_a, mean = mean_a + delta * nb / n,
// M2 = M2a + M2b + delta delta^T * na * nb / n, where M2 is the centred scatter matrix
// sum_i (x_i - mean)(x_i - mean)^T. Used per tile, per thread and across ranks, so a large
// common offset never enters a sum of squares.
#pragma once

#include <cstdint>

#include "hd.h"

namespace wvq {

// Merges (count_b, mean_b, m2_b) into (count_a, mean_a, m2_a) in place. m2 is dim x dim,
// row-major. count_b == 0 leaves a unchanged; count_a == 0 copies b.
WVQ_HD void chan_merge(int64_t& count_a, double* mean_a, double* m2_a, int64_t count_b,
                       const double* mean_b, const double* m2_b, int64_t dim) {
  if (count_b == 0) return;
  const int64_t count = count_a + count_b;
  const double weight_b = static_cast<double>(count_b) / static_cast<double>(count);
  const double cross = static_cast<double>(count_a) * weight_b;  // na * nb / n
  for (int64_t i = 0; i < dim; ++i) {
    const double delta_i = mean_b[i] - mean_a[i];
    for (int64_t j = 0; j < dim; ++j) {
      const double delta_j = mean_b[j] - mean_a[j];
      m2_a[i * dim + j] += m2_b[i * dim + j] + delta_i * delta_j * cross;
    }
  }
  for (int64_t i = 0; i < dim; ++i) mean_a[i] += (mean_b[i] - mean_a[i]) * weight_b;
  count_a = count;
}

}  // namespace wvq
