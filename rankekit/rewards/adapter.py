"""Duck-typed rewards: any registered ``nn.Module`` or callable ``(images, prompts) -> scores``.

A third-party reward does not have to subclass :class:`~rankekit.rewards.base.BaseReward`. A
class registered in ``REWARDS`` whose instances are called as ``reward(images, prompts)`` (an
``nn.Module`` with ``forward(images, prompts)``, or any object with ``__call__``), or a function
registered there, is wrapped in a :class:`~rankekit.rewards.CallableReward` when it is built:

- its name is the config's ``name=`` (unless the class takes ``name`` itself), else the
  snake_case class name (``Brightness`` -> ``brightness``) or the function's name;
- it is differentiable only when it says so: the config's ``differentiable=`` (unless the class
  takes it), else the object's ``differentiable`` attribute, else False (scored under
  ``torch.no_grad()``);
- a registered function gets the config's other keys as keyword arguments on every call.

Anything else is refused in one line naming the contract (:data:`REWARD_CONTRACT`).
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from rankekit.rewards.base import BaseReward, snake_case
from rankekit.rewards.callable_reward import CallableReward

#: config keys the adapter handles for a reward that is not a BaseReward
ADAPTER_KEYS = ('name', 'differentiable')
REWARD_CONTRACT = ('a reward is a BaseReward subclass, or an nn.Module or callable called as '
                   'reward(images, prompts) with images (N, 3, H, W) in [0, 1] and N prompts, '
                   'returning N scores')


class RewardContractError(TypeError):
    """A registered reward that is neither a BaseReward nor a ``(images, prompts)`` callable."""


def is_reward_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseReward)


def _takes(target, key: str) -> bool:
    """Whether ``target`` names ``key`` among its parameters (``**kwargs`` does not count: an
    ``nn.Module`` without an ``__init__`` of its own has nn.Module's ``**kwargs``)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return key in params and params[key].kind is not inspect.Parameter.VAR_KEYWORD


def adapter_keys(target) -> tuple[str, ...]:
    """The keys of :data:`ADAPTER_KEYS` the adapter takes out of ``target``'s config."""
    if is_reward_class(target):
        return ()
    if not isinstance(target, type):  # a function: every key but these is one of its kwargs
        return ADAPTER_KEYS
    return tuple(k for k in ADAPTER_KEYS if not _takes(target, k))


def _call_target(obj) -> Callable | None:
    """What ``obj(images, prompts)`` runs: ``forward`` of a module, else the object itself."""
    if isinstance(obj, nn.Module):
        return obj.forward
    return obj if callable(obj) else None


def _check_contract(obj, label: str) -> None:
    target = _call_target(obj)
    if target is None:
        raise RewardContractError(f'{label} is not a reward: {REWARD_CONTRACT}; a '
                                  f'{type(obj).__name__} cannot be called')
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        signature.bind(None, None)
    except TypeError:
        what = f'{type(obj).__name__}.forward' if isinstance(obj, nn.Module) else label
        raise RewardContractError(f'{label} is not a reward: {REWARD_CONTRACT}; {what} takes '
                                  f'{signature}') from None


def as_reward(obj, name: str | None = None, differentiable: bool | None = None,
              label: str | None = None, kwargs: dict | None = None) -> BaseReward:
    """``obj`` as a :class:`BaseReward`: returned as is when it is one, else wrapped.

    Args:
        obj: a BaseReward, an ``nn.Module`` with ``forward(images, prompts)``, or a callable
            ``(images, prompts, **kwargs)``.
        name, differentiable: see the module docstring (None: from the object).
        label: how messages name the object (default: its type name).
        kwargs: extra keyword arguments for a plain function.
    """
    if isinstance(obj, BaseReward):
        return obj
    label = label or f"'{getattr(obj, '__name__', type(obj).__name__)}'"
    _check_contract(obj, label)
    if differentiable is None:
        differentiable = getattr(obj, 'differentiable', False)
    if not isinstance(differentiable, bool):
        raise RewardContractError(f'{label} declares differentiable={differentiable!r}; it must '
                                  'be True or False')
    if name is None:
        name = obj.__name__ if inspect.isfunction(obj) else snake_case(type(obj).__name__)
    return CallableReward(fn=obj, differentiable=differentiable, name=name, kwargs=kwargs)


def build_reward_from_cfg(cfg, registry, default_args: dict | None = None) -> BaseReward:
    """The build function of ``REWARDS``: what MMEngine builds, as a :class:`BaseReward`."""
    from mmengine.registry import build_from_cfg
    cfg = dict(cfg)
    target = cfg.get('type')
    found = registry.get(target) if isinstance(target, str) else target
    if found is None or is_reward_class(found):  # MMEngine reports an unknown type
        return build_from_cfg(cfg, registry, default_args)
    where = f"{getattr(found, '__module__', '?')}.{getattr(found, '__qualname__', '?')}"
    label = f"'{target}' ({where})"
    taken = {k: cfg.pop(k) for k in adapter_keys(found) if k in cfg}
    if not isinstance(found, type):  # a registered function: the config's keys are its kwargs
        rest = {**(default_args or {}), **{k: v for k, v in cfg.items() if k != 'type'}}
        return as_reward(found, label=label, kwargs=rest, **taken)
    return as_reward(build_from_cfg(cfg, registry, default_args), label=label, **taken)


def check_reward_cfg(cfg, where: str) -> type:
    """:func:`~rankekit.utils.build.check_component_cfg` for a reward config: the adapter's
    keys (``name``, ``differentiable``) and ``pretrained`` are accepted for any reward."""
    from rankekit.registry import REWARDS
    from rankekit.utils.build import check_component_cfg, component_class
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f"{where} must be a config dict with a 'type' key, got {cfg!r}")
    extra = ('pretrained', *adapter_keys(component_class(REWARDS, cfg['type'], where)))
    return check_component_cfg(REWARDS, cfg, where, extra_keys=extra)


def build_reward(cfg, where: str = 'reward') -> BaseReward:
    """A reward from a config dict (checked first) or an object, always as a BaseReward.

    ``where`` names the config key in messages (``model.rewards[0]``).
    """
    from rankekit.registry import REWARDS
    from rankekit.utils.build import build_module
    try:
        if not isinstance(cfg, dict):
            return as_reward(cfg)
        cls = check_reward_cfg(cfg, where)
        if is_reward_class(cls):
            return build_module(REWARDS, cfg, where)
        return _build_duck(cfg, cls, where)
    except RewardContractError as exc:
        raise RewardContractError(f'{where}: {exc}') from None


def _build_duck(cfg: dict, cls, where: str) -> BaseReward:
    """A duck-typed reward from its config; ``pretrained=`` is loaded into the object itself
    (before it is wrapped) when its class does not take that argument."""
    from rankekit.registry import REWARDS
    from rankekit.utils.weights import load_model_weights
    cfg = dict(cfg)
    pretrained = None
    if 'pretrained' in cfg and isinstance(cls, type) and not _takes(cls, 'pretrained'):
        pretrained = cfg.pop('pretrained')
    reward = REWARDS.build(cfg)
    if pretrained:
        if not isinstance(reward.fn, nn.Module):
            raise TypeError(f'{where}.pretrained: {cls.__name__} is not an nn.Module, so it has '
                            'no weights to load; remove pretrained=')
        load_model_weights(reward.fn, pretrained, what=f'{where} weights ({cls.__name__})')
    return reward
