"""hf:DIR encoders: text encoders (BERT, RoBERTa, DistilBERT: fill-mask, classification, features) exported as
`hf-encoder`, with fresh-input parity on right-padded batches and text through the bundle's tokenizer.json equal to
transformers' own pipelines; image classifiers (ViT, ConvNeXt, ResNet) exported as `cnn`. Small random-init models
saved with save_pretrained (beside a tokenizer trained here)."""

from __future__ import annotations

import codecs
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.sources import resolve

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = ["Beautiful is [MASK] than ugly.", "Simple is better than [MASK], and flat is [MASK] than nested."]


def _zen() -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13").splitlines()


def save_encoder(folder: Path, arch: str, head: str) -> Path:
    """A tiny `arch` (bert | roberta | distilbert) with `head` (ForMaskedLM, ForSequenceClassification, Model) and the
    tokenizer save_pretrained writes for it (WordPiece with [CLS]/[SEP]/[MASK], or byte-level BPE with <s>/<mask>)."""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    torch.manual_seed(0)
    labels = {"id2label": {0: "neg", 1: "pos", 2: "neutral"}, "label2id": {"neg": 0, "pos": 1, "neutral": 2}}
    if arch == "roberta":
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(_zen(), trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                 "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}
        config = transformers.RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=40, pad_token_id=1, **labels)
    else:
        tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
        tok.train_from_iterator(_zen(), trainers.WordPieceTrainer(
            vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        names = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                 "mask_token": "[MASK]"}
        if arch == "distilbert":
            config = transformers.DistilBertConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                   max_position_embeddings=40, **labels)
        else:
            config = transformers.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=40, **labels)
    prefix = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert"}[arch]
    getattr(transformers, prefix + head)(config).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(folder)
    return folder


def _texts(arch: str) -> list[str]:
    return [t.replace("[MASK]", "<mask>") for t in TEXTS] if arch == "roberta" else TEXTS


def _check(folder: Path, arch: str, head: str, out: Path) -> None:
    """Export, fresh-input verify against the folder, and the text path against transformers."""
    resolved = resolve(f"hf:{folder}")
    assert resolved.family == "hf-encoder"
    bundle = deploykit.export(resolved.model, resolved.family, out, source=resolved.source, tokenizer=resolved.tokenizer)
    masks = [g.load()[0]["attention_mask"] for g in bundle.golden]
    assert all((m.sum(1) >= 1).all() and (np.diff(m, axis=1) <= 0).all() for m in masks)  # right-padded, none empty
    assert any((m == 0).any() for m in masks)  # padding is exercised
    result = deploykit.verify(bundle, model=resolve(f"hf:{folder}").model, fresh=True, seed=3)
    assert result.passed, result.report.table()
    texts = _texts(arch)
    with deploykit.load(bundle.path) as dep:
        ours = dep.read_texts(texts)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModel.from_pretrained(folder) if head == "Model" else getattr(
        transformers, "AutoModelFor" + head.removeprefix("For")).from_pretrained(folder)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        got = hf.eval()(**batch)
    reference = got.last_hidden_state if head == "Model" else got.logits
    for i, r in enumerate(ours):
        (name, value), = r.outputs.items()
        want = reference[i, :value.shape[0]] if reference.ndim == 3 else reference[i]
        np.testing.assert_allclose(value, want.numpy(), atol=1e-4, rtol=1e-4)
    if head == "ForMaskedLM":  # the candidates transformers' fill-mask pipeline gives, in its order
        pipe = transformers.pipeline("fill-mask", model=hf, tokenizer=tokenizer, top_k=5)
        first = pipe(texts[0])
        where = tokenizer(texts[0])["input_ids"].index(tokenizer.mask_token_id)
        assert np.argsort(-ours[0].outputs["logits"][where])[:5].tolist() == [c["token"] for c in first]
        shown = [float(s.rsplit(" ", 1)[1]) for s in ours[0].summary.split(": ", 1)[1].split(" | ")]
        assert shown == pytest.approx([c["score"] for c in first], abs=1e-3)
    if head == "ForSequenceClassification":
        best = ours[0].summary.split(",")[0].split()[0]
        assert best == hf.config.id2label[int(reference[0].argmax())]


