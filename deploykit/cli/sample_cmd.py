"""`deploykit sample BUNDLE ...`: run the bundle's sampling loop (torch-free).

Generators, PixelCNN, FVSBN/NADE/MADE, image flows, diffusion, VAEs, RBMs and Hopfield networks write
an image grid; 2-D flows a density plot with the samples on it; WaveNet a WAV file; VRNNs write
trajectories; token LMs print text continuing --prompt; seq2seq bundles print the decoding of each
--prompt (greedy or --beam K). Diffusion loops show a progress bar.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..errors import InputError
from ..images import save_density_plot, save_samples
from ..runtimes import RunnerOptions
from ..runtimes.autoregressive import mu_law_decode, write_wav
from ..runtimes.deployment import Deployment, load
from ..runtimes.diffusion import DiffusionOptions
from ..runtimes.flows import density_grid
from ..runtimes.loops import LANGUAGE_MODELS, TRANSLATION_MODELS
from ..runtimes.tokens import MODES, encode_text, mode_config
from . import app, console
from .progress import progress_bar


def _write_text(out: Path, texts: list[str]) -> None:
    if out.suffix != ".txt":
        raise InputError(f"--out {out}: text models write .txt files; use a name ending in .txt.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(texts) + "\n")


def _size(text: str | None) -> tuple[int, int] | None:
    """'HxW' as (H, W)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 16x16.")
    return int(parts[0]), int(parts[1])


def _arrays(dep: Deployment, out: Path | None, n: int, seed: int, options: dict[str, object]) -> None:
    """Samples written as .png (image grid, or a density plot for 2-D flows), .npy or .wav (WaveNet)."""
    loop = dep.bundle.loop
    if out is None:
        raise InputError("--out is needed for this bundle: a .png grid or .npy array (.wav for WaveNet audio).")
    if loop["kind"] == "wavenet" and out.suffix not in (".wav", ".npy"):
        raise InputError(f"--out {out}: WaveNet writes audio as .wav (or its mu-law codes as .npy).")
    if loop["kind"] == "vrnn" and out.suffix != ".npy":
        raise InputError(f"--out {out}: VRNN trajectories are written as .npy [n, steps, x_dim].")
    if options.pop("interpolate"):
        if loop["kind"] != "vae":
            raise InputError("--interpolate is for VAE bundles (a path between two latents).")
        samples = dep.interpolate(n, seed, options["labels"])  # type: ignore[arg-type]
    else:
        with progress_bar("denoising" if loop["kind"] == "diffusion" else "sampling") as on_step:
            samples = dep.sample(n, seed, on_step=on_step, **options)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".wav":
        write_wav(out, mu_law_decode(samples, int(loop["levels"])), int(loop["sample_rate"]))
    elif loop["kind"] in ("vrnn", "wavenet") or out.suffix == ".npy":
        np.save(out, samples)
    elif loop["kind"] == "flow" and list(loop["event_shape"]) == [2]:
        if out.suffix != ".png":
            raise InputError(f"--out {out}: 2-D flow samples are written as a .png density plot or as .npy.")
        extent = float(np.quantile(np.abs(samples), 0.99)) * 1.3
        save_density_plot(samples, density_grid(dep.runners, loop, extent), extent, out)
    else:
        images = samples.reshape(n, *loop["image_shape"]) if "image_shape" in loop else samples
        if images.ndim != 4:
            raise InputError(f"--out {out}: these samples are vectors {list(samples.shape[1:])}; write them as .npy.")
        save_samples(images, out, loop.get("value_range", (0.0, 1.0)))
    console.print(f"wrote {n} samples {list(samples.shape[1:])} to {out}")


