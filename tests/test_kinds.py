"""The two registries hold their shape: every family's loop kinds are registered with what their use needs,
loop configs round-trip and are validated on load, and no import runs back up the layers."""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

import deploykit
from deploykit.errors import BundleError, InputError
from deploykit.exporters import FAMILIES
from deploykit.runtimes.kinds import KINDS, parse_loop

PACKAGE = Path(deploykit.__file__).parent


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_loop_kind_is_registered_with_what_its_use_needs(family: str) -> None:
    for name in FAMILIES[family].loop_kinds:
        kind = KINDS[name]  # KeyError = a family emitting an unregistered kind
        if kind.use == "graphs":
            assert kind.check is None and kind.sample is None, name  # golden vectors cover graph-only bundles
            continue
        assert kind.check is not None, f"'{name}' loops have no export-time check"
        if kind.use == "sample":
            assert kind.sample and kind.options and kind.writer, name
        if kind.use in ("generate", "translate"):
            assert kind.token_model and kind.writer, name


def test_every_registered_kind_is_emitted_by_some_family() -> None:
    emitted = {k for f in FAMILIES.values() for k in f.loop_kinds}
    assert emitted == set(KINDS)


def test_loop_configs_round_trip_and_reject_malformed_json(zoo_bundle, tmp_path: Path) -> None:
    bundle = zoo_bundle("ddpm-digits")
    data = bundle.manifest["loop"]
    assert parse_loop(data).to_json() == data
    with pytest.raises(BundleError, match="a 'diffusion' loop needs 'event_shape'"):
        parse_loop({k: v for k, v in data.items() if k != "event_shape"})
    with pytest.raises(BundleError, match="'num_classes' is '10', expected <class 'int'>"):
        parse_loop(data | {"num_classes": "10"})
    with pytest.raises(BundleError, match=r"unknown key\(s\) \['seed'\]"):
        parse_loop(data | {"seed": 1})
    copy = Path(shutil.copytree(bundle.path, tmp_path / "b"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["loop"]["schedulers"] = "ddim"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'schedulers' is 'ddim', expected list"):
        deploykit.load(copy)


def test_options_name_the_flag_and_the_kinds_it_is_for(zoo_bundle) -> None:
    with deploykit.load(zoo_bundle("dcgan").path) as dep:
        with pytest.raises(InputError, match="--host-loop is for diffusion, flow and RBM bundles; this 'generator' "
                                             "bundle takes --label"):
            dep.options(host=True)
        with pytest.raises(InputError, match="samples with LabelOptions, not FlowOptions"):
            dep.sample(2, 0, KINDS["flow"].options())
    assert {f.name for f in fields(KINDS["diffusion"].options)} >= {"labels", "steps", "host", "scheduler", "guidance"}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against the package)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    return found


# layer -> modules it must never import (at module level or lazily)
FORBIDDEN = {
    "runtimes": ("torch", "onnx", "deploykit.exporters", "deploykit.sources", "deploykit.models", "deploykit.nn.flows",
                 "deploykit.nn.masked", "deploykit.cli", "deploykit.api"),
    "backends": ("deploykit.exporters", "deploykit.sources", "deploykit.models", "deploykit.runtimes", "deploykit.cli"),
    "nn": ("deploykit.exporters", "deploykit.models", "deploykit.runtimes", "deploykit.backends", "deploykit.cli"),
    "exporters": ("deploykit.models", "deploykit.sources", "deploykit.cli"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_runs_back_up_the_layers(layer: str) -> None:
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    # the torch backend is the one place torch is imported, lazily, inside the runner
    bad = [b for b in bad if not b.startswith("backends/torch.py imports torch")]
    assert not bad, "\n".join(bad)
