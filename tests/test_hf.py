"""hf:DIR: GPT-2 and Llama-style causal LMs saved with save_pretrained (random weights from small configs, nothing
downloaded) export with their default attention and generate token for token like transformers' generate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import deploykit
from deploykit.cli import main
from deploykit.errors import ExportError, InputError
from deploykit.runtimes.tokens import mode_config
from deploykit.sources import reference, resolve

transformers = pytest.importorskip("transformers")

PROMPTS = ["Beautiful is better", "Now"]


def _save(kind: str, folder: Path, bpe: Path) -> Path:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                         bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config)
    else:  # RoPE, RMSNorm, SwiGLU, grouped-query attention (2 key/value heads for 4 query heads)
        config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          bos_token_id=0, eos_token_id=0)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    shutil.copyfile(bpe, folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def exported(request: pytest.FixtureRequest, bpe: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = _save(request.param, tmp_path_factory.mktemp(request.param) / "model", bpe)
    resolved = resolve(f"hf:{folder}")
    bundle = deploykit.export(resolved.model, resolved.family, folder.parent / "bundle", source=resolved.source,
                              tokenizer=resolved.tokenizer)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    return request.param, bundle, reference


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def fused(request: pytest.FixtureRequest, bpe: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same folders exported with `deploykit export --fuse`."""
    folder = _save(request.param, tmp_path_factory.mktemp(f"{request.param}-fused") / "model", bpe)
    out = folder.parent / "bundle"
    assert main(["export", f"hf:{folder}", "--out", str(out), "--fuse"]) == 0
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    return request.param, deploykit.load_bundle(out), reference


def test_default_attention_exports_and_greedy_tokens_equal_transformers_generate(exported) -> None:
    kind, bundle, reference = exported
    assert reference.config._attn_implementation == "sdpa"  # as published, no eager switch
    assert (bundle.loop.heads, bundle.loop.head_dim) == ({"gpt2": 4, "llama": 2}[kind], 8)  # Llama's cache: KV heads
    _greedy_like_transformers(bundle, reference)


def _greedy_like_transformers(bundle: deploykit.Bundle, reference: torch.nn.Module) -> None:
    """A left-padded batch of two prompts decodes 16 greedy tokens as transformers' generate does, as ids and text."""
    with deploykit.load(bundle.path) as dep:
        codec = dep.codec()
        ids = [codec.encode(p) for p in PROMPTS]
        ours = dep.generate_ids(ids, mode_config("greedy", 16))  # one left-padded batch of two prompts
        texts = dep.generate(PROMPTS, mode_config("greedy", 16))
    for prompt, got, text in zip(ids, ours, texts):
        with torch.no_grad():
            full = reference.generate(torch.from_numpy(prompt)[None], max_new_tokens=16, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)
        want = full[0, len(prompt):].numpy()
        stop = np.flatnonzero(want == 0)  # deploykit stops at EOS (id 0 here); transformers was told not to
        np.testing.assert_array_equal(got, want[: stop[0]] if stop.size else want)
        assert text == codec.decode(got)


def test_graph_stores_every_linear_weight_as_torch_holds_it(exported) -> None:
    """No Transpose over a weight (onnxruntime would fold it into a copy at each load) and no weight stored
    transposed: each 2-D torch weight's bytes are an initializer of the graph, the tied GPT-2 LM head included."""
    import onnx
    from onnx import numpy_helper

    _, bundle, reference = exported
    graph = onnx.load(str(bundle.path / "graphs" / "decoder_with_past.onnx")).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == "Transpose" and n.input[0] in initializers]
    stored = {(a.shape, a.tobytes()) for a in initializers.values() if a.ndim == 2}
    weights = {p.data_ptr(): p.detach().numpy() for p in reference.parameters() if p.ndim == 2}
    assert len(weights) > 4 and all((w.shape, w.tobytes()) in stored for w in weights.values())


