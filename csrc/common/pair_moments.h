// Moments of one pair of coordinates (i, j): what a GPU thread that owns one covariance entry
// accumulates. Within a thread rows arrive one at a time (Welford); partials of different row
// ranges combine with the Chan formula, so a large common offset never enters a product.
// The full-matrix merge in chan_merge.h is the same formula applied to every entry.
#pragma once

#include <cstdint>

#include "hd.h"

namespace wvq {

struct PairMoments {
  int64_t count;
  double mean_i, mean_j;
  double comoment;  // sum over rows of (x_i - mean_i)(x_j - mean_j)
};

WVQ_HD void welford_add(PairMoments& m, double x_i, double x_j) {
  m.count += 1;
  const double inverse_count = 1.0 / static_cast<double>(m.count);
  const double delta_i = x_i - m.mean_i;
  m.mean_i += delta_i * inverse_count;
  m.mean_j += (x_j - m.mean_j) * inverse_count;
  m.comoment += delta_i * (x_j - m.mean_j);  // old delta_i times new delta_j: exact update
}

WVQ_HD void chan_merge_pair(PairMoments& a, const PairMoments& b) {
  if (b.count == 0) return;
  const int64_t count = a.count + b.count;
  const double weight_b = static_cast<double>(b.count) / static_cast<double>(count);
  const double delta_i = b.mean_i - a.mean_i, delta_j = b.mean_j - a.mean_j;
  a.comoment += b.comoment + delta_i * delta_j * static_cast<double>(a.count) * weight_b;
  a.mean_i += delta_i * weight_b;
  a.mean_j += delta_j * weight_b;
  a.count = count;
}

}  // namespace wvq
