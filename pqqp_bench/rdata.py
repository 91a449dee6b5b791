"""Read R lazy-load databases (``Rdata.rdx`` + ``Rdata.rdb``) without R.

R packages that ship data sets usually install them under ``data/`` as a
*lazy-load database*, written by R's ``makeLazyLoadDB()``:

``<base>.rdx``
    An RDS file (R serialization, usually gzip-compressed; bzip2, xz and
    uncompressed are also accepted, as R's ``readRDS`` does) holding a
    named list with elements ``variables`` (name -> ``c(offset, length)``
    into the ``.rdb``), ``references`` (environments; unused for plain
    data) and ``compressed`` (``TRUE``/1 zlib, 2 bzip2, 3 xz, ``FALSE``
    none).

``<base>.rdb``
    Concatenated chunks. Each chunk at ``(offset, length)`` starts with a
    4-byte big-endian uncompressed length; for compression 1 the rest is a
    zlib stream, for 2 and 3 a type byte follows (``'Z'`` raw LZMA2 xz,
    ``'2'`` bzip2, ``'1'`` zlib, ``'0'`` stored) and then the data.

Every payload is an R serialization in XDR (big-endian) form: ``X\\n``,
then the format version (2 or 3), the writer's R version and the minimal
reader version; version 3 adds the native encoding name.  Items follow,
each introduced by a 32-bit flags word: bits 0-7 the SEXP type, bit 8
"is object", bit 9 "has attributes", bit 10 "has tag" and bits 12-27 the
"levels" (for strings: the encoding, UTF-8/latin1/bytes/ASCII).  See
``src/main/serialize.c`` in the R sources.

Supported SEXP types: NULL, symbols (and references to them), pairlists,
character, logical, integer, double, complex and raw vectors, lists, and
the ALTREP forms R commonly writes for such data (compact integer/real
sequences and ``wrap_*`` wrappers).  Anything else (environments,
closures, language objects, S4, ...) raises :class:`ValueError` naming the
SEXP type number.

Python values returned:

* ``NULL`` -> ``None``
* character vector -> ``list[str | None]`` (``NA`` -> ``None``)
* integer / logical vector -> ``list[int | None]`` (``NA`` -> ``None``;
  logicals are 0/1)
* double vector -> ``list[float]`` (``NA`` and ``NaN`` are both ``nan``)
* complex vector -> ``list[complex]``; raw vector -> ``bytes``
* list (``VECSXP``) -> ``list``; pairlist -> ``list`` with the tags as names
* symbol -> :class:`RSymbol` (a ``str``)
* a vector with attributes (names, class, dim, ...) -> :class:`RVector`,
  a ``list`` subclass carrying an ``attributes`` dict; ``names`` and
  ``to_dict()`` give easy access to named lists and data frames.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, NamedTuple

__all__ = [
    "RSymbol",
    "RVector",
    "list_lazyload_variables",
    "read_lazyload_db",
    "read_lazyload_variable",
    "unserialize",
]

# SEXP type numbers (Rinternals.h) and serialization pseudo-types (serialize.c).
NILSXP, SYMSXP, LISTSXP, CHARSXP = 0, 1, 2, 9
LGLSXP, INTSXP, REALSXP, CPLXSXP = 10, 13, 14, 15
STRSXP, VECSXP, RAWSXP = 16, 19, 24
ALTREP_SXP, NILVALUE_SXP, REFSXP = 238, 254, 255

_TYPE_NAMES = {
    0: "NILSXP", 1: "SYMSXP", 2: "LISTSXP", 3: "CLOSXP", 4: "ENVSXP",
    5: "PROMSXP", 6: "LANGSXP", 7: "SPECIALSXP", 8: "BUILTINSXP",
    9: "CHARSXP", 10: "LGLSXP", 13: "INTSXP", 14: "REALSXP", 15: "CPLXSXP",
    16: "STRSXP", 17: "DOTSXP", 19: "VECSXP", 20: "EXPRSXP",
    21: "BCODESXP", 22: "EXTPTRSXP", 23: "WEAKREFSXP", 24: "RAWSXP",
    25: "S4SXP", 238: "ALTREP_SXP", 239: "ATTRLISTSXP", 240: "ATTRLANGSXP",
    241: "BASEENV_SXP", 242: "EMPTYENV_SXP", 243: "BCREPREF",
    244: "BCREPDEF", 245: "GENERICREFSXP", 246: "CLASSREFSXP",
    247: "PERSISTSXP", 248: "PACKAGESXP", 249: "NAMESPACESXP",
    250: "BASENAMESPACE_SXP", 251: "MISSINGARG_SXP",
    252: "UNBOUNDVALUE_SXP", 253: "GLOBALENV_SXP", 254: "NILVALUE_SXP",
    255: "REFSXP",
}

NA_INTEGER = -(2**31)
_BYTES_MASK, _LATIN1_MASK, _UTF8_MASK = 1 << 1, 1 << 2, 1 << 3
_GZIP_MAGIC, _BZIP2_MAGIC, _XZ_MAGIC = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"
# R_compress3 writes raw LZMA2 with lzma_lzma_preset(6).
_RAW_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]


class RSymbol(str):
    """An R symbol (SYMSXP); behaves as its name."""

    def __repr__(self) -> str:
        return f"RSymbol({str.__repr__(self)})"


class RVector(list):
    """An R vector or list that carried attributes.

    It is an ordinary ``list`` of the element values; ``attributes`` maps
    attribute names (``"names"``, ``"class"``, ``"dim"``, ``"row.names"``,
    ...) to their decoded values.  Equality compares the elements only.
    """

    def __init__(self, values: object = (), attributes: dict[str, object] | None = None) -> None:
        super().__init__(values)  # type: ignore[call-overload]
        self.attributes: dict[str, object] = dict(attributes or {})

    @property
    def names(self) -> list[str | None] | None:
        """The ``names`` attribute, or ``None`` when absent."""
        names = self.attributes.get("names")
        return list(names) if isinstance(names, list) else None

    def to_dict(self) -> dict[str, object]:
        """Map names to elements (unnamed or ``NA`` names become ``""``)."""
        names = self.names or [""] * len(self)
        return {name or "": value for name, value in zip(names, self)}

    def __repr__(self) -> str:
        return f"RVector({list.__repr__(self)}, attributes={self.attributes!r})"


class _Flags(NamedTuple):
    """The decoded 32-bit flags word that precedes every serialized item."""

    type: int
    levels: int
    is_object: bool
    has_attr: bool
    has_tag: bool
    raw: int

    @classmethod
    def decode(cls, word: int) -> "_Flags":
        return cls(
            type=word & 0xFF,
            levels=word >> 12,
            is_object=bool(word & (1 << 8)),
            has_attr=bool(word & (1 << 9)),
            has_tag=bool(word & (1 << 10)),
            raw=word,
        )


def _type_label(sexp_type: int) -> str:
    return f"{sexp_type} ({_TYPE_NAMES.get(sexp_type, 'unknown')})"


class _Unserializer:
    """One pass over one XDR serialization; holds the reference table."""

    def __init__(self, data: bytes) -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.refs: list[object] = []
        self.native_encoding = "utf-8"

    # -- primitive reads -------------------------------------------------
    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ValueError(f"truncated data: need {n} bytes at offset {self.pos}")
        chunk = self.buf[self.pos:end]
        self.pos = end
        return chunk

    def _int(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: upper and lower 32 bits follow
            upper, lower = struct.unpack(">II", self._take(8))
            n = (upper << 32) | lower
        if n < 0:
            raise ValueError(f"negative vector length {n} at offset {self.pos}")
        return n

    # -- header ----------------------------------------------------------
    def read_header(self) -> None:
        magic = bytes(self._take(2))
        if magic != b"X\n":
            kind = {b"A\n": "ASCII", b"B\n": "native binary"}.get(magic)
            what = f"{kind} serialization is not supported" if kind else f"bad magic {magic!r}"
            raise ValueError(f"{what} (expected XDR 'X\\n')")
        version = self._int()
        self._int(), self._int()  # writer R version, minimal reader version
        if version == 3:
            name = bytes(self._take(self._int())).decode("ascii", "replace")
            self.native_encoding = _python_codec(name)
        elif version != 2:
            raise ValueError(f"unsupported serialization format version {version} (expected 2 or 3)")

    # -- items -----------------------------------------------------------
    def read_item(self) -> object:
        flags = _Flags.decode(self._int())
        kind = flags.type
        if kind in (NILVALUE_SXP, NILSXP):
            return None
        if kind == REFSXP:
            return self._reference(flags)
        if kind == SYMSXP:
            return self._symbol()
        if kind == LISTSXP:
            return self._pairlist_value(flags)
        if kind == CHARSXP:
            return self._charsxp(flags)
        if kind == ALTREP_SXP:
            return self._altrep()
        reader = _VECTOR_READERS.get(kind)
        if reader is None:
            raise ValueError(f"unsupported R SEXP type {_type_label(kind)} at offset {self.pos - 4}")
        values = reader(self, self._length())
        attributes = self._attributes() if flags.has_attr else {}
        return RVector(values, attributes) if attributes else values

    def _reference(self, flags: _Flags) -> object:
        index = flags.raw >> 8 or self._int()
        if not 1 <= index <= len(self.refs):
            raise ValueError(f"reference {index} out of range (table has {len(self.refs)})")
        return self.refs[index - 1]

    def _symbol(self) -> RSymbol:
        name = self.read_item()
        if not isinstance(name, str):
            raise ValueError(f"symbol name is not a string at offset {self.pos}")
        symbol = RSymbol(name)
        self.refs.append(symbol)
        return symbol

    def _charsxp(self, flags: _Flags) -> str | None:
        n = self._int()
        text = None if n == -1 else self._decode(self._take(n), flags.levels)
        if flags.has_attr:
            self.read_item()  # old writers; R ignores it too
        return text

    def _decode(self, raw: memoryview, levels: int) -> str:
        if levels & _LATIN1_MASK:
            return str(raw, "latin-1")
        if levels & (_UTF8_MASK | _BYTES_MASK):
            return str(raw, "utf-8", "surrogateescape")
        return str(raw, self.native_encoding, "surrogateescape")

    def _pairlist_cells(self, flags: _Flags) -> tuple[list[tuple[str | None, object]], dict[str, object]]:
        """Read a pairlist iteratively (no recursion down the CDRs).

        Each cell is serialized as [attributes] [tag] CAR, then the CDR's
        flags.  Returns the (tag, value) cells and the first cell's
        attributes (those of the pairlist itself).
        """
        cells: list[tuple[str | None, object]] = []
        attributes = self._attributes() if flags.has_attr else {}
        while True:
            tag = self.read_item() if flags.has_tag else None
            cells.append((None if tag is None else str(tag), self.read_item()))
            flags = _Flags.decode(self._int())
            if flags.type in (NILVALUE_SXP, NILSXP):
                return cells, attributes
            if flags.type != LISTSXP:
                raise ValueError(f"dotted pairlist ending in {_type_label(flags.type)} is not supported")
            if flags.has_attr:
                self._attributes()  # attributes on inner cells are not visible in R either

    def _pairlist_value(self, flags: _Flags) -> list[object]:
        cells, attributes = self._pairlist_cells(flags)
        values = [value for _, value in cells]
        if any(tag is not None for tag, _ in cells):
            attributes = {"names": [tag or "" for tag, _ in cells], **attributes}
        return RVector(values, attributes) if attributes else values

    def _attributes(self) -> dict[str, object]:
        flags = _Flags.decode(self._int())
        if flags.type in (NILVALUE_SXP, NILSXP):
            return {}
        if flags.type != LISTSXP:
            raise ValueError(f"attributes are {_type_label(flags.type)}, expected a pairlist")
        cells, _ = self._pairlist_cells(flags)
        return {tag or "": value for tag, value in cells}

    def _altrep(self) -> object:
        info, state = self.read_item(), self.read_item()
        attributes = self._attributes()
        class_name = str(info[0]) if isinstance(info, list) and info else "?"
        values = _altrep_values(class_name, state)
        return RVector(values, attributes) if attributes else values


def _python_codec(r_encoding: str) -> str:
    """Map R's native-encoding name to a Python codec (UTF-8 if unknown)."""
    try:
        return codecs.lookup(r_encoding).name
    except LookupError:
        return "utf-8"


