"""The cross-stream batcher with a deterministic fake engine (a test double; real engines are in tests/contract)."""

import asyncio
import os
import threading
import time

import pytest

from voxserve.server.scheduler import RUN_LATE, SKIP, BatchCostFit, BatchScheduler, StageFailed, marginal_cost


class Recorder:
    def __init__(self, delay=0.0, fail_batch=False, fail_item=None):
        self.batches = []
        self.threads = set()
        self.delay = delay
        self.fail_batch = fail_batch
        self.fail_item = fail_item

    def __call__(self, items):
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_batch:
            raise RuntimeError("engine exploded")
        return [ValueError("bad item") if x == self.fail_item else x * 10 for x in items]


async def test_requests_from_many_streams_share_one_call():
    rec = Recorder()
    s = BatchScheduler("t", rec, max_batch=8, max_wait_s=0.02)
    far = time.perf_counter() + 10
    outs = await asyncio.gather(*[s.submit(i, deadline=far) for i in range(5)])
    assert [o.value for o in outs] == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]] and outs[0].batch_size == 5
    assert all(t.startswith("engine-t") for t in rec.threads)     # never on the event loop thread
    await s.stop()


async def test_required_utilisation_counts_only_the_work_that_could_not_be_shed():
    rec = Recorder(delay=0.05)
    s = BatchScheduler("t", rec, max_batch=8, max_wait_s=0.02)
    far = time.perf_counter() + 10
    await asyncio.gather(s.submit(1, deadline=far, weight=1.0, required=1.0),
                         s.submit(2, deadline=far, weight=3.0, required=0.2))   # one batch of two
    assert rec.batches == [[1, 2]]
    full, required = s.utilisation(), s.required_utilisation()
    assert full > 0
    assert required == pytest.approx(full * (1.0 * 1.0 + 3.0 * 0.2) / 4.0)     # weighted by each share
    await s.stop()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice needs Linux's setpriority")
async def test_nice_lowers_the_engine_threads_priority_only():
    def niceness(items):
        return [os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) for _ in items]
    base = os.getpriority(os.PRIO_PROCESS, 0)
    low = BatchScheduler("low", niceness, nice=5)
    normal = BatchScheduler("normal", niceness)
    far = time.perf_counter() + 10
    assert (await low.submit(1, deadline=far)).value == min(19, base + 5)
    assert (await normal.submit(1, deadline=far)).value == base
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base     # the event loop's thread
    await low.stop()
    await normal.stop()


async def test_withdraw_cancels_only_queued_work():
    rec = Recorder(delay=0.1)
    s = BatchScheduler("t", rec, max_batch=1, max_wait_s=0.0)
    far = time.perf_counter() + 10
    running = s.submit(1, deadline=far)
    await asyncio.sleep(0.03)                                  # now in its engine call
    queued = s.submit(2, deadline=far)
    assert s.withdraw(running) is False and s.withdraw(queued) is True
    assert (await running).value == 10                         # its result is not thrown away
    assert queued.cancelled()
    await asyncio.sleep(0.15)
    assert rec.batches == [[1]]                                # the withdrawn one never ran
    await s.stop()


def test_cost_fit_tells_the_per_request_cost_from_the_fixed_cost_of_a_call():
    fit = BatchCostFit(min_batches=20)
    for i in range(19):
        fit.add(1 + i % 8, 0.004 + 0.001 * (1 + i % 8))      # 4 ms per call + 1 ms per request
    assert fit.per_weight() is None                           # too few batches yet
    fit.add(3, 0.007)
    assert fit.per_weight() == pytest.approx(0.001)
    one_size = BatchCostFit(min_batches=5)
    for _ in range(30):
        one_size.add(1, 0.005)
    assert one_size.per_weight() is None                      # every batch alike: no slope to tell
    # a request alone in its batch pays the call's fixed cost; one more stream at full batches adds the slope
    assert marginal_cost(0.005, 1, 0.001) == pytest.approx(0.00125)     # a quarter of its share at least
    assert marginal_cost(0.0015, 1, 0.001) == pytest.approx(0.001)
    assert marginal_cost(0.0008, 1, 0.001) == pytest.approx(0.0008)     # never more than its share
    assert marginal_cost(0.005, 1, None) == 0.005                       # no fit: its share


