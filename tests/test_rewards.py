"""Rewards: BaseReward checks, ClipScore (open_clip, tiny random architecture), CallableReward,
and the toy CLIP pretraining model."""
import math
import re
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rankekit.registry import MODELS, REWARDS
from rankekit.rewards import BaseReward, CallableReward, ClipScore
from rankekit.rewards.clip_score import clip_preprocess, register_open_clip_config
from rankekit.toy import pretrain_clip  # noqa: F401  registers ClipPretrainModel in MODELS
from rankekit.utils.weights import WeightsFileError

# a tiny open_clip architecture: 16x16 images, 2 layers each side
TINY_NAME = 'rankekit-test-tiny-clip'
TINY_CFG = dict(embed_dim=16,
                vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1))
PROMPTS = ['a red circle', 'a red circle', 'a blue square', 'a large green cross on the left']


def tiny_clip(**kwargs) -> ClipScore:
    torch.manual_seed(0)
    return ClipScore(model_name=TINY_NAME, model_cfg=TINY_CFG, **kwargs)


@pytest.fixture(scope='module')
def reward() -> ClipScore:
    return tiny_clip()


@pytest.fixture(scope='module')
def images() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# --- BaseReward ---------------------------------------------------------------------------------
class ConstReward(BaseReward):
    """Test reward returning fixed values."""

    def __init__(self, value, **kwargs):
        super().__init__(**kwargs)
        self.value = value
        self.lin = torch.nn.Linear(2, 2)
        self.drop = torch.nn.Dropout(0.5)
        self.freeze()

    def score(self, images, prompts):
        return self.value


def test_base_reward_name_and_frozen():
    r = ConstReward([1.0])
    assert r.name == 'const_reward' and not r.differentiable
    assert ConstReward([1.0], name='mine', differentiable=True).name == 'mine'
    assert all(not p.requires_grad for p in r.parameters())
    r.train()
    assert not r.training and not r.drop.training  # stays in eval under a training parent
    from rankekit.rewards.base import snake_case
    assert snake_case('ClipScore') == 'clip_score' and snake_case('HPSv2Reward') == 'hp_sv2_reward'


def test_check_output_conversions_and_errors():
    r = ConstReward(None, name='x')
    out = r.check_output([1, 2.5], 2)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 2.5]
    assert r.check_output(np.array([3.0, 4.0]), 2).tolist() == [3.0, 4.0]
    assert r.check_output(torch.tensor([1, 2]), 2).dtype == torch.float32
    with pytest.raises(ValueError,
                       match=r"reward 'x' returned shape \(2, 1\).*one score per image"):
        r.check_output(torch.zeros(2, 1), 2)
    with pytest.raises(ValueError, match=r'shape \(3,\) for 2 images'):
        r.check_output([1.0, 2.0, 3.0], 2)
    # NaN passes through: the trainer counts and skips it (test_rank_e_model)
    assert math.isnan(r.check_output([1.0, float('nan')], 2)[1].item())
    with pytest.raises(TypeError, match='not a list of numbers'):
        r.check_output(['a', 'b'], 2)
    with pytest.raises(TypeError, match='returned str'):
        r.check_output('1', 1)


def test_forward_checks_inputs():
    r = ConstReward([1.0, 2.0], name='x')
    assert r(torch.rand(2, 3, 8, 8), ['a', 'b']).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match=r'got 2 images but 1 prompts'):
        r(torch.rand(2, 3, 8, 8), ['a'])
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        r(torch.rand(2, 8, 8), ['a', 'b'])
    with pytest.raises(ValueError, match='float images'):
        r(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ['a', 'b'])
    with pytest.raises(ValueError, match='single string'):
        r(torch.rand(1, 3, 8, 8), 'a')


