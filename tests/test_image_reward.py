"""ImageReward: the official ImageReward.pt key layout (names and shapes, full size, meta tensors),
tiny random weights with the same key names loaded strictly from a file, the score against an
independent computation (timm's ViT + BERT cross-attention written out by hand), and
bert-base-uncased tokenization as transformers does it."""
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from rankekit.registry import REWARDS
from rankekit.rewards import ImageReward
from rankekit.rewards.image_reward import (SCORE_MEAN, SCORE_STD, TINY_VOCAB, WordPieceTokenizer)
from rankekit.utils.weights import WeightsFileError

pytestmark = pytest.mark.filterwarnings('ignore:ImageReward\\(.*RANDOM weights')
VISION = dict(image_size=48, patch_size=16, width=48, layers=2, heads=2)
TEXT = dict(width=32, layers=2, heads=2, intermediate=64, max_positions=40)
PROMPTS = ['a red circle on the left', 'Two dogs, playing!', 'x']


def official_manifest(vocab=30524, vision_layers=24, text_layers=12):
    """(key, shape) of THUDM/ImageReward's ImageReward.pt, from its code (ImageReward.py,
    models/BLIP: BLIP_Pretrain(vit='large', image_size=224), med_config.json, MLP(768))."""
    v, t, n = 1024, 768, 197  # ViT-L width, BERT width, 14 x 14 patches + [CLS]
    keys = {'blip.visual_encoder.cls_token': (1, 1, v), 'blip.visual_encoder.pos_embed': (1, n, v),
            'blip.visual_encoder.patch_embed.proj.weight': (v, 3, 16, 16),
            'blip.visual_encoder.patch_embed.proj.bias': (v,),
            'blip.visual_encoder.norm.weight': (v,), 'blip.visual_encoder.norm.bias': (v,)}
    for i in range(vision_layers):
        block = f'blip.visual_encoder.blocks.{i}.'
        for name, shape in (('norm1', (v,)), ('norm2', (v,)), ('attn.qkv', (3 * v, v)),
                            ('attn.proj', (v, v)), ('mlp.fc1', (4 * v, v)),
                            ('mlp.fc2', (v, 4 * v))):
            keys[block + name + '.weight'] = shape
            keys[block + name + '.bias'] = shape[:1]
    emb = 'blip.text_encoder.embeddings.'
    keys.update({emb + 'position_ids': (1, 512), emb + 'word_embeddings.weight': (vocab, t),
                 emb + 'position_embeddings.weight': (512, t), emb + 'LayerNorm.weight': (t,),
                 emb + 'LayerNorm.bias': (t,)})
    for i in range(text_layers):
        layer = f'blip.text_encoder.encoder.layer.{i}.'
        linear = {'attention.self.query': (t, t), 'attention.self.key': (t, t),
                  'attention.self.value': (t, t), 'attention.output.dense': (t, t),
                  'crossattention.self.query': (t, t), 'crossattention.self.key': (t, v),
                  'crossattention.self.value': (t, v), 'crossattention.output.dense': (t, t),
                  'intermediate.dense': (3072, t), 'output.dense': (t, 3072)}
        norms = ('attention.output.LayerNorm', 'crossattention.output.LayerNorm',
                 'output.LayerNorm')
        for name, shape in [*linear.items(), *((n, (t,)) for n in norms)]:
            keys[layer + name + '.weight'] = shape
            keys[layer + name + '.bias'] = shape[:1]
    for name, shape in (('blip.vision_proj', (256, v)), ('blip.text_proj', (256, t)),
                        ('mlp.layers.0', (1024, t)), ('mlp.layers.2', (128, 1024)),
                        ('mlp.layers.4', (64, 128)), ('mlp.layers.6', (16, 64)),
                        ('mlp.layers.7', (1, 16))):
        keys[name + '.weight'], keys[name + '.bias'] = shape, shape[:1]
    return keys


