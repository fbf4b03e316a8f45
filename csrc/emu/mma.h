// Emulated WMMA (mma.h, see cuda_emu.h). A fragment's tile is spread over the 32 lanes: lane l
// holds elements [l * num_elements, (l + 1) * num_elements) of the tile in row-major order
// (matrix_a M x K, matrix_b K x N, accumulator M x N). The hardware's mapping is unspecified,
// and any mapping keeps element-wise code on fragment.x[e] correct. mma_sync rounds its inputs
// as the tensor cores do (tf32: the low 13 mantissa bits are ignored; bf16 and half are exact in
// fp32), multiplies exactly in fp32 and accumulates in fp32, k in increasing order. The *_sync
// operations are warp rendezvous: every lane of the warp must call them; mma_sync runs once per
// warp, when the last lane arrives.
#pragma once

#include <bit>
#include <cstdint>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_emu.h"
#include "cuda_fp16.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace precision {
struct tf32 {};
}  // namespace precision

// tf32 with round to nearest, ties away from zero (cvt.rna.tf32.f32): 10 mantissa bits kept.
inline float __float_to_tf32(float value) {
  if (!std::isfinite(value)) return value;
  return std::bit_cast<float>((std::bit_cast<uint32_t>(value) + 0x1000u) & 0xffffe000u);
}

namespace detail {

template <typename T>
using Storage = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;

template <typename Use, int M, int N, int K>
struct Shape;
template <int M, int N, int K>
struct Shape<matrix_a, M, N, K> {
  static constexpr int kRows = M, kColumns = K;
};
template <int M, int N, int K>
struct Shape<matrix_b, M, N, K> {
  static constexpr int kRows = K, kColumns = N;
};
template <int M, int N, int K>
struct Shape<accumulator, M, N, K> {
  static constexpr int kRows = M, kColumns = N;
};

// The value a tensor core multiplies: tf32 operands lose their low 13 mantissa bits.
template <typename T>
float multiplicand(Storage<T> value) {
  if constexpr (std::is_same_v<T, precision::tf32>) {
    return std::bit_cast<float>(std::bit_cast<uint32_t>(value) & 0xffffe000u);
  } else {
    return static_cast<float>(value);
  }
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  using Shape = detail::Shape<Use, M, N, K>;

 public:
  using element_type = detail::Storage<T>;
  static constexpr int kRows = Shape::kRows, kColumns = Shape::kColumns;
  static constexpr int num_elements = kRows * kColumns / 32;
  static_assert(kRows * kColumns % 32 == 0, "a fragment's tile spreads evenly over the lanes");
  static_assert((M == 16 && N == 16) || (M == 32 && N == 8) || (M == 8 && N == 32),
                "WMMA shape (the floating-point ones with fp32 products)");
  element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f,
                   const typename fragment<Use, M, N, K, T, Layout>::element_type& value) {
  for (auto& element : f.x) element = value;
}

namespace detail {

// Calls fn(element, row, column) for the lane's elements of a fragment.
template <typename Fragment, typename Fn>
void for_own_elements(Fragment& f, Fn&& fn) {
  const int first = static_cast<int>(::wvq_emu::lane_id()) * Fragment::num_elements;
  for (int e = 0; e < Fragment::num_elements; ++e) {
    const int flat = first + e;
    fn(f.x[e], flat / Fragment::kColumns, flat % Fragment::kColumns);
  }
}

template <typename Fragment, typename Source>
void load(Fragment& f, const Source* p, unsigned ldm, bool row_major_memory) {
  for_own_elements(f, [&](auto& element, int row, int column) {
    element = p[row_major_memory ? row * ldm + column : column * ldm + row];
  });
  ::wvq_emu::warp_collective(0xffffffffu, nullptr, nullptr);
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout, typename Source>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const Source* p, unsigned ldm) {
  static_assert(!std::is_void_v<Layout>, "the accumulator load takes a layout_t");
  detail::load(f, p, ldm, std::is_same_v<Layout, row_major>);
}

template <int M, int N, int K, typename T, typename Source>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const Source* p, unsigned ldm,
                      layout_t layout) {
  detail::load(f, p, ldm, layout == mem_row_major);
}

template <int M, int N, int K, typename T, typename Target>
void store_matrix_sync(Target* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                       layout_t layout) {
  detail::for_own_elements(f, [&](const auto& element, int row, int column) {
    p[layout == mem_row_major ? row * ldm + column : column * ldm + row] = element;
  });
  ::wvq_emu::warp_collective(0xffffffffu, nullptr, nullptr);
}

namespace detail {

template <typename D, typename A, typename B>
struct MmaArgs {
  D* d;
  const A* a;
  const B* b;
  const D* c;
};

// Every lane's d from every lane's a and b; lane l's d depends on no other lane's c, so it may
// be written as soon as it is computed even where d is c.
template <int M, int N, int K, typename TA, typename TB, typename D, typename A, typename B>
void mma_collective(void* const* lanes, unsigned) {
  using Args = MmaArgs<D, A, B>;
  auto operands = [&](int flat, int per_lane) {
    return static_cast<const Args*>(lanes[flat / per_lane]);
  };
  for (int lane = 0; lane < 32; ++lane) {
    const Args& mine = *static_cast<const Args*>(lanes[lane]);
    typename D::element_type result[D::num_elements];
    for (int e = 0; e < D::num_elements; ++e) {
      const int flat = lane * D::num_elements + e, row = flat / N, column = flat % N;
      float sum = static_cast<float>(mine.c->x[e]);
      for (int k = 0; k < K; ++k) {
        const int flat_a = row * K + k, flat_b = k * N + column;
        const auto& a = operands(flat_a, A::num_elements)->a->x[flat_a % A::num_elements];
        const auto& b = operands(flat_b, B::num_elements)->b->x[flat_b % B::num_elements];
        const float x = multiplicand<TA>(a), y = multiplicand<TB>(b);
        sum = std::fma(x, y, sum);
      }
      result[e] = static_cast<typename D::element_type>(sum);
    }
    for (int e = 0; e < D::num_elements; ++e) mine.d->x[e] = result[e];
  }
}

}  // namespace detail

// d = a b + c, computed once for the whole warp when its last lane arrives.
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, TC>& c) {
  using D = fragment<accumulator, M, N, K, TC>;
  using A = fragment<matrix_a, M, N, K, TA, LA>;
  using B = fragment<matrix_b, M, N, K, TB, LB>;
  detail::MmaArgs<D, A, B> args{&d, &a, &b, &c};
  ::wvq_emu::warp_collective(0xffffffffu, &args, detail::mma_collective<M, N, K, TA, TB, D, A, B>);
}

}  // namespace nvcuda::wmma
