"""flashstream.data.rdata: our R XDR / lazy-load reader against objects written by an independent
writer in this file (so it runs without the Debian package)."""

import gzip
import struct
import zlib

import pytest

from flashstream.data.rdata import read_lazyload, unserialize

NA = None


def _int(x):
    return struct.pack(">i", x)


def _charsxp(s):
    if s is None:
        return _int(9) + _int(-1)
    b = s.encode()
    return _int(9 | (1 << 15)) + _int(len(b)) + b  # gp bit for UTF-8 as R sets it


def _names_attr(names, first_symbol=True):
    # A pairlist node with a tag (the 'names' symbol), car = STRSXP of names, cdr = NILVALUE.
    tag = (_int(1) + _charsxp("names")) if first_symbol else _int((1 << 8) | 255)  # REFSXP index 1
    return _int(2 | (1 << 10)) + tag + _strsxp(names) + _int(254)


def _strsxp(values, names=None, first_symbol=True):
    flags = 16 | ((1 << 9) if names is not None else 0)
    body = _int(flags) + _int(len(values)) + b"".join(_charsxp(v) for v in values)
    return body + (_names_attr(names, first_symbol) if names is not None else b"")


def _header(version=3):
    head = b"X\n" + _int(version) + _int(0x040201) + _int(0x030500)
    return head + (_int(5) + b"UTF-8" if version == 3 else b"")


@pytest.mark.parametrize("version", [2, 3])
def test_character_vector_with_na_and_names(version):
    data = _header(version) + _strsxp(["a", "", NA, "é ü"], names=["w", "x", "y", "z"])
    obj = unserialize(data)
    assert obj.value == ["a", "", None, "é ü"]
    assert obj.attributes["names"].value == ["w", "x", "y", "z"]


def test_int_real_and_generic_vectors_with_symbol_reference():
    na = -(2 ** 31)
    ints = _int(13) + _int(3) + _int(7) + _int(na) + _int(-2)
    reals = _int(14) + _int(2) + struct.pack(">2d", 1.5, -0.25)
    inner = _strsxp(["p"], names=["q"], first_symbol=False)  # 'names' as a reference to symbol 1
    vec = _int(19 | (1 << 9)) + _int(3) + ints + reals + inner + _names_attr(["i", "r", "s"])
    # The first vector defines the 'names' symbol; every later 'names' tag refers back to it.
    obj = unserialize(_header() + _int(19) + _int(2) + _strsxp(["x"], names=["n"]) + vec)
    first, second = obj.value
    assert first.attributes["names"].value == ["n"]
    i, r, s = second.value
    assert i.value == [7, None, -2] and r.value == [1.5, -0.25]
    assert s.value == ["p"] and s.attributes["names"].value == ["q"]
    assert second.attributes["names"].value == ["i", "r", "s"]


def test_rejects_unsupported_input():
    with pytest.raises(ValueError, match="XDR"):
        unserialize(b"A\n" + b"\0" * 20)
    with pytest.raises(ValueError, match="SEXP type 3"):
        unserialize(_header() + _int(3))  # a closure
    with pytest.raises(ValueError, match="truncated"):
        unserialize(_header() + _int(16) + _int(2) + _charsxp("a"))


def test_lazyload_roundtrip(tmp_path):
    objects = {"first": ["line 1", "", "line 3"], "second": ["only"]}
    blob, where = b"", {}
    for name, lines in objects.items():
        raw = _header() + _strsxp(lines)
        packed = struct.pack(">I", len(raw)) + zlib.compress(raw)
        where[name] = (len(blob), len(packed))
        blob += packed
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    offsets = b"".join(_int(13) + _int(2) + _int(o) + _int(n) for o, n in where.values())
    variables = _int(19 | (1 << 9)) + _int(len(where)) + offsets + _names_attr(list(where))
    index = (_header() + _int(19 | (1 << 9)) + _int(1) + variables
             + _names_attr(["variables"], first_symbol=False))
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(index))
    out = read_lazyload(tmp_path / "Rdata.rdx")
    assert {k: v.value for k, v in out.items()} == objects