def test_bert_fill_mask_exports_verifies_and_reads_text(tmp_path: Path) -> None:
    folder = save_encoder(tmp_path / "bert", "bert", "ForMaskedLM")
    _check(folder, "bert", "ForMaskedLM", tmp_path / "bundle")
    assert main(["run", str(tmp_path / "bundle"), "--text", TEXTS[0], "--out", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as saved:
        assert saved["logits.0"].shape[1] == 300
    with deploykit.load(tmp_path / "bundle") as dep:
        with pytest.raises(InputError, match=r"has no \[MASK\]"):
            dep.read_texts(["no mask here"])
        with pytest.raises(InputError, match="encodes to .* tokens; this encoder takes 1 to 40"):
            dep.read_texts(["word " * 60 + "[MASK]"])
    assert main(["run", str(tmp_path / "bundle")]) == 2  # neither --inputs nor --text
    with pytest.raises(InputError, match="holds a model of family 'hf-encoder', not 'gpt'"):
        resolve(f"hf:{folder}", "gpt")
    from deploykit.precision import quantize

    rows = quantize(tmp_path / "bundle", "int8-dynamic", tmp_path / "int8").manifest["precision"]["accuracy"]
    assert rows[0]["metric"] == "top-1 agreement with fp32 (positions of 256 random inputs)"  # over the vocabulary
    assert 0.5 <= rows[0]["quantized"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "head"), [("roberta", "ForMaskedLM"), ("bert", "ForSequenceClassification"),
                                            ("distilbert", "ForSequenceClassification"), ("distilbert", "Model"),
                                            ("bert", "Model")])
def test_every_encoder_head(tmp_path: Path, arch: str, head: str) -> None:
    _check(save_encoder(tmp_path / arch, arch, head), arch, head, tmp_path / "bundle")


def save_image_classifier(folder: Path, arch: str) -> Path:
    """A tiny `arch` (vit | convnext | resnet) *ForImageClassification; ResNet's config has no image size, so its
    image processor's preprocessor_config.json (as save_pretrained writes it) gives the size."""
    torch.manual_seed(0)
    labels = {"id2label": {0: "cat", 1: "dog", 2: "bird"}, "label2id": {"cat": 0, "dog": 1, "bird": 2}}
    if arch == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=8, **labels))
    elif arch == "convnext":
        model = transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
            hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32, layer_scale_init_value=0.5, **labels))
    else:
        model = transformers.ResNetForImageClassification(transformers.ResNetConfig(
            hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8, **labels))
        transformers.ConvNextImageProcessor(size={"shortest_edge": 40}).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("arch", ["vit", "convnext", "resnet"])
def test_image_classifiers_export_as_cnn(tmp_path: Path, arch: str) -> None:
    """ViT, ConvNeXt and ResNet classifiers take the cnn family at their configured size; logits equal
    transformers' on the same pixels, and fresh-input verify against the folder passes."""
    folder = save_image_classifier(tmp_path / arch, arch)
    resolved = resolve(f"hf:{folder}")
    assert resolved.family == "cnn" and resolved.model.input_shape == ((3, 40, 40) if arch == "resnet" else (3, 32, 32))
    bundle = deploykit.export(resolved.model, resolved.family, tmp_path / "bundle", source=resolved.source)
    assert deploykit.verify(bundle, model=resolve(f"hf:{folder}").model, fresh=True, seed=1).passed
    pixels = np.random.default_rng(0).standard_normal((4, *resolved.model.input_shape)).astype(np.float32)
    hf = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        want = hf(pixel_values=torch.from_numpy(pixels)).logits.numpy()
    with deploykit.load(bundle.path) as dep:
        np.testing.assert_allclose(dep.infer({"image": pixels})["logits"], want, atol=1e-4, rtol=1e-4)
