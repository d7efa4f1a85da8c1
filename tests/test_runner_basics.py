"""Multi-optimizer constructor and save/resume through the MMEngine Runner (torch >= 2.6 trap)."""
import copy

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from torch import nn
from torch.utils.data import Dataset

from rankekit.apis.train import build_runner, parse_args, setup_cfg
from rankekit.registry import DATASETS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS


@MODELS.register_module()
class TwoPartRegressor(BaseModel):
    """Test model: a 'policy' and a 'decoder' part, each with its own optimizer."""

    def __init__(self):
        super().__init__()
        self.policy = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 1)

    def forward(self, x, y=None, mode='tensor', train_part=None):
        hidden = torch.tanh(self.policy(x))
        if train_part == 'decoder':  # no gradient may leak into the other part's .grad
            hidden = hidden.detach()
        pred = self.decoder(hidden).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((pred - y) ** 2).mean())
        return pred

    def train_step(self, data, optim_wrapper: OptimWrapperDict):
        logs = {}
        for part in ('policy', 'decoder'):
            with optim_wrapper[part].optim_context(self):
                loss = self(data['x'], data['y'], mode='loss', train_part=part)['loss']
            optim_wrapper[part].update_params(loss)
            logs[f'{part}/loss'] = loss.detach()
        return logs


@DATASETS.register_module()
class RandomRegression(Dataset):
    """Test dataset: x ~ N(0, 1)^4, y = sum(x)."""

    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(-1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(x=self.x[i], y=self.y[i])


def _cfg_text(work_dir, max_iters=6):
    return f'''
default_scope = 'rankekit'
work_dir = {str(work_dir)!r}
model = dict(type='TwoPartRegressor')
train_dataloader = dict(batch_size=8, num_workers=0, collate_fn=dict(type='default_collate'),
                        sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
                        dataset=dict(type='RandomRegression'))
train_cfg = dict(by_epoch=False, max_iters={max_iters})
optim_wrapper = dict(
    constructor='MultiOptimWrapperConstructor',
    policy=dict(optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.01),
                clip_grad=dict(max_norm=1.0)),
    decoder=dict(optimizer=dict(type='SGD', lr=1e-2, momentum=0.9)))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=3, by_epoch=False),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0)
log_level = 'WARNING'
'''


def test_constructor_builds_one_wrapper_per_part():
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='MultiOptimWrapperConstructor',
        optim_wrapper_cfg=dict(policy=dict(optimizer=dict(type='AdamW', lr=1e-6),
                                           clip_grad=dict(max_norm=1.0)),
                               decoder=dict(optimizer=dict(type='SGD', lr=0.1)))))
    model = TwoPartRegressor()
    wrappers = constructor(model)
    assert isinstance(wrappers, OptimWrapperDict)
    assert set(wrappers.keys()) == {'policy', 'decoder'}
    policy_params = {id(p) for g in wrappers['policy'].optimizer.param_groups for p in g['params']}
    assert policy_params == {id(p) for p in model.policy.parameters()}
    assert wrappers['policy'].optimizer.param_groups[0]['lr'] == 1e-6
    assert isinstance(wrappers['decoder'].optimizer, torch.optim.SGD)
    assert wrappers['policy'].clip_grad_kwargs == dict(max_norm=1.0)


def test_constructor_unknown_part_is_a_clear_error():
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='MultiOptimWrapperConstructor',
        optim_wrapper_cfg=dict(decodr=dict(optimizer=dict(type='SGD', lr=0.1)))))
    with pytest.raises(KeyError, match="no part of that name.*'decoder', 'policy'.*'decoder'"):
        constructor(TwoPartRegressor())


def test_constructor_rejects_part_without_optimizer():
    with pytest.raises(ValueError, match="optim_wrapper.policy must be a dict with an 'optimizer'"):
        OPTIM_WRAPPER_CONSTRUCTORS.build(dict(type='MultiOptimWrapperConstructor',
                                              optim_wrapper_cfg=dict(policy=dict(lr=1))))


