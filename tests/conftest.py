"""Shared fixtures: one trained zoo cache and one exported bundle per zoo model for the whole run (its workers too)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import deploykit
from deploykit.bundle import Bundle

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: each keeps to one thread
    import onnxruntime
    import torch

    torch.set_num_threads(1)
    _start_session = onnxruntime.InferenceSession.__init__

    def _one_thread(self: onnxruntime.InferenceSession, path_or_bytes: object,
                    sess_options: onnxruntime.SessionOptions | None = None, *args: object, **kwargs: object) -> None:
        """Sessions get one intra-op thread that does not spin: spinning threads of one worker starved the other."""
        sess_options = sess_options or onnxruntime.SessionOptions()
        if not sess_options.intra_op_num_threads:
            sess_options.intra_op_num_threads = 1
        sess_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _start_session(self, path_or_bytes, sess_options, *args, **kwargs)

    onnxruntime.InferenceSession.__init__ = _one_thread


def _run_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder `name` for this test run, shared by the workers of `pytest -n` (each has its own base temp folder
    inside the run's)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def zoo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DEPLOYKIT_HOME for the run (reuse a warm cache by setting DEPLOYKIT_TEST_HOME); workers train each zoo model
    once between them (deploykit.models.trained locks the checkpoint)."""
    home = Path(os.environ.get("DEPLOYKIT_TEST_HOME") or _run_folder(tmp_path_factory, "deploykit-home"))
    os.environ["DEPLOYKIT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def zoo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Bundle]:
    """Export trained zoo model NAME once per run (through the same path as `deploykit export`): the first worker to
    need it exports it under a lock, the others load that bundle."""
    from deploykit.bundle import load_bundle
    from deploykit.models import exclusive
    from deploykit.sources import resolve

    root = _run_folder(tmp_path_factory, "bundles")
    cache: dict[str, Bundle] = {}

    def get(name: str) -> Bundle:
        if name not in cache:
            with exclusive(root / f".{name}.lock"):
                if (root / name).is_dir():
                    cache[name] = load_bundle(root / name)
                else:
                    resolved = resolve(f"zoo:{name}")
                    cache[name] = deploykit.export(resolved.model, resolved.family, root / name, source=resolved.source)
        return cache[name]

    return get


class TinyMLP(__import__("torch").nn.Module):
    """A user-style model following the mlp protocol, small enough to export in a second."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        torch.manual_seed(0)
        self.input_shape = (6,)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x)


@pytest.fixture(scope="session")
def tiny_model() -> TinyMLP:
    return TinyMLP().eval()


@pytest.fixture(scope="session")
def tiny_bundle_master(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyMLP) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "bundle"
    deploykit.export(tiny_model, "mlp", out)
    return out


@pytest.fixture
def tiny_bundle(tiny_bundle_master: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle, free to tamper with."""
    import shutil

    return Path(shutil.copytree(tiny_bundle_master, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2-style byte-level BPE tokenizer.json (300 tokens, <|endoftext|> special) trained on the Zen of Python."""
    import codecs
    import this

    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(codecs.decode(this.s, "rot13").splitlines(), trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def verifies_against() -> Callable[[str, str | Path], None]:
    """Check that `deploykit verify BUNDLE --source SPEC` passes on fresh inputs, the sampling loop included."""
    from deploykit.sources import reference

    def check(spec: str, bundle: str | Path) -> None:
        result = deploykit.verify(bundle, model=reference(spec, deploykit.load_bundle(bundle)), fresh=True, seed=3)
        assert result.passed, result.report.table()
        assert any(r.case.startswith("fresh loop") for r in result.report.rows)

    return check


@pytest.fixture(scope="session")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment whose PYTHONPATH puts `torch` and `transformers` packages that raise ImportError first."""
    shadow = tmp_path_factory.mktemp("no-torch")
    for name in ("torch", "transformers"):
        (shadow / name).mkdir()
        (shadow / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (test shadow)')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")])
    return env
