"""Evaluation metrics: Fréchet distance, FID metric + cache, CLIP score, LCS-KL, compositional
accuracy, the clean-fid protocol. Expected values are closed forms or computed by hand."""
import math
import sys
import types

import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope
from torch import nn

from rankekit.datasets import ToyShapes, parse_caption
from rankekit.evaluation import fid as fid_module
from rankekit.evaluation.common import RealImages
from rankekit.evaluation.metrics import (COCOFIDProtocol, ClipScoreMetric, CompositionalAccuracy,
                                         FIDMetric, LCSMetric, code_histogram, compute_clean_fid,
                                         feature_statistics, fid_from_features, frechet_distance,
                                         lcs_from_codes, lcs_kl, real_floor, smooth, token_entropy)
from rankekit.registry import EVALUATOR, METRICS

REAL = dict(type='ToyShapes', split='val', num_samples=12, image_size=16)


def real_images(n=12, split='val', size=16):
    ds = ToyShapes(split, num_samples=n, image_size=size)
    return ds, torch.stack([ds[i]['image'] for i in range(n)])


def samples(images, captions=None, tokens=None):
    """What RankEModel.val_step returns: one dict per caption."""
    captions = captions or ['a red circle'] * len(images)
    out = [dict(caption=c, image=img) for c, img in zip(captions, images)]
    if tokens is not None:
        for s, t in zip(out, tokens):
            s['tokens'] = t
    return out


