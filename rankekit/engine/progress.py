"""A rich progress bar for training, with the few numbers a person watches."""
from __future__ import annotations

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from rankekit.registry import HOOKS


@HOOKS.register_module()
class RichProgressHook(Hook):
    """Show a rich progress bar over training iterations with live metric values.

    ``keys`` are message-hub scalar names without the ``train/`` prefix; their latest values
    (smoothed over ``window`` iterations) are shown next to the bar. Only rank 0 draws.
    """

    priority = 'BELOW_NORMAL'
    info_example = dict(type='RichProgressHook', keys=['reward/mean'])

    def __init__(self, keys=('reward/mean', 'policy/kl', 'decoder/loss'), window: int = 10):
        self.keys = list(keys)
        self.window = int(window)
        self._progress = None
        self._task = None

    def before_train(self, runner) -> None:
        if not is_main_process():
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self._progress = Progress(
            TextColumn('[bold]train'), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn('eta'), TimeRemainingColumn(), TextColumn('{task.fields[metrics]}'),
            transient=False)
        self._progress.start()
        self._task = self._progress.add_task('train', total=runner.max_iters,
                                             completed=runner.iter, metrics='')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._progress is None:
            return
        scalars = runner.message_hub.log_scalars
        shown = []
        for key in self.keys:
            buffer = scalars.get(f'train/{key}')
            if buffer is not None and len(buffer.data[0]):
                shown.append(f'{key} {buffer.mean(self.window):.4g}')
        self._progress.update(self._task, completed=runner.iter + 1, metrics='  '.join(shown))

    def after_train(self, runner) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
