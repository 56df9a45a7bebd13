"""Pruning a torch model before export: magnitude (unstructured, Han et al. 2015), structured (whole channels and
neurons by filter norm, Li et al. 2017, with torch-pruning's dependency graph, Fang et al. 2023), and the lottery
ticket's rewinding (Frankle & Carbin 2019).

What is pruned: magnitude pruning zeroes the smallest |w| of every floating parameter with two or more non-unit
dimensions (Linear and conv kernels, embeddings, RBM and NADE matrices), never biases, norms or scales; a module
that sets `no_prune = True` is left whole (Glow's invertible 1x1 convolution: a zero there can make it singular).
Structured pruning removes output channels of Linear/conv layers where the family allows it (`Family.structured`:
the feed-forward families), never the channels a model output is made of. The pruned model is an ordinary module:
the normal export proves its parity, and its weights live in a deploykit checkpoint that records the pruning.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from .checks import check_int
from .errors import InputError, choices, optional_import
from .exporters.onnx_export import prepare

METHODS = ("magnitude", "structured")
SCOPES = ("global", "layer")
NORMS = (1, 2)
MAX_FINETUNE = 1_000_000  # steps: the zoo trains in 200-2000
MAX_ITERATIONS = 1_000_000  # timed ORT calls per variant and batch


@dataclass(frozen=True)
class PruneOptions:
    """How to prune: the fraction of weights (magnitude) or of each layer's channels (structured) to remove, global
    or per-layer thresholds (magnitude), the filter norm ranking channels (structured), fine-tuning steps after."""

    sparsity: float
    method: str = "magnitude"
    scope: str = "global"
    norm: int = 1
    finetune: int = 0
    round_to: int = 1  # structured: keep channel counts multiples of this (onnxruntime's blocked convolutions: 8, 16)

    def check(self) -> None:
        """InputError naming the first option out of range."""
        if not isinstance(self.sparsity, int | float) or not math.isfinite(self.sparsity) or not 0 <= self.sparsity < 1:
            raise InputError(f"--sparsity is {self.sparsity!r}, expected a fraction in [0, 1) of the weights to remove "
                             "(0.9 keeps one weight in ten; 1 would remove them all).")
        if self.method not in METHODS:
            raise InputError(f"--method {self.method!r} is unknown; choose one of {choices(METHODS)}.")
        if self.scope not in SCOPES:
            raise InputError(f"--scope {self.scope!r} is unknown; choose one of {choices(SCOPES)}.")
        if self.norm not in NORMS:
            raise InputError(f"--norm {self.norm!r} is unknown; choose one of {choices(NORMS)} (L1 or L2 filter norm).")
        check_int("--finetune", self.finetune, 0, MAX_FINETUNE, "training steps after pruning")
        check_int("--round-to", self.round_to, 1, 1024, "structured: channel counts kept multiples of it")


def folded(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """`model` with its parametrizations (weight norm, ...) folded into plain trainable weights (a copy when there are
    any) and the folded modules' names. Pruning acts on the weights the model computes with: zeroing a weight-norm
    direction would rescale the rest of its row."""
    names = [name for name, module in model.named_modules() if parametrize.is_parametrized(module)
             or any(type(h).__name__ == "WeightNorm" for h in module._forward_pre_hooks.values())]
    if not names:
        return model, []
    return prepare(model).requires_grad_(True), names


def prunable(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Qualified name -> (module, parameter name) of every weight magnitude pruning may zero."""
    found: dict[str, tuple[nn.Module, str]] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        if getattr(module, "no_prune", False):
            return
        for pname, param in module.named_parameters(recurse=False):
            if param.is_floating_point() and sum(d > 1 for d in param.shape) >= 2:
                found[f"{prefix}{pname}"] = (module, pname)
        for cname, child in module.named_children():
            walk(child, f"{prefix}{cname}.")

    walk(model, "")
    return found


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Name -> bool mask keeping the largest |w|: exactly round(sparsity * n) weights removed, over all weights
    together (global) or in each tensor (layer); ties broken by position, so the count is exact."""
    if scope == "layer":
        return {n: _keep_largest(w.detach().abs().flatten(), sparsity).reshape(w.shape) for n, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep, start, masks = _keep_largest(flat, sparsity), 0, {}
    for name, w in weights.items():
        masks[name] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks


def _keep_largest(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    removed = round(sparsity * magnitudes.numel())
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool)
    keep[torch.argsort(magnitudes, stable=True)[:removed]] = False
    return keep


def random_masks(weights: dict[str, torch.Tensor], like: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Masks with the same number of kept weights per tensor as `like`, placed at random (the lottery baseline)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        keep = torch.zeros(w.numel(), dtype=torch.bool)
        keep[torch.randperm(w.numel(), generator=gen)[:int(like[name].sum())]] = True
        out[name] = keep.reshape(w.shape)
    return out


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked-out weights of `model` in place."""
    layers = prunable(model)
    with torch.no_grad():
        for name, mask in masks.items():
            module, pname = layers[name]
            getattr(module, pname).mul_(mask.to(getattr(module, pname).dtype))


