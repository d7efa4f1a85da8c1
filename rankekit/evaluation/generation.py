"""Images from a RankE model: policy x decoder combinations, per-prompt seeds, grids and PNGs.

Library functions shared by ``tools/test.py`` / ``tools/sample.py`` (:mod:`rankekit.apis.
inference`), the training monitors (:mod:`rankekit.engine.monitors`) and the paper's protocols:

- :func:`parse_combos`: ``'online:ema'`` -> ``('online', 'ema')`` (policy : decoder);
- :func:`prompt_seeds`: the per-prompt sampling seeds (a prompt's image does not depend on the
  batch it is drawn in, so sample.py, test.py and the grid hook agree);
- :func:`generate_combos`: images of several policy x decoder combinations, sampling each policy
  once and decoding its tokens with every requested decoder (identical tokens per policy);
- :func:`make_grid` / :func:`save_png`: image grids.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

CHOICES = ('online', 'ema', 'base')


#: trained vs initial tokens x EMA vs initial decoder: ``online:base`` shows what better tokens
#: alone give, ``base:ema`` what the co-evolved decoder alone gives
DEFAULT_COMBOS = ('online:ema', 'online:base', 'base:ema', 'base:base')


SAMPLING_KEYS = ('cfg_scale', 'cfg_first_n', 'temperature', 'top_k', 'top_p')


#: prompt ``i`` under seed ``s`` is drawn with the RNG seed ``s * SEED_STRIDE + i``
SEED_STRIDE = 1_000_000


def parse_combo(text: str) -> tuple[str, str]:
    """``'online:ema'`` -> ``('online', 'ema')``: policy and decoder, each online | ema | base."""
    parts = str(text).split(':')
    if len(parts) != 2 or parts[0] not in CHOICES or parts[1] not in CHOICES:
        raise ValueError(f"combo {text!r} is not POLICY:DECODER with each of {CHOICES} "
                         f"(e.g. 'online:ema', 'online:base')")
    return parts[0], parts[1]


def parse_combos(texts: Iterable[str]) -> list[tuple[str, str]]:
    """Parsed combos, duplicates dropped, order kept."""
    combos = []
    for text in texts:
        combo = parse_combo(text)
        if combo not in combos:
            combos.append(combo)
    if not combos:
        raise ValueError('no combo given; e.g. --combos online:ema online:base')
    return combos


def combo_name(combo: Sequence[str]) -> str:
    """``('online', 'ema')`` -> ``'online:ema'``."""
    return f'{combo[0]}:{combo[1]}'


def prompt_seeds(seed: int, start: int, count: int) -> list[int]:
    """Sampling seeds of prompts ``start .. start + count - 1`` under run seed ``seed``."""
    if start < 0 or start + count > SEED_STRIDE:
        raise ValueError(f'prompt indices {start}..{start + count - 1} out of range [0, '
                         f'{SEED_STRIDE}): at most {SEED_STRIDE} prompts per seed')
    return [int(seed) * SEED_STRIDE + start + i for i in range(count)]


def check_combos(model, combos: Sequence[tuple[str, str]]) -> None:
    """Fail early for a combo the model cannot run (an EMA policy that is not kept)."""
    if getattr(model, 'policy_ema', True) is None and any(p == 'ema' for p, _ in combos):
        raise ValueError('this model keeps no policy EMA (model.policy_cfg.ema_decay=None): drop '
                         'the ema:* combos')


def sampling_settings(model, overrides: dict | None = None) -> dict:
    """The model's rollout sampling settings with ``overrides`` (``None`` values ignored)."""
    settings = model.rollout_cfg.sampling()
    for key, value in (overrides or {}).items():
        if key not in SAMPLING_KEYS:
            raise KeyError(f'unknown sampling setting {key!r}; use {SAMPLING_KEYS}')
        if value is not None:
            settings[key] = value
    vocab = getattr(getattr(model, 'policy', None), 'vocab_size', None)
    if isinstance(vocab, int):  # before sampling starts, with the option names
        from rankekit.policies.sampling import check_sampling_args
        try:
            check_sampling_args(vocab, settings['temperature'], settings['top_k'],
                                settings['top_p'])
        except ValueError as exc:
            raise ValueError(f'sampling settings (--temperature / --top-k / --top-p, default: '
                             f"the config's model.rollout): {exc}") from None
    return settings


