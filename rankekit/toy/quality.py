"""Quality of the toy backbone: the numbers of model_zoo.md's "Toy backbone" table."""
from __future__ import annotations

from pathlib import Path

import torch

from rankekit.registry import (DATASETS, FEATURE_EXTRACTORS, POLICIES, REWARDS, TEXT_ENCODERS,
                               TOKENIZERS)

TARGETS = dict(psnr='>= 24 dB', usage='>= 0.50', retrieval='>= 0.60', feature='>= 0.95',
               policy='0.3 - 0.7')


@torch.no_grad()
def sample_images(text_encoder, policy, tokenizer, prompts: list[str], seeds: list[int],
                  **sampling) -> torch.Tensor:
    """One image per prompt (in [0, 1]) from a text encoder + policy + tokenizer triple."""
    cond, mask = text_encoder(prompts)
    tokens = policy.sample(cond, mask, seeds=seeds, **sampling).tokens
    return (tokenizer.codes_to_images(tokens).clamp(-1, 1) + 1) / 2


def _load(registry, cfg: dict, path: Path):
    return registry.build({**cfg, 'pretrained': str(path)}).eval()


@torch.no_grad()
def measure_toy_backbone(backbone: dict, asset_dir: str | Path, num_val: int = 1000,
                         cfg_scales=(1.0, 3.0), samples_per_prompt: int = 4) -> list[dict]:
    """Measure the shipped toy checkpoints on the ToyShapes val split.

    Args:
        backbone: the architecture dicts of ``configs/_base_/models/toy_backbone.py``
            (``toy_tokenizer``, ``toy_text_encoder``, ``toy_policy``, ``toy_feature_net``,
            ``toy_reward_classifier``, ``toy_clip``).
        asset_dir: folder with vq.pt, policy.pt, text_encoder.pt, clip.pt, feature_net.pt,
            reward_classifier.pt.
    Returns:
        rows of dict(asset, metric, value, target).
    """
    from rankekit.datasets.prompts import toy_eval_prompts
    from rankekit.toy.pretrain_clip import evaluate_retrieval
    from rankekit.toy.pretrain_feature_net import evaluate_feature_net
    from rankekit.toy.pretrain_tokenizer import evaluate_tokenizer

    asset_dir = Path(asset_dir)
    val = DATASETS.build(dict(type='ToyShapes', split='val', num_samples=num_val))
    images = torch.stack([val[i]['image'] for i in range(len(val))])
    rows = []

    tokenizer = _load(TOKENIZERS, backbone['toy_tokenizer'], asset_dir / 'vq.pt')
    vq = evaluate_tokenizer(tokenizer, images)
    rows += [dict(asset='vq.pt', metric='reconstruction PSNR (dB)', value=vq['psnr'],
                  target=TARGETS['psnr']),
             dict(asset='vq.pt', metric='codebook usage', value=vq['usage'],
                  target=TARGETS['usage'])]

    def round_trip(x):
        return (tokenizer.codes_to_images(tokenizer.images_to_codes(x * 2 - 1)).clamp(-1, 1)
                + 1) / 2

    for name, key in (('feature_net.pt', 'toy_feature_net'),
                      ('reward_classifier.pt', 'toy_reward_classifier')):
        net = _load(FEATURE_EXTRACTORS, backbone[key], asset_dir / name)
        real = evaluate_feature_net(net, val)
        recon = evaluate_feature_net(net, val, image_fn=round_trip)
        rows += [dict(asset=name, metric='attribute accuracy (real)', value=real['attr'],
                      target=TARGETS['feature']),
                 dict(asset=name, metric='attribute accuracy (VQ reconstructions)',
                      value=recon['attr'], target='-')]
        if name == 'feature_net.pt':
            feature_net = net

    clip = REWARDS.build({**backbone['toy_clip'], 'pretrained': str(asset_dir / 'clip.pt')})
    rows.append(dict(asset='clip.pt', metric='text-to-image retrieval top-1',
                     value=float(evaluate_retrieval(clip, val)), target=TARGETS['retrieval']))

    text_encoder = _load(TEXT_ENCODERS, backbone['toy_text_encoder'],
                         asset_dir / 'text_encoder.pt')
    policy = _load(POLICIES, backbone['toy_policy'], asset_dir / 'policy.pt')
    prompts = toy_eval_prompts()
    captions = [p['caption'] for p in prompts] * samples_per_prompt
    attributes = torch.stack([p['attributes'] for p in prompts] * samples_per_prompt)
    seeds = list(range(len(captions)))
    for cfg_scale in cfg_scales:
        generated = torch.cat([
            sample_images(text_encoder, policy, tokenizer, captions[i:i + 120],
                          seeds[i:i + 120], cfg_scale=cfg_scale)
            for i in range(0, len(captions), 120)])
        accuracy = feature_net.match_attributes(generated, attributes).float().mean().item()
        rows.append(dict(asset='policy.pt + text_encoder.pt',
                         metric=f'compositional accuracy, cfg {cfg_scale:g}', value=accuracy,
                         target=TARGETS['policy']))
    return rows
