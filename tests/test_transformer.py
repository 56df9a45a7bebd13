"""Transformers: KV-cache logit parity (left-padded batches), token parity, cache == recompute, ViT, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import deploykit
from deploykit.errors import ExportError, InputError
from deploykit.models import load_checkpoint, trained
from deploykit.models.data import load_digits
from deploykit.models.transformer import GPT
from deploykit.runtimes.tokens import MODES, mode_config
from deploykit.runtimes.transformer import CachedLM

VOCAB = "abcdefghijklmnop"


@pytest.fixture(scope="module")
def learned_gpt() -> GPT:
    torch.manual_seed(3)
    return GPT(VOCAB, context=48, dim=32, heads=4, layers=3, positions="learned").eval()


@pytest.fixture(scope="module")
def learned_bundle(learned_gpt: GPT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deploykit.export(learned_gpt, "gpt", tmp_path_factory.mktemp("gpt") / "b").path


def cached_logits_vs_full(model: GPT, bundle: Path, prompts: list[np.ndarray], continuation: np.ndarray) -> float:
    """Max |ORT prefill + decode logits - torch full forward of each unpadded row|, over every real position."""
    worst = 0.0
    with deploykit.load(bundle) as dep:
        lm = CachedLM(dep.runner(), dep.bundle.loop)
        lm.start(prompts)
        prefill = lm.runner.infer  # re-run the prefill to read logits at every prompt position
        width = max(len(p) for p in prompts)
        mask = lm.feeds["attention_mask"]
        tokens = np.zeros((len(prompts), width), np.int64)
        for i, p in enumerate(prompts):
            tokens[i, width - len(p) :] = p
        empty = {k: v[:, :, :0] for k, v in lm.feeds.items() if k.startswith("past")}
        all_prefill = prefill({"input_ids": tokens, "position_ids": np.maximum(np.cumsum(mask, 1) - 1, 0),
                               "attention_mask": mask, **empty})["logits"]
        decoded = [lm.step(continuation[:, t]) for t in range(continuation.shape[1] - 1)]
    for i, p in enumerate(prompts):
        row = np.concatenate([p, continuation[i]])
        with torch.no_grad():
            full = model(torch.from_numpy(row)[None])[0].numpy()
        worst = max(worst, float(np.abs(all_prefill[i, width - len(p) :] - full[: len(p)]).max()))
        for t, logits in enumerate(decoded):
            worst = max(worst, float(np.abs(logits[i] - full[len(p) + t]).max()))
    return worst


def test_prefill_plus_decode_equals_full_forward_left_padded(learned_gpt: GPT, learned_bundle: Path) -> None:
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, len(VOCAB), size=n) for n in (5, 9, 1)]
    continuation = rng.integers(0, len(VOCAB), size=(3, 12))
    assert cached_logits_vs_full(learned_gpt, learned_bundle, prompts, continuation) < 1e-4


def test_zoo_gpt_cache_parity_and_cache_equals_recompute(zoo_bundle) -> None:
    _, model, _ = load_checkpoint(trained("gpt"))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, len(model.vocab), size=n) for n in (7, 30)]
    assert cached_logits_vs_full(model, zoo_bundle("gpt").path, prompts, rng.integers(0, len(model.vocab), (2, 40))) < 1e-4
    config = mode_config("top-p", 150)
    with deploykit.load(zoo_bundle("gpt").path) as cached, deploykit.load(zoo_bundle("gpt-nocache").path) as full:
        assert cached.generate(["Beautiful is", "Now"], config, seed=4) == full.generate(["Beautiful is", "Now"], config, seed=4)


@pytest.mark.parametrize("mode", list(MODES))
def test_generation_ort_equals_torch_200_tokens(zoo_bundle, mode: str) -> None:
    bundle = zoo_bundle("gpt")
    prompts = ["Beautiful is", "Errors should never", "\n"]
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        a = ort_dep.generate(prompts, mode_config(mode, 200), seed=5)  # the in-graph loop
        host = ort_dep.generate(prompts, mode_config(mode, 200), seed=5, host=True)
        b = torch_dep.generate(prompts, mode_config(mode, 200), seed=5)
    assert a == host == b and all(len(t) == 200 for t in a)


def test_in_graph_loop_stops_like_the_host_loop_and_hands_over_near_the_context(zoo_bundle) -> None:
    bundle = zoo_bundle("gpt")
    prompts = ["Beautiful is", "Errors should never", "\n"]
    with deploykit.load(bundle.path) as dep:
        assert dep.runners["generate"].spec.input_names()[:3] == ["input_ids", "position_ids", "attention_mask"]
        for mode in MODES:  # stop at ' ' or '.': rows end at different steps, the loop ends when all have
            config = mode_config(mode, 60, stop=(1, 13))
            ids = [dep.codec().encode(p) for p in prompts]
            assert [t.tolist() for t in dep.generate_ids(ids, config, seed=2)] == \
                [t.tolist() for t in dep.generate_ids(ids, config, seed=2, host=True)]
        context = bundle.loop.context
        with pytest.raises(InputError, match="reached the model's context"):  # the host loop says what went wrong
            dep.generate(["a" * (context - 10)], mode_config("greedy", 20))
    with deploykit.load(bundle.path, backend="torch") as reference:
        assert "generate" not in reference.runners  # torch runs the host loop: the check compares the two


def test_vit_accuracy_through_ort(zoo_bundle) -> None:
    _, _, payload = load_checkpoint(trained("vit"))
    digits = load_digits()
    with deploykit.load(zoo_bundle("vit").path) as dep:
        pred = dep.infer({"image": digits.x_test})["logits"].argmax(1)
    accuracy = float((pred == digits.y_test).mean())
    assert accuracy == pytest.approx(payload["metrics"]["test_accuracy"]) and accuracy > 0.9


def test_transformer_bad_inputs_are_named(learned_bundle: Path) -> None:
    with deploykit.load(learned_bundle) as dep:
        with pytest.raises(InputError, match="prompt 0 has 49 tokens, more than the model's context of 48"):
            dep.generate(["a" * 49], mode_config("greedy", 1))
        with pytest.raises(InputError, match="reached the model's context of 48 positions"):
            dep.generate(["abc"], mode_config("greedy", 60))
        lm = CachedLM(dep.runner(), dep.bundle.loop)
        with pytest.raises(InputError, match=r"prompt 1 has token ids in \[0, 16\], expected \[0, 15\]"):
            lm.start([np.array([1, 2]), np.array([0, 16])])
        lm.start([np.array([1, 2, 3])])
        feeds = {"input_ids": np.array([[4]]), "position_ids": np.array([[3]]), **lm.feeds}
        feeds["attention_mask"] = np.ones((1, 4), np.int64)
        short = dict(feeds, **{"past_key_values.1.key": feeds["past_key_values.1.key"][:, :, :2]})
        with pytest.raises(InputError, match=r"'past_key_values.1.key' axis 2 \('past'\) is 2, but another input set 'past' to 3"):
            dep.infer(short)
        missing = {k: v for k, v in feeds.items() if not k.startswith("past_key_values.2")}
        with pytest.raises(InputError, match=r"missing input\(s\) 'past_key_values.2.key', 'past_key_values.2.value'"):
            dep.infer(missing)
        with pytest.raises(InputError, match=r"dimension 'total' is 5, expected past \(3\) \+ seq \(1\) = 4"):
            dep.infer(dict(feeds, attention_mask=np.ones((1, 5), np.int64)))


def test_encoder_decoder_reverses_through_ort_and_beam_matches_torch(zoo_bundle) -> None:
    from deploykit.models.data import digit_strings

    bundle = zoo_bundle("transformer-seq2seq")
    sources = ["".join(map(str, s)) for s in digit_strings(300, seed=42)]
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        greedy = ort_dep.translate(sources)
        assert np.mean([g == s[::-1] for g, s in zip(greedy, sources)]) > 0.95
        assert ort_dep.translate(sources[:12], beams=4) == torch_dep.translate(sources[:12], beams=4)
        assert greedy[:40] == torch_dep.translate(sources[:40])


def test_gpt_beam_search_ort_equals_torch(zoo_bundle) -> None:
    from deploykit.runtimes.kinds import kind_of
    from deploykit.runtimes.tokens import beam_search, encode_text

    bundle = zoo_bundle("gpt")
    vocab = bundle.loop.vocab
    prompt = encode_text("Beautiful is", vocab)
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch") as torch_dep:
        a = beam_search(kind_of(bundle.loop).token_model(ort_dep.runners, bundle.loop), prompt, 4, 40, vocab.index("."))
        b = beam_search(kind_of(bundle.loop).token_model(torch_dep.runners, bundle.loop), prompt, 4, 40, vocab.index("."))
    assert a[0].tolist() == b[0].tolist() and len(a[0]) > 3
    assert a[1] == pytest.approx(b[1], abs=1e-3)


def test_sdpa_kv_cache_model_exports_as_written_and_decodes_like_torch(tmp_path: Path) -> None:
    """SDPA with a boolean mask over a cache: a fully hidden query row is undefined (torch and ORT disagree there),
    so checks draw masks as real batches look (cache left-padded, new tokens visible) and the export passes."""
    from sdpa_gpt import build_model

    model = build_model()
    bundle = deploykit.export(model, "gpt", tmp_path / "sdpa")
    mask = bundle.graphs["decoder_with_past"].spec.inputs[2]
    assert mask.padding == "past"
    drawn = mask.random(np.random.default_rng(0), {"batch": 4, "total": 9, "past": 6})
    assert drawn[0].tolist() == [0] * 6 + [1] * 3 and drawn[:, 6:].all()  # row 0 most padded, new tokens visible
    assert deploykit.verify(bundle, model=model, fresh=True, seed=5).passed
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch", model=model) as torch_dep:
        config = mode_config("greedy", 12)
        assert ort_dep.generate(["abc", "h ."], config) == torch_dep.generate(["abc", "h ."], config)


def test_a_cache_sliced_from_a_context_buffer_exports_and_decodes_like_torch(tmp_path: Path) -> None:
    """GPT-2's / nanoGPT's `bias[:, :, total - seq:total]` over a [context, context] buffer: the dims carry the
    protocol's bound (past < context, seq and total <= context), so torch.export can prove the slice in range."""
    from sdpa_gpt import build_buffer_model

    model = build_buffer_model()
    bundle = deploykit.export(model, "gpt", tmp_path / "buffer")
    assert bundle.graphs["decoder_with_past"].spec.dims["past"].max == model.context - 1
    assert max(s["total"] for s in bundle.check_shapes) <= model.context  # DECODER_SHAPES' cache of 200 clipped
    with deploykit.load(bundle.path) as ort_dep, deploykit.load(bundle.path, backend="torch", model=model) as torch_dep:
        config = mode_config("top-p", 40)
        assert ort_dep.generate(["abc", "h ."], config, seed=1) == torch_dep.generate(["abc", "h ."], config, seed=1)
        with pytest.raises(InputError, match="dimension 'total' is 65, expected >= 1 and <= 64"):
            ort_dep.infer({"input_ids": np.zeros((1, 1), np.int64), "position_ids": np.zeros((1, 1), np.int64),
                           "attention_mask": np.ones((1, 65), np.int64)}
                          | {n: np.zeros((1, 4, 64, 8), np.float32) for n in ort_dep.runners["decoder_with_past"]
                             .spec.input_names()[3:]}, "decoder_with_past")


def test_a_buffer_shorter_than_the_context_gets_an_actionable_export_error(tmp_path: Path) -> None:
    """A mask buffer of 32 in a model declaring context 64: torch.export, told that past is a Dim up to 63, says
    which bound the code needs and how to fix it, instead of a data-dependent `Eq(u0, 3)` as with string dims."""
    from sdpa_gpt import build_buffer_model

    with pytest.raises(ExportError, match=r"Constraints violated \(past\)!.*Suggested fixes: past = "
                                          r"Dim\('past', max=31\)"):
        deploykit.export(build_buffer_model(32), "gpt", tmp_path / "buffer")
    assert not (tmp_path / "buffer").exists()

