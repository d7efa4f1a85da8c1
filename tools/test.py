"""Evaluate a RankE checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--seeds 0 1 2]``.

The config's ``val_evaluator`` metrics for several policy x decoder combos (``--combos
online:ema online:base base:ema base:base`` by default; ``--base`` evaluates the untrained
model), ``--num`` prompts of the config's val dataset or a ``--prompt-file``, mean ± std over
``--seeds``. Writes ``metrics.json`` and ``grid_<policy>-<decoder>.png`` to ``--out-dir``.
``python tools/test.py -h`` lists every option; docs/evaluation_tools.md explains them.
"""
import sys

from rankekit.apis.inference import evaluate_main

if __name__ == '__main__':
    sys.exit(evaluate_main())
