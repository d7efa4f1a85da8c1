"""The decoder phase's terms on policy tokens, as tensor functions (RankEModel composes them).

``weights`` are the rank weights of the selected rollouts (:mod:`rankekit.losses.rank_weights`);
each term is to be *minimised* by the decoder.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def rank_weighted_gan_loss(weights: Tensor, disc_logits: Tensor) -> Tensor:
    """-mean_i(w_i * mean(Disc(D(z_i)))): the decoder makes highly ranked decodes look real."""
    return -(weights * disc_logits.flatten(1).mean(1)).mean()


def rank_weighted_reward_loss(weights: Tensor, scores: Tensor) -> Tensor:
    """-mean_i(w_i * r(D(z_i))): reward backprop through the decoder, weighted by rank."""
    return -(weights * scores).mean()


def soft_code_latents(topk_logits: Tensor, topk_indices: Tensor, codebook: Tensor,
                      normalize: bool = True) -> Tensor:
    """LASC's soft latent: sum_k softmax(top-k logits)_k e_k, as a (n, C, h, w) grid for the
    decoder. ``normalize``: mix unit-norm codebook rows (what an l2-normalised quantizer decodes);
    False mixes the stored rows, as the release does."""
    probs = topk_logits.float().softmax(-1)
    rows = F.normalize(codebook, dim=-1) if normalize else codebook
    soft = (probs.unsqueeze(-1) * rows[topk_indices]).sum(-2)  # (n, L, C)
    side = math.isqrt(soft.shape[1])
    return soft.transpose(1, 2).reshape(soft.shape[0], -1, side, side)


def lasc_loss(soft_images: Tensor, hard_images: Tensor) -> Tensor:
    """Latent-aware soft consistency: the soft decode matches the hard one (hard side fixed)."""
    return F.mse_loss(soft_images, hard_images.detach())


__all__ = ['rank_weighted_gan_loss', 'rank_weighted_reward_loss', 'soft_code_latents',
           'lasc_loss']
