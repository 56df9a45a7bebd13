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

Inputs of any size stream in bounded memory: the code is a sequence of segments (format 3), each a range code of one
piece of the input (a text chunk of at most CHUNK bytes cut after a newline or at a character boundary, or the
examples of about CHUNK bytes of an array), while the model's state runs on across segments. A first pass reads the
input once for its size, sha256, symbol count and every refusal (nothing is coded before the input is known good);
the second codes it.

Text goes through the bundle's codec (its tokenizer.json, else its character vocabulary), chunk by chunk, only where
decoding a chunk's ids gives back the chunk exactly.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import numpy as np

from ..backends.base import Runner
from ..bundle import MANIFEST, Bundle, sha256_file
from ..errors import InputError, optional_import
from ..onnx_refs import read_varint, varint
from .kinds import kind_of
from .tokens import Codec, LanguageModelConfig

MAGIC = b"DKZ\x03"  # deploykit compressed file, format 3: a binary header (about 70 bytes), then segments
MAGIC_ONE_CODE = b"DKZ\x02"  # format 2: the same header, then one code to the end of the file (still read)
MAGIC_JSON = b"DKZ\x01"  # format 1: a JSON header (about 330 bytes), then one code (still read)
DIGEST = 16  # bytes of each sha256 a binary header keeps (128 bits: a wrong bundle or output is never missed)
PAYLOADS = ("text", "array")
CHUNK = 1 << 16  # bytes of input per segment: memory stays bounded, the range coder's flush costs < 0.02 %
Progress = Callable[[int, int], None]  # (symbols done, symbols in all)
TextCodec = Callable[[], Codec]  # the bundle's codec, asked for only when the payload is text


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
    """What `compress` wrote, and its rate beside the model's own cross-entropy on the same symbols."""

    header: Header
    length: int  # bytes of the whole file
    code_bytes: int  # bytes of range code in it (the rest: the header and each segment's two lengths)
    cross_entropy_bits: float  # sum of -log2 p(symbol) under the float64 distributions coded with
    data: bytes = b""  # the file itself, when it was written to memory (Deployment.compress without `out`)

    @property
    def bits_per_byte(self) -> float:
        """The whole file's bits (header included) per byte of the original."""
        return 8 * self.length / max(self.header.size, 1)


def _coder() -> Any:
    return optional_import("constriction", "compression needs the constriction entropy coder: `pip install "
                                           "constriction` (or deploykit[compress]).")


