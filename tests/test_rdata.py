"""Tests for pqqp_bench.rdata, the stdlib reader for R lazy-load databases.

The synthetic tests build R XDR serializations by hand with the tiny
writer below (mirroring R's serialize.c), so they need neither R nor any
package data.  The real-data test reads janeaustenr's data when present.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import struct
import zlib
from pathlib import Path

import pytest

from pqqp_bench.rdata import (
    RSymbol,
    RVector,
    list_lazyload_variables,
    read_lazyload_db,
    read_lazyload_variable,
    unserialize,
)

# ---------------------------------------------------------------------------
# A tiny XDR serializer (the writer side of R's serialize.c)
# ---------------------------------------------------------------------------
NILVALUE, SYM, LIST, CHAR, LGL, INT, REAL = 254, 1, 2, 9, 10, 13, 14
STR, VEC, RAW, ALTREP, REF = 16, 19, 24, 238, 255
UTF8, LATIN1, ASCII = 1 << 3, 1 << 2, 1 << 6
NA_INT = -(2**31)


def flags(sexp_type: int, *, attr: bool = False, tag: bool = False, obj: bool = False, levels: int = 0) -> bytes:
    word = sexp_type | obj << 8 | attr << 9 | tag << 10 | levels << 12
    return struct.pack(">I", word)


def i32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def header(version: int = 3, encoding: str = "UTF-8") -> bytes:
    out = b"X\n" + i32(version, 0x040201, 0x030500)
    return out + (i32(len(encoding)) + encoding.encode() if version == 3 else b"")


def nil() -> bytes:
    return flags(NILVALUE)


def charsxp(text: str | None, levels: int = UTF8, encoding: str = "utf-8") -> bytes:
    if text is None:
        return flags(CHAR) + i32(-1)
    raw = text.encode(encoding)
    return flags(CHAR, levels=levels) + i32(len(raw)) + raw


def sym(name: str) -> bytes:
    return flags(SYM) + charsxp(name, ASCII)


def ref(index: int) -> bytes:
    return struct.pack(">I", index << 8 | REF)


def pairlist(cells: list[tuple[bytes | None, bytes]]) -> bytes:
    """cells: (serialized tag symbol or None, serialized value)."""
    out = b""
    for tag, value in cells:
        out += flags(LIST, tag=tag is not None) + (tag or b"") + value
    return out + nil()


def attrs(**named: bytes) -> bytes:
    return pairlist([(sym(name.rstrip("_").replace("_", ".")), value) for name, value in named.items()])


def strsxp(values: list[str | None], attributes: bytes | None = None) -> bytes:
    body = i32(len(values)) + b"".join(charsxp(v) for v in values)
    return flags(STR, attr=attributes is not None) + body + (attributes or b"")


def intsxp(values: list[int], attributes: bytes | None = None, sexp_type: int = INT) -> bytes:
    body = i32(len(values), *values)
    return flags(sexp_type, attr=attributes is not None) + body + (attributes or b"")


def realsxp(values: list[float]) -> bytes:
    return flags(REAL) + i32(len(values)) + struct.pack(f">{len(values)}d", *values)


def vecsxp(items: list[bytes], attributes: bytes | None = None) -> bytes:
    body = i32(len(items)) + b"".join(items)
    return flags(VEC, attr=attributes is not None) + body + (attributes or b"")


def serialize(item: bytes, version: int = 3) -> bytes:
    return header(version) + item


def zlib_chunk(payload: bytes) -> bytes:
    """R_compress1: big-endian length + zlib stream."""
    return struct.pack(">I", len(payload)) + zlib.compress(payload)


def typed_chunk(payload: bytes, kind: bytes) -> bytes:
    """R_compress2/3: big-endian length + type byte + data."""
    body = {
        b"Z": lambda p: lzma.compress(p, lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 6}]),
        b"2": bz2.compress,
        b"1": zlib.compress,
        b"0": lambda p: p,
    }[kind](payload)
    return struct.pack(">I", len(payload)) + kind + body


def write_db(directory: Path, items: dict[str, bytes], compressed: int = 1, kind: bytes = b"Z") -> Path:
    """Write Rdata.rdb (serialized items) and a gzip'd Rdata.rdx index as makeLazyLoadDB does."""
    chunks, keys, offset = [], [], 0
    for item in items.values():
        payload = serialize(item)
        chunk = zlib_chunk(payload) if compressed == 1 else typed_chunk(payload, kind) if compressed else payload
        chunks.append(chunk)
        keys.append(intsxp([offset, len(chunk)]))
        offset += len(chunk)
    (directory / "Rdata.rdb").write_bytes(b"".join(chunks))
    names = list(items)
    variables = vecsxp(keys, attrs(names=strsxp(names)))
    compressed_flag = intsxp([1], sexp_type=LGL) if compressed == 1 else intsxp([compressed])
    references = vecsxp([], attrs(names=strsxp([])))
    index_names = attrs(names=strsxp(["variables", "references", "compressed"]))
    index = vecsxp([variables, references, compressed_flag], index_names)
    (directory / "Rdata.rdx").write_bytes(gzip.compress(serialize(index)))
    return directory


