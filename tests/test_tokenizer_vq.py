"""VQModel against the official LlamaGen references, and the toy tokenizer pretraining model."""
import json
from pathlib import Path
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper

from rankekit.registry import MODELS, TOKENIZERS
from rankekit.tokenizers import VQModel, VectorQuantizer
from rankekit.tokenizers.vq_model import entropy_loss
from rankekit.toy.pretrain_tokenizer import evaluate_tokenizer, psnr, spherical_kmeans
from rankekit.utils.weights import WeightsFileError

TINY = dict(ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
            z_channels=16, codebook_size=16, codebook_embed_dim=4, image_size=16)


# ---- official references ------------------------------------------------------------------------
@pytest.fixture(scope='module')
def vq_ref(reference_path):
    ckpt, ref_file = reference_path / 'vq_tiny.pt', reference_path / 'vq_tiny_ref.pt'
    if not ckpt.is_file() or not ref_file.is_file():
        pytest.skip(f'vq_tiny.pt / vq_tiny_ref.pt not found in {reference_path}')
    ref = torch.load(ref_file, map_location='cpu', weights_only=True)
    args = json.loads(ref['model_args'])
    # official VQModel hard-codes ch=128, num_res_blocks=2 (our defaults)
    model = VQModel(pretrained=str(ckpt), image_size=32, **args).eval()
    return model, ref


def test_reference_checkpoint_loads_strictly(vq_ref, reference_path):
    model, _ = vq_ref
    sd = torch.load(reference_path / 'vq_tiny.pt', map_location='cpu', weights_only=True)['model']
    own = model.state_dict()
    assert list(own) == list(sd)
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    # every stored tensor but the usage buffer is a parameter (4,981,323 in the public set)
    n_file = sum(v.numel() for k, v in sd.items() if k != 'quantize.codebook_used')
    assert sum(p.numel() for p in model.parameters()) == n_file


def test_encode_matches_reference(vq_ref):
    model, ref = vq_ref
    with torch.no_grad():
        pre = model.encode_latent(ref['images'])
        quant, emb_loss, (perplexity, min_encodings, indices) = model.encode(ref['images'])
    torch.testing.assert_close(pre, ref['encode_pre_quant'], atol=1e-4, rtol=0)
    torch.testing.assert_close(quant, ref['encode_quant'], atol=1e-4, rtol=0)
    assert emb_loss == (None, None, None, 0) and perplexity is None and min_encodings is None
    sure = ref['encode_index_margin'] >= 1e-4
    assert sure.float().mean() >= 0.95  # nearly all positions are well separated
    assert indices.dtype == torch.long and indices.shape == ref['encode_indices'].shape
    assert torch.equal(indices[sure], ref['encode_indices'][sure])


def test_decode_matches_reference(vq_ref):
    model, ref = vq_ref
    codes = ref['code_grid'].reshape(-1)
    (b, h, w), c = ref['code_grid'].shape, model.codebook_embed_dim
    with torch.no_grad():
        recon = model.decode(ref['encode_quant'])
        out = model.decode_code(codes, shape=[b, c, h, w], channel_first=True)
        out_last = model.decode_code(codes, shape=[b, h, w, c], channel_first=False)
        entries = model.quantize.get_codebook_entry(codes)
    torch.testing.assert_close(recon, ref['recon'], atol=1e-4, rtol=0)
    torch.testing.assert_close(out, ref['decode_code_out'], atol=1e-4, rtol=0)
    torch.testing.assert_close(out_last, ref['decode_code_out'], atol=1e-4, rtol=0)
    torch.testing.assert_close(entries, ref['codebook_entries'], atol=1e-4, rtol=0)
    # stored rows are not unit vectors; the entries used are
    assert model.quantize.embedding.weight.norm(dim=1).min() < 0.6
    torch.testing.assert_close(entries.norm(dim=1), torch.ones(len(codes)))


