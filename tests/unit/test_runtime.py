"""The machine-wide engine runtime: one worker pool across models, granted earliest deadline first."""

import asyncio
import threading
import time

from voxserve.server.runtime import EngineRuntime
from voxserve.server.scheduler import BatchScheduler


class Model:
    """A fake engine that records when each batch ran and how many ran at once (a test double)."""

    def __init__(self, name, log, delay=0.03):
        self.name, self.log, self.delay = name, log, delay
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.log["running"] += 1
            self.log["peak"] = max(self.log["peak"], self.log["running"])
        self.log["order"].append((self.name, list(items)))
        time.sleep(self.delay)
        with self.lock:
            self.log["running"] -= 1
        return items


def fresh_log():
    return {"running": 0, "peak": 0, "order": []}


async def test_models_share_the_pool_and_never_run_more_batches_than_workers():
    log = fresh_log()
    rt = EngineRuntime(workers=2)
    scheds = [BatchScheduler(f"m{i}", Model(f"m{i}", log), max_batch=4, max_wait_s=0.0, max_inflight=2, runtime=rt)
              for i in range(3)]
    far = time.perf_counter() + 30
    outs = await asyncio.gather(*[s.submit(k, deadline=far) for k in range(12) for s in scheds])
    assert len(outs) == 36 and all(o.value is not None for o in outs)
    assert log["peak"] <= 2                        # 3 models x 2 in flight each, but 2 workers for the machine
    assert rt.grants == sum(s.batches for s in scheds) and rt.utilisation() > 0
    for s in scheds:
        await s.stop()
    rt.shutdown()


async def test_a_free_worker_goes_to_the_earliest_deadline_across_models():
    log = fresh_log()
    rt = EngineRuntime(workers=1)
    busy = BatchScheduler("busy", Model("busy", log, delay=0.1), max_batch=1, max_wait_s=0.0, runtime=rt)
    late = BatchScheduler("vc", Model("vc", log), max_batch=8, max_wait_s=0.0, runtime=rt)
    urgent = BatchScheduler("asr", Model("asr", log), max_batch=8, max_wait_s=0.0, runtime=rt)
    now = time.perf_counter()
    first = busy.submit("hold", deadline=now + 30)          # takes the only worker for 100 ms
    await asyncio.sleep(0.02)
    a = late.submit("block", deadline=now + 10)              # asks first, but can wait
    await asyncio.sleep(0.01)
    b = urgent.submit("final", deadline=now + 0.2)           # asks later, due sooner
    await asyncio.gather(first, a, b)
    assert [name for name, _ in log["order"]] == ["busy", "asr", "vc"]
    ob, oa = b.result(), a.result()
    assert ob.queue_s < oa.queue_s                           # the wait for the worker counts as queueing
    for s in (busy, late, urgent):
        await s.stop()
    rt.shutdown()


async def test_without_a_runtime_each_model_keeps_its_own_threads():
    log = fresh_log()
    s = BatchScheduler("solo", Model("solo", log), max_batch=2, max_wait_s=0.0, max_inflight=2)
    far = time.perf_counter() + 30
    await asyncio.gather(*[s.submit(k, deadline=far) for k in range(8)])
    assert log["peak"] == 2
    await s.stop()


async def test_a_cancelled_waiter_does_not_leak_the_worker():
    rt = EngineRuntime(workers=1)
    await rt.acquire(1.0)
    waiter = asyncio.create_task(rt.acquire(2.0))
    await asyncio.sleep(0)
    waiter.cancel()
    rt.release(0.0)
    await asyncio.sleep(0)
    await asyncio.wait_for(rt.acquire(3.0), 1.0)          # the worker came back, not lost to the cancelled one
    rt.release(0.0)
    rt.shutdown()


async def test_a_model_alone_may_use_every_worker():
    log = fresh_log()
    rt = EngineRuntime(workers=2)
    s = BatchScheduler("asr", Model("asr", log, delay=0.05), max_batch=1, max_wait_s=0.0, max_inflight=2, runtime=rt)
    far = time.perf_counter() + 30
    await asyncio.gather(*[s.submit(k, deadline=far) for k in range(6)])
    assert log["peak"] == 2 and rt.reserved == 0
    await s.stop()
    rt.shutdown()


async def test_one_worker_stays_free_for_other_active_models():
    """A long model cannot take the last worker while a short one is active, so the short one's next
    call starts at once instead of waiting for a long call to end (the pool cannot preempt)."""
    log = fresh_log()
    rt = EngineRuntime(workers=2, reserve_s=1.0)
    long_ = BatchScheduler("asr", Model("asr", log, delay=0.15), max_batch=1, max_wait_s=0.0, max_inflight=2,
                           runtime=rt)
    short = BatchScheduler("vc", Model("vc", log, delay=0.005), max_batch=8, max_wait_s=0.0, runtime=rt)
    far = time.perf_counter() + 30
    await short.submit("warm", deadline=far)                   # vc is now active
    decodes = [long_.submit(k, deadline=far) for k in range(3)]
    await asyncio.sleep(0.03)                                  # asr holds one worker, two decodes wait
    assert log["running"] == 1
    block = await short.submit("block", deadline=far)
    assert block.queue_s < 0.05                                # the kept worker, not the end of a decode
    await asyncio.gather(*decodes)
    assert rt.reserved > 0
    await asyncio.sleep(1.1)                                   # vc has gone quiet: the reserve lapses
    log["peak"] = 0
    await asyncio.gather(*[long_.submit(k, deadline=far + 1) for k in range(4)])
    assert log["peak"] == 2
    for s in (long_, short):
        await s.stop()
    rt.shutdown()
