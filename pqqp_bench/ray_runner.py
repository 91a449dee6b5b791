"""A suite's grid on Ray: each missing measurement is a task on a worker actor; the driver stores the results.

A grid of hundreds of cases spreads over the GPUs (or CPU cores) of a Ray cluster, while the results store
stays one SQLite file on the driver's machine (SQLite must not be written over a network filesystem).

* The driver lists the suite's missing measurements: `Suite.cases()` under every seed that can change them
  (every one with `refresh`), keyed exactly as `Bench` keys them.
* `workers` actors (`CaseWorker`) each request `cpus_per_worker` CPUs and `gpus_per_worker` GPUs. A worker
  keeps the models it loaded between cases (its own `Bench`), so an idle worker is handed a case of the model
  it last ran where one is left.
* Each result comes back to the driver, which stores it at once (`Store.put`, never replacing a stored row
  unless `refresh`): an interrupted run keeps what finished and a re-run resumes.
* A worker process that dies mid-case (killed, out of memory, its node lost) is restarted by Ray
  (`max_restarts`) and the case it was running is run again (`max_task_retries`); only the finished run of a
  case comes back, and the store keeps one row per key, so a retried case is never stored twice.
* A worker's key must equal the driver's: a different digest means the worker sees other model files (or
  another pqqp-bench) than the driver, which is an error rather than a row under the wrong key.
* Shared filesystem: workers open models, corpus files and the model cache by the paths the driver uses.
  On a cluster, install the same pqqp-bench and run `scripts/setup.sh` on every node (the embedded model, the
  HF cache), and keep local model folders and corpus files on a path every node mounts.
* Throughput cases (the suite's `throughput` section) are not run here: they time generation on one
  machine, which the local driver does afterwards (`pqqp run --suite` runs the throughput section after this).

Ray is an optional extra (`pip install 'pqqp-bench[ray]'`); it is imported only when a run starts.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import PqqpError
from .store import KEY_FIELDS, Measurement, MeasurementKey, Store

if TYPE_CHECKING:
    from .measure import Bench
    from .spec import Recipe
    from .suite import Suite

LOCAL = "local"  # start a Ray instance on this machine (stopped at the end of the run)
_ADDRESS = re.compile(r"(ray://)?[\w.\-]+:\d{1,5}|(ray://)?\[[0-9a-fA-F:]+\]:\d{1,5}")
ADDRESSES = "local (a new instance here), auto (the cluster this node belongs to), HOST:PORT or ray://HOST:PORT"


@dataclass(frozen=True)
class RayOption:
    """A worker option of a Ray run, declared once for `pqqp run --ray-*` and pytest's `--pqqp-ray-*`."""

    name: str  # run_on_ray's keyword
    kind: type
    default: int | float | None
    help: str

    def flag(self, prefix: str = "--ray-") -> str:
        return prefix + self.name.replace("_", "-")


RAY_OPTIONS = (
    RayOption("workers", int, 2, "worker processes, each keeping its loaded model between cases (default 2)"),
    RayOption("cpus_per_worker", int, 1, "CPUs each worker requests and computes with (torch threads; default 1)"),
    RayOption("gpus_per_worker", float, None, "GPUs each worker requests, 0.5 to share one (default 1 where the "
                                              "cluster has GPUs, else 0)"),
)


@dataclass(frozen=True)
class Task:
    """One measurement to compute: what a worker is given, and the key the driver expects back."""

    model: str
    recipe: "Recipe"
    seed: int
    key: MeasurementKey

    @property
    def label(self) -> str:
        return f"{self.model}  {self.recipe}" + (f"  seed {self.key.seed}" if self.key.seed >= 0 else "")