def test_codes_round_trip(vq_ref):
    model, ref = vq_ref
    x = ref['images']
    with torch.no_grad():
        codes = model.images_to_codes(x)
        images = model.codes_to_images(codes)
        quant, _, (_, _, indices) = model.encode(x)
        direct = model.decode(quant)
    b, _, size, _ = x.shape
    args = json.loads(ref['model_args'])
    factor = 2 ** (len(args['encoder_ch_mult']) - 1)  # 2 in the public set
    assert model.downsample_factor == factor
    assert codes.shape == (b, (size // factor) ** 2) and codes.dtype == torch.long
    assert torch.equal(codes, indices.view(b, -1))  # row-major (b, h, w)
    assert 0 <= codes.min() and codes.max() < model.codebook_size == args['codebook_size']
    assert images.shape == x.shape
    torch.testing.assert_close(images, direct, atol=1e-4, rtol=0)
    torch.testing.assert_close(images, ref['recon'], atol=1e-4, rtol=0)


def test_full_vq16_matches_manifest(reference_path):
    path = reference_path / 'manifests' / 'llamagen_vq16.json'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    manifest = json.loads(path.read_text())
    meta = manifest['_meta']['model_args']
    with torch.device('meta'):
        model = VQModel(arch='VQ-16', codebook_size=meta['codebook_size'],
                        codebook_embed_dim=meta['codebook_embed_dim'])
    assert model.config.encoder_ch_mult == meta['encoder_ch_mult']
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v for k, v in manifest.items() if isinstance(v, list)}
    assert set(shapes) == set(expected)
    assert len(shapes) == manifest['_meta']['num_state_dict_keys']  # 344
    assert shapes == expected
    assert sum(p.numel() for p in model.parameters()) == manifest['num_params']  # 71,883,403
    assert model.downsample_factor == 16 and model.grid_size == 16
    assert [k for k, _ in model.named_buffers()] == ['quantize.codebook_used']


def test_wrong_shape_checkpoint_names_the_key(tmp_path):
    torch.manual_seed(0)
    small = VQModel(**TINY)
    path = tmp_path / 'vq.pt'
    torch.save({'model': small.state_dict()}, path)
    mismatch = r'quantize\.embedding\.weight.*\(16, 4\).*\(32, 4\)'
    with pytest.raises(WeightsFileError, match=mismatch):
        VQModel(pretrained=str(path), **dict(TINY, codebook_size=32))
    with pytest.raises(WeightsFileError, match='not found'):
        VQModel(pretrained=str(tmp_path / 'absent.pt'), **TINY)
    again = VQModel(pretrained=str(path), **TINY)  # the matching config loads exactly
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(),
                                                  again.state_dict().values()))


# ---- construction and API --------------------------------------------------------------------
def test_config_errors_are_clear():
    with pytest.raises(TypeError, match="unknown config keys \\['codebook_sise'\\]"):
        VQModel(codebook_sise=16)
    with pytest.raises(ValueError, match='multiple of 32'):
        VQModel(**dict(TINY, ch=48))
    with pytest.raises(ValueError, match="unknown arch 'VQ-4'"):
        VQModel(arch='VQ-4')


def test_arch_presets_and_overrides():
    with torch.device('meta'):
        vq8 = VQModel(arch='VQ-8', codebook_size=1024)
    assert vq8.config.encoder_ch_mult == [1, 2, 2, 4] and vq8.downsample_factor == 8
    assert vq8.codebook_size == 1024 and vq8.grid_size == 32
    from rankekit.apis.config import load_config
    backbone = load_config(str(Path(__file__).resolve().parents[1] /
                               'configs/_base_/models/toy_backbone.py'))
    toy = TOKENIZERS.build(backbone.toy_tokenizer.to_dict())
    assert toy.grid_size == 8 and toy.codebook_size == 256 and toy.codebook_embed_dim == 8
    assert sum(p.numel() for p in toy.parameters()) * 4 < 6e6  # small float32 checkpoint


def test_decoder_parameters_and_freeze():
    model = VQModel(**TINY)
    dec = {id(p) for p in model.decoder_parameters()}
    expected = {id(p) for m in (model.decoder, model.post_quant_conv) for p in m.parameters()}
    assert dec == expected and len(dec) == len(list(model.decoder_parameters()))
    assert model.freeze_encoder() is model
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == expected
    assert not model.quantize.embedding.weight.requires_grad


