"""Data-parallel RankE on 2 CPU ranks (gloo): ranks stay bit-identical and match one process.

The spawned ranks run scenarios on the tiny RankEModel of ``tiny_components`` and save their
tensors; the test process compares them with each other and with a single-process run on the
same global batch (rank 0's rows first).
"""
import datetime
import os
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from mmengine.hooks import Hook

from rankekit.engine.optim_constructor import MultiOptimWrapperConstructor
from rankekit.registry import HOOKS, MODEL_WRAPPERS, MODELS
from rankekit.utils.distributed import gather_full_
from rankekit.utils.run_files import load_runner_checkpoint_file
from tiny_components import IMAGE, tiny_model_cfg, train_blocks

pytestmark = pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')

WORLD = 2
PER_RANK = 2
CAPTIONS = ['a red circle on the left', 'a small blue square at the top',
            'a large green triangle', 'a yellow circle at the bottom']
STEPS = 3
# GroupNorm discriminator: each image is normalised on its own, so the single-process run on the
# whole batch computes the same function (a BatchNorm discriminator normalises with each rank's
# own batch statistics, as DDP without SyncBN does: ranks still agree, one process differs)
EXACT = dict(reward_normalize='running',
             discriminator=dict(type='PatchGANDiscriminator', ndf=8, n_layers=1, norm='group'))


@contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def global_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    images = torch.rand(WORLD * PER_RANK, 3, IMAGE, IMAGE, generator=g)
    order = torch.randperm(len(CAPTIONS), generator=g).tolist()
    return dict(image=images, caption=[CAPTIONS[i] for i in order])


def shard(batch, rank, world):
    n = len(batch['caption']) // world
    return dict(image=batch['image'][rank * n:(rank + 1) * n],
                caption=batch['caption'][rank * n:(rank + 1) * n])


def build(overrides, seed=0):
    torch.manual_seed(seed)
    model = MODELS.build(tiny_model_cfg(**overrides))
    model.train()
    return model


def optim_for(model):
    return MultiOptimWrapperConstructor(dict(
        policy=dict(optimizer=dict(type='AdamW', lr=1e-3), clip_grad=dict(max_norm=1.0)),
        decoder=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        discriminator=dict(optimizer=dict(type='AdamW', lr=1e-3))))(model)


def tensors(model, optim):
    """Every parameter, buffer (frozen parts, counters, RNG state) and optimizer tensor; full
    tensors of sharded ones (a collective then: every rank calls it)."""
    out = {f'p/{k}': v.detach().clone() for k, v in model.named_parameters()}
    out.update({f'b/{k}': v.detach().clone() for k, v in model.named_buffers()})
    for part, state in optim.state_dict().items():
        for idx, slots in state['state'].items():
            out.update({f'o/{part}/{idx}/{k}': v.clone() for k, v in slots.items()
                        if isinstance(v, torch.Tensor)})
    return gather_full_(out)


def run(model, optim, steps, rank=0, world=1, step_fn=None):
    """``steps`` train_steps on this rank's share of the global batches; every rollout's tokens
    and the state after each step."""
    tokens, states = [], []
    original = model.rollout

    def recording(prompts):
        ro = original(prompts)
        tokens.append(ro.tokens.clone())
        return ro

    model.rollout = recording
    step_fn = step_fn or model.train_step
    for step in range(steps):
        step_fn(shard(global_batch(step), rank, world), optim)
        states.append(tensors(model, optim))
    del model.rollout
    return dict(tokens=tokens, states=states)


def _worker(rank, world, init_method, out_dir):
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')
    torch_dist.init_process_group('gloo', init_method=init_method, rank=rank, world_size=world,
                                  timeout=datetime.timedelta(seconds=60))
    try:
        results = {}
        # each rank builds with its own seed: the wrapper must make rank 0's weights everyone's
        for name, overrides, steps, dtype in (
                ('exact', EXACT, STEPS, torch.float64),
                ('batchnorm', {}, 2, torch.float32),
                ('nan', dict(reward_normalize='running', rewards=[dict(
                    type='RednessReward', poison_after=2 if rank == 1 else None)]), 2,
                 torch.float32)):
            with default_dtype(dtype):
                wrapper = MODEL_WRAPPERS.build(dict(type='RankEDataParallel',
                                                    module=build(overrides, seed=rank)))
                optim = optim_for(wrapper)
                results[name] = run(wrapper.module, optim, steps, rank, world,
                                    wrapper.train_step)
        results['fsdp2'] = _fsdp2_policy(rank, world)
        results['sharded'] = _sharded_rank_e(rank, world)
        torch.save(results, Path(out_dir) / f'rank{rank}.pt')
    finally:
        torch_dist.destroy_process_group()


