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


def _show(key: str, value: Any) -> str:
    return f'{key}={value}' if isinstance(value, str) else f'{key}={value!r}'


def _swapped_components(diff: dict[str, tuple[Any, Any]]) -> list[str]:
    """Sub-configs whose registered ``type`` changed (or that became a component), outermost
    first: ``['model.rank_loss']`` for a GRPO -> listwise swap."""
    prefixes = sorted({k[:-len('.type')] for k, (_, new) in diff.items()
                       if k.endswith('.type') and new != _MISSING and isinstance(new, str)},
                      key=len)
    outermost = []
    for prefix in prefixes:
        if not any(prefix.startswith(o + '.') or prefix.startswith(o + '[') for o in outermost):
            outermost.append(prefix)
    return outermost


def format_diff(diff: dict[str, tuple[Any, Any]], limit: int = 6, inner_limit: int = 3) -> str:
    """'model.decoder_anchor=KLAnchor(reference=initial, sigma=1.0), model.lr=2' (the other
    config's values), for tables. A sub-config whose ``type`` changed is one entry, the new type
    with its keys that differ, its own before nested ones (at most ``inner_limit``, then '…'):
    the old type's keys it lost mean nothing for the new one."""
    if not diff:
        return '(same as base)'
    # 'model.anchor=None' already says that 'model.anchor.type' etc. are gone
    replaced = [k for k, v in diff.items() if v[1] != _MISSING]
    shown = {k: v for k, v in diff.items()
             if not (v[1] == _MISSING and any(k.startswith(r + '.') or k.startswith(r + '[')
                                              for r in replaced))}
    swapped = _swapped_components(shown)
    items, done = [], set()
    for key, (_, new) in shown.items():
        owner = next((p for p in swapped if key == p or key.startswith(p + '.')
                      or key.startswith(p + '[')), None)
        if owner is None:
            items.append(_show(key, new))
        elif owner not in done:
            done.add(owner)
            inner = sorted(((k[len(owner) + 1:], v[1]) for k, v in shown.items()
                            if k.startswith(owner + '.') and k != owner + '.type'
                            and v[1] != _MISSING),
                           key=lambda kv: (kv[0].count('.') + kv[0].count('['), kv[0]))
            inner = [_show(k, v) for k, v in inner]  # its own settings before nested ones
            if len(inner) > inner_limit:
                inner = inner[:inner_limit] + ['…']
            items.append(f"{owner}={shown[owner + '.type'][1]}({', '.join(inner)})")
    more = f' (+{len(items) - limit} more)' if len(items) > limit else ''
    return ', '.join(items[:limit]) + more
