"""ToyShapes dataset, caption templates / parse_caption, toy prompts, prompt files, export tool."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rankekit.datasets import prompts as prompts_module
from rankekit.datasets import toy_shapes as ts
from rankekit.datasets.prompts import PromptList, ToyPrompts, toy_eval_prompts
from rankekit.datasets.toy_shapes import (COLOUR_RGB, COLOURS, POSITION_XY, POSITIONS, SHAPES,
                                          SIZE_RADIUS, SIZES, VOCAB, ToyShapes, parse_caption,
                                          relation_of, render_scene)
from rankekit.registry import DATASETS

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _attrs(*rows):
    out = torch.full((2, 4), -1, dtype=torch.long)
    for k, row in enumerate(rows):
        out[k] = torch.tensor([COLOURS.index(row[0]), SHAPES.index(row[1]),
                               SIZES.index(row[2]) if row[2] else -1,
                               POSITIONS.index(row[3]) if row[3] else -1])
    return out


@pytest.fixture(scope='module')
def train_items():
    dataset = ToyShapes(num_samples=1500)
    return [dataset[i] for i in range(len(dataset))]


# --- determinism ---------------------------------------------------------------------------------
def test_same_seed_same_items_in_any_order():
    a, b = ToyShapes(num_samples=50), ToyShapes(num_samples=50)
    for i in [7, 3, 49, 0, 7]:  # b read in another order, a read first
        item_a = a[i]
        for j in reversed(range(i, min(i + 3, 50))):
            b[j]
        item_b = b[i]
        assert torch.equal(item_a['image'], item_b['image'])
        assert torch.equal(item_a['attributes'], item_b['attributes'])
        assert item_a['caption'] == item_b['caption'] and item_a['index'] == i


def test_splits_and_seeds_differ():
    train, val, test = (ToyShapes(split=s, num_samples=20) for s in ('train', 'val', 'test'))
    other_seed = ToyShapes(num_samples=20, seed=1)
    for other in (val, test, other_seed):
        same = sum(torch.equal(train[i]['image'], other[i]['image']) for i in range(20))
        assert same <= 1  # independent draws; two equal images would be a rare coincidence
    assert [train[i]['caption'] for i in range(20)] != [val[i]['caption'] for i in range(20)]


def test_fixed_stream_regression():
    # the toy checkpoints are regenerated from these items: the stream must never change
    assert ToyShapes()[0]['caption'] == 'a photo of a small green circle at the top'
    assert ToyShapes()[1]['caption'] == ('a large purple triangle at the left and a small green '
                                         'square on the top')
    assert ToyShapes(split='val')[0]['caption'] == 'a small green cross in the middle'
    assert toy_eval_prompts()[0]['caption'] == 'at the top, a large cyan cross'


def test_defaults_and_image_size_option():
    assert [len(ToyShapes(split=s)) for s in ('train', 'val', 'test')] == [20000, 1000, 1000]
    small, big = ToyShapes(num_samples=5), ToyShapes(num_samples=5, image_size=64)
    item, item64 = small[2], big[2]
    assert item['image'].shape == (3, 32, 32) and item['image'].dtype == torch.float32
    assert item64['image'].shape == (3, 64, 64)
    assert item['caption'] == item64['caption']  # the scene does not depend on the resolution
    assert 0.0 <= item['image'].min() and item['image'].max() <= 1.0
    assert small[-1]['index'] == 4
    with pytest.raises(IndexError, match='out of range'):
        small[5]


def test_object_counts():
    assert all(ToyShapes(num_samples=50, max_objects=1)[i]['num_objects'] == 1 for i in range(50))
    assert all(ToyShapes(num_samples=50, two_object_prob=1.0)[i]['num_objects'] == 2
               for i in range(50))
    counts = [ToyShapes(num_samples=400)[i]['num_objects'] for i in range(400)]
    assert 0.42 < counts.count(2) / 400 < 0.58


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="split must be one of"):
        ToyShapes(split='training')
    with pytest.raises(ValueError, match='max_objects'):
        ToyShapes(max_objects=3)
    with pytest.raises(ValueError, match='pos_jitter'):
        ToyShapes(pos_jitter=0.2)
    with pytest.raises(ValueError, match='num_samples'):
        ToyShapes(num_samples=-1)


# --- captions ------------------------------------------------------------------------------------
def test_every_caption_parses_back_to_its_attributes(train_items):
    for item in train_items:
        assert torch.equal(parse_caption(item['caption']), item['attributes']), item['caption']
        assert item['num_objects'] == int((item['attributes'][:, 0] >= 0).sum())
        two = item['attributes'][1]
        assert (two >= 0).all() or (two == -1).all()
        if item['num_objects'] == 2:
            assert item['attributes'][0, 3] != item['attributes'][1, 3]


def test_templates_vary_and_stay_in_vocabulary(train_items):
    captions = [item['caption'] for item in train_items]
    words = {w for c in captions for w in ts.tokenize_words(c)}
    assert words == set(VOCAB)  # every word used, nothing outside the vocabulary
    assert VOCAB == sorted(set(VOCAB))
    assert max(len(ts.tokenize_words(c)) for c in captions) <= 16
    # every template is used: distinctive fragments of each one
    assert any(c.startswith('a photo of') for c in captions)
    assert any(c.startswith(('on the', 'at the', 'in the')) for c in captions)
    assert any(', small,' in c or ', large,' in c for c in captions)
    assert any(' in red ' in c or ' in blue ' in c for c in captions)
    assert any(' and ' in c for c in captions)
    relational = [c for c in captions if ' of a ' in c or ' above a ' in c or ' below a ' in c]
    # the canonical form: no position word at all
    assert any(not (set(ts.tokenize_words(c)) & {'top', 'bottom', 'center', 'middle'})
               and ('left of' in c) != ('right of' in c) and c.count('left') + c.count('right') == 1
               for c in relational)
    for relation in ('left of', 'right of', 'above', 'below'):
        assert any(f' {relation} ' in c for c in captions)


def test_relation_rule_by_hand():
    P = POSITIONS.index
    assert relation_of(P('left'), P('right')) == 0
    assert relation_of(P('center'), P('left')) == 1
    assert relation_of(P('top'), P('center')) == 2
    assert relation_of(P('bottom'), P('top')) == 3
    assert relation_of(P('left'), P('top')) == 0  # diagonal ties read horizontally
    assert relation_of(P('bottom'), P('right')) == 0
    with pytest.raises(ValueError, match='same position'):
        relation_of(0, 0)


def test_short_relational_captions_only_where_they_are_unambiguous():
    P = POSITIONS.index
    red_circle_blue_square = [[0, 0, 0, -1], [2, 1, 1, -1]]

    def candidates(p1, p2):
        scene = np.array(red_circle_blue_square)
        scene[:, 3] = [P(p1), P(p2)]
        return ts.caption_candidates(scene)

    assert candidates('left', 'right') == [
        'a small red circle on the left and a large blue square on the right',
        'a small red circle on the left, left of a large blue square on the right',
        'a small red circle left of a large blue square on the right',
        'a small red circle on the left left of a large blue square',
        'a small red circle left of a large blue square']
    # (left of, top) pins the first object to the left; (left, left of) means left / right
    assert candidates('left', 'top')[2:] == [
        'a small red circle left of a large blue square at the top']
    # (center, above) pins the second object to the bottom; (above, bottom) means top / bottom
    assert candidates('center', 'bottom')[2:] == [
        'a small red circle in the center above a large blue square']
    for p1 in POSITIONS:  # every scene has at least three captions
        assert all(len(candidates(p1, p2)) >= 3 for p2 in POSITIONS if p2 != p1)
    assert len(ts.caption_candidates([[0, 0, 0, 2], [-1] * 4])) == 5


@pytest.mark.parametrize('caption, expected', [
    ('a large red circle on the left', [('red', 'circle', 'large', 'left')]),
    ('a red circle, large, at the left', [('red', 'circle', 'large', 'left')]),
    ('In the CENTRE: a big Blue square!', [('blue', 'square', 'large', 'center')]),
    # canonical pair of a relation when no position is named
    ('a small red circle left of a blue square',
     [('red', 'circle', 'small', 'left'), ('blue', 'square', None, 'right')]),
    ('a small red circle above a large blue square',
     [('red', 'circle', 'small', 'top'), ('blue', 'square', 'large', 'bottom')]),
    # relation + the second position fixes the first; + the first fixes the second only if unique
    ('a red circle below a green triangle in the center',
     [('red', 'circle', None, 'bottom'), ('green', 'triangle', None, 'center')]),
    ('a red circle in the center right of a green triangle',
     [('red', 'circle', None, 'center'), ('green', 'triangle', None, 'left')]),
    ('a red circle on the left left of a green triangle',  # canonical partner of left
     [('red', 'circle', None, 'left'), ('green', 'triangle', None, 'right')]),
    ('a red circle on the left above a green triangle',  # no position fits
     [('red', 'circle', None, 'left'), ('green', 'triangle', None, None)]),
    ('a yellow cross at the top and a cyan triangle at the bottom',
     [('yellow', 'cross', None, 'top'), ('cyan', 'triangle', None, 'bottom')]),
    ('a red circle a blue square', [('red', 'circle', None, None), ('blue', 'square', None, None)]),
])
def test_parse_caption_by_hand(caption, expected):
    assert torch.equal(parse_caption(caption), _attrs(*expected))


@pytest.mark.parametrize('caption', ['', 'hello world', 'left of above and and', None, 42,
                                     'a ' * 500])
def test_parse_caption_never_crashes(caption):
    parsed = parse_caption(caption)
    assert parsed.shape == (2, 4) and parsed.dtype == torch.long
    assert (parsed == -1).all()


def test_parse_caption_partial_and_more_than_two_objects():
    parsed = parse_caption('a purple thing')
    assert parsed[0].tolist() == [COLOURS.index('purple'), -1, -1, -1]
    three = parse_caption('a red circle and a blue square and a green cross')
    assert three[:, 0].tolist() == [0, 2]  # at most two objects are read
    # a relation before any object links nothing
    assert parse_caption('left of a red circle and a blue square')[:, 3].tolist() == [-1, -1]


# --- images --------------------------------------------------------------------------------------
def _window(image, position, half=0.16):
    size = image.shape[-1]
    x, y = POSITION_XY[position]
    x0, x1 = int(round((x - half) * size)), int(round((x + half) * size))
    y0, y1 = int(round((y - half) * size)), int(round((y + half) * size))
    return image[:, max(y0, 0):y1, max(x0, 0):x1]


def test_objects_are_drawn_where_and_how_the_attributes_say(train_items):
    for item in train_items[:300]:
        image, attributes = item['image'], item['attributes']
        occupied = set()
        for colour, shape, size, position in attributes.tolist():
            if colour < 0:
                continue
            occupied.add(position)
            window = _window(image, position)
            # the brightest pixel is (nearly) covered: the palette colour, scaled by the coverage
            brightest = window.flatten(1)[:, window.sum(0).flatten().argmax()]
            palette = torch.from_numpy(COLOUR_RGB)
            cosine = (palette @ brightest) / palette.norm(dim=1) / brightest.norm()
            assert int(cosine.argmax()) == colour and cosine.max() > 0.9999, item['caption']
            assert brightest.sum() > 0.8 * palette[colour].sum()
            coverage = window.sum(0) / float(COLOUR_RGB[colour].sum())  # black background
            assert coverage.max() <= 1 + 1e-5
            # areas at 32 px: small triangle >= 10 px, large triangle >= 27 px (see below)
            assert coverage.sum() > (8 if size == 0 else 22)
        for position in set(range(5)) - occupied:
            assert _window(image, position, half=0.1).max() == 0.0, item['caption']


@pytest.mark.parametrize('shape, area_factor', [(0, math.pi), (1, 1.7 ** 2), (2, 1.8),
                                                 (3, 2 * 2 * 0.8 - 0.8 ** 2)])
def test_shape_areas_match_geometry(shape, area_factor):
    size = 64
    for size_id, radius in enumerate(SIZE_RADIUS):
        scene = np.array([[0, shape, size_id, 4], [-1] * 4])
        image = render_scene(scene, POSITION_XY[[4, 4]], [radius, radius], size,
                             colours=np.ones((2, 3)))
        expected = area_factor * (radius * size) ** 2  # pixels
        assert image[0].sum() == pytest.approx(expected, rel=0.03)
        hard = render_scene(scene, POSITION_XY[[4, 4]], [radius, radius], size, antialias=False,
                            colours=np.ones((2, 3)))
        assert set(np.unique(hard).tolist()) == {0.0, 1.0}
        assert hard[0].sum() == pytest.approx(expected, rel=0.2)  # whole pixels only


def test_large_objects_cover_more_pixels_than_small():
    dataset = ToyShapes(num_samples=200, max_objects=1, pos_jitter=0.0, size_jitter=0.0)
    areas = {}
    for i in range(len(dataset)):
        colour, shape, size, _ = dataset[i]['attributes'][0].tolist()
        coverage = dataset[i]['image'].sum(0) / float(COLOUR_RGB[colour].sum())
        areas.setdefault((shape, size), []).append(float(coverage.sum()))
    assert len(areas) == 8
    for shape in range(4):  # radii 0.08 vs 0.13: area ratio 2.64
        assert min(areas[shape, 1]) > 2.3 * max(areas[shape, 0])


def test_options_background_noise_colour_jitter_cache_pipeline():
    plain = ToyShapes(num_samples=3, pos_jitter=0.0)
    grey = ToyShapes(num_samples=3, pos_jitter=0.0, background=(0.5, 0.5, 0.5))
    assert grey[0]['image'][:, 0, 0].tolist() == [0.5, 0.5, 0.5]
    noisy = ToyShapes(num_samples=3, pos_jitter=0.0, noise_std=0.05)
    diff = noisy[0]['image'] - plain[0]['image']
    assert 0.02 < diff.std() < 0.06 and noisy[0]['caption'] == plain[0]['caption']
    jittered = ToyShapes(num_samples=3, pos_jitter=0.0, colour_jitter=0.1)
    assert not torch.equal(jittered[0]['image'], plain[0]['image'])
    assert (jittered[0]['image'] - plain[0]['image']).abs().max() <= 0.1 + 1e-6
    cached = ToyShapes(num_samples=3, cache=True)
    first = cached[1]
    first['image'].zero_()  # a caller writing into its item must not corrupt the cache
    first['attributes'].zero_()
    fresh = ToyShapes(num_samples=3)[1]
    assert torch.equal(cached[1]['image'], fresh['image'])
    assert torch.equal(cached[1]['attributes'], fresh['attributes'])
    assert cached[1]['caption'] == fresh['caption'] and len(cached._cache) == 1
    with_pipeline = ToyShapes(num_samples=3, pos_jitter=0.0,
                              pipeline=[lambda d: dict(d, flipped=d['image'].flip(-1))])
    assert torch.equal(with_pipeline[0]['flipped'], plain[0]['image'].flip(-1))


# --- batching ------------------------------------------------------------------------------------
def test_mmengine_dataloader_batches_items():
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    with DefaultScope.overwrite_default_scope('rankekit'):
        loader = Runner.build_dataloader(dict(
            batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            dataset=dict(type='ToyShapes', split='val', num_samples=10)))
    batch = next(iter(loader))
    assert batch['image'].shape == (4, 3, 32, 32)
    assert batch['attributes'].shape == (4, 2, 4)
    assert batch['index'].tolist() == [0, 1, 2, 3]
    assert isinstance(batch['caption'], list) and len(batch['caption']) == 4
    assert batch['caption'][1] == ToyShapes(split='val')[1]['caption']
    assert batch['num_objects'].tolist() == [ToyShapes(split='val')[i]['num_objects']
                                             for i in range(4)]


def test_registered_examples_build():
    for name in ('ToyShapes', 'ToyPrompts', 'PromptList'):
        cls = DATASETS.get(name)
        dataset = DATASETS.build(cls.info_example)
        assert len(dataset) > 0 and isinstance(dataset[0]['caption'], str)
        assert cls.__doc__.strip().splitlines()[0]


# --- export --------------------------------------------------------------------------------------
def test_write_folder_round_trip(tmp_path):
    dataset = ToyShapes(split='test', num_samples=6)
    captions_file = dataset.write_folder(tmp_path, num=4)
    lines = [json.loads(line) for line in captions_file.read_text().splitlines()]
    assert len(lines) == 4 and sorted(p.name for p in tmp_path.glob('*.png')) == [
        f'test_{i:06d}.png' for i in range(4)]
    for i, record in enumerate(lines):
        item = dataset[i]
        assert record['caption'] == item['caption']
        assert record['attributes'] == item['attributes'].tolist()
        assert record['num_objects'] == item['num_objects']
        pixels = np.asarray(Image.open(tmp_path / record['file_name']).convert('RGB'))
        restored = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
        assert (restored - item['image']).abs().max() <= 0.5 / 255 + 1e-6


def test_export_tool(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / 'tools'))
    sys.modules.pop('export_toy_dataset', None)
    import export_toy_dataset

    out = tmp_path / 'toy'
    assert export_toy_dataset.main(['--split', 'val', '--num', '3', '--out', str(out),
                                    '--image-size', '64', '--no-progress']) == 0
    record = json.loads((out / 'captions.jsonl').read_text().splitlines()[2])
    assert record['caption'] == ToyShapes(split='val')[2]['caption']
    assert Image.open(out / 'val_000002.png').size == (64, 64)


# --- prompts -------------------------------------------------------------------------------------
def test_toy_eval_prompts_are_fixed_and_balanced():
    prompts = toy_eval_prompts()
    again = toy_eval_prompts()
    assert len(prompts) == 120 and [p['caption'] for p in prompts] == [p['caption'] for p in again]
    assert all(torch.equal(a['attributes'], b['attributes']) for a, b in zip(prompts, again))
    attributes = torch.stack([p['attributes'] for p in prompts])
    one, two = attributes[:60], attributes[60:]
    assert (one[:, 1] == -1).all() and (two >= 0).all()
    for group, objects in ((one, 1), (two, 2)):
        for obj in range(objects):
            for col, words in enumerate((COLOURS, SHAPES, SIZES, POSITIONS)):
                counts = torch.bincount(group[:, obj, col], minlength=len(words))
                assert counts.tolist() == [60 // len(words)] * len(words)
    pairs = torch.bincount(two[:, 0, 3] * 5 + two[:, 1, 3], minlength=25).view(5, 5)
    assert (pairs.diagonal() == 0).all() and (pairs.sum() - pairs.diagonal().sum()) == 60
    assert set(pairs.flatten().tolist()) == {0, 3}
    for prompt in prompts:
        assert torch.equal(parse_caption(prompt['caption']), prompt['attributes'])
    assert toy_eval_prompts(seed=1)[0]['caption'] != prompts[0]['caption'] or \
        toy_eval_prompts(seed=1)[1]['caption'] != prompts[1]['caption']
    odd = toy_eval_prompts(n=7, two_object_fraction=0.0)
    assert len(odd) == 7 and all(p['num_objects'] == 1 for p in odd)


def test_toy_prompts_dataset():
    dataset = ToyPrompts(num_prompts=10)
    item = dataset[3]
    assert set(item) == {'caption', 'attributes'}
    assert item['caption'] == toy_eval_prompts(10)[3]['caption']
    item['attributes'].fill_(9)  # items are copies
    assert dataset[3]['attributes'].max() < 9


def test_prompt_list_txt_and_jsonl(tmp_path):
    txt = tmp_path / 'p.txt'
    txt.write_text('a red circle\n\n  a blue square  \n')
    assert [d['caption'] for d in PromptList(file=str(txt))] == ['a red circle', 'a blue square']
    jsonl = tmp_path / 'p.jsonl'
    jsonl.write_text('{"caption": "a red circle", "id": 1}\n\n{"caption": "a cyan cross"}\n')
    dataset = PromptList(file=str(jsonl), max_prompts=1)
    assert len(dataset) == 1 and dataset[0] == dict(caption='a red circle')
    other_key = tmp_path / 'q.jsonl'
    other_key.write_text('{"prompt": "x"}\n')
    assert PromptList(file=str(other_key), caption_key='prompt')[0]['caption'] == 'x'
    assert PromptList(prompts=['a', 'b'])[1] == dict(caption='b')


@pytest.mark.parametrize('name, text, message', [
    ('empty.txt', '', 'holds no prompts'),
    ('blank.jsonl', '\n  \n', 'holds no prompts'),
    ('bad.jsonl', '{"caption": "ok"}\n{"caption": "unterminated\n', 'line 2: not valid JSON'),
    ('nokey.jsonl', '{"caption": "ok"}\n\n{"text": "x"}\n', 'line 3: expected an object'),
    ('list.jsonl', '["a red circle"]\n', 'line 1: expected an object'),
    ('emptycap.jsonl', '{"caption": ""}\n', 'line 1: "caption" must be a non-empty string'),
    ('prompts.csv', 'a,b\n', 'unsupported extension'),
])
def test_prompt_file_errors_name_the_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        PromptList(file=str(path))
    assert str(path) in str(info.value)


def test_prompt_list_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        PromptList(file=str(tmp_path / 'missing.txt'))
    with pytest.raises(ValueError, match='exactly one of'):
        PromptList()
    with pytest.raises(ValueError, match='one string'):
        PromptList(prompts='a red circle')
    with pytest.raises(ValueError, match=r'positions \[1\]'):
        PromptList(prompts=['a', ''])
    assert prompts_module.read_prompt_file  # public helper
