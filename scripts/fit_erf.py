"""Regenerate the coefficients of ``uhop.backends.numpy.erf32`` (weighted least-squares fits to
math.erf in float64; printed, to paste into the module). Run: ``python scripts/fit_erf.py``."""

import math

import numpy as np
from numpy.polynomial import polynomial as P

erf = np.vectorize(math.erf)
erfc = np.vectorize(math.erfc)
nodes = (np.cos(np.linspace(0, np.pi, 4000)) + 1) / 2  # Chebyshev-spaced on [0, 1]

# |x| < 1: erf(x) = x P1(x^2), relative error weighted
s = nodes[nodes > 0]
t1 = erf(np.sqrt(s)) / np.sqrt(s)
p1 = P.polyfit(s, t1, 5, w=1 / t1)
# 1 <= |x| <= 4: erf(x) = 1 - exp(-x^2) P2(1/x)
x = 1 + 3 * nodes
r = erfc(x) * np.exp(x**2)
p2 = P.polyfit(1 / x, r, 7, w=1 / r)

print("_ERF_P1 =", tuple(float(c) for c in p1))
print("_ERF_P2 =", tuple(float(c) for c in p2))
g = np.linspace(1e-6, 1, 200001)
print("P1 max relative error", np.max(np.abs(g * P.polyval(g**2, p1) / erf(g) - 1)))
g = np.linspace(1, 4, 200001)
print("P2 max absolute error", np.max(np.abs(1 - np.exp(-(g**2)) * P.polyval(1 / g, p2) - erf(g))))
