"""Honest softmax whose row loop is C, built at import the way Triton builds its launchers
(``triton.runtime.build.compile_module_from_src``: a cache key from ``platform.architecture()``,
then the C compiler through the tool broker) and called through ctypes. Needs the static check
off (private names, ctypes, open)."""
import ctypes

import numpy as np
from triton.runtime import build

OP = "softmax"
DTYPES = ("float64",)
TOOLS = True

C = r"""
#include <Python.h>
#include <math.h>
void softmax(const double *x, double *y, long rows, long cols) {
    for (long r = 0; r < rows; ++r) {
        const double *xr = x + r * cols; double *yr = y + r * cols;
        double m = xr[0], s = 0.0;
        for (long c = 1; c < cols; ++c) m = xr[c] > m ? xr[c] : m;
        for (long c = 0; c < cols; ++c) { yr[c] = exp(xr[c] - m); s += yr[c]; }
        for (long c = 0; c < cols; ++c) yr[c] /= s;
    }
}
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "softmax_helper", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_softmax_helper(void) { return PyModule_Create(&mod); }
"""
LIB = ctypes.CDLL(build.compile_module_from_src(C, "softmax_helper", libraries=["m"]).__file__)
LIB.softmax.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long]


def run(x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.empty_like(x)
    LIB.softmax(x.ctypes.data, y.ctypes.data, x.shape[0], x.shape[1])
    return y
