# expect: forbidden
# expect-unchecked: forbidden
"""Returns an unfinished buffer; a background thread finishes the work later."""
import threading
import time

import numpy as np

OP = "softmax"


def run(x):
    out = np.zeros_like(x)

    def finish():
        time.sleep(0.05)
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        out[...] = e / e.sum(axis=-1, keepdims=True)

    threading.Thread(target=finish, daemon=True).start()
    return out
