"""Real-backbone recipes: image-caption datasets, the paper's evaluation protocol helpers, the
four real configs (built from dummy local files in the official formats, one iteration each at
toy size through --cfg-options) and ``tools/device_check.py --cpu-smoke``."""
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rankekit.apis.config import load_config
from rankekit.apis.train import build_runner, parse_args, setup_cfg
from rankekit.datasets.image_caption import (CorruptSampleError, CorruptSampleWarning,
                                             ImageCaptionFolder, WebDatasetTars, expand_shards)
from rankekit.evaluation import protocols as P
from tiny_components import load_tool

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / 'configs' / 'ranke'
pytestmark = pytest.mark.filterwarnings('ignore:LPIPSLoss', 'ignore:.*full_init',
                                        'ignore:.*instance named of visualizer')


def png_bytes(pixels: np.ndarray, fmt: str = 'PNG') -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def solid(h, w, rgb) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


def stripes(h: int = 10) -> np.ndarray:
    """(h, 3h) image: red | green | blue thirds."""
    img = np.zeros((h, 3 * h, 3), dtype=np.uint8)
    img[:, :h, 0] = img[:, h:2 * h, 1] = img[:, 2 * h:, 2] = 255
    return img


def pipeline(size: int, load: bool = True) -> list:
    steps = [dict(type='Resize', scale=(size, 1000 * size), keep_ratio=True,
                  interpolation='bicubic', backend='pillow'),
             dict(type='CenterCrop', crop_size=size), dict(type='PackImageCaption')]
    return ([dict(type='LoadImageFromFile', imdecode_backend='pillow')] if load else []) + steps


