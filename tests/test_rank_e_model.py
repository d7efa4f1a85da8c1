"""RankEModel with tiny random components: phases, frozen parts, EMA, safety, the hook."""
import math
import warnings

import pytest
import torch

from rankekit.engine.hooks import CoEvolutionHook
from rankekit.engine.optim_constructor import MultiOptimWrapperConstructor
from rankekit.models import NonFiniteError
from tiny_components import IMAGE, tiny_model_cfg
pytestmark = pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')


def build(**overrides):
    torch.manual_seed(0)
    from rankekit.registry import MODELS
    model = MODELS.build(tiny_model_cfg(**overrides))
    model.train()
    optim = MultiOptimWrapperConstructor(dict(
        policy=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        decoder=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        discriminator=dict(optimizer=dict(type='AdamW', lr=1e-3))))(model)
    return model, optim


def batch(n=2):
    g = torch.Generator().manual_seed(1)
    return dict(image=torch.rand(n, 3, IMAGE, IMAGE, generator=g),
                caption=['a red circle on the left', 'a small blue square at the top'][:n])


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()
            if isinstance(v, torch.Tensor)}


def changed(before, module):
    after = module.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_only_decoder_parts_of_the_tokenizer_train():
    model, _ = build()
    trainable = {n for n, p in model.tokenizer.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(('decoder.', 'post_quant_conv.')) for n in trainable)
    assert set(model.optim_parts()) == {'policy', 'decoder', 'discriminator'}


def test_sync_step_updates_policy_and_decoder_and_nothing_frozen():
    model, optim = build()
    frozen = {name: snapshot(getattr(model, name))
              for name in ('text_encoder', 'policy_ref', 'decoder_base', 'rewards', 'perceptual')}
    encoder = snapshot(model.tokenizer.encoder)
    codebook = model.tokenizer.quantize.embedding.weight.detach().clone()
    policy, decoder = snapshot(model.policy), snapshot(model.tokenizer.decoder)
    policy_ema, decoder_ema = snapshot(model.policy_ema), snapshot(model.decoder_ema)
    logs = model.train_step(batch(), optim)
    assert changed(policy, model.policy) and changed(decoder, model.tokenizer.decoder)
    assert changed(policy_ema, model.policy_ema) and changed(decoder_ema, model.decoder_ema)
    for name, state in frozen.items():
        assert not changed(state, getattr(model, name)), name
    assert not changed(encoder, model.tokenizer.encoder)
    assert torch.equal(codebook, model.tokenizer.quantize.embedding.weight)
    for key in ('reward/redness_reward/mean', 'reward/redness_reward/std', 'reward/frac_zero_std',
                'policy/loss', 'policy/kl', 'policy/clip_frac', 'decoder/l1',
                'decoder/perceptual', 'decoder/gan', 'decoder/rank_gan', 'decoder/reward',
                'decoder/anchor', 'disc/loss', 'phase', 'tau', 'skipped_nonfinite'):
        assert key in logs, key
        assert math.isfinite(float(logs[key])), key
    assert float(logs['phase']) == 3.0
    assert int(model.policy_steps) == 1 and int(model.decoder_steps) == 1


@pytest.mark.parametrize('phases,trained,untouched', [
    (dict(policy=True, decoder=False), 'policy', 'decoder'),
    (dict(policy=False, decoder=True), 'decoder', 'policy')])
def test_phase_flags_are_obeyed(phases, trained, untouched):
    model, optim = build()
    model.phases = phases
    parts = dict(policy=model.policy, decoder=model.tokenizer.decoder)
    before = {k: snapshot(m) for k, m in parts.items()}
    model.train_step(batch(), optim)
    assert changed(before[trained], parts[trained])
    assert not changed(before[untouched], parts[untouched])