def _sharded_rank_e(rank, world):
    """RankE with the policy and its copies sharded (FSDP2), float64, as 'exact'; then its full
    state dicts loaded into a fresh sharded model."""
    with default_dtype(torch.float64):
        wrapper = MODEL_WRAPPERS.build(dict(type='RankEDataParallel', shard_policy=True,
                                            module=build(EXACT, seed=rank)))
        optim = optim_for(wrapper)
        result = run(wrapper.module, optim, STEPS, rank, world, wrapper.train_step)
        local = sum(p.to_local().numel() for p in wrapper.module.policy.parameters())
        full_model = gather_full_(wrapper.module.state_dict())
        full_optim = gather_full_(optim.state_dict())
        # the same seed: the frozen parts (rebuilt from the config, not in checkpoints) agree
        fresh = MODEL_WRAPPERS.build(dict(type='RankEDataParallel', shard_policy=True,
                                          module=build(EXACT, seed=rank)))
        fresh_optim = optim_for(fresh)
        fresh.module.load_state_dict(full_model)
        fresh_optim.load_state_dict(full_optim)
        reloaded = tensors(fresh.module, fresh_optim)
    return dict(result, local_numel=local, reloaded=reloaded,
                sharded_grad_types=sorted({type(p).__name__
                                           for p in wrapper.module.policy.parameters()}))


def _policy_training(policy, rows):
    """Two AdamW steps of -mean log p(tokens) on ``rows`` of a fixed batch, then a sample."""
    g = torch.Generator().manual_seed(0)
    cond, tokens = torch.randn(4, 8, 16, generator=g), torch.randint(0, 32, (4, 16), generator=g)
    mask = torch.ones(4, 8, dtype=torch.bool)
    optim = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(2):
        (-policy.log_probs(cond[rows], mask[rows], tokens[rows]).mean()).backward()
        optim.step()
        optim.zero_grad()
    uniforms = torch.rand(4, 16, generator=torch.Generator().manual_seed(5))
    return policy.sample(cond[rows], mask[rows], uniforms=uniforms[rows]).tokens


POLICY = tiny_model_cfg()['policy']