def test_codes_to_images_rejects_bad_codes():
    model = VQModel(**TINY)
    with pytest.raises(ValueError, match='square grid'):
        model.codes_to_images(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r'\[0, 16\)'):
        model.codes_to_images(torch.full((1, 16), 16))
    with pytest.raises(ValueError, match='multiple of the downsample factor'):
        model.images_to_codes(torch.zeros(1, 3, 15, 15))


def test_codes_to_images_is_differentiable_in_the_decoder():
    model = VQModel(**TINY).freeze_encoder()
    out = model.codes_to_images(torch.arange(16).view(1, 16) % 16)
    out.square().mean().backward()
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None


# ---- quantiser maths by hand ------------------------------------------------------------------
def _quantizer(codebook, **kw):
    vq = VectorQuantizer(codebook.shape[0], codebook.shape[1], **kw)
    vq.embedding.weight.data.copy_(codebook)
    return vq


def test_quantizer_nearest_code_losses_and_usage():
    # codes along +x, +y, -x (stored with different norms); l2 norm makes only directions count
    vq = _quantizer(torch.tensor([[2.0, 0.0], [0.0, 0.5], [-1.0, 0.0]]), beta=0.25)
    z = torch.tensor([[3.0, 1.0], [0.1, 2.0], [-5.0, -4.0]]).view(1, 3, 1, 2).permute(0, 3, 1, 2)
    vq.train()
    z_q, (vq_loss, commit, ent, usage), (_, _, idx) = vq(z)
    assert idx.tolist() == [0, 1, 2]
    zn = F.normalize(torch.tensor([[3.0, 1.0], [0.1, 2.0], [-5.0, -4.0]]), dim=1)
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    mse = (zn - codes).pow(2).mean()
    torch.testing.assert_close(vq_loss, mse)
    torch.testing.assert_close(commit, 0.25 * mse)
    assert ent.item() == 0.0
    torch.testing.assert_close(z_q.permute(0, 2, 3, 1).reshape(3, 2), codes)
    # the usage ring keeps the last indices; 65533 zeros + {0, 1, 2} -> 3 distinct of 3 codes
    assert vq.codebook_used[-3:].tolist() == [0.0, 1.0, 2.0] and usage == 1.0
    vq.eval()
    _, losses, _ = vq(z)
    assert losses == (None, None, None, 0)


def test_straight_through_gradient():
    vq = _quantizer(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), l2_norm=False, show_usage=False)
    z = torch.tensor([[[[0.3]], [[0.9]]]], requires_grad=True)  # (1, 2, 1, 1)
    z_q, _, (_, _, idx) = vq.eval()(z)
    assert idx.tolist() == [1]
    torch.testing.assert_close(z_q.detach().flatten(), torch.tensor([0.0, 1.0]))
    (z_q * torch.tensor([2.0, 3.0]).view(1, 2, 1, 1)).sum().backward()
    torch.testing.assert_close(z.grad.flatten(), torch.tensor([2.0, 3.0]))


def test_entropy_loss_by_hand():
    # two confident rows on different codes: sample entropy 0, mean-distribution entropy log 2
    confident = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(entropy_loss(confident), torch.tensor(-math.log(2)),
                               atol=1e-4, rtol=0)
    # uniform rows: sample entropy log 2 = mean entropy -> 0
    torch.testing.assert_close(entropy_loss(torch.zeros(3, 2)), torch.tensor(0.0),
                               atol=1e-4, rtol=0)


