"""Pruning: exact magnitude masks, structured pruning that keeps the model's outputs, pruned checkpoints that rebuild,
the measured report carried into the bundle, loops and flows that keep working, and bad input refused."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import deploykit
from deploykit.errors import InputError
from deploykit.exporters import get_family
from deploykit.exporters.onnx_export import example_inputs
from deploykit.models import ZOO, get_entry, load_checkpoint, trained
from deploykit.pruning import (
    PruneOptions,
    held,
    lottery_ticket,
    magnitude_masks,
    prunable,
    prune,
    prune_model,
    random_masks,
)
from deploykit.runtimes.tokens import SamplingConfig


def _structured_inputs(family: str):
    fam = get_family(family)
    return lambda m: example_inputs(next(iter(fam.roles(m).values())))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_remove_exactly_the_smallest(scope: str) -> None:
    """round(S * n) weights go (globally or per tensor), all of them no larger than any kept one, ties included."""
    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(7, 5, generator=gen), "b": torch.randn(3, 4, 4, generator=gen),
               "c": torch.zeros(6, 2)}  # all ties
    masks = magnitude_masks(weights, 0.6, scope)
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    for names in groups:
        kept = torch.cat([weights[n].abs().flatten()[masks[n].flatten()] for n in names])
        gone = torch.cat([weights[n].abs().flatten()[~masks[n].flatten()] for n in names])
        total = sum(weights[n].numel() for n in names)
        assert len(gone) == round(0.6 * total)
        assert len(kept) == 0 or len(gone) == 0 or gone.max() <= kept.min()
    random = random_masks(weights, masks, seed=1)
    assert all(int(random[n].sum()) == int(masks[n].sum()) for n in weights)


def test_held_masks_survive_training_and_fold_back() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    weights = {n: getattr(m, p) for n, (m, p) in prunable(model).items()}
    masks = magnitude_masks(weights, 0.7, "layer")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with held(model, masks):
        for _ in range(5):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            opt.zero_grad()
            model(torch.randn(4, 8)).square().sum().backward()
            opt.step()
    assert sorted(n for n, _ in model.named_parameters()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for name, mask in masks.items():
        assert torch.all(dict(model.named_parameters())[name][~mask] == 0)


def test_zero_training_steps_only_score() -> None:
    """A zoo training loop at 0 steps scores the model on its test split and changes nothing: the prune report's
    metric and the fine-tuning both use the zoo's own loop."""
    for name in ("mlp", "cnn", "unet", "char-lm", "made", "nice-moons", "rbm-digits"):
        entry = get_entry(name)
        model = entry.create()
        before = copy.deepcopy(model.state_dict())
        metrics = entry.fit(model, 0, None)
        assert metrics and all(math.isfinite(v) for v in metrics.values())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), name


