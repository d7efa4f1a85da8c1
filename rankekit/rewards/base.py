"""The interface every reward implements: images in [0, 1] + prompts -> one score per image."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
from torch import nn


def snake_case(name: str) -> str:
    """``ClipScore`` -> ``clip_score``, ``HPSv2Reward`` -> ``hp_sv2_reward``."""
    name = re.sub(r'([^_])([A-Z][a-z]+)', r'\1_\2', name)
    return re.sub(r'([a-z0-9])([A-Z])', r'\1_\2', name).lower()


class BaseReward(nn.Module):
    """Base class of rewards: ``forward(images (N,3,H,W) in [0,1], prompts) -> scores (N,)``.

    Subclasses implement :meth:`score`; :meth:`forward` checks the inputs, calls it (under
    ``torch.no_grad()`` when the reward is not differentiable) and checks its output with
    :meth:`check_output`. A subclass that overrides ``forward`` itself must still return
    ``self.check_output(scores, len(images))``.

    Rewards are frozen: their own parameters never require grad and the module stays in eval
    mode even when a parent calls ``.train()``. When ``differentiable`` is True, gradients still
    flow from the scores back to the images (the decoder's reward-backprop term needs them).

    Args:
        name: used in logs (``reward/<name>/mean``) and messages; defaults to the snake_case
            class name.
        differentiable: whether the gradient w.r.t. the images is meaningful. ``None`` keeps the
            class default.
    """

    #: class default; an instance may override it through the constructor
    differentiable: bool = False

    def __init__(self, name: str | None = None, differentiable: bool | None = None):
        super().__init__()
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f'reward name must be a non-empty string, got {name!r}')
        self.name = name or snake_case(type(self).__name__)
        if differentiable is not None:
            self.differentiable = bool(differentiable)
        super().train(False)

    # -- frozen module ---------------------------------------------------------------------------
    def freeze(self) -> 'BaseReward':
        """Turn off gradients of every parameter and switch to eval mode; call after building."""
        for param in self.parameters():
            param.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> 'BaseReward':
        # a reward model must behave the same whether its parent is training or not
        return super().train(False)

    # -- interface ---------------------------------------------------------------------------
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores of ``images`` for ``prompts``: one float per image."""
        raise NotImplementedError(f'{type(self).__name__} must implement score(images, prompts)')

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = self.check_inputs(images, prompts)
        if self.differentiable:
            scores = self.score(images, prompts)
        else:
            with torch.no_grad():
                scores = self.score(images, prompts)
        return self.check_output(scores, len(images))

    def check_inputs(self, images: torch.Tensor, prompts: Sequence[str]) -> list[str]:
        """Raise a clear error unless ``images`` is (N, 3, H, W) float and ``prompts`` N strings."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = (tuple(images.shape) if isinstance(images, torch.Tensor)
                     else type(images).__name__)
            raise ValueError(f"reward '{self.name}' expects images as a float tensor (N, 3, H, W) "
                             f'in [0, 1], got {shape}')
        if not images.is_floating_point():
            raise ValueError(f"reward '{self.name}' expects float images in [0, 1], got dtype "
                             f'{images.dtype}; divide uint8 images by 255')
        if isinstance(prompts, str):
            raise ValueError(f"reward '{self.name}' expects a list of prompts (one per image), got "
                             f'a single string')
        prompts = list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"reward '{self.name}' got {len(images)} images but {len(prompts)} "
                             f'prompts; pass one prompt per image (repeat a prompt for its group)')
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"reward '{self.name}' expects prompts as strings, got "
                             f'{type(bad[0]).__name__} ({bad[0]!r})')
        return prompts

    def check_output(self, scores, n: int) -> torch.Tensor:
        """Return ``scores`` as a float tensor of shape (n,), or raise a clear error.

        Accepts a tensor, a numpy array or a list of numbers. Raises when the shape is not (n,).
        NaN/inf scores are returned as they are: the trainer counts them and skips that update
        (``skipped_nonfinite``), so a rare bad score never stops a long run nor reaches the
        weights.
        """
        if isinstance(scores, np.ndarray):
            scores = torch.from_numpy(np.asarray(scores, dtype=np.float32))
        elif isinstance(scores, (list, tuple)):
            try:
                scores = torch.tensor([float(s) for s in scores])
            except (TypeError, ValueError) as exc:
                raise TypeError(f"reward '{self.name}' returned a list that is not a list of "
                                f'numbers ({exc}); a reward must return one score '
                                'per image') from exc
        elif not isinstance(scores, torch.Tensor):
            raise TypeError(f"reward '{self.name}' returned {type(scores).__name__}; a reward must "
                            f'return a tensor, array or list with one score per image')
        if tuple(scores.shape) != (n,):
            raise ValueError(f"reward '{self.name}' returned shape {tuple(scores.shape)} for {n} "
                             f'images; a reward must return one score per image, shape ({n},)')
        if not scores.is_floating_point():
            scores = scores.float()
        return scores

    def extra_repr(self) -> str:
        return f'name={self.name!r}, differentiable={self.differentiable}'
