"""Value checks shared by every settings class and builder: one clear message per bad value
(which key, what it must be, what it got)."""
from __future__ import annotations

import numbers


def show(value) -> str:
    """``value`` and its type, for error messages."""
    return f'{value!r} ({type(value).__name__})'


def _hint(value) -> str:
    from rankekit.utils.build import type_hint
    return type_hint(value)


def check_int(value, key: str, low: int | None = None, high: int | None = None,
              allow_none: bool = False, why: str = '') -> None:
    """``value`` is an int (not a bool, not a float) in [low, high], or None when allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = 'an int' + (' or None' if allow_none else '')
        raise TypeError(f'{key} must be {kind}, got {show(value)}{_hint(value)}')
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f'in [{low}, {high}]' if high is not None and low is not None
                  else f'>= {low}' if low is not None else f'<= {high}')
        raise ValueError(f'{key} must be {bounds}, got {value}{why}')


def check_number(value, key: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False,
                 why: str = '') -> None:
    """``value`` is a real number (not a bool) in the interval given, or None when allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = 'a number' + (' or None' if allow_none else '')
        raise TypeError(f'{key} must be {kind}, got {show(value)}{_hint(value)}')
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # NaN compares false
        left = '(' if low_open else '['
        right = ')' if high_open else ']'
        bounds = (f'in {left}{low}, {high}{right}' if low is not None and high is not None
                  else (f'> {low}' if low_open else f'>= {low}') if low is not None
                  else (f'< {high}' if high_open else f'<= {high}'))
        raise ValueError(f'{key} must be {bounds}, got {value}{why}')


def check_bool(value, key: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f'{key} must be True or False, got {show(value)}')


def check_choice(value, key: str, choices) -> None:
    if value not in choices:
        from rankekit.utils.build import did_you_mean
        hint = did_you_mean(value, choices) if isinstance(value, str) else ''
        raise ValueError(f'{key} must be one of {tuple(choices)}, got {value!r}.{hint}')


__all__ = ['show', 'check_int', 'check_number', 'check_bool', 'check_choice']
