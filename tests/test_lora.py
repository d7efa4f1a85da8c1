"""LoRA policies in RankE (model.lora, peft): the adapter-off reference, the adapter EMA,
checkpoints that hold the adapter, merge-and-export to the official key layouts."""
import json

import pytest
import torch

pytest.importorskip('peft', reason='model.lora needs pip install "rankekit[lora]"')

from rankekit.models.lora import adapter_parameters, is_adapter_key  # noqa: E402
from rankekit.registry import MODELS, POLICIES  # noqa: E402
from rankekit.utils.run_files import load_runner_checkpoint_file  # noqa: E402
from test_rank_e_model import batch  # noqa: E402
from tiny_components import tiny_model_cfg  # noqa: E402

pytestmark = pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')
# the tiny policy's output head starts at zero (LlamaGen's init), so nothing upstream of it would
# get a gradient: the tests adapt it too
LORA = dict(r=4, alpha=8, target_modules=['wqkv', 'wo', 'w1', 'w2', 'w3', 'output'])


def build(**overrides):
    from rankekit.engine.optim_constructor import MultiOptimWrapperConstructor
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(**{'lora': LORA, **overrides}))
    model.train()
    optim = MultiOptimWrapperConstructor(dict(
        policy=dict(optimizer=dict(type='AdamW', lr=1e-2)),
        decoder=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        discriminator=dict(optimizer=dict(type='AdamW', lr=1e-3))))(model)
    return model, optim


def base_policy(model):
    """A plain policy of the same class holding the LoRA model's frozen base weights."""
    plain = POLICIES.build(tiny_model_cfg()['policy']).eval()
    state = {k.replace('.base_layer.', '.'): v for k, v in model.policy.state_dict().items()
             if not is_adapter_key(k)}
    plain.load_state_dict(state, strict=True)
    return plain


