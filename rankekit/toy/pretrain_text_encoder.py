"""Pretraining the toy text encoder on captions alone, before the policy (the toy world's T5).

LlamaGen conditions on a frozen, pretrained T5: the caption's meaning is in the embeddings before
the image model sees one image. The toy text encoder used to be trained jointly with the policy
from scratch, and then learned only what the policy's loss pushed hardest. A linear probe on its
mean-pooled output read the first object's shape at 0.51 (chance 0.25) with the shipped codes;
with local codes (``PatchVQModel``) it read position (0.95) and size (0.90) but not colour (0.15,
chance 0.17), and the policy drew objects of random colour and shape.

``TextEncoderPretrainModel`` trains a :class:`~rankekit.text_encoders.ToyTextEncoder` to encode
the scene its caption describes: the masked mean of its output embeddings goes through a small
MLP to the same per-position slot heads as :class:`~rankekit.toy.feature_net.ToyFeatureNet`
(occupancy, colour, shape, size per position), with the same cross-entropy. The mean is the
read-out on purpose: LlamaGen's 2-D RoPE zeroes the caption positions' queries and keys, so every
image token gives every caption token the same attention score and sees a uniform average of
them. The head is dropped afterwards; the policy stage loads the encoder and keeps it frozen.
"""
from __future__ import annotations

import torch
from mmengine.model import BaseModel
from torch import nn

from rankekit.registry import MODELS, TEXT_ENCODERS
from rankekit.toy.feature_net import (HEADS, check_attributes, match_from_logits, slot_head_sizes,
                                      slot_targets, toy_vocabulary_sizes)
from rankekit.toy.pretrain_feature_net import slot_loss
from rankekit.utils.build import build_module


@MODELS.register_module()
class TextEncoderPretrainModel(BaseModel):
    """Caption -> scene slots through a toy text encoder's mean-pooled embedding.

    ``forward(caption, attributes, mode)`` takes mmengine's collated ToyShapes batch (other keys,
    the images included, are ignored). Mode 'loss' returns ``{'loss/ce', 'acc/attr'}`` (acc/attr:
    mean over colour, shape, size, position of the share of objects read right); mode 'predict'
    one dict per caption with ``match`` (every attribute right, no extra object); mode 'tensor'
    the slot logits.

    Args:
        text_encoder: the ToyTextEncoder config (the toy backbone's ``toy_text_encoder``).
        hidden: width of the slot head's hidden layer.
    """

    info_example = dict(type='TextEncoderPretrainModel',
                        text_encoder=dict(type='ToyTextEncoder', embed_dim=16, width=16,
                                          num_layers=1, num_heads=2), hidden=16)

    def __init__(self, text_encoder: dict | nn.Module, hidden: int = 128,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.text_encoder = build_module(TEXT_ENCODERS, text_encoder, 'model.text_encoder')
        sizes = toy_vocabulary_sizes()
        self.num_positions = sizes['num_positions']
        self.head_sizes = slot_head_sizes(sizes)
        self.head = nn.Sequential(
            nn.Linear(self.text_encoder.embed_dim, hidden), nn.GELU(),
            nn.Linear(hidden, self.num_positions * sum(self.head_sizes.values())))

    def slot_logits(self, captions: list[str]) -> dict:
        """``{head: (B, positions, classes)}`` for the heads of :data:`HEADS`."""
        emb, mask = self.text_encoder(captions)  # it rejects a bare string with a clear error
        weights = mask.unsqueeze(-1).to(emb.dtype)
        pooled = (emb * weights).sum(1) / weights.sum(1).clamp(min=1)
        out = self.head(pooled).view(len(captions), self.num_positions, -1)
        return dict(zip(HEADS, out.split([self.head_sizes[h] for h in HEADS], -1)))

    def forward(self, caption: list[str], attributes: torch.Tensor | None = None,
                mode: str = 'tensor', **unused):
        if mode == 'tensor':
            return self.slot_logits(caption)
        if mode not in ('loss', 'predict'):
            raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
        if attributes is None:
            raise ValueError(f"TextEncoderPretrainModel mode '{mode}' needs the batch's "
                             "'attributes' (ToyShapes items carry them)")
        with torch.set_grad_enabled(mode == 'loss' and torch.is_grad_enabled()):
            logits = self.slot_logits(caption)
        check_attributes(attributes, len(logits['occupancy']),
                         "the batch's 'attributes' (one row per caption)")
        if mode == 'loss':
            loss, acc = slot_loss(logits, slot_targets(attributes, self.num_positions))
            return {'loss/ce': loss, 'acc/attr': acc}
        match = match_from_logits(logits, attributes, exact_count=True)
        return [dict(match=bool(m)) for m in match]