def test_non_finite_reward_skips_and_stops_after_limit():
    model, optim = build(rewards=[dict(type='RednessReward', poison_after=0)],
                         safety=dict(max_consecutive_skips=3))
    state = snapshot(model)
    for expected in (1, 2):
        logs = model.train_step(batch(), optim)
        assert float(logs['skipped_nonfinite']) == expected
    after = model.state_dict()
    for key, value in state.items():
        if key.endswith(('skipped_nonfinite', 'consecutive_skips', 'rollout_rng_state')):
            continue
        assert torch.equal(value, after[key]), f'{key} changed although the update was skipped'
    with pytest.raises(NonFiniteError, match='3 consecutive updates were skipped'):
        model.train_step(batch(), optim)


def test_non_finite_loss_skips_only_that_update():
    model, optim = build()
    model.policy_anchor.weight = float('nan')
    policy, decoder = snapshot(model.policy), snapshot(model.tokenizer.decoder)
    logs = model.train_step(batch(), optim)
    assert 'skipped/policy' in logs and float(logs['skipped_nonfinite']) == 1
    assert not changed(policy, model.policy)
    assert changed(decoder, model.tokenizer.decoder)
    assert all(p.grad is None or not p.grad.abs().sum() for p in model.policy.parameters())


def test_non_differentiable_reward_with_decoder_reward_weight_is_refused_at_build():
    with pytest.raises(ValueError, match=r'reward_weight=0.1 needs a differentiable reward.*'
                                         r"\['redness_reward'\]"):
        build(rewards=[dict(type='RednessReward', differentiable=False)],
              decoder_cfg=dict(reward_weight=0.1))


def test_a_non_differentiable_reward_beside_a_differentiable_one_is_warned_about_once():
    model, optim = build(rewards=[dict(type='RednessReward', name='grad'),
                                  dict(type='RednessReward', differentiable=False, name='nograd')],
                         decoder_cfg=dict(reward_weight=0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        logs = model.train_step(batch(), optim)
        model.train_step(batch(), optim)
    messages = [str(w.message) for w in caught if 'not differentiable' in str(w.message)]
    assert len(messages) == 1 and "['nograd']" in messages[0]
    assert 'decoder/reward' in logs


def test_generate_combos_and_predict():
    model, _ = build()
    for policy in ('online', 'ema', 'base'):
        for decoder in ('online', 'ema', 'base'):
            out = model.generate(['a red circle'], policy=policy, decoder=decoder,
                                 seeds=[0])
            assert out['tokens'].shape == (1, 16)
            assert out['images'].shape == (1, 3, IMAGE, IMAGE)
            assert 0 <= float(out['images'].min()) and float(out['images'].max()) <= 1
    preds = model.val_step(dict(caption=['a', 'b']))
    assert len(preds) == 2 and preds[0]['image'].shape == (3, IMAGE, IMAGE)


def test_unknown_config_keys_are_reported_with_suggestion():
    with pytest.raises(KeyError, match="'rank_gan_weigth' \\(did you mean 'rank_gan_weight'"):
        build(decoder_cfg=dict(rank_gan_weigth=1.0))


def test_hook_schedules_and_anneals():
    hook = CoEvolutionHook(schedule='alternate', policy_iters=2, decoder_iters=1,
                           warmup_iters=2, warmup_mode='decoder',
                           tau=dict(type='cosine', start=4.0, end=1.0, stop=0.5),
                           coefficients=dict(policy_anchor=dict(type='linear', start=0.1,
                                                                end=0.0)))
    seq = [hook.phases_at(i) for i in range(7)]
    assert [(p['policy'], p['decoder']) for p in seq] == [
        (False, True), (False, True), (True, False), (True, False), (False, True),
        (True, False), (True, False)]
    assert CoEvolutionHook(train_mode='policy').phases_at(5) == dict(policy=True, decoder=False)
    assert hook.tau(0, 10) == 4.0 and hook.tau(5, 10) == 1.0
    assert hook.tau(2, 10) == pytest.approx(1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi * 0.4)))
    assert hook.coefficients['policy_anchor'](5, 10) == pytest.approx(0.05)


def test_checkpoint_leaves_out_frozen_config_modules_and_reloads():
    model, optim = build()
    state = model.state_dict()
    assert not [k for k in state if k.startswith(('text_encoder.', 'rewards.rewards.',
                                                  'perceptual.'))]
    assert any(k.startswith('policy_ref.') for k in state)
    assert 'rewards.running_mean' in state
    model.train_step(batch(), optim)
    other, _ = build()
    result = other.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other.state_dict()[key]), key