@contextmanager
def held(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Keep the masked-out weights at zero while any training loop runs on `model` (torch's pruning
    reparametrization: weight = weight_orig * mask), folded back into plain weights after."""
    layers = prunable(model)
    for name, mask in masks.items():
        module, pname = layers[name]
        torch_prune.custom_from_mask(module, pname, mask)
    try:
        yield model
    finally:
        for name in masks:
            module, pname = layers[name]
            torch_prune.remove(module, pname)


def sparsity_by_layer(original: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """Per prunable weight of `original`: its name, shape before and after, and the fraction of its weights gone
    (zeroed, or removed with their channels)."""
    after = {name: getattr(m, p).detach() for name, (m, p) in prunable(pruned).items()}
    rows = []
    for name, (module, pname) in prunable(folded(original)[0]).items():
        before, w = getattr(module, pname), after.get(name)
        kept = 0 if w is None else int((w != 0).sum())
        rows.append({"name": name, "shape": list(before.shape), "shape_after": None if w is None else list(w.shape),
                     "params": before.numel(), "sparsity": 1 - kept / max(1, before.numel())})
    return rows


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters) of `model`."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int((p != 0).sum())
    return total, nonzero


def _torch_pruning() -> Any:
    return optional_import("torch_pruning", "--method structured needs torch-pruning: `pip install deploykit[prune]`.")


def _output_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    with torch.no_grad():
        out = model(*inputs)
    return [tuple(t.shape) for t in (out if isinstance(out, tuple | list) else (out,))]


def fixed_layers(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """The Linear/conv layers whose output channels cannot go: removing one channel of their dependency group (on a
    copy) changes a model output's shape (the channels an output is made of) or breaks the forward (a coupling the
    dependency graph does not see, e.g. max-unpooling indices from another layer). These are never pruned."""
    tp = _torch_pruning()
    expected = _output_shapes(model, inputs)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)]
    found = []
    for name in names:
        trial = copy.deepcopy(model)
        layer = trial.get_submodule(name)
        graph = tp.DependencyGraph().build_dependency(trial, example_inputs=inputs)
        fn = graph.get_pruner_of_module(layer).prune_out_channels  # conv, transposed conv or linear: tp's own
        group = graph.get_pruning_group(layer, fn, idxs=[0])
        group.prune()
        try:
            fits = _output_shapes(trial, inputs) == expected
        except RuntimeError:
            fits = False
        if not fits:
            found.append(model.get_submodule(name))
    return found


def prune_structured(model: nn.Module, inputs: tuple[torch.Tensor, ...], options: PruneOptions) -> None:
    """Remove `options.sparsity` of the output channels of every Linear/conv layer not feeding a model output, in
    place, ranked by the L1/L2 norm of each channel's weights over its dependency group (torch-pruning)."""
    tp = _torch_pruning()
    model.eval()
    importance = tp.importance.MagnitudeImportance(p=options.norm)
    expected = _output_shapes(model, inputs)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(model, inputs, importance=importance, pruning_ratio=options.sparsity,
                                  global_pruning=options.scope == "global", ignored_layers=fixed_layers(model, inputs),
                                  round_to=options.round_to if options.round_to > 1 else None)
    pruner.step()
    try:
        fits = _output_shapes(model, inputs) == expected
    except RuntimeError as exc:
        raise InputError(f"structured pruning broke {type(model).__name__}'s forward ({str(exc)[:200]}); use "
                         "--method magnitude.") from exc
    if not fits:
        raise InputError(f"structured pruning changed {type(model).__name__}'s output shapes; use --method magnitude.")
    if sum(p.numel() for p in model.parameters()) == before:
        raise InputError(f"structured pruning at sparsity {options.sparsity:g} removed no channel of "
                         f"{type(model).__name__} (with --round-to {options.round_to}, a layer keeps a multiple of it, "
                         "and layers feeding an output are kept whole); lower --round-to or raise the sparsity.")


