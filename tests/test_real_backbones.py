"""Real-backbone pieces on tiny stand-ins: T5 text encoder (LlamaGen conventions), HPSv2 and
LAION-aesthetic rewards (tiny open_clip files in the official formats), and the edge cases of
the weights loader (LlamaGen containers/prefixes/KV-cache keys, safetensors, sharded folders)."""
import argparse
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankekit.rewards.aesthetic import AESTHETIC_SOURCE, Aesthetic, AestheticMLP
from rankekit.rewards.clip_score import build_open_clip
from rankekit.rewards.hpsv2 import HPSv2
from rankekit.text_encoders.t5 import T5TextEncoder, build_word_tokenizer, clean_caption
from rankekit.utils.weights import (LLAMAGEN_GPT_IGNORE, WeightsFileError, extract_state_dict,
                                    load_model_weights,
                                    load_sharded_state_dict,
                                    load_weights_file)

torch.set_num_threads(1)

# a tiny open_clip architecture: 16x16 images, one layer per tower
CLIP_NAME = 'rankekit-test-real-backbones-clip'
CLIP_CFG = dict(embed_dim=16,
                vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1))
OPENAI_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
WORDS = ['a', 'red', 'blue', 'green', 'circle', 'square', 'on', 'the', 'left', 'right', 'large',
         'photo', 'of', 'cat']


def random_clip(seed: int):
    torch.manual_seed(seed)
    model, tokenizer = build_open_clip(CLIP_NAME, model_cfg=CLIP_CFG)
    return model.eval(), tokenizer


# =============================================================================================
# T5 text encoder
# =============================================================================================
@pytest.fixture(scope='module')
def t5_dir(tmp_path_factory):
    """A tiny random T5 saved like google/flan-t5-xl: encoder+decoder, sharded safetensors."""
    from transformers import T5Config, T5ForConditionalGeneration
    folder = tmp_path_factory.mktemp('flan-t5-tiny')
    tokenizer = build_word_tokenizer(WORDS)
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=2,
                      num_decoder_layers=1, num_heads=2, dropout_rate=0.1,
                      feed_forward_proj='gated-gelu')  # flan-t5 uses gated-gelu
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder, max_shard_size='20KB')
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def t5(t5_dir):
    return T5TextEncoder(model_dir=t5_dir, dtype='fp32')


@pytest.fixture(scope='module')
def t5_reference(t5_dir):
    from transformers import T5EncoderModel
    return T5EncoderModel.from_pretrained(t5_dir, local_files_only=True).eval()


def test_t5_folder_is_sharded_like_the_real_one(t5_dir):
    names = {p.name for p in t5_dir.iterdir()}
    assert 'model.safetensors.index.json' in names
    assert len([n for n in names if n.endswith('.safetensors')]) >= 2


def test_t5_properties_and_frozen(t5):
    assert t5.embed_dim == 16 and t5.max_length == 120
    assert all(not p.requires_grad for p in t5.parameters())
    t5.train()
    assert not t5.training and not t5.encoder.training  # T5's dropout stays off


def test_t5_tokenize_appends_eos_and_lowercases(t5):
    vocab = t5.tokenizer.get_vocab()
    ids, attn = t5.tokenize(['A Red  CIRCLE', 'cat'])
    assert ids[0].tolist() == [vocab['a'], vocab['red'], vocab['circle'], 1]
    assert ids[1].tolist() == [vocab['cat'], 1, 0, 0]  # right-padded with <pad> = 0
    assert attn.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_t5_left_padding_matches_single_prompt_encoding(t5, t5_reference):
    prompts = ['a red circle on the left', 'cat', 'a large blue square']
    emb, mask = t5(prompts)
    assert emb.shape == (3, 120, 16) and emb.dtype == torch.float32
    assert mask.dtype == torch.long and mask.shape == (3, 120)
    for row, prompt in enumerate(prompts):
        ids, _ = t5.tokenize([prompt])  # one prompt: no padding at all
        with torch.no_grad():
            alone = t5_reference(input_ids=ids).last_hidden_state[0]
        n = ids.shape[1]
        assert mask[row].tolist() == [0] * (120 - n) + [1] * n
        assert torch.allclose(emb[row, -n:], alone, atol=1e-5)
        assert torch.count_nonzero(emb[row, :-n]) == 0  # pad embeddings exactly zero