@contextmanager
def eval_mode(module: torch.nn.Module):
    """Run with every submodule in eval mode; restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def batch_ranges(count: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    for start in range(0, count, batch_size):
        yield start, min(start + batch_size, count)


@torch.no_grad()
def sample_tokens(model, prompts: Sequence[str], policy: str = 'online', seed: int = 0,
                  batch_size: int = 64, sampling: dict | None = None, decoder: str = 'ema',
                  start: int = 0, on_batch: Callable[[int], None] | None = None) -> dict:
    """Tokens (N, L) and images (N, 3, H, W) in [0, 1] (``decoder``) for ``prompts``.

    Prompt ``i`` is drawn with seed ``prompt_seeds(seed, start + i)``: the same image for the
    same prompt index whatever the batch size. ``on_batch(n)`` is called after each batch.
    """
    tokens, images = [], []
    settings = sampling_settings(model, sampling)
    with eval_mode(model):
        for lo, hi in batch_ranges(len(prompts), batch_size):
            out = model.generate(list(prompts[lo:hi]), policy=policy, decoder=decoder,
                                 seeds=prompt_seeds(seed, start + lo, hi - lo), **settings)
            tokens.append(out['tokens'])
            images.append(out['images'])
            if on_batch is not None:
                on_batch(hi - lo)
    return dict(tokens=torch.cat(tokens), images=torch.cat(images))


@torch.no_grad()
def decode_tokens(model, tokens: torch.Tensor, decoder: str, batch_size: int = 64) -> torch.Tensor:
    """Tokens (N, L) -> images (N, 3, H, W) in [0, 1] with the online | ema | base decoder."""
    from rankekit.models.rank_e import to_unit_range
    with eval_mode(model):
        return torch.cat([to_unit_range(model.decode(tokens[lo:hi], decoder))
                          for lo, hi in batch_ranges(len(tokens), batch_size)])


def generate_combos(model, prompts: Sequence[str], combos: Sequence[tuple[str, str]],
                    seed: int = 0, batch_size: int = 64, sampling: dict | None = None) -> dict:
    """``{(policy, decoder): dict(tokens, images)}``; each policy samples once, so the combos
    sharing a policy show the same tokens through different decoders."""
    check_combos(model, combos)
    out = {}
    for policy in dict.fromkeys(p for p, _ in combos):
        decoders = [d for p, d in combos if p == policy]
        first = sample_tokens(model, prompts, policy, seed, batch_size, sampling, decoders[0])
        out[(policy, decoders[0])] = first
        for decoder in decoders[1:]:
            out[(policy, decoder)] = dict(
                tokens=first['tokens'],
                images=decode_tokens(model, first['tokens'], decoder, batch_size))
    return {combo: out[combo] for combo in combos}


def auto_scale(side: int, min_side: int = 64) -> int:
    """Smallest integer upscaling that makes a ``side``-pixel image at least ``min_side`` wide."""
    return max(1, math.ceil(min_side / max(int(side), 1)))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8 (rounded, clipped)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'images must be (N, 3, H, W), got shape {tuple(images.shape)}')
    array = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, scale: int = 1,
              pad_value: int = 255) -> np.ndarray:
    """A (H, W, 3) uint8 grid of (N, 3, h, w) images in [0, 1], ``nrow`` per row, each upscaled
    ``scale`` times (nearest neighbour, so pixels stay visible), ``padding`` pixels apart."""
    tiles = to_uint8(images)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = tiles.shape
    if n == 0:
        raise ValueError('make_grid got no images')
    cols = max(1, min(int(nrow), n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, 3),
                   pad_value, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top:top + h, left:left + w] = tile
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG (parent folders are created)."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe version of a prompt."""
    return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:limit] or 'prompt'