def test_verify_against_the_folder_the_user_names(exported, verifies_against, tmp_path: Path) -> None:
    _, bundle, _ = exported
    folder = Path(bundle.source["path"])
    verifies_against(f"hf:{folder}", bundle.path)
    with pytest.raises(InputError, match="does not import code or open files a bundle names.*--source hf:DIR"):
        deploykit.verify(bundle, fresh=True)
    changed = Path(shutil.copytree(folder, tmp_path / "changed"))
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps(config | {"layer_norm_epsilon": 1e-3, "rms_norm_eps": 1e-3}))
    with pytest.raises(InputError, match=r"is not what this bundle was exported from \(its fingerprint differs"):
        reference(f"hf:{changed}", bundle)


def test_int8_dynamic_quantizes_every_linear_layer(exported, tmp_path: Path) -> None:
    """GPT-2's Conv1D layers export as Gemm and its tied head reads Transpose(wte): onnxruntime's dynamic quantizer
    skipped both until quantize rewrote them as MatMul over a constant weight."""
    from collections import Counter

    import onnx

    from deploykit.precision import quantize

    kind, bundle, _ = exported
    quantized = quantize(bundle, "int8-dynamic", tmp_path / "q")
    ops = Counter(n.op_type for g in quantized.graphs.values() for n in onnx.load(str(g.path)).graph.node)
    linear_per_layer = {"gpt2": 4, "llama": 7}[kind]  # qkv, proj, fc, proj / q, k, v, o, gate, up, down
    assert ops["MatMulInteger"] == 2 * linear_per_layer + 1 and ops["Gemm"] == 0, ops  # 2 layers + the LM head
    assert deploykit.verify(quantized, fresh=False).passed
    assert quantized.tokenizer.read_bytes() == bundle.tokenizer.read_bytes()  # the tokenizer comes along
    rows = {r["metric"]: r["quantized"] for r in quantized.manifest["precision"]["accuracy"]}
    assert any(m.startswith("perplexity (4 x 63 tokens") for m in rows), rows  # within the 64-position context


