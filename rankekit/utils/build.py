"""Building components from configs, with pretrained weights and clear errors.

Every config dict with a ``type`` goes through the same checks before it is built
(:func:`check_component_cfg`): the type is registered (else the close matches are suggested),
every key is an argument of the class (else the close match is suggested), and a key whose
argument is annotated with a plain scalar type (``int``, ``float``, ``bool``, ``str``, optionally
``| None``) holds a value of that type (``group_size='8'`` is refused, not silently converted).
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Iterable

from torch import nn

from rankekit.utils.weights import load_model_weights

_SCALARS = {'int': int, 'float': float, 'bool': bool, 'str': str}
_OPTIONAL = re.compile(r'^(?:typing\.)?Optional\[(.*)\]$')


def close_matches(name: str, choices: Iterable[str], n: int = 3,
                  cutoff: float = 0.6) -> list[str]:
    """The choices closest to ``name``: at most ``n``, only those about as close as the best."""
    def ratio(choice):
        return difflib.SequenceMatcher(None, str(name), choice).ratio()
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)
    return [c for c in close if ratio(c) >= ratio(close[0]) - 0.05] if close else []


def did_you_mean(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6,
                 prefix: str = '') -> str:
    """`` Did you mean 'x'?`` for the closest matches of ``name`` among ``choices``, else ''
    (every did-you-mean of rankekit's messages comes from here). ``prefix`` is shown before
    each match (e.g. ``toy://``)."""
    close = close_matches(name, choices, n, cutoff)
    return f" Did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ''


def registry_names(registry) -> list[str]:
    """Every name ``registry.get`` can find: its own members and its parents' (imported first)."""
    names, reg = [], registry
    while reg is not None:
        reg.import_from_location()
        names += [k for k in reg.module_dict if k not in names]
        reg = reg.parent
    return names


def component_class(registry, type_, where: str) -> type:
    """The class a config's ``type`` names; a clear KeyError (with close matches) otherwise."""
    if not isinstance(type_, str):
        if callable(type_):
            return type_
        raise TypeError(f"{where}: 'type' must be a registered name (a string), got {type_!r}")
    cls = registry.get(type_)
    if cls is None:
        hint = did_you_mean(type_.split('.')[-1], registry_names(registry))
        raise KeyError(f"{where}: '{type_}' is not a registered {registry.name}.{hint} "
                       f'`rankekit list` shows what is available.')
    return cls


def _scalar_names(annotation) -> set[str] | None:
    """{'int', 'None'} for ``int | None`` / ``Optional[int]``; None for anything not scalar."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, type):
        text = annotation.__name__
    elif isinstance(annotation, str):
        text = annotation.strip()
    else:
        return None
    match = _OPTIONAL.match(text)
    if match:
        text = match.group(1) + ' | None'
    names = {part.strip() for part in text.split('|')}
    return names if names and names <= {*_SCALARS, 'None'} else None


def _type_ok(value, names: set[str]) -> bool:
    if value is None:
        return 'None' in names
    if isinstance(value, bool):  # bool is an int subclass: accept it only where bool is asked
        return 'bool' in names
    if isinstance(value, int):
        return bool(names & {'int', 'float'})
    if isinstance(value, float):
        return 'float' in names
    if isinstance(value, str):
        return 'str' in names
    return False


def describe_expected(names: set[str]) -> str:
    kinds = {'int': 'an int', 'float': 'a number', 'bool': 'True or False', 'str': 'a string'}
    parts = [kinds[n] for n in ('int', 'float', 'bool', 'str') if n in names]
    if 'int' in names and 'float' in names:
        parts.remove('an int')
    return ' or '.join(parts + (['None'] if 'None' in names else []))


def type_hint(value) -> str:
    """A short fix for a common wrong type (a number written as a string)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ''
        return f' (write the number without quotes: {value})'
    return ''


def check_component_cfg(registry, cfg, where: str, extra_keys: Iterable[str] = ()) -> type:
    """Check a component config before building it; returns the class it names.

    Raises KeyError for an unregistered type, TypeError for a key the class does not take (with
    the close match) or a value of the wrong scalar type. ``extra_keys`` are keys handled by the
    caller (``pretrained``), accepted even when the class does not take them.
    """
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f"{where} must be a config dict with a 'type' key, got {cfg!r}")
    cls = component_class(registry, cfg['type'], where)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return cls
    name = getattr(cls, '__name__', str(cls))
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [k for k, p in params.items()
               if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    for key, value in cfg.items():
        if key in ('type', '_scope_'):
            continue
        if key not in params:
            if takes_any or key in extra_keys:
                continue
            raise TypeError(f"{where} ({name}): unknown key '{key}'.{did_you_mean(key, allowed)} "
                            f'Accepted keys: {allowed}; `rankekit info {name}` explains them.')
        names = _scalar_names(params[key].annotation)
        if names is not None and not _type_ok(value, names):
            raise TypeError(f'{where}.{key} ({name}) must be {describe_expected(names)}, got '
                            f'{value!r} ({type(value).__name__}){type_hint(value)}')
    return cls


def build_module(registry, cfg, where: str) -> nn.Module:
    """``registry.build(cfg)``; a ``pretrained=`` path is loaded for classes that lack the argument.

    The config is checked first (:func:`check_component_cfg`): unknown type or key, wrong
    scalar type.

    Args:
        where: the config key, for messages (``model.policy``).
    """
    if isinstance(cfg, nn.Module):
        return cfg
    cls = check_component_cfg(registry, cfg, where, extra_keys=('pretrained',))
    cfg = dict(cfg)
    pretrained = None
    if 'pretrained' in cfg and 'pretrained' not in inspect.signature(cls).parameters:
        pretrained = cfg.pop('pretrained')
    try:
        module = registry.build(cfg)
    except TypeError as exc:
        if 'unexpected keyword argument' in str(exc) or 'missing' in str(exc):
            raise TypeError(f'{where} ({cls.__name__}): {exc}. `rankekit info {cls.__name__}` '
                            'shows the accepted arguments.') from exc
        raise
    if pretrained:
        load_model_weights(module, pretrained, what=f'{where} weights ({cls.__name__})')
    return module
