"""The sandbox worker program: run by path (``python -I -B child.py``), inside bubblewrap when
present. Stdlib and numpy only; it never imports uhop, so it starts fast and trusts nothing.

Sequence: import numpy and bind timers (pre-warm; the parent keeps one spare worker started),
report ``ready``; on ``load``: redirect stdout/stderr to a capped log, apply resource limits,
parent-death signal and the seccomp filter, and only then import the candidate. After that
everything this process says is untrusted: the parent uses its replies only to *reject*, never
to accept (outputs are compared and timed in the parent).

Protocol (both directions): frame = 8-byte little-endian length + payload; payload = 4-byte
header length + JSON header + raw ``.npy`` blobs whose lengths are listed in ``header["blobs"]``.
Arrays are written with ``np.save(allow_pickle=False)``; the parent reads them back with
``np.load(allow_pickle=False)``, so no object ever crosses the boundary by pickle.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import struct
import sys
import threading
import time

_perf = time.perf_counter  # bound before any candidate code exists in this process
_monotonic = time.monotonic

MAX_HEADER = 1 << 20


# ---- framing (also imported by the parent) --------------------------------------------------
def pack(header: dict, blobs: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    header = dict(header, blobs=[len(b) for b in blobs])
    h = json.dumps(header).encode()
    payload = b"".join([struct.pack("<I", len(h)), h, *blobs])
    return struct.pack("<Q", len(payload)) + payload


def unpack(payload: bytes) -> tuple[dict, list[bytes]]:
    if len(payload) < 4:
        raise ValueError("short frame")
    (n,) = struct.unpack_from("<I", payload)
    if n > MAX_HEADER or 4 + n > len(payload):
        raise ValueError("bad header length")
    header = json.loads(payload[4 : 4 + n])
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    lens = header.get("blobs", [])
    if not isinstance(lens, list) or not all(isinstance(x, int) and x >= 0 for x in lens):
        raise ValueError("bad blob lengths")
    if 4 + n + sum(lens) != len(payload):
        raise ValueError("blob lengths do not add up")
    blobs, off = [], 4 + n
    for ln in lens:
        blobs.append(payload[off : off + ln])
        off += ln
    return header, blobs


def npy(a) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def from_npy(b: bytes):
    import numpy as np

    return np.load(io.BytesIO(b), allow_pickle=False)


def from_raw(blob: bytes, meta) -> object:
    """A numeric array from raw bytes and ``[shape, dtype]`` (the fast path for many small arrays:
    ``np.load`` costs ~0.1 ms per array). Refuses anything but a little-endian float dtype (or
    int64/int32: embedding indices) and a shape whose size matches the bytes."""
    import numpy as np

    shape, dt = meta
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError("bad raw shape")
    if dt not in ("<f2", "<f4", "<f8", "<c8", "<c16", "<i8", "<i4"):
        raise ValueError(f"raw dtype {dt!r} is not a float or an index")
    dtype = np.dtype(dt)
    n = 1
    for d in shape:
        n *= d
    if n * dtype.itemsize != len(blob):
        raise ValueError("raw array size does not match its shape")
    return np.frombuffer(blob, dtype=dtype).reshape(shape)


def digest(a) -> str:
    """The commitment to one output of a timing batch: BLAKE2b-128 of its raw bytes (a
    cryptographic hash: no output can be made to match a digest sent before it was computed)."""
    import hashlib

    return hashlib.blake2b(memoryview(a).cast("B"), digest_size=16).hexdigest()


def raw_meta(a) -> list:
    return [list(a.shape), a.dtype.str]


# ---- the worker --------------------------------------------------------------------------------
class Fault(Exception):
    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category = category
        self.reason = reason


def _classify(exc: BaseException) -> tuple[str, str]:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300] if str(exc) else type(exc).__name__
    if isinstance(exc, Fault):
        return exc.category, exc.reason
    if isinstance(exc, MemoryError):
        return "memory", text
    if isinstance(exc, OSError) and exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
        return "disk", text
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENETUNREACH):
        return "forbidden", text
    if isinstance(exc, ValueError) and "read-only" in str(exc):
        return "input-mutated", f"wrote into an input ({text})"
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return "crash", f"called exit ({text})"
    return "crash", text


class Worker:
    def __init__(self, rfd: int, wfd: int, tools=None, shielded: bool = False) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.frames = _framing()
        self.shielded = shielded
        self.tools = tools  # toolshim.Client of this worker's broker (tool workers only)
        self.run = None
        self.slots: dict[int, list] = {}
        self.array = "numpy"
        self.device = "cpu"
        self.sync = lambda: None
        self.log_limit = 1 << 20
        self.threads = 1
        self.revealable: list = []

    def send(self, header: dict, blobs: list[bytes] = ()) -> None:  # type: ignore[assignment]
        self.frames.write_all(self.wfd, pack(header, list(blobs)))

    def recv(self) -> tuple[dict, list[bytes]]:
        return unpack(self.frames.read_frame(self.rfd))

    def serve(self) -> None:
        import numpy as np  # noqa: F401 - the pre-warm: this import is most of a worker's start-up

        for mod in ("ctypes", "resource", "importlib.util", "platform", "hashlib", "mmap"):  # used by load; warm them too
            try:
                __import__(mod)
            except ImportError:
                pass

        self.send({"ready": True, "pid": os.getpid()})
        while True:
            try:
                header, blobs = self.recv()
            except EOFError:
                os._exit(0)
            cmd = header.get("cmd")
            try:
                reply, out = getattr(self, "cmd_" + str(cmd))(header, blobs)
            except BaseException as exc:  # noqa: BLE001 - every candidate fault becomes a reply
                cat, reason = _classify(exc)
                reply, out = {"error": cat, "reason": reason}, []
            reply["id"] = header.get("id")  # echo the request id: the parent detects out-of-order frames
            self.send(reply, out)
            if cmd == "exit":
                os._exit(0)

    # ---- commands --------------------------------------------------------------------------
    def cmd_ping(self, header, blobs):
        return {"ok": True}, []

    def cmd_exit(self, header, blobs):
        return {"ok": True}, []

    def cmd_load(self, header, blobs):
        import importlib.util

        workdir = header["workdir"]
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
        path = os.path.join(workdir, header["filename"])
        with open(path, "w", encoding="utf-8") as f:
            f.write(header["source"])
        # Candidate prints go to a capped log, never into the protocol pipe.
        log = os.open(os.path.join(workdir, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        self.log_limit = int(header.get("log_bytes", 1 << 20))
        self.array, self.device = header.get("array", "numpy"), header.get("device", "cpu")
        if self.array == "torch":
            import torch  # imported before the filter so its start-up is not the candidate's

            if self.device == "cuda":
                torch.cuda.init()
                self.sync = torch.cuda.synchronize
        tool_layers = self._tools(bool(header.get("tools")))
        layers = apply_limits(header["limits"], gpu=self.device == "cuda") + tool_layers
        layers += ["shield"] if self.shielded else []
        deny_writes = bool(header.get("deny_writes", False))
        ns = [x for x in os.environ.get("UHOP_SANDBOX_LAYERS", "").split(",") if x]
        # Writes beneath the private dir only: with Landlock, and only where that dir is a
        # size-capped tmpfs (a quota); otherwise seccomp refuses every write-open.
        # (Landlock was entered in main(), single-threaded, where the private dir is a tmpfs.)
        if deny_writes and "landlock" in ns:
            deny_writes = False
        if _confine().thread_count() > 1 and not self.shielded:  # a thread outside every Landlock domain
            raise Fault("crash", f"{_confine().thread_count()} threads before confinement (BLAS pool started?)")
        if header.get("seccomp", True):
            installed = _filters().install(deny_writes=deny_writes)
            if not installed:
                raise Fault("crash", "the seccomp filter could not be installed (pyseccomp missing?)")
            layers += installed
        layers += ns
        # CPU workers count the kernel's threads (a pthread started through ctypes too); CUDA
        # workers Python's (the driver starts threads of its own on first use)
        self.threads = _confine().thread_count() if self.device != "cuda" else threading.active_count()
        spec = importlib.util.spec_from_file_location("uhop_candidate", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["uhop_candidate"] = mod
        try:
            spec.loader.exec_module(mod)
        except SyntaxError as exc:
            raise Fault("bad-file", f"SyntaxError: {exc}") from None
        except ImportError as exc:
            raise Fault("crash", f"import failed: {type(exc).__name__}: {exc}"[:300]) from None
        run = getattr(mod, "run", None)
        if not callable(run):
            raise Fault("bad-file", "the file defines no callable run(*inputs)")
        self.run = run
        self.baseline = _process_state()  # handlers as the import left them; timers must be none
        self._check_side_effects()
        return {"ok": True, "layers": layers}, []

    def _tools(self, wanted: bool) -> list[str]:
        """Trusted phase: hand Triton the broker (``subprocess`` replaced by the shim), or stop
        an unwanted broker before any candidate code exists."""
        if not wanted:
            if self.tools is not None:
                self.tools.close()  # EOF: the broker exits
                self.tools = None
            return []
        if self.tools is None:
            raise Fault("crash", "tools were requested from a worker started without them")
        if not self.tools.shielded:
            raise Fault("crash", "tools need Landlock (to keep the candidate out of the tools' memory); unavailable here")
        ts = _toolshim()
        try:
            self.tools.wait_ready()
        except ts.BrokerError as exc:
            raise Fault("crash", f"tool broker: {exc}") from None
        ts.install_triton(ts.SubprocessShim(self.tools))
        _warm_triton_compiler()
        return ["tools"]

    def cmd_put(self, header, blobs):
        """Store input sets, read-only: ``n_sets`` sets of equal arity into slots ``slot``..;
        a write into an input raises (numpy) or faults (anything else)."""
        slot, n = int(header["slot"]), int(header.get("n_sets", 1))
        arity = len(blobs) // max(n, 1)
        meta = header.get("meta")
        xs = [from_raw(b, m) for b, m in zip(blobs, meta, strict=True)] if meta else [from_npy(b) for b in blobs]
        xs = _readonly_many(xs)
        for i in range(n):
            self.slots[slot + i] = xs[i * arity : (i + 1) * arity]
        return {"ok": True}, []

    def cmd_emit(self, header, blobs):
        """Trusted phase only (the parent calibrates its transport before any candidate code runs
        here): ``n`` zero arrays of ``shape`` and ``dtype``, sent as a timing batch's outputs are."""
        import numpy as np

        if self.run is not None:
            raise Fault("crash", "emit after load")
        outs = [np.zeros(header["shape"], header["dtype"]) for _ in range(int(header["n"]))]
        t0 = _perf()
        digests = [digest(np.array(o, copy=True, order="C")) for o in outs]
        t = _perf() - t0
        _process_state()  # as a batch's side-effect check costs
        return {"ok": True, "digests": digests, "child_s": t}, []

    def _args(self, slot: int) -> list:
        xs = self.slots[slot]
        if self.array == "torch":
            import warnings

            import torch

            with warnings.catch_warnings():  # "non-writable array": on purpose
                warnings.simplefilter("ignore")
                xs = [torch.from_numpy(x).to(self.device) for x in xs]
        return xs

    def _poison(self, nbytes: int) -> None:
        # Fill a block of the output's size with 0xFF bytes (a NaN in every float dtype) and free
        # it: an np.empty of that size usually gets this block back, so unwritten elements show.
        import numpy as np

        p = np.empty(max(nbytes, 1), np.uint8)
        p.fill(0xFF)
        del p

    def _snapshot(self, out, xs, max_bytes: int = 1 << 62) -> bytes:
        """Copy the output at once (work finished later on another thread does not count)."""
        return npy(self._host_copy(out, xs, max_bytes))

    def _host_copy(self, out, xs, max_bytes: int = 1 << 62):
        """The output as a C-contiguous host copy, after the type, aliasing and dtype checks."""
        import numpy as np

        nbytes = getattr(out, "nbytes", 0)
        if isinstance(nbytes, int) and nbytes > max_bytes:  # refuse before copying a reply bomb
            raise Fault("bad-output", f"output of {nbytes} bytes, expected at most {max_bytes}")

        if self.array == "torch":
            import torch

            if type(out) is not torch.Tensor:
                raise Fault("bad-output", f"returned {type(out).__name__}, expected torch.Tensor")
            if any(out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for x in xs):
                raise Fault("bad-output", "output aliases an input (return a new tensor)")
            if out.dtype == torch.bfloat16:
                out = out.float()
            out = out.detach().to("cpu").numpy().copy()
        elif type(out) is not np.ndarray:
            raise Fault("bad-output", f"returned {type(out).__module__}.{type(out).__name__}, expected numpy.ndarray")
        elif any(np.may_share_memory(out, x) for x in xs):
            raise Fault("bad-output", "output aliases an input (return a new array)")
        if out.dtype.kind not in "fc":
            raise Fault("bad-output", f"output dtype {out.dtype}, expected a floating-point array")
        return np.array(out, copy=True, order="C")

    def _check_side_effects(self) -> None:
        """Nothing of the candidate may outlive a call: threads, interval or POSIX timers, signal
        handlers installed since load (C-level ones included), more output than the log cap."""
        now = _process_state()
        n = (now["threads"] if self.device != "cuda" else threading.active_count()) - self.threads
        if n > 0:
            raise Fault("forbidden", f"left {n} thread(s) running after returning")
        size = os.fstat(1).st_size
        if size > self.log_limit:
            raise Fault("forbidden", f"printed {size} bytes (limit {self.log_limit})")
        if now["timers"]:
            raise Fault("forbidden", f"left a timer armed after returning ({now['timers'][0]})")
        changed = [sig for sig, h in now["handlers"].items() if self.baseline["handlers"].get(sig) != h]
        if changed:
            raise Fault("forbidden", f"changed signal handlers ({changed[0]}) after load")

    def cmd_call(self, header, blobs):
        """Call run() ``repeat`` times on the same input set; reply with every output and the
        inputs as they were after the first call."""
        slot, repeat = int(header["slot"]), int(header.get("repeat", 1))
        if blobs:  # inputs sent with the call (one round trip per call for the user backend)
            self.slots[slot] = _readonly_many([from_npy(b) for b in blobs])
        outs, after = [], []
        for r in range(repeat):
            xs = self._args(slot)
            self._poison(int(header.get("out_nbytes", 0)))
            out = self.run(*xs)
            self.sync()
            outs.append(self._snapshot(out, xs, int(header.get("max_out_bytes", 1 << 62))))
            del out
            self._check_side_effects()
            if r == 0 and header.get("return_inputs"):
                after = [npy(_host(x)) for x in xs]
        return {"ok": True, "n_out": len(outs)}, outs + after

    def cmd_bench(self, header, blobs):
        """One call per slot of ``slots`` (each a distinct input set), back to back; replies with
        every output, so none can be skipped. The parent times this request on its own clock
        (the transport of the outputs calibrated before load) and checks a sample it picks after
        the reply; ``child_s`` is only a cross-check."""
        slots = [int(s) for s in header["slots"]]
        sets = [self._args(s) for s in slots]
        run, sync = self.run, self.sync
        outs = []
        sync()
        t0 = _perf()
        for xs in sets:
            outs.append(run(*xs))
        sync()
        t = _perf() - t0
        cap = int(header.get("max_out_bytes", 1 << 62))
        self.revealable = [self._host_copy(o, xs, cap) for o, xs in zip(outs, sets, strict=True)]
        self._check_side_effects()
        return {"ok": True, "child_s": t, "digests": [digest(a) for a in self.revealable]}, []

    def cmd_reveal(self, header, blobs):
        """The outputs of the last timing batch at ``idx`` (the parent picks them after it holds
        every output's digest, and checks them against those digests)."""
        arrays = [self.revealable[int(i)] for i in header["idx"]]
        return {"ok": True, "meta": [raw_meta(a) for a in arrays]}, [a.tobytes() for a in arrays]


