// Single-pass mean and covariance in double. Rows are cut into fixed tiles; each tile is
// centred on its own mean before its scatter matrix is formed, and tiles are combined with the
// Chan merge, so a large common offset (mean 1e4, spread 1e-2) never enters a sum of squares.
// The split into tiles and groups depends only on N, never on the thread count, so results are
// reproducible bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "../common/chan_merge.h"
#include "cpu_ops.h"
#include "parallel.h"

namespace wvq::cpu {
namespace {

constexpr int64_t kTileRows = 256;

struct Accumulator {
  int64_t count = 0;
  std::vector<double> mean, m2;
  explicit Accumulator(int64_t dim) : mean(dim, 0.0), m2(dim * dim, 0.0) {}
};

// Adds sum_r c_r c_r^T to the upper triangle, four rows at a time so that each pass over the
// D x D matrix does four rank-one updates.
void add_scatter(const double* centred, int64_t rows, int64_t dim, double* m2) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const double* c0 = centred + r * dim;
    const double *c1 = c0 + dim, *c2 = c1 + dim, *c3 = c2 + dim;
    for (int64_t i = 0; i < dim; ++i) {
      const double a0 = c0[i], a1 = c1[i], a2 = c2[i], a3 = c3[i];
      double* out = m2 + i * dim;
      for (int64_t j = i; j < dim; ++j) out[j] += a0 * c0[j] + a1 * c1[j] + a2 * c2[j] + a3 * c3[j];
    }
  }
  for (; r < rows; ++r) {
    const double* c = centred + r * dim;
    for (int64_t i = 0; i < dim; ++i)
      for (int64_t j = i; j < dim; ++j) m2[i * dim + j] += c[i] * c[j];
  }
}

void mirror_upper(double* m2, int64_t dim) {
  for (int64_t i = 0; i < dim; ++i)
    for (int64_t j = 0; j < i; ++j) m2[i * dim + j] = m2[j * dim + i];
}

template <typename scalar_t>
void add_tile(const scalar_t* x, int64_t rows, int64_t dim, Accumulator& group,
              Accumulator& tile, std::vector<double>& centred) {
  std::fill(tile.mean.begin(), tile.mean.end(), 0.0);
  std::fill(tile.m2.begin(), tile.m2.end(), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < dim; ++d) tile.mean[d] += static_cast<double>(x[r * dim + d]);
  for (int64_t d = 0; d < dim; ++d) tile.mean[d] /= static_cast<double>(rows);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < dim; ++d)
      centred[r * dim + d] = static_cast<double>(x[r * dim + d]) - tile.mean[d];
  add_scatter(centred.data(), rows, dim, tile.m2.data());
  mirror_upper(tile.m2.data(), dim);
  tile.count = rows;
  chan_merge(group.count, group.mean.data(), group.m2.data(), tile.count, tile.mean.data(),
             tile.m2.data(), dim);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> moments(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2, "wvq::moments: x must be 2-D (N, D)");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "wvq::moments: x must be floating point");
  TORCH_CHECK(x_in.size(1) > 0, "wvq::moments: D must be at least 1, got 0");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), dim = x.size(1);
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  const int64_t groups = std::min(kFixedSplitTasks, tiles);
  const int64_t tiles_per_group = groups > 0 ? (tiles + groups - 1) / groups : 0;
  std::vector<Accumulator> partial(groups, Accumulator(dim));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "wvq_moments", [&] {
    const scalar_t* data = x.data_ptr<scalar_t>();
    parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      Accumulator tile(dim);
      std::vector<double> centred(kTileRows * dim);
      for (int64_t g = begin; g < end; ++g) {
        const int64_t last_tile = std::min(tiles, (g + 1) * tiles_per_group);
        for (int64_t t = g * tiles_per_group; t < last_tile; ++t) {
          const int64_t rows = std::min(kTileRows, n - t * kTileRows);
          add_tile(data + t * kTileRows * dim, rows, dim, partial[g], tile, centred);
        }
      }
    });
  });

  Accumulator total(dim);
  for (const Accumulator& g : partial)
    chan_merge(total.count, total.mean.data(), total.m2.data(), g.count, g.mean.data(),
               g.m2.data(), dim);
  at::Tensor count = at::empty({}, at::kLong).fill_(n);
  at::Tensor mean = at::zeros({dim}, at::kDouble);
  at::Tensor cov = at::zeros({dim, dim}, at::kDouble);
  if (n > 0) {
    std::copy(total.mean.begin(), total.mean.end(), mean.data_ptr<double>());
    double* out = cov.data_ptr<double>();
    for (int64_t i = 0; i < dim * dim; ++i) out[i] = total.m2[i] / static_cast<double>(n);
  }
  return {count, mean, cov};
}

}  // namespace wvq::cpu
