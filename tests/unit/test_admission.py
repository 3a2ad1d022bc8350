"""Admission from measured capacity (pure: fake schedulers with set utilisations, an explicit clock)."""

from types import SimpleNamespace

from voxserve.server.admission import MIN_SAMPLES, TARGET_UTILISATION, WINDOW_S, Admission
from voxserve.server.protocol.errors import ErrorCode


class FakeScheduler:
    def __init__(self, util: float, threads: int = 1):
        self.util, self.max_inflight = util, threads

    def utilisation(self, exclude=()) -> float:
        return self.util


def admission(cores=2.0, **scheds):
    clock = [100.0]
    adm = Admission(SimpleNamespace(admission=True), None, cores=cores, clock=lambda: clock[0])
    for name, group in scheds.items():
        adm.register(name, group)
    return adm, clock


def measured(adm, pipeline, cost):
    model = adm.cost_model(pipeline)
    for _ in range(MIN_SAMPLES):
        model.observe(cost, 1.0)


def cfg(*pipelines):
    return SimpleNamespace(pipelines=pipelines)


def test_unmeasured_pipelines_are_admitted():
    adm, _ = admission(asr=[FakeScheduler(0.95)])
    assert adm.admit(object(), cfg("vad", "asr")) is None        # fewer than MIN_SAMPLES: not judged yet


def test_pipeline_refused_when_its_engine_would_pass_the_target():
    adm, _ = admission(asr=[FakeScheduler(0.7)])
    measured(adm, "asr", 0.05)
    assert adm.admit(object(), cfg("vad", "asr")) is None        # 0.7 + 0.05 <= 0.8
    adm.schedulers["asr"][0].util = 0.76
    err = adm.admit(object(), cfg("vad", "asr"))
    assert err is not None and err.code is ErrorCode.SERVER_BUSY and "asr" in err.message


class SheddingScheduler(FakeScheduler):
    """Busy 0.9 of the time, but only 0.5 of it work its stage could not shed (eager interims)."""

    def required_utilisation(self, exclude=()) -> float:
        return 0.5


def test_work_a_stage_could_shed_does_not_refuse_streams():
    adm, _ = admission(asr=[SheddingScheduler(0.9)])
    measured(adm, "asr", 0.05)
    assert adm.admit(object(), cfg("asr")) is None               # judged on 0.5 + 0.05, not 0.9
    report = adm.report(1)["pipelines"]["asr"]
    assert report["utilisation"] == 0.9 and report["required_utilisation"] == 0.5


def test_streams_admitted_but_not_yet_measured_count():
    """Ten streams arriving at once: utilisation has not moved yet, but their costs are counted, so the
    burst stops at the target instead of all being admitted."""
    adm, clock = admission(asr=[FakeScheduler(0.0)])
    measured(adm, "asr", 0.1)
    admitted = sum(adm.admit(object(), cfg("asr")) is None for _ in range(10))
    assert admitted == int(TARGET_UTILISATION / 0.1)              # 8, not 10
    clock[0] += WINDOW_S + 0.1                                     # later: utilisation tells the truth
    assert adm.admit(object(), cfg("asr")) is None


def test_whole_machine_counts_every_pipeline_and_thread():
    """Each pipeline alone is under its own target, but four busy engine threads on two cores are not."""
    adm, _ = admission(cores=2.0, asr=[FakeScheduler(0.5, threads=2)], vc=[FakeScheduler(0.45)],
                       wakeword=[FakeScheduler(0.2)])
    for p in ("asr", "vc", "wakeword"):
        measured(adm, p, 0.05)
    assert abs(adm.machine_busy() - 1.65) < 1e-9                  # 0.5*2 + 0.45 + 0.2 cores
    err = adm.admit(object(), cfg("asr", "vc"))                   # 1.65 + 0.1 > 1.6
    assert err is not None and "machine" in err.message
    adm.schedulers["vc"][0].util = 0.3
    assert adm.admit(object(), cfg("wakeword")) is None           # 1.5 + 0.05 <= 1.6


def test_report_shows_machine_load():
    adm, _ = admission(asr=[FakeScheduler(0.25, threads=2)])
    assert adm.report(3)["machine_busy_cores"] == 0.5


def test_a_stream_that_already_ended_adds_no_pending_load():
    """Short streams one after another (a test, a batch job): each ends before the utilisation window
    passes; released, it no longer counts as load about to arrive."""
    adm, _ = admission(asr=[FakeScheduler(0.0)])
    measured(adm, "asr", 0.3)
    for _ in range(10):
        h = object()
        assert adm.admit(h, cfg("asr")) is None
        adm.release(h)
    assert adm.unmeasured() == {}


