"""Quality of the toy backbone: the numbers of model_zoo.md's "Toy backbone" table."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from rankekit.registry import (DATASETS, FEATURE_EXTRACTORS, POLICIES, REWARDS, TEXT_ENCODERS,
                               TOKENIZERS)

TARGETS = dict(psnr='>= 24 dB', usage='>= 0.50', retrieval='>= 0.60', feature='>= 0.95',
               rfid='<= 15', policy='>= 0.30', policy_two='>= 0.10')
#: the toy evaluation's FID protocol (configs/_base_/toy_evaluation.py): 5,000 test images as the
#: reference, 2,000 val images / prompts as the generated side, the toy feature net
FID_REFERENCE = dict(real=dict(type='ToyShapes', split='test', num_samples=5000),
                     reference_cache='work_dirs/.cache/toy_fid_test5000.npz')
NUM_FID_SAMPLES = 2000


@torch.no_grad()
def sample_images(text_encoder, policy, tokenizer, prompts: list[str], seeds: list[int],
                  **sampling) -> torch.Tensor:
    """One image per prompt (in [0, 1]) from a text encoder + policy + tokenizer triple."""
    cond, mask = text_encoder(prompts)
    tokens = policy.sample(cond, mask, seeds=seeds, **sampling).tokens
    return (tokenizer.codes_to_images(tokens).clamp(-1, 1) + 1) / 2


def _load(registry, cfg: dict, path: Path):
    return registry.build({**cfg, 'pretrained': str(path)}).eval()


def fid_metric(feature_net):
    """A FIDMetric with the toy evaluation's reference set and cache, around ``feature_net``."""
    from rankekit.evaluation.fid import FIDMetric
    return FIDMetric(feature_extractor=feature_net, **FID_REFERENCE)


def fid_of(metric, images: torch.Tensor) -> float:
    """FID of ``images`` (N, 3, H, W) in [0, 1] against ``metric``'s reference."""
    metric.results = []
    metric.process(None, [dict(image=img) for img in images])
    return float(metric.compute_metrics(metric.results)['fid'])


