"""Loading configs the way every rankekit tool does: file, overrides, plugins, defaults, checks.

A bad config is reported in one message naming the file or key, what is wrong and how to fix it
(docs/troubleshooting.md lists them): :func:`load_config` for the file itself (missing, syntax
error, a ``_base_`` that does not exist, a misspelled ``--cfg-options`` key) and
:func:`check_config` for its content, before anything is built or written.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import os
import os.path as osp
import sys
from pathlib import Path
from typing import Callable

from mmengine.config import Config
from mmengine.config import DictAction as _MMEngineDictAction

from rankekit.plugins import import_config_plugins

#: top-level keys a training config may set besides the Runner's arguments (read from the cfg)
_EXTRA_TOP_KEYS = ('runner_type', 'launcher', 'custom_imports', 'paper_eval', 'resume_any_config',
                   'model_wrapper_cfg', 'activation_checkpointing', 'efficient_conv_bn_eval')


class OptionLiteralError(ValueError):
    """A ``--cfg-options`` value written as a Python literal that is not one."""


_LITERAL_START = {'[': list, '(': tuple, '{': dict, 'dict(': dict, "'": str, '"': str}
_LITERAL_HELP = ('write dict(key=value, ...), [...], (...) or {...} with numbers, quoted strings, '
                 'True/False/None and nested lists/tuples/dicts; nothing else is evaluated')


def _literal(node: ast.AST):
    """The value of a literal expression: ``ast.literal_eval``'s forms plus ``dict(k=v, ...)``."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) in (int, float):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict' \
            and not node.args and all(kw.arg is not None for kw in node.keywords):
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    text = ast.unparse(node)
    if isinstance(node, ast.Name):
        raise OptionLiteralError(f'{text} is not a value (a string needs quotes: \'{text}\'; in a '
                                 f'shell, put the whole option in double quotes)')
    raise OptionLiteralError(f'{text} is not a literal')


def parse_option_value(text: str):
    """A ``--cfg-options`` value: a Python literal when written as one, else MMEngine's parse.

    ``[...]``, ``(...)``, ``{...}``, ``dict(...)`` and quoted strings are read as Python literals
    (with :func:`ast.parse` and a walk that accepts only constants, lists, tuples, dicts and
    ``dict()`` calls with keyword arguments: no code is run), so that components can be given on
    the command line: ``"model.rewards=[dict(type='Colourfulness')]"``. Anything else keeps
    MMEngine's syntax: ``20``, ``1e-3``, ``true``, ``None``, ``a,b``, ``[a,b]`` (bare words are
    strings). A value holding ``dict(`` or ``{`` that is not a literal raises
    :class:`OptionLiteralError`.
    """
    stripped = text.strip()
    kind = next((k for start, k in _LITERAL_START.items() if stripped.startswith(start)), None)
    if kind is not None:
        try:
            value = _literal(ast.parse(stripped, mode='eval').body)
        except (SyntaxError, OptionLiteralError) as exc:
            if 'dict(' in stripped or stripped.startswith('{'):
                reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
                raise OptionLiteralError(f'{stripped} is not a literal ({reason}); '
                                         f'{_LITERAL_HELP}') from None
        else:
            if isinstance(value, kind):
                return value
    return _MMEngineDictAction._parse_iterable(text)


