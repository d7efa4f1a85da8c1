"""Inference with a trained (or untrained) RankE model: ``tools/test.py`` and ``tools/sample.py``.

- :func:`load_model`: a config (+ a runner checkpoint, or none for the base model) -> RankEModel;
- :func:`evaluate_combos`: the config's ``val_evaluator`` metrics per combination and seed.

Sampling, combos, seeds and grids live in :mod:`rankekit.evaluation.generation` (the monitor
hooks use them without this module's command lines).

Command lines: :func:`evaluate_main` (``tools/test.py``) and :func:`sample_main`
(``tools/sample.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import torch
from mmengine.logging import print_log

from rankekit.apis.config import (DictAction, default_work_dir, load_config,
                                  run_reporting_errors)
from rankekit.evaluation.generation import (
    CHOICES, DEFAULT_COMBOS, SEED_STRIDE, auto_scale, batch_ranges, check_combos, combo_name,
    decode_tokens, make_grid, parse_combos, sample_tokens, sampling_settings, save_png, slug)

# ------------------------------------------------------------------------------------------------
# model loading
# ------------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a work dir: its newest complete checkpoint (as ``--resume auto``
    chooses it: ``last_checkpoint`` if its target is complete, else the newest complete
    ``iter_N.pth``)."""
    from rankekit.utils.run_files import find_resume_checkpoint
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found, note = find_resume_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f'work dir {path} holds no checkpoint (no last_checkpoint, no '
                                    f'iter_N.pth); train first or give the checkpoint file')
        if note:
            print_log(note, logger='current', level=logging.WARNING)
        return Path(found)
    raise FileNotFoundError(f'checkpoint {path} does not exist (give an iter_N.pth file or a work '
                            f'dir)')


def load_runner_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Load a runner checkpoint's ``state_dict`` into ``model`` (strict).

    Returns ``dict(path, iter, epoch)`` of the checkpoint actually read. It is read
    weights-only (:mod:`rankekit.utils.run_files`): a file that would run code is refused. The
    frozen modules runner checkpoints leave out (text encoder, rewards, perceptual net) keep the
    weights the config gave them.
    """
    from rankekit.utils.run_files import load_runner_checkpoint_file
    from rankekit.utils.weights import WeightsFileError, extract_state_dict, state_dict_report
    path = resolve_checkpoint(path)
    checkpoint = load_runner_checkpoint_file(path, map_location='cpu')
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint)
        raise WeightsFileError(f"{path} is not a runner checkpoint (no 'state_dict'; has {keys}); "
                               f'give an iter_N.pth written by tools/train.py')
    state = extract_state_dict(checkpoint['state_dict'], key=None)
    report = state_dict_report(model, state)
    problems = [f'{len(report[k])} {k} keys (e.g. {report[k][0]})'
                for k in ('missing', 'unexpected', 'mismatched') if report[k]]
    if problems:
        raise WeightsFileError(f'checkpoint {path} does not fit the model of this config (trained '
                               f'with another config?): {"; ".join(problems)}')
    model.load_state_dict(state, strict=True)
    meta = dict(checkpoint.get('meta') or {})
    return dict(path=str(path), iter=meta.get('iter'), epoch=meta.get('epoch'))


def load_model(config, checkpoint: str | os.PathLike | None = None,
               cfg_options: dict | None = None, device: str | torch.device = 'cpu'):
    """Build the model of ``config`` (a path or a Config) and load a runner checkpoint into it.

    ``checkpoint=None`` keeps the config's initial weights: the base model. Returns
    ``(model in eval mode on device, cfg, checkpoint info dict or None)``.
    """
    from rankekit.registry import MODELS
    cfg = load_config(str(config), cfg_options) if isinstance(config, (str, Path)) else config
    if 'model' not in cfg:
        raise KeyError(f'config {getattr(cfg, "filename", config)} has no model')
    seed = (cfg.get('randomness') or {}).get('seed')
    if seed is not None:  # as the Runner does: a randomly initialised part starts as in training
        from mmengine.runner import set_random_seed
        set_random_seed(int(seed))
    model = MODELS.build(cfg.model)
    if not (hasattr(model, 'generate') and hasattr(model, 'decode')):
        raise TypeError(f'the config builds a {type(model).__name__}, which cannot generate '
                        f'(no generate/decode); these tools evaluate RankEModel configs')
    info = load_runner_checkpoint(model, checkpoint) if checkpoint is not None else None
    return model.to(device).eval(), cfg, info


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def metric_configs(evaluator_cfg) -> list:
    """The metric configs of a ``val_evaluator`` (a list, one metric, or an Evaluator dict)."""
    if evaluator_cfg is None:
        raise KeyError('the config has no val_evaluator: nothing to compute (add metrics, see '
                       'configs/_base_/toy_evaluation.py)')
    if isinstance(evaluator_cfg, dict) and 'metrics' in evaluator_cfg:
        evaluator_cfg = evaluator_cfg['metrics']
    metrics = list(evaluator_cfg) if isinstance(evaluator_cfg, (list, tuple)) else [evaluator_cfg]
    if not metrics:
        raise ValueError('val_evaluator lists no metrics')
    return metrics


def build_evaluator(evaluator_cfg):
    """An mmengine ``Evaluator`` of the rankekit metrics of ``evaluator_cfg``."""
    from mmengine.evaluator import Evaluator

    from rankekit.registry import METRICS
    built = [m if not isinstance(m, dict) else METRICS.build(dict(m))
             for m in metric_configs(evaluator_cfg)]
    return Evaluator(built)


def prompt_dataset(cfg, prompt_file: str | None = None):
    """Items with ``caption`` (and, for ToyShapes/ToyPrompts, ``attributes``) to evaluate on:
    a prompt file, else the dataset of the config's ``val_dataloader``."""
    from rankekit.registry import DATASETS
    if prompt_file is not None:
        return DATASETS.build(dict(type='PromptList', file=str(prompt_file)))
    loader = cfg.get('val_dataloader')
    if not loader or 'dataset' not in loader:
        raise KeyError('the config has no val_dataloader.dataset to take prompts from; give '
                       '--prompt-file (one prompt per line)')
    return DATASETS.build(dict(loader['dataset']))


