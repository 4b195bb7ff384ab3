"""Execution layer: the same tasks run serially, on local processes, or on a Dask cluster.

A *task* is a plain, picklable value (a chunk number, a list of replicate numbers); a *task function*
``fn(context, task)`` is a module-level function that turns one task into one small result (metrics,
counts, percentiles — never the simulated profiles).  :func:`map_tasks` runs the tasks where
``scheduler`` says and yields the results **in task order**, whatever order they finish in; callers
fold them into their summaries as they arrive, so the client holds only the running summary and the
few results that finished ahead of their turn (at most ``max_in_flight``).

Determinism
    Results never depend on where or in which order tasks ran: every random draw of a task comes from
    :func:`task_seed` ``(root, key)`` — ``numpy.random.SeedSequence(root, spawn_key=key)``, the same
    child :meth:`numpy.random.SeedSequence.spawn` would give — with a key that names the task's content
    (the chunk number, the replicate number), not the worker or the number of workers.  Folding in task
    order makes even floating-point sums bit-identical between a serial run and a run on any cluster.

Fault tolerance
    On a Dask cluster, a task whose worker dies is re-run by the scheduler on another worker (Dask
    keeps the task, not the worker's result); :func:`map_tasks` gathers one result per task, so a lost
    worker neither loses nor duplicates a task.  Task functions are pure (same task → same result), so
    a re-run gives the same numbers.

Schedulers
    ``None`` or ``"serial"``: in this process, one task after another.  ``"processes"`` (or
    ``"processes:N"``): a pool of N local processes (default: the number of CPUs).  ``"tcp://HOST:PORT"``
    (any Dask scheduler address): a :class:`distributed.Client` connected for the run and closed after
    it.  A :class:`distributed.Client`: used as is (left open).  Dask is imported only in the last two
    cases.

Examples
--------
>>> list(map_tasks(_square_task, [1, 2, 3], context=10))
[11, 14, 19]
>>> int(task_rng(2026, 3).integers(1000)) == int(task_rng(2026, 3).integers(1000))
True
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .errors import PkmodelError

__all__ = ["QuantileSketch", "map_tasks", "run_tasks", "scheduler_label", "task_rng", "task_seed"]


def _square_task(context: int, task: int) -> int:
    """Example task function (doctests): ``context + task²``."""
    return context + task * task


# ------------------------------------------------------------------------------------------- seeds


def task_seed(root: int, key: int | Sequence[int]) -> np.random.SeedSequence:
    """The seed of one task: child ``key`` of the root seed.

    ``SeedSequence(root, spawn_key=key)`` equals ``SeedSequence(root).spawn(k + 1)[k]`` for ``key = k``,
    without spawning the first k children, so a task's stream depends only on the root seed and its
    key (e.g. its chunk or replicate number), never on how many workers or tasks there are.

    Parameters
    ----------
    root : int
        The run's seed, >= 0.
    key : int or sequence of int
        The task's key, each >= 0.

    Returns
    -------
    numpy.random.SeedSequence

    Examples
    --------
    >>> import numpy as np
    >>> a = np.random.default_rng(task_seed(7, 2)).random()
    >>> b = np.random.default_rng(np.random.SeedSequence(7).spawn(3)[2]).random()
    >>> a == b
    True
    """
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or root < 0:
        raise PkmodelError(f"seed={root!r}: give a whole number >= 0 (every random draw takes a seed)")
    keys = (key,) if isinstance(key, (int, np.integer)) else tuple(key)
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 for k in keys):
        raise PkmodelError(f"task key {key!r}: give whole numbers >= 0")
    return np.random.SeedSequence(int(root), spawn_key=tuple(int(k) for k in keys))


def task_rng(root: int, key: int | Sequence[int]) -> np.random.Generator:
    """``numpy.random.default_rng(task_seed(root, key))``.

    Examples
    --------
    >>> task_rng(1, 0).random() == task_rng(1, 0).random()
    True
    """
    return np.random.default_rng(task_seed(root, key))


# ---------------------------------------------------------------------------------------- progress


class Progress:
    """A one-line text progress bar on standard error (``enabled=False``: silent).

    Parameters
    ----------
    total : int
        Units of work (tasks, subjects, replicates).
    enabled : bool
    label : str
        What the units are, e.g. ``"replicates"``.
    """

    def __init__(self, total: int, enabled: bool, label: str = "tasks", width: int = 30):
        self.total, self.enabled, self.label, self.width = int(total), bool(enabled), label, width
        self.start = time.perf_counter()

    def update(self, done: int) -> None:
        """Show that ``done`` of ``total`` units are finished."""
        if not self.enabled:
            return
        fraction = done / self.total if self.total else 1.0
        filled = round(self.width * fraction)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {100 * fraction:3.0f}% "
            f"{done}/{self.total} {self.label} {elapsed:.1f} s"
        )
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def prepare_output_folder(out_dir: Any, force: bool) -> Any:
    """The results folder ``out_dir`` (a Path), created; an existing non-empty one only with ``force``.

    Shared by the VPC and bootstrap writers.
    """
    from pathlib import Path

    target = Path(out_dir)
    if target.exists() and any(target.iterdir()) and not force:
        raise PkmodelError(
            f"{target} exists and is not empty; pkmodel never overwrites results: choose another --out "
            "or add --force"
        )
    target.mkdir(parents=True, exist_ok=True)
    return target


# ---------------------------------------------------------------------------------------- schedulers


def _is_client(scheduler: Any) -> bool:
    return type(scheduler).__name__ == "Client" and hasattr(scheduler, "submit")


def scheduler_label(scheduler: Any) -> str:
    """A short description of a scheduler for provenance records, e.g. ``"serial"``.

    Examples
    --------
    >>> scheduler_label(None), scheduler_label("processes:2")
    ('serial', 'processes:2')
    """
    if scheduler is None:
        return "serial"
    if _is_client(scheduler):
        return f"dask {getattr(scheduler.scheduler, 'address', '?')}"
    return str(scheduler)


def _check_scheduler(scheduler: Any) -> tuple[str, Any]:
    if scheduler is None or scheduler == "serial":
        return "serial", None
    if _is_client(scheduler):
        return "client", scheduler
    if isinstance(scheduler, str):
        if scheduler == "processes" or scheduler.startswith("processes:"):
            count = scheduler.partition(":")[2]
            if count and not (count.isdigit() and int(count) >= 1):
                raise PkmodelError(
                    f"scheduler {scheduler!r}: write 'processes' or 'processes:N' with N >= 1 workers"
                )
            return "processes", int(count) if count else (os.cpu_count() or 1)
        if "://" in scheduler:
            return "address", scheduler
    raise PkmodelError(
        f"scheduler={scheduler!r} is not known: use None or 'serial', 'processes' (or 'processes:N'), a Dask "
        "scheduler address such as 'tcp://127.0.0.1:8786', or a dask.distributed Client"
    )


def map_tasks(
    fn: Callable[[Any, Any], Any],
    tasks: Sequence[Any],
    *,
    context: Any = None,
    scheduler: Any = None,
    progress: bool = False,
    label: str = "tasks",
    weights: Sequence[int] | None = None,
    max_in_flight: int | None = None,
) -> Iterator[Any]:
    """Run ``fn(context, task)`` for every task and yield the results in task order.

    Parameters
    ----------
    fn : callable
        A module-level (picklable) function ``fn(context, task) -> result``; it must be pure: the same
        task gives the same result wherever it runs.
    tasks : sequence
        Picklable task descriptions.
    context : object, optional
        Read-only data every task needs (sent once per worker on Dask, once per task to local
        processes); keep it small — a file path and a few estimates, not a model's simulations.
    scheduler : None, str or distributed.Client
        See the module docstring.
    progress : bool
        Text progress bar on standard error.
    label : str
        Unit shown by the progress bar.
    weights : sequence of int, optional
        Units of work per task for the progress bar (e.g. subjects per chunk); default 1 per task.
    max_in_flight : int, optional
        Tasks submitted but not yet consumed; bounds the results held on the client.  Default: 4 per
        worker (at least 4).

    Yields
    ------
    object
        ``fn(context, tasks[i])`` for i = 0, 1, ...

    Raises
    ------
    PkmodelError
        An unknown scheduler, or a scheduler address that cannot be reached.  An error raised by a task
        is re-raised on the client.

    Examples
    --------
    >>> [r for r in map_tasks(_square_task, range(4), context=0, scheduler="serial")]
    [0, 1, 4, 9]
    """
    kind, target = _check_scheduler(scheduler)
    tasks = list(tasks)
    units = [1] * len(tasks) if weights is None else [int(w) for w in weights]
    if len(units) != len(tasks):
        raise PkmodelError(f"weights has {len(units)} entries for {len(tasks)} tasks; give one per task")
    bar = Progress(sum(units), progress, label)
    if kind == "serial":
        done = 0
        for task, unit in zip(tasks, units, strict=True):
            result = fn(context, task)
            done += unit
            bar.update(done)
            yield result
        return
    if kind == "processes":
        yield from _map_processes(fn, tasks, context, target, bar, units, max_in_flight)
        return
    if kind == "address":
        from distributed import Client

        try:
            client = Client(target, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise PkmodelError(
                f"cannot reach the Dask scheduler at {target} ({exc}); start one (dask scheduler) and its "
                "workers, or run with --scheduler processes"
            ) from None
        try:
            yield from _map_dask(fn, tasks, context, client, bar, units, max_in_flight)
        finally:
            client.close()
        return
    yield from _map_dask(fn, tasks, context, target, bar, units, max_in_flight)


def run_tasks(fn: Callable[[Any, Any], Any], tasks: Sequence[Any], **options: Any) -> list[Any]:
    """``list(map_tasks(fn, tasks, **options))``: every result, in task order.

    Examples
    --------
    >>> run_tasks(_square_task, [3, 4], context=1)
    [10, 17]
    """
    return list(map_tasks(fn, tasks, **options))


def _in_order(pending: dict[int, Any], next_index: int) -> Iterator[tuple[int, Any]]:
    while next_index in pending:
        yield next_index, pending.pop(next_index)
        next_index += 1


_UNPICKLED: dict[str, tuple] = {}


def _run_pickled(token: str, blob: bytes, task: Any) -> Any:
    """Worker side of the process pool: unpickle (once per process) the function and context, run a task."""
    if token not in _UNPICKLED:
        import cloudpickle

        _UNPICKLED.clear()
        _UNPICKLED[token] = cloudpickle.loads(blob)
    fn, context = _UNPICKLED[token]
    return fn(context, task)


def _map_processes(fn, tasks, context, workers, bar, units, max_in_flight) -> Iterator[Any]:
    import hashlib
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import cloudpickle

    # cloudpickle (as Dask uses) so that contexts holding generated functions (lambdified models) travel
    blob = cloudpickle.dumps((fn, context))
    token = hashlib.sha256(blob).hexdigest()
    limit = max(4, 4 * workers) if max_in_flight is None else max(1, int(max_in_flight))
    pending: dict[int, Any] = {}
    running: dict[Any, int] = {}
    submitted = consumed = done_units = 0
    import multiprocessing

    # spawn, not fork: forking a process that runs threads (BLAS, a Dask client) can deadlock the child
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while consumed < len(tasks):
            while submitted < len(tasks) and submitted - consumed < limit:
                running[pool.submit(_run_pickled, token, blob, tasks[submitted])] = submitted
                submitted += 1
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                index = running.pop(future)
                pending[index] = future.result()
                done_units += units[index]
            bar.update(done_units)
            for index, result in list(_in_order(pending, consumed)):
                consumed = index + 1
                yield result


def _map_dask(fn, tasks, context, client, bar, units, max_in_flight) -> Iterator[Any]:
    import uuid

    from distributed import as_completed

    workers = max(1, len(client.scheduler_info().get("workers", {})))
    limit = max(4, 4 * workers) if max_in_flight is None else max(1, int(max_in_flight))
    run_id = uuid.uuid4().hex[:12]
    # a list of one item: scatter would split a tuple or dict context into pieces
    shared = client.scatter([context], broadcast=True, hash=False)[0] if context is not None else None
    pending: dict[int, Any] = {}
    index_of: dict[str, int] = {}
    submitted = consumed = done_units = 0
    queue = as_completed()

    def submit(i: int) -> None:
        future = client.submit(fn, shared, tasks[i], key=f"pkmodel-{run_id}-{i}", pure=False)
        index_of[future.key] = i
        queue.add(future)

    try:
        while submitted < len(tasks) and submitted < limit:
            submit(submitted)
            submitted += 1
        for future in queue:
            index = index_of.pop(future.key)
            pending[index] = future.result()
            future.release()
            done_units += units[index]
            bar.update(done_units)
            for i, result in list(_in_order(pending, consumed)):
                consumed = i + 1
                yield result
            while submitted < len(tasks) and submitted - consumed < limit:
                submit(submitted)
                submitted += 1
    finally:
        queue.clear()
        if shared is not None:
            shared.release()
    if consumed != len(tasks):  # pragma: no cover - as_completed yields every submitted future once
        raise PkmodelError(f"{len(tasks) - consumed} tasks did not return; rerun")


# ------------------------------------------------------------------------------ mergeable quantiles


class QuantileSketch:
    """Percentiles of a stream of values without keeping the values: a log-spaced histogram.

    Positive values fall into bins ``[10^(k/r), 10^((k+1)/r))`` with ``r = bins_per_decade`` between
    ``lower`` and ``upper``; zeros, values below ``lower`` and above ``upper`` are counted apart, and the
    exact minimum and maximum are kept.  Counts are integers, so merging sketches (``+=``) is exact and
    does not depend on the order; memory is fixed by the range and the resolution, not by the number
    of values.  A percentile is read as numpy's default (linear interpolation between order statistics,
    Hyndman–Fan type 7) with each order statistic placed inside its bin by log-linear interpolation: the
    relative error of a positive percentile is below the bin ratio ``10^(1/r) − 1`` (0.23 % for r = 1000).

    Parameters
    ----------
    bins_per_decade : int
    lower, upper : float
        Range of the log bins (positive, lower < upper).

    Examples
    --------
    >>> import numpy as np
    >>> sketch = QuantileSketch()
    >>> sketch.add(np.arange(1.0, 101.0))
    >>> abs(sketch.quantile(0.5) / 50.5 - 1) < 10 ** (1 / 1000) - 1
    True
    """

    def __init__(self, bins_per_decade: int = 1000, lower: float = 1e-8, upper: float = 1e8):
        if not (0 < lower < upper) or int(bins_per_decade) < 1:
            raise PkmodelError(
                f"QuantileSketch needs 0 < lower < upper and bins_per_decade >= 1, got {lower}, {upper}, "
                f"{bins_per_decade}"
            )
        self.resolution = int(bins_per_decade)
        self.log_lower = math.log10(lower)
        self.n_bins = math.ceil((math.log10(upper) - self.log_lower) * self.resolution)
        self.counts = np.zeros(self.n_bins, dtype=np.int64)
        self.zeros = self.below = self.above = self.n = 0
        self.minimum, self.maximum = math.inf, -math.inf

    def add(self, values: Iterable[float] | np.ndarray) -> None:
        """Count values (finite, >= 0; NaN, infinite or negative values are an error)."""
        x = np.asarray(values, dtype=float).reshape(-1)
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            bad = float(x[~np.isfinite(x) | (x < 0)][0])
            raise PkmodelError(
                f"QuantileSketch counts finite values >= 0, got {bad!r}; check the metric for failed "
                "simulations or negative amounts"
            )
        self.n += x.size
        self.minimum = min(self.minimum, float(x.min()))
        self.maximum = max(self.maximum, float(x.max()))
        positive = x[x > 0]
        self.zeros += x.size - positive.size
        k = np.floor((np.log10(positive) - self.log_lower) * self.resolution).astype(np.int64)
        self.below += int(np.sum(k < 0))
        self.above += int(np.sum(k >= self.n_bins))
        inside = k[(k >= 0) & (k < self.n_bins)]
        self.counts += np.bincount(inside, minlength=self.n_bins)

    def __iadd__(self, other: QuantileSketch) -> QuantileSketch:
        if (other.resolution, other.log_lower, other.n_bins) != (
            self.resolution,
            self.log_lower,
            self.n_bins,
        ):
            raise PkmodelError("only sketches with the same range and resolution can be merged")
        self.counts += other.counts
        self.zeros += other.zeros
        self.below += other.below
        self.above += other.above
        self.n += other.n
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        return self

    def compact(self) -> tuple:
        """A small picklable form (non-empty bins only) for sending from a worker."""
        nz = np.flatnonzero(self.counts)
        return (
            self.resolution,
            self.log_lower,
            self.n_bins,
            nz.astype(np.int32),
            self.counts[nz],
            (self.zeros, self.below, self.above, self.n, self.minimum, self.maximum),
        )

    @classmethod
    def from_compact(cls, data: tuple) -> QuantileSketch:
        """Inverse of :meth:`compact`."""
        resolution, log_lower, n_bins, index, counts, (zeros, below, above, n, lo, hi) = data
        sketch = cls.__new__(cls)
        sketch.resolution, sketch.log_lower, sketch.n_bins = resolution, log_lower, n_bins
        sketch.counts = np.zeros(n_bins, dtype=np.int64)
        sketch.counts[index] = counts
        sketch.zeros, sketch.below, sketch.above, sketch.n = zeros, below, above, n
        sketch.minimum, sketch.maximum = lo, hi
        return sketch

    def _order_statistic(self, k: int) -> float:
        """The k-th smallest value (0-based), placed inside its bin."""
        if k <= 0:
            return self.minimum
        if k >= self.n - 1:
            return self.maximum
        if k < self.zeros:
            return 0.0
        k -= self.zeros
        if k < self.below:
            return self.minimum if self.below == 1 else 10.0**self.log_lower
        k -= self.below
        cumulative = np.cumsum(self.counts)
        if k < cumulative[-1]:
            b = int(np.searchsorted(cumulative, k, side="right"))
            before = int(cumulative[b - 1]) if b else 0
            position = (k - before + 0.5) / int(self.counts[b])
            value = 10.0 ** (self.log_lower + (b + position) / self.resolution)
            return min(max(value, self.minimum), self.maximum)
        return self.maximum

    def quantile(self, q: float) -> float:
        """The q-quantile (0 <= q <= 1), NaN for an empty sketch."""
        if not 0.0 <= q <= 1.0:
            raise PkmodelError(f"quantile q={q!r} must be between 0 and 1")
        if self.n == 0:
            return math.nan
        h = q * (self.n - 1)
        lo = math.floor(h)
        a = self._order_statistic(lo)
        if h == lo:
            return a
        b = self._order_statistic(lo + 1)
        return a + (h - lo) * (b - a)
