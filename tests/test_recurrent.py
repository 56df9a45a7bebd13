"""Recurrent families: scan recurrence vs torch, streaming, token generation, seq2seq, VRNN, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deploykit
from deploykit.errors import InputError
from deploykit.exporters.recurrence import OnnxRecurrence, PackedRecurrence
from deploykit.models import load_checkpoint, trained
from deploykit.models.data import digit_strings
from deploykit.runtimes.recurrent import CHUNKS, stream_input
from deploykit.runtimes.tokens import MODES, mode_config

LAYERS = [
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"num_layers": 1, "batch_first": True}),
    ("GRU", {"num_layers": 2, "batch_first": True, "bidirectional": True}),
    ("GRU", {"num_layers": 3}),
    ("RNN", {"nonlinearity": "tanh", "num_layers": 2}),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True, "bias": False}),
]


@pytest.mark.parametrize(("kind", "options"), LAYERS, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_onnx_recurrence_equals_torch_packed(kind: str, options: dict) -> None:
    """The rewrite that gets exported (eager: ONNX op semantics spelled out in torch) equals the user's layer."""
    torch.manual_seed(0)
    rnn = getattr(nn, kind)(5, 8, **options).eval()
    onnx_like, packed = OnnxRecurrence(rnn), PackedRecurrence(rnn)
    for batch, time in [(1, 1), (4, 9)]:
        x = torch.randn(batch, time, 5)
        lengths = torch.randint(0, time + 1, (batch,))
        lengths[0] = time
        state = tuple(torch.randn_like(s) for s in packed.zero_state(batch, x))
        with torch.no_grad():
            (ys, ss), (yp, sp) = onnx_like(x, lengths, state), packed(x, lengths, state)
        torch.testing.assert_close(ys, yp, atol=1e-6, rtol=1e-5)
        for a, b in zip(ss, sp):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        for row, length in enumerate(lengths.tolist()):
            assert torch.all(ys[row, length:] == 0)  # padded steps output zero, as pad_packed_sequence does