@dataclass
class RayRunSummary:
    """What a Ray run did. `digests` are the keys it stored (a refreshing caller must not recompute them)."""

    workers: int
    planned: int  # the suite's measurements (throughput excluded)
    already_stored: int  # stored before the run (none with refresh), or by someone else while it ran
    computed: int = 0
    restarts: int = 0  # worker processes that died and were restarted (the case each was running, run again)
    failed: list[str] = field(default_factory=list)  # one line per case that could not be computed
    seconds: float = 0.0
    digests: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"ray: {self.computed} computed on {self.workers} workers, {self.already_stored} already stored, "
                f"{self.restarts} worker restart(s), {len(self.failed)} failed, {self.seconds:.1f} s")


class CaseWorker:
    """A worker process's cases (a Ray actor once `ray.remote` wraps it, so this module imports no Ray).

    It measures with its own `Bench`, which keeps each loaded model for the next case. That bench's store is a
    throwaway file: `Bench.compute` never writes, and results go back to the driver's store only.
    """

    def __init__(self, suite: "Suite", cache_dir: str | None, trust_remote_code: bool, threads: int) -> None:
        import tempfile

        import torch
        from transformers.utils import logging as hf_logging

        from .measure import Bench

        torch.set_num_threads(threads)  # the CPUs Ray reserved for this worker, no more
        hf_logging.disable_progress_bar()  # the driver shows the progress
        self.folder = tempfile.TemporaryDirectory(prefix="pqqp-ray-")
        self.bench = Bench(suite, Store(os.path.join(self.folder.name, "unused.sqlite")), progress=False,
                           cache_dir=cache_dir, trust_remote_code=trust_remote_code)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Remove the throwaway store (a worker killed outright leaves its small folder in the temp dir)."""
        self.bench.store.close()
        self.folder.cleanup()

    def compute(self, model: str, recipe_text: str, seed: int) -> tuple[dict, float, dict, int]:
        """(key fields, value, details) of one measurement, and the pid of the process that computed it."""
        from .spec import parse_recipe

        recipe = parse_recipe(recipe_text)
        key = self.bench.key(model, recipe, seed)
        value, details = self.bench.compute(model, recipe, seed)
        return key.as_dict(), value, details, os.getpid()


def require_ray() -> Any:
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise PqqpError("--ray needs Ray, which is not installed here: pip install 'pqqp-bench[ray]'") from None
    return ray


def ray_address(address: str | None) -> str:
    """The address to connect to (None means `local`), or a one-line error naming a malformed one."""
    if address is None or address == LOCAL:
        return LOCAL
    if address == "auto" or _ADDRESS.fullmatch(address):
        return address
    raise PqqpError(f"Ray address {address!r} is not accepted: accepted {ADDRESSES}")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_resources(workers: int, cpus_per_worker: int, gpus_per_worker: float | None, max_retries: int) -> None:
    """Refuse counts that cannot work, before Ray starts or the store is read."""
    for name, value, least in (("workers", workers, 1), ("cpus_per_worker", cpus_per_worker, 1),
                               ("max_retries", max_retries, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise PqqpError(f"Ray {name}={value!r} is not accepted: an integer >= {least}")
    if gpus_per_worker is not None and not (isinstance(gpus_per_worker, (int, float)) and gpus_per_worker >= 0):
        raise PqqpError(f"Ray gpus_per_worker={gpus_per_worker!r} is not accepted: a number >= 0 (0.5: two workers "
                        f"share a GPU)")


def plan(bench: "Bench") -> tuple[list[Task], int]:
    """The suite's measurements to compute (all of them with `refresh`) and how many are stored already."""
    tasks: dict[str, Task] = {}
    stored = 0
    for case in bench.suite.cases():
        for seed in bench.seeds_for(case.recipe):
            key = bench.key(case.model, case.recipe, seed)
            if key.digest() in tasks:
                continue
            if not bench.refresh and bench.store.get(key) is not None:
                stored += 1
            else:
                tasks[key.digest()] = Task(case.model, case.recipe, seed, key)
    return list(tasks.values()), stored


