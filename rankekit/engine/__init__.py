"""Engine: hooks that schedule training, optimizer constructors, runner set-up."""
from rankekit.utils.run_files import register_runner_checkpoint_loader

from .hooks import CoEvolutionHook
from .monitors import CovariateShiftMonitorHook, ImageGridHook
from .optim_constructor import MultiOptimWrapperConstructor, optimizable_parts
from .progress import RichProgressHook
from .runner import SafeCheckpointHook, SafeRunner
from .schedules import Schedule, build_schedule
from .summary import TrainingSummaryHook

register_runner_checkpoint_loader()

__all__ = ['CoEvolutionHook', 'CovariateShiftMonitorHook', 'ImageGridHook',
           'MultiOptimWrapperConstructor', 'RichProgressHook', 'SafeCheckpointHook', 'SafeRunner',
           'Schedule', 'TrainingSummaryHook',
           'build_schedule', 'optimizable_parts']
