"""``tools/train.py`` / ``rankekit train``: train from a config with an MMEngine Runner."""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

from rankekit.apis.config import DictAction, default_work_dir, load_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='tools/train.py', description='Train a rankekit model from a config file.')
    parser.add_argument('config', help='config file, e.g. configs/ablation/anchor_ema.py')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config stem>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help="resume training: 'auto' (the default when the flag has no value) "
                        'takes the latest checkpoint of the work dir; or give a checkpoint path')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (needs a GPU)')
    parser.add_argument('--seed', type=int, default=None,
                        help='random seed (overrides randomness.seed of the config)')
    parser.add_argument('--deterministic', action='store_true',
                        help='make cuDNN deterministic (slower)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_cfg.max_iters=20 '
                        'model.rank_loss.clip_eps=0.1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher for distributed training')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _enable_amp(cfg) -> None:
    optim = cfg.optim_wrapper
    parts = ([optim[k] for k in optim if isinstance(optim[k], dict) and 'optimizer' in optim[k]]
             if optim.get('constructor') == 'MultiOptimWrapperConstructor' else [optim])
    for part in parts:
        if part.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            continue
        part['type'] = 'AmpOptimWrapper'
        part.setdefault('loss_scale', 'dynamic')


def setup_cfg(args: argparse.Namespace):
    """Apply the command-line options to the config (no side effects besides plugin imports)."""
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError('--amp needs a CUDA GPU; none is visible (drop --amp on CPU)')
        _enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f'--resume {args.resume}: no such checkpoint file')
        cfg.resume = True
        cfg.load_from = args.resume
    randomness = dict(cfg.get('randomness') or {})
    if args.seed is not None:
        randomness['seed'] = args.seed
    if args.deterministic:
        randomness['deterministic'] = True
    if randomness:
        cfg.randomness = randomness
    return cfg


def build_runner(cfg):
    """An MMEngine Runner (or ``cfg.runner_type``) for a prepared config."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from rankekit.utils.checkpoint import register_runner_checkpoint_loader
    register_runner_checkpoint_loader()
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


#: errors of a bad config or missing file while setting up: reported in one line, not a traceback
SETUP_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError)


def main(argv=None) -> int:
    """Train; a bad config or missing file at set-up is one ``error:`` line and exit code 2
    (set RANKEKIT_DEBUG=1 for the traceback). Errors during training raise as usual."""
    args = parse_args(argv)
    try:
        cfg = setup_cfg(args)
        runner = build_runner(cfg)
    except SETUP_ERRORS as exc:
        if os.environ.get('RANKEKIT_DEBUG'):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f'error: {message}', file=sys.stderr)
        print('(set RANKEKIT_DEBUG=1 to see the traceback)', file=sys.stderr)
        return 2
    runner.train()
    return 0