@contextmanager
def connected(ray: Any, address: str) -> Iterator[None]:
    """Ray connected for the run: a connection the caller made is used as it is (and kept); otherwise this run
    connects (`local`: starts an instance) and disconnects at the end."""
    if ray.is_initialized():
        yield
        return
    extra = {"include_dashboard": False} if address == LOCAL else {}
    try:
        ray.init(address=address, **extra)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        raise PqqpError(f"cannot connect to Ray at {address!r} ({first_line(exc)}): accepted {ADDRESSES}") from None
    try:
        yield
    finally:
        ray.shutdown()


def fitted(ray: Any, workers: int, cpus: int, gpus: float | None) -> float:
    """The GPUs per worker (default: 1 where the cluster has GPUs, else 0), after checking that the workers'
    requests fit the cluster: an actor that never fits would wait forever."""
    total = ray.cluster_resources()
    gpus = (1.0 if total.get("GPU", 0) >= 1 else 0.0) if gpus is None else float(gpus)
    for name, each, flag in (("CPU", cpus, "cpus_per_worker"), ("GPU", gpus, "gpus_per_worker")):
        have = total.get(name, 0)
        if each and workers * each > have:
            raise PqqpError(f"Ray workers={workers} x {flag}={each:g} needs {workers * each:g} {name}s; the cluster "
                            f"has {have:g}: accepted workers x {flag} <= {have:g}")
    return gpus


def checked_key(fields: dict, task: Task) -> MeasurementKey:
    """The worker's key, which must be the driver's: else the worker's files differ from the driver's."""
    key = MeasurementKey(**fields)
    if key.digest() != task.key.digest():
        name = next(f for f in KEY_FIELDS if getattr(key, f) != getattr(task.key, f))
        raise PqqpError(f"a Ray worker keyed {task.label} with {name}={getattr(key, name)!r}, the driver with "
                        f"{getattr(task.key, name)!r}: accepted only the same model files and pqqp-bench on every "
                        f"node (run scripts/setup.sh there)")
    return key


@dataclass
class Dispatch:
    """The driver's side of a run: hands cases to idle workers, and checks and stores what comes back."""

    ray: Any
    actors: list
    pids: list[int | None]  # each worker's current process; None once it is lost for good
    pending: list[Task]
    store: Store
    summary: RayRunSummary
    replace: bool
    running: dict = field(default_factory=dict)  # the Ray reference of each case in flight -> (worker, task)
    last_model: dict[int, str] = field(default_factory=dict)

    def hand_out(self) -> None:
        """Give each idle live worker a case: one of the model it last ran where one is left (it is loaded)."""
        busy = {worker for worker, _ in self.running.values()}
        for worker, pid in enumerate(self.pids):
            if not self.pending:
                return
            if pid is None or worker in busy:
                continue
            model = self.last_model.get(worker)
            task = self.pending.pop(next((i for i, t in enumerate(self.pending) if t.model == model), 0))
            self.last_model[worker] = task.model
            self.running[self.actors[worker].compute.remote(task.model, str(task.recipe), task.seed)] = (worker, task)

    def collect(self) -> tuple[Measurement, int] | None:
        """Wait for the next finished case and store it: (measurement, worker pid), or None where it failed."""
        errors = self.ray.exceptions
        [ref], _ = self.ray.wait(list(self.running), num_returns=1)
        worker, task = self.running.pop(ref)
        try:
            fields, value, details, pid = self.ray.get(ref)
        except errors.RayActorError as exc:  # restarted max_retries times already: gone for good
            self.pids[worker] = None
            self.summary.failed.append(f"{task.label}: its worker was lost ({first_line(exc)})")
            return None
        except errors.RayTaskError as exc:
            self.summary.failed.append(f"{task.label}: {first_line(exc.cause or exc)}")
            return None
        if pid != self.pids[worker]:
            self.summary.restarts += 1
            self.pids[worker] = pid
        measurement = Measurement(checked_key(fields, task), value, details)
        if self.store.put(measurement, replace=self.replace):
            self.summary.computed += 1
            self.summary.digests.append(task.key.digest())
        else:
            self.summary.already_stored += 1
        return measurement, pid


