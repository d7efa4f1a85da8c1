"""``tools/train.py`` / ``rankekit train``: train from a config with an MMEngine Runner."""
from __future__ import annotations

import argparse
import os.path as osp

from rankekit.apis.config import (INPUT_ERRORS, DictAction, check_config, check_train_cfg,
                                  default_work_dir, load_config, remove_setup_leftovers,
                                  run_reporting_errors, work_dir_entries)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='tools/train.py', description='Train a rankekit model from a config file.')
    parser.add_argument('config', help='config file, e.g. configs/ablation/anchor_ema.py')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config stem>)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help="resume training: 'auto' (the default when the flag has no value) "
                        'takes the newest complete checkpoint of the work dir; or give a '
                        'checkpoint path')
    parser.add_argument('--resume-any-config', action='store_true',
                        help='resume even if the config differs from the one the checkpoint was '
                        'trained with in keys that change the experiment (model, optimizer, '
                        'data, ...); by default that is an error')
    parser.add_argument('--amp', action='store_true',
                        help="automatic mixed precision: for RankE, model.precision='bf16' (bf16 "
                        'autocast, fp32 weights and optimizer states; also on CPU); for other '
                        'models fp16 AmpOptimWrapper (needs a GPU)')
    parser.add_argument('--seed', type=int, default=None,
                        help='random seed (overrides randomness.seed of the config)')
    parser.add_argument('--deterministic', action='store_true',
                        help='make cuDNN deterministic (slower)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_cfg.max_iters=20 '
                        'model.rank_loss.clip_eps=0.1; components as Python literals (parsed, '
                        "not evaluated): \"model.rewards=[dict(type='PickScore')]\" "
                        '(docs/plugins.md)')
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


def _is_rank_e_model(model) -> bool:
    """Whether a model config builds a RankEModel (or a subclass)."""
    if not isinstance(model, dict) or 'type' not in model:
        return False
    from rankekit.models import RankEModel
    from rankekit.registry import MODELS
    cls = MODELS.get(model['type']) if isinstance(model['type'], str) else model['type']
    return isinstance(cls, type) and issubclass(cls, RankEModel)


def _setup_distributed(cfg, launcher: str) -> None:
    """A distributed launch: gloo where no GPU is visible (the base runtime says nccl), and the
    RankE data-parallel wrapper for a RankEModel whose config names no wrapper."""
    import torch
    if not torch.cuda.is_available():
        if launcher != 'pytorch':
            raise RuntimeError(f'--launcher {launcher} needs CUDA GPUs and none is visible; on '
                               'CPU start the ranks with torchrun and --launcher pytorch (gloo)')
        env_cfg = dict(cfg.get('env_cfg') or {})
        env_cfg['dist_cfg'] = {**(env_cfg.get('dist_cfg') or {}), 'backend': 'gloo'}
        cfg.env_cfg = env_cfg
    if not _is_rank_e_model(cfg.get('model')):
        return
    wrapper = cfg.get('model_wrapper_cfg')
    if not wrapper:
        cfg.model_wrapper_cfg = dict(type='rankekit.RankEDataParallel')
        return
    from mmengine.registry import MODEL_WRAPPERS as ROOT_WRAPPERS

    from rankekit.models import RankEDataParallel
    name = wrapper.get('type', 'MMDistributedDataParallel')
    cls = ROOT_WRAPPERS.get(name) if isinstance(name, str) else name
    if not (isinstance(cls, type) and issubclass(cls, RankEDataParallel)):
        raise ValueError(f'model_wrapper_cfg.type={name!r} cannot train a RankEModel (it runs its '
                         "own train_step); use model_wrapper_cfg=dict(type='rankekit."
                         "RankEDataParallel') (with the 'rankekit.' scope: MMEngine looks "
                         'wrappers up in its root registry) or leave model_wrapper_cfg unset')


