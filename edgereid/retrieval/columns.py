"""Array columns that grow in place: appending n rows costs O(n) amortised, not a copy of the whole column.

A `Column` is a descriptor: reading `obj.name` gives a view of the filled rows, assigning replaces the column,
`append_rows(obj, name, values)` writes into spare capacity (doubling it when full). Views handed out earlier
stay valid: rows past their end may be written later, the rows they show never are.
"""
from __future__ import annotations

import numpy as np

GROWTH = 1.5  # capacity grows by this factor (and at least to the rows needed) when an append does not fit


class Column:
    """A growable numpy column stored as `_buf_<name>` (capacity) and `_len_<name>` (rows in use)."""

    def __set_name__(self, owner, name: str) -> None:
        self.buf, self.len = f"_buf_{name}", f"_len_{name}"

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(obj, self.buf)[:getattr(obj, self.len)]

    def __set__(self, obj, value) -> None:
        a = np.asarray(value)
        setattr(obj, self.buf, a)
        setattr(obj, self.len, len(a))


def append_rows(obj, name: str, values: np.ndarray) -> None:
    """Append `values` (rows of the column's shape and dtype) to column `name` of `obj` in amortised O(len)."""
    col = _find(type(obj), name)
    buf, n = getattr(obj, col.buf), getattr(obj, col.len)
    values = np.asarray(values, dtype=buf.dtype)
    need = n + len(values)
    if need > len(buf) or not buf.flags.writeable:
        grown = np.empty((max(need, int(len(buf) * GROWTH) + 16),) + buf.shape[1:], dtype=buf.dtype)
        grown[:n] = buf[:n]
        setattr(obj, col.buf, grown)
        buf = grown
    buf[n:need] = values
    setattr(obj, col.len, need)


def _find(cls, name: str) -> Column:
    for klass in cls.__mro__:
        if isinstance(klass.__dict__.get(name), Column):
            return klass.__dict__[name]
    raise AttributeError(f"{cls.__name__} has no growable column {name!r}")
