"""Curves over iterations and the CLIP-vs-FID Pareto plot from work dirs (PNG files).

``python tools/analysis/plot_curves.py work_dirs/ablation/*/seed* --keys reward/mean lcs/kl
--out curves.png --pareto pareto.png``: one line per config (mean over its seeds, ± std band).
Needs matplotlib (``pip install 'rankekit[plot]'``). ``-h`` lists the options.
"""
import sys

from rankekit.analysis.curves import main

if __name__ == '__main__':
    sys.exit(main())