def _fsdp2_policy(rank, world):
    """The tiny policy sharded with torch FSDP2 (one unit per block + the root), float64."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from rankekit.registry import POLICIES
    mesh = init_device_mesh('cpu', (world,))
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        policy = POLICIES.build(POLICY)
        for block in policy.layers:
            fully_shard(block, mesh=mesh)
        fully_shard(policy, mesh=mesh)
        for method in ('log_probs', 'sample'):  # entry points other than forward
            register_fsdp_forward_method(policy, method)
        tokens = _policy_training(policy, slice(2 * rank, 2 * rank + 2))
        policy.reshard()  # the root stays gathered after a forward call: shard it again
    params = {k: v.full_tensor() for k, v in policy.named_parameters()}
    local = sum(v.to_local().numel() for v in policy.parameters())
    return dict(params=params, tokens=tokens, local_numel=local)


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):  # the tests using it train on 2 spawned ranks: marked slow
    """The results of the 2 spawned gloo ranks (one spawn for every scenario)."""
    out = tmp_path_factory.mktemp('ranks')
    mp.spawn(_worker, args=(WORLD, f'file://{out}/rendezvous', str(out)), nprocs=WORLD,
             join=True)
    return [torch.load(out / f'rank{r}.pt', weights_only=True) for r in range(WORLD)]


def _differing(a, b):
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
@pytest.mark.parametrize('scenario', ['exact', 'batchnorm', 'nan'])
def test_ranks_end_bit_identical(ranks, scenario):
    """Every parameter, buffer and optimizer tensor equal on both ranks after every step,
    although rank 1 built its model from another seed (rank 0's weights were broadcast)."""
    for step, (s0, s1) in enumerate(zip(ranks[0][scenario]['states'],
                                        ranks[1][scenario]['states'])):
        assert any(k.startswith('b/policy_ema.') for k in s0)
        differing = _differing(s0, s1)
        assert not differing, f'step {step}: {len(differing)} tensors differ: {differing[:8]}'
    # the ranks rolled out different samples (their own prompts, their rows of the uniforms)
    assert not torch.equal(ranks[0][scenario]['tokens'][0], ranks[1][scenario]['tokens'][0])


def assert_equal_to_one_process(got: dict, expected: dict) -> None:
    """The same tensors; floating ones to 1e-9 (float64: only the order of sums differs)."""
    assert got.keys() == expected.keys()
    for key in got:
        if got[key].is_floating_point():
            torch.testing.assert_close(got[key], expected[key], rtol=1e-7, atol=1e-9,
                                       msg=lambda m, key=key: f'{key}: {m}')
        else:
            assert torch.equal(got[key], expected[key]), key


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_global_batch(ranks):
    """2 ranks x 2 prompts == 1 process x 4 prompts, in float64, to 1e-9 (abs): AdamW with a clipped
    policy gradient, running reward normalisation, the adaptive GAN weight, rank-GAN, reward
    backprop, EMA anchor and both EMAs, with a GroupNorm discriminator.

    Every loss term is a mean over equally sized per-rank batches, so the mean of the ranks'
    gradients is the global gradient; the adaptive GAN weight uses the rank-mean gradients of the
    last layer and the running reward statistics are the global batch's. Only the order of the
    sums differs. Float64 because in float32 that rounding is not small after AdamW: a gradient
    that is zero up to rounding (a conv bias in front of a GroupNorm) is divided by its own
    magnitude and becomes a full step of random sign (ranks still agree bit for bit: other tests).
    A term that was a per-rank quantity (e.g. local gradient norms) shows up here as ~1e-3.
    """
    with default_dtype(torch.float64):
        model = build(EXACT)
        single = run(model, optim_for(model), STEPS)
        fresh = build(EXACT)
        initial = tensors(fresh, optim_for(fresh))
    for step in range(STEPS):  # the rollouts: the global batch's tokens, split by rank
        assert torch.equal(torch.cat([r['exact']['tokens'][step] for r in ranks]),
                           single['tokens'][step])
    got, expected = ranks[0]['exact']['states'][-1], single['states'][-1]
    assert_equal_to_one_process(got, expected)
    assert int(got['b/policy_steps']) == int(got['b/decoder_steps']) == STEPS
    # the weights moved well beyond the tolerance: the comparison is not between initial weights
    for key in ('p/policy.output.weight', 'p/tokenizer.decoder.conv_out.weight',
                'p/discriminator.main.0.weight', 'b/rewards.running_mean'):
        assert (got[key] - initial[key]).abs().max() > 1e-4, key


@pytest.mark.slow
def test_sharded_rank_e_equals_one_process(ranks):
    """shard_policy=True (FSDP2 of the policy, its reference and EMA inside RankE's own step):
    each rank holds half of the policy, the ranks agree bit for bit, and the gathered tensors
    after 3 iterations equal one process on the global batch (float64, 1e-9) — the same bar as
    the unsharded 'exact' run. The full state dicts load back into a fresh sharded model."""
    with default_dtype(torch.float64):
        model = build(EXACT)
        single = run(model, optim_for(model), STEPS)
    total = sum(p.numel() for p in model.policy.parameters())
    for rank in range(WORLD):
        sharded = ranks[rank]['sharded']
        assert sharded['sharded_grad_types'] == ['DTensor']
        assert sharded['local_numel'] <= total // WORLD + 64
    assert torch.equal(torch.cat([r['sharded']['tokens'][-1] for r in ranks]),
                       single['tokens'][-1])
    got, other, expected = (ranks[0]['sharded']['states'][-1],
                            ranks[1]['sharded']['states'][-1], single['states'][-1])
    assert not _differing(got, other)
    assert_equal_to_one_process(got, expected)
    reloaded = ranks[0]['sharded']['reloaded']
    assert not _differing({k: got[k] for k in reloaded}, reloaded)
    assert {k for k in got if k.startswith(('p/', 'o/'))} <= reloaded.keys()


@pytest.mark.slow
def test_nan_reward_on_one_rank_skips_the_update_on_both(ranks):
    """Rank 1's reward is NaN from the 2nd iteration on; rank 0's is finite. Both ranks skip
    that iteration's whole update and count it; the weights stay those of step 1."""
    for rank in range(WORLD):
        first, second = ranks[rank]['nan']['states']
        assert int(second['b/skipped_nonfinite']) == 1
        assert int(second['b/consecutive_skips']) == 1
        assert int(second['b/policy_steps']) == int(second['b/decoder_steps']) == 1
        trained = [k for k in first if k.startswith(('p/', 'o/')) or 'running_' in k]
        assert not _differing({k: first[k] for k in trained}, {k: second[k] for k in trained})


def test_wrapper_delegates_and_is_a_model_wrapper():
    from mmengine.model import is_model_wrapper
    from mmengine.registry import MODEL_WRAPPERS as ROOT
    from rankekit.models import RankEDataParallel
    wrapper = MODEL_WRAPPERS.build(RankEDataParallel.info_example)  # one process: no broadcast
    assert is_model_wrapper(wrapper, ROOT)
    out = wrapper.val_step(dict(caption=['a red circle']))
    assert len(out) == 1 and out[0]['image'].shape[0] == 3
    from mmengine.model import BaseModel

    class Plain(BaseModel):  # has a train_step, but would not average gradients over ranks
        def forward(self, *args, **kwargs):
            return {}

    with pytest.raises(TypeError, match='wraps a RankEModel, got Plain; for other models '
                                        'leave model_wrapper_cfg unset'):
        RankEDataParallel(Plain())


def test_uniforms_argument_is_checked():
    from rankekit.policies.sampling import draw_uniforms
    u = torch.rand(3, 5)
    assert torch.equal(draw_uniforms(3, 5, uniforms=u), u)
    with pytest.raises(ValueError, match=r'shape \(3, 4\), expected \(batch_size=3, num_steps=5'):
        draw_uniforms(3, 5, uniforms=u[:, :4])
    with pytest.raises(ValueError, match='not both'):
        draw_uniforms(3, 5, uniforms=u, seeds=[0, 1, 2])


def test_setup_picks_gloo_and_the_wrapper_without_cuda(tmp_path, monkeypatch):
    from rankekit.apis.train import parse_args, setup_cfg
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    (tmp_path / 'c.py').write_text(_config(tmp_path / 'w', 2, with_wrapper=False))
    cfg = setup_cfg(parse_args([str(tmp_path / 'c.py'), '--launcher', 'pytorch']))
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'rankekit.RankEDataParallel'
    with pytest.raises(RuntimeError, match='--launcher slurm needs CUDA GPUs.*torchrun'):
        setup_cfg(parse_args([str(tmp_path / 'c.py'), '--launcher', 'slurm']))
    (tmp_path / 'e.py').write_text(_config(tmp_path / 'w', 2, with_wrapper=True))
    cfg = setup_cfg(parse_args([str(tmp_path / 'e.py'), '--launcher', 'pytorch']))
    assert cfg.model_wrapper_cfg.type == 'rankekit.RankEDataParallel'
    for bad in ('RankEDataParallel', 'MMDistributedDataParallel'):  # unscoped: MMEngine finds none
        (tmp_path / 'd.py').write_text(_config(tmp_path / 'w', 2, with_wrapper=False)
                                       + f'model_wrapper_cfg = dict(type={bad!r})\n')
        with pytest.raises(ValueError, match=f"model_wrapper_cfg.type='{bad}' cannot train a "
                                             "RankEModel.*type='rankekit.RankEDataParallel'"):
            setup_cfg(parse_args([str(tmp_path / 'd.py'), '--launcher', 'pytorch']))
    # one process: nothing changes
    cfg = setup_cfg(parse_args([str(tmp_path / 'c.py')]))
    assert 'model_wrapper_cfg' not in cfg and 'env_cfg' not in cfg


def test_sharded_base_config_is_kept_and_lora_is_refused(tmp_path, monkeypatch):
    from rankekit.apis.train import parse_args, setup_cfg
    from rankekit.models.distributed import shard_policies_
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    base = Path(__file__).resolve().parents[1] / 'configs/_base_/strategies/ranke_sharded.py'
    (tmp_path / 'c.py').write_text(f'_base_ = [{str(base)!r}]\n'
                                   + _config(tmp_path / 'w', 2, with_wrapper=False))
    cfg = setup_cfg(parse_args([str(tmp_path / 'c.py'), '--launcher', 'pytorch']))
    assert cfg.model_wrapper_cfg == dict(type='rankekit.RankEDataParallel', shard_policy=True)
    pytest.importorskip('peft')
    with pytest.raises(ValueError, match='shard_policy=True with model.lora'):
        shard_policies_(build(dict(lora=dict(r=2, alpha=4))))


def test_strategy_configs_load_and_name_existing_classes(tmp_path):
    """configs/_base_/strategies: FSDP and DeepSpeed for MMEngine's FlexibleRunner. Neither can
    run here (FSDP refuses a CPU-only machine, DeepSpeed is not installed): they are checked for
    loading and for naming classes and arguments that exist."""
    import inspect

    import mmengine._strategy  # noqa: F401 - registers the strategies
    from mmengine.config import Config
    from mmengine.registry import FUNCTIONS, OPTIM_WRAPPERS, RUNNERS, STRATEGIES
    root = Path(__file__).resolve().parents[1] / 'configs' / '_base_' / 'strategies'
    fsdp = Config.fromfile(root / 'fsdp.py')
    assert RUNNERS.get(fsdp.runner_type) is not None
    # FSDPStrategy builds without a process group (its log folder goes to work_dir)
    strategy = STRATEGIES.build(dict(fsdp.strategy, work_dir=str(tmp_path)))
    assert strategy.state_dict_type.name == 'FULL_STATE_DICT'
    policy = dict(fsdp.strategy.model_wrapper.auto_wrap_policy)
    fn = FUNCTIONS.get(policy.pop('type'))
    assert set(policy) <= set(inspect.signature(fn).parameters)
    ds = Config.fromfile(root / 'deepspeed_zero2.py')
    assert RUNNERS.get(ds.runner_type) is not None
    cls = STRATEGIES.get(ds.strategy.type)
    assert cls is not None and OPTIM_WRAPPERS.get(ds.optim_wrapper.type) is not None
    assert set(ds.strategy) - {'type'} <= set(inspect.signature(cls.__init__).parameters)


def test_rank_e_under_a_flexible_runner_strategy_is_refused(tmp_path):
    from rankekit.apis.train import parse_args, setup_cfg
    root = Path(__file__).resolve().parents[1] / 'configs' / '_base_' / 'strategies'
    (tmp_path / 'c.py').write_text(f"_base_ = [{str(root / 'fsdp.py')!r}]\n"
                                   + _config(tmp_path / 'w', 2))
    with pytest.raises(ValueError, match='RankEModel cannot train under runner_type/strategy.*'
                                         'remove runner_type and strategy'):
        setup_cfg(parse_args([str(tmp_path / 'c.py')]))


@pytest.mark.slow
def test_fsdp2_shards_the_policy_on_cpu(ranks):
    """Bonus, a building block only (RankE training does not shard, see docs/distributed.md):
    torch FSDP2 ``fully_shard`` of the policy class on 2 gloo ranks holds half the parameters per
    rank and trains like one process on the whole batch (float64, 1e-9); sampling works sharded."""
    from rankekit.registry import POLICIES
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        policy = POLICIES.build(POLICY)
        total = sum(p.numel() for p in policy.parameters())
        tokens = _policy_training(policy, slice(0, 4))
    for rank in range(WORLD):
        assert ranks[rank]['fsdp2']['local_numel'] <= total // WORLD + 64
    assert torch.equal(torch.cat([r['fsdp2']['tokens'] for r in ranks]), tokens)
    for name, value in policy.named_parameters():
        assert torch.equal(ranks[0]['fsdp2']['params'][name], ranks[1]['fsdp2']['params'][name])
        torch.testing.assert_close(ranks[0]['fsdp2']['params'][name], value.detach(),
                                   rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------ torchrun end to end
@HOOKS.register_module(force=True)
class SaveRankStateHook(Hook):
    """Test hook: after training, every rank saves its model tensors to work_dir/rank{r}.pt."""

    def after_train(self, runner):
        model = runner.model.module
        state = {f'p/{k}': v for k, v in model.named_parameters()}
        state.update({f'b/{k}': v for k, v in model.named_buffers()})
        torch.save(gather_full_(state), Path(runner.work_dir) / f'rank{runner.rank}.pt')


def _config(work_dir, max_iters, with_wrapper=True, shard=False, interval=None):
    model = tiny_model_cfg()
    wrapper = "model_wrapper_cfg = dict(type='rankekit.RankEDataParallel')" if with_wrapper else ''
    if shard:
        wrapper = "model_wrapper_cfg = dict(type='rankekit.RankEDataParallel', shard_policy=True)"
    return f'''
default_scope = 'rankekit'
custom_imports = dict(imports=['test_distributed'], allow_failed_imports=False)
work_dir = {str(work_dir)!r}
model = {model!r}
{wrapper}
{train_blocks(16, max_iters)}
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval={interval or max_iters}, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1),
    coevolution=dict(type='CoEvolutionHook', schedule='sync'))
custom_hooks = [dict(type='SaveRankStateHook')]
randomness = dict(seed=0)
log_level = 'WARNING'
'''


@pytest.mark.slow
def test_torchrun_two_ranks_trains_and_checkpoints(tmp_path):
    """``torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch`` on CPU (gloo):
    3 iterations, a checkpoint, and both ranks' final tensors bit-identical."""
    torchrun = shutil.which('torchrun', path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip('torchrun not found next to the Python executable')
    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / 'work'
    (tmp_path / 'tiny.py').write_text(_config(work, 3, with_wrapper=False))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(repo / 'tests'),
               PYTHONWARNINGS='ignore')
    done = subprocess.run(
        [torchrun, '--standalone', '--nproc_per_node', str(WORLD),
         str(repo / 'tools' / 'train.py'), str(tmp_path / 'tiny.py'), '--launcher', 'pytorch'],
        cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / 'iter_3.pth').is_file()
    states = [torch.load(work / f'rank{r}.pt', weights_only=True) for r in range(WORLD)]
    assert int(states[0]['b/policy_steps']) == 3
    differing = _differing(*states)
    assert not differing, f'{len(differing)} tensors differ between ranks: {differing[:8]}'


def _torchrun(tmp_path, config_text, *extra):
    torchrun = shutil.which('torchrun', path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip('torchrun not found next to the Python executable')
    repo = Path(__file__).resolve().parents[1]
    config = tmp_path / f'tiny_{len(list(tmp_path.glob("tiny_*.py")))}.py'
    config.write_text(config_text)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(repo / 'tests'),
               PYTHONWARNINGS='ignore')
    done = subprocess.run(
        [torchrun, '--standalone', '--nproc_per_node', str(WORLD),
         str(repo / 'tools' / 'train.py'), str(config), '--launcher', 'pytorch', *extra],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_sharded_rank_e_checkpoints_full_tensors_and_resumes_exactly(tmp_path):
    """``model_wrapper_cfg=dict(type='rankekit.RankEDataParallel', shard_policy=True)`` under
    torchrun: checkpoints hold full tensors (the shapes of an unsharded model, loadable by one
    process), and a run resumed from iteration 2 ends bit for bit where the uninterrupted one
    does (weights, EMA and reference copies, counters, RNG state)."""
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    _torchrun(tmp_path, _config(straight, 4, shard=True, interval=2))
    checkpoint = load_runner_checkpoint_file(straight / 'iter_2.pth')  # as resume reads it
    reference = build({})
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in checkpoint['state_dict'].items()} == expected
    single = build({})
    single.load_state_dict(checkpoint['state_dict'])  # one process reads a sharded run's file
    policy_state = checkpoint['optimizer']['policy']['state']
    assert policy_state and all(not type(v).__name__ == 'DTensor'
                                for slots in policy_state.values() for v in slots.values())
    resumed.mkdir()
    shutil.copy(straight / 'iter_2.pth', resumed / 'iter_2.pth')
    (resumed / 'last_checkpoint').write_text(str(resumed / 'iter_2.pth'))
    _torchrun(tmp_path, _config(resumed, 4, shard=True, interval=2), '--resume', 'auto')
    for rank in range(WORLD):
        a = torch.load(straight / f'rank{rank}.pt', weights_only=True)
        b = torch.load(resumed / f'rank{rank}.pt', weights_only=True)
        assert int(a['b/policy_steps']) == 4
        differing = _differing(a, b)
        assert not differing, f'{len(differing)} tensors differ after resuming: {differing[:8]}'
