"""Latent covariate shift (LCS): how far the policy's code distribution drifts from real images'.

With ``p_real`` the normalised histogram over the K codebook entries of the codes of real images
(all positions pooled) and ``p_model`` the same histogram of the policy's sampled tokens:

- ``lcs/kl``: ``KL(p_model || p_real)`` in nats, after epsilon smoothing (:func:`smooth`);
- ``lcs/entropy_bits``: ``-sum p log2 p`` of ``p_model`` (at most ``log2 K``);
- ``lcs/real_floor``: what a model with no shift at all scores at this sample count: the same KL
  for as many images of a disjoint real set (``floor_real``) as there are samples; without a
  ``floor_real``, between two disjoint halves of the real set (a looser proxy: half the real set,
  any sample count);
- ``lcs/real_entropy_bits``: entropy of ``p_real``.
"""
from __future__ import annotations

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from rankekit.evaluation.common import (RealImages, build_network, cache_key, cached_arrays,
                                        cached_floor, follow_device, generated_field,
                                        module_device, module_fingerprint)
from rankekit.registry import METRICS, TOKENIZERS


def _as_codes(codes) -> np.ndarray:
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    elif isinstance(codes, (list, tuple)):
        codes = np.concatenate([_as_codes(c).reshape(-1) for c in codes]) if len(codes) else \
            np.zeros(0, dtype=np.int64)
    codes = np.asarray(codes)
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f'codes must be integer codebook indices, got dtype {codes.dtype}')
    return codes.astype(np.int64, copy=False)


def code_histogram(codes, K: int) -> np.ndarray:
    """Counts (K,) int64 of codebook indices; ``codes`` of any shape (tensor, array or a list of
    per-image code rows), all positions pooled."""
    if not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f'codebook size K must be a positive int, got {K!r}')
    flat = _as_codes(codes).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= K):
        raise ValueError(f'codes must lie in [0, {K}) (codebook size K={K}); got range '
                         f'[{flat.min()}, {flat.max()}]')
    return np.bincount(flat, minlength=K).astype(np.int64)