def test_t5_matches_llamagen_rotation_of_max_length_padding(t5, t5_reference):
    # LlamaGen: pad to 120 on the right, encode with the mask, rotate the valid tokens to the end
    prompts = ['a green square on the right', 'photo of a cat']
    batch = t5.tokenizer([p.lower() for p in prompts], max_length=120, padding='max_length',
                         truncation=True, return_tensors='pt')
    with torch.no_grad():
        hidden = t5_reference(input_ids=batch['input_ids'],
                              attention_mask=batch['attention_mask']).last_hidden_state
    masks = batch['attention_mask']
    expected = []
    for h, m in zip(hidden, masks):
        valid = int(m.sum())
        expected.append(torch.cat([h[valid:], h[:valid]]))
    expected_mask = torch.flip(masks, dims=[-1])
    expected = torch.stack(expected) * expected_mask[:, :, None]
    emb, mask = t5(prompts)
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(emb, expected, atol=1e-5)


def test_t5_truncates_to_max_length_keeping_eos(t5_dir):
    enc = T5TextEncoder(model_dir=t5_dir, dtype='fp32', max_length=6)
    ids, attn = enc.tokenize([' '.join(['red'] * 50)])
    assert ids.shape == (1, 6) and ids[0, -1].item() == 1 and attn.sum() == 6
    emb, mask = enc(['red ' * 50, ''])
    assert emb.shape == (2, 6, 16)
    assert mask.tolist() == [[1] * 6, [0] * 5 + [1]]  # an empty prompt is just </s>


def test_t5_bf16_is_close_to_fp32(t5, t5_dir):
    enc = T5TextEncoder(model_dir=t5_dir, dtype='bf16')
    assert enc.encoder.get_input_embeddings().weight.dtype == torch.bfloat16
    emb16, mask16 = enc(['a red circle'])
    emb32, mask32 = t5(['a red circle'])
    assert emb16.dtype == torch.float32 and torch.equal(mask16, mask32)
    assert (emb16 - emb32).abs().max() < 0.05 * emb32.abs().max()


def test_clean_caption_by_hand():
    text = ('<p>A&amp;nbsp;photo&nbsp;of a <b>cat</b></p>  see https://x.org/a?b=1 or '
            'www.cats.com @someone \u201cnice\u201d \u2014 it\u2019s\\nhere  ')
    assert clean_caption(text) == 'A photo of a cat see or "nice" - it\'s here'
    assert clean_caption('plain text') == 'plain text'


def test_t5_preprocess_lowercases_with_and_without_cleaning(t5, t5_dir):
    assert t5.preprocess('  A <i>Red</i> Circle ') == 'a red circle'
    raw = T5TextEncoder(model_dir=t5_dir, dtype='fp32', clean_caption=False)
    assert raw.preprocess('  A <i>Red</i> Circle ') == 'a <i>red</i> circle'


def test_t5_missing_folder_and_files_are_named(tmp_path, t5_dir):
    with pytest.raises(FileNotFoundError, match='google/flan-t5-xl') as info:
        T5TextEncoder(model_dir=tmp_path / 'nope')
    assert 'docs/prepare_assets.md' in str(info.value)
    # a folder whose index names a shard that is not there
    broken = tmp_path / 'broken'
    broken.mkdir()
    for p in t5_dir.iterdir():
        if not p.name.startswith('model-00002'):
            (broken / p.name).write_bytes(p.read_bytes())
    with pytest.raises(FileNotFoundError, match='model-00002-of-'):
        T5TextEncoder(model_dir=broken)
    no_tok = tmp_path / 'no_tok'
    no_tok.mkdir()
    for p in t5_dir.iterdir():
        if 'token' not in p.name:
            (no_tok / p.name).write_bytes(p.read_bytes())
    with pytest.raises(FileNotFoundError, match='no tokenizer'):
        T5TextEncoder(model_dir=no_tok)


