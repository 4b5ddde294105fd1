"""Train the bundled demo model from scratch and export it as one SD1-layout ``.safetensors`` file.

Two phases, both deterministic for a given seed and device:

1. the VAE (``AutoencoderKL``, 64x64 pictures -> 16x16x4 latents) learns to reconstruct the procedural
   scenes; its latent space is then rescaled exactly (quant/post-quant convolutions) so that SD's scaling
   factor 0.18215 gives latents of unit variance;
2. the UNet and the CLIP text encoder learn eps-prediction jointly on SD's "scaled_linear" noise schedule
   (1000 steps, betas 0.00085..0.012), with 10% of the captions dropped (the empty prompt) for CFG.

Progress is saved to a work folder every ``--save-every`` steps; running the same command again resumes.

    python -m tools.demo_model.train --steps 30000 --batch 64 --output models/demo/demo-shapes-v1.safetensors
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tools.demo_model.architecture import (
    DemoArchitecture,
    build_text_encoder,
    build_unet,
    build_vae,
    frame_token_ids,
    load_tokenizer,
    parameter_count,
    seeded_init,
)
from tools.demo_model.dataset import caption, render, training_scene
from webui.models.ldm_export import export_single_file

log = logging.getLogger("demo_model.train")

DEFAULT_OUTPUT = Path("models/demo/demo-shapes-v1.safetensors")
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run depends on (a changed value starts a fresh run in the work folder)."""

    steps: int = 2000
    vae_steps: int = 1200
    batch: int = 32
    vae_batch: int = 16
    # The VAE is fully convolutional: it learns on random crops of this side, then on whole pictures for
    # the last ``vae_full_share`` of its steps (at half the batch) so that its norms see whole scenes.
    vae_crop: int = 32
    vae_full_share: float = 0.2
    lr: float = 1e-3
    vae_lr: float = 2e-3
    warmup: int = 250
    seed: int = 0
    pool: int = 20000
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    min_snr_gamma: float = 5.0
    # per-picture, per-channel constant added to the noise, so that flat backgrounds' colours are learned
    offset_noise: float = 0.1
    kl_weight: float = 1e-6
    arch: DemoArchitecture = field(default_factory=DemoArchitecture)

    def fingerprint(self) -> str:
        """A string that identifies the run, stored with checkpoints to refuse resuming a different run."""
        return repr(sorted(asdict(self).items()))


def print_flushed(line: str) -> None:
    """Print one progress line at once (also when stdout is a file)."""
    print(line, flush=True)


