"""Reading finished runs: a work dir's dumped config, logs, summary and tools/test.py results.

A work dir written by ``tools/train.py`` holds ``<config name>.py`` (the full config, dumped by
MMEngine), ``<timestamp>/<timestamp>.log`` (text log) and ``<timestamp>/vis_data/scalars.json``
(one JSON object per logged iteration, with ``iter`` and/or ``step``) per start of the run,
``summary.json`` (:class:`~rankekit.engine.TrainingSummaryHook`: ``evaluation`` holds the last
validation metrics) and, after ``tools/test.py``, ``test_<checkpoint>/metrics.json``.

Runs of the same experiment with different seeds form a :class:`RunGroup`: same config name and
same config apart from the seed (and other run-only keys such as ``work_dir``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from rankekit.utils.config_diff import IGNORED, config_diff, format_diff

#: keys that differ between runs of one experiment without changing it
RUN_ONLY_KEYS = ('randomness.seed', 'resume', 'load_from')
#: the in-training evaluation protocol: not part of what a run trained (see experiment_diff)
EVALUATION_KEYS = ('val_evaluator', 'val_dataloader', 'val_cfg', 'test_evaluator',
                   'test_dataloader', 'test_cfg')
_LOG_TIME = re.compile(r'^(\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}) - ')
_TIMESTAMP_DIR = re.compile(r'^\d{8}_\d{6}$')


def find_config(work_dir: str | Path) -> Path:
    """The config a run was trained with: the ``.py`` file MMEngine dumped into the work dir
    (the one named like the work dir if there are several), else the newest
    ``<timestamp>/vis_data/config.py``."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise FileNotFoundError(f'work dir {work_dir} does not exist')
    dumped = sorted(work_dir.glob('*.py'))
    if len(dumped) == 1:
        return dumped[0]
    named = [p for p in dumped if p.stem == work_dir.name]
    if named:
        return named[0]
    if dumped:
        return max(dumped, key=lambda p: p.stat().st_mtime)
    copies = sorted(work_dir.glob('*/vis_data/config.py'))
    if copies:
        return copies[-1]
    raise FileNotFoundError(f'work dir {work_dir} holds no dumped config (<name>.py): is it a '
                            f'tools/train.py work dir?')


def timestamp_dirs(work_dir: str | Path) -> list[Path]:
    """The ``YYYYMMDD_HHMMSS`` folders of a work dir (one per start of the run), oldest first."""
    return sorted(p for p in Path(work_dir).iterdir()
                  if p.is_dir() and _TIMESTAMP_DIR.match(p.name))


def read_scalars(work_dir: str | Path) -> list[dict]:
    """Every record of every ``scalars.json`` of the work dir, oldest start first."""
    records = []
    for folder in timestamp_dirs(work_dir):
        path = folder / 'vis_data' / 'scalars.json'
        if not path.is_file():
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f'{path}, line {lineno}: not valid JSON ({exc.msg})') from None
    return records


def scalar_series(records: Sequence[dict], key: str) -> dict[int, float]:
    """``{iteration: value}`` of ``key`` (x = the record's ``iter``, else its ``step``); a
    resumed run's later record of the same iteration wins."""
    series = {}
    for record in records:
        if key in record and isinstance(record[key], (int, float)):
            x = record.get('iter', record.get('step'))
            if x is not None:
                series[int(x)] = float(record[key])
    return dict(sorted(series.items()))


def wall_time_s(work_dir: str | Path) -> float | None:
    """Seconds the run took: for each start of the run, last minus first time stamp of its text
    log, summed (so the idle time between a crash and a resume is not counted). ``None`` when
    the work dir has no text log."""
    total, found = 0.0, False
    for folder in timestamp_dirs(work_dir):
        for log in folder.glob('*.log'):
            stamps = []
            with open(log, errors='replace') as f:
                for line in f:
                    match = _LOG_TIME.match(line)
                    if match:
                        stamps.append(match.group(1))
            if stamps:
                fmt = '%Y/%m/%d %H:%M:%S'
                total += (datetime.strptime(stamps[-1], fmt)
                          - datetime.strptime(stamps[0], fmt)).total_seconds()
                found = True
    return total if found else None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path} is not valid JSON ({exc.msg} at line {exc.lineno})') from None


def latest_test_json(work_dir: str | Path, pattern: str = 'test_*/metrics.json') -> dict | None:
    """The ``tools/test.py`` result of the work dir's latest checkpoint (``checkpoint_iter``)."""
    found = [read_json(p) | dict(_path=str(p)) for p in sorted(Path(work_dir).glob(pattern))]
    return max(found, key=lambda r: r.get('checkpoint_iter') or 0) if found else None


