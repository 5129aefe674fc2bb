"""Write tiny datasets in the EXACT on-disk layouts users have (real file formats, few images).

Each ``write_*`` function creates its dataset under ``root`` and returns what
a loader must find (counts, labels, captions, colours), so tests can compare
against it.  Images are solid colours so a decoded pixel identifies the file.
"""
from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# PASCAL VOC's colour map (bit-interleaved), used by its palette PNGs.
def voc_palette() -> list[int]:
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def colour(i: int) -> tuple[int, int, int]:
    """A distinct, JPEG-stable solid colour per index."""
    return (40 + (i * 53) % 180, 40 + (i * 97) % 180, 40 + (i * 31) % 180)


def solid_image(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new("RGB", size, rgb).save(path, fmt, quality=95)


def write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ln}\n" for ln in lines))


# -- captions ---------------------------------------------------------------------
def write_flickr8k(root: Path, splits=None, captions_per_image: int = 2) -> dict:
    """flickr8k/images/*.jpg, captions.txt (CSV image,caption), splits/{train,dev,test}.txt."""
    splits = splits or {"train": 3, "dev": 2, "test": 2}
    d = root / "flickr8k"
    rows = ["image,caption"]
    out = {}
    k = 0
    for split, n in splits.items():
        names = []
        for _ in range(n):
            name = f"{1000 + k}_abc{k}.jpg"
            solid_image(d / "images" / name, colour(k))
            for c in range(captions_per_image):
                cap = f"image {k} caption {c}, with a comma"
                rows.append(f'{name},"{cap}"')
            names.append(name)
            k += 1
        write_lines(d / "splits" / f"{split}.txt", reversed(names))  # split order ≠ file order
        out[split] = list(reversed(names))
    write_lines(d / "captions.txt", rows)
    return out


def _karpathy_entry(split, filename, caps, filepath=None, imgid=0):
    e = {"filename": filename, "imgid": imgid, "split": split,
         "sentids": list(range(len(caps))),
         "sentences": [{"tokens": c.lower().split(), "raw": c + " ", "imgid": imgid, "sentid": j}
                       for j, c in enumerate(caps)]}
    if filepath is not None:
        e["filepath"] = filepath
        e["cocoid"] = imgid
    return e


