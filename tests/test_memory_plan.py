"""tools/plan_memory.py and rankekit.analysis.memory_plan: the live-tensor counter by hand, meta
simulations equal to real CPU runs, the plan against a measured toy step, the real recipes."""
import pytest
import torch
from mmengine.config import Config

from rankekit.analysis.memory_plan import (LiveTensorBytes, kv_cache_bytes,
                                           plan_memory, policy_phase_bytes, measure_train_step)
from rankekit.policies.janus import JanusProPolicy
from rankekit.policies.llamagen_gpt import LlamaGenGPT
from tiny_components import REPO, load_tool

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')
XL = REPO / 'configs/ranke/ranke_llamagen-xl_clip.py'
JANUS = REPO / 'configs/ranke/ranke_janus-pro-1b_clip.py'
TOY = REPO / 'configs/ablation/anchor_ema.py'


def test_live_tensor_bytes_by_hand():
    outside = torch.zeros(256)                  # made before: never counted
    with LiveTensorBytes() as live:
        a = torch.zeros(1000)                   # 4000 bytes
        view = a[:10]                           # a view: the same storage
        outside.add_(1)                         # in place on an outside tensor
        outside_view = outside[:5]              # a view of an outside tensor
        b = torch.zeros(500, dtype=torch.float64)  # 4000 bytes
        assert live.live == 8000
        del a                                   # the view keeps the storage alive
        assert live.live == 8000
        del view
        assert live.live == 4000
        del b
        assert live.live == 0
    assert live.peak == 8000
    del outside_view


def _tiny_llamagen(device):
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaGenGPT(dim=64, n_layer=2, n_head=4, vocab_size=64, block_size=16,
                           cls_token_num=8, caption_dim=32)


def _tiny_janus(device):
    torch.manual_seed(0)
    with torch.device(device):
        return JanusProPolicy(arch='tiny', keep_lm_head=False)


@pytest.mark.parametrize('build', [_tiny_llamagen, _tiny_janus], ids=['llamagen', 'janus'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
@pytest.mark.parametrize('checkpointing', [False, True], ids=['plain', 'ckpt'])
def test_policy_phase_on_meta_equals_a_real_cpu_run(build, dtype, checkpointing):
    """The plan runs the teacher-forced pass on meta tensors: it keeps exactly the bytes a real
    run keeps, gradients included."""
    real, meta = build('cpu').to(dtype), build('meta').to(dtype)
    on_cpu = policy_phase_bytes(real, rows=6, prompt_tokens=5, checkpointing=checkpointing)
    on_meta = policy_phase_bytes(meta, rows=6, prompt_tokens=5, checkpointing=checkpointing)
    assert on_meta == on_cpu
    weights = sum(p.numel() * p.element_size() for p in real.parameters())
    assert 0.5 * weights < on_cpu[1] <= weights  # a gradient per used weight, in its dtype
    assert all(p.grad is None for p in real.parameters())  # the planner leaves no gradients


def test_checkpointing_keeps_less_and_bytes_grow_with_rows():
    policy = _tiny_llamagen('meta')
    plain4, _ = policy_phase_bytes(policy, 4, 0, False)
    plain8, _ = policy_phase_bytes(policy, 8, 0, False)
    plain12, _ = policy_phase_bytes(policy, 12, 0, False)
    ckpt8, _ = policy_phase_bytes(policy, 8, 0, True)
    assert ckpt8 < plain8
    # a fixed part (weight-gradient workspace) plus the same bytes for every 4 more rows
    assert plain12 - plain8 == pytest.approx(plain8 - plain4, rel=0.01)
    assert plain8 - plain4 > 0.5 * plain4


def test_kv_cache_by_hand():
    policy = _tiny_llamagen('meta')  # 2 layers x (k + v) x 64 wide
    assert kv_cache_bytes(policy, rows=3, seq_len=24, cfg=True, act_bytes=2) == \
        2 * 2 * 64 * (3 * 2) * 24 * 2


def test_gpt_xl_counts():
    """GPT-XL built on meta from the recipe: LlamaGen's published 775M parameters; sharding
    divides the per-GPU copies; LoRA drops the reference copy and most optimizer states."""
    cfg = Config.fromfile(XL)
    fp32 = plan_memory(cfg, 'fp32')
    parts = {p.name: p.bytes for p in fp32.parts}
    n_params = parts['policy weights (fp32 master)'] / 4
    assert n_params == pytest.approx(775e6, rel=0.01)
    assert parts['policy AdamW states'] == 8 * n_params
    assert fp32.rows == 4 * 8
    plans = {s: plan_memory(cfg, s) for s in ('bf16', 'bf16+ckpt', 'lora', 'fsdp')}
    plans['fp32'] = fp32

    def by(setting):
        return {p.name: p.bytes for p in plans[setting].parts}
    for name in ('policy weights (fp32 master)', 'policy AdamW states', 'policy reference copy',
                 'policy EMA copy'):
        assert by('fsdp')[name] == pytest.approx(by('bf16+ckpt')[name] / 8, abs=1)
    assert by('lora')['policy reference copy'] == 0
    assert by('lora')['policy AdamW states'] < 0.05 * parts['policy AdamW states']
    # each memory saver lowers the peak, in the order the docs table lists them
    peaks = [plans[s].peak[1] for s in ('fp32', 'bf16', 'bf16+ckpt', 'lora')]
    assert peaks == sorted(peaks, reverse=True)


@pytest.mark.slow
def test_plan_matches_a_measured_toy_step():
    """The main job's config: one real RankE step on this CPU (tensor bytes, warm AdamW states,
    GAN terms on) against the plan: within 10% in every setting."""
    cfg = Config.fromfile(TOY)
    for setting in ('fp32', 'bf16', 'bf16+ckpt', 'lora'):
        planned = plan_memory(cfg, setting).peak[1]
        measured = measure_train_step(cfg, setting)['peak']
        assert planned == pytest.approx(measured, rel=0.10), setting


def test_measuring_a_sharded_setting_is_refused():
    with pytest.raises(ValueError, match='shards the policy'):
        measure_train_step(Config.fromfile(TOY), 'fsdp')


def test_tool_prints_the_table_for_the_real_recipes(capsys):
    tool = load_tool('plan_memory')
    assert tool.main([str(XL), '--markdown', '--settings', 'bf16+ckpt', 'fsdp']) == 0
    out = capsys.readouterr().out
    assert '| policy weights (fp32 master) |' in out and '**peak**' in out
    assert out.count('\n|---|') == 1 and out.splitlines()[0] == '| part | bf16+ckpt | fsdp x8 |'
    assert tool.main([str(JANUS), '--settings', 'bf16+ckpt', '--cfg-options',
                      'model.policy.arch=Janus-Pro-1B']) == 0
    assert 'bf16+ckpt' in capsys.readouterr().out


def test_tool_without_a_janus_architecture_says_what_to_set(capsys):
    tool = load_tool('plan_memory')
    assert tool.main([str(JANUS), '--settings', 'fp32']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error:') and 'arch' in err
