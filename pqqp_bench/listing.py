"""The method table of `pqqp methods`, answered at once.

Listing the methods means importing them, and with them torch (several seconds). The table depends only on the
methods' code and the installed plugins, so it is kept in the cache folder under a key of exactly that: the
bytes of every file of this package's `methods/`, and each plugin entry point with its distribution, version and
the size and time of the files of its top-level package (found without importing it). Any change to either
builds the table again; a cache that cannot be read or written is ignored. A table with a plugin that failed to
load is not kept: installing the library it lacks changes none of the files the key reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib.metadata import entry_points
from pathlib import Path

from . import __version__
from .paths import write_text

GROUP = "pqqp_bench.methods"
HEADERS = ["method", "kind", "granularity", "calib.", "parameters", "source", "what"]


def files_digest(digest: "hashlib._Hash", folder: Path, contents: bool) -> None:
    """Feed each .py file under `folder` into `digest`: its path and its bytes, or only its size and time."""
    for path in sorted(folder.rglob("*.py")):
        stat = path.stat()
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() if contents else f"{stat.st_size}:{stat.st_mtime_ns}".encode())


def listing_key() -> str:
    """16 hex digits over the package's method code and the installed plugins (see the module docstring)."""
    digest = hashlib.sha256(__version__.encode())
    files_digest(digest, Path(__file__).resolve().parent / "methods", contents=True)
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        dist = point.dist
        digest.update(f"{point.name}={point.value}@{dist.name if dist else '?'}=={dist.version if dist else '?'}".encode())
        spec = importlib.util.find_spec(point.value.split(":")[0].split(".")[0])
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                files_digest(digest, Path(location), contents=False)
        elif spec is not None and spec.origin and Path(spec.origin).is_file():  # a plugin that is one module
            stat = Path(spec.origin).stat()
            digest.update(f"{spec.origin}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def build() -> dict:
    """The table's rows and the plugins that failed to load, from the registry (imports every method)."""
    from .methods import registry

    found = registry()
    rows = [[name, m.method.kind, m.method.granularity, "yes" if m.method.needs_calibration else "no",
             ", ".join(f"{p.name} ({p.accepted})" for p in m.method.params), f"{m.package} {m.version}", m.method.summary]
            for name, m in found.methods.items()]
    return {"rows": rows, "broken": dict(found.broken)}


def method_listing(cache_dir: Path) -> dict:
    """`build()`'s table, from the cache where its key matches, else built and cached."""
    path = cache_dir / f"methods-{listing_key()}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    table = build()
    if table["broken"]:  # a plugin that fails to import may be fixed by installing its library: list it afresh
        return table
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(table))
    except OSError:
        pass
    return table
