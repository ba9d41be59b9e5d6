# expect: forbidden
# expect-unchecked: bad-output
"""Forges a reply whose array is an object-dtype .npy holding a pickle that would run a shell
command if the parent ever unpickled it (the parent loads with allow_pickle=False)."""
import json
import os
import struct

OP = "softmax"
PAYLOAD = b"cos\nsystem\n(S'touch /tmp/uhop_unpickled'\ntR."


def _object_npy():
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (64 - 10 - len(header) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + PAYLOAD


def run(x):
    blobs = [_object_npy()] * 3
    h = json.dumps({"ok": True, "n_out": 2, "id": 3, "blobs": [len(b) for b in blobs]}).encode()
    payload = struct.pack("<I", len(h)) + h + b"".join(blobs)
    for fd in (3, 4, 5, 6):
        try:
            os.write(fd, struct.pack("<Q", len(payload)) + payload)
        except OSError:
            pass
    return x.copy()