@torch.no_grad()
def reconstruct(tokenizer, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """VQ round trip (encode, quantise, decode) of [0, 1] images, in [0, 1]."""
    return torch.cat([(tokenizer.codes_to_images(tokenizer.images_to_codes(
        images[i:i + batch_size] * 2 - 1)).clamp(-1, 1) + 1) / 2
        for i in range(0, len(images), batch_size)])


@torch.no_grad()
def tokenizer_fid(tokenizer, feature_net, num_val: int = NUM_FID_SAMPLES) -> dict:
    """Reconstruction FID (rFID) of a tokenizer: its round trips of the first ``num_val`` val
    images against the evaluation reference; with ``real_floor`` (the val images themselves)."""
    val = DATASETS.build(dict(type='ToyShapes', split='val', num_samples=num_val))
    images = torch.stack([val[i]['image'] for i in range(len(val))])
    metric = fid_metric(feature_net)
    return dict(rfid=fid_of(metric, reconstruct(tokenizer, images)),
                real_floor=fid_of(metric, images))


@torch.no_grad()
def policy_fid(text_encoder, policy, tokenizer, feature_net, seeds=(0, 1),
               num_prompts: int = NUM_FID_SAMPLES, **sampling) -> list[float]:
    """FID of one sample per val caption (the study's prompts), one value per sampling seed."""
    val = DATASETS.build(dict(type='ToyShapes', split='val', num_samples=num_prompts))
    captions = [val[i]['caption'] for i in range(len(val))]
    metric = fid_metric(feature_net)
    values = []
    for seed in seeds:
        offset = seed * len(captions)  # disjoint per-sample seeds across sampling seeds
        images = torch.cat([
            sample_images(text_encoder, policy, tokenizer, captions[i:i + 250],
                          list(range(offset + i, offset + i + len(captions[i:i + 250]))),
                          **sampling)
            for i in range(0, len(captions), 250)])
        values.append(fid_of(metric, images))
    return values


@torch.no_grad()
def code_locality(tokenizer, num_scenes: int = 200, seed: int = 0) -> float:
    """Fraction of a scene's codes that change when a second object is drawn into it.

    Two-object scenes are drawn with and without their second object; for local codes only the
    patches the object covers change (a few of 64), for codes that depend on the whole image
    most of them do. Comparing the two renders directly isolates the tokenizer's contribution.
    """
    import numpy as np

    from rankekit.datasets.toy_shapes import render_scene, sample_scene
    rng = np.random.default_rng(seed)
    both, first = [], []
    for _ in range(num_scenes):
        attributes, centres, radii = sample_scene(rng, two_object_prob=1.0)
        single = attributes.copy()
        single[1] = -1
        both.append(render_scene(attributes, centres, radii, tokenizer.image_size))
        first.append(render_scene(single, centres, radii, tokenizer.image_size))
    codes = [tokenizer.images_to_codes(torch.from_numpy(np.stack(x)) * 2 - 1)
             for x in (both, first)]
    return (codes[0] != codes[1]).float().mean().item()


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


@torch.no_grad()
def measure_toy_backbone(backbone: dict, asset_dir: str | Path, num_val: int = 1000,
                         rollout: dict | None = None, samples_per_prompt: int = 4,
                         fid_seeds=(0, 1, 2)) -> list[dict]:
    """Measure the shipped toy checkpoints on the ToyShapes val split.

    Args:
        backbone: the architecture dicts of ``configs/_base_/models/toy_backbone.py``
            (``toy_tokenizer``, ``toy_text_encoder``, ``toy_policy``, ``toy_feature_net``,
            ``toy_reward_classifier``, ``toy_clip``).
        asset_dir: folder with vq.pt, policy.pt, text_encoder.pt, clip.pt, feature_net.pt,
            reward_classifier.pt.
        rollout: the sampling settings of the policy rows (default: the toy RankE rollout's,
            cfg 1, temperature 1, no top-k / top-p).
        fid_seeds: sampling seeds of the policy's FID (mean and spread over them).
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
                  target=TARGETS['usage']),
             dict(asset='vq.pt', metric='codes changed by drawing a second object (fraction)',
                  value=code_locality(tokenizer), target='-')]

    def round_trip(x):
        return reconstruct(tokenizer, x)

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

    # the tokenizer on the evaluation's protocol (needs the feature net)
    fid = tokenizer_fid(tokenizer, feature_net)
    val_images, val_attributes = _val_images(NUM_FID_SAMPLES)
    recon = _split_accuracy(feature_net, round_trip(val_images), val_attributes)
    rows[2:2] = [dict(asset='vq.pt', metric=f'reconstruction FID ({NUM_FID_SAMPLES} val vs 5,000 '
                      f'test; real floor {fid["real_floor"]:.1f})', value=fid['rfid'],
                      target=TARGETS['rfid']),
                 dict(asset='vq.pt', metric='compositional accuracy of reconstructions',
                      value=recon[0], target='-'),
                 dict(asset='vq.pt', metric='  one-object scenes', value=recon[1], target='-'),
                 dict(asset='vq.pt', metric='  two-object scenes', value=recon[2], target='-')]

    clip = REWARDS.build({**backbone['toy_clip'], 'pretrained': str(asset_dir / 'clip.pt')})
    rows.append(dict(asset='clip.pt', metric='text-to-image retrieval top-1',
                     value=float(evaluate_retrieval(clip, val)), target=TARGETS['retrieval']))
    held_out = asset_dir / 'clip_eval.pt'
    if held_out.is_file():  # the evaluation's held-out CLIP (never a reward)
        clip_eval = REWARDS.build({**backbone['toy_clip'], 'model_name': 'rankekit-toy-clip-eval',
                                   'pretrained': str(held_out)})
        rows.append(dict(asset='clip_eval.pt', metric='text-to-image retrieval top-1',
                         value=float(evaluate_retrieval(clip_eval, val)),
                         target=TARGETS['retrieval']))

    text_encoder = _load(TEXT_ENCODERS, backbone['toy_text_encoder'],
                         asset_dir / 'text_encoder.pt')
    policy = _load(POLICIES, backbone['toy_policy'], asset_dir / 'policy.pt')
    rollout = dict(ROLLOUT if rollout is None else rollout)
    prompts = toy_eval_prompts()
    captions = [p['caption'] for p in prompts] * samples_per_prompt
    attributes = torch.stack([p['attributes'] for p in prompts] * samples_per_prompt)
    seeds = list(range(len(captions)))
    generated = torch.cat([
        sample_images(text_encoder, policy, tokenizer, captions[i:i + 120], seeds[i:i + 120],
                      **rollout)
        for i in range(0, len(captions), 120)])
    accuracy = _split_accuracy(feature_net, generated, attributes)
    where = f'{len(captions)} samples of the 120 eval prompts, cfg {rollout["cfg_scale"]:g}'
    fid_mean, fid_std = _mean_std(policy_fid(text_encoder, policy, tokenizer, feature_net,
                                             fid_seeds, **rollout))
    rows += [dict(asset='policy.pt + text_encoder.pt', metric=f'compositional accuracy, {where}',
                  value=accuracy[0], target=TARGETS['policy']),
             dict(asset='policy.pt + text_encoder.pt', metric='  one-object prompts',
                  value=accuracy[1], target='-'),
             dict(asset='policy.pt + text_encoder.pt', metric='  two-object prompts',
                  value=accuracy[2], target=TARGETS['policy_two']),
             dict(asset='policy.pt + text_encoder.pt',
                  metric=f'FID of samples ({NUM_FID_SAMPLES} val prompts, mean over '
                         f'{len(fid_seeds)} sampling seeds)', value=fid_mean, target='-'),
             dict(asset='policy.pt + text_encoder.pt', metric='  its spread over sampling seeds '
                  '(std)', value=fid_std, target='-')]
    return rows


#: the toy RankE configs' rollout (configs/_base_/models/ranke_toy.py)
ROLLOUT = dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)


@functools.lru_cache(maxsize=2)
def _val_images(num: int) -> tuple[torch.Tensor, torch.Tensor]:
    val = DATASETS.build(dict(type='ToyShapes', split='val', num_samples=num))
    return (torch.stack([val[i]['image'] for i in range(num)]),
            torch.stack([val[i]['attributes'] for i in range(num)]))


def _split_accuracy(feature_net, images: torch.Tensor, attributes: torch.Tensor
                    ) -> tuple[float, float, float]:
    """Compositional accuracy over all prompts, one-object and two-object prompts."""
    hit = feature_net.match_attributes(images, attributes).float()
    two = attributes[:, 1, 0] >= 0
    return hit.mean().item(), hit[~two].mean().item(), hit[two].mean().item()
