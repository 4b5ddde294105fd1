"""Extension jobs: work an extension queues on the GPU worker, with progress, previews and interrupt.

``api.submit_job(fn)`` queues ``fn(run)`` behind the jobs already waiting; ``run`` is an
:class:`ExtensionRun`. Inside it an extension can run whole generations (``run.generate``: the core
txt2img/img2img pipeline with the extension's own values and output folder) or its own loops, reporting
steps through ``run.report`` (which raises when the user interrupts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from webui.engine.errors import InvalidParameter
from webui.engine.params import GenerationParams

_PARAM_FIELDS = frozenset(f.name for f in dataclasses.fields(GenerationParams))


@dataclass(frozen=True)
class GenerationResult:
    """What ``run.generate`` returns: the images and, per image, infotext, seed and saved path."""

    images: tuple[Image.Image, ...]
    infotexts: tuple[str, ...]
    seeds: tuple[int, ...]
    paths: tuple[Path, ...]
    interrupted: bool


def generation_params(fields: Mapping[str, Any]) -> GenerationParams:
    """A :class:`GenerationParams` from field names (the A1111 API's names); unknown names are refused."""
    unknown = sorted(set(fields) - _PARAM_FIELDS)
    if unknown:
        raise InvalidParameter("params", f"unknown generation field {unknown[0]!r}")
    try:
        return GenerationParams(**dict(fields))
    except TypeError as exc:
        raise InvalidParameter("params", str(exc)) from None


class ExtensionRun:
    """What an extension job's function receives; it runs on the GPU worker.

    Attributes:
        owner: the extension id; ``id``: the job id (the one ``/sdapi/v1/progress`` reports).
    """

    def __init__(
        self,
        owner: str,
        job: Any,
        generate: Callable[[GenerationParams, Any, str | None], Any],
        output_root: Path | None,
    ) -> None:
        self.owner = owner
        self._job = job
        self._generate = generate
        self._output_root = output_root

    @property
    def id(self) -> str:
        """The job id."""
        return str(self._job.job.id)

    @property
    def interrupted(self) -> bool:
        """Whether the user asked the job to stop."""
        return bool(self._job.interrupted)

    def check(self) -> None:
        """Raise :class:`~webui.extensions.api.JobCancelled` if the job was interrupted."""
        self._job.check()

    def report(self, step: int, total: int, preview: Callable[[], Image.Image] | None = None) -> None:
        """Record progress (``step`` of ``total`` done); ``preview`` builds the live preview when one is due.
        Raises JobCancelled when the job was interrupted, so loops stop right there."""
        self._job.report_step(int(step), int(total), preview)

    def set_text(self, text: str) -> None:
        """The text line shown with the progress bar."""
        self._job.set_textinfo(text)

    def preview_every(self, steps: int) -> None:
        """Make a live preview every ``steps`` sampling steps for the rest of this job (0 turns them off)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise InvalidParameter("preview_every", f"must be a whole number >= 0, got {steps!r}")
        self._job.set_preview_every(steps)

    def set_preview(self, image: Image.Image) -> None:
        """Show ``image`` as the live preview now."""
        self._job.set_preview(image)

    def output_folder(self, *parts: str) -> Path:
        """A folder under ``outputs/`` (created), e.g. ``run.output_folder("disco-images", "run1")``."""
        if self._output_root is None:
            raise InvalidParameter("folder", "this session has no outputs folder")
        return output_folder(self._output_root, *parts)

    def generate(
        self,
        params: Mapping[str, Any],
        *,
        extension_args: Mapping[str, Mapping[str, Any]] | None = None,
        folder: str | None = None,
    ) -> GenerationResult:
        """Run one txt2img/img2img generation now, inside this job (progress and interrupt included).

        ``params`` uses :class:`GenerationParams` field names (``prompt``, ``steps``, ``init_images`` ...);
        ``extension_args`` reaches hooks and denoiser wrappers (this extension's entry unchecked, others
        checked by their controls); ``folder`` (e.g. ``"disco-images/run1"``) replaces the usual output folders.
        """
        p = generation_params(params)
        p.extension_args = {k: dict(v) for k, v in (extension_args or {}).items()}
        processed = self._generate(p, self._job, folder)
        return GenerationResult(
            images=tuple(processed.images),
            infotexts=tuple(processed.infotexts),
            seeds=tuple(processed.seeds),
            paths=tuple(processed.paths),
            interrupted=bool(processed.interrupted),
        )


def output_folder(root: Path, *parts: str) -> Path:
    """``root/part/...`` for plain folder names only (no separators, ``..`` or absolute paths); created."""
    folder = Path(root)
    for part in parts:
        if not isinstance(part, str) or not part or part in (".", "..") or any(c in part for c in "/\\:\0"):
            raise InvalidParameter("folder", f"{part!r} is not a plain folder name")
        folder /= part
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class JobHandle:
    """What ``api.submit_job`` returns: the queued job, seen from outside."""

    def __init__(self, job: Any) -> None:
        self._job = job

    @property
    def id(self) -> str:
        """The job id."""
        return str(self._job.id)

    @property
    def status(self) -> str:
        """``"queued"``, ``"running"``, ``"done"``, ``"failed"``, ``"interrupted"`` or ``"cancelled"``."""
        status = self._job.status
        return str(getattr(status, "value", status))

    @property
    def done(self) -> bool:
        """Whether the job has finished (in any way)."""
        return bool(self._job.done)

    @property
    def error(self) -> BaseException | None:
        """The exception a failed job raised."""
        return self._job.error

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job finishes; returns its result, re-raises its error."""
        return self._job.wait(timeout)

    def interrupt(self) -> None:
        """Ask the job to stop."""
        self._job.interrupt()
