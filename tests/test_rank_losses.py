"""Ranking losses (GRPO, listwise, pairwise) and decoder rank weights: hand-computed values."""
import math

import pytest
import torch

from rankekit.losses.rank_losses import (GRPOLoss, ListwiseRankLoss, PairwiseRankLoss,
                                         group_advantages)
from rankekit.losses.rank_weights import TopKSoftmaxWeights, UniformRankWeights
from rankekit.registry import RANK_LOSSES, RANK_WEIGHTS

LN = math.log


def _close(x, y, tol=1e-5):
    assert torch.as_tensor(x).double().sub(torch.as_tensor(y).double()).abs().max() < tol, (x, y)


def _softplus(x):  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


# --- advantages --------------------------------------------------------------------------------

# two groups of G=3: group 0 rewards [0, 0, 3] -> mean 1, deviations [-1, -1, 2], squared sum 6:
# unbiased var 6 / 2 = 3 (the release's torch.std), population var 6 / 3 = 2;
# group 1 [2, 2, 2] has std 0 -> A = 0.
R23 = torch.tensor([0., 0., 3., 2., 2., 2.])
S2, S3 = math.sqrt(2), math.sqrt(3)


def test_group_advantages_group_scale_zero_std_and_clamp():
    adv, frac = group_advantages(R23, 3)  # default: unbiased std, as released
    _close(adv, [-1 / S3, -1 / S3, 2 / S3, 0, 0, 0])
    _close(frac, 0.5)  # one of two groups is flat
    adv, _ = group_advantages(R23, 3, std='population')
    _close(adv, [-1 / S2, -1 / S2, S2, 0, 0, 0])
    adv, _ = group_advantages(R23, 3, clamp=1.0)  # 2/sqrt3 = 1.155 is clamped to 1
    _close(adv, [-1 / S3, -1 / S3, 1.0, 0, 0, 0])


def test_group_advantages_unbiased_is_sqrt_g_over_g_minus_1_larger():
    r = torch.tensor([0.3, -1.2, 2.0, 0.7, 0.1, 0.0, -0.4, 1.1])
    unbiased, _ = group_advantages(r, 8)
    population, _ = group_advantages(r, 8, std='population')
    _close(population / unbiased, math.sqrt(8 / 7))  # 1.069 at G=8 (D1 of issue 25)
    with pytest.raises(ValueError, match="std must be one of"):
        group_advantages(r, 8, std='biased')
    with pytest.raises(ValueError, match="std must be one of"):
        GRPOLoss(std='sample')


def test_group_advantages_batch_and_none_scale():
    # batch: mean 1.5, squared deviations 3 * 2.25 + 3 * 0.25 = 7.5, var 7.5 / 5 = 1.5 (unbiased)
    adv, _ = group_advantages(R23, 3, scale='batch')
    _close(adv, [-1 / math.sqrt(1.5), -1 / math.sqrt(1.5), 2 / math.sqrt(1.5), 0, 0, 0])
    adv, _ = group_advantages(R23, 3, scale='batch', std='population')  # var 7.5 / 6 = 1.25
    _close(adv, [-1 / math.sqrt(1.25), -1 / math.sqrt(1.25), 2 / math.sqrt(1.25), 0, 0, 0])
    adv, _ = group_advantages(R23, 3, scale='none')
    _close(adv, [-1, -1, 2, 0, 0, 0])


def test_group_advantages_std_eps_zeroes_near_ties():
    # population std of [0, 0.03] is 0.015 (unbiased 0.0212): signal under eps 1e-4, noise
    # under eps 0.05
    r = torch.tensor([0., 0.03])
    _close(group_advantages(r, 2, std='population')[0], [-1, 1])
    _close(group_advantages(r, 2)[0], [-1 / S2, 1 / S2])
    adv, frac = group_advantages(r, 2, std_eps=0.05)
    _close(adv, [0, 0])
    _close(frac, 1.0)


def test_group_advantages_detaches_rewards():
    r = torch.tensor([1., 2., 3., 5.], requires_grad=True)
    assert not group_advantages(r, 2)[0].requires_grad


# --- GRPO --------------------------------------------------------------------------------------

