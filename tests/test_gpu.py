"""GPU checks (marker ``gpu``; skipped without CUDA, never required by CI): benchmarks/gpu_check.sh runs them.

Encode on CUDA equals the CPU within 1e-3 in fp32; bf16 autocast stays close and is its own cache entry;
a PAL fit on CUDA (training tokens resident on the GPU) gives the CPU's retrieval within seed noise.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignbench.store import FeatureStore
from sweep_world import write_tiny_data

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("gpu-data"))


@pytest.mark.parametrize("encoder,kind", [("tiny-vit", "image"), ("tiny-text", "text"),
                                          ("timm:test_vit", "image")])
def test_encode_on_cuda_equals_cpu_in_fp32(data, tmp_path, encoder, kind):
    opts = {"encoder_options": {"pretrained": False}} if encoder.startswith("timm:") else {}
    feats = {}
    for dev in ("cpu", "cuda:0"):
        store = FeatureStore(tmp_path / dev, device=dev)
        get = store.image_features if kind == "image" else store.text_features
        feats[dev] = get(encoder, "flickr8k", "train", data_root=data, progress=False, **opts)
    np.testing.assert_allclose(feats["cuda:0"].global_array(), feats["cpu"].global_array(), atol=1e-3)
    np.testing.assert_allclose(np.asarray(feats["cuda:0"].tokens, np.float32),
                               np.asarray(feats["cpu"].tokens, np.float32), atol=1e-3)


def test_bf16_autocast_on_cuda_is_close_and_keyed_apart(data, tmp_path):
    store = FeatureStore(tmp_path, device="cuda:0")
    opts = {"encoder_options": {"pretrained": False}, "data_root": data, "progress": False}
    fp32 = store.image_features("timm:test_vit", "flickr8k", "train", **opts)
    bf16 = store.image_features("timm:test_vit", "flickr8k", "train", dtype="bf16", **opts)
    assert fp32.meta["path"] != bf16.meta["path"]  # dtype is part of the feature key
    a, b = fp32.global_array(), bf16.global_array()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def _pairs(n: int, seed: int):
    """Image/caption tokens that share a latent per pair (so retrieval is learnable), fp16 like the cache."""
    from alignbench.features import ImageFeatures, Pairs, TextFeatures

    w = np.random.default_rng(1234)  # the same "encoders" for every split
    Wi, Wt = w.standard_normal((32, 48)), w.standard_normal((32, 40))
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 32)).astype(np.float32)
    img = (z @ Wi)[:, None, :] + 6.0 * rng.standard_normal((n, 9, 48))
    txt = np.repeat(z @ Wt, 6, axis=0) + 6.0 * rng.standard_normal((6 * n, 40))
    images = ImageFeatures(img.mean(1).astype(np.float32), tokens=img.astype(np.float16), grid=(2, 4), n_prefix=1)
    texts = TextFeatures((z @ Wt).astype(np.float32), tokens=txt.astype(np.float16),
                         offsets=np.arange(0, 6 * n + 1, 6))
    return Pairs(images, texts, np.arange(n), np.arange(n))


def _r1(method, pairs) -> float:
    a = method.embed_image(pairs.image()).float().cpu()
    b = method.embed_text(pairs.text()).float().cpu()
    return float(((a @ b.T).argmax(1) == torch.arange(len(a))).float().mean()) * 100


def test_pal_on_cuda_matches_the_cpu_within_seed_noise():
    from alignbench.registry import METHODS

    train, test = _pairs(600, 0), _pairs(200, 1)
    kw = dict(K=32, max_epochs=15, batch_size=128, lr=1e-2, lr_range_test=False, compile="off", dtype="fp32")
    cpu = []
    for seed in range(3):
        m = METHODS.get("pal")(**kw)
        m.fit(train, None, seed=seed)
        cpu.append(_r1(m, test))
    g = METHODS.get("pal")(**kw).to("cuda:0")
    g.fit(train, None, seed=0)
    assert g.fit_info["token_source"].startswith("resident on cuda")
    spread = max(cpu) - min(cpu)
    assert min(cpu) - max(2.0, spread) <= _r1(g, test) <= max(cpu) + max(2.0, spread), (cpu, _r1(g, test))
    b = METHODS.get("pal")(**{**kw, "dtype": "auto"}).to("cuda:0")
    b.fit(train, None, seed=0)
    assert b.fit_info["dtype"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert all(t.dtype == torch.float32 for t in b.anchors())  # fp32 anchors, bf16 CAP matmuls
    assert abs(_r1(b, test) - _r1(g, test)) <= max(3.0, 2 * spread)


def test_run_cli_fits_and_encodes_on_cuda_and_records_it(data, tmp_path):
    import json

    from alignbench.cli import main

    args = ["run", "--methods", "pal:K=16:max_epochs=3:lr=1e-2,linear:max_epochs=3:lr=1e-2", "--pair",
            "tiny-vit+tiny-text", "--budget", "20", "--val", "none", "--evals", "retrieval:flickr8k:test",
            "--data-root", str(data), "--cache", str(tmp_path / "c"), "--results", str(tmp_path / "runs"),
            "--device", "cuda", "--no-progress"]
    assert main(args) == 0
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert sorted(r["method"]["name"] for r in recs) == ["linear", "pal"]
    assert {r["provenance"]["device"] for r in recs} == {"cuda:0"}
    metas = [json.loads(p.read_text()) for p in (tmp_path / "c").glob("*/*/meta.json")]
    assert metas and {m["device"] for m in metas} == {"cuda:0"}  # the encoders ran on the GPU too


def test_a_gpu_this_node_lacks_is_one_clear_error():
    from alignbench import devices
    from alignbench.errors import ConfigError

    n = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=rf"only {n} CUDA device\(s\) visible"):
        devices.parse_device(f"cuda:{n + 6}")
    assert devices.parse_device("auto").resolved == "cuda:0"


def test_timm_pixels_normalised_on_the_gpu_are_the_cpu_bits():
    """Decode workers ship uint8 for timm transforms; the GPU's table lookup gives exactly the CPU's floats."""
    from PIL import Image

    from alignbench.encoders import get_encoder
    from alignbench.encoders.transforms import SplitTorchvision

    tf = get_encoder("timm:test_vit", pretrained=False).transform
    split = SplitTorchvision.of(tf)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (75, 100, 3), dtype=np.uint8)) for _ in range(3)]
    u8 = torch.stack([split.pixels(im) for im in images])
    on_gpu = split.normalise(u8.to("cuda:0"))
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), torch.stack([tf(im) for im in images]))


def test_pil_transform_pixels_normalised_on_the_gpu_are_the_cpu_bits():
    """ImageTransform (effnet, the offline default) normalises uint8 on the tensor's device: the CPU's exact floats."""
    from alignbench.encoders.transforms import ImageTransform

    for tf in (ImageTransform.tf_style(32), ImageTransform.imagenet(32)):
        u8 = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
        on_gpu = tf.normalise(u8.to("cuda:0"))
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
        assert torch.equal(on_gpu.cpu(), tf.normalise(u8))
