"""Building components from configs, with pretrained weights and clear errors."""
from __future__ import annotations

import inspect

from torch import nn

from rankekit.utils.checkpoint import load_model_weights


def build_module(registry, cfg, where: str) -> nn.Module:
    """``registry.build(cfg)``; a ``pretrained=`` path is loaded for classes that lack the argument.

    Args:
        where: the config key, for messages (``model.policy``).
    """
    if isinstance(cfg, nn.Module):
        return cfg
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f"{where} must be a config dict with a 'type' key, got {cfg!r}")
    cfg = dict(cfg)
    cls = registry.get(cfg['type']) if isinstance(cfg['type'], str) else cfg['type']
    if cls is None:
        import difflib
        registry.import_from_location()
        close = difflib.get_close_matches(str(cfg['type']), list(registry.module_dict), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ''
        raise KeyError(f"{where}: '{cfg['type']}' is not a registered {registry.name}.{hint} "
                       f'`rankekit list` shows what is available.')
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
