"""Decode workers ship uint8 for timm's torchvision transforms too, and the features stay bit-identical.

The float32 tail (ToTensor + Normalize) used to run in every decode worker and cross
shared memory at 4x the bytes; now the workers run only the PIL steps and the main
process (or the GPU) maps whole batches through a table.  Same pixels into the model.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from alignbench.encode import _split_transform, default_workers, iter_image_batches
from alignbench.encoders import get_encoder
from alignbench.encoders.transforms import SplitTorchvision

N_IMAGES = 7


@pytest.fixture(scope="module")
def images(data_root):
    """A few real Flickr8k JPEGs plus 500x375 ones as the GPU benchmark makes (noise, q90)."""
    paths = sorted((data_root / "flickr8k" / "images").glob("*.jpg"))[:N_IMAGES]
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)) for _ in range(2)]
    gray = Image.open(paths[0]).convert("L").convert("RGB")
    return [Image.open(p).convert("RGB") for p in paths] + noise + [gray]


@pytest.mark.parametrize("model,kw", [("test_vit", {}), ("test_vit", {"resize": "squash"}),
                                      ("test_resnet", {}), ("vit_small_patch16_224", {})])
def test_timm_transform_ships_uint8_and_gives_the_same_floats(images, model, kw):
    tf = get_encoder(f"timm:{model}", pretrained=False, **kw).transform
    per_image, per_batch = _split_transform(tf)
    assert per_batch is not None  # the old code ran the whole float transform in the workers
    shipped = torch.stack([per_image(im) for im in images])
    assert shipped.dtype == torch.uint8
    want = torch.stack([tf(im) for im in images])
    assert torch.equal(per_batch(shipped), want)
    assert torch.equal(per_batch(shipped[0]), want[0])
    again = pickle.loads(pickle.dumps(SplitTorchvision.of(tf)))  # what a worker receives
    assert torch.equal(again.pixels(images[-1]), shipped[-1])


def test_only_pil_steps_then_to_tensor_and_normalize_are_cut():
    from torchvision import transforms as T

    norm = T.Normalize((0.5,) * 3, (0.5,) * 3)
    assert SplitTorchvision.of(T.Compose([T.Resize(8), T.ToTensor(), norm])) is not None
    for other in (T.Compose([T.Resize(8), T.ToTensor()]),  # no Normalize
                  T.Compose([T.Resize(8), T.ToTensor(), T.Lambda(lambda x: x * 2), norm]),
                  T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), norm]),  # not a fixed PIL step
                  T.Compose([T.Resize(8), T.PILToTensor(), norm])):  # no 0-1 scaling
        assert SplitTorchvision.of(other) is None
        assert _split_transform(other) == (other, None)


def test_features_through_decode_workers_are_bit_identical(images):
    """The encode loop with 2 decode workers gives exactly the features of the whole transform."""
    enc = get_encoder("timm:test_vit", pretrained=False)
    batches = list(iter_image_batches(enc, images, batch_size=4, num_workers=2, decode="processes",
                                      progress=False))
    for b in batches:
        x = torch.stack([enc.transform(im) for im in images[b.start : b.start + len(b.pooled)]])
        want = enc.encode(x, tokens=True)
        np.testing.assert_array_equal(b.pooled, want.pooled.float().numpy())
        np.testing.assert_array_equal(b.tokens, want.tokens.to(torch.float16).numpy())
    assert sum(len(b.pooled) for b in batches) == len(images)


def test_accelerators_get_a_decode_worker_per_core_but_one(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(10_000, 128, "cpu") == 4
    assert default_workers(10_000, 128, "cuda:0") == 15  # was 4: a ViT-L forward outruns 4 decoders
    assert default_workers(100, 64, "cuda") == 0
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert default_workers(10_000, 128, "cuda") == 16
