"""diffusers:DIR end to end: a class-conditional UNet2DModel pipeline (random weights from a config, v-prediction,
scaled_linear betas, trailing spacing) saved with save_pretrained, exported, and every sampler run at guidance
7.5: max |deploykit - diffusers| for the host loop and the in-graph sampler (same noise), and wall time of
deploykit (ORT-CPU) against diffusers' own loop (its scheduler class over the torch UNet, eager).

    python benchmarks/diffusers_pipelines.py [--rounds 5] [--size 16]

One thread for both; timing interleaves deploykit and diffusers per round (order alternating), median and
p10-p90 over the rounds, batch 4 (8 UNet rows with guidance).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
from timing import interleaved, spread

import deploykit
from deploykit.backends import RunnerOptions
from deploykit.exporters.diffusers import reference_loop
from deploykit.runtimes.diffusion import DiffusionOptions, draw_noise, scheduler_for
from deploykit.sources import resolve

RUNS = [("ddpm", 50, {}), ("ddim", 50, {}), ("ddim", 50, {"eta": 0.6}), ("euler", 30, {}), ("euler", 30, {"karras": True}),
        ("euler-a", 30, {}), ("heun", 15, {}), ("heun", 15, {"karras": True}), ("dpm++2m", 20, {}),
        ("dpm++2m", 20, {"karras": True})]
N, GUIDANCE = 4, 7.5


def _pipeline(folder: Path, size: int) -> Path:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8, num_class_embeds=11)
    scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=16, help="image side of the UNet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    labels = np.arange(N) % 10
    with tempfile.TemporaryDirectory() as tmp:
        folder = _pipeline(Path(tmp) / "pipe", args.size)
        resolved = resolve(f"diffusers:{folder}")
        start = time.perf_counter()
        bundle = deploykit.export(resolved.model, resolved.family, Path(tmp) / "bundle", source=resolved.source)
        print(f"export: {time.perf_counter() - start:.1f} s; UNet {sum(p.numel() for p in resolved.model.parameters())/1e6:.2f}M "
              f"parameters, images 3x{args.size}x{args.size}, {N} samples, guidance {GUIDANCE}, 1 thread")
        print(f"{'sampler':<20} {'calls':>5} {'host |diff|':>11} {'graph |diff|':>12} {'deploykit host ms':>22} "
              f"{'in-graph ms':>22} {'diffusers ms':>22} {'diffusers/host':>14}")
        with deploykit.load(bundle.path, options=RunnerOptions(threads=1)) as dep:
            for name, steps, extra in RUNS:
                options = dict(labels=labels, steps=steps, scheduler=name, guidance=GUIDANCE, **extra)
                sched = scheduler_for(dep.bundle.loop, DiffusionOptions(**options))
                x_t, noise = draw_noise(dep.bundle.loop.event_shape, sched, N, 0)
                x_t = x_t / np.float32(sched.init_noise_sigma)
                variants = {
                    "host": lambda: dep.sample(N, 0, dep.options(host=True, **options)),
                    "graph": lambda: dep.sample(N, 0, dep.options(**options)),
                    "diffusers": lambda: reference_loop(resolved.model, name, steps, x_t, noise, labels, GUIDANCE, **extra),
                }
                times, results = interleaved(variants, args.rounds)
                ref = results["diffusers"]
                title = f"{name}-{steps}" + (" Karras" if extra.get("karras") else "") + (" eta 0.6" if "eta" in extra else "")
                print(f"{title:<20} {len(sched.timesteps):>5} {np.abs(results['host'] - ref).max():>11.1e} "
                      f"{np.abs(results['graph'] - ref).max():>12.1e} {spread(times['host'], fmt='.0f'):>22} {spread(times['graph'], fmt='.0f'):>22} "
                      f"{spread(times['diffusers'], fmt='.0f'):>22} {np.median(times['diffusers']) / np.median(times['host']):>13.2f}x")


if __name__ == "__main__":
    main()
