"""Train the small CLIP contrastively on the procedural scenes and save it as a transformers folder.

Each batch pairs freshly rendered training scenes with their captions (complete half of the time, with
details left out otherwise); the loss is CLIP's symmetric cross-entropy over the batch. Deterministic for
a given seed and device; held-out scenes are never shown. Progress is saved to a work folder every
``--save-every`` steps; running the same command again resumes.

    python -m tools.demo_model.train_clip --steps 2000 --output models/demo/demo-clip-v1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tools.demo_model.architecture import EOS_ID, frame_token_ids, load_tokenizer
from tools.demo_model.clip_model import DEFAULT_CLIP_DIR, build_clip, pixel_values, save_clip
from tools.demo_model.dataset import caption, render, training_scene
from tools.demo_model.train import learning_rate, print_flushed

CLIP_STREAM = 3  # keeps the CLIP's picture stream apart from the diffusion model's
STATE_FILE = "clip_state.pt"


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Drop the trailing columns that hold only padding, keeping each row's first ``EOS``.

    The text tower is causal and pools at the first ``EOS``, so its features are unchanged (and training
    is several times cheaper than on all 77 positions).
    """
    length = int((ids != EOS_ID).sum(dim=1).max()) + 1
    return ids[:, :length]


def clip_batch(seed: int, step: int, batch: int, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Pictures and captions of one training step (a pure function of its arguments)."""
    rng = np.random.default_rng([seed, CLIP_STREAM, step])
    scenes = [training_scene(seed + 1, step * batch + i) for i in range(batch)]
    captions = [caption(scene, rng if rng.random() < 0.5 else None) for scene in scenes]
    return pixel_values([render(scene, image_size) for scene in scenes], image_size), captions


def train_clip(
    steps: int,
    batch: int,
    seed: int,
    device: torch.device,
    tokenizer_dir: Path,
    *,
    lr: float = 1e-3,
    log_every: int = 50,
    work_dir: Path | None = None,
    save_every: int = 250,
    report: Callable[[str], None] = print_flushed,
) -> tuple[torch.nn.Module, list[tuple[int, float]]]:
    """Train a fresh small CLIP; returns it and the logged (step, mean loss) pairs.

    With ``work_dir``, the state is saved there every ``save_every`` steps and a run with the same
    arguments resumes from it.
    """
    model = build_clip(torch.Generator().manual_seed(seed)).to(device).train()
    tokenizer = load_tokenizer(tokenizer_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    image_size = model.config.vision_config.image_size
    losses: list[tuple[int, float]] = []
    fingerprint = repr((steps, batch, seed, lr))
    first = 0
    state_path = work_dir / STATE_FILE if work_dir is not None else None
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            first = int(state["step"])
            losses = [(int(s), float(v)) for s, v in state["losses"]]
            report(f"resumed clip at step {first}")
    running, started = 0.0, time.perf_counter()
    for step in range(first, steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(lr, step, steps, min(200, steps // 10 + 1))
        pixels, captions = clip_batch(seed, step, batch, image_size)
        ids = trim_padding(frame_token_ids(tokenizer, captions))
        out = model(input_ids=ids.to(device), pixel_values=pixels.to(device))
        logits = out.logits_per_image
        # identical captions in one batch are both right answers: soft targets over the duplicates
        same = torch.tensor(
            [[a == b for b in captions] for a in captions], dtype=torch.float32, device=device
        )
        soft = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (
            torch.nn.functional.cross_entropy(logits, soft)
            + torch.nn.functional.cross_entropy(logits.T, soft)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, float(np.log(100.0)))
        running += float(loss.detach())
        if (step + 1) % log_every == 0:
            speed = log_every / max(1e-9, time.perf_counter() - started)
            losses.append((step + 1, running / log_every))
            report(f"clip step {step + 1}: loss {running / log_every:.4f} ({speed:.2f} it/s)")
            running, started = 0.0, time.perf_counter()
        if state_path is not None and ((step + 1) % save_every == 0 or step + 1 == steps):
            state_path.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "fingerprint": fingerprint,
                "step": step + 1,
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "losses": [list(entry) for entry in losses],
            }
            torch.save(state, state_path.with_suffix(".tmp"))
            os.replace(state_path.with_suffix(".tmp"), state_path)
    return model.eval(), losses


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m tools.demo_model.train_clip [options]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--output", type=Path, default=DEFAULT_CLIP_DIR)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "demo-clip-train")
    args = p.parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = train_clip(
        args.steps,
        args.batch,
        args.seed,
        torch.device(args.device),
        Path(tempfile.gettempdir()) / "demo-clip-tokenizer",
        lr=args.lr,
        log_every=args.log_every,
        work_dir=args.work_dir,
        save_every=args.save_every,
    )
    save_clip(model.cpu(), args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