class _TextModel:
    """Next-token distributions of a language model along a token sequence (the first token: uniform)."""

    def __init__(self, bundle: Bundle, runners: dict[str, Runner], window: int | None) -> None:
        loop = bundle.loop
        assert isinstance(loop, LanguageModelConfig)  # the codec (Deployment.codec) refused every other bundle
        self.model, self.vocab, self.window = kind_of(loop).token_model(runners, loop), len(loop.vocab), window
        self.seen: deque[int] = deque(maxlen=window or 1)  # what a restart needs, no more
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
            keep = list(self.seen)[-(self.window // 2):] if self.window is not None and self.fed else [token]
            self.logits = self.model.start([np.asarray(keep, np.int64)])[0]
            self.fed = len(keep)
        else:
            self.logits = self.model.step(np.asarray([token], np.int64))[0]
            self.fed += 1


Walk = Generator[np.ndarray, int, Any]  # yields each next symbol's distribution, is sent the symbol, returns the piece


def _text_walk(model: _TextModel, tokens: int) -> Walk:
    """`tokens` tokens through the language model; returns their ids."""
    ids: list[int] = []
    for _ in range(tokens):
        ids.append((yield model.probabilities()))
        model.push(ids[-1])
    return np.asarray(ids, np.int64)


def _array_walk(model: SymbolModel, shape: tuple[int, ...], examples: int) -> Walk:
    """`examples` examples of `shape` (each after its label, for a class-conditional model); returns them flat."""
    order = model.order(shape)
    out = np.zeros((examples, order.size), np.int64)
    for row in out:
        label = (yield np.full(model.classes, 1.0 / model.classes)) if model.classes else None
        model.begin(shape, label)
        for position in order.tolist():
            row[position] = yield model.probabilities()
            model.push(int(row[position]))
    return out


def _drive(walk: Walk, choose: Callable[[np.ndarray], int]) -> Any:
    """Run a walk, `choose` giving each symbol from its distribution (the encoder: the input's, coding it; the decoder:
    the code's); the walk's result."""
    try:
        p = next(walk)
        while True:
            p = walk.send(choose(p))
    except StopIteration as done:
        return done.value


def _last_character(block: bytes) -> int:
    """Where the last (possibly partial) UTF-8 character of `block` starts (its length when none is found)."""
    at = len(block) - 1
    while at > 0 and block[at] & 0xC0 == 0x80:
        at -= 1
    return at or len(block)


def _chunks(source: BinaryIO) -> Iterator[str]:
    """The text of `source` in pieces of at most CHUNK bytes, each cut after its last newline in its second half, else
    before its last character; InputError naming the first byte that is not UTF-8."""
    offset, rest = 0, b""
    while block := rest + source.read(CHUNK - len(rest)):
        cut = len(block)
        if cut == CHUNK:
            newline = block.rfind(b"\n", CHUNK // 2)
            cut = newline + 1 if newline >= 0 else _last_character(block)
        try:
            yield block[:cut].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"input byte {offset + exc.start} (0x{block[exc.start]:02x}) is not UTF-8 text; "
                             "language-model bundles compress text.") from exc
        offset, rest = offset + cut, block[cut:]


def _ids_of(codec: Codec, text: str) -> np.ndarray:
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


def _check_array(model: SymbolModel, x: np.ndarray) -> None:
    if x.ndim < 2 or not x.size:
        raise InputError(f"the input array has shape {list(x.shape)}; give examples stacked as [N, ...] (N >= 1).")
    if x.dtype.kind not in "biuf":
        raise InputError(f"the input array has dtype {x.dtype}; give integer levels 0..{model.levels - 1}.")
    problem = model.check(tuple(x.shape[1:]))
    if problem:
        raise InputError(f"the input array holds examples of shape {list(x.shape[1:])}; this bundle codes {problem}.")


def _levels_of(model: SymbolModel, block: np.ndarray, first: int) -> np.ndarray:
    """Examples `first`, ... of the input as int64 levels; InputError naming the first value that is not a level."""
    levels = block.astype(np.int64)
    bad = np.argwhere((levels != block) | (levels < 0) | (levels >= model.levels))
    if bad.size:
        at = tuple(int(i) for i in bad[0])
        raise InputError(f"value {block[at]!r} at index {[first + at[0], *at[1:]]} is not a level "
                         f"0..{model.levels - 1} of this model (values must be integers in the model's range: quantize "
                         "them first).")
    return levels


def _blocks(x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first example, examples) of about CHUNK bytes at a time (at least one example)."""
    step = max(1, CHUNK // max(1, x[0].nbytes))
    for first in range(0, len(x), step):
        yield first, x[first:first + step]


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


def _scan(bundle: Bundle, runners: dict[str, Runner], source: BinaryIO | np.ndarray,
          codec: TextCodec) -> dict[str, Any]:
    """The first pass: every refusal, then the header's fields of the input (size, sha256, symbols, ...)."""
    digest, size, symbols = hashlib.sha256(), 0, 0
    if isinstance(source, np.ndarray):
        model = _symbol_model(bundle, runners)
        _check_array(model, source)
        for first, block in _blocks(source):
            _levels_of(model, block, first)
            data = np.ascontiguousarray(block).tobytes()
            digest.update(data)
            size += len(data)
        symbols = len(source) * (int(np.prod(source.shape[1:])) + bool(model.classes))
        fields: dict[str, Any] = {"payload": "array", "shape": list(source.shape), "dtype": source.dtype.str}
    else:
        text = codec()
        for chunk in _chunks(source):
            symbols += len(_ids_of(text, chunk))
            data = chunk.encode("utf-8")
            digest.update(data)
            size += len(data)
        if not size:
            raise InputError("the input is empty; there is nothing to compress.")
        loop = bundle.loop
        fields = {"payload": "text", "window": loop.context if isinstance(loop, LanguageModelConfig) else None}
    identity = _identity(bundle, runners)
    return identity | fields | {"bundle": identity["bundle"][:2 * DIGEST], "symbols": symbols, "size": size,
                                "sha256": digest.hexdigest()[:2 * DIGEST]}


def compress(bundle: Bundle, runners: dict[str, Runner], source: BinaryIO | np.ndarray, sink: BinaryIO,
             codec: TextCodec, progress: Progress | None = None) -> Compressed:
    """Code text (a seekable binary stream of UTF-8, read twice) under a language model, or examples [N, ...] (an
    array; a memory map streams) under a masked autoregressive model, with the bundle's active runners, into `sink`."""
    constriction = _coder()
    family = constriction.stream.model.Categorical(perfect=False)
    start = None if isinstance(source, np.ndarray) else source.tell()
    header = Header(**_scan(bundle, runners, source, codec))
    count, bits = _Counter(header.symbols, progress), 0.0
    length = sink.write(pack_header(header))
    code_bytes = 0

    def segment(walk: Walk, symbols: Iterator[int]) -> None:
        nonlocal bits, length, code_bytes
        encoder, n = constriction.stream.queue.RangeEncoder(), 0

        def choose(p: np.ndarray) -> int:
            nonlocal bits, n
            symbol = next(symbols)
            bits -= float(np.log2(p[symbol]))
            encoder.encode(np.asarray([symbol], np.int32), family, p[None])
            count.tick()
            n += 1
            return symbol

        _drive(walk, choose)
        words = encoder.get_compressed().astype("<u4").tobytes()
        length += sink.write(varint(n) + varint(len(words) // 4) + words)
        code_bytes += len(words)

    if isinstance(source, np.ndarray):
        model = _symbol_model(bundle, runners)
        shape = tuple(source.shape[1:])
        order = model.order(shape)
        for first, block in _blocks(source):
            levels = _levels_of(model, block, first)
            rows = levels.reshape(len(block), -1)[:, order].tolist()
            labels = _labels(bundle, runners, model, levels)
            segment(_array_walk(model, shape, len(block)),
                    (s for label, row in zip(labels, rows) for s in ([] if label is None else [label]) + row))
    else:
        assert start is not None
        source.seek(start)
        text, model_text = codec(), _TextModel(bundle, runners, header.window)
        for chunk in _chunks(source):
            ids = _ids_of(text, chunk)
            segment(_text_walk(model_text, len(ids)), iter(ids.tolist()))
    return Compressed(header, length, code_bytes, bits)
def _text(value: str) -> bytes:
    data = value.encode()[:255]
    return bytes([len(data)]) + data


def pack_header(header: Header) -> bytes:
    """The binary header (format 3): MAGIC, the two digests, the payload, backend / onnxruntime / machine (length-prefixed),
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


def _read(stream: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes of `stream`, read a MiB at a time (a corrupt length never allocates more than the file holds)."""
    parts, left = [], n
    while left and (part := stream.read(min(left, 1 << 20))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class _Reader:
    """Fields of a binary header and of the segments, in order; IndexError past the end, ValueError for a bad varint
    (onnx_refs.read_varint decodes it)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def take(self, n: int) -> bytes:
        data = _read(self.stream, n)
        if len(data) < n:
            raise IndexError("the file ends early")
        return data

    def number(self) -> int:
        raw = self.take(1)
        while raw[-1] >= 0x80 and len(raw) < 10:  # a varint's bytes, as far as its last (or 64 bits' worth)
            raw += self.take(1)
        return read_varint(memoryview(raw), 0)[0]  # ProtobufError (a ValueError) for one that runs on

    def text(self) -> str:
        return self.take(self.take(1)[0]).decode()


def _unpack_header(r: _Reader) -> Header:
    """A binary header (formats 2 and 3), after its MAGIC."""
    bundle, sha = r.take(DIGEST).hex(), r.take(DIGEST).hex()
    payload = PAYLOADS[r.take(1)[0]]
    backend, onnxruntime, machine = r.text(), r.text(), r.text()
    threads, symbols, size, window = (r.number() for _ in range(4))
    shape, dtype = None, None
    if payload == "array":
        shape = [r.number() for _ in range(min(r.number(), 64))]
        dtype = r.text()
    return Header(bundle, backend, threads or None, onnxruntime, machine, payload, symbols, size, sha, window or None,
                  shape, dtype)


def _fits(header: Header) -> bool:
    """Whether an array header's shape and dtype describe exactly its `size` bytes (so decoding allocates no more)."""
    try:
        shape, itemsize = [int(n) for n in header.shape or []], np.dtype(header.dtype).itemsize
    except (TypeError, ValueError):
        return False
    return len(shape) >= 2 and min(shape) >= 1 and int(np.prod(shape, dtype=object)) * itemsize == header.size


def _corrupt(what: str) -> InputError:
    return InputError(f"the compressed file is truncated or corrupt ({what}); nothing was written.")


def read_header(stream: BinaryIO) -> tuple[Header, bytes]:
    """The header of a compressed file and its format's MAGIC, the stream left at the code; InputError for anything
    else (not a compressed file, truncated, corrupt)."""
    magic = stream.read(4)
    if magic not in (MAGIC, MAGIC_ONE_CODE, MAGIC_JSON):
        raise InputError("this is not a deploykit compressed file (no DKZ header); give a file `deploykit compress` "
                         "wrote.")
    r = _Reader(stream)
    try:
        if magic == MAGIC_JSON:
            (length,) = struct.unpack("<I", r.take(4))
            header = Header(**json.loads(r.take(length)))
        else:
            header = _unpack_header(r)
    except (ValueError, TypeError, IndexError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"the compressed file's header is corrupt ({type(exc).__name__}); it cannot be decoded.") from exc
    if header.payload not in PAYLOADS or not 1 <= header.symbols <= 8 * max(header.size, 1) \
            or min(len(str(header.bundle)), len(str(header.sha256))) < 2 * DIGEST \
            or header.payload == "array" and not _fits(header):
        raise _corrupt(f"{header.symbols} symbols for {header.size} bytes of {header.payload!r}")
    return header, magic


def _segments(stream: BinaryIO, header: Header, magic: bytes) -> Iterator[tuple[int, np.ndarray]]:
    """(symbols, code words) of each segment; InputError when the code is cut short, framed wrongly or followed by
    anything."""
    r = _Reader(stream)
    if magic != MAGIC:  # formats 1 and 2: one code to the end of the file
        words = stream.read()
        if len(words) % 4:
            raise _corrupt(f"{len(words)} code bytes")
        yield header.symbols, np.frombuffer(words, "<u4").astype(np.uint32)
        return
    left = header.symbols
    while left:
        try:
            n, length = r.number(), r.number()
            if not 1 <= n <= left or length > n + 2:  # a symbol costs at most 24 bits, the coder's flush two words
                raise ValueError(f"a segment of {n} symbols in {length} words, {left} symbols left")
            words = r.take(4 * length)
        except (ValueError, IndexError) as exc:
            raise _corrupt(str(exc)) from exc
        yield n, np.frombuffer(words, "<u4").astype(np.uint32)
        left -= n
    if stream.read(1):
        raise _corrupt("bytes after the last segment")


def decompress(bundle: Bundle, runners: dict[str, Runner], source: BinaryIO, sink: BinaryIO, codec: TextCodec,
               progress: Progress | None = None) -> Header:
    """Write the original of a file `compress` wrote with this bundle into `sink` (text: its bytes; arrays: a .npy),
    segment by segment; InputError when it was compressed with another bundle, backend or thread count, or when the
    decode does not reproduce the original's sha256 (the caller then discards what `sink` holds)."""
    constriction = _coder()
    header, magic = read_header(source)
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
    count, digest, size = _Counter(header.symbols, progress), hashlib.sha256(), 0
    if header.payload == "text":
        text, model_text = codec(), _TextModel(bundle, runners, header.window)
    else:
        model = _symbol_model(bundle, runners)
        shape, dtype = tuple(header.shape or ()), np.dtype(header.dtype or "int64")
        per_example = int(np.prod(shape[1:])) + bool(model.classes)
        np.lib.format.write_array_header_1_0(sink, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                    "fortran_order": False, "shape": shape})
    for n, words in _segments(source, header, magic):
        decoder = constriction.stream.queue.RangeDecoder(words)

        def choose(p: np.ndarray) -> int:
            count.tick()
            return int(decoder.decode(family, p[None])[0])

        try:
            if header.payload == "text":
                data = text.decode(_drive(_text_walk(model_text, n), choose)).encode("utf-8")
            else:
                if n % per_example:
                    raise ValueError(f"a segment of {n} symbols is not whole examples of {per_example}")
                flat = _drive(_array_walk(model, shape[1:], n // per_example), choose)
                data = flat.reshape(-1, *shape[1:]).astype(dtype).tobytes()
        except (ValueError, RuntimeError, IndexError) as exc:  # constriction on a code it cannot read
            raise _corrupt(str(exc)[:120] or type(exc).__name__) from exc
        digest.update(data)
        size += sink.write(data)
    if size != header.size or not digest.hexdigest().startswith(header.sha256):
        raise InputError(
            f"the decode does not reproduce the original (sha256 mismatch): the file is corrupt, or this machine "
            f"computes other probabilities (compressed on {header.machine} with onnxruntime {header.onnxruntime}, "
            f"{header.backend}, threads {header.threads}; here {here['machine']}, onnxruntime {here['onnxruntime']}). "
            "Nothing was written.")
    return header
