"""Where a torch model comes from: `zoo:NAME[@CHECKPOINT]`, `hf:DIR` / `diffusers:DIR` (save_pretrained folders),
a checkpoint path, or `package.module:factory`."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.torch import import_torch
from .bundle import Bundle, sha256_file
from .errors import InputError, choices

FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class FolderSource:
    """A `PREFIX:DIR` source: the families it exports as (the first unless the loaded object names its `family`),
    what it holds, and the exporters module whose `load(folder)` returns an object with `model`, `fingerprint` (and
    optionally `tokenizer`, `family` and `also`: other families it may be exported as) and whose
    `fingerprint(folder)` detects changes."""

    families: tuple[str, ...]
    what: str
    module: str


FOLDERS = {"hf": FolderSource(("gpt", "gpt-inplace", "hf-seq2seq", "hf-encoder", "cnn"), "causal LMs, encoder-decoders, text encoders and image classifiers", "hf"),
           "diffusers": FolderSource(("ddpm", "text-to-image"), "diffusion and text-to-image pipelines", "diffusers")}


def _folder_module(prefix: str) -> Any:
    return importlib.import_module(f"deploykit.exporters.{FOLDERS[prefix].module}")


@dataclass(frozen=True)
class Resolved:
    """A model ready to export, its family, the JSON record that rebuilds it, and the tokenizer.json it came with."""

    model: Any
    family: str
    source: dict[str, Any]
    tokenizer: Path | None = None


def _from_checkpoint(path: Path, family: str | None) -> Resolved:
    from .models import load_checkpoint

    entry, model, payload = load_checkpoint(path)
    if family and family != entry.family:
        raise InputError(
            f"checkpoint '{path}' holds zoo model '{entry.name}' of family '{entry.family}', not '{family}'; "
            "drop --family or pass the matching one."
        )
    source = {"kind": "checkpoint", "zoo": entry.name, "path": str(path.resolve()), "sha256": sha256_file(path)}
    if payload.get("pruning"):  # the prune's options and report travel into the bundle's manifest
        source["pruning"] = payload["pruning"]
    return Resolved(model, entry.family, source)


def _import_factory(ref: str) -> Callable[[], Any]:
    module_name, attr = ref.split(":")
    if str(Path.cwd()) not in sys.path:  # console scripts do not put the working directory on sys.path
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise InputError(
            f"could not import module '{module_name}' for source '{ref}' ({type(exc).__name__}: {exc}); "
            "check the name and that it is importable from the working directory or PYTHONPATH."
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"module '{module_name}' has no callable '{attr}'; source must be `package.module:factory`.")
    return factory


def resolve(spec: str, family: str | None = None, on_step: Callable[[int, int], None] | None = None,
            context: int | None = None) -> Resolved:
    """Turn a CLI source string into a model (training a zoo model first if it is not cached); `context`: the
    positions an hf:DIR language model gets (needed where its config has no limit, e.g. ALiBi)."""
    torch = import_torch()
    prefix, _, rest = spec.partition(":")
    if context is not None and prefix != "hf":
        raise InputError("--context sets the positions of an hf:DIR language model; drop it for this source.")
    if prefix in FOLDERS:
        folder_source = FOLDERS[prefix]
        if family not in (None, *folder_source.families):
            raise InputError(f"{prefix}:DIR exports {folder_source.what} as family ({choices(folder_source.families)}), "
                             f"not '{family}'; drop --family.")
        folder = Path(rest).resolve()
        loaded = _folder_module(prefix).load(folder, **({} if context is None else {"context": context}))
        chosen = getattr(loaded, "family", folder_source.families[0])  # hf:DIR routes by architecture
        also = getattr(loaded, "also", ())
        if family not in (None, chosen, *also):
            raise InputError(f"{prefix}:{rest} holds a model of family {choices((chosen, *also))}, not '{family}'; "
                             "drop --family.")
        chosen = family or chosen
        return Resolved(loaded.model, chosen, {"kind": prefix, "path": str(folder),
                                                             "fingerprint": loaded.fingerprint}
                        | ({} if context is None else {"context": context}),
                        getattr(loaded, "tokenizer", None))
    if spec.startswith("zoo:"):
        from .models import get_entry, trained

        name, _, checkpoint = spec[4:].partition("@")
        entry = get_entry(name)
        path = Path(checkpoint) if checkpoint else trained(name, on_step)
        resolved = _from_checkpoint(path, family)
        if resolved.source["zoo"] != entry.name:
            raise InputError(f"checkpoint '{path}' holds zoo model '{resolved.source['zoo']}', not '{name}'.")
        return resolved
    ref, _, weights = spec.partition("@")
    if FACTORY.match(ref) and weights:
        return _factory_weights(ref, Path(weights), family)
    if FACTORY.match(spec) and not Path(spec).exists():
        if not family:
            from .exporters import FAMILIES

            raise InputError(f"source '{spec}' is a factory; say which family it is with --family ({', '.join(sorted(FAMILIES))}).")
        model = _import_factory(spec)()
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"factory '{spec}' returned {type(model).__name__}, expected a torch.nn.Module.")
        return Resolved(model, family, {"kind": "factory", "ref": spec})
    if Path(spec).is_file():
        return _from_checkpoint(Path(spec), family)
    raise InputError(
        f"source '{spec}' is not a zoo name, an existing checkpoint, a hf:DIR or diffusers:DIR folder or a "
        "`package.module:factory`; try `zoo:cnn`, `hf:models/gpt2`, `diffusers:models/ddpm`, `runs/cnn.pt` or "
        "`my_pkg.models:build_model`."
    )


def _factory_weights(ref: str, path: Path, family: str | None) -> Resolved:
    """`module:factory@CHECKPOINT`: the factory's model with the weights a prune (or you) saved for it; the
    checkpoint must name that factory, and a pruned one rebuilds its architecture first."""
    from .models import read_checkpoint
    from .pruning import pruned_architecture

    payload = read_checkpoint(path)
    if payload.get("factory") != ref:
        raise InputError(f"checkpoint '{path}' holds weights for {payload.get('factory') or payload.get('zoo')!r}, "
                         f"not for factory '{ref}'.")
    family = family or payload.get("family")
    if not family:
        raise InputError(f"source '{ref}@{path}' is a factory; say which family it is with --family.")
    model = _import_factory(ref)()
    state = payload.get("state_dict") or {}
    try:
        if payload.get("pruning"):
            model = pruned_architecture(model, payload["pruning"], state)
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise InputError(f"checkpoint '{path}' does not fit what factory '{ref}' builds ({type(exc).__name__}: "
                         f"{first}); was the factory changed since?") from exc
    source = {"kind": "factory", "ref": ref, "weights": str(path.resolve()), "sha256": sha256_file(path)}
    return Resolved(model.eval(), family, source | ({"pruning": payload["pruning"]} if payload.get("pruning") else {}))


def _fingerprint(source: dict[str, Any]) -> Any:
    return source.get("sha256") if source.get("kind") in ("checkpoint", "factory") else source.get("fingerprint")


def rebuild(source: dict[str, Any]) -> Any:
    """The torch original recorded in a bundle's manifest, for fresh-input verify and the torch backend.

    A manifest is untrusted: no path or code it names is opened or imported. Only a zoo model in deploykit's own
    cache, matching the recorded sha256, is rebuilt; anything else the user passes (`--source`, `model=`)."""
    kind = source.get("kind")
    if kind == "checkpoint" and isinstance(source.get("zoo"), str):
        from .models import ZOO, cached_checkpoint

        cached = cached_checkpoint(source["zoo"]) if source["zoo"] in ZOO else None
        if cached is not None and cached.is_file() and sha256_file(cached) == source.get("sha256"):
            return _from_checkpoint(cached, None).model
    hint = {"checkpoint": "PATH_TO_CHECKPOINT", "factory": "MODULE:FACTORY[@CHECKPOINT]"} | {prefix: f"{prefix}:DIR" for prefix in FOLDERS}
    if kind in hint:
        named = source.get("ref") if kind == "factory" else source.get("path")
        raise InputError(f"this bundle names {kind} {str(named)[:200]!r} as its source, and deploykit does not import "
                         "code or open files a bundle names; pass the torch original yourself: "
                         f"`deploykit verify BUNDLE --source {hint[kind]}`, or model=... to deploykit.verify / load / "
                         "profile.")
    raise InputError(
        f"this bundle was exported from an in-memory {source.get('class', 'model')}, which cannot be rebuilt; "
        "pass model=... (Python) or --source (CLI)."
    )


def reference(spec: str, bundle: Bundle) -> Any:
    """The torch original the user names for a bundle (`verify --source`); InputError if it is a checkpoint or folder
    of the bundle's source kind whose contents differ from what was exported."""
    context = bundle.source.get("context") if spec.startswith("hf:") else None  # as exported (--context)
    resolved = resolve(spec, bundle.family, context=context if isinstance(context, int) else None)
    recorded = bundle.source
    if resolved.source.get("kind") == recorded.get("kind") and _fingerprint(resolved.source) != _fingerprint(recorded):
        what = "sha256" if recorded.get("kind") == "checkpoint" else "fingerprint"
        raise InputError(f"the source '{spec}' is not what this bundle was exported from (its {what} differs from the "
                         "manifest's: changed since export?); re-export the bundle, or pass the original.")
    return resolved.model


def torch_reference(bundle: Bundle, model: Any = None) -> dict[str, Any]:
    """Role -> torch module of a bundle, for the torch backend: `model` if given, else rebuilt from the manifest's source."""
    import_torch()
    from .exporters import torch_modules

    inputs = {name: graph.spec.input_names() for name, graph in bundle.graphs.items() if graph.built_from is None}
    return torch_modules(bundle.family, model if model is not None else rebuild(bundle.source), inputs)
