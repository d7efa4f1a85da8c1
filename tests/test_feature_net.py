"""ToyFeatureNet, its pretraining, InceptionFeatures, the perceptual losses, AttributeReward."""
import math
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankekit.evaluation.feature_extractors import InceptionFeatures, _build_inception, _fid_blocks
from rankekit.losses.perceptual import LPIPSLoss, ToyPerceptualLoss
from rankekit.registry import FEATURE_EXTRACTORS, LOSSES, MODELS, REWARDS
from rankekit.rewards.attribute_reward import AttributeReward
from rankekit.toy.feature_net import (ToyFeatureNet, attribute_probs_from_logits,
                                      match_from_logits, slot_targets)
from rankekit.toy.pretrain_feature_net import (FeatureNetPretrainModel, augment_images,
                                               evaluate_feature_net, save_feature_net)
from rankekit.utils.weights import WeightsFileError

SMALL = dict(width=8, feat_dim=16)
VOCAB = dict(num_colours=6, num_shapes=4, num_sizes=2, num_positions=5)
LEFT, RIGHT, TOP, BOTTOM, CENTER = range(5)
RED, GREEN, BLUE = 0, 1, 2
CIRCLE, SQUARE = 0, 1
SMALL_SIZE, LARGE = 0, 1
NONE_ROW = [-1, -1, -1, -1]


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return fn(*args, **kwargs)


def small_net(seed=0, **kw):
    torch.manual_seed(seed)
    return ToyFeatureNet(**SMALL, **kw).eval()


def log_probs(n_classes, probs):
    """Logits whose softmax is exactly ``probs`` on the listed classes (rest share the
    remainder)."""
    p = torch.full((n_classes,), (1 - sum(probs.values())) / (n_classes - len(probs)))
    for k, v in probs.items():
        p[k] = v
    return p.log()


def hand_logits():
    """Slot logits of one image: left = large red circle, center = small blue square.

    Probabilities: P(occupied) 0.8 at left, 0.9 at center, 0.1 elsewhere; left: P(red)=0.7,
    P(circle)=0.6, P(large)=0.9; center: P(blue)=0.5, P(square)=0.75, P(small)=0.8.
    """
    occ = torch.stack([log_probs(2, {1: 0.1})] * 5)
    occ[LEFT], occ[CENTER] = log_probs(2, {1: 0.8}), log_probs(2, {1: 0.9})
    colour = torch.stack([log_probs(6, {GREEN: 0.5})] * 5)
    shape = torch.stack([log_probs(4, {SQUARE: 0.4})] * 5)
    size = torch.stack([log_probs(2, {SMALL_SIZE: 0.6})] * 5)
    colour[LEFT], shape[LEFT], size[LEFT] = (log_probs(6, {RED: 0.7}), log_probs(4, {CIRCLE: 0.6}),
                                             log_probs(2, {LARGE: 0.9}))
    colour[CENTER], shape[CENTER], size[CENTER] = (log_probs(6, {BLUE: 0.5}),
                                                   log_probs(4, {SQUARE: 0.75}),
                                                   log_probs(2, {SMALL_SIZE: 0.8}))
    return dict(occupancy=occ[None], colour=colour[None], shape=shape[None], size=size[None])


class StubNet(ToyFeatureNet):
    """A ToyFeatureNet whose predictions are fixed logits (repeated over the batch)."""

    def __init__(self, logits):
        super().__init__(**SMALL, **VOCAB)
        self.fixed = logits

    def predict(self, images):
        return {k: v.expand(len(images), *v.shape[1:]) * (1 + 0 * images.sum())
                for k, v in self.fixed.items()}


