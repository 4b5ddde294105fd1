"""Progress of a job as the page shows it: a bar with step, total and ETA, the live preview, queue state."""

from __future__ import annotations

import contextlib
import html
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

POLL_SECONDS = 0.25


@dataclass(frozen=True)
class ProgressView:
    """One snapshot for the page: the bar's HTML and a new preview image (None when unchanged)."""

    html: str
    preview: Any = None
    done: bool = False


def format_eta(seconds: float | None) -> str:
    """``"ETA 01:05"``-style text; empty when not known yet."""
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"ETA {hours:d}:{minutes:02d}:{secs:02d}" if hours else f"ETA {minutes:02d}:{secs:02d}"


def progress_html(job: Any, queue: Any) -> str:
    """The progress bar of ``job``: waiting position, step/total with ETA, or its final state."""
    status = job.status.value
    if status == "queued":
        ahead = next((row["position"] for row in queue.snapshot() if row["id"] == job.id), None)
        text = "Waiting in queue" + (f": {ahead - 1} job(s) ahead" if ahead and ahead > 1 else "...")
        return _bar(0.0, text, "queued")
    state = job.progress
    if status == "running":
        parts = []
        if state.job_count > 1:
            parts.append(f"Batch {state.job_no + 1}/{state.job_count}")
        if state.sampling_steps:
            parts.append(f"Step {state.sampling_step}/{state.sampling_steps}")
        else:
            parts.append("Preparing...")
        if job.token.interrupted:
            parts.append("Interrupting...")
        eta = format_eta(state.eta_seconds)
        if eta:
            parts.append(eta)
        if state.textinfo:
            parts.append(str(state.textinfo))
        return _bar(state.fraction, " · ".join(parts), "running")
    if status == "done":
        return _bar(1.0, f"Done in {_elapsed(job)}", "done")
    if status in ("interrupted", "cancelled"):
        return _bar(state.fraction, f"{status.capitalize()} after {_elapsed(job)}", status)
    return error_html(str(job.error) if job.error else "the job failed")


def _elapsed(job: Any) -> str:
    start = job.started_at or job.created_at
    end = job.finished_at or time.time()
    return f"{max(0.0, end - start):.1f} s"


def _bar(fraction: float, text: str, state: str) -> str:
    pct = max(0.0, min(1.0, float(fraction))) * 100
    return (
        f'<div class="webui-progress" data-state="{state}" data-fraction="{pct:.1f}">'
        f'<div class="webui-progress-fill" style="width:{pct:.1f}%"></div>'
        f'<span class="webui-progress-text">{html.escape(text)}</span></div>'
    )


def error_html(message: str) -> str:
    """A readable error box shown next to the controls."""
    return f'<div class="webui-error" role="alert">{html.escape(message)}</div>'


def follow_job(job: Any, queue: Any, poll_seconds: float = POLL_SECONDS) -> Iterator[ProgressView]:
    """Snapshots of ``job`` every ``poll_seconds`` until it finishes (the last one has ``done``)."""
    seen_preview = 0
    while True:
        finished = job.done
        state = job.progress
        preview = None
        if state.preview_id != seen_preview and state.preview is not None and not finished:
            seen_preview, preview = state.preview_id, state.preview
        yield ProgressView(progress_html(job, queue), preview, finished)
        if finished:
            return
        with contextlib.suppress(Exception):  # a timeout, or the job's own error, read on the next turn
            job.wait(poll_seconds)


def queue_html(queue: Any) -> str:
    """What every open page shows in the top bar: the running job and how many wait."""
    rows = queue.snapshot()
    if not rows:
        return '<span class="webui-queue" data-state="idle">Idle</span>'
    running = [r for r in rows if r["status"] == "running"]
    waiting = len(rows) - len(running)
    parts = []
    if running:
        job = queue.get(running[0]["id"])
        pct = job.progress.fraction * 100 if job is not None else 0.0
        parts.append(f"Running {running[0]['kind']} ({pct:.0f}%)")
    if waiting:
        parts.append(f"{waiting} waiting")
    state = "running" if running else "queued"
    return f'<span class="webui-queue" data-state="{state}">{html.escape(", ".join(parts))}</span>'