def test_missed_budgets_hold_admission_until_they_stop():
    """A stage missing its budgets (e.g. VC blocks starved by ASR decodes on a shared CPU) holds every new
    engine stream, whatever the cost estimates say; a stream with no engine (VAD only) still gets in; the
    hold ends once the misses are older than the window. A one-off miss does not hold."""
    from voxserve.server.admission import MISS_LIMIT, MISS_WINDOW_S

    adm, clock = admission(asr=[FakeScheduler(0.0)], vc=[FakeScheduler(0.0)])
    measured(adm, "asr", 0.01)
    adm.missed("vc")
    assert adm.admit(object(), cfg("asr")) is None
    for _ in range(MISS_LIMIT - 1):
        adm.missed("vc")
    err = adm.admit(object(), cfg("vad", "asr"))
    assert err is not None and err.code is ErrorCode.SERVER_BUSY and "vc 5" in err.message
    assert adm.admit(object(), cfg("vad")) is None
    assert adm.report(0)["recent_budget_misses"] == {"vc": MISS_LIMIT}
    clock[0] += MISS_WINDOW_S + 0.1
    assert adm.admit(object(), cfg("asr")) is None


def test_the_event_loops_cpu_counts_toward_the_machine():
    """CPU this process spends outside engine calls (protocol, VAD) is machine load too."""
    adm, clock = admission(cores=2.0, asr=[FakeScheduler(0.2, threads=2)])     # 0.4 cores in engine calls
    cpu = [0.0]
    adm.process_cpu = lambda: cpu[0]
    adm.machine_cpu = lambda: None                                  # other processes: not known here
    measured(adm, "asr", 0.1)
    adm.sample_cpu()
    clock[0] += 1.0
    cpu[0] += 1.4                                                   # 1.4 cores busy over that second
    adm.sample_cpu()
    assert abs(adm.loop_cores() - 1.0) < 1e-9                       # 1.4 - 0.4 in engines
    assert adm.admit(object(), cfg("asr")) is None                  # 0.4 + 1.0 + 0.1 = 1.5 <= 0.8 x 2
    clock[0] += 0.1
    cpu[0] += 0.3                                                   # 1.7 s of CPU in 1.1 s
    err = adm.admit(object(), cfg("asr"))                           # 0.4 + 1.15 + 0.1 pending + 0.1 > 1.6
    assert err is not None and "machine" in err.message


def test_other_processes_on_the_machine_count():
    """A load generator or another service on the box takes cores the stages then lack."""
    adm, clock = admission(cores=2.0, asr=[FakeScheduler(0.0)])
    own, machine = [0.0], [0.0]
    adm.process_cpu, adm.machine_cpu = (lambda: own[0]), (lambda: machine[0])
    measured(adm, "asr", 0.1)
    adm.sample_cpu()
    clock[0] += 1.0
    own[0] += 0.2
    machine[0] += 1.0                                               # 0.8 cores of other processes
    adm.sample_cpu()
    assert abs(adm.other_cores() - 0.8) < 1e-9
    assert adm.report(0)["other_processes_cores"] == 0.8
    admitted = sum(adm.admit(object(), cfg("asr")) is None for _ in range(10))
    assert admitted == 6                                            # 0.2 loop + 0.8 others + 6 x 0.1 = 1.6


def test_a_burst_counts_the_event_loop_cost_of_its_streams():
    """Ten open streams took 0.5 cores of event loop (0.05 each); a burst of new ones is counted at that
    beside their engine cost, before the loop's measurement can see them."""
    adm, clock = admission(cores=2.0, asr=[FakeScheduler(0.0, threads=4)])
    cpu = [0.0]
    adm.process_cpu, adm.machine_cpu = (lambda: cpu[0]), (lambda: None)
    measured(adm, "asr", 0.07)
    for _ in range(10):
        adm.streams[object()] = ("vad",)
    adm.sample_cpu()
    clock[0] += 1.0
    cpu[0] += 0.5
    adm.sample_cpu()
    assert abs(adm.loop_per_stream - 0.05) < 1e-9
    admitted = sum(adm.admit(object(), cfg("asr")) is None for _ in range(20))
    assert admitted == 9                  # (1.6 - 0.5 loop now) / (0.07 engine + 0.05 loop); 15 without it


def test_budget_misses_are_forgotten_as_they_come_even_without_admissions():
    from voxserve.server.admission import MISS_WINDOW_S

    adm, clock = admission(vc=[FakeScheduler(0.0)])
    for _ in range(1000):
        clock[0] += 0.1
        adm.missed("vc")
    assert len(adm._misses) <= MISS_WINDOW_S / 0.1 + 1
    assert adm.recent_misses() == {"vc": len(adm._misses)}


