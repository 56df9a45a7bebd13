"""Lossless compression with a bundle's own likelihood model: a range coder (constriction's queue coder) driven by
the model's next-symbol distributions spends about -log2 p(symbol) bits per symbol (MacKay 2003, ch. 6).

Two payloads. Text, under a language model: the first token under a uniform distribution, then one `step` per token
over the bundle's token model (a context-bounded model restarts from the last half of its context when it is full).
Arrays of examples at their levels, under a masked autoregressive model (PixelCNN pixels, FVSBN/MADE/NADE binary
dimensions, WaveNet mu-law codes): each example's values in the sampling order through the kind's SymbolModel, one
graph call per value at batch 1; a class-conditional model codes the label that gives the example its highest
likelihood first (uniform over the classes, its bits in the rate). Encoder and decoder make the same calls. Probabilities are computed in float64 from the logits and quantized by
constriction's leaky categorical model (fixed precision, every token at least one count), so equal logits give equal
integer frequencies. Floating point may differ across backends, thread counts and CPUs: the header records what
decoding needs (bundle, backend, threads, onnxruntime, machine) and decoding refuses another bundle or backend;
a sha256 of the original catches any other divergence, and then nothing is returned.

Text goes through the bundle's codec (its tokenizer.json, else its character vocabulary), only where decoding the
ids gives back the input exactly.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..backends.base import Runner
from ..bundle import MANIFEST, Bundle, sha256_file
from ..errors import InputError, optional_import
from ..onnx_refs import read_varint, varint
from .kinds import kind_of
from .tokens import Codec, LanguageModelConfig

MAGIC = b"DKZ\x02"  # deploykit compressed file, format 2: a binary header (about 70 bytes)
MAGIC_JSON = b"DKZ\x01"  # format 1: a JSON header (about 330 bytes), still read
DIGEST = 16  # bytes of each sha256 a format-2 header keeps (128 bits: a wrong bundle or output is never missed)
PAYLOADS = ("text", "array")
Progress = Callable[[int, int], None]  # (symbols done, symbols in all)


class SymbolModel(Protocol):
    """What a loop kind declares (`LoopKind.symbols`) to code one example's values: the values' range, the number of
    classes (0: unconditional), and the next value's distribution as values are pushed in `order`."""

    levels: int
    classes: int

    def check(self, shape: tuple[int, ...]) -> str | None:
        """What an example of `shape` should be instead, or None when it fits."""

    def order(self, shape: tuple[int, ...]) -> np.ndarray:
        """Flat indices of an example in coding order."""

    def begin(self, shape: tuple[int, ...], label: int | None) -> None:
        """Start coding one example."""

    def probabilities(self) -> np.ndarray:
        """The next value's distribution [levels] (float64)."""

    def push(self, symbol: int) -> None:
        """Take the next value."""


@dataclass(frozen=True)
class Header:
    """What a compressed file records besides the code: enough to refuse a decode that would go wrong."""

    bundle: str  # sha256 (hex; its first DIGEST bytes in format 2) of the bundle's manifest.json (every graph's sha256)
    backend: str
    threads: int | None  # the runners' intra-op threads (None: the backend's default)
    onnxruntime: str
    machine: str
    payload: str  # text | array
    symbols: int  # tokens, or values (labels included) of every example
    size: int  # bytes of the original (text) or of the array's data
    sha256: str  # of those bytes (hex, as `bundle`)
    window: int | None = None  # text: the model's context (full, it restarts from the last half)
    shape: list[int] | None = None  # array: [examples, ...]
    dtype: str | None = None  # array: its numpy dtype


@dataclass(frozen=True)
class Compressed:
    """A compressed file and its rate beside the model's own cross-entropy on the same symbols."""

    data: bytes
    header: Header
    cross_entropy_bits: float  # sum of -log2 p(symbol) under the float64 distributions coded with

    @property
    def bits_per_byte(self) -> float:
        """The whole file's bits (header included) per byte of the original."""
        return 8 * len(self.data) / max(self.header.size, 1)


def _coder() -> Any:
    return optional_import("constriction", "compression needs the constriction entropy coder: `pip install "
                                           "constriction` (or deploykit[compress]).")


