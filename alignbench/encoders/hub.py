"""Hub encoder families: ``timm:<model>``, ``hf:<repo or folder>``, ``st:<repo or folder>``.

Users have the hub; this machine does not.  So each family takes the same
path for a hub id and for a local folder (``hf:/path/to/saved``), and timm
takes ``pretrained=False``: the tests run tiny random models through exactly
the code that loads real ones.

Conventions shared with the built-ins (see base.py): ``layer`` is a 0-based
block/stage index, default last; image tokens are the chosen block's output
(prefix tokens first, then patches row-major), taken before any final norm;
the global feature is the model's own pooled output.
"""
from __future__ import annotations

from alignbench.encoders.hub_base import _LazyImageEncoder, _layer_norm_params
from alignbench.encoders.hub_hf import HFHubTextEncoder, HFImageTransform, HFVisionEncoder, hf_config, hf_encoder, hf_modality
from alignbench.encoders.hub_st import SentenceTransformerEncoder
from alignbench.encoders.hub_timm import TimmEncoder

__all__ = ["HFHubTextEncoder", "HFImageTransform", "HFVisionEncoder", "SentenceTransformerEncoder", "TimmEncoder",
           "_LazyImageEncoder", "_layer_norm_params", "hf_config", "hf_encoder", "hf_modality"]
