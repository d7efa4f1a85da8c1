"""Training monitors: the latent covariate shift every N iterations, and grids of fixed prompts.

Both hooks sample with fixed per-prompt seeds
(:func:`rankekit.evaluation.generation.prompt_seeds`) and with every module in eval mode,
restoring each module's own mode afterwards: they touch neither the global RNG, nor the rollout
RNG, nor any buffer, so a run trains the same with or without them.
"""
from __future__ import annotations

import json
import os
import os.path as osp

import numpy as np
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from rankekit.registry import HOOKS

# the tokenizer parts that decide the codes of an image (the fingerprint of a cached set)
_ENCODER_PARTS = ('encoder.', 'quant_conv.', 'quantize.embedding.')
LCS_KEYS = ('kl', 'entropy_bits', 'real_floor')


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _captions_of(dataset, count: int, what: str) -> list[str]:
    if len(dataset) < count:
        raise ValueError(f'{what}: wanted {count} prompts but the dataset has only '
                         f'{len(dataset)} items; lower num_prompts')
    captions = []
    for i in range(count):
        item = dataset[i]
        caption = item.get('caption') if isinstance(item, dict) else None
        if not isinstance(caption, str):
            raise ValueError(f"{what}: dataset item {i} has no 'caption'; give prompts= (a list "
                             f'of strings or a dataset config with captions)')
        captions.append(caption)
    return captions


def resolve_prompts(prompts, num_prompts: int | None, fallback, what: str) -> list[str]:
    """Fixed prompts from a list of strings, a dataset config (its first ``num_prompts``
    captions) or, for ``None``, the first ``num_prompts`` captions of ``fallback`` (a dataset)."""
    if isinstance(prompts, str):
        raise TypeError(f'{what}: prompts must be a list of strings, got one string; wrap it in '
                        f'a list')
    if isinstance(prompts, (list, tuple)):
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f'{what}: prompts must be a non-empty list of non-empty strings')
        return list(prompts[:num_prompts] if num_prompts else prompts)
    if num_prompts is None or num_prompts < 1:
        raise ValueError(f'{what}: num_prompts must be >= 1, got {num_prompts!r}')
    if isinstance(prompts, dict):
        from rankekit.registry import DATASETS
        return _captions_of(DATASETS.build(dict(prompts)), num_prompts, what)
    if prompts is not None:
        raise TypeError(f'{what}: prompts must be None, a list of strings or a dataset config, '
                        f'got {type(prompts).__name__}')
    return _captions_of(fallback, num_prompts, what)