def _readonly_many(xs: list) -> list:
    """Copies of ``xs`` in one mapping made read-only: numpy refuses writes (``ValueError``:
    the worker reports ``input-mutated``), and a write through a raw pointer faults."""
    import ctypes
    import mmap

    import numpy as np

    offs, n = [], 0
    for x in xs:
        offs.append(n)
        n += (x.nbytes + 63) // 64 * 64
    m = mmap.mmap(-1, max(n, 1))
    out = []
    for x, off in zip(xs, offs, strict=True):
        a = np.frombuffer(m, dtype=x.dtype, count=x.size, offset=off).reshape(x.shape)
        a[...] = x
        out.append(a)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if _libc().mprotect(ctypes.c_void_p(addr), ctypes.c_size_t(max(n, 1)), 1) != 0:  # PROT_READ
        raise Fault("crash", "mprotect failed")
    for a in out:
        a.flags.writeable = False
    return out


def _warm_triton_compiler() -> bool:
    """Run Triton's first MLIR pass pipeline once, in the trusted phase. LLVM installs its signal
    handlers (SIGHUP, SIGQUIT, SIGTERM, SIGUSR1/2, SIGSYS, SIGXCPU, SIGXFSZ) the first time a
    process compiles; a Triton kernel's first call compiles, so without this the side-effect
    check charged an honest kernel with "changed signal handlers" (every Triton CUDA kernel file
    failed on the H100, 2026-12-07). The baseline taken after load holds them instead. Costs a
    few ms; a Triton without these internals leaves the check as it was."""
    try:
        import triton
        from triton._C.libtriton import ir
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import ASTSource, make_backend

        @triton.jit
        def _noop(x_ptr):
            pass

        src = ASTSource(_noop, signature={"x_ptr": "*fp32"})
        backend = make_backend(GPUTarget("cuda", 80, 32))
        options = backend.parse_options({})
        stages: dict = {}
        backend.add_stages(stages, options, src.language)
        ctx = ir.context()
        ir.load_dialects(ctx)
        backend.load_dialects(ctx)
        mod = src.make_ir(GPUTarget("cuda", 80, 32), options, backend.get_codegen_implementation(options),
                          backend.get_module_map(), ctx)
        stages["ttir"](mod, {})
        return True
    except Exception:
        return False