# ---- toy pretraining --------------------------------------------------------------------------
def _synthetic_images(n, size=8, seed=0):
    """Blocky random images in [0, 1]: 2x2 cells of random colours."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.rand(n, 3, size // 2, size // 2, generator=g)
    return F.interpolate(cells, scale_factor=2, mode='nearest')


def test_psnr_by_hand():
    target = torch.full((2, 3, 4, 4), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # mse 0.01 -> 20 dB
    pred[1, :, :2] += 0.2  # mse 0.04 / 2 -> 10 log10(50)
    torch.testing.assert_close(psnr(pred, target), torch.tensor([20.0, 10 * math.log10(50)]))


def test_spherical_kmeans_finds_two_directions():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(50, 3, generator=g), dim=1)
    b = F.normalize(torch.tensor([0.0, 0.0, 1.0]) + 0.05 * torch.randn(50, 3, generator=g), dim=1)
    centres = spherical_kmeans(torch.cat([a, b]), 2, iters=5, generator=g)
    assert torch.allclose(centres.norm(dim=1), torch.ones(2))
    best = (centres @ torch.eye(3)[[0, 2]].t()).max(0).values  # cosine to each true direction
    assert (best > 0.99).all()


def _pretrain_model(**kw):
    torch.manual_seed(0)
    cfg = dict(warmup_iters=1, reset_interval=1, latent_buffer_size=256,
               tokenizer=dict(TINY, codebook_size=64, image_size=8))
    cfg.update(kw)
    return MODELS.build(dict(type='VQPretrainModel', **cfg))


def test_pretrain_steps_warmup_init_and_reset():
    model = _pretrain_model()
    optim = OptimWrapper(torch.optim.Adam(model.parameters(), lr=1e-3))
    images = _synthetic_images(2)  # 2 images x 4x4 grid = 32 positions < 64 codes: dead codes
    batch = dict(image=images, caption=['a', 'b'], attributes=torch.zeros(2, 2, 4))
    model.train()
    logs = model.train_step(batch, optim)  # warm-up: no quantisation
    assert logs['loss/vq'].item() == 0.0 and logs['codebook/reset'].item() == 0
    assert torch.isfinite(logs['loss']) and logs['loss'] > 0
    assert not model.codebook_ready and model.quantizing and model.latents_seen == 32

    before = model.tokenizer.quantize.embedding.weight.detach().clone()
    logs = model.train_step(batch, optim)  # first quantised step: k-means init, then reset
    assert model.codebook_ready
    # (loss/vq may be exactly 0 here: with as many codes as stored latents, k-means puts a code
    # on every latent)
    assert torch.isfinite(logs['loss']) and logs['loss/vq'].item() >= 0
    for key in ('loss/recon', 'psnr', 'codebook/usage'):
        assert torch.isfinite(logs[key]), key
    resets = int(logs['codebook/reset'])
    assert 32 <= resets <= 63 and model.num_resets == resets
    weight = model.tokenizer.quantize.embedding.weight.detach()
    assert not torch.allclose(weight, before)
    # every reset code sits next to a stored latent (noise 0.01)
    assert model.latents_seen == 64
    stored = model.latents[:64]
    dist = torch.cdist(weight, stored).min(1).values
    assert (dist < 0.1).sum() >= resets
    logs = model.train_step(images, optim)  # a bare tensor batch works too
    assert int(model.iteration) == 3 and torch.isfinite(logs['loss'])
    assert logs['loss/vq'].item() > 0
    assert 0 < logs['codebook/usage'] <= 32 / 64  # distinct codes among 32 positions, of 64


def test_codebook_init_from_latents():
    model = _pretrain_model(tokenizer=dict(TINY, codebook_size=2, codebook_embed_dim=3))
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(40, 3, generator=g)
    b = torch.tensor([0.0, -1.0, 0.0]) + 0.05 * torch.randn(40, 3, generator=g)
    model._remember(torch.cat([a, b]).t().reshape(1, 3, 8, 10))
    assert model.latents_seen == 80
    model.init_codebook()
    codes = model.tokenizer.quantize.codebook()
    expected = torch.stack([F.normalize(a, dim=1).mean(0), F.normalize(b, dim=1).mean(0)])
    expected = F.normalize(expected, dim=1)
    order = (codes @ expected.t()).argmax(1)
    assert sorted(order.tolist()) == [0, 1]
    torch.testing.assert_close(codes, expected[order], atol=1e-5, rtol=0)
    assert model.codebook_ready


def test_pretrain_without_fixes_keeps_schedule_off():
    model = _pretrain_model(warmup_iters=0, codebook_init=None, reset_interval=0)
    optim = OptimWrapper(torch.optim.Adam(model.parameters(), lr=1e-3))
    before = model.tokenizer.quantize.embedding.weight.detach().clone()
    logs = model.train_step(dict(image=_synthetic_images(2)), optim)
    assert logs['loss/vq'].item() > 0 and logs['codebook/reset'].item() == 0
    assert not model.codebook_ready and model.num_resets == 0
    # only Adam moved the codebook (lr 1e-3 per step at most)
    assert (model.tokenizer.quantize.embedding.weight - before).abs().max() <= 1.1e-3


def test_val_step_and_evaluate_tokenizer():
    model = _pretrain_model()
    images = _synthetic_images(3, seed=1)
    model.eval()
    outputs = model.val_step(dict(image=images, caption=['x'] * 3))
    assert len(outputs) == 3
    tok = model.tokenizer
    with torch.no_grad():
        codes = tok.images_to_codes(images * 2 - 1)
        recon = (tok.codes_to_images(codes).clamp(-1, 1) + 1) / 2
    for i, out in enumerate(outputs):
        assert out['recon'].shape == (3, 8, 8)
        assert 0 <= out['recon'].min() <= out['recon'].max() <= 1
        torch.testing.assert_close(out['recon'], recon[i], atol=1e-5, rtol=0)
        assert torch.equal(out['codes'], codes[i])
        torch.testing.assert_close(out['psnr'], psnr(recon[i:i + 1], images[i:i + 1])[0])
    result = evaluate_tokenizer(model, images, batch_size=2)
    assert result['usage'] == pytest.approx(len(codes.unique()) / 64)
    assert result['psnr'] == pytest.approx(psnr(recon, images).mean().item(), abs=1e-4)
    assert 1 <= result['perplexity'] <= len(codes.unique()) + 1e-6
    assert not tok.training  # evaluate_tokenizer restores the mode


def test_pretrain_bad_input_is_explained():
    model = _pretrain_model()
    with pytest.raises(ValueError, match=r'batch\["image"\].*\(B, 3, H, W\)'):
        model(torch.zeros(3, 8, 8), mode='loss')
    with pytest.raises(ValueError, match='codebook_init'):
        _pretrain_model(codebook_init='kmeans++')


def test_pretrain_on_toy_shapes_batch():
    toy_shapes = pytest.importorskip('rankekit.datasets.toy_shapes')
    from mmengine.dataset import default_collate
    data = toy_shapes.ToyShapes('train', num_samples=4, image_size=16)
    batch = default_collate([data[i] for i in range(4)])
    model = _pretrain_model(tokenizer=dict(TINY, codebook_size=64, image_size=16))
    optim = OptimWrapper(torch.optim.Adam(model.parameters(), lr=1e-3))
    for _ in range(2):
        logs = model.train_step(batch, optim)
    assert torch.isfinite(logs['loss']) and logs['psnr'] > 0


def _gan_model(**kw):
    cfg = dict(tokenizer=dict(TINY, codebook_size=64), train_parts='decoder', warmup_iters=0,
               reset_interval=0, codebook_init=None,
               l2_weight=0.0, vq_weight=0.0, disc_start=0,
               perceptual_loss=dict(type='ToyPerceptualLoss',
                                    net=dict(type='ToyFeatureNet', width=8, feat_dim=16)),
               discriminator=dict(type='PatchGANDiscriminator', ndf=8, n_layers=1))
    cfg.update(kw)
    return _pretrain_model(**cfg)


def _gan_optim(model):
    from rankekit.engine.optim_constructor import MultiOptimWrapperConstructor
    return MultiOptimWrapperConstructor(dict(
        tokenizer=dict(optimizer=dict(type='Adam', lr=1e-3)),
        discriminator=dict(optimizer=dict(type='Adam', lr=1e-3))))(model)


@pytest.mark.filterwarnings('ignore:ToyPerceptualLoss')
def test_gan_stage_trains_the_decoder_only_and_keeps_the_codes():
    """train_parts='decoder': L1 + perceptual + adaptive hinge GAN moves the decoder and the
    discriminator; encoder, quant_conv and codebook (hence the codes) stay bit for bit."""
    model = _gan_model().train()  # frozen parts in eval mode: no quantiser bookkeeping
    optim = _gan_optim(model)
    assert set(optim.keys()) == {'tokenizer', 'discriminator'}
    images = _synthetic_images(4, size=16)
    tok = model.tokenizer
    frozen = {k: v.clone() for k, v in tok.state_dict().items()
              if k.startswith(('encoder.', 'quant_conv.', 'quantize.'))}
    trained = {k: v.clone() for k, v in tok.state_dict().items()
               if k.startswith(('decoder.', 'post_quant_conv.'))}
    disc = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    with torch.no_grad():
        codes = tok.images_to_codes(images * 2 - 1)
    logs = model.train_step(dict(image=images), optim)
    state = tok.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert all(not torch.equal(state[k], v) for k, v in trained.items() if v.is_floating_point()
               and v.dim() > 1)
    assert any(not torch.equal(model.discriminator.state_dict()[k], v) for k, v in disc.items())
    with torch.no_grad():
        assert torch.equal(tok.images_to_codes(images * 2 - 1), codes)
    # the generator loss is the decoder phase's: L1 + perceptual + gan_weight * adaptive * G
    assert logs['loss/vq'].item() == 0.0 and logs['loss/perceptual'] > 0
    expected = (logs['loss/recon'] + logs['loss/perceptual']
                + 0.5 * logs['gan/adaptive_weight'] * logs['loss/gan'])
    torch.testing.assert_close(logs['loss'], expected)
    assert logs['gan/adaptive_weight'] > 0 and logs['loss/disc'] > 0
    assert all(p.requires_grad for p in model.discriminator.parameters())  # restored


@pytest.mark.filterwarnings('ignore:ToyPerceptualLoss')
def test_gan_stage_waits_for_disc_start_and_refuses_codebook_schedules():
    model = _gan_model(disc_start=5, adaptive_gan_weight=False)
    logs = model.train().train_step(dict(image=_synthetic_images(2, size=16)), _gan_optim(model))
    assert 'loss/disc' not in logs and 'loss/gan' not in logs
    torch.testing.assert_close(logs['loss'], logs['loss/recon'] + logs['loss/perceptual'])
    with pytest.raises(ValueError, match=r"train_parts='decoder' keeps the codebook fixed.*"
                                         r'warmup_iters=0'):
        _gan_model(warmup_iters=3)
    with pytest.raises(ValueError, match="train_parts must be 'all' or 'decoder'"):
        _gan_model(train_parts='encoder')


class _PatchCodes(torch.nn.Module):
    """Fake tokenizers for code_locality: the code of a 4x4 patch is its (rounded) mean colour
    (local), or that plus the whole image's mean (global: every code moves with any pixel)."""

    image_size = 32

    def __init__(self, global_codes: bool):
        super().__init__()
        self.global_codes = global_codes

    def images_to_codes(self, x):
        patches = F.avg_pool2d((x + 1) / 2, 4).sum(1).flatten(1)  # (B, 64), 0 on black
        if self.global_codes:
            patches = patches + 100 * ((x + 1) / 2).mean((1, 2, 3))[:, None]
        return (patches * 16).round().long()


