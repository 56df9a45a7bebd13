"""The loop-kind registry: the one place the runtime side looks up what a bundle's loop is and does.

A `LoopKind` declares its name, its typed config (a frozen dataclass, validated when a bundle
loads), what the loop is used for (`sample`, `generate`, `translate`, `stream`, or only its
graphs), the options dataclass `sample` takes, the export-time loop check replayed by verify,
a structural check, and how samples are written. Each loop module registers the kinds it
defines; nothing else branches on a kind string.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import numpy as np

from ..backends.base import Runner
from ..errors import BundleError, InputError, choices
from ..parity import ParityReport, Tolerance

C = TypeVar("C", bound="LoopConfig")
Use = Literal["sample", "generate", "translate", "stream", "graphs"]
Runners = Mapping[str, Runner]
Arrays = Mapping[str, np.ndarray]
Flips = Callable[[Runners, Any, int, Arrays, Arrays, Tolerance, "float | None"], dict[str, str]]
# sampling option (field of a kind's options dataclass) -> its name in messages: the `deploykit sample` flag
OPTION_NAMES = {"labels": "--label", "steps": "--steps", "ordering": "--ordering", "fast": "--naive",
                "temperature": "--temperature", "size": "--size", "host": "--host-loop", "scheduler": "--scheduler",
                "eta": "--eta", "karras": "--karras", "clipped_model_output": "--clipped-model-output",
                "guidance": "--guidance", "prompts": "--prompt", "negative_prompts": "--negative-prompt",
                "init_images": "--init-image", "strength": "--strength"}


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (int, float, str, bool, lists, str-keyed dicts, unions, Any)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _conforms(v, args[1]) for k, v in value.items())
    raise TypeError(f"loop config fields cannot be {hint!r}")


def _option_fits(value: Any, hint: Any) -> bool:
    """Whether a sampling option's value fits its hint where the hint is a scalar type, by the manifest's rules
    (`_conforms`; numpy scalars count as their Python values: 2.5 steps is not a step count); arrays, callables and
    other types are checked where they are used."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_option_fits(value, a) for a in args)
    if hint in (int, float, bool, str, type(None)):
        return _conforms(value.item() if isinstance(value, np.generic) else value, hint)
    return True


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """A loop's settings as stored in the manifest's `loop` (JSON), typed; subclasses name their `kind`."""

    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with the kind first."""
        return {"kind": self.kind} | {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls: type[C], data: Mapping[str, Any], where: str = "loop") -> C:
        """Parse and validate a manifest's loop: known keys only, each of its declared type; BundleError otherwise."""
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known) - {"kind"})
        if unknown:
            raise BundleError(f"{where}: unknown key(s) {unknown} for a '{cls.kind}' loop; re-export the bundle "
                              "or upgrade deploykit.")
        for name, f in known.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name not in data:
                if required:
                    raise BundleError(f"{where}: a '{cls.kind}' loop needs '{name}'; re-export the bundle.")
            elif not _conforms(data[name], hints[name]):
                raise BundleError(f"{where}: '{name}' is {data[name]!r}, expected {hints[name]}; re-export the bundle.")
        config = cls(**{k: v for k, v in data.items() if k != "kind"})
        config.validate(where)
        return config

    def validate(self, where: str) -> None:
        """BundleError for values of the right type that this kind still cannot run (none, unless a kind says)."""


@dataclass(frozen=True, kw_only=True)
class ImageLayout(LoopConfig):
    """Configs whose samples can be written as an image grid: optional [C, H, W] and the value range."""

    image_shape: list[int] | None = None
    value_range: list[float] = field(default_factory=lambda: [0.0, 1.0])


