# expect: forbidden
"""Climbs interpreter frames to reach the worker's globals."""
OP = "softmax"


def run(x):
    try:
        raise RuntimeError
    except RuntimeError as e:
        frame = e.__traceback__.tb_frame.f_back
    frame.f_globals["compare"] = None
    return x.copy()