class DictAction(_MMEngineDictAction):
    """``--cfg-options KEY=VALUE ...``: literals (:func:`parse_option_value`), else MMEngine's
    syntax, with a clear error for a bad item."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})
        for item in values or []:
            key = item.split('=', 1)[0]
            if '=' not in item or not key or key != key.strip():
                raise argparse.ArgumentError(
                    self, f"{item!r} is not KEY=VALUE (no spaces around '='), e.g. "
                    f'--cfg-options train_cfg.max_iters=20 model.rollout.group_size=8')
            try:
                options[key] = parse_option_value(item.split('=', 1)[1])
            except OptionLiteralError as exc:
                raise argparse.ArgumentError(self, f'{key}: {exc}') from exc
            except Exception as exc:  # noqa: BLE001 - MMEngine's parser asserts on bad brackets
                raise argparse.ArgumentError(
                    self, f'cannot parse {item!r} ({type(exc).__name__}: {exc}); lists are '
                    "written key=[1,2] or key=a,b, strings with spaces need quotes: key='a b'"
                ) from exc
        setattr(namespace, self.dest, options)


def _syntax_error(path: str, seen: set | None = None) -> str | None:
    """'file, line N: message' for the first Python syntax error in a config or its bases."""
    seen = seen if seen is not None else set()
    path = osp.abspath(path)
    if path in seen or not osp.isfile(path):
        return None
    seen.add(path)
    with open(path, encoding='utf-8') as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        return f'{path}, line {exc.lineno}: {exc.msg}'
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '_base_'
                                                for t in node.targets):
            try:
                bases = ast.literal_eval(node.value)
            except ValueError:
                continue
            for base in [bases] if isinstance(bases, str) else list(bases):
                found = _syntax_error(osp.join(osp.dirname(path), base), seen)
                if found:
                    return found
    return None


def runner_keys() -> list[str]:
    """Top-level config keys the MMEngine Runner (or rankekit's tools) understand."""
    from mmengine.runner import FlexibleRunner, Runner
    keys = [k for cls in (Runner, FlexibleRunner)
            for k in inspect.signature(cls.__init__).parameters if k != 'self']
    return list(dict.fromkeys(keys + list(_EXTRA_TOP_KEYS)))


def _check_option_keys(cfg: Config, cfg_options: dict) -> None:
    """A ``--cfg-options`` key whose top level is neither in the config nor a Runner argument is
    a typo: MMEngine would add it silently and nothing would read it."""
    from rankekit.utils.build import did_you_mean
    known = set(cfg.keys()) | set(runner_keys())
    for key, value in cfg_options.items():
        top = key.split('.')[0]
        if top not in known:
            raise KeyError(f"--cfg-options {key}={value!r}: the config has no top-level key "
                           f"'{top}' and the Runner takes none of that name, so the option would "
                           f'be ignored.{did_you_mean(top, known)}')


def load_config(path: str, cfg_options: dict | None = None) -> Config:
    """Read a config file, apply ``--cfg-options`` overrides and import its plugins."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path} does not exist (run from the repository '
                                f'root, or give the full path; configs live in configs/)')
    # plugins are imported by rankekit (clear errors), not by MMEngine's fromfile
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except SyntaxError as exc:
        where = _syntax_error(path) or f'{path} (or one of its _base_ files): {exc.msg}'
        raise ValueError(f'config {path} is not valid Python: {where}. Fix that line') from exc
    except FileNotFoundError as exc:
        raise FileNotFoundError(f'config {path}: a file it names does not exist: '
                                f'{exc.filename or exc} (check its _base_ list; paths are '
                                f'relative to the config file)') from exc
    except Exception as exc:  # noqa: BLE001 - executing the config file raised
        raise ValueError(f'config {path} (or one of its _base_ files) raised while being read: '
                         f'{type(exc).__name__}: {exc}. A config is a Python file of plain '
                         f'assignments; fix the expression') from exc
    if cfg_options:
        _check_option_keys(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    cfg.setdefault('default_scope', 'rankekit')
    import_config_plugins(cfg)
    return cfg


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config stem>``, the OpenMMLab convention."""
    return osp.join('work_dirs', Path(config_path).stem)


# ------------------------------------------------------------------------------------------------
# content checks, before anything is built
# ------------------------------------------------------------------------------------------------
def _typed(cfg) -> bool:
    return isinstance(cfg, dict) and 'type' in cfg


def _optimizers(optim_wrapper, where: str = 'optim_wrapper'):
    """(key, optimizer config) of an optim_wrapper: one, or one per part (multi-optimizer)."""
    if not isinstance(optim_wrapper, dict):
        return
    if isinstance(optim_wrapper.get('optimizer'), dict):
        yield f'{where}.optimizer', optim_wrapper['optimizer']
    for key, value in optim_wrapper.items():
        if key != 'optimizer' and isinstance(value, dict):
            yield from _optimizers(value, f'{where}.{key}')


def check_train_cfg(train_cfg, training: bool = False) -> None:
    """Loop lengths are ints >= 1; 0 is let through unless ``training`` (a runner built only
    to load a checkpoint)."""
    from rankekit.utils.checks import check_int
    if not isinstance(train_cfg, dict):
        return
    for key in ('max_iters', 'max_epochs'):
        value = train_cfg.get(key)
        if key in train_cfg and (training or not (isinstance(value, int) and value == 0)):
            check_int(value, f'train_cfg.{key}', low=1, why=' (a run needs at least one iteration)')
    if 'val_interval' in train_cfg:
        check_int(train_cfg['val_interval'], 'train_cfg.val_interval', low=1)


def _is_path_key(key: str) -> bool:
    return key in ('pretrained', 'model_dir', 'backbone_weights') or key.endswith('_pretrained')


def missing_weight_files(model_cfg, where: str = 'model') -> list[str]:
    """``'key=path'`` for every weights file or folder the model config names that is not there
    (keys ``pretrained``, ``*_pretrained``, ``model_dir``, ``backbone_weights``; ``toy://`` names
    are checked against the shipped toy assets)."""
    from rankekit.utils.toy_assets import (PREFIX, REBUILD_COMMAND, TOY_ASSETS, is_toy_asset,
                                     toy_asset_path)
    from rankekit.utils.build import did_you_mean
    missing = []
    if isinstance(model_cfg, dict):
        for key, value in model_cfg.items():
            here = f'{where}.{key}'
            if _is_path_key(key) and isinstance(value, str) and value:
                if is_toy_asset(value):
                    name = value[len(PREFIX):]
                    if name not in TOY_ASSETS:
                        hint = did_you_mean(value, [PREFIX + a for a in TOY_ASSETS])
                        missing.append(f'{here}={value} (not a toy asset.{hint} The toy assets: '
                                       f'{", ".join(TOY_ASSETS)})')
                    elif not toy_asset_path(value, must_exist=False).is_file():
                        missing.append(f'{here}={value} (a toy asset missing from the package: '
                                       f'`{REBUILD_COMMAND}` rebuilds it)')
                elif not osp.exists(osp.expanduser(value)):
                    missing.append(f'{here}={value}')
            else:
                missing += missing_weight_files(value, here)
    elif isinstance(model_cfg, (list, tuple)):
        for i, item in enumerate(model_cfg):
            missing += missing_weight_files(item, f'{where}[{i}]')
    return missing


def check_config(cfg: Config) -> None:
    """Check a training config's content before the Runner builds anything.

    Unknown component types and keys (with close matches), wrong scalar types, the RankE
    settings (:func:`rankekit.models.validation.check_ranke_config`), missing weights files (all
    of them in one message), ``train_cfg`` lengths, batch sizes and learning rates. Raises
    KeyError / TypeError / ValueError / FileNotFoundError with one message.
    """
    from rankekit.models.validation import check_ranke_config
    from rankekit.utils.checks import check_int, check_number
    from rankekit.registry import DATASETS, HOOKS, LOOPS, MODELS, OPTIMIZERS
    from rankekit.utils.build import check_component_cfg
    model = cfg.get('model')
    if model is None:
        raise KeyError(f'config {cfg.filename} has no model; set model=dict(type=...) or add a '
                       f'_base_ that does')
    if _typed(model):
        cls = check_component_cfg(MODELS, model, 'model', extra_keys=('pretrained',))
        from rankekit.models.rank_e import RankEModel
        if isinstance(cls, type) and issubclass(cls, RankEModel):
            check_ranke_config(model)
    missing = missing_weight_files(model)
    if missing:  # all at once, before minutes of building a large model
        raise FileNotFoundError(
            f'{len(missing)} weights file(s) of the model are missing (relative paths are read '
            f'from {os.getcwd()}): {"; ".join(missing)}. docs/prepare_assets.md says where each '
            f'one comes from; put them there, or point the keys elsewhere (edit the config or '
            f'--cfg-options KEY=PATH)')
    load_from = cfg.get('load_from')
    if load_from and not cfg.get('resume') and not osp.isfile(load_from):
        raise FileNotFoundError(
            f'load_from={load_from} does not exist (relative paths are read from {os.getcwd()}): '
            f'train the run it names first, or point load_from at another checkpoint '
            f'(--cfg-options load_from=PATH)')
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if not isinstance(loader, dict):
            continue
        if 'batch_size' in loader:
            check_int(loader['batch_size'], f'{split}_dataloader.batch_size', low=1)
        if _typed(loader.get('dataset')):
            check_component_cfg(DATASETS, loader['dataset'], f'{split}_dataloader.dataset')
    for name, hook in (cfg.get('default_hooks') or {}).items():
        if _typed(hook):
            check_component_cfg(HOOKS, hook, f'default_hooks.{name}')
    for i, hook in enumerate(cfg.get('custom_hooks') or []):
        if _typed(hook):
            check_component_cfg(HOOKS, hook, f'custom_hooks[{i}]')
    train_cfg = cfg.get('train_cfg')
    if _typed(train_cfg):
        check_component_cfg(LOOPS, train_cfg, 'train_cfg')
    check_train_cfg(train_cfg)
    for where, optimizer in _optimizers(cfg.get('optim_wrapper')):
        if _typed(optimizer):
            check_component_cfg(OPTIMIZERS, optimizer, where)
        if 'lr' in optimizer:
            check_number(optimizer['lr'], f'{where}.lr', low=0.0, low_open=True,
                         why=' (to keep a part fixed, use CoEvolutionHook(train_mode=...) rather '
                             'than lr=0)')


# ------------------------------------------------------------------------------------------------
# no partial output: what a failed set-up leaves in the work dir
# ------------------------------------------------------------------------------------------------
def work_dir_entries(work_dir) -> set[str] | None:
    """The names in ``work_dir`` now (empty if it does not exist, None if it cannot be read):
    call before the set-up, for :func:`remove_setup_leftovers`."""
    if not work_dir or not osp.isdir(work_dir):
        return set()
    try:
        return set(os.listdir(work_dir))
    except OSError:
        return None


def remove_setup_leftovers(work_dir, before: set[str] | None) -> None:
    """After a failed set-up, keep only the log of this attempt.

    MMEngine's Runner creates ``<work_dir>/<timestamp>/`` (the text log and ``vis_data/`` with a
    copy of the config) before it builds the model, and dumps the config into the work dir once
    the model and hooks are built. The two config copies would make the folder look like a run
    (``rankekit.analysis.runs.find_config``); they are removed here, the log stays. Nothing that
    existed before this attempt (``before``, from :func:`work_dir_entries`; None: unknown,
    nothing is removed) is touched, and no checkpoint can exist yet.
    """
    if before is None or not work_dir or not osp.isdir(work_dir):
        return
    try:
        for name in set(os.listdir(work_dir)) - before:
            path = osp.join(work_dir, name)
            copy = osp.join(path, 'vis_data', 'config.py')
            if osp.isdir(path) and osp.isfile(copy):
                os.remove(copy)  # the folders stay: MMEngine's visualizer may still hold them
            elif osp.isfile(path) and name.endswith('.py'):
                os.remove(path)
    except OSError:  # best effort: the set-up error is what the user must see
        pass


# ------------------------------------------------------------------------------------------------
# command lines: a bad input is one line, not a traceback
# ------------------------------------------------------------------------------------------------
#: errors of a bad config, option or input file (the same set tools/train.py reports at set-up)
INPUT_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError)


def run_reporting_errors(body: Callable[[], object]) -> int:
    """Run a tool's ``body``: 0 when it returns; an :data:`INPUT_ERRORS` error is printed as one
    ``error:`` line on stderr and gives 2 (``RANKEKIT_DEBUG=1`` re-raises it, with traceback)."""
    try:
        body()
    except INPUT_ERRORS as exc:
        if os.environ.get('RANKEKIT_DEBUG'):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f'error: {message}', file=sys.stderr)
        print('(set RANKEKIT_DEBUG=1 to see the traceback)', file=sys.stderr)
        return 2
    return 0