@dataclass(frozen=True)
class Writer:
    """How `deploykit sample --out` writes a kind's output: allowed suffixes, the hint when another is given, and
    `render` for every suffix but .npy (arrays are saved as they are)."""

    suffixes: tuple[str, ...]
    hint: str
    render: Callable[[Path, Any, Any, Runners], None] | None = None  # (out, samples, config, runners)

    def check(self, out: Path) -> None:
        """InputError for an --out this writer cannot write (checked before sampling)."""
        if out.suffix not in self.suffixes:
            raise InputError(f"--out {out}: {self.hint}")

    def write(self, out: Path, samples: Any, config: LoopConfig, runners: Runners) -> None:
        """Write samples to `out` (checked by `check`): .npy as the array, other suffixes by `render`."""
        if out.suffix == ".npy":
            np.save(out, samples)
        else:
            assert self.render is not None, f"{self.suffixes} lists a suffix without a renderer"
            self.render(out, samples, config, runners)


def write_images(out: Path, samples: np.ndarray, config: ImageLayout, runners: Runners) -> None:
    """A .png grid of the samples when they are images (or flat with the config's image_shape)."""
    from ..images import save_samples

    images = samples.reshape(len(samples), *config.image_shape) if config.image_shape else samples
    if images.ndim != 4:
        raise InputError(f"--out {out}: these samples are vectors {list(samples.shape[1:])}; write them as .npy.")
    save_samples(images, out, config.value_range)


def write_text(out: Path, texts: list[str], config: LoopConfig, runners: Runners) -> None:
    """One generated or decoded text per line."""
    out.write_text("\n".join(texts) + "\n")


IMAGES = Writer((".png", ".npy"), "image samples are written as a .png grid or .npy array.", write_images)
TEXT = Writer((".txt",), "text models write .txt files; use a name ending in .txt.", write_text)


@dataclass(frozen=True)
class SampleOptions:
    """Base of the per-kind options of `Deployment.sample`; a kind without options uses it as is."""


@dataclass(frozen=True)
class LoopKind:
    """One loop kind: config type, use, and the functions that run, check and write it.

    sample(runners, config, n, seed, options) -> samples; check(runners, config, seed) -> arrays of a
    short seeded loop run (stored at export, replayed by verify); structure(runners, config) -> problems
    beyond parity; token_model(runners, config) for generate/translate kinds; translate(runners, config, sources,
    beams) -> token ids per source for translate kinds (beams None: the bundle's default); flips(runners, config, seed,
    expected, actual, tolerance, bound) explains token outputs of `check` that diverge (output -> note) where
    the logits, off by `bound`, could swap a pick (judged on the runners' own logits); symbols(runners, config) ->
    a SymbolModel coding one example's values in the sampling order (runtimes/compress.py); log_prob(runners, config,
    x, labels, host) for density models; text(runners, config, codec, texts) -> one result per text for models
    that read text in one graph call (text encoders); tokenize(codec, options) -> the options with their text as
    token ids, for sampling kinds that read prompts (the bundle's codec, before `sample`); graph_problems(graphs) ->
    what the loop relies on but the ONNX graphs written (role -> file) break, checked by export and quantize. `quick`
    are options of a short sampling run (quantize's comparison, Triton's probe); `serving` the options a Triton loop
    model fixes.
    """

    config: type[LoopConfig]
    title: str  # in messages: "--naive is for WaveNet bundles"
    use: Use
    options: type[SampleOptions] | None = None
    sample: Callable[[Runners, Any, int, int, Any], np.ndarray] | None = None
    check: Callable[[Runners, Any, int], dict[str, np.ndarray]] | None = None
    structure: Callable[[Runners, Any], list[str]] | None = None
    writer: Writer | None = None
    token_model: Callable[[Runners, Any], Any] | None = None
    translate: Callable[[Runners, Any, Sequence[np.ndarray], int | None], list[np.ndarray]] | None = None
    flips: Flips | None = None
    symbols: Callable[[Runners, Any], Any] | None = None
    log_prob: Callable[[Runners, Any, np.ndarray, np.ndarray | None, bool], np.ndarray] | None = None
    text: Callable[[Runners, Any, Any, list[str]], list[Any]] | None = None
    tokenize: Callable[[Any, Any], Any] | None = None
    graph_problems: Callable[[Mapping[str, Path]], list[str]] | None = None  # of written graphs (role -> file)
    quick: Mapping[str, Any] = field(default_factory=dict)
    serving: Mapping[str, Any] = field(default_factory=dict)
    hint: str = ""  # added to "this bundle cannot ..." errors

    @property
    def name(self) -> str:
        """The kind's name, as the manifest records it."""
        return self.config.kind

    def option_fields(self) -> tuple[str, ...]:
        """Names of the options `sample` takes."""
        return tuple(f.name for f in fields(self.options)) if self.options else ()

    def make_options(self, given: Mapping[str, Any], names: Mapping[str, str] | None = None) -> Any:
        """This kind's options from `given` (field -> value, only what the user set); InputError naming the
        option (by `names`, default OPTION_NAMES: the CLI flags) and the kinds it is for when this kind has no such option."""
        names = OPTION_NAMES | dict(names or {})
        allowed = self.option_fields()
        for key in given:
            if key not in allowed:
                label = names.get(key, key)
                users = sorted((k.title for k in KINDS.values() if key in k.option_fields()), key=str.lower)
                takes = ", ".join(names.get(f, f) for f in allowed) or "no sampling options"
                where = f"is for {_joined(users)} bundles" if users else "is not a sampling option"
                raise InputError(f"{label} {where}; this '{self.name}' bundle takes {takes}.")
        cls = self.options or SampleOptions
        hints = typing.get_type_hints(cls)
        for key, value in given.items():
            if not _option_fits(value, hints.get(key, Any)):
                raise InputError(f"{names.get(key, key)} is {value!r:.60}, expected {hints[key]}.")
        return cls(**given)


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


