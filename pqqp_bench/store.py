"""The results store: one SQLite row per measurement, keyed by everything that produced it.

Design
------
* One file, stdlib ``sqlite3``, WAL mode. Many readers and one writer at a time, so parallel pytest-xdist
  workers can share a store; ``busy_timeout`` makes a writer wait for its turn instead of failing, and
  ``synchronous=NORMAL`` keeps every committed row through a killed process (not through a power cut).
* A measurement's identity is a :class:`MeasurementKey`: model (name and weights fingerprint), corpus, split,
  recipe (canonical string and parameter hash), metric, seed, calibration and harness version. Its
  :meth:`~MeasurementKey.digest` (sha256 of a canonical JSON of all fields) is the primary key, and every key
  field also has its own column so the file is easy to query with plain SQL.
* Every write is one ``BEGIN IMMEDIATE`` transaction holding one row, so a crash leaves either the whole row or
  nothing. Without ``replace`` a second put of the same key is ignored: the stored row wins, never a duplicate.
* Non-finite values are kept: ``inf`` is a REAL, ``nan`` (which SQLite cannot store) is NULL and reads back as
  ``nan``; ``details`` is JSON as Python writes it (``NaN``/``Infinity`` allowed).
* The file identifies itself with ``PRAGMA application_id`` (:data:`APPLICATION_ID`) and records its layout in
  ``PRAGMA user_version`` (:data:`HARNESS_SCHEMA`). A file that is not ours (text, random bytes, another
  application's SQLite database), is corrupt, or has a newer schema raises :class:`StoreError` and is never
  written to: the header is checked from the raw bytes and the contents through a read-only connection before
  any writing connection is opened. Only a missing or 0-byte file is initialised.
* :meth:`Store.claim` is an inter-process lock per measurement (``fcntl.flock`` on
  ``<store file>.locks/<digest>.lock``), so two workers never compute the same measurement twice. Opening a
  store takes the same kind of lock (``.open.lock`` in that folder) so that concurrent first opens create the
  schema once. Lock files are left behind on purpose: they are empty, harmless, and deleting them while another
  process waits on one would break the lock.

A :class:`Store` holds one connection: use it from one thread, and open a new one in each worker process
rather than sharing it across a fork.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .errors import PqqpError
from .paths import atomic_write, locked, write_text

HARNESS_SCHEMA = 1
APPLICATION_ID = 0x50515150  # 'PQQP'

_SQLITE_MAGIC = b"SQLite format 3\x00"
_MOVE_AWAY = "choose another --pqqp-store path or move the file away"
_OPEN_LOCK = ".open.lock"


def default_store_path(root: Path = Path(".")) -> Path:
    """Where a run keeps its results unless told otherwise: `$PQQP_STORE`, or `results/pqqp.sqlite` under `root`."""
    given = os.environ.get("PQQP_STORE")
    return Path(given) if given else root / "results" / "pqqp.sqlite"


class StoreError(PqqpError):
    """The results store file cannot be used: not ours, corrupt, or written by a newer harness."""


@dataclass(frozen=True)
class MeasurementKey:
    """Everything that produced a measurement; two measurements with equal keys are the same measurement."""

    model: str
    model_hash: str
    corpus: str
    split: str
    recipe: str
    recipe_key: str
    metric: str
    seed: int
    calibration: str
    harness_version: str

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_key_value(field.name, getattr(self, field.name))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 hex of the canonical JSON of all fields: the store's primary key."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


KEY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MeasurementKey))
_MAY_BE_EMPTY = {"calibration"}


def _check_key_value(name: str, value: Any) -> None:
    """Raise PqqpError unless `value` is acceptable for key field `name`."""
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise PqqpError(f"measurement seed {value!r} is not accepted: use an integer >= 0, or -1 for none")
        return
    if not isinstance(value, str):
        raise PqqpError(f"measurement {name} {value!r} is not accepted: use a string")
    if not value and name not in _MAY_BE_EMPTY:
        raise PqqpError(f"measurement {name} is empty: use a non-empty string")
    if name == "recipe_key" and (len(value) != 16 or any(c not in "0123456789abcdef" for c in value)):
        raise PqqpError(f"measurement recipe_key {value!r} is not accepted: use 16 lowercase hex digits")


@dataclass
class Measurement:
    """One stored result: the metric's value and JSON-serialisable details (per-window NLLs, timings, ...)."""

    key: MeasurementKey
    value: float
    details: dict
    created: str = ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


