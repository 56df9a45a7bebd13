"""Bad sampling arguments are refused up front, CLI and API alike: exit 2 with the option named, no traceback,
NaN included (it fails no comparison, so every range check states it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.specs import GraphSpec, TensorSpec

NAN_NEGATIVE = [
    ("ddpm-digits", ["--seed", "-1"], "--seed is -1, expected an integer >= 0"),
    ("ddpm-digits", ["--n", "0"], "--n is 0, expected an integer >= 1"),
    ("ddpm-digits", ["--guidance", "nan"], "--guidance is nan, expected a finite scale >= 0"),
    ("ddpm-digits", ["--guidance", "-1"], "--guidance is -1.0, expected a finite scale >= 0"),
    ("ddpm-digits", ["--guidance", "nan", "--host-loop"], "--guidance is nan"),
    ("ddpm-digits", ["--eta", "nan", "--scheduler", "ddim"], "--eta is nan, expected a value in [0, 1]"),
    ("maf-moons", ["--temperature", "nan"], "--temperature is nan, expected a number > 0"),
    ("maf-moons", ["--temperature", "inf"], "--temperature is inf, expected a number > 0"),
    ("char-lm", ["--prompt", "Hi", "--temperature", "nan"], "temperature is nan, expected a finite value >= 0"),
    ("char-lm", ["--prompt", "Hi", "--seed", "-5"], "--seed is -5, expected an integer >= 0"),
    ("char-lm", ["--prompt", "Hi", "--top-p", "nan"], "top_p is nan, expected 0 < top_p <= 1"),
]


@pytest.mark.parametrize(("model", "args", "message"), NAN_NEGATIVE, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_cli_refuses_nan_and_negative_sampling_arguments(zoo_bundle, capsys, tmp_path, model, args, message) -> None:
    out = [] if model == "char-lm" else ["--out", str(tmp_path / "s.npy")]
    code = main(["sample", str(zoo_bundle(model).path), *args, *out])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "s.npy").exists()


def test_bounded_float_inputs_refuse_nan() -> None:
    spec = GraphSpec((TensorSpec("x", "float32", ("batch", 3), low=0, high=1),), (TensorSpec("y", "float32", ("batch",)),))
    x = np.full((2, 3), 0.5, np.float32)
    assert spec.check_inputs({"x": x}, "model")["x"] is x
    x[1, 2] = np.nan
    with pytest.raises(InputError, match="model: input 'x' holds NaN, expected values in \\[0, 1\\)"):
        spec.check_inputs({"x": x}, "model")


def test_diffusion_refuses_noise_that_would_not_fit_before_drawing_it(zoo_bundle, monkeypatch) -> None:
    import deploykit
    from deploykit import checks

    monkeypatch.setattr(checks, "available_bytes", lambda: 2**30)  # 1 GiB free
    with deploykit.load(zoo_bundle("ddpm-digits").path) as dep:
        with pytest.raises(InputError, match="--n 5000 with 1000 network calls of injected noise needs 1.2 GiB, more "
                                             "than half of the 1.0 GiB available"):
            dep.sample(5000, 0, dep.options(host=True))
        assert dep.sample(2, 0, dep.options(steps=3)).shape == (2, 1, 8, 8)


def test_any_sampler_refuses_a_count_that_cannot_fit_before_allocating(zoo_bundle, capsys) -> None:
    """Linux overcommits, so numpy would allocate 2^31 latents and the process be killed later (it was, here)."""
    import deploykit
    from deploykit.cli import main

    for name in ("cgan", "made", "realnvp-rings"):
        with deploykit.load(zoo_bundle(name).path) as dep:
            with pytest.raises(InputError, match=r"--n 2147483647 needs \d+\.\d GiB, more than half of the"):
                dep.sample(2**31 - 1)
            assert dep.sample(3).shape[0] == 3
    assert main(["sample", str(zoo_bundle("cgan").path), "--n", str(2**31 - 1), "--out", "x.npy"]) == 2
    assert "sample fewer at a time" in capsys.readouterr().err


def test_empty_batch_or_time_axes_are_refused_before_the_backend(zoo_bundle) -> None:
    """onnxruntime crashed (SIGSEGV) on the char-LM's [0, 5] tokens; only a KV cache ('past') may be empty."""
    import deploykit

    with deploykit.load(zoo_bundle("char-lm").path) as dep:
        for shape in ((0, 5), (2, 0)):
            feeds = {"tokens": np.zeros(shape, np.int64), "lengths": np.zeros(shape[0], np.int64)}
            with pytest.raises(InputError, match="is 0, expected at least 1"):
                dep.infer(feeds, "sequence")