def test_reward_combiner_normalisations_by_hand():
    from rankekit.rewards.combiner import RewardCombiner
    from tiny_components import RednessReward
    combiner = RewardCombiner([RednessReward(name='a'), RednessReward(name='b')],
                              weights=[1.0, 0.5], normalize='group')
    images = torch.zeros(4, 3, 2, 2)
    images[:, 0] = torch.tensor([0.0, 0.2, 0.4, 1.0]).view(4, 1, 1)  # redness = 0, .2, .4, 1
    combined, raw = combiner.score(images, ['p'] * 4, group_size=2)
    # groups (0, .2) and (.4, 1): z = -1, +1 in each; combined = 1.5 * z
    assert torch.allclose(combined, torch.tensor([-1.5, 1.5, -1.5, 1.5]), atol=1e-4)
    assert torch.allclose(raw['a'], torch.tensor([0.0, 0.2, 0.4, 1.0]))
    chosen = torch.tensor([1, 3])
    stats = combiner.group_statistics(raw, 2, chosen)
    images.requires_grad_(True)
    score = combiner.differentiable_score(images[chosen], ['p', 'p'], stats)
    assert torch.allclose(score, torch.tensor([1.5, 1.5]), atol=1e-4)
    score.sum().backward()
    assert images.grad[1].abs().sum() > 0 and images.grad[0].abs().sum() == 0
    running = RewardCombiner([RednessReward(name='a')], normalize='running')
    running.score(images.detach(), ['p'] * 4)
    assert running.running_mean.item() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="reward normalize='zscore' is unknown"):
        RewardCombiner([RednessReward()], normalize='zscore')


def test_l2_fisher_anchor_on_the_policy_and_decoder():
    model, optim = build(policy_anchor=dict(type='L2Anchor', weight=1.0, fisher=True,
                                            fisher_steps=2),
                         decoder_anchor=dict(type='L2Anchor', weight=1.0))
    for _ in range(3):
        logs = model.train_step(batch(), optim)
    assert int(model.policy_anchor.fisher_count) == 2
    assert float(logs['policy/anchor']) > 0 and float(logs['decoder/anchor']) > 0
    assert any(k.startswith('policy_anchor.fisher_state.') for k in model.state_dict())


def test_rollout_seed_none_follows_the_run_seed():
    """rollout.seed=None (the toy and real recipes): the rollout RNG starts from the seed the
    Runner gave torch, so runs with different --seed draw different rollouts."""
    from rankekit.registry import MODELS
    states = {}
    for run_seed in (0, 1):
        torch.manual_seed(run_seed)  # what the Runner's set_randomness does before build_model
        model = MODELS.build(tiny_model_cfg(rollout=dict(group_size=4, seed=None)))
        states[run_seed] = model.rollout_rng_state.clone()
        assert torch.equal(states[run_seed],
                           torch.Generator().manual_seed(run_seed).get_state())
    assert not torch.equal(states[0], states[1])
    model = MODELS.build(tiny_model_cfg(rollout=dict(group_size=4, seed=7)))  # explicit: kept
    assert torch.equal(model.rollout_rng_state, torch.Generator().manual_seed(7).get_state())


def test_toy_and_real_recipes_leave_seeds_to_the_run():
    from rankekit.apis.config import load_config
    for name in ('configs/ranke/ranke_toy.py', 'configs/ranke/ranke_llamagen-xl_clip.py'):
        cfg = load_config(name)
        assert cfg.model.rollout.get('seed') is None
        assert cfg.train_dataloader.sampler.get('seed') is None  # MMEngine passes the run's seed


