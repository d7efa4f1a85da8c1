"""No checkpoint runs code when it is read (issue 26, item 1).

A malicious checkpoint here is a torch file whose pickle calls ``exec`` with code that writes a
marker file: each path that reads checkpoints must refuse it with the one-line message (file,
why, how to convert) and the marker must never appear. The conversion tool
(tools/convert_checkpoint.py) turns a trusted legacy checkpoint into one that loads, and is the
only code that unpickles in full.
"""
import ast
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from rankekit.apis.export import export_main
from rankekit.apis.inference import evaluate_main, sample_main
from rankekit.apis.train import build_runner, main as train_main, parse_args, setup_cfg
from rankekit.engine.runner import check_resume_config, saved_config
from rankekit.utils.run_files import load_runner_checkpoint_file, register_runner_checkpoint_loader
from rankekit.utils.weights import UnsafeCheckpointError, load_weights_file
from tiny_components import REPO, load_tool, tiny_model_cfg, train_blocks

pytestmark = pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')
#: the globals of a checkpoint rankekit writes beyond torch's own: a numpy scalar (MMEngine's eta)
NUMPY_SCALAR = {'numpy._core.multiarray.scalar', 'numpy.dtype'}


class RunsCode:
    """Unpickling this calls ``exec``: it writes ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("code from a checkpoint ran")',)


def _config_text(work_dir, runner_type='SafeRunner', load_from=None, max_iters=2):
    return f'''
default_scope = 'rankekit'
runner_type = {runner_type!r}
work_dir = {str(work_dir)!r}
load_from = {None if load_from is None else str(load_from)!r}
model = {tiny_model_cfg(decoder_cfg=dict(disc_start=1))!r}
{train_blocks(16, max_iters)}
default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook', interval=2, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1),
    coevolution=dict(type='CoEvolutionHook', schedule='sync'))
randomness = dict(seed=0)
log_level = 'WARNING'
'''


@pytest.fixture
def setup(tmp_path):
    """(config file, work dir, malicious checkpoint, the marker its code would write)."""
    work = tmp_path / 'work'
    cfg = tmp_path / 'run.py'
    cfg.write_text(_config_text(work))
    marker = tmp_path / 'CODE_RAN'
    evil = tmp_path / 'evil.pth'
    # shaped like a runner checkpoint, so that only the payload makes it unsafe
    torch.save({'meta': {'cfg': cfg.read_text(), 'iter': 2, 'epoch': 0, 'note': RunsCode(marker)},
                'state_dict': OrderedDict(w=torch.zeros(2)),
                'message_hub': {'log_scalars': {}, 'runtime_info': {}, 'resumed_keys': {}}},
               evil)
    return cfg, work, evil, marker


def _assert_refused_line(text, path):
    """The refusal: one line naming the file, the disallowed global, why and the conversion."""
    assert f'checkpoint {path} is refused' in text or f'{path} is refused' in text, text
    assert 'builtins.exec' in text and 'run code' in text
    assert 'tools/convert_checkpoint.py' in text and 'trust' in text
    assert 'Traceback' not in text


def _assert_one_error_line(err, path):
    lines = [line for line in err.strip().splitlines() if line.startswith('error:')]
    assert len(lines) == 1, err
    _assert_refused_line(lines[0], path)


# ------------------------------------------------------------------------------------------------
# the library paths
# ------------------------------------------------------------------------------------------------
def _mmengine_loader(path):
    from mmengine.runner.checkpoint import CheckpointLoader
    register_runner_checkpoint_loader()
    return CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def _mmengine_private_loader(path):  # what Runner.load_checkpoint / resume call
    from mmengine.runner.checkpoint import _load_checkpoint
    register_runner_checkpoint_loader()
    return _load_checkpoint(str(path), map_location='cpu')


def _toy_clip_export(path):
    from rankekit.toy.pretrain_clip import export_clip_weights
    return export_clip_weights(str(path), str(Path(path).with_suffix('.out')))


LOADERS = {
    'load_runner_checkpoint_file': load_runner_checkpoint_file,
    'CheckpointLoader.load_checkpoint': _mmengine_loader,
    'mmengine _load_checkpoint (Runner.resume)': _mmengine_private_loader,
    'saved_config (the resume-config check)': saved_config,
    'load_weights_file (pretrained=)': load_weights_file,
    'toy export_clip_weights': _toy_clip_export,
}


@pytest.mark.parametrize('legacy_format', [False, True], ids=['zip', 'legacy-format'])
@pytest.mark.parametrize('name', list(LOADERS))
def test_library_loaders_refuse_a_code_running_pickle(setup, name, legacy_format, tmp_path):
    cfg, _, evil, marker = setup
    if legacy_format:  # torch's pre-1.6 container: the same unpickler, another reader
        path = tmp_path / 'evil_legacy.pth'
        torch.save({'meta': {'x': RunsCode(marker)}, 'state_dict': {'w': torch.zeros(1)}}, path,
                   _use_new_zipfile_serialization=False)
        evil = path
    with pytest.raises(UnsafeCheckpointError) as info:
        LOADERS[name](evil)
    message = str(info.value)
    assert '\n' not in message
    if legacy_format:  # no zip directory to list the globals from: the unpickler's reason
        assert f'{evil} is refused' in message and 'exec' in message
        assert 'tools/convert_checkpoint.py' in message
    else:
        _assert_refused_line(message, evil)
    assert not marker.exists()


def test_resume_config_check_refuses(setup):
    cfg, _, evil, marker = setup
    config = setup_cfg(parse_args([str(cfg)]))
    with pytest.raises(UnsafeCheckpointError):
        check_resume_config(evil, config)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# the command lines: one error line, exit code 2, nothing ran
# ------------------------------------------------------------------------------------------------
def _train_resume_path(cfg, work, evil, tmp_path):
    return train_main([str(cfg), '--resume', str(evil)])


def _train_resume_path_any_config(cfg, work, evil, tmp_path):
    return train_main([str(cfg), '--resume', str(evil), '--resume-any-config'])


def _train_resume_auto(cfg, work, evil, tmp_path):
    work.mkdir()  # the malicious file as the run's newest checkpoint
    (work / 'iter_2.pth').write_bytes(evil.read_bytes())
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    return train_main([str(cfg), '--resume', 'auto'])


def _train_load_from(cfg, work, evil, tmp_path):
    return train_main([str(cfg), '--cfg-options', f'load_from={evil}'])


def _test_tool(cfg, work, evil, tmp_path):
    return evaluate_main([str(cfg), str(evil), '--out-dir', str(tmp_path / 'test_out'),
                          '--device', 'cpu', '--no-progress'])


def _test_tool_work_dir(cfg, work, evil, tmp_path):
    work.mkdir()
    (work / 'iter_2.pth').write_bytes(evil.read_bytes())
    return evaluate_main([str(cfg), str(work), '--out-dir', str(tmp_path / 'test_out'),
                          '--device', 'cpu', '--no-progress'])


def _sample_tool(cfg, work, evil, tmp_path):
    return sample_main([str(cfg), str(evil), '--prompts', 'a red circle', '--out-dir',
                        str(tmp_path / 'samples'), '--device', 'cpu'])


def _export_tool(cfg, work, evil, tmp_path):
    return export_main([str(cfg), str(evil), '--out-dir', str(tmp_path / 'exported')])


COMMANDS = {
    'tools/train.py --resume PATH': _train_resume_path,
    'tools/train.py --resume PATH --resume-any-config': _train_resume_path_any_config,
    'tools/train.py --resume auto': _train_resume_auto,
    'tools/train.py load_from=': _train_load_from,
    'tools/test.py CHECKPOINT': _test_tool,
    'tools/test.py WORK_DIR': _test_tool_work_dir,
    'tools/sample.py': _sample_tool,
    'tools/export_checkpoint.py': _export_tool,
}


@pytest.mark.parametrize('name', list(COMMANDS))
def test_commands_refuse_a_code_running_pickle(setup, name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    cfg, work, evil, marker = setup
    assert COMMANDS[name](cfg, work, evil, tmp_path) == 2
    target = work / 'iter_2.pth' if 'auto' in name or 'WORK_DIR' in name else evil
    _assert_one_error_line(capsys.readouterr().err, target)
    assert not marker.exists()
    assert not (tmp_path / 'exported').exists() and not (tmp_path / 'samples').exists()
    if name.startswith('tools/train.py'):  # refused before the run wrote anything
        assert not list(work.glob('*.py')) and not list(work.glob('2*'))


def test_the_tools_script_refuses_in_a_fresh_process(setup, tmp_path):
    cfg, _, evil, marker = setup
    # the test reward is registered by tests/tiny_components.py: imported as a plugin
    cfg.write_text(cfg.read_text() + "custom_imports = dict(imports=['tiny_components'])\n")
    env = {**os.environ, 'PYTHONPATH': str(REPO / 'tests')}
    env.pop('RANKEKIT_DEBUG', None)
    done = subprocess.run([sys.executable, str(REPO / 'tools' / 'test.py'), str(cfg), str(evil),
                           '--device', 'cpu', '--out-dir', str(tmp_path / 'out')],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 2, done.stderr
    _assert_one_error_line(done.stderr, evil)
    assert not marker.exists()


def test_the_payload_is_live_so_the_refusals_mean_something(setup, tmp_path):
    """Full unpickling (what the conversion tool does for a file the user vouches for) runs it:
    the refusals above are what kept the marker away."""
    _, _, evil, marker = setup
    convert = load_tool('convert_checkpoint')
    assert convert.main([str(evil), str(tmp_path / 'converted.pth')]) == 0
    assert marker.read_text() == 'code from a checkpoint ran'


# ------------------------------------------------------------------------------------------------
# the conversion tool
# ------------------------------------------------------------------------------------------------
def _legacy_checkpoint(path):
    """A runner checkpoint as MMEngine pickles it in full: HistoryBuffers, a numpy scalar."""
    loss = HistoryBuffer([0.5, 0.25, 0.125], [1, 1, 2], max_length=50)
    steps = HistoryBuffer([3, 4], [1, 1])
    checkpoint = {
        'meta': {'iter': 4, 'epoch': 0, 'seed': 0, 'cfg': 'model = dict()'},
        'state_dict': OrderedDict(w=torch.arange(6.0).view(2, 3), n=torch.tensor(7)),
        'message_hub': {'log_scalars': OrderedDict([('train/loss', loss),
                                                    ('train/steps', steps)]),
                        'runtime_info': OrderedDict(eta=np.float64(12.5), iter=3),
                        'resumed_keys': OrderedDict([('train/loss', True), ('eta', True)])},
        'optimizer': {'state': {0: {'step': torch.tensor(4.0)}},
                      'param_groups': [{'lr': 1e-3, 'betas': (0.9, 0.999), 'params': [0]}]}}
    torch.save(checkpoint, path)
    return checkpoint


def test_conversion_makes_a_trusted_legacy_checkpoint_load_exactly(tmp_path, capsys):
    src, dst = tmp_path / 'old.pth', tmp_path / 'new.pth'
    original = _legacy_checkpoint(src)
    with pytest.raises(UnsafeCheckpointError, match='HistoryBuffer.*written before safe loading'):
        load_runner_checkpoint_file(src)
    convert = load_tool('convert_checkpoint')
    assert convert.main([str(src), str(dst)]) == 0
    assert f'converted {src} -> {dst} (2 HistoryBuffer(s) as tensors)' in capsys.readouterr().out
    # on disk: tensors and plain data (numpy scalars are the allow-listed extra) ...
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(dst)) == NUMPY_SCALAR
    loaded = load_runner_checkpoint_file(dst)  # ... and HistoryBuffers again once read
    for key in ('train/loss', 'train/steps'):
        before, after = original['message_hub']['log_scalars'][key], \
            loaded['message_hub']['log_scalars'][key]
        assert isinstance(after, HistoryBuffer) and after.max_length == before.max_length
        for name in ('_log_history', '_count_history'):
            assert getattr(after, name).dtype == getattr(before, name).dtype
            assert np.array_equal(getattr(after, name), getattr(before, name))
    eta = loaded['message_hub']['runtime_info']['eta']
    assert type(eta) is np.float64 and eta == 12.5
    assert all(torch.equal(loaded['state_dict'][k], v) for k, v in original['state_dict'].items())
    assert loaded['optimizer']['param_groups'] == original['optimizer']['param_groups']
    assert loaded['meta'] == original['meta']
    assert src.read_bytes() != dst.read_bytes() and not list(tmp_path.glob('*.partial'))


def test_conversion_in_place_and_of_files_that_are_safe_already(tmp_path, capsys):
    convert = load_tool('convert_checkpoint')
    legacy = [tmp_path / 'iter_2.pth', tmp_path / 'iter_4.pth']
    for path in legacy:
        _legacy_checkpoint(path)
    safe = tmp_path / 'plain.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}}, safe)
    before = safe.read_bytes()
    assert convert.main(['--in-place', *map(str, legacy), str(safe)]) == 0
    out = capsys.readouterr().out
    assert out.count('converted') == 2 and f'{safe} already loads weights-only' in out
    assert safe.read_bytes() == before
    for path in legacy:
        assert isinstance(load_runner_checkpoint_file(path)['message_hub']['log_scalars']
                          ['train/loss'], HistoryBuffer)


def test_conversion_refuses_objects_without_a_safe_form(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    convert = load_tool('convert_checkpoint')
    src = tmp_path / 'module.pth'
    torch.save({'model': torch.nn.Linear(2, 2), 'meta': {'cfg': 'x'}}, src)
    assert convert.main([str(src), str(tmp_path / 'out.pth')]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: cannot convert {src}: 1 object(s) have no form')
    assert 'model (torch.nn.modules.linear.Linear)' in err and 'state_dict()' in err
    assert not (tmp_path / 'out.pth').exists() and not list(tmp_path.glob('*.partial'))


def test_conversion_bad_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    convert = load_tool('convert_checkpoint')
    src, dst = tmp_path / 'old.pth', tmp_path / 'new.pth'
    _legacy_checkpoint(src)
    dst.write_bytes(b'keep me')
    assert convert.main([str(src), str(dst)]) == 2
    assert f'error: {dst} exists' in capsys.readouterr().err and dst.read_bytes() == b'keep me'
    assert convert.main([str(tmp_path / 'absent.pth'), str(tmp_path / 'x.pth')]) == 2
    assert 'absent.pth does not exist' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.parse_args([str(src)])  # one path without --in-place
    assert 'give SRC and DST' in capsys.readouterr().err


def test_conversion_help_says_it_is_the_one_full_unpickle():
    done = subprocess.run([sys.executable, str(REPO / 'tools' / 'convert_checkpoint.py'), '-h'],
                          capture_output=True, text=True, timeout=120)
    text = ' '.join(done.stdout.split())
    assert done.returncode == 0
    assert 'only place in rankekit that calls torch.load with weights_only=False' in text
    assert 'TRUSTED' in text and '--in-place' in text


# ------------------------------------------------------------------------------------------------
# the code base: one full unpickle, one allow-list
# ------------------------------------------------------------------------------------------------
CONVERTER = 'tools/convert_checkpoint.py'


def _sources():
    return sorted(p for folder in ('rankekit', 'tools') for p in (REPO / folder).rglob('*.py'))


def _dotted(node) -> str:
    return f'{_dotted(node.value)}.{node.attr}' if isinstance(node, ast.Attribute) else \
        getattr(node, 'id', '?')


def test_no_code_running_load_in_the_code_base():
    """No ``weights_only=False`` (nor a torch.load without ``weights_only=True``, a raw
    ``pickle.load``, ``np.load(allow_pickle=True)``) outside the conversion tool; the allow-list
    lives in one place (``safe_load_globals`` through ``safe_globals``, never process-wide)."""
    problems = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text()
        if rel != CONVERTER and re.search(r'weights_only\s*=\s*False', text):
            problems.append(f'{rel}: weights_only=False')
        if 'add_safe_globals' in text:
            problems.append(f'{rel}: add_safe_globals (process-wide)')
        if 'safe_globals(' in text and rel != 'rankekit/utils/weights.py':
            problems.append(f'{rel}: an allow-list outside rankekit/utils/weights.py')
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            name, keywords = _dotted(node.func), {k.arg: k.value for k in node.keywords}
            if name in ('torch.load', 'torch.serialization.load') and rel != CONVERTER:
                value = keywords.get('weights_only')
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f'{rel}:{node.lineno}: torch.load without weights_only=True')
            if name in ('pickle.load', 'pickle.loads', 'pickle.Unpickler'):
                problems.append(f'{rel}:{node.lineno}: {name}')
            if name in ('np.load', 'numpy.load'):
                value = keywords.get('allow_pickle')
                if value is not None and not (isinstance(value, ast.Constant)
                                              and value.value is False):
                    problems.append(f'{rel}:{node.lineno}: np.load(allow_pickle=...)')
    assert not problems, problems
    converter = (REPO / CONVERTER).read_text()
    assert converter.count('weights_only=False') >= 1  # ... and that is where it is


def test_no_test_unpickles_in_full():
    """The suite reads checkpoints as the tools do (the malicious file here only through the
    conversion tool): no call passes weights_only=False."""
    found = [f'{path.name}:{node.lineno}' for path in sorted((REPO / 'tests').glob('*.py'))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.keyword)
             and node.arg == 'weights_only' and isinstance(node.value, ast.Constant)
             and node.value.value is False]
    assert not found, found


# ------------------------------------------------------------------------------------------------
# real runs: what SafeRunner writes loads weights-only; MMEngine's own load path refuses too
# ------------------------------------------------------------------------------------------------
def _train(cfg_file, *extra):
    runner = build_runner(setup_cfg(parse_args([str(cfg_file), *extra])))
    runner.train()
    return runner


def _log_text(work_dir):
    return '\n'.join(p.read_text() for p in Path(work_dir).rglob('*.log'))


@pytest.mark.slow
def test_runner_checkpoints_load_weights_only_and_legacy_ones_convert(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    work = tmp_path / 'work'
    cfg = tmp_path / 'run.py'
    cfg.write_text(_config_text(work, max_iters=2))
    first = _train(cfg)
    newest = work / 'iter_2.pth'
    assert 'refused' not in _log_text(work)  # no save-time warning
    # on disk: plain data only (torch's own allow-list plus numpy scalars), no HistoryBuffer
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(newest)) == NUMPY_SCALAR
    stored = load_runner_checkpoint_file(newest)
    scalars = stored['message_hub']['log_scalars']
    assert scalars and all(isinstance(v, HistoryBuffer) for v in scalars.values())
    live = first.message_hub.log_scalars
    assert all(np.array_equal(scalars[k]._log_history, live[k]._log_history) for k in scalars)

    # the same run as a full pickle (how it was saved before safe loading): refused on resume
    torch.save(stored, newest)
    assert train_main([str(cfg), '--resume', 'auto',
                       '--cfg-options', 'train_cfg.max_iters=4']) == 2
    err = capsys.readouterr().err
    assert f'error: checkpoint {newest} is refused' in err and 'HistoryBuffer' in err
    assert load_tool('convert_checkpoint').main(['--in-place', str(newest)]) == 0
    resumed = _train(cfg, '--resume', 'auto', '--cfg-options', 'train_cfg.max_iters=4')
    assert resumed.iter == 4
    history = resumed.message_hub.log_scalars['train/tau']._log_history
    assert np.array_equal(history[:2], live['train/tau']._log_history) and len(history) == 4


@pytest.mark.slow
def test_mmengine_runner_load_path_refuses_without_the_set_up_checks(setup, tmp_path):
    """A plain MMEngine Runner (none of SafeRunner's checks at set-up): its own load_from path
    reads through the registered loader, which refuses before any iteration."""
    _, _, evil, marker = setup
    cfg = tmp_path / 'plain.py'
    cfg.write_text(_config_text(tmp_path / 'plain_work', runner_type='Runner', load_from=evil))
    runner = build_runner(setup_cfg(parse_args([str(cfg)])))
    with pytest.raises(UnsafeCheckpointError, match='builtins.exec'):
        runner.train()
    assert runner.iter == 0 and not marker.exists()
