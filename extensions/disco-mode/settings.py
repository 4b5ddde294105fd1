"""Disco mode's settings, under Disco Diffusion's names, validated, and saved as JSON or infotext.

:class:`DiscoSettings` is immutable and always valid: construction (including ``dataclasses.replace``)
normalises and checks every field and raises :class:`InvalidParameter` naming the field. A run's settings are
written beside its images (:meth:`DiscoSettings.save_json`) and, compactly, into the PNG infotext
(:meth:`DiscoSettings.infotext_value`); both load back to an equal object.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from webui.extensions.api import InvalidParameter

from .prompts import check_weights, parse_prompt
from .schedules import SCHEDULE_LENGTH, cut_preset, parse_schedule

ENGINES = ("latent", "pixel")
GUIDANCE_DECODERS = ("vae", "approx")
MAX_SEED = 2**32 - 1
MAX_SIDE = 8192
MAX_CUTS = 256
# The pixel engine's diffusion models work on multiples of 64 (Disco rounds down to them); latents need 8.
SIDE_MULTIPLE = {"latent": 8, "pixel": 64}

_DISCO_PROMPT = (
    "A beautiful painting of a singular lighthouse, shining its light across a tumultuous sea of blood by "
    "greg rutkowski and thomas kinkade, Trending on artstation."
)


@dataclasses.dataclass(frozen=True)
class DiscoSettings:
    """Every setting of a disco run. Build with :meth:`defaults`, :meth:`from_dict` or ``replace``.

    Disco's names and meanings: prompts by animation frame (``text_prompts``/``image_prompts``, lines
    ``"text:weight"``; image prompt lines are ``"path:weight"``); cut schedules as strings in Disco's
    ``"[12]*400+[4]*600"`` syntax; ``seed`` -1 means random; ``intermediate_saves`` is a count of evenly
    spaced saves or a list of steps; ``transformation_percent`` are the fractions of the run at which
    symmetry is applied. Latent-engine options: ``sampler``/``schedule`` (registry names), ``cfg_scale``,
    ``negative_prompt``, guidance only every ``guide_every`` steps inside ``[guidance_start,
    guidance_end]`` (fractions of the run), ``approximate_gradient`` (skip the UNet backward pass) and
    ``guidance_decoder`` ("vae" or the cheap "approx" latent-to-RGB decoder for the guidance path).
    """

    engine: str
    text_prompts: dict[int, tuple[str, ...]]
    image_prompts: dict[int, tuple[str, ...]]
    batch_name: str
    steps: int
    width: int
    height: int
    clip_guidance_scale: float
    tv_scale: float
    range_scale: float
    sat_scale: float
    cutn_batches: int
    cut_overview: str
    cut_innercut: str
    cut_ic_pow: str
    cut_icgray_p: str
    skip_augs: bool
    clamp_grad: bool
    clamp_max: float
    init_image: str | None
    init_scale: float
    skip_steps: int
    seed: int
    eta: float
    n_batches: int
    display_rate: int
    intermediate_saves: int | tuple[int, ...]
    use_horizontal_symmetry: bool
    use_vertical_symmetry: bool
    transformation_percent: tuple[float, ...]
    clip_models: tuple[str, ...]
    sampler: str
    schedule: str
    cfg_scale: float
    negative_prompt: str
    guide_every: int
    guidance_start: float
    guidance_end: float
    approximate_gradient: bool
    guidance_decoder: str

    def __post_init__(self) -> None:
        _validate(self)

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def defaults(cls, engine: str = "latent") -> DiscoSettings:
        """Disco's notebook defaults for ``"pixel"``; defaults tuned for ``"latent"`` (SD checkpoints)."""
        return cls(**_default_values(engine))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], engine: str | None = None) -> DiscoSettings:
        """Settings from ``data`` (missing keys take the engine's defaults; unknown keys are rejected).

        The engine is ``data["engine"]``, else ``engine``, else "latent"; both given and different is an
        error. Disco's ``width_height: [w, h]`` is accepted in place of ``width`` and ``height``.
        """
        if not isinstance(data, Mapping):
            raise InvalidParameter("settings", f"expected a mapping of settings, got {type(data).__name__}")
        values = dict(data)
        if "width_height" in values:
            pair = values.pop("width_height")
            if "width" in values or "height" in values:
                raise InvalidParameter("width_height", "give either width_height or width and height")
            if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
                raise InvalidParameter("width_height", f"expected [width, height], got {pair!r}")
            values["width"], values["height"] = pair
        names = cls.field_names()
        unknown = sorted(str(key) for key in values if key not in names)
        if unknown:
            raise InvalidParameter(unknown[0], f"unknown setting; valid settings: {', '.join(names)}")
        chosen = values.get("engine", engine if engine is not None else "latent")
        if engine is not None and chosen != engine:
            raise InvalidParameter("engine", f"the settings are for the {chosen!r} engine, not {engine!r}")
        return cls(**{**_default_values(chosen), **values})

    @classmethod
    def from_json(cls, text: str, engine: str | None = None) -> DiscoSettings:
        """Settings from a JSON object (as written by :meth:`to_json`)."""
        return cls.from_dict(_load_object(text, "settings"), engine)

    @classmethod
    def load_json(cls, path: str | Path) -> DiscoSettings:
        """Settings from the JSON file saved beside a run's images."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def from_infotext_value(cls, text: str) -> DiscoSettings:
        """Settings from :meth:`infotext_value` (also accepted still quoted as an infotext value)."""
        if not isinstance(text, str):
            raise InvalidParameter("disco", f"expected text, got {type(text).__name__}")
        text = text.strip()
        if text.startswith('"'):
            text = _load_json(text, "disco")
            if not isinstance(text, str):
                raise InvalidParameter("disco", "expected a quoted JSON object")
        return cls.from_dict(_load_object(text, "disco"))

    def replace(self, **changes: Any) -> DiscoSettings:
        """A copy with ``changes`` applied (validated like every construction)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise InvalidParameter(unknown[0], "unknown setting")
        return dataclasses.replace(self, **changes)

    def with_cut_preset(self, name: str) -> DiscoSettings:
        """A copy using the four cut schedules of preset ``name`` (see ``SCHEDULE_PRESETS``)."""
        return self.replace(**cut_preset(name))

    # --- export -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every setting (frame keys as strings, tuples as lists)."""
        return {name: _plain(getattr(self, name)) for name in self.field_names()}

    def to_json(self, indent: int | None = 2) -> str:
        """All settings as a JSON object."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (UTF-8) and return the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    def infotext_value(self) -> str:
        """One-line compact JSON of the engine and every setting that differs from the engine's defaults.

        The infotext writer quotes it (it holds commas and colons); :meth:`from_infotext_value` reads both.
        """
        defaults = _default_values(self.engine)
        current = self.to_dict()
        changed = {"engine": self.engine}
        changed.update(
            {name: value for name, value in current.items() if value != _plain(defaults.get(name))}
        )
        return json.dumps(changed, separators=(",", ":"), ensure_ascii=False)

    # --- derived values ---------------------------------------------------------------------------

    def intermediate_save_steps(self) -> tuple[int, ...]:
        """Steps after which an intermediate image is saved: a list as given, or a count spread evenly
        over the sampled steps ``skip_steps .. steps - 1`` (the final image is saved anyway)."""
        if isinstance(self.intermediate_saves, tuple):
            return self.intermediate_saves
        sampled = self.steps - self.skip_steps
        count = min(self.intermediate_saves, sampled - 1)
        picks = {self.skip_steps + round(k * sampled / (count + 1)) for k in range(1, count + 1)}
        return tuple(sorted(picks))


# --- defaults ---------------------------------------------------------------------------------------


def _default_values(engine: str) -> dict[str, Any]:
    if engine not in ENGINES:
        raise InvalidParameter("engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    common: dict[str, Any] = {
        "engine": engine,
        "text_prompts": {0: (_DISCO_PROMPT, "yellow color scheme")},
        "image_prompts": {},
        "batch_name": "TimeToDisco",
        "tv_scale": 0.0,
        "range_scale": 150.0,
        "sat_scale": 0.0,
        **cut_preset("default"),
        "skip_augs": False,
        "clamp_grad": True,
        "clamp_max": 0.05,
        "init_image": None,
        "seed": -1,
        "intermediate_saves": 0,
        "use_horizontal_symmetry": False,
        "use_vertical_symmetry": False,
        "transformation_percent": (0.09,),
        "negative_prompt": "",
        "guide_every": 1,
        "guidance_start": 0.0,
        "approximate_gradient": False,
        "guidance_decoder": "vae",
    }
    if engine == "pixel":
        # Disco Diffusion v5's notebook defaults (the 512x512 unconditional ImageNet model, DDIM sampling).
        return {
            **common,
            "steps": 250,
            "width": 1280,
            "height": 768,
            "clip_guidance_scale": 5000.0,
            "cutn_batches": 4,
            "init_scale": 1000.0,
            "skip_steps": 10,
            "eta": 0.8,
            "n_batches": 50,
            "display_rate": 50,
            # Empty: every installed CLIP model. Disco's trio is ViT-B/32, ViT-B/16 and RN50; ResNet towers
            # are not supported here, and a run records the models it actually used.
            "clip_models": (),
            "sampler": "DDIM",
            "schedule": "automatic",
            "cfg_scale": 1.0,  # the model is unconditional: no classifier-free guidance
            "guidance_end": 1.0,
        }
    # Latent engine (SD checkpoints). The guidance moves x0 by sigma**2 * grad with grad taken w.r.t. the
    # latent, as diffusers' CLIP-guided SD pipeline does; its default scale of 100 is the reference point for
    # these units (a latent has ~64x fewer values than Disco's pixels, so per-value gradients are far larger
    # than in pixel space, where 5000 is needed). clamp_max 0.05 then bounds the x0 change to 0.05 * sigma**2
    # RMS per step, a few percent of the latent's unit scale where detail forms (sigma ~ 1).
    return {
        **common,
        "steps": 40,  # SD samplers converge in 30-50 steps; Disco's 250 are for the pixel model's DDIM
        "width": 512,  # SD 1.x native size
        "height": 512,
        "clip_guidance_scale": 100.0,
        # Every CLIP pass also backpropagates through the VAE decoder (and UNet): 2 batches of Disco's 16
        # cuts keep a step about 3-4x the cost of an unguided one.
        "cutn_batches": 2,
        # No LPIPS here: the init loss is a CLIP-embedding distance; with an init image skip_steps already
        # keeps its layout (img2img), so it is off unless asked for.
        "init_scale": 0.0,
        "skip_steps": 0,  # without an init image, skipping steps only leaves noise in a latent
        "eta": 1.0,  # A1111's ancestral default; fresh noise each step absorbs the guided x0 edits
        "n_batches": 1,
        "display_rate": 10,
        "clip_models": (),  # every installed CLIP model (the demo CLIP on a fresh install)
        # Ancestral Euler: one UNet call per step (half the guided cost of a 2nd-order sampler) and robust to
        # the edited x0, which multistep solvers would extrapolate from; Karras spacing suits few steps.
        "sampler": "Euler a",
        "schedule": "karras",
        "cfg_scale": 7.0,
        # Past 80% of a Karras run sigma**2 < 0.05, so guidance could only move x0 by < 0.0025 per step
        # at full cost: stop there.
        "guidance_end": 0.8,
    }


# --- validation -------------------------------------------------------------------------------------


def _validate(settings: DiscoSettings) -> None:
    def put(name: str, value: Any) -> None:
        object.__setattr__(settings, name, value)

    engine = settings.engine
    if engine not in ENGINES:
        raise InvalidParameter("engine", f"must be one of {', '.join(ENGINES)}, got {engine!r}")
    put("text_prompts", _frame_prompts("text_prompts", settings.text_prompts))
    put("image_prompts", _frame_prompts("image_prompts", settings.image_prompts))
    _check_prompt_sets(settings.text_prompts, settings.image_prompts)
    put("batch_name", _text("batch_name", settings.batch_name, allow_empty=False))
    if any(char in settings.batch_name for char in '/\\:*?"<>|') or settings.batch_name in (".", ".."):
        raise InvalidParameter("batch_name", 'is a folder name: no path separators or / \\ : * ? " < > |')
    put("steps", _int("steps", settings.steps, 1, 10_000))
    multiple = SIDE_MULTIPLE[engine]
    for name in ("width", "height"):
        value = _int(name, getattr(settings, name), multiple, MAX_SIDE)
        if value % multiple:
            raise InvalidParameter(
                name, f"must be a multiple of {multiple} for the {engine} engine, got {value}"
            )
        put(name, value)
    for name in ("clip_guidance_scale", "tv_scale", "range_scale", "sat_scale", "init_scale"):
        put(name, _float(name, getattr(settings, name), 0.0, 1e9))
    put("cutn_batches", _int("cutn_batches", settings.cutn_batches, 1, 64))
    _check_cut_schedules(settings, put)
    for name in (
        "skip_augs",
        "clamp_grad",
        "use_horizontal_symmetry",
        "use_vertical_symmetry",
        "approximate_gradient",
    ):
        put(name, _bool(name, getattr(settings, name)))
    put("clamp_max", _float("clamp_max", settings.clamp_max, 0.0, 1e6, low_open=True))
    if settings.init_image is not None:
        put("init_image", _text("init_image", settings.init_image, allow_empty=True) or None)
    put("skip_steps", _int("skip_steps", settings.skip_steps, 0, settings.steps - 1))
    put("seed", _int("seed", settings.seed, -1, MAX_SEED))
    put("eta", _float("eta", settings.eta, 0.0, 1.0))
    put("n_batches", _int("n_batches", settings.n_batches, 1, 10_000))
    put("display_rate", _int("display_rate", settings.display_rate, 0, 10_000))
    put("intermediate_saves", _saves(settings.intermediate_saves, settings.steps))
    put("transformation_percent", _fractions("transformation_percent", settings.transformation_percent))
    put("clip_models", _names("clip_models", settings.clip_models))
    put("sampler", _text("sampler", settings.sampler, allow_empty=False))
    put("schedule", _text("schedule", settings.schedule, allow_empty=False))
    put("cfg_scale", _float("cfg_scale", settings.cfg_scale, 0.0, 100.0))
    put("negative_prompt", _text("negative_prompt", settings.negative_prompt, allow_empty=True))
    put("guide_every", _int("guide_every", settings.guide_every, 1, 10_000))
    put("guidance_start", _float("guidance_start", settings.guidance_start, 0.0, 1.0))
    put("guidance_end", _float("guidance_end", settings.guidance_end, 0.0, 1.0))
    if settings.guidance_start > settings.guidance_end:
        raise InvalidParameter(
            "guidance_start",
            f"must not be after guidance_end ({settings.guidance_start} > {settings.guidance_end})",
        )
    if settings.guidance_decoder not in GUIDANCE_DECODERS:
        raise InvalidParameter(
            "guidance_decoder",
            f"must be one of {', '.join(GUIDANCE_DECODERS)}, got {settings.guidance_decoder!r}",
        )


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(name, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidParameter(name, f"must be between {low} and {high}, got {value}")
    return value


def _float(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(name, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidParameter(name, f"must be a finite number, got {value}")
    if value < low or value > high or (low_open and value == low):
        bound = f"above {low:g}" if low_open else f"at least {low:g}"
        raise InvalidParameter(name, f"must be {bound} and at most {high:g}, got {value:g}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameter(name, f"must be true or false, got {value!r}")
    return value


def _text(name: str, value: Any, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(name, f"must be text, got {type(value).__name__}")
    value = value.strip()
    if not value and not allow_empty:
        raise InvalidParameter(name, "must not be empty")
    return value


def _frame_key(name: str, key: Any) -> int:
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key.strip())
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        raise InvalidParameter(name, f"frame keys must be whole numbers >= 0, got {key!r}")
    return key


def _frame_prompts(name: str, value: Any) -> dict[int, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise InvalidParameter(name, f"expected {{frame: [prompt lines]}}, got {type(value).__name__}")
    frames: dict[int, tuple[str, ...]] = {}
    for key, lines in value.items():
        frame = _frame_key(name, key)
        if frame in frames:
            raise InvalidParameter(name, f"frame {frame} is given twice")
        if isinstance(lines, str) or not isinstance(lines, Sequence) or not lines:
            raise InvalidParameter(name, f"frame {frame}: expected a non-empty list of prompt lines")
        for line in lines:
            parse_prompt(line, name)
        frames[frame] = tuple(line.strip() for line in lines)
    return dict(sorted(frames.items()))


def _check_prompt_sets(text: Mapping[int, Sequence[str]], images: Mapping[int, Sequence[str]]) -> None:
    """Every frame's text and image prompts together must have weights that do not sum to zero."""
    keys = sorted(set(text) | set(images))
    if not keys:
        raise InvalidParameter("text_prompts", "no prompts given")
    if keys[0] != 0:
        raise InvalidParameter("text_prompts", f"the first prompts must be for frame 0, not {keys[0]}")

    def in_force(prompts: Mapping[int, Sequence[str]], frame: int) -> list[str]:
        earlier = [key for key in prompts if key <= frame]
        return list(prompts[max(earlier)]) if earlier else []

    for frame in keys:
        weights = [parse_prompt(line).weight for line in in_force(text, frame)]
        weights += [parse_prompt(line, "image_prompts").weight for line in in_force(images, frame)]
        try:
            check_weights(weights)
        except InvalidParameter as exc:
            raise InvalidParameter("text_prompts", f"frame {frame}: {exc.message}") from None