# ------------------------------------------------------------------------------------------------
# ToyFeatureNet
# ------------------------------------------------------------------------------------------------
def test_shapes_at_32_and_64_and_vocabulary_from_dataset():
    net = small_net()
    assert net.num_classes == dict(colour=6, shape=4, size=2, occupancy=2)
    assert net.num_positions == 5 and net.feature_dim == 16
    for side in (32, 64):
        x = torch.rand(3, 3, side, side)
        assert net.features(x).shape == (3, 16)
        logits = net.predict(x)
        assert {k: tuple(v.shape) for k, v in logits.items()} == dict(
            colour=(3, 5, 6), shape=(3, 5, 4), size=(3, 5, 2), occupancy=(3, 5, 2))
        acts = net.activations(x)
        assert [a.shape[1] for a in acts] == [8, 16, 32, 32]
        assert [a.shape[-1] for a in acts] == [side, side // 2, side // 4, side // 8]
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        net.features(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match='at least 16x16'):
        net.features(torch.rand(1, 3, 8, 8))


def test_deterministic_and_batch_independent():
    a, b = small_net(seed=3), small_net(seed=3)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.features(x), b.features(x))
    assert torch.equal(a.features(x), a.features(x))
    # GroupNorm: an image's features do not depend on the rest of the batch
    torch.testing.assert_close(a.features(x[:1]), a.features(x)[:1], atol=1e-6, rtol=1e-5)
    assert not torch.equal(small_net(seed=4).features(x), a.features(x))


def test_pretrained_round_trip_and_errors(tmp_path):
    net = small_net(seed=1)
    path = save_feature_net(net, tmp_path / 'feat.pt')
    loaded = ToyFeatureNet(**SMALL, pretrained=str(path)).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.features(x), net.features(x))
    with pytest.raises(WeightsFileError, match='shape mismatches'):
        ToyFeatureNet(width=16, feat_dim=16, pretrained=str(path))
    with pytest.raises(WeightsFileError, match=r'ToyFeatureNet weights not found: .*nope\.pt'):
        ToyFeatureNet(**SMALL, pretrained=str(tmp_path / 'nope.pt'))


def test_attribute_probs_and_match_by_hand():
    logits = hand_logits()
    left = [RED, CIRCLE, LARGE, LEFT]
    center = [BLUE, SQUARE, SMALL_SIZE, CENTER]
    attrs = torch.tensor([[left, NONE_ROW],
                          [left, center],
                          [center, left],                       # order of objects is irrelevant
                          [[GREEN, CIRCLE, LARGE, LEFT], NONE_ROW],      # wrong colour
                          [[RED, CIRCLE, LARGE, -1], NONE_ROW],          # no position given
                          [[-1, SQUARE, -1, CENTER], NONE_ROW]])         # only shape + position
    batch = {k: v.expand(len(attrs), *v.shape[1:]) for k, v in logits.items()}
    p_left = 0.8 * 0.7 * 0.6 * 0.9
    p_center = 0.9 * 0.5 * 0.75 * 0.8
    green_left = 0.8 * 0.06 * 0.6 * 0.9  # P(green) at left = (1 - 0.7) / 5
    expected = torch.tensor([p_left, p_left * p_center, p_left * p_center, green_left, p_left,
                             0.9 * 0.75])
    torch.testing.assert_close(attribute_probs_from_logits(batch, attrs), expected)
    mean = torch.tensor([(0.8 + 0.7 + 0.6 + 0.9) / 4,
                         (0.8 + 0.7 + 0.6 + 0.9 + 0.9 + 0.5 + 0.75 + 0.8) / 8,
                         (0.8 + 0.7 + 0.6 + 0.9 + 0.9 + 0.5 + 0.75 + 0.8) / 8,
                         (0.8 + 0.06 + 0.6 + 0.9) / 4, (0.8 + 0.7 + 0.6 + 0.9) / 4,
                         (0.9 + 0.75) / 2])
    torch.testing.assert_close(attribute_probs_from_logits(batch, attrs, 'mean'), mean)
    assert match_from_logits(batch, attrs).tolist() == [True, True, True, False, True, True]
    # exact_count: the image holds two objects, so one-object prompts fail it
    assert match_from_logits(batch, attrs, exact_count=True).tolist() == [
        False, True, True, False, False, False]
    # through a net: same numbers
    net = StubNet(logits)
    images = torch.rand(len(attrs), 3, 32, 32)
    torch.testing.assert_close(net.attribute_probs(images, attrs), expected)
    assert net.match_attributes(images, attrs).tolist() == [True, True, True, False, True, True]
    assert net.predicted_slots(images[:1]).tolist() == [[
        [RED, CIRCLE, LARGE], [-1] * 3, [-1] * 3, [-1] * 3, [BLUE, SQUARE, SMALL_SIZE]]]


