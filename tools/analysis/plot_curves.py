"""Curves over iterations and the CLIP-vs-FID Pareto plot from work dirs (PNG files).

``python tools/analysis/plot_curves.py work_dirs/ablation/*/seed* --keys reward/mean lcs/kl
--out curves.png --pareto pareto.png``: one line per config (mean over its seeds, ± std band).
Needs matplotlib (``pip install 'rankekit[plot]'``). ``-h`` lists the options.
"""
from __future__ import annotations

import argparse
import sys

from rankekit.analysis.curves import group_labels, plot_curves, plot_pareto
from rankekit.analysis.runs import Run, group_runs, load_run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='tools/analysis/plot_curves.py',
        description='Metric curves over iterations from the scalars.json of work dirs (one '
        'line per config, mean ± std band over its seeds), and the CLIP-vs-FID Pareto plot.')
    parser.add_argument('work_dirs', nargs='+', help='work dirs of runs')
    parser.add_argument('--keys', nargs='+',
                        default=['reward/mean', 'policy/kl', 'decoder/l1', 'lcs/kl'],
                        help='logged scalars to plot (default: reward/mean policy/kl decoder/l1 '
                        'lcs/kl)')
    parser.add_argument('--out', help='curves PNG (default: curves.png; with --pareto and '
                        'no --out, only the Pareto plot is written)')
    parser.add_argument('--smooth', type=int, default=1,
                        help='moving-average window over logged points (default: 1, none)')
    parser.add_argument('--pareto', help='also write the Pareto plot to this PNG')
    parser.add_argument('--x', default='clip_heldout/mean', help='Pareto x metric (higher better)')
    parser.add_argument('--y', default='fid/fid', help='Pareto y metric (lower better)')
    parser.add_argument('--combos', nargs='+', default=['online:ema'],
                        help='tools/test.py combos whose metrics may be used (names "m [combo]")')
    parser.add_argument('--base', help='config the runs are compared with for labels (default: '
                        "the first run's)")
    parser.add_argument('--no-summary', action='store_true',
                        help='Pareto metrics from tools/test.py only (not summary.json); the '
                        'runs\' own evaluation settings then do not split their seeds into groups')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """The command line; a bad run or metric is one ``error:`` line and exit code 2."""
    from rankekit.apis.config import load_config, run_reporting_errors
    args = parse_args(argv)

    def body():
        runs: list[Run] = [load_run(d) for d in args.work_dirs]
        base = load_config(args.base) if args.base else runs[0].cfg
        groups = group_runs(runs, base, ignore_evaluation=args.no_summary)
        for group, label in zip(groups, group_labels(groups)):
            if label != group.name:
                print(f'{label}: {group.label(limit=20)}')
        if args.out or not args.pareto:
            out = plot_curves(groups, args.keys, args.out or 'curves.png', args.smooth)
            print(f'curves: {out}')
        if args.pareto:
            path = plot_pareto(groups, args.pareto, args.x, args.y, args.combos,
                               use_summary=not args.no_summary)
            print(f'pareto: {path}')
    return run_reporting_errors(body)


if __name__ == '__main__':
    sys.exit(main())
