"""Anchors (zero at initialisation, hand values), EMA arithmetic, coefficient schedules."""
import math

import pytest
import torch
from torch import nn

from rankekit.anchors import EMAAnchor, KLAnchor, L2Anchor, kl_estimate
from rankekit.engine.schedules import Schedule, build_schedule
from rankekit.models.ema import ema_update_, frozen_copy
from rankekit.registry import ANCHORS


def test_kl_estimators_by_hand():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])  # d = [0.5, -1.0]
    assert kl_estimate(logp, ref, 'k1').item() == pytest.approx((0.5 - 1.0) / 2)
    assert kl_estimate(logp, ref, 'k2').item() == pytest.approx((0.125 + 0.5) / 2)
    k3 = ((math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0)) / 2
    assert kl_estimate(logp, ref, 'k3').item() == pytest.approx(k3)
    mask = torch.tensor([[1.0, 0.0]])
    assert kl_estimate(logp, ref, 'k2', mask).item() == pytest.approx(0.125)
    with pytest.raises(ValueError, match="estimator 'k4'"):
        kl_estimate(logp, ref, 'k4')


@pytest.mark.parametrize('estimator', ['k1', 'k2', 'k3'])
def test_kl_anchor_is_zero_at_initialisation_with_gradient(estimator):
    logp = torch.randn(3, 5, requires_grad=True)
    anchor = KLAnchor(estimator=estimator)
    value = anchor(logp, logp.detach().clone(), kind='policy')
    assert value.item() == 0.0
    value.backward()
    assert logp.grad is not None


def test_kl_anchor_on_decoder_is_gaussian_kl():
    x = torch.zeros(1, 3, 2, 2, requires_grad=True)
    ref = torch.full((1, 3, 2, 2), 0.5)
    assert KLAnchor(sigma=0.5)(x, ref, kind='decoder').item() == pytest.approx(0.25 / 0.5)
    assert KLAnchor()(ref.clone(), ref, kind='decoder').item() == 0.0


def test_ema_anchor_decoder_and_policy():
    images = torch.rand(2, 3, 4, 4)
    perceptual = lambda a, b: (a - b).abs().flatten(1).mean(1)  # noqa: E731
    anchor = EMAAnchor(weight=10.0)
    assert anchor.reference == 'ema'
    assert anchor(images, images.clone(), kind='decoder', perceptual=perceptual).item() == 0.0
    shifted = images + 0.1
    assert anchor(shifted, images, kind='decoder', perceptual=perceptual).item() == \
        pytest.approx(0.1, abs=1e-6)
    assert EMAAnchor(distance='mse')(shifted, images, kind='decoder').item() == \
        pytest.approx(0.01, abs=1e-6)
    with pytest.raises(ValueError, match='needs the model.s perceptual loss'):
        anchor(images, images, kind='decoder')
    logp = torch.randn(2, 3)
    assert EMAAnchor()(logp, logp.clone(), kind='policy').item() == 0.0


def test_l2_anchor_plain_and_fisher_by_hand():
    online, reference = nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
    anchor = L2Anchor()
    assert anchor(online, reference).item() == 0.0
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[2.0, 0.0]]))  # diff^2 = [1, 4]
    assert anchor(online, reference).item() == pytest.approx(2.5)
    fisher = L2Anchor(fisher=True, fisher_steps=2)
    fisher.bind(online)
    for grad in ([[1.0, 0.0]], [[3.0, 0.0]]):  # squared grads [1, 0] and [9, 0]: mean [5, 0]
        online.weight.grad = torch.tensor(grad)
        fisher.observe_gradients(online)
    online.weight.grad = torch.tensor([[100.0, 100.0]])
    fisher.observe_gradients(online)  # past fisher_steps: ignored
    # F normalised to mean 1: [2, 0] -> penalty mean([2*1, 0*4]) = 1
    assert fisher(online, reference).item() == pytest.approx(1.0)
    assert 'fisher_state.weight' in fisher.state_dict()


def test_anchor_errors():
    with pytest.raises(ValueError, match="reference 'old' is unknown"):
        KLAnchor(reference='old')
    with pytest.raises(ValueError, match="kind must be 'policy' or 'decoder'"):
        KLAnchor()(torch.zeros(1), torch.zeros(1), kind='text')
    unbound = L2Anchor(fisher=True)
    module = nn.Linear(1, 1)
    module.weight.grad = torch.ones(1, 1)
    with pytest.raises(RuntimeError, match='was not bound'):
        unbound.observe_gradients(module)
    assert ANCHORS.build(dict(type='KLAnchor', estimator='k3')).estimator == 'k3'


def test_ema_update_arithmetic():
    online, ema = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        online.weight.fill_(1.0)
        online.bias.fill_(2.0)
        ema.weight.fill_(0.0)
        ema.bias.fill_(0.0)
    ema_update_(ema, online, decay=0.9)
    assert torch.allclose(ema.weight, torch.full((2, 2), 0.1))
    ema_update_(ema, online, decay=0.9)  # 0.9 * 0.1 + 0.1 * 1
    assert torch.allclose(ema.weight, torch.full((2, 2), 0.19))
    assert torch.allclose(ema.bias, torch.full((2,), 0.38))
    frozen = frozen_copy(online)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_ema_update_copies_buffers():
    online, ema = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    online.running_mean.fill_(3.0)
    ema_update_(ema, online, decay=0.99)
    assert torch.equal(ema.running_mean, online.running_mean)


def test_schedules_by_hand():
    assert Schedule('constant', 2.0)(50, 100) == 2.0
    lin = Schedule('linear', start=1.0, end=0.0, begin=10, stop=20)
    assert [lin(i, 100) for i in (0, 10, 15, 20, 30)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    cos = build_schedule(dict(type='cosine', start=4.0, end=1.0, stop=0.2))  # fraction of 100
    assert cos(0, 100) == 4.0 and cos(20, 100) == 1.0 and cos(50, 100) == 1.0
    assert cos(10, 100) == pytest.approx(2.5)  # halfway: the mean
    assert build_schedule(0.05)(7, 10) == 0.05
    with pytest.raises(ValueError, match="kind 'exp' is unknown"):
        build_schedule(dict(type='exp', start=1, end=0))
    with pytest.raises(ValueError, match='unknown keys'):
        build_schedule(dict(type='linear', start=1, end=0, until=3))