def test_fused_export_holds_single_attention_norm_and_rotary_operators_and_decodes_like_transformers(
        fused, verifies_against, capsys: pytest.CaptureFixture[str]) -> None:
    """--fuse: opset-23 Attention (Llama's taking its 2 key/value heads as the cache holds them, no repeat),
    RMSNormalization and RotaryEmbedding instead of their decompositions; tokens and fresh-input verify unchanged."""
    import onnx

    from deploykit.engines import EngineRequest, build_engines

    kind, bundle, reference = fused
    want = {"gpt2": {"Attention": 2}, "llama": {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4}}[kind]
    assert bundle.manifest["fused"] == {"decoder_with_past": want}
    assert bundle.graphs["decoder_with_past"].opset == 23
    graph = onnx.load(str(bundle.graphs["decoder_with_past"].path), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    decomposed = {"Softmax", "IsNaN", "ReduceMean", "Neg"} | ({"Pow"} if kind == "llama" else set())  # GPT-2's gelu: x^3
    assert not ops & decomposed, ops
    keys = [n.input[1] for n in graph.node if n.op_type == "Attention"]
    assert keys == ["present.0.key", "present.1.key"]  # the cache itself: no Expand of the key heads in between
    _greedy_like_transformers(bundle, reference)
    verifies_against(f"hf:{bundle.source['path']}", bundle.path)
    with pytest.raises(InputError, match="exported with --fuse.*build TensorRT engines from an export without"):
        build_engines(bundle, EngineRequest())
    assert main(["inspect", str(bundle.path)]) == 0
    assert "fused (export --fuse, opset-23 operators for onnxruntime) in 'decoder_with_past': 2 Attention" in \
        capsys.readouterr().out


def test_int4_and_int8_of_a_fused_export_quantize_every_linear_layer_and_generate_torch_free(
        fused, no_torch_env: dict[str, str], tmp_path: Path) -> None:
    """int4 over the fused graph: every linear layer and the LM head a MatMulNBits reading the activations as they
    are (no Flatten / Gemm / Reshape around it); the report is recorded; the bundle samples without torch. int8-dynamic
    quantizes the linear layers and leaves Attention float; int8-static is refused."""
    import subprocess
    import sys
    from collections import Counter

    import onnx

    from deploykit.precision import quantize

    kind, bundle, _ = fused
    quantized = quantize(bundle, "int4", tmp_path / "q4")
    graph = onnx.load(str(quantized.graphs["decoder_with_past"].path)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["MatMulNBits"] == 2 * {"gpt2": 4, "llama": 7}[kind] + 1 and not ops["Gemm"] + ops["Flatten"], ops
    assert ops["Attention"] == 2 and quantized.manifest["fused"] == bundle.manifest["fused"]
    metrics = [r["metric"] for r in quantized.manifest["precision"]["accuracy"]]
    assert any(m.startswith("top-1 next token agreement") for m in metrics), metrics
    run = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(quantized.path), "--prompt", PROMPTS[0],
                          "--mode", "greedy", "--max-new-tokens", "8"], env=no_torch_env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith(PROMPTS[0]), run.stderr
    int8 = quantize(bundle, "int8-dynamic", tmp_path / "q8")  # ONNX's Attention is not onnxruntime's to quantize
    ops = Counter(n.op_type for n in onnx.load(str(int8.graphs["decoder_with_past"].path)).graph.node)
    assert ops["Attention"] == 2
    assert ops["MatMulInteger"] == 2 * {"gpt2": 4, "llama": 7}[kind] + 1 and not ops["QAttention"], ops
    assert deploykit.verify(int8, fresh=False).passed
    with pytest.raises(InputError, match="exported with --fuse: onnxruntime 1.32 aborts"):
        quantize(bundle, "int8-static", tmp_path / "q8s")


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama-unfused"])
def in_place(request: pytest.FixtureRequest, bpe: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same folders exported with `deploykit export --family gpt-inplace` (--fuse but for llama-unfused)."""
    kind = request.param.split("-")[0]
    folder = _save(kind, tmp_path_factory.mktemp(f"{request.param}-in-place") / "model", bpe)
    out = folder.parent / "bundle"
    fuse = [] if request.param.endswith("unfused") else ["--fuse"]
    assert main(["export", f"hf:{folder}", "--out", str(out), "--family", "gpt-inplace", *fuse]) == 0
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    return request.param, deploykit.load_bundle(out), reference


def test_in_place_export_writes_its_cache_in_place_and_decodes_like_transformers(in_place, verifies_against) -> None:
    """--family gpt-inplace: one TensorScatter per cache buffer (opset 24) and no other reader of the buffers; on
    onnxruntime's CPU provider the step writes into the arrays it was given, with the values a run into fresh outputs
    gives; left-padded batches decode like transformers' generate, also after the buffers grew; verify --source."""
    import onnx

    from deploykit.engines import EngineRequest, build_engines
    from deploykit.runtimes.kv_in_place import GROWTH
    from deploykit.runtimes.transformer import cache_presents

    kind, bundle, reference = in_place
    assert bundle.loop.kind == "kv_in_place" and bundle.graphs["decoder_in_place"].opset == 24
    graph = onnx.load(str(bundle.graphs["decoder_in_place"].path), load_external_data=False).graph
    writes = [n for n in graph.node if n.op_type == "TensorScatter"]
    assert [n.output[0] for n in writes] == [f"present.{i}.{p}" for i in range(2) for p in ("key", "value")]
    assert not [n for n in graph.node if n.op_type in ("ScatterElements", "Concat") and n.input[0].startswith("past")]
    if "fused" in bundle.manifest:
        assert [n.input[1] for n in graph.node if n.op_type == "Attention"] == ["present.0.key", "present.1.key"]
    _greedy_like_transformers(bundle, reference)
    _past_the_window_like_generate(bundle.path, reference)
    with deploykit.load(bundle.path) as dep:  # 2 + 40 tokens: the buffers grow past their first GROWTH positions
        ids = [dep.codec().encode(p) for p in PROMPTS]
        ours = dep.generate_ids(ids, mode_config("greedy", GROWTH + 8))
        runner = dep.runners["decoder_in_place"]
        rng = np.random.default_rng(0)
        feeds = runner.spec.random_inputs(rng, {"batch": 2, "seq": 1, "past": 5, "total": 6, "capacity": 9})
        fresh = runner.infer({k: v.copy() for k, v in feeds.items()})
        aliases = cache_presents(2)
        written = runner.infer(feeds, aliases=aliases)
    for prompt, got in zip(ids, ours):
        with torch.no_grad():
            full = reference.generate(torch.from_numpy(prompt)[None], max_new_tokens=GROWTH + 8, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)
        want = full[0, len(prompt):].numpy()
        stop = np.flatnonzero(want == 0)
        np.testing.assert_array_equal(got, want[: stop[0]] if stop.size else want)
    for past, present in aliases.items():
        assert written[present] is feeds[past]  # written into the caller's array, no copy
        np.testing.assert_array_equal(written[present], fresh[present])
    np.testing.assert_array_equal(written["logits"], fresh["logits"])
    verifies_against(f"hf:{bundle.source['path']}", bundle.path)
    with pytest.raises(InputError, match="(--fuse|TensorScatter).*build TensorRT engines from an export"):
        build_engines(bundle, EngineRequest())


def test_int4_of_an_in_place_export_keeps_its_writes_and_generates_torch_free(
        in_place, no_torch_env: dict[str, str], tmp_path: Path) -> None:
    """int4 turns every linear layer into MatMulNBits and leaves the cache writes alone; the bundle samples without
    torch."""
    import subprocess
    import sys
    from collections import Counter

    import onnx

    from deploykit.precision import quantize

    kind, bundle, _ = in_place
    if kind != "llama":
        pytest.skip("one architecture is enough here")
    quantized = quantize(bundle, "int4", tmp_path / "q4")
    ops = Counter(n.op_type for n in onnx.load(str(quantized.graphs["decoder_in_place"].path)).graph.node)
    assert ops["MatMulNBits"] == 2 * 7 + 1 and ops["TensorScatter"] == 4, ops
    run = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(quantized.path), "--prompt", PROMPTS[0],
                          "--mode", "greedy", "--max-new-tokens", "8"], env=no_torch_env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith(PROMPTS[0]), run.stderr


def test_an_in_place_cache_read_by_anything_but_its_write_is_refused(tmp_path: Path) -> None:
    """The graph check: a buffer another node reads (it would see the step's write) or written by something else
    than a TensorScatter into its present is named."""
    import onnx
    from onnx import TensorProto, helper

    from deploykit.runtimes.kv_in_place import in_place_problems

    def graph(extra_reader: bool) -> Path:
        cache = helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, ["b", 2, "c", 4])
        new = helper.make_tensor_value_info("new", TensorProto.FLOAT, ["b", 2, 1, 4])
        index = helper.make_tensor_value_info("index", TensorProto.INT64, ["b"])
        nodes = [helper.make_node("TensorScatter", ["past_key_values.0.key", "new", "index"], ["present.0.key"], axis=2)]
        outputs = [helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, None)]
        if extra_reader:
            nodes.append(helper.make_node("Relu", ["past_key_values.0.key"], ["seen"], name="peek"))
            outputs.append(helper.make_tensor_value_info("seen", TensorProto.FLOAT, None))
        path = tmp_path / f"g{int(extra_reader)}.onnx"
        onnx.save(helper.make_model(helper.make_graph(nodes, "g", [cache, new, index], outputs),
                                    opset_imports=[helper.make_opsetid("", 24)]), str(path))
        return path

    assert in_place_problems({"decoder_in_place": graph(False)}) == []
    problems = in_place_problems({"decoder_in_place": graph(True)})
    assert len(problems) == 1 and "'past_key_values.0.key' must be read only by the TensorScatter" in problems[0]
    assert "Relu (peek)" in problems[0]