def test_t5_without_transformers_says_how_to_install(t5_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, 'transformers', None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r'rankekit\[t5\]'):
        T5TextEncoder(model_dir=t5_dir)


def test_t5_argument_errors():
    with pytest.raises(ValueError, match='exactly one of model_dir'):
        T5TextEncoder(model_dir=None)
    with pytest.raises(ValueError, match='dtype'):
        T5TextEncoder(model_dir=None, random_cfg=dict(d_model=8), dtype='int8')
    enc = T5TextEncoder(model_dir=None, max_length=8, dtype='fp32',
                        random_cfg=dict(d_model=8, num_layers=1, num_heads=2, d_kv=4, d_ff=16))
    with pytest.raises(TypeError, match='list of prompts'):
        enc('a red circle')


# =============================================================================================
# HPSv2
# =============================================================================================
def clip_score_by_hand(model, tokenizer, padded_pixels, prompts):
    x = (padded_pixels - OPENAI_MEAN) / OPENAI_STD
    img = F.normalize(model.encode_image(x), dim=-1)
    with torch.no_grad():
        txt = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    return (img * txt).sum(-1)


@pytest.fixture(scope='module')
def hps_file(tmp_path_factory):
    """An HPS-format checkpoint: {'state_dict': fp16 tensors, 'module.' prefixed} + metadata."""
    model, _ = random_clip(seed=3)
    state = {f'module.{k}': v.half() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp('hps') / 'HPS_v2.1_compressed.pt'
    torch.save({'state_dict': state, 'epoch': 3, 'name': 'tiny'}, path)
    return path


def test_hpsv2_scores_and_gradients_match_hand_computation(hps_file):
    reward = HPSv2(pretrained=str(hps_file), model_name=CLIP_NAME, model_cfg=CLIP_CFG)
    assert reward.name == 'hpsv2' and reward.differentiable
    assert all(not p.requires_grad for p in reward.parameters())
    # reference: the same weights rounded to fp16, as the file stores them
    model, tokenizer = random_clip(seed=3)
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    images = torch.rand(2, 3, 13, 16, generator=torch.Generator().manual_seed(5))
    prompts = ['a red circle', 'a photo of a cat']
    # HPS preprocessing: longest side already 16 = input size; pad 13 -> 16 rows: 1 top, 2 bottom
    imgs_ref = images.clone().requires_grad_(True)
    expected = clip_score_by_hand(model, tokenizer, F.pad(imgs_ref, (0, 0, 1, 2), value=0.0),
                                  prompts)
    expected.sum().backward()
    imgs = images.clone().requires_grad_(True)
    scores = reward(imgs, prompts)
    assert scores.shape == (2,)
    assert torch.allclose(scores, expected.detach(), atol=1e-5)
    scores.sum().backward()
    assert imgs.grad.abs().sum() > 0
    assert torch.allclose(imgs.grad, imgs_ref.grad, atol=1e-5)


def test_hpsv2_scale_and_no_grad_mode(hps_file):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    base = HPSv2(pretrained=str(hps_file), model_name=CLIP_NAME, model_cfg=CLIP_CFG)
    scaled = HPSv2(pretrained=str(hps_file), model_name=CLIP_NAME, model_cfg=CLIP_CFG,
                   scale=100.0, differentiable=False)
    s1 = base(images, ['cat', 'cat'])
    s100 = scaled(images.requires_grad_(True), ['cat', 'cat'])
    assert not s100.requires_grad
    assert torch.allclose(s100, 100 * s1.detach(), atol=1e-4)


def test_hpsv2_missing_file_names_both_checkpoints(tmp_path):
    with pytest.raises(WeightsFileError) as info:
        HPSv2(pretrained=str(tmp_path / 'HPS_v2.1_compressed.pt'))
    message = str(info.value)
    for part in ('HPS_v2.1_compressed.pt', 'HPS_v2_compressed.pt', 'xswu/HPSv2',
                 'docs/prepare_assets.md'):
        assert part in message


def test_hpsv2_wrong_architecture_is_reported(tmp_path):
    path = tmp_path / 'HPS_v2_compressed.pt'
    torch.save({'state_dict': {'visual.proj': torch.zeros(3, 3)}}, path)
    with pytest.raises(WeightsFileError, match='HPSv2 checkpoint.*does not fit'):
        HPSv2(pretrained=str(path), model_name=CLIP_NAME, model_cfg=CLIP_CFG)


# =============================================================================================
# LAION aesthetic predictor
# =============================================================================================
def test_aesthetic_mlp_has_the_public_layout():
    shapes = {k: tuple(v.shape) for k, v in AestheticMLP(768).state_dict().items()}
    assert shapes == {'layers.0.weight': (1024, 768), 'layers.0.bias': (1024,),
                      'layers.2.weight': (128, 1024), 'layers.2.bias': (128,),
                      'layers.4.weight': (64, 128), 'layers.4.bias': (64,),
                      'layers.6.weight': (16, 64), 'layers.6.bias': (16,),
                      'layers.7.weight': (1, 16), 'layers.7.bias': (1,)}


@pytest.fixture(scope='module')
def aesthetic_files(tmp_path_factory):
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp('aesthetic')
    clip, _ = random_clip(seed=4)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(folder / 'open_clip_model.safetensors'))  # open_clip's safetensors format
    torch.manual_seed(7)
    mlp = AestheticMLP(16)
    torch.save(mlp.state_dict(), folder / 'aesthetic_mlp.pth')  # plain OrderedDict, as released
    return folder


