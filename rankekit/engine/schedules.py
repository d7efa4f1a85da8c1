"""Scalar schedules for coefficients that change during training (tau, anchor weights)."""
from __future__ import annotations

import math
from dataclasses import dataclass

_KINDS = ('constant', 'linear', 'cosine')


@dataclass(frozen=True)
class Schedule:
    """A value that moves from ``start`` to ``end`` between two points of training.

    ``begin`` and ``stop`` are iterations (ints) or fractions of ``max_iters`` (floats in [0, 1]).
    Before ``begin`` the value is ``start``; after ``stop`` it is ``end``; in between it follows
    ``kind``: ``linear`` or ``cosine`` (half-cosine, flat at both ends). ``constant`` is ``start``
    throughout.

    Example: tau annealed 4 -> 1 by cosine over the first 20% of training (released RankE):
    ``Schedule('cosine', start=4.0, end=1.0, begin=0, stop=0.2)``.
    """

    kind: str = 'constant'
    start: float = 1.0
    end: float | None = None
    begin: float = 0
    stop: float = 1.0

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"schedule kind '{self.kind}' is unknown; use one of {_KINDS}")
        if self.kind != 'constant' and self.end is None:
            raise ValueError(f"a '{self.kind}' schedule needs an end value")

    @staticmethod
    def _point(value: float, max_iters: int) -> float:
        return value * max_iters if isinstance(value, float) and value <= 1.0 else float(value)

    def __call__(self, it: int, max_iters: int) -> float:
        if self.kind == 'constant':
            return float(self.start)
        begin, stop = self._point(self.begin, max_iters), self._point(self.stop, max_iters)
        if it <= begin or stop <= begin:
            return float(self.start) if it <= begin else float(self.end)
        if it >= stop:
            return float(self.end)
        progress = (it - begin) / (stop - begin)
        if self.kind == 'cosine':
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return float(self.start + (self.end - self.start) * progress)


def build_schedule(cfg) -> Schedule:
    """A :class:`Schedule` from a number (constant) or a dict (``type`` = kind)."""
    if isinstance(cfg, Schedule):
        return cfg
    if isinstance(cfg, (int, float)):
        return Schedule('constant', float(cfg))
    cfg = dict(cfg)
    kind = cfg.pop('type', cfg.pop('kind', 'constant'))
    unknown = set(cfg) - {'start', 'end', 'begin', 'stop'}
    if unknown:
        raise ValueError(f'schedule has unknown keys {sorted(unknown)}; '
                         'allowed: type, start, end, begin, stop')
    return Schedule(kind, **cfg)