# --- ClipScore ----------------------------------------------------------------------------------
def test_clip_score_matches_hand_computation(reward, images):
    scores = reward(images, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    clip = reward.clip
    pixels = reward.preprocess(images)
    with torch.no_grad():
        img = clip.encode_image(pixels)
        txt = clip.encode_text(reward.tokenizer(PROMPTS))
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    expected = 100.0 * (img * txt).sum(-1)
    torch.testing.assert_close(scores.detach(), expected, rtol=1e-5, atol=1e-4)
    # identical prompts on the same image give identical scores; the cache holds unique prompts
    assert reward(images[:1].repeat(2, 1, 1, 1), PROMPTS[:2]).unique().numel() == 1
    assert set(reward._text_cache) == set(PROMPTS)


def test_clip_score_preprocess_by_hand(reward):
    cfg = reward.preprocess_cfg
    mean = torch.tensor(cfg['mean']).view(1, 3, 1, 1)
    std = torch.tensor(cfg['std']).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(reward.preprocess(x), (x - mean) / std)  # right size: no resize
    # 24x32 (H x W): shortest side 24 -> 16, width 32 -> 21, centre crop columns 2..18
    x = torch.rand(2, 3, 24, 32)
    resized = F.interpolate(x, size=(16, 21), mode='bicubic', align_corners=False,
                            antialias=True).clamp(0, 1)
    torch.testing.assert_close(reward.preprocess(x), (resized[..., 2:18] - mean) / std)
    out = clip_preprocess(x, 16, (0, 0, 0), (1, 1, 1), 'bilinear', 'squash')
    torch.testing.assert_close(out, F.interpolate(x, size=(16, 16), mode='bilinear',
                                                  align_corners=False, antialias=True))
    out = clip_preprocess(torch.ones(1, 3, 8, 16), 16, (0, 0, 0), (1, 1, 1), 'bilinear', 'longest')
    assert out.shape == (1, 3, 16, 16)  # 8x16 -> 8x16 fits, padded 4 rows above and below
    assert out[0, :, :4].abs().sum() == 0 and out[0, :, 12:].abs().sum() == 0
    torch.testing.assert_close(out[0, :, 4:12], torch.ones(3, 8, 16))
    with pytest.raises(ValueError, match='resize_mode'):
        clip_preprocess(x, 16, (0, 0, 0), (1, 1, 1), 'bicubic', 'stretch')


def test_clip_score_gradient_flows_to_images(reward):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)  # resized inside: the resize is differentiable
    reward(x, PROMPTS[:2]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.parameters())  # the reward itself stays frozen
    frozen = tiny_clip(differentiable=False)
    y = torch.rand(2, 3, 16, 16, requires_grad=True)
    assert not frozen(y, PROMPTS[:2]).requires_grad


def test_clip_score_prefix_and_scale(reward, images):
    prefixed = tiny_clip(prefix='A photo depicts ', scale=2.5, name='clip_eval')
    assert prefixed.name == 'clip_eval'
    direct = reward(images, ['A photo depicts ' + p for p in PROMPTS])
    torch.testing.assert_close(prefixed(images, PROMPTS), direct / 100.0 * 2.5)
    assert not torch.allclose(reward(images, PROMPTS), direct)


def test_clip_score_loads_saved_weights(reward, images, tmp_path, monkeypatch):
    path = tmp_path / 'tiny_clip.pt'
    torch.save(reward.clip.state_dict(), path)
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = ClipScore(model_name=TINY_NAME, model_cfg=TINY_CFG, pretrained=str(path))
    torch.testing.assert_close(loaded(images, PROMPTS), reward(images, PROMPTS))
    # toy://name resolves to the package's toy asset folder
    from rankekit.utils import toy_assets as assets
    monkeypatch.setattr(assets, 'ASSET_DIR', tmp_path)
    shipped = ClipScore(model_name=TINY_NAME, model_cfg=TINY_CFG, pretrained='toy://tiny_clip.pt')
    torch.testing.assert_close(shipped(images, PROMPTS), reward(images, PROMPTS))
    with pytest.raises(FileNotFoundError, match="toy asset 'no_clip.pt' is missing"):
        ClipScore(model_name=TINY_NAME, model_cfg=TINY_CFG, pretrained='toy://no_clip.pt')
    # a file of another architecture is refused with the key report
    other = dict(TINY_CFG, embed_dim=8)
    with pytest.raises(WeightsFileError, match='does not fit.*shape mismatch'):
        ClipScore(model_name=TINY_NAME + '-8', model_cfg=other, pretrained=str(path))


def test_clip_score_text_cache_cleared_on_new_weights(images):
    r = tiny_clip()
    before = r(images, PROMPTS)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in r.clip.state_dict().items()}
    r.clip.load_state_dict(state)
    r.load_state_dict(r.state_dict())  # through the reward: the hook drops cached text features
    assert not r._text_cache
    assert not torch.allclose(before, r(images, PROMPTS))


