"""Recurrent layers with explicit state and per-row lengths, in two interchangeable implementations.

`PackedRecurrence` runs the user's own nn.RNN / nn.LSTM / nn.GRU through pack_padded_sequence: it
is the torch reference. `ScanRecurrence` recomputes the same layer from its weights with torch's
scan, which torch.onnx lowers to ONNX Scan, so one graph serves any batch and any sequence length
(a Python loop would be unrolled to the example length, and torch's own RNN export has no lengths
and fails for Elman RNNs). Both take batch-first x [batch, time, features], lengths [batch] and a
state tuple ((h,) or (h, c), each [layers * directions, batch, hidden]) and return
(y [batch, time, directions * hidden], state). Padded steps leave the state alone and output 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch._higher_order_ops.scan import scan
from torch.nn import functional as F
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


def _reverse_index(lengths: torch.Tensor, time: int) -> torch.Tensor:
    """[time, batch] index reversing each row's first lengths[b] steps and leaving padding in place."""
    t = torch.arange(time, device=lengths.device).unsqueeze(1)
    return torch.where(t < lengths, lengths - 1 - t, t)


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [time, batch, f] reordered along time by index [time, batch]."""
    return torch.gather(x, 0, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ScanRecurrence(Recurrence):
    """The same layer recomputed with torch scan from the user's weights (what gets exported)."""

    def __init__(self, rnn: nn.Module, what: str = "rnn") -> None:
        super().__init__(rnn, what)
        self.mode = rnn.mode
        self.layers = rnn.num_layers
        self.directions = 2 if rnn.bidirectional else 1
        self.hidden = rnn.hidden_size
        self.params = nn.ParameterDict()
        for layer in range(self.layers):
            for suffix in ("", "_reverse")[: self.directions]:
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    name = f"{kind}_l{layer}{suffix}"
                    value = getattr(rnn, name, None)
                    if value is None:  # bias=False
                        rows = getattr(rnn, f"weight_{kind[5:]}_l{layer}{suffix}").shape[0]
                        value = torch.zeros(rows)
                    self.params[name] = nn.Parameter(value.detach().clone(), requires_grad=False)

    def _cell(self, xw: torch.Tensor, state: State, prefix: str) -> State:
        """One step: xw is the precomputed input projection W_ih x + b_ih."""
        h = state[0]
        hw = F.linear(h, self.params[f"weight_hh_{prefix}"], self.params[f"bias_hh_{prefix}"])
        if self.mode == "LSTM":
            i, f, g, o = (xw + hw).chunk(4, dim=-1)
            c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        if self.mode == "GRU":
            xr, xz, xn = xw.chunk(3, dim=-1)
            hr, hz, hn = hw.chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            return ((1 - z) * n + z * h,)
        act = torch.tanh if self.mode == "RNN_TANH" else torch.relu
        return (act(xw + hw),)

    def _direction(self, x: torch.Tensor, lengths: torch.Tensor, state: State, prefix: str) -> tuple[torch.Tensor, State]:
        """Scan one direction of one layer over time-major x [time, batch, f]."""
        xw = F.linear(x, self.params[f"weight_ih_{prefix}"], self.params[f"bias_ih_{prefix}"])
        steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)

        def body(carry: State, inp: tuple[torch.Tensor, torch.Tensor]) -> tuple[State, torch.Tensor]:
            xw_t, t = inp
            keep = (t < lengths).unsqueeze(1)
            new = tuple(torch.where(keep, n, o) for n, o in zip(self._cell(xw_t, carry, prefix), carry))
            return new, torch.where(keep, new[0], torch.zeros_like(new[0]))

        final, ys = scan(body, state, (xw, steps))
        return ys, final

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Run all layers and directions."""
        seq = x.transpose(0, 1)
        finals: list[State] = []
        for layer in range(self.layers):
            outs = []
            for d in range(self.directions):
                row = layer * self.directions + d
                s = tuple(part[row] for part in state)
                if d == 0:
                    y, f = self._direction(seq, lengths, s, f"l{layer}")
                else:
                    index = _reverse_index(lengths, seq.shape[0])
                    y, f = self._direction(_gather_time(seq, index), lengths, s, f"l{layer}_reverse")
                    y = _gather_time(y, index)
                outs.append(y)
                finals.append(f)
            seq = torch.cat(outs, dim=-1) if self.directions == 2 else outs[0]
        state_out = tuple(torch.stack([f[k] for f in finals]) for k in range(len(state)))
        return seq.transpose(0, 1), state_out


def recurrence(rnn: nn.Module, reference: bool, what: str = "rnn") -> Recurrence:
    """PackedRecurrence (torch reference) or ScanRecurrence (exported) over `rnn`."""
    return PackedRecurrence(rnn, what) if reference else ScanRecurrence(rnn, what)
