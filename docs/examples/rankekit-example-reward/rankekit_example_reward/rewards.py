"""A custom reward registered into rankekit's REWARDS registry.

Colourfulness (Hasler and Suesstrunk, 2003) of each image: sqrt(std_rg^2 + std_yb^2)
+ 0.3 * sqrt(mean_rg^2 + mean_yb^2), on RGB values in [0, 1]. It needs no weights, is
differentiable in the image, and ignores the prompt — a reward that a policy can easily hack,
which makes it a good probe of the decoder anchors.
"""
import torch

from rankekit.registry import REWARDS
from rankekit.rewards.base import BaseReward


@REWARDS.register_module()
class Colourfulness(BaseReward):
    """Colourfulness of the image (Hasler & Suesstrunk), prompt-independent, differentiable."""

    differentiable = True
    info_example = dict(type='Colourfulness', scale=1.0)

    def __init__(self, scale: float = 1.0, name: str | None = None):
        super().__init__(name=name)
        self.scale = scale

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        r, g, b = images.unbind(dim=1)
        rg = r - g
        yb = 0.5 * (r + g) - b
        std = torch.sqrt(rg.flatten(1).var(1) + yb.flatten(1).var(1) + 1e-12)
        mean = torch.sqrt(rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2 + 1e-12)
        return self.check_output(self.scale * (std + 0.3 * mean), len(prompts))
