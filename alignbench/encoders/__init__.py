"""Encoders, one file per family; discovered by ``alignbench.registry.ENCODERS``.

This module stays light (no torch): the CLI imports it to check names.

- ``get_encoder("dinov2-s14", layer=-1, dtype="bf16")`` builds an encoder
  (models load lazily, on first ``encode``/``transform``/``final_norm``).
- ``parse_pair("dinov2-s14+minilm-l6")`` → ``("dinov2-s14", "minilm-l6")``.
- ``encoder_modality("minilm-l6")`` → ``"text"``.

Families take the model after the colon: ``timm:vit_small_patch14_dinov2.lvd142m``,
``hf:facebook/dinov2-small`` or ``hf:/local/folder``, ``st:sentence-transformers/all-MiniLM-L6-v2``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alignbench.errors import ConfigError
from alignbench.registry import ENCODERS

if TYPE_CHECKING:
    from alignbench.encoders.base import ImageEncoder, TextEncoder

PAIR_HELP = "an encoder pair is VISION+TEXT, e.g. dinov2-s14+minilm-l6 (see `alignbench ls encoders`)"


def get_encoder(name: str, *, modality: str | None = None, **kwargs: Any) -> "ImageEncoder | TextEncoder":
    """Build the encoder registered as ``name`` (alias or ``family:model``) with options ``kwargs``.

    ``modality`` ('image'|'text'), when given, is checked, and picks the tower of
    a dual hub model (CLIP): build pair sides with ``get_encoder(v, modality="image")``
    and ``get_encoder(t, modality="text")``.  Unknown names raise
    ``UnknownNameError`` with suggestions; bad options ``ConfigError``.
    """
    factory = ENCODERS.get(name)
    if modality is not None:
        if modality not in ("image", "text"):
            raise ConfigError(f"modality must be 'image' or 'text', got {modality!r}")
        found = encoder_modality(name)
        if found == "both":
            kwargs["modality"] = modality
        elif found != modality:
            raise ConfigError(f"encoder {name!r} is {'an' if found == 'image' else 'a'} {found} encoder, not {modality}")
    return factory(**kwargs)


def encoder_modality(name: str) -> str:
    """'image' or 'text' ('both' for a dual hub model such as ``hf:openai/clip-vit-base-patch32``).

    Imports the encoder's module (light: models load lazily) but builds nothing,
    except that ``hf:`` reads the repo's config.
    """
    ENCODERS.get(name)  # imports the defining module; raises UnknownNameError
    entry, rest = ENCODERS.resolve(name)
    obj = entry.obj
    if rest is not None and hasattr(obj, "modality_for"):
        return obj.modality_for(rest)
    modality = getattr(obj, "modality", "")
    if modality not in ("image", "text"):
        raise ConfigError(f"encoder {name!r} does not declare its modality (image or text)")
    return modality


def parse_pair(pair: str) -> tuple[str, str]:
    """Split ``VISION+TEXT`` into canonical encoder names and check each side's modality."""
    text = str(pair).strip()
    if "+" not in text:
        raise ConfigError(f"encoder pair {pair!r} has no '+': {PAIR_HELP}")
    splits = [(text[:i].strip(), text[i + 1 :].strip()) for i, c in enumerate(text) if c == "+"]
    for vision, txt in splits:  # a '+' inside a local path: take the split whose sides both exist
        if vision and txt and vision in ENCODERS and txt in ENCODERS:
            break
    else:
        vision, txt = splits[0]
        if not vision or not txt:
            raise ConfigError(f"encoder pair {pair!r} has an empty side: {PAIR_HELP}")
        for side in (vision, txt):
            ENCODERS.resolve(side)  # raises UnknownNameError with "did you mean"
    vm, tm = encoder_modality(vision), encoder_modality(txt)
    if vm == "text" or tm == "image":
        hint = f"; did you mean {txt}+{vision}?" if (vm == "text" and tm in ("image", "both")) else ""
        bad = [f"{vision!r} is a text encoder (left side must be vision)"] if vm == "text" else []
        bad += [f"{txt!r} is an image encoder (right side must be text)"] if tm == "image" else []
        raise ConfigError(f"encoder pair {pair!r}: {'; '.join(bad)}{hint}")
    return ENCODERS.canonical(vision), ENCODERS.canonical(txt)
