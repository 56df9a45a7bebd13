"""Host-side loops over recurrent graphs: streaming with carried state, token LMs, seq2seq, VRNN sampling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import Runner
from ..errors import InputError
from .kinds import TEXT, LoopConfig, LoopKind, Runners, SampleOptions, Writer, register
from .tokens import (
    LanguageModelConfig,
    TranslationConfig,
    check_language_model,
    check_prompts,
    check_translation,
    explain_flips,
    pad_prompts,
    translate_ids,
)

CHUNKS = (1, 7, 3, 12, 0, 9, 5)  # uneven chunk sizes, one of them empty; 37 steps in all


@dataclass(frozen=True, kw_only=True)
class StreamConfig(LoopConfig):
    """A recurrent `chunk` graph: data `input` -> `output`, with `states` (input name -> output name) carried."""

    kind = "stream"
    role: str
    input: str
    output: str
    states: dict[str, str]
    batch_first: bool


@dataclass(frozen=True, kw_only=True)
class TokenLMConfig(LanguageModelConfig):
    """A recurrent language model's `chunk` graph over tokens, with its states carried."""

    kind = "token_lm"
    input: str
    output: str
    states: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class Seq2SeqConfig(TranslationConfig):
    """A recurrent `encoder` and an attention `decoder_step` carrying the decoder `states`."""

    kind = "seq2seq"
    states: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class VrnnConfig(LoopConfig):
    """A VRNN `sample_step` graph: (h, eps_z, eps_x) -> x, z, h_next; `steps` is the default length."""

    kind = "vrnn"
    role: str
    steps: int
    x_dim: int
    z_dim: int
    hidden_size: int


@dataclass(frozen=True)
class VrnnOptions(SampleOptions):
    """Trajectory length (default: the model's)."""

    steps: int | None = None


def zero_states(runner: Runner, states: Mapping[str, str], batch: int) -> dict[str, np.ndarray]:
    """All-zero state inputs of `runner` for `batch` rows (shapes from the graph spec)."""
    specs = {s.name: s for s in runner.spec.inputs}
    return {name: np.zeros(specs[name].bind({"batch": batch}), np.float32) for name in states}


