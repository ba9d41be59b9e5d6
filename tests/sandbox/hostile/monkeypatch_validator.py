# expect: forbidden
# expect-unchecked: crash|wrong-result
"""Patches UHOP's validator to accept anything, then returns garbage."""
import uhop.measure.validate as v

OP = "softmax"
v.compare = lambda *a, **k: v.Verdict(True)


def run(x):
    return x * 0