@HOOKS.register_module()
class CovariateShiftMonitorHook(Hook):
    """Log the latent covariate shift (LCS-KL, token entropy, real floor) every N iterations.

    Every ``interval`` iterations the policy samples one image's tokens for each of
    ``num_prompts`` fixed prompts (fixed seeds); their code histogram is compared with the codes
    of ``num_real`` real images (:func:`rankekit.evaluation.lcs_from_codes`). The real codes come
    from the model's own tokenizer, whose encoder and codebook are frozen in RankE: they are
    computed once, before training, and kept (and written to ``reference_cache`` if given).

    The numbers go to the message hub as ``train/lcs/kl``, ``train/lcs/entropy_bits`` and
    ``train/lcs/real_floor``, so the LoggerHook line of that iteration (text log and
    ``scalars.json``) carries them; they are removed again before the next iteration, so later
    lines do not repeat stale values. ``interval`` must therefore be a multiple of the
    LoggerHook's interval. The value before training is written at step 0 (``at_start``).

    Args:
        interval: iterations between measurements.
        num_prompts: prompts (one sample each). Compare with ``num_real / 2``: the real floor
            is the KL between two halves of the real set, and KL estimates grow as samples shrink.
        real: real images: a dataset config, or ``None`` for the training dataset.
        num_real: real images to encode (the first ones of ``real``).
        prompts: ``None`` (the captions of the first ``num_prompts`` real items), a list of
            strings or a dataset config with captions.
        policy: 'online', 'ema' or 'base'.
        seed: sampling seed (prompt i uses ``seed * 1_000_000 + i``).
        sampling: overrides of the model's rollout sampling settings (cfg_scale, top_k, ...).
        batch_size: prompts / real images per forward pass.
        eps: smoothing of the histograms (as :class:`LCSMetric`).
        reference_cache: optional ``.npz`` path for the real codes (recomputed when stale).
        at_start: also measure before the first iteration.
    """

    priority = 'NORMAL'  # before the LoggerHook (BELOW_NORMAL): the log line of this iteration
    info_example = dict(type='CovariateShiftMonitorHook', interval=10, num_prompts=4,
                        real=dict(type='ToyShapes', split='test', num_samples=8), num_real=8)

    def __init__(self, interval: int = 50, num_prompts: int = 64, real=None,
                 num_real: int = 128, prompts=None, policy: str = 'online', seed: int = 0,
                 sampling: dict | None = None, batch_size: int = 64, eps: float = 1e-6,
                 reference_cache: str | None = None, at_start: bool = True):
        from rankekit.evaluation.generation import CHOICES
        if int(interval) < 1:
            raise ValueError(f'CovariateShiftMonitorHook interval must be >= 1, got {interval}')
        if policy not in CHOICES:
            raise ValueError(f"CovariateShiftMonitorHook policy must be one of {CHOICES}, got "
                             f"'{policy}'")
        if int(num_real) < 2:
            raise ValueError('CovariateShiftMonitorHook num_real must be >= 2 (the real floor '
                             'compares two halves)')
        self.interval, self.num_prompts, self.num_real = int(interval), num_prompts, int(num_real)
        self.real, self.prompts_cfg, self.policy, self.seed = real, prompts, policy, int(seed)
        self.sampling, self.batch_size, self.eps = dict(sampling or {}), int(batch_size), eps
        self.reference_cache, self.at_start = reference_cache, at_start
        self.prompts: list[str] | None = None
        self.real_codes: np.ndarray | None = None
        self.last: dict | None = None

    # ---------------------------------------------------------------------------- set-up
    def _check_logger_interval(self, runner) -> None:
        from mmengine.hooks import LoggerHook
        for hook in runner.hooks:
            if isinstance(hook, LoggerHook) and self.interval % hook.interval:
                raise ValueError(
                    f'CovariateShiftMonitorHook interval={self.interval} is not a multiple of the '
                    f'LoggerHook interval={hook.interval}, so its numbers would miss the log '
                    f'lines; use interval={hook.interval * max(1, self.interval // hook.interval)}'
                    f' or change default_hooks.logger.interval')

    def compute_real_codes(self, model, fallback_dataset=None) -> np.ndarray:
        """Codes (num_real, L) of the real images with the model's tokenizer (once)."""
        if self.real_codes is not None:
            return self.real_codes
        import torch

        from rankekit.evaluation.generation import eval_mode
        from rankekit.evaluation.common import (RealImages, cache_key, cached_arrays,
                                                module_device, module_fingerprint)
        real = RealImages(self.real if self.real is not None else fallback_dataset, self.num_real)
        tokenizer = model.tokenizer

        def compute():
            device = module_device(tokenizer)
            with eval_mode(tokenizer), torch.no_grad():
                codes = [tokenizer.images_to_codes(batch.to(device) * 2 - 1).cpu().numpy()
                         for batch in real.batches(self.batch_size)]
            return dict(codes=np.concatenate(codes).astype(np.int64))

        key = None
        if self.reference_cache is not None:
            key = cache_key(dict(monitor='lcs', real=real.describe(),
                                 tokenizer=module_fingerprint(tokenizer, _ENCODER_PARTS)))
        self.real_codes = cached_arrays(self.reference_cache, key or '', compute)['codes']
        if self.prompts is None:
            self.prompts = resolve_prompts(self.prompts_cfg, self.num_prompts, real.dataset,
                                           'CovariateShiftMonitorHook')
        return self.real_codes

    def measure(self, model) -> dict[str, float]:
        """``{kl, entropy_bits, real_floor}`` of the policy's tokens for the fixed prompts now."""
        from rankekit.evaluation.generation import check_combos, sample_tokens
        from rankekit.evaluation.lcs import lcs_from_codes
        if self.real_codes is None or self.prompts is None:
            raise RuntimeError('CovariateShiftMonitorHook: call compute_real_codes first')
        check_combos(model, [(self.policy, 'online')])
        tokens = sample_tokens(model, self.prompts, self.policy, self.seed, self.batch_size,
                               self.sampling, decoder='online')['tokens']
        result = lcs_from_codes(tokens, self.real_codes, int(model.tokenizer.codebook_size),
                                self.eps)
        return {k: float(result[k]) for k in LCS_KEYS}

    # ---------------------------------------------------------------------------- hook points
    def before_train(self, runner) -> None:
        self._check_logger_interval(runner)
        if not is_main_process():
            return
        model = _unwrap(runner.model)
        self.compute_real_codes(model, runner.train_dataloader.dataset)
        runner.logger.info(f'CovariateShiftMonitorHook: {len(self.real_codes)} real images '
                           f'encoded; LCS of {len(self.prompts)} prompts every {self.interval} '
                           f'iterations')
        if self.at_start and runner.iter == 0:
            values = self.measure(model)
            self.last = dict(iter=0, **values)
            runner.visualizer.add_scalars({f'lcs/{k}': v for k, v in values.items()}, step=0)
            runner.logger.info('LCS before training: ' + ', '.join(
                f'lcs/{k} {v:.4g}' for k, v in values.items()))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # the previous iteration's line is written: later lines must not repeat the values
        scalars = runner.message_hub.log_scalars
        for key in LCS_KEYS:
            scalars.pop(f'train/lcs/{key}', None)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not is_main_process() or not self.every_n_train_iters(runner, self.interval):
            return
        values = self.measure(_unwrap(runner.model))
        self.last = dict(iter=runner.iter + 1, **values)
        for key, value in values.items():
            runner.message_hub.update_scalar(f'train/lcs/{key}', value)
        runner.message_hub.update_info('lcs_monitor', dict(self.last))


