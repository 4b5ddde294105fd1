"""The job queue and the one worker thread that owns all GPU work.

The UI and the HTTP API are producers: they wrap a request in a :class:`Job` and :meth:`JobQueue.submit` it
from any thread (or ``await`` :func:`wait_async` from asyncio code). One worker thread, named
``gpu-worker``, runs the jobs in arrival order and hands each a :class:`JobContext`, through which the job
reports its progress and honours its :class:`CancelToken` (A1111's Interrupt and Skip buttons).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from webui.engine.errors import InvalidParameter, JobCancelled
from webui.engine.progress import ProgressState, ProgressTracker, progress_view

__all__ = [
    "CancelToken",
    "ImageSkipped",
    "Job",
    "JobCancelledBeforeStart",
    "JobContext",
    "JobInterrupted",
    "JobQueue",
    "JobStatus",
    "progress_view",
    "wait_async",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# A1111's "Live preview display period" (show_progress_every_n_steps): -1 previews each finished image only.
PREVIEW_AFTER_EACH_IMAGE = -1


class JobStatus(str, enum.Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        """True for the final states (done, failed, cancelled, interrupted)."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class JobInterrupted(JobCancelled):
    """The job was interrupted: stop now; images finished before stay."""


class ImageSkipped(JobCancelled):
    """The current image was skipped: drop it and go on with the next one."""


class JobCancelledBeforeStart(JobCancelled):
    """The job was cancelled (or the queue stopped) before it started; ``wait()`` raises it."""