class ColourFeatures(nn.Module):
    """Hand-checkable features: ``scale`` * mean of each channel and of its square (N, 6)."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.calls = 0

    def features(self, images):
        self.calls += len(images)
        x = images.flatten(2)
        return self.scale * torch.cat([x.mean(-1), (x ** 2).mean(-1)], 1)


def hand_features(images):
    x = images.flatten(2).double()
    return torch.cat([x.mean(-1), (x ** 2).mean(-1)], 1).numpy()


# ------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------
def test_fid_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(300, 8)) @ np.diag(np.arange(1, 9.0))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    mu, sigma = feature_statistics(feats)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    feats = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mu, sigma = feature_statistics(torch.tensor(feats))
    np.testing.assert_allclose(mu, [2.0, 2.0])
    # deviations (-2,-1), (0,-1), (2,2): sums of products / (N - 1)
    np.testing.assert_allclose(sigma, [[8 / 2, 6 / 2], [6 / 2, 6 / 2]])
    with pytest.raises(ValueError, match='at least 2 samples'):
        feature_statistics(feats[:1])


def test_fid_of_shifted_means_with_identity_covariances():
    mu1, mu2 = np.array([1.0, -2.0, 0.5, 3.0]), np.array([0.0, 1.0, 0.5, -1.0])
    expected = 1 + 9 + 0 + 16
    assert frechet_distance(mu1, np.eye(4), mu2, np.eye(4)) == pytest.approx(expected, abs=1e-9)


# mu1 - mu2 = (1, 2, 0): |mu|^2 = 5; per dim s1 + s2 - 2 sqrt(s1 s2): 1 + 4 - 4 = 1,
# 4 + 1 - 4 = 1, 9 + 0.25 - 3 = 6.25
DIAG_CASE = dict(mu1=[1.0, 2.0, 0.0], mu2=[0.0, 0.0, 0.0], s1=[1.0, 4.0, 9.0], s2=[4.0, 1.0, 0.25])
DIAG_EXPECTED = 5 + 1 + 1 + 6.25


def test_fid_hand_case_with_diagonal_covariances():
    c = DIAG_CASE
    value = frechet_distance(c['mu1'], np.diag(c['s1']), c['mu2'], np.diag(c['s2']))
    assert value == pytest.approx(DIAG_EXPECTED, abs=1e-9)


def test_fid_is_invariant_to_a_common_rotation():
    """Rotating both Gaussians leaves FD unchanged: exercises sqrtm on non-diagonal matrices."""
    c = DIAG_CASE
    rot, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    s1, s2 = rot @ np.diag(c['s1']) @ rot.T, rot @ np.diag(c['s2']) @ rot.T
    value = frechet_distance(rot @ c['mu1'], s1, rot @ c['mu2'], s2)
    assert value == pytest.approx(DIAG_EXPECTED, abs=1e-8)


def _fd_symmetric_form(f1, f2):
    """Reference FD via tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2) with eigh (always real)."""
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    w, v = np.linalg.eigh(s1)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(half @ s2 @ half), 0, None)).sum()
    return (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * root_trace


def test_fid_of_rank_deficient_features_is_finite_and_right():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(6, 24)), rng.normal(size=(7, 24)) + 0.5  # rank 5 and 6 of 24
    value = fid_from_features(f1, f2)
    assert math.isfinite(value)
    assert value == pytest.approx(_fd_symmetric_form(f1, f2), rel=1e-5)


def test_sqrtm_guard_adds_eps_when_the_root_is_not_finite(monkeypatch):
    real_sqrtm, calls = fid_module._sqrtm, []

    def flaky_sqrtm(matrix):  # the first root fails, as sqrtm does on singular products
        calls.append(matrix.copy())
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(fid_module, '_sqrtm', flaky_sqrtm)
    c, eps = DIAG_CASE, 0.01
    s1, s2 = np.array(c['s1']), np.array(c['s2'])
    value = frechet_distance(c['mu1'], np.diag(s1), c['mu2'], np.diag(s2), eps=eps)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], np.diag((s1 + eps) * (s2 + eps)))
    # the traces keep the original covariances, only the root sees the offset
    expected = 5 + np.sum(s1 + s2 - 2 * np.sqrt((s1 + eps) * (s2 + eps)))
    assert value == pytest.approx(expected, abs=1e-9)


def test_sqrtm_guard_raises_on_a_large_imaginary_part(monkeypatch):
    monkeypatch.setattr(fid_module, '_sqrtm', lambda m: np.eye(len(m)) * (1 + 1j))
    with pytest.raises(ValueError, match='imaginary part'):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_small_imaginary_round_off_is_dropped(monkeypatch):
    monkeypatch.setattr(fid_module, '_sqrtm', lambda m: np.eye(len(m)) * (1 + 1e-9j))
    assert frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)) == pytest.approx(2.0)


def test_frechet_distance_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match='shapes do not match'):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ------------------------------------------------------------------------------------------------
# FIDMetric
# ------------------------------------------------------------------------------------------------
def test_fid_metric_matches_the_hand_computed_features():
    _, real = real_images(12)
    _, other = real_images(10, split='test')
    metric = FIDMetric(feature_extractor=ColourFeatures(), real=REAL)
    metric.process(None, samples(other[:4]))  # two batches, one result row per sample
    metric.process(None, samples(other[4:]))
    assert len(metric.results) == 10
    result = metric.evaluate(10)
    expected = fid_from_features(hand_features(other), hand_features(real))
    assert result['fid/fid'] == pytest.approx(expected, rel=1e-5)
    assert result['fid/num_images'] == 10
    # the real images themselves score 0
    metric.process(None, samples(real))
    assert metric.evaluate(12)['fid/fid'] == pytest.approx(0.0, abs=1e-6)


def test_fid_metric_reference_cache_and_stale_detection(tmp_path):
    cache = tmp_path / 'ref' / 'toy_fid.npz'
    _, gen = real_images(6, split='test')

    def run(extractor, real=REAL, num_real=None):
        metric = FIDMetric(feature_extractor=extractor, real=real, num_real=num_real,
                           reference_cache=str(cache))
        metric.process(None, samples(gen))
        return metric.evaluate(6)['fid/fid']

    first = ColourFeatures()
    value = run(first)
    assert first.calls == 6 + 12  # generated + real
    with np.load(cache) as data:
        assert set(data.files) == {'mu', 'sigma', 'n', 'key'}
        assert int(data['n']) == 12 and data['mu'].shape == (6,)
        np.testing.assert_allclose(data['mu'], hand_features(real_images(12)[1]).mean(0),
                                   rtol=1e-6)
        key = str(data['key'])
    again = ColourFeatures()
    assert run(again) == pytest.approx(value, rel=1e-12)
    assert again.calls == 6  # the real statistics came from the cache
    # other weights, another real set, fewer real images: stale, recomputed
    for extractor, kwargs in ((ColourFeatures(scale=2.0), {}),
                              (ColourFeatures(), dict(real=dict(REAL, seed=1))),
                              (ColourFeatures(), dict(num_real=10))):
        run(extractor, **kwargs)
        assert extractor.calls == 6 + (10 if kwargs.get('num_real') else 12)
        with np.load(cache) as data:
            assert str(data['key']) != key
            key = str(data['key'])


def test_fid_metric_ignores_a_cache_with_a_wrong_key(tmp_path):
    cache = tmp_path / 'fid.npz'
    np.savez(cache, key=np.array('some other extractor'), mu=np.full(6, 1e3), sigma=np.eye(6),
             n=np.array(5))
    _, gen = real_images(6, split='test')
    metric = FIDMetric(feature_extractor=ColourFeatures(), real=REAL, reference_cache=str(cache))
    metric.process(None, samples(gen))
    expected = fid_from_features(hand_features(gen), hand_features(real_images(12)[1]))
    assert metric.evaluate(6)['fid/fid'] == pytest.approx(expected, rel=1e-5)


def test_fid_metric_real_floor_is_the_fid_of_disjoint_real_images(tmp_path):
    """real_floor = FID(first N floor images, reference), N = the generated count; cached."""
    floor = dict(type='ToyShapes', split='test', num_samples=8, image_size=16)
    _, floor_images = real_images(8, split='test')
    _, gen = real_images(7, split='train')
    cache = tmp_path / 'fid.npz'
    for _ in range(2):  # computed, then read back from fid_floor.npz
        extractor = ColourFeatures()
        metric = FIDMetric(feature_extractor=extractor, real=REAL, floor_real=floor,
                           reference_cache=str(cache))
        metric.process(None, samples(gen[:6]))
        result = metric.evaluate(6)
        expected = fid_from_features(hand_features(floor_images[:6]),
                                     hand_features(real_images(12)[1]))
        assert result['fid/real_floor'] == pytest.approx(expected, rel=1e-5)
        assert result['fid/fid'] == pytest.approx(
            fid_from_features(hand_features(gen[:6]), hand_features(real_images(12)[1])), rel=1e-5)
    assert (tmp_path / 'fid_floor.npz').is_file()
    assert extractor.calls == 6  # second pass: reference and floor features from the caches
    # more generated images than floor images: a clear error
    metric = FIDMetric(feature_extractor=ColourFeatures(), real=REAL, floor_real=floor)
    metric.process(None, samples(torch.cat([gen, gen[:2]])))
    with pytest.raises(ValueError, match=r'9 generated, floor_real has 8.*num_samples=9'):
        metric.evaluate(9)


def test_real_images_from_a_folder_match_the_dataset(tmp_path):
    ds, images = real_images(5)
    ds.write_folder(tmp_path / 'real')
    folder = RealImages(str(tmp_path / 'real'))
    loaded = torch.cat(list(folder.batches(batch_size=2)))
    assert loaded.shape == images.shape
    assert (loaded - images).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit PNG rounding
    key = folder.describe()
    assert RealImages(str(tmp_path / 'real')).describe() == key
    folder_path = tmp_path / 'real'
    (folder_path / 'extra.png').write_bytes((folder_path / 'val_000000.png').read_bytes())
    assert RealImages(str(tmp_path / 'real')).describe() != key  # a new file changes the key
    with pytest.raises(ValueError, match='num_real=9'):
        RealImages(str(tmp_path / 'real'), num_real=9)


def test_fid_metric_in_an_mmengine_evaluator():
    _, gen = real_images(5, split='test')
    with DefaultScope.overwrite_default_scope('rankekit'):  # as a runner with default_scope
        evaluator = EVALUATOR.build(dict(type='Evaluator', metrics=[
            dict(type='FIDMetric', feature_extractor=ColourFeatures(), real=REAL)]))
    evaluator.process(samples(gen), dict(caption=['x'] * 5))
    out = evaluator.evaluate(5)
    expected = fid_from_features(hand_features(gen), hand_features(real_images(12)[1]))
    assert out['fid/fid'] == pytest.approx(expected, rel=1e-5)


def test_generated_images_in_the_wrong_range_are_refused():
    metric = FIDMetric(feature_extractor=ColourFeatures(), real=REAL)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        metric.process(None, samples(torch.full((2, 3, 16, 16), -1.0)))
    with pytest.raises(KeyError, match="no 'image'"):
        metric.process(None, [dict(caption='a')])


# ------------------------------------------------------------------------------------------------
# CLIP score
# ------------------------------------------------------------------------------------------------
class FakeClip(nn.Module):
    """Score = scale * (mean pixel + len(prefix + caption) / 100)."""

    def __init__(self, scale=100.0, prefix='A photo depicts '):
        super().__init__()
        self.scale, self.prefix = scale, prefix

    def forward(self, images, prompts):
        lengths = torch.tensor([len(self.prefix + p) for p in prompts], dtype=torch.float32)
        return self.scale * (images.mean((1, 2, 3)) + lengths / 100)


def test_clip_score_metric_mean_and_std():
    images = torch.stack([torch.full((3, 8, 8), v) for v in (0.1, 0.3, 0.5)])
    captions = ['ab', 'abcd', 'a']  # with the 16-character prefix: 18, 20, 17 characters
    metric = ClipScoreMetric(clip=FakeClip())
    metric.process(None, samples(images[:2], captions[:2]))
    metric.process(None, samples(images[2:], captions[2:]))
    scores = np.array([100 * (0.1 + 0.18), 100 * (0.3 + 0.20), 100 * (0.5 + 0.17)])
    out = metric.evaluate(3)
    assert out['clip_score/mean'] == pytest.approx(scores.mean(), rel=1e-6)
    assert out['clip_score/std'] == pytest.approx(scores.std(), rel=1e-5)


def test_clip_score_metric_checks_a_built_module():
    with pytest.raises(ValueError, match='caption_prefix'):
        ClipScoreMetric(clip=FakeClip(prefix=''))
    ClipScoreMetric(clip=FakeClip(prefix=''), caption_prefix=None)  # keep the module's own


def test_clip_score_metric_from_config_uses_the_paper_prefix_and_scale():
    metric = METRICS.build(ClipScoreMetric.info_example)
    assert metric.clip.prefix == 'A photo depicts ' and metric.clip.scale == 100.0
    _, images = real_images(3)
    captions = ['a red circle', 'a blue square', 'a green cross']
    metric.process(None, samples(images, captions))
    with torch.no_grad():
        expected = metric.clip(images, captions).mean().item()
    assert metric.evaluate(3)['clip_score/mean'] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# LCS-KL and token entropy
# ------------------------------------------------------------------------------------------------
def test_kl_of_identical_histograms_is_zero():
    counts = np.array([5, 0, 3, 9])
    assert lcs_kl(counts, counts) == 0.0
    assert lcs_kl(counts, 2 * counts) == pytest.approx(0.0, abs=1e-15)  # only shapes matter


def test_kl_by_hand_on_three_bins_with_eps():
    # p = (2/3, 1/3, 0) + 0.1 renormalised by 1.3 = (23, 13, 3) / 39; q = uniform 1/3
    value = lcs_kl([2, 1, 0], [1, 1, 1], eps=0.1)
    expected = 23 / 39 * math.log(23 / 13) + 13 / 39 * math.log(1.0) + 3 / 39 * math.log(3 / 13)
    assert value == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(smooth([2, 1, 0], eps=0.1), np.array([23, 13, 3]) / 39)
    # KL is in nats and not symmetric
    assert lcs_kl([1, 1, 1], [2, 1, 0], eps=0.1) != pytest.approx(value)


def test_kl_with_a_code_real_images_never_use_stays_finite():
    assert math.isfinite(lcs_kl([0, 10], [10, 0], eps=1e-6))
    assert lcs_kl([0, 10], [10, 0], eps=0.0) == math.inf


def test_token_entropy_in_bits():
    assert token_entropy(np.ones(8)) == pytest.approx(3.0)
    assert token_entropy(code_histogram(torch.randperm(1000), 1000)) == pytest.approx(
        math.log2(1000))
    assert token_entropy([0, 7, 0]) == 0.0
    assert token_entropy([1, 1, 2]) == pytest.approx(1.5)  # 2 * 1/4 * 2 + 1/2 * 1


def test_code_histogram_pools_positions_and_checks_range():
    codes = torch.tensor([[0, 2, 2], [3, 2, 0]])
    np.testing.assert_array_equal(code_histogram(codes, 5), [2, 0, 3, 1, 0])
    np.testing.assert_array_equal(code_histogram([codes[0], codes[1].numpy()], 5), [2, 0, 3, 1, 0])
    with pytest.raises(ValueError, match=r'\[0, 3\)'):
        code_histogram(codes, 3)
    with pytest.raises(ValueError, match='same codebook size'):
        lcs_kl(np.ones(3), np.ones(4))


def test_real_floor_compares_disjoint_halves_of_equal_size():
    L = 4
    # images 0, 1 use code 0 only; images 2, 3 code 1 only; image 4 (odd one out) code 2
    real = torch.tensor([[0] * L, [0] * L, [1] * L, [1] * L, [2] * L])
    value = real_floor(real, K=3, eps=0.1)
    assert value == pytest.approx(lcs_kl([2 * L, 0, 0], [0, 2 * L, 0], eps=0.1), rel=1e-12)
    # by hand: p = (1.1, .1, .1) / 1.3, q = (.1, 1.1, .1) / 1.3
    expected = 1.1 / 1.3 * math.log(11) + 0.1 / 1.3 * math.log(1 / 11)
    assert value == pytest.approx(expected, rel=1e-12)
    # a set of identical halves has no floor
    assert real_floor(torch.tensor([[0, 1], [0, 1]]), K=2) == 0.0
    with pytest.raises(ValueError, match='at least 2'):
        real_floor(torch.tensor([[0, 1]]), K=2)


def test_lcs_from_codes_combines_the_pieces():
    model = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 3]])
    real = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [0, 0, 1, 2], [3, 3, 2, 1]])
    out = lcs_from_codes(model, real, K=4, eps=1e-3)
    assert set(out) == {'kl', 'entropy_bits', 'real_floor', 'real_entropy_bits'}
    assert out['kl'] == pytest.approx(lcs_kl([5, 2, 0, 1], [4, 4, 4, 4], eps=1e-3))
    assert out['entropy_bits'] == pytest.approx(token_entropy([5, 2, 0, 1]))
    assert out['real_entropy_bits'] == pytest.approx(2.0)
    assert out['real_floor'] == pytest.approx(0.0, abs=1e-12)  # both halves count (2, 2, 2, 2)


class PatchTokenizer(nn.Module):
    """Fake VQ tokenizer: code of a 4x4 patch = its mean intensity in [-1, 1] cut into K bins.

    ``encoder`` decides the codes (an offset), ``decoder`` does not (RankE trains only that)."""

    codebook_size = 4

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(1, 1, bias=False)
        self.decoder = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.encoder.weight)
        self.calls = 0

    def images_to_codes(self, x):
        assert x.min() >= -1 and x.max() <= 1 and x.min() < 0  # [0, 1] images mapped to [-1, 1]
        self.calls += len(x)
        patches = nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4).flatten(1)
        patches = patches + self.encoder.weight.detach()
        return ((patches + 1) / 2 * self.codebook_size).long().clamp(0, self.codebook_size - 1)


def test_lcs_metric_on_a_fake_batch():
    _, real = real_images(12)
    tokenizer = PatchTokenizer()
    expected_real = tokenizer.images_to_codes(real * 2 - 1)
    tokens = torch.tensor([[0] * 16, [1] * 8 + [3] * 8, [0] * 15 + [2]])
    metric = LCSMetric(tokenizer=tokenizer, real=REAL, eps=1e-4)
    metric.process(None, samples(torch.zeros(2, 3, 16, 16), tokens=tokens[:2]))
    metric.process(None, samples(torch.zeros(1, 3, 16, 16), tokens=tokens[2:]))
    out = metric.evaluate(3)
    want = lcs_from_codes(tokens, expected_real, K=4, eps=1e-4)
    assert out == {f'lcs/{k}': pytest.approx(v, rel=1e-12) for k, v in want.items()}
    np.testing.assert_array_equal(metric.real_codes(), expected_real.numpy())


def test_lcs_metric_floor_is_the_kl_of_as_many_disjoint_real_images(tmp_path):
    """With floor_real: real_floor = KL(hist(first N floor images) || hist(real)), N = samples."""
    floor = dict(type='ToyShapes', split='test', num_samples=8, image_size=16)
    _, real = real_images(12)
    _, floor_images = real_images(8, split='test')
    tokens = torch.randint(0, 4, (5, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # computed, then read back from codes_floor.npz
        tokenizer = PatchTokenizer()
        metric = LCSMetric(tokenizer=tokenizer, real=REAL, floor_real=floor, eps=1e-4,
                           reference_cache=str(tmp_path / 'codes.npz'))
        metric.process(None, samples(torch.zeros(5, 3, 16, 16), tokens=tokens))
        out = metric.evaluate(5)
        floor_codes = tokenizer.images_to_codes(floor_images[:5] * 2 - 1)
        real_codes = tokenizer.images_to_codes(real * 2 - 1)
        expected = lcs_kl(np.bincount(floor_codes.flatten().numpy(), minlength=4),
                          np.bincount(real_codes.flatten().numpy(), minlength=4), eps=1e-4)
        assert out['lcs/real_floor'] == pytest.approx(expected, rel=1e-12)
        # not the half-split proxy of the real set
        assert out['lcs/real_floor'] != pytest.approx(real_floor(real_codes, K=4, eps=1e-4))
    # the test's own calls: the metric read both caches
    assert (tmp_path / 'codes_floor.npz').is_file() and tokenizer.calls == 5 + 12
    metric = LCSMetric(tokenizer=PatchTokenizer(), real=REAL, floor_real=floor)
    metric.process(None, samples(torch.zeros(9, 3, 16, 16), tokens=torch.zeros(9, 16).long()))
    with pytest.raises(ValueError, match=r'9 generated, floor_real has 8.*num_samples=9'):
        metric.evaluate(9)


def test_lcs_metric_cache_depends_on_encoder_weights_only(tmp_path):
    cache = str(tmp_path / 'codes.npz')
    tokens = torch.zeros(2, 16, dtype=torch.long)

    def run(tokenizer):
        metric = LCSMetric(tokenizer=tokenizer, real=REAL, reference_cache=cache)
        metric.process(None, samples(torch.zeros(2, 3, 16, 16), tokens=tokens))
        return metric.evaluate(2)

    first = PatchTokenizer()
    base = run(first)
    assert first.calls == 12
    trained = PatchTokenizer()
    nn.init.constant_(trained.decoder.weight, 3.0)  # a co-evolved decoder: same codes
    assert run(trained) == base and trained.calls == 0
    shifted = PatchTokenizer()
    nn.init.constant_(shifted.encoder.weight, 0.5)  # another encoder: other codes
    assert run(shifted) != base and shifted.calls == 12


def test_lcs_metric_builds_a_vq_tokenizer_from_config():
    metric = METRICS.build(LCSMetric.info_example)
    assert metric.codebook_size == 32
    metric.process(None, samples(torch.zeros(2, 3, 16, 16),
                                 tokens=torch.randint(0, 32, (2, 64))))
    out = metric.evaluate(2)
    assert metric.real_codes().shape == (16, 64)  # 16 px images, downsample 2 -> 8 x 8 codes
    assert 0 <= out['lcs/entropy_bits'] <= 5.0 and out['lcs/kl'] >= 0


# ------------------------------------------------------------------------------------------------
# compositional accuracy
# ------------------------------------------------------------------------------------------------
class RedOnlyNet(nn.Module):
    """Fake feature net: an image 'matches' when the first prompted object is red (colour 0)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def match_attributes(self, images, attributes, exact_count=False):
        self.seen.append(attributes.clone())
        return attributes[:, 0, 0] == 0