def test_attribute_errors():
    batch = hand_logits()
    with pytest.raises(ValueError, match=r'names no attribute'):
        attribute_probs_from_logits(batch, torch.tensor([[NONE_ROW, NONE_ROW]]))
    with pytest.raises(ValueError, match='colour id 6 is out of range'):
        match_from_logits(batch, torch.tensor([[[6, 0, 0, 0], NONE_ROW]]))
    with pytest.raises(ValueError, match='2 rows but there are 1 images'):
        match_from_logits(batch, torch.tensor([[[0, 0, 0, 0], NONE_ROW]] * 2))
    with pytest.raises(ValueError, match="'product' or 'mean'"):
        attribute_probs_from_logits(batch, torch.tensor([[[0, 0, 0, 0], NONE_ROW]]), 'max')


def test_slot_targets():
    attrs = torch.tensor([[[RED, CIRCLE, LARGE, RIGHT], [BLUE, SQUARE, SMALL_SIZE, TOP]],
                          [[GREEN, SQUARE, SMALL_SIZE, CENTER], NONE_ROW]])
    t = slot_targets(attrs, 5)
    assert t['occupancy'].tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 0, 1]]
    assert t['colour'].tolist() == [[-100, RED, BLUE, -100, -100], [-100] * 4 + [GREEN]]
    assert t['size'][0].tolist() == [-100, LARGE, SMALL_SIZE, -100, -100]
    with pytest.raises(ValueError, match='share a position'):
        slot_targets(torch.tensor([[[0, 0, 0, 1], [1, 1, 1, 1]]]), 5)


# ------------------------------------------------------------------------------------------------
# pretraining
# ------------------------------------------------------------------------------------------------
def test_pretrain_two_steps_finite_and_predict():
    from mmengine.dataset import default_collate
    from mmengine.optim import OptimWrapper

    from rankekit.datasets.toy_shapes import ToyShapes
    torch.manual_seed(0)
    model = FeatureNetPretrainModel(net=dict(type='ToyFeatureNet', **SMALL))
    data = default_collate([ToyShapes('train', num_samples=8)[i] for i in range(8)])
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))
    before = [p.clone() for p in model.parameters()]
    for _ in range(2):
        log = model.train_step(data, optim)
        assert set(log) == {'loss', 'loss/ce', 'acc/attr'}
        assert math.isfinite(log['loss/ce'].item()) and log['loss/ce'].item() > 0
        assert 0 <= log['acc/attr'].item() <= 1
        # the loss is the sum of four cross-entropies: near 4 heads' chance level at the start
        assert log['loss'].item() == log['loss/ce'].item()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    preds = model.val_step(data)
    assert len(preds) == 8 and preds[0]['slots'].shape == (5, 3)
    assert isinstance(preds[0]['match'], bool)
    with pytest.raises(ValueError, match='unknown keys'):
        FeatureNetPretrainModel(net=dict(type='ToyFeatureNet', **SMALL), augment=dict(blurr=1))


def test_initial_loss_is_chance_level():
    """With zero head weights every head is uniform: loss = ln2 + ln6 + ln4 + ln2 exactly."""
    model = FeatureNetPretrainModel(net=dict(type='ToyFeatureNet', **SMALL), augment=None)
    for layer in model.net.heads.values():
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    attrs = torch.tensor([[[RED, CIRCLE, LARGE, LEFT], NONE_ROW]] * 2)
    out = model(torch.rand(2, 3, 32, 32), attrs, mode='loss')
    expected = math.log(2) + math.log(6) + math.log(4) + math.log(2)
    assert out['loss/ce'].item() == pytest.approx(expected, rel=1e-6)


def test_augment_range_determinism_and_identity():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = augment_images(x, prob=1.0, generator=torch.Generator().manual_seed(1))
    b = augment_images(x, prob=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)
    # small artefacts: the mean absolute change stays well below a colour change
    assert (a - x).abs().mean() < 0.35
    assert torch.equal(augment_images(x, prob=0.0, generator=torch.Generator().manual_seed(1)), x)


