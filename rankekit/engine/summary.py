"""A table at the end of training: how the logged metrics moved from start to end."""
from __future__ import annotations

import json
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from rankekit.registry import HOOKS


@HOOKS.register_module()
class TrainingSummaryHook(Hook):
    """Print (and save as ``summary.json`` in the work dir) how training went.

    For each logged scalar whose name starts with one of ``prefixes``, the mean over the first
    and over the last ``window`` iterations of training, and the change; then the metrics of the
    last validation pass (FID, CLIP score, compositional accuracy, LCS-KL), when the config has
    one.
    """

    priority = 'LOWEST'
    info_example = dict(type='TrainingSummaryHook')

    def __init__(self, window: int = 20,
                 prefixes=('reward/', 'policy/kl', 'policy/clip_frac', 'decoder/l1',
                           'decoder/perceptual', 'decoder/anchor', 'skipped_nonfinite')):
        self.window = int(window)
        self.prefixes = tuple(prefixes)

    def summary(self, runner) -> dict[str, dict[str, float]]:
        rows = {}
        for key, buffer in runner.message_hub.log_scalars.items():
            name = key[len('train/'):] if key.startswith('train/') else None
            if name is None or not name.startswith(self.prefixes):
                continue
            values = buffer.data[0]
            if len(values) == 0:
                continue
            n = min(self.window, len(values))
            start, end = float(values[:n].mean()), float(values[-n:].mean())
            rows[name] = dict(start=start, end=end, change=end - start)
        return dict(sorted(rows.items()))

    @staticmethod
    def evaluation(runner) -> dict[str, float]:
        """The latest validation metrics (``val/...`` in the message hub), if any ran."""
        return {key[len('val/'):]: float(buffer.current())
                for key, buffer in sorted(runner.message_hub.log_scalars.items())
                if key.startswith('val/') and len(buffer.data[0])
                and key not in ('val/time', 'val/data_time')}

    def after_train(self, runner) -> None:
        if not is_main_process():
            return
        rows, evaluation = self.summary(runner), self.evaluation(runner)
        from rich.console import Console
        from rich.table import Table
        console = Console()
        if rows:
            table = Table(title=f'Training summary: mean of the first vs last {self.window} '
                                f'iterations ({runner.iter} iterations)')
            for column in ('metric', 'start', 'end', 'change'):
                table.add_column(column, justify='left' if column == 'metric' else 'right')
            for name, row in rows.items():
                table.add_row(name, f'{row["start"]:.4g}', f'{row["end"]:.4g}',
                              f'{row["change"]:+.4g}')
            console.print(table)
        if evaluation:
            table = Table(title='Evaluation at the end of training (online policy, EMA decoder)')
            table.add_column('metric')
            table.add_column('value', justify='right')
            for name, value in evaluation.items():
                table.add_row(name, f'{value:.4g}')
            console.print(table)
        with open(osp.join(runner.work_dir, 'summary.json'), 'w') as f:
            json.dump(dict(train=rows, evaluation=evaluation), f, indent=2)
