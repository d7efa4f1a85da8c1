"""Pretraining the toy AR policy (the same :class:`~rankekit.policies.LlamaGenGPT` as LlamaGen's).

A frozen VQ tokenizer turns toy images into code grids; the policy learns them by next-token
cross-entropy, conditioned on a toy text encoder that trains jointly. Captions are dropped to the
policy's null caption with probability ``policy.class_dropout_prob``, LlamaGen's recipe, so that
classifier-free guidance works at sampling time.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn

from rankekit.registry import MODELS, POLICIES, TEXT_ENCODERS, TOKENIZERS
from rankekit.utils.build import build_module

@MODELS.register_module()
class PolicyPretrainModel(BaseModel):
    """Trains the toy AR policy + text encoder on a frozen tokenizer's codes (CE, caption dropout).

    Batches are dicts from ``default_collate`` of ToyShapes items: ``image`` (B, 3, H, W) in
    [0, 1] and ``caption`` (list of B str); other keys are ignored. Logged: ``loss/ce`` (mean
    next-token cross-entropy, nats) and ``acc/token`` (teacher-forced top-1 accuracy).

    Args:
        tokenizer: VQ tokenizer config or module (frozen; give ``pretrained=`` in real runs).
        text_encoder: text encoder config or module (trained unless ``freeze_text_encoder``).
        policy: policy config or module (trained).
        drop_caption: caption dropout for CFG (probability = ``policy.class_dropout_prob``).
        freeze_text_encoder: keep the text encoder fixed (e.g. when it comes pretrained).
    """

    info_example = dict(
        type='PolicyPretrainModel',
        tokenizer=dict(type='VQModel', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1],
                       decoder_ch_mult=[1, 1], z_channels=16, codebook_size=32,
                       codebook_embed_dim=4, image_size=16),
        text_encoder=dict(type='ToyTextEncoder', embed_dim=32, max_length=8, width=32,
                          num_layers=1, num_heads=2),
        policy=dict(type='LlamaGenGPT', dim=32, n_layer=1, n_head=2, vocab_size=32,
                    block_size=64, cls_token_num=8, caption_dim=32))

    def __init__(self, tokenizer: dict | nn.Module, text_encoder: dict | nn.Module,
                 policy: dict | nn.Module, drop_caption: bool = True,
                 freeze_text_encoder: bool = False, data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.tokenizer = build_module(TOKENIZERS, tokenizer, 'model.tokenizer')
        self.text_encoder = build_module(TEXT_ENCODERS, text_encoder, 'model.text_encoder')
        self.policy = build_module(POLICIES, policy, 'model.policy')
        self.drop_caption = drop_caption
        self.freeze_text_encoder = freeze_text_encoder
        self._check_shapes()
        self.tokenizer.requires_grad_(False)
        if freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.train()

    def _check_shapes(self) -> None:
        tok, enc, pol = self.tokenizer, self.text_encoder, self.policy
        if pol.vocab_size != tok.codebook_size:
            raise ValueError(f'policy vocab_size={pol.vocab_size} must equal the tokenizer '
                             f'codebook_size={tok.codebook_size}')
        if pol.caption_dim != enc.embed_dim:
            raise ValueError(f'policy caption_dim={pol.caption_dim} must equal the text '
                             f'encoder embed_dim={enc.embed_dim}')
        if enc.max_length > pol.cls_token_num:
            raise ValueError(f'text encoder max_length={enc.max_length} exceeds the policy '
                             f'cls_token_num={pol.cls_token_num}')
        grid = getattr(tok, 'grid_size', None)
        if grid is not None and grid * grid != pol.num_image_tokens:
            raise ValueError(f'the tokenizer makes a {grid}x{grid} grid but the policy has '
                             f'block_size={pol.num_image_tokens}; set policy block_size='
                             f'{grid * grid}')

    def train(self, mode: bool = True) -> 'PolicyPretrainModel':
        super().train(mode)
        self.tokenizer.eval()  # frozen: no quantiser bookkeeping, no dropout
        if self.freeze_text_encoder:
            self.text_encoder.eval()
        return self

    @torch.no_grad()
    def images_to_codes(self, image: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> codes (B, L) of the frozen tokenizer."""
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
            raise ValueError('PolicyPretrainModel expects batch["image"] as a float tensor '
                             f'(B, 3, H, W) in [0, 1], got {shape}')
        codes = self.tokenizer.images_to_codes(image.float() * 2 - 1)
        if codes.shape[1] != self.policy.num_image_tokens:
            raise ValueError(f'{tuple(image.shape[-2:])} images give {codes.shape[1]} codes but '
                             f'the policy models {self.policy.num_image_tokens}; check image_size')
        return codes

    def forward(self, image: torch.Tensor, caption: list[str], mode: str = 'tensor', **unused):
        """``'loss'``: loss dict; ``'predict'``: per-sample dicts (nll, acc); ``'tensor'``: logits.
        """
        if mode not in ('loss', 'predict', 'tensor'):
            raise ValueError(f"PolicyPretrainModel.forward: mode must be 'loss', 'predict' or "
                             f"'tensor', got {mode!r}")
        codes = self.images_to_codes(image)
        train = mode == 'loss'
        with torch.set_grad_enabled(train and torch.is_grad_enabled()):
            cond, mask = self.text_encoder(list(caption))
            logits = self.policy(cond, mask, codes, drop_caption=train and self.drop_caption)
        if mode == 'tensor':
            return logits
        nll = F.cross_entropy(logits.flatten(0, 1), codes.flatten(), reduction='none')
        hit = (logits.argmax(-1) == codes).float()
        if mode == 'loss':
            return OrderedDict([('loss/ce', nll.mean()), ('acc/token', hit.mean().detach())])
        nll = nll.view_as(codes).mean(1)
        return [dict(nll=n, acc=a) for n, a in zip(nll, hit.mean(1))]

    @torch.no_grad()
    def sample_images(self, prompts: list[str], **sampling) -> torch.Tensor:
        """Draw one image per prompt: (B, 3, H, W) in [0, 1]; ``sampling`` goes to
        ``policy.sample`` (cfg_scale, temperature, top_k, seeds, ...)."""
        cond, mask = self.text_encoder(list(prompts))
        tokens = self.policy.sample(cond, mask, **sampling).tokens
        return ((self.tokenizer.codes_to_images(tokens).clamp(-1, 1) + 1) / 2)

    def save_policy(self, path: str) -> None:
        """Write the policy alone in LlamaGen's layout ``{"model": state_dict}``."""
        torch.save({'model': self.policy.state_dict()}, path)

    def save_text_encoder(self, path: str) -> None:
        """Write the text encoder's state_dict."""
        torch.save(self.text_encoder.state_dict(), path)
