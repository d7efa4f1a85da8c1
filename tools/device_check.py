"""GPU check of the real LlamaGen-XL RankE recipe with random weights: speed and memory.

    python tools/device_check.py                    # a CUDA GPU: GPT-XL / VQ-16 shapes, bf16 policy
    python tools/device_check.py --out check.json   # also write the numbers as JSON
    python tools/device_check.py --cpu-smoke        # anywhere: a drastically shrunk run (tests)

The RankEModel is built from ``configs/ranke/ranke_llamagen-xl_clip.py`` (``--config``) with every
``pretrained`` weight file stripped (random weights: speed does not depend on them, and nothing
needs to be on disk), then ``--cfg-options`` overrides. The flan-t5-xl text encoder is a random
2-layer T5 of the same width (its cost is not what this checks). Measured, in this order:

1. rollout sampling: ``--prompts`` prompts x G rollouts of 256 tokens with CFG (the config's
   G=8, CFG 6, top-k 1000), policy in ``--dtype`` -> tokens/s;
2. ``--iters`` RankE iterations (rollout, EMA decode, reward, policy GRPO step, discriminator and
   decoder steps with every adversarial term on) -> seconds per iteration;
3. peak memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: peak RSS).

On a GPU the whole check takes well under 5 minutes. Without a GPU it refuses, unless
``--cpu-smoke`` (tiny sizes; checks the code path, its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / 'configs' / 'ranke' / 'ranke_llamagen-xl_clip.py'
PROMPTS = ['a large red circle on the left', 'a small blue square at the top',
           'a photo of a green triangle in the center', 'a yellow cross on the right',
           'a purple circle below a cyan square', 'a large green square at the bottom',
           'a small red triangle above a blue circle', 'a cyan cross in the middle']
_DTYPES = {'bf16': torch.bfloat16, 'fp32': torch.float32, 'fp16': torch.float16}

# every weight file stripped: random weights, nothing read from disk
RANDOM_WEIGHTS = {
    'model.tokenizer.pretrained': None,
    'model.policy.pretrained': None,
    # flan-t5-xl's width (2048 = the GPT's caption_dim), 2 of its 24 layers
    'model.text_encoder.model_dir': None,
    'model.text_encoder.random_cfg': dict(d_model=2048, num_layers=2, num_heads=32, d_kv=64,
                                          d_ff=5120, feed_forward_proj='gated-gelu'),
    'model.rewards.0.pretrained': None,
    'model.perceptual_loss.backbone_weights': None,
    'model.perceptual_loss.random_backbone': True,
}
# --cpu-smoke: the same recipe at toy size (32 px, 4x4 tokens, 1-layer GPT, tiny CLIP)
SMOKE_CLIP = 'rankekit-device-check-clip'
SMOKE_CLIP_CFG = dict(embed_dim=16,
                      vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1,
                                      head_width=16),
                      text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2,
                                    layers=1))
SMOKE = {
    'model.tokenizer.ch': 32, 'model.tokenizer.num_res_blocks': 1,
    'model.tokenizer.encoder_ch_mult': [1, 1, 1, 1],
    'model.tokenizer.decoder_ch_mult': [1, 1, 1, 1],
    'model.tokenizer.z_channels': 32, 'model.tokenizer.codebook_size': 1024,
    'model.tokenizer.image_size': 32,
    'model.policy.dim': 32, 'model.policy.n_layer': 1, 'model.policy.n_head': 2,
    'model.policy.vocab_size': 1024, 'model.policy.block_size': 16, 'model.policy.cls_token_num': 8,
    'model.policy.caption_dim': 16, 'model.policy.multiple_of': 32,
    'model.text_encoder.max_length': 8, 'model.text_encoder.dtype': 'fp32',
    'model.text_encoder.random_cfg': dict(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32),
    'model.rewards.0.model_name': SMOKE_CLIP, 'model.rewards.0.model_cfg': SMOKE_CLIP_CFG,
    'model.rewards.0.weights_tag': None,
    'model.discriminator.ndf': 8,
    'model.rollout.group_size': 4,
}


def parse_args(argv=None) -> argparse.Namespace:
    from rankekit.apis.config import DictAction
    parser = argparse.ArgumentParser(prog='tools/device_check.py',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=str(DEFAULT_CONFIG), help='the real recipe to build')
    parser.add_argument('--prompts', type=int, default=4,
                        help='prompts per rollout (4 = the per-GPU batch of the release)')
    parser.add_argument('--iters', type=int, default=2,
                        help='RankE iterations to time (the first includes warm-up)')
    parser.add_argument('--dtype', choices=sorted(_DTYPES), default=None,
                        help='dtype of the policy and its reference / EMA copies (default: bf16 '
                        'on a GPU, fp32 with --cpu-smoke)')
    parser.add_argument('--cpu-smoke', action='store_true',
                        help='run a drastically shrunk version on the CPU (checks the code path)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='config overrides, e.g. model.rollout.group_size=4')
    parser.add_argument('--out', help='write the measurements to this JSON file')
    return parser.parse_args(argv)


def build_config(args):
    from rankekit.apis.config import load_config
    overrides = dict(RANDOM_WEIGHTS)
    if args.cpu_smoke:
        from rankekit.rewards.clip_score import register_open_clip_config
        register_open_clip_config(SMOKE_CLIP, SMOKE_CLIP_CFG)
        overrides.update(SMOKE)
    overrides.update(args.cfg_options or {})
    return load_config(args.config, overrides)


class Meter:
    """Wall time (with CUDA synchronisation) and peak memory of one block."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.start
        if self.device.type == 'cuda':
            self.peak_gib = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        else:  # peak RSS of the process so far (Linux: KiB)
            self.peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        return False


