"""A plain function as a reward: ``dict(type='CallableReward', fn='pkg.module:function')``."""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from rankekit.registry import REWARDS
from rankekit.rewards.base import BaseReward


def resolve_callable(spec: str | Callable) -> Callable:
    """``'package.module:function'`` (or ``'package.module:Class.method'``) -> the callable.

    A callable passed directly is returned as is.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec.count(':') != 1 or not all(spec.split(':')):
        raise ValueError(f"fn must look like 'package.module:function' (or be a callable), got "
                         f'{spec!r}')
    module_name, attr_path = spec.split(':')
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError or an error raised while importing the user's module
        raise ImportError(f"CallableReward fn='{spec}': module '{module_name}' could not be "
                          f'imported ({type(exc).__name__}: {exc}); is its package installed or '
                          f'on PYTHONPATH?') from exc
    obj = module
    for part in attr_path.split('.'):
        if not hasattr(obj, part):
            raise AttributeError(f"CallableReward fn='{spec}': "
                                 f"'{getattr(obj, '__name__', obj)}' has "
                                 f"no attribute '{part}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"CallableReward fn='{spec}' is a {type(obj).__name__}, not a function")
    return obj


@REWARDS.register_module()
class CallableReward(BaseReward):
    """A plain function as a reward: ``fn(images, prompts, **kwargs) -> one score per image``.

    ``images`` is (N, 3, H, W) in [0, 1], ``prompts`` a list of N strings; ``fn`` returns a
    tensor, array or list of N numbers.

    Args:
        fn: ``'package.module:function'``, or the callable itself.
        differentiable: whether ``fn`` is differentiable in the images (default False: it is
            called under ``torch.no_grad()``).
        name: name in logs; defaults to the function's name.
        kwargs: extra keyword arguments passed to ``fn`` on every call.
    """

    differentiable = False
    info_example = dict(type='CallableReward',
                        fn='rankekit.rewards.callable_reward:mean_brightness')

    def __init__(self, fn: str | Callable, differentiable: bool = False, name: str | None = None,
                 kwargs: dict | None = None):
        func = resolve_callable(fn)
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f'CallableReward kwargs must be a dict, got {type(kwargs).__name__}')
        default_name = getattr(func, '__name__', None) or type(func).__name__
        super().__init__(name=name or default_name, differentiable=differentiable)
        self.fn = func  # an nn.Module fn becomes a (frozen) submodule
        self.spec = fn if isinstance(fn, str) else getattr(fn, '__qualname__', type(fn).__name__)
        self.fn_kwargs = dict(kwargs or {})
        self.freeze()

    def score(self, images: torch.Tensor, prompts: list[str]):
        return self.fn(images, prompts, **self.fn_kwargs)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, fn={self.spec!r}'


def mean_brightness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Example reward function: the mean pixel value of each image (ignores the prompt)."""
    return images.mean(dim=(1, 2, 3))