def _item(dataset, index: int) -> dict:
    item = dataset[index]
    if not isinstance(item, dict) or not isinstance(item.get('caption'), str):
        raise ValueError(f"prompt dataset item {index} has no 'caption' string (got "
                         f'{type(item).__name__}); evaluation needs items like '
                         f"dict(caption='a red circle')")
    return item


def _collate(items: list[dict]) -> dict:
    from mmengine.dataset import default_collate
    return default_collate(items)


def evaluate_combos(model, evaluator_cfg, dataset, combos: Sequence[tuple[str, str]],
                    seeds: Sequence[int] = (0,), num: int | None = None, batch_size: int = 50,
                    sampling: dict | None = None, grid_num: int = 16,
                    progress: bool = True) -> dict:
    """Metrics of the first ``num`` items of ``dataset`` for every combo and seed.

    For each seed and policy the tokens of all prompts are sampled once (kept; small), then each
    of the policy's decoders renders them batch by batch into the evaluator (images are never all
    held at once). Returns ``{combo_name: dict(policy, decoder, per_seed={seed: metrics}, mean,
    std, grid=images of the first grid_num prompts under the first seed)}``.
    """
    from rankekit.evaluation.stats import aggregate
    check_combos(model, combos)
    num = len(dataset) if num is None else int(num)
    if not 1 <= num <= len(dataset):
        raise ValueError(f'--num {num}: the prompt set has {len(dataset)} prompts; use 1..'
                         f'{len(dataset)} (or a larger dataset / prompt file)')
    # the dataset's own images are not needed (generated images replace them): not kept
    items = [{k: v for k, v in _item(dataset, i).items() if k != 'image'} for i in range(num)]
    batches = [_collate(items[lo:hi]) for lo, hi in batch_ranges(num, batch_size)]
    prompts = [str(p) for batch in batches for p in batch['caption']]
    evaluator = build_evaluator(evaluator_cfg)
    policies = list(dict.fromkeys(p for p, _ in combos))
    results = {combo_name(c): dict(policy=c[0], decoder=c[1], per_seed={}) for c in combos}

    bar = _Progress(progress, total=len(seeds) * (len(policies) + len(combos)) * num)
    with bar:
        for seed in seeds:
            for policy in policies:
                bar.describe(f'seed {seed}: sampling {policy} policy')
                tokens = sample_tokens(model, prompts, policy, seed, batch_size, sampling,
                                       on_batch=bar.advance)['tokens']
                for decoder in (d for p, d in combos if p == policy):
                    name = combo_name((policy, decoder))
                    bar.describe(f'seed {seed}: {name} decode + metrics')
                    grid = []
                    for (lo, hi), batch in zip(batch_ranges(num, batch_size), batches):
                        images = decode_tokens(model, tokens[lo:hi], decoder, batch_size)
                        samples = [dict(caption=c, tokens=t, image=img) for c, t, img in
                                   zip(prompts[lo:hi], tokens[lo:hi], images)]
                        evaluator.process(samples, batch)
                        if seed == seeds[0] and lo < grid_num:
                            grid.append(images[:grid_num - lo])
                        bar.advance(hi - lo)
                    metrics = {k: float(v) for k, v in evaluator.evaluate(num).items()}
                    results[name]['per_seed'][int(seed)] = metrics
                    if grid:
                        results[name]['grid'] = torch.cat(grid)
    for result in results.values():
        result['mean'], result['std'] = aggregate(list(result['per_seed'].values()))
    return results


