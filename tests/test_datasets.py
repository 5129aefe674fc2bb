"""Fast loader tests on tiny fixtures written in each dataset's exact on-disk layout."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

import fixtures_layouts as fx
from alignbench.datasets import get_dataset
from alignbench.datasets.base import CaptionDataset, ClassificationDataset, SegmentationDataset
from alignbench.datasets.templates import templates_for
from alignbench.errors import DataError, UnknownNameError
from alignbench.registry import DATASETS


def close_colour(img, rgb, tol=6):
    px = np.asarray(img)[img.size[1] // 2, img.size[0] // 2].astype(int)
    return np.abs(px - np.asarray(rgb)).max() <= tol


def check_caption_consistency(ds: CaptionDataset, split: str):
    images, caps, idx = ds.images(split), ds.captions(split), ds.caption_image_index(split)
    assert len(idx) == len(caps)
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) >= 0), "captions must be grouped by image in image order"
    assert set(idx.tolist()) == set(range(len(images)))
    return images, caps, idx


# -- captions ---------------------------------------------------------------------------
def test_flickr8k_fixture(tmp_path):
    order = fx.write_flickr8k(tmp_path)
    ds = get_dataset("flickr8k", tmp_path)
    assert ds.kind == "captions" and ds.splits == ("train", "dev", "test")
    for split in ds.splits:
        images, caps, idx = check_caption_consistency(ds, split)
        assert images.ids == order[split]
        assert np.bincount(idx).tolist() == [2] * len(images)
        for i, name in enumerate(images.ids):
            k = int(name.split("_abc")[1].split(".")[0])
            assert caps[2 * i] == f"image {k} caption 0, with a comma"  # quoted CSV field with a comma
            assert close_colour(images[i], fx.colour(k))
    # "val" is an alias of Flickr8k's "dev"
    assert ds.images("val").ids == ds.images("dev").ids
    with pytest.raises(DataError, match="no split 'validation'"):
        ds.images("validation")


def test_coco_karpathy(tmp_path):
    expect = fx.write_coco(tmp_path)
    ds = get_dataset("coco", tmp_path)
    assert ds.version == "karpathy"  # auto picks Karpathy when dataset_coco.json is there
    k = expect["karpathy"]
    for split in ("train", "val", "test"):
        images, caps, idx = check_caption_consistency(ds, split)
        assert len(images) == k[split]
    images, caps, idx = check_caption_consistency(ds, "test")
    assert len(caps) == k["test_captions"]
    assert images.ids == ["val2014/COCO_val2014_000000000107.jpg", "train2014/COCO_train2014_000000000114.jpg"]
    assert caps[0] == "karpathy test 3 sentence 0"  # raw text, stripped
    assert np.bincount(idx).tolist() == [6, 5]
    # train = Karpathy train + restval
    assert ds.images("train").ids == ["train2014/COCO_train2014_000000000100.jpg", "val2014/COCO_val2014_000000000100.jpg"]
    # val2014 image 107 was written 5th (k=4)
    assert close_colour(images[0], fx.colour(4))
    trimmed = get_dataset("coco", tmp_path, captions_per_image=5)
    assert len(trimmed.captions("test")) == 10


@pytest.mark.parametrize("year", ["2014", "2017"])
def test_coco_official(tmp_path, year):
    expect = fx.write_coco(tmp_path)
    ds = get_dataset("mscoco", tmp_path, version=year)
    for split in ("train", "val"):
        images, caps, idx = check_caption_consistency(ds, split)
        assert len(images) == expect[(year, split)]["n"]
        assert len(caps) == expect[(year, split)]["captions"]
        assert images.ids == sorted(images.ids)
    images, caps, idx = check_caption_consistency(ds, "val")
    assert caps[0].startswith(f"val{year} 100 cap ") and np.bincount(idx).tolist() == [6, 5]
    assert caps[0] == f"val{year} 100 cap 5"  # captions keep annotation-id order
    first_val_colour = fx.colour(3 if year == "2014" else 8)
    assert close_colour(images[0], first_val_colour)
    with pytest.raises(DataError, match="no public test captions"):
        ds.images("test")


def test_coco_auto_without_karpathy_uses_2017(tmp_path):
    fx.write_coco(tmp_path)
    (tmp_path / "coco" / "dataset_coco.json").unlink()
    ds = get_dataset("coco", tmp_path)
    assert ds.version == "2017"
    with pytest.raises(DataError, match="dataset_coco.json"):
        get_dataset("coco", tmp_path, version="karpathy")


def test_flickr30k_karpathy(tmp_path):
    expect = fx.write_flickr30k(tmp_path)
    ds = get_dataset("flickr30k", tmp_path)
    for split, n in expect["counts"].items():
        images, caps, idx = check_caption_consistency(ds, split)
        assert len(images) == n and len(caps) == 5 * n
    images, caps, _ = check_caption_consistency(ds, "test")
    test_entries = [e for e in expect["entries"] if e["split"] == "test"]
    assert images.ids == [e["filename"] for e in test_entries]
    assert caps[:5] == [s["raw"].strip() for s in test_entries[0]["sentences"]]
    assert close_colour(images[1], fx.colour(5))


# -- classification ------------------------------------------------------------------------
def test_cifar10_python_batches(tmp_path):
    expect = fx.write_cifar10_python(tmp_path)
    ds = get_dataset("cifar10", tmp_path)
    assert ds.kind == "classification" and len(ds.classnames) == 10 and ds.classnames[1] == "automobile"
    assert len(ds.templates) == 18 and all("{}" in t for t in ds.templates)
    for split in ("train", "test"):
        x, y = expect[f"{split}_x"], expect[f"{split}_y"]
        images = ds.images(split)
        assert len(images) == len(x)
        np.testing.assert_array_equal(ds.labels(split), y)
        np.testing.assert_array_equal(np.asarray(images[len(x) - 1]), x[-1])  # exact pixels, HWC order
    assert ds.images("train").fingerprint != ds.images("test").fingerprint


def test_cifar10_image_folder(tmp_path):
    fx.write_image_folder(tmp_path / "cifar10" / "test", {"automobile": 2, "truck": 3, "airplane": 1}, "{i:04d}.jpg")
    ds = get_dataset("cifar-10", tmp_path)
    images = ds.images("test")
    assert images.ids[0] == "test/airplane/0001.jpg"
    np.testing.assert_array_equal(ds.labels("test"), [0, 1, 1, 9, 9, 9])
    assert close_colour(images[0], fx.colour(5))


def test_cifar100_python(tmp_path):
    expect = fx.write_cifar100_python(tmp_path)
    ds = get_dataset("cifar100", tmp_path)
    assert len(ds.classnames) == 100 and ds.classnames[1] == "aquarium fish"
    for split in ("train", "test"):
        x, y = expect[split]
        np.testing.assert_array_equal(ds.labels(split), y)
        np.testing.assert_array_equal(np.asarray(ds.images(split)[0]), x[0])


def test_stl10_binary(tmp_path):
    expect = fx.write_stl10(tmp_path)
    ds = get_dataset("stl10", tmp_path)
    assert ds.classnames[7] == "monkey" and len(ds.templates) == 2
    for split in ("train", "test"):
        x, y = expect[split]
        images = ds.images(split)
        np.testing.assert_array_equal(ds.labels(split), y)
        np.testing.assert_array_equal(np.asarray(images[1]), x[1])  # column-major planes decoded correctly
    # the loader pickles without its pixels (DataLoader workers), and still decodes
    images = ds.images("test")
    clone = pickle.loads(pickle.dumps(images))
    np.testing.assert_array_equal(np.asarray(clone[2]), expect["test"][0][2])


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    expect = fx.write_fashion_mnist(tmp_path, gz=gz)
    ds = get_dataset("fashion-mnist", tmp_path)
    assert ds.classnames[9] == "ankle boot"
    for split in ("train", "test"):
        x, y = expect[split]
        images = ds.images(split)
        assert len(images) == len(x)
        np.testing.assert_array_equal(ds.labels(split), y)
        img = images[2]
        assert img.mode == "RGB" and img.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(img)[..., 0], x[2])


def test_caltech101_drops_background_and_splits(tmp_path):
    fx.write_caltech101(tmp_path)
    ds = get_dataset("caltech101", tmp_path, train_per_class=2)
    assert len(ds.classnames) == 101 and ds.classnames[0] == "off-center face"
    assert ds.classnames[-1] == "yin and yang symbol"
    all_ids = ds.images("all").ids
    assert len(all_ids) == 14 and not any("BACKGROUND" in i for i in all_ids)
    np.testing.assert_array_equal(np.bincount(ds.labels("all")), np.bincount([0] * 5 + [4] * 4 + [100] * 5))
    train, test = ds.images("train").ids, ds.images("test").ids
    assert len(train) == 6 and len(test) == 8 and not set(train) & set(test)
    assert np.bincount(ds.labels("train"), minlength=101)[[0, 4, 100]].tolist() == [2, 2, 2]
    # fixed seed: same split every time; another seed gives another split
    assert get_dataset("caltech101", tmp_path, train_per_class=2).images("train").ids == train
    assert get_dataset("caltech101", tmp_path, train_per_class=2, seed=1).images("train").ids != train
    assert len(get_dataset("caltech101", tmp_path).images("test")) == 0  # default 30/class takes all of 5


@pytest.mark.parametrize("sub", ["2750", "EuroSAT"])
def test_eurosat(tmp_path, sub):
    fx.write_eurosat(tmp_path, sub)
    ds = get_dataset("eurosat", tmp_path)
    assert ds.classnames[9] == "lake or sea" and len(ds.templates) == 3
    assert len(ds.images("all")) == 20
    np.testing.assert_array_equal(np.bincount(ds.labels("test"), minlength=10)[[0, 1, 9]], [1, 1, 2])
    np.testing.assert_array_equal(np.bincount(ds.labels("train"), minlength=10)[[0, 1, 9]], [4, 4, 8])
    assert ds.images("all").ids[0] == "AnnualCrop/AnnualCrop_1.jpg"
    assert close_colour(ds.images("all")[0], fx.colour(0))


def test_dtd_official_partition(tmp_path):
    fx.write_dtd(tmp_path)
    ds = get_dataset("dtd", tmp_path)
    assert len(ds.classnames) == 47 and ds.classnames[-1] == "zigzagged"
    for split in ("train", "val", "test"):
        assert len(ds.images(split)) == 2
    assert ds.images("train").ids == ["banded/banded_0001.jpg", "zigzagged/zigzagged_0001.jpg"]
    np.testing.assert_array_equal(ds.labels("train"), [0, 46])
    assert close_colour(ds.images("test")[1], fx.colour(5))
    with pytest.raises(DataError, match="test2.txt"):
        get_dataset("dtd", tmp_path, partition=2).images("test")


def test_imagenet_val_folders(tmp_path):
    fx.write_imagenet(tmp_path)
    ds = get_dataset("imagenet", tmp_path)
    assert len(ds.classnames) == 1000 and ds.classnames[0] == "tench" and ds.classnames[999] == "toilet paper"
    assert len(ds.templates) == 80
    images = ds.images("test")  # alias of val
    assert len(images) == 5 and images.ids[0] == "val/n01440764/ILSVRC2012_val_00000001.JPEG"
    np.testing.assert_array_equal(ds.labels("val"), [0, 0, 999, 999, 999])
    assert close_colour(images[2], fx.colour(2))


# -- segmentation ------------------------------------------------------------------------
def test_voc2012_palette_masks(tmp_path):
    expect = fx.write_voc2012(tmp_path)
    ds = get_dataset("voc2012", tmp_path)  # finds VOCdevkit/VOC2012 under the data root
    assert ds.kind == "segmentation" and ds.ignore_index == 255 and ds.background_index == 0
    assert len(ds.classnames) == 21 and ds.classnames[0] == "background" and ds.classnames[20] == "tv monitor"
    assert len(ds.images("train")) == 2 and len(ds.images("val")) == 1 and len(ds.images("trainval")) == 3
    m = ds.mask("val", 0)
    assert m.dtype == np.int64 and m.shape == (12, 16)
    np.testing.assert_array_equal(m, expect["masks"]["2007_000033"])  # palette indices, not RGB
    assert set(np.unique(m).tolist()) == {0, 3, 15, 255}
    assert ds.images("test").ids == ds.images("val").ids
    assert close_colour(ds.images("val")[0], fx.colour(2))


def test_voc_path_option_points_at_other_folder(tmp_path):
    fx.write_voc2012(tmp_path / "elsewhere")
    ds = get_dataset("voc", tmp_path, path="elsewhere/VOCdevkit/VOC2012")
    assert len(ds.images("val")) == 1


def test_ade20k(tmp_path):
    expect = fx.write_ade20k(tmp_path)
    ds = get_dataset("ade20k", tmp_path)
    assert len(ds.classnames) == 150 and ds.classnames[0] == "wall" and ds.classnames[149] == "flag"
    assert len(ds.images("train")) == 2 and len(ds.images("val")) == 3
    m = ds.mask("val", 2)
    raw = expect["masks"][("val", 2)]
    np.testing.assert_array_equal(m[raw == 0], 255)
    np.testing.assert_array_equal(m[raw == 1], 0)
    np.testing.assert_array_equal(m[raw == 150], 149)
    np.testing.assert_array_equal(m[raw == 4], 3)
    assert ds.images("val").ids[0] == "images/validation/ADE_val_00000001.jpg"


def test_pascal_context(tmp_path):
    expect = fx.write_pascal_context(tmp_path)
    ds = get_dataset("pascal-context", tmp_path)
    assert len(ds.classnames) == 59 and ds.background_index is None
    assert len(ds.images("val")) == 2
    m = ds.mask("val", 1)
    raw = expect["masks"]["2008_000007"]
    np.testing.assert_array_equal(m, np.where(raw == 0, 255, raw.astype(np.int64) - 1))


def test_pascal_context_60_keeps_background_as_class_0(tmp_path):
    expect = fx.write_pascal_context(tmp_path)
    ds = get_dataset("pascal-context-60", tmp_path)
    assert ds.classnames[0] == "background" and len(ds.classnames) == 60 and ds.background_index == 0
    from alignbench.registry import DATASETS

    assert ds.slide_threshold == 0.15 and DATASETS.get("voc").slide_threshold == 0.5
    raw = expect["masks"]["2008_000007"]
    np.testing.assert_array_equal(ds.mask("val", 1), raw.astype(np.int64))  # ids 0-59 as stored
    assert ds.images("val").ids == get_dataset("pascal-context", tmp_path).images("val").ids


def test_camvid_fixture(tmp_path):
    expect = fx.write_camvid(tmp_path)
    ds = get_dataset("camvid", tmp_path)
    assert ds.ignore_index == 11 and ds.classnames[6] == "sign symbol"
    images = ds.images("test")
    assert [i.split("/")[-1][:-4] for i in images.ids] == expect["ids"]
    m = ds.mask("test", 0)
    assert m.dtype == np.int64 and set(np.unique(m).tolist()) == {0, 3, 10, 11}


# -- errors ---------------------------------------------------------------------------------
def test_missing_data_root(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        get_dataset("flickr8k", tmp_path / "nope")


def test_missing_dataset_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DataError) as e:
        get_dataset("flickr8k", tmp_path)
    assert str(tmp_path / "flickr8k") in str(e.value) and "captions.txt" in str(e.value)
    (tmp_path / "caltech101").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "caltech101" / "101_ObjectCategories")):
        get_dataset("caltech101", tmp_path)


def test_missing_captions_file(tmp_path):
    fx.write_flickr8k(tmp_path)
    (tmp_path / "flickr8k" / "captions.txt").unlink()
    with pytest.raises(DataError, match=str(tmp_path / "flickr8k" / "captions.txt")):
        get_dataset("flickr8k", tmp_path).captions("test")


def test_missing_split_file(tmp_path):
    fx.write_flickr8k(tmp_path)
    (tmp_path / "flickr8k" / "splits" / "dev.txt").unlink()
    with pytest.raises(DataError, match="dev.txt"):
        get_dataset("flickr8k", tmp_path).images("dev")


def test_missing_image_file_is_named(tmp_path):
    order = fx.write_flickr8k(tmp_path)
    (tmp_path / "flickr8k" / "images" / order["test"][1]).unlink()
    with pytest.raises(DataError, match=order["test"][1]):
        get_dataset("flickr8k", tmp_path).images("test")


@pytest.mark.parametrize("header", ["filename,caption", "image", "image;caption"])
def test_malformed_captions_header(tmp_path, header):
    fx.write_flickr8k(tmp_path)
    path = tmp_path / "flickr8k" / "captions.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([header] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="malformed captions file .*captions.txt"):
        get_dataset("flickr8k", tmp_path).captions("train")


def test_captions_row_missing_column(tmp_path):
    fx.write_flickr8k(tmp_path)
    path = tmp_path / "flickr8k" / "captions.txt"
    path.write_text(path.read_text() + "lonely_image.jpg\n")
    with pytest.raises(DataError, match=r"captions.txt.*line \d+"):
        get_dataset("flickr8k", tmp_path).captions("train")


def test_wrong_idx_magic(tmp_path):
    fx.write_fashion_mnist(tmp_path)
    bad = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(fx.idx_bytes(np.zeros((2, 28, 28), np.uint8), 0x801))
    with pytest.raises(DataError, match=r"wrong IDX magic number 0x00000801 in .*t10k-images-idx3-ubyte.gz"):
        get_dataset("fashion-mnist", tmp_path).images("test")


def test_unreadable_image_is_named(tmp_path):
    fx.write_image_folder(tmp_path / "cifar10" / "test", {"cat": 2})
    bad = tmp_path / "cifar10" / "test" / "cat" / "cat_2.jpg"
    bad.write_bytes(b"not a jpeg")
    images = get_dataset("cifar10", tmp_path).images("test")  # listing does not decode
    assert len(images) == 2
    with pytest.raises(DataError, match="cat_2.jpg"):
        images[1]


def test_missing_mask_is_named(tmp_path):
    fx.write_voc2012(tmp_path)
    (tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png").unlink()
    with pytest.raises(DataError, match="2007_000033.png"):
        get_dataset("voc", tmp_path).images("val")


def test_rgb_mask_is_rejected(tmp_path):
    fx.write_voc2012(tmp_path)
    path = tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    from PIL import Image

    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match="palette"):
        get_dataset("voc", tmp_path).mask("val", 0)


def test_unknown_class_folder(tmp_path):
    fx.write_image_folder(tmp_path / "imagenet" / "val", {"n99999999": 1})
    with pytest.raises(DataError, match="n99999999"):
        get_dataset("imagenet", tmp_path).images("val")


def test_unknown_dataset_name_suggests(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'flickr8k'"):
        get_dataset("flikr8k", tmp_path)


# -- registry, templates, CLI ----------------------------------------------------------------
def test_every_registered_dataset_is_complete():
    kinds = {"captions": CaptionDataset, "classification": ClassificationDataset, "segmentation": SegmentationDataset}
    loaded = DATASETS.load_all()
    assert {"flickr8k", "coco", "flickr30k", "cifar10", "cifar100", "stl10", "fashion-mnist", "caltech101",
            "eurosat", "dtd", "imagenet", "camvid", "voc", "voc-mini", "pascal-context", "ade20k"} <= set(loaded)
    for name, cls in loaded.items():
        assert issubclass(cls, kinds[cls.kind]), name
        assert cls.__doc__ and cls.splits, name
        if cls.kind != "captions":
            assert templates_for(name) and all(t.count("{}") == 1 for t in templates_for(name)), name


def test_templates():
    assert len(templates_for("cifar10")) == 18 and templates_for("cifar100") == templates_for("cifar10")
    assert len(templates_for("imagenet")) == 80 and templates_for("imagenet1k") == templates_for("imagenet")
    assert templates_for("a-dataset-nobody-registered") == ["a photo of a {}."]
    assert templates_for("cifar10")[0].format("cat") == "a photo of a cat."


def test_fingerprint_changes_with_content(tmp_path):
    fx.write_image_folder(tmp_path / "cifar10" / "test", {"cat": 2, "dog": 1})
    before = get_dataset("cifar10", tmp_path).images("test").fingerprint
    assert get_dataset("cifar10", tmp_path).images("test").fingerprint == before
    fx.solid_image(tmp_path / "cifar10" / "test" / "dog" / "dog_2.jpg", (1, 2, 3))
    assert get_dataset("cifar10", tmp_path).images("test").fingerprint != before


def test_data_command_lists_and_checks(tmp_path, capsys):
    from alignbench.cli import main

    fx.write_flickr8k(tmp_path)
    fx.write_voc2012(tmp_path)
    assert main(["data", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "flickr8k" in out and "test      2 images, 4 captions" in out
    assert "coco             not found" in out
    assert main(["data", "--data-root", str(tmp_path), "--check", "flickr8k", "voc"]) == 0
    out = capsys.readouterr().out
    assert "val       1 images with masks  ok" in out
    (tmp_path / "flickr8k" / "images" / "1000_abc0.jpg").write_bytes(b"broken")
    assert main(["data", "--data-root", str(tmp_path), "--check", "flickr8k"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "1000_abc0.jpg" in out
