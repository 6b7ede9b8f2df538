"""Background loader: order, bounded prefetch, errors re-raised with the worker traceback, shutdown."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import pytest

from selfunet.errors import SelfUNetError
from selfunet.training.loader import BackgroundLoader


def test_items_come_in_order_from_start_index() -> None:
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.01) for _ in range(100)]

    def produce(i: int) -> int:
        time.sleep(delays[i % 100])  # workers finish out of order
        return i * i

    with BackgroundLoader(produce, start_index=5, prefetch=4, num_workers=3) as loader:
        got = [next(loader) for _ in range(30)]
    assert got == [i * i for i in range(5, 35)]


def test_prefetch_is_bounded() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def produce(i: int) -> int:
        with lock:
            started.append(i)
        return i

    with BackgroundLoader(produce, start_index=0, prefetch=3, num_workers=2) as loader:
        time.sleep(0.3)
        assert sorted(started) == [0, 1, 2]
        assert loader.buffered == 3
        assert next(loader) == 0
        time.sleep(0.3)
        assert sorted(started) == [0, 1, 2, 3]


def _failing_producer(i: int) -> int:
    if i == 3:
        raise ValueError("bad item 3")
    return i


def test_worker_error_reraised_with_traceback() -> None:
    with BackgroundLoader(_failing_producer, start_index=0, prefetch=2, num_workers=2) as loader:
        assert [next(loader) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad item 3") as info:
            next(loader)
    text = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert "_failing_producer" in text and "item 3" in text
    # the loader is finished after an error: no hang on further use
    with pytest.raises(StopIteration):
        next(loader)


def test_error_at_first_item_does_not_hang() -> None:
    def produce(i: int) -> int:
        raise SelfUNetError("case_7: file missing")

    loader = BackgroundLoader(produce, start_index=0)
    with pytest.raises(SelfUNetError, match="case_7"):
        next(loader)
    loader.close()


def test_close_stops_workers() -> None:
    loader = BackgroundLoader(lambda i: i, start_index=0, prefetch=2, num_workers=3)
    assert next(loader) == 0
    loader.close()
    assert not any(t.is_alive() for t in loader._threads)
    with pytest.raises(StopIteration):
        next(loader)


def test_bad_arguments_rejected() -> None:
    with pytest.raises(SelfUNetError, match="prefetch"):
        BackgroundLoader(lambda i: i, start_index=0, prefetch=0)


def test_unclosed_loader_does_not_block_interpreter_exit() -> None:
    script = textwrap.dedent(
        """
        import time
        from selfunet.training.loader import BackgroundLoader

        def slow(i):
            time.sleep(0.05)
            return i

        loader = BackgroundLoader(slow, start_index=0, prefetch=4, num_workers=2)
        print(next(loader), next(loader))
        """
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1"]
    assert time.perf_counter() - start < 30
