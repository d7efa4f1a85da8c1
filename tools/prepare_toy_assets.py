"""Rebuild the toy world's checkpoints (rankekit/toy/assets/) from fixed seeds, then measure them.

    python tools/prepare_toy_assets.py                 # all stages, then the quality report
    python tools/prepare_toy_assets.py --only tokenizer policy
    python tools/prepare_toy_assets.py --measure-only  # the model_zoo "Toy backbone" table
    python tools/prepare_toy_assets.py --measure-only --convergence-check  # + the tokenizer's

Each stage is an ordinary pretraining config under configs/pretrain/, run by the same Runner as
tools/train.py; the trained sub-network is then written as a plain state_dict. The policy stage
needs the tokenizer and text encoder assets, so stages run in the order below.
``--convergence-check`` trains the shipped decoder 300 more iterations with RankE's decoder-phase
reconstruction objective (configs/study/decoder_convergence.py) and reports how much rFID and the
base policy's FID move.
The same machine and thread count give the same files bit for bit (torch's CPU kernels are
deterministic for a fixed thread count).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# stage -> (config, {asset file: (state_dict prefix in the pretraining model, saved dtype)})
STAGES = {
    'feature_net': ('configs/pretrain/feature_net_toy.py',
                    {'feature_net.pt': ('net.', torch.float32)}),
    'reward_classifier': ('configs/pretrain/reward_classifier_toy.py',
                          {'reward_classifier.pt': ('net.', torch.float32)}),
    # fp16 on disk: most of the toy CLIP is open_clip's 49k-row BPE embedding
    'clip': ('configs/pretrain/clip_toy.py', {'clip.pt': ('clip.', torch.float16)}),
    # the held-out CLIP of the toy evaluation (never a reward)
    'clip_eval': ('configs/pretrain/clip_eval_toy.py', {'clip_eval.pt': ('clip.', torch.float16)}),
    # stage 1 (L1, codebook learning) and stage 2 (decoder: L1 + perceptual + GAN, codes fixed)
    'tokenizer': ('configs/pretrain/tokenizer_toy.py',
                  {'vq_l1.pt': ('tokenizer.', torch.float32)}),
    'tokenizer_gan': ('configs/pretrain/tokenizer_gan_toy.py',
                      {'vq.pt': ('tokenizer.', torch.float32),
                       'vq_disc.pt': ('discriminator.', torch.float32)}),
    # the text encoder is pretrained on captions first and stays frozen in the policy stage
    'text_encoder': ('configs/pretrain/text_encoder_toy.py',
                     {'text_encoder.pt': ('text_encoder.', torch.float32)}),
    'policy': ('configs/pretrain/policy_toy.py', {'policy.pt': ('policy.', torch.float32)}),
}


def export(model: torch.nn.Module, prefix: str, dtype: torch.dtype, path: Path) -> int:
    """Write the sub-state-dict under ``prefix`` (prefix removed) to ``path``; returns bytes."""
    state = {k[len(prefix):]: v.detach().cpu() for k, v in model.state_dict().items()
             if k.startswith(prefix)}
    if not state:
        raise RuntimeError(f'no weights under {prefix!r} in {type(model).__name__}')
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written asset
    return path.stat().st_size


def run_stage(name: str, work_root: Path, out_dir: Path, threads: int) -> dict:
    config, exports = STAGES[name]
    runner, seconds = _train(config, work_root / name, threads, name)
    sizes = {file: export(runner.model, prefix, dtype, out_dir / file)
             for file, (prefix, dtype) in exports.items()}
    return dict(stage=name, seconds=round(seconds, 1), files=sizes)


def convergence_check(work_root: Path, asset_dir: Path, threads: int, backbone: dict,
                      fid_seeds=(0, 1, 2)) -> list[dict]:
    """Train configs/study/decoder_convergence.py, then rFID and the base policy's FID with the
    shipped decoder and with the run's EMA decoder (the one evaluation decodes with)."""
    import copy

    from rankekit.registry import FEATURE_EXTRACTORS, POLICIES, TEXT_ENCODERS, TOKENIZERS
    from rankekit.toy.quality import policy_fid, tokenizer_fid
    runner = _train('configs/study/decoder_convergence.py', work_root / 'convergence', threads,
                    'convergence')[0]

    def load(registry, key, file):
        return registry.build({**backbone[key], 'pretrained': str(asset_dir / file)}).eval()

    shipped = load(TOKENIZERS, 'toy_tokenizer', 'vq.pt')
    trained = copy.deepcopy(shipped)
    for name, module in trained.decoder_modules().items():
        module.load_state_dict(runner.model.decoder_ema[name].state_dict())
    feature_net = load(FEATURE_EXTRACTORS, 'toy_feature_net', 'feature_net.pt')
    text_encoder = load(TEXT_ENCODERS, 'toy_text_encoder', 'text_encoder.pt')
    policy = load(POLICIES, 'toy_policy', 'policy.pt')
    rows = []
    for what, tokenizer in (('shipped decoder', shipped), ('after 300 it.', trained)):
        fids = torch.tensor(policy_fid(text_encoder, policy, tokenizer, feature_net, fid_seeds),
                            dtype=torch.float64)
        rows.append(dict(decoder=what, rfid=tokenizer_fid(tokenizer, feature_net)['rfid'],
                         policy_fid=float(fids.mean()), policy_fid_std=float(fids.std()),
                         policy_fid_seeds=fids.tolist()))
    return rows


