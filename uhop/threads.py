"""One thread policy for every CPU library UHOP's kernels share a process with.

A model's forward runs one op after another, each in a different library's thread pool: UHOP's
numba kernels (an OpenMP pool), numpy's BLAS (OpenBLAS pthreads), torch (its own OpenMP). Each
pool busy-waits for a while after its parallel region ends, so the next library's threads find
every core taken by spinning threads, and a chain of ops whose each step is fast alone runs
several times slower end to end (1.7-2.7x in a GPT-2 forward on 2 cores).

``UHOP_THREADS`` (applied at ``import uhop``, before UHOP starts any pool):

- ``brief`` (default): OpenMP pools loaded after ``import uhop`` (numba's; torch's when torch is
  imported after UHOP) spin briefly after a parallel region, then sleep (``GOMP_SPINCOUNT=3000``
  for GNU OpenMP, tens of microseconds; ``KMP_BLOCKTIME=1``, 1 ms, for LLVM/Intel OpenMP). Back
  to back regions of one library find their threads awake; a pool that finished hands the cores
  to the next library a fraction of a millisecond later. OpenBLAS's own pthreads (numpy's BLAS when it is
  loaded after ``import uhop``, and always in UHOP's worker processes) spin the shortest time it
  allows before sleeping (``OPENBLAS_THREAD_TIMEOUT=4``, 2^4 spin cycles): on the 2-core machine a
  torch SDPA right after a numpy GEMM took 28-29 ms with OpenBLAS's default spin and 21-23 ms with
  this, against 16-20 ms once the BLAS threads slept (the tuner had timed torch's kernel at twice
  its speed after numpy candidates, and picked wrongly);
- ``passive``: as ``brief``, but the OpenMP threads sleep at once (``OMP_WAIT_POLICY=PASSIVE``,
  ``KMP_BLOCKTIME=0``). Every parallel region then pays a wake-up: on the 2-core VM a torch op
  on a 64x64 tensor took 55-60 us instead of 2-5 us (torch imported after UHOP). It was the
  default until that was measured;
- ``default``: leave the libraries' own settings (GNU OpenMP spins about 300,000 times, a
  millisecond or more, after each region; LLVM's 200 ms).

A value the user already set in the environment always wins. Pool sizes stay each library's
default (all cores the process may use): the ops run one after another, not side by side.
"""

from __future__ import annotations

import logging
import os
import sys

from uhop import config

POLICIES = config.THREAD_POLICIES
#: the environment variables that set each library's wait behaviour (numpy: its OpenBLAS)
_CONTROLS = {"numpy": ("OPENBLAS_THREAD_TIMEOUT",), "torch": ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME"),
             "numba": ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}  # fmt: skip
#: libraries with thread pools already imported when the policy was applied: it cannot reach them
#: (a pool reads its settings once, when the library loads)
loaded_before: tuple[str, ...] = ()
_applied = False
_told = False
log = logging.getLogger("uhop")


def apply() -> str:
    """Apply ``UHOP_THREADS`` to the environment (idempotent); returns the policy in force.
    Read alone (:func:`uhop.config.read`): this runs at ``import uhop``, before the other settings
    are needed. A bad value changes nothing here and does not fail the import: the first use of
    the settings raises the ValueError naming it (the ``uhop`` command: one line, exit 2)."""
    global loaded_before, _applied
    if not _applied:
        # a library the user configured in the environment before Python started is reached anyway
        loaded_before = tuple(m for m in ("numpy", "torch", "numba") if m in sys.modules
                              and not any(v in os.environ for v in _CONTROLS[m]))  # fmt: skip
        _applied = True
    try:
        policy = config.read("threads")
    except ValueError:
        return "default"
    if policy == "brief" and "OMP_WAIT_POLICY" not in os.environ:  # a user's wait policy wins
        os.environ.setdefault("GOMP_SPINCOUNT", "3000")
        os.environ.setdefault("KMP_BLOCKTIME", "1")
    elif policy == "passive":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("KMP_BLOCKTIME", "0")
    if policy != "default":
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    return policy


def note_unreached() -> None:
    """Once per process, at the first CPU tuning run: a UhopWarning naming the libraries imported
    before UHOP, whose pools the policy did not reach. numpy first matters most: OpenBLAS's threads
    then spin for their default time after every BLAS call, about 0.1 s, on cores the next op needs (the
    mixed chain of ``benchmarks/thread_policy.py`` at 64 rows, one store: 2.3 ms with numpy imported
    first, 1.5 ms with the same settings in place from the start; four 64x64 torch ops after it
    158 us against 26 us, 2-core VM). torch first (its libgomp is then numba's too, with the
    default spin): rmsnorm -> GEMM + tanh-GELU -> softmax at 512 x 1024, each UHOP's pick, ran the
    GEMM in 10.1 ms and the softmax in 3.1 ms against 5.4 and 0.32 ms with uhop imported first; the
    tuner times each kernel alone and cannot see it. A warning, not a log line: the user's fix is
    one line."""
    global _told
    if _told or not loaded_before:
        return
    _told = True
    policy = config.read("threads")
    if policy != "default":
        import warnings

        from uhop.errors import UhopWarning

        warnings.warn(f"thread policy {policy!r} does not reach {', '.join(loaded_before)}: imported before uhop, "
                      "its threads keep spinning on cores UHOP's next kernel needs (CPU chains of ops ran 2-10x "
                      "slower). Import uhop first, or start Python with GOMP_SPINCOUNT=3000 "
                      "OPENBLAS_THREAD_TIMEOUT=4 set; see UHOP_THREADS in the README", UhopWarning, stacklevel=2)  # fmt: skip
