"""Ablation table (markdown) from work dirs or configs x seeds.

``python tools/analysis/ablation_table.py work_dirs/a work_dirs/b`` or
``python tools/analysis/ablation_table.py --configs configs/ranke/ranke_toy.py
configs/ablation/anchor_kl.py --seeds 0 1 2 --run``: one row per config with its diff against
``--base`` (computed from the configs), each metric as mean ± std over seeds (``summary.json``
and the latest ``tools/test.py`` result), wall time. ``-h`` lists the options.
"""
import sys

from rankekit.analysis.ablation import main

if __name__ == '__main__':
    sys.exit(main())
