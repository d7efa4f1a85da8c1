"""The toy studies' pre-registered decision rule, computed from the work dirs (model_zoo.md).

A difference of two experiments' means is **shown** when ``|Δ| > 2 SE`` with
``SE = sqrt(s_a² / n_a + s_b² / n_b)``, ``s`` the sample std over training seeds (a run's value
is the mean over its ``tools/test.py`` sampling seeds). The untrained base model is one run, so
its spread is the one over its sampling seeds. With fewer than two values on either side there
is no SE and nothing is shown.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rankekit.analysis.runs import RunGroup
from rankekit.evaluation.stats import mean_std

#: what ``--compare`` accepts for the untrained row besides its table name
BASE_ALIASES = ('base', 'base model')


@dataclass(frozen=True)
class Comparison:
    """``metric`` of experiment ``a`` minus that of ``b``, with the rule's verdict."""

    a: str
    b: str
    metric: str
    values_a: tuple[float, ...]
    values_b: tuple[float, ...]

    @property
    def delta(self) -> float:
        return mean_std(self.values_a)[0] - mean_std(self.values_b)[0]

    @property
    def two_se(self) -> float | None:
        (_, s_a), (_, s_b) = mean_std(self.values_a), mean_std(self.values_b)
        if s_a is None or s_b is None:
            return None
        return 2 * math.sqrt(s_a ** 2 / len(self.values_a) + s_b ** 2 / len(self.values_b))

    @property
    def verdict(self) -> str:
        two_se = self.two_se
        if two_se is None:
            return 'no SE (fewer than 2 values)'
        if abs(self.delta) <= two_se:
            return 'not shown'
        return f'shown: {self.a} {"higher" if self.delta > 0 else "lower"}'


def group_values(group: RunGroup, metric: str, combos: Sequence[str], use_summary: bool = True,
                 use_test: bool = True) -> list[float]:
    """The values the rule's spread is taken over: one per run (its mean over sampling seeds);
    for the untrained base model, one per sampling seed of its ``tools/test.py --base`` result."""
    if group.untrained and len(group.runs) == 1 and group.runs[0].test:
        name, _, combo = metric.partition(' [')
        if combo and combo[:-1] in combos:
            result = next(iter((group.runs[0].test.get('results') or {}).values()), {})
            per_seed = result.get('per_seed') or {}
            values = [float(m[name]) for m in per_seed.values() if m.get(name) is not None]
            if values:
                return values
    per_run = [r.metrics(combos, use_summary, use_test) for r in group.runs]
    return [m[metric] for m in per_run if metric in m]


def find_group(groups: Sequence[RunGroup], name: str) -> RunGroup:
    """The group called ``name`` (``base`` also names the untrained row); a clear ValueError
    for an unknown or ambiguous name."""
    from rankekit.utils.build import did_you_mean
    found = [g for g in groups
             if g.name == name or (name in BASE_ALIASES and g.untrained)]
    if not found:
        names = [g.name for g in groups]
        raise ValueError(f'--compare {name!r}: no row of the table has this name.'
                         f'{did_you_mean(name, names)} Rows: {names}')
    if len(found) > 1:
        raise ValueError(f'--compare {name!r}: {len(found)} rows have this name (the same config '
                         f'with different settings); compare work dirs of one of them only')
    return found[0]


def compare_groups(groups: Sequence[RunGroup], requests: Sequence[tuple[str, str, str]],
                   combos: Sequence[str], use_summary: bool = True,
                   use_test: bool = True) -> list[Comparison]:
    """One :class:`Comparison` per ``(a, b, metric)`` request (metric names exact, with the
    combo, e.g. ``'fid/fid [online:ema]'``)."""
    from rankekit.utils.build import did_you_mean
    out = []
    for a, b, metric in requests:
        values = []
        for name in (a, b):
            group = find_group(groups, name)
            found = group_values(group, metric, combos, use_summary, use_test)
            if not found:
                known = sorted({k for r in group.runs
                                for k in r.metrics(combos, use_summary, use_test)})
                raise ValueError(f'--compare: no run of {group.name!r} has {metric!r} (names '
                                 f'are exact, with the combo).{did_you_mean(metric, known)} '
                                 f'Available: {known}')
            values.append(tuple(found))
        out.append(Comparison(a, b, metric, *values))
    return out


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """The rule's markdown table: both means (with their number of values), Δ, 2 SE, verdict."""
    lines = ['Decision rule: shown when |Δ| > 2 SE, SE = sqrt(s_a²/n_a + s_b²/n_b) (s: sample std '
             'over training seeds; the base model: over its sampling seeds).', '',
             '| metric | a | b | a: mean (n) | b: mean (n) | Δ = a − b | 2 SE | verdict |',
             '|---|---|---|---:|---:|---:|---:|---|']
    for c in comparisons:
        two_se = c.two_se
        lines.append(
            f'| {c.metric} | {c.a} | {c.b} | {mean_std(c.values_a)[0]:.4g} ({len(c.values_a)}) '
            f'| {mean_std(c.values_b)[0]:.4g} ({len(c.values_b)}) | {c.delta:+.4g} | '
            f'{"–" if two_se is None else f"{two_se:.4g}"} | {c.verdict} |')
    return '\n'.join(lines) + '\n'