# ---------------------------------------------------------------------------
# unserialize on hand-built payloads
# ---------------------------------------------------------------------------
def test_strsxp_with_na_and_encodings() -> None:
    elements = [charsxp("plain", ASCII), charsxp(None), charsxp("café"), charsxp("naïve", LATIN1, "latin-1")]
    item = flags(STR) + i32(len(elements)) + b"".join(elements)
    assert unserialize(serialize(item)) == ["plain", None, "café", "naïve"]


@pytest.mark.parametrize("version", [2, 3])
def test_both_format_versions(version: int) -> None:
    assert unserialize(serialize(strsxp(["a", "b"]), version)) == ["a", "b"]


def test_intsxp_lglsxp_realsxp() -> None:
    assert unserialize(serialize(intsxp([1, NA_INT, -7]))) == [1, None, -7]
    assert unserialize(serialize(intsxp([1, 0, NA_INT], sexp_type=LGL))) == [1, 0, None]
    values = unserialize(serialize(realsxp([1.5, -0.25, float("nan")])))
    assert values[:2] == [1.5, -0.25] and math.isnan(values[2])


def test_nil_and_empty() -> None:
    assert unserialize(serialize(nil())) is None
    assert unserialize(serialize(strsxp([]))) == []


def test_vecsxp_with_names_and_class() -> None:
    item = vecsxp(
        [strsxp(["x"]), intsxp([1, 2]), nil()],
        attrs(names=strsxp(["s", "i", "n"]), class_=strsxp(["myclass"])),
    )
    value = unserialize(serialize(item))
    assert isinstance(value, RVector)
    assert value == [["x"], [1, 2], None]
    assert value.names == ["s", "i", "n"]
    assert value.attributes["class"] == ["myclass"]
    assert value.to_dict() == {"s": ["x"], "i": [1, 2], "n": None}


def test_pairlist_with_tags_and_untagged_cell() -> None:
    item = pairlist([(sym("alpha"), strsxp(["a"])), (None, intsxp([2])), (sym("gamma"), nil())])
    value = unserialize(serialize(item))
    assert value == [["a"], [2], None]
    assert value.names == ["alpha", "", "gamma"]


def test_refsxp_to_symbol() -> None:
    # The first sym() enters the reference table as entry 1; later uses are REFSXPs.
    item = pairlist([(sym("dup"), intsxp([1])), (ref(1), intsxp([2])), (None, ref(1))])
    value = unserialize(serialize(item))
    assert value.names == ["dup", "dup", ""]
    assert value[2] == "dup" and isinstance(value[2], RSymbol)


def test_refsxp_with_index_in_following_word() -> None:
    item = pairlist([(sym("s"), nil()), (struct.pack(">I", REF) + i32(1), nil())])
    assert unserialize(serialize(item)).names == ["s", "s"]


def test_altrep_compact_intseq_and_wrapper() -> None:
    info = pairlist([(None, sym("compact_intseq")), (None, sym("base")), (None, intsxp([13]))])
    seq = flags(ALTREP) + info + realsxp([4.0, 3.0, 1.0]) + nil()
    assert unserialize(serialize(seq)) == [3, 4, 5, 6]
    winfo = pairlist([(None, sym("wrap_string")), (None, sym("base")), (None, intsxp([16]))])
    wrapped = flags(ALTREP) + winfo + vecsxp([strsxp(["w"]), intsxp([0, 0])]) + attrs(names=strsxp(["n"]))
    value = unserialize(serialize(wrapped))
    assert value == ["w"] and value.names == ["n"]


def test_unsupported_type_names_the_sexp_number() -> None:
    closure = flags(3) + nil()  # CLOSXP
    with pytest.raises(ValueError, match=r"unsupported R SEXP type 3 \(CLOSXP\)"):
        unserialize(serialize(closure))
    with pytest.raises(ValueError, match=r"ALTREP class 'deferred_string'"):
        info = pairlist([(None, sym("deferred_string")), (None, sym("base")), (None, intsxp([16]))])
        unserialize(serialize(flags(ALTREP) + info + nil() + nil()))