@dataclass
class Run:
    """One finished (or missing) training run."""

    work_dir: Path
    config_file: Path | None = None
    cfg: Any = None
    summary: dict | None = None
    test: dict | None = None
    wall_time_s: float | None = None

    @property
    def untrained(self) -> bool:
        """A ``tools/test.py --base`` result: the config's initial model, no training."""
        return bool(self.test and self.test.get('base'))

    @property
    def name(self) -> str:
        if self.untrained:
            return 'base model'
        return self.config_file.stem if self.config_file else self.work_dir.name

    def train_end(self) -> dict[str, float]:
        """Training scalars at the end of the run (``summary.json``'s ``train``: the mean over
        the last iterations of the summary hook's window), by name."""
        train = (self.summary or {}).get('train') or {}
        return {k: float(v['end']) for k, v in train.items()
                if isinstance(v, dict) and v.get('end') is not None}

    def metrics(self, combos: Sequence[str] = ('online:ema',), use_summary: bool = True,
                use_test: bool = True) -> dict[str, float]:
        """``summary.json`` evaluation metrics by name, and the tools/test.py means over its
        sampling seeds as ``'<name> [<policy:decoder>]'`` for each of ``combos``."""
        out = {}
        if use_summary and self.summary:
            out.update({k: float(v) for k, v in (self.summary.get('evaluation') or {}).items()})
        if use_test and self.test:
            results = self.test.get('results') or {}
            for combo in combos:
                # untrained: every policy and decoder is the base one (e.g. base:base)
                result = (next(iter(results.values()), None) if self.untrained
                          else results.get(combo))
                if result is not None:
                    out.update({f'{k} [{combo}]': float(v)
                                for k, v in result.get('mean', {}).items() if v is not None})
        return out


def load_run(work_dir: str | Path, test_pattern: str | None = 'test_*/metrics.json') -> Run:
    """Read everything a work dir holds about its run; a ``tools/test.py --base`` output folder
    (its ``metrics.json``) stands for the untrained base model of the config it names."""
    from rankekit.apis.config import load_config
    work_dir = Path(work_dir)
    record_path = work_dir / 'metrics.json'
    record = read_json(record_path) if record_path.is_file() else {}
    if record.get('base'):
        config_file = Path(record['config'])
        if not config_file.is_file():
            raise FileNotFoundError(f'{record_path} evaluates the base model of {config_file}, '
                                    f'which does not exist (run from the folder it was made in)')
        return Run(work_dir=work_dir, config_file=config_file,
                   cfg=load_config(str(config_file)), test=record | dict(_path=str(record_path)))
    config_file = find_config(work_dir)
    summary_path = work_dir / 'summary.json'
    return Run(work_dir=work_dir, config_file=config_file,
               cfg=load_config(str(config_file)),
               summary=read_json(summary_path) if summary_path.is_file() else None,
               test=latest_test_json(work_dir, test_pattern) if test_pattern else None,
               wall_time_s=wall_time_s(work_dir))


def experiment_diff(base, cfg, ignore_evaluation: bool = False) -> dict[str, tuple]:
    """:func:`config_diff` without the keys that only differ between runs (seed, resume).

    ``ignore_evaluation`` also drops the in-training evaluation settings (``val_*``/``test_*``,
    ``train_cfg.val_interval``):
    right when the metrics come from ``tools/test.py`` (one protocol, the config given to it),
    wrong when they come from each run's own ``summary.json``.
    """
    diff = config_diff(base, cfg, ignore=IGNORED)
    drop = lambda key: key in RUN_ONLY_KEYS or (ignore_evaluation and (  # noqa: E731
        key == 'train_cfg.val_interval'
        or re.split(r'[.\[]', key, maxsplit=1)[0] in EVALUATION_KEYS))
    return {k: v for k, v in diff.items() if not drop(k)}


@dataclass
class RunGroup:
    """The runs of one experiment (one config, several seeds)."""

    name: str
    diff: dict
    runs: list = field(default_factory=list)

    @property
    def untrained(self) -> bool:
        return all(run.untrained for run in self.runs)

    def label(self, limit: int = 6) -> str:
        return format_diff(self.diff, limit=limit)


def group_runs(runs: Sequence[Run], base_cfg, ignore_evaluation: bool = False) -> list[RunGroup]:
    """Runs with the same config name and the same diff to ``base_cfg`` form one group (their
    seeds); groups keep the order in which their first run was given."""
    groups: dict[tuple, RunGroup] = {}
    for run in runs:
        diff = {} if run.untrained else experiment_diff(base_cfg, run.cfg, ignore_evaluation)
        key = (run.name, repr(sorted(diff.items())))
        groups.setdefault(key, RunGroup(run.name, diff)).runs.append(run)
    return list(groups.values())