def test_compositional_accuracy_from_batch_attributes():
    net = RedOnlyNet()
    metric = CompositionalAccuracy(feature_net=net)
    red_one = [[0, 1, 0, 0], [-1] * 4]
    blue_one = [[2, 1, 0, 0], [-1] * 4]
    red_two = [[0, 1, 0, 0], [1, 2, 1, 1]]
    blue_two = [[2, 0, 0, 0], [1, 2, 1, 1]]
    attributes = torch.tensor([red_one, blue_one, red_two, blue_two, red_two])
    metric.process(dict(attributes=attributes), samples(torch.zeros(5, 3, 16, 16)))
    out = metric.evaluate(5)
    assert out == {'compositional/accuracy': pytest.approx(3 / 5),
                   'compositional/accuracy_one_object': pytest.approx(1 / 2),
                   'compositional/accuracy_two_objects': pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match='4 rows but there are 5'):
        metric.process(dict(attributes=attributes[:4]), samples(torch.zeros(5, 3, 16, 16)))


def test_compositional_accuracy_parses_captions_without_attributes():
    net = RedOnlyNet()
    metric = CompositionalAccuracy(feature_net=net)
    captions = ['a small red circle on the left', 'a large blue square at the top']
    metric.process(dict(caption=captions), samples(torch.zeros(2, 3, 16, 16), captions))
    torch.testing.assert_close(net.seen[0], torch.stack([parse_caption(c) for c in captions]))
    assert metric.evaluate(2)['compositional/accuracy'] == pytest.approx(0.5)


