"""Exporters: torch model -> bundle (ONNX graphs per role, golden vectors, manifest), parity-checked."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..backends.base import Runner, RunnerOptions
from ..backends.ort import OrtRunner
from ..backends.torch import Float64References, TorchRunner
from ..bundle import LOOP_ROLE, Bundle, save_golden, write_bundle
from ..checks import release_memory
from ..errors import DeploykitError, ExportError, InputError, ParityError
from ..loop_graphs import build_loop_graphs
from ..onnx_refs import EXTERNAL_DATA_THRESHOLD
from ..parity import ParityReport
from ..runtimes.kinds import compare_loop, kind_of
from ..runtimes.tokens import read_tokenizer, vocabulary_sha256
from ..specs import GraphSpec, dims_label
from . import (  # noqa: F401  (register the families)
    autoregressive,
    diffusers_text,
    diffusion,
    energy,
    feedforward,
    flows,
    gan,
    hf_encoder,
    hf_seq2seq,
    kv_in_place,
    latent,
    recurrent,
    transformer,
)
from .fused import FUSED_OPSET, check_fused, fused_ops, fused_tracing
from .onnx_export import (
    ANSI,
    OPSET,
    export_role,
    exportable,
    inline_external_data,
    prepare,
    weight_bytes,
)
from .registry import FAMILIES, Family, Role, Tolerance, get_family

__all__ = ["FAMILIES", "Family", "Role", "Tolerance", "export", "get_family", "torch_modules"]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("deploykit", "torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


# Golden vectors per role: every check shape while they fit in 5 % of the role's weights (at least 16 MiB),
# else the first ones; the rest are still compared at export and by fresh-input verify.
GOLDEN_SHARE = 0.05
GOLDEN_MIN_BYTES = 16 << 20
# The export's checks run onnxruntime on the written file, without prepacking, so its external data is mapped (page
# cache, which the kernel can drop) rather than copied beside torch's weights. Handing onnxruntime the torch tensors
# instead (add_initializer) broke graphs whose initializers its transpose optimizer rewrites in place (ConvNeXt's
# layer scale: "broadcast 56 by 96" at every level above DISABLE_ALL). Without the arena, what one check shape's run
# allocated is freed (and trimmed) before the next.
EXPORT_CHECKS = RunnerOptions(prepack=False, arena=False)
FLOAT64 = RunnerOptions(float64=True)  # the fp64 parity reference, made only for a case the fixed rule fails


def _check_tokenizer(path: Path, family: str, loop: Any) -> dict[str, str]:
    """The manifest's entry for a tokenizer.json that `tokenizers` reads and whose ids fit the model's vocabulary
    (with its vocabulary's sha256, read once); else ExportError."""
    if not hasattr(loop, "vocab_size"):
        raise ExportError(f"--tokenizer is for models that read text; family '{family}' does not.")
    if not path.is_file():
        raise ExportError(f"tokenizer '{path}' does not exist; give the tokenizer.json saved beside the model.")
    read = read_tokenizer(path, "--tokenizer")
    size = read.get_vocab_size(with_added_tokens=True)
    if size > loop.vocab_size:
        raise ExportError(f"tokenizer '{path}' has {size} tokens, more than the model's vocabulary of {loop.vocab_size}.")
    return {"file": "tokenizer.json", "vocab_sha256": vocabulary_sha256(read)}


LIBRARY_ROUTES = {"transformers": "hf", "diffusers": "diffusers"}  # library -> the folder route that exports its models


def _refuse_library_model(model: nn.Module) -> None:
    """InputError for a transformers or diffusers model passed as it is: no family protocol fits it, and its folder
    route (hf:DIR, diffusers:DIR) wraps it for the right family and loop."""
    library = type(model).__module__.split(".")[0]
    if library in LIBRARY_ROUTES:
        prefix = LIBRARY_ROUTES[library]
        raise InputError(f"{type(model).__name__} is a {library} model: deploykit exports those from the folder "
                         f"save_pretrained writes, routed to the family that fits. `model.save_pretrained(DIR)`, then "
                         f"`deploykit export {prefix}:DIR --out BUNDLE` (Python: `r = deploykit.sources.resolve("
                         f"'{prefix}:DIR')`, then `deploykit.export(r.model, r.family, out, source=r.source, "
                         "tokenizer=r.tokenizer)`).")


@contextmanager
def _backend_failure(what: str) -> Iterator[None]:
    """ExportError naming `what` for an exception onnxruntime raises in the export's checks (ours pass through)."""
    try:
        yield
    except DeploykitError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail / RuntimeException types
        text = ANSI.sub("", str(exc)).strip()
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        raise ExportError(f"onnxruntime fails on {what}: {first}. This is a bug in the export (or in onnxruntime); "
                          "please report it with the model.") from exc


def _allowed(report: ParityReport, case: str) -> dict[str, Any]:
    """A golden entry's `allowed` (output -> max abs against the stored outputs) where the fp64 or magnitude rule set
    one, so golden verify without torch holds the deployment to what the export measured."""
    allowed = report.allowed(case)
    return {"allowed": allowed} if allowed else {}


def torch_modules(family: str, model: nn.Module, inputs: Mapping[str, Sequence[str]] | None = None
                  ) -> dict[str, nn.Module]:
    """Role -> torch module exactly as exported (eval mode, parametrizations folded). `inputs` (role -> a
    bundle's input names) must match what this deploykit builds: InputError for a bundle whose roles an
    earlier deploykit exported with other inputs."""
    roles = get_family(family).roles(prepare(model))
    for name, given in (inputs or {}).items():
        built = [s.name for s in roles[name].inputs] if name in roles else []
        if list(given) != built:
            raise InputError(f"this bundle's '{name}' graph takes ({', '.join(given)}), but the '{family}' exporter of "
                             f"this deploykit builds ({', '.join(built)}): the bundle comes from an earlier deploykit. "
                             "Re-export it to compare fresh inputs or run the torch backend; `verify --golden-only` "
                             "still replays its golden vectors.")
    return {name: role.torch_module for name, role in roles.items()}


def export(
    model: nn.Module,
    family: str,
    out: str | os.PathLike[str],
    force: bool = False,
    source: dict[str, Any] | None = None,
    opset: int = OPSET,
    external_threshold: int = EXTERNAL_DATA_THRESHOLD,
    tokenizer: str | os.PathLike[str] | None = None,
    on_phase: Callable[[str], None] | None = None,
    fuse: bool = False,
) -> Bundle:
    """Export `model` as a bundle at `out`: graphs, golden vectors, manifest; fails if ORT != torch.

    `source` records how to rebuild the torch original (set by the CLI); without it, fresh-input
    verify needs the model passed in again. Graphs whose weights exceed `external_threshold` bytes
    keep them in ONNX external-data files inside the bundle (needed above protobuf's 2 GB). A language
    model may bring its `tokenizer` (a Hugging Face tokenizer.json): the bundle carries it and text
    generation encodes and decodes with it. `on_phase(text)` hears each phase (tracing a role, checking a shape,
    the loop check, writing) as it starts. `fuse` writes attention, RMS norm and rotary embeddings as single opset-23
    operators (fused.py), for onnxruntime.
    """
    phase = on_phase or (lambda text: None)
    if fuse and opset != OPSET:
        raise InputError(f"fuse exports at opset {FUSED_OPSET}; leave opset ({opset}) at its default with it.")
    opset = FUSED_OPSET if fuse else opset
    fam = get_family(family)
    _refuse_library_model(model)
    with exportable(model) as ready:  # the user's module (restored after) unless weights must be folded
        roles = fam.roles(ready)  # first: it checks the family's protocol and names what is missing
        shapes = fam.check_shapes(model)
        loop = fam.loop(model)
        if loop.kind not in fam.loop_kinds:
            raise ExportError(f"family '{family}' made a '{loop.kind}' loop; it declares {list(fam.loop_kinds)} "
                              "(a bug in its exporter).")
        kind = kind_of(loop)
        tokenizer_entry = None if tokenizer is None else _check_tokenizer(Path(tokenizer), family, loop)
        src = source or {"kind": "python", "class": f"{type(model).__module__}.{type(model).__qualname__}"}

        def fill(tmp: Path) -> dict[str, Any]:
            (tmp / "graphs").mkdir()
            (tmp / "golden").mkdir()
            if tokenizer is not None:
                shutil.copyfile(tokenizer, tmp / "tokenizer.json")
            graphs: dict[str, Any] = {}
            golden: list[dict[str, Any]] = []
            report = ParityReport()
            refs: dict[str, Runner] = {}
            refs64: dict[str, Runner] = {}
            orts: dict[str, Runner] = {}
            for name, role in roles.items():
                path = tmp / "graphs" / f"{name}.onnx"
                phase(f"tracing '{name}' (torch.export -> ONNX)")
                with fused_tracing() if fuse else nullcontext():
                    done = export_role(name, role, path, opset)
                graphs[name] = {"file": f"graphs/{name}.onnx", "opset": done.opset, "spec": done.spec.to_json()}
                if done.data_files:  # listed with their sha256 like graphs; load refuses any that leaves the bundle
                    graphs[name]["external_data"] = [{"file": f"graphs/{f}"} for f in done.data_files]
                refs[name] = TorchRunner(name, done.spec, role.torch_module)
                refs64[name] = TorchRunner(name, done.spec, role.torch_module, FLOAT64)
                orts[name] = OrtRunner(name, done.spec, path, options=EXPORT_CHECKS)
            written = {name: tmp / "graphs" / f"{name}.onnx" for name in roles}
            fused = fused_ops(written) if fuse else {}
            if fuse:
                check_fused(type(model).__name__, fused)
            problems = kind.graph_problems(written) if kind.graph_problems else []
            if problems:
                raise ExportError(f"{type(model).__name__} exported as '{family}' fails a graph check: " + "; ".join(problems))
            for name, entry in build_loop_graphs(loop, tmp / "graphs").items():  # checked by the loop check below
                graphs[name] = entry
                orts[name] = OrtRunner(name, GraphSpec.from_json(entry["spec"]), tmp / entry["file"], options=EXPORT_CHECKS)
            with ExitStack() as stack:
                for runner in (*refs.values(), *orts.values()):
                    stack.enter_context(runner)
                fp64 = Float64References(refs64)  # activated only where a case needs them
                stack.callback(fp64.release)
                for name, role in roles.items():
                    budget, stored = max(GOLDEN_MIN_BYTES, GOLDEN_SHARE * weight_bytes(role.module)), 0
                    for index, dims in enumerate(shapes):  # every shape is compared; the first ones that fit are stored
                        release_memory(collect=False)  # the last shape's arrays: their pages go before these come
                        case = dims_label(dims)
                        phase(f"checking '{name}' against torch at {case}")
                        inputs = refs[name].spec.random_inputs(np.random.default_rng(index), dims)
                        try:
                            expected = refs[name].infer(inputs)
                        except Exception as exc:  # the torch model itself, at a shape its family promises
                            raise ExportError(f"{type(model).__name__} fails on its own (torch) for role '{name}' at "
                                              f"check shape {case}: {type(exc).__name__}: {str(exc)[:300]}; the "
                                              f"'{family}' family runs every check shape, so the model must take "
                                              "them.") from exc
                        label = f"{name} {case}"
                        with _backend_failure(f"the exported '{name}' graph at check shape {case}"):
                            actual = orts[name].infer(inputs)
                        report.add(label, expected, actual, fam.tolerance, orts[name].spec,
                                   lambda: fp64.infer(name, inputs))  # noqa: B023  (called here)
                        size = sum(a.nbytes for a in (*inputs.values(), *expected.values()))
                        if index and stored + size > budget:
                            continue
                        stored += size
                        save_golden(tmp / "golden" / f"{name}.{index}.npz", inputs, expected)
                        golden.append({"role": name, "case": case, "dims": dims, "file": f"golden/{name}.{index}.npz"}
                                      | _allowed(report, label))
                    fp64.release(name)  # its float64 copy of the weights goes before the next role's
                if kind.check is not None:  # a short seeded run of the sampling loop, torch vs ORT
                    phase("checking the sampling loop against torch (seed 0)")
                    expected = kind.check(refs, loop, 0)
                    save_golden(tmp / "golden" / "loop.0.npz", {"seed": np.asarray(0)}, expected)
                    with _backend_failure("the exported graphs' sampling loop (seed 0)"):
                        actual = kind.check(orts, loop, 0)
                    compare_loop(report, "loop seed=0", orts, loop, 0, expected, actual, fam.tolerance,
                                 lambda: fp64.loop(kind.check, loop, 0))
                    golden.append({"role": LOOP_ROLE, "case": "seed=0", "dims": {}, "file": "golden/loop.0.npz"}
                                  | _allowed(report, "loop seed=0"))
                problems = kind.structure(orts, loop) if kind.structure else []
            phase("writing the bundle")
            for name, role in roles.items():  # sessions closed: fold small graphs' weights back into one file
                if "external_data" in graphs[name] and weight_bytes(role.module) <= external_threshold:
                    inline_external_data(tmp / "graphs" / f"{name}.onnx")
                    del graphs[name]["external_data"]
            if problems:
                raise ExportError(f"{type(model).__name__} exported as '{family}' fails a structural check: " + "; ".join(problems))
            if not report.passed:
                raise ParityError(f"export of {type(model).__name__} as '{family}' does not match torch:\n{report.table()}")
            vacuous = report.uninformative()
            if vacuous:  # loud, and `verify` fails on it unless told otherwise
                warnings.warn(f"{type(model).__name__}: {len(vacuous)} parity case(s) prove nothing ({', '.join(vacuous[:4])}"
                              f"{', ...' if len(vacuous) > 4 else ''}): every torch output there is constant or within "
                              "atol of 0, so any graph would match. Is the model trained (a zero-initialized head)?",
                              UserWarning, stacklevel=3)
            return {
                "family": family,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "graphs": graphs,
                "golden": golden,
                "check_shapes": shapes,
                "tolerance": fam.tolerance.to_json(),
                "parity": report.summary(),
                "loop": loop.to_json(),
                "source": src,
                "tools": _versions(),
            } | ({"tokenizer": tokenizer_entry} if tokenizer_entry is not None else {}) \
              | ({"fused": fused} if fuse else {})

        return write_bundle(out, fill, force=force)