class _TextModel:
    """Next-token distributions of a language model along a token sequence (the first token: uniform)."""

    def __init__(self, bundle: Bundle, runners: dict[str, Runner], window: int | None) -> None:
        loop = bundle.loop
        assert isinstance(loop, LanguageModelConfig)  # the codec (Deployment.codec) refused every other bundle
        self.model, self.vocab, self.window = kind_of(loop).token_model(runners, loop), len(loop.vocab), window
        self.seen: list[int] = []
        self.logits: np.ndarray | None = None
        self.fed = 0  # tokens the model's state holds

    def probabilities(self) -> np.ndarray:
        """Probabilities [vocab] (float64) of the next token."""
        if self.logits is None:
            return np.full(self.vocab, 1.0 / self.vocab)
        x = self.logits.astype(np.float64)
        p = np.exp(x - x.max())
        return p / p.sum()

    def push(self, token: int) -> None:
        """Append a token and run the model on it (restarting from the last half of the window when full)."""
        self.seen.append(token)
        if self.fed == 0 or (self.window is not None and self.fed >= self.window):
            keep = self.seen[-(self.window // 2):] if self.window is not None and self.fed else self.seen
            self.logits = self.model.start([np.asarray(keep, np.int64)])[0]
            self.fed = len(keep)
        else:
            self.logits = self.model.step(np.asarray([token], np.int64))[0]
            self.fed += 1


def _tokens_of(codec: Codec, data: bytes) -> np.ndarray:
    if not data:
        raise InputError("the input is empty; there is nothing to compress.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"input byte {exc.start} (0x{data[exc.start]:02x}) is not UTF-8 text; language-model "
                         "bundles compress text.") from exc
    ids = codec.encode(text, "input")
    if codec.decode(ids) != text:
        raise InputError("the bundle's tokenizer does not give this input back exactly (decode(encode(text)) differs: "
                         "normalization or unknown characters); it cannot be compressed losslessly with this bundle.")
    return ids


def _symbol_model(bundle: Bundle, runners: dict[str, Runner]) -> SymbolModel:
    kind = kind_of(bundle.loop)
    if kind.symbols is None:
        raise InputError(f"arrays compress under PixelCNN, FVSBN/MADE/NADE and WaveNet bundles; this "
                         f"'{bundle.loop.kind}' bundle ({kind.title}) has no per-value distributions to code with "
                         "(text goes to language-model bundles).")
    return kind.symbols(runners, bundle.loop)


def _levels_of(model: SymbolModel, x: np.ndarray) -> np.ndarray:
    """The examples [N, ...] as int64 levels; InputError naming the first value or shape that does not fit."""
    if x.ndim < 2 or not x.size:
        raise InputError(f"the input array has shape {list(x.shape)}; give examples stacked as [N, ...] (N >= 1).")
    if x.dtype.kind not in "biuf":
        raise InputError(f"the input array has dtype {x.dtype}; give integer levels 0..{model.levels - 1}.")
    problem = model.check(tuple(x.shape[1:]))
    if problem:
        raise InputError(f"the input array holds examples of shape {list(x.shape[1:])}; this bundle codes {problem}.")
    levels = x.astype(np.int64)
    bad = np.argwhere((levels != x) | (levels < 0) | (levels >= model.levels))
    if bad.size:
        at = tuple(int(i) for i in bad[0])
        raise InputError(f"value {x[at]!r} at index {list(at)} is not a level 0..{model.levels - 1} of this model "
                         "(values must be integers in the model's range: quantize them first).")
    return levels


def _labels(bundle: Bundle, runners: dict[str, Runner], model: SymbolModel, x: np.ndarray) -> list[int | None]:
    """Per example, the class under which the model gives it the highest likelihood (None: unconditional)."""
    if not model.classes:
        return [None] * len(x)
    loop, kind = bundle.loop, kind_of(bundle.loop)
    inputs = runners[loop.conditionals_roles()[0]].spec.inputs
    feed = x.astype(next(s.dtype for s in inputs if s.name == loop.input_name))
    scores = [kind.log_prob(runners, loop, feed, np.full(len(x), k, np.int64), False) for k in range(model.classes)]
    return [int(k) for k in np.argmax(np.stack(scores), 0)]


def _identity(bundle: Bundle, runners: dict[str, Runner]) -> dict[str, Any]:
    import onnxruntime

    runner = next(iter(runners.values()))
    return {"bundle": sha256_file(bundle.path / MANIFEST), "backend": runner.backend, "threads": runner.options.threads,
            "onnxruntime": onnxruntime.__version__, "machine": platform.machine()}


class _Counter:
    """Progress over `total` symbols."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def compress(bundle: Bundle, runners: dict[str, Runner], data: bytes | np.ndarray, codec: Codec | None = None,
             progress: Progress | None = None) -> Compressed:
    """Text (bytes, through `codec`, under a language model) or an array of examples (under a masked autoregressive
    model), coded with the bundle's active runners."""
    constriction = _coder()
    family = constriction.stream.model.Categorical(perfect=False)
    encoder = constriction.stream.queue.RangeEncoder()
    bits = 0.0

    def code(p: np.ndarray, symbol: int) -> None:
        nonlocal bits
        bits -= float(np.log2(p[symbol]))
        encoder.encode(np.asarray([symbol], np.int32), family, p[None])

    if isinstance(data, (bytes, bytearray)):
        assert codec is not None
        ids = _tokens_of(codec, bytes(data))
        window = bundle.loop.context if isinstance(bundle.loop, LanguageModelConfig) else None
        text, count = _TextModel(bundle, runners, window), _Counter(len(ids), progress)
        for token in ids.tolist():
            code(text.probabilities(), token)
            text.push(token)
            count.tick()
        raw = bytes(data)
        fields: dict[str, Any] = {"payload": "text", "symbols": int(len(ids)), "window": window}
    else:
        x = np.asarray(data)
        model = _symbol_model(bundle, runners)
        levels = _levels_of(model, x)
        labels = _labels(bundle, runners, model, levels)
        shape = tuple(x.shape[1:])
        order = model.order(shape)
        count = _Counter(len(x) * (len(order) + bool(model.classes)), progress)
        for example, label in zip(levels, labels):
            if label is not None:
                code(np.full(model.classes, 1.0 / model.classes), label)
                count.tick()
            model.begin(shape, label)
            for symbol in example.reshape(-1)[order].tolist():
                code(model.probabilities(), symbol)
                model.push(symbol)
                count.tick()
        raw = np.ascontiguousarray(x).tobytes()
        fields = {"payload": "array", "symbols": count.total, "shape": list(x.shape), "dtype": x.dtype.str}
    identity = _identity(bundle, runners)
    identity["bundle"] = identity["bundle"][:2 * DIGEST]
    header = Header(**identity, **fields, size=len(raw), sha256=hashlib.sha256(raw).hexdigest()[:2 * DIGEST])
    words = encoder.get_compressed().astype("<u4").tobytes()
    return Compressed(pack_header(header) + words, header, bits)


def _text(value: str) -> bytes:
    data = value.encode()[:255]
    return bytes([len(data)]) + data


def pack_header(header: Header) -> bytes:
    """The format-2 header: MAGIC, the two digests, the payload, backend / onnxruntime / machine (length-prefixed),
    threads (0: default), symbols, size, window (0: none) as varints, and an array's shape and dtype."""
    out = bytearray(MAGIC + bytes.fromhex(header.bundle)[:DIGEST] + bytes.fromhex(header.sha256)[:DIGEST])
    out.append(PAYLOADS.index(header.payload))
    for value in (header.backend, header.onnxruntime, header.machine):
        out += _text(value)
    for number in (header.threads or 0, header.symbols, header.size, header.window or 0):
        out += varint(number)
    if header.payload == "array":
        shape = header.shape or []
        out += varint(len(shape)) + b"".join(varint(d) for d in shape) + _text(header.dtype or "")
    return bytes(out)


class _Reader:
    """Fields of a format-2 header, in order; IndexError (ProtobufError for a varint) past its end."""

    def __init__(self, blob: bytes) -> None:
        self.blob, self.at = blob, len(MAGIC)

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.blob):
            raise IndexError("header ends early")
        self.at += n
        return self.blob[self.at - n:self.at]

    def number(self) -> int:
        value, self.at = read_varint(memoryview(self.blob), self.at)
        return value

    def text(self) -> str:
        return self.take(self.take(1)[0]).decode()


def _unpack_header(blob: bytes) -> tuple[Header, int]:
    """A format-2 header and where the code starts."""
    r = _Reader(blob)
    bundle, sha = r.take(DIGEST).hex(), r.take(DIGEST).hex()
    payload = PAYLOADS[r.take(1)[0]]
    backend, onnxruntime, machine = r.text(), r.text(), r.text()
    threads, symbols, size, window = (r.number() for _ in range(4))
    shape, dtype = None, None
    if payload == "array":
        shape = [r.number() for _ in range(min(r.number(), 64))]
        dtype = r.text()
    return Header(bundle, backend, threads or None, onnxruntime, machine, payload, symbols, size, sha, window or None,
                  shape, dtype), r.at


def _fits(header: Header) -> bool:
    """Whether an array header's shape and dtype describe exactly its `size` bytes (so decoding allocates no more)."""
    try:
        shape, itemsize = [int(n) for n in header.shape or []], np.dtype(header.dtype).itemsize
    except (TypeError, ValueError):
        return False
    return len(shape) >= 2 and min(shape) >= 1 and int(np.prod(shape, dtype=object)) * itemsize == header.size


def read_header(blob: bytes) -> tuple[Header, np.ndarray]:
    """The header and code words of a compressed file; InputError for anything else (truncated, corrupt)."""
    if blob[:4] not in (MAGIC, MAGIC_JSON) or len(blob) < 8:
        raise InputError("this is not a deploykit compressed file (no DKZ header); give a file `deploykit compress` "
                         "wrote.")
    try:
        if blob[:4] == MAGIC:
            header, start = _unpack_header(blob)
        else:
            (length,) = struct.unpack("<I", blob[4:8])
            header, start = Header(**json.loads(blob[8:8 + length])), 8 + length
    except (ValueError, TypeError, IndexError) as exc:  # ProtobufError and UnicodeDecodeError are ValueErrors
        raise InputError(f"the compressed file's header is corrupt ({type(exc).__name__}); it cannot be decoded.") from exc
    code = blob[start:]
    if len(code) % 4 or header.payload not in PAYLOADS or not 1 <= header.symbols <= 8 * max(header.size, 1) \
            or min(len(str(header.bundle)), len(str(header.sha256))) < 2 * DIGEST \
            or header.payload == "array" and not _fits(header):
        raise InputError(f"the compressed file is truncated or corrupt ({len(code)} code bytes, {header.symbols} "
                         f"symbols for {header.size} bytes of {header.payload!r}).")
    return header, np.frombuffer(code, "<u4").astype(np.uint32)


def decompress(bundle: Bundle, runners: dict[str, Runner], blob: bytes, codec: Codec | None = None,
               progress: Progress | None = None) -> bytes | np.ndarray:
    """The original of a file `compress` wrote with this bundle: bytes for text, the array for arrays. InputError when
    it was compressed with another bundle, backend or thread count, or when the decode does not reproduce the
    original's sha256 (nothing is returned then)."""
    constriction = _coder()
    header, words = read_header(blob)
    here = _identity(bundle, runners)
    if not here["bundle"].startswith(header.bundle):
        raise InputError("this file was compressed with another bundle (manifest sha256 "
                         f"{header.bundle[:12]}..., this bundle's is {here['bundle'][:12]}...); decompress it with "
                         "the bundle it was compressed with.")
    for key in ("backend", "threads"):
        if getattr(header, key) != here[key]:
            raise InputError(f"this file was compressed with {key} {getattr(header, key)!r} and is being decoded with "
                             f"{here[key]!r}; floating point differs between them, so decode with {key} "
                             f"{getattr(header, key)!r}.")
    family = constriction.stream.model.Categorical(perfect=False)
    decoder = constriction.stream.queue.RangeDecoder(words)
    count = _Counter(header.symbols, progress)

    def read(p: np.ndarray) -> int:
        count.tick()
        return int(decoder.decode(family, p[None])[0])

    try:
        if header.payload == "text":
            assert codec is not None
            text = _TextModel(bundle, runners, header.window)
            ids = np.empty(header.symbols, np.int64)
            for i in range(header.symbols):
                ids[i] = read(text.probabilities())
                text.push(int(ids[i]))
            data: bytes | np.ndarray = codec.decode(ids).encode("utf-8")
            raw = data
        else:
            model = _symbol_model(bundle, runners)
            shape = tuple(header.shape or ())
            order = model.order(shape[1:])
            x = np.zeros((shape[0], int(np.prod(shape[1:]))), np.int64)
            for row in x:
                label = read(np.full(model.classes, 1.0 / model.classes)) if model.classes else None
                model.begin(shape[1:], label)
                for position in order:
                    row[position] = read(model.probabilities())
                    model.push(int(row[position]))
            data = x.reshape(shape).astype(np.dtype(header.dtype or "int64"))
            raw = data.tobytes()
    except (ValueError, RuntimeError, AssertionError, IndexError) as exc:  # constriction on a code it cannot read
        raise InputError(f"the compressed code is corrupt or truncated ({str(exc)[:120] or type(exc).__name__}); "
                         "nothing was written.") from exc
    if len(raw) != header.size or not hashlib.sha256(raw).hexdigest().startswith(header.sha256):
        raise InputError(
            f"the decode does not reproduce the original (sha256 mismatch): the file is corrupt, or this machine "
            f"computes other probabilities (compressed on {header.machine} with onnxruntime {header.onnxruntime}, "
            f"{header.backend}, threads {header.threads}; here {here['machine']}, onnxruntime {here['onnxruntime']}). "
            "Nothing was written.")
    return data