def test_gpt_inplace_is_for_causal_language_models(tiny_model: torch.nn.Module, tmp_path: Path) -> None:
    """--family gpt-inplace: an hf:DIR encoder is refused naming its family; a model without forward_in_place is
    refused naming the protocol."""
    folder = _tiny("bert", tmp_path / "bert")
    with pytest.raises(InputError, match="holds a model of family 'hf-encoder', not 'gpt-inplace'"):
        resolve(f"hf:{folder}", family="gpt-inplace")
    with pytest.raises(ExportError, match="no attribute 'forward_in_place', which family 'gpt-inplace' needs"):
        deploykit.export(tiny_model, "gpt-inplace", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_fuse_refuses_a_model_with_nothing_to_fuse(tiny_model: torch.nn.Module, tmp_path: Path) -> None:
    """Before a bundle is written: a graph with no attention, RMS norm or rotary embedding would only run on fewer
    runtimes for no gain."""
    with pytest.raises(InputError, match="--fuse found no F.scaled_dot_product_attention call"):
        deploykit.export(tiny_model, "mlp", tmp_path / "mlp", fuse=True)
    assert not (tmp_path / "mlp").exists()
    with pytest.raises(InputError, match="fuse exports at opset 23"):
        deploykit.export(tiny_model, "mlp", tmp_path / "mlp", fuse=True, opset=17)


def test_hf_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no config.json there; give a folder written by save_pretrained"):
        resolve(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"no weights \(\*.safetensors or \*.bin\)"):
        resolve(f"hf:{tmp_path}")
    with pytest.raises(InputError, match=r"as family \('gpt', 'gpt-inplace', 'hf-seq2seq', 'hf-encoder', 'cnn'\), not 'mlp'"):
        resolve(f"hf:{tmp_path}", "mlp")


def test_cli_exports_a_folder_as_it_is(bpe: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = _save("gpt2", tmp_path / "gpt2", bpe)
    run = subprocess.run([sys.executable, "-m", "deploykit", "export", f"hf:{folder}", "--out", tmp_path / "b"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "exported hf:" in run.stdout and "as 'gpt'" in run.stdout, run.stderr
    assert "Loading weights" not in run.stderr + run.stdout  # transformers' progress bars stay quiet
    bundle = deploykit.load_bundle(tmp_path / "b")
    assert bundle.tokenizer is not None and bundle.source["kind"] == "hf" and bundle.loop.eos == 0
    sample = subprocess.run([sys.executable, "-m", "deploykit", "sample", tmp_path / "b", "--prompt", "Now", "--mode",
                             "greedy", "--max-new-tokens", "8"], capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0 and sample.stdout.startswith("Now"), sample.stderr


def _tiny(kind: str, folder: Path) -> Path:
    torch.manual_seed(0)
    if kind == "bart":
        transformers.BartForConditionalGeneration(transformers.BartConfig(
            vocab_size=300, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)).save_pretrained(folder)
    elif kind == "t5":
        transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=300, d_model=32, d_ff=32, num_layers=1, num_heads=2, d_kv=16,
            decoder_start_token_id=0)).save_pretrained(folder)
    elif kind == "wav2vec2":  # audio: refused by the Auto class mapping
        transformers.Wav2Vec2ForSequenceClassification(transformers.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, conv_dim=(8, 8),
            conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2)).save_pretrained(folder)
    elif kind == "clip":  # a bare *Model that is not a text encoder
        transformers.CLIPModel(transformers.CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                         "vocab_size": 100},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
            projection_dim=16)).save_pretrained(folder)
    elif kind == "bert":
        transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    else:
        transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8,
            patch_size=4)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["bart", "t5", "bert", "vit", "wav2vec2", "clip"])