def test_run_inputs_must_be_an_npz_of_plain_arrays(zoo_bundle, capsys, tmp_path) -> None:
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "one.npy", np.zeros(3))
    np.savez(tmp_path / "objects.npz", tokens=np.array([{"a": 1}], dtype=object))
    for name, message in (("text.npz", "is not an .npz of arrays"), ("one.npy", "holds one unnamed array (an .npy)"),
                          ("objects.npz", "Object arrays cannot be loaded")):
        code = main(["run", str(zoo_bundle("char-lm").path), "--role", "sequence", "--inputs", str(tmp_path / name),
                     "--out", str(tmp_path / "o.npz")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err


def test_a_checkpoint_that_does_not_match_its_zoo_model_is_named(tmp_path) -> None:
    import torch

    from deploykit.models import cached_checkpoint, load_checkpoint, trained

    payload = torch.load(trained("hopfield-digits"), weights_only=True)
    assert cached_checkpoint("hopfield-digits").is_file()
    unknown = payload | {"config": payload["config"] | {"no_such_option": 3}}
    shapes = payload | {"state_dict": {k: torch.zeros(2, 2) for k in payload["state_dict"]}}
    for name, bad in (("unknown.pt", unknown), ("shapes.pt", shapes)):
        torch.save(bad, tmp_path / name)
        with pytest.raises(InputError, match="does not match zoo model 'hopfield-digits'"):
            load_checkpoint(tmp_path / name)


def test_readme_flow_example_samples_stay_in_the_data_range(zoo_bundle) -> None:
    """README: x = dep.sample(64, 0, temperature=0.7), then its log_prob; samples used to land at -0.02..1.02."""
    import deploykit

    with deploykit.load(zoo_bundle("glow-digits").path) as dep:
        x = dep.sample(64, 0, dep.options(temperature=0.7))
        assert x.min() >= 0 and x.max() < 1
        assert np.isfinite(dep.infer({"x": x}, role="log_prob")["z"]).all()


SAMPLE_OPTIONS = ["--n", "--seed", "--label", "--steps", "--ordering", "--temperature", "--eta", "--guidance", "--top-k",
                  "--top-p", "--max-new-tokens", "--beam"]


@pytest.mark.parametrize("model", ["ddpm-digits", "maf-moons", "cgan", "char-lm"])
def test_every_sample_option_with_nan_negative_and_huge_values(zoo_bundle, capsys, tmp_path, model) -> None:
    """Property-style: NaN and -1 are refused (exit 2) for every option, on every kind of loop, and no value makes
    a traceback (huge ones are refused or run). Options a loop does not use are refused too."""
    bundle = str(zoo_bundle(model).path)
    text = model == "char-lm"
    for option in SAMPLE_OPTIONS:
        for value in ("nan", "-1", "99999999999", "1e39"):
            args = ["sample", bundle, option, value]
            if text:
                args += ["--prompt", "Hi"] + ([] if option == "--max-new-tokens" else ["--max-new-tokens", "4"])
            else:
                args += ["--out", str(tmp_path / "s.npy")] + ([] if option == "--n" else ["--n", "2"])
                args += ["--steps", "3"] if model == "ddpm-digits" and option != "--steps" else []
            try:
                code = main(args)
            except BaseException as exc:  # noqa: BLE001  (a crash is what this test looks for)
                pytest.fail(f"{' '.join(args[2:])}: {type(exc).__name__}: {exc}")
            err = capsys.readouterr().err
            assert "Traceback" not in err and code in (0, 2), (args[2:], code, err)
            if value in ("nan", "-1", "1e39"):  # 1e39 overflows the float32 the graphs compute in
                assert code == 2, (args[2:], err)


API_VALUES = (float("nan"), -1, 1e39, 2.5, np.int64(2), True)


@pytest.mark.parametrize("model", ["ddpm-digits", "glow-digits", "char-lm"])
def test_every_api_option_with_nan_negative_huge_and_fractional_values(zoo_bundle, model) -> None:
    """The same property through the Python API: every scalar field of the bundle's options (sample) or of
    SamplingConfig (generate_ids) with NaN, -1, a float32 overflow, a fraction, a numpy integer and a bool either
    runs or raises a DeploykitError naming it; NaN, -1 and 1e39 never run."""
    import dataclasses
    import typing

    import deploykit
    from deploykit.errors import DeploykitError
    from deploykit.runtimes.tokens import SamplingConfig

    with deploykit.load(zoo_bundle(model).path) as dep:
        cls = SamplingConfig if model == "char-lm" else dep.kind.options
        hints = typing.get_type_hints(cls)
        scalar = [f.name for f in dataclasses.fields(cls)  # int, float and their optionals (not tuples of ints)
                  if hints[f.name] in (int, float) or (typing.get_origin(hints[f.name]) is not tuple and
                                                       {int, float} & set(typing.get_args(hints[f.name])))]
        assert scalar
        for name in scalar:
            for value in API_VALUES:
                try:
                    if model == "char-lm":
                        config = SamplingConfig(**{"max_new_tokens": 3, name: value})
                        dep.generate_ids([[1, 2]], config)
                    else:
                        steps = {"steps": 3} if model == "ddpm-digits" and name != "steps" else {}
                        dep.sample(2, 0, dep.options(**steps, **{name: value}))
                except DeploykitError as exc:
                    assert str(exc), (name, value)
                    continue
                except Exception as exc:  # noqa: BLE001  (a raw exception is what this test looks for)
                    pytest.fail(f"{name}={value!r}: {type(exc).__name__}: {exc}")
                assert not (isinstance(value, float) and (np.isnan(value) or value > 1e38)) and value != -1, \
                    f"{name}={value!r} ran"


def _numeric_options() -> list[tuple[str, str]]:
    """(command, option) for every int or float option of every command but `sample` (tested above, per loop)."""
    import typer

    from deploykit.cli import app

    group = typer.main.get_command(app)
    return [(name, param.opts[0]) for name, command in group.commands.items() if name != "sample"
            for param in getattr(command, "params", ())
            if param.param_type_name == "option" and not param.is_flag and param.bare_type() in ("int", "float")]


def test_numeric_options_are_discovered() -> None:
    found = set(_numeric_options())
    assert {("profile", "--iterations"), ("export", "--external-data-mb"), ("triton", "--max-samples"),
            ("quantize", "--calibration"), ("verify", "--seed"), ("build-engine", "--workspace")} <= found


@pytest.mark.parametrize(("command", "option"), _numeric_options())
def test_every_command_option_with_nan_negative_zero_and_huge_values(command: str, option: str, tiny_bundle: Path,
                                                                     capsys, tmp_path: Path) -> None:
    """Property-style: NaN and -1 exit 2 for every numeric option of every command, and no value (0, huge) makes a
    traceback: it is refused with exit 2 or runs (exit 0) without eating the machine."""
    from deploykit.cli import main

    (tmp_path / "in.txt").write_text("abc")
    base = {"build-engine": [tiny_bundle], "export": ["tests.conftest:TinyMLP", "--family", "mlp"],
            "compress": [tiny_bundle, tmp_path / "in.txt"], "decompress": [tmp_path / "in.txt", "--bundle", tiny_bundle],
            "profile": [tiny_bundle, "--backend", "ort-cpu", "--batch", "1", "--iterations", "2", "--warmup", "0"],
            "quantize": [tiny_bundle, "--mode", "int8-static", "--calibration", "2"], "triton": [tiny_bundle],
            "prune": ["zoo:mlp", "--iterations", "2"] if option != "--iterations" else ["zoo:mlp"],
            "verify": [tiny_bundle, "--golden-only"]}[command]
    for i, value in enumerate(("nan", "-1", "0", "99999999999")):
        writes = ("export", "quantize", "triton", "compress", "decompress", "prune")
        out = ["--out", tmp_path / f"out{i}"] if command in writes else []
        args = [str(a) for a in (command, *base, *out, option, value)]
        try:
            code = main(args)
        except BaseException as exc:  # noqa: BLE001  (a crash is what this test looks for)
            pytest.fail(f"{' '.join(args)}: {type(exc).__name__}: {exc}")
        err = capsys.readouterr().err
        assert "Traceback" not in err and code in (0, 2), (args, code, err)
        if value in ("nan", "-1"):
            assert code == 2 and option in err, (args, err)