def test_bad_header_and_truncation() -> None:
    with pytest.raises(ValueError, match="ASCII serialization is not supported"):
        unserialize(b"A\n3\n")
    with pytest.raises(ValueError, match="format version 7"):
        unserialize(b"X\n" + i32(7, 0, 0))
    with pytest.raises(ValueError, match="truncated"):
        unserialize(serialize(strsxp(["abcdef"]))[:-3])


# ---------------------------------------------------------------------------
# Whole databases written to tmp_path
# ---------------------------------------------------------------------------
OBJECTS = {
    "lines": strsxp(["It is a truth", None, "universally acknowledged"]),
    "counts": intsxp([3, NA_INT]),
    "nested": vecsxp([strsxp(["a"]), realsxp([2.5])], attrs(names=strsxp(["x", "y"]))),
}


def test_zlib_database_round_trip(tmp_path: Path) -> None:
    write_db(tmp_path, OBJECTS)
    db = read_lazyload_db(tmp_path)
    assert list(db) == ["lines", "counts", "nested"]
    assert db["lines"] == ["It is a truth", None, "universally acknowledged"]
    assert db["counts"] == [3, None]
    assert db["nested"].to_dict() == {"x": ["a"], "y": [2.5]}
    assert read_lazyload_variable(str(tmp_path), "counts") == [3, None]
    assert list_lazyload_variables(tmp_path) == ["lines", "counts", "nested"]


@pytest.mark.parametrize(("compressed", "kind"), [(3, b"Z"), (2, b"2"), (3, b"1"), (2, b"0"), (0, b"")])
def test_other_compressions(tmp_path: Path, compressed: int, kind: bytes) -> None:
    write_db(tmp_path, OBJECTS, compressed=compressed, kind=kind)
    assert read_lazyload_variable(tmp_path, "lines")[2] == "universally acknowledged"


def test_missing_variable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Rdata\.rdx: no such file"):
        read_lazyload_db(tmp_path)
    write_db(tmp_path, OBJECTS)
    with pytest.raises(KeyError, match="no variable 'absent'"):
        read_lazyload_variable(tmp_path, "absent")
    (tmp_path / "Rdata.rdb").unlink()
    with pytest.raises(FileNotFoundError, match=r"Rdata\.rdb: no such file"):
        read_lazyload_db(tmp_path)


def test_corrupt_files(tmp_path: Path) -> None:
    write_db(tmp_path, OBJECTS)
    rdb = tmp_path / "Rdata.rdb"
    good = rdb.read_bytes()
    rdb.write_bytes(good[:6] + b"\x00" * 8 + good[14:])
    with pytest.raises(ValueError, match=r"Rdata\.rdb: cannot decode variable 'lines' at offset 0") as info:
        read_lazyload_db(tmp_path)
    assert "\n" not in str(info.value)
    rdb.write_bytes(good[:10])
    with pytest.raises(ValueError, match="lies outside the file"):
        read_lazyload_db(tmp_path)
    (tmp_path / "Rdata.rdx").write_bytes(b"this is not R data\n")
    with pytest.raises(ValueError, match=r"Rdata\.rdx: not a readable R lazy-load index"):
        read_lazyload_db(tmp_path)
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(serialize(strsxp(["foreign"]))))
    with pytest.raises(ValueError, match=r"Rdata\.rdx: not an R lazy-load index"):
        read_lazyload_db(tmp_path)


# ---------------------------------------------------------------------------
# The real janeaustenr package data (Debian r-cran-janeaustenr)
# ---------------------------------------------------------------------------
NOVELS = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility"]


def austen_data_dir() -> Path | None:
    """Where the harness finds the package data: $PQQP_AUSTEN_DIR, the cache (scripts/setup.sh), or /usr/lib/R."""
    from pqqp_bench.data import austen_dir

    return austen_dir()


def test_janeaustenr_novels() -> None:
    data_dir = austen_data_dir()
    if data_dir is None:
        pytest.skip(
            "janeaustenr data not found: run scripts/setup.sh, install r-cran-janeaustenr, or set "
            "PQQP_AUSTEN_DIR to a folder where its .deb was extracted with dpkg -x"
        )
    db = read_lazyload_db(data_dir)
    assert sorted(db) == NOVELS
    assert all(isinstance(line, str) for novel in db.values() for line in novel)
    pride = db["prideprejudice"]
    assert pride[0] == "PRIDE AND PREJUDICE"
    assert "It is a truth universally acknowledged, that a single man in possession" in pride
    words = sum(len(line.split()) for novel in db.values() for line in novel)
    assert 700_000 <= words <= 800_000
    assert read_lazyload_variable(data_dir, "persuasion") == db["persuasion"]