def test_an_encoder_decoder_or_encoder_folder_never_becomes_a_gpt_bundle(kind: str, tmp_path: Path) -> None:
    """BART used to load as BartForCausalLM (its encoder dropped, its decoder embeddings re-initialized at random) and
    export as a 'gpt' bundle that verified green: each folder takes the route of its architecture (encoder-decoders
    hf-seq2seq, tests/test_hf_seq2seq.py; a BERT masked LM hf-encoder and a ViT classifier cnn,
    tests/test_hf_encoders.py), and models no route takes (audio, CLIP) are refused naming the model type."""
    folder = _tiny(kind, tmp_path / kind)
    if kind in ("bart", "t5", "bert", "vit"):
        family = {"bart": "hf-seq2seq", "t5": "hf-seq2seq", "bert": "hf-encoder", "vit": "cnn"}[kind]
        assert resolve(f"hf:{folder}").family == family
        return
    with pytest.raises(InputError, match=f"model type '{kind}'.*not supported yet"):
        resolve(f"hf:{folder}")


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_weights_that_do_not_fit_the_model_are_refused(change: str, tmp_path: Path, bpe: Path) -> None:
    """A weight file with a tensor the model lacks, or without one it needs: transformers would drop or randomly
    initialize it (a bundle of another model); refused, naming the tensor."""
    from safetensors.torch import load_file, save_file

    folder = _save("gpt2", tmp_path / "model", bpe)
    weights = load_file(folder / "model.safetensors")
    if change == "extra":
        weights["extra.weight"] = torch.zeros(3)
    else:
        del weights["transformer.h.0.mlp.c_fc.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    name = "unexpected 1: extra.weight" if change == "extra" else "missing 1: transformer.h.0.mlp.c_fc.weight"
    with pytest.raises(InputError, match=f"do not fit GPT2LMHeadModel \\({name}\\)"):
        resolve(f"hf:{folder}")


COMMON = {"vocab_size": 300, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2, "bos_token_id": 0,
          "eos_token_id": 0}
ARCHITECTURES = {  # decoders that failed before: sliding windows (past the window of 8), Falcon's cache heads, ALiBi
    "mistral-sliding": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(
        **COMMON, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64, sliding_window=8)),
    "gemma3-local": lambda: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **COMMON, intermediate_size=64, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        sliding_window=8, sliding_window_pattern=2)),
    "falcon-kv-heads": lambda: transformers.FalconForCausalLM(transformers.FalconConfig(
        **COMMON, new_decoder_architecture=True, num_kv_heads=2)),
    "bloom-alibi": lambda: transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=300, hidden_size=32, n_head=4, n_layer=2, bos_token_id=0, eos_token_id=0)),
}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k in ("gemma3-local", "falcon-kv-heads")
                                  else k for k in ARCHITECTURES])  # the other two run in make test-slow
