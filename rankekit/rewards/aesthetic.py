"""LAION aesthetic predictor v2: an MLP on L2-normalised CLIP ViT-L/14 image embeddings.

The MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between the first layers, no
activations) is the one of christophschuhmann/improved-aesthetic-predictor; its released
weights ``sac+logos+ava1-l14-linearMSE.pth`` are a plain state_dict with keys
``layers.{0,2,4,6,7}.{weight,bias}``. The image tower is OpenAI's CLIP ViT-L/14 (open_clip
``ViT-L-14`` with ``weights_tag='openai'``), preprocessed as OpenAI CLIP does (shortest side to
224, bicubic, centre crop, OpenAI mean/std) with differentiable torch ops.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from rankekit.registry import REWARDS
from rankekit.rewards.base import BaseReward
from rankekit.rewards.clip_score import build_open_clip, preprocess_like
from rankekit.rewards.toy_clip import TOY_CLIP_NAME
from rankekit.utils.weights import load_model_weights, require_weights

AESTHETIC_SOURCE = ('sac+logos+ava1-l14-linearMSE.pth from '
                    'https://github.com/christophschuhmann/improved-aesthetic-predictor '
                    '(3,714,759 bytes)')
DEFAULT_MLP_PATH = 'data/weights/sac+logos+ava1-l14-linearMSE.pth'
DEFAULT_CLIP_PATH = 'data/weights/open_clip_ViT-L-14_openai.bin'


class AestheticMLP(nn.Module):
    """The aesthetic head: ``in_dim -> 1024 -> 128 -> 64 -> 16 -> 1`` linear layers."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        # indices 0/2/4/6/7 are the Linear layers, as in the released state_dict
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


@REWARDS.register_module()
class Aesthetic(BaseReward):
    """LAION aesthetic score (about 1-10): MLP on the L2-normalised CLIP ViT-L/14 image embedding.

    The prompt is ignored. Differentiable in the images by default.

    Args:
        mlp_pretrained: LOCAL ``sac+logos+ava1-l14-linearMSE.pth`` (loaded strictly); None
            gives a random head (tests only, warns).
        clip_pretrained: LOCAL OpenAI CLIP ViT-L/14 weights as an open_clip state_dict (e.g.
            ``open_clip_pytorch_model.bin`` of timm/vit_large_patch14_clip_224.openai); None
            gives random weights (tests only).
        clip_name: open_clip architecture (``'ViT-L-14'``; a tiny custom one in tests).
        clip_weights_tag: the open_clip tag the CLIP file comes from (``'openai'``: QuickGELU
            and OpenAI's preprocessing); None for a custom architecture.
        clip_model_cfg: open_clip model config for a custom ``clip_name``.
        preprocess_cfg: overrides of the preprocessing (``size``, ``mean``, ``std``, ...).
        differentiable: let gradients flow to the images.
        name: name in logs, default ``aesthetic``.
    """

    differentiable = True
    info_example = dict(type='Aesthetic', mlp_pretrained=None, clip_pretrained=None,
                        clip_name=TOY_CLIP_NAME, clip_weights_tag=None)

    def __init__(self, mlp_pretrained: str | None = DEFAULT_MLP_PATH,
                 clip_pretrained: str | None = DEFAULT_CLIP_PATH, clip_name: str = 'ViT-L-14',
                 clip_weights_tag: str | None = 'openai', clip_model_cfg: dict | None = None,
                 preprocess_cfg: dict | None = None, differentiable: bool = True,
                 name: str | None = None):
        super().__init__(name=name or 'aesthetic', differentiable=differentiable)
        what = 'LAION aesthetic predictor MLP weights (Aesthetic.mlp_pretrained)'
        unset = [k for k, v in (('mlp_pretrained', mlp_pretrained),
                                ('clip_pretrained', clip_pretrained)) if v is None]
        if unset:
            warnings.warn(f'Aesthetic({", ".join(f"{k}=None" for k in unset)}) has RANDOM '
                          f'weights: its scores mean nothing (tests only); see '
                          f'docs/prepare_assets.md')
        # the small MLP file is checked before the large CLIP is built: fail fast
        if mlp_pretrained is not None:
            require_weights(mlp_pretrained, what=what, source=AESTHETIC_SOURCE,
                            where=DEFAULT_MLP_PATH, key='mlp_pretrained')
        clip, _ = build_open_clip(clip_name, model_cfg=clip_model_cfg, pretrained=clip_pretrained,
                                  weights_tag=clip_weights_tag, preprocess_cfg=preprocess_cfg,
                                  what='CLIP weights (Aesthetic.clip_pretrained)')
        self.visual = clip.visual  # only the image tower is used; the text tower is dropped
        del clip
        self.preprocess_cfg = dict(self.visual.preprocess_cfg)
        self.mlp = AestheticMLP(self.visual.output_dim)
        if mlp_pretrained is not None:
            load_model_weights(self.mlp, mlp_pretrained, strict=True, what=what,
                               source=AESTHETIC_SOURCE, where=DEFAULT_MLP_PATH)
        self.clip_name = clip_name
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> the CLIP input (differentiable)."""
        return preprocess_like(images, self.preprocess_cfg)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (N, D) of images in [0, 1]."""
        param = next(self.visual.parameters())
        pixels = self.preprocess(images.to(param.device, param.dtype))
        return F.normalize(self.visual(pixels), dim=-1)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        feats = self.embed(images)
        mlp_dtype = self.mlp.layers[0].weight.dtype
        return self.mlp(feats.to(mlp_dtype)).float().to(images.device)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, clip_name={self.clip_name!r}'
