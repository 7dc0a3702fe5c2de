"""The copy engine (vhdtool.convert.engine) on its own: lanes keep their order on a pool of
workers, buffers always go back to the pool, the first error reaches the main thread."""

from __future__ import annotations

import threading
import time

import pytest

from vhdtool.convert.engine import Engine


def test_a_lane_runs_in_order_one_at_a_time_beside_other_tasks() -> None:
    engine = Engine(None, threads=3, nbuf=2, block=4096)
    seen: list[int] = []
    running = []
    overlap = []
    others = []

    def step(i: int) -> None:
        running.append(i)
        if len(running) > 1:
            overlap.append(i)
        time.sleep(0.0005 * (i % 3))      # uneven, so a wrong order would show
        seen.append(i)
        running.remove(i)

    lane = engine.lane()
    for i in range(200):
        lane.submit(lambda i=i: step(i))
        engine.submit(lambda: others.append(threading.current_thread().name))
    engine.finish()
    assert seen == list(range(200))
    assert not overlap
    assert len(others) == 200 and set(others) == {"vhdtool-copy"}


def test_buffers_come_back_to_the_pool() -> None:
    engine = Engine(None, threads=2, nbuf=2, block=4096)
    ran = []
    for i in range(20):                 # 20 buffers through a pool of 2: each must come back
        with engine.buffer() as held:
            held.buf[:1] = bytes([i])
            engine.submit(lambda b=held.buf, i=i: ran.append(b[0] == i), held)
            engine.lane().submit(lambda: None, held)
    engine.finish()
    assert ran == [True] * 20


def test_the_first_error_stops_the_pass_and_skipped_tasks_give_their_buffers_back() -> None:
    engine = Engine(None, threads=1, nbuf=2, block=4096)
    go = threading.Event()
    after = []

    def boom() -> None:
        go.wait(10)
        raise OSError(5, "Input/output error")

    with engine.buffer() as held:
        engine.submit(boom, held)
    with engine.buffer() as held:       # queued behind it on the one worker
        engine.submit(lambda: after.append(1), held)
    go.set()
    with pytest.raises(OSError, match="Input/output"):
        engine.drain()
    with pytest.raises(OSError, match="Input/output"):
        engine.buffer()                 # nothing more is handed out
    engine.abort()
    assert after == [] and engine.stopped
    pool = engine._pool                 # noqa: SLF001 -- both buffers are back
    assert pool._q.qsize() == 2 and pool._left == 0