# =============================================================================================
# image-caption datasets
# =============================================================================================
@pytest.fixture()
def folder(tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    (images / 'stripes.png').write_bytes(png_bytes(stripes()))
    (images / 'orange.jpg').write_bytes(png_bytes(solid(24, 16, (250, 120, 10)), 'JPEG'))
    good = png_bytes(solid(12, 12, (0, 0, 255)))
    (images / 'cut.png').write_bytes(good[:len(good) // 2])  # truncated file
    pairs = [('stripes.png', 'three  stripes '), ('orange.jpg', 'an orange tile'),
             ('cut.png', 'a broken file'), ('stripes.png', 'stripes again')]
    with open(tmp_path / 'captions.jsonl', 'w') as f:
        for name, caption in pairs:
            f.write(json.dumps(dict(file_name=name, caption=caption)) + '\n')
    (tmp_path / 'captions.csv').write_text(
        'file_name,caption\n' + ''.join(f'{n},"{c}"\n' for n, c in pairs))
    coco = dict(images=[dict(id=7, file_name='stripes.png'), dict(id=3, file_name='orange.jpg'),
                        dict(id=5, file_name='cut.png')],
                annotations=[dict(id=1, image_id=7, caption=pairs[0][1]),
                             dict(id=2, image_id=3, caption=pairs[1][1]),
                             dict(id=4, image_id=5, caption=pairs[2][1]),
                             dict(id=9, image_id=7, caption=pairs[3][1])])
    (tmp_path / 'captions.json').write_text(json.dumps(coco))
    return tmp_path


@pytest.mark.parametrize('captions', ['captions.jsonl', 'captions.csv', 'captions.json'])
def test_folder_reads_each_caption_format_and_the_pipeline(folder, captions):
    ds = ImageCaptionFolder(data_root=str(folder), captions_file=captions, image_prefix='images',
                            pipeline=pipeline(10))
    assert len(ds) == 4
    first = ds[0]
    # 10x30 stripes: short side already 10 (no resampling), the centre 10x10 crop is exactly
    # the green third; RGB order (mmcv loads BGR), values in [0, 1]
    green = torch.zeros(3, 10, 10)
    green[1] = 1.0
    assert first['caption'] == 'three stripes' and torch.equal(first['image'], green)
    # 24x16 JPEG: short side 16 -> 10 (15x10, bicubic), centre crop 10x10, about (250, 120, 10)
    orange = ds[1]['image']
    assert orange.shape == (3, 10, 10)
    assert torch.allclose(orange.mean((1, 2)), torch.tensor([250, 120, 10]) / 255, atol=0.03)
    assert ds[3]['caption'] == 'stripes again'


def test_corrupt_image_is_reported_by_path(folder):
    ds = ImageCaptionFolder(data_root=str(folder), captions_file='captions.jsonl',
                            image_prefix='images', pipeline=pipeline(6))
    with pytest.warns(CorruptSampleWarning, match=r'images/cut\.png: cannot decode the image'):
        item = ds[2]
    assert item['caption'] == 'stripes again'  # the next sample stands in
    assert ds.skipped == [str(folder / 'images' / 'cut.png')]
    strict = ImageCaptionFolder(data_root=str(folder), captions_file='captions.jsonl',
                                image_prefix='images', pipeline=pipeline(6), on_corrupt='error')
    with pytest.raises(CorruptSampleError, match=r'images/cut\.png.*on_corrupt'):
        strict[2]
    (folder / 'images' / 'orange.jpg').unlink()
    with pytest.raises(CorruptSampleError, match=r'orange\.jpg: the image file does not exist'):
        strict[1]


def test_folder_bad_inputs(folder):
    (folder / 'bad.csv').write_text('image,text\nstripes.png,x\n')
    with pytest.raises(ValueError, match=r'bad\.csv.*"file_name" and "caption"'):
        ImageCaptionFolder(data_root=str(folder), captions_file='bad.csv', pipeline=pipeline(6))
    with pytest.raises(FileNotFoundError, match='nope.jsonl'):
        ImageCaptionFolder(data_root=str(folder), captions_file='nope.jsonl')
    with pytest.raises(ValueError, match='LoadImageFromFile'):
        ImageCaptionFolder(data_root=str(folder), captions_file='captions.jsonl',
                           pipeline=pipeline(6, load=False))
    with pytest.raises(ValueError, match='on_corrupt'):
        ImageCaptionFolder(data_root=str(folder), captions_file='captions.jsonl',
                           on_corrupt='ignore')


def write_tar(path: Path, members: dict) -> None:
    with tarfile.open(path, 'w') as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def shards(tmp_path):
    write_tar(tmp_path / 'shard-00.tar', {
        'a/0001.png': png_bytes(solid(8, 12, (255, 0, 0))), 'a/0001.txt': b'a red  tile',
        'a/0002.jpg': png_bytes(solid(8, 8, (0, 0, 255)), 'JPEG'),
        'a/0002.json': json.dumps(dict(caption='a blue tile', w=8)).encode(),
        'a/0003.png': b'not an image', 'a/0003.txt': b'garbage'})
    write_tar(tmp_path / 'shard-01.tar', {
        '0004.png': png_bytes(solid(6, 6, (0, 255, 0))), '0004.txt': b'a green tile',
        '0005.png': png_bytes(solid(6, 6, (9, 9, 9))),  # no caption
        '0006.cls': b'3'})  # another payload: not a sample
    return tmp_path


def test_webdataset_tars_index_decode_and_skip(shards):
    with pytest.warns(CorruptSampleWarning, match=r'shard-01\.tar:0005.*no caption'):
        ds = WebDatasetTars(str(shards / 'shard-{00..01}.tar'), pipeline=pipeline(4, load=False))
    assert len(ds) == 4  # 0001, 0002, 0003 (corrupt image), 0004
    red, blue = ds[0], ds[1]
    assert red['caption'] == 'a red tile' and blue['caption'] == 'a blue tile'
    assert torch.equal(red['image'], torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 4, 4))
    assert torch.allclose(blue['image'].mean((1, 2)), torch.tensor([0.0, 0, 1]), atol=0.03)
    with pytest.warns(CorruptSampleWarning, match=r'shard-00\.tar:a/0003\.png: cannot decode'):
        assert ds[2]['caption'] == 'a green tile'
    strict = WebDatasetTars([str(shards / 'shard-00.tar')], pipeline=pipeline(4, load=False),
                            on_corrupt='error')
    with pytest.raises(CorruptSampleError, match=r'a/0003\.png'):
        strict[2]
    with pytest.raises(CorruptSampleError, match=r'0005.*no caption'):
        WebDatasetTars(str(shards / 'shard-01.tar'), on_corrupt='error')


def test_webdataset_truncated_shard_and_bad_inputs(shards):
    data = (shards / 'shard-00.tar').read_bytes()
    (shards / 'cut.tar').write_bytes(data[:1536])  # first member only, header of the second cut
    with pytest.warns(CorruptSampleWarning, match=r'cut\.tar'):
        WebDatasetTars(str(shards / 'cut.tar'), pipeline=pipeline(4, load=False))
    assert expand_shards('shard-0{0..1}.tar', str(shards)) == [
        str(shards / 'shard-00.tar'), str(shards / 'shard-01.tar')]
    assert expand_shards(str(shards / 'shard-*.tar'))[-1].endswith('shard-01.tar')
    with pytest.raises(FileNotFoundError, match='no tar shard matches'):
        expand_shards(str(shards / 'missing-{0..3}.tar'))
    with pytest.raises(ValueError, match='remove LoadImageFromFile'):
        WebDatasetTars(str(shards / 'shard-00.tar'), pipeline=pipeline(4))


# =============================================================================================
# evaluation protocol helpers
# =============================================================================================
class ColourModel:
    """Stand-in for RankEModel.generate: a prompt drawn with seed s is grey, level (s % 4) * 60."""

    def __init__(self, size: int = 8):
        self.size, self.calls = size, []

    def generate(self, prompts, policy='online', decoder='ema', seeds=None, **sampling):
        self.calls.append((len(prompts), policy, decoder, sampling))
        levels = torch.tensor([(s % 4) * 60 / 255 for s in seeds])
        return dict(images=levels[:, None, None, None].expand(-1, 3, self.size, self.size))


class MeanReward(torch.nn.Module):
    def forward(self, images, prompts):
        return images.mean((1, 2, 3))


def test_coco30k_captions_cycle_in_file_order(tmp_path):
    coco = dict(images=[dict(id=1, file_name='x.jpg')],
                annotations=[dict(id=5, image_id=1, caption='A dog.\n'),
                             dict(id=2, image_id=1, caption=' two  cats '),
                             dict(id=9, image_id=1, caption='a bus')])
    (tmp_path / 'captions_val2014.json').write_text(json.dumps(coco))
    assert P.coco30k_captions(tmp_path / 'captions_val2014.json', n=7) == [
        'A dog.', 'two cats', 'a bus', 'A dog.', 'two cats', 'a bus', 'A dog.']
    (tmp_path / 'c.csv').write_text('file_name,caption\na.jpg,"red, blue"\nb.jpg,green\n')
    assert P.coco30k_captions(tmp_path / 'c.csv', n=3) == ['red, blue', 'green', 'red, blue']
    with pytest.raises(FileNotFoundError, match='captions_val2014.json'):
        P.coco30k_captions(tmp_path / 'none.json')


def test_generate_to_folder_seeds_per_image_and_resumes(tmp_path):
    model = ColourModel()
    prompts = [f'p{i}' for i in range(5)]
    paths = P.generate_to_folder(model, prompts, tmp_path / 'a', batch_size=2, seed=10,
                                 progress=False, cfg_scale=3.0)
    assert [p.name for p in paths] == [f'{i:05d}.png' for i in range(5)]
    assert model.calls[0] == (2, 'online', 'ema', dict(cfg_scale=3.0))
    again = P.generate_to_folder(ColourModel(), prompts, tmp_path / 'b', batch_size=3, seed=10,
                                 progress=False)
    for x, y in zip(paths, again):  # the batch size does not change any image
        assert x.read_bytes() == y.read_bytes()
    images = P.load_images(paths)
    # prompt i under run seed 10 has the seed 10 * 1_000_000 + i: grey level (i % 4) * 60
    assert torch.allclose(images[:, 0, 0, 0], torch.tensor([0, 1, 2, 3, 0]) * 60 / 255)
    files, captions = P.read_folder_captions(tmp_path / 'a')
    assert files == paths and captions == prompts
    paths[1].unlink()
    resumed = ColourModel()
    P.generate_to_folder(resumed, prompts, tmp_path / 'a', batch_size=2, seed=10, progress=False)
    assert [c[0] for c in resumed.calls] == [1]  # only the missing image is drawn again


def test_hpsv2_benchmark_per_style_and_average(tmp_path):
    sizes = dict(zip(P.HPSV2_STYLES, (3, 4, 5, 2)))
    for style, n in sizes.items():
        (tmp_path / f'{style}.json').write_text(json.dumps([f'{style} {i}' for i in range(n)]))
    scores = P.hpsv2_benchmark(ColourModel(), tmp_path, tmp_path / 'out', MeanReward(),
                               batch_size=2, progress=False)
    # seeds 0..n-1 per style: grey levels (i % 4) * 60 / 255
    expected = {s: np.mean([(i % 4) * 60 / 255 for i in range(n)]) for s, n in sizes.items()}
    for style in P.HPSV2_STYLES:
        assert scores[style] == pytest.approx(expected[style], abs=1e-6)
    assert scores['average'] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    (tmp_path / 'photo.json').unlink()
    with pytest.raises(FileNotFoundError, match='zhwang/HPDv2'):
        P.hpsv2_benchmark_prompts(tmp_path)


def test_clip_score_folder_uses_prefix_and_files(tmp_path):
    from rankekit.rewards.clip_score import ClipScore
    from rankekit.rewards.toy_clip import TOY_CLIP_CFG, TOY_CLIP_NAME
    torch.manual_seed(0)
    clip = ClipScore(model_name=TOY_CLIP_NAME, model_cfg=TOY_CLIP_CFG, pretrained=None,
                     prefix='A photo depicts ', scale=100.0)
    prompts = ['a red circle', 'a blue square', 'a green cross']
    paths = P.generate_to_folder(ColourModel(16), prompts, tmp_path, progress=False, seed=1)
    out = P.clip_score_folder(tmp_path, clip, batch_size=2)
    direct = clip(P.load_images(paths), prompts)
    assert out['num_images'] == 3
    assert out['mean'] == pytest.approx(float(direct.mean()), abs=1e-4)
    with pytest.raises(ValueError, match='caption_prefix'):
        P.clip_score_folder(tmp_path, clip, caption_prefix='')


def test_prepare_real_folder_crops_and_resizes(tmp_path):
    (tmp_path / 'src').mkdir()
    Image.fromarray(stripes(12)).save(tmp_path / 'src' / 'a.png')
    out = P.prepare_real_folder(tmp_path / 'src', tmp_path / 'dst', 4, progress=False)
    image = P.load_images([out / 'a.png'])[0]  # centre 12x12 of the stripes is green
    assert image.shape == (3, 4, 4) and torch.allclose(image[1], torch.ones(4, 4))


# ---- GenEval -------------------------------------------------------------------------------
GENEVAL_ITEMS = [dict(tag='single_object', include=[dict(**{'class': 'bench', 'count': 1})],
                      prompt='a photo of a bench'),
                 dict(tag='two_object', include=[dict(**{'class': 'cat', 'count': 1}),
                                                 dict(**{'class': 'dog', 'count': 1})],
                      prompt='a photo of a cat and a dog'),
                 dict(tag='counting', include=[dict(**{'class': 'cup', 'count': 3})],
                      prompt='a photo of three cups')]


def fake_results(path: Path, correct: dict) -> None:
    """A GenEval results jsonl (pandas records layout) with `correct[(prompt, image)]`."""
    with open(path, 'w') as f:
        for (p, i), ok in correct.items():
            item = GENEVAL_ITEMS[p]
            f.write(json.dumps(dict(filename=f'{p:05d}/samples/{i:04d}.png', tag=item['tag'],
                                    prompt=item['prompt'], correct=ok, reason='',
                                    metadata=json.dumps(item), details='{}')) + '\n')


def test_parse_geneval_results_by_hand(tmp_path):
    correct = {(0, 0): True, (0, 1): False, (1, 0): False, (1, 1): False, (1, 2): True,
               (1, 3): True, (2, 0): False, (2, 1): False}
    fake_results(tmp_path / 'results.jsonl', correct)
    summary = P.parse_geneval_results(tmp_path / 'results.jsonl')
    assert summary['tasks'] == {'single_object': 0.5, 'two_object': 0.5, 'counting': 0.0}
    assert summary['counts']['two_object'] == [2, 4]
    assert summary['overall'] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert summary['num_images'] == 8 and summary['num_prompts'] == 3
    assert summary['correct_images'] == pytest.approx(3 / 8)
    assert summary['correct_prompts'] == pytest.approx(2 / 3)
    text = P.format_geneval_summary(summary)
    assert 'two_object       = 50.00% (2 / 4)' in text
    assert 'Overall score (avg. over tasks): 0.33333' in text
    (tmp_path / 'bad.jsonl').write_text('{"tag": "x"}\n')
    with pytest.raises(P.GenEvalError, match=r"line 1.*\['correct'\]"):
        P.parse_geneval_results(tmp_path / 'bad.jsonl')


FAKE_EVALUATE = '''
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("imagedir")
parser.add_argument("--outfile", default="results.jsonl")
parser.add_argument("--model-config", default=None)
parser.add_argument("--model-path", default="./")
parser.add_argument("--options", nargs="*", default=[])
args = parser.parse_args()
if os.environ.get("FAKE_GENEVAL_FAIL"):
    sys.exit("CUDA error: no kernel image is available")
with open(os.path.join(os.path.dirname(__file__), "argv.json"), "w") as f:
    json.dump(dict(argv=sys.argv[1:], pythonpath=os.environ.get("PYTHONPATH")), f)
rows = []
for sub in sorted(os.listdir(args.imagedir)):
    folder = os.path.join(args.imagedir, sub)
    if not (os.path.isdir(folder) and sub.isdigit()):
        continue
    meta = json.load(open(os.path.join(folder, "metadata.jsonl")))
    for name in sorted(os.listdir(os.path.join(folder, "samples"))):
        # "correct" when the stand-in image is dark (grey level 0 or 60)
        from PIL import Image
        level = Image.open(os.path.join(folder, "samples", name)).getpixel((0, 0))[0]
        rows.append(dict(filename=name, tag=meta["tag"], prompt=meta["prompt"],
                         correct=level < 100, reason="", metadata=json.dumps(meta), details="{}"))
with open(args.outfile, "w") as f:
    f.write("\\n".join(json.dumps(r) for r in rows) + "\\n")
'''


def test_geneval_images_and_subprocess(tmp_path, monkeypatch, capsys):
    (tmp_path / 'meta.jsonl').write_text(''.join(json.dumps(i) + '\n' for i in GENEVAL_ITEMS))
    images = P.write_geneval_images(ColourModel(), tmp_path / 'meta.jsonl', tmp_path / 'gen',
                                    images_per_prompt=4, batch_size=5, progress=False)
    assert json.loads((images / '00001' / 'metadata.jsonl').read_text()) == GENEVAL_ITEMS[1]
    assert sorted(p.name for p in (images / '00002' / 'samples').iterdir()) == [
        '0000.png', '0001.png', '0002.png', '0003.png']
    repo, detector = tmp_path / 'geneval', tmp_path / 'detector'
    (repo / 'evaluation').mkdir(parents=True)
    (repo / 'evaluation' / 'evaluate_images.py').write_text(FAKE_EVALUATE)
    detector.mkdir()
    with pytest.raises(P.GenEvalError, match='download_models.sh'):
        P.run_geneval(images, repo, sys.executable, detector)
    (detector / f'{P.GENEVAL_DETECTOR}.pth').write_bytes(b'')
    monkeypatch.setenv('PYTHONPATH', '/rankekit/only')
    summary = P.run_geneval(images, repo, sys.executable, detector,
                            options=dict(threshold=0.3))
    sent = json.loads((repo / 'evaluation' / 'argv.json').read_text())
    assert sent['argv'] == [str(images), '--outfile', str(images / 'geneval_results.jsonl'),
                            '--model-path', str(detector), '--options', 'threshold=0.3']
    assert sent['pythonpath'] is None  # the other environment does not see ours
    # image k = 4 p + j has grey level (k % 4) * 60: j = 0, 1 are "correct" for every prompt
    assert summary['tasks'] == {'single_object': 0.5, 'two_object': 0.5, 'counting': 0.5}
    assert summary['overall'] == 0.5 and summary['num_images'] == 12
    # clear errors: no repo, no python, a failing run
    with pytest.raises(P.GenEvalError, match='clone https://github.com/djghosh13/geneval'):
        P.run_geneval(images, tmp_path / 'nope', sys.executable, detector)
    with pytest.raises(P.GenEvalError, match='not an executable'):
        P.run_geneval(images, repo, tmp_path / 'envs' / 'geneval' / 'bin' / 'python', detector)
    with pytest.raises(P.GenEvalError, match='(?s)exit code 1.*no kernel image'):
        P.run_geneval(images, repo, sys.executable, detector, env=dict(FAKE_GENEVAL_FAIL='1'))
    with pytest.raises(P.GenEvalError, match='holds no GenEval prompt folders'):
        P.run_geneval(tmp_path, repo, sys.executable, detector)
    # the command-line wrapper
    tool = load_tool('eval_geneval')
    assert tool.main(['score', str(images), '--geneval-repo', str(repo), '--python',
                      sys.executable, '--detector', str(detector), '--json',
                      str(tmp_path / 'summary.json')]) == 0
    assert 'Overall score (avg. over tasks): 0.50000' in capsys.readouterr().out
    assert json.loads((tmp_path / 'summary.json').read_text())['overall'] == 0.5
    assert tool.main(['score', str(images), '--python', sys.executable]) == 2
    assert '--geneval-repo, --detector' in capsys.readouterr().err


# =============================================================================================
# the real configs: dummy local files in the official formats, one iteration at toy size
# =============================================================================================
CLIP_NAME = 'rankekit-test-recipes-clip'
CLIP_CFG = dict(embed_dim=16,
                vision_cfg=dict(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1))
IMAGE = 32  # px; 4 VQ levels -> 4x4 = 16 tokens
TINY_VQ = dict(ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1, 1, 1],
               decoder_ch_mult=[1, 1, 1, 1], z_channels=32, codebook_size=1024)
TINY_GPT = dict(dim=32, n_layer=1, n_head=2, vocab_size=1024, block_size=16, cls_token_num=8,
                caption_dim=16, multiple_of=32)
WORDS = ['a', 'photo', 'of', 'red', 'blue', 'green', 'cat', 'dog', 'on', 'the', 'table', 'two',
         'bus', 'street', 'man', 'riding', 'bike', 'white', 'plate', 'with', 'food']
CAPTIONS = ['a red bus on the street', 'a man riding a bike', 'two cat on the table',
            'a white plate with food', 'a photo of a dog', 'a green bike']
JANUS_SPECIALS = ['<\uff5cbegin\u2581of\u2581sentence\uff5c>', '<\uff5c\u2581pad\u2581\uff5c>',
                  '<begin_of_image>']
JANUS_CONFIG = {
    'model_type': 'multi_modality',
    'gen_vision_config': {'cls': 'VQ-16', 'params': {'image_token_size': 1024, 'n_embed': 8}},
    'gen_aligner_config': {'cls': 'MlpProjector', 'params': {
        'depth': 2, 'input_dim': 8, 'n_embed': 32, 'projector_type': 'mlp_gelu'}},
    'gen_head_config': {'cls': 'vision_head', 'params': {
        'image_token_embed': 32, 'image_token_size': 1024, 'n_embed': 32}},
    'language_config': {'hidden_size': 32, 'intermediate_size': 64, 'max_position_embeddings': 256,
                        'model_type': 'llama', 'num_attention_heads': 2, 'num_hidden_layers': 1,
                        'num_key_value_heads': 2, 'vocab_size': 64, 'torch_dtype': 'bfloat16'}}


def _vgg16_features(seed: int = 0) -> dict:
    """torchvision vgg16's `features.<i>` conv weights (random, He-scaled): the layout of
    vgg16-397923af.pth (its classifier is left out: LPIPS never reads it)."""
    g = torch.Generator().manual_seed(seed)
    state, index, channels = {}, 0, 3
    for width in [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
                  512, 512, 512, 'M']:
        if width == 'M':
            index += 1
            continue
        std = (2.0 / (channels * 9)) ** 0.5
        state[f'features.{index}.weight'] = torch.randn(width, channels, 3, 3, generator=g) * std
        state[f'features.{index}.bias'] = torch.zeros(width)
        index, channels = index + 2, width
    return state


def _word_tokenizer(words, specials=(), **kwargs):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(['<unk>', *words])},
                                     unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if specials:
        tok.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='<unk>', **kwargs)


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    """The default asset tree of the real configs (data/weights, data/coco) with tiny random
    files in the official formats; returns (root, the tensors written)."""
    from transformers import T5Config, T5ForConditionalGeneration

    from rankekit.policies import JanusProPolicy, LlamaGenGPT
    from rankekit.rewards.clip_score import build_open_clip
    from rankekit.text_encoders.t5 import build_word_tokenizer
    from rankekit.tokenizers import VQModel
    root = tmp_path_factory.mktemp('assets')
    weights = root / 'data' / 'weights'
    weights.mkdir(parents=True)
    torch.manual_seed(0)
    written = {}
    # LlamaGen VQ-16 / GPT-XL layouts: {"model": state_dict} (+ train_t2i.py's extra entries)
    vq = VQModel(**TINY_VQ).state_dict()
    torch.save({'model': vq}, weights / 'vq_ds16_t2i.pt')
    gpt = LlamaGenGPT(**TINY_GPT)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)  # the official init zeroes the head
    import argparse
    torch.save({'model': gpt.state_dict(), 'steps': 0, 'args': argparse.Namespace(gpt_model='x')},
               weights / 't2i_XL_stage1_256.pt')
    written.update(vq=vq, gpt=gpt.state_dict())
    # flan-t5-xl folder: encoder-decoder, sharded safetensors, tokenizer
    t5_dir = weights / 'flan-t5-xl'
    tokenizer = build_word_tokenizer(WORDS)
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                      num_decoder_layers=1, num_heads=2, feed_forward_proj='gated-gelu')
    t5 = T5ForConditionalGeneration(config)
    t5.save_pretrained(t5_dir, max_shard_size='20KB')
    tokenizer.save_pretrained(t5_dir)
    written['t5_embed'] = t5.get_encoder().get_input_embeddings().weight.detach().clone()
    # open_clip state_dicts: the "ViT-L/14" CLIP reward and HPS ({'state_dict': ...})
    clip, _ = build_open_clip(CLIP_NAME, model_cfg=CLIP_CFG)
    torch.save(clip.state_dict(), weights / 'open_clip_ViT-L-14_openai.bin')
    hps, _ = build_open_clip(CLIP_NAME, model_cfg=CLIP_CFG)
    torch.save({'state_dict': hps.state_dict()}, weights / 'HPS_v2.1_compressed.pt')
    written.update(clip=clip.state_dict(), hps=hps.state_dict())
    written['vgg'] = _vgg16_features()
    torch.save(written['vgg'], weights / 'vgg16-397923af.pth')
    # Janus-Pro directory: config.json, pytorch_model.bin (generation + understanding keys),
    # tokenizer files with the special tokens
    janus_dir = weights / 'Janus-Pro-1B'
    janus_dir.mkdir()
    (janus_dir / 'config.json').write_text(json.dumps(JANUS_CONFIG))
    janus_tok = _word_tokenizer(['<|User|>:', '<|Assistant|>:', *WORDS], JANUS_SPECIALS,
                                bos_token=JANUS_SPECIALS[0], pad_token=JANUS_SPECIALS[1])
    janus_tok.save_pretrained(str(janus_dir))
    policy = JanusProPolicy(pretrained=None, language_config=JANUS_CONFIG['language_config'],
                            image_token_size=1024, image_embed_dim=8, image_token_embed=32,
                            image_token_num=16, pad_token_id=0)
    janus_vq = VQModel(**TINY_VQ).state_dict()
    state = dict(policy.state_dict())
    state.update({f'gen_vision_model.{k}': v for k, v in janus_vq.items()})
    state['vision_model.vision_tower.pos_embed'] = torch.randn(1, 4, 8)
    torch.save(state, janus_dir / 'pytorch_model.bin')
    written.update(janus=state)
    # COCO train2014 + captions json
    images = root / 'data' / 'coco' / 'train2014'
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    coco = dict(images=[], annotations=[])
    for i, (h, w) in enumerate([(40, 48), (64, 40), (36, 36), (32, 50)]):
        name = f'COCO_train2014_{i:012d}.jpg'
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
        coco['images'].append(dict(id=i, file_name=name))
    for j, caption in enumerate(CAPTIONS):
        coco['annotations'].append(dict(id=j, image_id=j % 4, caption=caption))
    (root / 'data' / 'coco' / 'annotations').mkdir()
    (root / 'data' / 'coco' / 'annotations' / 'captions_train2014.json').write_text(
        json.dumps(coco))
    return root, written


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        inner = ','.join(_fmt(v) for v in value)
        return f'[{inner}]' if isinstance(value, list) else f'({inner})'
    return str(value)


