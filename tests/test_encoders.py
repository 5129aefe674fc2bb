"""Fast encoder tests: hub families on tiny random models (the same code path as
real hub weights), names, pairs, layer ranges, fingerprints, preprocessing."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from alignbench.encoders import encoder_modality, get_encoder, parse_pair
from alignbench.encoders.transforms import ImageTransform
from alignbench.errors import ConfigError, UnknownNameError


@pytest.fixture(autouse=True, scope="module")
def _weights_cache(tmp_path_factory):
    """Hash index and derived files of these tests go to a throw-away folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ALIGNBENCH_WEIGHTS", str(tmp_path_factory.mktemp("weights")))
    yield
    mp.undo()


def _images(transform, n=3):
    colours = [(200, 30, 30), (20, 180, 60), (40, 40, 220), (250, 250, 250)]
    return torch.stack([transform(Image.new("RGB", (80 + 10 * i, 64), colours[i % 4])) for i in range(n)])


CAPTIONS = ["a dog runs on the beach", "two people", "a red car parked next to a very tall tree"]


# -- names and pairs -------------------------------------------------------------------
def test_parse_pair_canonicalises_aliases():
    assert parse_pair("dinov2-s14+minilm-l6") == ("dinov2-s14", "minilm-l6")
    assert parse_pair(" dinov2 + all-mpnet-base-v2 ") == ("dinov2-s14", "mpnet-base")
    assert parse_pair("timm:vit_small_patch14_dinov2.lvd142m+st:any/model") == (
        "timm:vit_small_patch14_dinov2.lvd142m",
        "st:any/model",
    )


@pytest.mark.parametrize("bad", ["dinov2-s14", "+minilm-l6", "dinov2-s14+"])
def test_parse_pair_needs_two_sides(bad):
    with pytest.raises(ConfigError, match="VISION\\+TEXT"):
        parse_pair(bad)


def test_parse_pair_unknown_name_suggests():
    with pytest.raises(UnknownNameError, match="did you mean.*dinov2-s14"):
        parse_pair("dinov2-s41+minilm-l6")
    with pytest.raises(UnknownNameError, match="minilm-l6"):
        parse_pair("dinov2-s14+minilm-l7")


def test_parse_pair_rejects_wrong_sides():
    with pytest.raises(ConfigError, match="'minilm-l6' is a text encoder.*did you mean dinov2-s14\\+minilm-l6"):
        parse_pair("minilm-l6+dinov2-s14")
    with pytest.raises(ConfigError, match="'effnet-lite0' is an image encoder"):
        parse_pair("dinov2-s14+effnet-lite0")


def test_modality_without_building():
    assert encoder_modality("effnet-lite0") == "image"
    assert encoder_modality("dinov2") == "image"
    assert encoder_modality("mpnet-base") == "text"
    assert encoder_modality("timm:resnet50") == "image"
    assert encoder_modality("st:whatever") == "text"


def test_get_encoder_checks_modality():
    assert get_encoder("minilm-l6", modality="text").modality == "text"
    with pytest.raises(ConfigError, match="'minilm-l6' is a text encoder, not image"):
        get_encoder("minilm-l6", modality="image")
    with pytest.raises(ConfigError, match="modality must be"):
        get_encoder("minilm-l6", modality="audio")


def test_get_encoder_unknown_name_suggests():
    with pytest.raises(UnknownNameError, match="did you mean.*effnet-lite0"):
        get_encoder("effnet-lite9")


# -- options and layer ranges (built-ins, no model load) -----------------------------------
@pytest.mark.parametrize(
    "name, n",
    [("dinov2-s14", 12), ("minilm-l6", 6), ("effnet-lite0", 17)],
)
def test_layer_out_of_range_names_valid_range(name, n):
    assert get_encoder(name, layer=-1).layer == n - 1
    assert get_encoder(name, layer=0).layer == 0
    with pytest.raises(ConfigError, match=f"valid: 0..{n - 1}"):
        get_encoder(name, layer=n)
    with pytest.raises(ConfigError, match=f"valid: 0..{n - 1}"):
        get_encoder(name, layer=-n - 1)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="dtype"):
        get_encoder("minilm-l6", dtype="int8")
    with pytest.raises(ConfigError, match="unknown option"):
        get_encoder("dinov2-s14", patch=16)
    with pytest.raises(ConfigError, match="multiple of 14"):
        get_encoder("dinov2-s14", resolution=225)
    with pytest.raises(ConfigError, match="onnx backend runs fp32"):
        get_encoder("effnet-lite0", backend="onnx", dtype="bf16")


