"""``st:<repo or folder>``: sentence-transformers text models (pooling and normalisation as the repo says)."""
from __future__ import annotations

import logging
from typing import Any

from alignbench.encoders.base import EncodedTexts, TextEncoder, reject_options
from alignbench.encoders.hf_text import quiet_hf_loading
from alignbench.encoders.weights import state_dict_sha256
from alignbench.registry import register_encoder_family

log = logging.getLogger(__name__)


@register_encoder_family("st")
class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model; pooled = its own encode() output (pooling, dense, normalise as configured)."""

    modality = "text"

    def __init__(self, repo: str, *, layer: int | None = None, dtype: str = "fp32", device: str = "cpu", **options: Any):
        super().__init__(layer=layer, dtype=dtype, device=device)
        reject_options(f"st:{repo}", options)
        self.repo = str(repo)
        self._st = None
        self._hash: str | None = None
        _ = self.layer

    @property
    def registry_name(self) -> str:  # type: ignore[override]
        return f"st:{self.repo}"

    @property
    def model(self):
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            with quiet_hf_loading():
                st = SentenceTransformer(self.repo, device=self.device)
            self._st = st.eval()
            self.max_length = int(st.max_seq_length or TextEncoder.max_length)
        return self._st

    @property
    def _auto_model(self):
        return self.model[0].auto_model

    @property
    def num_layers(self) -> int:
        return int(self._auto_model.config.num_hidden_layers)

    @property
    def dim(self) -> int:
        st = self.model
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    @property
    def token_dim(self) -> int:
        return int(self._auto_model.config.hidden_size)

    def fingerprint(self) -> dict[str, Any]:
        if self._hash is None:
            self._hash = state_dict_sha256(self.model)
        return {
            "encoder": f"st:{self.repo}",
            "weights_sha256": self._hash,
            "modules": [type(m).__name__ for m in self.model],
            "layer": self.layer,
            "tokens": "hidden_states[layer+1], special tokens kept, padding masked",
            "pooling": "sentence-transformers pipeline output",
            "max_length": self.max_length,
            "dtype": self.dtype,
            "backend": "torch",
        }

    def encode(self, texts: list[str], *, tokens: bool = True) -> EncodedTexts:
        import torch

        st = self.model
        prep = getattr(st, "preprocess", None) or st.tokenize
        feats = prep(list(texts))
        feats = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in feats.items()}
        cfg = self._auto_model.config
        was = cfg.output_hidden_states
        cfg.output_hidden_states = True
        try:
            with torch.inference_mode(), self.autocast():
                out = st(feats)
        finally:
            cfg.output_hidden_states = was
        mask = out["attention_mask"].bool()
        tok = None
        if tokens:
            tok = out["all_layer_embeddings"][self.layer + 1].float() * mask.unsqueeze(-1)
        return EncodedTexts(pooled=out["sentence_embedding"].float(), tokens=tok, mask=mask if tokens else None)