def write_coco(root: Path) -> dict:
    """coco/{annotations/captions_{train,val}{2014,2017}.json, train2014/ val2014/ train2017/ val2017/, dataset_coco.json}."""
    d = root / "coco"
    k = 0
    expect: dict = {}
    for year in ("2014", "2017"):
        for split, n in (("train", 3), ("val", 2)):
            folder = f"{split}{year}"
            images, anns = [], []
            for j in range(n):
                img_id = 100 + 7 * j
                fname = f"COCO_{folder}_{img_id:012d}.jpg" if year == "2014" else f"{img_id:012d}.jpg"
                solid_image(d / folder / fname, colour(k))
                images.append({"id": img_id, "file_name": fname, "height": 12, "width": 16})
                for c in range(5 + (j == 0)):  # first image has 6 captions, like some real ones
                    anns.append({"id": 5000 - 10 * j - c, "image_id": img_id, "caption": f"{folder} {img_id} cap {c}"})
                k += 1
            images.reverse()  # the json's image order is not the file-name order
            (d / "annotations").mkdir(parents=True, exist_ok=True)
            (d / "annotations" / f"captions_{folder}.json").write_text(json.dumps(
                {"info": {}, "licenses": [], "images": images, "annotations": anns}))
            expect[(year, split)] = {"n": n, "captions": 6 + 5 * (n - 1)}
    # Karpathy split over the 2014 images: train + restval + val + test
    entries = []
    plan = [("train", "train2014", 100), ("restval", "val2014", 100), ("val", "train2014", 107),
            ("test", "val2014", 107), ("test", "train2014", 114)]
    for i, (split, folder, img_id) in enumerate(plan):
        caps = [f"karpathy {split} {i} sentence {c}" for c in range(5 + (i == 3))]
        entries.append(_karpathy_entry(split, f"COCO_{folder}_{img_id:012d}.jpg", caps, folder, i))
    (d / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    expect["karpathy"] = {"train": 2, "val": 1, "test": 2, "test_captions": 11, "plan": plan}
    return expect


def write_flickr30k(root: Path) -> dict:
    """flickr30k/dataset_flickr30k.json (Karpathy) + flickr30k-images/<id>.jpg."""
    d = root / "flickr30k"
    entries = []
    counts = {"train": 3, "val": 1, "test": 2}
    k = 0
    for split, n in counts.items():
        for _ in range(n):
            name = f"{1000092795 + k}.jpg"
            solid_image(d / "flickr30k-images" / name, colour(k))
            entries.append(_karpathy_entry(split, name, [f"f30k {k} sentence {c}" for c in range(5)], imgid=k))
            k += 1
    (d / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return {"counts": counts, "entries": entries}


# -- classification ---------------------------------------------------------------
def _cifar_array(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10_python(root: Path, per_batch: int = 4) -> dict:
    """cifar10/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (pickled dicts, (N, 3072) rows)."""
    d = root / "cifar10" / "cifar-10-batches-py"
    train_x, train_y = [], []
    for b in range(1, 6):
        x = _cifar_array(per_batch, b)
        y = [(b + i) % 10 for i in range(per_batch)]
        _pickle(d / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": y,
                                        "data": x.transpose(0, 3, 1, 2).reshape(per_batch, -1),
                                        "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]})
        train_x.append(x)
        train_y += y
    tx = _cifar_array(per_batch + 1, 99)
    ty = [i % 10 for i in range(per_batch + 1)]
    _pickle(d / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": ty,
                               "data": tx.transpose(0, 3, 1, 2).reshape(len(tx), -1),
                               "filenames": [f"t_{i}.png" for i in range(len(tx))]})
    _pickle(d / "batches.meta", {"num_cases_per_batch": per_batch, "num_vis": 3072,
                                 "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                 "horse", "ship", "truck"]})
    return {"train_x": np.concatenate(train_x), "train_y": np.asarray(train_y), "test_x": tx, "test_y": np.asarray(ty)}


def write_cifar100_python(root: Path) -> dict:
    """cifar100/cifar-100-python/{train, test, meta}."""
    from alignbench.datasets.classnames import CIFAR100

    d = root / "cifar100" / "cifar-100-python"
    out = {}
    for split, n in (("train", 6), ("test", 3)):
        x = _cifar_array(n, n)
        fine = [(7 * i + 1) % 100 for i in range(n)]
        _pickle(d / split, {"filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": split,
                            "fine_labels": fine, "coarse_labels": [f % 20 for f in fine],
                            "data": x.transpose(0, 3, 1, 2).reshape(n, -1)})
        out[split] = (x, np.asarray(fine))
    _pickle(d / "meta", {"fine_label_names": list(CIFAR100), "coarse_label_names": [f"c{i}" for i in range(20)]})
    return out


def write_stl10(root: Path) -> dict:
    """stl10/stl10_binary/{train,test}_{X,y}.bin + class_names.txt; pixels column-major per channel."""
    d = root / "stl10" / "stl10_binary"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", 3), ("test", 4)):
        x = np.random.default_rng(n).integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)  # (N, H, W, C)
        y = np.asarray([(i % 10) + 1 for i in range(n)], dtype=np.uint8)  # stored 1..10
        x.transpose(0, 3, 2, 1).tofile(d / f"{split}_X.bin")  # (N, C, W, H): column-major planes
        y.tofile(d / f"{split}_y.bin")
        out[split] = (x, y.astype(np.int64) - 1)
    write_lines(d / "class_names.txt", ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"])
    return out


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape) + array.astype(np.uint8).tobytes()


def write_fashion_mnist(root: Path, gz: bool = True) -> dict:
    """fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte(.gz)."""
    d = root / "fashion-mnist"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, split, n in (("train", "train", 6), ("t10k", "test", 4)):
        x = np.random.default_rng(n).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        for kind, arr, magic in (("images-idx3", x, 0x803), ("labels-idx1", y, 0x801)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(arr, magic)
            if gz:
                with gzip.open(d / f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                (d / name).write_bytes(data)
        out[split] = (x, y.astype(np.int64))
    return out


def write_image_folder(base: Path, classes: dict[str, int], name_fmt: str = "{cls}_{i}.jpg", start: int = 0) -> dict:
    """``base/<class>/<file>`` with ``classes[c]`` solid-colour images each; returns {class: [colours]}."""
    out = {}
    k = start
    for cls, n in classes.items():
        out[cls] = []
        for i in range(n):
            solid_image(base / cls / name_fmt.format(cls=cls, i=i + 1), colour(k))
            out[cls].append(colour(k))
            k += 1
    return out


def write_caltech101(root: Path) -> dict:
    """caltech101/101_ObjectCategories/<class>/image_0001.jpg, including BACKGROUND_Google (to be dropped)."""
    classes = {"BACKGROUND_Google": 3, "Faces": 5, "accordion": 4, "yin_yang": 5}
    write_image_folder(root / "caltech101" / "101_ObjectCategories", classes, "image_{i:04d}.jpg")
    return classes


def write_eurosat(root: Path, sub: str = "2750") -> dict:
    """eurosat/2750/<Class>/<Class>_<n>.jpg (the official zip's folder)."""
    classes = {"AnnualCrop": 5, "Forest": 5, "SeaLake": 10}
    write_image_folder(root / "eurosat" / sub, classes, "{cls}_{i}.jpg")
    return classes


def write_dtd(root: Path) -> dict:
    """dtd/images/<class>/<class>_<n>.jpg + dtd/labels/{train,val,test}1.txt."""
    d = root / "dtd"
    classes = {"banded": 3, "zigzagged": 3}
    write_image_folder(d / "images", classes, "{cls}_{i:04d}.jpg")
    write_lines(d / "labels" / "train1.txt", ["zigzagged/zigzagged_0001.jpg", "banded/banded_0001.jpg"])
    write_lines(d / "labels" / "val1.txt", ["banded/banded_0002.jpg", "zigzagged/zigzagged_0002.jpg"])
    write_lines(d / "labels" / "test1.txt", ["zigzagged/zigzagged_0003.jpg", "banded/banded_0003.jpg"])
    return classes


def write_imagenet(root: Path) -> dict:
    """imagenet/val/<wnid>/ILSVRC2012_val_<n>.JPEG for two classes (tench, toilet paper)."""
    classes = {"n01440764": 2, "n15075141": 3}
    write_image_folder(root / "imagenet" / "val", classes, "ILSVRC2012_val_{i:08d}.JPEG")
    return classes


# -- segmentation -----------------------------------------------------------------
def palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def gray_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def mask_array(values: list[int], shape=(12, 16)) -> np.ndarray:
    """Horizontal bands of the given ids."""
    m = np.zeros(shape, dtype=np.uint8)
    bands = np.array_split(np.arange(shape[0]), len(values))
    for v, rows in zip(values, bands):
        m[rows] = v
    return m


def write_voc2012(root: Path) -> dict:
    """VOCdevkit/VOC2012/{JPEGImages, SegmentationClass (palette PNG), ImageSets/Segmentation/*.txt}."""
    d = root / "VOCdevkit" / "VOC2012"
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    masks = {}
    for k, i in enumerate(ids["train"] + ids["val"]):
        solid_image(d / "JPEGImages" / f"{i}.jpg", colour(k))
        m = mask_array([0, 15, 255, 1 + k])
        palette_png(d / "SegmentationClass" / f"{i}.png", m)
        masks[i] = m
    for split in ("train", "val"):
        write_lines(d / "ImageSets" / "Segmentation" / f"{split}.txt", ids[split])
    write_lines(d / "ImageSets" / "Segmentation" / "trainval.txt", ids["train"] + ids["val"])
    return {"ids": ids, "masks": masks}


def write_ade20k(root: Path) -> dict:
    """ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png}."""
    d = root / "ADEChallengeData2016"
    masks = {}
    for folder, n in (("training", 2), ("validation", 3)):
        tag = "train" if folder == "training" else "val"
        for j in range(n):
            name = f"ADE_{tag}_{j + 1:08d}"
            solid_image(d / "images" / folder / f"{name}.jpg", colour(j))
            m = mask_array([0, 1, 150, 2 + j])
            gray_png(d / "annotations" / folder / f"{name}.png", m)
            masks[(tag, j)] = m
    return {"masks": masks, "counts": {"train": 2, "val": 3}}


def write_pascal_context(root: Path) -> dict:
    """VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext/*.png, ImageSets/SegmentationContext/*.txt}."""
    d = root / "VOCdevkit" / "VOC2010"
    ids = {"train": ["2008_000002"], "val": ["2008_000003", "2008_000007"]}
    masks = {}
    for k, i in enumerate(ids["train"] + ids["val"]):
        solid_image(d / "JPEGImages" / f"{i}.jpg", colour(k))
        m = mask_array([0, 1, 59, 10 + k])
        gray_png(d / "SegmentationClassContext" / f"{i}.png", m)
        masks[i] = m
    for split in ("train", "val"):
        write_lines(d / "ImageSets" / "SegmentationContext" / f"{split}.txt", ids[split])
    return {"ids": ids, "masks": masks}


def write_camvid(root: Path) -> dict:
    """camvid/{test/*.jpg, testannot/*.png (ids 0-10, 11 void), test.txt, classes.txt} (SegNet layout)."""
    d = root / "camvid"
    ids = ["0001TP_008550", "0001TP_008580", "Seq05VD_f00000"]
    for k, i in enumerate(ids):
        # colours no caption fixture uses: evaluated images must not be training images (alignbench.split_guard)
        solid_image(d / "test" / f"{i}.jpg", colour(150 + k), size=(16, 12))
        gray_png(d / "testannot" / f"{i}.png", mask_array([0, 3, 11, 10]))
    write_lines(d / "test.txt", ids)
    write_lines(d / "classes.txt", ["sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence",
                                    "car", "pedestrian", "bicyclist"])
    return {"ids": ids}