def test_aesthetic_scores_and_gradients_match_hand_computation(aesthetic_files):
    reward = Aesthetic(mlp_pretrained=str(aesthetic_files / 'aesthetic_mlp.pth'),
                       clip_pretrained=str(aesthetic_files / 'open_clip_model.safetensors'),
                       clip_name=CLIP_NAME, clip_model_cfg=CLIP_CFG, clip_weights_tag=None)
    assert reward.name == 'aesthetic' and reward.differentiable
    assert not any(n.startswith(('transformer.', 'token_embedding')) for n, _ in
                   reward.named_parameters())  # the text tower is dropped
    clip, _ = random_clip(seed=4)
    mlp_state = torch.load(aesthetic_files / 'aesthetic_mlp.pth', weights_only=True)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    imgs_ref = images.clone().requires_grad_(True)
    feats = F.normalize(clip.encode_image((imgs_ref - OPENAI_MEAN) / OPENAI_STD), dim=-1)
    h = feats
    for i in (0, 2, 4, 6, 7):  # linear layers only: dropouts are off, there are no activations
        h = h @ mlp_state[f'layers.{i}.weight'].T + mlp_state[f'layers.{i}.bias']
    expected = h[:, 0]
    expected.sum().backward()
    imgs = images.clone().requires_grad_(True)
    scores = reward(imgs, ['ignored'] * 3)
    assert torch.allclose(scores, expected.detach(), atol=1e-5)
    scores.sum().backward()
    assert imgs.grad.abs().sum() > 0
    assert torch.allclose(imgs.grad, imgs_ref.grad, atol=1e-5)


def test_aesthetic_missing_files_are_named(tmp_path, aesthetic_files):
    # the MLP file is checked first, before any CLIP is built
    with pytest.raises(WeightsFileError) as info:
        Aesthetic(mlp_pretrained=str(tmp_path / 'sac.pth'),
                  clip_pretrained=str(tmp_path / 'clip.bin'))
    assert 'sac+logos+ava1-l14-linearMSE.pth' in str(info.value)
    assert 'christophschuhmann/improved-aesthetic-predictor' in str(info.value)
    assert AESTHETIC_SOURCE in str(info.value)
    # the CLIP file: where OpenAI's ViT-L/14 comes from in open_clip's format
    with pytest.raises(WeightsFileError, match='vit_large_patch14_clip_224.openai'):
        Aesthetic(mlp_pretrained=str(aesthetic_files / 'aesthetic_mlp.pth'),
                  clip_pretrained=str(tmp_path / 'clip.bin'))


# =============================================================================================
# Weights loader: LlamaGen checkpoint layouts, safetensors, sharded folders
# =============================================================================================
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer('codebook_used', torch.zeros(4))


def tiny_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {'fc.weight': torch.randn(2, 3, generator=g), 'fc.bias': torch.randn(2, generator=g),
            'codebook_used': torch.arange(4.0)}