def test_evaluate_feature_net_by_hand():
    """Stub net always predicts: left = large red circle, center = small blue square."""
    net = StubNet(hand_logits())
    images = torch.zeros(3, 3, 32, 32)
    attrs = torch.tensor([[[RED, CIRCLE, LARGE, LEFT], [BLUE, SQUARE, SMALL_SIZE, CENTER]],
                          [[RED, SQUARE, LARGE, LEFT], NONE_ROW],  # shape wrong; count wrong
                          [[GREEN, CIRCLE, SMALL_SIZE, TOP], NONE_ROW]])  # top is empty
    dataset = [dict(image=images[i], attributes=attrs[i]) for i in range(3)]
    r = evaluate_feature_net(net, dataset, batch_size=2)
    # 4 objects; at the (empty) top slot the stub's argmaxes are green, square, small
    assert r['num_images'] == 3
    assert r['position'] == pytest.approx(3 / 4)
    assert r['shape'] == pytest.approx(2 / 4)   # a square at left, a circle at top
    assert r['colour'] == pytest.approx(4 / 4)  # top slot argmax = green
    assert r['size'] == pytest.approx(4 / 4)    # top slot argmax = small
    assert r['count'] == pytest.approx(1 / 3) and r['all'] == pytest.approx(1 / 3)
    assert r['attr'] == pytest.approx((3 / 4 + 2 / 4 + 1 + 1) / 4)


# ------------------------------------------------------------------------------------------------
# perceptual losses
# ------------------------------------------------------------------------------------------------
class IdentityActs(nn.Module):
    def activations(self, images):
        return [images]


def test_toy_perceptual_by_hand():
    loss = ToyPerceptualLoss(net=IdentityActs(), reduction='none')
    n = torch.tensor
    red = n([1., -1., -1.])[None, :, None, None].expand(1, 3, 4, 4)      # [0,1]: (1, 0, 0)
    green = n([-1., 1., -1.])[None, :, None, None].expand(1, 3, 4, 4)    # (0, 1, 0)
    yellow = n([1., 1., -1.])[None, :, None, None].expand(1, 3, 4, 4)    # (1, 1, 0)
    out = loss(torch.cat([red, red, red]), torch.cat([green, yellow, red]))
    torch.testing.assert_close(out, n([2.0, 2 - math.sqrt(2), 0.0]))
    mean = ToyPerceptualLoss(net=IdentityActs(), loss_weight=3.0)(torch.cat([red, red]),
                                                                  torch.cat([green, red]))
    torch.testing.assert_close(mean, n(3.0))


def test_toy_perceptual_zero_positive_gradient():
    net = small_net()
    loss = ToyPerceptualLoss(net=net, reduction='none')
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    assert torch.equal(loss(x, x), torch.zeros(3))
    pred = y.clone().requires_grad_(True)
    d = loss(pred, x)
    assert d.shape == (3,) and (d > 0).all()
    d.sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    assert loss.train().net.training is False
    # layers selection and 'mean' reduction
    assert ToyPerceptualLoss(net=net, layers=(0,))(y, x).item() > 0
    torch.testing.assert_close(ToyPerceptualLoss(net=net)(y, x), d.detach().mean())
    with pytest.raises(ValueError, match='same shape'):
        loss(x, x[:2])
    with pytest.raises(ValueError, match='reduction'):
        ToyPerceptualLoss(net=net, reduction='sum')


def test_lpips_missing_and_none_errors(tmp_path):
    with pytest.raises(WeightsFileError) as err:
        LPIPSLoss(net='vgg', backbone_weights=str(tmp_path / 'vgg16.pth'))
    msg = str(err.value)
    assert str(tmp_path / 'vgg16.pth') in msg and 'vgg16 IMAGENET1K_V1' in msg
    with pytest.raises(ValueError, match='needs backbone_weights.*random_backbone=True'):
        LPIPSLoss(net='alex')
    with pytest.raises(ValueError, match="'alex', 'vgg'"):
        LPIPSLoss(net='squeeze', random_backbone=True)


