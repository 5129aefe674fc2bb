"""Zero-shot prompt templates per dataset (``{}`` is replaced by the class name).

The lists are OpenAI CLIP's (its paper's prompt-engineering notebooks, also
shipped by LAION's CLIP_benchmark), so zero-shot numbers are comparable with
published ones.  Datasets CLIP did not cover get a short list written in the
same style (Fashion-MNIST); the segmentation sets use CLIP's 80 ImageNet
templates, as MaskCLIP-style zero-shot segmentation does.
"""
from __future__ import annotations

# the 18 templates of CLIP's CIFAR-10/100 evaluation
CIFAR = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
]

# the 80 templates of CLIP's ImageNet evaluation, in CLIP's order
IMAGENET = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]

STL10 = ["a photo of a {}.", "a photo of the {}."]

EUROSAT = [
    "a centered satellite photo of {}.",
    "a centered satellite photo of a {}.",
    "a centered satellite photo of the {}.",
]

DTD = [
    "a photo of a {} texture.",
    "a photo of a {} pattern.",
    "a photo of a {} thing.",
    "a photo of a {} object.",
    "a photo of the {} texture.",
    "a photo of the {} pattern.",
    "a photo of the {} thing.",
    "a photo of the {} object.",
]

CALTECH101 = [
    "a photo of a {}.",
    "a painting of a {}.",
    "a plastic {}.",
    "a sculpture of a {}.",
    "a sketch of a {}.",
    "a tattoo of a {}.",
    "a toy {}.",
    "a rendition of a {}.",
    "a embroidered {}.",
    "a cartoon {}.",
    "a {} in a video game.",
    "a plushie {}.",
    "a origami {}.",
    "art of a {}.",
    "graffiti of a {}.",
    "a drawing of a {}.",
    "a doodle of a {}.",
    "a photo of the {}.",
    "a painting of the {}.",
    "the plastic {}.",
    "a sculpture of the {}.",
    "a sketch of the {}.",
    "a tattoo of the {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "the embroidered {}.",
    "the cartoon {}.",
    "the {} in a video game.",
    "the plushie {}.",
    "the origami {}.",
    "art of the {}.",
    "graffiti of the {}.",
    "a drawing of the {}.",
    "a doodle of the {}.",
]

# not in CLIP's evaluation: small grayscale product photos on a black background
FASHION_MNIST = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a black and white photo of a {}.",
    "a black and white photo of the {}.",
    "a low resolution photo of a {}.",
    "a low resolution photo of the {}.",
    "a photo of a {}, a type of clothing.",
    "a product photo of a {}.",
]

GENERIC = ["a photo of a {}."]

TEMPLATES: dict[str, list[str]] = {
    "cifar10": CIFAR,
    "cifar100": CIFAR,
    "imagenet": IMAGENET,
    "stl10": STL10,
    "eurosat": EUROSAT,
    "dtd": DTD,
    "caltech101": CALTECH101,
    "fashion-mnist": FASHION_MNIST,
    "camvid": IMAGENET,
    "voc": IMAGENET,
    "voc-mini": IMAGENET,
    "pascal-context": IMAGENET,
    "pascal-context-60": IMAGENET,
    "ade20k": IMAGENET,
}


def templates_for(dataset_name: str) -> list[str]:
    """The prompt templates of a dataset (registry name or alias); ``["a photo of a {}."]`` if it has none."""
    key = dataset_name
    if key not in TEMPLATES:
        try:
            from alignbench.registry import DATASETS

            key = DATASETS.canonical(dataset_name)
        except Exception:  # unknown names fall back to the generic prompt  # noqa: BLE001
            key = dataset_name
    return list(TEMPLATES.get(key, GENERIC))