def test_l2_fisher_anchor_on_the_decoder_collects_its_estimate():
    """The decoder's Fisher is the squared gradient of its own update (fisher_steps=1), not left
    at zero (only the policy update used to feed an anchor's Fisher estimate)."""
    model, optim = build(decoder_anchor=dict(type='L2Anchor', weight=1.0, fisher=True,
                                             fisher_steps=1))
    wrapper, seen = optim['decoder'], {}
    step = wrapper.step

    def spy(*args, **kwargs):  # the gradients the update used, before the step clears them
        seen.update({n: p.grad.clone() for n, p in model.optim_parts()['decoder'].named_parameters()
                     if p.grad is not None})
        return step(*args, **kwargs)

    wrapper.step = spy
    model.train_step(batch(), optim)
    anchor = model.decoder_anchor
    assert int(anchor.fisher_count) == 1 and seen
    for name, grad in seen.items():
        torch.testing.assert_close(getattr(anchor.fisher_state, name.replace('.', '__')),
                                   grad.pow(2), rtol=0, atol=0)
    before = {k: v.clone() for k, v in anchor.fisher_state.named_buffers()}
    logs = model.train_step(batch(), optim)  # past fisher_steps: the estimate stays
    assert int(anchor.fisher_count) == 1 and float(logs['decoder/anchor']) > 0
    assert all(torch.equal(v, before[k]) for k, v in anchor.fisher_state.named_buffers())


def test_group_normalisation_keeps_flat_groups_flat_for_grpo():
    """reward_normalize='group': a group whose rewards differ only by rounding noise normalises
    to 0, so GRPO's zero-std check still sees it flat (with the old (r - mean) / (std + 1e-6) it
    became +-0.07 and got full-size advantages); the threshold is the loss's std_eps."""
    from rankekit.losses.rank_losses import GRPOLoss
    from rankekit.rewards.combiner import RewardCombiner
    from tiny_components import RednessReward
    combiner = RewardCombiner([RednessReward(name='a')], normalize='group', group_std_eps=1e-4)
    images = torch.zeros(8, 3, 2, 2)
    redness = torch.tensor([0.5, 0.5 + 1e-7, 0.5, 0.5 - 1e-7, 0.1, 0.3, 0.5, 0.7])
    images[:, 0] = redness.view(8, 1, 1)
    combined, _ = combiner.score(images, ['p'] * 8, group_size=4)
    assert torch.equal(combined[:4], torch.zeros(4))
    z = (redness[4:] - 0.4) / redness[4:].std(unbiased=False)
    torch.testing.assert_close(combined[4:], z)
    out = GRPOLoss()(torch.zeros(8, 3, requires_grad=True), torch.zeros(8, 3), combined, 4)
    assert float(out['frac_zero_std']) == 0.5
    # the decoder's differentiable path: a flat group gives no gradient (not a 1e6-scaled one)
    stats = combiner.group_statistics(dict(a=redness), 4, torch.tensor([1, 5]))
    images.requires_grad_(True)
    combiner.differentiable_score(images[[1, 5]], ['p', 'p'], stats).sum().backward()
    assert images.grad[1].abs().sum() == 0 and images.grad[5].abs().sum() > 0
    model, _ = build(reward_normalize='group', rank_loss=dict(type='GRPOLoss', std_eps=0.05))
    assert model.rewards.group_std_eps == 0.05  # the loss's threshold by default
    model, _ = build(reward_normalize='group', reward_std_eps=1e-3)
    assert model.rewards.group_std_eps == 1e-3
    with pytest.raises(ValueError, match=r'model.reward_std_eps must be > 0.0, got 0'):
        build(reward_normalize='group', reward_std_eps=0)


# ---- release settings (issue 25): the switches do what they say -------------------------------
def test_policy_decodes_are_clamped_before_the_decoder_terms():
    seen = {}
    for clamp in (True, False):
        model, optim = build(decoder_cfg=dict(disc_start=0, ema_decay=0.5,
                                              clamp_policy_decodes=clamp))
        # a decoder that overshoots: every pixel of its decode far outside [-1, 1]
        with torch.no_grad():
            model.tokenizer.decoder.conv_out.bias.fill_(3.0)
            model.decoder_ema.decoder.conv_out.bias.fill_(3.0)
        model.discriminator.register_forward_hook(
            lambda m, args, out, key=clamp: seen.setdefault(key, []).append(args[0].detach()))
        model.decoder_anchor.register_forward_hook(  # (a hook returning a value replaces out)
            lambda m, args, out, key=clamp: seen.update({f'target{key}': args[1].detach()}))
        model.train_step(batch(), optim)
    policy_decodes = seen[True][-1]  # the last discriminator call: the rank-GAN term
    assert policy_decodes.max() <= 1.0 and (policy_decodes == 1.0).any()
    assert seen[False][-1].max() > 1.5
    assert seen['targetTrue'].max() <= 1.0 and seen['targetFalse'].max() > 1.5


