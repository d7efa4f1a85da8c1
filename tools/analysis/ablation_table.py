"""Ablation table (markdown) from work dirs or configs x seeds.

``python tools/analysis/ablation_table.py work_dirs/a work_dirs/b`` or
``python tools/analysis/ablation_table.py --configs configs/ranke/ranke_toy.py
configs/ablation/anchor_kl.py --seeds 0 1 2 --run``: one row per config with its diff against
``--base`` (computed from the configs), each metric as mean ± std over seeds (``summary.json``
and the latest ``tools/test.py`` result), wall time; ``--compare A B METRIC`` adds the toy
studies' decision rule (is the difference of two rows shown?). ``-h`` lists the options.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rankekit.analysis.ablation import DEFAULT_METRICS, ablation_table, ensure_runs
from rankekit.analysis.decision import comparison_table, compare_groups
from rankekit.analysis.runs import Run, group_runs, load_run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='tools/analysis/ablation_table.py',
        description='A markdown ablation table from work dirs: config diff vs a base config, '
        'metrics as mean ± std over seeds, wall time.')
    parser.add_argument('work_dirs', nargs='*', help='work dirs of finished runs')
    parser.add_argument('--configs', nargs='+', default=[],
                        help='configs whose runs live in <work-root>/<name>/seed<N>')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0],
                        help='seeds of the --configs runs (default: 0)')
    parser.add_argument('--work-root', default='work_dirs/ablation',
                        help='where --configs runs live (default: work_dirs/ablation)')
    parser.add_argument('--run', action='store_true',
                        help='train the missing --configs runs first, one after the other')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='passed to training with --run, e.g. train_cfg.max_iters=100')
    parser.add_argument('--base', help='config (or work dir) the diffs are taken against '
                        '(default: the first run\'s config)')
    parser.add_argument('--metrics', nargs='+', help='metric columns (globs); "all" for '
                        f'every metric (default: {" ".join(DEFAULT_METRICS)})')
    parser.add_argument('--combos', nargs='+', default=['online:ema'],
                        help='tools/test.py combos to take metrics from (default: online:ema)')
    parser.add_argument('--test-json', default='test_*/metrics.json',
                        help='tools/test.py results inside each work dir (glob; the latest '
                        "checkpoint's is used; default: test_*/metrics.json)")
    parser.add_argument('--delta', nargs=2, action='append', default=[], metavar=('A', 'B'),
                        help='a column of metric A minus metric B within each run, then mean ± '
                        'std over seeds (exact names; repeatable), e.g. --delta "fid/fid '
                        '[online:ema]" "fid/fid [online:base]"')
    parser.add_argument('--train-end', nargs='+', default=[], metavar='KEY',
                        help='training scalars at the end of each run (summary.json; mean of the '
                        'last iterations), e.g. policy/kl; read even with --no-summary')
    parser.add_argument('--compare', nargs=3, action='append', default=[],
                        metavar=('A', 'B', 'METRIC'),
                        help='after the table, the pre-registered decision rule on METRIC of row '
                        'A minus row B: shown when |Δ| > 2 SE (repeatable; rows by config name, '
                        '"base" for the untrained model; exact metric names with the combo), '
                        'e.g. --compare anchor_ema grpo_toy "fid/fid [online:ema]"')
    parser.add_argument('--show-seeds', action='store_true',
                        help='cells also list the per-seed values')
    parser.add_argument('--no-summary', action='store_true',
                        help='ignore summary.json (only tools/test.py metrics)')
    parser.add_argument('--no-test', action='store_true', help='ignore tools/test.py results')
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args(argv)
    if not args.work_dirs and not args.configs:
        parser.error('give work dirs, or --configs (with --seeds)')
    return args


def build_table(args: argparse.Namespace) -> str:
    from rankekit.apis.config import load_config
    from rankekit.analysis.runs import find_config
    work_dirs = [Path(d) for d in args.work_dirs]
    if args.configs:
        work_dirs += ensure_runs(args.configs, args.seeds, args.work_root, args.run,
                                 args.cfg_options)
    runs: list[Run] = [load_run(d, None if args.no_test else args.test_json) for d in work_dirs]
    if args.base is None:
        base_path = runs[0].config_file
    else:
        base_path = Path(args.base)
        base_path = find_config(base_path) if base_path.is_dir() else base_path
    base_cfg = load_config(str(base_path))
    # metrics from tools/test.py only: the runs' own evaluation settings do not matter
    groups = group_runs(runs, base_cfg, ignore_evaluation=args.no_summary)
    table = ablation_table(groups, base_path.stem, args.metrics, args.combos,
                           use_summary=not args.no_summary, use_test=not args.no_test,
                           deltas=[tuple(d) for d in args.delta], show_seeds=args.show_seeds,
                           train_end=args.train_end)
    if args.compare:
        comparisons = compare_groups(groups, [tuple(c) for c in args.compare], args.combos,
                                     use_summary=not args.no_summary, use_test=not args.no_test)
        table += '\n' + comparison_table(comparisons)
    return table


def main(argv=None) -> int:
    """The command line; a bad run, option or metric is one ``error:`` line and exit code 2."""
    from rankekit.apis.config import run_reporting_errors
    args = parse_args(argv)

    def body():
        table = build_table(args)
        print(table, end='')
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(table)
    return run_reporting_errors(body)


if __name__ == '__main__':
    sys.exit(main())