def _read_strings(u: _Unserializer, n: int) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        flags = _Flags.decode(u._int())
        if flags.type != CHARSXP:
            raise ValueError(f"string element is {_type_label(flags.type)}, expected 9 (CHARSXP)")
        out.append(u._charsxp(flags))
    return out


def _read_ints(u: _Unserializer, n: int) -> list[int | None]:
    values = struct.unpack(f">{n}i", u._take(4 * n))
    return [None if v == NA_INTEGER else v for v in values]


def _read_reals(u: _Unserializer, n: int) -> list[float]:
    return list(struct.unpack(f">{n}d", u._take(8 * n)))


def _read_complex(u: _Unserializer, n: int) -> list[complex]:
    parts = struct.unpack(f">{2 * n}d", u._take(16 * n))
    return [complex(parts[i], parts[i + 1]) for i in range(0, 2 * n, 2)]


def _read_list(u: _Unserializer, n: int) -> list[object]:
    return [u.read_item() for _ in range(n)]


def _read_raw(u: _Unserializer, n: int) -> bytes:
    return bytes(u._take(n))


_VECTOR_READERS: dict[int, Callable[[_Unserializer, int], object]] = {
    STRSXP: _read_strings,
    LGLSXP: _read_ints,
    INTSXP: _read_ints,
    REALSXP: _read_reals,
    CPLXSXP: _read_complex,
    VECSXP: _read_list,
    RAWSXP: _read_raw,
}