class CancelToken:
    """The stop requests for one job; any thread may set them, the worker reads them.

    ``interrupt()`` stops the job at its next step (finished images are kept), ``skip()`` drops the image
    being made and goes on with the next, ``cancel()`` removes a queued job before it starts (a running
    job is interrupted instead).
    """

    def __init__(self) -> None:
        self._interrupted = threading.Event()
        self._skipped = threading.Event()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._on_cancel: Callable[[], None] | None = None

    @property
    def interrupted(self) -> bool:
        """Whether an interrupt was requested."""
        return self._interrupted.is_set()

    @property
    def skipped(self) -> bool:
        """Whether the current image should be skipped."""
        return self._skipped.is_set()

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled."""
        return self._cancelled.is_set()

    def interrupt(self) -> None:
        """Ask the job to stop at its next step, keeping the images it finished."""
        self._interrupted.set()

    def skip(self) -> None:
        """Ask the job to drop the image it is making and continue with the next one."""
        self._skipped.set()

    def clear_skip(self) -> None:
        """Forget a skip request (done when a new image starts)."""
        self._skipped.clear()

    def cancel(self) -> None:
        """Cancel the job: a queued job is removed from its queue, a running one is interrupted."""
        self._cancelled.set()
        with self._lock:
            on_cancel = self._on_cancel
        if on_cancel is not None:
            on_cancel()

    def mark_cancelled(self) -> None:
        """Record that the job was cancelled without triggering the queue again (used by the queue)."""
        self._cancelled.set()

    def bind(self, on_cancel: Callable[[], None] | None) -> None:
        """Register what ``cancel()`` should also do (the queue removes the job); None unbinds."""
        with self._lock:
            self._on_cancel = on_cancel


class Job(Generic[T]):
    """One unit of work for the worker thread, with its status, result, progress and cancel token.

    Args:
        kind: what the job does: ``"txt2img"``, ``"img2img"``, ``"extras"``, ``"model-switch"`` or any
            name an extension uses.
        run: called once on the worker thread with a :class:`JobContext`; its return value is the result.
        payload: the request the job was made from (opaque here; the UI and API read it back).
        job_id: the id to use instead of a fresh uuid hex (A1111's UI makes its own ``task(...)`` ids).
    """

    def __init__(
        self,
        kind: str,
        run: Callable[[JobContext], T],
        payload: Any = None,
        *,
        job_id: str | None = None,
    ) -> None:
        if not isinstance(kind, str) or not kind:
            raise InvalidParameter("kind", f"must be a non-empty string, got {kind!r}")
        if not callable(run):
            raise InvalidParameter("run", f"must be callable, got {type(run).__name__}")
        self.id: str = job_id if job_id is not None else uuid.uuid4().hex
        self.kind = kind
        self.payload = payload
        self.run = run
        self.token = CancelToken()
        self.created_at: float = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._status = JobStatus.QUEUED
        self._result: T | None = None
        self._error: BaseException | None = None
        self._tracker = ProgressTracker()
        self._done_callbacks: list[Callable[[Job[T]], None]] = []

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, status={self.status.value!r})"

    @property
    def status(self) -> JobStatus:
        """The job's current status."""
        with self._lock:
            return self._status

    @property
    def result(self) -> T | None:
        """What ``run`` returned (None until the job is done, or when it failed)."""
        with self._lock:
            return self._result

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the job, or None."""
        with self._lock:
            return self._error

    @property
    def progress(self) -> ProgressState:
        """A consistent snapshot of the job's progress."""
        with self._lock:
            tracker = self._tracker
        return tracker.snapshot()

    @property
    def done(self) -> bool:
        """Whether the job reached a final status."""
        return self._done.is_set()

    def interrupt(self) -> None:
        """Stop the job at its next step, keeping finished images (see :class:`CancelToken`)."""
        self.token.interrupt()

    def skip(self) -> None:
        """Drop the image being made and go on with the next one."""
        self.token.skip()

    def cancel(self) -> None:
        """Remove the job from its queue before it starts, or interrupt it if it is running."""
        self.token.cancel()

    def wait(self, timeout: float | None = None) -> T | None:
        """Block until the job finished; return its result or raise the exception that ended it.

        An interrupted job whose ``run`` returned (keeping its finished images) gives that result; one
        whose ``run`` let :class:`~webui.engine.errors.JobCancelled` escape raises it, as does a job
        cancelled before it started (:class:`JobCancelledBeforeStart`).

        Raises:
            TimeoutError: the job did not finish within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} ({self.kind}) did not finish within {timeout} s")
        return self._outcome()

    def add_done_callback(self, fn: Callable[[Job[T]], None]) -> None:
        """Call ``fn(job)`` once the job finished (at once, on this thread, if it already has)."""
        with self._lock:
            if not self._done.is_set():
                self._done_callbacks.append(fn)
                return
        _call_safely(fn, self)

    def _outcome(self) -> T | None:
        with self._lock:
            if self._error is not None:
                raise self._error
            return self._result

    def _start(self, clock: Callable[[], float]) -> None:
        with self._lock:
            self._status = JobStatus.RUNNING
            self.started_at = time.time()
            self._tracker = ProgressTracker(clock)

    def _finish(self, status: JobStatus, result: T | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._status = status
            self._result = result
            self._error = error
            self.finished_at = time.time()
            callbacks, self._done_callbacks = self._done_callbacks, []
            tracker = self._tracker
        if status is JobStatus.DONE:
            tracker.complete()
        self.token.bind(None)
        self._done.set()
        for fn in callbacks:
            _call_safely(fn, self)


class JobContext:
    """What a running job sees: progress reporting, previews and its cancel token.

    Step numbers count finished steps: a sampler callback for step index ``i`` reports ``i + 1``.
    """

    def __init__(
        self,
        job: Job[Any],
        *,
        preview_every_n_steps: int | Callable[[], int] = 0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.job = job
        self._preview_every = preview_every_n_steps
        self._on_change = on_change

    @property
    def token(self) -> CancelToken:
        """The job's cancel token."""
        return self.job.token

    @property
    def interrupted(self) -> bool:
        """Whether the job was asked to stop."""
        return self.job.token.interrupted

    @property
    def skipped(self) -> bool:
        """Whether the current image was asked to be dropped (reset by :meth:`begin_image`)."""
        return self.job.token.skipped

    def begin_image(self, index: int, count: int) -> None:
        """Start image ``index`` (from 0) of ``count`` (A1111's batch count); clears an old skip request."""
        self.job.token.clear_skip()
        self.job._tracker.begin_image(index, count)
        self._changed()

    def report_step(self, step: int, total: int, preview_factory: Callable[[], Any] | None = None) -> None:
        """Record that ``step`` of ``total`` sampling steps are done; make a preview when one is due.

        ``preview_factory`` builds the preview image (for instance by decoding the current latent); it is
        called only when :meth:`should_preview` says so, and a failure there is logged, never fatal.

        Raises:
            JobInterrupted: the job was interrupted.
            ImageSkipped: the current image was skipped.
        """
        self.job._tracker.update_step(step, total)
        self._changed()
        self._raise_if_stopped(include_skip=True)
        if preview_factory is not None and self.should_preview(step, total):
            try:
                image = preview_factory()
            except Exception:
                logger.exception("live preview failed for job %s", self.job.id)
                return
            self.set_preview(image)

    def check(self) -> None:
        """Raise :class:`JobInterrupted` if the job was interrupted (call between long stages)."""
        self._raise_if_stopped(include_skip=False)

    def set_textinfo(self, text: str | None) -> None:
        """Set the text line shown with the progress bar."""
        self.job._tracker.set_textinfo(text)
        self._changed()

    def set_preview(self, image: Any) -> None:
        """Show ``image`` as the live preview (increments the job's ``preview_id``)."""
        self.job._tracker.set_preview(image)
        self._changed()

    def set_preview_every(self, steps: int) -> None:
        """Preview every ``steps`` steps for the rest of this job (0: off, -1: after each image), instead
        of the "Live preview display period" setting."""
        self._preview_every = int(steps)

    def should_preview(self, step: int, total: int | None = None) -> bool:
        """Whether a live preview is due after ``step``, per the "preview every N steps" setting.

        N > 0 previews every N steps, 0 turns previews off, -1 previews when an image's last step
        (``step == total``) is done, as A1111's "Live preview display period" does.
        """
        every = self._preview_every() if callable(self._preview_every) else self._preview_every
        if every > 0:
            return step > 0 and step % every == 0
        if every == PREVIEW_AFTER_EACH_IMAGE:
            return total is not None and step == total
        return False

    def map_images(self, count: int, make_image: Callable[[int], R]) -> list[R]:
        """Make ``count`` images with ``make_image(index)`` honouring interrupt and skip.

        A skipped image is left out and the next one is made; an interrupt stops the loop and the images
        finished so far are returned.
        """
        images: list[R] = []
        for index in range(count):
            if self.interrupted:
                break
            self.begin_image(index, count)
            try:
                images.append(make_image(index))
            except JobCancelled:
                if self.interrupted:
                    break
                if not self.skipped:
                    raise
        return images

    def _raise_if_stopped(self, *, include_skip: bool) -> None:
        token = self.job.token
        if token.interrupted:
            raise JobInterrupted(f"job {self.job.id} was interrupted")
        if include_skip and token.skipped:
            raise ImageSkipped(f"image {self.job.progress.job_no} of job {self.job.id} was skipped")

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


class JobQueue:
    """First-in, first-out queue of jobs served by one daemon worker thread named ``gpu-worker``.

    Args:
        preview_every_n_steps: the live preview period (A1111's ``show_progress_every_n_steps``), or a
            function returning the current value so that a settings change applies to the next step.
        history_size: how many recent durations per job kind feed the queue's ETA estimates.
        keep_finished: how many finished jobs :meth:`get` still finds.
        clock: monotonic seconds, for durations and ETAs (tests pass a fake clock).
    """

    def __init__(
        self,
        *,
        preview_every_n_steps: int | Callable[[], int] = 10,
        history_size: int = 20,
        keep_finished: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if history_size < 1:
            raise InvalidParameter("history_size", f"must be at least 1, got {history_size}")
        if keep_finished < 0:
            raise InvalidParameter("keep_finished", f"must be 0 or more, got {keep_finished}")
        self._preview_every = preview_every_n_steps
        self._history_size = history_size
        self._keep_finished = keep_finished
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: deque[Job[Any]] = deque()
        self._jobs: OrderedDict[str, Job[Any]] = OrderedDict()
        self._finished_ids: deque[str] = deque()
        self._durations: dict[str, deque[float]] = {}
        self._current: Job[Any] | None = None
        self._current_started: float = 0.0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._listeners: list[Callable[[Job[Any]], None]] = []
        self._listeners_lock = threading.Lock()

    # -- producers ---------------------------------------------------------------------------------------

    def submit(self, job: Job[T]) -> Job[T]:
        """Put ``job`` at the end of the queue and return it. Safe from any thread."""
        with self._cond:
            if job.id in self._jobs or job.status is not JobStatus.QUEUED:
                raise InvalidParameter("job", f"job {job.id} was already submitted")
            self._jobs[job.id] = job
            cancelled_early = job.token.cancelled
            if not cancelled_early:
                self._pending.append(job)
                job.token.bind(lambda: self._cancel_queued_or_interrupt(job))
                self._cond.notify_all()
        if cancelled_early:
            self._finish_cancelled(job, "was cancelled before it was submitted")
        else:
            self._notify(job)
        return job

    def get(self, job_id: str) -> Job[Any] | None:
        """The queued, running or recently finished job with this id, or None."""
        with self._cond:
            return self._jobs.get(job_id)

    def current(self) -> Job[Any] | None:
        """The running job, or None."""
        with self._cond:
            return self._current

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job: a queued one is removed before it starts, a running one is interrupted.

        Returns the job's status afterwards (``cancelled``, or ``running`` while it winds down, or the
        final status of a job that had already finished).
        """
        job = self.get(job_id)
        if job is None:
            with self._cond:
                known = ", ".join(self._pending_ids()) or "none"
            raise InvalidParameter("job_id", f"no job with id {job_id!r}; queued jobs: {known}")
        job.cancel()
        return job.status

    def interrupt(self) -> bool:
        """Interrupt the running job (A1111's ``/sdapi/v1/interrupt``); False when nothing runs."""
        job = self.current()
        if job is None:
            return False
        job.interrupt()
        self._notify(job)
        return True

    def skip(self) -> bool:
        """Skip the running job's current image (A1111's ``/sdapi/v1/skip``); False when nothing runs."""
        job = self.current()
        if job is None:
            return False
        job.skip()
        self._notify(job)
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        """The running and queued jobs in order, each ``{id, kind, status, position, eta_seconds}``.

        ``position`` is 0 for the running job and 1, 2, ... for queued ones. ``eta_seconds`` is a rough
        time until that job is finished: the running job's ETA plus the average recent duration of each
        job kind ahead; None while nothing is known to estimate from.
        """
        with self._cond:
            running = self._current
            running_elapsed = self._clock() - self._current_started
            queued = list(self._pending)
            averages = {kind: sum(d) / len(d) for kind, d in self._durations.items() if d}
        overall = sum(averages.values()) / len(averages) if averages else None
        rows: list[dict[str, Any]] = []
        total: float | None = 0.0
        if running is not None:
            remaining = running.progress.eta_seconds
            if remaining is None:
                estimate = averages.get(running.kind, overall)
                remaining = None if estimate is None else max(0.0, estimate - running_elapsed)
            total = remaining
            rows.append(_snapshot_row(running, 0, total))
        for position, job in enumerate(queued, start=1):
            estimate = averages.get(job.kind, overall)
            total = None if total is None or estimate is None else total + estimate
            rows.append(_snapshot_row(job, position, total))
        return rows

    # -- listeners ---------------------------------------------------------------------------------------

    def add_listener(self, fn: Callable[[Job[Any]], None]) -> Callable[[], None]:
        """Call ``fn(job)`` whenever a job changes state or progress; returns a function that removes it.

        Listeners run on the thread that made the change (mostly the worker) and must be quick; their
        exceptions are logged and otherwise ignored.
        """
        with self._listeners_lock:
            self._listeners.append(fn)

        def remove() -> None:
            self.remove_listener(fn)

        return remove

    def remove_listener(self, fn: Callable[[Job[Any]], None]) -> None:
        """Stop calling ``fn``; unknown listeners are ignored."""
        with self._listeners_lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    # -- worker ------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the worker thread (does nothing if it already runs)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="gpu-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None, *, interrupt: bool = True) -> bool:
        """Stop the worker: cancel queued jobs, interrupt the running one (unless told not to) and join.

        Returns True when the worker thread has ended within ``timeout`` seconds. Jobs submitted after
        this wait for the next :meth:`start`.
        """
        with self._cond:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            running = self._current
            thread = self._thread
            self._cond.notify_all()
        for job in dropped:
            self._finish_cancelled(job, "was cancelled because the job queue stopped")
        if interrupt and running is not None:
            running.interrupt()
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            self._notify(job)
            self._execute(job)
            self._notify(job)

    def _next_job(self) -> Job[Any] | None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                job = self._pending.popleft()
                if not job.token.cancelled:
                    self._current = job
                    self._current_started = self._clock()
                    job._start(self._clock)
                    return job
            self._finish_cancelled(job, "was cancelled before it started")

    def _execute(self, job: Job[Any]) -> None:
        context = JobContext(
            job, preview_every_n_steps=self._preview_every, on_change=lambda: self._notify(job)
        )
        started = self._clock()
        status, result, error = JobStatus.DONE, None, None
        try:
            result = job.run(context)
        except JobCancelled as exc:
            status, error = JobStatus.INTERRUPTED, exc
        except Exception as exc:
            logger.exception("job %s (%s) failed", job.id, job.kind)
            status, error = JobStatus.FAILED, exc
        except BaseException as exc:
            # SystemExit and the like end the worker, but waiters must not hang on this job.
            self._settle(job, JobStatus.FAILED, None, exc)
            raise
        if status is JobStatus.DONE and job.token.interrupted:
            status = JobStatus.INTERRUPTED
        if status is JobStatus.DONE:
            self._record_duration(job.kind, self._clock() - started)
        self._settle(job, status, result, error)

    def _settle(self, job: Job[Any], status: JobStatus, result: Any, error: BaseException | None) -> None:
        """Take ``job`` off the worker, then publish its outcome (so waiters never see it as current)."""
        with self._cond:
            self._current = None
            self._remember_finished(job)
        job._finish(status, result=result, error=error)

    # -- internals ---------------------------------------------------------------------------------------

    def _cancel_queued_or_interrupt(self, job: Job[Any]) -> None:
        with self._cond:
            queued = job in self._pending
            if queued:
                self._pending.remove(job)
        if queued:
            self._finish_cancelled(job, "was cancelled before it started")
        elif job.status is JobStatus.RUNNING:
            job.interrupt()
            self._notify(job)

    def _finish_cancelled(self, job: Job[Any], why: str) -> None:
        job.token.mark_cancelled()
        job._finish(JobStatus.CANCELLED, error=JobCancelledBeforeStart(f"job {job.id} ({job.kind}) {why}"))
        with self._cond:
            self._remember_finished(job)
        self._notify(job)

    def _remember_finished(self, job: Job[Any]) -> None:
        if job.id in self._finished_ids:
            return
        self._finished_ids.append(job.id)
        while len(self._finished_ids) > self._keep_finished:
            self._jobs.pop(self._finished_ids.popleft(), None)

    def _record_duration(self, kind: str, seconds: float) -> None:
        with self._cond:
            history = self._durations.setdefault(kind, deque(maxlen=self._history_size))
            history.append(seconds)

    def _pending_ids(self) -> Iterator[str]:
        return (job.id for job in self._pending)

    def _notify(self, job: Job[Any]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for fn in listeners:
            _call_safely(fn, job)


async def wait_async(job: Job[T], timeout: float | None = None) -> T | None:
    """Await ``job`` without blocking the event loop; return its result or raise its error.

    Raises:
        TimeoutError: the job did not finish within ``timeout`` seconds (the job itself goes on).
    """
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not finished.done():
            finished.set_result(None)

    def on_done(_job: Job[T]) -> None:
        # a closed loop means nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(resolve)

    job.add_done_callback(on_done)
    try:
        await asyncio.wait_for(finished, timeout)
    except asyncio.TimeoutError as exc:
        raise TimeoutError(f"job {job.id} ({job.kind}) did not finish within {timeout} s") from exc
    return job._outcome()


def _snapshot_row(job: Job[Any], position: int, eta_seconds: float | None) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status.value,
        "position": position,
        "eta_seconds": eta_seconds,
    }


def _call_safely(fn: Callable[[Any], None], job: Job[Any]) -> None:
    try:
        fn(job)
    except Exception:
        logger.exception("job listener %r failed for job %s", fn, job.id)