def test_compositional_accuracy_with_the_shipped_feature_net():
    from rankekit.utils.toy_assets import toy_asset_path
    if not toy_asset_path('feature_net.pt', must_exist=False).is_file():
        pytest.skip('toy asset feature_net.pt not built')
    ds, images = real_images(24, split='test', size=32)
    attributes = torch.stack([ds[i]['attributes'] for i in range(24)])
    metric = CompositionalAccuracy()
    metric.process(dict(attributes=attributes), samples(images))
    assert metric.evaluate(24)['compositional/accuracy'] >= 0.9  # real images show their captions
    metric.process(dict(attributes=attributes.roll(1, 0)), samples(images))
    assert metric.evaluate(24)['compositional/accuracy'] <= 0.3  # another image's caption


# ------------------------------------------------------------------------------------------------
# the clean-fid protocol
# ------------------------------------------------------------------------------------------------
def test_coco_protocol_without_clean_fid_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'cleanfid', None)  # as if not installed
    with pytest.raises(ImportError, match='pip install clean-fid') as info:
        COCOFIDProtocol(real_folder=tmp_path)(tmp_path)
    assert 'inception-2015-12-05.pt' in str(info.value)


def _fake_clean_fid(monkeypatch):
    calls = []
    fake_fid = types.SimpleNamespace(
        compute_fid=lambda a, b, **kw: calls.append((a, b, kw)) or 12.5)
    package = types.ModuleType('cleanfid')
    package.fid = fake_fid
    monkeypatch.setitem(sys.modules, 'cleanfid', package)
    monkeypatch.setitem(sys.modules, 'cleanfid.fid', fake_fid)
    return calls


