"""Rows read from a memmap are copies that leave no pages of the file in the process (alignbench.mapped_rows)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from alignbench.mapped_rows import release, take_rows

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
T, D = 33, 128  # one row = 8,448 bytes: rows straddle pages
#: what may stay mapped after a read: the pages (or large page-cache folios, mapped whole) around its ends
LEFT_KIB = 2048


def mapped_kib(path) -> int:
    """Resident KiB of this process's mappings of the file ``path`` (what counts in RSS)."""
    target, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) >= 6 and os.path.realpath(head[5]) == target
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.fixture
def token_file(tmp_path):
    """A (3000, 33, 128) fp16 token file (25 MB) and its values in memory."""
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((3000, T, D), dtype=np.float32) + 0.3).astype(np.float16)
    np.save(tmp_path / "tokens.npy", values)
    return tmp_path / "tokens.npy", values


@linux_only
def test_take_rows_copies_the_rows_and_unmaps_what_it_read(token_file):
    path, values = token_file
    mm = np.load(path, mmap_mode="r")
    rows = np.sort(np.random.default_rng(1).choice(len(values), 1500, replace=False))
    _ = np.array(mm[rows])  # plain fancy indexing: the pages read stay mapped (the bug)
    assert mapped_kib(path) > 8 * LEFT_KIB
    release(mm, 0, len(mm))
    assert mapped_kib(path) < LEFT_KIB

    for got, want in ((take_rows(mm, rows), values[rows]), (take_rows(mm, rows[::-1]), values[rows[::-1]]),
                      (take_rows(mm, np.arange(5, 2900)), values[5:2900])):
        assert type(got) is np.ndarray and got.flags.c_contiguous and got.flags.writeable
        assert np.array_equal(got, want)
        assert mapped_kib(path) < LEFT_KIB  # a few pages around each end, never the rows read

    view = mm[100:2600]  # a view starts inside the mapping: the right pages are released, the right rows read
    assert np.array_equal(take_rows(view, np.arange(0, 2500, 2)), values[100:2600:2])
    assert mapped_kib(path) < LEFT_KIB


def test_private_and_in_memory_arrays_are_only_indexed(token_file):
    path, values = token_file
    cow = np.load(path, mmap_mode="c")  # copy-on-write: a private change lives only in the mapping
    cow[3] = 1.0
    assert not release(cow, 0, len(cow))
    assert np.all(take_rows(cow, np.array([2, 3]))[1] == 1.0) and np.all(cow[3] == 1.0)
    assert np.array_equal(take_rows(values, np.array([4, 1])), values[[4, 1]])
    assert not release(values, 0, len(values))


@linux_only
def test_pal_streaming_a_memmap_keeps_no_pages_and_the_same_numbers(token_file, monkeypatch):
    """The whole fit (finite scan + centring means, streamed CAP, embedding) on a memmap: the numbers of
    the same fit on the arrays in memory, bit for bit, and the file never stays mapped."""
    import alignbench.prepared_tokens as prepared
    from alignbench.features import ImageFeatures, Pairs, TextFeatures
    from alignbench.registry import METHODS

    monkeypatch.setattr(prepared, "PREPARED_SHARE", 0.0)  # tokens over the memory share: they stream
    path, values = token_file
    n, rng = len(values), np.random.default_rng(2)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(3, 7, size=n))]).astype(np.int64)
    text_tokens = (rng.standard_normal((int(offsets[-1]), D), dtype=np.float32) + 0.2).astype(np.float16)
    np.save(path.parent / "text.npy", text_tokens)
    pooled_v, pooled_t = rng.standard_normal((2, n, D), dtype=np.float32)

    def fit(img, txt):
        images = ImageFeatures(pooled_v, tokens=img, grid=(4, 8), n_prefix=1)
        texts = TextFeatures(pooled_t, tokens=txt, offsets=offsets)
        m = METHODS.get("pal")(K=16, batch_size=200, max_epochs=2, lr_range_test=False, compile="off",
                               center="both", dtype="fp32", chunk_elems=T * 16 * 24)
        m.fit(Pairs(images, texts, np.arange(600), np.arange(600)), None, seed=0)
        view = images.subset(np.arange(500, 800))
        return m, m.embed_image(view), m.embed_text(texts.subset(np.arange(0, 800, 3)))

    m_mem, img_mem, txt_mem = fit(values, text_tokens)
    m_map, img_map, txt_map = fit(np.load(path, mmap_mode="r"), np.load(path.parent / "text.npy", mmap_mode="r"))
    assert m_map.fit_info["token_source"].startswith("streamed")
    assert mapped_kib(path) < LEFT_KIB and mapped_kib(path.parent / "text.npy") < LEFT_KIB
    for a, b in zip(m_mem.state_dict().values(), m_map.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(img_mem, img_map) and torch.equal(txt_mem, txt_map)