# G = 2, rewards [1, 0] -> A = [+1, -1] with the population std (the hand computations below
# use it; the default unbiased std gives +-1/sqrt2, tested above).
# logp_old = 0, so ratio = exp(logp):
#   row 0 (A=+1), ratios [1.5, 0.9, 0.7]: -min(r, clip(r, .8, 1.2)) = [-1.2 (cut), -0.9, -0.7]
#   row 1 (A=-1), ratios [0.5, 1.1, 1.3]: -min(-r, -clip(r)) = [0.8 (cut), 1.1, 1.3]
# token_mean = (-2.8 + 3.2) / 6 = 0.4 / 6; clip cut on 2 of 6 tokens (0.7 and 1.3 are outside the
# range but the unclipped term is the minimum there); ratio mean = 6 / 6 = 1.
RATIOS = torch.tensor([[1.5, 0.9, 0.7], [0.5, 1.1, 1.3]])
R10 = torch.tensor([1., 0.])
POP = dict(std='population')


def test_grpo_value_and_clip_frac_by_hand():
    out = GRPOLoss(clip_eps=0.2, **POP)(RATIOS.log(), torch.zeros(2, 3), R10, 2)
    _close(out['loss'], 0.4 / 6)
    _close(out['clip_frac'], 2 / 6)
    _close(out['ratio_mean'], 1.0)
    _close(out['adv_abs_mean'], 1.0)
    _close(out['frac_zero_std'], 0.0)
    _close(out['loss_surrogate'], 0.4 / 6)
    # approx_kl = mean(r - 1 - log r)
    _close(out['approx_kl'], (RATIOS - 1 - RATIOS.log()).mean())
    assert not out['clip_frac'].requires_grad


def test_grpo_clip_eps_high():
    # upper clip 1.3: row 0 token 0 becomes -min(1.5, 1.3) = -1.3 (still cut); row 1 token 2:
    # clip(1.3) = 1.3, no cut. loss = (-1.3 - 0.9 - 0.7 + 0.8 + 1.1 + 1.3) / 6 = 0.3 / 6
    out = GRPOLoss(clip_eps=0.2, clip_eps_high=0.3, **POP)(RATIOS.log(), torch.zeros(2, 3), R10, 2)
    _close(out['loss'], 0.3 / 6)
    _close(out['clip_frac'], 2 / 6)


def test_grpo_gradient_only_through_unclipped_tokens():
    logp = RATIOS.log().requires_grad_()
    GRPOLoss(**POP)(logp, torch.zeros(2, 3), R10, 2)['loss'].backward()
    # d/dlogp of -r*A/6 = -r*A/6 where unclipped, 0 where cut
    _close(logp.grad, [[0, -0.9 / 6, -0.7 / 6], [0, 1.1 / 6, 1.3 / 6]])


