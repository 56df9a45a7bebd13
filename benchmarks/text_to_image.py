"""Text-to-image at a realistic shape: Stable Diffusion 1.5's layout (CLIP ViT-L/14 text encoder: 12 layers of 768;
UNet2DConditionModel with 3 cross-attention levels, 2 layers per block, cross-attention 768, 8 heads; the SD VAE)
with the UNet's channels scaled by --width (0.5: 160/320/640/640) and 256x256 images (32x32 latents), random init,
SD 1.5's scheduler settings, saved with save_pretrained.

    cd benchmarks && python text_to_image.py [--rounds 3] [--steps 10] [--width 0.5]

Prints, in one run:
- the export in a fresh process (`deploykit export diffusers:DIR`): wall and CPU seconds, peak RSS, bundle size;
- a whole sample in a fresh process each, `deploykit sample` against diffusers' StableDiffusionPipeline, each with
  its default threads (both cores): wall seconds and peak RSS (GNU time);
- in this process, one thread each, interleaved rounds (order alternating), median (p10-p90): one denoiser call at
  classifier-free guidance (2 rows, 77 tokens), ORT against the torch UNet; a whole DDIM run from the same latents
  through both, with the max abs difference of the images; loading (once); and the share of deploykit's host loop spent outside
  graph calls (the most an in-graph sampler could save).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from timing import ONE_THREAD, interleaved, spread

import deploykit
from deploykit.runtimes.diffusion import draw_noise, scheduler_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_text_to_image import SD15_SCHEDULE, clip_tokenizer_files  # noqa: E402  (the tests' CLIP vocabulary)

PROMPT, NEGATIVE, GUIDANCE = "an astronaut riding a horse on mars", "blue", 7.5


def save_pipeline(folder: Path, width: float) -> dict[str, int]:
    """The SD-1.5-shaped pipeline (UNet channels x width) saved as SD 1.x folders are; parameters per part."""
    torch.manual_seed(0)
    clip_tokenizer_files(folder / "tokenizer")
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu"))
    channels = tuple(int(c * width) // 32 * 32 for c in (320, 640, 1280, 1280))
    unet = diffusers.UNet2DConditionModel(
        sample_size=32, block_out_channels=channels, layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=256,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DDIMScheduler(**SD15_SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).save_pretrained(folder)
    (folder / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    clip_tokenizer_files(folder / "tokenizer")
    return {name: sum(p.numel() for p in part.parameters()) for name, part in
            (("text encoder", text), ("UNet", unet), ("VAE", vae))}


def measured(args: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of a command in a fresh process, by GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        run = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", report.name, *args], capture_output=True,
                             text=True)
        wall = time.perf_counter() - start
        if run.returncode:
            raise SystemExit(f"{args[:4]} failed:\n{run.stderr[-3000:]}")
        _, user, system, peak = report.read().split()[-4:]
        return wall, float(user) + float(system), int(peak) / 1024


DIFFUSERS_RUN = """
import sys, torch, diffusers
pipe = diffusers.StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None)
pipe.set_progress_bar_config(disable=True)
pipe({prompt!r}, negative_prompt={negative!r}, num_inference_steps={steps}, guidance_scale={guidance},
     generator=torch.Generator().manual_seed(0), output_type="np")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=float, default=0.5, help="UNet channels as a fraction of SD 1.5's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder, bundle = Path(tmp) / "pipe", Path(tmp) / "bundle"
        sizes = save_pipeline(folder, args.width)
        print("parameters: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in sizes.items()))
        wall, cpu, peak = measured([sys.executable, "-m", "deploykit", "export", f"diffusers:{folder}", "--out",
                                    str(bundle)])
        size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20
        weights = sum(sizes.values()) * 4 / 2**20
        print(f"\n| export | wall s | CPU-s | peak RSS MiB | bundle MiB |\n|---|---|---|---|---|\n"
              f"| deploykit export diffusers:DIR | {wall:.0f} | {cpu:.0f} | {peak:.0f} ({peak / weights:.1f}x the "
              f"{weights:.0f} MiB of fp32 weights) | {size:.0f} |")
        sample = [sys.executable, "-m", "deploykit", "sample", str(bundle), "--prompt", PROMPT, "--negative-prompt",
                  NEGATIVE, "--steps", str(args.steps), "--out", str(Path(tmp) / "grid.png")]
        script = DIFFUSERS_RUN.format(prompt=PROMPT, negative=NEGATIVE, steps=args.steps, guidance=GUIDANCE)
        print(f"\n| one image, {args.steps} DDIM steps, guidance {GUIDANCE}, fresh process | wall s | peak RSS MiB |\n"
              "|---|---|---|")
        for name, command in (("deploykit sample (ORT-CPU)", sample),
                              ("diffusers StableDiffusionPipeline (torch)",
                               [sys.executable, "-c", script, str(folder)])):
            wall, _, peak = measured(command)
            print(f"| {name} | {wall:.1f} | {peak:.0f} |")
        in_process(folder, bundle, args.steps, args.rounds)


def in_process(folder: Path, bundle: Path, steps: int, rounds: int) -> None:
    """Interleaved one-thread timings of one denoiser call and of a whole run, and the host loop's own share."""
    start = time.perf_counter()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    loads = {"diffusers": time.perf_counter() - start}
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    with deploykit.load(bundle, options=ONE_THREAD).open() as dep:
        loads["deploykit"] = time.perf_counter() - start
        loop = dep.bundle.loop
        options = dep.options(prompts=[PROMPT], negative_prompts=[NEGATIVE], steps=steps, guidance=GUIDANCE)
        scheduler = scheduler_for(loop, options)
        latents = draw_noise(loop.latent_shape, scheduler, 1, 0)[0] / np.float32(scheduler.init_noise_sigma)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((2, *loop.latent_shape), dtype=np.float32)
        states = rng.standard_normal((2, loop.tokens, 768), dtype=np.float32)
        t = np.full(2, 500.0, np.float32)
        net = dep.runner("denoiser")

        def torch_call() -> None:
            with torch.no_grad():
                pipe.unet(torch.from_numpy(x), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(states))

        def whole(engine: str) -> np.ndarray:
            if engine == "deploykit":
                return dep.sample(1, 0, dep.options(prompts=[PROMPT], negative_prompts=[NEGATIVE], steps=steps,
                                                    guidance=GUIDANCE, latents=latents))
            return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE,
                        latents=torch.from_numpy(latents), output_type="np").images.transpose(0, 3, 1, 2)

        net.infer({"x": x, "t": t, "encoder_hidden_states": states})
        torch_call()
        calls, _ = interleaved({"ORT": lambda: net.infer({"x": x, "t": t, "encoder_hidden_states": states}),
                                "torch": torch_call}, rounds)
        runs, images = interleaved({"deploykit": lambda: whole("deploykit"), "diffusers": lambda: whole("diffusers")},
                                   rounds)
        graph_seconds = [0.0]
        runners = dep.runners
        for role, runner in runners.items():
            infer = runner.infer

            def timed_infer(feeds: dict, checked: bool = False, _infer=infer) -> dict:  # type: ignore[no-untyped-def]
                start = time.perf_counter()
                out = _infer(feeds, checked)
                graph_seconds[0] += time.perf_counter() - start
                return out

            runner.infer = timed_infer  # type: ignore[method-assign]
        start = time.perf_counter()
        whole("deploykit")
        total = time.perf_counter() - start
    gap = float(np.abs(images["deploykit"] - images["diffusers"]).max())
    print(f"\n| one thread, {rounds} rounds interleaved | deploykit (ORT-CPU) | diffusers (torch eager) | "
          "diffusers / deploykit |\n|---|---|---|---|")
    print(f"| one denoiser call, CFG batch 2, 77 tokens (ms) | {spread(calls['ORT'])} | {spread(calls['torch'])} | "
          f"{np.median(calls['torch']) / np.median(calls['ORT']):.2f}x |")
    print(f"| whole run, {steps} DDIM steps + text encoder + VAE decoder (s) | {spread(runs['deploykit'], 1, '.2f')} | "
          f"{spread(runs['diffusers'], 1, '.2f')} | {np.median(runs['diffusers']) / np.median(runs['deploykit']):.2f}x |")
    print(f"| load (s, once: from_pretrained / deploykit.load with onnxruntime sessions) | {loads['deploykit']:.2f} | "
          f"{loads['diffusers']:.2f} | {loads['diffusers'] / loads['deploykit']:.2f}x |")
    print(f"\nimages from the same latents: max |deploykit - diffusers| = {gap:.2e} (pixels in [0, 1])")
    print(f"host loop outside graph calls: {(total - graph_seconds[0]) * 1e3:.1f} ms of {total:.2f} s "
          f"({100 * (total - graph_seconds[0]) / total:.3f} %): the most an in-graph sampler could save")


if __name__ == "__main__":
    main()