def test_builtin_fingerprints_change_with_what_changes_vectors():
    a = get_encoder("effnet-lite0").fingerprint()
    assert a == get_encoder("effnet-lite0").fingerprint()
    assert len(a["weights_sha256"]) == 64 and a["backend"] == "onnx"
    assert a != get_encoder("effnet-lite0", layer=3).fingerprint()
    assert get_encoder("effnet-lite0", dtype="bf16").fingerprint()["backend"] == "torch"
    d = get_encoder("dinov2-s14").fingerprint()
    assert d["resolution"] == 224 and d["layer"] == 11
    assert d != get_encoder("dinov2-s14", resize="squash").fingerprint()
    m = get_encoder("minilm-l6").fingerprint()
    assert m["layer"] == 5 and m != get_encoder("minilm-l6", dtype="bf16").fingerprint()


def test_effnet_layer_layout_without_weights():
    enc = get_encoder("effnet-lite0")
    assert (enc.dim, enc.token_dim, enc.grid, enc.n_prefix, enc.resolution) == (1280, 1280, (7, 7), 0, 224)
    first = get_encoder("effnet-lite0", layer=0)
    assert first.grid == (112, 112) and first.token_dim == 16


# -- preprocessing ---------------------------------------------------------------------
def test_image_transform_crop_squash_and_normalisation():
    img = Image.new("RGB", (300, 150), (127, 127, 127))
    tf = ImageTransform.tf_style(224)
    x = tf(img)
    assert x.shape == (3, 224, 224) and torch.allclose(x, torch.zeros_like(x))
    sq = ImageTransform.imagenet(56, resize="squash")(Image.new("L", (30, 90), 255))
    assert sq.shape == (3, 56, 56)
    expected = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(sq[:, 0, 0].numpy(), expected, atol=1e-5)
    assert pickle.loads(pickle.dumps(tf)) == tf
    with pytest.raises(ConfigError):
        ImageTransform.imagenet(224, resize="pad")


