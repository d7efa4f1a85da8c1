"""ToyTextEncoder: tokenisation, LlamaGen left padding, zero pad embeddings, weights loading."""
import pytest
import torch

from rankekit.datasets.prompts import toy_eval_prompts
from rankekit.datasets.toy_shapes import VOCAB, ToyShapes
from rankekit.registry import TEXT_ENCODERS
from rankekit.text_encoders import ToyTextEncoder
from rankekit.utils.weights import WeightsFileError

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def encoder():
    torch.manual_seed(0)
    return ToyTextEncoder(embed_dim=48, max_length=16).eval()


def test_build_from_registry_and_properties():
    enc = TEXT_ENCODERS.build(ToyTextEncoder.info_example)
    assert isinstance(enc, ToyTextEncoder)
    assert enc.embed_dim == 32 and enc.max_length == 16
    assert enc.vocab[:2] == ['<pad>', '<unk>'] and enc.vocab[2:] == VOCAB
    emb, mask = enc(['a red circle'])
    assert emb.shape == (1, 16, 32) and mask.dtype == torch.long


def test_tokenize_left_pads_and_normalises(encoder):
    ids, mask = encoder.tokenize(['a large red circle', 'A LARGE, red-circle!'])
    expected = [encoder.word_to_id[w] for w in ('a', 'large', 'red', 'circle')]
    assert ids[0].tolist() == [0] * 12 + expected
    assert torch.equal(ids[0], ids[1])
    assert mask.tolist() == [[0] * 12 + [1] * 4] * 2


def test_unknown_words_map_to_unk(encoder):
    ids, mask = encoder.tokenize(['a fluffy red zebra'])
    unk = encoder.word_to_id['<unk>']
    assert ids[0, -4:].tolist() == [encoder.word_to_id['a'], unk, encoder.word_to_id['red'], unk]
    emb, _ = encoder(['a fluffy red zebra'])
    assert torch.isfinite(emb).all()


def test_truncation_keeps_the_first_words(encoder):
    words = ('a photo of a small red circle on the left and a large blue square at the '
             'bottom of it').split()
    assert len(words) == 20
    ids, mask = encoder.tokenize([' '.join(words)])
    first16, _ = encoder.tokenize([' '.join(words[:16])])
    assert mask.sum() == 16 and torch.equal(ids, first16)
    assert ids[0, -1] == encoder.word_to_id['at']  # word 16


def test_pad_embeddings_are_exactly_zero(encoder):
    prompts = ['a red circle', 'a photo of a small cyan cross at the top', '']
    emb, mask = encoder(prompts)
    assert emb.shape == (3, 16, 48)
    assert mask.sum(1).tolist() == [3, 10, 0]
    assert (emb[mask == 0] == 0).all()
    assert (emb[mask == 1].abs().sum(-1) > 0).all()
    assert torch.isfinite(emb).all()  # the empty caption gives zeros, not NaN


def test_embeddings_do_not_depend_on_batch_padding(encoder):
    alone, _ = encoder(['a small red circle left of a blue square'])
    batched, _ = encoder(['a red circle', 'a small red circle left of a blue square',
                          'a photo of a small red circle on the left and a large blue square'])
    torch.testing.assert_close(alone[0], batched[1], atol=1e-6, rtol=0)
    # the same words in different slots get the same positions (counted from the first word)
    short = ToyTextEncoder(embed_dim=48, max_length=12)
    short.load_state_dict({k: (v[:12] if k == 'position_embedding' else v)
                           for k, v in encoder.state_dict().items()})
    torch.testing.assert_close(short.eval()(['a red circle'])[0][0, -3:],
                               batched[0, -3:], atol=1e-6, rtol=0)


def test_vocabulary_covers_every_toy_caption(encoder):
    captions = [ToyShapes(num_samples=300)[i]['caption'] for i in range(300)]
    captions += [p['caption'] for p in toy_eval_prompts()]
    ids, mask = encoder.tokenize(captions)
    assert not (ids == encoder.word_to_id['<unk>']).any()
    assert mask.sum(1).min() >= 7


