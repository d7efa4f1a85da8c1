"""Fréchet distance (FID) between generated and real image features.

``FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` between Gaussians fitted to two
feature sets. :class:`FIDMetric` computes it in-process with any registered feature extractor
(``ToyFeatureNet`` in the toy world, ``InceptionFeatures`` on real backbones), the real statistics
cached on disk. :class:`COCOFIDProtocol` hands a folder pair to the ``clean-fid`` package for
numbers comparable to the paper (its Inception weights must already be on disk).
"""
from __future__ import annotations

import logging
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from rankekit.evaluation.common import (RealImages, build_network, cache_key, cached_arrays,
                                        cached_floor, follow_device, generated_images,
                                        module_device, module_fingerprint)
from rankekit.registry import FEATURE_EXTRACTORS, METRICS


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), float64; unbiased (N - 1) covariance."""
    feats = _as_float64(features)
    if feats.ndim != 2:
        raise ValueError(f'features must be (N, D), got shape {feats.shape}')
    if len(feats) < 2:
        raise ValueError(f'feature statistics need at least 2 samples, got {len(feats)}')
    if not np.isfinite(feats).all():
        raise ValueError('features contain NaN or inf (check the images and the feature network)')
    return feats.mean(0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    from scipy import linalg  # lazy: scipy.linalg is slow to import
    with warnings.catch_warnings():  # "matrix is singular": we check the result ourselves
        warnings.simplefilter('ignore')
        return linalg.sqrtm(matrix)


def _root_is_bad(root: np.ndarray, product: np.ndarray, imag_tol: float) -> str | None:
    """Why ``root`` is not a usable square root of ``product`` (None when it is)."""
    if not np.isfinite(root).all():
        return 'not finite'
    scale = max(np.abs(root.real).max(), 1e-300)
    if np.iscomplexobj(root) and np.abs(np.diagonal(root).imag).max() > imag_tol * scale:
        return (f'imaginary part {np.abs(np.diagonal(root).imag).max():.3g} on the diagonal '
                f'(real scale {scale:.3g})')
    residual = np.linalg.norm(root @ root - product) / max(np.linalg.norm(product), 1e-300)
    if residual > 1e-3:
        return f'inaccurate (relative residual {residual:.3g})'
    return None


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, imag_tol: float = 1e-3) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``(sigma1 sigma2)^(1/2)`` comes from ``scipy.linalg.sqrtm``, guarded: when the result is not
    finite, not a square root (ill-conditioned / singular product, e.g. fewer samples than feature
    dimensions) or has a large imaginary part, both covariances get ``eps * I`` added and the root
    is taken again. A remaining imaginary part on the diagonal larger than ``imag_tol`` times the
    largest real entry raises ``ValueError``; a smaller one is round-off and dropped.
    Computed in float64; tiny negative results (round-off) are clamped to 0.
    """
    mu1, mu2 = np.atleast_1d(_as_float64(mu1)), np.atleast_1d(_as_float64(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f'frechet_distance: shapes do not match: mu1 {mu1.shape}, mu2 '
                         f'{mu2.shape}, sigma1 {sigma1.shape}, sigma2 {sigma2.shape} (need (D,) '
                         f'and (D, D))')
    for name, value in (('mu1', mu1), ('mu2', mu2), ('sigma1', sigma1), ('sigma2', sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f'frechet_distance: {name} contains NaN or inf')
    product = sigma1 @ sigma2
    root = _sqrtm(product)
    problem = _root_is_bad(root, product, imag_tol)
    if problem is not None:
        offset = eps * np.eye(d)
        product = (sigma1 + offset) @ (sigma2 + offset)
        root = _sqrtm(product)
        retry_problem = _root_is_bad(root, product, imag_tol)
        message = (f'frechet_distance: the square root of sigma1 @ sigma2 is {problem}, and still '
                   f'{retry_problem} after adding eps={eps:g} * I to both covariances. Use more '
                   f'samples than feature dimensions, a lower-dimensional feature, or a larger '
                   f'eps.')
        if retry_problem is not None and not retry_problem.startswith('inaccurate'):
            raise ValueError(message)
        if retry_problem is not None:  # finite and real: usable, but say so
            print_log(message, logger='current', level=logging.WARNING)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root).real
    return float(max(value, 0.0))


def fid_from_features(features1, features2, eps: float = 1e-6) -> float:
    """Fréchet distance between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2), eps=eps)


def extract_features(extractor, images: torch.Tensor) -> torch.Tensor:
    """(N, D) float features of images in [0, 1], on the extractor's device, without gradients.

    ``extractor`` is a module with ``features(images)`` (ToyFeatureNet, InceptionFeatures) or any
    callable returning (N, D).
    """
    fn = getattr(extractor, 'features', extractor)
    with torch.no_grad():
        feats = fn(images.to(module_device(extractor)))
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or len(feats) != len(images):
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(f'feature extractor {type(extractor).__name__} must return (N, D) '
                         f'features for N={len(images)} images, got {shape}')
    return feats.float()


@METRICS.register_module()
class FIDMetric(BaseMetric):
    """FID of generated images against cached real statistics, with any feature extractor.

    ``process`` extracts the features of the generated images (``data_samples[i]['image']`` in
    [0, 1]); ``compute_metrics`` returns ``fid`` (and ``num_images``). The real statistics are
    computed once from ``real`` (first ``num_real`` images) and kept in memory; with
    ``reference_cache`` they are also written to an ``.npz`` (``mu``, ``sigma``, ``n``, ``key``)
    whose key describes the extractor (class and weights hash) and the real set: a cache made for
    another extractor or real set is detected and recomputed. FID is biased by the sample count:
    compare runs at equal numbers of generated images.

    With ``floor_real`` (real images disjoint from ``real``, at least as many as the generated
    ones) the metric also reports ``real_floor``: the FID of the first N of them against the same
    reference, N = the number of generated images. It is what a perfect generator would score
    at this sample count, the floor every difference must be read against.

    Args:
        feature_extractor: ``FEATURE_EXTRACTORS`` config or a built module with ``features``.
        real: real images: dataset config, dataset or image folder (see
            :class:`rankekit.evaluation.common.RealImages`).
        reference_cache: ``.npz`` path for the real statistics, or None (memory only).
        num_real: real images used (None: all of ``real``).
        real_image_size: centre-crop + resize real folder images to this side.
        batch_size: batch size for the real images.
        eps: covariance offset of :func:`frechet_distance`'s guard.
        floor_real: real images disjoint from ``real`` for ``real_floor`` (same forms as
            ``real``), or None (no floor). Their features are cached beside the reference.
        prefix: metric name prefix (``fid/fid``).
    """

    default_prefix = 'fid'
    info_example = dict(type='FIDMetric',
                        feature_extractor=dict(type='ToyFeatureNet', width=8, feat_dim=16,
                                               pretrained=None),
                        real=dict(type='ToyShapes', split='val', num_samples=16))

    def __init__(self,
                 feature_extractor=dict(type='ToyFeatureNet', pretrained='toy://feature_net.pt'),
                 real=dict(type='ToyShapes', split='val', num_samples=1000),
                 reference_cache: str | None = None, num_real: int | None = None,
                 real_image_size: int | None = None, batch_size: int = 64, eps: float = 1e-6,
                 floor_real=None, prefix: str | None = None, collect_device: str = 'cpu',
                 collect_dir: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.extractor = build_network(feature_extractor, FEATURE_EXTRACTORS, 'feature_extractor')
        if isinstance(self.extractor, torch.nn.Module):
            self.extractor.eval()
        self.real = RealImages(real, num_real, real_image_size)
        self.reference_cache, self.batch_size, self.eps = reference_cache, batch_size, eps
        self.floor_real = (None if floor_real is None
                           else RealImages(floor_real, image_size=real_image_size))
        self._reference = self._floor_features = None

    def process(self, data_batch, data_samples) -> None:
        images = generated_images(data_samples)
        follow_device(self.extractor, images)
        if len(images):
            feats = extract_features(self.extractor, images).cpu().double().numpy()
            self.results.extend(feats)  # one row per sample: mmengine drops padded samples

    def reference_key(self) -> str:
        """The cache key: feature extractor (class, repr, weights hash) + real set description."""
        extractor = dict(cls=type(self.extractor).__qualname__,
                         repr=getattr(self.extractor, 'extra_repr', lambda: '')(),
                         weights_sha1=module_fingerprint(self.extractor))
        return cache_key(dict(metric='fid', extractor=extractor, real=self.real.describe()))

    def reference_statistics(self) -> dict:
        """``dict(mu, sigma, n)`` of the real features (computed once; cached if configured)."""
        if self._reference is None:
            def compute():
                mu, sigma = feature_statistics(self._real_features(self.real))
                return dict(mu=mu, sigma=sigma, n=np.array(len(self.real)))
            self._reference = cached_arrays(self.reference_cache, self.reference_key(), compute,
                                            logger=lambda msg: print_log(msg, logger='current'))
        return self._reference

    def _real_features(self, real: RealImages) -> np.ndarray:
        return np.concatenate([extract_features(self.extractor, batch).cpu().double().numpy()
                               for batch in real.batches(self.batch_size)])

    def real_floor(self, num: int) -> float:
        """FID of the first ``num`` ``floor_real`` images against the reference statistics."""
        if self._floor_features is None or num > len(self._floor_features):
            self._floor_features = cached_floor(
                self.reference_cache, self.reference_key(), self.floor_real, num,
                lambda: dict(features=self._real_features(self.floor_real)), 'FID')['features']
        mu, sigma = feature_statistics(self._floor_features[:num])
        ref = self.reference_statistics()
        return frechet_distance(mu, sigma, ref['mu'], ref['sigma'], eps=self.eps)

    def compute_metrics(self, results: list) -> dict:
        if len(results) < 2:
            raise ValueError(f'FIDMetric needs at least 2 generated images, got {len(results)}')
        mu, sigma = feature_statistics(np.stack(results))
        ref = self.reference_statistics()
        out = dict(fid=frechet_distance(mu, sigma, ref['mu'], ref['sigma'], eps=self.eps),
                   num_images=float(len(results)))
        if self.floor_real is not None:
            out['real_floor'] = self.real_floor(len(results))
        return out


# ------------------------------------------------------------------------------------------------
# the paper's protocol through clean-fid
# ------------------------------------------------------------------------------------------------
CLEAN_FID_INCEPTION_URL = ('https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/'
                           'metrics/inception-2015-12-05.pt')
PYTORCH_FID_INCEPTION_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                             'fid_weights/pt_inception-2015-12-05-6726825d.pth')
CLEAN_FID_MODES = ('clean', 'legacy_tensorflow', 'legacy_pytorch')


def clean_fid_weights_path(mode: str = 'clean') -> Path:
    """Where clean-fid reads its Inception weights for ``mode`` (it would download them there).

    'clean' / 'legacy_tensorflow': the TorchScript ``inception-2015-12-05.pt`` in ``/tmp`` (the
    working directory on Windows), a location clean-fid fixes; 'legacy_pytorch': the pytorch-fid
    weights in torch hub's checkpoint folder.
    """
    if mode not in CLEAN_FID_MODES:
        raise ValueError(f'clean-fid mode must be one of {CLEAN_FID_MODES}, got {mode!r}')
    if mode == 'legacy_pytorch':
        return Path(torch.hub.get_dir()) / 'checkpoints' / Path(PYTORCH_FID_INCEPTION_URL).name
    folder = Path('.') if platform.system() == 'Windows' else Path('/tmp')
    return folder / 'inception-2015-12-05.pt'


def _import_clean_fid():
    try:
        from cleanfid import fid
    except ImportError as exc:
        raise ImportError(
            'the COCO FID protocol needs the clean-fid package, which rankekit does not install: '
            '`pip install clean-fid` (it is not a rankekit dependency), then place its Inception '
            f'weights at {clean_fid_weights_path("clean")} (from {CLEAN_FID_INCEPTION_URL}). For '
            "an in-process FID use FIDMetric with feature_extractor=dict(type='InceptionFeatures'"
            ', weights_path=...).') from exc
    return fid


def compute_clean_fid(gen_folder: str | os.PathLike, real_folder: str | os.PathLike,
                      mode: str = 'clean', batch_size: int = 32, num_workers: int = 4,
                      device: str | torch.device | None = None) -> float:
    """FID between two image folders with ``cleanfid.fid.compute_fid`` (never downloads).

    Raises a clear error when clean-fid is not installed or its Inception weights are not at
    :func:`clean_fid_weights_path` (clean-fid would otherwise try to download them).
    """
    fid = _import_clean_fid()
    weights = clean_fid_weights_path(mode)
    if not weights.is_file():
        source = PYTORCH_FID_INCEPTION_URL if mode == 'legacy_pytorch' else CLEAN_FID_INCEPTION_URL
        raise FileNotFoundError(
            f"clean-fid's Inception weights for mode={mode!r} are not at {weights}; rankekit never "
            f'downloads. Fetch {source} on a machine with network and copy it to {weights} (the '
            f'location clean-fid reads).')
    for name, folder in (('gen_folder', gen_folder), ('real_folder', real_folder)):
        if not Path(folder).expanduser().is_dir():
            raise FileNotFoundError(f'{name} is not a folder: {folder}')
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return float(fid.compute_fid(str(Path(gen_folder).expanduser()),
                                 str(Path(real_folder).expanduser()), mode=mode,
                                 batch_size=batch_size, num_workers=num_workers,
                                 device=torch.device(device)))


class COCOFIDProtocol:
    """The paper's FID protocol: clean-fid (Inception-v3, 'clean' resize) of a folder of
    generated images (30k, COCO val2014 captions cycled) against the COCO val2014 image folder,
    both centre-cropped and resized to the model resolution beforehand.

    ``COCOFIDProtocol(real_folder)(gen_folder) -> float``. clean-fid is optional: install it
    yourself (``pip install clean-fid``) and place its weights (see
    :func:`clean_fid_weights_path`); a clear error says what is missing.
    """

    def __init__(self, real_folder: str | os.PathLike, mode: str = 'clean', batch_size: int = 32,
                 num_workers: int = 4, device: str | None = None):
        if mode not in CLEAN_FID_MODES:
            raise ValueError(f'clean-fid mode must be one of {CLEAN_FID_MODES}, got {mode!r}')
        self.real_folder, self.mode = real_folder, mode
        self.batch_size, self.num_workers, self.device = batch_size, num_workers, device

    def __call__(self, gen_folder: str | os.PathLike) -> float:
        return compute_clean_fid(gen_folder, self.real_folder, self.mode, self.batch_size,
                                 self.num_workers, self.device)