def test_bad_options_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    for options, match in [(PruneOptions(float("nan")), "--sparsity is nan"), (PruneOptions(1.0), "--sparsity is 1.0"),
                           (PruneOptions(-0.1), "--sparsity is -0.1"), (PruneOptions(0.5, "random"), "--method 'random'"),
                           (PruneOptions(0.5, scope="net"), "--scope 'net'"), (PruneOptions(0.5, norm=3), "--norm 3"),
                           (PruneOptions(0.5, finetune=-1), "--finetune is -1, expected an integer in 0..1000000"),
                           (PruneOptions(0.5, round_to=0), "--round-to is 0")]:
        with pytest.raises(InputError, match=match):
            prune("zoo:mlp", options, tmp_path / "p.pt")
    with pytest.raises(InputError, match="is a factory; say which family it is with --family"):
        prune("pkg.module:factory", PruneOptions(0.5), tmp_path / "p.pt")
    with pytest.raises(InputError, match="cannot lose"):
        prune("zoo:made", PruneOptions(0.5, "structured"), tmp_path / "p.pt")
    with pytest.raises(InputError, match="no trained parameters"):
        prune_model(get_entry("hopfield-digits").create(), PruneOptions(0.5), None)
    run = subprocess.run([sys.executable, "-m", "deploykit", "prune", "zoo:mlp", "--sparsity", "1", "--out",
                          str(tmp_path / "p.pt")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--sparsity is 1.0" in run.stderr and "Traceback" not in run.stderr
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def pruned_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`deploykit prune zoo:cnn --method structured --scope layer --finetune 100` as a user runs it."""
    out = tmp_path_factory.mktemp("prune") / "cnn.pt"
    run = subprocess.run([sys.executable, "-m", "deploykit", "prune", "zoo:cnn", "--sparsity", "0.5", "--method",
                          "structured", "--scope", "layer", "--finetune", "100", "--iterations", "20", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "test_accuracy:" in run.stdout and "ORT model batch 32" in run.stdout
    return out, torch.load(out, weights_only=True)["pruning"]


def test_structured_prune_is_smaller_rebuilds_and_exports_with_its_report(pruned_cnn, tmp_path: Path) -> None:
    out, record = pruned_cnn
    report = record["report"]
    assert report["params"]["after"] < 0.35 * report["params"]["before"]
    assert report["bundle_bytes"]["after"] < 0.6 * report["bundle_bytes"]["before"]
    assert report["metric"]["after"]["test_accuracy"] > 0.85  # fine-tuned: the digits stay recognised
    assert {row["batch"] for row in report["latency"]} == {1, 32}
    assert report["parity"] and report["moved"]["max_abs"] > 0
    convs = [r for r in report["layers"] if r["name"].startswith("features")]
    assert all(r["shape_after"][0] < r["shape"][0] for r in convs)
    head = next(r for r in report["layers"] if r["name"] == "head.2.weight")
    assert head["shape_after"][0] == head["shape"][0] == 10  # the classes are an output: never pruned
    run = subprocess.run([sys.executable, "-m", "deploykit", "export", str(out), "--out", str(tmp_path / "cli")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["source"]["pruning"]["report"]["params"] == report["params"]
    _, model, _ = load_checkpoint(out)  # the pruned architecture rebuilds from the zoo config + the checkpoint
    assert deploykit.verify(tmp_path / "cli", model=model).passed
    shown = subprocess.run([sys.executable, "-m", "deploykit", "inspect", str(tmp_path / "cli")], capture_output=True,
                           text=True, timeout=300)
    assert f"pruned: structured (layer), sparsity 0.5, fine-tuned 100 steps; parameters {report['params']['before']:,}" \
        in shown.stdout and "test_accuracy" in shown.stdout, shown.stdout


def test_magnitude_90_stores_sparse_weights_and_quantizes(tmp_path: Path) -> None:
    """Unstructured 90 %: the bundle's weights are ONNX sparse initializers (the disk gain is real), parity holds
    on that stored form, and int8 quantization still reads them (densified first)."""
    report = prune("zoo:mlp", PruneOptions(0.9), tmp_path / "mlp.pt", iterations=10)
    assert report.params["nonzero_after"] <= 0.1 * sum(r["params"] for r in report.layers) + (
        report.params["after"] - sum(r["params"] for r in report.layers))
    assert report.bundle_bytes["after"] < 0.5 * report.bundle_bytes["before"]
    _, model, _ = load_checkpoint(tmp_path / "mlp.pt")
    bundle = deploykit.export(model, "mlp", tmp_path / "b")
    graph = onnx.load(str(bundle.path / "graphs" / "model.onnx"))
    assert len(graph.graph.sparse_initializer) >= 2
    quantized = subprocess.run([sys.executable, "-m", "deploykit", "quantize", str(bundle.path), "--mode",
                                "int8-dynamic", "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert quantized.returncode == 0, quantized.stderr


def test_pruned_language_model_keeps_its_generation_loops(tmp_path: Path) -> None:
    """A magnitude-pruned GPT (the zoo's architecture, small): the export's own loop checks (host KV-cache loop and
    the in-graph generation loop, whose body takes the densified weights) pass against the pruned torch model, and
    the two loops pick the same tokens."""
    from deploykit.models.transformer import GPT

    torch.manual_seed(0)
    model = GPT(vocab="abcdefgh ", context=48, dim=32, heads=2, layers=1).eval()
    pruned, _ = prune_model(model, PruneOptions(0.8), None)
    bundle = deploykit.export(pruned, "gpt", tmp_path / "b")
    assert "generate" in bundle.graphs
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=24)
    with deploykit.load(bundle.path) as dep:
        host = dep.generate(["abc ", "h"], greedy, host=True)
        assert host == dep.generate(["abc ", "h"], greedy, host=False) and all(len(t) > 4 for t in host)


def test_pruned_flow_stays_invertible() -> None:
    """Glow: the invertible 1x1 convolutions (no_prune) keep every weight; the coupling networks lose 70 %, and
    inverse(forward(x)) is still x."""
    entry = get_entry("glow-digits")
    model = entry.create().eval()
    pruned, _ = prune_model(copy.deepcopy(model), PruneOptions(0.7), None)
    names = [n for n in prunable(model)]
    assert names and not any("lower" in n or "upper" in n for n in names)
    x = torch.rand(3, *model.event_shape) if hasattr(model, "event_shape") else torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        z, _ = pruned.forward(x)
        back, _ = pruned.inverse(z)
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-4)


def test_every_zoo_model_with_weights_prunes_by_magnitude() -> None:
    """Magnitude pruning applies to every zoo family with trainable weights (untrained instances: the masks and the
    forward are what matters here; the trained ones are exported above)."""
    for name, entry in ZOO.items():
        model = entry.create()
        if not any(True for _ in model.parameters()):
            continue
        pruned, _ = prune_model(model, PruneOptions(0.5), None)
        zeros = sum(int((getattr(m, p) == 0).sum()) for m, p in prunable(pruned).values())
        total = sum(getattr(m, p).numel() for m, p in prunable(pruned).values())
        assert zeros >= 0.5 * total - 1, name


def test_sweep_writes_table_reports_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    run = subprocess.run([sys.executable, "-m", "deploykit", "prune", "zoo:mlp", "--sweep", "0.5,0.9", "--finetune",
                          "50", "--iterations", "5", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    table = (out / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| sparsity | test_accuracy |") and len(table) == 4
    reports = json.loads((out / "sweep.json").read_text())
    assert [r["options"]["sparsity"] for r in reports] == [0.5, 0.9]
    assert reports[1]["params"]["nonzero_after"] < reports[0]["params"]["nonzero_after"]
    assert (out / "sweep.png").stat().st_size > 1000 and (out / "pruned-0.9.pt").is_file()
    again = subprocess.run([sys.executable, "-m", "deploykit", "prune", "zoo:mlp", "--sweep", "0.5", "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "is not empty; pass --force" in again.stderr


def test_lottery_ticket_small() -> None:
    """Two rounds of iterative magnitude pruning with rewinding on the zoo MLP (short training): the sparsities
    follow 1 - 0.8^r, every variant trains, and the rewound ticket keeps the full network's accuracy at 64 %."""
    rows = lottery_ticket("mlp", rounds=2, steps=150)
    assert [round(r.remaining, 6) for r in rows] == [1.0, 0.8, 0.64]
    assert all(0 < v <= 1 for r in rows for v in (r.ticket, r.reinit, r.random_mask))
    assert rows[2].ticket >= rows[0].ticket - 0.03
    with pytest.raises(InputError, match="no step training loop"):
        lottery_ticket("hopfield-digits", rounds=1)


def test_structured_round_to_keeps_channel_counts_blocked() -> None:
    """--round-to 16: every pruned layer keeps a multiple of 16 channels (onnxruntime's blocked convolutions on
    AVX-512); the zoo CNN's 16-channel layers then stay whole and its 32-channel ones halve."""
    _, model, _ = load_checkpoint(trained("cnn"))
    pruned, record = prune_model(model, PruneOptions(0.5, "structured", scope="layer", round_to=16),
                                 _structured_inputs("cnn"))
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert record["round_to"] == 16 and all(m.out_channels % 16 == 0 for m in convs)
    assert sorted({m.out_channels for m in convs}) == [16]


def test_structured_pruning_that_would_remove_nothing_is_refused() -> None:
    _, model, _ = load_checkpoint(trained("cnn"))
    with pytest.raises(InputError, match="removed no channel.*--round-to 16"):
        prune_model(model, PruneOptions(0.75, "structured", scope="layer", round_to=16), _structured_inputs("cnn"))


def test_your_own_factory_prunes_and_exports_with_its_weights(tmp_path: Path) -> None:
    """`deploykit prune package.module:factory --family mlp` writes a checkpoint naming the factory; it exports as
    `package.module:factory@CHECKPOINT` (the architecture rebuilt by the factory, then pruned to the checkpoint's
    shapes), and the plain checkpoint path says how to load it. Fine-tuning needs a training loop: refused."""
    out = tmp_path / "tiny.pt"
    run = subprocess.run([sys.executable, "-m", "deploykit", "prune", "tests.conftest:TinyMLP", "--family", "mlp",
                          "--method", "structured", "--sparsity", "0.5", "--iterations", "5", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"deploykit export tests.conftest:TinyMLP@{out} --family mlp" in run.stdout
    payload = torch.load(out, weights_only=True)
    assert payload["factory"] == "tests.conftest:TinyMLP" and payload["state_dict"]["net.0.weight"].shape[0] == 4
    exported = subprocess.run([sys.executable, "-m", "deploykit", "export", f"tests.conftest:TinyMLP@{out}", "--family",
                               "mlp", "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["source"]["ref"] == "tests.conftest:TinyMLP" and manifest["source"]["pruning"]["method"] == "structured"
    plain = subprocess.run([sys.executable, "-m", "deploykit", "export", str(out), "--out", str(tmp_path / "c")],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "load it as `tests.conftest:TinyMLP@" in plain.stderr
    with pytest.raises(InputError, match="--finetune needs a training loop"):
        prune("tests.conftest:TinyMLP", PruneOptions(0.5, finetune=10), tmp_path / "f.pt", family="mlp")
    with pytest.raises(InputError, match="for hf:DIR, prune the model from Python"):
        prune("hf:models/x", PruneOptions(0.5), tmp_path / "h.pt")