def test_clip_score_missing_file_and_hub_names(tmp_path):
    missing = tmp_path / 'nope' / 'ViT-B-32.pt'
    with pytest.raises(WeightsFileError) as err:
        ClipScore(model_name='ViT-B-32', pretrained=str(missing))
    text = str(err.value)
    assert str(missing) in text and "'ViT-B-32'" in text and 'openai' in text
    assert 'huggingface.co/timm/vit_base_patch32_clip_224.openai' in text
    with pytest.raises(WeightsFileError, match=str(tmp_path / 'x.pt')):
        tiny_clip(pretrained=str(tmp_path / 'x.pt'))
    with pytest.raises(ValueError, match="pretrained='openai' names weights on a hub.*never down"):
        ClipScore(model_name='ViT-B-32', pretrained='openai')
    with pytest.raises(ValueError, match='never downloads'):
        ClipScore(model_name='hf-hub:timm/vit_base_patch32_clip_224.openai')
    with pytest.raises(ValueError, match='never downloads'):
        ClipScore(model_name='ViT-B-32', pretrained='hf-hub:laion/CLIP-ViT-B-32')
    with pytest.raises(ValueError, match="unknown open_clip architecture 'no-such-clip'"):
        ClipScore(model_name='no-such-clip')
    with pytest.raises(ValueError, match='not an open_clip pretrained tag'):
        ClipScore(model_name=TINY_NAME, model_cfg=TINY_CFG, weights_tag='openai')


