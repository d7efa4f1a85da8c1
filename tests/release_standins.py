"""The stand-ins of the official-iteration reference (tests/data/official_step/README.md), rebuilt
in plain torch from the data file's own description: a fixed-caption text encoder (T5's place),
a tiny differentiable conv reward (CLIP's place) and LPIPS with a seeded random VGG16 trunk.

They are registered under names that say what they are, for configs/ranke/release_exact_tiny.py.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from rankekit.registry import DATASETS, REWARDS, TEXT_ENCODERS
from rankekit.rewards.base import BaseReward

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_STEP = REPO_ROOT / 'tests' / 'data' / 'official_step' / 'official_step_ref.pt'
# torchvision vgg16 `features` indices of the 13 convolutions (cfg D)
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


@lru_cache(maxsize=1)
def official_step(path: str = str(OFFICIAL_STEP)) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


@TEXT_ENCODERS.register_module()
class ReleaseFixedCaptions(nn.Module):
    """T5 stand-in: the reference's fixed (B, 120, 32) caption embeddings, looked up by prompt."""

    def __init__(self, reference: str = str(OFFICIAL_STEP)):
        super().__init__()
        data = official_step(reference)
        self.prompts = json.loads(data['prompts'])
        self.register_buffer('emb', data['caption_emb'].double())
        self.register_buffer('emb_mask', data['caption_mask'].clone())

    def forward(self, prompts):
        idx = torch.tensor([self.prompts.index(p) for p in prompts])
        return self.emb[idx], self.emb_mask[idx]


@DATASETS.register_module()
class ReleaseRealImages(torch.utils.data.Dataset):
    """The reference's two real images (in [0, 1]) with their prompts."""

    def __init__(self, reference: str = str(OFFICIAL_STEP)):
        data = official_step(reference)
        self.images, self.prompts = data['real_images_01'], json.loads(data['prompts'])

    def __len__(self):
        return len(self.prompts)

    def __getitem__(self, i):
        return dict(image=self.images[i], caption=self.prompts[i])


@REWARDS.register_module()
class ReleaseToyReward(BaseReward):
    """CLIP stand-in: r = 10 <tanh(conv2(tanh(conv1(2x - 1)))).mean(hw), vecs[prompt]>."""

    differentiable = True

    def __init__(self, reference: str = str(OFFICIAL_STEP), name: str = 'toy'):
        super().__init__(name=name, differentiable=True)
        data = official_step(reference)
        self.prompts = json.loads(data['prompts'])
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.conv2 = nn.Conv2d(16, 16, 3, 2, 1)
        self.register_buffer('vecs', torch.zeros(2, 16))
        self.load_state_dict({k: v.double() for k, v in data['reward_state'].items()})
        self.double().freeze()

    def score(self, images, prompts):
        h = torch.tanh(self.conv1(images * 2 - 1))
        h = torch.tanh(self.conv2(h)).mean(dim=(2, 3))
        idx = torch.tensor([self.prompts.index(p) for p in prompts], device=h.device)
        return 10.0 * (h * self.vecs[idx]).sum(1)


def write_lpips_files(folder: Path, reference: str = str(OFFICIAL_STEP)) -> tuple[Path, Path]:
    """The reference's LPIPS as two local files LPIPSLoss reads: the seeded random VGG16 trunk
    (torchvision ``features.<i>`` keys, fp64) and the lin layers; checked against the stored
    per-conv checksums."""
    data = official_step(reference)
    arch = json.loads(data['perceptual_arch'])
    g = torch.Generator().manual_seed(21)
    trunk, in_ch = {}, 3
    for index, width in zip(VGG16_CONVS, VGG16_WIDTHS):
        shape = (width, in_ch, 3, 3)
        weight = torch.randn(shape, generator=g, dtype=torch.float64) * math.sqrt(2 / (in_ch * 9))
        trunk[f'features.{index}.weight'] = weight
        trunk[f'features.{index}.bias'] = torch.zeros(width, dtype=torch.float64)
        in_ch = width
    for check in arch['trunk']['checks']:
        weight = trunk[f"features.{check['module'].split('.')[1]}.weight"]
        assert list(weight.shape) == check['shape'], check['module']
        assert math.isclose(float(weight.sum()), check['weight_sum'], rel_tol=1e-9, abs_tol=1e-9)
        assert torch.allclose(weight.flatten()[:4], torch.tensor(check['first4'],
                                                                 dtype=torch.float64))
    folder.mkdir(parents=True, exist_ok=True)
    trunk_file, lin_file = folder / 'vgg16_seed21.pth', folder / 'lpips_lin.pth'
    torch.save(trunk, trunk_file)
    torch.save({k: v.double() for k, v in data['perceptual_state'].items()
                if k.startswith('lin')}, lin_file)
    return trunk_file, lin_file