@app.command("sample")
def sample_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[Path | None, typer.Option(help="output: .png grid or .npy (images, trajectories); .wav (audio); .txt (text)")] = None,
    n: Annotated[int, typer.Option(help="number of samples (generators, VRNN)")] = 64,
    seed: Annotated[int, typer.Option(help="seed of the injected noise / uniforms (numpy PCG64)")] = 0,
    label: Annotated[int | None, typer.Option(help="class label for conditional generators (default: cycle)")] = None,
    steps: Annotated[int | None, typer.Option(help="VRNN length / WaveNet audio samples / diffusion steps (langevin: per level) / RBM Gibbs steps")] = None,
    ordering: Annotated[int, typer.Option(help="MADE: which ordering (mask set) of the ensemble samples")] = 0,
    naive: Annotated[bool, typer.Option(help="WaveNet: re-run the network over the receptive field per sample")] = False,
    prompt: Annotated[list[str] | None, typer.Option(help="text prompt (LM) or source (seq2seq); repeat for a batch")] = None,
    mode: Annotated[str, typer.Option(help=f"LM sampling mode: {', '.join(MODES)}")] = "top-p",
    temperature: Annotated[float | None, typer.Option(help="LM: override the mode's temperature (0 = greedy); flows: z ~ N(0, T^2) (default 1)")] = None,
    size: Annotated[str | None, typer.Option(help="image flows: sample at HEIGHTxWIDTH (multiples of the squeeze factor)")] = None,
    host_loop: Annotated[bool, typer.Option(help="MAF, diffusion, RBM: run the loop on the host, one graph call per step, instead of in the graph")] = False,
    scheduler: Annotated[str | None, typer.Option(help="diffusion: ddpm or ddim (score networks: langevin); default: the bundle's first")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM: 0 deterministic ... 1 DDPM-like (default 0)")] = None,
    guidance: Annotated[float | None, typer.Option(help="conditional diffusion: classifier-free guidance scale (1 = conditional, 0 = unconditional)")] = None,
    interpolate: Annotated[bool, typer.Option(help="VAE: decode --n points along the path between two seeded latents")] = False,
    top_k: Annotated[int | None, typer.Option(help="override: keep the k most likely tokens")] = None,
    top_p: Annotated[float | None, typer.Option(help="override: keep the smallest set with this much mass")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="LM: tokens to generate per prompt")] = 200,
    stop: Annotated[str | None, typer.Option(help="LM: characters that end a row (e.g. $'\\n')")] = None,
    beam: Annotated[int, typer.Option(help="seq2seq: beam size (1 = greedy)")] = 1,
    backend: Annotated[str, typer.Option(help="ort-cpu, ort-cuda, ort-trt or torch")] = "ort-cpu",
    check_finite: Annotated[bool, typer.Option(help="fail on NaN/Inf in any graph input or output")] = False,
) -> None:
    """Run the bundle's sampling loop: images, trajectories, generated text or decoded sequences."""
    with load(bundle, backend, RunnerOptions(check_finite=check_finite)) as dep:
        kind = dep.bundle.loop.get("kind")
        if kind not in (*LANGUAGE_MODELS, *TRANSLATION_MODELS):
            diffusion = None if (scheduler, eta, guidance) == (None, None, None) else DiffusionOptions(scheduler, eta, guidance)
            options = {"labels": None if label is None else np.asarray(label), "steps": steps, "ordering": ordering,
                       "fast": not naive, "size": _size(size), "host": host_loop, "diffusion": diffusion,
                       "interpolate": interpolate}
            _arrays(dep, out, n, seed, options | ({} if temperature is None else {"temperature": temperature}))
            return
        if not prompt:
            raise InputError("--prompt is needed for text models: the text to continue (LM) or to decode (seq2seq).")
        if kind in TRANSLATION_MODELS:
            texts = dep.translate(prompt, beam)
        else:
            vocab = dep.bundle.loop["vocab"]
            base = mode_config(mode, max_new_tokens, tuple(int(i) for i in encode_text(stop or "", vocab, "--stop")))
            overrides = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
            config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
            texts = [p + t for p, t in zip(prompt, dep.generate(prompt, config, seed))]
    for source, text in zip(prompt, texts):
        console.print(f"{source} -> {text}" if kind in TRANSLATION_MODELS else text, highlight=False, markup=False)
    if out is not None:
        _write_text(out, texts)