class TimeMajorTagger(nn.Module):
    """A user model: bidirectional, time-major GRU with a per-step head (sequence graph only)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.rnn = nn.GRU(3, 6, num_layers=2, bidirectional=True)
        self.head = nn.Linear(12, 4)


def test_bidirectional_time_major_export_has_no_stream(tmp_path) -> None:
    bundle = deploykit.export(TimeMajorTagger(), "rnn", tmp_path / "tagger")
    assert set(bundle.graphs) == {"sequence"}
    assert bundle.graphs["sequence"].spec.inputs[0].shape == ("time", "batch", 3)
    result = deploykit.verify(bundle, model=TimeMajorTagger(), fresh=True, seed=5)
    assert result.passed, result.report.table()
    with deploykit.load(bundle.path) as dep, pytest.raises(InputError, match="bidirectional rnn needs the whole sequence"):
        dep.stream(2)


def _original(name: str) -> nn.Module:
    return load_checkpoint(trained(name))[1]


def test_streaming_in_uneven_chunks_equals_torch_on_whole_sequence(zoo_bundle) -> None:
    """ORT chunk graph in 7 uneven chunks (one empty) == the user's torch model on the whole sequence."""
    bundle = zoo_bundle("lstm-denoiser")
    model = _original("lstm-denoiser")
    x = stream_input(3, 1)
    with deploykit.load(bundle.path) as dep:
        stream = dep.stream(streams=3)
        starts = [np.concatenate([[0], np.cumsum(CHUNKS[i:] + CHUNKS[:i])]) for i in range(3)]
        ys = [[], [], []]
        for k in range(len(CHUNKS)):
            for i, y in enumerate(stream.push([x[i, starts[i][k] : starts[i][k + 1]] for i in range(3)])):
                ys[i].append(y)
        streamed = np.stack([np.concatenate(y) for y in ys])
        with torch.no_grad():
            y_ref, (h_ref, c_ref) = model.rnn(torch.from_numpy(x))
            expected = model.head(y_ref).numpy()
        np.testing.assert_allclose(streamed, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(stream.state["h_0"], h_ref.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(stream.state["c_0"], c_ref.numpy(), atol=1e-5, rtol=0)
        stream.reset(1)
        assert not stream.state["h_0"][:, 1].any() and stream.state["h_0"][:, 0].any()


@pytest.mark.parametrize(("batch", "time"), [(1, 1), (5, 7), (1, 500), (5, 500)])
def test_sequence_graph_equals_users_model(zoo_bundle, batch: int, time: int) -> None:
    model = _original("lstm-denoiser")
    x = np.random.default_rng(time).standard_normal((batch, time, 1)).astype(np.float32)
    with deploykit.load(zoo_bundle("lstm-denoiser").path) as dep:
        y = dep.infer({"x": x, "lengths": np.full(batch, time)}, role="sequence")["y"]
    with torch.no_grad():
        np.testing.assert_allclose(y, model(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=0)


def test_denoiser_cleans_through_ort(zoo_bundle) -> None:
    from deploykit.models.data import noisy_tones

    noisy, clean = noisy_tones(64, 256, seed=7)
    with deploykit.load(zoo_bundle("lstm-denoiser").path) as dep:
        y = dep.infer({"x": noisy, "lengths": np.full(64, 256)}, role="sequence")["y"]
    assert ((y - clean) ** 2).mean() < 0.6 * ((noisy - clean) ** 2).mean()


@pytest.mark.parametrize("mode", list(MODES))
def test_generation_ort_equals_torch_200_tokens(zoo_bundle, mode: str) -> None:
    bundle = zoo_bundle("char-lm")
    prompts = ["Beautiful is", "Errors should never", "\n"]
    config = mode_config(mode, 200)
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        a, b = ort_dep.generate(prompts, config, seed=11), torch_dep.generate(prompts, config, seed=11)
    assert a == b
    assert all(len(t) == 200 for t in a)
    if mode == "greedy":
        assert a[0].startswith(" better than")  # the model learnt the Zen of Python


def test_stop_token_ends_rows_independently(zoo_bundle) -> None:
    bundle = zoo_bundle("char-lm")
    newline = bundle.loop.vocab.index("\n")
    prompts = ["Beautiful is", "Now is", "Flat"]
    with deploykit.load(bundle.path) as dep:
        free = dep.generate(prompts, mode_config("greedy", 200))
        stopped = dep.generate(prompts, mode_config("greedy", 200, stop=(newline,)))
    assert stopped == [f.split("\n")[0] for f in free]  # each row ends at its own first newline
    assert len({len(t) for t in stopped}) > 1


def test_seq2seq_reverses_digits_through_ort_greedy_and_beam(zoo_bundle) -> None:
    sources = ["".join(map(str, s)) for s in digit_strings(200, seed=42)]
    with deploykit.load(zoo_bundle("seq2seq").path) as dep:
        greedy = dep.translate(sources)
        beam = dep.translate(sources[:50], beams=4)
    exact = np.mean([g == s[::-1] for g, s in zip(greedy, sources)])
    assert exact > 0.9, exact
    assert np.mean([b == s[::-1] for b, s in zip(beam, sources)]) >= 0.9


def test_beam_search_ort_equals_torch(zoo_bundle) -> None:
    bundle = zoo_bundle("seq2seq")
    sources = ["".join(map(str, s)) for s in digit_strings(12, seed=3)]
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        for beams in (1, 3):
            assert ort_dep.translate(sources, beams) == torch_dep.translate(sources, beams)


def test_vrnn_trajectories_ort_equal_torch(zoo_bundle) -> None:
    bundle = zoo_bundle("vrnn")
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        a, b = ort_dep.sample(16, 2, ort_dep.options(steps=50)), torch_dep.sample(16, 2, torch_dep.options(steps=50))
    assert a.shape == (16, 50, 2)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    radius = np.linalg.norm(a[:, 5:], axis=-1)
    assert 0.2 < np.median(radius) < 2.0  # orbits, not noise blowing up


def test_recurrent_bad_inputs_are_named(zoo_bundle) -> None:
    with deploykit.load(zoo_bundle("lstm-denoiser").path) as dep:
        x = np.zeros((2, 5, 1), np.float32)
        h = np.zeros((2, 2, 48), np.float32)
        with pytest.raises(InputError, match=r"input 'h_0' has shape \[3, 2, 48\], expected \[2, batch, 48\]"):
            dep.infer({"x": x, "lengths": np.full(2, 5), "h_0": np.zeros((3, 2, 48), np.float32), "c_0": h}, "chunk")
        with pytest.raises(InputError, match=r"'lengths' has values in \[5, 9\], expected integers in \[0, 5\] \(at most 'time' = 5\)"):
            dep.infer({"x": x, "lengths": np.array([5, 9])}, "sequence")
        stream = dep.stream(2)
        with pytest.raises(InputError, match=r"chunk for stream 1 has shape \[4, 3\], expected \[time, 1\]"):
            stream.push([np.zeros((4, 1), np.float32), np.zeros((4, 3), np.float32)])
    with deploykit.load(zoo_bundle("char-lm").path) as dep:
        with pytest.raises(InputError, match="character 'é' at position 2"):
            dep.generate(["Beé"], mode_config("greedy", 5))
        with pytest.raises(InputError, match="prompt 0 is empty"):
            dep.generate([""], mode_config("greedy", 5))
    with deploykit.load(zoo_bundle("seq2seq").path) as dep, pytest.raises(InputError, match="source '12a'"):
        dep.translate(["12a"])
