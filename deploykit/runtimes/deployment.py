"""A bundle with its runners: what `deploykit.load` returns. Every loop-specific call goes through the bundle's LoopKind."""

from __future__ import annotations

import io
import weakref
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import numpy as np

from ..backends.base import Runner
from ..bundle import Bundle
from ..checks import check_count, check_fits, check_int, check_seed
from ..errors import InputError, choices
from .compress import Compressed, Progress, compress, decompress
from .encoder import TextResult
from .energy import HopfieldConfig, Retrieval, retrieve
from .flows import FlowConfig, bits_per_dim
from .kinds import LoopConfig, LoopKind, Use, kind_of
from .recurrent import Stream
from .tokens import (
    CharCodec,
    Codec,
    LanguageModelConfig,
    SamplingConfig,
    TokenizerCodec,
    TranslationConfig,
    generate,
    token_ids,
)
from .vae import VaeConfig, interpolate, iwae

C = TypeVar("C", bound=LoopConfig)
USES = {"sample": "sample (images, audio, trajectories)", "generate": "generate text", "translate": "translate",
        "stream": "stream", "graphs": "only run its graphs"}


def _release(runners: dict[str, Runner]) -> None:
    for runner in runners.values():
        runner.deactivate()


class Deployment:
    """Runners for every role of a bundle on one backend. Ready when used directly: the runners activate on first
    use and release on `close()`, when the object is collected, or at exit; `with` closes at the block's end."""

    def __init__(self, bundle: Bundle, runners: dict[str, Runner]) -> None:
        self.bundle = bundle
        self.loop = bundle.loop
        self.kind: LoopKind = kind_of(self.loop)
        self._runners = runners
        self._codec: Codec | None = None
        self._finalizer = weakref.finalize(self, _release, runners)  # not `self`: the finalizer must not keep it

    @property
    def runners(self) -> dict[str, Runner]:
        """The runners by role, activated (sessions built) on first use."""
        self.open()
        return self._runners

    def open(self) -> Deployment:
        """Activate every runner (idempotent); using the deployment does it too."""
        for runner in self._runners.values():
            runner.activate()
        return self

    def close(self) -> None:
        """Release every runner's session or engine (idempotent); a later use activates them again."""
        _release(self._runners)

    def runner(self, role: str | None = None) -> Runner:
        """The runner of `role` (optional when the bundle has a single graph besides loop graphs built from it)."""
        own = [r for r, g in self.bundle.graphs.items() if g.built_from is None]
        if role is None and len(own) == 1:
            return self.runners[own[0]]
        if role not in self.runners:
            raise InputError(f"role {role!r} is not in this bundle; choose one of {choices(self.runners)}.")
        return self.runners[role]

    def infer(self, feeds: dict[str, np.ndarray], role: str | None = None) -> dict[str, np.ndarray]:
        """Run one graph on named numpy inputs."""
        return self.runner(role).infer(feeds)

    def _refuse(self, needs: str) -> InputError:
        hint = f" {self.kind.hint}" if self.kind.hint else ""
        return InputError(f"bundle family '{self.bundle.family}' has a '{self.kind.name}' loop, which can "
                          f"{USES[self.kind.use]}; this needs {needs} (see `deploykit inspect`).{hint}")

    def require(self, use: Use) -> LoopConfig:
        """The loop config, or InputError when this bundle's kind is not used that way (e.g. sampling a classifier)."""
        if self.kind.use != use:
            raise self._refuse(f"a bundle that can {USES[use]}")
        return self.loop

    def _config(self, config: type[C]) -> C:
        if not isinstance(self.loop, config):
            raise self._refuse(f"a '{config.kind}' bundle")
        return self.loop

    def options(self, **given: Any) -> Any:
        """The options dataclass of this bundle's kind from keyword values (InputError for one it does not take)."""
        return self.kind.make_options(given)

    def sample(self, n: int, seed: int = 0, options: Any = None) -> np.ndarray:
        """`n` samples from the bundle's loop with injected seeded noise; `options` is the kind's options
        dataclass (see `Deployment.options`), default options when None.

        Generators: images. VRNN: trajectories [n, steps, x_dim]. FVSBN/MADE/NADE: [n, D]. PixelCNN:
        integer images [n, C, H, W]. WaveNet: mu-law codes [n, steps]. Flows: x [n, *event]. Diffusion:
        denoised (latent diffusion: decoded) samples. VAE: decoded prior samples. RBM: E[v | h] after
        the Gibbs steps. Hopfield: fixed points reached from random states.
        """
        self.require("sample")
        check_seed(seed)
        kind = self.kind
        if options is None:
            options = kind.make_options({})
        if not isinstance(options, kind.options):
            raise InputError(f"a '{kind.name}' bundle samples with {kind.options.__name__}, not {type(options).__name__}; "
                             "build them with Deployment.options(...).")
        check_count(n)
        check_fits(n * self._row_bytes, f"--n {n}", "sample fewer at a time (several runs with different --seed)")
        if kind.tokenize is not None:
            options = kind.tokenize(self.codec(), options)
        try:
            return kind.sample(self.runners, self.loop, n, seed, options)
        except MemoryError as exc:  # numpy refuses an allocation it cannot make; name the request, not numpy
            raise InputError(f"--n {n} does not fit in this machine's memory ({exc}); sample fewer at a time "
                             "(several runs with different --seed).") from exc

    @cached_property
    def _row_bytes(self) -> int:
        """Bytes one batch row takes in the inputs and outputs of the bundle's largest graph at its first check shape:
        a lower bound on what each sample holds while the loop runs (once per deployment: small loops are µs)."""
        dims = self.bundle.check_shapes[0] | {"batch": 1}
        return max(graph.spec.nbytes(dims) for graph in self.bundle.graphs.values())

    def interpolate(self, n: int, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
        """VAE decodings [n, D] along the slerp between two seeded prior latents."""
        check_seed(seed)
        return interpolate(self.runners, self._config(VaeConfig), n, seed, labels)

    def iwae(self, x: np.ndarray, k: int = 64, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
        """VAE: the k-sample importance-weighted estimate of log p(x) in nats, per example."""
        return iwae(self.runners, self._config(VaeConfig), x, k, seed, labels)

    def retrieve(self, states: np.ndarray, max_iterations: int | None = None) -> Retrieval:
        """Hopfield: synchronous updates from +-1 `states` [batch, units] until fixed points."""
        return retrieve(self.runner("update"), self._config(HopfieldConfig), states, max_iterations)

    def log_prob(self, x: np.ndarray, labels: np.ndarray | None = None, host: bool = False) -> np.ndarray:
        """log p(x) in nats per example for a masked autoregressive bundle (ensembles average p over
        orderings) or a flow (IAF with host=True: inverted on the host instead of in the graph)."""
        if self.kind.log_prob is None:
            raise self._refuse("a density model (flow or masked autoregressive)")
        return self.kind.log_prob(self.runners, self.loop, x, labels, host)

    def bits_per_dim(self, pixels: np.ndarray, seed: int = 0) -> np.ndarray:
        """Bits per dimension of integer images under a dequantized image flow, per example."""
        return bits_per_dim(self.runners, self._config(FlowConfig), pixels, seed)

    def codec(self) -> Codec:
        """Text <-> ids of a bundle that reads text (a language model, an encoder-decoder, a text encoder): its
        tokenizer.json when it carries one, else a language model's character vocabulary (read once per
        deployment)."""
        loop = self.loop
        if self.kind.use not in ("generate", "translate") and self.kind.text is None and self.kind.tokenize is None:
            raise self._refuse("a bundle that reads text (a language model or a text encoder)")
        if self._codec is None:
            if self.bundle.tokenizer is not None:
                self._codec = TokenizerCodec(self.bundle.text_tokenizer, loop.vocab_size)
            elif isinstance(loop, LanguageModelConfig):
                self._codec = CharCodec(loop.vocab)
            else:
                raise InputError("this bundle carries no tokenizer.json, so text cannot become token ids; feed ids with "
                                 "`deploykit run --inputs FILE.npz`, or re-export from a folder with its tokenizer.json.")
        return self._codec

    def read_texts(self, texts: list[str]) -> list[TextResult]:
        """A text encoder's outputs for each text (one right-padded batch): fill-mask candidates, class
        probabilities or per-token features, with a one-line summary each."""
        if self.kind.text is None:
            raise self._refuse("a text encoder")
        return self.kind.text(self.runners, self.loop, self.codec(), texts)

    def generate(self, prompts: list[str], config: SamplingConfig, seed: int = 0, host: bool = False) -> list[str]:
        """Continue each text prompt with a language model (recurrent, KV-cached or full recompute): the new text."""
        if isinstance(prompts, str) or not len(prompts) or not all(isinstance(p, str) for p in prompts):
            raise InputError("prompts: give a list of at least one text prompt (str).")
        codec = self.codec()
        out = self.generate_ids([codec.encode(p, special=True) for p in prompts], config, seed, host)
        return [codec.decode(t) for t in out]

    def generate_ids(self, prompts: Sequence[Sequence[int] | np.ndarray], config: SamplingConfig, seed: int = 0,
                     host: bool = False) -> list[np.ndarray]:
        """New token ids after each prompt of ids; stops at the model's EOS id and at `config.stop`. A bundle that carries
        its loop as one graph runs it there on onnxruntime, unless `host` (one graph call per token, as torch runs it)."""
        loop = self.require("generate")
        assert isinstance(loop, LanguageModelConfig)
        if loop.eos is not None and loop.eos not in config.stop:
            config = replace(config, stop=(*config.stop, loop.eos))
        if isinstance(prompts, str | bytes) or not len(prompts):
            raise InputError("prompts: give a list of at least one prompt (token ids).")
        ids = [token_ids(p, i) for i, p in enumerate(prompts)]
        check_seed(seed)
        try:
            return generate(self.kind.token_model(self.runners, loop), ids, config, seed, host)
        except MemoryError as exc:  # numpy refuses the token buffer; name the option, not numpy
            raise InputError(f"max_new_tokens {config.max_new_tokens} for {len(ids)} prompt(s) does not fit in this "
                             f"machine's memory ({exc}); ask for fewer tokens.") from exc

    def compress(self, data: bytes | BinaryIO | np.ndarray, progress: Progress | None = None,
                 out: BinaryIO | None = None) -> Compressed:
        """Lossless coding under this bundle's model (runtimes.compress): UTF-8 text (bytes, or a seekable binary
        file, read twice) under a language model, or examples [N, ...] at their levels (a memory map streams) under a
        masked autoregressive model. The file goes to `out` when given, else to `.data`."""
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        sink = out if out is not None else io.BytesIO()
        result = compress(self.bundle, self.runners, source, sink, self._text_codec, progress)
        return result if out is not None else replace(result, data=sink.getvalue())

    def decompress(self, blob: bytes | BinaryIO, progress: Progress | None = None,
                   out: BinaryIO | None = None) -> bytes | np.ndarray | None:
        """The original (bytes or array) of a file `compress` wrote with this bundle, backend and thread count; with
        `out`, written there instead (text: its bytes; arrays: a .npy), and None returned."""
        source = io.BytesIO(blob) if isinstance(blob, (bytes, bytearray)) else blob
        sink = out if out is not None else io.BytesIO()
        header = decompress(self.bundle, self.runners, source, sink, self._text_codec, progress)
        if out is not None:
            return None
        data = sink.getvalue()
        return data if header.payload == "text" else np.load(io.BytesIO(data), allow_pickle=False)

    def _text_codec(self) -> Codec:
        self.require("generate")  # text is coded under a language model (a text encoder gives no next token)
        return self.codec()

    def translate(self, sources: list[str], beams: int | None = None) -> list[str]:
        """Decode each source string with an encoder-decoder bundle (its tokenizer.json, else its character
        vocabularies): greedy (beams 1) or beam search; None takes the bundle's default (an hf:DIR folder's
        num_beams, else greedy)."""
        loop = self.require("translate")
        assert isinstance(loop, TranslationConfig)
        if self.bundle.tokenizer is not None:  # one vocabulary both ways (hf:DIR encoder-decoders)
            source = target = self.codec()
        else:
            source, target = CharCodec(loop.src_vocab), CharCodec(loop.tgt_vocab)
        ids = [source.encode(s, "source", special=True) for s in sources]
        return [target.decode(t) for t in self.translate_ids(ids, beams)]

    def translate_ids(self, sources: Sequence[Sequence[int] | np.ndarray], beams: int | None = None) -> list[np.ndarray]:
        """The target token ids of each source (token ids), as `translate` decodes them."""
        loop = self.require("translate")
        assert self.kind.translate is not None and isinstance(loop, TranslationConfig)  # kinds.register
        if beams is not None:  # more beams than target tokens cannot all differ (and would allocate beams x length)
            check_int("beams", beams, 1, len(loop.tgt_vocab), "the target vocabulary's size at most")
        return self.kind.translate(self.runners, loop, [token_ids(s, i) for i, s in enumerate(sources)], beams)

    def stream(self, streams: int = 1) -> Stream:
        """A Stream over the `chunk` graph keeping state for `streams` independent streams."""
        loop = self.require("stream")
        return Stream(self.runner(loop.role), loop, streams)

    def __enter__(self) -> Deployment:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
