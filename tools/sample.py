"""Generate images: ``python tools/sample.py CONFIG [CHECKPOINT] --prompts "a red circle" ...``.

Any policy x decoder combination (``--policy online|ema|base --decoder online|ema|base``),
``--seed``, sampling overrides (``--cfg-scale``, ``--temperature``, ``--top-k``, ``--top-p``).
Writes one PNG per prompt and ``grid.png`` to ``--out-dir``. Without a checkpoint: the untrained
model of the config. ``python tools/sample.py -h`` lists every option.
"""
import sys

from rankekit.apis.inference import sample_main

if __name__ == '__main__':
    sys.exit(sample_main())