def test_coco_protocol_refuses_to_let_clean_fid_download(monkeypatch, tmp_path):
    calls = _fake_clean_fid(monkeypatch)
    missing = tmp_path / 'nowhere' / 'inception-2015-12-05.pt'
    monkeypatch.setattr(fid_module, 'clean_fid_weights_path', lambda mode='clean': missing)
    with pytest.raises(FileNotFoundError, match='never downloads') as info:
        compute_clean_fid(tmp_path, tmp_path)
    assert str(missing) in str(info.value) and 'nvlabs' in str(info.value)
    assert calls == []


def test_coco_protocol_delegates_to_clean_fid(monkeypatch, tmp_path):
    calls = _fake_clean_fid(monkeypatch)
    weights = tmp_path / 'inception-2015-12-05.pt'
    weights.write_bytes(b'weights')
    monkeypatch.setattr(fid_module, 'clean_fid_weights_path', lambda mode='clean': weights)
    (tmp_path / 'gen').mkdir()
    (tmp_path / 'coco').mkdir()
    value = COCOFIDProtocol(real_folder=tmp_path / 'coco', device='cpu')(tmp_path / 'gen')
    assert value == 12.5
    (gen, real, kwargs), = calls
    assert (gen, real) == (str(tmp_path / 'gen'), str(tmp_path / 'coco'))
    assert kwargs['mode'] == 'clean' and kwargs['device'] == torch.device('cpu')
    with pytest.raises(ValueError, match='mode'):
        COCOFIDProtocol(tmp_path, mode='fast')


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['FIDMetric', 'LCSMetric', 'CompositionalAccuracy'])
def test_info_examples_build_and_run_without_files(name):
    metric = METRICS.build(METRICS.get(name).info_example)
    ds, images = real_images(4, size=16)
    batch = dict(caption=[ds[i]['caption'] for i in range(4)],
                 attributes=torch.stack([ds[i]['attributes'] for i in range(4)]))
    metric.process(batch, samples(images, batch['caption'], torch.randint(0, 32, (4, 64))))
    out = metric.evaluate(4)
    assert out and all(k.startswith(metric.prefix + '/') for k in out)
    assert all(math.isfinite(v) for v in out.values())
