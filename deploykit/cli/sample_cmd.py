"""`deploykit sample BUNDLE ...`: run the bundle's sampling loop (torch-free).

What a bundle samples and how it is written come from its loop kind (runtimes/kinds.py): image
grids (.png) or arrays (.npy), density plots for 2-D flows, WAV for WaveNet, .npy trajectories for
VRNNs; token LMs print text continuing --prompt, seq2seq bundles the decoding of each --prompt
(greedy or --beam K). Loops with a progress callback (diffusion) show a progress bar.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..api import load
from ..backends import RunnerOptions
from ..errors import InputError
from ..images import load_images
from ..runtimes.deployment import Deployment
from ..runtimes.kinds import OPTION_NAMES
from ..runtimes.tokens import MODES, mode_config
from . import SourceOption, app, console, err_console, torch_original
from .progress import progress_bar


def _ids(text: str) -> np.ndarray:
    """'15496,11,995' as token ids."""
    parts = [p.strip() for p in text.split(",")]
    if not all(re.fullmatch(r"[0-9]{1,18}", p) for p in parts):  # ASCII digits, within int64
        raise InputError(f"--prompt-ids {text!r}: expected comma-separated token ids >= 0, e.g. 15496,11,995.")
    return np.asarray([int(p) for p in parts], np.int64)


def _size(text: str | None) -> tuple[int, int] | None:
    """'HxW' as (H, W)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 16x16.")
    return int(parts[0]), int(parts[1])


def _refuse_unused(flags: dict[str, Any], takes: set[str], title: str) -> None:
    """InputError for a flag this bundle's loop does not use (given flags: not None, not False)."""
    unused = [flag for flag, value in flags.items() if value not in (None, False) and flag not in takes]
    if unused:
        raise InputError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to this {title} bundle; "
                         "drop it (`deploykit inspect` shows what the bundle does).")


def _samples(dep: Deployment, out: Path | None, n: int, seed: int, given: dict[str, Any], interpolate: bool) -> None:
    """Samples (or a VAE interpolation) written by the bundle kind's writer."""
    kind = dep.kind
    if out is None:
        raise InputError("--out is needed for this bundle: a .png grid or .npy array (.wav for WaveNet audio).")
    writer = kind.writer
    assert writer is not None  # every sampling kind has one (checked at registration)
    writer.check(out)
    if interpolate:
        unknown = set(given) - {"labels"}
        if unknown:
            raise InputError(f"{OPTION_NAMES[min(unknown)]} does not apply to --interpolate (a path between two VAE latents).")
        samples = dep.interpolate(n, seed, given.get("labels"))
    elif "on_step" in kind.option_fields():
        with progress_bar("sampling") as on_step:
            samples = dep.sample(n, seed, kind.make_options(given | {"on_step": on_step}))
    else:
        samples = dep.sample(n, seed, kind.make_options(given))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write(out, samples, dep.loop, dep.runners)
    console.print(f"wrote {n} samples {list(samples.shape[1:])} to {out}")


# sample --help groups its options by the bundles they apply to (`deploykit inspect BUNDLE` lists a bundle's own)
ALL = "Every bundle"
SAMPLE = "Sampling: generators, VAEs, autoregressive images and audio, flows, diffusion, RBMs, VRNN"
DIFFUSION = "Diffusion (ddpm, latent-diffusion, ncsn, text-to-image bundles)"
OTHER = "Flows, MADE, WaveNet and VAE bundles"
TEXT = "Language models (--prompt / --prompt-ids) and seq2seq (--prompt, --beam)"


