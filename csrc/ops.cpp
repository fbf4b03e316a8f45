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
  // Character for character the table in wvq_kernels/_schemas.py, which the Triton namespace
  // also equals (tests/test_registry.py): unnamed returns and SymInt sizes, as triton_op infers.
  m.def("assign(Tensor x, Tensor codebook, str metric, str precision, bool histogram)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("code_histogram(Tensor indices, SymInt num_codes) -> Tensor");
  m.def("code_sums(Tensor indices, Tensor x, SymInt num_codes) -> (Tensor, Tensor)");
  m.def("usage(Tensor counts) -> (Tensor, Tensor)");
  m.def("moments(Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("soft_assign_stats(Tensor x, Tensor codebook, float tau, float lam)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // ---- issue 16: sample_codes, soft_assign_entropy ----
  m.def("sample_codes(Tensor x, Tensor codebook, float temperature, SymInt seed, str metric,"
        " str precision) -> (Tensor, Tensor)");
  m.def("soft_assign_entropy(Tensor x, Tensor codebook, float tau) -> (Tensor, Tensor)");
  // Its gradients on the CPU (wvq_kernels/_schemas.py's CPU_GRADIENT_OPS).
  m.def("soft_assign_entropy_backward(Tensor x, Tensor codebook, float tau, Tensor grad_entropy,"
        " Tensor grad_mean) -> (Tensor, Tensor)");
  // ---- end issue 16 ----
  m.def("cpu_isa() -> str", &wvq::cpu::cpu_isa);
  // Top-k nearest codes (issue 16).
  m.def("assign_topk(Tensor x, Tensor codebook, SymInt k, str metric, str precision,"
        " bool histogram) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(wvq, CPU, m) {
  m.impl("assign", &wvq::cpu::assign);
  m.impl("code_histogram", &wvq::cpu::code_histogram);
  m.impl("code_sums", &wvq::cpu::code_sums);
  m.impl("usage", &wvq::cpu::usage);
  m.impl("moments", &wvq::cpu::moments);
  m.impl("soft_assign_stats", &wvq::cpu::soft_assign_stats);
  m.impl("assign_topk", &wvq::cpu::assign_topk);
  m.impl("sample_codes", &wvq::cpu::sample_codes);                // issue 16
  m.impl("soft_assign_entropy", &wvq::cpu::soft_assign_entropy);  // issue 16
  m.impl("soft_assign_entropy_backward", &wvq::cpu::soft_assign_entropy_backward);
}