def run_on_ray(suite: "Suite", store: Store, *, address: str | None = None, workers: int = 2,
               cpus_per_worker: int = 1, gpus_per_worker: float | None = None, refresh: bool = False,
               cache_dir: str | None = None, trust_remote_code: bool = False, max_retries: int = 3,
               progress: bool = True, on_result: Callable[[Measurement, int], None] | None = None) -> RayRunSummary:
    """Compute the suite's missing measurements on Ray workers and store each in `store` as it arrives.

    `address`: None or `local` starts a Ray instance here; `auto`, `HOST:PORT` or `ray://HOST:PORT` connects
    to a cluster; an existing connection (`ray.is_initialized()`) is used as it is. `gpus_per_worker` None
    means 1 where the cluster has GPUs, else 0. `max_retries` bounds the restarts of a worker and the reruns of
    a case whose worker died. `on_result(measurement, pid)` is called after each stored measurement with the
    pid of the worker process that computed it (which has been handed its next case by then). Where there is
    something to compute, a line before and a summary line after are printed; `progress` adds a bar and a line
    per stored measurement.

    Raises PqqpError once the other cases are stored if some case failed (its error, or its worker lost more
    than `max_retries` times); a re-run computes only what is still missing. Throughput is not run here.
    """
    from tqdm.auto import tqdm

    from .measure import Bench, progress_line

    check_resources(workers, cpus_per_worker, gpus_per_worker, max_retries)
    ray = require_ray()
    address = ray_address(address)
    bench = Bench(suite, store, refresh=refresh, progress=False, cache_dir=cache_dir,
                  trust_remote_code=trust_remote_code)
    tasks, stored = plan(bench)
    summary = RayRunSummary(workers, len(tasks) + stored, stored)
    if not tasks:
        return summary
    start = time.perf_counter()
    with connected(ray, address):
        gpus = fitted(ray, workers, cpus_per_worker, gpus_per_worker)
        print(f"ray: {len(tasks)} measurements on {workers} workers ({cpus_per_worker} CPU, {gpus:g} GPU each); "
              f"{stored} already stored", flush=True)
        remote = ray.remote(CaseWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus, max_restarts=max_retries,
                                                max_task_retries=max_retries)
        actors = [remote.remote(suite, cache_dir, trust_remote_code, cpus_per_worker) for _ in range(workers)]
        bar = tqdm(total=len(tasks), desc="ray", unit="case", disable=not progress)
        try:
            try:
                pids = ray.get([a.pid.remote() for a in actors])
            except ray.exceptions.RayError as exc:
                raise PqqpError(f"a Ray worker could not start: {first_line(exc)}") from None
            dispatch = Dispatch(ray, actors, pids, list(tasks), store, summary, replace=refresh)
            dispatch.hand_out()
            while dispatch.running:
                done = dispatch.collect()
                dispatch.hand_out()
                if done is None:
                    continue
                bar.update()
                if progress:
                    bar.write(progress_line(bar.n, len(tasks), done[0]))
                if on_result is not None:
                    on_result(*done)
            summary.failed += [f"{task.label}: no Ray worker left" for task in dispatch.pending]
        finally:
            bar.close()
            for actor in actors:
                try:
                    ray.get(actor.close.remote(), timeout=60)
                except ray.exceptions.RayError:
                    pass  # a worker lost for good has nothing left to close
                ray.kill(actor)
    summary.seconds = time.perf_counter() - start
    print(summary.line(), flush=True)
    if summary.failed:
        raise PqqpError(f"{len(summary.failed)} of {len(tasks)} measurements failed on Ray (first: "
                        f"{summary.failed[0]}); the {summary.computed} others are stored: run again to retry the rest")
    return summary
