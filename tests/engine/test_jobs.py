"""The job queue: ordering, interrupt/skip/cancel, failures, progress and ETA numbers, asyncio, shutdown."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from webui.engine.errors import InvalidParameter, JobCancelled
from webui.engine.jobs import (
    ImageSkipped,
    Job,
    JobContext,
    JobInterrupted,
    JobQueue,
    JobStatus,
    progress_view,
    wait_async,
)
from webui.engine.progress import ProgressTracker, job_fraction

WAIT = 5.0  # generous upper bound for event waits; tests normally take milliseconds


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 100.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@pytest.fixture
def queue() -> Iterator[JobQueue]:
    q = JobQueue(preview_every_n_steps=0)
    q.start()
    yield q
    assert q.stop(timeout=WAIT)


def gate() -> tuple[threading.Event, threading.Event]:
    """(reached, proceed): the job sets ``reached`` and waits for ``proceed``."""
    return threading.Event(), threading.Event()


def blocking_job(reached: threading.Event, proceed: threading.Event, kind: str = "txt2img") -> Job[str]:
    def run(ctx: JobContext) -> str:
        reached.set()
        assert proceed.wait(WAIT)
        return "blocker"

    return Job(kind, run)


def test_jobs_from_many_threads_run_in_arrival_order_on_one_worker(queue: JobQueue) -> None:
    arrival: list[str] = []
    arrival_lock = threading.Lock()
    executed: list[str] = []
    worker_threads: set[str] = set()
    submitted: dict[int, Job[int]] = {}
    start = threading.Barrier(16)

    def make_run(n: int) -> Callable[[JobContext], int]:
        def run(ctx: JobContext) -> int:
            worker_threads.add(threading.current_thread().name)
            executed.append(ctx.job.id)
            time.sleep(0.01)
            return n * n

        return run

    def producer(n: int) -> None:
        job = Job("txt2img", make_run(n), payload=n)
        start.wait()
        with arrival_lock:
            queue.submit(job)
            arrival.append(job.id)
        submitted[n] = job

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)

    results = {n: job.wait(timeout=WAIT) for n, job in submitted.items()}
    assert results == {n: n * n for n in range(16)}
    assert all(job.status is JobStatus.DONE for job in submitted.values())
    assert executed == arrival
    assert worker_threads == {"gpu-worker"}
    for job in submitted.values():
        assert job.created_at <= job.started_at <= job.finished_at


def test_interrupt_stops_at_next_step_and_keeps_finished_images(queue: JobQueue) -> None:
    reached, proceed = gate()
    made_steps: list[tuple[int, int]] = []

    def make_image(ctx: JobContext, index: int) -> str:
        for step in range(1, 6):
            ctx.report_step(step, 5)
            made_steps.append((index, step))
            if index == 1 and step == 2:
                reached.set()
                assert proceed.wait(WAIT)
        return f"image-{index}"

    job = queue.submit(Job("txt2img", lambda ctx: ctx.map_images(3, lambda i: make_image(ctx, i))))
    assert reached.wait(WAIT)
    assert queue.interrupt() is True
    proceed.set()

    assert job.wait(timeout=WAIT) == ["image-0"]
    assert job.status is JobStatus.INTERRUPTED
    assert job.error is None
    # image 1 stopped at its third report_step; image 2 never started
    assert made_steps[-1] == (1, 2)
    assert job.progress.job_no == 1
    assert job.progress.sampling_step == 3
    assert queue.current() is None
    assert queue.interrupt() is False


def test_skip_drops_only_the_current_image(queue: JobQueue) -> None:
    reached, proceed = gate()
    skipped_seen: list[bool] = []

    def make_image(ctx: JobContext, index: int) -> str:
        skipped_seen.append(ctx.skipped)
        for step in range(1, 4):
            if index == 1 and step == 2:
                reached.set()
                assert proceed.wait(WAIT)
            ctx.report_step(step, 3)
        return f"image-{index}"

    job = queue.submit(Job("txt2img", lambda ctx: ctx.map_images(3, lambda i: make_image(ctx, i))))
    assert reached.wait(WAIT)
    assert queue.skip() is True
    proceed.set()

    assert job.wait(timeout=WAIT) == ["image-0", "image-2"]
    assert job.status is JobStatus.DONE
    assert skipped_seen == [False, False, False]
    assert job.token.skipped is False  # begin_image of image 2 cleared it
    assert job.progress.fraction == 1.0


def test_report_step_raises_the_matching_cancel_error() -> None:
    job = Job("txt2img", lambda ctx: None)
    ctx = JobContext(job)
    ctx.begin_image(0, 2)
    ctx.report_step(1, 4)
    job.skip()
    with pytest.raises(ImageSkipped):
        ctx.report_step(2, 4)
    ctx.check()  # a skip does not stop the job
    ctx.begin_image(1, 2)
    assert ctx.skipped is False
    ctx.report_step(1, 4)
    job.interrupt()
    with pytest.raises(JobInterrupted) as raised:
        ctx.report_step(2, 4)
    assert isinstance(raised.value, JobCancelled)
    with pytest.raises(JobInterrupted):
        ctx.check()


def test_cancel_removes_a_queued_job_before_it_starts(queue: JobQueue) -> None:
    reached, proceed = gate()
    ran: list[str] = []
    blocker = queue.submit(blocking_job(reached, proceed))
    assert reached.wait(WAIT)
    second = queue.submit(Job("txt2img", lambda ctx: ran.append("second")))
    third = queue.submit(Job("img2img", lambda ctx: ran.append("third")))
    fourth = queue.submit(Job("extras", lambda ctx: ran.append("fourth")))

    assert queue.cancel(second.id) is JobStatus.CANCELLED
    fourth.cancel()  # through the job's own token
    assert fourth.status is JobStatus.CANCELLED
    assert [(row["id"], row["position"]) for row in queue.snapshot()] == [(blocker.id, 0), (third.id, 1)]
    with pytest.raises(JobCancelled):
        second.wait(timeout=0)

    proceed.set()
    third.wait(timeout=WAIT)
    assert ran == ["third"]
    assert second.started_at is None
    assert fourth.started_at is None
    assert queue.get(second.id) is second


def test_cancel_of_the_running_job_interrupts_it(queue: JobQueue) -> None:
    reached, proceed = gate()

    def run(ctx: JobContext) -> int:
        reached.set()
        assert proceed.wait(WAIT)
        ctx.report_step(1, 2)
        return 1

    job = queue.submit(Job("txt2img", run))
    assert reached.wait(WAIT)
    assert queue.cancel(job.id) is JobStatus.RUNNING
    assert job.token.interrupted
    proceed.set()
    with pytest.raises(JobInterrupted):
        job.wait(timeout=WAIT)
    assert job.status is JobStatus.INTERRUPTED


def test_cancel_of_an_unknown_job_lists_the_queued_ones(queue: JobQueue) -> None:
    reached, proceed = gate()
    queue.submit(blocking_job(reached, proceed))
    assert reached.wait(WAIT)
    waiting = queue.submit(Job("txt2img", lambda ctx: None))
    with pytest.raises(InvalidParameter) as raised:
        queue.cancel("nope")
    assert raised.value.field == "job_id"
    assert waiting.id in raised.value.message
    proceed.set()


def test_a_failing_job_keeps_the_worker_alive(queue: JobQueue) -> None:
    problem = ValueError("bad latent")

    def fail(ctx: JobContext) -> None:
        raise problem

    failing = queue.submit(Job("txt2img", fail))
    after = queue.submit(Job("txt2img", lambda ctx: "still here"))

    with pytest.raises(ValueError) as raised:
        failing.wait(timeout=WAIT)
    assert raised.value is problem
    assert failing.status is JobStatus.FAILED
    assert failing.error is problem
    assert after.wait(timeout=WAIT) == "still here"
    assert queue.running


def test_listeners_see_changes_and_their_errors_do_not_kill_the_worker(queue: JobQueue) -> None:
    seen: list[tuple[str, str]] = []

    def broken(job: Job[Any]) -> None:
        raise RuntimeError("listener bug")

    queue.add_listener(broken)
    remove = queue.add_listener(lambda job: seen.append((job.kind, job.status.value)))

    def run(ctx: JobContext) -> int:
        ctx.begin_image(0, 1)
        ctx.report_step(1, 1)
        return 7

    assert queue.submit(Job("txt2img", run)).wait(timeout=WAIT) == 7
    queue.stop(timeout=WAIT)  # the last notification is sent after the job resolves
    statuses = [status for _, status in seen]
    # submitted, started, begin_image, report_step, finished (the first may already read "running")
    assert len(statuses) == 5
    assert statuses[0] in ("queued", "running")
    assert statuses[1:4] == ["running"] * 3
    assert statuses[-1] == "done"
    remove()
    queue.start()
    assert queue.submit(Job("extras", lambda ctx: 8)).wait(timeout=WAIT) == 8
    assert all(kind == "txt2img" for kind, _ in seen)


def test_eta_comes_from_the_measured_step_rate() -> None:
    clock = FakeClock()
    tracker = ProgressTracker(clock)
    tracker.begin_image(0, 2)
    clock.advance(30.0)  # model loading before the first step does not count
    tracker.update_step(1, 10)
    assert tracker.snapshot().eta_seconds is None
    assert tracker.snapshot().fraction == pytest.approx(0.05)
    clock.advance(2.0)
    tracker.update_step(3, 10)
    state = tracker.snapshot()
    # 0.10 of the job in 2 s -> 0.05 per s; 0.85 left -> 17 s
    assert state.fraction == pytest.approx(0.15)
    assert state.eta_seconds == pytest.approx(17.0)
    tracker.begin_image(1, 2)
    assert tracker.snapshot().fraction == pytest.approx(0.5)
    assert tracker.snapshot().sampling_step == 0
    tracker.complete()
    assert tracker.snapshot().fraction == 1.0
    assert tracker.snapshot().eta_seconds == 0.0


def test_job_fraction_and_validation() -> None:
    assert job_fraction(0, 1, 0, 0) == 0.0
    assert job_fraction(1, 4, 5, 20) == pytest.approx((1 + 0.25) / 4)
    assert job_fraction(3, 4, 20, 20) == 1.0
    tracker = ProgressTracker()
    with pytest.raises(InvalidParameter) as raised:
        tracker.update_step(5, 4)
    assert raised.value.field == "sampling_step"
    with pytest.raises(InvalidParameter):
        tracker.begin_image(2, 2)


def test_progress_view_matches_a1111_shape(queue: JobQueue) -> None:
    idle = progress_view(queue)
    assert idle["progress"] == 0.0
    assert idle["eta_relative"] == 0.0
    assert idle["current_image"] is None
    assert idle["state"]["job_count"] == 0
    assert idle["state"]["job"] == ""

    reached, proceed = gate()

    def run(ctx: JobContext) -> None:
        ctx.begin_image(1, 4)
        ctx.set_textinfo("Sampling")
        ctx.report_step(5, 20)
        reached.set()
        assert proceed.wait(WAIT)

    job = queue.submit(Job("txt2img", run))
    assert reached.wait(WAIT)
    job.skip()
    view = progress_view(queue)
    proceed.set()
    job.wait(timeout=WAIT)

    assert set(view) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert view["progress"] == pytest.approx((1 + 5 / 20) / 4)
    assert view["textinfo"] == "Sampling"
    state = view["state"]
    assert {k: state[k] for k in ("job", "job_no", "job_count", "sampling_step", "sampling_steps")} == {
        "job": "txt2img",
        "job_no": 1,
        "job_count": 4,
        "sampling_step": 5,
        "sampling_steps": 20,
    }
    assert state["skipped"] is True
    assert state["interrupted"] is False
    assert re.fullmatch(r"\d{14}", state["job_timestamp"])


def test_snapshot_positions_and_queue_eta() -> None:
    clock = FakeClock()
    queue = JobQueue(preview_every_n_steps=0, clock=clock)
    queue.start()
    try:

        def taking(seconds: float) -> Callable[[JobContext], None]:
            return lambda ctx: clock.advance(seconds)

        for kind, seconds in (("txt2img", 4.0), ("txt2img", 6.0), ("extras", 2.0)):
            queue.submit(Job(kind, taking(seconds))).wait(timeout=WAIT)
        assert queue.snapshot() == []

        reached, proceed = gate()

        def running(ctx: JobContext) -> None:
            ctx.report_step(1, 10)
            clock.advance(1.0)
            ctx.report_step(2, 10)  # 0.1 per second, 0.8 left -> 8 s
            reached.set()
            assert proceed.wait(WAIT)

        head = queue.submit(Job("txt2img", running))
        assert reached.wait(WAIT)
        queued = [queue.submit(Job(kind, taking(0.0))) for kind in ("txt2img", "extras", "model-switch")]
        rows = queue.snapshot()
        proceed.set()
        for job in queued:
            job.wait(timeout=WAIT)
    finally:
        assert queue.stop(timeout=WAIT)

    assert [(row["id"], row["kind"], row["status"], row["position"]) for row in rows] == [
        (head.id, "txt2img", "running", 0),
        (queued[0].id, "txt2img", "queued", 1),
        (queued[1].id, "extras", "queued", 2),
        (queued[2].id, "model-switch", "queued", 3),
    ]
    # averages: txt2img 5 s, extras 2 s, unknown kind -> mean of the known kinds, 3.5 s
    assert [row["eta_seconds"] for row in rows] == pytest.approx([8.0, 13.0, 15.0, 18.5])


def test_previews_follow_the_every_n_steps_setting() -> None:
    period = {"n": 3}
    job = Job("txt2img", lambda ctx: None)
    ctx = JobContext(job, preview_every_n_steps=lambda: period["n"])
    made: list[int] = []

    def factory_for(step: int) -> Callable[[], str]:
        return lambda: made.append(step) or f"preview-{step}"

    for step in range(1, 8):
        ctx.report_step(step, 7, factory_for(step))
    assert made == [3, 6]
    assert job.progress.preview == "preview-6"
    assert job.progress.preview_id == 2

    period["n"] = 0
    assert not any(ctx.should_preview(step, 7) for step in range(8))
    period["n"] = -1
    assert [step for step in range(8) if ctx.should_preview(step, 7)] == [7]


def test_a_failing_preview_does_not_fail_the_step() -> None:
    job = Job("txt2img", lambda ctx: None)
    ctx = JobContext(job, preview_every_n_steps=1)

    def broken() -> None:
        raise RuntimeError("vae oom")

    ctx.report_step(1, 2, broken)
    assert job.progress.sampling_step == 1
    assert job.progress.preview_id == 0


def test_wait_async_does_not_block_the_event_loop(queue: JobQueue) -> None:
    def slow(ctx: JobContext) -> str:
        time.sleep(0.05)
        return "done"

    def fail(ctx: JobContext) -> None:
        raise KeyError("missing")

    async def main() -> tuple[str | None, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.002)

        ticking = asyncio.create_task(ticker())
        result = await wait_async(queue.submit(Job("txt2img", slow)))
        stop.set()
        await ticking
        with pytest.raises(KeyError):
            await wait_async(queue.submit(Job("txt2img", fail)))
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == "done"
    assert ticks >= 5


def test_wait_timeouts() -> None:
    queue = JobQueue()  # never started: the job stays queued
    job = queue.submit(Job("txt2img", lambda ctx: None))
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.01)
    with pytest.raises(TimeoutError):
        asyncio.run(wait_async(job, timeout=0.01))
    assert job.status is JobStatus.QUEUED


def test_stop_joins_the_worker_and_cancels_what_is_left() -> None:
    others = {t for t in threading.enumerate() if t.name == "gpu-worker"}  # e.g. a session-wide app context
    queue = JobQueue()
    queue.start()
    reached, _ = gate()

    def run(ctx: JobContext) -> None:
        reached.set()
        while True:
            ctx.check()
            time.sleep(0.005)

    running = queue.submit(Job("txt2img", run))
    assert reached.wait(WAIT)
    waiting = queue.submit(Job("txt2img", lambda ctx: None))

    assert queue.stop(timeout=WAIT) is True
    assert not queue.running
    assert not any(t.name == "gpu-worker" and t.is_alive() and t not in others for t in threading.enumerate())
    assert running.status is JobStatus.INTERRUPTED
    assert waiting.status is JobStatus.CANCELLED
    assert waiting.started_at is None


def test_submitting_twice_or_bad_jobs_is_rejected() -> None:
    queue = JobQueue()
    job = queue.submit(Job("txt2img", lambda ctx: None))
    with pytest.raises(InvalidParameter) as raised:
        queue.submit(job)
    assert raised.value.field == "job"
    with pytest.raises(InvalidParameter):
        Job("", lambda ctx: None)
    with pytest.raises(InvalidParameter):
        Job("txt2img", "not callable")  # type: ignore[arg-type]
