"""Progress of one job: step counts, the fraction done, the ETA, text info and the live preview.

A :class:`ProgressTracker` belongs to one :class:`~webui.engine.jobs.Job`; the worker thread writes it through
the job's context while UI and API threads read consistent :class:`ProgressState` snapshots from it.
:func:`progress_view` renders the running job the way A1111's ``GET /sdapi/v1/progress`` does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from webui.engine.errors import InvalidParameter

if TYPE_CHECKING:
    from webui.engine.jobs import JobQueue

# A1111 writes job timestamps as local time in this format (``State.job_timestamp``).
JOB_TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"


@dataclass(frozen=True)
class ProgressState:
    """A consistent, read-only copy of a job's progress.

    Attributes:
        job_no: index of the image (batch-count iteration) being made, from 0.
        job_count: how many images (batch-count iterations) the job makes.
        sampling_step: sampling steps finished for the current image.
        sampling_steps: sampling steps the current image needs (0 before the first step).
        fraction: share of the whole job done, 0..1.
        eta_seconds: seconds left, from the measured rate of progress; None until measurable.
        textinfo: a free text line the job shows under the progress bar, or None.
        preview: the latest live preview image (a PIL image), or None.
        preview_id: how many previews were set so far; clients send it back to skip unchanged images.
    """

    job_no: int = 0
    job_count: int = 1
    sampling_step: int = 0
    sampling_steps: int = 0
    fraction: float = 0.0
    eta_seconds: float | None = None
    textinfo: str | None = None
    preview: Any = None
    preview_id: int = 0


class ProgressTracker:
    """Thread-safe, mutable progress of one job; the ETA comes from the measured rate of progress.

    The rate is measured from the first reported step on, so time spent before sampling starts (loading a
    model, encoding prompts) does not distort it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state = ProgressState()
        self._first_mark: tuple[float, float] | None = None

    def snapshot(self) -> ProgressState:
        """Return the current progress as an immutable copy."""
        with self._lock:
            return self._state

    def begin_image(self, index: int, count: int) -> None:
        """Start image ``index`` (from 0) of ``count``: resets the step counter of the current image."""
        if count < 1:
            raise InvalidParameter("job_count", f"must be at least 1, got {count}")
        if not 0 <= index < count:
            raise InvalidParameter("job_no", f"must be between 0 and {count - 1}, got {index}")
        with self._lock:
            self._update(start_rate=False, job_no=index, job_count=count, sampling_step=0)

    def update_step(self, step: int, total: int) -> None:
        """Record that ``step`` of ``total`` sampling steps of the current image are finished."""
        if total < 1:
            raise InvalidParameter("sampling_steps", f"must be at least 1, got {total}")
        if not 0 <= step <= total:
            raise InvalidParameter("sampling_step", f"must be between 0 and {total}, got {step}")
        with self._lock:
            self._update(start_rate=True, sampling_step=step, sampling_steps=total)

    def set_textinfo(self, text: str | None) -> None:
        """Set the text line shown with the progress."""
        with self._lock:
            self._state = replace(self._state, textinfo=text)

    def set_preview(self, image: Any) -> int:
        """Store a new live preview image and return its new ``preview_id``."""
        with self._lock:
            preview_id = self._state.preview_id + 1
            self._state = replace(self._state, preview=image, preview_id=preview_id)
            return preview_id

    def complete(self) -> None:
        """Mark the whole job as done: fraction 1 and nothing left to wait for."""
        with self._lock:
            self._state = replace(self._state, fraction=1.0, eta_seconds=0.0)

    def _update(self, *, start_rate: bool, **changes: int) -> None:
        state = replace(self._state, **changes)
        fraction = job_fraction(state.job_no, state.job_count, state.sampling_step, state.sampling_steps)
        fraction = max(fraction, self._state.fraction)
        self._state = replace(state, fraction=fraction, eta_seconds=self._eta(fraction, start_rate))

    def _eta(self, fraction: float, start_rate: bool) -> float | None:
        if self._first_mark is None:
            if start_rate:
                self._first_mark = (self._clock(), fraction)
            return None
        now = self._clock()
        start_time, start_fraction = self._first_mark
        elapsed = now - start_time
        done = fraction - start_fraction
        if elapsed <= 0 or done <= 0:
            return self._state.eta_seconds
        return (1.0 - fraction) * elapsed / done


def job_fraction(job_no: int, job_count: int, sampling_step: int, sampling_steps: int) -> float:
    """Share of a job done when image ``job_no`` of ``job_count`` is at step ``sampling_step`` of
    ``sampling_steps``."""
    if job_count < 1:
        return 0.0
    within_image = sampling_step / sampling_steps if sampling_steps > 0 else 0.0
    return min(1.0, (job_no + within_image) / job_count)


def progress_view(queue: JobQueue) -> dict[str, Any]:
    """The running job's progress shaped like A1111's ``ProgressResponse`` (``GET /sdapi/v1/progress``).

    ``current_image`` is always None here: the API layer encodes the preview (``job.progress.preview``)
    when the client asks for it. With no running job the values are A1111's idle ones.
    """
    job = queue.current()
    if job is None:
        return {
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": _state_dict(),
            "current_image": None,
            "textinfo": None,
        }
    progress = job.progress
    started = job.started_at if job.started_at is not None else job.created_at
    state = _state_dict(
        skipped=job.token.skipped,
        interrupted=job.token.interrupted,
        job=job.kind,
        job_count=progress.job_count,
        job_timestamp=time.strftime(JOB_TIMESTAMP_FORMAT, time.localtime(started)),
        job_no=progress.job_no,
        sampling_step=progress.sampling_step,
        sampling_steps=progress.sampling_steps,
    )
    return {
        "progress": progress.fraction,
        "eta_relative": progress.eta_seconds if progress.eta_seconds is not None else 0.0,
        "state": state,
        "current_image": None,
        "textinfo": progress.textinfo,
    }


def _state_dict(
    *,
    skipped: bool = False,
    interrupted: bool = False,
    job: str = "",
    job_count: int = 0,
    job_timestamp: str = "0",
    job_no: int = 0,
    sampling_step: int = 0,
    sampling_steps: int = 0,
) -> dict[str, Any]:
    return {
        "skipped": skipped,
        "interrupted": interrupted,
        "stopping_generation": False,
        "job": job,
        "job_count": job_count,
        "job_timestamp": job_timestamp,
        "job_no": job_no,
        "sampling_step": sampling_step,
        "sampling_steps": sampling_steps,
    }
