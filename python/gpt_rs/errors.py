"""The exceptions gpt_rs's engine raises: one base class to catch them all, ``gpt_rs.Error``,
and a subclass per kind that also derives from the built-in exception it replaces, so code
that catches ``ValueError``, ``TypeError`` or ``OSError`` keeps working::

    try:
        model = gpt_rs.load_model("model.gguf")
    except gpt_rs.Error as e:  # or: except ValueError
        print("could not load:", e)

==========================  ====================  ==========================================
class                       also a                raised for
==========================  ====================  ==========================================
``ShapeError``              ``ValueError``        wrong shape or rank
``InvalidValueError``       ``ValueError``        a bad value or argument; malformed files
``DTypeError``              ``TypeError``         a dtype or type an operation does not take
``SizeOverflowError``       ``OverflowError``     a number too large for its target
``FileReadError``           ``OSError``           a file that cannot be read
``MissingFileError``        ``FileNotFoundError`` a file or folder that does not exist
``OutOfMemoryError``        ``MemoryError``       an allocation the OS refused, or a size that
                                                  cannot exist
``BusyError``               ``RuntimeError``      a full engine queue, or an engine shutting down
``BackendError``            ``RuntimeError``      a backend that is not available
``InternalError``           ``RuntimeError``      a bug in gpt_rs (please report it)
==========================  ====================  ==========================================

The Python binding's own argument checks raise these classes too. A long operation interrupted
with Ctrl-C raises the built-in ``KeyboardInterrupt``; PyO3's conversion of an argument of the
wrong Python type (a str where an int is expected) raises a plain ``TypeError``, and DLPack's
protocol errors are ``BufferError`` as the protocol specifies.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of the exceptions gpt_rs's engine raises."""


class ShapeError(Error, ValueError):
    """A tensor of the wrong shape or rank."""


class InvalidValueError(Error, ValueError):
    """A bad value or argument, or a malformed checkpoint or GGUF file."""


class DTypeError(Error, TypeError):
    """A dtype or type the operation does not take."""


class SizeOverflowError(Error, OverflowError):
    """A number that does not fit its target type."""


class FileReadError(Error, OSError):
    """A file that cannot be read."""


class MissingFileError(FileReadError, FileNotFoundError):
    """A file or folder that does not exist."""


class OutOfMemoryError(Error, MemoryError):
    """An allocation the OS refused, or a size that cannot exist."""


class BusyError(Error, RuntimeError):
    """An engine whose queue is full, or that is shutting down: retry later."""


class BackendError(Error, RuntimeError):
    """A backend that is not available in this build or on this machine."""


class InternalError(Error, RuntimeError):
    """A failure that is not the caller's fault: a bug in gpt_rs."""


__all__ = [
    "BackendError",
    "BusyError",
    "DTypeError",
    "Error",
    "FileReadError",
    "InternalError",
    "InvalidValueError",
    "MissingFileError",
    "OutOfMemoryError",
    "ShapeError",
    "SizeOverflowError",
]
