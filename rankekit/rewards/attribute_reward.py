"""The toy world's attribute-classifier reward: how likely the image shows what the prompt says."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from rankekit.registry import FEATURE_EXTRACTORS, REWARDS
from rankekit.rewards.base import BaseReward


@REWARDS.register_module()
class AttributeReward(BaseReward):
    """Product (or mean) of a toy classifier's probabilities of the prompted attributes.

    Each prompt is parsed with :func:`rankekit.datasets.toy_shapes.parse_caption`; for every
    object it names, the classifier's slot at the object's position contributes P(occupied) and
    P(colour), P(shape), P(size) (see :meth:`ToyFeatureNet.attribute_probs`). A prompt that
    names nothing the toy world knows raises an error instead of scoring 1.

    Use a different network from the FID / compositional-accuracy net, or reward hacking cannot
    show up in those metrics: the recipes train the reward classifier with another seed and
    width (e.g. ``dict(type='ToyFeatureNet', width=24, feat_dim=96, pretrained=<reward net>)``,
    seed 1) than the FID net (``width=32, feat_dim=64``, seed 0).

    Args:
        classifier: a ToyFeatureNet config (``pretrained=<weights file>``) or module.
        mode: 'product' (the strict toy reward: all attributes must be right) or 'mean'.
        differentiable: gradients flow from the score to the images (default True).
        name: log name (default 'attribute_reward').
    """

    info_example = dict(type='AttributeReward',
                        classifier=dict(type='ToyFeatureNet', width=8, feat_dim=16,
                                        pretrained=None))
    differentiable = True

    def __init__(self, classifier: dict | nn.Module | None = None, mode: str = 'product',
                 differentiable: bool | None = None, name: str | None = None):
        super().__init__(name=name, differentiable=differentiable)
        if mode not in ('product', 'mean'):
            raise ValueError(f"AttributeReward mode must be 'product' or 'mean', got {mode!r}")
        classifier = dict(type='ToyFeatureNet', width=24, feat_dim=96) if classifier is None \
            else classifier
        if isinstance(classifier, dict):
            if classifier.get('pretrained') is None:
                warnings.warn('AttributeReward: the classifier has random weights '
                              '(classifier.pretrained=None); its scores mean nothing. Set '
                              "classifier=dict(type='ToyFeatureNet', pretrained=<reward net>)")
            classifier = FEATURE_EXTRACTORS.build(classifier)
        self.classifier = classifier
        if not hasattr(self.classifier, 'attribute_probs'):
            raise TypeError(f'AttributeReward needs a classifier with attribute_probs(images, '
                            f'attributes), got {type(self.classifier).__name__}')
        self.mode = mode
        self._parsed: dict[str, torch.Tensor] = {}  # prompts repeat within a group
        self.freeze()

    def parse(self, prompts: list[str]) -> torch.Tensor:
        """(N, 2, 4) attributes of the prompts; raises for a prompt naming no attribute."""
        from rankekit.datasets.toy_shapes import parse_caption
        rows = []
        for prompt in prompts:
            if prompt not in self._parsed:
                attributes = parse_caption(prompt)
                if not (attributes >= 0).any():
                    raise ValueError(f"reward '{self.name}' cannot score prompt {prompt!r}: it "
                                     f'names no toy-world attribute (colour, shape, size, '
                                     f'position); AttributeReward scores toy captions only')
                if len(self._parsed) < 100_000:
                    self._parsed[prompt] = attributes
            else:
                attributes = self._parsed[prompt]
            rows.append(attributes)
        return torch.stack(rows)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        attributes = self.parse(prompts).to(images.device)
        return self.classifier.attribute_probs(images, attributes, mode=self.mode)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', mode={self.mode!r}'
