"""A small reader for R's XDR serialization and lazy-load databases (.rdx index + .rdb blobs).

Enough of the format for data packages of plain vectors (the Jane Austen texts): character,
integer, logical, real and generic vectors, pairlists with tags (attributes), symbols and
references. Anything else raises, naming the R type, rather than guessing.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

__all__ = ["RObject", "unserialize", "read_lazyload"]

# R SEXP type codes (R Internals, "Serialization formats").
_NILSXP, _SYMSXP, _LISTSXP, _CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
_REFSXP, _NILVALUE_SXP = 255, 254
_NA_INT = -(2 ** 31)


class RObject:
    """An R value: ``value`` (list, str list, numbers...) and ``attributes`` (name -> RObject)."""

    def __init__(self, rtype: int, value, attributes: dict | None = None):
        self.rtype, self.value, self.attributes = rtype, value, attributes or {}

    def __repr__(self) -> str:
        return f"RObject(type={self.rtype}, len={len(self.value) if hasattr(self.value, '__len__') else 1})"


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("R unserialize: truncated stream")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise ValueError("R unserialize: only the XDR binary format ('X\\n') is supported")
        version = self.int()
        self.int(), self.int()  # R version that wrote it, minimal R version to read it
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise ValueError(f"R unserialize: format version {version} is not supported")

    def charsxp(self) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        return self.take(n).decode("utf-8", errors="replace")

    def attributes(self, has_attr: bool) -> dict:
        if not has_attr:
            return {}
        pairs = self.item()
        return dict(pairs.value) if pairs.rtype == _LISTSXP else {}

    def item(self) -> RObject:
        flags = self.int()
        rtype, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if rtype in (_NILVALUE_SXP, _NILSXP):
            return RObject(_NILSXP, None)
        if rtype == _REFSXP:
            index = flags >> 8 or self.int()
            if not 1 <= index <= len(self.refs):
                raise ValueError(f"R unserialize: reference {index} to an object not read yet")
            return self.refs[index - 1]
        if rtype == _SYMSXP:
            sym = RObject(_SYMSXP, self.item().value)
            self.refs.append(sym)
            return sym
        if rtype == _LISTSXP:
            # A pairlist node: [attributes] [tag] car cdr; walked iteratively along the cdr.
            pairs = []
            while True:
                self.attributes(has_attr)
                tag = self.item().value if has_tag else None
                pairs.append((tag, self.item()))
                flags = self.int()
                rtype, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
                if rtype != _LISTSXP:
                    self.pos -= 4
                    self.item()  # the terminating NILVALUE
                    return RObject(_LISTSXP, pairs)
        if rtype == _CHARSXP:
            return RObject(_CHARSXP, self.charsxp())
        if rtype in (_LGLSXP, _INTSXP):
            n = self.int()
            vals = list(struct.unpack(f">{n}i", self.take(4 * n)))
            value = [None if x == _NA_INT else x for x in vals]
            return RObject(rtype, value, self.attributes(has_attr))
        if rtype == _REALSXP:
            n = self.int()
            return RObject(rtype, list(struct.unpack(f">{n}d", self.take(8 * n))), self.attributes(has_attr))
        if rtype == _STRSXP:
            n = self.int()
            value = []
            for _ in range(n):
                if self.int() & 0xFF != _CHARSXP:
                    raise ValueError("R unserialize: a character vector element is not a CHARSXP")
                value.append(self.charsxp())
            return RObject(rtype, value, self.attributes(has_attr))
        if rtype == _VECSXP:
            n = self.int()
            value = [self.item() for _ in range(n)]
            return RObject(rtype, value, self.attributes(has_attr))
        raise ValueError(f"R unserialize: SEXP type {rtype} is not supported by this reader")


def unserialize(data: bytes) -> RObject:
    """Decodes one XDR-serialized R object."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _names(obj: RObject) -> list[str]:
    names = obj.attributes.get("names")
    return names.value if names is not None else []


def read_lazyload(rdx: str | Path) -> dict[str, RObject]:
    """Reads every variable of an R lazy-load database: ``X.rdx`` (gzip'ed index) next to ``X.rdb``."""
    rdx = Path(rdx)
    index = unserialize(gzip.decompress(rdx.read_bytes()))
    entries = dict(zip(_names(index), index.value))
    variables = entries["variables"]
    blob = rdx.with_suffix(".rdb").read_bytes()
    out = {}
    for name, where in zip(_names(variables), variables.value):
        offset, length = where.value
        # Each object: 4-byte big-endian uncompressed length, then a zlib stream (compression type 1).
        raw = zlib.decompress(blob[offset + 4:offset + length])
        if len(raw) != struct.unpack(">I", blob[offset:offset + 4])[0]:
            raise ValueError(f"R lazy-load: object {name!r} has the wrong length after decompression")
        out[name] = unserialize(raw)
    return out
