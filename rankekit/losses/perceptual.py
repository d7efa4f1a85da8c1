"""Perceptual distances for the decoder: LPIPS (real backbones) and its toy-world stand-in.

Both take images in [-1, 1] (the VQ decoder's range, as LPIPS does) and return one distance per
sample (``reduction='none'``) or their mean, times ``loss_weight``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from rankekit.registry import FEATURE_EXTRACTORS, LOSSES

_REDUCTIONS = ('none', 'mean')


def _check_pair(pred: torch.Tensor, target: torch.Tensor, who: str) -> None:
    if pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f'{who} expects images (N, 3, H, W) in [-1, 1], got {tuple(pred.shape)}')
    if pred.shape != target.shape:
        raise ValueError(f'{who}: pred {tuple(pred.shape)} and target {tuple(target.shape)} '
                         f'must have the same shape')


def _reduce(dist: torch.Tensor, reduction: str, weight: float) -> torch.Tensor:
    dist = dist * weight
    return dist.mean() if reduction == 'mean' else dist


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # LPIPS normalises each position's channel vector to unit length before comparing
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)


@LOSSES.register_module()
class ToyPerceptualLoss(nn.Module):
    """LPIPS-style distance on a :class:`~rankekit.toy.feature_net.ToyFeatureNet`'s activations.

    For each conv block's activations, normalise every position's channel vector to unit length,
    take the squared difference summed over channels and averaged over positions; average over
    the blocks. No learned weights (LPIPS's linear layers are calibrated on human judgements the
    toy world does not have). 0 for identical inputs; differentiable w.r.t. both inputs; the net
    itself is frozen.

    Args:
        net: a ToyFeatureNet config (``dict(type='ToyFeatureNet', pretrained=path)``) or module.
            Use a trained net: random conv features give a much weaker distance (a warning says so).
        layers: indices of the blocks to use (default: all four).
        reduction: 'mean' -> scalar, 'none' -> (N,).
        loss_weight: factor applied to the distance.
    """

    info_example = dict(type='ToyPerceptualLoss',
                        net=dict(type='ToyFeatureNet', width=8, feat_dim=16, pretrained=None))

    def __init__(self, net: dict | nn.Module | None = None,
                 layers: tuple[int, ...] | None = None, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__()
        net = dict(type='ToyFeatureNet') if net is None else net
        if isinstance(net, dict):
            if net.get('pretrained') is None:
                warnings.warn('ToyPerceptualLoss: the ToyFeatureNet has random weights '
                              "(net.pretrained=None); set net=dict(type='ToyFeatureNet', "
                              'pretrained=<toy feature-net weights>) for a meaningful distance')
            net = FEATURE_EXTRACTORS.build(net)
        if not hasattr(net, 'activations'):
            raise TypeError(f'ToyPerceptualLoss needs a network with activations(images), got '
                            f'{type(net).__name__}')
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.layers = None if layers is None else tuple(layers)
        self.reduction = _check_reduction(reduction)
        self.loss_weight = loss_weight

    def train(self, mode: bool = True) -> 'ToyPerceptualLoss':
        super().train(mode)
        self.net.eval()  # the feature net never trains here
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, 'ToyPerceptualLoss')
        n = len(pred)
        # one pass over both: the net sees [0, 1] images
        acts = self.net.activations((torch.cat([pred, target]) + 1) / 2)
        if self.layers is not None:
            acts = [acts[i] for i in self.layers]
        dist = 0
        for a in acts:
            a = _unit_channels(a)
            dist = dist + (a[:n] - a[n:]).pow(2).sum(1).mean((1, 2))
        return _reduce(dist / len(acts), self.reduction, self.loss_weight)


# lpips backbones: torchvision architecture, state_dict source, number of `features` layers used
_LPIPS_BACKBONES = {
    'vgg': ('vgg16', "torchvision's vgg16 IMAGENET1K_V1 weights "
                     '(https://download.pytorch.org/models/vgg16-397923af.pth)'),
    'alex': ('alexnet', "torchvision's alexnet IMAGENET1K_V1 weights "
                        '(https://download.pytorch.org/models/alexnet-owt-7be5be79.pth)'),
}


def _load_lpips_backbone(trunk: nn.Module, path: str, arch: str, source: str) -> None:
    """Copy torchvision ``features.<i>.*`` weights into lpips's ``slice<k>.<i>.*`` modules."""
    from rankekit.utils.weights import WeightsFileError, extract_state_dict, load_weights_file
    what = f'LPIPS {arch} backbone weights (LPIPSLoss.backbone_weights)'
    state = extract_state_dict(load_weights_file(path, what=what, source=source))
    by_index = {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
    own = trunk.state_dict()
    mapped = {k: by_index.get(k.split('.', 1)[1]) for k in own}  # 'slice1.0.weight' -> '0.weight'
    missing = [k for k, v in mapped.items() if v is None]
    mismatched = [k for k, v in mapped.items() if v is not None and v.shape != own[k].shape]
    if missing or mismatched:
        raise WeightsFileError(
            f'{what} {path} does not fit lpips {arch}: '
            + (f'{len(missing)} missing keys (e.g. features.{missing[0].split(".", 1)[1]})'
               if missing else '')
            + (f'{"; " if missing else ""}{len(mismatched)} shape mismatches (e.g. {mismatched[0]})'
               if mismatched else '')
            + f'. It must be {source}.')
    trunk.load_state_dict(mapped, strict=True)


@LOSSES.register_module()
class LPIPSLoss(nn.Module):
    """LPIPS perceptual distance (the ``lpips`` package) with a backbone read from a local file.

    The ``lpips`` package downloads its VGG/AlexNet trunk from torchvision unless told not to;
    here it is built with random trunk weights and the trunk is then loaded from
    ``backbone_weights``. The calibrated linear layers ship inside the ``lpips`` package
    (``lin_weights`` overrides the file). Inputs in [-1, 1].

    Args:
        net: 'vgg' (the VQ/LlamaGen recipe) or 'alex'.
        backbone_weights: local file with torchvision's vgg16 / alexnet IMAGENET1K_V1 state_dict.
        random_backbone: allow ``backbone_weights=None`` (tests only; not a perceptual loss).
        lin_weights: the LPIPS linear-layer file (default: the one inside the lpips package).
        reduction: 'mean' -> scalar, 'none' -> (N,).
        loss_weight: factor applied to the distance.
    """

    info_example = dict(type='LPIPSLoss', net='alex', backbone_weights=None, random_backbone=True)

    def __init__(self, net: str = 'vgg', backbone_weights: str | None = None,
                 random_backbone: bool = False, lin_weights: str | None = None,
                 reduction: str = 'mean', loss_weight: float = 1.0):
        super().__init__()
        if net not in _LPIPS_BACKBONES:
            raise ValueError(f"LPIPSLoss net must be one of {sorted(_LPIPS_BACKBONES)}, "
                             f"got {net!r}")
        arch, source = _LPIPS_BACKBONES[net]
        self.reduction = _check_reduction(reduction)
        self.loss_weight, self.net_name = loss_weight, net
        # check the file before building anything: a missing asset should fail fast and clearly
        if backbone_weights is None:
            if not random_backbone:
                raise ValueError(
                    f'LPIPSLoss(net={net!r}) needs backbone_weights: a local file with {source}. '
                    'Download it once, put it e.g. under data/weights/ and set backbone_weights '
                    '(random_backbone=True builds a random trunk, for tests only).')
            warnings.warn(f'LPIPSLoss(net={net!r}) uses a RANDOM {arch} backbone: this is not a '
                          f'real perceptual loss; set backbone_weights to {source}')
        elif not Path(backbone_weights).expanduser().is_file():
            from rankekit.utils.weights import WeightsFileError
            raise WeightsFileError(
                f'LPIPS {arch} backbone weights not found: {backbone_weights}. It must be '
                f'{source}; download it once and put it at {backbone_weights} (or point '
                'backbone_weights at your copy).')
        try:
            import lpips
        except ImportError as exc:
            raise ImportError('LPIPSLoss needs the lpips package: pip install "rankekit[lpips]" '
                              '(lpips==0.1.4)') from exc
        from rankekit.utils.weights import load_model_weights
        # pretrained=False: the linear layers are loaded below through rankekit's safe loader
        with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=`
            warnings.filterwarnings('ignore', message=".*(pretrained|weight enum).*")
            self.lpips = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        if lin_weights is None:
            lin_weights = str(Path(lpips.__file__).parent / 'weights' / 'v0.1' / f'{net}.pth')
        # the file holds `lin<k>` only: `lins.<k>` aliases them, trunk and input scaling are apart
        load_model_weights(self.lpips, lin_weights, strict=True,
                           ignore=r'^(net|scaling_layer|lins)\.',
                           what=f'LPIPS {net} linear layers',
                           source='the lpips==0.1.4 package (lpips/weights/v0.1/)')
        if backbone_weights is not None:
            _load_lpips_backbone(self.lpips.net, str(Path(backbone_weights).expanduser()),
                                 arch, source)
        for p in self.lpips.parameters():
            p.requires_grad_(False)
        self.lpips.eval()

    def train(self, mode: bool = True) -> 'LPIPSLoss':
        super().train(mode)
        self.lpips.eval()  # dropout in the linear layers must stay off
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, 'LPIPSLoss')
        dist = self.lpips(pred, target).flatten()
        return _reduce(dist, self.reduction, self.loss_weight)

    def extra_repr(self) -> str:
        return f'net={self.net_name!r}, reduction={self.reduction!r}'
