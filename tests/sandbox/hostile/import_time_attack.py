# expect: forbidden
# expect-unchecked: forbidden
"""Does its damage at import time, before run() is ever called."""
import socket

socket.create_connection(("10.0.0.1", 22), timeout=1)
OP = "softmax"


def run(x):
    return x.copy()
