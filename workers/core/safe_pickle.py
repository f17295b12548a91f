"""Load pickles that may come from strangers without executing their code.

Pickle can call any importable function while loading. Dataset batches (CIFAR) and the
published metric archive are pickles, so they are read with an unpickler that admits
plain containers, numbers, strings and numpy arrays/scalars, and refuses any other
global with an error naming it.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

# (module, name) pairs a pickle of plain data and numpy arrays needs; nothing callable
# beyond constructors of inert values.
_ALLOWED = {
    ("builtins", name)
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes", "bytearray")
} | {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.dtypes", "Float64DType"),
    ("numpy.dtypes", "Float32DType"),
    ("numpy.dtypes", "Int64DType"),
    ("numpy.dtypes", "UInt8DType"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes; returns bytes only
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global outside the allowed plain-data set."""


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: only plain containers, numbers, strings "
                "and numpy arrays are allowed in this pickle"
            )
        return super().find_class(module, name)


def load(stream: BinaryIO, encoding: str = "ASCII") -> Any:
    """Unpickle plain data from `stream`; `encoding="bytes"` for Python 2 pickles."""
    return _PlainDataUnpickler(stream, encoding=encoding).load()


def loads(data: bytes, encoding: str = "ASCII") -> Any:
    return load(io.BytesIO(data), encoding=encoding)
