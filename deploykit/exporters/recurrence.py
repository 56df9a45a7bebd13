"""Recurrent layers with explicit state and per-row lengths, in two interchangeable implementations.

`PackedRecurrence` runs the user's own nn.RNN / nn.LSTM / nn.GRU through pack_padded_sequence: it
is the torch reference. `OnnxRecurrence` rewrites the layer as one custom op per layer whose ONNX
translation is the native RNN / GRU / LSTM operator with `sequence_lens`, weights reordered to
ONNX gate order at export. One graph then serves any batch and sequence length with ORT's fused
kernels. (torch's own export of nn.LSTM has no lengths and fails for Elman RNNs; torch scan
lowers to ONNX Scan, which pays ~15 us per step per layer.) Both take batch-first x [batch, time, features], lengths [batch] and a
state tuple ((h,) or (h, c), each [layers * directions, batch, hidden]) and return
(y [batch, time, directions * hidden], state). Padded steps leave the state alone and output 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import ExportError

State = tuple[torch.Tensor, ...]


def check_recurrent(rnn: nn.Module, what: str) -> nn.RNNBase:
    """`rnn` if it is an nn.RNN / nn.LSTM / nn.GRU this module can export, else ExportError."""
    if not isinstance(rnn, nn.RNNBase):
        raise ExportError(f"{what} is a {type(rnn).__name__}, expected torch.nn.RNN, nn.LSTM or nn.GRU.")
    if getattr(rnn, "proj_size", 0):
        raise ExportError(f"{what}: LSTM with proj_size={rnn.proj_size} is not supported; use proj_size=0.")
    return rnn


def state_names(rnn: nn.RNNBase) -> tuple[str, ...]:
    """Names of the state tensors: ('h',) or ('h', 'c') for an LSTM."""
    return ("h", "c") if rnn.mode == "LSTM" else ("h",)


def state_shape(rnn: nn.RNNBase) -> tuple[int, int]:
    """(layers * directions, hidden): the state shape without its batch axis (batch is axis 1)."""
    return rnn.num_layers * (2 if rnn.bidirectional else 1), rnn.hidden_size


class Recurrence(nn.Module):
    """What both implementations share: the state layout and an all-zero initial state."""

    def __init__(self, rnn: nn.Module, what: str) -> None:
        super().__init__()
        rnn = check_recurrent(rnn, what)
        self.state_count = len(state_names(rnn))
        self.rows, self.hidden = state_shape(rnn)

    def zero_state(self, batch: int, like: torch.Tensor) -> State:
        """All-zero initial state for `batch` rows."""
        return tuple(like.new_zeros(self.rows, batch, self.hidden) for _ in range(self.state_count))


class PackedRecurrence(Recurrence):
    """Reference: the user's module on a packed batch (rows of length 0 keep their state)."""

    def __init__(self, rnn: nn.Module, what: str = "rnn") -> None:
        super().__init__(rnn, what)
        self.rnn = rnn

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Run the layer over the valid steps of each row."""
        if not self.rnn.batch_first:
            x = x.transpose(0, 1)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), self.rnn.batch_first, enforce_sorted=False)
        y, out = self.rnn(packed, state if len(state) == 2 else state[0])
        y, _ = pad_packed_sequence(y, self.rnn.batch_first, total_length=x.shape[0 if not self.rnn.batch_first else 1])
        if not self.rnn.batch_first:
            y = y.transpose(0, 1)
        out = out if isinstance(out, tuple) else (out,)
        empty = lengths == 0
        y = y.masked_fill(empty[:, None, None], 0.0)
        return y, tuple(torch.where(empty[None, :, None], s, o) for s, o in zip(state, out))


# Gate order: torch stacks LSTM gates as (i, f, g, o) and GRU gates as (r, z, n); ONNX wants
# (i, o, f, c) and (z, r, h). Index of each ONNX gate block in torch's stacking:
ONNX_GATES = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN_TANH": (0,), "RNN_RELU": (0,)}


def _onnx_layout(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Reorder a torch gate-stacked weight or bias into ONNX gate order."""
    blocks = weight.chunk(len(ONNX_GATES[mode]), 0)
    return torch.cat([blocks[i] for i in ONNX_GATES[mode]], 0)