class _Progress:
    """A rich progress bar (or nothing) with ``advance``/``describe``."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn('{task.description}'), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn('eta'),
                                TimeRemainingColumn())
            self.task = self.bar.add_task('', total=total)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text)


def results_table(results: dict, title: str = ''):
    """A rich Table: one row per metric, one column per combo (mean ± std over seeds)."""
    from rich.table import Table

    from rankekit.evaluation.stats import format_mean_std
    names = list(dict.fromkeys(k for r in results.values() for k in r['mean']))
    table = Table(title=title or None)
    table.add_column('metric', style='bold', no_wrap=True)
    for combo in results:
        table.add_column(combo, justify='right')
    for name in names:
        table.add_row(name, *[format_mean_std(r['mean'].get(name), r['std'].get(name))
                              for r in results.values()])
    return table


# ------------------------------------------------------------------------------------------------
# command lines
# ------------------------------------------------------------------------------------------------
def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('sampling (default: the model\'s rollout settings)')
    group.add_argument('--cfg-scale', type=float, help='classifier-free guidance scale')
    group.add_argument('--temperature', type=float, help='sampling temperature')
    group.add_argument('--top-k', type=int, help='keep the k most likely tokens (0: all)')
    group.add_argument('--top-p', type=float, help='nucleus sampling threshold (1: off)')


def _sampling_overrides(args) -> dict:
    return dict(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p)


def _default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def parse_test_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='tools/test.py',
        description='Evaluate a trained RankE checkpoint (or, with --base, the untrained base '
        "model) with the config's val_evaluator metrics, for several policy x decoder combos "
        'and seeds. Writes metrics.json and one image grid per combo.')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', nargs='?',
                        help='a runner checkpoint (iter_N.pth) or a work dir (its last one)')
    parser.add_argument('--base', action='store_true',
                        help="evaluate the config's initial model (no checkpoint)")
    parser.add_argument('--combos', nargs='+', metavar='POLICY:DECODER',
                        help=f'combos of online | ema | base (default: {" ".join(DEFAULT_COMBOS)}; '
                        'with --base: base:base)')
    parser.add_argument('--num', type=int, help='number of prompts (default: all of the '
                        "val_dataloader dataset or prompt file)")
    parser.add_argument('--prompt-file', help='.txt (one prompt per line) or .jsonl prompts '
                        "instead of the config's val_dataloader dataset")
    parser.add_argument('--seeds', nargs='+', type=int, default=[0],
                        help='sampling seeds; several give mean ± std (default: 0)')
    parser.add_argument('--batch-size', type=int,
                        help='prompts per batch (default: val_dataloader.batch_size or 50)')
    parser.add_argument('--out-dir', help='output folder (default: <checkpoint dir>/test_<ckpt '
                        'name>, or work_dirs/<config name>/test_base with --base)')
    parser.add_argument('--grid-num', type=int, default=16, help='prompts in each grid')
    parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda if present)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. val_dataloader.dataset.num_samples=100')
    _add_sampling_args(parser)
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (not args.base):
        parser.error('give a CHECKPOINT, or --base to evaluate the untrained model (not both)')
    return args


def _grid_file(combo: str) -> str:
    return f'grid_{combo.replace(":", "-")}.png'


def run_test(args: argparse.Namespace) -> dict:
    """Everything ``tools/test.py`` does; returns the written metrics dict."""
    started = time.time()
    device = args.device or _default_device()
    # the options first: a typo fails before the model is built
    combos = parse_combos(args.combos or (['base:base'] if args.base else DEFAULT_COMBOS))
    model, cfg, info = load_model(args.config, args.checkpoint, args.cfg_options, device)
    dataset = prompt_dataset(cfg, args.prompt_file)
    batch_size = args.batch_size or int((cfg.get('val_dataloader') or {}).get('batch_size', 50))
    sampling = sampling_settings(model, _sampling_overrides(args))
    if args.out_dir:
        out_dir = Path(args.out_dir)
    elif info is not None:
        out_dir = Path(info['path']).parent / f'test_{Path(info["path"]).stem}'
    else:
        out_dir = Path(default_work_dir(args.config)) / 'test_base'
    results = evaluate_combos(model, cfg.get('val_evaluator'), dataset, combos, args.seeds,
                              args.num, batch_size, sampling, args.grid_num,
                              progress=not args.no_progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    for combo, result in results.items():
        grid = result.pop('grid', None)
        if grid is not None:
            scale = auto_scale(grid.shape[-1])
            save_png(make_grid(grid, nrow=int(math.ceil(math.sqrt(len(grid)))), scale=scale),
                     out_dir / _grid_file(combo))
            result['grid'] = _grid_file(combo)
        result['per_seed'] = {str(k): v for k, v in result['per_seed'].items()}
    record = dict(config=str(args.config), checkpoint=info['path'] if info else None,
                  checkpoint_iter=info['iter'] if info else 0, base=bool(args.base),
                  prompts=args.prompt_file or 'val_dataloader.dataset',
                  num_prompts=args.num or len(dataset), seeds=list(args.seeds),
                  sampling=sampling, std='sample std over seeds (n - 1); null for one seed',
                  results=results, wall_time_s=round(time.time() - started, 2))
    with open(out_dir / 'metrics.json', 'w') as f:
        json.dump(record, f, indent=2)
    from rich.console import Console
    console = Console()
    what = 'base model' if args.base else f'{info["path"]} (iter {info["iter"]})'
    console.print(results_table(results, title=f'{what}: {record["num_prompts"]} prompts, '
                                f'seeds {list(args.seeds)}'))
    console.print(f'metrics: {out_dir / "metrics.json"}; grids: {out_dir}/grid_*.png',
                  highlight=False)
    return record


def evaluate_main(argv=None) -> int:
    """``tools/test.py``; a bad config, option or file is one ``error:`` line and exit code 2."""
    args = parse_test_args(argv)
    return run_reporting_errors(lambda: run_test(args))


def parse_sample_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='tools/sample.py',
        description='Generate images for prompts with any policy x decoder combination; writes '
        'one PNG per prompt and a grid.')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', nargs='?', help='a runner checkpoint or work dir '
                        '(default: none, the untrained base model of the config)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--prompts', nargs='+', help='prompts, e.g. "a red circle on the left"')
    source.add_argument('--prompt-file', help='.txt (one per line) or .jsonl prompts')
    parser.add_argument('--policy', choices=CHOICES, default='online',
                        help='online (trained), ema or base (initial) policy')
    parser.add_argument('--decoder', choices=CHOICES, default='ema',
                        help='online, ema or base (initial) decoder')
    parser.add_argument('--seed', type=int, default=0, help='sampling seed (prompt i uses seed '
                        f'* {SEED_STRIDE} + i, as tools/test.py)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--out-dir', default='samples', help='output folder (default: samples)')
    parser.add_argument('--scale', type=int, help='upscale PNGs by this factor (nearest; '
                        'default: 1 for files, up to 64 px tiles in the grid)')
    parser.add_argument('--nrow', type=int, default=8, help='images per grid row')
    parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda if present)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys')
    _add_sampling_args(parser)
    return parser.parse_args(argv)


def run_sample(args: argparse.Namespace) -> list[Path]:
    """Everything ``tools/sample.py`` does; returns the written PNG paths (grid last)."""
    from rankekit.datasets.prompts import read_prompt_file
    prompts = list(args.prompts) if args.prompts else read_prompt_file(args.prompt_file)
    bad = [i for i, p in enumerate(prompts) if not p.strip()]
    if bad:
        raise ValueError(f'--prompts has empty prompts at positions {bad}')
    model, _, info = load_model(args.config, args.checkpoint, args.cfg_options,
                                args.device or _default_device())
    check_combos(model, [(args.policy, args.decoder)])
    out = sample_tokens(model, prompts, args.policy, args.seed, args.batch_size,
                        _sampling_overrides(args), args.decoder)
    out_dir = Path(args.out_dir)
    paths = []
    for i, (prompt, image) in enumerate(zip(prompts, out['images'])):
        tile = make_grid(image[None], nrow=1, padding=0, scale=args.scale or 1)
        paths.append(save_png(tile, out_dir / f'{i:03d}_{slug(prompt)}.png'))
    scale = args.scale or auto_scale(out['images'].shape[-1])
    paths.append(save_png(make_grid(out['images'], nrow=args.nrow, scale=scale),
                          out_dir / 'grid.png'))
    with open(out_dir / 'prompts.json', 'w') as f:
        json.dump(dict(policy=args.policy, decoder=args.decoder, seed=args.seed,
                       checkpoint=info['path'] if info else None,
                       files=[dict(file=p.name, prompt=t) for p, t in zip(paths, prompts)]),
                  f, indent=2)
    print(f'wrote {len(prompts)} images and grid.png to {out_dir}')
    return paths


def sample_main(argv=None) -> int:
    """``tools/sample.py``; a bad config, option or file is one ``error:`` line and exit code 2."""
    args = parse_sample_args(argv)
    return run_reporting_errors(lambda: run_sample(args))