async def test_max_batch_caps_and_earliest_deadline_first():
    rec = Recorder(delay=0.01)
    s = BatchScheduler("t", rec, max_batch=3, max_wait_s=0.02)
    now = time.perf_counter()
    futs = [s.submit(i, deadline=now + 10 - i) for i in range(7)]      # later items have earlier deadlines
    await asyncio.gather(*futs)
    assert [len(b) for b in rec.batches] == [3, 3, 1]
    assert rec.batches[0] == [6, 5, 4]
    await s.stop()


async def test_priority_goes_before_deadline():
    """ASR finals (priority 0) run before interims (1) queued earlier with earlier deadlines."""
    rec = Recorder(delay=0.01)
    s = BatchScheduler("t", rec, max_batch=1, max_wait_s=0.02)
    now = time.perf_counter()
    futs = [s.submit(i, deadline=now + 1 + i, priority=1) for i in range(3)]
    futs.append(s.submit(9, deadline=now + 100, priority=0))
    await asyncio.gather(*futs)
    assert rec.batches == [[9], [0], [1], [2]]
    await s.stop()


async def test_rank_orders_within_a_priority_and_the_deadline_still_decides_skip():
    """A stage may order one priority's requests by a rank of its own (ASR interims: when each stream's
    user last saw an update) instead of by deadline; the deadline still decides whether a request is
    skipped. Request 2 has the latest deadline but the earliest rank, so it runs first; request 3's deadline
    has passed, so it is skipped although its rank is earliest of all."""
    rec = Recorder(delay=0.01)
    s = BatchScheduler("t", rec, max_batch=1, max_wait_s=0.02)
    now = time.perf_counter()
    futs = [s.submit(0, deadline=now + 1, priority=1, rank=now + 3),
            s.submit(1, deadline=now + 2, priority=1, rank=now + 2),
            s.submit(2, deadline=now + 3, priority=1, rank=now + 1),
            s.submit(3, deadline=now - 1, priority=1, rank=now, policy=SKIP)]
    outs = await asyncio.gather(*futs)
    assert rec.batches == [[2], [1], [0]]
    assert outs[3].skipped and not any(o.skipped for o in outs[:3])
    await s.stop()


async def test_a_bound_request_gets_its_payload_when_it_is_taken():
    """Late binding: ``bind`` makes the payload when a batch is formed. A request that waited behind a slow
    call runs with what its binder returns then (3, not the 1 it was queued with), even past its deadline
    (it is never skipped, only marked late); its key is the bound payload's, so it joins the batch of that
    key; a binder that returns None cancels its request."""
    rec = Recorder(delay=0.05)
    s = BatchScheduler("t", rec, max_batch=8, max_wait_s=0.0, batch_key=lambda x: x % 2)
    now = time.perf_counter()
    state = {"value": 1}
    first = s.submit(0, deadline=now + 10)                       # holds the only slot for 50 ms
    await asyncio.sleep(0.01)
    bound = s.submit(1, deadline=now, policy=SKIP, bind=lambda: (state["value"], 2.0, 0.5))
    gone = s.submit(5, deadline=now + 10, policy=SKIP, bind=lambda: None)
    odd = s.submit(7, deadline=now + 10)
    state["value"] = 3                                           # what has arrived meanwhile
    outs = await asyncio.gather(first, bound, odd)
    assert rec.batches == [[0], [3, 7]]
    assert outs[1].value == 30 and outs[1].late and not outs[1].skipped
    assert outs[1].share == pytest.approx(2.0 / 3.0)            # the bound weight (7 has weight 1)
    assert gone.cancelled()
    await s.stop()


async def test_batch_key_keeps_unrelated_work_out_of_a_batch():
    """A batch holds the first request (by priority, deadline) and only requests with its key; the rest
    stay queued for the next batch in their own order."""
    rec = Recorder()
    s = BatchScheduler("t", rec, max_batch=8, max_wait_s=0.02, batch_key=lambda x: x % 2)
    now = time.perf_counter()
    futs = [s.submit(i, deadline=now + 10 + i) for i in (1, 2, 3, 4, 5, 6)]
    await asyncio.gather(*futs)
    assert rec.batches == [[1, 3, 5], [2, 4, 6]]
    await s.stop()