@app.command("sample")
def sample_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[Path | None, typer.Option(help="output: .png grid or .npy (images, trajectories); .wav (audio); .txt (text)", rich_help_panel=ALL)] = None,
    n: Annotated[int | None, typer.Option(help="number of samples (default 64; text-to-image: one per --prompt)", rich_help_panel=SAMPLE)] = None,
    seed: Annotated[int, typer.Option(help="seed of the injected noise / uniforms (numpy PCG64)", rich_help_panel=ALL)] = 0,
    label: Annotated[int | None, typer.Option(help="class label for conditional generators (default: cycle)", rich_help_panel=SAMPLE)] = None,
    steps: Annotated[int | None, typer.Option(help="VRNN length / WaveNet audio samples / diffusion steps (langevin: per level) / RBM Gibbs steps", rich_help_panel=SAMPLE)] = None,
    ordering: Annotated[int | None, typer.Option(help="MADE: which ordering (mask set) of the ensemble samples", rich_help_panel=OTHER)] = None,
    naive: Annotated[bool, typer.Option(help="WaveNet: re-run the network over the receptive field per sample", rich_help_panel=OTHER)] = False,
    prompt: Annotated[list[str] | None, typer.Option(help="text prompt (LM, text-to-image) or source (seq2seq); repeat for a batch (text-to-image: cycled over --n)", rich_help_panel=TEXT)] = None,
    negative_prompt: Annotated[list[str] | None, typer.Option(help="text-to-image: what guidance steers away from (default: the empty prompt); repeat to cycle", rich_help_panel=DIFFUSION)] = None,
    init_image: Annotated[list[Path] | None, typer.Option(help="text-to-image: image-to-image from this PNG/JPEG (resized to the bundle's size); repeat to cycle", rich_help_panel=DIFFUSION)] = None,
    strength: Annotated[float | None, typer.Option(help="image-to-image: how much of the schedule runs, in (0, 1] (default 0.8)", rich_help_panel=DIFFUSION)] = None,
    prompt_ids: Annotated[list[str] | None, typer.Option(help="LM, seq2seq: a prompt (source) as token ids, e.g. 15496,11; repeat for a batch", rich_help_panel=TEXT)] = None,
    mode: Annotated[str, typer.Option(help=f"LM sampling mode: {', '.join(MODES)}", rich_help_panel=TEXT)] = "top-p",
    temperature: Annotated[float | None, typer.Option(help="LM: override the mode's temperature (0 = greedy); flows: z ~ N(0, T^2) (default 1)", rich_help_panel=TEXT)] = None,
    size: Annotated[str | None, typer.Option(help="image flows: sample at HEIGHTxWIDTH (multiples of the squeeze factor)", rich_help_panel=OTHER)] = None,
    host_loop: Annotated[bool, typer.Option(help="MAF, diffusion, RBM, small KV-cache LMs: run the loop on the host, one graph call per step, instead of in the graph", rich_help_panel=ALL)] = False,
    scheduler: Annotated[str | None, typer.Option(help="diffusion: ddpm, ddim, euler, euler-a, heun or dpm++2m (score networks: langevin); default: the bundle's first", rich_help_panel=DIFFUSION)] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM: 0 deterministic ... 1 DDPM-like (default 0)", rich_help_panel=DIFFUSION)] = None,
    karras: Annotated[bool | None, typer.Option("--karras/--no-karras", help="euler, euler-a, heun, dpm++2m: Karras sigmas (default: the scheduler config's)", rich_help_panel=DIFFUSION)] = None,
    clipped_model_output: Annotated[bool | None, typer.Option("--clipped-model-output/--no-clipped-model-output", help="DDIM: re-derive eps from the clipped x0 (default: the bundle's; diffusers: off)", rich_help_panel=DIFFUSION)] = None,
    guidance: Annotated[float | None, typer.Option(help="conditional diffusion: classifier-free guidance scale >= 0 (1 = conditional, 0 = unconditional, typical 5-9; text-to-image: default 7.5, <= 1 the prompt alone)", rich_help_panel=DIFFUSION)] = None,
    interpolate: Annotated[bool, typer.Option(help="VAE: decode --n points along the path between two seeded latents", rich_help_panel=OTHER)] = False,
    top_k: Annotated[int | None, typer.Option(help="override: keep the k most likely tokens", rich_help_panel=TEXT)] = None,
    top_p: Annotated[float | None, typer.Option(help="override: keep the smallest set with this much mass", rich_help_panel=TEXT)] = None,
    max_new_tokens: Annotated[int, typer.Option(help="LM: tokens to generate per prompt", rich_help_panel=TEXT)] = 200,
    stop: Annotated[str | None, typer.Option(help="LM: characters that end a row (e.g. $'\\n')", rich_help_panel=TEXT)] = None,
    beam: Annotated[int | None, typer.Option(help="seq2seq: beam size (1 = greedy; default: the bundle's, an hf:DIR folder's num_beams)", rich_help_panel=TEXT)] = None,
    backend: Annotated[str, typer.Option(help="ort-cpu, ort-cuda, ort-trt or torch", rich_help_panel=ALL)] = "ort-cpu",
    check_finite: Annotated[bool, typer.Option(help="fail on NaN/Inf in any graph input or output", rich_help_panel=ALL)] = False,
    source: SourceOption = None,
) -> None:
    """Run the bundle's sampling loop: images, trajectories, generated text or decoded sequences."""
    with load(bundle, backend, RunnerOptions(check_finite=check_finite), torch_original(source, bundle)) as dep:
        use = dep.kind.use
        text_flags = {"--prompt": prompt, "--prompt-ids": prompt_ids, "--mode": mode != "top-p", "--top-k": top_k,
                      "--top-p": top_p, "--max-new-tokens": max_new_tokens != 200, "--stop": stop, "--beam": beam}
        sample_flags = {"--n": n is not None, "--label": label, "--steps": steps, "--ordering": ordering, "--naive": naive,
                        "--size": size, "--host-loop": host_loop, "--scheduler": scheduler, "--eta": eta,
                        "--karras": karras, "--clipped-model-output": clipped_model_output, "--guidance": guidance,
                        "--interpolate": interpolate, "--negative-prompt": negative_prompt, "--init-image": init_image,
                        "--strength": strength}
        takes = {"sample": set(sample_flags) | {"--prompt"}, "generate": set(text_flags) - {"--beam"} | {"--host-loop"}, "translate": {"--prompt", "--prompt-ids", "--beam"}}
        _refuse_unused(text_flags | sample_flags, takes.get(use, set()), dep.kind.title)
        if use == "sample":
            given = {"labels": None if label is None else np.asarray(label), "steps": steps, "ordering": ordering,
                     "fast": False if naive else None, "temperature": temperature, "size": _size(size),
                     "host": True if host_loop else None, "scheduler": scheduler, "eta": eta, "karras": karras,
                     "clipped_model_output": clipped_model_output, "guidance": guidance, "prompts": prompt,
                     "negative_prompts": negative_prompt, "strength": strength,
                     "init_images": load_images(init_image, dep.loop.image_shape)
                     if init_image and "init_images" in dep.kind.option_fields() else init_image}  # else refused by name
            count = n if n is not None else len(prompt) if prompt else 64
            _samples(dep, out, count, seed, {k: v for k, v in given.items() if v is not None}, interpolate)
            return
        if use not in ("generate", "translate"):
            dep.require("sample")  # refuses, naming what this bundle can do
        if out is not None:
            dep.kind.writer.check(out)
        if bool(prompt) == bool(prompt_ids):
            raise InputError("give --prompt (text to continue or to decode) or --prompt-ids (token ids), one of the "
                             "two.")
        if use == "translate" and prompt_ids:  # ids in, ids out
            sources = [_ids(p) for p in prompt_ids]
            prompt = [",".join(str(int(i)) for i in p) for p in sources]
            texts = [",".join(str(int(i)) for i in t) for t in dep.translate_ids(sources, beam)]
        elif use == "translate":
            texts = dep.translate(prompt, beam)
        else:
            codec = dep.codec()
            base = mode_config(mode, max_new_tokens, tuple(int(i) for i in codec.encode(stop, "--stop")) if stop else ())
            overrides = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
            config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
            ids = [_ids(p) for p in prompt_ids] if prompt_ids else [codec.encode(p, special=True) for p in prompt]
            generated = dep.generate_ids(ids, config, seed, host_loop)
            if not codec.textual:  # no tokenizer: the ids are the output
                err_console.print("this bundle carries no tokenizer.json: printing the prompt and generated token ids",
                                  highlight=False, markup=False)
                texts = [",".join(str(int(i)) for i in (*p, *t)) for p, t in zip(ids, generated)]
            else:
                prompt = prompt or [codec.decode(i) for i in ids]
                texts = [p + codec.decode(t) for p, t in zip(prompt, generated)]
    for index, text in enumerate(texts):  # as they are: rich would drop control characters such as \r
        typer.echo(f"{prompt[index]} -> {text}" if use == "translate" else text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        dep.kind.writer.write(out, texts, dep.loop, dep.runners)
