"""Language-model bundles with a real tokenizer: a byte-level BPE tokenizer.json travels in the bundle, text and
token-id generation, EOS, the CLI, and the torch-free runtime (tokenizers only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deploykit
from deploykit.errors import BundleError
from deploykit.models.transformer import GPT
from deploykit.runtimes.tokens import mode_config

tokenizers = pytest.importorskip("tokenizers")


def _gpt(bpe: Path, eos: int | None = None) -> GPT:
    tok = tokenizers.Tokenizer.from_file(str(bpe))
    torch.manual_seed(0)
    model = GPT([tok.id_to_token(i) for i in range(tok.get_vocab_size())], context=64, dim=32, heads=4, layers=2).eval()
    if eos is not None:
        model.eos_token_id = eos
    return model


@pytest.fixture(scope="module")
def bundle(bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> deploykit.Bundle:
    return deploykit.export(_gpt(bpe), "gpt", tmp_path_factory.mktemp("bpe") / "b", tokenizer=bpe)


def test_bundle_carries_the_tokenizer_and_generates_text_like_torch(bundle: deploykit.Bundle, bpe: Path) -> None:
    assert bundle.tokenizer is not None and bundle.tokenizer.read_bytes() == bpe.read_bytes()
    assert bundle.manifest["tokenizer"]["sha256"]
    config = mode_config("greedy", 12)
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, "torch", model=_gpt(bpe)) as torch_dep:
        codec = ort_dep.codec()
        assert codec.decode(codec.encode("Beautiful is better than ugly.")) == "Beautiful is better than ugly."
        ids = codec.encode("Beautiful is")
        assert len(ids) < len("Beautiful is")  # merged tokens, not characters
        texts = ort_dep.generate(["Beautiful is", "Now"], config)
        assert texts == torch_dep.generate(["Beautiful is", "Now"], config)
        new_ids = ort_dep.generate_ids([ids, [int(i) for i in codec.encode("Now")]], config)
        assert [codec.decode(t) for t in new_ids] == texts and all(len(t) == 12 for t in new_ids)


def test_generation_stops_at_the_models_eos(bpe: Path, bundle: deploykit.Bundle, tmp_path: Path) -> None:
    config = mode_config("greedy", 12)
    with deploykit.load(bundle.path) as dep:
        first = int(dep.generate_ids([[5, 6, 7]], config)[0][0])
    stopping = deploykit.export(_gpt(bpe, eos=first), "gpt", tmp_path / "eos", tokenizer=bpe)
    assert stopping.loop.eos == first
    with deploykit.load(stopping.path) as dep:
        assert dep.generate_ids([[5, 6, 7]], config)[0].size == 0  # the first pick is EOS: nothing after it


def test_tampered_tokenizer_is_refused(bundle: deploykit.Bundle, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(bundle.path, tmp_path / "b"))
    data = json.loads((copy / "tokenizer.json").read_text())
    data["added_tokens"][0]["content"] = "<|tampered|>"
    (copy / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="tokenizer file 'tokenizer.json' has sha256"):
        deploykit.load(copy)


def _cli(env: dict[str, str], *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploykit", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_prompt_ids_and_text_without_torch(bundle: deploykit.Bundle, tmp_path: Path) -> None:
    shadow = tmp_path / "no-torch"
    (shadow / "torch").mkdir(parents=True)
    (shadow / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed (test shadow)')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]))
    with deploykit.load(bundle.path) as dep:
        ids = dep.codec().encode("Beautiful is")
        expected = dep.generate(["Beautiful is"], mode_config("greedy", 8))[0]
    text = _cli(env, "sample", bundle.path, "--prompt", "Beautiful is", "--mode", "greedy", "--max-new-tokens", 8)
    by_ids = _cli(env, "sample", bundle.path, "--prompt-ids", ",".join(map(str, ids)), "--mode", "greedy",
                  "--max-new-tokens", 8, "--out", tmp_path / "out.txt")
    assert text.returncode == 0 and by_ids.returncode == 0, text.stderr + by_ids.stderr
    assert text.stdout.strip() == by_ids.stdout.strip() == "Beautiful is" + expected
    assert (tmp_path / "out.txt").read_text().strip() == "Beautiful is" + expected
    for args, message in ((("--prompt-ids", "1,x"), "--prompt-ids '1,x': expected comma-separated token ids"),
                          (("--prompt-ids", "1", "--prompt", "a"), "give --prompt"),
                          (("--prompt-ids", "100000"), "token ids in \\[100000, 100000\\], expected \\[0, 299\\]")):
        bad = _cli(env, "sample", bundle.path, *args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        assert re.search(message, " ".join(bad.stderr.split())), bad.stderr