_COLUMNS = ("digest", *KEY_FIELDS, "value", "details", "created")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS measurements (
    digest TEXT PRIMARY KEY,
    {", ".join(f"{name} {'INTEGER' if name == 'seed' else 'TEXT'} NOT NULL" for name in KEY_FIELDS)},
    value REAL,
    details TEXT NOT NULL,
    created TEXT NOT NULL
)
"""


def _read_header(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(100)
    except OSError as e:
        raise StoreError(f"cannot read results store {path}: {e.strerror}; {_MOVE_AWAY}") from None


def _check_header(path: Path) -> None:
    """Refuse a non-empty file that is not an SQLite database carrying our application_id (raw bytes only)."""
    if path.is_dir():
        raise StoreError(f"results store {path} is a directory; use a file path for --pqqp-store")
    if not path.exists() or path.stat().st_size == 0:
        return
    header = _read_header(path)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"results store {path} is not an SQLite database; {_MOVE_AWAY}")
    (app_id,) = struct.unpack(">I", header[68:72])
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"results store {path} is another application's SQLite database (application_id {app_id:#x}, "
            f"ours is {APPLICATION_ID:#x}); {_MOVE_AWAY}"
        )


def _check_contents(path: Path, timeout: float) -> None:
    """Through a read-only connection: the file must pass quick_check and have the layout we write. A refused
    file is left as it was: the `-wal` and `-shm` files SQLite creates beside a WAL-mode file are removed again."""
    if not path.exists() or path.stat().st_size == 0:
        return
    beside = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    new = [p for p in beside if not p.exists()]
    try:
        _check_layout(path, timeout)
    except StoreError:
        for p in new:
            p.unlink(missing_ok=True)
        raise


def _check_layout(path: Path, timeout: float) -> None:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        try:
            check = conn.execute("PRAGMA quick_check").fetchall()
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(measurements)"))
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"results store {path} is corrupt ({e}); {_MOVE_AWAY}") from None
    if check != [("ok",)]:
        raise StoreError(f"results store {path} is corrupt (quick_check: {check[0][0]}); {_MOVE_AWAY}")
    if version > HARNESS_SCHEMA:
        raise StoreError(
            f"results store {path} has schema {version}, newer than this harness's {HARNESS_SCHEMA}; "
            f"upgrade pqqp-bench or {_MOVE_AWAY}"
        )
    expected = (version == HARNESS_SCHEMA and tables == ["measurements"] and columns == _COLUMNS) \
        or (version == 0 and not tables)  # a new file, created but not yet initialised
    if not expected:
        raise StoreError(f"results store {path} has an unknown layout (schema {version}, tables {tables or 'none'}): "
                         f"accepted a store this harness wrote; {_MOVE_AWAY}")


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    """A writing connection to a checked file, with the schema created and WAL enabled."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:  # new file: the only one we may initialise
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {HARNESS_SCHEMA}")
            conn.execute("COMMIT")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _row_to_measurement(row: sqlite3.Row) -> Measurement:
    key = MeasurementKey(**{name: row[name] for name in KEY_FIELDS})
    value = math.nan if row["value"] is None else float(row["value"])
    return Measurement(key=key, value=value, details=json.loads(row["details"]), created=row["created"])


def record(m: Measurement) -> dict[str, Any]:
    """The flat export form of a measurement: key fields, digest, value, details, created."""
    return {**m.key.as_dict(), "digest": m.key.digest(), "value": m.value, "details": m.details, "created": m.created}


def _from_record(path: str | os.PathLike, index: int, record: Any) -> Measurement:
    """A measurement from its export form, refused in one line unless its digest is its key's."""
    where = f"measurements file {str(path)!r}, record {index}"
    if not isinstance(record, dict) or any(name not in record for name in (*KEY_FIELDS, "digest", "value", "details")):
        raise PqqpError(f"{where}: accepted an object with the fields {', '.join((*KEY_FIELDS, 'digest', 'value', 'details'))}")
    key = MeasurementKey(**{name: record[name] for name in KEY_FIELDS})
    if key.digest() != record["digest"]:
        raise PqqpError(f"{where}: digest {record['digest']!r} is not that of its key fields ({key.digest()!r}): "
                        f"accepted records as `pqqp export --json` wrote them")
    if not isinstance(record["value"], (int, float)) or not isinstance(record["details"], dict):
        raise PqqpError(f"{where}: value {record['value']!r} and details must be a number and an object")
    return Measurement(key, float(record["value"]), record["details"], str(record.get("created") or ""))


def check_store_file(path: str | os.PathLike, timeout: float = 120.0) -> None:
    """Refuse a path that cannot be a results store (not ours, corrupt, newer, a folder), reading only: what a
    command checks before any computing, and a store checks before it writes."""
    path = Path(path).expanduser()
    _check_header(path)
    _check_contents(path, timeout)


