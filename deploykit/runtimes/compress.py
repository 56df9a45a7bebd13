"""Lossless compression with a language-model bundle: a range coder (constriction's queue coder) driven by the
model's next-token distributions spends about -log2 p(token) bits per token (MacKay 2003, ch. 6).

Encoder and decoder compute the same distributions by the same calls: the first token under a uniform distribution,
then one `step` per token over the bundle's own token model (a context-bounded model restarts from the last half of
its context when it is full, both ways). Probabilities are computed in float64 from the logits and quantized by
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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..backends.base import Runner
from ..bundle import MANIFEST, Bundle, sha256_file
from ..errors import BackendUnavailableError, InputError
from .kinds import kind_of
from .tokens import Codec, LanguageModelConfig

MAGIC = b"DKZ\x01"  # deploykit compressed file, format 1
Progress = Callable[[int, int], None]  # (tokens done, tokens in all)


@dataclass(frozen=True)
class Header:
    """What a compressed file records besides the code: enough to refuse a decode that would go wrong."""

    bundle: str  # sha256 of the bundle's manifest.json (which holds every graph's sha256)
    backend: str
    threads: int | None  # the runners' intra-op threads (None: the backend's default)
    onnxruntime: str
    machine: str
    tokens: int
    window: int | None  # the model's context: full, it restarts from the last half
    size: int  # bytes of the original
    sha256: str  # of the original


@dataclass(frozen=True)
class Compressed:
    """A compressed file and its rate beside the model's own cross-entropy on the same tokens."""

    data: bytes
    header: Header
    cross_entropy_bits: float  # sum of -log2 p(token) under the float64 distributions coded with

    @property
    def bits_per_byte(self) -> float:
        """The whole file's bits (header included) per byte of the original."""
        return 8 * len(self.data) / max(self.header.size, 1)


def _coder() -> Any:
    try:
        import constriction
    except ImportError as exc:
        raise BackendUnavailableError("compression needs the constriction entropy coder: `pip install constriction` "
                                      "(or deploykit[compress]).") from exc
    return constriction


def _language_model(bundle: Bundle, runners: dict[str, Runner]) -> tuple[Any, LanguageModelConfig]:
    loop = bundle.loop
    assert isinstance(loop, LanguageModelConfig)  # the codec (Deployment.codec) refused every other bundle
    return kind_of(loop).token_model(runners, loop), loop


class _Distributions:
    """Next-token distributions along a token sequence, computed identically when encoding and decoding."""

    def __init__(self, model: Any, vocab: int, window: int | None) -> None:
        self.model, self.vocab, self.window = model, vocab, window
        self.seen: list[int] = []
        self.logits: np.ndarray | None = None
        self.fed = 0  # tokens the model's state holds

    def next(self) -> np.ndarray:
        """Probabilities [vocab] (float64) of the next token."""
        if not self.seen:
            return np.full(self.vocab, 1.0 / self.vocab)
        assert self.logits is not None
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


def _identity(bundle: Bundle, runners: dict[str, Runner]) -> dict[str, Any]:
    import onnxruntime

    runner = next(iter(runners.values()))
    return {"bundle": sha256_file(bundle.path / MANIFEST), "backend": runner.backend, "threads": runner.options.threads,
            "onnxruntime": onnxruntime.__version__, "machine": platform.machine()}


def compress(bundle: Bundle, runners: dict[str, Runner], codec: Codec, data: bytes,
             progress: Progress | None = None) -> Compressed:
    """`data` (UTF-8 text) coded under the bundle's language model (active runners)."""
    if not data:
        raise InputError("the input is empty; there is nothing to compress.")
    constriction = _coder()
    model, loop = _language_model(bundle, runners)
    ids = _tokens_of(codec, data)
    dist = _Distributions(model, len(loop.vocab), loop.context)
    family = constriction.stream.model.Categorical(perfect=False)
    encoder = constriction.stream.queue.RangeEncoder()
    bits = 0.0
    for i, token in enumerate(ids.tolist()):
        p = dist.next()
        bits -= float(np.log2(p[token]))
        encoder.encode(np.asarray([token], np.int32), family, p[None])
        dist.push(token)
        if progress is not None:
            progress(i + 1, len(ids))
    header = Header(**_identity(bundle, runners), tokens=int(len(ids)), window=loop.context,
                    size=len(data), sha256=hashlib.sha256(data).hexdigest())
    meta = json.dumps(asdict(header), sort_keys=True).encode()
    words = encoder.get_compressed().astype("<u4").tobytes()
    return Compressed(MAGIC + struct.pack("<I", len(meta)) + meta + words, header, bits)