KINDS: dict[str, LoopKind] = {}


def register(kind: LoopKind) -> LoopKind:
    """Add a loop kind; its config must be a LoopConfig naming it, and a kind that samples needs options and a writer."""
    if not kind.name or kind.name in KINDS:
        raise ValueError(f"loop kind {kind.name!r} is empty or registered twice")
    if (kind.use == "sample") != (kind.sample is not None) or (kind.sample and not (kind.options and kind.writer)):
        raise ValueError(f"loop kind {kind.name!r}: a sampling kind needs sample, options and a writer, others none")
    if kind.use in ("generate", "translate") and kind.token_model is None:
        raise ValueError(f"loop kind {kind.name!r}: a {kind.use} kind needs a token_model")
    if (kind.use == "translate") != (kind.translate is not None):
        raise ValueError(f"loop kind {kind.name!r}: a translate kind needs translate, others none")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> LoopKind:
    """The registered kind `name`; BundleError for one this deploykit does not know."""
    if name not in KINDS:
        raise BundleError(f"loop kind {name!r} is unknown to this deploykit (it knows {choices(sorted(KINDS))}); "
                          "upgrade deploykit or re-export the bundle.")
    return KINDS[name]


def parse_loop(data: Any, where: str = "loop") -> LoopConfig:
    """A manifest's loop as its kind's typed config; BundleError if it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise BundleError(f"{where} must be an object with a 'kind'; got {data!r:.80}; re-export the bundle.")
    return get_kind(data["kind"]).config.from_json(data, where)


def kind_of(config: LoopConfig) -> LoopKind:
    """The registered kind of a config."""
    return get_kind(config.kind)


def compare_loop(report: ParityReport, case: str, runners: Runners, loop: LoopConfig, seed: int, expected: Arrays,
                 actual: Arrays, tolerance: Tolerance, reference64: Callable[[], Arrays | None] | None = None,
                 recorded: Mapping[str, float] | None = None) -> None:
    """Add a loop check's comparison (`actual`: its run on `runners`) to `report`, by the parity rule, and pass token
    outputs whose divergence the kind's `flips` explains as near-ties (judged on `runners`)."""
    report.add(case, expected, actual, tolerance, reference64=reference64, recorded=recorded)
    kind = kind_of(loop)
    failed = [r.output for r in report.rows if r.case == case and not r.passed and r.output in actual]
    if kind.flips is None or not failed:
        return
    pick = {k: expected[k] for k in failed}, {k: actual[k] for k in failed}
    for output, note in kind.flips(runners, loop, seed, *pick, tolerance, report.bound("logits")).items():
        report.excuse(case, output, note)
