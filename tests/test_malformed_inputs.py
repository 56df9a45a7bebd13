"""Folders, manifests, CLI values and API arguments are input too: each malformed one gets a DeploykitError naming it
(exit 2 from the CLI, no traceback, nothing written), never a raw exception from transformers, diffusers,
tokenizers, safetensors or numpy, and no value that overflows float32 runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import deploykit
from deploykit.errors import BundleError, InputError
from deploykit.runtimes.tokens import SamplingConfig, mode_config
from deploykit.sources import resolve

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory, bpe: Path) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2,
                                                         n_head=4)).save_pretrained(folder)
    shutil.copyfile(bpe, folder / "tokenizer.json")
    return folder


def _config(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | changes))
    return edit


def _weights(cut: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / "model.safetensors"
        path.write_bytes(cut(path.read_bytes()))
    return edit


def _pickled(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": torch.zeros(300, 32)}, folder / "pytorch_model.bin")


HF_CASES = {
    "vocab_size as a string": (_config(vocab_size="300"), "config.json could not be read.*'vocab_size'"),
    "n_layer as a string": (_config(n_layer="2"), "config.json could not be read.*'n_layer'"),
    "eos_token_id as a string": (_config(eos_token_id="x"), "config.json could not be read.*'eos_token_id'"),
    "negative vocab_size": (_config(vocab_size=-5), "could not load it .AutoModelForCausalLM.*negative dimension"),
    "vocab_size 301 for 300 rows": (_config(vocab_size=301),
                                    r"weights and config.json disagree \(transformer.wte.weight: file \[300, 32\] vs "
                                    r"config \[301, 32\]"),
    "n_positions 0": (_config(n_positions=0), r"disagree \(transformer.wpe.weight: file \[64, 32\] vs config \[0, 32\]"),
    "config.json not JSON": (lambda f: (f / "config.json").write_text("{"), "config.json could not be read"),
    "tokenizer.json not JSON": (lambda f: (f / "tokenizer.json").write_text("not json"),
                                "tokenizer.json' is not a tokenizer.json that tokenizers can read"),
    "tokenizer.json {}": (lambda f: (f / "tokenizer.json").write_text("{}"), "is not a tokenizer.json"),
    "tokenizer.json binary": (lambda f: (f / "tokenizer.json").write_bytes(b"\xff\xfe\x00" * 9), "is not a tokenizer"),
    "safetensors truncated": (_weights(lambda b: b[:5000]), "could not load it .AutoModelForCausalLM.*SafetensorError"),
    "safetensors header only": (_weights(lambda b: b[:8 + int.from_bytes(b[:8], "little")]), "SafetensorError"),
    "safetensors garbage": (_weights(lambda b: b"garbage" * 100), "SafetensorError"),
    "safetensors empty": (_weights(lambda b: b""), "SafetensorError"),
    "pickled pytorch_model.bin": (_pickled, r"weights are pickled \(\*.bin\).*safe_serialization=True"),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_malformed_hf_folders_are_refused_naming_the_problem(case: str, gpt2_folder: Path, tmp_path: Path) -> None:
    edit, match = HF_CASES[case]
    folder = Path(shutil.copytree(gpt2_folder, tmp_path / "m"))
    edit(folder)
    with pytest.raises(InputError, match=match):
        resolve(f"hf:{folder}")


def test_malformed_hf_folder_through_the_cli_writes_nothing(gpt2_folder: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(gpt2_folder, tmp_path / "m"))
    _config(vocab_size=301)(folder)
    run = subprocess.run([sys.executable, "-m", "deploykit", "export", f"hf:{folder}", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "weights and config.json disagree" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("diffusers") / "pipe"
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    return folder


def _schedule(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    return edit


DIFFUSERS_CASES = {
    "scheduler config not JSON": (lambda f: (f / "scheduler" / "scheduler_config.json").write_text("{"),
                                  "scheduler/scheduler_config.json is not JSON"),
    "unet config not JSON": (lambda f: (f / "unet" / "config.json").write_text("nope"), "unet/config.json is not JSON"),
    "scheduler config a list": (lambda f: (f / "scheduler" / "scheduler_config.json").write_text("[1, 2]"),
                                "holds a list, expected a JSON object"),
    "beta_end 'big'": (_schedule(beta_end="big"), r"beta_end='big': expected a number in \(0, 1\)"),
    "num_train_timesteps 0": (_schedule(num_train_timesteps=0), "num_train_timesteps=0: expected an integer >= 2"),
    "NaN trained_betas": (_schedule(num_train_timesteps=3, trained_betas=[0.1, float("nan"), 0.2]),
                          r"trained_betas: expected a non-empty list of numbers in \(0, 1\)"),
    "UNet weights garbage": (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 50),
                             "diffusers could not load the UNet"),
}


@pytest.mark.parametrize("case", list(DIFFUSERS_CASES))
def test_malformed_diffusers_folders_are_refused_before_any_export(case: str, pipeline_folder: Path,
                                                                     tmp_path: Path) -> None:
    edit, match = DIFFUSERS_CASES[case]
    folder = Path(shutil.copytree(pipeline_folder, tmp_path / "p"))
    edit(folder)
    with pytest.raises(InputError, match=match):
        resolve(f"diffusers:{folder}")


@pytest.fixture
def ddpm_copy(zoo_bundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(zoo_bundle("ddpm-digits").path, tmp_path / "ddpm"))


def _edit_loop(bundle: Path, **changes: object) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["loop"] |= changes
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("changes", "match"), [
    ({"schedulers": ["plms"]}, "'schedulers' is \\['plms'\\]; expected a non-empty list of"),
    ({"schedulers": []}, "'schedulers' is \\[\\]"),
    ({"schedule": {"num_train_timesteps": 1000, "beta_end": "big"}}, "'schedule': scheduler config beta_end='big'"),
])
def test_a_manifest_loop_the_samplers_cannot_run_is_refused_at_load(changes: dict, match: str, ddpm_copy: Path) -> None:
    _edit_loop(ddpm_copy, **changes)
    with pytest.raises(BundleError, match=match):
        deploykit.load_bundle(ddpm_copy)
    run = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(ddpm_copy), "--n", "1", "--steps", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_negative_class_count_and_nul_paths_in_a_manifest(ddpm_copy: Path, tiny_bundle: Path) -> None:
    _edit_loop(ddpm_copy, num_classes=-1)
    with pytest.raises(BundleError, match="num_classes -1; a class count is >= 0"):
        with deploykit.load(ddpm_copy) as dep:
            dep.sample(1, 0, dep.options(steps=2))
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["graphs"]["model"]["file"] = "graphs/model\x00.onnx"
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="contains a NUL byte"):
        deploykit.load_bundle(tiny_bundle)


def test_garbage_tokenizer_in_a_bundle_is_named(zoo_bundle, bpe: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(zoo_bundle("gpt").path, tmp_path / "gpt"))
    (bundle / "tokenizer.json").write_text("garbage")
    manifest = json.loads((bundle / "manifest.json").read_text())
    from deploykit.bundle import sha256_file

    manifest["tokenizer"] = {"file": "tokenizer.json", "sha256": sha256_file(bundle / "tokenizer.json")}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="its tokenizer .* is not a tokenizer.json"):  # refused when the bundle loads
        deploykit.load_bundle(bundle)
    run = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(bundle), "--prompt", "Now"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "its tokenizer" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize(("ids", "match"), [("99999999999999999999999", "--prompt-ids"), ("\u00b2", "--prompt-ids"),
                                            ("1,,2", "--prompt-ids")])
def test_prompt_ids_that_are_not_int64_token_ids(ids: str, match: str, zoo_bundle) -> None:
    run = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(zoo_bundle("gpt").path), "--prompt-ids",
                          ids], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and match in run.stderr and "Traceback" not in run.stderr


def test_language_model_api_arguments(zoo_bundle) -> None:
    """generate / generate_ids refuse what they cannot take with a DeploykitError naming it; float ids are never
    truncated; a max_new_tokens beyond the context is refused before any buffer exists; a temperature whose logits /
    T overflows float32 is refused."""
    greedy = mode_config("greedy", 4)
    with deploykit.load(zoo_bundle("gpt").path) as dep:
        context = dep.bundle.loop.context
        for bad, match in [([], "at least one prompt"), ([[1.7, 2.2]], "float64 values"),
                           ([[1, float("nan")]], "float64 values"), ([["a", "b"]], "<U1 values"),
                           ([None], "object values"), ([[1, 2], [3, "x"]], "prompt 1 holds")]:
            with pytest.raises(InputError, match=match):
                dep.generate_ids(bad, greedy)
        with pytest.raises(InputError, match="at least one text prompt"):
            dep.generate([], greedy)
        with pytest.raises(InputError, match=f"reached the model's context of {context} positions"):
            dep.generate_ids([[1, 2]], mode_config("greedy", 300_000_000), host=True)  # buffers for 640 steps
        with pytest.raises(InputError, match="overflows float32; use 0 for greedy"):
            dep.generate_ids([[1, 2]], SamplingConfig(temperature=1e-310, max_new_tokens=2))
        assert len(dep.generate_ids([np.array([1, 2], np.int32)], greedy)[0]) <= 4  # any integer dtype


def test_sampling_api_arguments_and_float32_overflow(zoo_bundle) -> None:
    with deploykit.load(zoo_bundle("ddpm-digits").path) as dep:
        with pytest.raises(InputError, match="--steps is 2.5, expected int"):
            dep.options(steps=2.5)
        for labels in (np.array([1, 2, 3]), np.array([[1], [2]]), np.array([1.5, 2.0])):
            with pytest.raises(InputError, match="expected one integer label or 2"):
                dep.sample(2, 0, dep.options(labels=labels, steps=2))
        for guidance in (1e39, float("inf"), -1.0):
            with pytest.raises(InputError, match="--guidance is"):
                dep.sample(2, 0, dep.options(guidance=guidance, steps=2))
    run = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(zoo_bundle("ddpm-digits").path), "--n", "2",
                          "--steps", "2", "--guidance", "1e39", "--out", "never.npy"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and "--guidance is 1e+39" in run.stderr and not Path("never.npy").exists()



def test_a_swapped_tokenizer_is_caught_even_with_a_rehashed_manifest(gpt2_folder: Path, tmp_path: Path) -> None:
    """The manifest records the tokenizer's vocabulary (id -> token); another valid tokenizer.json, checksummed
    again, would make `sample` print other text while the graphs verify: verify and sample refuse it."""
    import tokenizers

    from deploykit.bundle import sha256_file

    resolved = resolve(f"hf:{gpt2_folder}")
    bundle = deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source,
                              tokenizer=resolved.tokenizer).path
    assert json.loads((bundle / "manifest.json").read_text())["tokenizer"]["vocab_sha256"]
    other = tokenizers.Tokenizer(tokenizers.models.BPE())
    other.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    other.train_from_iterator(["a completely different corpus of words"] * 50, trainer)
    other.save(str(bundle / "tokenizer.json"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = sha256_file(bundle / "tokenizer.json")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not the tokenizer this bundle was exported with"):
        deploykit.load_bundle(bundle)
    for args in (["verify", str(bundle), "--golden-only"], ["sample", str(bundle), "--prompt", "Now"]):
        run = subprocess.run([sys.executable, "-m", "deploykit", *args], capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and "not the tokenizer this bundle was exported with" in run.stderr, run.stderr
