"""`deploykit sample BUNDLE ...`: run the bundle's sampling loop (torch-free).

Generators write an image grid; VRNNs write trajectories; token LMs print text continuing
--prompt; seq2seq bundles print the decoding of each --prompt (greedy or --beam K).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..errors import InputError
from ..images import save_samples
from ..runtimes import RunnerOptions
from ..runtimes.deployment import Deployment, load
from ..runtimes.loops import LANGUAGE_MODELS, TRANSLATION_MODELS
from ..runtimes.tokens import MODES, encode_text, mode_config
from . import app, console


def _write_text(out: Path, texts: list[str]) -> None:
    if out.suffix != ".txt":
        raise InputError(f"--out {out}: text models write .txt files; use a name ending in .txt.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(texts) + "\n")


def _arrays(dep: Deployment, out: Path | None, n: int, seed: int, label: int | None, steps: int | None) -> None:
    if out is None:
        raise InputError("--out is needed for this bundle: a .png grid or .npy array (.npy for VRNN trajectories).")
    samples = dep.sample(n, seed, None if label is None else np.asarray(label), steps)
    if dep.bundle.loop["kind"] == "vrnn":
        if out.suffix != ".npy":
            raise InputError(f"--out {out}: VRNN trajectories are written as .npy [n, steps, x_dim].")
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, samples)
        path = out
    else:
        path = save_samples(samples, out, dep.bundle.loop.get("value_range", (0.0, 1.0)))
    console.print(f"wrote {n} samples {list(samples.shape[1:])} to {path}")


@app.command("sample")
def sample_cmd(
    bundle: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[Path | None, typer.Option(help="output: .png grid or .npy (images, trajectories); .txt (text)")] = None,
    n: Annotated[int, typer.Option(help="number of samples (generators, VRNN)")] = 64,
    seed: Annotated[int, typer.Option(help="seed of the injected noise / uniforms (numpy PCG64)")] = 0,
    label: Annotated[int | None, typer.Option(help="class label for conditional generators (default: cycle)")] = None,
    steps: Annotated[int | None, typer.Option(help="trajectory length for VRNN (default: the model's)")] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="text prompt (LM) or source (seq2seq); repeat for a batch")] = None,
    mode: Annotated[str, typer.Option(help=f"LM sampling mode: {', '.join(MODES)}")] = "top-p",
    temperature: Annotated[float | None, typer.Option(help="override the mode's temperature (0 = greedy)")] = None,
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
            _arrays(dep, out, n, seed, label, steps)
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
