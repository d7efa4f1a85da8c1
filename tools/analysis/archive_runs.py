"""Keep what the analysis tools read from finished runs, without checkpoints or images.

    python tools/analysis/archive_runs.py work_dirs/study2 docs/study2_runs

For every work dir under SRC (a folder holding a dumped ``<name>.py`` config): the config,
``summary.json``, each start's ``vis_data/scalars.json``, every ``test_*/metrics.json`` and each
start's text log reduced to its first and last time-stamped lines (what the wall time is read
from), in the same layout under DST. ``ablation_table.py`` and ``plot_curves.py`` then work on
DST as on the work dirs (a few hundred KB per study instead of gigabytes), so results outlive the
machine they were run on. Runs with neither ``summary.json`` (written when training ends) nor a
``test_*/metrics.json`` are unfinished and skipped;
``tools/test.py --out-dir`` folders (e.g. the base model's) keep their ``metrics.json``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from rankekit.analysis.runs import _LOG_TIME, find_config, timestamp_dirs


def archive_run(work_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = find_config(work_dir)
    shutil.copy2(config, out / config.name)
    for name in ('summary.json',):
        if (work_dir / name).is_file():
            shutil.copy2(work_dir / name, out / name)
    for metrics in work_dir.glob('test_*/metrics.json'):
        (out / metrics.parent.name).mkdir(exist_ok=True)
        shutil.copy2(metrics, out / metrics.parent.name / metrics.name)
    for start in timestamp_dirs(work_dir):
        scalars = start / 'vis_data' / 'scalars.json'
        if scalars.is_file():
            (out / start.name / 'vis_data').mkdir(parents=True, exist_ok=True)
            shutil.copy2(scalars, out / start.name / 'vis_data' / 'scalars.json')
        for log in start.glob('*.log'):
            stamped = [line for line in log.read_text(errors='replace').splitlines()
                       if _LOG_TIME.match(line)]
            if stamped:
                (out / start.name).mkdir(exist_ok=True)
                (out / start.name / log.name).write_text(
                    '\n'.join([stamped[0], stamped[-1]]) + '\n')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', type=Path, help='a folder of work dirs (searched recursively)')
    parser.add_argument('dst', type=Path, help='where the archive goes (same layout)')
    args = parser.parse_args(argv)
    if not args.src.is_dir():
        print(f'error: {args.src} is not a folder', file=sys.stderr)
        return 2
    done = 0
    for config in sorted(args.src.rglob('*.py')):
        work_dir = config.parent
        finished = ((work_dir / 'summary.json').is_file()
                    or any(work_dir.glob('test_*/metrics.json')))
        if work_dir.name == 'vis_data' or not finished:
            continue
        archive_run(work_dir, args.dst / work_dir.relative_to(args.src))
        done += 1
    for metrics in sorted(args.src.rglob('metrics.json')):  # tools/test.py --out-dir folders
        folder = metrics.parent
        if not folder.name.startswith('test_') and not any(folder.glob('*.py')):
            (args.dst / folder.relative_to(args.src)).mkdir(parents=True, exist_ok=True)
            shutil.copy2(metrics, args.dst / folder.relative_to(args.src) / 'metrics.json')
            done += 1
    print(f'archived {done} finished run(s) / evaluation(s) from {args.src} to {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