_WATCHED = ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGUSR1", "SIGUSR2", "SIGIO", "SIGCHLD", "SIGSEGV", "SIGBUS")


def _process_state() -> dict:
    """What a call must not leave behind, cheaply (it runs in every timing batch): timers armed
    (interval timers, POSIX timers), the set of signals with a handler as the kernel sees it
    (``SigCgt``: C-level handlers installed through ctypes included), Python's handlers of the
    timer and user signals, and the thread count."""
    timers = [n for n in ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF") if any(signal.getitimer(getattr(signal, n)))]
    try:
        with open("/proc/self/timers") as f:
            if f.read().strip():
                timers.append("timer_create")
    except OSError:
        pass
    handlers: dict = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("SigCgt:", "Threads:")):
                key, _, value = line.partition(":")
                handlers[key] = value.strip()
    threads = int(handlers.pop("Threads", "1"))
    for name in _WATCHED:
        if hasattr(signal, name):
            handlers[name] = repr(signal.getsignal(getattr(signal, name)))
    return {"timers": timers, "handlers": handlers, "threads": threads}


def _host(x):
    return x.detach().to("cpu").numpy() if hasattr(x, "detach") else x


# ---- limits and seccomp -----------------------------------------------------------------------
def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_limits(limits: dict, gpu: bool) -> list[str]:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    try:  # die with the parent (bubblewrap does this too with --die-with-parent)
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/mem access from others
    except Exception:
        pass
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime) + 1 + int(limits["cpu_s"])  # the candidate's own budget
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["file_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(limits["open_files"]),) * 2)
    layers = ["rlimits"]
    if not gpu:
        # RLIMIT_AS breaks CUDA (it reserves huge virtual ranges); GPU workers are limited by
        # the parent's RSS polling instead.
        cap = _vm_size() + int(limits["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return layers


def _sibling(name: str):
    """A stdlib module next to this file, loaded by path: this worker never puts its own
    directory on sys.path, where a candidate's imports would see it."""
    import importlib.util

    key = f"_uhop_{name}"
    if key not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
        spec = importlib.util.spec_from_file_location(key, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[key] = mod
    return sys.modules[key]


def _filters():
    """syscall_filter.py: seccomp and Landlock."""
    return _sibling("syscall_filter")


def _confine():
    """confine.py: privilege drop, the fallback's namespaces, the thread count."""
    return _sibling("confine")


def _framing():
    """framing.py: reading and writing length-prefixed frames on the pipes."""
    return _sibling("framing")


def _toolshim():
    """toolshim.py: the tool broker's client and Triton's ``subprocess`` stand-in (it uses
    framing.py, loaded first)."""
    _framing()
    return _sibling("toolshim")


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def main() -> None:
    sys.dont_write_bytecode = True
    # The protocol uses private copies of stdin/stdout; fds 0-2 are handed to the candidate's log.
    rfd, wfd = os.dup(0), os.dup(1)
    try:  # a spare worker must not outlive the parent even before its limits are applied
        _libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    # Started as root: the parent names the unprivileged uid to become (bwrap's privileged mode
    # granted only CAP_SETUID/CAP_SETGID for this).
    ids = tuple(int(x) for x in os.environ.pop("UHOP_SANDBOX_IDS").split(":")) if os.environ.get("UHOP_SANDBOX_IDS") else None
    ids = ids if os.getuid() == 0 else None
    home = os.environ.get("UHOP_SANDBOX_PRIVATE", "")
    layers: list[str] = []
    if home:  # no bubblewrap: namespaces of our own (the parent made ``home`` for us)
        readable = json.loads(os.environ.pop("UHOP_SANDBOX_READABLE", "[]"))
        layers = _confine().private_namespaces(home, int(os.environ.get("UHOP_SANDBOX_DISK_BYTES", 256 << 20)), ids, readable)
    layers += _confine().drop_privileges(ids)
    os.environ["UHOP_SANDBOX_LAYERS"] = ",".join(layers)
    # BLAS and OpenMP pools start single-threaded or not at all: confinement (Landlock below,
    # seccomp at load) must be applied while this process has one thread.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    cfg = os.environ.pop("UHOP_SANDBOX_TOOLS", "")
    # A tool worker's broker starts now, inside our namespaces, before any thread exists.
    tools = _toolshim().start(json.loads(cfg)) if cfg else None
    # Then, still single-threaded, a Landlock domain that every later thread inherits: no thread of
    # the candidate can open /proc/<pid>/mem of a process outside it (bwrap's init, the broker,
    # a compiler it runs), which would be code execution beyond seccomp.
    if _confine().thread_count() != 1:
        raise SystemExit("uhop sandbox: more than one thread before confinement")
    shielded = _filters().shield()
    fs = json.loads(os.environ.pop("UHOP_SANDBOX_LANDLOCK", "null"))
    own = f"/proc/{os.getpid()}"
    # The CUDA driver writes beneath its own /proc/<pid> at cuInit (without it: error 304,
    # "OS call failed", on the H100 of 2026-12-07, whatever else it was allowed; found by
    # benchmarks/diagnosis/gpu_sandbox_layers.py). Its own entries only, and GPU workers only.
    own_w = [own] if fs and fs.get("gpu") else []
    if fs and "tmpfs" in layers and _filters().landlock(fs["writable"] + own_w, fs["readable"] + [own]):
        layers.append("landlock")  # writes beneath the private tmpfs only, for every later thread
        os.environ["UHOP_SANDBOX_LAYERS"] = ",".join(layers)
    if tools is not None:
        tools.shielded = shielded
    Worker(rfd, wfd, tools, shielded).serve()


if __name__ == "__main__":
    main()