def _check_strategy(cfg) -> None:
    """RankEModel trains with its own train_step and three optimizers, which MMEngine's
    FlexibleRunner strategies (FSDP, DeepSpeed: forward(mode='loss'), one optimizer) cannot run."""
    flexible = cfg.get('strategy') is not None or cfg.get('runner_type') == 'FlexibleRunner'
    if flexible and _is_rank_e_model(cfg.get('model')):
        raise ValueError('RankEModel cannot train under runner_type/strategy (MMEngine '
                         "FlexibleRunner: FSDP, DeepSpeed train through forward(mode='loss') with "
                         'one optimizer); remove runner_type and strategy from the config. RankE '
                         'scales data parallel: torchrun ... tools/train.py CONFIG --launcher '
                         'pytorch (see docs/distributed.md)')


def setup_cfg(args: argparse.Namespace):
    """Apply the command-line options to the config (no side effects besides plugin imports)."""
    cfg = load_config(args.config, args.cfg_options)
    check_config(cfg)  # types, keys and values, before anything is built or written
    cfg.launcher = args.launcher
    _check_strategy(cfg)
    if args.launcher != 'none':
        _setup_distributed(cfg, args.launcher)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)
    if args.amp and _is_rank_e_model(cfg.get('model')):
        # RankE runs its own forward passes: bf16 autocast inside them, the optimizers untouched
        # (bf16 needs no loss scaling; AmpOptimWrapper's fp16 would)
        cfg.model.precision = 'bf16'
    elif args.amp:
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
    if getattr(args, 'resume_any_config', False):
        if args.resume is None:
            raise ValueError('--resume-any-config only applies together with --resume')
        cfg.resume_any_config = True
    randomness = dict(cfg.get('randomness') or {})
    if args.seed is not None:
        randomness['seed'] = args.seed
    if args.deterministic:
        randomness['deterministic'] = True
    if randomness:
        cfg.randomness = randomness
    return cfg


def build_runner(cfg):
    """A :class:`~rankekit.engine.runner.SafeRunner` (or ``cfg.runner_type``) for a prepared
    config, once the work dir is known to be writable."""
    from rankekit.engine.runner import check_work_dir
    from rankekit.registry import RUNNERS
    from rankekit.utils.run_files import register_runner_checkpoint_loader
    register_runner_checkpoint_loader()
    check_work_dir(cfg.work_dir)  # before anything heavy
    if cfg.get('launcher') == 'pytorch':  # no GPU: start gloo here (MMEngine would need CUDA)
        from rankekit.utils.distributed import init_cpu_process_group
        init_cpu_process_group((cfg.get('env_cfg') or {}).get('dist_cfg'))
    name = cfg.get('runner_type', 'SafeRunner')
    runner_cls = RUNNERS.get(name) if isinstance(name, str) else name
    if runner_cls is None:
        raise KeyError(f"runner_type='{name}' is not a registered runner; use 'SafeRunner' "
                       f"(the default), 'Runner' or 'FlexibleRunner'")
    return runner_cls.from_cfg(cfg)


def main(argv=None) -> int:
    """Train; a bad config or missing file at set-up is one ``error:`` line and exit code 2
    (set RANKEKIT_DEBUG=1 for the traceback). Errors during training raise as usual."""
    args = parse_args(argv)
    runner = None

    def set_up() -> None:
        nonlocal runner
        cfg = setup_cfg(args)
        check_train_cfg(cfg.get('train_cfg'), training=True)  # max_iters=0 would train nothing
        before = work_dir_entries(cfg.work_dir)
        try:
            runner = build_runner(cfg)
            # the data and the optimizers too: their errors are set-up errors (no iteration ran)
            runner.train_loop  # noqa: B018 - the property builds the loop and its dataloader
            if hasattr(runner, 'build_optim_wrapper'):  # a FlexibleRunner builds it itself
                runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
        except INPUT_ERRORS:  # a bad config or missing file: leave the work dir as it was
            remove_setup_leftovers(cfg.work_dir, before)
            raise

    status = run_reporting_errors(set_up)
    if status:
        return status
    runner.train()
    return 0