class Store:
    """A results store file; see the module docstring for the design."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 120.0) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise PqqpError(f"store timeout {timeout!r} is not accepted: use a positive number of seconds")
        self.path = Path(path).expanduser()
        self.lock_dir = self.path.with_name(self.path.name + ".locks")
        check_store_file(self.path, timeout)  # before creating anything next to a file that may not be ours
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.lock_dir / _OPEN_LOCK):
            check_store_file(self.path, timeout)  # again: another process may have created it meanwhile
            try:
                self._conn = _connect(self.path, timeout)
            except sqlite3.Error as e:
                raise StoreError(f"cannot open results store {self.path}: {e}; {_MOVE_AWAY}") from None
        self._conn.row_factory = sqlite3.Row

    def get(self, key: MeasurementKey) -> Measurement | None:
        row = self._conn.execute("SELECT * FROM measurements WHERE digest = ?", (key.digest(),)).fetchone()
        return None if row is None else _row_to_measurement(row)

    def put(self, measurement: Measurement, *, replace: bool = False) -> bool:
        """Store one measurement; True if a row was written, False if the key was already stored (it wins)."""
        row = self._row(measurement)
        verb = "REPLACE" if replace else "IGNORE"
        sql = f"INSERT OR {verb} INTO measurements ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                inserted = self._conn.execute(sql, row).rowcount == 1
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # a full disk, a read-only file: the value must not be lost unseen
            raise StoreError(f"cannot store in {self.path} ({exc}): {measurement.key.metric} of "
                             f"{measurement.key.recipe!r} on {measurement.key.model} = {measurement.value!r} is not "
                             f"stored; every row stored before is kept: free space or make the store writable and run "
                             f"again") from None
        return inserted

    def query(self, **filters: str | int) -> list[Measurement]:
        """Measurements whose key fields equal all `filters` (e.g. model=..., metric=...), in insertion order."""
        for name, value in filters.items():
            if name not in KEY_FIELDS:
                raise PqqpError(f"store query field {name!r} is not accepted: use one of {', '.join(KEY_FIELDS)}")
            _check_key_value(name, value)
        where = " AND ".join(f"{name} = ?" for name in filters) or "1"
        rows = self._conn.execute(f"SELECT * FROM measurements WHERE {where} ORDER BY rowid", tuple(filters.values()))
        return [_row_to_measurement(row) for row in rows]

    def __len__(self) -> int:
        return self._conn.execute("SELECT count(*) FROM measurements").fetchone()[0]

    def export_json(self, path: str | os.PathLike) -> int:
        """Write all measurements as a JSON list of flat records; returns how many."""
        records = [record(m) for m in self.query()]
        write_text(path, json.dumps(records, indent=1) + "\n")
        return len(records)

    def import_json(self, path: str | os.PathLike) -> tuple[int, int]:
        """Add the measurements of a `export_json` file (a published leaderboard's data) to this store, so a later
        run resumes from them and reports and the gate read them; a measurement already stored is kept as it is.
        Every record's digest must be that of its key fields. Returns (added, already stored)."""
        try:
            records = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PqqpError(f"measurements file {str(path)!r} cannot be read ({exc}): accepted a JSON file written by "
                            f"`pqqp export --json`") from None
        if not isinstance(records, list):
            raise PqqpError(f"measurements file {str(path)!r} holds a {type(records).__name__}: accepted the JSON list "
                            f"`pqqp export --json` writes")
        measurements = [_from_record(path, i, r) for i, r in enumerate(records)]  # all checked before any is added
        added = sum(self.put(m) for m in measurements)
        return added, len(measurements) - added

    def export_csv(self, path: str | os.PathLike) -> int:
        """Write one CSV row per measurement (details as a JSON string column); returns how many."""
        measurements = self.query()
        with atomic_write(path) as f:
            writer = csv.DictWriter(f, fieldnames=[*KEY_FIELDS, "digest", "value", "created", "details"])
            writer.writeheader()
            for m in measurements:
                writer.writerow({**record(m), "details": json.dumps(m.details)})
        return len(measurements)

    @contextmanager
    def claim(self, key: MeasurementKey) -> Iterator[None]:
        """Hold the inter-process lock of one measurement (blocking) for the caller's get-compute-put."""
        with locked(self.lock_dir / f"{key.digest()}.lock"):
            yield

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _row(self, m: Measurement) -> tuple:
        """The SQL row of a measurement, or PqqpError for a value or details that cannot be stored."""
        if not isinstance(m.key, MeasurementKey):
            raise PqqpError(f"measurement key {m.key!r} is not accepted: use a MeasurementKey")
        if isinstance(m.value, bool) or not isinstance(m.value, (int, float)):
            raise PqqpError(f"measurement value {m.value!r} is not accepted: use a number")
        if not isinstance(m.details, dict):
            raise PqqpError(f"measurement details {m.details!r:.80} is not accepted: use a JSON-serialisable dict")
        try:
            details = json.dumps(m.details)
        except (TypeError, ValueError) as e:
            raise PqqpError(f"measurement details are not accepted ({e}): use a JSON-serialisable dict") from None
        value = None if math.isnan(m.value) else float(m.value)
        return (m.key.digest(), *(getattr(m.key, name) for name in KEY_FIELDS), value, details, m.created or _now())