def _altrep_values(class_name: str, state: object) -> object:
    """Expand the ALTREP classes R itself writes for plain vectors."""
    if class_name in ("compact_intseq", "compact_realseq") and isinstance(state, list) and len(state) == 3:
        n, start, step = (float(x) for x in state)  # type: ignore[arg-type]
        cast = int if class_name == "compact_intseq" else float
        return [cast(start + i * step) for i in range(int(n))]
    if class_name.startswith("wrap_") and isinstance(state, list) and state:
        return state[0]  # list(wrapped vector, metadata)
    raise ValueError(f"unsupported ALTREP class {class_name!r} (SEXP type {_type_label(ALTREP_SXP)})")


def unserialize(data: bytes) -> object:
    """Decode one R XDR serialization (``X\\n`` header, format 2 or 3)."""
    u = _Unserializer(data)
    u.read_header()
    return u.read_item()


# -- files ---------------------------------------------------------------

def _decompress_rds(raw: bytes) -> bytes:
    """Undo the whole-file compression ``readRDS`` detects by magic bytes."""
    if raw.startswith(_GZIP_MAGIC):
        return gzip.decompress(raw)
    if raw.startswith(_BZIP2_MAGIC):
        return bz2.decompress(raw)
    if raw.startswith(_XZ_MAGIC):
        return lzma.decompress(raw)
    return raw


