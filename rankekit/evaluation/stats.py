"""Mean and spread over seeds, and how tables print them (``12.3 ± 0.4``)."""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def mean_std(values: Iterable[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator) of the finite ``values``.

    The std is ``None`` for a single value (one seed says nothing about the spread). Raises
    ``ValueError`` for an empty list.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError('mean_std needs at least one value')
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def format_mean_std(mean: float | None, std: float | None = None) -> str:
    """``mean ± std`` rounded the way results are reported: std to two significant digits and the
    mean to the same decimal place (``1234.6, 12.3 -> '1235 ± 12'``, ``0.2346, 0.0123 ->
    '0.235 ± 0.012'``). Without a std (one seed) or with std 0: the mean to 4 significant
    digits. ``None`` / NaN mean: ``'–'``."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return '–'
    if std is None or not math.isfinite(std) or std == 0:
        return f'{mean:.4g}'
    decimals = min(max(1 - math.floor(math.log10(abs(std))), 0), 8)
    return f'{mean:.{decimals}f} ± {std:.{decimals}f}'


def aggregate(per_seed: Sequence[dict]) -> tuple[dict, dict]:
    """``(mean, std)`` dicts over a list of per-seed metric dicts (keys every dict has)."""
    if not per_seed:
        return {}, {}
    keys = [k for k in per_seed[0] if all(k in d for d in per_seed)]
    mean, std = {}, {}
    for key in keys:
        mean[key], std[key] = mean_std(d[key] for d in per_seed)
    return mean, std
