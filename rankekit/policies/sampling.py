"""Sampling helpers shared by the AR policies: random streams, logit filtering, token draws.

Every draw is an inverse-CDF draw from one uniform number per (row, step). The uniforms are made
up front by :func:`draw_uniforms`, either from one ``torch.Generator`` or from per-row seeds, so
that (a) a row seeded on its own gives the same tokens whatever else is in the batch, and (b) a
slow reference sampler fed the same uniforms must give exactly the same tokens as the KV-cache one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class SampleOutput:
    """What a policy's ``sample()`` returns.

    Attributes:
        tokens: (B, L) long, the sampled codebook indices in raster order.
        logprobs: (B, L) float32, log-prob of each token under the exact distribution it was drawn
            from (after CFG, temperature, top-k and top-p).
        topk_logits: (B, L, k) float32, the k largest CFG-combined logits of each step, before
            temperature and filtering (for LASC soft latents); ``None`` unless asked for.
        topk_indices: (B, L, k) long, their token ids; ``None`` unless asked for.
    """
    tokens: torch.Tensor
    logprobs: torch.Tensor
    topk_logits: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None


def sampling_grad_mode(policy: torch.nn.Module):
    """The no-gradient mode a sampler runs in: inference mode (fastest), or plain ``no_grad``
    for a sharded (FSDP2) policy, whose gathered weights must stay usable by autograd later."""
    from rankekit.utils.distributed import is_sharded
    if any(is_sharded(p) for p in policy.parameters()):
        return torch.no_grad()
    return torch.inference_mode()


def check_sampling_args(vocab_size: int, temperature: float, top_k: int, top_p: float) -> None:
    """Raise a clear ``ValueError`` for sampling settings that cannot work."""
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature}; for greedy decoding use '
                         f'top_k=1')
    if top_k < 0 or top_k > vocab_size:
        raise ValueError(f'top_k must be in [0, vocab_size={vocab_size}] (0 = no top-k '
                         f'filtering), got {top_k}')
    if not 0 < top_p <= 1:
        raise ValueError(f'top_p must be in (0, 1] (1 = no nucleus filtering), got {top_p}')


def draw_uniforms(batch_size: int, num_steps: int, *, seeds: Sequence[int] | None = None,
                  generator: torch.Generator | None = None,
                  device: torch.device | str = 'cpu',
                  uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Uniforms in [0, 1) of shape (batch_size, num_steps), one per token draw.

    ``uniforms`` given by the caller are checked and used as they are (data-parallel rollouts
    take their rows of the global batch's uniforms, so tokens do not depend on the rank split).
    ``seeds`` gives row i its own CPU stream ``torch.Generator().manual_seed(seeds[i])`` (the same
    numbers on every device); otherwise ``generator`` is used, else the global RNG.
    """
    if uniforms is not None:
        if seeds is not None:
            raise ValueError('give either uniforms or seeds, not both')
        if tuple(uniforms.shape) != (batch_size, num_steps):
            raise ValueError(f'uniforms has shape {tuple(uniforms.shape)}, expected '
                             f'(batch_size={batch_size}, num_steps={num_steps}): one uniform '
                             f'per row and token')
        return uniforms.to(device)
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if len(seeds) != batch_size:
            raise ValueError(f'seeds has {len(seeds)} entries but the batch has {batch_size} rows; '
                             f'give one seed per row')
        rows = [torch.rand(num_steps, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(rows).to(device)
    if generator is not None:
        return torch.rand(batch_size, num_steps, generator=generator,
                          device=generator.device).to(device)
    return torch.rand(batch_size, num_steps, device=device)


def cfg_combine(cond_logits: torch.Tensor, uncond_logits: torch.Tensor,
                scale: float) -> torch.Tensor:
    """Classifier-free guidance on raw logits, LlamaGen's form: ``u + (c - u) * scale``."""
    return uncond_logits + (cond_logits - uncond_logits) * scale


def sample_from_logits(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; returns ``(tokens (R,), logprobs (R,))``.

    The distribution is ``softmax(logits / temperature)`` restricted to the ``top_k`` largest
    logits, then to the smallest prefix (by decreasing probability) whose mass reaches ``top_p``
    (the first token past the threshold is kept, as in LlamaGen/HF). ``logprobs`` are under that
    final renormalised distribution. ``uniforms`` (R,) in [0, 1) pick the token by inverse CDF.
    """
    logits = logits.float() / temperature
    index = None  # candidate -> token id, when candidates are sorted (top-k / top-p)
    if 0 < top_k < logits.shape[-1]:  # top_k == vocab keeps everything: skip the sort
        logits, index = logits.topk(top_k, dim=-1)  # sorted, largest first
    if top_p < 1.0:
        if index is None:
            logits, index = logits.sort(dim=-1, descending=True)
        probs = logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        logits = logits.masked_fill(mass_before > top_p, float('-inf'))
    logp = logits.log_softmax(-1)
    cdf = logp.exp().cumsum(-1)
    pos = torch.searchsorted(cdf, (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1), right=True)
    # rounding can push the draw past the last candidate that has probability > 0
    last = logp.isfinite().sum(-1, keepdim=True) - 1
    pos = torch.minimum(pos, last)
    tokens = pos if index is None else index.gather(-1, pos)
    return tokens.squeeze(-1), logp.gather(-1, pos).squeeze(-1)


def sampler_logprobs(cond_logits: torch.Tensor, uncond_logits: torch.Tensor | None,
                     tokens: torch.Tensor, cfg_scale: float = 1.0, cfg_first_n: int | None = None,
                     temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """Log-probs (B, L) of ``tokens`` under the distribution the sampler draws from, with gradient.

    Teacher-forced logits (B, L, V) of the conditional and (when guided) the unconditional rows
    are combined as the sampler combines them (``cfg_combine`` on the first ``cfg_first_n`` steps,
    all when None), divided by ``temperature`` and restricted to the ``top_k`` largest logits,
    then to the ``top_p`` nucleus, as :func:`sample_from_logits` does; the log-softmax is over
    what is left. The drawn token always stays in the support: the teacher-forced logits differ
    from the KV-cache ones by rounding, which could otherwise put a token drawn at the top-k or
    nucleus boundary just outside it (log-prob -inf). At cfg 1, temperature 1, no top-k / top-p,
    this is :func:`token_logprobs` of the conditional logits.
    """
    logits = cond_logits.float()
    L = logits.shape[1]
    steps = 0 if cfg_scale == 1.0 else (L if cfg_first_n is None else min(cfg_first_n, L))
    if steps:
        if uncond_logits is None:
            raise ValueError(f'cfg_scale={cfg_scale} needs the unconditional logits')
        guided = cfg_combine(logits[:, :steps], uncond_logits[:, :steps].float(), cfg_scale)
        logits = torch.cat([guided, logits[:, steps:]], dim=1)
    logits = logits / temperature
    vocab = logits.shape[-1]
    drawn = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, tokens.unsqueeze(-1), True)
    keep = torch.ones_like(drawn)
    with torch.no_grad():  # which entries stay: a selection, no gradient of its own
        if 0 < top_k < vocab:  # exactly top_k candidates, as the sampler's topk (also on ties)
            keep = torch.zeros_like(drawn).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        if top_p < 1.0:
            ordered, order = logits.masked_fill(~keep, float('-inf')).sort(-1, descending=True)
            probs = ordered.softmax(-1)
            outside = (probs.cumsum(-1) - probs) > top_p
            keep = keep & ~torch.zeros_like(keep).scatter_(-1, order, outside)
    logits = logits.masked_fill(~(keep | drawn), float('-inf'))
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits) gathered at ``tokens`` without materialising the full log-softmax."""
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


__all__ = ['SampleOutput', 'check_sampling_args', 'draw_uniforms', 'cfg_combine',
           'sample_from_logits', 'sampler_logprobs', 'token_logprobs']
