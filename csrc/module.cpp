// The Python module flashstream._C. Importing it loads this shared library, which registers every
// op with the dispatcher (static TORCH_LIBRARY initialisers). It also reports how it was built and
// lets tests pick the CPU instruction set. Plain CPython API: no pybind11, no libtorch_python.
#include <Python.h>

#include "cpu/isa.h"

#ifndef FLASHSTREAM_CUDA_ARCHS
#define FLASHSTREAM_CUDA_ARCHS ""
#endif
#ifndef FLASHSTREAM_GIT_COMMIT
#define FLASHSTREAM_GIT_COMMIT "unknown"
#endif
#ifndef FLASHSTREAM_CUDA_VERSION
#define FLASHSTREAM_CUDA_VERSION ""
#endif

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(flashstream::cpu::isa_name(flashstream::cpu::active_isa()));
}

PyObject* available_cpu_isas(PyObject*, PyObject*) {
  return PyUnicode_FromString(flashstream::cpu::available_isas().c_str());
}

PyObject* set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  if (!flashstream::cpu::set_isa(name)) {
    PyErr_Format(PyExc_ValueError, "flashstream: CPU ISA '%s' is not available here (available: %s)", name,
                 flashstream::cpu::available_isas().c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction set the CPU kernels use now."},
    {"available_cpu_isas", available_cpu_isas, METH_NOARGS, "Comma-separated ISAs compiled in and supported here."},
    {"set_cpu_isa", set_cpu_isa, METH_O, "Select the CPU kernels' instruction set (baseline, avx2, avx512)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "flashstream compiled core", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() {
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#if defined(FLASHSTREAM_WITH_CUDA)
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(m, "cuda_archs", FLASHSTREAM_CUDA_ARCHS);
  PyModule_AddStringConstant(m, "cuda_version", FLASHSTREAM_CUDA_VERSION);
  PyModule_AddStringConstant(m, "torch_version", FLASHSTREAM_TORCH_VERSION);
  PyModule_AddStringConstant(m, "compiled_cpu_isas", FLASHSTREAM_CPU_ISAS);
  PyModule_AddStringConstant(m, "git_commit", FLASHSTREAM_GIT_COMMIT);
  return m;
}