def test_image_transform_batch_normalisation_is_bit_identical_to_per_image_float32():
    """Workers ship uint8 pixels and the main process normalises batches: the numbers (and so the
    cache keys' meaning) must equal the per-image float32 formula (x − mean)/std exactly."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    for tf in (ImageTransform.tf_style(224), ImageTransform.imagenet(224)):
        mean, std = np.asarray(tf.mean, np.float32), np.asarray(tf.std, np.float32)
        expected = ((batch.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        pixels = torch.stack([tf.pixels(Image.fromarray(b)) for b in batch])
        assert pixels.dtype == torch.uint8 and pixels.shape == (2, 3, 224, 224)
        np.testing.assert_array_equal(tf.normalise(pixels).numpy(), expected)
        np.testing.assert_array_equal(tf(Image.fromarray(batch[1])).numpy(), expected[1])
        slot = np.full(tf.shape, np.nan, np.float32)  # decode threads write into a reused buffer
        tf.into(Image.fromarray(batch[0]), slot)
        np.testing.assert_array_equal(slot, expected[0])


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_image_transform_into_equals_the_tensor_path_on_odd_sizes(resize):
    """``into`` (decode threads) and ``pixels``+``normalise`` (worker processes) crop the same pixels."""
    rng = np.random.default_rng(1)
    tf = ImageTransform.imagenet(32, resize)
    mean, std = np.asarray(tf.mean, np.float32), np.asarray(tf.std, np.float32)
    for h, w in ((40, 57), (57, 40), (32, 32), (20, 90)):
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        if resize == "squash":
            ref = img.resize((32, 32), Image.BICUBIC)
        else:  # PIL's own resize + crop, written out
            s = 32 / min(w, h)
            ref = img.resize((max(32, round(w * s)), max(32, round(h * s))), Image.BICUBIC) if min(w, h) != 32 else img
            left, top = (ref.width - 32) // 2, (ref.height - 32) // 2
            ref = ref.crop((left, top, left + 32, top + 32))
        expected = ((np.asarray(ref).astype(np.float32) - mean) / std).transpose(2, 0, 1)
        slot = np.empty(tf.shape, np.float32)
        tf.into(img, slot)
        np.testing.assert_array_equal(slot, expected)
        np.testing.assert_array_equal(tf.normalise(tf.pixels(img)[None])[0].numpy(), expected)
        gray = img.convert("L")  # other modes are converted to RGB first
        tf.into(gray, slot)
        np.testing.assert_array_equal(slot, tf(gray.convert("RGB")).numpy())


# -- timm family -------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["test_vit", "test_resnet", "test_convnext"])
def test_timm_family_layout(model):
    enc = get_encoder(f"timm:{model}", pretrained=False)
    x = _images(enc.transform)
    out = enc.encode(x)
    gh, gw = enc.grid
    assert out.pooled.shape == (3, enc.dim)
    assert out.tokens.shape == (3, enc.n_prefix + gh * gw, enc.token_dim)
    assert torch.isfinite(out.tokens).all()
    assert pickle.loads(pickle.dumps(enc.transform)) is not None
    # random weights are seeded: same fingerprint, same vectors
    again = get_encoder(f"timm:{model}", pretrained=False)
    assert again.fingerprint() == enc.fingerprint()
    assert torch.allclose(again.encode(x).pooled, out.pooled)


def test_timm_squash_keeps_the_whole_image_for_dense_tasks():
    """resize=squash (what segmentation asks for) maps a wide image to the input without cropping."""
    from PIL import Image

    crop = get_encoder("timm:test_vit", pretrained=False)
    squash = get_encoder("timm:test_vit", pretrained=False, resize="squash")
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :10] = 255  # a white band at the left edge: a centre crop cuts it away
    a, b = crop.transform(Image.fromarray(wide)), squash.transform(Image.fromarray(wide))
    assert a.shape == b.shape
    assert float(b[:, :, 0].mean()) > float(a[:, :, 0].mean()) + 1.0
    assert squash.fingerprint() != crop.fingerprint()
    with pytest.raises(ConfigError, match="resize"):
        get_encoder("timm:test_vit", pretrained=False, resize="stretch")


def test_timm_vit_tokens_are_before_the_final_norm():
    enc = get_encoder("timm:test_vit", pretrained=False)
    out = enc.encode(_images(enc.transform))
    w, b, eps = enc.final_norm()
    normed = torch.nn.functional.layer_norm(out.tokens, (enc.token_dim,), torch.from_numpy(w), torch.from_numpy(b), eps)
    assert enc.n_prefix == 1
    assert torch.allclose(normed[:, 0], out.pooled, atol=1e-5)
    assert not torch.allclose(out.tokens[:, 0], out.pooled, atol=1e-3)


def test_timm_layer_selection_and_range():
    enc = get_encoder("timm:test_vit", pretrained=False)
    early = get_encoder("timm:test_vit", pretrained=False, layer=0)
    x = _images(enc.transform)
    a, b = enc.encode(x), early.encode(x)
    assert torch.allclose(a.pooled, b.pooled)  # global feature does not depend on layer
    assert not torch.allclose(a.tokens, b.tokens)
    assert early.fingerprint() != enc.fingerprint()
    with pytest.raises(ConfigError, match=f"valid: 0..{enc.num_layers - 1}"):
        get_encoder("timm:test_vit", pretrained=False, layer=enc.num_layers)
    cnn = get_encoder("timm:test_resnet", pretrained=False, layer=1)
    assert cnn.encode(x).tokens.shape[1:] == (cnn.grid[0] * cnn.grid[1], cnn.token_dim)


def test_timm_unknown_model():
    with pytest.raises(ConfigError, match="timm has no model"):
        get_encoder("timm:no_such_model_xyz", pretrained=False)


def test_timm_bf16_close_to_fp32():
    enc = get_encoder("timm:test_vit", pretrained=False)
    x = _images(enc.transform)
    ref = enc.encode(x).pooled
    low = get_encoder("timm:test_vit", pretrained=False, dtype="bf16")
    assert low.fingerprint()["dtype"] == "bf16"
    cos = torch.nn.functional.cosine_similarity(low.encode(x).pooled, ref)
    assert cos.min() > 0.99


# -- transformers / sentence-transformers families --------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT with MiniLM's tokenizer files, saved like a hub snapshot."""
    from transformers import BertConfig, BertModel

    from alignbench.encoders.hf_text import minilm_dir

    folder = tmp_path_factory.mktemp("tiny-bert")
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / f, folder / f)
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny-vit-hf")
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    ViTModel(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random dual encoder (CLIP) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=32, eos_token_id=2)
    vision = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    words = ["[PAD]", "[UNK]", "[EOS]", "a", "dog", "runs", "two", "people"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    return folder


def test_hf_text_tokens_mask_and_mean_pooling(tiny_bert):
    name = f"hf:{tiny_bert}"
    assert encoder_modality(name) == "text"
    enc = get_encoder(name)
    out = enc.encode(CAPTIONS)
    assert (enc.num_layers, enc.dim, enc.layer) == (2, 32, 1)
    lengths = out.mask.sum(1)
    assert out.tokens.shape == (3, int(lengths.max()), 32)
    assert lengths[1] < lengths[2]  # padding masked
    assert torch.all(out.tokens[1, lengths[1]:] == 0)
    mean = out.tokens.sum(1) / lengths[:, None]  # last layer = pooled layer
    assert torch.allclose(mean, out.pooled, atol=1e-5)
    first = get_encoder(name, layer=0).encode(CAPTIONS)
    assert torch.allclose(first.pooled, out.pooled) and not torch.allclose(first.tokens, out.tokens)
    fp = enc.fingerprint()
    assert len(fp["weights_sha256"]) == 64 and fp == get_encoder(name).fingerprint()
    with pytest.raises(ConfigError, match="valid: 0..1"):
        get_encoder(name, layer=2)


def test_st_family_matches_sentence_transformers(tiny_bert):
    from sentence_transformers import SentenceTransformer

    enc = get_encoder(f"st:{tiny_bert}")
    out = enc.encode(CAPTIONS)
    ref = SentenceTransformer(str(tiny_bert), device="cpu").encode(CAPTIONS, convert_to_tensor=True)
    assert torch.allclose(out.pooled, ref, atol=1e-5)
    assert out.tokens.shape[-1] == enc.token_dim == 32 and enc.num_layers == 2
    hf = get_encoder(f"hf:{tiny_bert}").encode(CAPTIONS)
    assert torch.allclose(out.tokens, hf.tokens, atol=1e-5) and torch.equal(out.mask, hf.mask)


def test_hf_vision_layout_and_final_norm(tiny_vit):
    name = f"hf:{tiny_vit}"
    assert encoder_modality(name) == "image"
    enc = get_encoder(name)
    out = enc.encode(_images(enc.transform))
    assert (enc.resolution, enc.grid, enc.n_prefix, enc.num_layers) == (32, (4, 4), 1, 3)
    assert out.tokens.shape == (3, 17, 32) and out.pooled.shape == (3, 32)
    w, b, eps = enc.final_norm()
    normed = torch.nn.functional.layer_norm(out.tokens, (32,), torch.from_numpy(w), torch.from_numpy(b), eps)
    assert torch.allclose(normed[:, 0], out.pooled, atol=1e-5)
    assert parse_pair(f"{name}+minilm-l6") == (name, "minilm-l6")
    with pytest.raises(ConfigError, match="is an image encoder, not text"):
        get_encoder(name, modality="text")


def test_hf_dual_encoder_needs_a_side(tiny_clip):
    name = f"hf:{tiny_clip}"
    assert encoder_modality(name) == "both"
    assert parse_pair(f"{name}+{name}") == (name, name)
    with pytest.raises(ConfigError, match="dual"):
        get_encoder(name)
    img = get_encoder(name, modality="image")
    assert img.modality == "image"
    out = img.encode(_images(img.transform, 2))
    assert out.pooled.shape == (2, 16) and img.dim == 16  # projected joint space
    assert out.tokens.shape == (2, 1 + 16, 32) and img.final_norm() is None
    txt = get_encoder(name, modality="text")
    t = txt.encode(["a dog runs", "two people"])
    assert t.pooled.shape == (2, 16) and txt.dim == 16 and txt.token_dim == 32
    assert t.tokens.shape[:2] == t.mask.shape


# -- weights helpers ---------------------------------------------------------------------
def test_file_hash_is_remembered(tmp_path, monkeypatch):
    from alignbench.encoders import weights

    monkeypatch.setenv("ALIGNBENCH_WEIGHTS", str(tmp_path / "w"))
    f = tmp_path / "blob.bin"
    f.write_bytes(b"abc" * 1000)
    h = weights.file_sha256(f)
    import hashlib

    assert h == hashlib.sha256(b"abc" * 1000).hexdigest()
    weights._HASHES.clear()
    assert weights.file_sha256(f) == h  # read back from the on-disk index
    assert str(f.resolve()) in (tmp_path / "w" / "sha256-index.json").read_text()
    f.write_bytes(b"changed")
    assert weights.file_sha256(f) != h


def test_timm_resolution_overrides_the_pretrained_config_size():
    """DINOv2's pretrained config says 518 px; ``resolution=224`` must feed 224 px through the transform too."""
    from PIL import Image

    enc = get_encoder("timm:vit_small_patch14_dinov2.lvd142m", pretrained=False, resolution=224)
    pixels = enc.transform(Image.new("RGB", (500, 375)))
    assert tuple(pixels.shape) == (3, 224, 224) and (enc.resolution, enc.grid) == (224, (16, 16))
    out = enc.encode(pixels[None])
    assert out.pooled.shape == (1, 384)
