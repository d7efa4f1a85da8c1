"""tools/analysis/run_study.sh's bookkeeping (skip, resume, archive, the post-hoc run's source),
checked with a stand-in `python` that records each call and writes the files a real run writes."""
import os
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# train.py: the checkpoints and the config dump; test.py: the metrics next to the checkpoint
FAKE_PYTHON = r'''#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [[ $1 == tools/train.py ]]; then
  config=$2; shift 2
  while [ $# -gt 0 ]; do [[ $1 == --work-dir ]] && dir=$2; shift; done
  [[ $dir == *"${FAIL_TRAIN:-none}" ]] && exit 1  # a crashed training run
  mkdir -p "$dir"; cp "$config" "$dir/"
  for it in 200 400 600; do touch "$dir/iter_$it.pth"; done
elif [[ $1 == tools/test.py ]]; then
  ckpt=$3; it=${ckpt##*iter_}; it=${it%.pth}
  out="$(dirname "$ckpt")/test_iter_$it"
  mkdir -p "$out"; echo '{}' > "$out/metrics.json"
fi
'''


def _run_study(tmp_path, archived, args=None, fail_train=None):
    """Run the script with the stand-in python; (trains, root, stdout) once it exits with 0, or
    the finished process when `args` replaces (root, workers, archive)."""
    bin_dir, archive, root = tmp_path / 'bin', tmp_path / 'archive', tmp_path / 'root'
    bin_dir.mkdir()
    fake = bin_dir / 'python'
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (archive / 'base').mkdir(parents=True)
    (archive / 'base' / 'metrics.json').write_text('{}')
    for name, seed in archived:
        out = archive / name / f'seed{seed}' / 'test_iter_600'
        out.mkdir(parents=True)
        (out / 'metrics.json').write_text('{}')
    calls = tmp_path / 'calls.txt'
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', CALLS=str(calls),
               FAIL_TRAIN=fail_train or '')
    proc = subprocess.run(['bash', str(REPO / 'tools/analysis/run_study.sh'),
                           *(args or [str(root), '1', str(archive)])],
                          env=env, capture_output=True, text=True, timeout=120)
    if args is not None:
        return proc, calls
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trains = [line.split() for line in calls.read_text().splitlines()
              if line.startswith('tools/train.py')]
    # (work dir relative to root, load_from or None), in call order
    return [(str(Path(t[t.index('--work-dir') + 1]).relative_to(root)),
             next((a.split('=', 1)[1] for a in t if a.startswith('load_from=')), None))
            for t in trains], root, proc.stdout


def test_run_study_trains_every_registered_run_once_in_order(tmp_path):
    trains, root, _ = _run_study(tmp_path, archived=[])
    dirs = [d for d, _ in trains]
    assert len(dirs) == len(set(dirs)) == 8 * 3 + 9  # 2 regimes x 4 configs x 3 seeds + ablations
    assert dirs[:4] == ['grpo_toy/seed0', 'anchor_ema/seed0', 'decoder_recon_only/seed0',
                        'posthoc_decoder/seed0']
    assert dirs[-1] == 'disc_sees_policy/seed0'
    sources = {d: src for d, src in trains if src}
    expected = {f'posthoc_decoder{r}/seed{s}': str(root / f'grpo_toy{r}/seed{s}/iter_600.pth')
                for r in ('', '_drift') for s in range(3)}
    assert sources == expected


def test_run_study_skips_archived_runs_and_retrains_a_lost_posthoc_source(tmp_path):
    archived = [('grpo_toy', s) for s in range(3)] + [('anchor_ema', s) for s in range(3)] + \
        [('grpo_toy_drift', 0), ('anchor_ema_drift', 0), ('posthoc_decoder', 0)]
    trains, root, log = _run_study(tmp_path, archived)
    dirs = [d for d, _ in trains]
    for name, seed in archived:
        if not name.startswith('grpo_toy'):  # standard RL: the post-hoc runs' sources
            assert f'{name}/seed{seed}' not in dirs
    # the archive keeps no weights: each post-hoc run whose source is archived trains the source
    # again (once), right before itself, and loads it
    for seed in (1, 2):
        i = dirs.index(f'posthoc_decoder/seed{seed}')
        assert dirs[i - 1] == f'grpo_toy/seed{seed}'
        assert trains[i][1] == str(root / f'grpo_toy/seed{seed}/iter_600.pth')
    i = dirs.index('posthoc_decoder_drift/seed0')
    assert dirs[i - 1] == 'grpo_toy_drift/seed0'
    assert dirs.count('grpo_toy_drift/seed0') == 1 and 'grpo_toy/seed0' not in dirs
    assert 'is archived without its weights' in log


def test_run_study_refuses_bad_arguments_before_training(tmp_path):
    root = str(tmp_path / 'root')
    proc, calls = _run_study(tmp_path, [], args=[root, '1', str(tmp_path / 'archiv')])
    assert proc.returncode == 2 and not calls.exists()
    assert f"ARCHIVE (3rd argument) '{tmp_path / 'archiv'}' is not a directory" in proc.stderr
    (tmp_path / 'again').mkdir()
    proc, calls = _run_study(tmp_path / 'again', [], args=[root, 'two'])
    assert proc.returncode == 2 and not calls.exists()
    assert "WORKERS (2nd argument) must be a positive integer, got 'two'" in proc.stderr


def test_run_study_fails_a_posthoc_run_whose_source_failed(tmp_path):
    """The post-hoc run waits for its source; a source that crashed must end the wait."""
    trains, root, log = _run_study(tmp_path, [], fail_train='grpo_toy/seed0')
    dirs = [d for d, _ in trains]
    assert 'FAILED grpo_toy seed 0' in log and (root / 'grpo_toy/seed0.FAILED').is_file()
    assert 'FAILED posthoc_decoder seed 0: its source grpo_toy seed 0 failed' in log
    assert 'posthoc_decoder/seed0' not in dirs  # never trained, and nothing else stopped
    assert 'posthoc_decoder/seed1' in dirs and dirs[-1] == 'disc_sees_policy/seed0'


def test_study_4_trains_its_registered_runs_in_order(tmp_path):
    root, archive = tmp_path / 'root', tmp_path / 'archive'
    proc, calls = _run_study(tmp_path, archived=[], args=[str(root), '1', str(archive), '4'])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dirs = [str(Path(t.split()[t.split().index('--work-dir') + 1]).relative_to(root))
            for t in calls.read_text().splitlines() if t.startswith('tools/train.py')]
    released = [f'{n}/seed{s}' for s in range(3)
                for n in ('grpo_toy', 'anchor_ema', 'decoder_recon_only', 'posthoc_decoder')]
    decomposition = [f'{n}/seed{s}' for s in range(3)
                     for n in ('anchor_ema_no_clamp', 'anchor_ema_study3_disc')]
    assert dirs == released + decomposition + ['anchor_ema_study3/seed0']
    for name in ('anchor_ema_no_clamp', 'anchor_ema_study3_disc', 'anchor_ema_study3'):
        assert (REPO / 'configs' / 'study' / f'{name}.py').is_file()


def test_unknown_study_is_refused(tmp_path):
    proc, _ = _run_study(tmp_path, archived=[], args=[str(tmp_path / 'r'), '1', '', '5'])
    assert proc.returncode == 2 and 'STUDY (4th argument) must be 3 or 4' in proc.stderr
