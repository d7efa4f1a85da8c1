"""Checkpoints that survive a crash: atomic writes, finite weights, a careful ``--resume auto``.

MMEngine's ``Runner.save_checkpoint`` writes ``iter_N.pth`` in place and ``CheckpointHook``
rewrites ``last_checkpoint`` in place and deletes the oldest checkpoint *before* saving the new
one: a kill during a save can leave a half file under a checkpoint's name, a pointer to it, and
(with ``max_keep_ckpts=1``) nothing to resume from. Here:

- :class:`SafeRunner` writes every checkpoint to ``<name>.partial`` in the same folder, fsyncs it
  and renames it into place; it refuses to write non-finite weights; on resume it picks the
  newest *complete* checkpoint and refuses a config that changes the experiment. Checkpoints
  are read weights-only (a file that would run code is refused, :mod:`rankekit.utils.run_files`)
  and written in a form that reads so (the message hub's HistoryBuffers as tensors).
- :class:`SafeCheckpointHook` replaces the pointer atomically and deletes outdated checkpoints
  only after the new one is on disk.

``tools/train.py`` builds a :class:`SafeRunner` unless the config names another ``runner_type``.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import tempfile
from pathlib import Path

import torch
from mmengine.dist import broadcast, is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.utils import apply_to

from rankekit.registry import HOOKS, RUNNERS
from rankekit.utils.weights import UnsafeCheckpointError, WeightsFileError
from rankekit.utils.run_files import (PARTIAL_SUFFIX, POINTER_NAME, checkpoint_problem,
                                      find_resume_checkpoint,
                                      fsync_path,
                                      load_runner_checkpoint_file,
                                      plain_history_buffers,
                                      remove_partial_files,
                                      remove_quietly,
                                      unsafe_checkpoint_problem,
                                      write_bytes_atomic)
from rankekit.utils.config_diff import config_diff
from rankekit.utils.distributed import gather_full_, is_sharded

#: config keys whose change makes a different experiment: resuming across them is refused
EXPERIMENT_KEYS = ('model', 'optim_wrapper', 'train_cfg', 'param_scheduler', 'train_dataloader',
                   'default_hooks.coevolution')
#: ... except these, which may change between a run and its resumption
RESUMABLE_CHANGES = ('train_cfg.max_iters', 'train_cfg.max_epochs', 'train_cfg.val_interval',
                     'train_cfg.val_begin', 'train_dataloader.num_workers',
                     'train_dataloader.persistent_workers', 'train_dataloader.pin_memory',
                     'train_dataloader.prefetch_factor')


class NonFiniteCheckpointError(RuntimeError):
    """A checkpoint was not written because some weights are NaN or infinite."""


class ResumeConfigError(ValueError):
    """The checkpoint to resume from was trained with a config that differs in the experiment."""


class WorkDirError(RuntimeError):
    """The work dir cannot be created or written to."""


# ------------------------------------------------------------------------------------------------
# checks, usable without a runner
# ------------------------------------------------------------------------------------------------
def check_work_dir(work_dir: str | os.PathLike) -> None:
    """Fail early, with a fix, when ``work_dir`` cannot be created or written to.

    Nothing is left behind: the probe is a temporary file in the work dir, or in its nearest
    existing parent when the work dir does not exist yet.
    """
    path = Path(work_dir).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WorkDirError(f'work dir {path} cannot be created: {existing} is a file, not a '
                           f'folder. Fix: pass another --work-dir')
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        where = 'is not writable' if existing == path else \
            f'cannot be created: its parent {existing} is not writable'
        raise WorkDirError(f'work dir {path} {where} ({exc.strerror or exc}). Fix: pass a '
                           f'writable --work-dir, or make it writable (chmod u+w {existing})'
                           ) from exc


def nonfinite_tensors(state: dict) -> list[str]:
    """``'name (k of n values)'`` for every floating tensor of ``state`` holding NaN or inf."""
    bad = []
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad.append(f'{name} ({int((~finite).sum())} of {value.numel()} values)')
    return bad


def _is_experiment_key(key: str) -> bool:
    def under(prefixes):
        return any(key == p or key.startswith(p + '.') or key.startswith(p + '[')
                   for p in prefixes)
    return under(EXPERIMENT_KEYS) and not under(RESUMABLE_CHANGES)


def saved_config(checkpoint: str | os.PathLike):
    """The config a runner checkpoint was trained with (MMEngine keeps it in ``meta.cfg``).

    The file is memory-mapped: only its pickled objects are read, not its tensors, and safely
    (weights only: a file that would run code is refused here, before anything is built). None
    when the checkpoint holds no config (a file not written by an MMEngine runner).
    """
    from mmengine.config import Config
    try:
        obj = load_runner_checkpoint_file(checkpoint, map_location='cpu', mmap=True)
    except UnsafeCheckpointError:
        raise  # already one line that says what to do
    except Exception as exc:
        raise WeightsFileError(f'checkpoint {checkpoint} could not be read ({type(exc).__name__}:'
                               f' {exc}); give another one with --resume PATH, or --resume auto'
                               ) from exc
    text = (obj.get('meta') or {}).get('cfg') if isinstance(obj, dict) else None
    return Config.fromstring(text, file_format='.py') if text else None


def resume_config_diff(saved, current) -> dict:
    """dotted key -> (saved value, current value) for the experiment keys that differ."""
    return {k: v for k, v in config_diff(saved, current).items() if _is_experiment_key(k)}


def check_resume_config(checkpoint: str | os.PathLike, cfg) -> None:
    """Raise :class:`ResumeConfigError` if ``cfg`` differs from the checkpoint's config in a key
    that changes the experiment (:data:`EXPERIMENT_KEYS`; ``max_iters`` may change)."""
    saved = saved_config(checkpoint)
    if saved is None:
        return
    diff = resume_config_diff(saved, cfg)
    if not diff:
        return
    limit = 8
    items = [f'{k}: {v[0]!r} -> {v[1]!r}' for k, v in diff.items()]
    more = f' (+{len(items) - limit} more)' if len(items) > limit else ''
    fixes = [f'{k.replace("[", ".").replace("]", "")}={v[0]!r}' for k, v in diff.items()
             if v[0] != '<absent>' and not isinstance(v[0], (dict, list))][:limit]
    match = f' (e.g. --cfg-options {" ".join(fixes)})' if fixes else ''
    raise ResumeConfigError(
        f'cannot resume from {checkpoint}: it was trained with a different config; '
        f'{len(items)} key(s) that change the experiment differ (checkpoint -> now): '
        f'{"; ".join(items[:limit])}{more}. To continue that run, use its config{match}; '
        f'for a new experiment, pass a new --work-dir; to resume anyway, add '
        f'--resume-any-config.')


def _resume_anyway(cfg) -> bool:
    return bool(cfg.get('resume_any_config', False))


# ------------------------------------------------------------------------------------------------
# the runner and the hook
# ------------------------------------------------------------------------------------------------
@RUNNERS.register_module()
class SafeRunner(Runner):
    """MMEngine Runner whose checkpoints survive crashes: atomic, finite, resumed with care.

    - ``save_checkpoint`` writes ``<file>.partial`` (fsynced) and renames it into place, so a
      kill leaves the previous checkpoints intact; leftover ``.partial`` files are removed at
      the next save. It refuses, with the tensor names, to write NaN/inf weights.
    - ``resume=True`` without a path (``--resume auto``) takes the newest complete checkpoint of
      the work dir, falling back past a missing or truncated one with one log line.
    - Resuming checks that the config matches the checkpoint's in the keys that change the
      experiment (max_iters may change); ``resume_any_config=True``
      (``--resume-any-config``) skips that check.
    - Checkpoints are read weights-only: a ``resume`` / ``load_from`` file that would need full
      unpickling is refused before anything is built. The message hub's HistoryBuffers are saved
      as tensors so that its own checkpoints read that way (a save that would not is a warning).

    Selected with ``runner_type = 'SafeRunner'`` (the default of ``tools/train.py``).
    """

    info_example = dict(runner_type='SafeRunner')

    @classmethod
    def from_cfg(cls, cfg) -> 'SafeRunner':
        """Resolve and check the checkpoint to resume from before building anything heavy."""
        cfg = copy.deepcopy(cfg)
        note = None
        if cfg.get('resume', False):
            if cfg.get('load_from') is None:
                path, note = find_resume_checkpoint(cfg.work_dir)
            else:
                path = cfg.load_from
                problem = checkpoint_problem(path)
                if problem is not None:
                    raise WeightsFileError(f'--resume {path}: the checkpoint {problem}; give an '
                                           f'earlier one, or use --resume auto, which takes '
                                           f'the newest complete one')
            if path is not None:
                if _resume_anyway(cfg):
                    load_runner_checkpoint_file(path, 'cpu', mmap=True)  # refuse unsafe files now
                else:
                    check_resume_config(path, cfg)  # reads it safely
                cfg.load_from = path  # resume exactly the file that was checked
        elif cfg.get('load_from') is not None and osp.isfile(cfg.load_from):
            # an unsafe file is refused at set-up (one line), not when training starts
            load_runner_checkpoint_file(cfg.load_from, 'cpu', mmap=True)
        runner = super().from_cfg(cfg)
        if note:
            runner.logger.warning(note)
        return runner

    def load_or_resume(self) -> None:
        """As MMEngine's, but ``--resume auto`` skips incomplete checkpoints (Runner built
        directly rather than through :meth:`from_cfg`, which already resolved the path)."""
        if not self._has_loaded and self._resume and self._load_from is None:
            path, note = find_resume_checkpoint(self.work_dir)
            if note:
                self.logger.warning(note)
            if path is None:
                self.logger.info(f'--resume auto: no checkpoint in {self.work_dir}; training '
                                 f'from scratch')
                self._resume = False
            else:
                if not _resume_anyway(self.cfg):
                    check_resume_config(path, self.cfg)
                self._load_from = path
        super().load_or_resume()

    def save_checkpoint(self, out_dir: str, filename: str, file_client_args=None,
                        save_optimizer: bool = True, save_param_scheduler: bool = True,
                        meta=None, by_epoch: bool = True, backend_args=None):
        """MMEngine's ``save_checkpoint``, written atomically, and only with finite weights."""
        try:
            return self._save_checkpoint(out_dir, filename, file_client_args, save_optimizer,
                                         save_param_scheduler, meta, by_epoch, backend_args)
        finally:  # gathered full tensors of a sharded run: not kept between saves
            self._gathered = None

    def _save_checkpoint(self, out_dir, filename, file_client_args, save_optimizer,
                         save_param_scheduler, meta, by_epoch, backend_args):
        model = self.model.module if is_model_wrapper(self.model) else self.model
        final = osp.join(out_dir, filename)
        state = model.state_dict()
        self._gathered = None
        if any(is_sharded(v) for v in state.values()):
            # sharded (FSDP2) parts: every rank gathers the full tensors (a collective), rank 0
            # writes them (injected in call_hook below), so checkpoints look like unsharded ones
            state = gather_full_(state)
            optimizer = gather_full_(self.optim_wrapper.state_dict()) \
                if save_optimizer and not isinstance(self.optim_wrapper, dict) else None
            self._gathered = dict(state_dict=state, optimizer=optimizer)
        bad = nonfinite_tensors(state)  # every rank: all of them stop together
        if bad:
            limit = 6
            more = f' (+{len(bad) - limit} more)' if len(bad) > limit else ''
            raise NonFiniteCheckpointError(
                f'not writing checkpoint {final}: {len(bad)} tensor(s) of the model are not '
                f'finite (NaN/inf): {", ".join(bad[:limit])}{more}. The checkpoints already on '
                f'disk are untouched. A bad update got through: resume from the last good one '
                f'(--resume auto) with a lower learning rate or tighter clip_grad')
        if not is_main_process():
            return
        args = dict(save_optimizer=save_optimizer, save_param_scheduler=save_param_scheduler,
                    meta=meta, by_epoch=by_epoch, backend_args=backend_args)
        local = file_client_args is None and isinstance(
            get_file_backend(out_dir, backend_args=backend_args), LocalBackend)
        if not local:  # object stores write whole objects; no rename there
            return super().save_checkpoint(out_dir, filename, file_client_args, **args)
        for stale in remove_partial_files(out_dir):
            self.logger.info(f'removed {stale}, left by an interrupted save')
        partial = final + PARTIAL_SUFFIX
        try:
            super().save_checkpoint(out_dir, filename + PARTIAL_SUFFIX, None, **args)
            fsync_path(partial)
            os.replace(partial, final)
        except BaseException:
            remove_quietly(partial)
            raise
        fsync_path(out_dir)
        # a hook that stored an object safe loading refuses would make the file unresumable:
        # say so now, not when someone resumes (the pickle is read, memory-mapped tensors not)
        problem = unsafe_checkpoint_problem(final)
        if problem:
            self.logger.warning(f'{problem} [written by this run: a hook or the model stored '
                                f'objects other than tensors, numbers, strings, lists and dicts]')

    def _init_model_weights(self) -> None:
        """MMEngine's, minus broadcasting sharded (FSDP2) tensors: each rank's shard is its own
        (the wrapper broadcast rank 0's weights before sharding them)."""
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state = model.state_dict()
        if not any(is_sharded(v) for v in state.values()):
            return super()._init_model_weights()
        if hasattr(model, 'init_weights'):
            model.init_weights()
        for value in model.state_dict().values():
            if not is_sharded(value):
                broadcast(value)

    def call_hook(self, fn_name: str, **kwargs) -> None:
        gathered = getattr(self, '_gathered', None)
        if fn_name == 'before_save_checkpoint' and gathered:
            checkpoint = kwargs['checkpoint']
            checkpoint['state_dict'] = {k: v.cpu() for k, v in gathered['state_dict'].items()}
            if 'optimizer' in checkpoint and gathered['optimizer'] is not None:
                checkpoint['optimizer'] = apply_to(gathered['optimizer'],
                                                   lambda x: hasattr(x, 'cpu'), lambda x: x.cpu())
        super().call_hook(fn_name, **kwargs)
        if fn_name == 'before_save_checkpoint':  # after every hook added its part
            plain_history_buffers(kwargs['checkpoint'])


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """CheckpointHook that replaces ``last_checkpoint`` atomically and prunes after saving.

    Same arguments as MMEngine's ``CheckpointHook``. The pointer is updated only once the new
    checkpoint is complete on disk, by an atomic rename; checkpoints beyond ``max_keep_ckpts``
    are deleted after that, so a crash during a save never leaves the run without a checkpoint.
    Pair it with :class:`SafeRunner`, which makes the checkpoint file itself atomic.
    """

    info_example = dict(type='SafeCheckpointHook', interval=100, by_epoch=False,
                        max_keep_ckpts=3)

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            # saved with the checkpoint, so a resumed run knows which files it owns
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args,
                               save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta,
                               by_epoch=self.by_epoch, backend_args=self.backend_args,
                               **self.args)
        if not is_main_process():
            return
        write_bytes_atomic(osp.join(runner.work_dir, POINTER_NAME), str(self.last_ckpt).encode())
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed checkpoints are folders
                self.file_backend.rmtree(path)
