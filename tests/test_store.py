"""The results store: round trips, stable keys, exports, refusing files that are not ours, and concurrency.

The multi-process tests run small `python -c` children (sys.executable) that read what to do from a JSON plan,
so they do not depend on how pytest imported this module.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pqqp_bench.errors import PqqpError
from pqqp_bench.store import APPLICATION_ID, HARNESS_SCHEMA, Measurement, MeasurementKey, Store, StoreError

REPO = Path(__file__).resolve().parents[1]


def make_key(i: int = 0, **changes) -> MeasurementKey:
    fields = dict(
        model="smollm2-135m", model_hash="ab12cd34", corpus="pydoc", split="holdout=0.2,seqlen=512,tokens=4096",
        recipe=f"wanda:p=0.{i % 10} > rtn:w=4,a=4,kv=4", recipe_key=f"{i:016x}", metric="ppl", seed=i,
        calibration="samples=32,seqlen=512", harness_version="0.1.0",
    )
    return MeasurementKey(**{**fields, **changes})


def make_measurement(i: int = 0, **changes) -> Measurement:
    return Measurement(make_key(i, **changes), value=10.0 + i, details={"nll": [0.5, 0.25 * i], "i": i})


def row_json(m: Measurement) -> dict:
    """A measurement as a child process's plan carries it."""
    return {"key": m.key.as_dict(), "value": m.value, "details": m.details}


# -------------------------------------------------------------------------------------------- round trips


def test_put_then_get_round_trips(tmp_path: Path) -> None:
    m = make_measurement(3)
    with Store(tmp_path / "sub" / "results.sqlite") as store:
        assert store.get(m.key) is None
        assert store.put(m) is True
        got = store.get(m.key)
    assert got is not None
    assert (got.key, got.value, got.details) == (m.key, m.value, m.details)
    assert got.created.endswith("+00:00") and got.created[:4].isdigit()  # filled in by put(), ISO-8601 UTC


def test_rows_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with Store(path) as store:
        store.put(make_measurement(1, metric="nll"))
    with Store(path) as store:
        assert len(store) == 1
        assert store.get(make_key(1, metric="nll")).value == 11.0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == HARNESS_SCHEMA
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT model, metric, seed FROM measurements").fetchall() == [("smollm2-135m", "nll", 1)]
    conn.close()


def test_put_twice_keeps_the_first_unless_replace(tmp_path: Path) -> None:
    first, second = make_measurement(0), replace(make_measurement(0), value=99.0, details={"again": True})
    with Store(tmp_path / "r.sqlite") as store:
        assert store.put(first) is True
        assert store.put(second) is False
        assert len(store) == 1
        assert (store.get(first.key).value, store.get(first.key).details) == (first.value, first.details)
        assert store.put(second, replace=True) is True
        assert len(store) == 1
        assert (store.get(first.key).value, store.get(first.key).details) == (99.0, {"again": True})


def test_created_is_kept_when_given(tmp_path: Path) -> None:
    m = replace(make_measurement(), created="2024-01-02T03:04:05+00:00")
    with Store(tmp_path / "r.sqlite") as store:
        store.put(m)
        assert store.get(m.key).created == "2024-01-02T03:04:05+00:00"


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_values_round_trip(tmp_path: Path, value: float) -> None:
    m = Measurement(make_key(), value=value, details={"nll": [1.0, math.inf, math.nan, -math.inf]})
    with Store(tmp_path / "r.sqlite") as store:
        store.put(m)
    with Store(tmp_path / "r.sqlite") as store:
        got = store.get(m.key)
        exported = store.export_json(tmp_path / "out.json")
    assert exported == 1
    for stored in (got.value, json.loads((tmp_path / "out.json").read_text())[0]["value"]):
        assert math.isnan(stored) if math.isnan(value) else stored == value
    nll = got.details["nll"]
    assert nll[0] == 1.0 and nll[1] == math.inf and math.isnan(nll[2]) and nll[3] == -math.inf


# ---------------------------------------------------------------------------------------------- the key