def toy_options(name: str) -> dict:
    """Overrides shrinking a real recipe to toy size (weights files keep their paths)."""
    opts = {**{f'model.tokenizer.{k}': v for k, v in TINY_VQ.items()},
            'model.tokenizer.image_size': IMAGE,
            'model.discriminator.ndf': 8,
            'model.rewards.0.model_name': CLIP_NAME,
            'model.rollout.group_size': 2, 'model.decoder_cfg.disc_start': 0,
            'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
            'train_dataloader.dataset.pipeline.1.scale': (IMAGE, 1000 * IMAGE),
            'train_dataloader.dataset.pipeline.2.crop_size': IMAGE,
            'train_cfg.max_iters': 1, 'default_hooks.checkpoint.interval': 1,
            'custom_hooks': [], 'log_level': 'WARNING'}
    if 'janus' in name:
        opts['model.policy.image_token_num'] = 16
    else:
        opts.update({f'model.policy.{k}': v for k, v in TINY_GPT.items()})
        opts.update({'model.text_encoder.max_length': 8, 'model.text_encoder.dtype': 'fp32'})
    if 'hpsv2' not in name:
        opts['model.rewards.0.weights_tag'] = None
    return opts


def as_argv(opts: dict) -> list[str]:
    """The same overrides as --cfg-options strings."""
    return [f'{k}={_fmt(v)}' for k, v in opts.items()]


