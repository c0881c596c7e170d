"""Binary COPY streams built in bulk from columns (numpy), not row by row.

PostgreSQL's binary COPY format ("COPY", File Formats, PostgreSQL 15 manual): a signature,
flags and a header extension length; then per tuple an int16 field count and, per field, an
int32 length (-1 = NULL) and the value in network byte order; the trailer is an int16 -1.
timestamptz is int64 microseconds since 2000-01-01 UTC.

A row's width depends on which of its fields are NULL and on the length of its text, so rows are
grouped by that shape; each group is one numpy structured array (fixed width) whose fields are
filled column by column and written out with one ``tobytes``. The row order of the stream is
therefore not the input order: every caller either does not care (a table) or carries an
``ord`` column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_TRAILER = (-1).to_bytes(2, "big", signed=True)
# Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
PG_EPOCH_US = 946_684_800_000_000

_WIDTH = {"int4": 4, "int8": 8, "float8": 8}
_BIG_ENDIAN = {"int4": ">i4", "int8": ">i8", "float8": ">f8"}


@dataclass(frozen=True, slots=True)
class _Fixed:
    name: str
    type: str  # int4 | int8 | float8 (timestamptz is int8 on the wire)
    values: np.ndarray
    null: np.ndarray | None  # bool per row, or None when never NULL


@dataclass(frozen=True, slots=True)
class _Text:
    name: str
    codes: np.ndarray  # per row: index into ``texts``
    texts: list[bytes]


class CopyColumns:
    """Columns of ``n`` rows, in the order of the COPY column list; :meth:`encode` makes the stream."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._fields: list[_Fixed | _Text] = []

    def fixed(self, type_: str, values: np.ndarray, null: np.ndarray | None = None) -> None:
        """An int4/int8/float8 column (timestamptz: int8 microseconds since 2000-01-01)."""
        self._fields.append(_Fixed(f"f{len(self._fields)}", type_, values, null))

    def text(self, codes: np.ndarray, texts: list[bytes]) -> None:
        """A text column given as an index per row into a few distinct UTF-8 values."""
        self._fields.append(_Text(f"f{len(self._fields)}", codes, texts))

    def encode(self) -> bytes:
        if not self.n:
            return _HEADER + _TRAILER
        # The shape of a row: which nullable fields are NULL, and the length of its text fields.
        shape = np.zeros(self.n, dtype=np.int64)
        for field in self._fields:
            if isinstance(field, _Text):
                lengths = np.array([len(t) for t in field.texts], dtype=np.int64)
                shape = shape * 65536 + lengths[field.codes]
            elif field.null is not None:
                shape = shape * 2 + field.null
        parts = [_HEADER]
        shapes, inverse = np.unique(shape, return_inverse=True)
        for index in range(len(shapes)):
            rows = np.flatnonzero(inverse == index) if len(shapes) > 1 else None
            parts.append(self._encode_group(rows))
        parts.append(_TRAILER)
        return b"".join(parts)

    def _encode_group(self, rows: np.ndarray | None) -> bytes:
        """Rows of one shape (all rows when ``rows`` is None) as one fixed-width record array."""
        first = 0 if rows is None else int(rows[0])
        count = self.n if rows is None else len(rows)
        dtype: list[tuple[str, str]] = [("count", ">i2")]
        present: list[tuple[_Fixed | _Text, int]] = []
        for field in self._fields:
            dtype.append((field.name + "_len", ">i4"))
            if isinstance(field, _Text):
                length = len(field.texts[int(field.codes[first])])
                if length:
                    dtype.append((field.name, f"S{length}"))
                present.append((field, length))
            elif field.null is None or not field.null[first]:
                dtype.append((field.name, _BIG_ENDIAN[field.type]))
                present.append((field, _WIDTH[field.type]))
            else:
                present.append((field, -1))
        records = np.empty(count, dtype=dtype)
        records["count"] = len(self._fields)
        for field, length in present:
            records[field.name + "_len"] = length
            if length <= 0:
                continue
            if isinstance(field, _Text):
                # S64 -> S<length> copies the first <length> bytes: every row here has that length.
                texts = np.array(field.texts, dtype="S64")
                codes = field.codes if rows is None else field.codes[rows]
                records[field.name] = texts[codes]
            else:
                records[field.name] = field.values if rows is None else field.values[rows]
        return records.tobytes()
