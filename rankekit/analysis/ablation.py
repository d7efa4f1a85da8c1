"""Ablation tables: one markdown row per experiment, its config diff, metrics as mean ± std.

Everything in a row is computed from the work dirs: the "changes" column is the config diff
against a base config (:func:`rankekit.utils.config_diff.config_diff`, never typed by hand), the
metrics come from ``summary.json`` (the evaluation at the end of training) and/or the latest
``tools/test.py`` result of each run, and the wall time from the text logs. Runs of one
experiment with several seeds are one row (mean ± sample std over seeds).
"""
from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from rankekit.analysis.runs import RunGroup
from rankekit.evaluation.stats import format_mean_std, mean_std

#: the columns shown unless --metrics says otherwise (each also matches its "[combo]" variants)
DEFAULT_METRICS = ('fid/fid', 'clip_heldout/mean', 'clip_train/mean', 'compositional/accuracy',
                   'lcs/kl', 'lcs/entropy_bits')


def select_columns(names: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """Metric names matching ``patterns`` (globs; ``'x'`` also matches ``'x [combo]'``), in
    pattern order; ``None``: :data:`DEFAULT_METRICS`; ``['all']``: every name, sorted."""
    if patterns is not None and list(patterns) == ['all']:
        return sorted(names)
    chosen = []
    for pattern in patterns or DEFAULT_METRICS:
        for name in sorted(names):
            # '[[]' is a literal '[' in a glob: 'x' also matches 'x [online:base]'
            matches = (name == pattern or fnmatch.fnmatchcase(name, pattern)
                       or fnmatch.fnmatchcase(name, f'{pattern} [[]*]'))
            if matches and name not in chosen:
                chosen.append(name)
    return chosen


def check_request(groups: Sequence[RunGroup], names: set[str], metrics: Sequence[str] | None,
                  combos: Sequence[str], use_test: bool) -> None:
    """A ValueError for a combo that is not POLICY:DECODER or that no run's tools/test.py result
    has, and for a --metrics pattern that matches no metric (a typo would drop the column)."""
    from rankekit.evaluation.generation import parse_combo
    from rankekit.utils.build import did_you_mean
    for combo in combos:
        parse_combo(combo)
    tested = {c for g in groups for r in g.runs if use_test and r.test
              for c in (r.test.get('results') or {})}
    missing = [c for c in combos if tested and c not in tested]
    if missing:
        raise ValueError(f'--combos {" ".join(missing)}: no tools/test.py result of these runs '
                         f'has that combo; they have {sorted(tested)}')
    if metrics is None or list(metrics) == ['all']:
        return
    for pattern in metrics:
        if not select_columns(names, [pattern]):
            bare = sorted({n.split(' [')[0] for n in names})
            raise ValueError(f'--metrics {pattern!r} matches no metric of these runs.'
                             f'{did_you_mean(pattern, bare)} Available: {bare} (globs work, e.g. '
                             f"'fid/*'; 'all' shows every metric)")


def delta_label(minuend: str, subtrahend: str) -> str:
    """The header of a ``--delta`` column: ``'fid/fid [online:ema − online:base]'`` when the two
    metrics differ only in their combo, else ``'a − b'``."""
    name_a, _, combo_a = minuend.partition(' [')
    name_b, _, combo_b = subtrahend.partition(' [')
    if name_a == name_b and combo_a and combo_b:
        return f'{name_a} [{combo_a[:-1]} − {combo_b[:-1]}]'
    return f'{minuend} − {subtrahend}'


def check_deltas(names: set[str], deltas: Sequence[tuple[str, str]]) -> None:
    """A ValueError for a ``--delta`` metric that no run has (names are exact, no globs)."""
    from rankekit.utils.build import did_you_mean
    for name in (n for pair in deltas for n in pair):
        if name not in names:
            raise ValueError(f'--delta {name!r}: no run has this metric (--delta takes exact '
                             f'names, with the combo, e.g. "fid/fid [online:ema]").'
                             f'{did_you_mean(name, sorted(names))} Available: {sorted(names)}')


def check_train_end(groups: Sequence[RunGroup], keys: Sequence[str]) -> None:
    """A ValueError for a ``--train-end`` scalar that no run's ``summary.json`` has."""
    from rankekit.utils.build import did_you_mean
    logged = sorted({k for g in groups for r in g.runs for k in r.train_end()})
    for key in keys:
        if key not in logged:
            raise ValueError(f'--train-end {key!r}: no run\'s summary.json has this training '
                             f'scalar.{did_you_mean(key, logged)} Available: {logged}')


def _summarise(values: Sequence[float], show_seeds: bool) -> str:
    if not values:
        return '–'
    text = format_mean_std(*mean_std(values))
    if show_seeds and len(values) > 1:
        text += ' (' + ', '.join(f'{v:.4g}' for v in values) + ')'
    return text


def _cell(text: str) -> str:
    return str(text).replace('|', '\\|')


def common_changes(groups: Sequence[RunGroup]) -> dict:
    """Diff entries shared, with the same value, by every group (shown once, under the table)."""
    trained = [g for g in groups if not g.untrained]  # the base model changes nothing
    if len(trained) < 2:
        return {}
    first = trained[0].diff
    return {k: v for k, v in first.items() if all(g.diff.get(k) == v for g in trained[1:])}


def ablation_table(groups: Sequence[RunGroup], base_name: str, metrics: Sequence[str] | None = None,
                   combos: Sequence[str] = ('online:ema',), use_summary: bool = True,
                   use_test: bool = True, limit: int = 6,
                   deltas: Sequence[tuple[str, str]] = (), show_seeds: bool = False,
                   train_end: Sequence[str] = ()) -> str:
    """The markdown table (a string ending in a newline) for groups of runs.

    ``deltas``: pairs ``(a, b)`` of metric names, each a column of ``a - b`` taken within every
    run (the same seed) before the mean ± std over seeds, e.g. the FID that the co-evolved
    decoder is worth on its own policy's tokens. ``show_seeds``: cells also list the per-seed
    values, in run order. ``train_end``: training scalars (e.g. ``policy/kl``) at the end of
    each run, from its ``summary.json``, as columns ``'<name> [train end]'``."""
    from rankekit.utils.config_diff import format_diff
    per_run = [[r.metrics(combos, use_summary, use_test) for r in g.runs] for g in groups]
    names = {k for runs in per_run for m in runs for k in m}
    check_request(groups, names, metrics, combos, use_test)
    check_deltas(names, deltas)
    check_train_end(groups, train_end)
    columns = select_columns(names, metrics)
    common = common_changes(groups)
    header = ['config', f'changes vs {base_name}', 'seeds', *columns,
              *(f'{key} [train end]' for key in train_end),
              *(delta_label(a, b) for a, b in deltas), 'wall time (min)']
    lines = ['| ' + ' | '.join(_cell(h) for h in header) + ' |',
             '|' + '|'.join(['---'] * 3 + ['---:'] * (len(header) - 3)) + '|']
    for group, runs in zip(groups, per_run):
        own = {k: v for k, v in group.diff.items() if k not in common}
        changes = 'no training (`tools/test.py --base`)' if group.untrained else \
            format_diff(own, limit=limit)
        cells = [group.name, changes, str(len(group.runs))]
        for column in columns:
            cells.append(_summarise([m[column] for m in runs if column in m], show_seeds))
        ends = [r.train_end() for r in group.runs]
        for key in train_end:
            cells.append(_summarise([e[key] for e in ends if key in e], show_seeds))
        for a, b in deltas:
            cells.append(_summarise([m[a] - m[b] for m in runs if a in m and b in m], show_seeds))
        cells.append(_summarise([r.wall_time_s / 60 for r in group.runs
                                 if r.wall_time_s is not None], show_seeds=False))
        lines.append('| ' + ' | '.join(_cell(c) for c in cells) + ' |')
    if common:
        lines.append('')
        lines.append(f'Every row also changes, vs {base_name}: {format_diff(common, limit=99)}.')
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------
# runs from configs x seeds, trained on demand
# ------------------------------------------------------------------------------------------------
def run_work_dir(work_root: str | Path, config: str | Path, seed: int) -> Path:
    """``<work_root>/<config name>/seed<seed>``: where ``--configs`` runs live."""
    return Path(work_root) / Path(config).stem / f'seed{seed}'


def is_finished(work_dir: Path) -> bool:
    """A run counts as done when its ``summary.json`` (written at the end of training) exists."""
    return (work_dir / 'summary.json').is_file()


def train_command(config: str | Path, work_dir: Path, seed: int,
                  cfg_options: Sequence[str] = ()) -> list[str]:
    """The ``rankekit train`` command (as ``tools/train.py``) that trains or resumes one run."""
    cmd = [sys.executable, '-m', 'rankekit.cli', 'train', str(config), '--work-dir',
           str(work_dir), '--seed', str(seed)]
    if (work_dir / 'last_checkpoint').is_file():
        cmd.append('--resume')  # an interrupted run continues where it stopped
    if cfg_options:
        cmd += ['--cfg-options', *cfg_options]
    return cmd


def ensure_runs(configs: Sequence[str], seeds: Sequence[int], work_root: str | Path,
                run: bool = False, cfg_options: Sequence[str] = ()) -> list[Path]:
    """The work dirs of ``configs`` x ``seeds``; missing ones are trained one after the other
    (each in its own process) when ``run``, else reported with the commands that make them."""
    wanted = [(c, s, run_work_dir(work_root, c, s)) for c in configs for s in seeds]
    for config, _, _ in wanted:
        if not Path(config).is_file():
            raise FileNotFoundError(f'config {config} does not exist')
    missing = [(c, s, d) for c, s, d in wanted if not is_finished(d)]
    if missing and not run:
        commands = '\n'.join('  rankekit ' + ' '.join(train_command(c, d, s, cfg_options)[3:])
                             for c, s, d in missing)
        raise FileNotFoundError(f'{len(missing)} run(s) have not finished (no summary.json); '
                                f'add --run to train them here, or run:\n{commands}')
    for i, (config, seed, work_dir) in enumerate(missing, start=1):
        cmd = train_command(config, work_dir, seed, cfg_options)
        print(f'[{i}/{len(missing)}] training {Path(config).stem} seed {seed} -> {work_dir}',
              flush=True)
        done = subprocess.run(cmd)
        if done.returncode != 0:
            raise RuntimeError(f'training {config} (seed {seed}) failed with exit code '
                               f'{done.returncode}; its log is under {work_dir}')
        if not is_finished(work_dir):
            raise RuntimeError(f'{config} trained but wrote no summary.json: add '
                               f"default_hooks.summary=dict(type='TrainingSummaryHook')")
    return [d for _, _, d in wanted]


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
