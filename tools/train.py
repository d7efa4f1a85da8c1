"""Train a rankekit model: ``python tools/train.py configs/ablation/anchor_ema.py``.

Options: ``--work-dir``, ``--resume [auto|PATH]``, ``--amp``, ``--seed``, ``--cfg-options``,
``--launcher {none,pytorch,slurm,mpi}``; ``python tools/train.py -h`` lists them.
"""
import sys

from rankekit.apis.train import main

if __name__ == '__main__':
    sys.exit(main())
