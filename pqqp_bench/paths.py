"""Where pqqp-bench keeps what it derives once (converted models, extracted corpora), and how it writes a file: checked
before any computing, never over one of its inputs, atomically."""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

from .errors import PqqpError


def default_cache_dir() -> Path:
    """`$PQQP_CACHE_DIR`, else `$XDG_CACHE_HOME/pqqp-bench`, else `~/.cache/pqqp-bench`."""
    if os.environ.get("PQQP_CACHE_DIR"):
        return Path(os.environ["PQQP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pqqp-bench"


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (links and relative paths resolved)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def output_file(flag: str, path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check a file the command will write, before any computing: not a folder, in an existing writable folder,
    and none of the command's `inputs` (the harness never writes over what it reads)."""
    target = Path(path).expanduser()
    if not str(path).strip():
        raise PqqpError(f"{flag} is empty: accepted a file path")
    if target.is_dir():
        raise PqqpError(f"{flag} {str(path)!r} is a folder: accepted a file path")
    folder = target.parent
    if not folder.is_dir():
        raise PqqpError(f"{flag} {str(path)!r}: its folder {str(folder)!r} does not exist: accepted a file in an "
                        f"existing folder")
    if not os.access(folder, os.W_OK):
        raise PqqpError(f"{flag} {str(path)!r}: its folder {str(folder)!r} is not writable: accepted a writable path")
    for given in inputs:
        if given is not None and str(given) and same_file(target, given):
            raise PqqpError(f"{flag} {str(path)!r} is an input of this command ({str(given)!r}): accepted a path the "
                            f"command does not read")
    return target


def output_folder(flag: str, path: str | os.PathLike) -> Path:
    """Check a folder the command will write into (created where missing), before any computing."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise PqqpError(f"{flag} {str(path)!r} is a file: accepted a folder (created where missing)")
    return target


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` and rename it over `path` once written: a reader never sees half a
    file, and a failed or interrupted write leaves the old file (or none) in place."""
    target = Path(path).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)  # mkstemp's 0600 is too tight
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """`Path.write_text`, atomically (`atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(text)


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on the file `path` (created with its folder if missing, never deleted),
    blocking: one process at a time does what the lock guards."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
