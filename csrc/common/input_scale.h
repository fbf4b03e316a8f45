// The power of two by which assignment scales an input whose largest magnitude lies outside
// [2^-32, 2^32] (the CPU and CUDA kernels; wvq_kernels/reference.py input_scales states the
// same rule for the reference and Triton). Exact, and the scores keep their order, but |c|^2 no
// longer overflows above ~1.8e19 nor do subnormal inputs vanish. The shift is clamped to
// [-128, 126] so that the scale is a float (2^-128 is subnormal, yet scaling by it is exact
// wherever the result is normal).
#pragma once

#include <cmath>

#include "common/hd.h"

namespace wvq {

WVQ_HD float power_of_two_scale(float largest) {
  if (!(largest > 0.0f) || !(largest <= 3.40282347e38f)) return 1.0f;  // zero, inf or NaN
  const int exponent = ilogbf(largest);
  if (exponent >= -32 && exponent <= 32) return 1.0f;
  const int shift = -exponent < -128 ? -128 : (-exponent > 126 ? 126 : -exponent);
  return ldexpf(1.0f, shift);
}

}  // namespace wvq