@pytest.mark.parametrize('name', ['ranke_llamagen-xl_clip', 'grpo_llamagen-xl_clip',
                                  'ranke_llamagen-xl_hpsv2', 'ranke_janus-pro-1b_clip'])
@pytest.mark.slow
def test_real_config_builds_from_dummy_files_and_runs_one_iteration(name, assets, tmp_path,
                                                                    monkeypatch):
    from rankekit.rewards.clip_score import register_open_clip_config
    root, written = assets
    register_open_clip_config(CLIP_NAME, CLIP_CFG)
    monkeypatch.chdir(root)  # the configs' default relative paths: data/weights, data/coco
    args = parse_args([str(RECIPES / f'{name}.py'), '--work-dir', str(tmp_path), '--cfg-options',
                       *as_argv(toy_options(name))])
    runner = build_runner(setup_cfg(args))
    model = runner.model
    # every component was read from its dummy file
    if 'janus' in name:
        janus = written['janus']
        assert torch.equal(model.tokenizer.quantize.embedding.weight,
                           janus['gen_vision_model.quantize.embedding.weight'])
        assert torch.equal(model.policy_ref.gen_head.vision_head.weight,
                           janus['gen_head.vision_head.weight'])
        assert not hasattr(model.policy.language_model, 'lm_head')  # keep_lm_head=False
        assert model.text_encoder.special_token_ids['image_start'] == len(WORDS) + 5
    else:
        assert torch.equal(model.tokenizer.quantize.embedding.weight,
                           written['vq']['quantize.embedding.weight'])
        assert torch.equal(model.policy_ref.output.weight, written['gpt']['output.weight'])
        assert torch.equal(model.text_encoder.encoder.get_input_embeddings().weight,
                           written['t5_embed'])
    reward = model.rewards.rewards[0]
    source = written['hps' if 'hpsv2' in name else 'clip']
    assert torch.equal(reward.clip.visual.conv1.weight, source['visual.conv1.weight'])
    assert torch.equal(model.perceptual.lpips.net.slice1[0].weight,
                       written['vgg']['features.0.weight'])

    runner.train()
    assert runner.iter == 1 and (tmp_path / 'iter_1.pth').is_file()
    assert int(model.skipped_nonfinite) == 0 and int(model.policy_steps) == 1
    changed = any(not torch.equal(a, b) for a, b in
                  zip(model.policy.parameters(), model.policy_ref.parameters()))
    assert changed  # the policy took its GRPO step (lr 1e-6)
    decoder_moved = any(not torch.equal(a, b) for a, b in zip(
        model.tokenizer.decoder.parameters(), model.decoder_base['decoder'].parameters()))
    scalars = runner.message_hub.log_scalars
    if name.startswith('grpo'):
        assert int(model.decoder_steps) == 0 and not decoder_moved  # Std. RL: frozen decoder
    else:
        assert int(model.decoder_steps) == 1 and decoder_moved
        assert 'train/decoder/rank_gan' in scalars and 'train/disc/loss' in scalars
    if 'hpsv2' in name:  # released HPS runs score without gradients: no decoder reward term
        assert model.decoder_cfg.reward_weight == 0.0 and 'train/decoder/reward' not in scalars
    elif not name.startswith('grpo'):
        assert 'train/decoder/reward' in scalars
    if name == 'ranke_llamagen-xl_clip':  # the checkpoint feeds the evaluation tools
        check_evaluation_round_trip(name, model, tmp_path)