def run(args) -> dict:
    from rankekit.engine.optim_constructor import MultiOptimWrapperConstructor
    from rankekit.registry import MODELS

    device = torch.device('cpu' if args.cpu_smoke else 'cuda')
    dtype = _DTYPES[args.dtype]
    torch.manual_seed(0)
    cfg = build_config(args)
    results = dict(config=str(args.config), device=torch.cuda.get_device_name(device)
                   if device.type == 'cuda' else 'cpu', cpu_smoke=args.cpu_smoke, dtype=args.dtype)
    meter = Meter(device)

    with meter:
        model = MODELS.build(cfg.model)
        # the policy dominates time and memory: it (and its frozen reference / EMA copies) runs
        # in --dtype; VQ, rewards, LPIPS and discriminator stay fp32
        for part in (model.policy, model.policy_ref, model.policy_ema):
            if part is not None:
                part.to(dtype)
        model.to(device)
    results['build_s'] = meter.seconds
    results['params_policy_m'] = sum(p.numel() for p in model.policy.parameters()) / 1e6
    results['params_decoder_m'] = sum(p.numel() for p in model.tokenizer.decoder_parameters()) / 1e6

    G = int(model.rollout_cfg.group_size)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    L = model.policy.num_image_tokens
    sampling = {k: getattr(model.rollout_cfg, k) for k in ('cfg_scale', 'temperature', 'top_k',
                                                          'top_p')}
    results.update(prompts=len(prompts), group_size=G, tokens_per_image=L, **sampling)

    # ---- 1. rollout sampling speed ----------------------------------------------------------
    cond, mask = model.encode_prompts(prompts)
    cond, mask = cond.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
    generator = torch.Generator().manual_seed(0)
    # warm-up (kernels, allocator), then the timed full-length rollout
    model.policy.sample(cond, mask, num_tokens=min(8, L), generator=generator, **sampling)
    with meter:
        out = model.policy.sample(cond, mask, generator=generator, **sampling)
    assert out.tokens.shape == (len(prompts) * G, L)
    results.update(sample_s=meter.seconds, tokens_per_s=out.tokens.numel() / meter.seconds,
                   sample_peak_gib=meter.peak_gib)

    # ---- 2. RankE iterations ------------------------------------------------------------------
    optim_cfg = {k: v for k, v in cfg.optim_wrapper.to_dict().items() if k != 'constructor'}
    optim = MultiOptimWrapperConstructor(optim_cfg)(model)
    model.train()
    model.phases = dict(policy=True, decoder=True)
    # past disc_start: the discriminator, adaptive GAN and rank-GAN terms all run
    model.decoder_steps.fill_(int(model.decoder_cfg.disc_start))
    size = model.tokenizer.grid_size * model.tokenizer.downsample_factor
    images = torch.rand(len(prompts), 3, size, size, generator=torch.Generator().manual_seed(1))
    iteration_s = []
    for _ in range(args.iters):
        with meter:
            logs = model.train_step(dict(image=images, caption=prompts), optim)
        iteration_s.append(meter.seconds)
    bad = {k: float(v) for k, v in logs.items() if not torch.isfinite(torch.as_tensor(v)).all()}
    if bad or int(model.skipped_nonfinite):
        raise RuntimeError(f'non-finite values in the RankE iteration: {bad}, '
                           f'skipped updates {int(model.skipped_nonfinite)}')
    results.update(iteration_s=iteration_s, iteration_peak_gib=meter.peak_gib,
                   reward_mean=float(logs['reward/mean']), policy_steps=int(model.policy_steps),
                   decoder_steps=int(model.decoder_steps))
    return results


def report(results: dict) -> str:
    rows = [('device', results['device']), ('policy dtype', results['dtype']),
            ('policy / decoder params', f"{results['params_policy_m']:.1f}M / "
                                        f"{results['params_decoder_m']:.1f}M"),
            ('build', f"{results['build_s']:.1f} s"),
            ('rollout', f"{results['prompts']} prompts x G={results['group_size']} x "
                        f"{results['tokens_per_image']} tokens, CFG {results['cfg_scale']}, "
                        f"top-k {results['top_k']}"),
            ('sampling', f"{results['sample_s']:.2f} s = {results['tokens_per_s']:,.0f} tokens/s"),
            ('sampling peak memory', f"{results['sample_peak_gib']:.2f} GiB"),
            ('RankE iteration', ', '.join(f'{s:.2f} s' for s in results['iteration_s'])),
            ('iteration peak memory', f"{results['iteration_peak_gib']:.2f} GiB")]
    width = max(len(k) for k, _ in rows)
    lines = [f'{k:<{width}}  {v}' for k, v in rows]
    if results['cpu_smoke']:
        lines.append('(--cpu-smoke: tiny sizes; these numbers say nothing about a GPU)')
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prompts < 1 or args.iters < 1:
        print('--prompts and --iters must be >= 1', file=sys.stderr)
        return 2
    if not args.cpu_smoke and not torch.cuda.is_available():
        print('tools/device_check.py needs a CUDA GPU, and none is visible '
              '(torch.cuda.is_available() is False). Run it on a GPU machine, or pass '
              '--cpu-smoke for a drastically shrunk CPU run that only checks the code path.',
              file=sys.stderr)
        return 2
    if args.dtype is None:  # CPU: bf16 matmuls are slow there and prove nothing
        args.dtype = 'fp32' if args.cpu_smoke else 'bf16'
    results = run(args)
    print(report(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
