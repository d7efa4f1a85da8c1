"""Checkpoints survive crashes: atomic saves, finite weights, --resume auto, config checks."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.hooks import Hook

from rankekit.apis.train import build_runner, main, parse_args, setup_cfg
from rankekit.engine.runner import NonFiniteCheckpointError, ResumeConfigError
from rankekit.registry import HOOKS
from rankekit.utils.run_files import (NoCompleteCheckpointError, checkpoint_problem,
                                      find_resume_checkpoint, load_runner_checkpoint_file,
                                      write_bytes_atomic)
from tiny_components import tiny_model_cfg, train_blocks

pytestmark = pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')
TESTS = Path(__file__).parent
POISONED = 'policy.tok_embeddings.weight'


@HOOKS.register_module(force=True)
class PoisonWeightHook(Hook):
    """Test hook: put a NaN in one weight after iteration ``at``, before that iteration's save."""

    def __init__(self, at, name):
        self.at, self.name = at, name

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            with torch.no_grad():
                dict(runner.model.named_parameters())[self.name].view(-1)[:3] = float('nan')


def _config(work_dir, max_iters=4, max_keep=-1, custom_hooks=(), rewards=None, summary=False):
    """A tiny RankE run saving every 2 iterations with the crash-safe runner and hook."""
    model = tiny_model_cfg(decoder_cfg=dict(disc_start=1),
                           **({'rewards': rewards} if rewards else {}))
    extra_hooks = "default_hooks['summary'] = dict(type='TrainingSummaryHook')" if summary else ''
    return f'''
default_scope = 'rankekit'
runner_type = 'SafeRunner'
work_dir = {str(work_dir)!r}
model = {model!r}
{train_blocks(32, max_iters)}
default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook', interval=2, by_epoch=False,
                    max_keep_ckpts={max_keep}),
    logger=dict(type='LoggerHook', interval=1),
    coevolution=dict(type='CoEvolutionHook', schedule='sync'))
{extra_hooks}
randomness = dict(seed=0)
log_level = 'WARNING'
custom_hooks = {list(custom_hooks)!r}
'''


def _write_config(path, work_dir, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_config(work_dir, **kwargs))
    return path


def _train(cfg_file, *extra):
    runner = build_runner(setup_cfg(parse_args([str(cfg_file), *extra])))
    runner.train()
    return runner


def _pointer(work_dir):
    return Path((work_dir / 'last_checkpoint').read_text().strip())


def _state(path):
    return load_runner_checkpoint_file(path, map_location='cpu')['state_dict']


def _assert_same_weights(state, reference):
    assert state.keys() == reference.keys()
    differing = [k for k in reference if not torch.equal(state[k], reference[k])]
    assert not differing, f'{len(differing)} tensors differ: {differing[:8]}'


def _log_text(work_dir):
    return '\n'.join(p.read_text() for p in Path(work_dir).rglob('*.log'))


@HOOKS.register_module(force=True)
class StopAfterHook(Hook):
    """Test hook: an exception after ``iters`` iterations (once that iteration has saved)."""

    priority = 'LOWEST'

    def __init__(self, iters):
        self.iters = iters

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 >= self.iters:
            raise KeyboardInterrupt(f'stopped after {self.iters} iterations')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """An uninterrupted 4-iteration run saving at 2 and 4: (config file, work dir)."""
    root = tmp_path_factory.mktemp('reference')
    cfg = _write_config(root / 'run.py', root / 'work')
    _train(cfg)
    return cfg, root / 'work'


@pytest.fixture
def copied_run(reference, tmp_path):
    """A copy of the reference work dir, and a config pointing at it."""
    work = tmp_path / 'work'
    shutil.copytree(reference[1], work)
    # MMEngine's pointer holds the absolute path of the original: point it at the copy
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))
    return _write_config(tmp_path / 'run.py', work), work