def read_header(blob: bytes) -> tuple[Header, np.ndarray]:
    """The header and code words of a compressed file; InputError for anything else (truncated, corrupt)."""
    if blob[:4] != MAGIC or len(blob) < 8:
        raise InputError("this is not a deploykit compressed file (no DKZ1 header); give a file `deploykit compress` "
                         "wrote.")
    (length,) = struct.unpack("<I", blob[4:8])
    try:
        header = Header(**json.loads(blob[8:8 + length]))
    except (ValueError, TypeError) as exc:
        raise InputError(f"the compressed file's header is corrupt ({type(exc).__name__}); it cannot be decoded.") from exc
    code = blob[8 + length:]
    if len(code) % 4:
        raise InputError(f"the compressed file is truncated ({len(code)} code bytes, not whole 32-bit words).")
    return header, np.frombuffer(code, "<u4").astype(np.uint32)


def decompress(bundle: Bundle, runners: dict[str, Runner], codec: Codec, blob: bytes,
               progress: Progress | None = None) -> bytes:
    """The original bytes of a file `compress` wrote with this bundle; InputError when it was compressed with another
    bundle or backend, or when the decode does not reproduce the original's sha256 (nothing is returned then)."""
    constriction = _coder()
    header, words = read_header(blob)
    here = _identity(bundle, runners)
    if header.bundle != here["bundle"]:
        raise InputError("this file was compressed with another bundle (manifest sha256 "
                         f"{header.bundle[:12]}..., this bundle's is {here['bundle'][:12]}...); decompress it with "
                         "the bundle it was compressed with.")
    for key in ("backend", "threads"):
        if getattr(header, key) != here[key]:
            raise InputError(f"this file was compressed with {key} {getattr(header, key)!r} and is being decoded with "
                             f"{here[key]!r}; floating point differs between them, so decode with {key} "
                             f"{getattr(header, key)!r}.")
    model, loop = _language_model(bundle, runners)
    if not 1 <= header.tokens <= header.size:  # a token holds at least one byte
        raise InputError(f"the compressed file claims {header.tokens} tokens for {header.size} bytes; it is corrupt.")
    dist = _Distributions(model, len(loop.vocab), header.window)
    family = constriction.stream.model.Categorical(perfect=False)
    decoder = constriction.stream.queue.RangeDecoder(words)
    ids = np.empty(header.tokens, np.int64)
    try:
        for i in range(header.tokens):
            ids[i] = int(decoder.decode(family, dist.next()[None])[0])
            dist.push(int(ids[i]))
            if progress is not None:
                progress(i + 1, header.tokens)
    except (ValueError, RuntimeError, AssertionError) as exc:  # constriction on a code it cannot read
        raise InputError(f"the compressed code is corrupt or truncated ({str(exc)[:120] or type(exc).__name__}); "
                         "nothing was written.") from exc
    data = codec.decode(ids).encode("utf-8")
    if len(data) != header.size or hashlib.sha256(data).hexdigest() != header.sha256:
        raise InputError(
            f"the decode does not reproduce the original (sha256 mismatch): the file is corrupt, or this machine "
            f"computes other probabilities (compressed on {header.machine} with onnxruntime {header.onnxruntime}, "
            f"{header.backend}, threads {header.threads}; here {here['machine']}, onnxruntime {here['onnxruntime']}). "
            "Nothing was written.")
    return data
