"""Load and run compiled modules (``.vmfb``) with ``iree.runtime``, on the local CPU or a GPU.

On a local driver (``local-task``, ``local-sync``) the call path is kept thin: numpy inputs are
imported into IREE without a copy (``import_host_allocation``), the function is invoked through
the VM directly, and the result is mapped back as a numpy array that owns (keeps alive) IREE's
output buffer. The output is a new buffer on every call and never aliases an input (an identity
module would return its input, so that case is copied).

On a device driver (``cuda``, ``hip``, ``vulkan``) ``module(*arrays)`` copies the inputs to device
memory and the result back. For timing, keep the data on the device: :meth:`IreeModule.to_device`
once, :meth:`IreeModule.invoke` repeatedly (device buffers in, a device buffer out),
:meth:`IreeModule.to_host` only to check the result. UHOP's modules use IREE's synchronous ABI
(``sync func @main``: the function awaits its result fence before returning), so ``invoke`` returns
after the device finished; :meth:`IreeModule.sync` is a queue barrier on top.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from uhop.mlir.compile import ALIGN

_ELEMENT = {"float32": "FLOAT_32", "float64": "FLOAT_64", "float16": "FLOAT_16"}


#: drivers whose buffers live in host memory (the zero-copy path of ``__call__``)
LOCAL_DRIVERS = ("local-task", "local-sync")


@functools.lru_cache(maxsize=4)
def _device(driver: str) -> Any:
    import iree.runtime as rt

    return rt.Config(driver)


def device_error(driver: str) -> str | None:
    """None if ``driver`` can create a device here, else why not (IREE's message, one line)."""
    try:
        _device(driver)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: callers skip or record it
        cause = exc.__cause__ or exc  # iree.runtime wraps the driver's error ("Could not create device")
        return " ".join(f"{type(cause).__name__}: {cause}".split())[:400]
    return None


class IreeModule:
    """A loaded module: ``module(*arrays) -> ndarray`` calls its ``entry`` function."""

    def __init__(self, vmfb: bytes, *, entry: str = "main", driver: str = "local-task") -> None:
        import iree.runtime as rt

        self._rt = rt
        self.driver = driver
        config = _device(driver)
        self._device = config.device
        self._allocator = config.device.allocator
        module = rt.VmModule.copy_buffer(config.vm_instance, vmfb)
        hal = rt.create_hal_module(config.vm_instance, config.device)
        self._context = rt.VmContext(config.vm_instance, modules=[hal, module])
        fn = module.lookup_function(entry)
        if fn is None:
            raise ValueError(f"module has no function {entry!r}")
        self._fn = fn
        #: the ABI declaration of the entry, e.g. "sync func @main(%input0: tensor<...>) -> ..."
        self.declaration = str(fn.reflection.get("iree.abi.declaration", ""))
        self._memory = rt.MemoryType.DEVICE_LOCAL | rt.MemoryType.HOST_VISIBLE
        self._usage = rt.BufferUsage.DEFAULT
        self._lock = threading.Lock()  # one VM context: calls are serialized

    def _import(self, x: np.ndarray) -> Any:
        """A buffer view of ``x`` (which must be ALIGN-byte aligned and outlive the call)."""
        rt = self._rt
        element = getattr(rt.HalElementType, _ELEMENT[x.dtype.name])
        try:
            buf = self._allocator.import_host_allocation(x, self._memory, self._usage)
        except Exception:  # unaligned or otherwise unimportable host memory: copy instead
            buf = self._allocator.allocate_buffer_copy(
                memory_type=self._memory, allowed_usage=self._usage, device=self._device, buffer=x,
                element_type=element,
            )  # fmt: skip
            return buf if isinstance(buf, rt.HalBufferView) else rt.HalBufferView(buf, x.shape, element)
        return rt.HalBufferView(buf, x.shape, element)

    @property
    def synchronous(self) -> bool:
        """True if the entry awaits its results before returning (IREE's default sync ABI)."""
        return self.declaration.startswith("sync ")

    # ---- device-resident path -------------------------------------------------------------------
    def to_device(self, x: np.ndarray) -> Any:
        """A device-local copy of ``x`` as a ``HalBufferView`` (for :meth:`invoke`)."""
        rt = self._rt
        x = np.ascontiguousarray(x)
        if x.dtype.name not in _ELEMENT:
            raise TypeError(f"x must be one of {', '.join(_ELEMENT)}, got {x.dtype}")
        element = getattr(rt.HalElementType, _ELEMENT[x.dtype.name])
        buf = self._allocator.allocate_buffer_copy(
            memory_type=rt.MemoryType.DEVICE_LOCAL, allowed_usage=self._usage, device=self._device, buffer=x,
            element_type=element,
        )  # fmt: skip
        return buf if isinstance(buf, rt.HalBufferView) else rt.HalBufferView(buf, x.shape, element)

    def invoke(self, *views: Any) -> Any:
        """Call the entry on device buffer views; returns the result's ``HalBufferView`` (on the
        device). With the sync ABI the device has finished when this returns."""
        rt = self._rt
        args = rt.VmVariantList(len(views))
        for v in views:
            args.push_ref(v)
        rets = rt.VmVariantList(1)
        with self._lock:
            self._context.invoke(self._fn, args, rets)
        return rets.get_as_object(0, rt.HalBufferView)

    def to_host(self, view: Any) -> np.ndarray:
        """A numpy array of a result view: mapped if host-visible, else copied by a queue DMA."""
        rt = self._rt
        dtype = _numpy_dtype(view.element_type)
        return np.asarray(rt.DeviceArray(self._device, view, override_dtype=dtype).to_host())

    def sync(self) -> None:
        """A queue barrier: an empty command buffer signals a fresh semaphore, which is waited on.

        IREE orders queue work by semaphores, not by submission, so this waits for earlier work
        only where the queue is in order (CUDA's single stream is). Sync-ABI modules need no
        barrier (each call has finished when it returns); benchmarks call it around samples
        for modules compiled with an async ABI."""
        rt = self._rt
        sem = self._device.create_semaphore(0)
        cb = rt.HalCommandBuffer(self._device, begin=True)
        cb.end()
        self._device.queue_execute(cb, wait_semaphores=[], signal_semaphores=rt.HalFence.create_at(sem, 1))
        rt.HalFence.create_at(sem, 1).wait()

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        if self.driver not in LOCAL_DRIVERS:  # device memory: copy in, run, copy out
            views = [self.to_device(x) for x in xs]
            return self.to_host(self.invoke(*views))
        rt = self._rt
        arrays = [np.ascontiguousarray(x) for x in xs]
        # The compiled code assumes ALIGN-byte aligned bindings. The (possibly copied) arrays stay
        # referenced here until the call returns: the imported HAL buffers borrow their memory.
        arrays = [x if x.ctypes.data % ALIGN == 0 else _aligned_copy(x) for x in arrays]
        args = rt.VmVariantList(len(arrays))
        for x in arrays:
            args.push_ref(self._import(x))
        rets = rt.VmVariantList(1)
        with self._lock:
            self._context.invoke(self._fn, args, rets)
        view = rets.get_as_object(0, rt.HalBufferView)
        dtype = _numpy_dtype(view.element_type)
        out = view.map().asarray(view.shape, dtype)
        if any(np.may_share_memory(out, x) for x in arrays):
            out = out.copy()
        return out


def _aligned_copy(x: np.ndarray) -> np.ndarray:
    raw = np.empty(x.nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


def _numpy_dtype(element_type: int) -> np.dtype:
    import iree.runtime as rt

    for name, code in _ELEMENT.items():
        if element_type == int(getattr(rt.HalElementType, code)):
            return np.dtype(name)
    raise TypeError(f"unsupported IREE element type {element_type}")
