"""Compute training batches ahead of time in background workers: threads or processes.

Threads (the default): reading memory-mapped arrays, numpy copies and torch kernels release the
GIL, so a thread overlaps with the training step without pickling batches between processes
(measured in ``bench/bench_augment.py``). Processes (:class:`ProcessLoader`, torch's own
``DataLoader`` machinery) where the Python part of producing a batch becomes the bottleneck, e.g.
many workers feeding a fast GPU; there torch's pin-memory thread page-locks each batch in the
main process, so host-to-GPU copies can run asynchronously. Because a batch is a pure function of
its index (see :mod:`selfunet.training.sampling`), workers may finish out of order; both loaders
still yield in order.

Guarantees: at most ``max(prefetch, num_workers)`` items are computed (or being computed) ahead
of the consumer, so memory stays bounded; a worker's exception is re-raised in the consumer at
that item's turn, carrying the worker's traceback (never a silent hang); ``close()`` (or leaving
the ``with`` block) stops the workers, which are daemon threads so interpreter exit never waits
for them.
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import threading
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, Literal, TypeVar

import torch.utils.data

from selfunet import runtime
from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

T = TypeVar("T")
#: how worker processes start (see :class:`ProcessLoader`); spawn where fork servers do not exist
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class BackgroundLoader(Generic[T]):
    """Yields ``produce(start_index)``, ``produce(start_index + 1)``, ... computed ahead."""

    def __init__(
        self,
        produce: Callable[[int], T],
        start_index: int,
        prefetch: int = 2,
        num_workers: int = 1,
    ) -> None:
        if prefetch < 1 or num_workers < 1:
            raise SelfUNetError(
                f"background loader: prefetch ({prefetch}) and num_workers ({num_workers}) must be >= 1."
            )
        self._produce = produce
        self._window = max(prefetch, num_workers)
        self._next_to_start = start_index
        self._next_to_yield = start_index
        self._results: dict[int, T] = {}
        self._errors: dict[int, tuple[BaseException, str]] = {}
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"selfunet-loader-{i}", daemon=True)
            for i in range(num_workers)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._next_to_start >= self._next_to_yield + self._window:
                    self._cond.wait()
                if self._closed:
                    return
                index = self._next_to_start
                self._next_to_start += 1
            try:
                item = self._produce(index)
            except BaseException as exc:
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                with self._cond:
                    self._errors[index] = (exc, text)
                    self._cond.notify_all()
                return  # later items are not needed: the consumer stops at this one
            with self._cond:
                if self._closed:
                    return
                self._results[index] = item
                self._cond.notify_all()

    # ------------------------------------------------------------------ consumer side
    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        with self._cond:
            if self._closed:
                raise StopIteration
            index = self._next_to_yield
            while index not in self._results and index not in self._errors:
                if not any(t.is_alive() for t in self._threads):
                    raise RuntimeError(f"background loader: all workers stopped before item {index}.")
                self._cond.wait(timeout=1.0)
            if index in self._errors:
                exc, text = self._errors.pop(index)
                self._closed = True
                self._cond.notify_all()
            else:
                self._next_to_yield += 1
                self._cond.notify_all()
                return self._results.pop(index)
        note = f"(raised in a background loader worker while producing item {index}; worker traceback:\n{text})"
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        raise exc

    @property
    def buffered(self) -> int:
        """Items finished and waiting for the consumer (for tests and monitoring)."""
        with self._cond:
            return len(self._results)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers; an item being produced finishes first (waited for up to ``timeout``)."""
        with self._cond:
            self._closed = True
            self._results.clear()
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    log.warning("background loader worker %s still busy after %.0f s", thread.name, timeout)

    def __enter__(self) -> BackgroundLoader[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # never join from a finaliser (it may run in a worker thread or at shutdown)
        cond = getattr(self, "_cond", None)
        if cond is not None:
            with cond:
                self._closed = True
                cond.notify_all()


class _IndicesFrom(torch.utils.data.Sampler[int]):
    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


class _Produced(torch.utils.data.Dataset):
    def __init__(self, produce: Callable[[int], object]) -> None:
        self.produce = produce

    def __getitem__(self, index: int) -> object:
        return self.produce(index)


class ProcessLoader(Generic[T]):
    """Like :class:`BackgroundLoader`, in ``num_workers`` worker processes (torch's ``DataLoader``).

    The workers start from a fork server (``forkserver``), not from a fork of this process:
    a fork copies the state of every thread's locks, and a worker forked while one of the
    training's BLAS threads held MKL's allocator lock spun on it for ever at its first matrix
    product. A fork server is a fresh process that never ran those threads. ``produce`` is
    therefore pickled to the workers. ``pin_memory``: every item is page-locked in the main process
    (items with a ``pin_memory()`` method, tensors, and containers of them), so
    ``.to("cuda", non_blocking=True)`` does not block the host.
    """

    def __init__(
        self,
        produce: Callable[[int], T],
        start_index: int,
        prefetch: int = 2,
        num_workers: int = 1,
        pin_memory: bool = False,
    ) -> None:
        if prefetch < 1 or num_workers < 1:
            raise SelfUNetError(
                f"process loader: prefetch ({prefetch}) and num_workers ({num_workers}) must be >= 1."
            )
        if runtime.has_run("openvino"):  # see selfunet.runtime: the two corrupt one process
            raise SelfUNetError(
                "process loader: this process already ran a network in OpenVINO, and loader worker "
                "processes started after that crash it; use the thread loader (--loader-mode thread) "
                "or predict with --backend torch."
            )
        runtime.mark_ran("loader-workers")
        self._loader = torch.utils.data.DataLoader(
            _Produced(produce), batch_size=None, sampler=_IndicesFrom(start_index), num_workers=num_workers,
            prefetch_factor=max(1, math.ceil(prefetch / num_workers)), pin_memory=pin_memory,
            multiprocessing_context=START_METHOD,
        )
        self._iterator: Iterator[T] | None = iter(self._loader)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._iterator is None:
            raise StopIteration
        return next(self._iterator)

    def close(self) -> None:
        """Stop the worker processes (torch's iterator shuts them down when released)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> ProcessLoader[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


LoaderMode = Literal["thread", "process"]


def open_loader(
    produce: Callable[[int], T],
    start_index: int,
    prefetch: int,
    num_workers: int,
    mode: LoaderMode = "thread",
    pin_memory: bool = False,
) -> BackgroundLoader[T] | ProcessLoader[T]:
    """The loader ``mode`` names. Threads pin nothing themselves: their ``produce`` allocates
    page-locked memory directly where wanted (no extra copy)."""
    if mode == "thread":
        return BackgroundLoader(produce, start_index, prefetch=prefetch, num_workers=num_workers)
    if mode == "process":
        return ProcessLoader(produce, start_index, prefetch=prefetch, num_workers=num_workers, pin_memory=pin_memory)
    raise SelfUNetError(f"loader mode must be 'thread' or 'process', got {mode!r}.")
