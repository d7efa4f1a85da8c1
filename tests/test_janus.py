"""Janus-Pro generation path: official references (janus_tiny), key manifest, loading, sampler."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('transformers', reason='the Janus components need pip install rankekit[janus]')

from rankekit.policies import JanusProPolicy  # noqa: E402
from rankekit.text_encoders import JanusPromptEncoder  # noqa: E402
from rankekit.policies.janus import special_token_ids_from_dir  # noqa: E402
from rankekit.policies.sampling import cfg_combine  # noqa: E402
from rankekit.registry import POLICIES, TEXT_ENCODERS, TOKENIZERS  # noqa: E402
from rankekit.tokenizers import JanusVQ, load_janus_gen_vision  # noqa: E402
from rankekit.utils.weights import WeightsFileError  # noqa: E402

CASES = ['a', 'b']
CFG = 5.0
PAD, BOS, BOI = 202, 200, 203  # the tiny reference vocabulary's ids
TINY_VQ = dict(ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
               z_channels=16, codebook_size=32, codebook_embed_dim=4, image_size=16)
# the tiny reference config.json, as the official save_pretrained wrote it (generation part)
TINY_CONFIG = {
    'model_type': 'multi_modality',
    'gen_vision_config': {'cls': 'VQ-16', 'params': {'image_token_size': 256, 'n_embed': 8}},
    'gen_aligner_config': {'cls': 'MlpProjector', 'params': {
        'depth': 2, 'input_dim': 8, 'n_embed': 64, 'projector_type': 'mlp_gelu'}},
    'gen_head_config': {'cls': 'vision_head', 'params': {
        'image_token_embed': 64, 'image_token_size': 256, 'n_embed': 64}},
    'language_config': {'hidden_size': 64, 'intermediate_size': 176, 'max_position_embeddings': 256,
                        'model_type': 'llama', 'num_attention_heads': 4, 'num_hidden_layers': 2,
                        'num_key_value_heads': 4, 'vocab_size': 206,
                        '_attn_implementation': 'flash_attention_2', 'torch_dtype': 'bfloat16'},
}


# ---- official references -------------------------------------------------------------------------
@pytest.fixture(scope='module')
def janus(reference_path):
    directory, ref_file = reference_path / 'janus_tiny', reference_path / 'janus_tiny_ref.pt'
    if not (directory / 'pytorch_model.bin').is_file() or not ref_file.is_file():
        pytest.skip(f'janus_tiny/ or janus_tiny_ref.pt not found in {reference_path}')
    ref = torch.load(ref_file, map_location='cpu', weights_only=True)
    assert json.loads(ref['special_token_ids'])['pad'] == PAD
    # arch='tiny' gives the tiny vocabulary's pad / <begin_of_image> ids and 16 image tokens;
    # the directory's config.json gives the architecture
    policy = JanusProPolicy(arch='tiny', pretrained=str(directory)).eval()
    return policy, ref, directory


def padded_pair(ref):
    """Prompts a (9 tokens) and b (5 tokens) in one left-padded batch."""
    a, b = ref['a_input_ids'], ref['b_input_ids']
    ids = torch.full((2, len(a)), PAD)
    mask = torch.zeros(2, len(a), dtype=torch.long)
    ids[0], ids[1, -len(b):] = a, b
    mask[0], mask[1, -len(b):] = 1, 1
    return ids, mask


def full_logits(out):
    """Scatter the returned top-k (k = vocab) logits back to (B, L, V)."""
    return torch.zeros(*out.topk_logits.shape).scatter(-1, out.topk_indices, out.topk_logits)


def test_strict_load_of_the_stored_keys(janus):
    policy, _, directory = janus
    assert policy.load_report == dict(missing=[], unexpected=[], mismatched=[])
    stored = torch.load(directory / 'pytorch_model.bin', map_location='cpu', weights_only=True)
    own = policy.state_dict()
    assert len(stored) == 30 and sorted(own) == sorted(stored)
    assert all(torch.equal(own[k], v) for k, v in stored.items())
    assert policy.vocab_size == 256 and policy.num_image_tokens == 16 and policy.grid_size == 4
    # the tiny directory does not store gen_vision_model.*: the tokenizer part is skipped there,
    # and asking JanusVQ for it says so
    with pytest.raises(WeightsFileError, match='no gen_vision_model'):
        JanusVQ(pretrained=str(directory))


@pytest.mark.parametrize('case', CASES)
def test_teacher_forcing_raw_and_cfg_logits(janus, case):
    policy, ref, _ = janus
    rows = ref[f'{case}_tokens'].long()          # official rows: cond, uncond, cond, uncond
    tokens = ref[f'{case}_image_tokens'].repeat_interleave(2, 0)
    with torch.no_grad():
        raw = policy(rows, torch.ones_like(rows), tokens)
    torch.testing.assert_close(raw, ref[f'{case}_tf_raw_logits'], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(raw[0::2], ref[f'{case}_tf_cond_logits'], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(raw[1::2], ref[f'{case}_tf_uncond_logits'], atol=1e-4, rtol=1e-4)
    cfg = cfg_combine(raw[0::2], raw[1::2], CFG)
    torch.testing.assert_close(cfg, ref[f'{case}_tf_cfg_logits'], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('case', CASES)
def test_cfg_row_layout_is_the_official_one(janus, case):
    policy, ref, _ = janus
    ids = ref[f'{case}_input_ids'].expand(2, -1)
    rows, mask = policy.cfg_rows(ids, torch.ones_like(ids))
    assert torch.equal(rows, ref[f'{case}_tokens'].long()) and bool(mask.all())


def test_cfg_rows_of_a_left_padded_batch(janus):
    policy, ref, _ = janus
    ids, mask = padded_pair(ref)
    rows, rows_mask = policy.cfg_rows(ids, mask)
    # by hand: row b = 4 left pads, BOS, 3 text tokens, <begin_of_image>
    assert rows[3].tolist() == [PAD] * 4 + [BOS, PAD, PAD, PAD, BOI]
    assert rows[2].tolist() == ids[1].tolist() and rows[0].tolist() == ids[0].tolist()
    assert rows[1].tolist() == [BOS] + [PAD] * 7 + [BOI]
    assert torch.equal(rows_mask, mask.repeat_interleave(2, 0))


def test_padding_does_not_change_the_logits(janus):
    policy, ref, _ = janus
    ids, mask = padded_pair(ref)
    rows, rows_mask = policy.cfg_rows(ids, mask)
    tokens = torch.stack([ref['a_image_tokens'][0], ref['b_image_tokens'][0]])
    with torch.no_grad():
        raw = policy(rows, rows_mask, tokens.repeat_interleave(2, 0))
    torch.testing.assert_close(raw[:2], ref['a_tf_raw_logits'][:2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(raw[2:], ref['b_tf_raw_logits'][:2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('case', CASES)
def test_greedy_cfg_tokens_and_step_logits(janus, case):
    policy, ref, _ = janus
    ids = ref[f'{case}_input_ids'].expand(2, -1)
    out = policy.sample(ids, torch.ones_like(ids), cfg_scale=CFG, top_k=1,
                        return_topk_logits=policy.vocab_size)
    assert torch.equal(out.tokens, ref[f'{case}_greedy_tokens'].long())
    torch.testing.assert_close(full_logits(out), ref[f'{case}_greedy_cfg_logits'],
                               atol=1e-4, rtol=1e-4)
    assert torch.equal(out.logprobs, torch.zeros(2, 16))  # top_k=1: probability one


def test_greedy_tokens_of_a_left_padded_batch(janus):
    policy, ref, _ = janus
    ids, mask = padded_pair(ref)
    out = policy.sample(ids, mask, top_k=1)
    want = torch.stack([ref['a_greedy_tokens'][0], ref['b_greedy_tokens'][0]]).long()
    assert torch.equal(out.tokens, want)


@pytest.mark.parametrize('case', CASES)
def test_cfg_logits_along_the_official_sampled_trajectory(janus, case):
    # the official multinomial draws cannot be replayed, but the logits along its path can
    policy, ref, _ = janus
    ids = ref[f'{case}_input_ids'].expand(2, -1)
    rows, mask = policy.cfg_rows(ids, torch.ones_like(ids))
    tokens = ref[f'{case}_sample_tokens'].long()
    with torch.no_grad():
        raw = policy(rows, mask, tokens.repeat_interleave(2, 0))
    torch.testing.assert_close(cfg_combine(raw[0::2], raw[1::2], CFG),
                               ref[f'{case}_sample_cfg_logits'], atol=1e-4, rtol=1e-4)


def test_prompt_encoder_ids_path_reproduces_the_reference_prompts(janus):
    policy, ref, _ = janus
    encoder = JanusPromptEncoder()  # stand-in tokenizer: the tiny vocabulary's special ids
    a_text, b_text = ref['a_input_ids'][1:-1].tolist(), ref['b_input_ids'][1:-1].tolist()
    ids, mask = encoder([a_text, b_text])
    want_ids, want_mask = padded_pair(ref)
    assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)
    out = policy.sample(ids, mask, top_k=1)
    assert torch.equal(out.tokens[0], ref['a_greedy_tokens'][0].long())
    assert torch.equal(out.tokens[1], ref['b_greedy_tokens'][0].long())


# ---- sampler properties --------------------------------------------------------------------------
def test_log_probs_equal_sampler_logprobs_at_cfg1(janus):
    policy, ref, _ = janus
    ids, mask = padded_pair(ref)
    out = policy.sample(ids, mask, cfg_scale=1.0, temperature=1.0, seeds=[5, 6])
    logp = policy.log_probs(ids, mask, out.tokens)
    torch.testing.assert_close(logp, out.logprobs, atol=1e-5, rtol=1e-5)
    assert logp.requires_grad  # sample() outputs leave inference mode


def test_seeded_rows_do_not_depend_on_the_batch_or_its_padding(janus):
    policy, ref, _ = janus
    ids, mask = padded_pair(ref)
    both = policy.sample(ids, mask, seeds=[11, 12]).tokens
    alone = policy.sample(ref['b_input_ids'][None], torch.ones(1, 5, dtype=torch.long),
                          seeds=[12]).tokens
    assert torch.equal(both[1:], alone)


def test_cfg_first_n_guides_only_the_first_tokens(janus):
    policy, ref, _ = janus
    ids, mask = padded_pair(ref)
    n = 5
    out = policy.sample(ids, mask, cfg_first_n=n, seeds=[1, 2],
                        return_topk_logits=policy.vocab_size)
    rows, rows_mask = policy.cfg_rows(ids, mask)
    with torch.no_grad():
        raw = policy(rows, rows_mask, out.tokens.repeat_interleave(2, 0))
    steps = full_logits(out)
    torch.testing.assert_close(steps[:, :n], cfg_combine(raw[0::2], raw[1::2], CFG)[:, :n],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(steps[:, n:], raw[0::2, n:], atol=1e-4, rtol=1e-4)


# ---- the full Janus-Pro-1B layout ----------------------------------------------------------------
def test_janus_pro_1b_generation_keys_match_the_manifest(reference_path):
    manifest_file = reference_path / 'manifests' / 'janus_pro_1b_gen.json'
    if not manifest_file.is_file():
        pytest.skip(f'{manifest_file} not found')
    manifest = json.loads(manifest_file.read_text())
    with torch.device('meta'):  # shapes only, no memory
        policy = JanusProPolicy(arch='Janus-Pro-1B')
        vq = JanusVQ()
    shapes = {k: list(v.shape) for k, v in policy.state_dict().items()}
    shapes.update({f'gen_vision_model.{k}': list(v.shape) for k, v in vq.state_dict().items()})
    gen = {k: v for k, v in manifest.items() if isinstance(v, list)}
    language = manifest['_meta']['language_model']
    assert language['values_used_for_this_build_UNVERIFIED']['vocab_size'] == \
        policy.text_vocab_size
    assert shapes == {**gen, **language['shapes_under_unverified_values']}
    assert len(gen) == 353 and len(shapes) == 572
    gen_params = sum(p.numel() for n, p in policy.named_parameters() if n.startswith('gen_'))
    assert gen_params + sum(p.numel() for p in vq.parameters()) == manifest['num_params']
    counts = manifest['_meta']['per_top_level_prefix_counts_full_model']
    lm_params = sum(p.numel() for p in policy.language_model.parameters())
    assert lm_params == counts['language_model']['params'] == 1_652_656_128
    assert policy.num_image_tokens == 576 and policy.grid_size == 24 and vq.grid_size == 24


# ---- loading official-format directories ---------------------------------------------------------
def _tiny_official_state(seed=0):
    """A random tiny policy + tiny VQ in the full Janus key layout (with understanding keys)."""
    torch.manual_seed(seed)
    policy = JanusProPolicy(arch='tiny')
    vq = JanusVQ(**TINY_VQ)
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    state.update({f'gen_vision_model.{k}': v.clone() for k, v in vq.state_dict().items()})
    state['vision_model.vision_tower.pos_embed'] = torch.randn(1, 4, 8)
    state['aligner.layers.0.weight'] = torch.randn(64, 8)
    return state, policy, vq


def _save_hf_dir(directory: Path, state: dict, fmt: str, shards: int = 2,
                 config: dict = TINY_CONFIG) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'config.json').write_text(json.dumps(config))
    keys = list(state)
    parts = [keys[i::shards] for i in range(shards)]
    ext = 'safetensors' if fmt == 'safetensors' else 'bin'
    stem = 'model' if fmt == 'safetensors' else 'pytorch_model'
    weight_map = {}
    for i, part in enumerate(parts):
        name = f'{stem}-{i + 1:05d}-of-{shards:05d}.{ext}'
        tensors = {k: state[k].contiguous() for k in part}
        if fmt == 'safetensors':
            from safetensors.torch import save_file
            save_file(tensors, str(directory / name))
        else:
            torch.save(tensors, directory / name)
        weight_map.update({k: name for k in part})
    index = dict(metadata=dict(total_size=sum(v.numel() * 4 for v in state.values())),
                 weight_map=weight_map)
    (directory / f'{stem}.{ext}.index.json').write_text(json.dumps(index))


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_sharded_directory_loads_policy_and_tokenizer(tmp_path, fmt):
    state, _, _ = _tiny_official_state()
    _save_hf_dir(tmp_path, state, fmt)
    policy = JanusProPolicy(pretrained=str(tmp_path), image_token_num=16, pad_token_id=PAD)
    loaded = policy.state_dict()
    assert policy.load_report == dict(missing=[], unexpected=[], mismatched=[])
    assert all(torch.equal(loaded[k], state[k]) for k in loaded) and len(loaded) == 30
    # config.json's _attn_implementation / torch_dtype are not taken over
    assert policy.language_model.model.config._attn_implementation == 'sdpa'
    assert next(policy.parameters()).dtype == torch.float32
    vq = JanusVQ(pretrained=str(tmp_path), **TINY_VQ)
    assert all(torch.equal(v, state[f'gen_vision_model.{k}']) for k, v in vq.state_dict().items())
    assert set(load_janus_gen_vision(tmp_path)) == set(vq.state_dict())


def test_single_file_and_keep_lm_head_false(tmp_path):
    from safetensors.torch import save_file
    state, _, _ = _tiny_official_state(seed=1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / 'janus.safetensors'))
    policy = JanusProPolicy(arch='tiny', pretrained=str(tmp_path / 'janus.safetensors'))
    assert torch.equal(policy.gen_head.vision_head.weight, state['gen_head.vision_head.weight'])
    slim = JanusProPolicy(arch='tiny', pretrained=str(tmp_path / 'janus.safetensors'),
                          keep_lm_head=False)
    assert not hasattr(slim.language_model, 'lm_head') and len(slim.state_dict()) == 29
    assert not JanusProPolicy(arch='tiny').language_model.lm_head.weight.requires_grad


def test_strict_loading_reports_missing_unexpected_and_mismatched(tmp_path):
    state, _, _ = _tiny_official_state()
    del state['gen_head.vision_head.bias']
    state['language_model.model.layers.7.mlp.up_proj.weight'] = torch.zeros(176, 64)
    _save_hf_dir(tmp_path / 'd', state, 'safetensors', shards=1)
    with pytest.raises(WeightsFileError) as err:
        JanusProPolicy(arch='tiny', pretrained=str(tmp_path / 'd'))
    assert 'gen_head.vision_head.bias' in str(err.value)
    assert 'language_model.model.layers.7.mlp.up_proj.weight' in str(err.value)
    policy = JanusProPolicy(arch='tiny', pretrained=str(tmp_path / 'd'), strict=False)
    assert policy.load_report['missing'] == ['gen_head.vision_head.bias']
    wider = json.loads(json.dumps(TINY_CONFIG))
    wider['gen_head_config']['params']['image_token_embed'] = 32  # shapes no longer fit
    _save_hf_dir(tmp_path / 'e', _tiny_official_state()[0], 'bin', shards=1, config=wider)
    with pytest.raises(WeightsFileError, match='shape mismatch'):
        JanusProPolicy(arch='tiny', pretrained=str(tmp_path / 'e'), strict=False)


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(WeightsFileError) as err:
        JanusProPolicy(pretrained=str(tmp_path / 'Janus-Pro-1B'))
    assert str(tmp_path / 'Janus-Pro-1B') in str(err.value)
    assert 'deepseek-ai/Janus-Pro-1B' in str(err.value)
    with pytest.raises(WeightsFileError, match='config.json'):
        JanusProPolicy(pretrained=str(tmp_path))
    (tmp_path / 'config.json').write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(WeightsFileError, match='model.safetensors'):
        JanusProPolicy(pretrained=str(tmp_path))
    state, _, _ = _tiny_official_state()
    _save_hf_dir(tmp_path / 'x', state, 'safetensors')
    (tmp_path / 'x' / 'model-00002-of-00002.safetensors').unlink()
    with pytest.raises(WeightsFileError, match='model-00002-of-00002'):
        JanusProPolicy(pretrained=str(tmp_path / 'x'))
    with pytest.raises(ValueError, match='gen_head_config'):
        (tmp_path / 'y').mkdir()
        (tmp_path / 'y' / 'config.json').write_text(json.dumps({'language_config': {}}))
        JanusProPolicy(pretrained=str(tmp_path / 'y'))


# ---- the prompt encoder with a (local, tiny) Hugging Face tokenizer ------------------------------
def _save_word_tokenizer(directory: Path) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ['<unk>', '<|User|>:', '<|Assistant|>:', 'a', 'red', 'circle', 'on', 'the', 'left']
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = ['<\uff5cbegin\u2581of\u2581sentence\uff5c>', '<\uff5c\u2581pad\u2581\uff5c>',
                '<begin_of_image>']
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0],
                                   pad_token=specials[1], unk_token='<unk>')
    fast.save_pretrained(str(directory))
    return vocab | {'bos': 9, 'pad': 10, 'image_start': 11}


def test_prompt_encoder_applies_the_official_template(tmp_path):
    ids_of = _save_word_tokenizer(tmp_path)
    encoder = JanusPromptEncoder(tokenizer_path=str(tmp_path))
    assert encoder.format_prompt('a red circle') == '<|User|>: a red circle\n\n<|Assistant|>:'
    assert encoder.special_token_ids == dict(bos=9, pad=10, image_start=11)
    ids, mask = encoder(['a red circle on the left', 'a circle'])
    want_long = [9, 1, 3, 4, 5, 6, 7, 8, 2, 11]
    assert ids[0].tolist() == want_long and bool(mask[0].all())
    assert ids[1].tolist() == [10] * 4 + [9, 1, ids_of['a'], ids_of['circle'], 2, 11]
    assert mask[1].tolist() == [0] * 4 + [1] * 6
    # the policy reads the same ids from the directory's tokenizer.json
    assert special_token_ids_from_dir(tmp_path) == dict(pad=10, image_start=11)
    with pytest.raises(ValueError, match='max_length'):
        JanusPromptEncoder(tokenizer_path=str(tmp_path), max_length=6)(['a red circle on the'])
    with pytest.raises(FileNotFoundError, match='deepseek-ai/Janus-Pro-1B'):
        JanusPromptEncoder(tokenizer_path=str(tmp_path / 'none'))


def test_stand_in_encoder_is_deterministic_and_fixed_length():
    encoder = JanusPromptEncoder(max_length=12)
    ids, mask = encoder(['a red circle', 'a red circle on the left'])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert not torch.equal(ids[0], ids[1])
    assert ids[0, -1] == BOI and ids[0, mask[0].argmax()] == BOS and ids[0, 0] == PAD
    assert torch.equal(encoder(['a red circle'])[0][0], ids[0])
    with pytest.raises(TypeError, match='list of prompts'):
        encoder('a red circle')


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_inputs_are_reported():
    policy = JanusProPolicy(arch='tiny')
    ids = torch.tensor([[BOS, 5, BOI]])
    with pytest.raises(ValueError, match='token ids'):
        policy.sample(torch.randn(1, 3, 8), torch.ones(1, 3))
    with pytest.raises(ValueError, match='LEFT padding'):
        policy.log_probs(ids, torch.tensor([[1, 1, 0]]), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='begin_of_image'):
        policy.sample(torch.tensor([[BOS, 5, 6]]), torch.ones(1, 3))
    with pytest.raises(ValueError, match='num_tokens'):
        policy.sample(ids, torch.ones_like(ids), num_tokens=17)
    bare = JanusProPolicy(language_config=dict(hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2,
                                               vocab_size=206), image_token_size=32,
                          image_token_num=4)  # no pad id known: CFG cannot build uncond rows
    assert bare.sample(ids, torch.ones_like(ids), cfg_scale=1.0).tokens.shape == (1, 4)
    with pytest.raises(ValueError, match='pad_token_id'):
        bare.sample(ids, torch.ones_like(ids), cfg_scale=3.0)
    with pytest.raises(ValueError, match='unknown arch'):
        JanusProPolicy(arch='Janus-Pro-70B')


def test_registries_find_the_janus_components():
    assert POLICIES.build(JanusProPolicy.info_example).num_image_tokens == 16
    assert TEXT_ENCODERS.get('JanusPromptEncoder') is JanusPromptEncoder
    assert TOKENIZERS.build(JanusVQ.info_example).codebook_size == 32


# ---- inside RankEModel ---------------------------------------------------------------------------
@pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')
def test_one_rank_e_step_with_the_janus_parts():
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_components import IMAGE, tiny_model_cfg

    from rankekit.engine.optim_constructor import MultiOptimWrapperConstructor
    from rankekit.registry import MODELS
    cfg = tiny_model_cfg(
        tokenizer=dict(type='JanusVQ', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1, 1, 1],
                       decoder_ch_mult=[1, 1, 1, 1], codebook_size=32, codebook_embed_dim=8,
                       z_channels=16, image_size=IMAGE),
        policy=dict(type='JanusProPolicy', image_token_size=32, image_token_num=16,
                    language_config=dict(hidden_size=32, intermediate_size=64, vocab_size=206,
                                         num_hidden_layers=1, num_attention_heads=2),
                    pad_token_id=PAD, image_start_token_id=BOI),
        text_encoder=dict(type='JanusPromptEncoder'))
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.train()
    parts = ('policy', 'decoder', 'discriminator')
    optim = MultiOptimWrapperConstructor(
        {part: dict(optimizer=dict(type='AdamW', lr=1e-3)) for part in parts})(model)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    images = torch.rand(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    logs = model.train_step(dict(image=images, caption=['a red circle', 'a blue square']), optim)
    assert all(math.isfinite(float(v)) for v in logs.values())
    after = model.policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert 'gen_head.vision_head.weight' in changed
    assert 'language_model.lm_head.weight' not in changed  # frozen, unused for images
    assert model.generate(['a red circle'])['images'].shape == (1, 3, IMAGE, IMAGE)
