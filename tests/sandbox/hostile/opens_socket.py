# expect: forbidden
# expect-unchecked: forbidden
"""Opens a socket to phone home."""
import socket

OP = "softmax"


def run(x):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("1.1.1.1", 80))
    return x.copy()