def check_evaluation_round_trip(name, model, work_dir):
    config, checkpoint = str(RECIPES / f'{name}.py'), str(work_dir / 'iter_1.pth')
    from rankekit.apis.inference import load_model
    evaluated, cfg, _ = load_model(config, checkpoint, toy_options(name))
    assert not evaluated.training and cfg.paper_eval.sampling.policy == 'online'
    for part in ('policy', 'policy_ema', 'decoder_ema', 'discriminator'):
        assert all(torch.equal(a, b) for a, b in zip(getattr(evaluated, part).state_dict().values(),
                                                     getattr(model, part).state_dict().values()))
    tool = load_tool('eval_geneval')
    (work_dir / 'meta.jsonl').write_text(json.dumps(GENEVAL_ITEMS[0]) + '\n')
    assert tool.main(['generate', config, '--checkpoint', checkpoint, '--out',
                      str(work_dir / 'geneval'), '--metadata', str(work_dir / 'meta.jsonl'),
                      '--images-per-prompt', '2', '--device', 'cpu', '--cfg-options',
                      *as_argv(toy_options(name))]) == 0
    samples = P.load_images(sorted((work_dir / 'geneval' / '00000' / 'samples').iterdir()))
    assert samples.shape == (2, 3, IMAGE, IMAGE)