def _decompress_chunk(chunk: bytes, compressed: int) -> bytes:
    """Undo R_compress1/2/3 on one ``.rdb`` chunk."""
    if not compressed:
        return chunk
    if len(chunk) < 4:
        raise ValueError(f"chunk of {len(chunk)} bytes is too short")
    expected = struct.unpack(">I", chunk[:4])[0]
    if compressed == 1:
        data = zlib.decompress(chunk[4:])
    else:
        data = _decompress_typed(chunk[4:5], chunk[5:], expected)
    if len(data) != expected:
        raise ValueError(f"chunk decompressed to {len(data)} bytes, header says {expected}")
    return data


def _decompress_typed(kind: bytes, body: bytes, expected: int) -> bytes:
    if kind == b"Z":
        decoder = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_RAW_XZ_FILTERS)
        return decoder.decompress(body, max_length=expected)
    if kind == b"2":
        return bz2.decompress(body)
    if kind == b"1":
        return zlib.decompress(body)
    if kind == b"0":
        return body[:expected]
    raise ValueError(f"unknown chunk compression type byte {kind!r} (expected 'Z', '2', '1' or '0')")


_DECODE_ERRORS = (ValueError, struct.error, zlib.error, lzma.LZMAError, OSError, EOFError)


class _Index(NamedTuple):
    variables: dict[str, tuple[int, int]]
    compressed: int


