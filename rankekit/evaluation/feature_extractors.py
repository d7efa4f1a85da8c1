"""Feature networks for FID-style metrics on real backbones: Inception-v3 pool features.

The weights are read from a local file only (no download at run time). Two files work:

- torchvision's ``inception_v3`` ``IMAGENET1K_V1`` weights (``inception_v3_google-0cc3c7bd.pth``);
- the FID Inception weights ``pt_inception-2015-12-05-6726825d.pth`` (the TF FID graph ported to
  PyTorch, as pytorch-fid / clean-fid use): 1008 classes and slightly different pooling in the
  Mixed blocks, which ``variant='fid'`` reproduces. Use this file for numbers comparable to
  published FIDs.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rankekit.registry import FEATURE_EXTRACTORS

INCEPTION_SOURCES = (
    "torchvision's inception_v3 IMAGENET1K_V1 weights "
    '(https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth) or the FID Inception '
    'weights pt_inception-2015-12-05-6726825d.pth (https://github.com/mseitzer/pytorch-fid/'
    'releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)')

# the Inception-v3 trunk up to the global pool, in order
_TRUNK = ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'maxpool1', 'Conv2d_3b_1x1',
          'Conv2d_4a_3x3', 'maxpool2', 'Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b',
          'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c', 'avgpool')


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    # the TF graph averages only over real pixels at the borders
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


@functools.lru_cache(maxsize=None)
def _fid_blocks():
    """Mixed-block classes of the FID Inception graph (built lazily: torchvision is heavy).

    Same sub-modules (so the same state_dict keys) as torchvision's blocks; only the pooling of
    the pool branch differs: no padding in the average, and a max pool in the last block.
    """
    from torchvision.models import inception as tv

    class FIDInceptionA(tv.InceptionA):
        def forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_no_pad(x))], 1)

    class FIDInceptionC(tv.InceptionC):
        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = x
            for i in range(1, 6):
                bd = getattr(self, f'branch7x7dbl_{i}')(bd)
            return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_no_pad(x))], 1)

    class FIDInceptionE(tv.InceptionE):
        max_pool = False  # Mixed_7c of the TF graph max-pools its pool branch

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool
                      else _avg_pool_no_pad(x))
            return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)

    class FIDInceptionEMax(FIDInceptionE):
        max_pool = True

    return FIDInceptionA, FIDInceptionC, FIDInceptionE, FIDInceptionEMax


def _build_inception(variant: str, init_weights: bool) -> nn.Module:
    from torchvision.models import inception as tv
    if variant == 'torchvision':
        return tv.Inception3(num_classes=1000, aux_logits=False, transform_input=False,
                             init_weights=init_weights)
    block_a, block_c, block_e, block_e_max = _fid_blocks()
    blocks = [tv.BasicConv2d, block_a, tv.InceptionB, block_c, tv.InceptionD, block_e,
              tv.InceptionAux]
    net = tv.Inception3(num_classes=1008, aux_logits=False, transform_input=False,
                        init_weights=init_weights, inception_blocks=blocks)
    net.Mixed_7c = block_e_max(2048)
    if init_weights:  # the replaced block needs the same init as the rest
        for m in net.Mixed_7c.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-2, b=2)
    return net


@FEATURE_EXTRACTORS.register_module()
class InceptionFeatures(nn.Module):
    """Inception-v3 2048-d pool features for FID, from a local weights file.

    Images in [0, 1] (N, 3, H, W) are resized to ``resize`` x ``resize`` with bilinear
    interpolation and mapped to [-1, 1] (what both weight files expect); every op is a
    differentiable torch op. The network is frozen and in eval mode.

    Args:
        weights_path: local file with torchvision's IMAGENET1K_V1 inception_v3 weights or the FID
            ``pt_inception-2015-12-05`` weights (see :data:`INCEPTION_SOURCES`).
        random_init: allow ``weights_path=None`` with random weights (tests only: such features
            mean nothing).
        variant: 'auto' (from the file: 1008 classes = 'fid'), 'torchvision' or 'fid'.
        resize: input side length (299 as Inception was trained).
    """

    info_example = dict(type='InceptionFeatures', weights_path=None, random_init=True)
    feature_dim = 2048

    def __init__(self, weights_path: str | None = None, random_init: bool = False,
                 variant: str = 'auto', resize: int = 299):
        super().__init__()
        if variant not in ('auto', 'torchvision', 'fid'):
            raise ValueError(f"variant must be 'auto', 'torchvision' or 'fid', got {variant!r}")
        from rankekit.utils.weights import (WeightsFileError, extract_state_dict,
                                            load_model_weights, load_weights_file)
        what = 'Inception-v3 weights (InceptionFeatures.weights_path)'
        if weights_path is None:
            if not random_init:
                raise ValueError(
                    'InceptionFeatures needs weights_path: a local file with ' + INCEPTION_SOURCES
                    + '. Download it once, put it e.g. under data/weights/ and set weights_path '
                    'in the config (random_init=True gives meaningless random features, for '
                    'tests only).')
        elif not Path(weights_path).expanduser().is_file():
            raise WeightsFileError(
                f'{what} not found: {weights_path}. It must be ' + INCEPTION_SOURCES
                + f'; download it once and put it at {weights_path} (or point weights_path at '
                'your copy).')
        elif variant == 'auto':  # the FID graph has 1008 classes, torchvision's 1000
            state = extract_state_dict(load_weights_file(weights_path, what=what,
                                                         source=INCEPTION_SOURCES))
            fc = state.get('fc.weight')
            variant = 'fid' if fc is not None and fc.shape[0] == 1008 else 'torchvision'
            del state
        if variant == 'auto':
            variant = 'torchvision'
        self.variant, self.resize = variant, resize
        self.net = _build_inception(variant, init_weights=weights_path is None)
        if weights_path is not None:
            load_model_weights(self.net, weights_path, strict=True, ignore=r'^AuxLogits\.',
                               what=what, source=INCEPTION_SOURCES)
        self.net.fc = nn.Identity()  # only the pool features are used
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> 'InceptionFeatures':
        return super().train(False)  # batch norm statistics must never update

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048) pool features of images in [0, 1]."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError('InceptionFeatures expects images (N, 3, H, W) in [0, 1], '
                             f'got {shape}')
        x = images.float()
        if tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode='bilinear',
                              align_corners=False)
        x = x * 2 - 1
        for name in _TRUNK:
            x = getattr(self.net, name)(x)
        return x.flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def extra_repr(self) -> str:
        return f'variant={self.variant!r}, resize={self.resize}'