# ------------------------------------------------------------------------------------------------
# file-level helpers
# ------------------------------------------------------------------------------------------------
def test_completeness_check_spots_truncation_at_any_length(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save(dict(state_dict=dict(w=torch.arange(1000.0)), meta=dict(iter=3)), path)
    assert checkpoint_problem(path) is None
    data = path.read_bytes()
    for size in (0, 1, 100, len(data) // 2, len(data) - 23, len(data) - 1):
        cut = tmp_path / f'cut{size}.pth'
        cut.write_bytes(data[:size])
        problem = checkpoint_problem(cut)
        assert problem is not None and ('truncated' in problem or 'empty' in problem), size
    assert checkpoint_problem(tmp_path / 'absent.pth') == 'does not exist'


def test_atomic_write_keeps_old_content_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / 'last_checkpoint'
    write_bytes_atomic(path, b'old')

    def failing_replace(src, dst):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError, match='No space'):
        write_bytes_atomic(path, b'new')
    assert path.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last_checkpoint']  # no .partial


def test_find_resume_checkpoint_cases(tmp_path):
    assert find_resume_checkpoint(tmp_path) == (None, None)  # nothing: a fresh start
    good, bad = tmp_path / 'iter_2.pth', tmp_path / 'iter_4.pth'
    torch.save(dict(w=torch.ones(3)), good)
    bad.write_bytes(good.read_bytes()[:40])
    (tmp_path / 'iter_6.pth.partial').write_bytes(b'half')  # a killed save: never a candidate
    (tmp_path / 'last_checkpoint').write_text('')  # torn pointer
    path, note = find_resume_checkpoint(tmp_path)
    assert path == str(good)
    assert 'is empty' in note and 'iter_4.pth (is truncated or corrupt' in note
    (tmp_path / 'last_checkpoint').unlink()
    path, note = find_resume_checkpoint(tmp_path)
    assert path == str(good) and 'has no last_checkpoint pointer' in note
    good.unlink()
    with pytest.raises(NoCompleteCheckpointError, match='no complete checkpoint.*iter_4.pth'):
        find_resume_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------
# (a) a crash in the middle of a save
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_crash_mid_save_keeps_previous_checkpoint_and_resume_finishes(reference, tmp_path,
                                                                      monkeypatch):
    work = tmp_path / 'work'
    cfg = _write_config(tmp_path / 'run.py', work, max_keep=1)
    original_put = LocalBackend.put

    def dying_put(self, obj, filepath):  # the disk fills up half-way through iter_4
        if 'iter_4' in str(filepath):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise OSError(28, 'No space left on device (simulated)')
        return original_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', dying_put)
    with pytest.raises(OSError, match='simulated'):
        _train(cfg)
    # max_keep_ckpts=1, yet iter_2 survives: outdated files are deleted only after a save
    assert checkpoint_problem(work / 'iter_2.pth') is None
    assert not (work / 'iter_4.pth').exists() and not list(work.glob('*.partial'))
    assert _pointer(work) == work / 'iter_2.pth'
    _assert_same_weights(_state(work / 'iter_2.pth'), _state(reference[1] / 'iter_2.pth'))

    monkeypatch.setattr(LocalBackend, 'put', original_put)
    resumed = _train(cfg, '--resume', 'auto')
    assert resumed.iter == 4 and _pointer(work) == work / 'iter_4.pth'
    assert not (work / 'iter_2.pth').exists()  # pruned once iter_4 was on disk
    _assert_same_weights(_state(work / 'iter_4.pth'), _state(reference[1] / 'iter_4.pth'))


_KILLED_CHILD = '''
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import tiny_components  # noqa: F401 - registers the test reward
from mmengine.fileio.backends.local_backend import LocalBackend
from rankekit.apis.train import main

original_put = LocalBackend.put


def killed_put(self, obj, filepath):  # SIGKILL half-way through writing iter_4
    if 'iter_4' in str(filepath):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original_put(self, obj, filepath)


LocalBackend.put = killed_put
main([{config!r}])
'''


@pytest.mark.slow
def test_sigkill_mid_save_leaves_a_resumable_run(reference, tmp_path):
    work = tmp_path / 'work'
    cfg = _write_config(tmp_path / 'run.py', work, max_keep=1)
    script = tmp_path / 'child.py'
    script.write_text(_KILLED_CHILD.format(tests=str(TESTS), config=str(cfg)))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    # the half file lies under its temporary name only, never under a checkpoint's name
    half = work / 'iter_4.pth.partial'
    assert half.is_file() and checkpoint_problem(half) is not None
    assert not (work / 'iter_4.pth').exists()
    assert _pointer(work) == work / 'iter_2.pth'
    assert find_resume_checkpoint(work) == (str(work / 'iter_2.pth'), None)

    resumed = _train(cfg, '--resume', 'auto')
    assert resumed.iter == 4
    assert not half.exists()  # cleaned up at the next save
    _assert_same_weights(_state(work / 'iter_4.pth'), _state(reference[1] / 'iter_4.pth'))


# ------------------------------------------------------------------------------------------------
# (b) a truncated newest checkpoint
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_truncated_newest_checkpoint_resumes_from_previous_with_log_line(copied_run, reference):
    cfg, work = copied_run
    newest = work / 'iter_4.pth'
    newest.write_bytes(newest.read_bytes()[:newest.stat().st_size // 2])
    run_cfg = setup_cfg(parse_args([str(cfg), '--resume', 'auto']))
    # its own logger: MMEngine reuses one made in the same second (another test's log file)
    run_cfg.experiment_name = f'resume_truncated_{time.time_ns()}'
    runner = build_runner(run_cfg)
    runner.load_or_resume()
    assert runner.iter == 2
    log = _log_text(work)
    assert f'last_checkpoint names {newest}, which is truncated or corrupt' in log
    assert f'resuming from {work / "iter_2.pth"}, the newest complete checkpoint' in log
    runner.train()
    assert runner.iter == 4 and checkpoint_problem(newest) is None
    _assert_same_weights(_state(newest), _state(reference[1] / 'iter_4.pth'))


def test_runner_built_directly_also_skips_the_truncated_checkpoint(copied_run):
    """MMEngine's own from_cfg (no early resolution): load_or_resume does the same fallback."""
    from rankekit.engine.runner import SafeRunner
    cfg, work = copied_run
    newest = work / 'iter_4.pth'
    newest.write_bytes(newest.read_bytes()[:5000])
    run_cfg = setup_cfg(parse_args([str(cfg), '--resume', 'auto']))
    # MMEngine names a run's logger by the second it starts: a runner built in the same second
    # as another test's would log into that one's file
    run_cfg.experiment_name = f'resume_directly_{time.time_ns()}'
    runner = super(SafeRunner, SafeRunner).from_cfg(run_cfg)
    assert isinstance(runner, SafeRunner) and runner._load_from is None
    runner.load_or_resume()
    assert runner.iter == 2
    assert 'resuming from' in _log_text(work)


def test_resume_explicit_truncated_path_is_one_error_line(copied_run, capsys, monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    cfg, work = copied_run
    newest = work / 'iter_4.pth'
    newest.write_bytes(newest.read_bytes()[:1000])
    assert main([str(cfg), '--resume', str(newest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: --resume {newest}: the checkpoint is truncated or corrupt')
    assert '--resume auto' in err and 'Traceback' not in err


# ------------------------------------------------------------------------------------------------
# (c) non-finite weights are never written
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nonfinite_weight_refuses_save_and_keeps_previous(tmp_path):
    work = tmp_path / 'work'
    cfg = _write_config(tmp_path / 'run.py', work, max_keep=1,
                        custom_hooks=[dict(type='PoisonWeightHook', at=4, name=POISONED)])
    with pytest.raises(NonFiniteCheckpointError) as info:
        _train(cfg)
    message = str(info.value)
    assert f'not writing checkpoint {work / "iter_4.pth"}' in message
    assert '1 tensor(s)' in message and f'{POISONED} (3 of ' in message
    assert 'untouched' in message and '--resume auto' in message
    assert not (work / 'iter_4.pth').exists() and not list(work.glob('*.partial'))
    assert _pointer(work) == work / 'iter_2.pth'
    state = _state(work / 'iter_2.pth')
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------
# (d) resuming with a different config
# ------------------------------------------------------------------------------------------------
def test_resume_with_different_config_lists_the_keys(copied_run, capsys, monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    cfg, work = copied_run
    before = sorted(p.relative_to(work) for p in work.rglob('*'))
    changes = ['optim_wrapper.policy.optimizer.lr=0.01', 'model.policy_anchor.weight=0.1']
    assert main([str(cfg), '--resume', '--cfg-options', *changes]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: cannot resume from {work / "iter_4.pth"}: it was trained with '
                          f'a different config; 2 key(s)')
    assert 'model.policy_anchor.weight: 0.05 -> 0.1' in err
    assert 'optim_wrapper.policy.optimizer.lr: 0.001 -> 0.01' in err
    assert ('--cfg-options model.policy_anchor.weight=0.05 '
            'optim_wrapper.policy.optimizer.lr=0.001') in err
    assert '--work-dir' in err and '--resume-any-config' in err
    assert len(err.strip().splitlines()) == 2  # the error line + the RANKEKIT_DEBUG hint
    assert sorted(p.relative_to(work) for p in work.rglob('*')) == before  # nothing written

    # an explicit path is checked the same way; the error is a ValueError for library callers
    with pytest.raises(ResumeConfigError, match='optim_wrapper.policy.optimizer.lr'):
        build_runner(setup_cfg(parse_args([str(cfg), '--resume', str(work / 'iter_2.pth'),
                                           '--cfg-options', changes[0]])))


@pytest.mark.slow
def test_resume_with_only_max_iters_changed_continues(copied_run):
    cfg, work = copied_run
    resumed = _train(cfg, '--resume', '--cfg-options', 'train_cfg.max_iters=6')
    assert resumed.iter == 6 and _pointer(work) == work / 'iter_6.pth'


def test_resume_any_config_overrides_the_check(copied_run):
    cfg, work = copied_run
    runner = build_runner(setup_cfg(parse_args([
        str(cfg), '--resume', '--resume-any-config', '--cfg-options',
        'optim_wrapper.policy.optimizer.lr=0.01'])))
    runner.load_or_resume()
    assert runner.iter == 4
    assert runner.optim_wrapper['policy'].optimizer.param_groups[0]['lr'] == 0.001  # resumed
    with pytest.raises(ValueError, match='--resume-any-config only applies together with'):
        setup_cfg(parse_args([str(cfg), '--resume-any-config']))


# ------------------------------------------------------------------------------------------------
# (e) a work dir that cannot be written
# ------------------------------------------------------------------------------------------------
def test_work_dir_under_a_file_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    cfg = _write_config(tmp_path / 'run.py', tmp_path / 'unused')
    (tmp_path / 'afile').write_text('x')
    assert main([str(cfg), '--work-dir', str(tmp_path / 'afile' / 'run')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: work dir {tmp_path / "afile" / "run"} cannot be created: '
                          f'{tmp_path / "afile"} is a file, not a folder. Fix: pass another '
                          f'--work-dir')


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0,
                    reason='root writes through chmod 0o500')
def test_read_only_work_dir_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    cfg = _write_config(tmp_path / 'run.py', tmp_path / 'unused')
    locked = tmp_path / 'locked'
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main([str(cfg), '--work-dir', str(locked / 'run')]) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert err.startswith(f'error: work dir {locked / "run"} cannot be created: its parent '
                          f'{locked} is not writable (Permission denied). Fix:')
    assert not (locked / 'run').exists()


def test_unknown_runner_type_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    cfg = _write_config(tmp_path / 'run.py', tmp_path / 'work')
    assert main([str(cfg), '--cfg-options', 'runner_type=SafeRuner']) == 2
    assert capsys.readouterr().err.startswith(
        "error: runner_type='SafeRuner' is not a registered runner; use 'SafeRunner' (the "
        "default), 'Runner' or 'FlexibleRunner'")


def test_unwritable_work_dir_message(tmp_path, monkeypatch):
    """The permission branch, also when running as root (tempfile made to fail)."""
    import tempfile

    from rankekit.engine.runner import WorkDirError, check_work_dir

    def denied(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(tempfile, 'TemporaryFile', denied)
    with pytest.raises(WorkDirError, match=rf'work dir {tmp_path} is not writable \(Permission '
                                           rf'denied\). Fix: pass a writable --work-dir, or make '
                                           rf'it writable \(chmod u\+w {tmp_path}\)'):
        check_work_dir(tmp_path)


# ------------------------------------------------------------------------------------------------
# the ablation tool resumes interrupted runs with --resume (auto)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ensure_runs_resumes_an_interrupted_run(tmp_path):
    from rankekit.analysis.ablation import ensure_runs, train_command
    rewards = [dict(type='ClipScore', model_name='rankekit-toy-clip', pretrained=None)]
    work = tmp_path / 'abl' / 'tiny' / 'seed4'
    first = _write_config(tmp_path / 'first' / 'tiny.py', work, rewards=rewards, summary=True,
                          custom_hooks=[dict(type='StopAfterHook', iters=2)])
    with pytest.raises(KeyboardInterrupt):
        _train(first, '--seed', '4')
    assert _pointer(work) == work / 'iter_2.pth' and not (work / 'summary.json').exists()
    cfg = _write_config(tmp_path / 'tiny.py', tmp_path / 'unused', rewards=rewards, summary=True)
    assert '--resume' in train_command(cfg, work, 4)
    first_save = (work / 'iter_2.pth').stat().st_mtime_ns
    assert ensure_runs([str(cfg)], [4], tmp_path / 'abl', run=True) == [work]
    assert (work / 'summary.json').is_file() and _pointer(work) == work / 'iter_4.pth'
    assert (work / 'iter_2.pth').stat().st_mtime_ns == first_save  # resumed, not retrained
