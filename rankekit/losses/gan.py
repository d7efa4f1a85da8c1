"""Adversarial terms shared by every VQ decoder trainer (toy tokenizer pretraining, RankE).

Written as tensor functions so that the tokenizer's own GAN training and RankE's decoder phase
optimise literally the same objective (LlamaGen / taming-transformers VQGAN recipe).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """VQGAN's discriminator hinge loss: 0.5 * (mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))).

    The 0.5 is taming-transformers' and LlamaGen's (and so the RankE release's): with their disc
    factor 0.5 the discriminator's loss is 0.25 x the two hinge terms.
    """
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor,
                        reduce_: Callable[[list[Tensor]], None] | None = None) -> Tensor:
    """VQGAN's balance: ||grad_last(nll)|| / ||grad_last(g_loss)||, clamped to [0, 1e4].

    ``last_layer`` is the decoder's output weight; ``reduce_`` (in place, e.g. a data-parallel
    average) is applied to both gradients first, so every rank uses the global batch's weight.
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if reduce_ is not None:
        reduce_([nll_grad, g_grad])
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