def resize_like(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give `model`'s parameters and buffers the shapes they have in `state` (a structurally pruned state dict), and
    its Linear, conv and LayerNorm layers the sizes their weights now have, so that `load_state_dict(state)` fits."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for tensors in (module._parameters, module._buffers):
            for key, tensor in list(tensors.items()):
                saved = state.get(prefix + key)
                if tensor is None or saved is None or saved.shape == tensor.shape:
                    continue
                fresh = torch.empty(saved.shape, dtype=tensor.dtype)
                tensors[key] = nn.Parameter(fresh, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else fresh
        weight = module._parameters.get("weight")
        if weight is None:
            continue
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = int(weight.shape[0]), int(weight.shape[1])
        elif isinstance(module, nn.modules.conv._ConvNd):  # kernels are [out, in/groups] ([in, out/groups] transposed)
            first, second = int(weight.shape[0]), int(weight.shape[1]) * module.groups
            module.in_channels, module.out_channels = (first, second) if module.transposed else (second, first)
        elif isinstance(module, nn.LayerNorm):
            module.normalized_shape = tuple(weight.shape)


def prune_model(model: nn.Module, options: PruneOptions,
                structured_inputs: Callable[[nn.Module], tuple[torch.Tensor, ...]] | None,
                finetune: Callable[[nn.Module, int], Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """`model` pruned by `options` and fine-tuned (masks held) when asked (in place, or a copy where parametrizations
    had to be folded), and the record a pruned checkpoint keeps to rebuild it. `structured_inputs(model)` gives example
    inputs for tracing; None: the family's graphs cannot lose channels."""
    options.check()
    if not any(True for _ in model.parameters()):
        raise InputError(f"{type(model).__name__} has no trained parameters to prune (its weights are buffers, e.g. "
                         "a Hopfield network's stored patterns).")
    if options.method == "structured" and structured_inputs is None:
        raise InputError("--method structured removes whole channels, which this family's graphs cannot lose "
                         "(masked autoregressive orderings, recurrent and attention state, flow invertibility, loop "
                         "configs, an autoencoder's code); use --method magnitude.")
    model, folds = folded(model)
    if options.method == "magnitude":
        weights = {n: getattr(m, p) for n, (m, p) in prunable(model).items()}
        if not weights:
            raise InputError(f"{type(model).__name__} has no weight matrices or kernels to prune (only biases, norms "
                             "or layers marked no_prune).")
        masks = magnitude_masks(weights, options.sparsity, options.scope)
        apply_masks(model, masks)
        if options.finetune:
            with held(model, masks):
                _finetune(finetune, model, options.finetune)
    else:
        prune_structured(model, structured_inputs(model), options)
        if options.finetune:
            _finetune(finetune, model, options.finetune)
    return model.eval(), {"method": options.method, "scope": options.scope, "sparsity": options.sparsity,
                          "norm": options.norm, "finetune": options.finetune, "round_to": options.round_to,
                          "folded": folds}


def _finetune(finetune: Callable[[nn.Module, int], Any] | None, model: nn.Module, steps: int) -> None:
    if finetune is None:
        raise InputError("--finetune needs a training loop: zoo models bring theirs; for your own model, prune it from "
                         "Python and train it with the masks held (`with deploykit.pruning.held(model, masks): ...`).")
    finetune(model, steps)


def pruned_architecture(model: nn.Module, record: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The architecture a pruned checkpoint's weights fit: `model` (built from its zoo config) with parametrizations
    folded as at pruning, every tensor resized to `state`'s shapes."""
    if record.get("folded"):
        model, _ = folded(model)
    resize_like(model, state)
    return model


@dataclass
class PruneReport:
    """What a prune gained and cost, measured on the deployed graphs: per-layer sparsity, parameters, bundle bytes,
    the zoo metric on its test split, ORT latency (interleaved with the unpruned bundle), how far the pruned model's
    outputs moved from the original's, and the pruned export's own parity."""

    source: str
    options: dict[str, Any]
    layers: list[dict[str, Any]]
    params: dict[str, int]
    bundle_bytes: dict[str, int]
    metric: dict[str, dict[str, float]]
    latency: list[dict[str, Any]]
    moved: dict[str, float]
    parity: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (stored in the pruned checkpoint, and from there in the bundle's manifest)."""
        return asdict(self)

    def text(self) -> str:
        """The report as the CLI prints it."""
        o = self.options
        lines = [f"pruned {self.source}: {o['method']} ({o['scope']}), sparsity {o['sparsity']:g}, "
                 f"fine-tuned {o['finetune']} steps",
                 f"parameters: {self.params['before']:,} -> {self.params['after']:,} "
                 f"({self.params['nonzero_after']:,} nonzero)",
                 f"bundle bytes: {self.bundle_bytes['before']:,} -> {self.bundle_bytes['after']:,} "
                 f"({self.bundle_bytes['after'] / max(1, self.bundle_bytes['before']):.2f}x)"]
        for key, before in self.metric.get("before", {}).items():
            lines.append(f"{key}: {before:.4g} -> {self.metric['after'][key]:.4g}")
        for row in self.latency:
            lines.append(f"ORT {row['role']} batch {row['batch']}: {row['before_ms']:.3f} ms -> {row['after_ms']:.3f} ms "
                         f"({row['speedup']:.2f}x)")
        lines.append(f"outputs moved from the original: max |pruned - original| {self.moved['max_abs']:.3g} "
                     f"({self.moved['relative']:.3g} of max |original|)")
        lines.append("per layer: " + ", ".join(f"{r['name']} {r['sparsity']:.0%}" for r in self.layers))
        return "\n".join(lines)


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _moved(before: Any, after: Any) -> dict[str, float]:
    """max |pruned - original| over every graph output, on the same fresh inputs (ORT, the first check shape)."""
    from .backends import make_runners

    worst = scale = 0.0
    runs = [make_runners(b, "ort-cpu") for b in (before, after)]
    roles = [r for r, g in after.graphs.items() if g.built_from is None]
    with ExitStack() as stack:
        for runners in runs:
            for role in roles:
                stack.enter_context(runners[role])
        for role in roles:
            inputs = after.graphs[role].spec.random_inputs(np.random.default_rng(1), after.check_shapes[0])
            a, b = runs[0][role].infer(inputs), runs[1][role].infer(inputs)
            for name in a:
                if np.issubdtype(a[name].dtype, np.floating):
                    worst = max(worst, float(np.abs(b[name] - a[name]).max()))
                    scale = max(scale, float(np.abs(a[name]).max()))
    return {"max_abs": worst, "relative": worst / scale if scale else 0.0}


def measure(name: str, family: str, original: nn.Module, pruned: nn.Module, options: dict[str, Any],
            score: Callable[[nn.Module], dict[str, float]] | None, iterations: int = 100,
            baseline: Path | None = None) -> PruneReport:
    """Export the pruned model (proving its parity) and the original (unless `baseline` is its bundle already) to a
    temporary folder and measure both."""
    from .bundle import load_bundle
    from .exporters import export
    from .profile import profile

    total, _ = count_parameters(original)
    after_total, after_nonzero = count_parameters(pruned)
    metric = {"before": score(copy.deepcopy(original)), "after": score(copy.deepcopy(pruned))} if score else {}
    with tempfile.TemporaryDirectory(prefix="deploykit-prune-") as tmp:
        before = load_bundle(baseline) if baseline else export(original, family, Path(tmp) / "original")
        after = export(pruned, family, Path(tmp) / "pruned")
        timed = profile(after, backends=("ort-cpu",), batches=(1, 32), iterations=iterations, threads=1, against=before)
        latency = [{"role": r.role, "batch": r.batch, "before_ms": r.p50_ms * (r.speedup_vs_against or 1.0),
                    "after_ms": r.p50_ms, "speedup": r.speedup_vs_against or 1.0} for r in timed.rows]
        return PruneReport(name, options, sparsity_by_layer(original, pruned),
                           {"before": total, "after": after_total, "nonzero_after": after_nonzero},
                           {"before": _bytes(before.path), "after": _bytes(after.path)}, metric, latency,
                           _moved(before, after), after.manifest.get("parity", {}))


@dataclass(frozen=True)
class PruneSource:
    """A model to prune: its family, the zoo entry whose training loop fine-tunes and scores it (None for your own
    factory), and the fields a pruned checkpoint records to rebuild it (zoo name and config, or the factory)."""

    model: nn.Module
    family: str
    entry: Any
    fields: dict[str, Any]


def prune_source(source: str, family: str | None = None) -> PruneSource:
    """`zoo:NAME[@CHECKPOINT]`, a checkpoint, or `package.module:factory[@CHECKPOINT]` (with `family`), ready to
    prune; InputError for a folder source (prune its model from Python: deploykit.pruning.prune_model)."""
    from .models import get_entry
    from .sources import FOLDERS, resolve

    prefix = source.partition(":")[0]
    if prefix in FOLDERS:
        raise InputError(f"prune takes zoo models, checkpoints and factories; for {prefix}:DIR, prune the model from "
                         f"Python: `deploykit.pruning.prune_model(resolve('{prefix}:DIR').model, PruneOptions(...), None)`"
                         " and export the result.")
    resolved = resolve(source, family)
    record = resolved.source
    if record["kind"] == "checkpoint":
        entry = get_entry(record["zoo"])
        return PruneSource(resolved.model, resolved.family, entry,
                           {"zoo": entry.name, "family": entry.family, "config": entry.config})
    return PruneSource(resolved.model, resolved.family, None, {"factory": record["ref"], "family": resolved.family})


def prune(source: str, options: PruneOptions, out: str | os.PathLike[str], force: bool = False,
          iterations: int = 100, baseline: Path | None = None, family: str | None = None) -> PruneReport:
    """Prune `source` (see `prune_source`), fine-tune a zoo model with its own training loop when asked, measure it
    against the original (`measure`; `baseline`: the original's bundle, when exported already) and write the pruned
    checkpoint to `out` with the report (exported, the bundle's manifest carries it under source.pruning; a
    factory's as `package.module:factory@CHECKPOINT`)."""
    from .exporters import get_family
    from .exporters.onnx_export import example_inputs
    from .models import write_checkpoint

    options.check()
    check_int("--iterations", iterations, 1, MAX_ITERATIONS, "timed ORT calls per variant and batch")
    target = Path(out)
    if target.exists() and not force:
        raise InputError(f"--out {target} exists; pass --force to replace it (the file is replaced only once the "
                         "new checkpoint is complete).")
    chosen = prune_source(source, family)
    entry, fam = chosen.entry, get_family(chosen.family)
    structured = (lambda m: example_inputs(next(iter(fam.roles(m).values())))) if fam.structured else None
    steps = entry is not None and entry.steps
    finetune = (lambda m, n: entry.fit(m, n, None)) if steps else None
    score = (lambda m: entry.fit(m, 0, None)) if steps else None
    pruned, record = prune_model(copy.deepcopy(chosen.model), options, structured, finetune)
    report = measure(source, chosen.family, chosen.model, pruned, record, score, iterations, baseline)
    write_checkpoint(target, pruned, **chosen.fields, metrics=report.metric.get("after", {}),
                     pruning=record | {"report": report.to_json()})
    return report


def sweep_table(reports: list[PruneReport]) -> str:
    """Markdown table of a sweep: sparsity, metric, parameters (nonzero), bundle bytes, ORT latency b1/b32."""
    metrics = list(reports[0].metric.get("after", {})) if reports else []
    head = ["sparsity", *metrics, "nonzero params", "bundle bytes", "ORT b1 ms (x)", "ORT b32 ms (x)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        first = r.metric.get("before", {})
        cells = [f"{r.options['sparsity']:g}", *(f"{r.metric['after'][m]:.4f} ({first[m]:.4f})" for m in metrics),
                 f"{r.params['nonzero_after']:,} / {r.params['before']:,}",
                 f"{r.bundle_bytes['after']:,} / {r.bundle_bytes['before']:,}"]
        for batch in (1, 32):
            row = next((x for x in r.latency if x["batch"] == batch), None)
            cells.append("-" if row is None else f"{row['after_ms']:.3f} ({row['speedup']:.2f}x)")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def sweep_plot(reports: list[PruneReport], path: Path) -> Path:
    """Metric and ORT latency (batch 1 and 32) against sparsity, as a PNG."""
    from .profile import pyplot

    plt = pyplot("the sweep's plot needs matplotlib; `pip install matplotlib`.")
    x = [r.options["sparsity"] for r in reports]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for metric in reports[0].metric.get("after", {}):
        left.plot(x, [r.metric["after"][metric] for r in reports], "o-", label=metric)
    left.set(xlabel="sparsity", ylabel="zoo metric (test split)", title=reports[0].source)
    for batch in (1, 32):
        right.plot(x, [next(y["after_ms"] for y in r.latency if y["batch"] == batch) for r in reports], "o-",
                   label=f"batch {batch}")
    right.set(xlabel="sparsity", ylabel="ORT-CPU p50 ms (1 thread)", yscale="log")
    for ax in (left, right):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sweep(source: str, sparsities: list[float], options: PruneOptions, out: str | os.PathLike[str],
          force: bool = False, iterations: int = 100, family: str | None = None) -> list[PruneReport]:
    """Prune `source` at each sparsity (from the original each time) into `out`/pruned-S.pt and write the table
    (sweep.md), the reports (sweep.json) and the plot (sweep.png) there."""
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()) and not force:
        raise InputError(f"--out {folder} is not empty; pass --force to write the sweep there.")
    for value in sparsities:
        replace(options, sparsity=value).check()
    check_int("--iterations", iterations, 1, MAX_ITERATIONS, "timed ORT calls per variant and batch")
    from .exporters import export

    chosen = prune_source(source, family)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="deploykit-sweep-") as tmp:  # the original is exported once
        baseline = export(chosen.model, chosen.family, Path(tmp) / "original").path
        reports = [prune(source, replace(options, sparsity=value), folder / f"pruned-{value:g}.pt", True, iterations,
                         baseline, family) for value in sparsities]
    (folder / "sweep.md").write_text(sweep_table(reports) + "\n")
    (folder / "sweep.json").write_text(json.dumps([r.to_json() for r in reports], indent=1))
    sweep_plot(reports, folder / "sweep.png")
    return reports


@dataclass(frozen=True)
class LotteryRound:
    """Test metric after training at one sparsity: the winning ticket (rewound to theta_0), the same mask under a
    fresh initialization, and a random mask of the same per-layer counts from theta_0."""

    remaining: float
    ticket: float
    reinit: float
    random_mask: float


def lottery_ticket(name: str, rounds: int, rate: float = 0.2, steps: int | None = None, scope: str = "layer",
                   trial: int = 0) -> list[LotteryRound]:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019) on zoo model `name`: train theta_0,
    remove `rate` of the surviving weights by magnitude, rewind the survivors to theta_0 and retrain; each round
    also trains the same mask from a fresh initialization and a random mask (same per-layer counts) from theta_0.
    Every training is the zoo's own loop (`steps`, default the zoo's) with the masks held; the metric is its first.
    Trial 0 starts from the zoo's own theta_0; trial k from another draw, with its own reinit and mask seeds."""
    from .models import get_entry

    entry = get_entry(name)
    if entry.steps is None:
        raise InputError(f"zoo model {name!r} has no step training loop to retrain tickets with.")
    steps = entry.steps if steps is None else steps

    def train(model: nn.Module, masks: dict[str, torch.Tensor]) -> tuple[nn.Module, float]:
        model = copy.deepcopy(model)
        apply_masks(model, masks)
        with held(model, masks):
            metrics = entry.fit(model, steps, None)
        return model, float(next(iter(metrics.values())))

    def initial(index: int) -> nn.Module:
        torch.manual_seed(index)
        return folded(entry.build(**entry.config))[0]

    theta0 = folded(entry.create())[0] if trial == 0 else initial(1000 * trial)
    full = {n: torch.ones_like(getattr(m, p), dtype=torch.bool) for n, (m, p) in prunable(theta0).items()}
    trained, accuracy = train(theta0, full)
    rows = [LotteryRound(1.0, accuracy, accuracy, accuracy)]
    for r in range(1, rounds + 1):
        sparsity = 1 - (1 - rate) ** r
        weights = {n: getattr(m, p) for n, (m, p) in prunable(trained).items()}
        masks = magnitude_masks(weights, sparsity, scope)  # pruned weights are zeros: they go first again
        trained, ticket = train(theta0, masks)
        _, reinit = train(initial(1000 * trial + r), masks)
        _, shuffled = train(theta0, random_masks(weights, masks, 1000 * trial + r))
        rows.append(LotteryRound(1 - sparsity, ticket, reinit, shuffled))
    return rows