def test_official_key_layout_full_size(tmp_path):
    """The released architecture, built on the meta device with a bert-base-uncased-sized
    vocabulary (30522 tokens + [DEC] + [ENC]), has exactly the official keys and shapes."""
    vocab = tmp_path / 'vocab.txt'
    vocab.write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]',
                                *(f'w{i}' for i in range(30517))]) + '\n')
    with torch.device('meta'):
        reward = ImageReward(pretrained=None, tokenizer=str(vocab))
    ours = {k: tuple(v.shape) for k, v in reward.state_dict().items()}
    manifest = official_manifest()
    assert len(manifest) == 625
    assert sorted(set(ours) ^ set(manifest)) == []
    assert {k: s for k, s in ours.items() if manifest[k] != s} == {}


def tiny(seed=0, **kwargs) -> ImageReward:
    torch.manual_seed(seed)
    kwargs.setdefault('pretrained', None)
    reward = ImageReward(tokenizer=None, vision_cfg=VISION, text_cfg=TEXT, **kwargs)
    if kwargs['pretrained'] is None:
        with torch.no_grad():  # non-trivial values everywhere (LayerNorms, zero-init biases)
            for param in reward.parameters():
                param.normal_(0, 0.2)
    return reward


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A tiny ImageReward saved as the official file is: a plain state_dict."""
    path = tmp_path_factory.mktemp('weights') / 'ImageReward.pt'
    torch.save(tiny().state_dict(), path)
    return path


def _layer_norm(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[prefix + '.weight'], state[prefix + '.bias'], eps)


def _linear(x, state, prefix):
    return x @ state[prefix + '.weight'].T + state[prefix + '.bias']


def _heads_attention(q, k, v, heads, mask=None):
    b, lq, d = q.shape
    split = lambda t: t.view(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, lq, d)


def reference_scores(reward, images, prompts):
    """ImageReward.score written out: timm's ViT for the image tokens, BERT by hand."""
    from timm.models.vision_transformer import VisionTransformer
    state = {k.removeprefix('blip.'): v for k, v in reward.state_dict().items()}
    vit = VisionTransformer(img_size=48, patch_size=16, embed_dim=48, depth=2, num_heads=2,
                            qkv_bias=True, num_classes=0, global_pool='',
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    vit.load_state_dict({k.removeprefix('visual_encoder.'): v for k, v in state.items()
                         if k.startswith('visual_encoder.')})
    image = vit.forward_features(reward.preprocess(images))
    ids, mask = reward.tokenizer(prompts, 35)
    s = {k.removeprefix('text_encoder.'): v for k, v in state.items()}
    x = s['embeddings.word_embeddings.weight'][ids] + s['embeddings.position_embeddings.weight'][
        torch.arange(ids.shape[1])]
    x = _layer_norm(x, s, 'embeddings.LayerNorm', 1e-12)
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(TEXT['layers']):
        p = f'encoder.layer.{i}.'
        for part, m in (('attention', additive), ('crossattention', None)):
            context = x if part == 'attention' else image  # self-, then cross-attention
            q = _linear(x, s, p + part + '.self.query')
            k, v = (_linear(context, s, p + part + f'.self.{n}') for n in ('key', 'value'))
            out = _heads_attention(q, k, v, TEXT['heads'], m)
            out = _linear(out, s, p + part + '.output.dense')
            x = _layer_norm(out + x, s, p + part + '.output.LayerNorm', 1e-12)
        hidden = F.gelu(_linear(x, s, p + 'intermediate.dense'))
        x = _layer_norm(_linear(hidden, s, p + 'output.dense') + x, s, p + 'output.LayerNorm',
                        1e-12)
    head = x[:, 0]
    for i in (0, 2, 4, 6, 7):  # no activations between the layers (ImageReward's MLP)
        head = _linear(head, state, f'mlp.layers.{i}')
    return ((head - SCORE_MEAN) / SCORE_STD).squeeze(-1)


def test_scores_match_the_reference_and_load_strictly(checkpoint):
    images = torch.rand(3, 3, 56, 64, generator=torch.Generator().manual_seed(1))
    reward = REWARDS.build(dict(type='ImageReward', pretrained=str(checkpoint), tokenizer=None,
                                vision_cfg=VISION, text_cfg=TEXT))
    assert reward.name == 'image_reward' and reward.differentiable
    scores = reward(images, PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(scores, reference_scores(reward, images, PROMPTS),
                                   rtol=1e-5, atol=1e-5)
    # the file was loaded: another seed's random init gives other scores
    assert not torch.allclose(tiny(seed=1)(images, PROMPTS), scores)
    # a prompt longer than 35 tokens is cut; padding does not change a prompt's score
    long = ' '.join(['red'] * 50)
    assert reward.tokenizer([long], 35)[1].sum() == 35
    torch.testing.assert_close(reward(images[2:], ['x']), scores[2:])


def test_gradient_flows_and_the_reward_stays_frozen(checkpoint):
    reward = tiny(pretrained=str(checkpoint))
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    reward(x, PROMPTS[:2]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in reward.parameters())
    assert not tiny(differentiable=False)(x, PROMPTS[:2]).requires_grad


def test_missing_or_wrong_files_are_one_clear_error(checkpoint, tmp_path):
    with pytest.raises(WeightsFileError) as info:  # before the model is built
        ImageReward(pretrained=str(tmp_path / 'ImageReward.pt'))
    message = str(info.value)
    assert f'ImageReward checkpoint not found: {tmp_path / "ImageReward.pt"}' in message
    assert 'THUDM/ImageReward' in message and 'data/weights/ImageReward.pt' in message
    with pytest.raises(WeightsFileError) as info:
        ImageReward(pretrained=None, tokenizer=str(tmp_path))
    message = str(info.value)
    assert f'BERT vocabulary not found: {tmp_path / "vocab.txt"}' in message
    assert 'google-bert/bert-base-uncased' in message and 'set tokenizer=' in message
    with pytest.raises(WeightsFileError, match=r'does not fit ImageReward .*shape mismatch.*'
                                               r'blip.visual_encoder.pos_embed'):
        ImageReward(pretrained=str(checkpoint), tokenizer=None, text_cfg=TEXT,
                    vision_cfg=dict(VISION, image_size=64))
    with pytest.raises(ValueError, match=r"vision_cfg has unknown keys \['depth'\]"):
        ImageReward(pretrained=None, tokenizer=None, vision_cfg=dict(depth=2))


def test_tokenizer_matches_transformers(tmp_path):
    transformers = pytest.importorskip('transformers')
    words = ['a', 'red', 'circle', 'on', 'the', 'left', '##s', 'two', 'dog', 'play', '##ing',
             'cafe', 'deja', 'vu', '!', ',', '-', 'un', '##believ', '##able', '.', '(', ')', 'x']
    (tmp_path / 'vocab.txt').write_text('\n'.join([*TINY_VOCAB[:5], *words]) + '\n')
    theirs = transformers.BertTokenizer.from_pretrained(str(tmp_path))
    theirs.add_special_tokens({'bos_token': '[DEC]', 'additional_special_tokens': ['[ENC]']})
    ours = WordPieceTokenizer.from_file(str(tmp_path))
    assert len(ours) == len(theirs) == 31
    for prompt in ['A red circle on the LEFT', 'Two dogs, playing!', 'Café déjà-vu',
                   'unbelievable.', 'x' * 120, '東京 dog', 'a\tred\u00a0circle\x00',
                   'red [CLS] dog [MASK]', '(a)  red', 'redx dogs', 'red ' * 20]:
        expected = theirs(prompt, padding='max_length', truncation=True, max_length=12)
        ids, mask = ours([prompt], 12)
        assert ids[0].tolist() == expected['input_ids'], prompt
        assert mask[0].tolist() == expected['attention_mask'], prompt
