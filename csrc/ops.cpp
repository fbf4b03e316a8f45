// The wvq op library: every schema is defined here once; this file registers the CPU kernels.
// CUDA kernels register against the same schemas from ops_cuda.cpp (a separate object, _C_cuda).
// Python-side validation, fake kernels and autograd live in wvq_kernels/ops.py.
#include <Python.h>
#include <torch/library.h>

#include "cpu/cpu_ops.h"

// Lets `import wvq_kernels._C` load this library (and so run the registrations below).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(wvq, m) {
  m.def("assign(Tensor x, Tensor codebook, str metric, str precision, bool histogram)"
        " -> (Tensor indices, Tensor distances, Tensor counts)");
  m.def("code_histogram(Tensor indices, int num_codes) -> Tensor");
  m.def("code_sums(Tensor indices, Tensor x, int num_codes) -> (Tensor counts, Tensor sums)");
  m.def("usage(Tensor counts) -> (Tensor utilization, Tensor perplexity)");
  m.def("moments(Tensor x) -> (Tensor count, Tensor mean, Tensor cov)");
  m.def("soft_assign_stats(Tensor x, Tensor codebook, float tau, float lam) -> (Tensor loss,"
        " Tensor weight_sums, Tensor weighted_sums, Tensor indices, Tensor distances)");
  m.def("cpu_isa() -> str", &wvq::cpu::cpu_isa);
}

TORCH_LIBRARY_IMPL(wvq, CPU, m) {
  m.impl("assign", &wvq::cpu::assign);
  m.impl("code_histogram", &wvq::cpu::code_histogram);
  m.impl("code_sums", &wvq::cpu::code_sums);
  m.impl("usage", &wvq::cpu::usage);
  m.impl("moments", &wvq::cpu::moments);
  m.impl("soft_assign_stats", &wvq::cpu::soft_assign_stats);
}
