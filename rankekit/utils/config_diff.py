"""Which keys two configs disagree on (ablation tables are computed, never typed)."""
from __future__ import annotations

from typing import Any

_MISSING = '<absent>'
# keys that differ between any two runs without changing the experiment
IGNORED = ('work_dir', 'filename', 'launcher', 'experiment_name')


def flatten(cfg: Any, prefix: str = '') -> dict[str, Any]:
    """{'model.policy.lr': 1e-6, 'rewards[0].type': 'ClipScore', ...}: dotted paths to leaves."""
    if hasattr(cfg, 'to_dict'):
        cfg = cfg.to_dict()
    out = {}
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            out.update(flatten(value, f'{prefix}.{key}' if prefix else str(key)))
    elif isinstance(cfg, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in cfg):
        for i, value in enumerate(cfg):
            out.update(flatten(value, f'{prefix}[{i}]'))
    else:
        out[prefix] = list(cfg) if isinstance(cfg, tuple) else cfg
    return out


def config_diff(base, other, ignore=IGNORED) -> dict[str, tuple[Any, Any]]:
    """dotted key -> (value in base, value in other) for every leaf that differs."""
    a, b = flatten(base), flatten(other)
    diff = {}
    for key in sorted(set(a) | set(b)):
        if key.split('.')[0].split('[')[0] in ignore:
            continue
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va != vb:
            diff[key] = (va, vb)
    return diff


def format_diff(diff: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    """'model.decoder_anchor.type=KLAnchor, ...' (the other config's values), for tables."""
    if not diff:
        return '(same as base)'
    # 'model.anchor=None' already says that 'model.anchor.type' etc. are gone
    replaced = [k for k, v in diff.items() if v[1] != _MISSING]
    shown = {k: v for k, v in diff.items()
             if not (v[1] == _MISSING and any(k.startswith(r + '.') or k.startswith(r + '[')
                                              for r in replaced))}
    items = [f'{k}={v[1]!r}' if not isinstance(v[1], str) else f'{k}={v[1]}'
             for k, v in shown.items()]
    more = f' (+{len(items) - limit} more)' if len(items) > limit else ''
    return ', '.join(items[:limit]) + more
