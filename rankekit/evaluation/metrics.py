"""Evaluation metrics of rankekit, registered in ``METRICS`` (mmengine ``BaseMetric``\\ s).

Every metric reads what ``RankEModel.val_step`` returns, one dict per caption:
``dict(caption=str, tokens=LongTensor[L], image=FloatTensor[3, H, W] in [0, 1])``.

- :class:`~rankekit.evaluation.fid.FIDMetric` (``fid/fid``): Fréchet distance of features;
- :class:`ClipScoreMetric` (``clip_score/mean``): mean CLIP score of images vs their captions;
- :class:`~rankekit.evaluation.lcs.LCSMetric` (``lcs/kl``, ...): latent covariate shift and
  token entropy;
- :class:`CompositionalAccuracy` (``compositional/accuracy``): toy-world GenEval stand-in.

The math is available as plain functions too: :func:`frechet_distance`,
:func:`feature_statistics`, :func:`lcs_from_codes`, :func:`code_histogram`, :func:`lcs_kl`,
:func:`token_entropy`, :func:`real_floor`; and :func:`compute_clean_fid` /
:class:`COCOFIDProtocol` for the paper's clean-fid protocol.
"""
from __future__ import annotations

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from rankekit.evaluation.common import (build_network, follow_device, generated_field,
                                        generated_images)
from rankekit.evaluation.fid import (COCOFIDProtocol, FIDMetric, clean_fid_weights_path,
                                     compute_clean_fid, extract_features, feature_statistics,
                                     fid_from_features, frechet_distance)
from rankekit.evaluation.lcs import (LCSMetric, code_histogram, lcs_from_codes, lcs_kl, real_floor,
                                     smooth, token_entropy)
from rankekit.registry import FEATURE_EXTRACTORS, METRICS, REWARDS
from rankekit.rewards.toy_clip import TOY_CLIP_NAME

__all__ = ['FIDMetric', 'ClipScoreMetric', 'LCSMetric', 'CompositionalAccuracy', 'COCOFIDProtocol',
           'frechet_distance', 'feature_statistics', 'fid_from_features', 'extract_features',
           'compute_clean_fid', 'clean_fid_weights_path', 'code_histogram', 'smooth', 'lcs_kl',
           'token_entropy', 'real_floor', 'lcs_from_codes']