def test_weights_tag_sets_quick_gelu_and_preprocessing():
    # OpenAI's ViT-B/32 was trained with QuickGELU: the tag switches it on (random weights here)
    plain = ClipScore(model_name='ViT-B-32')
    tagged = ClipScore(model_name='ViT-B-32', weights_tag='openai')
    def gelu(r):
        return type(r.clip.visual.transformer.resblocks[0].mlp.gelu).__name__
    assert gelu(plain) == 'GELU' and gelu(tagged) == 'QuickGELU'
    assert tagged.preprocess_cfg['size'] == (224, 224)
    assert tagged.preprocess_cfg['mean'] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    custom = tiny_clip(preprocess_cfg=dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(custom.preprocess(x), x * 2 - 1)
    with pytest.raises(ValueError, match=r"preprocess_cfg has unknown keys \['means'\]"):
        tiny_clip(preprocess_cfg=dict(means=(0.5, 0.5, 0.5)))


def test_register_open_clip_config_rules():
    register_open_clip_config(TINY_NAME, TINY_CFG)  # same config again: fine
    with pytest.raises(ValueError, match="built-in architectures"):
        register_open_clip_config('ViT-B-32', TINY_CFG)
    with pytest.raises(ValueError, match=r"lacks \['text_cfg'\]"):
        register_open_clip_config('x', dict(embed_dim=4, vision_cfg={}))


def test_registry_builds_info_examples():
    for name in ('ClipScore', 'CallableReward'):
        cls = REWARDS.get(name)
        r = REWARDS.build(cls.info_example)
        assert isinstance(r, BaseReward)
        assert r(torch.rand(2, 3, 32, 32), ['a red circle', 'a blue square']).shape == (2,)
    model = MODELS.build(MODELS.get('ClipPretrainModel').info_example)
    assert model.clip.visual.image_size == (32, 32)


# --- CallableReward -----------------------------------------------------------------------------
@pytest.fixture()
def user_module(monkeypatch):
    mod = types.ModuleType('rankekit_test_user_rewards')

    def redness(images, prompts, gain=1.0):
        return gain * images[:, 0].mean(dim=(1, 2))

    mod.redness = redness
    mod.as_list = lambda images, prompts: [float(len(p)) for p in prompts]
    mod.bad_shape = lambda images, prompts: torch.zeros(len(images), 1)
    mod.bad_shape.__name__ = 'bad_shape'
    mod.not_callable = 42

    class Holder:
        @staticmethod
        def count(images, prompts):
            return np.arange(len(images), dtype=np.float64)

    mod.Holder = Holder
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


def test_callable_reward_happy_path(user_module):
    x = torch.rand(3, 3, 8, 8)
    r = REWARDS.build(dict(type='CallableReward', fn='rankekit_test_user_rewards:redness',
                           kwargs=dict(gain=2.0)))
    assert r.name == 'redness'  # the function's name by default
    torch.testing.assert_close(r(x, ['a'] * 3), 2.0 * x[:, 0].mean(dim=(1, 2)))
    assert not r.differentiable
    r2 = CallableReward(fn='rankekit_test_user_rewards:as_list', name='length')
    assert r2.name == 'length' and r2(x, ['a', 'bb', 'ccc']).tolist() == [1.0, 2.0, 3.0]
    r3 = CallableReward(fn='rankekit_test_user_rewards:Holder.count')
    assert r3(x, ['a'] * 3).tolist() == [0.0, 1.0, 2.0] and r3.name == 'count'
    # a callable passed directly, differentiable
    r4 = CallableReward(fn=lambda images, prompts: images.sum(dim=(1, 2, 3)), differentiable=True)
    y = x.clone().requires_grad_(True)
    r4(y, ['a'] * 3).sum().backward()
    torch.testing.assert_close(y.grad, torch.ones_like(y))


@pytest.mark.parametrize('spec, error, message', [
    ('no_colon_here', ValueError, "fn must look like 'package.module:function'"),
    ('a:b:c', ValueError, "fn must look like 'package.module:function'"),
    (':func', ValueError, "fn must look like 'package.module:function'"),
    (42, ValueError, "fn must look like 'package.module:function'"),
    ('rankekit_no_such_module_xyz:f', ImportError,
     "module 'rankekit_no_such_module_xyz' could not be imported"),
    ('rankekit_test_user_rewards:missing', AttributeError, "has no attribute 'missing'"),
    ('rankekit_test_user_rewards:Holder.nope', AttributeError, "has no attribute 'nope'"),
    ('rankekit_test_user_rewards:not_callable', TypeError, 'is a int, not a function'),
])
def test_callable_reward_bad_specs(user_module, spec, error, message):
    with pytest.raises(error, match=message.replace('(', r'\(').replace('.', r'\.')):
        CallableReward(fn=spec)


def test_callable_reward_import_error_is_chained(monkeypatch, tmp_path):
    (tmp_path / 'rankekit_broken_plugin.py').write_text('raise RuntimeError("boom")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match='rankekit_broken_plugin.*RuntimeError: boom') as err:
        CallableReward(fn='rankekit_broken_plugin:f')
    assert isinstance(err.value.__cause__, RuntimeError)


def test_callable_reward_wrong_output_shape(user_module):
    r = CallableReward(fn='rankekit_test_user_rewards:bad_shape')
    with pytest.raises(ValueError, match=r"reward 'bad_shape' returned shape \(2, 1\)"):
        r(torch.rand(2, 3, 8, 8), ['a', 'b'])


# --- toy CLIP pretraining -----------------------------------------------------------------------
def _toy_batch(n=8):
    from mmengine.dataset import default_collate
    from rankekit.datasets import ToyShapes
    ds = ToyShapes(num_samples=n, seed=3)
    return default_collate([ds[i] for i in range(n)])


def test_positive_mask_and_loss_by_hand():
    from rankekit.toy.pretrain_clip import multi_positive_info_nce, positive_mask, scene_keys
    attrs = torch.tensor([[[0, 1, 0, 2], [-1, -1, -1, -1]],
                          [[0, 1, 0, 2], [-1, -1, -1, -1]],
                          [[1, 1, 0, 0], [2, 2, 1, 1]],
                          [[2, 2, 1, 1], [1, 1, 0, 0]]])  # same scene as item 2, objects swapped
    mask = positive_mask(scene_keys(attrs, ['a', 'b', 'c', 'd']))
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False],
                             [False, False, True, True], [False, False, True, True]]
    assert positive_mask(scene_keys(None, ['x', 'y', 'x'])).tolist()[0] == [True, False, True]
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    eye = torch.eye(2, dtype=torch.bool)
    expected = -0.5 * (math.log(math.exp(2) / (math.exp(2) + 1))
                       + math.log(math.exp(3) / (math.exp(3) + math.e)))
    assert multi_positive_info_nce(logits, eye).item() == pytest.approx(expected, rel=1e-6)
    both = torch.ones(2, 2, dtype=torch.bool)  # uniform target over both columns
    lse0, lse1 = math.log(math.exp(2) + 1), math.log(math.e + math.exp(3))
    expected = 0.5 * (0.5 * ((lse0 - 2) + (lse0 - 0)) + 0.5 * ((lse1 - 1) + (lse1 - 3)))
    assert multi_positive_info_nce(logits, both).item() == pytest.approx(expected, rel=1e-6)