def test_real_configs_state_the_released_hyperparameters():
    llamagen = load_config(str(RECIPES / 'ranke_llamagen-xl_clip.py'))
    janus = load_config(str(RECIPES / 'ranke_janus-pro-1b_clip.py'))
    grpo = load_config(str(RECIPES / 'grpo_llamagen-xl_clip.py'))
    hps = load_config(str(RECIPES / 'ranke_llamagen-xl_hpsv2.py'))
    for cfg, cfg_scale, lambda_c, lambda_d in ((llamagen, 6.0, 10.0, 0.01),
                                               (janus, 5.0, 5.0, 0.05)):
        m = cfg.model
        assert m.rollout.group_size == 8 and m.rollout.cfg_scale == cfg_scale
        assert (m.rollout.temperature, m.rollout.top_k, m.rollout.decode_with) == (1.0, 1000, 'ema')
        rank_loss = m.rank_loss
        assert rank_loss.type == 'GRPOLoss'
        assert (rank_loss.clip_eps, rank_loss.std_eps, rank_loss.adv_clamp) == (0.2, 1e-4, 5.0)
        assert (m.policy_anchor.type, m.policy_anchor.estimator, m.policy_anchor.weight,
                m.policy_anchor.reference) == ('KLAnchor', 'k2', 0.05, 'initial')
        assert (m.policy_cfg.ema_decay, m.policy_cfg.ema_interval) == (0.999, 10)
        assert m.rank_weights.top_k == 1
        assert (m.discriminator.n_layers, m.discriminator.ndf) == (3, 64)
        d = m.decoder_cfg
        assert (d.disc_weight, d.gan_weight, d.disc_start) == (0.5, 0.5, 100)
        assert d.rank_gan_weight == 1.0 and d.lasc_weight == 0.0
        assert (d.ema_decay, d.recon_weight, d.reward_weight) == (0.99, 1.0, lambda_d)
        assert (m.decoder_anchor.weight, m.perceptual_loss.net) == (lambda_c, 'vgg')
        lrs = {k: cfg.optim_wrapper[k].optimizer.lr for k in ('policy', 'decoder', 'discriminator')}
        assert lrs == dict(policy=1e-6, decoder=1e-5, discriminator=2e-5)
        assert all(cfg.optim_wrapper[k].optimizer.weight_decay == 0.01 for k in lrs)
        # the release clips policy and decoder, never the discriminator
        assert [cfg.optim_wrapper[k].get('clip_grad') for k in lrs] == [
            dict(max_norm=1.0), dict(max_norm=1.0), None]
        assert cfg.train_cfg.max_iters == 6000 and cfg.train_dataloader.batch_size == 4
        tau = cfg.default_hooks.coevolution.tau
        assert (tau.type, tau.start, tau.end, tau.stop) == ('cosine', 4.0, 1.0, 0.2)
    assert llamagen.model.policy.arch == 'GPT-XL' and llamagen.model.tokenizer.arch == 'VQ-16'
    assert janus.model.policy.image_token_num == 576 and janus.model.tokenizer.image_size == 384
    assert janus.train_dataloader.dataset.pipeline[2].crop_size == 384
    assert grpo.default_hooks.coevolution.train_mode == 'policy'
    assert hps.model.rewards[0].type == 'HPSv2' and hps.model.rewards[0].differentiable is False


