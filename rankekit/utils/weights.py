"""Loading third-party weights: one safe loader, one clear message per problem.

Third-party weights (LlamaGen, Janus, CLIP, HPSv2, toy assets) always go through
:func:`load_weights_file` / :func:`load_model_weights`, which use ``torch.load(weights_only=True)``
and report problems in one clear message: which file, what is wrong, where the file comes from.

Every torch pickle rankekit reads (these weights and the runner's own checkpoints, see
:mod:`rankekit.utils.run_files`) goes through :func:`safe_torch_load`: ``weights_only=True``
with the few extra types of :func:`safe_load_globals`, so no file can run code when it is read.
A file that needs more is refused with :class:`UnsafeCheckpointError`, whose message names the
conversion command for a trusted file (``tools/convert_checkpoint.py``).

Formats: torch pickles (``.pt``/``.pth``/``.bin``, read with ``weights_only=True``),
``.safetensors`` files, and Hugging Face model folders whose weights are one file or shards
listed in an index json (:func:`load_sharded_state_dict`).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

# prefixes added by DDP / torch.compile wrappers, removed on load
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')
# containers that official checkpoints nest their state_dict under, tried in this order
_CONTAINER_KEYS = ('model', 'module', 'state_dict', 'ema')

#: Keys to leave out when loading an official LlamaGen GPT checkpoint: a checkpoint saved after
#: ``setup_caches()`` (during or after sampling) holds every layer's KV-cache buffers
#: ``layers.N.attention.kv_cache.{k,v}_cache``, which are scratch space, not weights.
LLAMAGEN_GPT_IGNORE = r'(^|\.)kv_cache\.[kv]_cache$'

# Hugging Face folder layouts, in order of preference: (index json, single file)
_HF_LAYOUTS = (('model.safetensors.index.json', 'model.safetensors'),
               ('pytorch_model.bin.index.json', 'pytorch_model.bin'))


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


def _corrupt_file_error(path: Path, what: str, source: str | None,
                        exc: BaseException) -> WeightsFileError:
    text = str(exc)
    first = text.splitlines()[0] if text else ''
    return WeightsFileError(
        f'{what} {path} could not be read ({type(exc).__name__}: {first}). The file is '
        f'truncated or corrupt: download or copy it again' + (f' from {source}' if source else '')
        + '.')


def _load_safetensors(path: Path, what: str, source: str | None, map_location,
                      keys=None) -> 'OrderedDict[str, torch.Tensor]':
    """Tensors of a ``.safetensors`` file, with clear errors.

    ``keys``: None (all), a list of names (those the file has) or a predicate on names.
    """
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise ImportError(f'{what} {path} is a .safetensors file, which needs the safetensors '
                          f'package: pip install safetensors') from exc
    device = str(map_location) if isinstance(map_location, torch.device) else map_location
    try:
        with safe_open(str(path), framework='pt', device=device or 'cpu') as handle:
            available = list(handle.keys())
            if callable(keys):
                available = [k for k in available if keys(k)]
            elif keys is not None:  # the requested keys the file has (callers report the rest)
                present = set(available)
                available = [k for k in keys if k in present]
            return OrderedDict((k, handle.get_tensor(k)) for k in available)
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError types
        raise _corrupt_file_error(path, what, source, exc) from exc


class UnsafeCheckpointError(WeightsFileError):
    """A torch pickle that only full unpickling could read, which can run code from the file."""


#: the command that converts a trusted file (the only place that unpickles in full)
CONVERT_COMMAND = 'python tools/convert_checkpoint.py'


def safe_load_globals() -> list:
    """The types :func:`safe_torch_load` accepts besides torch's ``weights_only`` defaults.

    The one allow-list of the code base; each entry only rebuilds data, never calls code:

    - ``argparse.Namespace``: official checkpoints (LlamaGen) pickle their args next to the
      weights;
    - numpy scalars of numeric dtypes: MMEngine's message hub keeps some (its ``eta`` is a
      float64), and a hook may log others. Not the object dtype, which could hold anything;
      not arrays (the runner saves its HistoryBuffers as tensors, :mod:`rankekit.utils.run_files`).
    """
    import numpy as np
    scalar = (np._core if hasattr(np, '_core') else np.core).multiarray.scalar
    numeric = [type(np.dtype(name)) for name in (
        'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
        'float16', 'float32', 'float64')]
    # files name numpy's module as numpy 1 (numpy.core) or numpy 2 (numpy._core) wrote it
    return [argparse.Namespace, np.dtype, *numeric,
            (scalar, 'numpy.core.multiarray.scalar'), (scalar, 'numpy._core.multiarray.scalar')]


def _refusal_detail(path, exc: BaseException) -> str:
    """What the pickle needs that is not allowed: its globals, else the unpickler's reason."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file: the error text says it
        names = []
    if names:
        hint = ('; so does every runner checkpoint written before safe loading or by a plain '
                'MMEngine Runner' if any('HistoryBuffer' in n for n in names) else '')
        return f'it names {", ".join(sorted(names))}, which safe loading does not allow{hint}'
    text = str(exc)
    for marker in ('WeightsUnpickler error:', 'Trying to load'):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    reason = ' '.join(text.split()).split(' Check the documentation')[0].strip()
    return reason[:300] or type(exc).__name__