def rollout_inputs(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond, mask = model.encode_prompts(['a red circle', 'a blue square'] * (n // 2))
    return cond, mask, torch.randint(0, 32, (n, 16), generator=g), torch.rand(n, 16, generator=g)


def test_adapter_off_equals_the_base_model_and_reference_log_probs_use_it():
    """After training, the policy with its adapters off computes exactly (bit for bit) what the
    base model computes, log-probs and samples; with them on it differs; the RankE reference
    log-probs (KL anchor) are the adapter-off ones and no frozen copy exists."""
    model, optim = build()
    assert model.policy_ref is None
    seen = {}
    loss = model.rank_loss.forward

    def recording(logp, logp_old, rewards, group_size, logp_ref=None, mask=None):
        seen['logp_ref'] = logp_ref
        return loss(logp, logp_old, rewards, group_size, logp_ref=logp_ref, mask=mask)

    for _ in range(2):
        model.train_step(batch(), optim)
    model.rank_loss.forward = recording
    original = model.rollout
    model.rollout = lambda prompts: seen.setdefault('ro', original(prompts))
    model.train_step(batch(), optim)
    plain = base_policy(model)
    ro = seen['ro']
    torch.testing.assert_close(seen['logp_ref'], plain.log_probs(ro.cond, ro.mask, ro.tokens),
                               rtol=0, atol=0)
    cond, mask, tokens, uniforms = rollout_inputs(model)
    trainable = {n for n, p in model.policy.named_parameters() if p.requires_grad}
    with torch.no_grad(), model.policy_as('base') as reference:
        off = reference.log_probs(cond, mask, tokens)
        off_tokens = reference.sample(cond, mask, cfg_scale=2.0, uniforms=uniforms).tokens
    assert torch.equal(off, plain.log_probs(cond, mask, tokens))
    assert torch.equal(off_tokens, plain.sample(cond, mask, cfg_scale=2.0,
                                                uniforms=uniforms).tokens)
    with torch.no_grad():
        on = model.policy.log_probs(cond, mask, tokens)
    assert (on - off).abs().max() > 1e-3  # the adapter was trained and is back on
    assert trainable == {n for n, p in model.policy.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_parameters(model.policy)) and trainable


def test_lora_rank_e_trains_the_adapters_only_with_an_adapter_ema():
    model, optim = build()
    base = {k: v.clone() for k, v in model.policy.state_dict().items() if not is_adapter_key(k)}
    adapters = {k: v.detach().clone() for k, v in adapter_parameters(model.policy).items()}
    ema = {k: v.clone() for k, v in model.policy_ema.state_dict().items()}
    decoder = {k: v.clone() for k, v in model.tokenizer.decoder.state_dict().items()}
    for _ in range(3):
        logs = model.train_step(batch(), optim)
    assert int(model.skipped_nonfinite) == 0 and torch.isfinite(logs['policy/kl'])
    assert float(logs['policy/kl']) > 0  # online (adapter on) != reference (adapter off)
    after = model.policy.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items())  # frozen base
    moved = [k for k, v in adapter_parameters(model.policy).items()
             if not torch.equal(v, adapters[k])]
    assert len(moved) == len(adapters)
    assert all(not torch.equal(v, model.policy_ema.state_dict()[k]) for k, v in ema.items())
    assert any(not torch.equal(v, model.tokenizer.decoder.state_dict()[k])
               for k, v in decoder.items())
    # the EMA is the adapters' average: sampling with policy='ema' swaps it in and back out
    cond, mask, tokens, _ = rollout_inputs(model)
    with torch.no_grad():
        online = model.policy.log_probs(cond, mask, tokens)
        with model.policy_as('ema') as policy:
            averaged = policy.log_probs(cond, mask, tokens)
        assert torch.equal(online, model.policy.log_probs(cond, mask, tokens))
    assert not torch.equal(online, averaged)
    out = model.generate(['a red circle'], policy='ema', seeds=[0])
    assert out['images'].shape[0] == 1
    # one copy of the policy's weights: no reference copy, the EMA is adapter-sized
    plain, _ = build(lora=None)
    count = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.policy_ema.buffers())
    assert count < sum(p.numel() for p in plain.parameters()) - sum(
        p.numel() for p in plain.policy_ref.parameters()) // 2


def test_checkpoints_hold_the_adapter_not_the_frozen_base():
    model, optim = build()
    model.train_step(batch(), optim)
    state = model.state_dict()
    policy_keys = [k for k in state if k.startswith('policy.')]
    assert policy_keys and all(is_adapter_key(k) for k in policy_keys)
    assert not [k for k in state if k.startswith('policy_ref.')]
    assert len([k for k in state if k.startswith('policy_ema.')]) == len(policy_keys)
    other, _ = build()  # the same config: the base comes from it
    result = other.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    cond, mask, tokens, _ = rollout_inputs(model)
    with torch.no_grad():
        assert torch.equal(model.policy.log_probs(cond, mask, tokens),
                           other.policy.log_probs(cond, mask, tokens))
    for key, value in model.policy_ema.state_dict().items():
        assert torch.equal(value, other.policy_ema.state_dict()[key])


def test_merged_export_loads_strictly_in_the_official_layout(tmp_path):
    """tools/export_checkpoint.py's files: {"model": state_dict} GPT and VQ files that the strict
    official-format loaders read, computing what the adapted policy and the EMA decoder do."""
    from rankekit.apis.export import export_official
    from rankekit.policies import LlamaGenGPT
    from rankekit.tokenizers import VQModel
    model, optim = build()
    for _ in range(2):
        model.train_step(batch(), optim)
    paths = export_official(model, tmp_path)
    assert [p.name for p in paths] == ['gpt.pt', 'vq.pt']
    cfg = {k: v for k, v in tiny_model_cfg()['policy'].items() if k != 'type'}
    gpt = LlamaGenGPT(**cfg, pretrained=str(paths[0])).eval()
    assert set(torch.load(paths[0], weights_only=True)['model']) == set(
        LlamaGenGPT(**cfg).state_dict())
    cond, mask, tokens, _ = rollout_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(gpt.log_probs(cond, mask, tokens),
                                   model.policy.log_probs(cond, mask, tokens),
                                   rtol=1e-5, atol=1e-5)
    vq_cfg = {k: v for k, v in tiny_model_cfg()['tokenizer'].items() if k != 'type'}
    vq = VQModel(**vq_cfg, pretrained=str(paths[1]))
    for key, value in model.decoder_ema.state_dict().items():
        assert torch.equal(vq.state_dict()[key], value), key


def test_gpt_xl_lora_export_has_the_official_manifest(reference_path):
    """LlamaGen GPT-XL (775M) with LoRA on every block linear, built on the meta device: the
    merged export's keys and shapes are exactly the official checkpoint's manifest."""
    from rankekit.models.lora import add_lora, merged_state_dict
    manifest = json.loads((reference_path / 'manifests' / 'llamagen_gpt_xl_t2i.json').read_text())
    with torch.device('meta'):
        policy = POLICIES.build(dict(type='LlamaGenGPT', arch='GPT-XL'))
        add_lora(policy)
        merged = merged_state_dict(policy)
    expected = {k: v for k, v in manifest.items() if isinstance(v, list)}
    assert list(merged) == list(expected)  # the official order too
    assert {k: list(v.shape) for k, v in merged.items()} == expected
    # by hand, r=16 per block: wqkv 16 (1280 + 3840), wo 16 (1280 + 1280), w1/w2/w3 16 (1280 +
    # 3584) each = 356,352; x 36 blocks = 12.8M trainable parameters (1.6% of 778M)
    assert sum(p.numel() for p in adapter_parameters(policy).values()) == 36 * 356_352


def test_janus_lora_export_loads_strictly(tmp_path):
    pytest.importorskip('transformers')
    from rankekit.apis.export import export_official
    from rankekit.policies import JanusProPolicy
    from rankekit.tokenizers import JanusVQ
    torch.manual_seed(0)
    vq = dict(type='JanusVQ', arch=None, ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1, 1, 1],
              decoder_ch_mult=[1, 1, 1, 1], z_channels=16, codebook_size=256,
              codebook_embed_dim=8, image_size=32)
    model = MODELS.build(tiny_model_cfg(
        tokenizer=vq, policy=dict(type='JanusProPolicy', arch='tiny'),
        text_encoder=dict(type='JanusPromptEncoder'), rollout=dict(cfg_scale=5.0),
        lora=dict(r=4, alpha=8)))
    with torch.no_grad():
        for p in adapter_parameters(model.policy).values():
            p.normal_(std=0.05)  # a trained-looking adapter (B starts at zero)
    paths = export_official(model, tmp_path, decoder='online')
    assert [p.name for p in paths] == ['model.safetensors']
    policy = JanusProPolicy(arch='tiny', pretrained=str(paths[0]))
    tokenizer = JanusVQ(pretrained=str(paths[0]), **{k: v for k, v in vq.items() if k != 'type'})
    ids, mask = model.encode_prompts(['a red circle', 'a blue square'])
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(policy.log_probs(ids, mask, tokens),
                                   model.policy.log_probs(ids, mask, tokens),
                                   rtol=1e-5, atol=1e-5)
        with model.policy_as('base') as base:
            assert not torch.allclose(base.log_probs(ids, mask, tokens),
                                      policy.log_probs(ids, mask, tokens))
    for key, value in model.tokenizer.state_dict().items():
        assert torch.equal(tokenizer.state_dict()[key], value), key


