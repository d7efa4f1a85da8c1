"""Engine: hooks that schedule training, optimizer constructors, runner set-up."""
from rankekit.utils.checkpoint import register_runner_checkpoint_loader

from .optim_constructor import MultiOptimWrapperConstructor, optimizable_parts

register_runner_checkpoint_loader()

__all__ = ['MultiOptimWrapperConstructor', 'optimizable_parts']
