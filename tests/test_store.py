"""Feature store: round trip, cache keys, corruption, interruption, ragged texts, FeatureSource.

Runs on the tiny random encoders and small datasets written here, so it is fast.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from alignbench.datasets.base import (
    CaptionDataset,
    ClassificationDataset,
    FileImageLoader,
    ImageList,
    files_fingerprint,
)
from alignbench.errors import ConfigError, DataError
from alignbench.store import FeatureStore, forget_verified
from alignbench.store.checksums import check_entry

WORDS = "a dog runs on the grass while two children play with red ball near lake at sunset".split()


def write_images(folder: Path, n: int, seed: int = 0, size=(40, 30)) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


class SlowLoader(FileImageLoader):
    """A file loader that takes its time, so a test can interrupt an encode midway."""

    def __init__(self, paths, delay: float):
        super().__init__(paths)
        self.delay = delay

    def __call__(self, i):
        time.sleep(self.delay)
        return super().__call__(i)


class TinyCaptions(CaptionDataset):
    """Generated images with 1–3 captions each, of varied lengths."""

    registry_name = "tinycaps"
    splits = ("train", "test")

    def __init__(self, root, n: int = 12, delay: float = 0.0, **options):
        super().__init__(root, **options)
        self.n, self.delay = n, delay
        self.paths = {s: sorted((self.root / s).glob("*.png")) for s in self.splits}

    @classmethod
    def create(cls, root: Path, n: int = 12, **kw) -> "TinyCaptions":
        write_images(root / "train", n, seed=0)
        write_images(root / "test", max(2, n // 2), seed=1)
        return cls(root, n=n, **kw)

    def images(self, split):
        paths = self.paths[self.check_split(split)]
        loader = SlowLoader(paths, self.delay) if self.delay else FileImageLoader(paths)
        return ImageList([p.name for p in paths], loader, files_fingerprint(paths))

    def caption_image_index(self, split):
        n = len(self.paths[self.check_split(split)])
        return np.repeat(np.arange(n), [1 + i % 3 for i in range(n)])

    def captions(self, split):
        idx = self.caption_image_index(split)
        return [" ".join(WORDS[: 2 + (7 * k + 3 * i) % (len(WORDS) - 2)]) + f" {split}" for k, i in enumerate(idx)]


class TinyClasses(ClassificationDataset):
    registry_name = "tinyclasses"
    classnames = ["cat", "dog", "traffic light"]
    templates = ["a photo of a {}.", "a drawing of the {}."]

    def __init__(self, root, **options):
        super().__init__(root, **options)
        self.paths = sorted((self.root / "test").glob("*.png"))

    def images(self, split):
        self.check_split(split)
        return ImageList([p.name for p in self.paths], FileImageLoader(self.paths), files_fingerprint(self.paths))

    def labels(self, split):
        return np.arange(len(self.paths)) % 3


@pytest.fixture
def caps(tmp_path) -> TinyCaptions:
    return TinyCaptions.create(tmp_path / "data")


@pytest.fixture
def store(tmp_cache) -> FeatureStore:
    return FeatureStore(tmp_cache, checkpoint_seconds=0)


def _encode_direct(enc_name, images, layer=None):
    """Reference: the encoder applied to each image alone, without the store."""
    import torch

    from alignbench.registry import ENCODERS

    enc = ENCODERS.get(enc_name)(layer=layer)
    x = torch.stack([enc.transform(images[i]) for i in range(len(images))])
    with torch.inference_mode():
        out = enc.encode(x)
    return out.pooled.numpy(), out.tokens.numpy()


def test_image_round_trip_matches_direct_encoding(store, caps):
    f = store.image_features("tiny-vit", caps, "train", progress=False, batch_size=5)
    assert store.last_action == "encoded"
    pooled, tokens = _encode_direct("tiny-vit", caps.images("train"))
    assert f.pooled.dtype == np.float32 and f.pooled.shape == (12, 32)
    assert f.tokens.dtype == np.float16 and f.tokens.shape == (12, 17, 32)
    assert isinstance(f.tokens, np.memmap)
    np.testing.assert_allclose(f.pooled, pooled, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f.tokens, tokens, rtol=2e-3, atol=2e-3)
    assert f.grid == (4, 4) and f.n_prefix == 1
    # the stored final norm maps the (pre-norm) CLS token onto the pooled feature
    w, b, eps = f.final_norm
    assert not np.allclose(w, 1)  # a non-trivial norm, so this really checks something
    cls = f.token_array()[:, 0].astype(np.float32)
    normed = (cls - cls.mean(1, keepdims=True)) / np.sqrt(cls.var(1, keepdims=True) + eps) * w + b
    np.testing.assert_allclose(normed, f.pooled, atol=2e-2)
    assert f.patch_tensor(normed=True).shape == (12, 16, 32)

    again = store.image_features("tiny-vit", caps, "train", progress=False)
    assert store.last_action == "reused"
    np.testing.assert_array_equal(again.pooled, f.pooled)
    assert Path(again.meta["path"]) == Path(f.meta["path"])


def test_image_encode_with_workers_matches(store, caps):
    a = store.image_features("tiny-vit", caps, "train", progress=False, batch_size=4, num_workers=2)
    b = FeatureStore(store.root / "other").image_features("tiny-vit", caps, "train", progress=False,
                                                          batch_size=12, num_workers=0)
    np.testing.assert_allclose(a.pooled, b.pooled, rtol=1e-4, atol=1e-5)


def test_uint8_worker_pipeline_delivers_exactly_the_per_image_transform(caps):
    """Workers ship uint8 pixels through shared memory and the main process normalises whole
    batches: the model must receive exactly what the per-image float transform gives."""
    from types import SimpleNamespace

    import torch

    from alignbench.encode import iter_image_batches
    from alignbench.encoders.transforms import ImageTransform

    class EchoEncoder:  # returns its input, so the test sees what reached the model
        transform = ImageTransform.imagenet(20)
        device = "cpu"

        def encode(self, x, tokens=True):
            return SimpleNamespace(pooled=x.flatten(1), tokens=None)

    images = caps.images("train")
    want = torch.stack([EchoEncoder.transform(images[i]) for i in range(len(images))]).flatten(1).numpy()
    for decode in ("threads", "processes"):
        for workers in (0, 2):
            # several batches through one reused buffer: each batch must come out as it went in,
            # although this encoder's outputs are views of that buffer
            got = np.concatenate([b.pooled for b in iter_image_batches(
                EchoEncoder(), images, tokens=False, batch_size=3, num_workers=workers, decode=decode,
                progress=False)])
            np.testing.assert_array_equal(got, want)


def test_thread_decoding_of_a_plain_transform_and_a_resumed_start(caps):
    """Transforms without ``into`` (hub encoders' torchvision/processor pipelines) are stacked per batch."""
    from types import SimpleNamespace

    import torch

    from alignbench.encode import iter_image_batches
    from alignbench.encoders.transforms import ImageTransform

    tf = ImageTransform.imagenet(16)

    class PlainEncoder:
        transform = staticmethod(lambda img: tf(img) * 2)  # no ``into``/``shape``
        device = "cpu"

        def encode(self, x, tokens=True):
            return SimpleNamespace(pooled=x.flatten(1), tokens=x.flatten(2).transpose(1, 2))

    images = caps.images("train")
    want = torch.stack([tf(images[i]) * 2 for i in range(len(images))])
    batches = list(iter_image_batches(PlainEncoder(), images, start=5, batch_size=4, decode="threads",
                                      progress=False))
    assert [b.start for b in batches] == [5, 9]
    np.testing.assert_array_equal(np.concatenate([b.pooled for b in batches]), want[5:].flatten(1).numpy())
    assert batches[0].tokens.dtype == np.float16


def test_decode_mode_follows_the_model_device():
    from alignbench.encode import resolve_decode

    assert resolve_decode("auto", "cpu") == "threads"
    assert resolve_decode("auto", "cuda:0") == "processes"
    assert resolve_decode("processes", "cpu") == "processes"
    with pytest.raises(ConfigError, match="threads"):
        resolve_decode("fork", "cpu")


def test_checksums_hashed_while_writing_equal_the_files(store, caps, tmp_path):
    """The token file's xxh3 is computed as its rows stream in; it must be the file's own hash
    (a resumed encode re-reads its files instead: test_interrupted_encode_resumes verifies one)."""
    import xxhash

    f = store.image_features("tiny-vit", caps, "train", progress=False, batch_size=4)
    path = Path(f.meta["path"])
    meta = json.loads((path / "meta.json").read_text())
    for name in ("pooled.npy", "tokens.npy"):
        assert meta["files"][name]["xxh3_128"] == xxhash.xxh3_128_hexdigest((path / name).read_bytes())
    # the content digest results record: the same bits encoded again elsewhere give the same digest (meta.json's
    # own checksum also covers when and how fast it was written); the CPU that encoded is in the meta
    from alignbench.store.checksums import content_digest

    again = FeatureStore(tmp_path / "elsewhere", checkpoint_seconds=0).image_features(
        "tiny-vit", caps, "train", progress=False, batch_size=4)
    other = json.loads((Path(again.meta["path"]) / "meta.json").read_text())
    assert f.meta["digest"] == content_digest(meta) == content_digest(other) == again.meta["digest"]
    assert re.fullmatch(r"[0-9a-f]{32}", f.meta["digest"]) and meta["cpu"]["capability"]
    other["files"]["pooled.npy"]["xxh3_128"] = "0" * 32
    assert content_digest(other) != f.meta["digest"]


def test_entry_layout_and_meta(store, caps):
    f = store.image_features("tiny-vit", caps, "test", progress=False)
    path = Path(f.meta["path"])
    assert path.parent == store.root / "tiny-vit"
    assert path.name.startswith("tinycaps-test-L1-fp32-")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["count"] == 6 and meta["kind"] == "images"
    assert meta["key"]["encoder"]["layer"] == 1 and meta["key"]["dataset"] == "tinycaps"
    for name in ("pooled.npy", "tokens.npy", "final_norm.npz"):
        assert meta["files"][name]["size"] == (path / name).stat().st_size
        assert len(meta["files"][name]["xxh3_128"]) == 32
    assert not list(store.root.glob("*/.tmp-*"))
    rows = store.status()["entries"]
    assert [(r["kind"], r["dataset"], r["split"], r["count"]) for r in rows] == [("images", "tinycaps", "test", 6)]


def test_cache_key_changes_with_layer_dtype_dataset_and_content(store, caps, tmp_path):
    paths = set()
    for kw in ({}, {"layer": 0}, {"dtype": "bf16"}):
        paths.add(store.image_features("tiny-vit", caps, "train", progress=False, **kw).meta["path"])
        assert store.last_action == "encoded"
    paths.add(store.image_features("tiny-vit", caps, "test", progress=False).meta["path"])
    other = TinyCaptions.create(tmp_path / "other", n=12)
    other.registry_name = "othercaps"
    paths.add(store.image_features("tiny-vit", other, "train", progress=False).meta["path"])
    assert len(paths) == 5
    # layer -1 is the last layer: the same vectors, the same entry
    store.image_features("tiny-vit", caps, "train", progress=False, layer=-1)
    assert store.last_action == "reused"
    # rewriting an image changes the content fingerprint, hence the key
    write_images(tmp_path / "data" / "train", 1, seed=5, size=(50, 50))
    changed = TinyCaptions(tmp_path / "data")
    f = store.image_features("tiny-vit", changed, "train", progress=False)
    assert store.last_action == "encoded" and f.meta["path"] not in paths


def test_layers_differ(store, caps):
    a = store.image_features("tiny-vit", caps, "train", progress=False, layer=0)
    b = store.image_features("tiny-vit", caps, "train", progress=False, layer=1)
    assert not np.allclose(a.token_array(), b.token_array())


def test_bad_layer_and_wrong_modality(store, caps):
    with pytest.raises(ConfigError, match="out of range"):
        store.image_features("tiny-vit", caps, "train", progress=False, layer=5)
    with pytest.raises(ConfigError, match="text encoder"):
        store.image_features("tiny-text", caps, "train", progress=False)
    with pytest.raises(DataError, match="no split"):
        store.image_features("tiny-vit", caps, "val", progress=False)


@pytest.mark.parametrize("damage", ["truncate-tokens", "delete-meta", "flip-pooled", "garble-meta",
                                    "zero-tokens-block"])
def test_corrupted_entry_is_recomputed_with_warning(store, caps, caplog, damage):
    f = store.image_features("tiny-vit", caps, "train", progress=False)
    ref = np.array(f.pooled)
    path = Path(f.meta["path"])
    del f
    if damage == "truncate-tokens":
        with open(path / "tokens.npy", "r+b") as fh:
            fh.truncate((path / "tokens.npy").stat().st_size - 100)
    elif damage == "delete-meta":
        (path / "meta.json").unlink()
    elif damage == "flip-pooled":
        data = bytearray((path / "pooled.npy").read_bytes())
        data[200] ^= 0xFF
        (path / "pooled.npy").write_bytes(bytes(data))
    elif damage == "garble-meta":
        (path / "meta.json").write_text("{not json")
    else:  # same size, first block zeroed
        with open(path / "tokens.npy", "r+b") as fh:
            fh.seek(128)
            fh.write(b"\0" * 256)
    forget_verified()  # as a new process would
    assert not store.has_images("tiny-vit", caps, "train")
    with caplog.at_level(logging.WARNING, logger="alignbench.store"):
        g = store.image_features("tiny-vit", caps, "train", progress=False)
    assert store.last_action == "encoded"
    assert any("damaged" in r.message and str(path) in r.message for r in caplog.records)
    np.testing.assert_array_equal(g.pooled, ref)
    assert store.has_images("tiny-vit", caps, "train")


def test_each_file_is_verified_whole_once_per_process(store, caps, monkeypatch):
    """One flipped byte anywhere is caught on a process's first open; later opens do not re-read;
    ``verify=True`` re-reads everything."""
    import alignbench.store.checksums as ck

    f = store.image_features("tiny-vit", caps, "train", progress=False)
    path = Path(f.meta["path"])
    hashed: list[str] = []
    real = ck.hash_file
    monkeypatch.setattr(ck, "hash_file", lambda p, **kw: (hashed.append(Path(p).name), real(p, **kw))[1])
    store.image_features("tiny-vit", caps, "train", progress=False)
    assert store.last_action == "reused" and hashed == []  # written by this process: already verified
    forget_verified()
    store.image_features("tiny-vit", caps, "train", progress=False)
    assert sorted(hashed) == ["final_norm.npz", "pooled.npy", "tokens.npy"]  # a new process reads all once
    store.image_features("tiny-vit", caps, "train", progress=False)
    assert len(hashed) == 3  # ... and never again
    store.image_features("tiny-vit", caps, "train", progress=False, verify=True)
    assert len(hashed) == 6  # unless asked to
    size = (path / "tokens.npy").stat().st_size
    with open(path / "tokens.npy", "r+b") as fh:  # one byte in the middle of the token file
        fh.seek(size // 2)
        b = fh.read(1)
        fh.seek(size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    forget_verified()
    store.image_features("tiny-vit", caps, "train", progress=False)
    assert store.last_action == "encoded"


def test_unreadable_image_names_the_file(store, caps, tmp_path):
    bad = caps.paths["train"][3]
    bad.write_bytes(b"this is not a png")
    broken = TinyCaptions(tmp_path / "data")
    for decode in ("threads", "processes"):
        for workers in (0, 2):
            with pytest.raises(DataError, match=bad.name):
                store.image_features("tiny-vit", broken, "train", progress=False, batch_size=2,
                                     num_workers=workers, decode=decode)
    assert not store.entries()


def test_encoding_draws_a_bar_only_where_bars_show_and_logs_where_it_is_elsewhere(store, caps, capsys, caplog,
                                                                                   monkeypatch):
    """Into a log file (no TTY) encoding logs a line every HEARTBEAT_S instead of a thousand bar redraws."""
    from alignbench.progress import progress_scope

    monkeypatch.setattr("alignbench.progress.HEARTBEAT_S", 0.0)  # a line at every batch
    with progress_scope(False), caplog.at_level(logging.INFO, logger="alignbench"):
        store.image_features("tiny-vit", caps, "train", batch_size=5)
        store.text_features("tiny-text", caps, "train", batch_size=4)
    n_texts = len(caps.captions("train"))
    assert "encoding tiny-vit" in caplog.text and ": 12 of 12 img" in caplog.text
    assert f": {n_texts} of {n_texts} txt" in caplog.text
    err = capsys.readouterr().err
    assert "img/s" not in err and "s/img" not in err and "|" not in err, err
    caplog.clear()
    with progress_scope(True), caplog.at_level(logging.INFO, logger="alignbench"):  # a bar shows it: no lines
        store.image_features("tiny-vit", caps, "test", batch_size=5)
    assert "encoding tiny-vit" not in caplog.text
    err = capsys.readouterr().err
    assert "img/s" in err or "s/img" in err, err


def test_text_features_ragged_offsets(store, caps):
    f = store.text_features("tiny-text", caps, "train", progress=False, batch_size=4)
    texts = caps.captions("train")
    assert f.texts == texts
    assert f.pooled.shape == (len(texts), 32) and f.pooled.dtype == np.float32
    assert f.offsets.shape == (len(texts) + 1,) and f.offsets[0] == 0
    assert f.tokens.dtype == np.float16 and f.tokens.shape == (f.offsets[-1], 32)
    from alignbench.registry import ENCODERS

    enc = ENCODERS.get("tiny-text")()
    lens = [len(enc.tokenizer(t)["input_ids"]) for t in texts]
    np.testing.assert_array_equal(f.lengths(), lens)
    assert len(set(lens)) > 3  # lengths really vary, so the sort-and-restore is exercised
    import torch

    with torch.inference_mode():
        for i in (0, 5, len(texts) - 1):  # each text alone: no padding at all
            one = enc.encode([texts[i]])
            np.testing.assert_allclose(f.pooled[i], one.pooled[0].numpy(), rtol=1e-3, atol=1e-4)
            got = f.tokens[f.offsets[i] : f.offsets[i + 1]]
            np.testing.assert_allclose(got, one.tokens[0].numpy(), rtol=3e-3, atol=3e-3)
    tok, mask = f.token_batch([0, 1, 2])
    assert mask.sum(1).tolist() == lens[:3]


def test_text_chunks_restore_order(tmp_cache, caps):
    """Small chunks and batches: sorted within chunks, written in the original order."""
    a = FeatureStore(tmp_cache / "a", text_chunk=5).text_features("tiny-text", caps, "train", progress=False,
                                                                  batch_size=2)
    b = FeatureStore(tmp_cache / "b").text_features("tiny-text", caps, "train", progress=False, batch_size=64)
    np.testing.assert_allclose(a.pooled, b.pooled, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_allclose(a.tokens, b.tokens, rtol=3e-3, atol=3e-3)


def test_text_features_need_captions(store, tmp_path):
    write_images(tmp_path / "cls" / "test", 3)
    ds = TinyClasses(tmp_path / "cls")
    with pytest.raises(ConfigError, match="no captions"):
        store.text_features("tiny-text", ds, "test", progress=False)


def test_prompt_features_class_major(store, tmp_path):
    write_images(tmp_path / "cls" / "test", 3)
    ds = TinyClasses(tmp_path / "cls")
    f, n_classes, n_templates = store.prompt_features("tiny-text", ds, progress=False)
    assert (n_classes, n_templates) == (3, 2)
    assert f.texts == ["a photo of a cat.", "a drawing of the cat.", "a photo of a dog.", "a drawing of the dog.",
                       "a photo of a traffic light.", "a drawing of the traffic light."]
    assert len(f) == 6
    g, *_ = store.prompt_features("tiny-text", ds, progress=False)
    assert store.last_action == "reused"
    assert store.has_prompts("tiny-text", ds)


def test_text_list_features(store):
    texts = ["one", "two words", "three words here"]
    f = store.text_list_features("tiny-text", texts, tag="my list", progress=False)
    assert f.texts == texts and len(f) == 3
    assert Path(f.meta["path"]).name.startswith("my_list-")
    store.text_list_features("tiny-text", texts, tag="my list", progress=False)
    assert store.last_action == "reused"
    store.text_list_features("tiny-text", texts[:2], tag="my list", progress=False)
    assert store.last_action == "encoded"


def test_no_tokens_option(store, caps):
    f = store.image_features("tiny-vit", caps, "train", progress=False, tokens=False)
    assert f.tokens is None and f.final_norm is None and f.pooled.shape == (12, 32)
    t = store.text_features("tiny-text", caps, "train", progress=False, tokens=False)
    assert t.tokens is None and t.offsets is None


def test_entries_remove_and_has(store, caps):
    assert not store.has_texts("tiny-text", caps, "train")
    store.text_features("tiny-text", caps, "train", progress=False)
    store.image_features("tiny-vit", caps, "train", progress=False)
    assert store.has_texts("tiny-text", caps, "train") and store.has_images("tiny-vit", caps, "train")
    assert {e.kind for e in store.entries()} == {"texts", "images"}
    assert store.status()["size_bytes"] > 0
    assert store.remove(encoder="tiny-text") == 1
    assert not store.has_texts("tiny-text", caps, "train") and store.has_images("tiny-vit", caps, "train")


def test_default_root_from_env(tmp_cache):
    assert FeatureStore().root == tmp_cache


def test_feature_source_pairs(tmp_cache, caps):
    from alignbench.features import Pairs
    from alignbench.source import FeatureSource

    src = FeatureSource("tiny-vit+tiny-text", store=FeatureStore(tmp_cache), progress=False)
    assert (src.image_encoder, src.text_encoder) == ("tiny-vit", "tiny-text")
    src._cache.clear()
    src.store._datasets[("tinycaps", None)] = caps  # a dataset not in the registry
    p = src.pairs("tinycaps", "train")
    assert isinstance(p, Pairs) and len(p) == len(caps.captions("train"))
    np.testing.assert_array_equal(p.image_index, caps.caption_image_index("train"))
    np.testing.assert_array_equal(p.text_index, np.arange(len(p)))
    assert p.image().global_array().shape == (len(p), 32)
    assert src.images("tinycaps", "train") is src.images("tinycaps", "train")


# -- interruption -------------------------------------------------------------------
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_store import TinyCaptions
from alignbench.store import FeatureStore
ds = TinyCaptions({data!r}, delay={delay})
store = FeatureStore({cache!r}, checkpoint_seconds=0, text_chunk=4)
if {what!r} == "images":
    store.image_features("tiny-vit", ds, "train", progress=False, batch_size=4, num_workers=0)
else:
    store.text_features("tiny-text", ds, "train", progress=False, batch_size=2)
print("finished")
"""


def _progress_done(cache: Path) -> int:
    for p in cache.glob("*/.tmp-*/progress.json"):
        try:
            return json.loads(p.read_text())["done"]
        except (OSError, ValueError, KeyError):
            return 0
    return 0


@pytest.mark.parametrize("what", ["images", "texts"])
def test_interrupted_encode_resumes(tmp_path, what):
    data = tmp_path / "data"
    TinyCaptions.create(data, n=60 if what == "images" else 24)
    cache = tmp_path / "cache"
    delay = 0.05 if what == "images" else 0.0
    script = SCRIPT.format(tests=str(Path(__file__).parent), data=str(data), cache=str(cache), delay=delay,
                           what=what)
    if what == "texts":  # slow the text model down instead of the image loader
        script = script.replace("from alignbench.store", "import alignbench.encoders.tiny as t, time\n"
                                "_enc = t.TinyText.encode\n"
                                "t.TinyText.encode = lambda s, x, **k: (time.sleep(0.1), _enc(s, x, **k))[1]\n"
                                "from alignbench.store")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _progress_done(cache) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"encode finished or died before it could be interrupted: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _progress_done(cache)
    assert 0 < done
    store = FeatureStore(cache)
    assert not store.entries() and len(store.partial()) == 1  # nothing half-written is listed as cached

    ds = TinyCaptions(data)
    if what == "images":
        f = store.image_features("tiny-vit", ds, "train", progress=False, batch_size=4, num_workers=0)
        ref = FeatureStore(tmp_path / "ref").image_features("tiny-vit", ds, "train", progress=False, batch_size=4,
                                                            num_workers=0)
    else:
        store.text_chunk = 4
        f = store.text_features("tiny-text", ds, "train", progress=False, batch_size=2)
        ref = FeatureStore(tmp_path / "ref", text_chunk=4).text_features("tiny-text", ds, "train", progress=False,
                                                                         batch_size=2)
    assert store.last_action == "resumed"
    assert not store.partial() and len(store.entries()) == 1
    # bit-identical to an uninterrupted encode, file by file, and carrying whole-file checksums
    got, want = Path(f.meta["path"]), Path(ref.meta["path"])
    meta = json.loads((got / "meta.json").read_text())
    names = sorted(n for n in meta["files"] if n != "final_norm.npz")  # a zip stamps its write time
    assert names == sorted(n for n in json.loads((want / "meta.json").read_text())["files"] if n != "final_norm.npz")
    for name in names:
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
        assert meta["files"][name]["xxh3_128"]
    check_entry(got, f.meta["key"], force=True)


def test_stale_partial_with_other_key_is_replaced(store, caps):
    f = store.image_features("tiny-vit", caps, "train", progress=False)
    path = Path(f.meta["path"])
    tmp = path.parent / f".tmp-{path.name}"
    tmp.mkdir()
    (tmp / "progress.json").write_text(json.dumps({"key": {"other": 1}, "done": 4}))
    store.remove(encoder="tiny-vit")
    store.image_features("tiny-vit", caps, "train", progress=False)
    assert store.last_action == "encoded" and not tmp.exists()


def test_concurrent_writers_share_one_entry(tmp_path):
    """Two processes asking for the same entry: one encodes, the other waits and reuses it."""
    data = tmp_path / "data"
    TinyCaptions.create(data, n=24)
    cache = tmp_path / "cache"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import TinyCaptions
        from alignbench.store import FeatureStore
        s = FeatureStore({str(cache)!r})
        s.image_features("tiny-vit", TinyCaptions({str(data)!r}, delay=0.02), "train", progress=False,
                         num_workers=0)
        print(s.last_action)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    actions = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert actions == ["encoded", "reused"]
    assert len(FeatureStore(cache).entries()) == 1 and not FeatureStore(cache).partial()


def test_float16_finiteness_check_by_exponent_bits_matches_numpy():
    from alignbench.store import _all_finite

    a = np.random.default_rng(0).standard_normal(4096).astype(np.float16)
    a[7] = 65504  # the largest finite float16
    assert _all_finite(a) and _all_finite(a.astype(np.float32))
    for bad in (np.inf, -np.inf, np.nan):
        b = a.copy()
        b[100] = bad
        assert not _all_finite(b) and not _all_finite(b.astype(np.float32))


def _make_legacy(path: Path) -> None:
    """Rewrite an entry's meta.json as the previous store wrote it: whole-file and sampled sha256 per
    file, no checksum of the meta itself."""
    import hashlib

    meta = json.loads((path / "meta.json").read_text())
    meta.pop("meta_xxh3_128")
    for name, rec in meta["files"].items():
        digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
        meta["files"][name] = {"size": rec["size"], "sha256": digest, "sample_sha256": digest}
    (path / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def test_entries_of_the_previous_format_are_verified_and_upgraded_not_reencoded(store, caps):
    f = store.image_features("tiny-vit", caps, "train", progress=False)
    path = Path(f.meta["path"])
    want = json.loads((path / "meta.json").read_text())
    _make_legacy(path)
    forget_verified()
    g = store.image_features("tiny-vit", caps, "train", progress=False)
    assert store.last_action == "reused" and g.meta["path"] == str(path)
    assert json.loads((path / "meta.json").read_text())["files"] == want["files"]  # upgraded in place
    forget_verified()
    store.image_features("tiny-vit", caps, "train", progress=False, verify=True)
    assert store.last_action == "reused"
    # a legacy entry whose bytes no longer match its recorded sha256 is caught during that one check
    _make_legacy(path)
    with open(path / "tokens.npy", "r+b") as fh:
        fh.seek(300)
        fh.write(b"\x01\x02\x03")
    forget_verified()
    store.image_features("tiny-vit", caps, "train", progress=False)
    assert store.last_action == "encoded"