def test_grpo_token_mean_vs_seq_mean_with_mask():
    # ratio 1 on valid tokens -> per-token loss -A: row 0 [-1, -1, -1], row 1 [+1, masked, masked]
    # (masked tokens carry a huge ratio e^5 that must not count)
    logp = torch.tensor([[0., 0., 0.], [0., 5., 5.]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    tok = GRPOLoss(aggregation='token_mean', **POP)(logp, torch.zeros(2, 3), R10, 2, mask=mask)
    seq = GRPOLoss(aggregation='seq_mean', **POP)(logp, torch.zeros(2, 3), R10, 2, mask=mask)
    _close(tok['loss'], (-3 + 1) / 4)  # mean over the 4 valid tokens
    _close(seq['loss'], (-1 + 1) / 2)  # mean of the sequence means
    _close(tok['ratio_mean'], 1.0)
    _close(tok['clip_frac'], 0.0)


def _toy_policy_logp(logits, tokens):
    """(N, L) log-probs of `tokens` under position-wise logits (L, V) shared by all rollouts."""
    logp = logits.log_softmax(-1)  # (L, V)
    return logp.gather(1, tokens.T).T


TOKENS = torch.tensor([[0, 1], [2, 2], [1, 0]])  # one group of G=3


@pytest.mark.parametrize('loss', [GRPOLoss(), ListwiseRankLoss(),
                                  ListwiseRankLoss(objective='plackett_luce'),
                                  PairwiseRankLoss(beta=1.0)])
def test_one_sgd_step_raises_the_best_sample_and_lowers_the_worst(loss):
    torch.manual_seed(0)
    logits = torch.nn.Parameter(0.1 * torch.randn(2, 3))
    rewards = torch.tensor([1.0, 0.0, 0.5])
    before = _toy_policy_logp(logits, TOKENS).detach()
    loss(_toy_policy_logp(logits, TOKENS), before, rewards, 3)['loss'].backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    after = _toy_policy_logp(logits, TOKENS).detach()
    assert after[0].sum() > before[0].sum()  # highest reward
    assert after[1].sum() < before[1].sum()  # lowest reward


def test_grpo_second_epoch_reuses_logp_old():
    """Inner epochs: same logp_old, moved logp -> the ratio is no longer 1 and the clip engages."""
    logp_old = torch.zeros(2, 3)
    first = GRPOLoss()(logp_old.clone(), logp_old, R10, 2)
    _close(first['ratio_mean'], 1.0)
    _close(first['clip_frac'], 0.0)
    second = GRPOLoss()(RATIOS.log(), logp_old, R10, 2)
    assert second['clip_frac'] > 0


# --- listwise ----------------------------------------------------------------------------------

def test_listwise_softmax_ce_by_hand():
    # r = [0, ln2, ln3] -> softmax(r) = [1, 2, 3] / 6; s (sum over 2 tokens) = [0, 0, ln2]
    # -> log_softmax(s) = log([1, 1, 2] / 4).
    # loss = -(1/6 ln(1/4) + 2/6 ln(1/4) + 3/6 ln(1/2)) = ln2 + 0.5 ln2 = 1.5 ln2
    r = torch.tensor([0., LN(2), LN(3)])
    logp = torch.tensor([[0., 0.], [0., 0.], [0.5 * LN(2), 0.5 * LN(2)]])
    out = ListwiseRankLoss(length_normalise=False)(logp, torch.zeros(3, 2), r, 3)
    _close(out['loss'], 1.5 * LN(2))
    # tau=2 with doubled rewards gives the same target
    out = ListwiseRankLoss(tau=2.0, length_normalise=False)(logp, torch.zeros(3, 2), 2 * r, 3)
    _close(out['loss'], 1.5 * LN(2))
    # length_normalise -> s = [0, 0, ln2 / 2] -> log_softmax = s - ln(2 + sqrt2)
    out = ListwiseRankLoss()(logp, torch.zeros(3, 2), r, 3)
    z = LN(2 + math.sqrt(2))
    _close(out['loss'], -(1 / 6 * -z + 2 / 6 * -z + 3 / 6 * (0.5 * LN(2) - z)))


def test_listwise_softmax_ce_at_start_is_log_g_and_averages_groups():
    # first epoch: logp == logp_old -> s = 0 -> CE against uniform = ln G for every group
    logp = torch.randn(6, 4)
    out = ListwiseRankLoss()(logp, logp.clone(), torch.arange(6.), 3)
    _close(out['loss'], LN(3))
    _close(out['rank_corr'], 0.0)  # all scores tied


def test_listwise_plackett_luce_by_hand():
    # r = [1, 3, 2] -> order (desc) = [1, 2, 0]; exp(s) = [3, 1, 2]
    # NLL = [-s1 + ln(1 + 2 + 3)] + [-s2 + ln(2 + 3)] + [-s0 + ln 3] = ln6 + (ln5 - ln2) + 0 = ln15
    r = torch.tensor([1., 3., 2.])
    logp = torch.tensor([[LN(3)], [0.], [LN(2)]])
    out = ListwiseRankLoss(objective='plackett_luce')(logp, torch.zeros(3, 1), r, 3)
    _close(out['loss'], LN(15))
    # Spearman: ranks of s = [2, 0, 1], of r = [0, 2, 1] -> centred [1,-1,0] . [-1,1,0] / 2 = -1
    _close(out['rank_corr'], -1.0)


def test_listwise_beta_and_reference_ref():
    # with reference='ref', s = beta * (logp - logp_ref); logp_old is ignored
    r = torch.tensor([1., 3., 2.])
    logp = torch.tensor([[LN(3)], [0.], [LN(2)]])
    loss = ListwiseRankLoss(objective='plackett_luce', reference='ref', beta=2.0)
    assert loss.needs_logp_ref and not ListwiseRankLoss().needs_logp_ref
    # s = 2 * (1.5 logp - logp) = logp, the scores of the hand case above
    out = loss(1.5 * logp, torch.randn(3, 1), r, 3, logp_ref=logp)
    _close(out['loss'], LN(15))
    with pytest.raises(ValueError, match="reference='ref'\\) needs logp_ref"):
        loss(logp, logp, r, 3)


def test_listwise_rank_corr_with_ties():
    # s = [0, 1, 2, 2], r = [0, 1, 2, 3]: ranks of s with ties = [0, 1, 2.5, 2.5],
    # centred a = [-1.5, -0.5, 1, 1], b = [-1.5, -0.5, .5, 1.5]: a.b = 2.25+.25+.5+1.5 = 4.5,
    # |a|^2 = 2.25+.25+1+1 = 4.5, |b|^2 = 5 -> 4.5 / sqrt(22.5)
    logp = torch.tensor([[0.], [1.], [2.], [2.]])
    out = ListwiseRankLoss(length_normalise=False)(logp, torch.zeros(4, 1), torch.arange(4.), 4)
    _close(out['rank_corr'], 4.5 / math.sqrt(22.5))


# --- pairwise ----------------------------------------------------------------------------------

# G = 4, r = [1.0, 0.5, 0.0, 0.8], margin 0.4: valid pairs (r_i > r_j + 0.4):
#   (0,1) gap .5, (0,2) gap 1.0, (1,2) gap .5, (3,2) gap .8; excluded by the margin: (0,3) gap .2,
#   (3,1) gap .3. Scores s = [0.5, 0, 1, -1] -> s_i - s_j = 0.5, -0.5, -1, -2.
#   loss = mean(-log sigmoid(d)) = mean(softplus(-d)); pair_acc = 1/4 (only (0,1) is right).
R4 = torch.tensor([1.0, 0.5, 0.0, 0.8])
S4 = torch.tensor([[0.5], [0.], [1.], [-1.]])


def test_pairwise_value_with_margin_by_hand():
    out = PairwiseRankLoss(beta=1.0, margin=0.4)(S4, torch.zeros(4, 1), R4, 4)
    expected = (_softplus(-0.5) + _softplus(0.5) + _softplus(1.0) + _softplus(2.0)) / 4
    _close(out['loss'], expected)
    _close(out['pair_acc'], 0.25)
    _close(out['num_pairs'], 4)
    # beta 0.5 halves every difference; margin 0 adds (0,3) d=1.5 and (3,1) d=-1
    out = PairwiseRankLoss(beta=0.5)(S4, torch.zeros(4, 1), R4, 4)
    d = [0.5, -0.5, -1, -2, 1.5, -1]
    _close(out['loss'], sum(_softplus(-0.5 * x) for x in d) / 6)
    _close(out['num_pairs'], 6)
    _close(out['pair_acc'], 2 / 6)


def test_pairwise_max_pairs_keeps_largest_gaps():
    # max_pairs=2 keeps (0,2) gap 1.0 and (3,2) gap .8 -> d = -0.5, -2
    out = PairwiseRankLoss(beta=1.0, margin=0.4, max_pairs=2)(S4, torch.zeros(4, 1), R4, 4)
    _close(out['loss'], (_softplus(0.5) + _softplus(2.0)) / 2)
    _close(out['num_pairs'], 2)


def test_pairwise_length_normalise_and_mask():
    # two tokens, the second masked out for row 1: s = [mean(1, 3), 0] = [2, 0]
    logp = torch.tensor([[1., 3.], [0., 100.]])
    mask = torch.tensor([[True, True], [True, False]])
    out = PairwiseRankLoss(beta=1.0)(logp, torch.zeros(2, 2), torch.tensor([1., 0.]), 2, mask=mask)
    _close(out['loss'], _softplus(-2.0))
    out = PairwiseRankLoss(beta=1.0, length_normalise=False)(
        logp, torch.zeros(2, 2), torch.tensor([1., 0.]), 2, mask=mask)
    _close(out['loss'], _softplus(-4.0))


def test_pairwise_no_valid_pair_is_zero_with_finite_grads():
    logp = torch.randn(4, 3, requires_grad=True)
    out = PairwiseRankLoss(margin=0.5)(logp, torch.zeros(4, 3), torch.tensor([1., 1.2, 0., .3]), 2)
    assert out['loss'].item() == 0.0
    assert out['num_pairs'].item() == 0 and out['pair_acc'].item() == 0
    out['loss'].backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad == 0).all()


# --- rank weights ------------------------------------------------------------------------------

R6 = torch.tensor([1., 3., 2., 0., 5., 4.])  # two groups of 3


def test_topk_one_is_best_of_g():
    w = TopKSoftmaxWeights(top_k=1, tau=0.3)(R6, 3)
    _close(w, [0, 1, 0, 0, 1, 0])
    assert TopKSoftmaxWeights(top_k=1).select(R6, 3).tolist() == [0, 1, 0, 0, 1, 0]


def test_topk_two_by_hand():
    # group 0 keeps r=3, 2: 2 * softmax([3, 2]) = 2 * [e, 1] / (e + 1); group 1 keeps 5, 4: same
    e = math.e
    hi, lo = 2 * e / (e + 1), 2 / (e + 1)  # 1.4621, 0.5379
    w = TopKSoftmaxWeights(top_k=2, tau=1.0)(R6, 3)
    _close(w, [0, hi, lo, 0, hi, lo])
    _close(w.view(2, 3).sum(1), [2, 2])  # kept weights average 1
    # tau=2 on doubled rewards: same weights; the hook changes tau in place
    weights = TopKSoftmaxWeights(top_k=2, tau=1.0)
    weights.tau = 2.0
    _close(weights(2 * R6, 3), w)


def test_topk_all_with_huge_tau_is_all_ones_and_ties_prefer_lower_index():
    _close(TopKSoftmaxWeights(top_k=3, tau=1e9)(R6, 3), torch.ones(6))
    assert TopKSoftmaxWeights(top_k=1).select(torch.tensor([2., 2.]), 2).tolist() == [True, False]


def test_topk_no_grad_through_weights():
    r = R6.clone().requires_grad_()
    assert not TopKSoftmaxWeights(top_k=2)(r, 3).requires_grad


def test_uniform_weights():
    _close(UniformRankWeights()(R6, 3), torch.ones(6))
    assert UniformRankWeights().select(R6, 2).all()


# --- errors and registry -----------------------------------------------------------------------

def test_error_messages():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match='top_k=5 > group_size=4'):
        TopKSoftmaxWeights(top_k=5)(torch.zeros(8), 4)
    with pytest.raises(ValueError, match='GRPOLoss needs group_size >= 2: advantages are zero '
                                         'with one sample per prompt'):
        GRPOLoss()(x, x, torch.zeros(4), 1)
    with pytest.raises(ValueError, match='4 rollouts do not split into groups of group_size=3'):
        GRPOLoss()(x, x, torch.zeros(4), 3)
    with pytest.raises(ValueError, match='do not split into groups of group_size=4'):
        UniformRankWeights()(torch.zeros(6), 4)
    with pytest.raises(ValueError, match=r'logp_old has shape \(4, 3\) but logp has \(4, 2\)'):
        ListwiseRankLoss()(x, torch.zeros(4, 3), torch.zeros(4), 2)
    with pytest.raises(ValueError, match=r'rewards must be \(N,\) = \(4,\)'):
        PairwiseRankLoss()(x, x, torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r'mask has shape \(4, 1\)'):
        GRPOLoss()(x, x, torch.zeros(4), 2, mask=torch.ones(4, 1))
    with pytest.raises(ValueError, match="aggregation must be 'token_mean' or 'seq_mean'"):
        GRPOLoss(aggregation='sum')
    with pytest.raises(ValueError, match='tau must be > 0'):
        TopKSoftmaxWeights(tau=0)


def test_registered_and_built_from_config():
    assert isinstance(RANK_LOSSES.build(dict(type='GRPOLoss', clip_eps=0.1)), GRPOLoss)
    for name in ('ListwiseRankLoss', 'PairwiseRankLoss'):
        assert name in RANK_LOSSES.module_dict
    w = RANK_WEIGHTS.build(dict(type='TopKSoftmaxWeights', top_k=2, tau=4.0))
    assert w.tau == 4.0 and 'UniformRankWeights' in RANK_WEIGHTS.module_dict