def safe_torch_load(path: str | os.PathLike, *, what: str = 'checkpoint',
                    map_location: str | torch.device | None = 'cpu', mmap: bool = False
                    ) -> object:
    """``torch.load(path, weights_only=True)`` with :func:`safe_load_globals`: no code runs.

    The allow-list is scoped to this call (not registered process-wide). A pickle that needs
    anything else raises :class:`UnsafeCheckpointError`, one line naming the file, what it needs
    and how to convert a trusted copy. Other read errors (truncated, not a torch file) are raised
    as they come, for the caller to word.
    """
    with torch.serialization.safe_globals(safe_load_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            if 'Weights only load failed' not in str(exc):
                raise
            raise UnsafeCheckpointError(
                f'{what} {path} is refused: reading it needs full unpickling, which can run code '
                f'stored in the file ({_refusal_detail(path, exc)}). rankekit only loads tensors '
                f'and plain data. If you trust the file, convert it once: {CONVERT_COMMAND} '
                f'{path} --in-place (or give an output path; see docs/troubleshooting.md)'
            ) from exc


def _load_torch_file(path: Path, what: str, source: str | None, map_location) -> object:
    try:
        return safe_torch_load(path, what=what, map_location=map_location)
    except (EOFError, zipfile.BadZipFile, RuntimeError, pickle.UnpicklingError) as exc:
        if isinstance(exc, UnsafeCheckpointError):
            raise
        raise _corrupt_file_error(path, what, source, exc) from exc


def load_weights_file(path: str | os.PathLike, *, what: str = 'weights file',
                      source: str | None = None, where: str | None = None,
                      map_location: str | torch.device = 'cpu') -> object:
    """Read a weights file with clear errors, never running pickled code.

    ``.safetensors`` files are read with safetensors; a folder is read with
    :func:`load_sharded_state_dict` (Hugging Face layout); any other file with
    ``torch.load(path, weights_only=True)``.

    Args:
        path: the file, a Hugging Face model folder, or ``toy://<name>`` for a checkpoint
            shipped with the toy world.
        what: what the file is, for messages ("LlamaGen GPT-XL checkpoint").
        source: where a user gets it (a URL or a command), for the missing-file message.
        where: where the config expects it, for the missing-file message.
    """
    from rankekit.utils.toy_assets import resolve_weights_path
    path = resolve_weights_path(path)  # toy://name -> packaged toy checkpoint (clear error)
    if path.is_dir():
        return load_sharded_state_dict(path, what=what, source=source,
                                       map_location=map_location)
    if not path.is_file():
        raise WeightsFileError(_missing_file_message(path, what, source, where))
    if path.suffix == '.safetensors':
        return _load_safetensors(path, what, source, map_location)
    return _load_torch_file(path, what, source, map_location)


def load_sharded_state_dict(model_dir: str | os.PathLike, *, include: str | None = None,
                            what: str = 'model folder', source: str | None = None,
                            map_location: str | torch.device = 'cpu'
                            ) -> 'OrderedDict[str, torch.Tensor]':
    """The state_dict of a Hugging Face model folder, whole or sharded, weights only.

    Looks, in this order, for ``model.safetensors.index.json`` (shards listed in its
    ``weight_map``), ``model.safetensors``, ``pytorch_model.bin.index.json`` and
    ``pytorch_model.bin``. Every shard the index names must be present.

    Args:
        model_dir: the folder (e.g. a local copy of ``deepseek-ai/Janus-Pro-1B``).
        include: optional regular expression; only keys matching it are returned, and shards
            holding none of them are not read (e.g. ``r'^gen_'`` for Janus's generation side).
        what, source: for messages, as in :func:`load_weights_file`.
    """
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise WeightsFileError(_missing_file_message(folder, what, source, None))
    pattern = re.compile(include) if include else None
    wanted = (lambda k: True) if pattern is None else (lambda k: bool(pattern.search(k)))
    for index_name, single_name in _HF_LAYOUTS:
        index_path, single_path = folder / index_name, folder / single_name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())['weight_map']
            except (ValueError, KeyError, TypeError) as exc:
                raise WeightsFileError(f'{what}: {index_path} is not a valid shard index (a JSON '
                                       f'object with a "weight_map"): {exc}') from exc
            shards: dict[str, list[str]] = {}
            for key, shard in weight_map.items():
                if wanted(key):
                    shards.setdefault(shard, []).append(key)
            absent = sorted(s for s in shards if not (folder / s).is_file())
            if absent:
                raise WeightsFileError(
                    f'{what} {folder} is incomplete: {index_name} lists shard(s) {absent} that '
                    f'are not in the folder; download them again'
                    + (f' from {source}' if source else '') + '.')
            state = OrderedDict()
            for shard, keys in shards.items():
                shard_path = folder / shard
                if shard_path.suffix == '.safetensors':
                    part = _load_safetensors(shard_path, what, source, map_location, keys)
                else:
                    part = extract_state_dict(
                        _load_torch_file(shard_path, what, source, map_location),
                        strip_prefixes=())
                lost = [k for k in keys if k not in part]
                if lost:
                    raise WeightsFileError(f'{what}: shard {shard_path} lacks {len(lost)} keys '
                                           f'that {index_name} places there (e.g. {lost[0]}); '
                                           f'the folder mixes files of different versions')
                state.update((k, part[k]) for k in keys)
            return state
        if single_path.is_file():
            if single_path.suffix == '.safetensors':
                return _load_safetensors(single_path, what, source, map_location, wanted)
            state = extract_state_dict(
                _load_torch_file(single_path, what, source, map_location), strip_prefixes=())
            return OrderedDict((k, v) for k, v in state.items() if wanted(k))
    present = sorted(p.name for p in folder.iterdir())[:12]
    expected = ', '.join(name for layout in _HF_LAYOUTS for name in layout)
    raise WeightsFileError(f'{what} {folder} holds no weights: expected one of {expected}; '
                           f'found {present}' + (f'. It comes from {source}' if source else ''))


