"""compress / decompress: bit-exact round trips under the zoo language models, rates at the model's cross-entropy,
refusals of what cannot be coded or decoded, nothing written on failure."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import deploykit
from deploykit.backends import RunnerOptions
from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.models.data import held_out_text
from deploykit.runtimes import compress

pytest.importorskip("constriction")


def _inputs(vocab: list[str], n: int) -> list[bytes]:
    """n inputs: held-out passages of 1-300 characters and random strings over the vocabulary."""
    rng = np.random.default_rng(0)
    text = held_out_text(vocab)
    out = []
    for i in range(n):
        length = int(rng.integers(1, 300))
        if i % 2:
            start = int(rng.integers(0, len(text) - length))
            out.append(text[start:start + length].encode())
        else:
            out.append("".join(rng.choice(vocab, size=length)).encode())
    return out


@pytest.mark.parametrize("name", ["char-lm", "gpt"])
def test_round_trips_are_bit_exact_and_rates_match_the_cross_entropy(name: str, zoo_bundle) -> None:
    bundle = zoo_bundle(name)
    with deploykit.load(bundle.path, options=RunnerOptions(threads=1)) as dep:
        vocab = dep.bundle.loop.vocab
        for data in _inputs(vocab, 200):
            packed = dep.compress(data)
            assert dep.decompress(packed.data) == data
        text = held_out_text(vocab)[:4000].encode()  # past the gpt's context: coded in windows
        packed = dep.compress(text)
        assert dep.decompress(packed.data) == text
    header_bits, code_bits = 8 * (packed.length - packed.code_bytes), 8 * packed.code_bytes
    # the range coder spends the cross-entropy of its quantized probabilities: within 1 % and its last word
    assert abs(code_bits - packed.cross_entropy_bits) <= 0.01 * packed.cross_entropy_bits + 32
    assert header_bits < 8 * 100  # the binary header: digests, backend, counts
    assert code_bits / len(text) < np.log2(len(vocab)) - 0.5  # the model beats a uniform code over its alphabet


def test_another_bundle_thread_count_or_a_corrupt_file_is_refused(zoo_bundle) -> None:
    data = held_out_text(zoo_bundle("char-lm").loop.vocab)[:200].encode()
    with deploykit.load(zoo_bundle("char-lm").path, options=RunnerOptions(threads=1)) as dep:
        blob = dep.compress(data).data
        with pytest.raises(InputError, match="truncated|corrupt|does not reproduce"):
            dep.decompress(blob[:-4])
        flipped = bytearray(blob)
        flipped[len(blob) - 8] ^= 0xFF  # a code word before the last (whose low bits may be padding)
        with pytest.raises(InputError, match="corrupt|does not reproduce"):
            dep.decompress(bytes(flipped))
        with pytest.raises(InputError, match="not a deploykit compressed file"):
            dep.decompress(b"hello world")
        with pytest.raises(InputError, match="empty"):
            dep.compress(b"")
        with pytest.raises(InputError, match="not UTF-8"):
            dep.compress(b"ok \xff")
        with pytest.raises(InputError, match="character|vocabulary"):
            dep.compress("a \u2603 snowman".encode())  # a character the char-LM never saw
    with deploykit.load(zoo_bundle("char-lm").path, options=RunnerOptions(threads=2)) as dep:
        with pytest.raises(InputError, match="threads 1"):
            dep.decompress(blob)
        for text in _inputs(dep.bundle.loop.vocab, 10):  # two threads both ways: round trips as well
            assert dep.decompress(dep.compress(text).data) == text
    with deploykit.load(zoo_bundle("gpt").path, options=RunnerOptions(threads=1)) as dep:
        with pytest.raises(InputError, match="another bundle"):
            dep.decompress(blob)
    with deploykit.load(zoo_bundle("mlp").path) as dep:
        with pytest.raises(InputError, match="can generate text"):
            dep.compress(data)


def test_cli_round_trip_and_nothing_written_on_failure(zoo_bundle, tmp_path: Path) -> None:
    bundle = zoo_bundle("char-lm").path
    source = tmp_path / "in.txt"
    source.write_bytes(held_out_text(zoo_bundle("char-lm").loop.vocab)[:500].encode())
    packed, back = tmp_path / "in.dkz", tmp_path / "back.txt"
    assert main(["compress", str(bundle), str(source), "--out", str(packed)]) == 0
    assert main(["decompress", str(packed), "--bundle", str(bundle), "--out", str(back)]) == 0
    assert back.read_bytes() == source.read_bytes()
    assert main(["compress", str(bundle), str(source), "--out", str(packed)]) == 2  # exists: no silent overwrite
    other = tmp_path / "other.txt"
    assert main(["decompress", str(packed), "--bundle", str(zoo_bundle("gpt").path), "--out", str(other)]) == 2
    assert main(["decompress", str(packed), "--bundle", str(bundle), "--out", str(other), "--threads", "2"]) == 2
    assert not other.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["back.txt", "in.dkz", "in.txt"]


def _examples(name: str, bundle, short: int | None = None) -> np.ndarray:  # noqa: ANN001
    """Held-out data of each masked model (the digits' test split, tone clips of another seed) plus random examples:
    200 in all, but for WaveNet's clips of 300 (`short`: 200 clips of that length)."""
    from deploykit.models.autoregressive import mu_law_encode
    from deploykit.models.data import binarized_digits, level_digits, load_digits, tone_clips

    rng = np.random.default_rng(1)
    loop = bundle.loop
    if name == "pixelcnn":
        real = level_digits(load_digits().x_test[:180], loop.levels)
        return np.concatenate([real, rng.integers(0, loop.levels, (20, *real.shape[1:]))])
    if name == "wavenet":
        audio, _ = tone_clips(3, 300, seed=7, sample_rate=loop.sample_rate)  # three clips, then 200 short ones
        codes = np.concatenate([mu_law_encode(audio, loop.levels), rng.integers(0, loop.levels, (1, 300))])
        return codes if short is None else np.concatenate([codes[:3].reshape(-1, short)[:180],
                                                           rng.integers(0, loop.levels, (20, short))])
    real = binarized_digits(load_digits())[1][:180].astype(np.int64)
    return np.concatenate([real, rng.integers(0, 2, (20, real.shape[1]))])


@pytest.mark.parametrize("name", ["pixelcnn", "fvsbn", "made", "nade", "wavenet"])
def test_masked_models_code_arrays_bit_exactly_at_their_cross_entropy(name: str, zoo_bundle) -> None:
    """Examples at the model's levels round-trip bit-exactly; the code spends the model's cross-entropy (within 1 %
    and a word); a class-conditional model codes the label it picked (PixelCNN, WaveNet) without being told it."""
    bundle = zoo_bundle(name)
    x = _examples(name, bundle)
    with deploykit.load(bundle.path, options=RunnerOptions(threads=1)) as dep:
        for many in (x,) if name != "wavenet" else (x, _examples(name, bundle, short=4)):
            packed = dep.compress(many)
            back = dep.decompress(packed.data)
            assert back.dtype == many.dtype and np.array_equal(back, many)
        real = dep.compress(x[:3] if name == "wavenet" else x[:20])
        # on data, the code spends the model's cross-entropy within 1 % and a word (on random values far below the
        # model's 2^-24 probability floor it spends less: constriction's leaky quantization caps a value at 24 bits)
        assert abs(8 * real.code_bytes - real.cross_entropy_bits) <= 0.01 * real.cross_entropy_bits + 32
        if name != "wavenet":  # the real examples cost less than the random ones (the model learned the data)
            assert real.cross_entropy_bits < 0.8 * dep.compress(x[-20:]).cross_entropy_bits
        with pytest.raises(InputError, match="is not a level"):
            dep.compress(np.where(np.arange(x.size).reshape(x.shape) == 5, dep.bundle.loop.levels
                                  if name in ("pixelcnn", "wavenet") else 2, x))
        if name != "wavenet":
            with pytest.raises(InputError, match="examples of shape"):
                dep.compress(x[..., :-1])


def test_cli_codes_a_npy_of_images(zoo_bundle, tmp_path: Path) -> None:
    bundle = zoo_bundle("pixelcnn")
    x = _examples("pixelcnn", bundle)[:4]
    np.save(tmp_path / "digits.npy", x)
    packed, back = tmp_path / "digits.dkz", tmp_path / "back.npy"
    assert main(["compress", str(bundle.path), str(tmp_path / "digits.npy"), "--out", str(packed)]) == 0
    assert main(["decompress", str(packed), "--bundle", str(bundle.path), "--out", str(back)]) == 0
    assert np.array_equal(np.load(back), x)
    assert main(["compress", str(zoo_bundle("char-lm").path), str(tmp_path / "digits.npy"), "--out",
                 str(tmp_path / "x.dkz")]) == 2  # arrays need a masked autoregressive bundle
    assert not (tmp_path / "x.dkz").exists()


def test_a_tampered_array_header_is_refused_before_any_allocation(zoo_bundle) -> None:
    import json
    import struct
    from dataclasses import asdict, replace

    from deploykit.runtimes.compress import MAGIC_JSON, MAGIC_ONE_CODE, pack_header

    bundle = zoo_bundle("fvsbn")
    x = _examples("fvsbn", bundle)[:2]
    with deploykit.load(bundle.path, options=RunnerOptions(threads=1)) as dep:
        packed = dep.compress(x)
        header, _ = compress.read_header(io.BytesIO(packed.data))
        body = packed.data[len(pack_header(header)):]
        for change in ({"shape": [10**12, 64]}, {"dtype": "not-a-dtype"}, {"shape": []}, {"symbols": 0},
                       {"size": 10**15}):
            with pytest.raises(InputError, match="truncated or corrupt"):
                dep.decompress(pack_header(replace(header, **change)) + body)
        with pytest.raises(InputError, match="header is corrupt"):
            dep.decompress(packed.data[:20])  # cut inside the header
        code = packed.data[-packed.code_bytes:]  # one segment: formats 1 and 2 held its code alone, and still decode
        assert np.array_equal(dep.decompress(MAGIC_ONE_CODE + pack_header(header)[4:] + code), x)
        meta = json.dumps(asdict(header)).encode()
        assert np.array_equal(dep.decompress(MAGIC_JSON + struct.pack("<I", len(meta)) + meta + code), x)
        with pytest.raises(InputError, match="truncated or corrupt"):
            meta = json.dumps(asdict(header) | {"sha256": ""}).encode()  # an empty digest would match any output
            dep.decompress(MAGIC_JSON + struct.pack("<I", len(meta)) + meta + code)


def test_text_is_cut_into_chunks_at_newlines_or_character_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compress, "CHUNK", 16)
    rng = np.random.default_rng(0)
    alphabet = ["a", " ", "\n", "\u00e9", "\u2603", "\U0001f600"]  # 1- to 4-byte characters
    for _ in range(50):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(1, 80))))
        chunks = list(compress._chunks(io.BytesIO(text.encode())))
        assert "".join(chunks) == text and all(0 < len(c.encode()) <= 16 for c in chunks)
    with pytest.raises(InputError, match="input byte 37 "):
        list(compress._chunks(io.BytesIO(b"x" * 37 + b"\xff")))  # named where it is, past the first chunk


