"""Compute training batches ahead of time in background threads.

Threads, not processes: reading memory-mapped arrays, numpy copies and torch kernels release
the GIL, so a thread overlaps with the training step without pickling batches between processes
(measured in ``bench/bench_augment.py``). Because a batch is a pure function of its index (see
:mod:`selfunet.training.sampling`), workers may finish out of order; the loader still yields in order.

Guarantees: at most ``max(prefetch, num_workers)`` items are computed (or being computed) ahead
of the consumer, so memory stays bounded; a worker's exception is re-raised in the consumer at
that item's turn, carrying the worker's traceback (never a silent hang); ``close()`` (or leaving
the ``with`` block) stops the workers, which are daemon threads so interpreter exit never waits
for them.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

from selfunet.errors import SelfUNetError

log = logging.getLogger(__name__)

T = TypeVar("T")


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
