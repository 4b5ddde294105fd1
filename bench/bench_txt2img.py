#!/usr/bin/env python3
"""txt2img speed: our engine against plain diffusers pipelines, same weights, interleaved in one process.

    python bench/bench_txt2img.py                      # CPU: a small random SD1-shaped model, 256x256
    python bench/bench_txt2img.py --size full --device cuda --dtype fp16 --family sd1   # SD1.5 512x512
    python bench/bench_txt2img.py --size full --device cuda --dtype fp16 --family sdxl  # SDXL 1024x1024

The checkpoint is written in the single-file layout with random weights and loaded through our model
manager; the diffusers pipeline is built from the very same modules (so weights are shared exactly).
Samplers: Euler (vs EulerDiscreteScheduler) and DPM++ 2M Karras (vs DPMSolverMultistepScheduler with
Karras sigmas). Prints seconds per image, it/s and the ratio ours/diffusers (<= 1.0 means we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SMALL_SD1 = {
    "unet": dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 sample_size=32, in_channels=4, out_channels=4),
    "vae": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=12,
                 hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77),
}  # fmt: skip


def build_checkpoint(path: Path, family: str, size: str, device: str = "cpu") -> None:
    """Write a random-weight single-file checkpoint of the requested shape (random numbers drawn on ``device``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from webui.models.ldm_export import export_single_file

    if size == "small" and family == "sd1":
        g = torch.Generator().manual_seed(0)
        unet = UNet2DConditionModel(**SMALL_SD1["unet"])
        vae = AutoencoderKL(**SMALL_SD1["vae"])
        te = CLIPTextModel(CLIPTextConfig(**SMALL_SD1["text"]))
        for module in (unet, vae, te):
            for p in module.parameters():
                p.data = torch.randn(p.shape, generator=g) * 0.02
        export_single_file(path, "sd1", unet, vae, te)
        return
    sys.path.insert(0, str(ROOT))
    from tests.factories import FULL_SIZE_CONFIGS, _build_components

    with torch.device(device):  # initialising 1-3 B parameters on a GPU takes seconds instead of minutes
        comps = _build_components(FULL_SIZE_CONFIGS[family], False)
        for module in comps.values():
            for p in module.parameters():
                p.data = torch.randn(p.shape, dtype=torch.float16) * 0.02
    export_single_file(
        path,
        family,
        comps["unet"],
        comps["vae"],
        comps["text_encoder"],
        comps.get("text_encoder_2"),
        dtype=torch.float16,
    )


def diffusers_pipeline(model, scheduler_kind: str):
    """A diffusers pipeline over our loaded modules, with the scheduler equivalent to our sampler."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    from webui.models.configs import scheduler_config

    base = scheduler_config(model.spec)
    base.pop("_class_name")
    if scheduler_kind == "euler":
        scheduler = EulerDiscreteScheduler(
            **{k: v for k, v in base.items() if k != "use_karras_sigmas"},
        )
    else:
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=base["num_train_timesteps"], beta_start=base["beta_start"], beta_end=base["beta_end"],
            beta_schedule="scaled_linear", prediction_type=base["prediction_type"], algorithm_type="dpmsolver++",
            solver_order=2, use_karras_sigmas=True, final_sigmas_type="zero", steps_offset=1,
        )  # fmt: skip
    if model.spec.is_sdxl:
        return StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=model.unet, scheduler=scheduler,
        )  # fmt: skip
    return StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def profile_run(fn, device: torch.device, table: Path, title: str) -> dict[str, float]:
    """One run under torch.profiler: wall time, summed device-kernel time and host<->device syncs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t
    events = prof.key_averages()
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("a") as f:
        f.write(f"\n===== {title}\n{events.table(sort_by='self_cpu_time_total', row_limit=40)}\n")
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    syncs = sum(
        e.count
        for e in events
        if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync")
    )
    return {"wall_s": round(wall, 4), "kernel_s": round(kernel_us / 1e6, 4), "sync_or_copy_calls": syncs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("sd1", "sdxl"), default="sd1")
    ap.add_argument("--size", choices=("small", "full"), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--no-cuda-graphs", action="store_true", help="run our UNet eagerly (Settings > Optimizations)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--profile", type=Path, default=None,
                    help="also profile one run of each engine per setting; tables are appended to this file")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width = args.width or (256 if args.size == "small" else 1024 if args.family == "sdxl" else 512)

    from webui.config.flags import parse_flags
    from webui.config.options import Options
    from webui.context import build_context
    from webui.engine.params import GenerationParams
    from webui.engine.processing import generate
    from webui.models import devices

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    flag_list = ["--data-dir", str(work)]
    if args.device == "cpu":
        flag_list += ["--use-cpu", "all"]
    if args.dtype == "fp32":
        flag_list += ["--no-half"]
    elif args.dtype == "bf16":
        flag_list += ["--precision", "bf16"]
    ctx = build_context(
        parse_flags(flag_list),
        work,
        options=Options(
            None, {"samples_save": False, "grid_save": False, "cuda_graphs": not args.no_cuda_graphs}
        ),
    )
    ckpt = ctx.paths.ckpt_dirs[0] / f"bench-{args.family}-{args.size}.safetensors"
    t0 = time.perf_counter()
    build_checkpoint(ckpt, args.family, args.size, args.device)
    print(f"checkpoint written in {time.perf_counter() - t0:.1f}s ({ckpt.stat().st_size / 1e6:.0f} MB)")
    model = ctx.models.load()
    device = model.device
    print(f"loaded {model.spec.label} on {device} ({model.dtype}) in {model.load_seconds:.2f}s")
    prompt, negative = "a red circle on a blue background, (masterpiece:1.2)", "blurry"
    services = ctx.engine_services()
    results = []
    for batch in args.batch:
        for sampler, kind in (("Euler", "euler"), ("DPM++ 2M", "dpmpp_2m")):
            pipe = diffusers_pipeline(model, kind)
            pipe.set_progress_bar_config(disable=True)
            ours_t, theirs_t = [], []

            params = GenerationParams(prompt=prompt, negative_prompt=negative, sampler_name=sampler,
                         scheduler="Karras" if kind == "dpmpp_2m" else "Automatic", steps=args.steps, cfg_scale=7.0,
                         width=width, height=width, batch_size=batch, seed=1)  # fmt: skip

            def ours(params: GenerationParams = params) -> None:
                generate(services, params)

            def theirs(pipe=pipe, batch: int = batch) -> None:
                g = torch.Generator(device="cpu").manual_seed(1)
                # diffusers' SDXL pipeline expects its VAE in the model's half dtype and upcasts it itself
                # (force_upcast); our loader keeps that VAE in fp32, so hand it over as diffusers expects.
                vae_dtype = next(model.vae.parameters()).dtype
                swap = model.spec.is_sdxl and model.dtype == torch.float16 and vae_dtype != torch.float16
                if swap:
                    model.vae.to(torch.float16)
                try:
                    pipe(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=7.0,
                         width=width, height=width, num_images_per_prompt=batch, generator=g, output_type="pil")  # fmt: skip
                finally:
                    if swap:
                        model.vae.to(vae_dtype)

            peaks = {}
            # warm-up (kernels, allocator) and peak VRAM of each
            for name, fn in (("ours", ours), ("diffusers", theirs)):
                devices.synchronize(device)
                devices.reset_peak_memory(device)
                fn()
                devices.synchronize(device)
                peaks[name] = devices.peak_memory_bytes(device) / 2**30
            for _ in range(args.repeats):  # interleaved so drift hits both equally
                for fn, acc in ((ours, ours_t), (theirs, theirs_t)):
                    devices.synchronize(device)
                    t = time.perf_counter()
                    fn()
                    devices.synchronize(device)
                    acc.append(time.perf_counter() - t)
            o, d = statistics.median(ours_t), statistics.median(theirs_t)
            row = {
                "family": args.family, "size": args.size, "device": str(device), "dtype": args.dtype, "width": width,
                "batch": batch, "sampler": sampler, "steps": args.steps,
                "ours_s_per_image": o / batch, "diffusers_s_per_image": d / batch,
                "ours_it_s": args.steps / o, "diffusers_it_s": args.steps / d, "ratio": o / d,
                "ours_peak_vram_gb": peaks["ours"], "diffusers_peak_vram_gb": peaks["diffusers"],
                "ours_runs_s": ours_t, "diffusers_runs_s": theirs_t,
            }  # fmt: skip
            if args.profile:
                row["profile"] = {name: profile_run(fn, device, args.profile, f"{name} {sampler} batch {batch}")
                                  for name, fn in (("ours", ours), ("diffusers", theirs))}  # fmt: skip
                print(f"  profile: {row['profile']}")
            results.append(row)
            if args.json:  # after every row, so a run cut short still leaves its numbers
                args.json.write_text(json.dumps(results, indent=2))
            print(f"{sampler:9s} batch {batch}: ours {o / batch:.3f} s/img ({row['ours_it_s']:.2f} it/s)  "
                  f"diffusers {d / batch:.3f} s/img ({row['diffusers_it_s']:.2f} it/s)  ratio {o / d:.3f}  "
                  f"peak VRAM ours {peaks['ours']:.2f} / diffusers {peaks['diffusers']:.2f} GiB", flush=True)  # fmt: skip
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