@pytest.mark.parametrize("name", ["char-lm", "fvsbn"])
def test_long_inputs_stream_in_segments_and_every_cut_is_refused(name: str, zoo_bundle,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With a small CHUNK an input spans many segments (the model's state runs on across them): the round trip is
    bit-exact, through files, and a file cut anywhere or followed by extra bytes is refused."""
    monkeypatch.setattr(compress, "CHUNK", 200)
    bundle = zoo_bundle(name)
    data = held_out_text(bundle.loop.vocab)[:1500].encode() if name == "char-lm" else _examples(name, bundle)[:12]
    with deploykit.load(bundle.path, options=RunnerOptions(threads=1)) as dep:
        whole = dep.compress(data)
        monkeypatch.setattr(compress, "CHUNK", 1 << 16)
        single = dep.compress(data)  # one segment: the same code, but for the flushes and the segments' lengths
        assert whole.length - single.length < 8 * (whole.length - whole.code_bytes)
        monkeypatch.setattr(compress, "CHUNK", 200)
        out = io.BytesIO()
        assert dep.decompress(io.BytesIO(whole.data), out=out) is None
        back = out.getvalue() if name == "char-lm" else np.load(io.BytesIO(out.getvalue()))
        assert back == data if name == "char-lm" else np.array_equal(back, data)
        for cut in range(len(whole.data) - 40, len(whole.data), 7):
            with pytest.raises(InputError, match="truncated or corrupt|does not reproduce"):
                dep.decompress(whole.data[:cut])
        with pytest.raises(InputError, match="after the last segment"):
            dep.decompress(whole.data + b"\0")
