"""Exceptions UHOP raises to users. Candidate failures are values (``Measurement``), not these."""

from __future__ import annotations


class UhopError(Exception):
    """Base class of every error UHOP raises on purpose."""


class InputError(UhopError, ValueError):
    """Bad input to an op: wrong type, rank, shape or dtype.

    The message names the argument and what was expected, as the reference would complain.
    """


class UnsupportedInput(InputError):
    """Valid for the reference (numpy would broadcast) but not for UHOP's fused kernels."""


class EmptyInput(UnsupportedInput):
    """An input with no elements (a batch of zero rows): valid, with nothing for a kernel to do;
    ``uhop.ops`` returns the op's (empty or constant) result, a decorated function runs as
    written, neither tunes nor stores anything."""


class UnsupportedDtype(InputError):
    """Inputs of dtypes the op's kernels do not take (integers, mixed float dtypes): ``uhop.ops``
    raises it; a decorated function runs as written for that signature, with one ``UhopWarning``
    (its own code says what such inputs mean: ``a @ b`` of integer matrices works undecorated)."""


class UnknownOpError(UhopError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NoCandidateError(UhopError, RuntimeError):
    """No backend produced a valid candidate for a problem."""


class ProblemTooLargeError(UhopError, ValueError):
    """A problem whose arrays cannot fit in the memory available to run it (refused before
    anything is allocated; the message names the size needed and the size available)."""


class UhopWarning(UserWarning):
    """UHOP fell back to the user's function, re-tuned a stale entry, or a backend failed as a whole."""