@HOOKS.register_module()
class ImageGridHook(Hook):
    """Save a grid of fixed prompts every N iterations (visualizer and ``work_dir/grids``).

    Rows: the policy:decoder ``combos`` (e.g. ``online:ema`` next to ``online:base``, the same
    tokens through the co-evolved and the initial decoder); columns: the prompts, each with a
    fixed seed, so grids of different iterations compare directly. Each grid goes to
    ``runner.visualizer.add_image(name, grid, step=iter)`` (the local backend writes
    ``<log dir>/vis_data/vis_image/<name>_<iter>.png``; add a TensorBoard backend in the
    config's ``vis_backends`` to see them there) and to ``work_dir/<out_dir>/iter_<iter>.png``;
    ``layout.json`` there names the rows and columns.

    Args:
        interval: iterations between grids.
        prompts: a list of strings, a dataset config with captions, or ``None`` (the first
            ``num_prompts`` captions of the training dataset).
        num_prompts: columns when ``prompts`` is not a list (or a cap on its length).
        combos: rows, ``'policy:decoder'`` strings with each of online | ema | base.
        seed: sampling seed; sampling: overrides of the model's rollout sampling settings.
        scale: integer upscaling of each image (default: to at least 64 pixels).
        name: the visualizer's image name.
        out_dir: folder under the work dir.
        at_start: also draw the grid before the first iteration (``iter_0``).
    """

    priority = 'NORMAL'
    info_example = dict(type='ImageGridHook', interval=10, prompts=['a red circle'],
                        combos=['online:ema'])

    def __init__(self, interval: int = 100, prompts=None, num_prompts: int | None = 8,
                 combos=('online:ema', 'online:base'), seed: int = 0,
                 sampling: dict | None = None, scale: int | None = None, name: str = 'grid',
                 out_dir: str = 'grids', at_start: bool = True):
        from rankekit.evaluation.generation import parse_combos
        if int(interval) < 1:
            raise ValueError(f'ImageGridHook interval must be >= 1, got {interval}')
        self.interval, self.prompts_cfg, self.num_prompts = int(interval), prompts, num_prompts
        self.combos = parse_combos(combos)
        self.seed, self.sampling, self.scale = int(seed), dict(sampling or {}), scale
        self.name, self.out_dir, self.at_start = name, out_dir, at_start
        self.prompts: list[str] | None = None

    def grid(self, model):
        """(H, W, 3) uint8: one row per combo, one column per prompt."""
        import torch

        from rankekit.evaluation.generation import auto_scale, generate_combos, make_grid
        out = generate_combos(model, self.prompts, self.combos, self.seed,
                              batch_size=len(self.prompts), sampling=self.sampling)
        images = torch.cat([out[c]['images'] for c in self.combos])
        scale = self.scale or auto_scale(images.shape[-1])
        return make_grid(images, nrow=len(self.prompts), scale=scale)

    def draw(self, runner, step: int):
        grid = self.grid(_unwrap(runner.model))
        runner.visualizer.add_image(self.name, grid, step=step)
        from rankekit.evaluation.generation import save_png
        return save_png(grid, osp.join(runner.work_dir, self.out_dir, f'iter_{step}.png'))

    def before_train(self, runner) -> None:
        if not is_main_process():
            return
        from rankekit.evaluation.generation import check_combos, combo_name
        check_combos(_unwrap(runner.model), self.combos)
        self.prompts = resolve_prompts(self.prompts_cfg, self.num_prompts,
                                       runner.train_dataloader.dataset, 'ImageGridHook')
        folder = osp.join(runner.work_dir, self.out_dir)
        os.makedirs(folder, exist_ok=True)
        with open(osp.join(folder, 'layout.json'), 'w') as f:
            json.dump(dict(rows=[combo_name(c) for c in self.combos], columns=self.prompts,
                           seed=self.seed), f, indent=2)
        if self.at_start and runner.iter == 0:
            self.draw(runner, 0)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if is_main_process() and self.every_n_train_iters(runner, self.interval):
            self.draw(runner, runner.iter + 1)
