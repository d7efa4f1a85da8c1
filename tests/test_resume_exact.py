"""Resume is bit-exact on CPU: N iterations in one go == N/2, resume, N/2 (every tensor)."""
import pytest
import torch

from mmengine.hooks import Hook

from rankekit.apis.train import build_runner, parse_args, setup_cfg
from rankekit.registry import HOOKS
from tiny_components import tiny_model_cfg, train_blocks


class SimulatedCrash(RuntimeError):
    pass


@HOOKS.register_module(force=True)
class CrashAfterHook(Hook):
    """Test hook: kill the run (an exception) after ``iters`` iterations."""

    def __init__(self, iters):
        self.iters = iters

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 >= self.iters:
            raise SimulatedCrash(f'simulated crash after {self.iters} iterations')

pytestmark = pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')


def _config(work_dir, max_iters, crash_after=None):
    model = tiny_model_cfg(decoder_cfg=dict(disc_start=1))
    return f'''
default_scope = 'rankekit'
work_dir = {str(work_dir)!r}
model = {model!r}
{train_blocks(64, max_iters)}
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1),
    coevolution=dict(type='CoEvolutionHook', schedule='alternate', policy_iters=1,
                     decoder_iters=1, tau=dict(type='linear', start=4.0, end=1.0)))
randomness = dict(seed=0)
log_level = 'WARNING'
custom_hooks = {[dict(type='CrashAfterHook', iters=crash_after)] if crash_after else []!r}
'''


def _train(cfg_file, *extra):
    runner = build_runner(setup_cfg(parse_args([str(cfg_file), *extra])))
    runner.train()
    return runner


def _tensors(obj, prefix=''):
    """Every tensor of a nested state (state_dicts, optimizer states), by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f'{prefix}/{key}')
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f'{prefix}/{i}')


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path):
    """The schedules (tau) depend on max_iters: the interrupted run has the same config."""
    (tmp_path / 'full.py').write_text(_config(tmp_path / 'full', 6))
    (tmp_path / 'crashing.py').write_text(_config(tmp_path / 'split', 6, crash_after=3))
    (tmp_path / 'split.py').write_text(_config(tmp_path / 'split', 6))
    full = _train(tmp_path / 'full.py')
    with pytest.raises(SimulatedCrash):
        _train(tmp_path / 'crashing.py')
    assert (tmp_path / 'split' / 'iter_2.pth').is_file()
    assert not (tmp_path / 'split' / 'iter_4.pth').exists()
    resumed = _train(tmp_path / 'split.py', '--resume', 'auto')
    assert resumed.iter == full.iter == 6
    expected = dict(_tensors(dict(model=full.model.state_dict(),
                                  optim=full.optim_wrapper.state_dict())))
    got = dict(_tensors(dict(model=resumed.model.state_dict(),
                             optim=resumed.optim_wrapper.state_dict())))
    assert expected.keys() == got.keys()
    assert any('policy_ema' in k for k in got) and any('discriminator' in k for k in got)
    differing = [key for key, value in expected.items() if not torch.equal(value, got[key])]
    assert not differing, f'{len(differing)} tensors differ after resume: {differing[:12]}'
    assert int(resumed.model.decoder_steps) == int(full.model.decoder_steps) == 3
