"""LlamaGenGPT against the official LlamaGen references; the KV-cache sampler; toy pretraining."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import default_collate
from mmengine.optim import OptimWrapper

from rankekit.policies import LlamaGenGPT, SampleOutput
from rankekit.policies.sampling import (cfg_combine, draw_uniforms, sample_from_logits,
                                        token_logprobs)
from rankekit.registry import MODELS, POLICIES
from rankekit.utils.weights import WeightsFileError, load_model_weights

VARIANTS = ['gpt_tiny', 'gpt_tiny_cls120']


# ---- official references ------------------------------------------------------------------------
def _load_variant(reference_path, name):
    ckpt, ref_file = reference_path / f'{name}.pt', reference_path / f'{name}_ref.pt'
    if not ckpt.is_file() or not ref_file.is_file():
        pytest.skip(f'{name}.pt / {name}_ref.pt not found in {reference_path}')
    ref = torch.load(ref_file, map_location='cpu', weights_only=True)
    args = json.loads(ref['model_args'])
    model = LlamaGenGPT(**{k: v for k, v in args.items() if k != 'model_type'}).eval()
    report = load_model_weights(model, ckpt, strict=True, what=f'reference {name}')
    assert report == dict(missing=[], unexpected=[], mismatched=[])
    return model, ref


@pytest.fixture(scope='module', params=VARIANTS)
def variant(request, reference_path):
    return _load_variant(reference_path, request.param)


@pytest.fixture(scope='module')
def tiny(reference_path):
    return _load_variant(reference_path, 'gpt_tiny')


def test_strict_load_keeps_official_keys(variant, reference_path):
    model, ref = variant
    name = 'gpt_tiny' if model.cls_token_num == 8 else 'gpt_tiny_cls120'
    sd = torch.load(reference_path / f'{name}.pt', map_location='cpu', weights_only=True)['model']
    own = model.state_dict()
    assert list(own) == list(sd) and len(own) == 20
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    assert sum(p.numel() for p in model.parameters()) == 145_728  # buffer excluded
    assert own['cls_embedding.uncond_embedding'].shape == (120, 32)


def test_teacher_forcing_matches_official(variant):
    model, ref = variant
    cond, mask, tokens = ref['caption_emb'], ref['emb_masks'], ref['image_tokens']
    S = cond.shape[1] + tokens.shape[1] - 1
    # our default mask IS the official training mask (dataset/t2i.py), sliced [:-1, :-1]
    assert torch.equal(LlamaGenGPT.attention_mask(mask, S), ref['train_attn_mask'])
    with torch.no_grad():
        logits = model(cond, mask, tokens)
        explicit = model(cond, mask, tokens, mask=ref['train_attn_mask'])
        logp = model.log_probs(cond, mask, tokens)
    assert logits.shape == (2, 16, 64)
    torch.testing.assert_close(logits, ref['tf_logits'], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(explicit, ref['tf_logits'], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logp, ref['tf_logprobs'], atol=1e-4, rtol=1e-4)
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    torch.testing.assert_close(loss, ref['tf_loss'], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('scale,key', [(4.0, 'cfg4'), (1.0, 'cfg1')])
def test_greedy_generation_matches_official(variant, scale, key):
    model, ref = variant
    out = model.sample(ref['caption_emb'], ref['emb_masks'], cfg_scale=scale, top_k=1,
                       return_topk_logits=model.vocab_size)
    assert torch.equal(out.tokens, ref[f'gen_{key}_tokens'].long())
    # all V logits come back sorted: scatter them into vocab order, step by step
    combined = torch.empty_like(out.topk_logits).scatter_(-1, out.topk_indices, out.topk_logits)
    torch.testing.assert_close(combined, ref[f'gen_{key}_logits'], atol=1e-4, rtol=1e-4)
    assert torch.equal(out.logprobs, torch.zeros(2, 16))  # top_k=1: probability 1


def test_official_init_consumes_rng_like_upstream(reference_path):
    path = reference_path / 'gpt_tiny_official_init.pt'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    init = torch.load(path, map_location='cpu', weights_only=True)['model']
    torch.manual_seed(0)
    own = LlamaGenGPT(arch='tiny').state_dict()
    assert list(own) == list(init)
    for k, v in init.items():
        assert torch.equal(own[k], v), k
    assert torch.count_nonzero(own['output.weight']) == 0


@pytest.mark.parametrize('arch,manifest', [('GPT-B', 'b'), ('GPT-L', 'l'), ('GPT-XL', 'xl'),
                                           ('GPT-XXL', 'xxl')])
def test_full_size_keys_match_manifests(reference_path, arch, manifest):
    path = reference_path / 'manifests' / f'llamagen_gpt_{manifest}_t2i.json'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    spec = json.loads(path.read_text())
    shapes = {k: v for k, v in spec.items() if isinstance(v, list)}
    with torch.device('meta'):
        model = LlamaGenGPT(arch=arch)
    own = model.state_dict()
    assert list(own) == list(shapes)
    assert {k: list(v.shape) for k, v in own.items()} == shapes
    assert sum(p.numel() for p in model.parameters()) == spec['num_params']
    assert model.num_image_tokens == 256 and model.grid_size == 16
    with torch.device('meta'):
        big = LlamaGenGPT(arch=arch, block_size=1024)  # 512 px: same weights
    assert {k: v.shape for k, v in big.state_dict().items()} == {k: v.shape for k, v in own.items()}
    assert big.grid_size == 32


# ---- sampler ------------------------------------------------------------------------------------
def _batch(ref, rows):
    return ref['caption_emb'][rows], ref['emb_masks'][rows]


def reference_sample(model, cond, mask, num_tokens, uniforms, cfg_scale=1.0, cfg_first_n=None,
                     temperature=1.0, top_k=0, top_p=1.0):
    """No cache, no shortcuts: every step re-runs the full teacher-forced forward."""
    B, T = mask.shape
    assert T == model.cls_token_num
    null = model.null_caption(T)
    tokens = torch.zeros(B, 0, dtype=torch.long)
    logps = []
    with torch.no_grad():
        for i in range(num_tokens):
            padded = torch.cat([tokens, torch.zeros(B, 1, dtype=torch.long)], 1)
            logits = model(cond, mask, padded)[:, i]
            use_cfg = cfg_scale != 1.0 and (cfg_first_n is None or i < cfg_first_n)
            if use_cfg:
                uncond = model(null.expand(B, -1, -1), mask, padded)[:, i]
                logits = cfg_combine(logits, uncond, cfg_scale)
            tok, lp = sample_from_logits(logits, uniforms[:, i], temperature, top_k, top_p)
            tokens = torch.cat([tokens, tok[:, None]], 1)
            logps.append(lp)
    return tokens, torch.stack(logps, 1)


@pytest.mark.parametrize('settings', [
    dict(cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0),
    dict(cfg_scale=3.0, temperature=0.7, top_k=10, top_p=0.9, cfg_first_n=5),
    dict(cfg_scale=1.0, temperature=1.3, top_k=0, top_p=0.8),
])
def test_kv_cache_sampler_equals_recompute(tiny, settings):
    model, ref = tiny
    # rows 0 and 1 share a caption (and their prefill), row 2 is left-padded
    cond, mask = _batch(ref, [0, 0, 1])
    seeds = [11, 12, 13]
    out = model.sample(cond, mask, num_tokens=12, seeds=seeds, **settings)
    uniforms = draw_uniforms(3, 12, seeds=seeds)
    tokens, logps = reference_sample(model, cond, mask, 12, uniforms, **settings)
    assert torch.equal(out.tokens, tokens)
    torch.testing.assert_close(out.logprobs, logps, atol=1e-5, rtol=1e-5)
    assert not torch.equal(out.tokens[0], out.tokens[1])  # same caption, own random stream


def test_sampler_logprobs_equal_log_probs(variant):
    model, ref = variant
    cond, mask = ref['caption_emb'], ref['emb_masks']
    out = model.sample(cond, mask, cfg_scale=1.0, temperature=1.0, top_k=0,
                       generator=torch.Generator().manual_seed(0))
    assert isinstance(out, SampleOutput) and out.tokens.dtype == torch.long
    assert out.tokens.shape == out.logprobs.shape == (2, 16)
    assert out.topk_logits is None and out.topk_indices is None
    model.train()  # log_probs never applies dropout, whatever the mode
    try:
        logp = model.log_probs(cond, mask, out.tokens)
    finally:
        model.eval()
    torch.testing.assert_close(logp, out.logprobs, atol=1e-4, rtol=1e-4)
    assert logp.requires_grad  # outputs of sample() are ordinary tensors: autograd works
    logp.sum().backward()
    assert model.output.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_per_row_seeds_do_not_depend_on_the_batch(tiny):
    model, ref = tiny
    cond, mask = _batch(ref, [0, 1, 1])
    together = model.sample(cond, mask, cfg_scale=2.0, seeds=[5, 6, 7])
    alone = model.sample(cond[1:2], mask[1:2], cfg_scale=2.0, seeds=[6])
    assert torch.equal(together.tokens[1], alone.tokens[0])
    torch.testing.assert_close(together.logprobs[1], alone.logprobs[0], atol=1e-5, rtol=1e-5)
    again = model.sample(cond, mask, cfg_scale=2.0, seeds=[5, 6, 7])
    assert torch.equal(together.tokens, again.tokens)
    g1 = model.sample(cond, mask, generator=torch.Generator().manual_seed(3)).tokens
    g2 = model.sample(cond, mask, generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(g1, g2)


def test_rows_run_by_the_sampler(tiny):
    model, ref = tiny
    rows, captions = [], []
    hooks = [model.tok_embeddings.register_forward_hook(lambda m, i, o: rows.append(len(o))),
             model.cls_embedding.register_forward_hook(lambda m, i, o: captions.append(len(o)))]
    try:
        model.sample(ref['caption_emb'], ref['emb_masks'], cfg_scale=1.0, num_tokens=6)
        assert rows == [2] * 5 and captions == [2]  # cfg 1: no null-caption rows at all
        rows.clear(), captions.clear()
        model.sample(ref['caption_emb'], ref['emb_masks'], cfg_scale=4.0, num_tokens=6,
                     cfg_first_n=3)
        assert rows == [4, 4, 2, 2, 2]  # the null-caption rows stop with the guidance
        rows.clear(), captions.clear()
        # 3 rollouts of prompt 0 then 2 of prompt 1: one prefill per run of equal rows, for
        # the captions (2) and for the null captions, which differ by mask only (2)
        cond, mask = _batch(ref, [0, 0, 0, 1, 1])
        model.sample(cond, mask, cfg_scale=4.0, num_tokens=2)
        assert captions == [4] and rows == [10]
    finally:
        for hook in hooks:
            hook.remove()


def test_topk_logits_and_no_cache_in_state_dict(tiny):
    model, ref = tiny
    keys = list(model.state_dict())
    out = model.sample(ref['caption_emb'], ref['emb_masks'], cfg_scale=4.0, num_tokens=7,
                       return_topk_logits=5)
    assert out.topk_logits.shape == out.topk_indices.shape == (2, 7, 5)
    assert bool((out.topk_logits[..., :-1] >= out.topk_logits[..., 1:]).all())
    assert list(model.state_dict()) == keys
    assert [name for name, _ in model.named_buffers()] == ['cls_embedding.uncond_embedding']


def test_short_caption_is_left_padded(tiny):
    model, ref = tiny
    cond, mask, tokens = ref['caption_emb'][1:], ref['emb_masks'][1:], ref['image_tokens'][1:]
    assert mask[0, :3].sum() == 0  # row 1 has three pads: dropping them changes nothing
    with torch.no_grad():
        torch.testing.assert_close(model(cond[:, 3:], mask[:, 3:], tokens),
                                   model(cond, mask, tokens), atol=1e-5, rtol=1e-5)
    a = model.sample(cond[:, 3:], mask[:, 3:], seeds=[1])
    b = model.sample(cond, mask, seeds=[1])
    assert torch.equal(a.tokens, b.tokens)


def test_caption_dropout_uses_null_caption(tiny):
    model, ref = tiny
    cond, mask, tokens = ref['caption_emb'], ref['emb_masks'], ref['image_tokens']
    null = model.null_caption(8).expand(2, -1, -1)
    with torch.no_grad():
        model.class_dropout_prob = 1.0
        dropped = model(cond, mask, tokens, drop_caption=True)
        model.class_dropout_prob = 0.0
        kept = model(cond, mask, tokens, drop_caption=True)
        model.class_dropout_prob = 0.1
        torch.testing.assert_close(dropped, model(null, mask, tokens))
        torch.testing.assert_close(kept, model(cond, mask, tokens))


def test_bad_inputs_give_clear_errors(tiny):
    model, ref = tiny
    cond, mask = ref['caption_emb'], ref['emb_masks']
    with pytest.raises(ValueError, match='top_k'):
        model.sample(cond, mask, top_k=65)
    with pytest.raises(ValueError, match='temperature'):
        model.sample(cond, mask, temperature=0)
    with pytest.raises(ValueError, match='top_p'):
        model.sample(cond, mask, top_p=0)
    with pytest.raises(ValueError, match='num_tokens'):
        model.sample(cond, mask, num_tokens=17)
    with pytest.raises(ValueError, match='one seed per row'):
        model.sample(cond, mask, seeds=[1])
    with pytest.raises(ValueError, match='cls_token_num=8'):
        model.sample(torch.zeros(2, 9, 32), torch.ones(2, 9))
    with pytest.raises(ValueError, match='left padding'):
        model(cond, mask.flip(1), ref['image_tokens'])
    with pytest.raises(ValueError, match='caption_dim=32'):
        model(torch.zeros(2, 8, 16), mask, ref['image_tokens'])
    with pytest.raises(ValueError, match='unknown arch'):
        LlamaGenGPT(arch='GPT-Q')
    with pytest.raises(ValueError, match='square'):
        LlamaGenGPT(arch='tiny', block_size=15)


def test_wrong_checkpoint_is_reported(reference_path, tmp_path):
    path = reference_path / 'gpt_tiny.pt'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    model = LlamaGenGPT(arch='tiny', dim=128)
    with pytest.raises(WeightsFileError, match='tok_embeddings.weight'):
        load_model_weights(model, path)
    model = POLICIES.build(dict(type='LlamaGenGPT', arch='tiny', pretrained=str(path)))
    assert model.vocab_size == 64 and model.cls_token_num == 8 and model.caption_dim == 32


# ---- sampling helpers, by hand ------------------------------------------------------------------
def test_sample_from_logits_by_hand():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    # top-p 0.7: sorted 0.5, 0.3 (mass before 0.5 <= 0.7), 0.15 (0.8 > 0.7: dropped)
    for u, want in [(0.1, 1), (0.6, 1), (0.7, 3), (0.99, 3)]:
        tok, lp = sample_from_logits(logits, torch.tensor([u]), top_p=0.7)
        assert tok.item() == want
        assert lp.item() == pytest.approx(math.log(probs[0, want].item() / 0.8), abs=1e-6)
    # no filtering: inverse CDF in vocab order, cdf = .05 .55 .70 1.0
    for u, want in [(0.01, 0), (0.3, 1), (0.6, 2), (0.9, 3)]:
        tok, lp = sample_from_logits(logits, torch.tensor([u]))
        assert tok.item() == want
        assert lp.item() == pytest.approx(math.log(probs[0, want].item()), abs=1e-6)
    # temperature 0.5 squares the probabilities before renormalising; top-k 2 keeps 1 and 3
    tok, lp = sample_from_logits(logits, torch.tensor([0.0]), temperature=0.5, top_k=2)
    assert tok.item() == 1
    assert lp.item() == pytest.approx(math.log(0.25 / (0.25 + 0.09)), abs=1e-6)
    tok, lp = sample_from_logits(logits, torch.tensor([0.999]), top_k=1)
    assert tok.item() == 1 and lp.item() == 0.0
    lp_all = token_logprobs(logits, torch.tensor([2]))
    assert lp_all.item() == pytest.approx(math.log(0.15), abs=1e-6)
    torch.testing.assert_close(cfg_combine(torch.tensor([2.0]), torch.tensor([1.0]), 4.0),
                               torch.tensor([5.0]))


def test_sampled_frequencies_follow_the_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(20000, -1)
    u = draw_uniforms(20000, 1, generator=torch.Generator().manual_seed(1))[:, 0]
    tok, _ = sample_from_logits(logits, u, top_k=3)
    freq = torch.bincount(tok, minlength=4).float() / 20000
    want = torch.tensor([1.0, math.e, math.e ** 2, 0.0])
    torch.testing.assert_close(freq, want / want.sum(), atol=0.01, rtol=0)


# ---- toy pretraining ----------------------------------------------------------------------------
def test_policy_pretrain_model_trains():
    from rankekit.datasets.toy_shapes import ToyShapes
    from rankekit.toy.pretrain_policy import PolicyPretrainModel
    torch.manual_seed(0)
    model = MODELS.build(PolicyPretrainModel.info_example)
    assert all(not p.requires_grad for p in model.tokenizer.parameters())
    assert not model.tokenizer.training and model.policy.training
    data = ToyShapes(num_samples=8, image_size=16)
    batch = default_collate([data[i] for i in range(8)])
    trainable = [p for p in model.parameters() if p.requires_grad]
    wrapper = OptimWrapper(torch.optim.AdamW(trainable, lr=3e-3))
    vocab = model.policy.vocab_size
    encoder_before = [p.detach().clone() for p in model.text_encoder.parameters()]
    tokenizer_before = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    logs = [model.train_step(batch, wrapper) for _ in range(4)]
    # the zero-initialised output head starts at the uniform distribution: ln(V)
    assert logs[0]['loss/ce'].item() == pytest.approx(math.log(vocab), abs=1e-4)
    assert logs[-1]['loss/ce'].item() < logs[0]['loss/ce'].item()
    assert 0.0 <= logs[-1]['acc/token'].item() <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before,
                                                        model.text_encoder.parameters()))
    assert all(torch.equal(v, model.tokenizer.state_dict()[k]) for k, v in tokenizer_before.items())
    preds = model.val_step(batch)
    assert len(preds) == 8 and set(preds[0]) == {'nll', 'acc'}
    images = model.sample_images(['a red circle', 'a blue square'], cfg_scale=2.0, seeds=[0, 1])
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1


def test_policy_pretrain_model_checks_shapes():
    from rankekit.toy.pretrain_policy import PolicyPretrainModel
    cfg = {k: v for k, v in PolicyPretrainModel.info_example.items() if k != 'type'}
    with pytest.raises(ValueError, match='vocab_size'):
        PolicyPretrainModel(**{**cfg, 'policy': {**cfg['policy'], 'vocab_size': 16}})
    with pytest.raises(ValueError, match='caption_dim'):
        PolicyPretrainModel(**{**cfg, 'policy': {**cfg['policy'], 'caption_dim': 16}})
    with pytest.raises(ValueError, match='block_size'):
        PolicyPretrainModel(**{**cfg, 'policy': {**cfg['policy'], 'block_size': 16}})
