"""PickScore: the official key layout (a transformers CLIPModel with the laion ViT-H-14 sizes)
loads strictly into open_clip's ViT-H-14; a tiny random CLIPModel with the same key names,
saved as the Hugging Face folder / file, scores as transformers computes it."""
import warnings

import pytest
import torch

from rankekit.registry import REWARDS
from rankekit.rewards import PickScore
from rankekit.rewards.pickscore import hf_clip_to_open_clip
from rankekit.utils.weights import WeightsFileError, state_dict_report

transformers = pytest.importorskip('transformers')

# the tiny open_clip architecture of test_rewards.py and the transformers CLIPConfig of the
# same sizes (GELU, LayerNorm eps 1e-5, the argmax/EOS pooling of the laion config)
TINY_NAME = 'rankekit-test-tiny-clip'
TINY_CFG = dict(embed_dim=16,
                vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1))
PROMPTS = ['a red circle', 'a red circle', 'a blue square on the left']


def hf_config(text: dict, vision: dict, projection_dim: int):
    return transformers.CLIPConfig(
        text_config=dict(hidden_act='gelu', layer_norm_eps=1e-5, vocab_size=49408,
                         eos_token_id=2, **text),
        vision_config=dict(hidden_act='gelu', layer_norm_eps=1e-5, **vision),
        projection_dim=projection_dim)


TINY_HF = dict(text=dict(hidden_size=16, intermediate_size=64, num_attention_heads=2,
                         num_hidden_layers=1, max_position_embeddings=16),
               vision=dict(hidden_size=32, intermediate_size=128, num_attention_heads=2,
                           num_hidden_layers=1, image_size=16, patch_size=8),
               projection_dim=16)
# config.json of yuvalkirstain/PickScore_v1 = laion/CLIP-ViT-H-14-laion2B-s32B-b79K's sizes
PICKSCORE_HF = dict(text=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                              num_hidden_layers=24, max_position_embeddings=77),
                    vision=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16,
                                num_hidden_layers=32, image_size=224, patch_size=14),
                    projection_dim=1024)


def _features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected feature
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.fixture(scope='module')
def hf_tiny():
    torch.manual_seed(0)
    model = transformers.CLIPModel(hf_config(**TINY_HF)).eval()
    with torch.no_grad():  # a logit scale that is not the init value, visible in the scores
        model.logit_scale.fill_(3.0)
    return model


@pytest.fixture(scope='module')
def hf_folder(hf_tiny, tmp_path_factory):
    """The tiny model as the Hugging Face repo holds it: model.safetensors in a folder, with the
    position_ids buffers older transformers versions saved."""
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp('PickScore_v1')
    state = {k: v.contiguous() for k, v in hf_tiny.state_dict().items()}
    state['text_model.embeddings.position_ids'] = torch.arange(16)[None]
    state['vision_model.embeddings.position_ids'] = torch.arange(5)[None]
    save_file(state, str(folder / 'model.safetensors'))
    return folder


def tiny_pickscore(pretrained, **kwargs) -> PickScore:
    torch.manual_seed(123)  # another random init: the file must overwrite every weight
    return PickScore(pretrained=str(pretrained), model_name=TINY_NAME, model_cfg=TINY_CFG,
                     **kwargs)


def test_official_layout_loads_strictly_into_open_clip_vit_h():
    """Every key of a transformers CLIPModel of PickScore's config maps to exactly one open_clip
    ViT-H-14 key of the same shape (meta tensors: nothing is allocated)."""
    import open_clip
    with torch.device('meta'):
        hf = transformers.CLIPModel(hf_config(**PICKSCORE_HF))
        clip = open_clip.CLIP(**open_clip.get_model_config('ViT-H-14'))
    official = hf.state_dict()
    assert len(official) == 910 and official['logit_scale'].shape == ()
    converted = hf_clip_to_open_clip(official)
    report = state_dict_report(clip, converted)
    assert report == dict(missing=[], unexpected=[], mismatched=[])
    assert len(converted) == len(clip.state_dict()) == 686  # the count HPSv2's file has too


def test_scores_match_transformers(hf_tiny, hf_folder):
    reward = REWARDS.build(dict(type='PickScore', pretrained=str(hf_folder),
                                model_name=TINY_NAME, model_cfg=TINY_CFG))
    assert reward.name == 'pickscore' and reward.differentiable
    images = torch.rand(3, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    scores = reward(images, PROMPTS)
    # independently: transformers' CLIPModel on the same pixels and token ids
    pixels = reward.preprocess(images)
    tokens = reward.tokenizer(PROMPTS)
    with torch.no_grad():
        img = _features(hf_tiny.get_image_features(pixel_values=pixels))
        txt = _features(hf_tiny.get_text_features(input_ids=tokens))
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    expected = hf_tiny.logit_scale.exp() * (img * txt).sum(-1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    # the preprocessing is the laion processor's: shortest side to 16, centre crop, OpenAI stats
    assert reward.preprocess_cfg['mean'] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert reward.preprocess_cfg['resize_mode'] == 'shortest' and pixels.shape[-2:] == (16, 16)
    # the folder's weights file, given directly, loads the same
    single = tiny_pickscore(hf_folder / 'model.safetensors')
    torch.testing.assert_close(single(images, PROMPTS), scores)


def test_gradient_flows_and_the_reward_stays_frozen(hf_folder):
    reward = tiny_pickscore(hf_folder)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    reward(x, PROMPTS[:2]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in reward.parameters())
    frozen = tiny_pickscore(hf_folder, differentiable=False)
    assert not frozen(torch.rand(2, 3, 16, 16, requires_grad=True), PROMPTS[:2]).requires_grad


def test_wrong_or_missing_file_is_one_clear_error(hf_tiny, tmp_path):
    missing = tmp_path / 'nope'
    with pytest.raises(WeightsFileError) as info:
        PickScore(pretrained=str(missing))  # before ViT-H-14 is built
    message = str(info.value)
    assert f'PickScore weights (CLIP ViT-H-14) not found: {missing}' in message
    assert 'yuvalkirstain/PickScore_v1' in message and 'data/weights/PickScore_v1' in message
    # a key the conversion does not know, and a missing one, are named by the strict load
    state = dict(hf_tiny.state_dict())
    state['text_model.extra_head.weight'] = torch.zeros(2)
    del state['vision_model.encoder.layers.0.self_attn.k_proj.weight']
    torch.save(state, tmp_path / 'bad.bin')
    with pytest.raises(WeightsFileError) as info:
        tiny_pickscore(tmp_path / 'bad.bin')
    message = str(info.value)
    assert 'does not fit' in message and 'text_model.extra_head.weight' in message
    assert 'visual.transformer.resblocks.0.attn.in_proj_weight' in message  # the missing one


def test_random_weights_warn():
    with pytest.warns(UserWarning, match=r'PickScore\(pretrained=None\) has RANDOM weights'):
        reward = REWARDS.build(PickScore.info_example)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert reward(torch.rand(2, 3, 32, 32), ['a', 'b']).shape == (2,)
