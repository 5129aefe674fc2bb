"""Datasets declared by a card file (captions CSV/JSONL, class folders, image + mask folders), no package edit.

Each test writes real files (JPEG/PNG images, CSV/JSONL captions, YAML card)
under a fresh folder and gives the dataset a unique name, because the
registry is shared by the whole test process.
"""
from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alignbench.cli import main as cli
from alignbench.datasets import get_dataset
from alignbench.datasets.cards import declare, read_card, use
from alignbench.datasets.templates import IMAGENET
from alignbench.errors import DataError, PluginError
from alignbench.registry import DATASETS

PAIR = "tiny-vit+tiny-text"
_ids = itertools.count()


def uniq(stem: str) -> str:
    return f"{stem}{next(_ids)}"


def img(path: Path, value: int, size=(24, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def card(folder: Path, text: str) -> Path:
    p = folder / "alignbench.yaml"
    p.write_text(text)
    return p


def pairs_csv(folder: Path, name: str, rows: list[str], splits="[train, test]", header="image,caption,split",
              n_images: int = 6) -> Path:
    for i in range(n_images):
        img(folder / "images" / f"im{i}.png", i)
    (folder / "captions.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return card(folder, f"name: {name}\nkind: captions\ncaptions: captions.csv\nimages: images\nsplits: {splits}\n")


def good_rows(n: int = 6) -> list[str]:
    rows = []
    for i in range(n):
        split = "test" if i >= n - 2 else "train"
        rows += [f'im{i}.png,"a picture, number {i}",{split}', f"im{i}.png,another caption {i},{split}"]
    return rows


# -- captions -----------------------------------------------------------------------------
def test_captions_csv_with_split_column(tmp_path, capsys):
    name = uniq("mypairs")
    c = pairs_csv(tmp_path, name, good_rows())
    assert declare([c]) == [name]
    ds = get_dataset(name)
    assert ds.kind == "captions" and ds.splits == ("train", "test")
    assert ds.images("train").ids == [f"im{i}.png" for i in range(4)]
    assert ds.captions("test") == ["a picture, number 4", "another caption 4", "a picture, number 5",
                                   "another caption 5"]
    assert ds.caption_image_index("test").tolist() == [0, 0, 1, 1]
    assert np.asarray(ds.images("test")[1]).shape == (20, 24, 3)
    # named like a built-in by the CLI, with the same data check
    assert cli(["data", "--check", name]) == 0
    out = capsys.readouterr().out
    assert f"{name:<16} captions" in out and "train     4 images, 8 captions  ok" in out


def test_jsonl_with_split_files_and_caption_lists(tmp_path):
    name = uniq("jsonpairs")
    for i in range(4):
        img(tmp_path / f"im{i}.jpg", i)
    (tmp_path / "pairs.jsonl").write_text("\n".join(
        json.dumps({"file": f"im{i}.jpg", "captions": [f"cap {i} a", f"cap {i} b", f"cap {i} c"]}) for i in range(4)))
    (tmp_path / "train.txt").write_text("im2.jpg\nim0.jpg\nim1.jpg\n")
    (tmp_path / "test.txt").write_text("im3.jpg\n")
    c = card(tmp_path, f"name: {name}\nkind: captions\ncaptions: pairs.jsonl\ncolumns: {{image: file}}\n"
                       "splits: {train: train.txt, test: test.txt}\n")
    declare([c])
    ds = get_dataset(name)
    assert ds.images("train").ids == ["im2.jpg", "im0.jpg", "im1.jpg"]  # split-file order
    assert ds.captions("test") == ["cap 3 a", "cap 3 b", "cap 3 c"]
    assert ds.caption_image_index("train").tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("case,rows,header,match", [
    ("missing image", good_rows()[:-1] + ["im9.png,a lost image,test"], "image,caption,split",
     r"captions.csv: missing image file\(s\) — line 13: .*im9.png"),
    ("empty caption", good_rows()[:3] + ["im1.png,,train"] + good_rows()[4:], "image,caption,split",
     r"captions.csv line 5: empty caption for image 'im1.png'"),
    ("missing column", [r.rsplit(",", 1)[0] for r in good_rows()], "image,text,split",
     r"captions.csv line 1: no column 'caption' \(columns: image, text, split\)"),
    ("conflicting splits", good_rows() + ["im0.png,a third caption,test"], "image,caption,split",
     r"captions.csv line 14: image 'im0.png' is in split 'test' here but in split 'train' on line 2"),
    ("unknown split", good_rows()[:-2] + ["im5.png,x,tset"], "image,caption,split",
     r"captions.csv line 12: split 'tset' is not one of the card's splits \(train, test"),
    ("too many fields", good_rows()[:2] + ["im1.png,a, b,train"], "image,caption,split",
     r"captions.csv line 4: more fields than the header's 3"),
])  # fmt: skip
def test_bad_captions_file_names_file_and_line(tmp_path, capsys, case, rows, header, match):
    name = uniq("badpairs")
    declare([pairs_csv(tmp_path, name, rows, header=header)])
    with pytest.raises(DataError, match=match):
        get_dataset(name).images("train")
    assert cli(["data", "--check", name]) == 1  # data --check says the same, exit 1
    assert re.search(match, capsys.readouterr().out)


def test_empty_split_and_bad_cards(tmp_path):
    name = uniq("emptysplit")
    rows = [r for r in good_rows() if not r.endswith(",test")]
    declare([pairs_csv(tmp_path, name, rows, n_images=4)])
    with pytest.raises(DataError, match=rf"dataset '{name}': split 'test' is empty"):
        get_dataset(name).images("train")
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(DataError, match="kind 'caption'; use one of captions, classification, segmentation"):
        read_card(card(bad, "name: x\nkind: caption\n"))
    with pytest.raises(DataError, match="unknown key\\(s\\) 'caption'; did you mean 'captions'"):
        read_card(card(bad, "name: x\nkind: captions\ncaption: c.csv\n"))
    with pytest.raises(DataError, match=r"alignbench.yaml line 2: not valid YAML"):
        read_card(card(bad, "name: x\n  kind: [captions\n"))
    # a card that names a built-in is refused by name
    with pytest.raises(PluginError, match="names dataset 'flickr8k', which already exists"):
        declare([card(bad, "name: flickr8k\nkind: captions\ncaptions: c.csv\n")])


def test_cache_key_follows_content_not_path(tmp_path):
    from alignbench.store import FeatureStore

    name = uniq("moved")
    first = tmp_path / "a" / "data"
    first.mkdir(parents=True)
    declare([pairs_csv(first, name, good_rows())])
    store = FeatureStore(tmp_path / "cache")
    ds = get_dataset(name)
    f1 = store.image_features("tiny-vit", ds, "test", progress=False)
    assert store.last_action != "reused"

    # the same files elsewhere (same card, same name): the cached features are reused
    second = tmp_path / "b" / "elsewhere"
    shutil.copytree(first, second)
    entry = DATASETS._entries.pop(name)  # the user moved the data; the name is now declared from there
    try:
        declare([second / "alignbench.yaml"])
        moved = get_dataset(name)
        assert moved.card.base == second
        f2 = store.image_features("tiny-vit", moved, "test", progress=False)
        assert store.last_action == "reused"
        np.testing.assert_array_equal(f1.global_array(), f2.global_array())
        # one image's bytes change: a new entry is encoded
        img(second / "images" / "im5.png", 99)
        changed = type(moved)()
        store.image_features("tiny-vit", changed, "test", progress=False)
        assert store.last_action != "reused"
    finally:
        DATASETS._entries[name] = entry


# -- classification -------------------------------------------------------------------------
def class_folders(root: Path, classes=("tabby_cat", "golden_retriever", "zebra"), per_class=2) -> None:
    for split in ("train", "test"):
        for c, cls in enumerate(classes):
            for k in range(per_class):
                img(root / split / cls / f"{k}.jpg", 10 * c + k + (100 if split == "test" else 0))


def test_classification_folders_default_and_custom_names(tmp_path):
    name = uniq("pets")
    class_folders(tmp_path / "pets")
    declare([card(tmp_path / "pets", f"name: {name}\nkind: classification\nsplits: [train, test]\n")])
    ds = get_dataset(name)
    assert ds.classnames == ["golden retriever", "tabby cat", "zebra"]  # sorted folders, readable
    assert ds.templates == IMAGENET  # CLIP's templates by default
    assert ds.labels("test").tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.images("test").ids[0] == "test/golden_retriever/0.jpg"

    named = uniq("pets")
    d = tmp_path / "pets2"
    class_folders(d)
    (d / "classes.txt").write_text("zebra: a zebra\ntabby_cat: tabby cat\ngolden_retriever: golden retriever\n")
    (d / "templates.txt").write_text("a photo of a {}.\nan image of the {}.\n")
    declare([card(d, f"name: {named}\nkind: classification\nsplits: [train, test]\nclasses: classes.txt\n"
                     "templates: templates.txt\n")])
    ds = get_dataset(named)
    assert ds.classnames == ["a zebra", "tabby cat", "golden retriever"]
    assert ds.templates == ["a photo of a {}.", "an image of the {}."]
    assert ds.labels("train").tolist() == [0, 0, 1, 1, 2, 2]


def test_a_split_may_share_a_name_with_what_the_loader_memoises(tmp_path):
    """A split called "classes" is listed apart from the class list the loader keeps under that name."""
    name = uniq("pets")
    for split in ("classes", "test"):
        for c, cls in enumerate(("cat", "dog")):
            img(tmp_path / split / cls / "0.jpg", c)
    declare([card(tmp_path, f"name: {name}\nkind: classification\nsplits: [classes, test]\n")])
    ds = get_dataset(name)
    assert ds.classnames == ["cat", "dog"]
    assert ds.labels("classes").tolist() == [0, 1]
    assert ds.classnames == ["cat", "dog"]


def test_classification_bad_input(tmp_path, capsys):
    name = uniq("emptyclass")
    d = tmp_path / "d"
    class_folders(d)
    (d / "test" / "okapi").mkdir()
    declare([card(d, f"name: {name}\nkind: classification\nsplits: [train, test]\n")])
    with pytest.raises(DataError, match=r"class folder '.*test/okapi' has no images"):
        get_dataset(name).labels("test")
    assert cli(["data", "--check", name]) == 1
    assert "has no images" in capsys.readouterr().out

    name = uniq("badtemplate")
    (d / "tpl.txt").write_text("a photo of a {}.\na photo\n")
    declare([card(d, f"name: {name}\nkind: classification\nsplits: [train, test]\ntemplates: tpl.txt\n")])
    with pytest.raises(DataError, match=r"tpl.txt line 2: template 'a photo' must contain '\{\}'"):
        get_dataset(name).templates


# -- segmentation -----------------------------------------------------------------------------
def seg_folder(root: Path, sizes=((32, 24), (32, 24)), mask_sizes=None) -> None:
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes):
        img(root / "images" / f"f{i}.jpg", i, size)
        w, h = (mask_sizes or sizes)[i]
        m = rng.integers(0, 3, (h, w), dtype=np.uint8)
        m[0, :] = 255
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save(root / "masks" / f"f{i}.png")
    (root / "classes.txt").write_text("background\nroad\ncar\n")


def test_segmentation_images_masks_classes_ignore(tmp_path, capsys):
    name = uniq("streets")
    seg_folder(tmp_path)
    declare([card(tmp_path, f"name: {name}\nkind: segmentation\nimages: images\nmasks: masks\nclasses: classes.txt\n"
                            "ignore_index: 255\nbackground: background\n")])
    ds = get_dataset(name)
    assert ds.splits == ("all",) and ds.classnames == ["background", "road", "car"]
    assert ds.background_index == 0 and ds.ignore_index == 255
    m = ds.mask("all", 1)
    assert m.shape == (24, 32) and set(np.unique(m)) <= {0, 1, 2, 255} and (m[0] == 255).all()
    assert cli(["data", "--check", name]) == 0

    bad = uniq("streets")
    d = tmp_path / "bad"
    seg_folder(d, mask_sizes=((32, 24), (30, 24)))
    declare([card(d, f"name: {bad}\nkind: segmentation\nimages: images\nmasks: masks\nclasses: classes.txt\n")])
    capsys.readouterr()
    assert cli(["data", "--check", bad]) == 1
    assert "masks/f1.png' is 30×24 but its image" in capsys.readouterr().out
    with pytest.raises(DataError, match="is 30×24 but its image"):
        get_dataset(bad).mask("all", 1)


# -- the CLI names card datasets like built-ins -------------------------------------------------
def test_run_on_card_datasets_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ALIGNBENCH_DATASET_FILES", raising=False)
    pairs, classes = uniq("clipairs"), uniq("cliclasses")
    pairs_csv(tmp_path / "p", pairs, good_rows(12), n_images=12)
    class_folders(tmp_path / "c")
    cc = card(tmp_path / "c", f"name: {classes}\nkind: classification\nsplits: [train, test]\n")
    results = tmp_path / "runs"
    assert cli(["ls", "datasets", "--dataset-file", str(tmp_path / "p" / "alignbench.yaml"),
                "--dataset-file", str(cc)]) == 0
    listed = capsys.readouterr().out
    assert pairs in listed and f"[card {tmp_path / 'p' / 'alignbench.yaml'}]" in listed
    rc = cli(["run", "--dataset-file", str(tmp_path / "p" / "alignbench.yaml"), "--dataset-file", str(cc),
              "--pair", PAIR, "--methods", "linear:max_epochs=2", "--budget", "20", "--train", f"{pairs}:train",
              "--val", "none", "--evals", f"retrieval:{pairs}:test,classification:{classes}",
              "--cache", str(tmp_path / "cache"), "--results", str(results), "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads(next(results.glob("*.json")).read_text())
    assert set(rec["metrics"]) == {f"retrieval/{pairs}", f"classification/{classes}"}
    assert rec["budget"]["available"] == 20
    # a misspelt card dataset gets "did you mean", exit 2
    assert cli(["run", "--pair", PAIR, "--methods", "linear", "--train", f"{pairs[:-1]}x:train", "--val", "none",
                "--evals", f"retrieval:{pairs}:test", "--results", str(results)]) == 2
    assert "did you mean" in capsys.readouterr().err