def smooth(counts, eps: float = 1e-6) -> np.ndarray:
    """Probabilities with epsilon smoothing: ``p = counts / sum(counts)``, then add ``eps`` to every
    bin and renormalise: ``(p + eps) / (1 + K * eps)``. Every bin gets a non-zero probability, so
    the KL stays finite when the policy uses a code no real image uses."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or not counts.size:
        raise ValueError(f'counts must be a 1-D histogram, got shape {counts.shape}')
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise ValueError('counts must be finite and non-negative')
    total = counts.sum()
    if total <= 0:
        raise ValueError('the histogram is empty (no codes counted)')
    if eps < 0:
        raise ValueError(f'eps must be >= 0, got {eps}')
    p = counts / total + eps
    return p / p.sum()


def lcs_kl(p_model_counts, p_real_counts, eps: float = 1e-6) -> float:
    """``KL(p_model || p_real)`` in nats between two code histograms (counts or probabilities),
    both smoothed by :func:`smooth` with the same ``eps``."""
    p_model_counts, p_real_counts = np.asarray(p_model_counts), np.asarray(p_real_counts)
    if p_model_counts.shape != p_real_counts.shape:
        raise ValueError(f'histograms differ in size: model {p_model_counts.shape}, real '
                         f'{p_real_counts.shape} (same codebook size K needed)')
    p, q = smooth(p_model_counts, eps), smooth(p_real_counts, eps)
    support = p > 0  # 0 log 0 = 0 (only possible when eps = 0)
    if eps == 0 and (q[support] == 0).any():
        return float('inf')
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def token_entropy(counts) -> float:
    """Entropy ``-sum p log2 p`` in bits of a code histogram (no smoothing; 0 log 0 = 0)."""
    p = smooth(counts, eps=0.0)
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)) + 0.0)  # + 0.0: no '-0.0' for a one-code histogram


def _code_rows(codes) -> np.ndarray:
    """Per-image code rows: (N, L) array from a tensor / array (N, L) or a list of N rows."""
    if isinstance(codes, (list, tuple)):
        rows = [_as_codes(c).reshape(-1) for c in codes]
        if len({len(r) for r in rows}) > 1:
            raise ValueError('code rows have different lengths; every image needs L codes')
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)
    codes = _as_codes(codes)
    if codes.ndim != 2:
        raise ValueError(f'codes of a set of images must be (N, L), got shape {codes.shape}')
    return codes


def real_floor(real_codes, K: int, eps: float = 1e-6) -> float:
    """The "Real" floor: ``KL(p_A || p_B)`` between the code histograms of two disjoint real sets
    of equal size, A = the first ``N // 2`` images of ``real_codes`` (N, L), B = the next ``N // 2``
    (an odd last image is left out)."""
    rows = _code_rows(real_codes)
    half = len(rows) // 2
    if half < 1:
        raise ValueError(f'the real floor needs at least 2 real images, got {len(rows)}')
    first, second = rows[:half], rows[half:2 * half]
    return lcs_kl(code_histogram(first, K), code_histogram(second, K), eps)


def lcs_from_codes(model_codes, real_codes, K: int, eps: float = 1e-6,
                   floor_codes=None) -> dict:
    """All LCS numbers from codes: the policy's sampled tokens (any shape, pooled) and the real
    images' codes (N, L).

    ``floor_codes``: codes (M, L) of real images disjoint from ``real_codes``, one per generated
    sample; the floor is then ``KL(p_floor || p_real)``, what a perfect model scores. Without
    them, :func:`real_floor` of two halves of ``real_codes``.
    Returns ``dict(kl, entropy_bits, real_floor, real_entropy_bits)`` (see the module docstring).
    """
    model_counts, real_counts = code_histogram(model_codes, K), code_histogram(real_codes, K)
    if model_counts.sum() == 0:
        raise ValueError('no model codes given')
    floor = (real_floor(real_codes, K, eps) if floor_codes is None
             else lcs_kl(code_histogram(_code_rows(floor_codes), K), real_counts, eps))
    return dict(kl=lcs_kl(model_counts, real_counts, eps), entropy_bits=token_entropy(model_counts),
                real_floor=floor, real_entropy_bits=token_entropy(real_counts))


# parameters that decide a VQ tokenizer's codes (the decoder does not: RankE trains it)
_ENCODER_PREFIXES = ('encoder.', 'quant_conv.', 'quantize.')


@METRICS.register_module()
class LCSMetric(BaseMetric):
    """Latent covariate shift: KL of the policy's code histogram to real images' codes, entropy.

    ``process`` pools the sampled tokens of the generated samples (``data_samples[i]['tokens']``;
    no decoding needed); ``compute_metrics`` returns ``kl``, ``entropy_bits``, ``real_floor`` and
    ``real_entropy_bits`` (prefixed ``lcs/``; see :mod:`rankekit.evaluation.lcs`). The real codes
    are the tokenizer's codes of the first ``num_real`` real images (images in [0, 1] mapped to
    [-1, 1], ``images_to_codes``), computed once and optionally cached in ``reference_cache``
    (keyed by the tokenizer's encoder/codebook weights and the real set).

    Args:
        tokenizer: ``TOKENIZERS`` config or a built tokenizer with ``images_to_codes``.
        real: real images: dataset config, dataset or image folder.
        num_real: real images used (None: all).
        eps: smoothing of the histograms (:func:`smooth`).
        codebook_size: K; default the tokenizer's ``codebook_size``.
        floor_real: real images disjoint from ``real`` (dataset config, dataset or folder), at
            least as many as generated samples: ``lcs/real_floor`` is then the KL of the first
            N of them for N samples (what a perfect model scores). None: two halves of ``real``.
        reference_cache: ``.npz`` path for the real codes, or None (memory only).
        real_image_size: centre-crop + resize real folder images to this side.
        batch_size: batch size for tokenizing real images.
        prefix: metric name prefix (``lcs/kl``, ...).
    """

    default_prefix = 'lcs'
    info_example = dict(type='LCSMetric',
                        tokenizer=dict(type='VQModel', ch=32, num_res_blocks=1,
                                       encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
                                       z_channels=16, codebook_size=32, codebook_embed_dim=4,
                                       image_size=16),
                        real=dict(type='ToyShapes', split='val', num_samples=16, image_size=16))

    def __init__(self, tokenizer, real=dict(type='ToyShapes', split='val', num_samples=1000),
                 num_real: int | None = None, eps: float = 1e-6, codebook_size: int | None = None,
                 floor_real=None, reference_cache: str | None = None,
                 real_image_size: int | None = None, batch_size: int = 64,
                 prefix: str | None = None, collect_device: str = 'cpu',
                 collect_dir: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.tokenizer = build_network(tokenizer, TOKENIZERS, 'tokenizer')
        if not hasattr(self.tokenizer, 'images_to_codes'):
            raise TypeError(f'tokenizer {type(self.tokenizer).__name__} has no images_to_codes()')
        if isinstance(self.tokenizer, torch.nn.Module):
            self.tokenizer.eval()
        self.codebook_size = codebook_size or getattr(self.tokenizer, 'codebook_size', None)
        if not self.codebook_size:
            raise ValueError('codebook_size is unknown: the tokenizer has no codebook_size; pass '
                             'codebook_size=K')
        self.real = RealImages(real, num_real, real_image_size)
        self.floor_real = (None if floor_real is None
                           else RealImages(floor_real, image_size=real_image_size))
        self.eps, self.reference_cache, self.batch_size = eps, reference_cache, batch_size
        self._real_codes = self._floor_codes = None

    def process(self, data_batch, data_samples) -> None:
        for tokens in generated_field(data_samples, 'tokens'):
            tokens = torch.as_tensor(tokens)
            follow_device(self.tokenizer, tokens)  # the real codes then come from the same device
            self.results.append(tokens.detach().cpu().numpy().astype(np.int32).reshape(-1))

    def reference_key(self) -> str:
        tokenizer = dict(cls=type(self.tokenizer).__qualname__,
                         weights_sha1=module_fingerprint(self.tokenizer, _ENCODER_PREFIXES))
        return cache_key(dict(metric='lcs', tokenizer=tokenizer, real=self.real.describe()))

    @torch.no_grad()
    def _codes_of(self, real: RealImages) -> dict:
        device = module_device(self.tokenizer)
        codes = [self.tokenizer.images_to_codes(batch.to(device) * 2 - 1).cpu().numpy()
                 for batch in real.batches(self.batch_size)]
        return dict(codes=np.concatenate(codes).astype(np.int32))

    def real_codes(self) -> np.ndarray:
        """Codes (num_real, L) int32 of the real images (computed once; cached if configured)."""
        if self._real_codes is None:
            self._real_codes = cached_arrays(
                self.reference_cache, self.reference_key(), lambda: self._codes_of(self.real),
                logger=lambda msg: print_log(msg, logger='current'))['codes']
        return self._real_codes

    def floor_codes(self, num: int) -> np.ndarray:
        """Codes (num, L) of the first ``num`` ``floor_real`` images (cached beside the real
        codes, with ``_floor`` added to the file name)."""
        if self._floor_codes is None or num > len(self._floor_codes):
            self._floor_codes = cached_floor(
                self.reference_cache, self.reference_key(), self.floor_real, num,
                lambda: self._codes_of(self.floor_real), 'LCS')['codes']
        return self._floor_codes[:num]

    def compute_metrics(self, results: list) -> dict:
        if not results:
            raise ValueError('LCSMetric got no generated tokens')
        floor = None if self.floor_real is None else self.floor_codes(len(results))
        return lcs_from_codes(results, self.real_codes(), self.codebook_size, self.eps, floor)
