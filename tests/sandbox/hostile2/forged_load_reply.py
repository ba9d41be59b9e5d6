"""Round 2, class 2: shrinks its request pipe to 4 KiB, forges the reply to the load request (its
id read from the worker's frame) and sleeps, so the parent's next write (inputs of the first call)
blocks for ever unless it has a deadline."""
import fcntl
import json
import operator
import struct
import time
import typing

OP = "softmax"
sys = operator.attrgetter("modules")(typing.sys)["sys"]

f = sys._getframe()
worker = header = None
while f is not None:
    if f.f_code.co_name == "cmd_load":
        worker, header = f.f_locals["self"], f.f_locals["header"]
    f = f.f_back
for fd in (worker.rfd, worker.wfd):
    try:
        fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ
    except OSError:
        pass
h = json.dumps({"ok": True, "layers": [], "id": header["id"], "blobs": []}).encode()
payload = struct.pack("<I", len(h)) + h
worker.frames.write_all(worker.wfd, struct.pack("<Q", len(payload)) + payload)
time.sleep(3600)


def run(x):
    return x