def test_code_locality_counts_codes_a_second_object_changes():
    from rankekit.toy.quality import code_locality
    local = code_locality(_PatchCodes(global_codes=False), num_scenes=50)
    # a second object covers a few of the 64 patches (radius 2.6-4.2 px: 4-9 patches)
    assert 2 / 64 < local < 12 / 64
    assert code_locality(_PatchCodes(global_codes=True), num_scenes=50) == 1.0


def test_patch_vq_codes_are_local_and_share_the_decoder_layout():
    """PatchVQModel: a code depends on its own patch only; everything but the encoder keeps
    VQModel's key names (a VQModel's decoder loads into it)."""
    from rankekit.tokenizers import PatchVQModel
    torch.manual_seed(0)
    patch_vq = PatchVQModel(**TINY, encoder_width=16, encoder_depth=1).eval()
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    changed = images.clone()
    changed[:, :, 4:6, 6:8] = -images[:, :, 4:6, 6:8]  # inside patch (row 2, col 3) of the 4x4 grid
    with torch.no_grad():
        diff = patch_vq.encode_latent(images) - patch_vq.encode_latent(changed)
    moved = diff.abs().amax(1)[0] > 0
    assert moved[2, 3] and moved.sum() == 1
    vq = VQModel(**TINY)
    decoder_keys = {k for k in vq.state_dict() if not k.startswith('encoder.')}
    assert decoder_keys <= set(patch_vq.state_dict())
    patch_vq.load_state_dict({**patch_vq.state_dict(),
                              **{k: vq.state_dict()[k] for k in decoder_keys}})
    with pytest.raises(ValueError, match='encoder_width'):
        PatchVQModel(**TINY, encoder_width=0)