def _train(config: str, work_dir: Path, threads: int, name: str):
    """Run a config with the same Runner as tools/train.py; returns (runner, seconds)."""
    from rankekit.apis.train import build_runner, parse_args, setup_cfg
    torch.set_num_threads(threads)
    cfg = setup_cfg(parse_args([str(REPO / config), '--work-dir', str(work_dir),
                                '--deterministic']))
    cfg.log_level = 'WARNING'
    cfg.experiment_name = f'toy_assets_{name}'
    cfg.visualizer = dict(cfg.visualizer, name=f'visualizer_{name}')
    runner = build_runner(cfg)
    start = time.time()
    runner.train()
    return runner, time.time() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', nargs='+', choices=list(STAGES), help='run these stages only')
    parser.add_argument('--measure-only', action='store_true', help='skip training, measure')
    parser.add_argument('--no-measure', action='store_true', help='skip the quality report')
    parser.add_argument('--convergence-check', action='store_true',
                        help='also train the decoder 300 iterations with RankE\'s decoder-phase '
                        'reconstruction objective and report the rFID / base-policy FID change')
    parser.add_argument('--out-dir', default=None,
                        help='where assets go (default: rankekit/toy/assets, the shipped ones); '
                        'a stage loads toy:// files from here when an earlier stage wrote them, '
                        'else the shipped ones')
    parser.add_argument('--work-dir', default='work_dirs/toy_assets',
                        help='logs and runner checkpoints of each stage')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads (fixed, so '
                        'that a rebuild is bit-identical on the same machine)')
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from rankekit.utils.toy_assets import ASSET_DIR, assets_built_in
    out_dir = Path(args.out_dir) if args.out_dir else ASSET_DIR
    console = Console()
    report = []
    if not args.measure_only:
        stages = args.only or list(STAGES)
        for i, name in enumerate(stages, 1):
            console.rule(f'[bold]stage {i}/{len(stages)}: {name}[/]  ({STAGES[name][0]})')
            with assets_built_in(out_dir):  # later stages load what earlier ones wrote
                report.append(run_stage(name, Path(args.work_dir), out_dir, args.threads))
            console.print(f'{name}: {report[-1]["seconds"]} s -> '
                          + ', '.join(f'{f} ({b / 1e6:.2f} MB)'
                                      for f, b in report[-1]['files'].items()))
        total = sum(f.stat().st_size for f in out_dir.glob('*.pt'))
        console.print(f'[bold]assets[/] in {out_dir}: {total / 1e6:.2f} MB in total')
    if not args.no_measure:
        from rankekit.apis.config import load_config
        from rankekit.toy.quality import measure_toy_backbone
        torch.set_num_threads(args.threads)
        backbone = load_config(str(REPO / 'configs/_base_/models/toy_backbone.py'))
        quality = measure_toy_backbone(backbone.to_dict(), asset_dir=out_dir)
        table = Table(title='Toy backbone quality (val split)')
        table.add_column('asset')
        table.add_column('metric')
        table.add_column('value', justify='right')
        table.add_column('target')
        for row in quality:
            table.add_row(row['asset'], row['metric'], f'{row["value"]:.3f}', row['target'])
        console.print(table)
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.work_dir) / 'quality.json').write_text(
            json.dumps(dict(stages=report, quality=quality), indent=2))
    if args.convergence_check:
        from rankekit.apis.config import load_config
        backbone = load_config(str(REPO / 'configs/_base_/models/toy_backbone.py')).to_dict()
        with assets_built_in(out_dir):  # the check trains the decoder it measures
            rows = convergence_check(Path(args.work_dir), out_dir, args.threads, backbone)
        table = Table(title='Convergence check: 300 iterations of the decoder-phase '
                      'reconstruction objective')
        for column in ('decoder', 'rFID', 'base policy FID (mean ± std over sampling seeds)'):
            table.add_column(column)
        for row in rows:
            table.add_row(row['decoder'], f'{row["rfid"]:.2f}',
                          f'{row["policy_fid"]:.2f} ± {row["policy_fid_std"]:.2f}')
        before, after = rows
        table.add_row('change', f'{after["rfid"] - before["rfid"]:+.2f}',
                      f'{after["policy_fid"] - before["policy_fid"]:+.2f}')
        console.print(table)
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.work_dir) / 'convergence.json').write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