def test_decoders_that_used_to_fail_match_transformers_past_the_window(kind: str, bpe: Path, tmp_path: Path) -> None:
    """Exported by the CLI as a user would (Bloom with --context, its positions having no learned limit), then token
    for token against transformers' greedy generate on a left-padded batch of two prompts, host loop and in-graph
    loop; 21 prompt + 24 new tokens run far past the sliding window of 8."""
    import subprocess
    import sys

    torch.manual_seed(0)
    model = ARCHITECTURES[kind]().eval()
    model.save_pretrained(tmp_path / "m")
    shutil.copyfile(bpe, tmp_path / "m" / "tokenizer.json")
    context = ["--context", "64"] if kind == "bloom-alibi" else []
    run = subprocess.run([sys.executable, "-m", "deploykit", "export", f"hf:{tmp_path / 'm'}", "--out",
                          str(tmp_path / "b"), *context], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    _past_the_window_like_generate(tmp_path / "b", model)
    if kind == "bloom-alibi":
        bare = tmp_path / "bare"
        model.save_pretrained(bare)
        with pytest.raises(InputError, match="no learned limit.*--context N"):
            resolve(f"hf:{bare}")
        assert deploykit.verify(tmp_path / "b", model=reference(f"hf:{tmp_path / 'm'}",
                                                                  deploykit.load_bundle(tmp_path / "b"))).passed


def _past_the_window_like_generate(bundle: Path, model: torch.nn.Module) -> None:
    """A left-padded batch of two prompts (one of 21 tokens), 24 greedy tokens, host and in-graph loop: token for
    token what transformers' generate gives each prompt alone."""
    prompts = ["Beautiful is better than ugly. Explicit", "Now"]
    with deploykit.load(bundle) as dep:
        ids = [dep.codec().encode(p) for p in prompts]
        assert len(ids[0]) > 16
        for host in (True, False):
            ours = dep.generate_ids(ids, mode_config("greedy", 24), host=host)
            for prompt, got in zip(ids, ours):
                with torch.no_grad():
                    full = model.generate(torch.from_numpy(prompt)[None], attention_mask=torch.ones(1, len(prompt)),
                                          max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
                want = full[0, len(prompt):].numpy()
                stop = np.flatnonzero(want == 0)
                np.testing.assert_array_equal(got, want[: stop[0]] if stop.size else want)


MORE_DECODERS = {  # --fuse across the decoder families users bring (grouped, multi-query, partial rotary, ...)
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **COMMON, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64)),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **COMMON, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)),
    "gemma-mqa": lambda: transformers.GemmaForCausalLM(transformers.GemmaConfig(
        **COMMON, intermediate_size=64, num_key_value_heads=1, head_dim=8, max_position_embeddings=64)),
    "gpt_neox": lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        **COMMON, intermediate_size=64, max_position_embeddings=64)),
    "opt": lambda: transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=300, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, bos_token_id=0, eos_token_id=0, pad_token_id=1)),
    "gptj": lambda: transformers.GPTJForCausalLM(transformers.GPTJConfig(
        vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, bos_token_id=0, eos_token_id=0)),
    "stablelm": lambda: transformers.StableLmForCausalLM(transformers.StableLmConfig(
        **COMMON, intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64)),
}
ROPE_RMS = {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4}  # 2 layers: 2 norms each and the final
FUSES = {  # what --fuse writes, per role
    "mistral-sliding": {"decoder_with_past": ROPE_RMS}, "qwen2": {"decoder_with_past": ROPE_RMS},
    "phi3": {"decoder_with_past": ROPE_RMS}, "gemma-mqa": {"decoder_with_past": ROPE_RMS},
    "gemma3-local": {"decoder_with_past": ROPE_RMS | {"RMSNormalization": 13}},  # q/k norms, sandwich norms
    "falcon-kv-heads": {"decoder_with_past": {"Attention": 2, "RotaryEmbedding": 4}},
    "gpt_neox": {"decoder_with_past": {"Attention": 2, "RotaryEmbedding": 4}},
    "stablelm": {"decoder_with_past": {"Attention": 2, "RotaryEmbedding": 4}},
    "opt": {"decoder_with_past": {"Attention": 2}}, "gptj": {"decoder_with_past": {"Attention": 2}},
    "t5": {"encoder": {"Attention": 1, "RMSNormalization": 3}, "decoder_with_past": {"Attention": 2, "RMSNormalization": 4}},
    "bart": {"encoder": {"Attention": 1}, "decoder_with_past": {"Attention": 2}},
    "bert": {"model": {"Attention": 1}},
    "bloom-alibi": None,  # eager ALiBi attention (baddbmm), LayerNorm: nothing to fuse
}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) for k in FUSES])  # the default suite has
# GPT-2 and Llama (the fused fixture) and the refusal of a model with nothing to fuse
def test_fuse_across_architectures(kind: str, bpe: Path, tmp_path: Path) -> None:
    """--fuse on decoders, encoder-decoders and encoders: each exports (its checks hold the fused graphs to the
    model's own torch forward) with the operators listed, decoders decode past Mistral's sliding window token for
    token like transformers, and Bloom, with nothing to fuse, is refused."""
    torch.manual_seed(0)
    if kind in ("t5", "bart", "bert"):
        folder, model = _tiny(kind, tmp_path / "m"), None
    else:
        model = (ARCHITECTURES | MORE_DECODERS)[kind]().eval()
        folder = tmp_path / "m"
        model.save_pretrained(folder)
        shutil.copyfile(bpe, folder / "tokenizer.json")
    resolved = resolve(f"hf:{folder}", context=64 if kind == "bloom-alibi" else None)
    if FUSES[kind] is None:
        with pytest.raises(InputError, match="nothing to fuse"):
            deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source, fuse=True)
        return
    bundle = deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source,
                              tokenizer=resolved.tokenizer, fuse=True)
    assert bundle.manifest["fused"] == FUSES[kind]
    if model is not None:
        _past_the_window_like_generate(bundle.path, model)


