"""hf:DIR encoder-decoders (BART, T5, Marian) saved with save_pretrained from tiny random configs: exported as
`hf-seq2seq`, they decode token for token like transformers' `generate()` with the folder's generation settings,
greedy and beam 4, on a right-padded batch of two sources of different lengths, text in and out through the
folder's tokenizer.json."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import deploykit
from deploykit.backends import RunnerOptions
from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.sources import reference, resolve

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SOURCES = ["Beautiful is better than ugly.", "Now is better than never, although never is often better than now."]


@pytest.fixture(scope="module")
def seq2seq_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer.json with BART's specials (<s> 0, <pad> 1, </s> 2) wrapping each source as BART's
    does (<s> ... </s>), trained on the Zen of Python."""
    import codecs
    import this

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A </s>",
                                                                  special_tokens=[("<s>", 0), ("</s>", 2)])
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(codecs.decode(this.s, "rot13").splitlines(), trainer)
    path = tmp_path_factory.mktemp("s2s-tokenizer") / "tokenizer.json"
    tok.save(str(path))
    return path


def _model(kind: str) -> torch.nn.Module:
    """Tiny random encoder-decoders whose greedy and beam outputs are not all alike: larger initial weights, and
    (BART) an eos bias so that beams finish at different lengths and the length penalty decides."""
    torch.manual_seed(0)
    shared = {"vocab_size": 300, "pad_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2}
    if kind == "t5":
        return transformers.T5ForConditionalGeneration(transformers.T5Config(
            **shared | {"decoder_start_token_id": 1}, d_model=32, d_ff=32, num_layers=2, num_heads=2, d_kv=16,
            initializer_factor=4.0))
    layers = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
              "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 64,
              "init_std": 0.2}
    if kind == "marian":
        model = transformers.MarianMTModel(transformers.MarianConfig(**shared, **layers, forced_eos_token_id=2))
    else:
        model = transformers.BartForConditionalGeneration(transformers.BartConfig(**shared, **layers))
    with torch.no_grad():
        model.final_logits_bias[0, 2] = 4.0
    return model


GENERATION = {  # the settings each folder's generation_config.json carries (BART: as bart-large-cnn's, shortened)
    "bart": {"num_beams": 4, "no_repeat_ngram_size": 3, "forced_bos_token_id": 0, "early_stopping": True,
             "length_penalty": 2.0, "min_length": 4, "max_length": 24},
    "t5": {},  # save_pretrained's defaults: greedy, 20 new tokens
    "marian": {"num_beams": 4, "bad_words_ids": [[1]], "max_length": 16, "repetition_penalty": 1.3},
}


def save_seq2seq(kind: str, folder: Path, tokenizer: Path) -> Path:
    model = _model(kind)
    for key, value in GENERATION[kind].items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(folder)
    shutil.copyfile(tokenizer, folder / "tokenizer.json")
    return folder


def _generated(model: torch.nn.Module, ids: list[np.ndarray], stops: list[int], beams: int) -> list[list[int]]:
    """transformers' generate() on the right-padded batch: each row after the decoder start, through its eos."""
    width = max(len(i) for i in ids)
    batch = torch.tensor([list(i) + [1] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    with torch.no_grad():
        out = model.generate(input_ids=batch, attention_mask=mask, num_beams=beams)
    rows = []
    for row in out[:, 1:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:end])
    return rows


def _check(kind: str, folder: Path, bundle_path: Path) -> None:
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True).eval()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    with deploykit.load(bundle_path, options=RunnerOptions(threads=1)) as dep:
        loop = dep.loop
        ids = [np.asarray(fast(s).input_ids) for s in SOURCES]
        assert len(ids[0]) < len(ids[1]) and ids[0][0] == 0 and ids[0][-1] == 2  # <s> ... </s>, as transformers
        for beams in (1, 4):
            ours = [t.tolist() for t in dep.translate_ids(ids, beams)]
            assert ours == _generated(model, ids, loop.stops, beams), (kind, beams)
        default = model.generation_config.num_beams or 1
        texts = dep.translate(SOURCES)  # the folder's num_beams, through the tokenizer both ways
        want = fast.batch_decode([[loop.bos, *t] for t in _generated(model, ids, loop.stops, default)],
                                 skip_special_tokens=True)
        assert texts == want
    if kind == "bart":
        assert loop.num_beams == 4 and loop.forced_bos == 0 and loop.forced_eos == [2] and loop.max_length == 24
        assert len({len(t) for t in ours}) == 2  # the two beams finished at different lengths (the eos bias)


