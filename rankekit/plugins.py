"""Plugins: third-party components that register themselves in rankekit's registries.

Three routes, see ``docs/plugins.md``:

1. ``custom_imports=dict(imports=['my_pkg.rewards'])`` in a config (:func:`import_custom_modules`);
2. an installed distribution announcing an entry point in the ``rankekit.plugins`` group, whose
   value is a module (``my_pkg.rewards``) or a callable (``my_pkg:register``), imported (and
   called) on the first lookup in any rankekit registry (:func:`load_entry_point_plugins`);
3. ``dict(type='CallableReward', fn='my_pkg.module:function')`` for a plain scoring function
   (:class:`rankekit.rewards.CallableReward`).

A plugin that fails to import is never skipped: :class:`PluginImportError` names it and chains
the original exception.
"""
from __future__ import annotations

import importlib
import types
from importlib import metadata
from typing import Iterable

ENTRY_POINT_GROUP = 'rankekit.plugins'

# module name prefix -> human-readable origin, filled as plugins load (used by `rankekit list`)
_PLUGIN_ORIGINS: dict[str, str] = {}
_ENTRY_POINTS_LOADED = False


class PluginImportError(ImportError):
    """A plugin module could not be imported or its registration callable failed."""


def _remember_origin(module_name: str, origin: str) -> None:
    _PLUGIN_ORIGINS[module_name.split('.')[0]] = origin


def origin_of(module_name: str) -> str:
    """'built-in' for rankekit's own modules, else the plugin (or package) that defined it."""
    top = module_name.split('.')[0]
    if top == 'rankekit':
        return 'built-in'
    if top in _PLUGIN_ORIGINS:
        return _PLUGIN_ORIGINS[top]
    return f'plugin: {top}'


def load_entry_point_plugins(force: bool = False) -> list[str]:
    """Import every plugin announced in the ``rankekit.plugins`` entry-point group, once.

    Returns the names of the entry points loaded by this call.
    """
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED and not force:
        return []
    # set first: a plugin importing rankekit registries must not re-enter this function
    _ENTRY_POINTS_LOADED = True
    loaded = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, 'dist', None)
        dist_name = dist.metadata['Name'] if dist is not None else ep.name
        origin = f'plugin: {dist_name}'
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, types.ModuleType):
                obj()
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            _ENTRY_POINTS_LOADED = False
            raise PluginImportError(
                f"rankekit plugin '{ep.name}' (entry point '{ep.value}' of distribution "
                f"'{dist_name}', group '{ENTRY_POINT_GROUP}') failed to load: "
                f'{type(exc).__name__}: {exc}. Fix or uninstall that package '
                f'(pip uninstall {dist_name}).') from exc
        _remember_origin(ep.value.split(':')[0], origin)
        loaded.append(ep.name)
    return loaded


def import_custom_modules(imports: Iterable[str] | str, source: str = 'custom_imports') -> list:
    """Import the modules a config lists in ``custom_imports`` with a clear error on failure."""
    if isinstance(imports, str):
        imports = [imports]
    modules = []
    for name in imports:
        try:
            modules.append(importlib.import_module(name))
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            hint = ('is the package installed in this environment and on sys.path?'
                    if isinstance(exc, ModuleNotFoundError) else
                    'the module raised while being imported; fix it or remove it from the list')
            raise PluginImportError(
                f"plugin module '{name}' listed in {source} failed to import: "
                f'{type(exc).__name__}: {exc} ({hint})') from exc
        _remember_origin(name, f'plugin: {name.split(".")[0]} ({source})')
    return modules


def import_config_plugins(cfg) -> None:
    """Import ``cfg.custom_imports`` (a dict with ``imports`` or a list of module names)."""
    custom = cfg.get('custom_imports', None)
    if not custom:
        return
    if isinstance(custom, dict):
        unknown = set(custom) - {'imports', 'allow_failed_imports'}
        if unknown:
            raise ValueError(f'custom_imports has unknown keys {sorted(unknown)}; '
                             "write custom_imports=dict(imports=['my_pkg.module'])")
        if custom.get('allow_failed_imports'):
            raise ValueError('custom_imports.allow_failed_imports=True is not supported: rankekit '
                             'never skips a plugin silently; remove the key')
        imports = custom.get('imports', [])
    else:
        imports = custom
    import_custom_modules(imports, source='the config key custom_imports')


def loaded_plugin_modules() -> dict[str, str]:
    """Top-level package -> origin, for the plugins loaded so far in this process."""
    return dict(_PLUGIN_ORIGINS)


def _reset_for_tests() -> None:
    """Forget which entry points were loaded (tests install temporary entry points)."""
    global _ENTRY_POINTS_LOADED
    _ENTRY_POINTS_LOADED = False
    _PLUGIN_ORIGINS.clear()