def test_lpips_random_and_local_backbone(tmp_path):
    with pytest.warns(UserWarning, match='not a real perceptual loss'):
        loss = LPIPSLoss(net='alex', random_backbone=True, reduction='none')
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.equal(loss(x, x), torch.zeros(2))
    assert loss(x, y).shape == (2,) and (loss(x, y) > 0).all()
    # the package's calibrated linear layers were loaded (not a random init)
    import lpips
    shipped = torch.load(f'{lpips.__path__[0]}/weights/v0.1/alex.pth', map_location='cpu',
                         weights_only=True)
    assert torch.equal(loss.lpips.lin0.model[1].weight, shipped['lin0.model.1.weight'])
    # a torchvision-format file (features.<i>.*) lands in lpips's slices
    state = {f'features.{k.split(".", 1)[1]}': torch.randn_like(v)
             for k, v in loss.lpips.net.state_dict().items()}
    state['classifier.1.weight'] = torch.zeros(2, 2)  # ignored, as in the real file
    torch.save(state, tmp_path / 'alexnet.pth')
    local = LPIPSLoss(net='alex', backbone_weights=str(tmp_path / 'alexnet.pth'))
    assert torch.equal(getattr(local.lpips.net.slice2, '3').weight, state['features.3.weight'])
    assert torch.equal(getattr(local.lpips.net.slice5, '10').bias, state['features.10.bias'])
    del state['features.8.weight']
    torch.save(state, tmp_path / 'broken.pth')
    with pytest.raises(WeightsFileError, match='1 missing keys .*features.8.weight'):
        LPIPSLoss(net='alex', backbone_weights=str(tmp_path / 'broken.pth'))


# ------------------------------------------------------------------------------------------------
# Inception
# ------------------------------------------------------------------------------------------------
def test_inception_missing_and_none_errors(tmp_path):
    with pytest.raises(WeightsFileError) as err:
        InceptionFeatures(weights_path=str(tmp_path / 'pt_inception.pth'))
    msg = str(err.value)
    for part in (str(tmp_path / 'pt_inception.pth'), 'inception_v3 IMAGENET1K_V1',
                 'pt_inception-2015-12-05', 'put it at'):
        assert part in msg
    with pytest.raises(ValueError, match='needs weights_path'):
        InceptionFeatures()
    with pytest.raises(ValueError, match='variant'):
        InceptionFeatures(random_init=True, variant='tf')


def test_inception_torchvision_file_matches_torchvision_forward(tmp_path):
    from torchvision.models.inception import Inception3
    torch.manual_seed(0)
    ref = Inception3(num_classes=1000, aux_logits=True, transform_input=False, init_weights=True)
    # keeps AuxLogits like the real file
    torch.save(ref.state_dict(), tmp_path / 'inception_v3.pth')
    feats = InceptionFeatures(weights_path=str(tmp_path / 'inception_v3.pth'))
    assert feats.variant == 'torchvision' and feats.feature_dim == 2048
    ref.eval().fc = nn.Identity()
    ref.AuxLogits = None
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(F.interpolate(images, size=(299, 299), mode='bilinear',
                                     align_corners=False) * 2 - 1)
    out = feats(images)
    assert out.shape == (2, 2048)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in feats.parameters()) and not feats.train().training


def test_inception_fid_variant_detected_and_blocks(tmp_path):
    torch.manual_seed(0)
    net = _build_inception('fid', init_weights=True)
    assert net.fc.out_features == 1008
    torch.save(net.state_dict(), tmp_path / 'pt_inception-2015-12-05.pth')
    feats = InceptionFeatures(weights_path=str(tmp_path / 'pt_inception-2015-12-05.pth'))
    assert feats.variant == 'fid'
    x = torch.rand(1, 3, 80, 80, requires_grad=True)
    feats(x).sum().backward()  # differentiable resize + trunk
    assert x.grad.abs().sum() > 0
    # the FID blocks differ from torchvision's only in the pool branch
    from torchvision.models import inception as tv
    fid_a, _, _, fid_e_max = _fid_blocks()
    h = torch.randn(1, 192, 7, 7)
    a_tv, a_fid = tv.InceptionA(192, pool_features=32).eval(), fid_a(192, pool_features=32).eval()
    a_fid.load_state_dict(a_tv.state_dict())
    with torch.no_grad():
        out_tv, out_fid = a_tv(h), a_fid(h)
        assert torch.equal(out_tv[:, :-32], out_fid[:, :-32])
        # interior positions see no padding: equal there; borders average fewer pixels
        assert torch.allclose(out_tv[:, -32:, 1:-1, 1:-1], out_fid[:, -32:, 1:-1, 1:-1], atol=1e-6)
        corner = F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)
        torch.testing.assert_close(out_fid[:, -32:], a_fid.branch_pool(corner))
        e = fid_e_max(64).eval()
        torch.testing.assert_close(e(h[:, :64])[:, -192:],
                                   e.branch_pool(F.max_pool2d(h[:, :64], 3, 1, 1)))


