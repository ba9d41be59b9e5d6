"""Honest softmax whose row loop is C, built at import with Triton's own C build step
(``triton.runtime.build._build``, which runs the C compiler through the tool broker) and
called through ctypes. Needs the static check off (private names, ctypes, open)."""
import ctypes
import os
import tempfile

import numpy as np
from triton.runtime import build

OP = "softmax"
DTYPES = ("float64",)
TOOLS = True

C = r"""
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
"""
_dir = tempfile.mkdtemp()
_src = os.path.join(_dir, "softmax_helper.c")
with open(_src, "w") as f:
    f.write(C)
LIB = ctypes.CDLL(build._build("softmax_helper", _src, _dir, [], [], ["m"], []))
LIB.softmax.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long]


def run(x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.empty_like(x)
    LIB.softmax(x.ctypes.data, y.ctypes.data, x.shape[0], x.shape[1])
    return y