def _check_cut_schedules(settings: DiscoSettings, put) -> None:
    parsed = {}
    for name, kind in (
        ("cut_overview", int),
        ("cut_innercut", int),
        ("cut_ic_pow", float),
        ("cut_icgray_p", float),
    ):
        value = getattr(settings, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # Disco's notebooks also give cut_ic_pow as a bare number
        parsed[name] = parse_schedule(value, SCHEDULE_LENGTH, kind, field=name)
        put(name, value.strip())
    for name in ("cut_overview", "cut_innercut"):
        if not all(0 <= count <= MAX_CUTS for count in parsed[name]):
            raise InvalidParameter(name, f"cut counts must be between 0 and {MAX_CUTS}")
    totals = (a + b for a, b in zip(parsed["cut_overview"], parsed["cut_innercut"], strict=True))
    if min(totals) < 1:
        raise InvalidParameter("cut_innercut", "cut_overview + cut_innercut must be at least 1 at every step")
    if not all(value > 0 for value in parsed["cut_ic_pow"]):
        raise InvalidParameter("cut_ic_pow", "every value must be above 0")
    if not all(0 <= value <= 1 for value in parsed["cut_icgray_p"]):
        raise InvalidParameter("cut_icgray_p", "every value must be between 0 and 1")


def _saves(value: Any, steps: int) -> int | tuple[int, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        saves = tuple(_int("intermediate_saves", step, 0, steps - 1) for step in value)
        return tuple(sorted(set(saves)))
    return _int("intermediate_saves", value, 0, steps)


def _fractions(name: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InvalidParameter(name, f"expected a list of fractions of the run, got {value!r}")
    return tuple(_float(name, item, 0.0, 1.0) for item in value)


def _names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidParameter(name, f"expected a list of names, got {value!r}")
    names = tuple(_text(name, item, allow_empty=False) for item in value)
    if len(set(names)) != len(names):
        raise InvalidParameter(name, "a model is listed twice")
    return names


# --- serialisation helpers --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def _load_json(text: str, field: str) -> Any:
    if not isinstance(text, str):
        raise InvalidParameter(field, f"expected JSON text, got {type(text).__name__}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameter(
            field, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


def _load_object(text: str, field: str) -> dict[str, Any]:
    data = _load_json(text, field)
    if not isinstance(data, dict):
        raise InvalidParameter(field, f"expected a JSON object, got {type(data).__name__}")
    return data