@pytest.mark.parametrize('wrap', [
    lambda s: s,
    lambda s: {'model': s, 'optimizer': {'state': {}}, 'steps': 7,
               'args': argparse.Namespace(gpt_model='GPT-XL')},
    lambda s: {'module': s},
    lambda s: {'state_dict': s, 'epoch': 1},
    lambda s: {'ema': s, 'name': 'x'},
    lambda s: {'model': {f'module.{k}': v for k, v in s.items()}},
    lambda s: {'model': {f'_orig_mod.module.{k}': v for k, v in s.items()}},
], ids=['raw', 'model+args', 'module', 'state_dict', 'ema', 'ddp', 'compile+ddp'])
def test_checkpoint_containers_and_prefixes(tmp_path, wrap):
    path = tmp_path / 'ckpt.pt'
    torch.save(wrap(tiny_state()), path)
    model = Tiny()
    report = load_model_weights(model, path)
    assert report == dict(missing=[], unexpected=[], mismatched=[])
    for k, v in tiny_state().items():
        assert torch.equal(model.state_dict()[k], v)


def test_duplicate_keys_after_prefix_stripping_are_refused():
    state = {'fc.weight': torch.zeros(2, 3), 'module.fc.weight': torch.ones(2, 3)}
    with pytest.raises(WeightsFileError, match="'fc.weight' twice"):
        extract_state_dict(state)


def test_strict_report_names_missing_unexpected_and_shapes(tmp_path):
    state = tiny_state()
    state['fc.weight'] = torch.zeros(5, 3)
    del state['fc.bias']
    state['extra.weight'] = torch.zeros(1)
    torch.save({'model': state}, tmp_path / 'bad.pt')
    with pytest.raises(WeightsFileError) as info:
        load_model_weights(Tiny(), tmp_path / 'bad.pt', what='LlamaGen GPT checkpoint')
    message = str(info.value)
    assert '1 missing keys: fc.bias' in message
    assert '1 unexpected keys: extra.weight' in message
    assert 'fc.weight: file (5, 3) vs model (2, 3)' in message
    # non-strict: missing/unexpected are reported, not raised; a shape mismatch still raises
    with pytest.raises(WeightsFileError, match='shape mismatches'):
        load_model_weights(Tiny(), tmp_path / 'bad.pt', strict=False)
    del state['fc.weight']
    torch.save({'model': state}, tmp_path / 'partial.pt')
    report = load_model_weights(Tiny(), tmp_path / 'partial.pt', strict=False)
    assert report['missing'] == ['fc.weight', 'fc.bias']
    assert report['unexpected'] == ['extra.weight']


def test_ignore_accepts_a_list_of_patterns(tmp_path):
    state = tiny_state()
    state['aux.weight'] = torch.zeros(1)
    state['tmp.cache'] = torch.zeros(1)
    torch.save(state, tmp_path / 'x.pt')
    with pytest.raises(WeightsFileError, match='2 unexpected keys'):
        load_model_weights(Tiny(), tmp_path / 'x.pt')
    load_model_weights(Tiny(), tmp_path / 'x.pt', ignore=[r'^aux\.', r'\.cache$'])


def test_llamagen_gpt_kv_cache_keys_are_dropped(tmp_path, reference_path):
    from rankekit.policies.llamagen_gpt import LlamaGenGPT
    official = torch.load(reference_path / 'gpt_tiny.pt', weights_only=True)['model']
    assert not any('kv_cache' in k for k in official)
    # a checkpoint saved after setup_caches(): every layer carries its KV-cache buffers
    with_cache = dict(official)
    for layer in range(2):
        for kv in ('k', 'v'):
            with_cache[f'layers.{layer}.attention.kv_cache.{kv}_cache'] = torch.zeros(2, 4, 24, 16)
    path = tmp_path / 't2i_tiny.pt'
    torch.save({'model': with_cache, 'steps': 10, 'args': argparse.Namespace(cls_token_num=8)},
               path)
    with pytest.raises(WeightsFileError, match='4 unexpected keys: layers.0.attention.kv_cache'):
        load_model_weights(LlamaGenGPT(arch='tiny'), path)
    model = LlamaGenGPT(arch='tiny')
    report = load_model_weights(model, path, ignore=LLAMAGEN_GPT_IGNORE)
    assert report == dict(missing=[], unexpected=[], mismatched=[])
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in official.items())