def test_clip_pretrain_two_steps_and_export(tmp_path):
    from mmengine.optim import OptimWrapper
    torch.manual_seed(0)
    model = MODELS.build(dict(type='ClipPretrainModel', model_name=TINY_NAME, model_cfg=TINY_CFG))
    batch = _toy_batch()
    optim_wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))
    before = model.clip.visual.conv1.weight.clone()
    logs = [model.train_step(batch, optim_wrapper) for _ in range(2)]
    for log_vars in logs:
        assert {'loss/contrastive', 'acc/i2t'} <= set(log_vars)
        assert torch.isfinite(log_vars['loss']) and 0 <= log_vars['acc/i2t'] <= 1
    # at init, the loss is about log(B) (8 items, few duplicates)
    assert abs(logs[0]['loss/contrastive'].item() - math.log(8)) < 1.0
    assert not torch.equal(before, model.clip.visual.conv1.weight)
    # the exported state_dict is what ClipScore loads: same scores as the trained model
    path = tmp_path / 'clip.pt'
    model.save_clip(str(path))
    reward = ClipScore(model_name=TINY_NAME, model_cfg=TINY_CFG, pretrained=str(path))
    model.eval()
    img, txt = model(batch['image'], batch['caption'])
    torch.testing.assert_close(reward(batch['image'], batch['caption']),
                               100 * (img * txt).sum(-1).detach(), rtol=1e-5, atol=1e-4)
    # a runner checkpoint of the model exports to the same file content
    runner_ckpt, exported = tmp_path / 'iter_2.pth', tmp_path / 'exported.pt'
    torch.save(dict(meta=dict(iter=2), state_dict=model.state_dict()), runner_ckpt)
    pretrain_clip.export_clip_weights(str(runner_ckpt), str(exported))
    a, b = torch.load(path), torch.load(exported)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_retrieval_counts_same_scene_as_right():
    from rankekit.datasets import ToyShapes
    from rankekit.toy.pretrain_clip import evaluate_retrieval, scene_keys

    ds = ToyShapes('val', num_samples=40, max_objects=1, seed=5)
    items = [ds[i] for i in range(len(ds))]
    scene_ids = {}
    for it in items:
        scene_ids.setdefault(scene_keys(it['attributes'][None], [it['caption']])[0], len(scene_ids))
    caption_scene = {it['caption']: scene_ids[scene_keys(it['attributes'][None], [''])[0]]
                     for it in items}
    image_scene = {it['image'].sum().item(): caption_scene[it['caption']] for it in items}

    class OracleClip(torch.nn.Module):
        """Features = one-hot scene ids: every caption finds an image of its scene."""

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def encode_text(self, tokens, normalize=True):
            return F.one_hot(tokens, 64).float()

        def encode_image(self, images, normalize=True):
            ids = [image_scene[img.sum().item()] for img in images]
            return F.one_hot(torch.tensor(ids), 64).float()

    oracle = types.SimpleNamespace(
        clip=OracleClip(), preprocess=lambda x: x,
        tokenizer=lambda captions: torch.tensor([caption_scene[c] for c in captions]))
    report = evaluate_retrieval(oracle, ds, batch_size=16, details=True)
    assert report['t2i'] == 1.0 and report['i2t'] == 1.0 and report['num'] == 40
    assert math.isnan(report['t2i_two_objects'])
    # an oracle that maps every caption to scene 0: right only for captions of scene 0
    oracle.tokenizer = lambda captions: torch.zeros(len(captions), dtype=torch.long)
    share = sum(caption_scene[it['caption']] == 0 for it in items) / len(items)
    assert evaluate_retrieval(oracle, ds, batch_size=16) == pytest.approx(share)


# --- duck-typed rewards: a registered nn.Module / callable without BaseReward -------------------
@pytest.fixture()
def duck_rewards():
    """Third-party rewards registered in REWARDS without subclassing BaseReward."""
    names = []

    def register(obj):
        REWARDS.register_module(module=obj, force=True)
        names.append(obj.__name__)
        return obj

    @register
    class PlainBrightness(torch.nn.Module):
        """A plain module: mean pixel value, with a (frozen) scale parameter."""

        def __init__(self, gain: float = 1.0):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.tensor(gain))

        def forward(self, images, prompts):
            return self.gain * images.mean(dim=(1, 2, 3))

    @register
    class DiffBrightness(PlainBrightness):
        """Declares itself differentiable."""
        differentiable = True

    @register
    class CallableLength:
        """A plain class whose instances are callables."""

        def __call__(self, images, prompts):
            return [float(len(p)) for p in prompts]

    @register
    def plain_redness(images, prompts, gain=1.0):
        return gain * images[:, 0].mean(dim=(1, 2))

    @register
    class OneArgModule(torch.nn.Module):
        def forward(self, images):
            return images.mean(dim=(1, 2, 3))

    @register
    class NotCallable:
        pass

    @register
    class BadFlag(PlainBrightness):
        differentiable = 'yes'

    yield
    for name in names:
        REWARDS.module_dict.pop(name, None)