class Stream:
    """Several independent streams through a `chunk` graph; state is kept between push() calls.

    Each push takes one chunk per stream, [t_i, features] with any t_i (0 means no new data for
    that stream); chunks are padded into one batch and `lengths` keeps padded steps from
    touching the state.
    """

    def __init__(self, runner: Runner, loop: StreamConfig, streams: int = 1) -> None:
        if streams < 1:
            raise InputError(f"streams is {streams}, expected at least 1.")
        self.runner, self.loop, self.streams = runner, loop, streams
        self.features = int(next(s for s in runner.spec.inputs if s.name == loop.input).shape[-1])
        self.state = zero_states(runner, loop.states, streams)

    def reset(self, stream: int | None = None) -> None:
        """Zero the state of one stream (or of all)."""
        rows = slice(None) if stream is None else stream
        if stream is not None and not 0 <= stream < self.streams:
            raise InputError(f"stream {stream} does not exist; streams are 0..{self.streams - 1}.")
        for value in self.state.values():
            value[:, rows] = 0.0

    def push(self, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Feed one chunk per stream; return each stream's outputs for its chunk [t_i, outputs]."""
        if len(chunks) != self.streams:
            raise InputError(f"push got {len(chunks)} chunk(s), expected one per stream ({self.streams}).")
        for i, c in enumerate(chunks):
            if not isinstance(c, np.ndarray) or c.ndim != 2 or c.shape[1] != self.features:
                shape = list(c.shape) if isinstance(c, np.ndarray) else type(c).__name__
                raise InputError(
                    f"chunk for stream {i} has shape {shape}, expected [time, {self.features}] "
                    "(time steps by features; time may be any size, 0 included)."
                )
        lengths = np.asarray([len(c) for c in chunks], np.int64)
        width = max(1, int(lengths.max()))
        x = np.zeros((self.streams, width, self.features), np.float32)
        for i, c in enumerate(chunks):
            x[i, : len(c)] = c
        if not self.loop.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        out = self.runner.infer({self.loop.input: x, "lengths": lengths, **self.state})
        self.state = {name: out[out_name] for name, out_name in self.loop.states.items()}
        y = out[self.loop.output]
        if not self.loop.batch_first:
            y = y.transpose(1, 0, 2)
        return [y[i, : lengths[i]] for i in range(self.streams)]


class RecurrentLM:
    """TokenModel over an rnn-lm `chunk` graph: prompts run as one padded chunk, then one token per step."""

    def __init__(self, runner: Runner, loop: TokenLMConfig) -> None:
        self.runner, self.loop = runner, loop
        self.vocab_size = len(loop.vocab)
        self.state: dict[str, np.ndarray] = {}

    def _run(self, tokens: np.ndarray, lengths: np.ndarray, checked: bool) -> np.ndarray:
        out = self.runner.infer({"tokens": tokens, "lengths": lengths, **self.state}, checked)
        self.state = {name: out[out_name] for name, out_name in self.loop.states.items()}
        return out["logits"]

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Run the prompts; logits after each prompt's last token."""
        lengths = check_prompts(prompts, self.vocab_size)
        tokens, _ = pad_prompts(prompts)
        self.state = zero_states(self.runner, self.loop.states, len(prompts))
        logits = self._run(tokens, lengths, checked=False)
        return logits[np.arange(len(prompts)), lengths - 1]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """One token per row."""
        return self._run(tokens[:, None], np.ones(len(tokens), np.int64), checked=True)[:, 0]

    def select(self, rows: np.ndarray) -> None:
        """Reorder the state's batch axis."""
        self.state = {k: np.ascontiguousarray(v[:, rows]) for k, v in self.state.items()}


class Seq2SeqModel:
    """TokenModel over seq2seq `encoder` + `decoder_step` graphs: start() encodes sources and feeds bos."""

    def __init__(self, runners: Runners, loop: Seq2SeqConfig) -> None:
        self.encoder, self.decoder, self.loop = runners["encoder"], runners["decoder_step"], loop
        self.vocab_size = len(loop.tgt_vocab)
        self.context: dict[str, np.ndarray] = {}

    def _run(self, tokens: np.ndarray, checked: bool) -> np.ndarray:
        out = self.decoder.infer({"token": tokens, **self.context}, checked)
        for name, out_name in self.loop.states.items():
            self.context[name] = out[out_name]
        return out["logits"]

    def start(self, prompts: Sequence[np.ndarray]) -> np.ndarray:
        """Encode the source sequences, then run the bos step."""
        lengths = check_prompts(prompts, len(self.loop.src_vocab), "source")
        src, _ = pad_prompts(prompts)
        enc = self.encoder.infer({"src": src, "src_lengths": lengths})
        self.context = {"memory": enc["memory"], "src_lengths": lengths, **{k: enc[k] for k in self.loop.states}}
        return self._run(np.full(len(prompts), self.loop.bos, np.int64), checked=False)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Next decoder step."""
        return self._run(tokens, checked=True)

    def select(self, rows: np.ndarray) -> None:
        """Reorder rows of memory, lengths and state (states have batch on axis 1)."""
        self.context = {
            k: np.ascontiguousarray(v[:, rows] if k in self.loop.states else v[rows]) for k, v in self.context.items()
        }


def sample_vrnn(runner: Runner, loop: VrnnConfig, n: int, steps: int | None, seed: int) -> np.ndarray:
    """`n` trajectories [n, steps, x_dim] from a VRNN step graph; noise from numpy's PCG64 with `seed`."""
    steps = loop.steps if steps is None else steps
    if n < 1 or steps < 1:
        raise InputError(f"n={n} and steps={steps}; both must be at least 1.")
    rng = np.random.default_rng(seed)
    h = np.zeros((n, loop.hidden_size), np.float32)
    xs = []
    for _ in range(steps):
        eps_z = rng.standard_normal((n, loop.z_dim), dtype=np.float32)
        eps_x = rng.standard_normal((n, loop.x_dim), dtype=np.float32)
        out = runner.infer({"h": h, "eps_z": eps_z, "eps_x": eps_x})
        h = out["h_next"]
        xs.append(out["x"])
    return np.stack(xs, 1)


def stream_input(seed: int, features: int) -> np.ndarray:
    """The [3, 37, features] sequence check_stream feeds."""
    return np.random.default_rng(seed).standard_normal((3, sum(CHUNKS), features)).astype(np.float32)


def check_stream(runners: Runners, loop: StreamConfig, seed: int) -> dict[str, np.ndarray]:
    """Three streams fed in uneven chunks (stream i takes CHUNKS rotated by i): outputs and final states."""
    stream = Stream(runners[loop.role], loop, streams=3)
    x = stream_input(seed, stream.features)
    schedules = [CHUNKS[i:] + CHUNKS[:i] for i in range(3)]
    starts = [np.concatenate([[0], np.cumsum(s)]) for s in schedules]
    pieces: list[list[np.ndarray]] = [[], [], []]
    for k in range(len(CHUNKS)):
        chunks = [x[i, starts[i][k] : starts[i][k + 1]] for i in range(3)]
        for i, y in enumerate(stream.push(chunks)):
            pieces[i].append(y)
    return {"y": np.stack([np.concatenate(p) for p in pieces])} | {f"final.{k}": v for k, v in stream.state.items()}


def check_vrnn(runners: Runners, loop: VrnnConfig, seed: int) -> dict[str, np.ndarray]:
    """Four trajectories of the model's default length."""
    return {"x": sample_vrnn(runners[loop.role], loop, 4, None, seed)}


register(LoopKind(StreamConfig, "streaming RNN", "stream", check=check_stream))
register(LoopKind(TokenLMConfig, "recurrent LM", "generate", check=check_language_model, flips=explain_flips, writer=TEXT,
                  token_model=lambda runners, loop: RecurrentLM(runners[loop.role], loop)))
register(LoopKind(Seq2SeqConfig, "seq2seq", "translate", check=check_translation, writer=TEXT, token_model=Seq2SeqModel, translate=translate_ids))
register(LoopKind(
    VrnnConfig, "VRNN", "sample", VrnnOptions,
    sample=lambda runners, loop, n, seed, o: sample_vrnn(runners[loop.role], loop, n, o.steps, seed),
    check=check_vrnn, writer=Writer((".npy",), "VRNN trajectories are written as .npy [n, steps, x_dim]."),
))