async def test_a_stream_that_ended_leaves_no_load_behind():
    """A client sending files one after another faster than real time: the last one kept the engine busy
    and missed budgets, but it has ended, so the next stream is judged on what is still running (the real
    scheduler keeps each request's engine time under its stream's session id)."""
    import time as _time

    from voxserve.server.admission import MISS_LIMIT
    from voxserve.server.scheduler import BatchScheduler

    def engine(items):
        _time.sleep(sum(items))                                   # each item: its engine seconds
        return items

    sched = BatchScheduler("asr", engine, max_batch=1, max_wait_s=0.0)
    adm, clock = admission(asr=[sched])
    adm.process_cpu, adm.machine_cpu = (lambda: 0.0), (lambda: None)
    measured(adm, "asr", 0.55)

    burst, steady = object(), object()
    adm.streams[burst] = adm.streams[steady] = ("asr",)          # admitted a while ago, measured now
    await sched.submit(0.6, deadline=_time.perf_counter() + 10, owner="burst")     # ~0.3 of the 2 s window
    await sched.submit(0.02, deadline=_time.perf_counter() + 10, owner="steady")
    for _ in range(MISS_LIMIT):
        adm.missed("asr", "burst")
    err = adm.admit(object(), cfg("asr"))
    assert err is not None and err.code is ErrorCode.SERVER_BUSY and "missing" in err.message
    adm._misses.clear()
    err = adm.admit(object(), cfg("asr"))
    assert err is not None and "capacity" in err.message         # ~0.31 + 0.55 > 0.8
    for _ in range(MISS_LIMIT):
        adm.missed("asr", "burst")
    adm.release(burst, "burst")
    assert adm.recent_misses() == {}
    running, measured_all = adm.utilisation("asr", required=True), adm.utilisation("asr", ongoing=False)
    assert 0.3 <= measured_all and running < 0.05 and abs(measured_all - running - 0.3) < 0.03
    assert adm.admit(object(), cfg("asr")) is None                # ~0.01 + 0.55 <= 0.8
    assert adm.report(1)["pipelines"]["asr"]["utilisation"] == round(measured_all, 3)
    await sched.stop()


def test_ended_streams_share_of_the_event_loop_is_left_out():
    """The loop's CPU over the window is split between ended and running streams as their engine work is."""
    adm, clock = admission(cores=2.0, asr=[FakeScheduler(0.5)])
    cpu = [0.0]
    adm.process_cpu, adm.machine_cpu = (lambda: cpu[0]), (lambda: None)
    adm.sample_cpu()
    clock[0] += 1.0
    cpu[0] += 1.5                                                 # 1.0 core of loop beside 0.5 in engines
    adm.sample_cpu()
    assert abs(adm.loop_cores() - 1.0) < 1e-9
    adm.schedulers["asr"][0] = Halved(0.5)                        # an ended stream did half the engine work
    adm.release(object(), "gone")
    assert abs(adm.loop_cores() - 0.5) < 1e-9
    assert abs(adm.loop_cores(ongoing=False) - 1.0) < 1e-9


class Halved(FakeScheduler):
    """Half of the work belongs to owners that are excluded."""

    def utilisation(self, exclude=()) -> float:
        return self.util / 2 if exclude else self.util


def test_a_short_budget_pipeline_tightens_the_machine_target_while_its_streams_are_open():
    """1.3 of 2 cores busy: an ASR stream fits under the default 0.8 x 2 = 1.6; with a VC stream open
    (VC's target 0.6 x 2 = 1.2, the tightest of the open pipelines) it does not, nor does another VC stream."""
    adm, _ = admission(cores=2.0, asr=[FakeScheduler(0.65, threads=2)])
    adm.register("vc", [FakeScheduler(0.0)], target=0.6)
    measured(adm, "asr", 0.05)
    measured(adm, "vc", 0.05)
    assert adm.machine_target() == TARGET_UTILISATION
    assert adm.admit(object(), cfg("asr")) is None
    vc_stream = object()
    adm.streams[vc_stream] = ("vad", "vc")          # a VC stream admitted earlier, still open
    assert adm.machine_target() == 0.6
    for pipelines in (("asr",), ("vc",)):
        err = adm.admit(object(), cfg(*pipelines))
        assert err is not None and err.code is ErrorCode.SERVER_BUSY and "limit 1.20" in err.message
    adm.release(vc_stream)
    assert adm.machine_target() == TARGET_UTILISATION
    assert adm.admit(object(), cfg("asr")) is None


def test_another_workers_vc_streams_tighten_this_workers_target():
    """Under --workers N each process admits its own streams; a VC stream open in another worker lowers the
    machine target here too (the workers share the cores)."""
    adm, _ = admission(cores=2.0, asr=[FakeScheduler(0.65, threads=2)])
    measured(adm, "asr", 0.05)
    assert adm.local_target() == TARGET_UTILISATION
    adm.external_target = lambda: 0.6
    assert adm.machine_target() == 0.6 and adm.local_target() == TARGET_UTILISATION
    err = adm.admit(object(), cfg("asr"))
    assert err is not None and "limit 1.20" in err.message


def test_worker_table_carries_each_workers_target(tmp_path):
    from voxserve.server.workers import WorkerTable

    parent = WorkerTable.create(3)
    try:
        rows = [WorkerTable(parent.path, 3, i) for i in range(3)]
        rows[0].write(1, 0.5, 0.8)
        rows[1].write(2, 0.1, 0.6)
        assert rows[0].others_target(0.8) == 0.6
        assert rows[1].others_target(0.8) == 0.8          # worker 2 has never written: no target from it
        assert parent.rows()[2]["machine_target"] is None
    finally:
        import os
        os.unlink(parent.path)