def _train(cfg_file, *extra):
    cfg = setup_cfg(parse_args([str(cfg_file), *extra]))
    runner = build_runner(cfg)
    runner.train()
    return runner


@pytest.mark.slow
def test_save_and_resume_round_trip(tmp_path):
    full_dir, split_dir = tmp_path / 'full', tmp_path / 'split'
    (tmp_path / 'full.py').write_text(_cfg_text(full_dir, max_iters=6))
    (tmp_path / 'first.py').write_text(_cfg_text(split_dir, max_iters=3))
    (tmp_path / 'second.py').write_text(_cfg_text(split_dir, max_iters=6))

    full = _train(tmp_path / 'full.py')
    first = _train(tmp_path / 'first.py')
    assert (split_dir / 'iter_3.pth').is_file()
    resumed = _train(tmp_path / 'second.py', '--resume', 'auto')
    assert resumed.iter == 6
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for key in full_state:
        torch.testing.assert_close(resumed_state[key], full_state[key], rtol=0, atol=0)
    # optimizer state (AdamW moments) came back too
    full_opt = full.optim_wrapper['policy'].optimizer.state_dict()['state']
    res_opt = resumed.optim_wrapper['policy'].optimizer.state_dict()['state']
    for idx in full_opt:
        torch.testing.assert_close(res_opt[idx]['exp_avg'], full_opt[idx]['exp_avg'],
                                   rtol=0, atol=0)
    del first


@pytest.mark.slow
def test_resume_from_explicit_path_and_load_from(tmp_path):
    run_dir = tmp_path / 'run'
    (tmp_path / 'a.py').write_text(_cfg_text(run_dir, max_iters=3))
    trained = _train(tmp_path / 'a.py')
    ckpt = run_dir / 'iter_3.pth'
    (tmp_path / 'b.py').write_text(_cfg_text(tmp_path / 'other', max_iters=6))
    resumed = _train(tmp_path / 'b.py', '--resume', str(ckpt))
    assert resumed.iter == 6
    # load_from (weights only, no resume) also reads the runner's own checkpoint on torch >= 2.6
    cfg = setup_cfg(parse_args([str(tmp_path / 'a.py'), '--work-dir', str(tmp_path / 'c'),
                                '--cfg-options', f'load_from={ckpt}', 'train_cfg.max_iters=0']))
    runner = build_runner(cfg)
    runner.load_or_resume()
    state = copy.deepcopy(trained.model.state_dict())
    for key, value in runner.model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_cli_options_are_applied(tmp_path):
    (tmp_path / 'a.py').write_text(_cfg_text(tmp_path / 'w'))
    cfg = setup_cfg(parse_args([str(tmp_path / 'a.py'), '--seed', '7', '--work-dir',
                                str(tmp_path / 'x'), '--cfg-options', 'train_cfg.max_iters=2']))
    assert cfg.randomness.seed == 7 and cfg.work_dir == str(tmp_path / 'x')
    assert cfg.train_cfg.max_iters == 2 and cfg.launcher == 'none'
    with pytest.raises(FileNotFoundError, match='no such checkpoint'):
        setup_cfg(parse_args([str(tmp_path / 'a.py'), '--resume', str(tmp_path / 'nope.pth')]))
    with pytest.raises(FileNotFoundError, match='config file .* does not exist'):
        setup_cfg(parse_args([str(tmp_path / 'missing.py')]))


def test_setup_errors_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    from rankekit.apis.train import main
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)
    (tmp_path / 'a.py').write_text(_cfg_text(tmp_path / 'w').replace(
        "type='TwoPartRegressor'", "type='TwoPartRegresor'"))
    assert main([str(tmp_path / 'a.py')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'TwoPartRegresor' in err and 'Traceback' not in err
    assert main([str(tmp_path / 'missing.py')]) == 2
    assert 'does not exist' in capsys.readouterr().err
