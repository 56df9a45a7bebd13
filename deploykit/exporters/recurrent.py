"""Recurrent families: RNN/LSTM/GRU sequence models, token LMs, seq2seq with attention, VRNN.

Each recurrent layer is exported through ScanRecurrence (recurrence.py) and checked against the
user's own nn.RNN/LSTM/GRU run on packed sequences. States are explicit graph inputs `h_0`
(`c_0` for LSTMs) and outputs `h_n` (`c_n`), shaped [layers * directions, batch, hidden] as in torch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ExportError
from ..runtimes.graphs import SequenceConfig
from ..runtimes.recurrent import Seq2SeqConfig, StreamConfig, TokenLMConfig, VrnnConfig
from ..runtimes.tokens import lm_fields
from ..specs import TensorSpec
from .onnx_export import weight_bytes
from .recurrence import check_recurrent, recurrence, state_names, state_shape
from .registry import Family, Role, Tolerance, attribute, register

RNN_PROTOCOL = (
    "`rnn` (nn.RNN, nn.LSTM or nn.GRU; batch_first or not, stacked, bidirectional) and optionally `head` "
    "(applied to the rnn output at every step, e.g. nn.Linear). Input x is [batch, time, rnn.input_size] "
    "(time-major if the rnn is not batch_first)."
)
LM_PROTOCOL = (
    "`embed` (nn.Embedding), a unidirectional batch_first `rnn` (nn.RNN, nn.LSTM or nn.GRU), `head` "
    "(rnn output -> logits over the vocabulary) and `vocab` (a str of characters or a list of token strings; "
    "index = token id)."
)
SEQ2SEQ_PROTOCOL = (
    "`src_embed`, `encoder` (batch_first nn.GRU/LSTM/RNN, may be bidirectional), `bridge` (encoder h_n -> "
    "decoder h_0), `tgt_embed`, `decoder` (unidirectional batch_first nn.GRU/LSTM/RNN), `attention` "
    "((query [B, H], memory [B, S, M], mask [B, S] bool) -> (context [B, M], weights [B, S])), `head` "
    "(cat(decoder output, context) -> logits), `src_vocab`, `tgt_vocab`, `bos`, `eos`, `max_target_length`."
)
VRNN_PROTOCOL = (
    "`x_dim`, `z_dim`, `hidden_size`, `steps` (default trajectory length) and "
    "sample_step(h [B, hidden], eps_z [B, z_dim], eps_x [B, x_dim]) -> (x, z, h_next)."
)
# One export serves single steps, short and long sequences, single rows and batches.
SEQUENCE_SHAPES = [{"batch": 1, "time": 1}, {"batch": 5, "time": 7}, {"batch": 1, "time": 500}, {"batch": 5, "time": 500}]
LENGTHS = TensorSpec("lengths", "int64", ("batch",), high="time")


def _state_specs(rnn: nn.RNNBase, suffix: str) -> tuple[TensorSpec, ...]:
    rows, hidden = state_shape(rnn)
    return tuple(TensorSpec(f"{n}_{suffix}", "float32", (rows, "batch", hidden)) for n in state_names(rnn))


def _state_map(rnn: nn.RNNBase) -> dict[str, str]:
    """Graph input name -> output name of each state, for the runtime loops."""
    return {f"{n}_0": f"{n}_n" for n in state_names(rnn)}


class SequenceRole(nn.Module):
    """[embed ->] recurrence [-> head] with lengths and optional initial state (zeros when absent)."""

    def __init__(self, model: nn.Module, reference: bool) -> None:
        super().__init__()
        self.time_major = not model.rnn.batch_first
        self.embed = getattr(model, "embed", None) or nn.Identity()
        self.rec = recurrence(model.rnn, reference)
        self.head = getattr(model, "head", None) or nn.Identity()

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, h_0: torch.Tensor | None = None, c_0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Run the sequence; returns (outputs, h_n[, c_n])."""
        if self.time_major:
            x = x.transpose(0, 1)
        x = self.embed(x)
        if h_0 is None:
            state = self.rec.zero_state(x.shape[0], x)
        else:
            state = (h_0,) if c_0 is None else (h_0, c_0)
        y, state = self.rec(x, lengths, state)
        y = self.head(y)
        return (y.transpose(0, 1) if self.time_major else y, *state)


def _sequence_roles(model: nn.Module, x: TensorSpec, output: str) -> dict[str, Role]:
    rnn = model.rnn
    example = {"batch": 2, "time": 3}
    outputs = (output, *(f"{n}_n" for n in state_names(rnn)))
    roles = {"sequence": Role(SequenceRole(model, False), (x, LENGTHS), outputs, example, reference=SequenceRole(model, True))}
    if not rnn.bidirectional:  # a backward direction needs the future: no streaming
        inputs = (x, LENGTHS, *_state_specs(rnn, "0"))
        roles["chunk"] = Role(SequenceRole(model, False), inputs, outputs, example, reference=SequenceRole(model, True))
    return roles


