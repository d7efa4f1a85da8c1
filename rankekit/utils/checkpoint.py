"""Loading weights: one safe loader for third-party files, and the runner's own checkpoints.

Third-party weights (LlamaGen, Janus, CLIP, HPSv2, toy assets) always go through
:func:`load_weights_file` / :func:`load_model_weights`, which use ``torch.load(weights_only=True)``
and report problems in one clear message: which file, what is wrong, where the file comes from.

The runner's own checkpoints (``resume`` / ``load_from``) contain MMEngine objects (message hub
history buffers, numpy scalars) that ``weights_only=True`` rejects on torch >= 2.6. They are files
this toolkit wrote itself, so :func:`register_runner_checkpoint_loader` makes MMEngine load local
files with ``weights_only=False``. Do not point ``load_from`` at files you do not trust; use
``model.init_cfg``/the component ``pretrained=`` paths (weights only) for third-party weights.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

# prefixes added by DDP / torch.compile wrappers, removed on load
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')
# containers that official checkpoints nest their state_dict under, tried in this order
_CONTAINER_KEYS = ('model', 'module', 'state_dict', 'ema')


class WeightsFileError(RuntimeError):
    """A weights file is missing, unreadable, or does not fit the model."""


def _missing_file_message(path: Path, what: str, source: str | None, where: str | None) -> str:
    msg = f'{what} not found: {path}'
    if source:
        msg += f'. It comes from {source}'
    if where:
        msg += f'; put it at {where}'
    else:
        msg += '; put it there or pass its path in the config'
    return msg + ' (see docs/prepare_assets.md).'


def load_weights_file(path: str | os.PathLike, *, what: str = 'weights file',
                      source: str | None = None, where: str | None = None,
                      map_location: str | torch.device = 'cpu') -> object:
    """``torch.load(path, weights_only=True)`` with clear errors.

    Args:
        path: the file, or ``toy://<name>`` for a checkpoint shipped with the toy world.
        what: what the file is, for messages ("LlamaGen GPT-XL checkpoint").
        source: where a user gets it (a URL or a command), for the missing-file message.
        where: where the config expects it, for the missing-file message.
    """
    from rankekit.toy.assets import resolve_weights_path
    path = resolve_weights_path(path)  # toy://name -> packaged toy checkpoint (clear error)
    if not path.is_file():
        raise WeightsFileError(_missing_file_message(path, what, source, where))
    try:
        # some official checkpoints pickle their argparse args next to the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, zipfile.BadZipFile, RuntimeError, pickle.UnpicklingError) as exc:
        text = str(exc)
        if 'Weights only load failed' in text:
            raise WeightsFileError(
                f'{what} {path} holds Python objects besides tensors, which rankekit does not '
                f'unpickle for safety. Re-save it as a plain state_dict: '
                f'torch.save(torch.load(p, weights_only=False)["model"], p2) in a trusted '
                f'session. Original error: {text.splitlines()[0]}') from exc
        raise WeightsFileError(
            f'{what} {path} could not be read ({type(exc).__name__}: {text.splitlines()[0] if text else ""}). '
            f'The file is truncated or corrupt: download or copy it again'
            + (f' from {source}' if source else '') + '.') from exc


def extract_state_dict(obj: object, key: str | None = None,
                       strip_prefixes: tuple[str, ...] = _WRAPPER_PREFIXES) -> 'OrderedDict[str, torch.Tensor]':
    """Find the state_dict inside a loaded checkpoint and normalise its key names.

    Accepts a raw state_dict or one nested under ``model`` / ``module`` / ``state_dict`` / ``ema``
    (or ``key`` when given); removes ``module.`` and ``_orig_mod.`` prefixes.
    """
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f'expected a dict of tensors, got {type(obj).__name__}')
    if key is not None:
        if key not in obj:
            raise WeightsFileError(f"checkpoint has no entry '{key}'; top-level keys: "
                                   f'{sorted(obj)[:10]}')
        obj = obj[key]
    elif not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for candidate in _CONTAINER_KEYS:
            if isinstance(obj.get(candidate), Mapping):
                obj = obj[candidate]
                break
    state = OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in strip_prefixes:
            while name.startswith(prefix):
                name = name[len(prefix):]
        state[name] = value
    if not state:
        raise WeightsFileError('no tensors found in the checkpoint (top-level keys: '
                               f'{sorted(obj)[:10]})')
    return state


def state_dict_report(model: nn.Module, state: Mapping[str, torch.Tensor],
                      ignore: str | None = None) -> dict[str, list]:
    """Compare a state_dict with a model: missing / unexpected keys and shape mismatches."""
    own = model.state_dict()
    pattern = re.compile(ignore) if ignore else None

    def keep(k):
        return pattern is None or not pattern.search(k)

    missing = [k for k in own if k not in state and keep(k)]
    unexpected = [k for k in state if k not in own and keep(k)]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state
                  if k in own and state[k].shape != own[k].shape]
    return dict(missing=missing, unexpected=unexpected, mismatched=mismatched)


def _format_report(report: dict[str, list], limit: int = 8) -> str:
    parts = []
    for name in ('missing', 'unexpected'):
        keys = report[name]
        if keys:
            more = f' (+{len(keys) - limit} more)' if len(keys) > limit else ''
            parts.append(f'{len(keys)} {name} keys: {", ".join(keys[:limit])}{more}')
    if report['mismatched']:
        items = [f'{k}: file {a} vs model {b}' for k, a, b in report['mismatched'][:limit]]
        more = (f' (+{len(report["mismatched"]) - limit} more)'
                if len(report['mismatched']) > limit else '')
        parts.append(f'{len(report["mismatched"])} shape mismatches: {"; ".join(items)}{more}')
    return '; '.join(parts)


def load_model_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                       key: str | None = None, ignore: str | None = None,
                       what: str = 'weights file', source: str | None = None,
                       where: str | None = None) -> dict[str, list]:
    """Load a third-party weights file into ``model`` (weights only, strict by default).

    Args:
        ignore: regular expression of keys to leave out of the comparison (e.g. KV-cache
            buffers ``r'\\.kv_cache\\.'``); such keys in the file are dropped.
        strict: when True, any missing/unexpected key or shape mismatch raises
            :class:`WeightsFileError` with a report naming them; when False only shape
            mismatches raise and the report is returned.
    Returns:
        the report dict (``missing``, ``unexpected``, ``mismatched``).
    """
    raw = load_weights_file(path, what=what, source=source, where=where)
    state = extract_state_dict(raw, key=key)
    if ignore:
        pattern = re.compile(ignore)
        state = OrderedDict((k, v) for k, v in state.items() if not pattern.search(k))
    report = state_dict_report(model, state, ignore=ignore)
    bad = report['mismatched'] or (strict and (report['missing'] or report['unexpected']))
    if bad:
        raise WeightsFileError(
            f'{what} {path} does not fit {type(model).__name__} (wrong architecture or config?): '
            f'{_format_report(report)}')
    own = model.state_dict()
    model.load_state_dict(OrderedDict((k, v) for k, v in state.items() if k in own),
                          strict=False)
    return report


def _load_trusted_local(filename: str, map_location=None, weights_only: bool = False):
    """MMEngine local-file loader for the runner's own checkpoints (see module docstring)."""
    path = Path(filename).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise WeightsFileError(
            f'checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {exc}); '
            f'use an earlier checkpoint (--resume PATH) or --resume auto, which skips '
            f'incomplete files') from exc


_RUNNER_LOADER_REGISTERED = False


def register_runner_checkpoint_loader() -> None:
    """Make MMEngine's ``CheckpointLoader`` read local runner checkpoints on torch >= 2.6."""
    global _RUNNER_LOADER_REGISTERED
    if _RUNNER_LOADER_REGISTERED:
        return
    from mmengine.runner.checkpoint import CheckpointLoader

    @CheckpointLoader.register_scheme(prefixes='', force=True)
    def load_from_local(filename, map_location):  # noqa: D401 - MMEngine's signature
        return _load_trusted_local(filename, map_location)

    _RUNNER_LOADER_REGISTERED = True
