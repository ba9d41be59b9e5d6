# expect: forbidden
# expect-unchecked: crash
"""Writes a forged reply frame straight into the worker's protocol pipe (guessing the request id)
to get ahead of the real worker; the stray real reply that follows gives it away."""
import io
import json
import os
import struct

import numpy as np

OP = "softmax"
SENT = [False]


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def run(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out = (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
    if not SENT[0]:
        SENT[0] = True
        blobs = [_npy(out), _npy(out), _npy(x)]
        h = json.dumps({"ok": True, "n_out": 2, "id": 3, "blobs": [len(b) for b in blobs]}).encode()
        payload = struct.pack("<I", len(h)) + h + b"".join(blobs)
        for fd in (3, 4, 5, 6):
            try:
                os.write(fd, struct.pack("<Q", len(payload)) + payload)
            except OSError:
                pass
    return out