@pytest.mark.slow  # the default suite has GPT-2 and Llama (the in_place fixture)
@pytest.mark.parametrize("kind", [k for k in ARCHITECTURES | MORE_DECODERS if k != "bloom-alibi"])
def test_in_place_across_architectures(kind: str, bpe: Path, tmp_path: Path) -> None:
    """--family gpt-inplace --fuse on the decoders users bring: token for token like transformers past Mistral's
    and Gemma 3's sliding windows, with Falcon's, Gemma's and GPT-J's caches (Bloom's ALiBi has nothing to fuse)."""
    torch.manual_seed(0)
    model = (ARCHITECTURES | MORE_DECODERS)[kind]().eval()
    model.save_pretrained(tmp_path / "m")
    shutil.copyfile(bpe, tmp_path / "m" / "tokenizer.json")
    resolved = resolve(f"hf:{tmp_path / 'm'}", family="gpt-inplace")
    bundle = deploykit.export(resolved.model, resolved.family, tmp_path / "b", source=resolved.source,
                              tokenizer=resolved.tokenizer, fuse=True)
    assert bundle.loop.kind == "kv_in_place"
    _past_the_window_like_generate(bundle.path, model)


def test_text_path_adds_special_tokens_like_transformers_and_prints_as_is(bpe: Path, tmp_path: Path) -> None:
    """A tokenizer that adds BOS (Llama style), rope_scaling linear: `sample --prompt` prints what transformers'
    tokenizer -> generate -> decode gives, byte for byte, control characters included; a bundle without a tokenizer
    prints the ids of --prompt-ids and refuses --prompt."""
    import subprocess
    import sys

    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(bpe))
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<|endoftext|> $A",
                                                                  special_tokens=[("<|endoftext|>", 0)])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=299,
        rope_scaling={"rope_type": "linear", "factor": 2.0})).eval()
    model.save_pretrained(tmp_path / "m")
    tok.save(str(tmp_path / "m" / "tokenizer.json"))
    subprocess.run([sys.executable, "-m", "deploykit", "export", f"hf:{tmp_path / 'm'}", "--out", str(tmp_path / "b")],
                   check=True, capture_output=True, timeout=600)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "m" / "tokenizer.json"))
    for prompt in ["Beautiful is better", "Errors\rshould"]:
        encoded = fast(prompt, return_tensors="pt")
        assert encoded.input_ids[0, 0] == 0  # BOS, as transformers encodes a prompt
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=12, do_sample=False, pad_token_id=299)
        run = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(tmp_path / "b"), "--prompt", prompt,
                              "--mode", "greedy", "--max-new-tokens", "12"], capture_output=True, timeout=300)
        assert run.returncode == 0, run.stderr
        text = fast.decode(out[0], skip_special_tokens=True)
        assert run.stdout.decode() == text + "\n"
    model.save_pretrained(tmp_path / "bare")  # no tokenizer.json
    subprocess.run([sys.executable, "-m", "deploykit", "export", f"hf:{tmp_path / 'bare'}", "--out",
                    str(tmp_path / "nb")], check=True, capture_output=True, timeout=600)
    ids = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(tmp_path / "nb"), "--prompt-ids", "0,5,9",
                          "--mode", "greedy", "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert ids.returncode == 0 and "no tokenizer.json" in ids.stderr
    printed = [int(i) for i in ids.stdout.strip().split(",")]
    assert printed[:3] == [0, 5, 9] and 3 < len(printed) <= 7
    text = subprocess.run([sys.executable, "-m", "deploykit", "sample", str(tmp_path / "nb"), "--prompt", "Now"],
                          capture_output=True, text=True, timeout=300)
    assert text.returncode == 2 and "carries no tokenizer.json" in text.stderr and "--prompt-ids" in text.stderr