def test_trains_end_to_end():
    torch.manual_seed(0)
    enc = ToyTextEncoder(embed_dim=16, width=32, num_heads=2)
    emb, mask = enc(['a red circle', 'a blue square on the left'])
    emb.pow(2).sum().backward()
    assert enc.token_embedding.weight.grad[enc.word_to_id['red']].abs().sum() > 0
    assert enc.token_embedding.weight.grad[0].abs().sum() == 0  # <pad> never used
    assert enc.position_embedding.grad.abs().sum() > 0


def test_pretrained_round_trip_and_bad_file(tmp_path, encoder):
    path = tmp_path / 'toy_text.pt'
    torch.save(encoder.state_dict(), path)
    loaded = ToyTextEncoder(embed_dim=48, max_length=16, pretrained=str(path)).eval()
    prompts = ['a large red circle on the left']
    torch.testing.assert_close(loaded(prompts)[0], encoder(prompts)[0], atol=0, rtol=0)
    with pytest.raises(WeightsFileError, match='does not fit'):
        ToyTextEncoder(embed_dim=32, pretrained=str(path))
    with pytest.raises(WeightsFileError, match='not found'):
        ToyTextEncoder(pretrained=str(tmp_path / 'missing.pt'))


def test_bad_input_is_explained(encoder):
    with pytest.raises(TypeError, match='list of prompts'):
        encoder('a red circle')
    with pytest.raises(TypeError, match='prompt 1 is int'):
        encoder(['a red circle', 3])
    with pytest.raises(ValueError, match='divisible'):
        ToyTextEncoder(width=30, num_heads=4)
    with pytest.raises(ValueError, match='distinct'):
        ToyTextEncoder(vocab=['a', 'a'])


# ---- toy text encoder pretraining (captions -> scene slots) ------------------------------------
TINY_TEXT = dict(type='ToyTextEncoder', embed_dim=16, width=16, num_layers=1, num_heads=2)


def _caption_batch(n):
    items = [ToyShapes('train', num_samples=n)[i] for i in range(n)]
    return [it['caption'] for it in items], torch.stack([it['attributes'] for it in items])


def test_text_pretrain_initial_loss_is_chance_level():
    """With a zero last layer every slot head is uniform: loss = ln2 + ln6 + ln4 + ln2."""
    import math

    from rankekit.toy.pretrain_text_encoder import TextEncoderPretrainModel
    model = TextEncoderPretrainModel(TINY_TEXT, hidden=8)
    torch.nn.init.zeros_(model.head[-1].weight)
    torch.nn.init.zeros_(model.head[-1].bias)
    captions, attributes = _caption_batch(4)
    out = model(captions, attributes, mode='loss')
    assert out['loss/ce'].item() == pytest.approx(
        math.log(2) + math.log(6) + math.log(4) + math.log(2), rel=1e-6)


def test_text_pretrain_learns_scenes_and_pools_without_padding():
    from mmengine.optim import OptimWrapper

    from rankekit.toy.pretrain_text_encoder import TextEncoderPretrainModel
    torch.manual_seed(0)
    model = TextEncoderPretrainModel(TINY_TEXT, hidden=32)
    captions, attributes = _caption_batch(8)
    # the pooled read-out ignores padding: a caption's logits do not depend on its batch
    alone = model.slot_logits(captions[:1])
    together = model.slot_logits(captions[:1] + ['a small red circle on the left and a large '
                                                 'blue square on the right, a photo'])
    for head in alone:
        assert torch.allclose(alone[head][0], together[head][0], atol=1e-6)
    data = dict(caption=captions, attributes=attributes)
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-2))
    first = model.train_step(data, optim)['loss/ce'].item()
    for _ in range(150):
        log = model.train_step(data, optim)
    assert log['loss/ce'].item() < 0.1 * first and log['acc/attr'].item() == 1.0
    assert all(p['match'] for p in model.val_step(data))  # every scene read back exactly
    assert set(model(captions, mode='tensor')) == {'colour', 'shape', 'size', 'occupancy'}
    with pytest.raises(ValueError, match="needs the batch's 'attributes'"):
        model(captions, mode='loss')
    with pytest.raises(ValueError, match='mode must be'):
        model(captions, attributes, mode='train')
    with pytest.raises(ValueError, match='has 7 rows but there are 8'):
        model(captions, attributes[:7], mode='loss')
    with pytest.raises(TypeError, match='one string'):
        model(captions[0], attributes[:1], mode='loss')