def test_lora_settings_are_checked():
    with pytest.raises(ValueError, match=r'model.lora.r must be >= 1, got 0'):
        build(lora=dict(r=0))
    with pytest.raises(KeyError, match=r"model.lora has unknown keys 'rank'"):
        build(lora=dict(rank=4))
    with pytest.raises(ValueError, match=r"model.policy_anchor \(L2Anchor\) compares parameters "
                                         r".*LoRA"):
        build(policy_anchor=dict(type='L2Anchor', weight=1.0))
    with pytest.raises(ValueError, match=r"model.lora.target_modules=\['nope'\]"):
        build(lora=dict(target_modules=['nope']))


@pytest.mark.slow
def test_lora_toy_recipe_trains_checkpoints_and_exports(tmp_path):
    """configs/ranke/ranke_toy_lora.py through tools/train.py (2 iterations), then
    tools/export_checkpoint.py on the work dir: the checkpoint holds adapters, the export loads
    strictly into the toy policy and computes what the trained LoRA policy computes."""
    from rankekit.apis.export import export_main
    from rankekit.apis.inference import load_model
    from rankekit.apis.train import build_runner, parse_args, setup_cfg
    config = 'configs/ranke/ranke_toy_lora.py'
    args = parse_args([config, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                       'train_cfg.max_iters=2', 'train_dataloader.batch_size=2',
                       'model.rollout.group_size=4', 'log_level=WARNING', 'custom_hooks=[]',
                       'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None'])
    runner = build_runner(setup_cfg(args))
    runner.train()
    model = runner.model
    assert int(model.policy_steps) == 2 and int(model.skipped_nonfinite) == 0
    state = load_runner_checkpoint_file(tmp_path / 'w' / 'iter_2.pth')['state_dict']
    assert [k for k in state if k.startswith('policy.')]
    assert all(is_adapter_key(k) for k in state if k.startswith('policy.'))
    assert export_main([config, str(tmp_path / 'w'), '--out-dir', str(tmp_path / 'x')]) == 0
    trained, cfg, _ = load_model(config, tmp_path / 'w')
    exported = POLICIES.build(dict(cfg.model.policy, pretrained=str(tmp_path / 'x' / 'gpt.pt')))
    cond, mask = trained.encode_prompts(['a large red circle on the left'] * 2)
    tokens = torch.randint(0, trained.policy.vocab_size, (2, trained.policy.num_image_tokens))
    with torch.no_grad():
        torch.testing.assert_close(exported.eval().log_probs(cond, mask, tokens),
                                   trained.policy.log_probs(cond, mask, tokens),
                                   rtol=1e-5, atol=1e-5)
