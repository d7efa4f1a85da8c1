"""Speed and memory of rankekit's hot paths (figures for docs/benchmarks.md, never tests).

    python tools/benchmark.py                    # toy world: sampler, iteration phases, scaling
    python tools/benchmark.py --gpt-b            # + GPT-B t2i (112M), 8 prompts x 256 tokens
    python tools/benchmark.py --json out.json

Weights are random (speed does not depend on them), so nothing needs the toy assets. Each
figure is the median of ``--repeats`` timed runs after a warm-up, in this process, with
``--threads`` torch threads.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def recompute_sample(policy, cond, mask, num_tokens: int, cfg_scale: float,
                     generator: torch.Generator) -> torch.Tensor:
    """The no-cache baseline: a full forward over caption + tokens so far at every step."""
    B = cond.shape[0]
    tokens = torch.zeros(B, 1, dtype=torch.long)
    null = policy.null_caption(cond.shape[1]).expand_as(cond) if cfg_scale != 1.0 else None
    for t in range(num_tokens):
        logits = policy(cond, mask, tokens)[:, t]
        if null is not None:
            uncond = policy(null, mask, tokens)[:, t]
            logits = uncond + (logits - uncond) * cfg_scale
        draw = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        tokens = torch.cat([tokens[:, :t], draw, tokens.new_zeros(B, 1)], dim=1)
    return tokens[:, :num_tokens]


def sampler_rows(policy, caption_dim: int, cls_tokens: int, prompts: int, lengths, cfg_scale,
                 repeats: int, recompute: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(prompts, cls_tokens, caption_dim, generator=g)
    mask = torch.ones(prompts, cls_tokens, dtype=torch.long)
    rows = []
    for length in lengths:
        cached = median_seconds(lambda: policy.sample(cond, mask, num_tokens=length,
                                                      cfg_scale=cfg_scale, generator=g), repeats)
        row = dict(prompts=prompts, tokens=length, cfg=cfg_scale, kv_cache_s=cached,
                   kv_cache_tok_s=prompts * length / cached)
        if recompute:
            slow = median_seconds(lambda: recompute_sample(policy, cond, mask, length, cfg_scale,
                                                           g), max(1, repeats // 3))
            row.update(recompute_s=slow, recompute_tok_s=prompts * length / slow,
                       speedup=slow / cached)
        rows.append(row)
    return rows


def toy_model(group_size: int):
    """The toy RankE model of configs/ranke/ranke_toy.py with random weights (no assets)."""
    from rankekit.apis.config import load_config
    from rankekit.engine.optim_constructor import MultiOptimWrapperConstructor
    from rankekit.registry import MODELS
    cfg = load_config(str(REPO / 'configs/ranke/ranke_toy.py'))
    model_cfg = copy.deepcopy(cfg.model.to_dict())

    def strip(node):
        if isinstance(node, dict):
            node.pop('pretrained', None)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)
    strip(model_cfg)
    model_cfg['rollout']['group_size'] = group_size
    model_cfg['decoder_cfg']['disc_start'] = 0
    model = MODELS.build(model_cfg)
    model.train()
    parts = {k: v for k, v in cfg.optim_wrapper.to_dict().items() if k != 'constructor'}
    return model, MultiOptimWrapperConstructor(parts)(model)


def iteration_rows(group_sizes, prompts: int, repeats: int) -> list[dict]:
    """Seconds per phase of one toy iteration (prompts x G rollouts, both phases)."""
    from rankekit.registry import DATASETS
    data = DATASETS.build(dict(type='ToyShapes', split='train', num_samples=prompts))
    batch = dict(image=torch.stack([data[i]['image'] for i in range(prompts)]),
                 caption=[data[i]['caption'] for i in range(prompts)])
    rows = []
    for G in group_sizes:
        model, optim = toy_model(G)
        real = batch['image'] * 2 - 1
        phases = dict(rollout=lambda: model.rollout(batch['caption']))
        ro = model.rollout(batch['caption'])
        phases['policy'] = lambda: model.policy_step(ro, optim['policy'])
        phases['decoder'] = lambda: model.decoder_step(ro, real, optim)
        row = dict(prompts=prompts, group_size=G)
        for name, fn in phases.items():
            row[f'{name}_s'] = median_seconds(fn, repeats)
        row['iteration_s'] = median_seconds(lambda: model.train_step(batch, optim), repeats)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--gpt-b', action='store_true',
                        help='also time GPT-B t2i (the official-sampler figure a, '
                             'docs/benchmarks.md): 8 x 256 tokens, CFG 6')
    parser.add_argument('--json', help='write all figures to this JSON file')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from rich.console import Console
    from rich.table import Table

    from rankekit.registry import POLICIES
    console = Console()
    results = {}

    toy_cfg = dict(type='LlamaGenGPT', dim=128, n_layer=4, n_head=4, vocab_size=256,
                   block_size=64, cls_token_num=16, caption_dim=64)
    toy_policy = POLICIES.build(toy_cfg).eval()
    torch.nn.init.normal_(toy_policy.output.weight, std=0.02)  # official init zeroes it
    results['toy_sampler'] = sampler_rows(toy_policy, 64, 16, 64, (16, 36, 64), 3.0,
                                          args.repeats, recompute=True)
    # the toy policy's width on a 16x16 grid: the cache's advantage at LlamaGen's 256 tokens
    long_policy = POLICIES.build(dict(toy_cfg, block_size=256)).eval()
    torch.nn.init.normal_(long_policy.output.weight, std=0.02)
    results['sampler_256_tokens'] = sampler_rows(long_policy, 64, 16, 32, (256,), 3.0, 1,
                                                 recompute=True)
    # the official-sampler figure b (docs/benchmarks.md): tiny (4 layers, dim 256, 8 heads,
    # vocab 512, 8x8, 16 x 128 caption)
    tiny_b = POLICIES.build(dict(type='LlamaGenGPT', dim=256, n_layer=4, n_head=8,
                                 vocab_size=512, block_size=64, cls_token_num=16,
                                 caption_dim=128)).eval()
    torch.nn.init.normal_(tiny_b.output.weight, std=0.02)
    results['perf_anchor_b'] = sampler_rows(tiny_b, 128, 16, 64, (64,), 6.0, args.repeats,
                                            recompute=True)
    if args.gpt_b:
        gpt_b = POLICIES.build(dict(type='LlamaGenGPT', arch='GPT-B')).eval()
        torch.nn.init.normal_(gpt_b.output.weight, std=0.02)
        results['perf_anchor_a'] = sampler_rows(gpt_b, 2048, 120, 8, (256,), 6.0, 1,
                                                recompute=False)
    results['toy_iteration'] = iteration_rows((4, 8, 16), 8, args.repeats)
    results['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results['threads'] = args.threads

    for key in ('toy_sampler', 'sampler_256_tokens', 'perf_anchor_b', 'perf_anchor_a',
                'toy_iteration'):
        rows = results.get(key)
        if not rows:
            continue
        table = Table(title=key)
        for column in rows[0]:
            table.add_column(column, justify='right')
        for row in rows:
            table.add_row(*[f'{v:.3g}' if isinstance(v, float) else str(v) for v in row.values()])
        console.print(table)
    console.print(f'peak RSS: {results["peak_rss_mb"]:.0f} MB ({args.threads} threads)')
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