def _strip_prefixes(name: str, prefixes: tuple[str, ...]) -> str:
    # wrappers nest in any order ("_orig_mod.module.x"): strip until none is left
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def _ignore_pattern(ignore: str | Iterable[str] | None) -> re.Pattern | None:
    """One compiled pattern from a regex or a list of regexes (any of them matches)."""
    if ignore is None:
        return None
    patterns = [ignore] if isinstance(ignore, str) else list(ignore)
    if not patterns:
        return None
    return re.compile('|'.join(f'(?:{p})' for p in patterns))


def extract_state_dict(obj: object, key: str | None = None,
                       strip_prefixes: tuple[str, ...] = _WRAPPER_PREFIXES
                       ) -> 'OrderedDict[str, torch.Tensor]':
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
        name = _strip_prefixes(name, strip_prefixes)
        if name in state:
            raise WeightsFileError(f"checkpoint holds '{name}' twice once wrapper prefixes "
                                   f'{strip_prefixes} are removed; pass the wanted entry as key=')
        state[name] = value
    if not state:
        raise WeightsFileError('no tensors found in the checkpoint (top-level keys: '
                               f'{sorted(obj)[:10]})')
    return state


def state_dict_report(model: nn.Module, state: Mapping[str, torch.Tensor],
                      ignore: str | Iterable[str] | None = None) -> dict[str, list]:
    """Compare a state_dict with a model: missing / unexpected keys and shape mismatches.

    ``ignore``: a regular expression, or a list of them, of keys left out of the comparison.
    """
    own = model.state_dict()
    pattern = _ignore_pattern(ignore)

    def keep(k):
        return pattern is None or not pattern.search(k)

    missing = [k for k in own if k not in state and keep(k)]
    unexpected = [k for k in state if k not in own and keep(k)]
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state
                  if k in own and keep(k) and state[k].shape != own[k].shape]
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


def require_weights(path: str | os.PathLike, *, what: str, source: str, where: str,
                    key: str = 'pretrained') -> None:
    """Fail fast, before a large model is built, when the weights file or folder ``path`` is not
    there: one message naming the file, where it comes from (``source``), where to put it
    (``where``) and the config key that points elsewhere."""
    if not Path(path).expanduser().exists():
        raise WeightsFileError(
            f'{what} not found: {path}. It is {source}; download it once and put it at {where} '
            f'(or set {key}= to your copy); see docs/prepare_assets.md.')


def load_model_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                       key: str | None = None, ignore: str | Iterable[str] | None = None,
                       what: str = 'weights file', source: str | None = None,
                       where: str | None = None,
                       convert: Callable[[dict], dict] | None = None) -> dict[str, list]:
    """Load a third-party weights file into ``model`` (weights only, strict by default).

    Args:
        path: a weights file (torch pickle or ``.safetensors``), a Hugging Face model folder
            (one file or shards with an index json), or ``toy://<name>``.
        key: the entry holding the state_dict (default: the tensors at the top level, else
            the first of ``model`` / ``module`` / ``state_dict`` / ``ema``).
        ignore: regular expression, or list of them, of keys to leave out of the comparison
            (e.g. :data:`LLAMAGEN_GPT_IGNORE` for the KV-cache buffers of a GPT checkpoint
            saved after sampling); such keys in the file are dropped, such keys of the model
            keep their current values.
        strict: when True, any missing/unexpected key or shape mismatch raises
            :class:`WeightsFileError` with a report naming them; when False only shape
            mismatches raise and the report is returned.
        convert: maps the file's state_dict to the model's key layout (e.g. a Hugging Face
            CLIP to open_clip's) before the comparison; keys it does not know should be passed
            through unchanged, so that the report names them.
    Returns:
        the report dict (``missing``, ``unexpected``, ``mismatched``).
    """
    raw = load_weights_file(path, what=what, source=source, where=where)
    state = extract_state_dict(raw, key=key)
    if convert is not None:
        state = OrderedDict(convert(state))
    pattern = _ignore_pattern(ignore)
    if pattern is not None:
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