def test_digest_is_stable_and_covers_every_field() -> None:
    key = make_key(7)
    assert key.digest() == make_key(7).digest()
    assert len(key.digest()) == 64 and int(key.digest(), 16) >= 0
    # The digest is the primary key of every store ever written: its canonical form must never change.
    assert key.digest() == "063618b7a14a1981e517f5ab228888dbe9fc1663c28a8527175f11867cd1acfb"
    changed = dict(
        model="smollm2-360m", model_hash="ffff", corpus="wikitext", split="holdout=0.1,seqlen=512,tokens=4096",
        recipe="dense", recipe_key="0" * 16, metric="nll", seed=-1, calibration="", harness_version="0.2.0",
    )
    assert set(changed) == set(key.as_dict())  # every field is varied below
    digests = {key.digest()} | {replace(key, **{name: value}).digest() for name, value in changed.items()}
    assert len(digests) == 1 + len(changed)


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"recipe_key": "XYZ"}, "recipe_key"),
        ({"seed": -2}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": "3"}, "seed"),
        ({"model": ""}, "model"),
        ({"metric": 3}, "metric"),
    ],
)
def test_bad_key_fields_raise_one_line_errors(changes: dict, named: str) -> None:
    with pytest.raises(PqqpError) as info:
        make_key(**changes)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_bad_values_and_details_are_refused_before_writing(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(PqqpError, match="details"):
            store.put(Measurement(make_key(), 1.0, {"weights": object()}))
        with pytest.raises(PqqpError, match="value"):
            store.put(Measurement(make_key(), "1.0", {}))
        assert len(store) == 0
        assert store.put(Measurement(make_key(), 1.0, {})) is True  # no transaction was left open


# ----------------------------------------------------------------------------------- queries and exports


def filled_store(path: Path) -> tuple[Store, list[Measurement]]:
    """A store holding five measurements put in an order that is not their digest order."""
    store = Store(path)
    ms = [make_measurement(i, metric="ppl" if i % 2 else "nll") for i in (4, 1, 3, 0, 2)]
    ms[2] = replace(ms[2], key=replace(ms[2].key, model="other-model"))
    for m in ms:
        store.put(m)
    return store, [store.get(m.key) for m in ms]


def test_query_filters_on_key_fields_in_insertion_order(tmp_path: Path) -> None:
    store, ms = filled_store(tmp_path / "r.sqlite")
    with store:
        assert [m.key for m in store.query()] == [m.key for m in ms]
        assert [m.key.seed for m in store.query(metric="ppl")] == [1, 3]
        assert [m.key.seed for m in store.query(metric="ppl", model="smollm2-135m")] == [1]
        assert [m.key.seed for m in store.query(seed=0)] == [0]
        assert store.query(corpus="nothing") == []
        with pytest.raises(PqqpError, match="'colour'.*model"):
            store.query(colour="red")
        with pytest.raises(PqqpError, match="seed"):
            store.query(seed="0")


def test_export_json_writes_every_field(tmp_path: Path) -> None:
    store, ms = filled_store(tmp_path / "r.sqlite")
    with store:
        assert store.export_json(tmp_path / "out.json") == 5
    expected = [
        {**m.key.as_dict(), "digest": m.key.digest(), "value": m.value, "details": m.details, "created": m.created}
        for m in ms
    ]
    assert json.loads((tmp_path / "out.json").read_text()) == expected


def test_import_json_restores_an_export_bit_for_bit_and_keeps_what_is_stored(tmp_path: Path, capsys) -> None:
    from pqqp_bench.cli import main

    store, ms = filled_store(tmp_path / "r.sqlite")
    with store:
        store.export_json(tmp_path / "out.json")
    with Store(tmp_path / "new.sqlite") as new:
        new.put(Measurement(ms[0].key, 99.0, {"mine": True}))
        assert new.import_json(tmp_path / "out.json") == (4, 1)
        assert new.get(ms[0].key).value == 99.0  # a stored measurement wins
        for m in ms[1:]:
            got = new.get(m.key)
            assert (got.value, got.details, got.created) == (m.value, m.details, m.created)
    assert main(["import", str(tmp_path / "out.json"), "--store", str(tmp_path / "cli.sqlite")]) == 0
    assert "5 measurements added" in capsys.readouterr().out


@pytest.mark.parametrize("content, match", [
    ("{not json", r"cannot be read"),
    ('{"a": 1}', r"holds a dict"),
    ('[{"model": "m"}]', r"record 0: accepted an object with the fields"),
])
def test_import_json_refuses_a_bad_file_in_one_line(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(PqqpError, match=match):
        store.import_json(tmp_path / "bad.json")


def test_import_json_refuses_a_record_whose_digest_is_not_its_keys(tmp_path: Path) -> None:
    store, _ = filled_store(tmp_path / "r.sqlite")
    with store:
        store.export_json(tmp_path / "out.json")
    records = json.loads((tmp_path / "out.json").read_text())
    records[2]["recipe"] = "magnitude:p=0.9"  # edited by hand: the digest no longer matches
    (tmp_path / "out.json").write_text(json.dumps(records))
    with Store(tmp_path / "s.sqlite") as new:
        with pytest.raises(PqqpError, match=r"record 2: digest .* is not that of its key fields"):
            new.import_json(tmp_path / "out.json")
        assert len(new) == 0  # nothing added before every record was checked


def test_export_csv_writes_one_row_per_measurement(tmp_path: Path) -> None:
    store, ms = filled_store(tmp_path / "r.sqlite")
    with store:
        assert store.export_csv(tmp_path / "out.csv") == 5
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ms)
    for row, m in zip(rows, ms):
        key = MeasurementKey(**{**{k: row[k] for k in m.key.as_dict()}, "seed": int(row["seed"])})
        assert key == m.key
        assert row["digest"] == m.key.digest()
        assert float(row["value"]) == m.value
        assert json.loads(row["details"]) == m.details
        assert row["created"] == m.created


# -------------------------------------------------------------------------------- files that are not ours


def foreign_sqlite(path: Path, application_id: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    conn.execute("INSERT INTO contacts VALUES ('ada', '123')")
    conn.execute(f"PRAGMA application_id = {application_id}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["text", "random-bytes", "short-sqlite-magic", "sqlite-app-0", "sqlite-app-other"])
def test_files_that_are_not_ours_are_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "notes.db"
    if kind == "text":
        path.write_text("my precious notes\n" * 100)
    elif kind == "random-bytes":
        path.write_bytes(random.Random(0).randbytes(8192))
    elif kind == "short-sqlite-magic":
        path.write_bytes(b"SQLite format 3\x00 but no more")
    else:
        foreign_sqlite(path, 0 if kind == "sqlite-app-0" else 0x47504B47)
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        Store(path)
    message = str(info.value)
    assert str(path) in message and "move the file away" in message and "\n" not in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no lock folder, no -wal, no -shm


def test_a_corrupt_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        for i in range(50):
            store.put(make_measurement(i))
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    data[4096:3 * 4096] = random.Random(1).randbytes(2 * 4096)  # pages 2 and 3: the table's pages
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt") as info:
        Store(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == bytes(data)


def test_a_store_from_a_newer_harness_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {HARNESS_SCHEMA + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"schema {HARNESS_SCHEMA + 1}, newer") as info:
        Store(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_an_empty_file_is_initialised(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    path.touch()
    with Store(path) as store:
        assert store.put(make_measurement()) is True
    with Store(path) as store:
        assert len(store) == 1


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory"):
        Store(tmp_path)


# ---------------------------------------------------------------------------------------- several processes

CHILD = r"""
import json, sys, time
from pathlib import Path
from pqqp_bench.store import Measurement, MeasurementKey, Store

plan = json.loads(Path(sys.argv[1]).read_text())
rows = [Measurement(MeasurementKey(**r["key"]), r["value"], r["details"]) for r in plan["rows"]]
go = Path(plan["go"]) if plan.get("go") else None
while go is not None and not go.exists():
    time.sleep(0.002)
store = Store(plan["store"])
if plan["mode"] == "put":
    print(sum(store.put(m) for m in rows))
elif plan["mode"] == "claim":
    log = Path(plan["log"])
    with store.claim(rows[0].key):
        with log.open("a") as f:
            f.write(f"start {plan['name']}\n")
        computed = store.get(rows[0].key) is None
        if computed:
            time.sleep(0.3)
            store.put(rows[0])
        with log.open("a") as f:
            f.write(f"end {plan['name']}\n")
    print(int(computed))
elif plan["mode"] == "loop":
    for i, m in enumerate(rows):
        store.put(m)
        print(i, flush=True)
        time.sleep(0.001)
store.close()
"""


def child(tmp_path: Path, name: str, plan: dict, **popen) -> subprocess.Popen:
    plan_path = tmp_path / f"plan-{name}.json"
    plan_path.write_text(json.dumps({**plan, "name": name}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(plan_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, **popen,
    )


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def test_concurrent_writers_store_every_key_exactly_once(tmp_path: Path) -> None:
    """Four processes create the same new store at once and put overlapping keys: no errors, no duplicates."""
    store_path, go = tmp_path / "new" / "r.sqlite", tmp_path / "go"
    workers, per_worker, stride = 4, 120, 80  # worker w puts keys w*80 .. w*80+119: neighbours share 40
    procs = [
        child(tmp_path, f"w{w}", {
            "mode": "put", "store": str(store_path), "go": str(go),
            "rows": [row_json(make_measurement(i)) for i in range(w * stride, w * stride + per_worker)],
        })
        for w in range(workers)
    ]
    go.touch()
    inserted = [int(finish(p)) for p in procs]
    distinct = (workers - 1) * stride + per_worker
    assert sum(inserted) == distinct  # every key was inserted by exactly one of the workers
    with Store(store_path) as store:
        assert len(store) == distinct
        assert sorted(m.key.seed for m in store.query()) == list(range(distinct))
        assert all(m.value == 10.0 + m.key.seed for m in store.query())
    conn = sqlite3.connect(store_path)
    fields = ", ".join(make_key().as_dict())
    assert conn.execute(f"SELECT count(*) FROM (SELECT DISTINCT {fields} FROM measurements)").fetchone()[0] == distinct
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_claim_serialises_the_same_measurement_across_processes(tmp_path: Path) -> None:
    store_path, log, go = tmp_path / "r.sqlite", tmp_path / "log.txt", tmp_path / "go"
    Store(store_path).close()
    plan = {"mode": "claim", "store": str(store_path), "log": str(log), "go": str(go),
            "rows": [row_json(make_measurement(5))]}
    procs = [child(tmp_path, name, plan) for name in ("a", "b")]
    go.touch()
    computed = [int(finish(p)) for p in procs]
    assert sorted(computed) == [0, 1]  # one computed, the other found the stored result
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2]))
    assert len(events) == 4
    first, second = events[0][1], events[2][1]
    assert {first, second} == {"a", "b"}
    assert events == [("start", first), ("end", first), ("start", second), ("end", second)]
    assert sorted(p.name for p in (tmp_path / "r.sqlite.locks").iterdir()) == [
        ".open.lock", f"{make_key(5).digest()}.lock"
    ]


def test_claim_of_different_keys_does_not_block(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite") as a, Store(tmp_path / "r.sqlite") as b:
        with a.claim(make_key(1)), b.claim(make_key(2)):  # would deadlock if the locks were shared
            assert a.put(make_measurement(1)) and b.put(make_measurement(2))
        assert len(a) == 2


def test_a_writer_killed_mid_way_leaves_a_usable_store(tmp_path: Path) -> None:
    store_path, total = tmp_path / "r.sqlite", 1500
    ms = [replace(make_measurement(i), details={"nll": [i + j / 1000 for j in range(200)]}) for i in range(total)]
    proc = child(tmp_path, "loop", {"mode": "loop", "store": str(store_path), "rows": [row_json(m) for m in ms]})
    for _ in range(100):  # let it put about 100 rows, then kill it without warning
        assert proc.stdout.readline(), proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with Store(store_path) as store:
        present = store.query()
        assert 100 <= len(present) < total
        for m in present:
            assert (m.value, m.details) == (ms[m.key.seed].value, ms[m.key.seed].details)
        start = time.monotonic()
        inserted = [store.put(m) for m in ms]
        assert time.monotonic() - start < 30
        assert inserted.count(False) == len(present)
        assert len(store) == total
        assert sorted(m.key.seed for m in store.query()) == list(range(total))
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