def test_plain_module_reward_is_wrapped(duck_rewards):
    from rankekit.rewards import RewardCombiner
    x = torch.rand(3, 3, 8, 8)
    combiner = RewardCombiner([dict(type='PlainBrightness', gain=2.0),
                               dict(type='DiffBrightness', name='bright2'),
                               dict(type='CallableLength'), dict(type='plain_redness', gain=3.0)])
    assert combiner.names == ['plain_brightness', 'bright2', 'callable_length', 'plain_redness']
    assert [r.differentiable for r in combiner.rewards] == [False, True, False, False]
    assert all(isinstance(r, BaseReward) for r in combiner.rewards)
    _, raw = combiner.score(x, ['a', 'bb', 'ccc'])
    torch.testing.assert_close(raw['plain_brightness'], 2.0 * x.mean(dim=(1, 2, 3)))
    assert raw['callable_length'].tolist() == [1.0, 2.0, 3.0]
    torch.testing.assert_close(raw['plain_redness'], 3.0 * x[:, 0].mean(dim=(1, 2)))
    # frozen like any reward; the differentiable one passes gradients to the images
    assert not any(p.requires_grad for p in combiner.parameters())
    y = x.clone().requires_grad_(True)
    combiner.differentiable_score(y, ['a'] * 3).sum().backward()
    torch.testing.assert_close(y.grad, torch.full_like(y, 1 / (3 * 8 * 8)))
    # REWARDS.build gives a BaseReward too; config name / differentiable override the object's
    built = REWARDS.build(dict(type='PlainBrightness', differentiable=True, name='mine'))
    assert isinstance(built, BaseReward) and built.name == 'mine' and built.differentiable


def test_plain_module_in_a_model_config_is_checked_and_built(duck_rewards):
    from rankekit.models.validation import check_ranke_config
    from tiny_components import tiny_model_cfg
    cfg = tiny_model_cfg(rewards=[dict(type='PlainBrightness', name='b'),
                                  dict(type='RednessReward')])
    check_ranke_config(cfg)  # name= is accepted for a class that does not take it
    model = MODELS.build(cfg)
    assert model.rewards.names == ['b', 'redness_reward']
    with pytest.raises(TypeError, match=r"model.rewards\[0\] \(PlainBrightness\): unknown key "
                                        r"'gian'. Did you mean 'gain'"):
        check_ranke_config(tiny_model_cfg(rewards=[dict(type='PlainBrightness', gian=2.0)]))


@pytest.mark.parametrize('type_, phrase', [
    ('OneArgModule', r"OneArgModule.forward takes \(images\)"),
    ('NotCallable', 'a NotCallable cannot be called'),
    ('BadFlag', r"declares differentiable='yes'; it must be True or False"),
])
def test_reward_that_breaks_the_contract_is_one_clear_line(duck_rewards, type_, phrase):
    from rankekit.rewards import RewardCombiner
    from rankekit.rewards.adapter import RewardContractError
    with pytest.raises(RewardContractError) as info:
        RewardCombiner([dict(type='RednessReward'), dict(type=type_)])
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"model.rewards[1]: '{type_}' (test_rewards.duck_rewards.")
    if type_ != 'BadFlag':
        assert 'is not a reward: a reward is a BaseReward subclass, or an nn.Module or ' \
               'callable called as reward(images, prompts)' in message
    assert re.search(phrase, message), message


def test_plain_module_reward_loads_pretrained_into_the_module(duck_rewards, tmp_path):
    from rankekit.rewards import build_reward
    path = tmp_path / 'gain.pt'
    torch.save({'gain': torch.tensor(5.0)}, path)
    reward = build_reward(dict(type='PlainBrightness', pretrained=str(path)), 'model.rewards[0]')
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(reward(x, ['a', 'b']), 5.0 * x.mean(dim=(1, 2, 3)))
    with pytest.raises(TypeError, match=r"model.rewards\[0\].pretrained: CallableLength is not "
                                        r'an nn.Module'):
        build_reward(dict(type='CallableLength', pretrained=str(path)), 'model.rewards[0]')
