"""Sampler-consistent log-probs (policy_cfg.logprobs='sampler'): the distribution the rollout was
drawn from (CFG-combined, temperature, top-k, top-p) instead of the conditional one."""
import pytest
import torch

from rankekit.registry import POLICIES, TEXT_ENCODERS

CAPTIONS = ['a large red circle on the left', 'a small blue square at the top',
            'a green triangle in the center', 'a yellow cross on the right'] * 3


@pytest.fixture(scope='module')
def toy():
    """The trained toy policy and text encoder (shipped checkpoints) and 12 encoded captions."""
    from rankekit.apis.config import load_config
    cfg = load_config('configs/_base_/models/toy_backbone.py')
    policy = POLICIES.build(dict(cfg.toy_policy, pretrained='toy://policy.pt')).eval()
    encoder = TEXT_ENCODERS.build(dict(cfg.toy_text_encoder,
                                       pretrained='toy://text_encoder.pt')).eval()
    with torch.no_grad():
        cond, mask = encoder(CAPTIONS)
    return policy, cond, mask


@pytest.mark.parametrize('settings', [
    dict(cfg_scale=3.0),
    dict(cfg_scale=6.0, top_k=64),
    dict(cfg_scale=3.0, cfg_first_n=20, temperature=0.9, top_k=32, top_p=0.95),
    dict(cfg_scale=1.0, temperature=1.3, top_p=0.8)], ids=['cfg3', 'cfg6-topk', 'all', 'no-cfg'])
def test_sampler_option_equals_the_samplers_own_log_probs(toy, settings):
    """Teacher-forced under the sampling distribution == what the KV-cache sampler reports for
    the tokens it drew (to fp32 rounding of the CFG-amplified logits, 5e-4), while the released
    conditional log-probs are another distribution: apart by far more than that tolerance (how far
    depends on the policy's entropy; the shipped toy policy: 0.06 nats/token at temperature 1.3 and
    top-p 0.8, more under CFG)."""
    policy, cond, mask = toy
    out = policy.sample(cond, mask, generator=torch.Generator().manual_seed(0), **settings)
    with torch.no_grad():
        mine = policy.sampler_log_probs(cond, mask, out.tokens, **settings)
        conditional = policy.log_probs(cond, mask, out.tokens)
    torch.testing.assert_close(mine, out.logprobs, rtol=0, atol=5e-4)
    assert (conditional - mine).abs().mean() > 20 * 5e-4
    if settings.get('cfg_first_n'):  # past the guided steps only temperature / filters act
        n = settings['cfg_first_n']
        unguided = policy.sampler_log_probs(cond, mask, out.tokens, temperature=0.9, top_k=32,
                                            top_p=0.95)
        torch.testing.assert_close(mine[:, n:], unguided[:, n:])
        assert not torch.allclose(mine[:, :n], unguided[:, :n])


def test_at_cfg_1_the_two_agree_and_gradients_flow(toy):
    policy, cond, mask = toy
    out = policy.sample(cond, mask, generator=torch.Generator().manual_seed(1))
    mine = policy.sampler_log_probs(cond, mask, out.tokens)
    assert torch.equal(mine, policy.log_probs(cond, mask, out.tokens))
    # CFG 6: the gradient reaches the weights through both the conditional and the null rows
    policy.zero_grad(set_to_none=True)
    policy.sampler_log_probs(cond, mask, out.tokens, cfg_scale=6.0, top_k=64).mean().backward()
    assert policy.cls_embedding.cap_proj.fc1.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
    policy.zero_grad(set_to_none=True)


def test_a_token_drawn_at_the_top_k_boundary_keeps_a_finite_log_prob():
    """Rounding between the KV-cache and teacher-forced logits can move a drawn token just
    outside the top-k: it stays in the support (finite log-prob) instead of giving -inf."""
    from rankekit.policies.sampling import sampler_logprobs
    logits = torch.tensor([[[3.0, 2.0, 1.0, 0.0]]])
    inside = sampler_logprobs(logits, None, torch.tensor([[1]]), top_k=2)
    torch.testing.assert_close(inside, torch.tensor([[2.0 - torch.tensor([3.0, 2.0])
                                                     .logsumexp(0).item()]]))
    outside = sampler_logprobs(logits, None, torch.tensor([[2]]), top_k=2)
    expected = 1.0 - torch.tensor([3.0, 2.0, 1.0]).logsumexp(0)
    torch.testing.assert_close(outside, expected.view(1, 1))
    with pytest.raises(ValueError, match='cfg_scale=3.0 needs the unconditional logits'):
        sampler_logprobs(logits, None, torch.tensor([[1]]), cfg_scale=3.0)


def test_janus_sampler_option_equals_its_samplers_log_probs():
    pytest.importorskip('transformers')
    from rankekit.text_encoders import JanusPromptEncoder
    torch.manual_seed(0)
    policy = POLICIES.build(dict(type='JanusProPolicy', arch='tiny')).eval()
    for p in policy.parameters():  # random weights at a scale that gives peaked logits
        p.data.mul_(4.0)
    ids, mask = JanusPromptEncoder()(['a red circle', 'a blue square on the left'])
    settings = dict(cfg_scale=5.0, top_k=64, temperature=0.9)
    out = policy.sample(ids, mask, generator=torch.Generator().manual_seed(0), **settings)
    with torch.no_grad():
        mine = policy.sampler_log_probs(ids, mask, out.tokens, **settings)
        conditional = policy.log_probs(ids, mask, out.tokens)
        unguided = policy.sampler_log_probs(ids, mask, out.tokens, cfg_scale=1.0)
    torch.testing.assert_close(mine, out.logprobs, rtol=0, atol=5e-4)
    assert (conditional - mine).abs().mean() > 0.05
    assert torch.equal(unguided, conditional)


def test_rank_e_uses_the_sampling_distribution_for_logp_old_and_ref():
    """policy_cfg.logprobs='sampler' with CFG 3 and top-k: logp_old (and, before any update,
    logp_ref) are the sampler's own log-probs of the rollout; the default keeps the conditional
    ones (as released)."""
    from test_rank_e_model import batch, build
    for mode in ('sampler', 'conditional'):
        model, optim = build(policy_cfg=dict(logprobs=mode),
                             rollout=dict(cfg_scale=3.0, top_k=8))
        drawn, seen = {}, {}
        sample, loss = model.policy.sample, model.rank_loss.forward

        def recording_sample(*args, **kwargs):
            out = sample(*args, **kwargs)
            drawn['logprobs'] = out.logprobs
            return out

        def recording_loss(logp, logp_old, rewards, group_size, logp_ref=None, mask=None):
            seen.update(logp_old=logp_old, logp_ref=logp_ref)
            return loss(logp, logp_old, rewards, group_size, logp_ref=logp_ref, mask=mask)

        model.policy.sample, model.rank_loss.forward = recording_sample, recording_loss
        logs = model.train_step(batch(), optim)
        assert torch.isfinite(logs['policy/kl']) and int(model.skipped_nonfinite) == 0
        gap = (seen['logp_old'] - drawn['logprobs']).abs().max()
        if mode == 'sampler':
            assert gap < 5e-4 and torch.equal(seen['logp_ref'], seen['logp_old'])
        else:
            assert gap > 0.01
    with pytest.raises(ValueError, match=r"model.policy_cfg.logprobs must be one of "
                                         r"\('conditional', 'sampler'\), got 'cfg'"):
        build(policy_cfg=dict(logprobs='cfg'))