async def test_first_request_does_not_wait_longer_than_max_wait():
    rec = Recorder()
    s = BatchScheduler("t", rec, max_batch=64, max_wait_s=0.005)
    t0 = time.perf_counter()
    out = await s.submit(1, deadline=t0 + 10)
    assert out.value == 10 and out.queue_s < 0.2
    await s.stop()


async def test_failing_batch_fails_every_waiter_and_nobody_hangs():
    s = BatchScheduler("t", Recorder(fail_batch=True), max_batch=4, max_wait_s=0.01)
    futs = [s.submit(i, deadline=time.perf_counter() + 10) for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 5)
    assert all(isinstance(r, StageFailed) and "exploded" in str(r) for r in results)
    await s.stop()


async def test_failing_item_fails_only_its_stream():
    s = BatchScheduler("t", Recorder(fail_item=2), max_batch=4, max_wait_s=0.01)
    futs = [s.submit(i, deadline=time.perf_counter() + 10) for i in range(4)]
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(results[2], StageFailed)
    assert [r.value for i, r in enumerate(results) if i != 2] == [0, 10, 30]
    await s.stop()


async def test_overload_sheds_skippable_work_and_runs_finals_late():
    rec = Recorder(delay=0.05)
    s = BatchScheduler("t", rec, max_batch=1, max_wait_s=0.0)
    await s.submit(0, deadline=time.perf_counter() + 10)          # measures the 50 ms batch time
    now = time.perf_counter()
    blocker = s.submit(1, deadline=now + 10)
    partial = s.submit(2, deadline=now + 0.02, policy=SKIP)       # cannot make it: skipped
    final = s.submit(3, deadline=now + 0.02, policy=RUN_LATE)     # cannot make it: runs late
    b, p, f = await asyncio.gather(blocker, partial, final)
    assert p.skipped and p.value is None
    assert f.value == 30 and f.late and not f.skipped
    assert 2 not in [x for batch in rec.batches for x in batch]
    await s.stop()


async def test_stop_fails_pending_requests():
    s = BatchScheduler("t", Recorder(delay=0.2), max_batch=1, max_wait_s=0.0)
    futs = [s.submit(i, deadline=time.perf_counter() + 10) for i in range(3)]
    await asyncio.sleep(0.05)
    await s.stop()
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert any(isinstance(r, StageFailed) for r in results)


def test_invalid_configuration():
    with pytest.raises(ValueError):
        BatchScheduler("t", Recorder(), max_batch=0)


async def test_busy_history_stays_bounded_without_anyone_asking_for_utilisation():
    """A server whose streams run for hours without a new admission or /v1/info never asks for utilisation;
    the batches' busy times must still not pile up."""
    from voxserve.server.scheduler import BUSY_KEEP_S

    now = [0.0]
    s = BatchScheduler("t", Recorder(), max_batch=1, max_wait_s=0.0, clock=lambda: now[0])
    for _ in range(200):
        now[0] += 1.0
        await s.submit(1, deadline=now[0] + 10)
    assert len(s._busy) <= BUSY_KEEP_S + 1
    await s.stop()


async def test_utilisation_can_leave_out_the_work_of_named_owners():
    """Each request's share of its batch's engine time is kept under its owner, so the work of streams
    that have ended can be left out of the utilisation (required parts too); unnamed work always counts."""
    rec = Recorder(delay=0.05)
    s = BatchScheduler("t", rec, max_batch=8, max_wait_s=0.02)
    far = time.perf_counter() + 10
    await asyncio.gather(s.submit(1, deadline=far, owner="a", weight=3.0),
                         s.submit(2, deadline=far, owner="b", weight=1.0, required=0.5),
                         s.submit(3, deadline=far))
    assert len(rec.batches) == 1
    total = s.utilisation()
    assert total > 0
    without_a = s.utilisation(exclude={"a"})
    assert abs(without_a - total * 2 / 5) < 1e-9                  # a weighed 3 of the batch's 5
    assert abs(s.utilisation(exclude={"a", "b"}) - total / 5) < 1e-9
    # required: a 3 + b 0.5 + unnamed 1 = 4.5 of 5; without b: 4.0
    assert abs(s.required_utilisation() - total * 4.5 / 5) < 1e-9
    assert abs(s.required_utilisation(exclude={"b"}) - total * 4.0 / 5) < 1e-9
    assert s.utilisation(exclude={"nobody"}) == total
    await s.stop()