def _rnn(model: nn.Module, family: str, protocol: str) -> nn.RNNBase:
    return check_recurrent(attribute(model, "rnn", family, protocol), f"{type(model).__name__}.rnn")


def _rnn_roles(model: nn.Module) -> dict[str, Role]:
    rnn = _rnn(model, "rnn", RNN_PROTOCOL)
    axes = ("batch", "time") if rnn.batch_first else ("time", "batch")
    return _sequence_roles(model, TensorSpec("x", "float32", (*axes, rnn.input_size)), "y")


def _rnn_loop(model: nn.Module) -> StreamConfig | SequenceConfig:
    rnn = model.rnn
    if rnn.bidirectional:
        return SequenceConfig(batch_first=rnn.batch_first)
    return StreamConfig(role="chunk", input="x", output="y", states=_state_map(rnn), batch_first=rnn.batch_first)


def vocabulary(model: nn.Module, name: str, family: str, protocol: str) -> list[str]:
    """A model's vocabulary as a list of token strings."""
    vocab = attribute(model, name, family, protocol)
    return list(vocab) if isinstance(vocab, str) else [str(t) for t in vocab]


def _lm_roles(model: nn.Module) -> dict[str, Role]:
    rnn = _rnn(model, "rnn-lm", LM_PROTOCOL)
    if rnn.bidirectional or not rnn.batch_first:
        raise ExportError("rnn-lm needs a unidirectional, batch_first rnn (it generates left to right).")
    embed = attribute(model, "embed", "rnn-lm", LM_PROTOCOL)
    attribute(model, "head", "rnn-lm", LM_PROTOCOL)
    tokens = TensorSpec("tokens", "int64", ("batch", "time"), high=int(embed.num_embeddings))
    return _sequence_roles(model, tokens, "logits")


def _lm_loop(model: nn.Module) -> TokenLMConfig:
    return TokenLMConfig(role="chunk", input="tokens", output="logits", states=_state_map(model.rnn),
                         vocab=vocabulary(model, "vocab", "rnn-lm", LM_PROTOCOL), **lm_fields(model, weight_bytes(model)))


class Seq2SeqEncoder(nn.Module):
    """src tokens -> memory (encoder outputs, zero at padding) and the decoder's initial state."""

    def __init__(self, model: nn.Module, reference: bool) -> None:
        super().__init__()
        self.embed, self.bridge = model.src_embed, model.bridge
        self.rec = recurrence(model.encoder, reference, "encoder")
        self.decoder_lstm = model.decoder.mode == "LSTM"

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns (memory, h_0[, c_0]) for the decoder."""
        x = self.embed(src)
        memory, state = self.rec(x, src_lengths, self.rec.zero_state(x.shape[0], x))
        h_0 = self.bridge(state[0])
        return (memory, h_0, torch.zeros_like(h_0)) if self.decoder_lstm else (memory, h_0)


class Seq2SeqDecoderStep(nn.Module):
    """One decoder step: previous token and state, attention over memory -> logits, state, weights."""

    def __init__(self, model: nn.Module, reference: bool) -> None:
        super().__init__()
        self.embed, self.attention, self.head = model.tgt_embed, model.attention, model.head
        self.rec = recurrence(model.decoder, reference, "decoder")

    def forward(
        self, token: torch.Tensor, memory: torch.Tensor, src_lengths: torch.Tensor,
        h_0: torch.Tensor, c_0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Returns (logits, h_n[, c_n], attention)."""
        x = self.embed(token).unsqueeze(1)
        state = (h_0,) if c_0 is None else (h_0, c_0)
        out, state = self.rec(x, torch.ones_like(src_lengths), state)
        mask = torch.arange(memory.shape[1], device=memory.device)[None, :] < src_lengths[:, None]
        context, weights = self.attention(out[:, 0], memory, mask)
        logits = self.head(torch.cat([out[:, 0], context], dim=-1))
        return (logits, *state, weights)


def _seq2seq_parts(model: nn.Module) -> tuple[nn.RNNBase, nn.RNNBase]:
    for part in ("src_embed", "bridge", "tgt_embed", "attention", "head", "bos", "eos", "max_target_length"):
        attribute(model, part, "seq2seq", SEQ2SEQ_PROTOCOL)
    encoder = check_recurrent(attribute(model, "encoder", "seq2seq", SEQ2SEQ_PROTOCOL), "encoder")
    decoder = check_recurrent(attribute(model, "decoder", "seq2seq", SEQ2SEQ_PROTOCOL), "decoder")
    if not (encoder.batch_first and decoder.batch_first) or decoder.bidirectional:
        raise ExportError("seq2seq needs batch_first encoder and decoder, and a unidirectional decoder.")
    return encoder, decoder