def test_bidirectional_caption_mask_is_the_release_one_by_hand():
    from rankekit.policies.llamagen_gpt import LlamaGenGPT
    keep = torch.tensor([[0, 1, 1]])  # one left pad, 2 caption tokens; S = 3 + 2 image tokens
    bi = LlamaGenGPT.attention_mask(keep, 5, 'bidirectional')[0, 0].int().tolist()
    assert bi == [[0, 1, 1, 0, 0],   # caption rows see the whole valid caption, no forced diagonal
                  [0, 1, 1, 0, 0],
                  [0, 1, 1, 0, 0],
                  [0, 1, 1, 1, 0],   # image rows: causal, the pad column masked
                  [0, 1, 1, 1, 1]]
    causal = LlamaGenGPT.attention_mask(keep, 5)[0, 0].int().tolist()
    assert causal == [[1, 0, 0, 0, 0],  # the pad row sees itself only (diagonal forced)
                      [0, 1, 0, 0, 0],
                      [0, 1, 1, 0, 0],
                      [0, 1, 1, 1, 0],
                      [0, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="caption_attention must be"):
        LlamaGenGPT.attention_mask(keep, 5, 'full')


def test_halved_hinge_and_mean_eps_rank_weights_by_hand():
    from rankekit.losses.gan import hinge_d_loss
    from rankekit.losses.rank_weights import TopKSoftmaxWeights
    # relu(1 - 0.5) = 0.5 and relu(1 + (-2, 0)) = (0, 1) -> mean 0.5; 0.5 x (0.5 + 0.5) = 0.5
    assert float(hinge_d_loss(torch.tensor([0.5]), torch.tensor([-2.0, 0.0]))) == 0.5
    r = torch.tensor([0.0, 1.0, 3.0, 2.0], dtype=torch.float64)  # one group of 4, K = 2
    exact = TopKSoftmaxWeights(top_k=2)(r, 4)
    release = TopKSoftmaxWeights(top_k=2, mean_eps=1e-8)(r, 4)
    soft = torch.softmax(torch.tensor([3.0, 2.0], dtype=torch.float64), 0)
    assert torch.allclose(exact[[2, 3]], 2 * soft, atol=0, rtol=1e-15)
    assert torch.allclose(release[[2, 3]], soft / (0.5 + 1e-8), atol=0, rtol=1e-15)
    assert exact.dtype == torch.float64  # a float64 run keeps its precision


@pytest.mark.parametrize('codebook,logits', [('normalized', 'conditional'), ('raw', 'sampler')])
def test_lasc_settings_train(codebook, logits):
    model, optim = build(decoder_cfg=dict(disc_start=0, ema_decay=0.5, lasc_weight=1.0,
                                          lasc_top_k=4, lasc_codebook=codebook,
                                          lasc_logits=logits))
    decoder = snapshot(model.tokenizer.decoder)
    logs = model.train_step(batch(), optim)
    assert math.isfinite(float(logs['decoder/lasc'])) and float(logs['decoder/lasc']) > 0
    assert changed(decoder, model.tokenizer.decoder)


def test_caption_attention_needs_a_policy_that_supports_it():
    with pytest.raises(ValueError, match="caption_attention='bidirectional' describes"):
        build(policy_cfg=dict(ema_interval=1, ema_decay=0.5, caption_attention='bidirectional',
                              logprobs='sampler'))
    model, optim = build(policy_cfg=dict(ema_interval=1, ema_decay=0.5,
                                         caption_attention='bidirectional'))
    logs = model.train_step(batch(), optim)
    assert math.isfinite(float(logs['policy/loss']))