@pytest.fixture(scope="module")
def exported(seq2seq_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """(folder, bundle) of each kind, exported once by the CLI as a user would."""
    done: dict[str, tuple[Path, Path]] = {}

    def get(kind: str) -> tuple[Path, Path]:
        if kind not in done:
            work = tmp_path_factory.mktemp(kind)
            folder = save_seq2seq(kind, work / "m", seq2seq_tokenizer)
            assert main(["export", f"hf:{folder}", "--out", str(work / "b")]) == 0
            done[kind] = folder, work / "b"
        return done[kind]

    return get


@pytest.mark.parametrize("kind", ["bart", pytest.param("t5", marks=pytest.mark.slow),
                                  pytest.param("marian", marks=pytest.mark.slow)])
def test_encoder_decoders_decode_like_transformers_generate(kind: str, exported) -> None:
    """Verified on fresh inputs against the folder, then greedy, beam 4 and the folder's default search token for
    token against transformers (forced BOS / EOS, no-repeat n-grams, min length, length penalty, early stopping, bad
    words and repetition penalty along the way); never a `gpt` bundle."""
    folder, path = exported(kind)
    bundle = deploykit.load_bundle(path)
    assert bundle.manifest["family"] == "hf-seq2seq" and set(bundle.graphs) == {"encoder", "decoder_with_past"}
    assert deploykit.verify(bundle.path, model=reference(f"hf:{folder}", bundle)).passed
    _check(kind, folder, bundle.path)


def test_sample_prints_each_source_and_its_decoding(exported, capsys: pytest.CaptureFixture[str]) -> None:
    _, bundle = exported("bart")
    capsys.readouterr()  # the export's own lines, when this test runs first
    assert main(["sample", str(bundle), "--prompt", SOURCES[0], "--beam", "2"]) == 0
    with deploykit.load(bundle) as dep:
        assert capsys.readouterr().out == f"{SOURCES[0]} -> {dep.translate(SOURCES[:1], 2)[0]}\n"
        assert main(["sample", str(bundle), "--prompt-ids", "0,5,9,2"]) == 0  # ids in, ids out (the folder's beams)
        printed = capsys.readouterr().out.strip()
        assert printed == "0,5,9,2 -> " + ",".join(map(str, dep.translate_ids([[0, 5, 9, 2]])[0]))
    for beams in ("0", "-1", "99999999999"):  # refused before any allocation of beams x max_length
        assert main(["sample", str(bundle), "--prompt-ids", "0,5,2", "--beam", beams]) == 2
    assert "expected an integer in 1..300" in capsys.readouterr().err
    assert main(["inspect", str(bundle)]) == 0  # the loop's settings, its vocabularies by length only
    shown = capsys.readouterr().out
    assert "'num_beams': 4" in shown and "'src_vocab': '[300 items]'" in shown and "Ġbetter" not in shown


@pytest.mark.parametrize("setting", [{"encoder_repetition_penalty": 1.5}, {"bad_words_ids": [[5, 6]]},
                                     {"max_length": 100}])
def test_generation_settings_the_search_does_not_run_are_refused(setting: dict, seq2seq_tokenizer: Path,
                                                                 tmp_path: Path) -> None:
    model = _model("bart")
    for key, value in setting.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(tmp_path / "m")
    name = next(iter(setting))
    with pytest.raises(InputError, match={"encoder_repetition_penalty": "encoder_repetition_penalty=1.5",
                                          "bad_words_ids": "several tokens", "max_length": "64 positions"}[name]):
        resolve(f"hf:{tmp_path / 'm'}")


def test_quantize_reports_what_int8_costs_the_decodings(exported, tmp_path: Path) -> None:
    """int8 and int4 of an encoder-decoder: greedy decodings beside fp32's in the report (the same rows in the
    manifest), and none of onnxruntime's quantizer chatter (through the root logger) in the terminal (a separate
    process: pytest's own log capture would hide it)."""
    import subprocess
    import sys

    _, bundle = exported("bart")
    for mode in ("int4", "int8-dynamic"):  # int4's quantizer printed every node it skipped, int8's a warning
        run = subprocess.run([sys.executable, "-m", "deploykit", "quantize", str(bundle), "--mode", mode, "--out",
                              str(tmp_path / mode)], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert "greedy outputs identical to fp32" in run.stdout
        assert not re.search(r"\b(INFO|WARNING)\b", run.stdout + run.stderr), run.stderr[:300]
    rows = deploykit.load_bundle(tmp_path / "int8-dynamic").manifest["precision"]["accuracy"]
    assert [r["metric"].split(" (")[0] for r in rows] == ["greedy outputs identical to fp32",
                                                          "greedy tokens equal to fp32 before the first difference"]
    assert rows[0]["fp32"] == 1.0 and 0 <= rows[0]["quantized"] <= 1 and rows[1]["quantized"] <= rows[1]["fp32"]


BART_LAYERS = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
               "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}
T5_LAYERS = {"d_model": 32, "d_ff": 32, "num_layers": 2, "num_heads": 2, "d_kv": 16}
IDS = {"vocab_size": 300, "pad_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2}
ARCHITECTURES = {  # model type -> its tiny model, each with its class's default generation settings
    "blenderbot": lambda: transformers.BlenderbotForConditionalGeneration(transformers.BlenderbotConfig(
        **IDS, **BART_LAYERS, max_position_embeddings=64)),  # encoder_no_repeat_ngram_size 3 by default
    "mbart": lambda: transformers.MBartForConditionalGeneration(transformers.MBartConfig(
        **IDS, **BART_LAYERS, max_position_embeddings=64)),
    "pegasus": lambda: transformers.PegasusForConditionalGeneration(transformers.PegasusConfig(
        **IDS, **BART_LAYERS, max_position_embeddings=64)),  # sinusoidal positions
    "m2m_100": lambda: transformers.M2M100ForConditionalGeneration(transformers.M2M100Config(
        **IDS, **BART_LAYERS, max_position_embeddings=64)),
    "mt5": lambda: transformers.MT5ForConditionalGeneration(transformers.MT5Config(**IDS, **T5_LAYERS)),
    "longt5": lambda: transformers.LongT5ForConditionalGeneration(transformers.LongT5Config(**IDS, **T5_LAYERS)),
    "fsmt": lambda: transformers.FSMTForConditionalGeneration(transformers.FSMTConfig(
        langs=["en", "de"], src_vocab_size=300, tgt_vocab_size=300, **BART_LAYERS, max_position_embeddings=256,
        pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)),  # its decoder takes its own masks
}


@pytest.mark.parametrize("kind", [k if k == "blenderbot" else pytest.param(k, marks=pytest.mark.slow)
                                  for k in ARCHITECTURES])
def test_other_text_to_text_architectures_decode_like_transformers(kind: str, tmp_path: Path) -> None:
    """Each with the generation settings its config class defaults to (Blenderbot: no-repeat trigrams of the
    source), greedy and beam 4 token for token on a right-padded batch of two sources."""
    torch.manual_seed(0)
    model = ARCHITECTURES[kind]().eval()
    model.save_pretrained(tmp_path / "m")
    resolved = resolve(f"hf:{tmp_path / 'm'}")
    bundle = deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source)
    sources = [np.asarray([0, 5, 9, 33, 7, 2]), np.asarray([0, 44, 12, 2])]
    with deploykit.load(bundle.path, options=RunnerOptions(threads=1)) as dep:
        for beams in (1, 4):
            ours = [t.tolist() for t in dep.translate_ids(sources, beams)]
            assert ours == _generated(model, sources, bundle.loop.stops, beams), beams


@pytest.mark.parametrize("kind", ["led", "prophetnet", "switch_transformers"])
def test_encoder_decoders_these_graphs_do_not_carry_are_refused_by_type(kind: str, tmp_path: Path) -> None:
    config = {"led": lambda: transformers.LEDConfig(**IDS, **BART_LAYERS),
              "prophetnet": lambda: transformers.ProphetNetConfig(vocab_size=300, hidden_size=32, ngram=2),
              "switch_transformers": lambda: transformers.SwitchTransformersConfig(**IDS, **T5_LAYERS)}[kind]()
    config.architectures = [transformers.AutoModelForSeq2SeqLM._model_mapping[type(config)].__name__]
    config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")  # never opened: the config refuses first
    with pytest.raises(InputError, match=f"model type '{kind}' is an encoder-decoder deploykit does not export: "):
        resolve(f"hf:{tmp_path}")


def test_beam_candidates_are_the_stable_top_k_ties_included() -> None:
    """The beam step's top-k (a partition, then a sort of k) picks what a full stable sort picks, with many ties and
    -inf entries (forced tokens) on the boundary."""
    from deploykit.runtimes.seq2seq_generate import _top

    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.integers(-3, 3, (2, int(rng.integers(600, 3000)))).astype(np.float32)
        x[:, rng.integers(0, x.shape[1], 50)] = -np.inf
        k = int(rng.integers(1, 9))
        np.testing.assert_array_equal(_top(x, k), np.argsort(-x, axis=-1, kind="stable")[..., :k])