def _seq2seq_roles(model: nn.Module) -> dict[str, Role]:
    _, decoder = _seq2seq_parts(model)
    src_vocab = len(vocabulary(model, "src_vocab", "seq2seq", SEQ2SEQ_PROTOCOL))
    tgt_vocab = len(vocabulary(model, "tgt_vocab", "seq2seq", SEQ2SEQ_PROTOCOL))
    src = TensorSpec("src", "int64", ("batch", "src_time"), high=src_vocab)
    src_lengths = TensorSpec("src_lengths", "int64", ("batch",), high="src_time", low=1)
    states = _state_specs(decoder, "0")
    with torch.no_grad():
        enc = Seq2SeqEncoder(model, False)
        memory_dim = enc(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([2]))[0].shape[-1]
    memory = TensorSpec("memory", "float32", ("batch", "src_time", int(memory_dim)))
    example = {"batch": 2, "src_time": 3}
    return {
        "encoder": Role(enc, (src, src_lengths), ("memory", *(s.name for s in states)), example,
                        reference=Seq2SeqEncoder(model, True)),
        "decoder_step": Role(
            Seq2SeqDecoderStep(model, False),
            (TensorSpec("token", "int64", ("batch",), high=tgt_vocab), memory, src_lengths, *states),
            ("logits", *(f"{n}_n" for n in state_names(decoder)), "attention"),
            example,
            reference=Seq2SeqDecoderStep(model, True),
        ),
    }


def _seq2seq_loop(model: nn.Module) -> Seq2SeqConfig:
    return Seq2SeqConfig(
        states=_state_map(model.decoder),
        src_vocab=vocabulary(model, "src_vocab", "seq2seq", SEQ2SEQ_PROTOCOL),
        tgt_vocab=vocabulary(model, "tgt_vocab", "seq2seq", SEQ2SEQ_PROTOCOL),
        bos=int(model.bos), eos=int(model.eos), max_target_length=int(model.max_target_length),
    )


class VRNNStep(nn.Module):
    """The model's sample_step as a module (one generation step with injected noise)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, h: torch.Tensor, eps_z: torch.Tensor, eps_x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(x, z, h_next)."""
        return self.model.sample_step(h, eps_z, eps_x)


def _vrnn_roles(model: nn.Module) -> dict[str, Role]:
    attribute(model, "sample_step", "vrnn", VRNN_PROTOCOL)
    dims = {k: int(attribute(model, k, "vrnn", VRNN_PROTOCOL)) for k in ("x_dim", "z_dim", "hidden_size")}
    inputs = (
        TensorSpec("h", "float32", ("batch", dims["hidden_size"])),
        TensorSpec("eps_z", "float32", ("batch", dims["z_dim"])),
        TensorSpec("eps_x", "float32", ("batch", dims["x_dim"])),
    )
    return {"sample_step": Role(VRNNStep(model), inputs, ("x", "z", "h_next"), {"batch": 2})}


def _vrnn_loop(model: nn.Module) -> VrnnConfig:
    return VrnnConfig(role="sample_step", steps=int(attribute(model, "steps", "vrnn", VRNN_PROTOCOL)),
                      x_dim=int(model.x_dim), z_dim=int(model.z_dim), hidden_size=int(model.hidden_size))


# Tolerances, fp32, for |ort - torch| <= atol + rtol * |torch|. ORT's fused RNN kernels and torch's
# sum the gate matmuls in different orders (~1e-7 per step); the recurrences are contracting, so
# over 500-2000 steps the error stays ~1e-6 rather than growing with time. Worst max-abs error over
# 10 fresh seeds on the trained zoo models, ORT-CPU 1.31 vs torch 2.13, is noted beside each; bounds
# keep >= 5x headroom. Logits (LM, seq2seq) are larger than hidden states, hence wider atols; a VRNN
# trajectory feeds each sample back through exp(log sigma), so 24 chained steps grow the error.
# Token loops (generation, beam search) compare ids exactly: a difference of 1 fails any atol here.
register(Family("rnn", "RNN / LSTM / GRU sequence model: sequence and streaming chunk graphs", RNN_PROTOCOL,
                _rnn_roles, lambda m: SEQUENCE_SHAPES, Tolerance(1e-5, 1e-4), ("stream", "sequence",), _rnn_loop))  # seen 6.0e-7
register(Family("rnn-lm", "recurrent token language model with a generation loop", LM_PROTOCOL,
                _lm_roles, lambda m: SEQUENCE_SHAPES, Tolerance(1e-4, 1e-4), ("token_lm",), _lm_loop))  # seen 1.9e-5
register(Family("seq2seq", "encoder-decoder with attention: encoder + decoder step, greedy and beam search",
                SEQ2SEQ_PROTOCOL, _seq2seq_roles,
                lambda m: [{"batch": 1, "src_time": 1}, {"batch": 5, "src_time": 7}, {"batch": 3, "src_time": 40}],
                Tolerance(5e-5, 1e-4), ("seq2seq",), _seq2seq_loop))  # seen 6.4e-6
register(Family("vrnn", "variational RNN: one sampling step with injected noise", VRNN_PROTOCOL,
                _vrnn_roles, lambda m: [{"batch": 1}, {"batch": 7}], Tolerance(5e-5, 1e-4), ("vrnn",), _vrnn_loop))  # seen 6.1e-6