def sd_alphas_cumprod() -> torch.Tensor:
    """alphas_cumprod of SD's "scaled_linear" schedule (float32, 1000 entries)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def step_generator(seed: int, phase: int, step: int) -> torch.Generator:
    """The CPU generator of one training step: stateless, so a resumed run draws the same numbers."""
    return torch.Generator().manual_seed(((seed * 7919 + phase) * 1_000_003 + step) % (2**63))


def learning_rate(base: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def render_pool(settings: TrainSettings) -> tuple[torch.Tensor, list]:
    """The training pictures (``[N, 3, H, W]`` in [-1, 1]) and their scenes."""
    size = settings.arch.image_size
    scenes = [training_scene(settings.seed, i) for i in range(settings.pool)]
    pixels = np.stack([np.asarray(render(scene, size)) for scene in scenes])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, scenes


@torch.no_grad()
def normalise_latent_space(vae: torch.nn.Module, images: torch.Tensor, scaling: float) -> tuple[float, float]:
    """Rescale and centre the VAE's latents in place so that ``latent * scaling`` has unit variance.

    The encoder's mean is mapped ``z -> k (z - m)`` by ``quant_conv`` and undone by ``post_quant_conv``,
    so reconstructions are unchanged. Returns the measured (std, new std) of ``latent * scaling``.
    """
    means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])
    centre = means.mean(dim=(0, 2, 3))
    std = float(means.std())
    k = 1.0 / (scaling * std)
    channels = centre.numel()
    quant, post = vae.quant_conv, vae.post_quant_conv
    quant.weight[:channels] *= k
    quant.bias[:channels] = k * (quant.bias[:channels] - centre)
    quant.bias[channels:] += 2.0 * math.log(k)  # log-variance of k * z
    post.bias += post.weight[:, :, 0, 0] @ centre
    post.weight /= k
    check = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images[:512].split(256)])
    return std * scaling, float(check.std()) * scaling


def _save_state(work_dir: Path, state: dict) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, work_dir / STATE_FILE)


def _load_state(work_dir: Path, fingerprint: str) -> dict | None:
    path = work_dir / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.warning("%s belongs to a different run; starting afresh", path)
        return None
    return state


@dataclass
class Trainer:
    """One training run: models, optimiser state and the loss log."""

    settings: TrainSettings
    device: torch.device
    work_dir: Path
    save_every: int = 500
    log_every: int = 50
    report: Callable[[str], None] = print_flushed
    losses: list[tuple[str, int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        arch = self.settings.arch
        generator = torch.Generator().manual_seed(self.settings.seed)
        self.vae = build_vae(arch)
        self.unet = build_unet(arch)
        self.text_encoder = build_text_encoder(arch)
        for module in (self.vae, self.unet, self.text_encoder):
            seeded_init(module, generator)
            module.to(self.device)
        self.tokenizer = load_tokenizer(self.work_dir / "tokenizer")
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=self.settings.vae_lr, weight_decay=0.0)
        self.opt = torch.optim.AdamW(
            [*self.unet.parameters(), *self.text_encoder.parameters()],
            lr=self.settings.lr,
            betas=(0.9, 0.99),
            weight_decay=0.0,
        )
        self.phase, self.step = "vae", 0
        self._token_cache: dict[str, torch.Tensor] = {}

    # --- state ------------------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to resume."""
        return {
            "fingerprint": self.settings.fingerprint(),
            "phase": self.phase,
            "step": self.step,
            "vae": self.vae.state_dict(),
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "ema_text": self.ema_text.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "opt": self.opt.state_dict(),
            "losses": [list(entry) for entry in self.losses],
        }

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state`'s output."""
        self.phase, self.step = str(state["phase"]), int(state["step"])
        self.vae.load_state_dict(state["vae"])
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema_unet.load_state_dict(state["ema_unet"])
        self.ema_text.load_state_dict(state["ema_text"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.opt.load_state_dict(state["opt"])
        self.losses = [(str(p), int(s), float(v)) for p, s, v in state["losses"]]
        self.report(f"resumed {self.phase} at step {self.step}")

    def _checkpoint(self) -> None:
        _save_state(self.work_dir, self.state())

    # --- phases ---------------------------------------------------------------------------------
    def _vae_batch(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random crops (or, late in the phase, whole pictures), randomly mirrored."""
        s = self.settings
        whole = self.step >= s.vae_steps * (1.0 - s.vae_full_share)
        count = max(1, s.vae_batch // 2) if whole else s.vae_batch
        batch = images[torch.randint(len(images), (count,), generator=g)]
        side = images.shape[-1]
        crop = side if whole else min(s.vae_crop, side)
        if crop < side:
            offsets = torch.randint(side - crop + 1, (count, 2), generator=g)
            batch = torch.stack(
                [
                    b[:, int(y) : int(y) + crop, int(x) : int(x) + crop]
                    for b, (y, x) in zip(batch, offsets, strict=True)
                ]
            )
        flip = torch.rand(count, generator=g) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return batch.to(self.device)

    def train_vae(self, images: torch.Tensor) -> None:
        """Phase 1: reconstruction (MSE + L1) with a tiny KL term."""
        s = self.settings
        self.vae.train()
        running, started = 0.0, time.perf_counter()
        while self.step < s.vae_steps:
            g = step_generator(s.seed, 1, self.step)
            batch = self._vae_batch(images, g)
            for group in self.vae_opt.param_groups:
                group["lr"] = learning_rate(s.vae_lr, self.step, s.vae_steps, s.warmup)
            posterior = self.vae.encode(batch).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=g).to(self.device)
            latent = posterior.mean + posterior.std * noise
            recon = self.vae.decode(latent).sample
            loss = (
                torch.nn.functional.mse_loss(recon, batch)
                + torch.nn.functional.l1_loss(recon, batch)
                + s.kl_weight * posterior.kl().mean()
            )
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
            self.vae_opt.step()
            self.step += 1
            running += float(loss.detach())
            running, started = self._log("vae", running, started)
            if self.step % self.save_every == 0:
                self._checkpoint()
        self.vae.eval()

    def _tokens(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._token_cache]
        if missing:
            for text, ids in zip(missing, frame_token_ids(self.tokenizer, missing), strict=True):
                self._token_cache[text] = ids
        return torch.stack([self._token_cache[t] for t in texts]).to(self.device)

    @torch.no_grad()
    def encode_pool(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents (the distribution's mean, as the engine's img2img encodes) of every picture."""
        scale = float(self.vae.config.scaling_factor)
        self.vae.eval()  # train mode rounds differently (its dropout path): a resumed run must match
        chunks = [self.vae.encode(c.to(self.device)).latent_dist.mean.cpu() for c in images.split(256)]
        return torch.cat(chunks) * scale

    def train_diffusion(self, latents: torch.Tensor, scenes: list) -> None:
        """Phase 2: eps-prediction, min-SNR weighted, UNet and text encoder together, EMA kept."""
        s = self.settings
        alphas = sd_alphas_cumprod()
        snr = alphas / (1.0 - alphas)
        weights = torch.clamp(snr, max=s.min_snr_gamma) / snr
        self.unet.train()
        self.text_encoder.train()
        running, started = 0.0, time.perf_counter()
        while self.step < s.steps:
            g = step_generator(s.seed, 2, self.step)
            index = torch.randint(len(latents), (s.batch,), generator=g)
            rng = np.random.default_rng([s.seed, 2, self.step])
            drop = rng.random(s.batch) < s.caption_dropout
            texts = ["" if d else caption(scenes[int(i)], rng) for i, d in zip(index, drop, strict=True)]
            t = torch.randint(NUM_TRAIN_TIMESTEPS, (s.batch,), generator=g)
            x0 = latents[index]
            eps = torch.randn(x0.shape, generator=g)
            eps = eps + s.offset_noise * torch.randn((*x0.shape[:2], 1, 1), generator=g)
            a = alphas[t].view(-1, 1, 1, 1)
            noisy = (a.sqrt() * x0 + (1.0 - a).sqrt() * eps).to(self.device)
            for group in self.opt.param_groups:
                group["lr"] = learning_rate(s.lr, self.step, s.steps, s.warmup)
            context = self.text_encoder(input_ids=self._tokens(texts)).last_hidden_state
            pred = self.unet(noisy, t.to(self.device), encoder_hidden_states=context).sample
            per_item = (pred - eps.to(self.device)).pow(2).mean(dim=(1, 2, 3))
            loss = (per_item * weights[t].to(self.device)).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*self.unet.parameters(), *self.text_encoder.parameters()], 1.0)
            self.opt.step()
            self._update_ema()
            self.step += 1
            running += float(per_item.detach().mean())
            running, started = self._log("diffusion", running, started)
            if self.step % self.save_every == 0:
                self._checkpoint()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.settings.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        for ema, live in ((self.ema_unet, self.unet), (self.ema_text, self.text_encoder)):
            for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                e.lerp_(p.detach(), 1.0 - decay)

    def _log(self, phase: str, running: float, started: float) -> tuple[float, float]:
        if self.step % self.log_every:
            return running, started
        mean = running / self.log_every
        speed = self.log_every / max(1e-9, time.perf_counter() - started)
        self.losses.append((phase, self.step, mean))
        self.report(f"{phase} step {self.step}: loss {mean:.4f} ({speed:.2f} it/s)")
        return 0.0, time.perf_counter()

    def export(self, output: Path, half: bool = True) -> Path:
        """Write the EMA UNet/text encoder and the VAE as one SD1 single-file checkpoint."""
        output.parent.mkdir(parents=True, exist_ok=True)
        arch = self.settings.arch
        metadata = {
            "modelspec.title": output.stem,
            "modelspec.architecture": "stable-diffusion-v1",
            "modelspec.resolution": f"{arch.image_size}x{arch.image_size}",
            "modelspec.prediction_type": "epsilon",
            "demo.train_steps": str(self.settings.steps),
            "demo.vae_steps": str(self.settings.vae_steps),
            "demo.exported_at": f"{self.phase} step {self.step}",
            "demo.seed": str(self.settings.seed),
        }
        return export_single_file(
            output,
            "sd1",
            self.ema_unet.cpu().eval(),
            self.vae.cpu().eval(),
            self.ema_text.cpu().eval(),
            metadata=metadata,
            dtype=torch.float16 if half else None,
        )


def run(
    settings: TrainSettings,
    output: Path,
    device: torch.device,
    work_dir: Path,
    *,
    save_every: int = 500,
    log_every: int = 50,
    half: bool = True,
    export_only: bool = False,
    report: Callable[[str], None] = print_flushed,
) -> Trainer:
    """Train (resuming from ``work_dir`` when it holds this run) and export to ``output``.

    With ``export_only`` nothing is trained: the work folder's last saved diffusion state is exported
    as it is (to look at an unfinished run).
    """
    trainer = Trainer(settings, device, work_dir, save_every, log_every, report)
    state = _load_state(work_dir, settings.fingerprint())
    if state is not None:
        trainer.restore(state)
    if export_only:
        if trainer.phase == "vae":
            raise ValueError(f"export_only: {work_dir} holds no diffusion state of this run yet")
        path = trainer.export(output, half=half)
        report(f"wrote {path} from step {trainer.step} ({path.stat().st_size / 1e6:.1f} MB)")
        return trainer
    report(
        "parameters: "
        + ", ".join(
            f"{name} {parameter_count(m) / 1e6:.2f}M"
            for name, m in (("vae", trainer.vae), ("unet", trainer.unet), ("text", trainer.text_encoder))
        )
    )
    images, scenes = render_pool(settings)
    if trainer.phase == "vae":
        trainer.train_vae(images)
        cpu_vae = trainer.vae.cpu()
        before, after = normalise_latent_space(cpu_vae, images[:2048], float(cpu_vae.config.scaling_factor))
        trainer.vae.to(device)
        report(f"latent std x scaling: {before:.3f} -> {after:.3f}")
        trainer.phase, trainer.step = "diffusion", 0
        trainer._checkpoint()
    if trainer.phase == "diffusion":
        latents = trainer.encode_pool(images)
        trainer.train_diffusion(latents, scenes)
        trainer.phase = "done"
        trainer._checkpoint()
    path = trainer.export(output, half=half)
    report(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return trainer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the training script."""
    defaults = TrainSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=defaults.steps, help="diffusion training steps")
    p.add_argument("--vae-steps", type=int, default=defaults.vae_steps, help="VAE training steps")
    p.add_argument("--batch", type=int, default=defaults.batch, help="diffusion batch")
    p.add_argument("--vae-batch", type=int, default=defaults.vae_batch, help="VAE batch (of crops)")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--vae-lr", type=float, default=defaults.vae_lr)
    p.add_argument("--pool", type=int, default=defaults.pool, help="number of distinct training pictures")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "demo-model-train")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--fp32", action="store_true", help="export float32 weights instead of float16")
    p.add_argument("--export-only", action="store_true", help="export the work folder's state, no training")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m tools.demo_model.train [options]``."""
    args = parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainSettings(
        steps=args.steps,
        vae_steps=args.vae_steps,
        batch=args.batch,
        vae_batch=args.vae_batch,
        lr=args.lr,
        vae_lr=args.vae_lr,
        seed=args.seed,
        pool=args.pool,
    )
    run(
        settings,
        args.output,
        torch.device(args.device),
        args.work_dir,
        save_every=args.save_every,
        log_every=args.log_every,
        half=not args.fp32,
        export_only=args.export_only,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