def _paths(data_dir: str | Path, base: str) -> tuple[Path, Path]:
    directory = Path(data_dir)
    rdx, rdb = directory / f"{base}.rdx", directory / f"{base}.rdb"
    for path, what in ((rdx, "R lazy-load index"), (rdb, "R lazy-load data")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected the {what} file {path.name})")
    return rdx, rdb


def _read_index(rdx: Path) -> _Index:
    try:
        index = unserialize(_decompress_rds(rdx.read_bytes()))
    except _DECODE_ERRORS as exc:
        raise ValueError(f"{rdx}: not a readable R lazy-load index ({_one_line(exc)})") from exc
    fields = index.to_dict() if isinstance(index, RVector) else {}
    variables, compressed = fields.get("variables"), fields.get("compressed")
    if not isinstance(variables, list) or not isinstance(compressed, list) or not compressed:
        raise ValueError(f"{rdx}: not an R lazy-load index (expected a list with 'variables' and 'compressed')")
    if variables and not (isinstance(variables, RVector) and variables.names):
        raise ValueError(f"{rdx}: lazy-load index 'variables' has no names")
    keys = variables.to_dict() if isinstance(variables, RVector) else {}
    return _Index({name: _key(rdx, name, key) for name, key in keys.items()}, int(compressed[0] or 0))


def _key(rdx: Path, name: str, key: object) -> tuple[int, int]:
    if not isinstance(key, list) or len(key) != 2 or any(not isinstance(v, (int, float)) for v in key):
        raise ValueError(f"{rdx}: bad key for variable {name!r} (expected c(offset, length))")
    return int(key[0]), int(key[1])


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _fetch(rdb: Path, handle: BinaryIO, name: str, key: tuple[int, int], compressed: int) -> object:
    """Read, decompress and unserialize one variable's chunk from the open ``.rdb``."""
    offset, length = key
    chunk = b""
    if offset >= 0 and length >= 0:
        handle.seek(offset)
        chunk = handle.read(length)
    if len(chunk) != length:
        raise ValueError(f"{rdb}: variable {name!r} at ({offset}, {length}) lies outside the file")
    try:
        return unserialize(_decompress_chunk(chunk, compressed))
    except _DECODE_ERRORS as exc:
        raise ValueError(f"{rdb}: cannot decode variable {name!r} at offset {offset}: {_one_line(exc)}") from exc


def list_lazyload_variables(data_dir: str | Path, base: str = "Rdata") -> list[str]:
    """Return the variable names stored in ``<data_dir>/<base>.rdx``, in index order."""
    rdx, _ = _paths(data_dir, base)
    return list(_read_index(rdx).variables)


def read_lazyload_db(data_dir: str | Path, base: str = "Rdata") -> dict[str, object]:
    """Read every variable of the lazy-load database ``<data_dir>/<base>.rdx/.rdb``.

    Returns a dict from variable name to its Python value (see the module
    docstring for the mapping).  Raises :class:`FileNotFoundError` when
    either file is missing and :class:`ValueError` when one is corrupt,
    foreign, or holds an unsupported R type.
    """
    rdx, rdb = _paths(data_dir, base)
    index = _read_index(rdx)
    with rdb.open("rb") as handle:
        return {name: _fetch(rdb, handle, name, key, index.compressed) for name, key in index.variables.items()}


def read_lazyload_variable(data_dir: str | Path, name: str, base: str = "Rdata") -> object:
    """Read the single variable ``name`` from ``<data_dir>/<base>.rdx/.rdb``.

    Raises :class:`KeyError` when the index has no such variable, otherwise
    the same errors as :func:`read_lazyload_db`.
    """
    rdx, rdb = _paths(data_dir, base)
    index = _read_index(rdx)
    if name not in index.variables:
        raise KeyError(f"{rdx}: no variable {name!r} (has: {', '.join(index.variables) or 'none'})")
    with rdb.open("rb") as handle:
        return _fetch(rdb, handle, name, index.variables[name], index.compressed)