def test_llamagen_ignore_pattern_matches_only_cache_buffers():
    import re
    pattern = re.compile(LLAMAGEN_GPT_IGNORE)
    assert pattern.search('layers.11.attention.kv_cache.k_cache')
    assert pattern.search('layers.0.attention.kv_cache.v_cache')
    for key in ('layers.0.attention.wqkv.weight', 'cls_embedding.uncond_embedding',
                'layers.0.attention.kv_cache_scale', 'tok_embeddings.weight'):
        assert not pattern.search(key)


def test_vq_checkpoint_keeps_codebook_usage_buffer(reference_path):
    from rankekit.tokenizers.vq_model import VQModel
    official = torch.load(reference_path / 'vq_tiny.pt', weights_only=True)['model']
    model = VQModel(encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1], codebook_size=64,
                    codebook_embed_dim=8, z_channels=32)
    report = load_model_weights(model, reference_path / 'vq_tiny.pt')
    assert report['missing'] == [] and report['unexpected'] == []
    assert torch.equal(model.state_dict()['quantize.codebook_used'],
                       official['quantize.codebook_used'])


def test_safetensors_file_loads_and_corrupt_file_is_reported(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / 'w.safetensors'
    save_file(tiny_state(), str(path))
    model = Tiny()
    load_model_weights(model, path)
    assert torch.equal(model.fc.bias, tiny_state()['fc.bias'])
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(WeightsFileError, match='truncated or corrupt'):
        load_weights_file(broken, what='test weights')


def _save_sharded(folder, state, fmt):
    from safetensors.torch import save_file
    folder.mkdir()
    names = list(state)
    halves = {f'part-1.{fmt}': names[:2], f'part-2.{fmt}': names[2:]}
    for shard, keys in halves.items():
        part = {k: state[k] for k in keys}
        if fmt == 'safetensors':
            save_file(part, str(folder / shard))
        else:
            torch.save(part, folder / shard)
    index = ('model.safetensors.index.json' if fmt == 'safetensors'
             else 'pytorch_model.bin.index.json')
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (folder / index).write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_sharded_folder_loads_whole_and_filtered(tmp_path, fmt):
    state = {'gen_head.weight': torch.ones(2), 'gen_embed.weight': torch.full((3,), 2.0),
             'language_model.a': torch.zeros(4), 'language_model.b': torch.arange(3.0)}
    folder = tmp_path / 'hf'
    _save_sharded(folder, state, fmt)
    loaded = load_sharded_state_dict(folder)
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    # only the generation side; the other shard is never read, so it may be absent
    (folder / f'part-2.{fmt}').unlink()
    gen = load_sharded_state_dict(folder, include=r'^gen_')
    assert list(gen) == ['gen_head.weight', 'gen_embed.weight']
    with pytest.raises(WeightsFileError, match=f"incomplete.*'part-2.{fmt}'"):
        load_sharded_state_dict(folder)


def test_single_file_folder_and_folder_as_load_path(tmp_path):
    from safetensors.torch import save_file
    folder = tmp_path / 'one'
    folder.mkdir()
    save_file(tiny_state(), str(folder / 'model.safetensors'))
    model = Tiny()
    load_model_weights(model, folder)  # a Hugging Face folder works as a weights path
    assert torch.equal(model.codebook_used, torch.arange(4.0))
    bin_folder = tmp_path / 'bin'
    bin_folder.mkdir()
    torch.save(tiny_state(1), bin_folder / 'pytorch_model.bin')
    assert torch.equal(load_sharded_state_dict(bin_folder, include='bias')['fc.bias'],
                       tiny_state(1)['fc.bias'])
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'config.json').write_text('{}')
    with pytest.raises(WeightsFileError,
                       match=r"holds no weights.*model.safetensors.*\['config.json'\]"):
        load_sharded_state_dict(empty, what='Janus-Pro-1B folder')