def test_default_asset_paths_are_documented():
    docs = (REPO / 'docs' / 'prepare_assets.md').read_text()
    for name in ('ranke_llamagen-xl_clip', 'ranke_llamagen-xl_hpsv2', 'ranke_janus-pro-1b_clip'):
        cfg = load_config(str(RECIPES / f'{name}.py'))
        m = cfg.model
        paths = [m.tokenizer.pretrained, m.policy.pretrained,
                 m.perceptual_loss.backbone_weights, *(r.pretrained for r in m.rewards),
                 cfg.paper_eval.coco.clip.pretrained, cfg.paper_eval.hpsv2.reward.pretrained]
        paths.append(m.text_encoder.get('model_dir') or m.text_encoder.tokenizer_path)
        for path in paths:
            assert f'`{path}`' in docs, f'{path} (from {name}) is not in docs/prepare_assets.md'


# =============================================================================================
# tools/device_check.py
# =============================================================================================
def test_device_check_cpu_smoke_and_refusal(tmp_path, capsys, monkeypatch):
    tool = load_tool('device_check')
    assert tool.main(['--cpu-smoke', '--iters', '1', '--prompts', '2',
                      '--out', str(tmp_path / 'check.json')]) == 0
    result = json.loads((tmp_path / 'check.json').read_text())
    assert result['tokens_per_image'] == 16 and result['group_size'] == 4
    assert result['cfg_scale'] == 6.0 and result['top_k'] == 1000  # the recipe's sampling
    assert result['tokens_per_s'] > 0 and len(result['iteration_s']) == 1
    assert result['policy_steps'] == 1 and result['decoder_steps'] == 101  # past disc_start
    assert 'RankE iteration' in capsys.readouterr().out
    # the GPU default: the policy (and its reference / EMA copies) in bf16, the rest fp32
    assert tool.main(['--cpu-smoke', '--iters', '1', '--prompts', '1', '--dtype', 'bf16',
                      '--out', str(tmp_path / 'bf16.json')]) == 0
    assert json.loads((tmp_path / 'bf16.json').read_text())['dtype'] == 'bf16'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert tool.main([]) == 2
    assert '--cpu-smoke' in capsys.readouterr().err