@torch.library.custom_op("deploykit::rnn_layer", mutates_args=())
def rnn_layer(
    x: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
    w: torch.Tensor, r: torch.Tensor, b: torch.Tensor, mode: str, hidden: int, directions: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer with ONNX RNN/GRU/LSTM semantics (time-major x, weights in ONNX layout, sequence_lens).

    Eager torch version of what the ONNX op computes: the reverse direction walks each row back
    from its own last valid step; steps past a row's length output 0 and keep its state.
    """
    time = x.shape[0]
    ys, hs, cs = [], [], []
    for d in range(directions):
        h, c = h0[d], c0[d]
        y = x.new_zeros(time, x.shape[1], hidden)
        for t in range(time) if d == 0 else range(time - 1, -1, -1):
            keep = (t < lengths).unsqueeze(1)
            xw, hr = x[t] @ w[d].T + b[d, : w.shape[1]], h @ r[d].T + b[d, w.shape[1] :]
            if mode == "LSTM":
                i, o, f, g = (xw + hr).chunk(4, -1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                c = torch.where(keep, c_new, c)
            elif mode == "GRU":
                (xz, xr, xh), (hz, hr_, hh) = xw.chunk(3, -1), hr.chunk(3, -1)
                z, rr = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr_)
                h_new = (1 - z) * torch.tanh(xh + rr * hh) + z * h
            else:
                h_new = (torch.tanh if mode == "RNN_TANH" else torch.relu)(xw + hr)
            h = torch.where(keep, h_new, h)
            y[t] = torch.where(keep, h, torch.zeros_like(h))
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return torch.cat(ys, -1), torch.stack(hs), torch.stack(cs)


@rnn_layer.register_fake
def _rnn_layer_shapes(x, lengths, h0, c0, w, r, b, mode, hidden, directions):
    return x.new_empty(x.shape[0], x.shape[1], directions * hidden), torch.empty_like(h0), torch.empty_like(c0)


def rnn_layer_onnx(
    x: Any, lengths: Any, h0: Any, c0: Any, w: Any, r: Any, b: Any, mode: str, hidden: int, directions: int
) -> tuple[Any, Any, Any]:
    """ONNX translation of deploykit::rnn_layer: the native RNN / GRU / LSTM operator with sequence_lens."""
    from onnxscript import opset18 as op

    seq = op.Cast(lengths, to=6)  # int32, as sequence_lens requires
    direction = "bidirectional" if directions == 2 else "forward"
    if mode == "LSTM":
        y, hn, cn = op.LSTM(x, w, r, b, seq, h0, c0, hidden_size=hidden, direction=direction)
    elif mode == "GRU":
        y, hn = op.GRU(x, w, r, b, seq, h0, hidden_size=hidden, direction=direction, linear_before_reset=1)
        cn = op.Identity(c0)
    else:
        activation = "Tanh" if mode == "RNN_TANH" else "Relu"
        y, hn = op.RNN(
            x, w, r, b, seq, h0, hidden_size=hidden, direction=direction, activations=[activation] * directions
        )
        cn = op.Identity(c0)
    y = op.Transpose(y, perm=[0, 2, 1, 3])  # [time, directions, batch, hidden] -> [time, batch, directions, hidden]
    return op.Reshape(y, op.Constant(value_ints=[0, 0, -1])), hn, cn


class OnnxRecurrence(Recurrence):
    """The user's layer rewritten as one deploykit::rnn_layer call per layer: exports to the native ONNX op."""

    def __init__(self, rnn: nn.Module, what: str = "rnn") -> None:
        super().__init__(rnn, what)
        self.mode = rnn.mode
        directions = ("", "_reverse")[: 2 if rnn.bidirectional else 1]
        for layer in range(rnn.num_layers):
            def stacked(kind: str, layer: int = layer) -> torch.Tensor:
                parts = []
                for suffix in directions:
                    value = getattr(rnn, f"{kind}_l{layer}{suffix}", None)
                    if value is None:  # bias=False
                        value = torch.zeros(getattr(rnn, f"weight_{kind[5:]}_l{layer}{suffix}").shape[0])
                    parts.append(_onnx_layout(value.detach(), self.mode))
                return torch.stack(parts)

            bias = torch.cat([stacked("bias_ih"), stacked("bias_hh")], -1)
            for name, value in (("w", stacked("weight_ih")), ("r", stacked("weight_hh")), ("b", bias)):
                self.register_buffer(f"{name}{layer}", value.clone())
        self.layers, self.directions = rnn.num_layers, len(directions)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Run all layers; rows of length 0 keep their initial state."""
        seq = x.transpose(0, 1)
        h0 = state[0]
        c0 = state[1] if len(state) == 2 else torch.zeros_like(h0)
        hs, cs = [], []
        for layer in range(self.layers):
            rows = slice(layer * self.directions, (layer + 1) * self.directions)
            w, r, b = (getattr(self, f"{n}{layer}") for n in "wrb")
            seq, h, c = torch.ops.deploykit.rnn_layer(
                seq, lengths, h0[rows], c0[rows], w, r, b, self.mode, self.hidden, self.directions
            )
            hs.append(h)
            cs.append(c)
        empty = (lengths == 0)[None, :, None]
        out = (torch.where(empty, h0, torch.cat(hs)),)
        if len(state) == 2:
            out += (torch.where(empty, c0, torch.cat(cs)),)
        return seq.transpose(0, 1), out


# What torch.onnx.export needs to lower the custom op.
ONNX_TRANSLATIONS = {torch.ops.deploykit.rnn_layer.default: rnn_layer_onnx}


def recurrence(rnn: nn.Module, reference: bool, what: str = "rnn") -> Recurrence:
    """PackedRecurrence (torch reference) or OnnxRecurrence (exported) over `rnn`."""
    return PackedRecurrence(rnn, what) if reference else OnnxRecurrence(rnn, what)