# ------------------------------------------------------------------------------------------------
# AttributeReward
# ------------------------------------------------------------------------------------------------
def test_attribute_reward_equals_hand_product():
    reward = AttributeReward(classifier=StubNet(hand_logits()))
    images = torch.rand(3, 3, 32, 32)
    prompts = ['a large red circle on the left',
               'a large red circle on the left and a small blue square in the center',
               'a small green square at the top']
    p_left = 0.8 * 0.7 * 0.6 * 0.9
    p_center = 0.9 * 0.5 * 0.75 * 0.8
    p_top = 0.1 * 0.5 * 0.4 * 0.6
    torch.testing.assert_close(reward(images, prompts),
                               torch.tensor([p_left, p_left * p_center, p_top]))
    mean = AttributeReward(classifier=StubNet(hand_logits()), mode='mean')
    torch.testing.assert_close(mean(images[:1], prompts[:1]),
                               torch.tensor([(0.8 + 0.7 + 0.6 + 0.9) / 4]))
    assert reward.name == 'attribute_reward' and reward.differentiable
    with pytest.raises(ValueError, match="cannot score prompt 'a photo of a dog'"):
        reward(images[:1], ['a photo of a dog'])
    with pytest.raises(ValueError, match='2 images but 1 prompts'):
        reward(images[:2], prompts[:1])


def test_attribute_reward_gradient_and_frozen():
    reward = quiet(AttributeReward, classifier=dict(type='ToyFeatureNet', **SMALL))
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    scores = reward(images, ['a large red circle on the left'] * 2)
    assert scores.shape == (2,) and ((scores > 0) & (scores < 1)).all()
    scores.sum().backward()
    assert images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in reward.parameters())
    assert not reward.train().training
    with pytest.warns(UserWarning, match='random weights'):
        AttributeReward(classifier=dict(type='ToyFeatureNet', **SMALL))


# ------------------------------------------------------------------------------------------------
# registries and import cost
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('registry,cls', [(FEATURE_EXTRACTORS, ToyFeatureNet),
                                          (FEATURE_EXTRACTORS, InceptionFeatures),
                                          (LOSSES, ToyPerceptualLoss), (LOSSES, LPIPSLoss),
                                          (REWARDS, AttributeReward),
                                          (MODELS, FeatureNetPretrainModel)])
def test_info_examples_build(registry, cls):
    obj = quiet(registry.build, dict(cls.info_example))
    assert type(obj) is cls
    assert cls.__doc__.splitlines()[0].strip()


def test_import_stays_cheap():
    # (mmengine.model, which the pretraining module needs, imports transformers by itself, and
    # with peft installed transformers brings torchvision: only what rankekit adds counts)
    code = ('import sys, rankekit.evaluation, rankekit.losses, rankekit.rewards.attribute_reward\n'
            'heavy = [m for m in ("torchvision", "lpips", "open_clip", "transformers") '
            'if m in sys.modules]\nassert not heavy, heavy\n'
            'import mmengine.model, mmengine.optim\n'
            'before = {m for m in ("torchvision", "lpips", "open_clip") if m in sys.modules}\n'
            'import rankekit.toy.pretrain_feature_net\n'
            'added = {m for m in ("torchvision", "lpips", "open_clip") if m in sys.modules}\n'
            'assert not added - before, added - before')
    subprocess.run([sys.executable, '-c', code], check=True)