@METRICS.register_module()
class ClipScoreMetric(BaseMetric):
    """Mean CLIP score ``scale * cos(image, caption_prefix + caption)`` over generated images.

    The paper's protocol: OpenAI CLIP ViT-B/32 (not the training reward model), caption prefixed
    with ``'A photo depicts '``, cosine x100, mean over the generated set, e.g.
    ``clip=dict(type='ClipScore', model_name='ViT-B-32', weights_tag='openai',
    pretrained='/path/ViT-B-32-openai.bin')``.

    Args:
        clip: a ``REWARDS`` config (``ClipScore``) or a built reward ``(images, prompts) -> (N,)``.
        scale: written into the ``clip`` config (``scale``); ``None`` keeps the config's. For a
            built module it must agree with the module's ``scale`` (checked, never changed).
        caption_prefix: written into the ``clip`` config (``prefix``); same rules as ``scale``.
        prefix: metric name prefix (``clip_score/mean``, ``clip_score/std``).
    """

    default_prefix = 'clip_score'
    info_example = dict(type='ClipScoreMetric',
                        clip=dict(type='ClipScore', model_name=TOY_CLIP_NAME, pretrained=None))

    def __init__(self, clip, scale: float | None = 100.0,
                 caption_prefix: str | None = 'A photo depicts ', prefix: str | None = None,
                 collect_device: str = 'cpu', collect_dir: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        wanted = {k: v for k, v in dict(scale=scale, prefix=caption_prefix).items()
                  if v is not None}
        if isinstance(clip, dict):
            clip = {**clip, **wanted}
        else:  # a shared module (maybe the training reward): check, never change it
            for key, value in wanted.items():
                have = getattr(clip, key, None)
                if have is not None and have != value:
                    arg = 'caption_prefix' if key == 'prefix' else key
                    raise ValueError(f'ClipScoreMetric: {arg}={value!r} but the given CLIP module '
                                     f'has {key}={have!r}; build it with {key}={value!r} or pass '
                                     f'{arg}=None to keep its own')
        self.clip = build_network(clip, REWARDS, 'clip')

    def process(self, data_batch, data_samples) -> None:
        images = generated_images(data_samples)
        captions = [str(c) for c in generated_field(data_samples, 'caption')]
        if not len(images):
            return
        follow_device(self.clip, images)
        with torch.no_grad():
            scores = self.clip(images, captions)
        self.results.extend(scores.detach().float().cpu().reshape(-1).tolist())

    def compute_metrics(self, results: list) -> dict:
        if not results:
            raise ValueError('ClipScoreMetric got no generated images')
        scores = np.asarray(results, dtype=np.float64)
        return dict(mean=float(scores.mean()), std=float(scores.std()))


def _batch_attributes(data_batch, n: int):
    """(n, 2, 4) attributes from a data batch dict, or None when it carries none."""
    if not isinstance(data_batch, dict) or data_batch.get('attributes') is None:
        return None
    attributes = data_batch['attributes']
    if isinstance(attributes, (list, tuple)):
        attributes = torch.stack([torch.as_tensor(a) for a in attributes])
    attributes = torch.as_tensor(attributes).long()
    if len(attributes) != n:
        raise ValueError(f"data_batch['attributes'] has {len(attributes)} rows but there are {n} "
                         f'generated samples (one per caption expected)')
    return attributes


@METRICS.register_module()
class CompositionalAccuracy(BaseMetric):
    """Fraction of generated images showing every prompted attribute (the toy world's GenEval).

    An image counts as right when the feature net finds every prompted object with all its
    prompted colour / shape / size / position (``ToyFeatureNet.match_attributes``). The prompted
    attributes come from the data batch's ``attributes`` (B, 2, 4) when present (ToyShapes,
    ToyPrompts), else from ``parse_caption`` of each sample's caption.

    Returns ``accuracy`` and, for the prompt kinds present, ``accuracy_one_object`` /
    ``accuracy_two_objects``.

    Args:
        feature_net: ``FEATURE_EXTRACTORS`` config or a built net with ``match_attributes``.
        exact_count: also require no extra predicted objects.
        prefix: metric name prefix (``compositional/accuracy``).
    """

    default_prefix = 'compositional'
    info_example = dict(type='CompositionalAccuracy',
                        feature_net=dict(type='ToyFeatureNet', width=8, feat_dim=16,
                                         pretrained=None))

    def __init__(self, feature_net=dict(type='ToyFeatureNet', pretrained='toy://feature_net.pt'),
                 exact_count: bool = False, prefix: str | None = None,
                 collect_device: str = 'cpu', collect_dir: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.feature_net = build_network(feature_net, FEATURE_EXTRACTORS, 'feature_net')
        if not hasattr(self.feature_net, 'match_attributes'):
            raise TypeError(f'feature_net {type(self.feature_net).__name__} has no '
                            f'match_attributes(images, attributes) (use ToyFeatureNet)')
        if isinstance(self.feature_net, torch.nn.Module):
            self.feature_net.eval()
        self.exact_count = exact_count

    def process(self, data_batch, data_samples) -> None:
        images = generated_images(data_samples)
        if not len(images):
            return
        attributes = _batch_attributes(data_batch, len(images))
        if attributes is None:
            from rankekit.datasets.toy_shapes import parse_caption
            attributes = torch.stack([parse_caption(str(c))
                                      for c in generated_field(data_samples, 'caption')])
        follow_device(self.feature_net, images)
        with torch.no_grad():
            hits = self.feature_net.match_attributes(images, attributes.to(images.device),
                                                     exact_count=self.exact_count)
        num_objects = (attributes >= 0).any(-1).sum(-1)
        self.results.extend(zip(hits.cpu().tolist(), num_objects.cpu().tolist()))

    def compute_metrics(self, results: list) -> dict:
        if not results:
            raise ValueError('CompositionalAccuracy got no generated images')
        hits = np.asarray([h for h, _ in results], dtype=np.float64)
        counts = np.asarray([c for _, c in results])
        out = dict(accuracy=float(hits.mean()))
        for k, name in ((1, 'accuracy_one_object'), (2, 'accuracy_two_objects')):
            if (counts == k).any():
                out[name] = float(hits[counts == k].mean())
        return out
