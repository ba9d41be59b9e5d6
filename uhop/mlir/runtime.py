"""Load and run compiled modules (``.vmfb``) with ``iree.runtime`` on the local CPU.

The call path is kept thin: numpy inputs are imported into IREE without a copy
(``import_host_allocation``), the function is invoked through the VM directly, and the result is
mapped back as a numpy array that owns (keeps alive) IREE's output buffer. The output is a new
buffer on every call and never aliases an input (an identity module would return its input, so
that case is copied).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from uhop.mlir.compile import ALIGN

_ELEMENT = {"float32": "FLOAT_32", "float64": "FLOAT_64", "float16": "FLOAT_16"}


@functools.lru_cache(maxsize=4)
def _device(driver: str) -> Any:
    import iree.runtime as rt

    return rt.Config(driver)


class IreeModule:
    """A loaded module: ``module(*arrays) -> ndarray`` calls its ``entry`` function."""

    def __init__(self, vmfb: bytes, *, entry: str = "main", driver: str = "local-task") -> None:
        import iree.runtime as rt

        self._rt = rt
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

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
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
