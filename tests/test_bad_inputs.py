"""The catalogue of bad inputs (docs/troubleshooting.md): one clear message each, no partial run.

Set-up errors go through ``tools/train.py`` in-process (``rankekit.apis.train.main``): exit code
2, exactly one ``error:`` line on stderr, no traceback, and a work dir that does not look like a
run (no checkpoint, no ``last_checkpoint``, no dumped config). Errors of the tools and of the
data/reward APIs are checked where the user meets them. Entry numbers match the doc.
"""
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rankekit.apis.inference import evaluate_main, sample_main
from rankekit.apis.train import main as train_main
from rankekit.registry import MODELS, TOKENIZERS
from tiny_components import load_tool, tiny_model_cfg

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')

OPTIM = '''optim_wrapper = dict(
    constructor='MultiOptimWrapperConstructor',
    policy=dict(optimizer=dict(type='AdamW', lr=1e-3)),
    decoder=dict(optimizer=dict(type='AdamW', lr=1e-3)),
    discriminator=dict(optimizer=dict(type='AdamW', lr=1e-3)))'''

ablation_main = load_tool('analysis/ablation_table').main


def config_text(model=None, extra='', max_iters=1, batch_size=2, optim=OPTIM,
                dataset="dict(type='ToyShapes', split='train', num_samples=8)"):
    """A tiny RankE training config (the toy dataset, no asset file)."""
    return f'''
default_scope = 'rankekit'
model = {model or tiny_model_cfg()!r}
train_dataloader = dict(batch_size={batch_size}, num_workers=0,
                        collate_fn=dict(type='default_collate'),
                        sampler=dict(type='DefaultSampler', shuffle=False, seed=0),
                        dataset={dataset})
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters})
{optim}
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0)
log_level = 'WARNING'
''' + extra


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv('RANKEKIT_DEBUG', raising=False)


@pytest.fixture
def write_cfg(tmp_path, request):
    """Write a config named after the test: MMEngine keys its logger/visualizer by file name and
    second, so each test's runner gets its own."""
    stem = re.sub(r'\W+', '_', request.node.name).strip('_')

    def write(text):
        path = tmp_path / f'{stem}.py'
        path.write_text(text)
        return path
    return write


def assert_not_a_run(work_dir: Path) -> None:
    """What a failed set-up may leave: at most ``<timestamp>/`` with the log."""
    if not work_dir.exists():
        return
    assert not list(work_dir.rglob('*.pth')) and not (work_dir / 'last_checkpoint').exists()
    assert not list(work_dir.glob('*.py')), 'the dumped config would make it look like a run'
    assert not list(work_dir.glob('*/vis_data/config.py'))


def train_error(capsys, cfg_file, *args, work_dir=None) -> str:
    """Run tools/train.py; assert exit code 2 and one ``error:`` line; return that line."""
    work_dir = work_dir or Path(cfg_file).parent / 'work'
    code = train_main([str(cfg_file), '--work-dir', str(work_dir), *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('error: ')]
    assert code == 2, err
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert_not_a_run(work_dir)
    return lines[0]


def has(message: str, *phrases: str) -> None:
    missing = [p for p in phrases if p not in message]
    assert not missing, f'{missing} not in: {message}'


# --- 1-5: the config file and the command line --------------------------------------------------
def test_01_config_file_missing(capsys, tmp_path):
    has(train_error(capsys, tmp_path / 'nope.py'),
        'config file', 'nope.py', 'does not exist', 'configs live in configs/')
    assert not (tmp_path / 'work').exists()


def test_02_config_syntax_error_names_file_and_line(capsys, write_cfg):
    path = write_cfg(config_text() + 'broken = dict(a=1\n')
    has(train_error(capsys, path), 'is not valid Python', f'{path}, line', 'never closed',
        'Fix that line')


def test_02b_syntax_error_in_a_base_file_names_the_base(capsys, tmp_path, write_cfg):
    (tmp_path / 'base.py').write_text('x = [1, 2\n')
    has(train_error(capsys, write_cfg("_base_ = ['./base.py']\n")), 'base.py, line 1')


def test_03_missing_base_file(capsys, write_cfg):
    has(train_error(capsys, write_cfg("_base_ = ['./no_such_base.py']\n" + config_text())),
        'a file it names does not exist', 'no_such_base.py', 'check its _base_ list')


def test_04_cfg_options_without_equals_is_an_argparse_error(capsys, write_cfg):
    path = write_cfg(config_text())
    with pytest.raises(SystemExit) as info:
        train_main([str(path), '--cfg-options', 'train_cfg.max_iters'])
    assert info.value.code == 2
    has(capsys.readouterr().err, "--cfg-options: 'train_cfg.max_iters' is not KEY=VALUE",
        'train_cfg.max_iters=20')


def test_04b_cfg_options_value_that_is_not_a_literal(capsys, write_cfg):
    path = write_cfg(config_text())
    with pytest.raises(SystemExit) as info:  # the shell ate the quotes around the string
        train_main([str(path), '--cfg-options', 'model.rewards=[dict(type=Colourfulness)]'])
    assert info.value.code == 2
    has(capsys.readouterr().err, '--cfg-options: model.rewards: [dict(type=Colourfulness)] is '
        "not a literal (Colourfulness is not a value (a string needs quotes: 'Colourfulness'; in "
        'a shell, put the whole option in double quotes))', 'nothing else is evaluated')


def test_05_cfg_options_misspelled_top_level_key(capsys, write_cfg):
    has(train_error(capsys, write_cfg(config_text()), '--cfg-options', 'trian_cfg.max_iters=5'),
        "--cfg-options trian_cfg.max_iters=5: the config has no top-level key 'trian_cfg'",
        "Did you mean 'train_cfg'?")


# --- 6-8: unknown names, misspelled keys, wrong types -------------------------------------------
@pytest.mark.parametrize('field, value, where, suggestion', [
    ('rank_loss', dict(type='GRPOLos'), 'model.rank_loss', 'GRPOLoss'),
    ('rewards', [dict(type='RednesReward')], 'model.rewards[0]', 'RednessReward'),
    ('policy_anchor', dict(type='KLAnchr', weight=0.05), 'model.policy_anchor', 'KLAnchor'),
], ids=['rank_loss', 'reward', 'anchor'])
def test_06_unknown_component_suggests_close_match(capsys, write_cfg, field, value, where,
                                                   suggestion):
    message = train_error(capsys, write_cfg(config_text(tiny_model_cfg(**{field: value}))))
    has(message, f'{where}: ', 'is not a registered', f"Did you mean '{suggestion}'?",
        '`rankekit list`')


@pytest.mark.parametrize('text, phrases', [
    ("dataset=dict(type='ToyShape')", ("train_dataloader.dataset: 'ToyShape'", "'ToyShapes'")),
    ("hook=dict(type='CoEvolutionHok')", ("custom_hooks[0]: 'CoEvolutionHok'",
                                          "'CoEvolutionHook'")),
], ids=['dataset', 'hook'])
def test_06b_unknown_engine_component(capsys, write_cfg, text, phrases):
    if text.startswith('dataset'):
        path = write_cfg(config_text(dataset=text.split('=', 1)[1]))
    else:
        path = write_cfg(config_text(extra=f"custom_hooks = [{text.split('=', 1)[1]}]\n"))
    has(train_error(capsys, path), *phrases, 'Did you mean')


@pytest.mark.parametrize('model, phrases', [
    (tiny_model_cfg(rank_loss=dict(type='GRPOLoss', clip_esp=0.2)),
     ("model.rank_loss (GRPOLoss): unknown key 'clip_esp'", "Did you mean 'clip_eps'",
      '`rankekit info GRPOLoss`')),
    ({**tiny_model_cfg(), 'rolout': dict(group_size=4)},
     ("model (RankEModel): unknown key 'rolout'", "Did you mean 'rollout'?")),
    (tiny_model_cfg(rollout=dict(group_sise=4)),
     ("model.rollout has unknown keys 'group_sise'", "did you mean 'group_size'?")),
    (tiny_model_cfg(decoder_cfg=dict(reward_weigth=0.0)),
     ("model.decoder_cfg has unknown keys 'reward_weigth'", "did you mean 'reward_weight'?")),
], ids=['component_arg', 'model_arg', 'rollout_key', 'decoder_cfg_key'])
def test_07_misspelled_key_suggests_close_match(capsys, write_cfg, model, phrases):
    has(train_error(capsys, write_cfg(config_text(model))), *phrases)


def test_07b_misspelled_dataset_key(capsys, write_cfg):
    path = write_cfg(config_text(dataset="dict(type='ToyShapes', splt='train')"))
    has(train_error(capsys, path), "train_dataloader.dataset (ToyShapes): unknown key 'splt'",
        "Did you mean 'split'?")


@pytest.mark.parametrize('model, phrases', [
    (tiny_model_cfg(rollout=dict(group_size='8')),
     ("model.rollout.group_size must be an int, got '8' (str)", 'without quotes: 8')),
    (tiny_model_cfg(rollout=dict(group_size=4.0)),
     ('model.rollout.group_size must be an int, got 4.0 (float)',)),
    (tiny_model_cfg(rank_loss=dict(type='GRPOLoss', clip_eps='0.2')),
     ("model.rank_loss.clip_eps (GRPOLoss) must be a number, got '0.2' (str)",
      'without quotes: 0.2')),
    (tiny_model_cfg(decoder_cfg=dict(disc_sees_policy='yes')),
     ("model.decoder_cfg.disc_sees_policy must be True or False, got 'yes'",)),
], ids=['group_size_str', 'group_size_float', 'component_float_str', 'bool_str'])
def test_08_wrong_type_for_a_key(capsys, write_cfg, model, phrases):
    has(train_error(capsys, write_cfg(config_text(model))), *phrases)


def test_08b_wrong_type_in_the_loop_config(capsys, write_cfg):
    path = write_cfg(config_text().replace('max_iters=1)', "max_iters='10')"))
    has(train_error(capsys, path), "train_cfg.max_iters (IterBasedTrainLoop) must be an int, "
        "got '10' (str)")


# --- 9-16: settings that cannot work, refused at build time -------------------------------------
def test_09_group_size_one_with_grpo(capsys, write_cfg):
    has(train_error(capsys, write_cfg(config_text(tiny_model_cfg(rollout=dict(group_size=1))))),
        'model.rollout.group_size=1', 'advantage is zero', 'GRPO', 'group_size >= 2')


def test_10_top_k_larger_than_the_vocabulary(capsys, write_cfg):
    path = write_cfg(config_text(tiny_model_cfg(rollout=dict(top_k=100))))
    has(train_error(capsys, path), 'model.rollout.top_k must be in [0, 32], got 100',
        'the policy has 32 image tokens')


@pytest.mark.parametrize('rollout, phrases', [
    (dict(top_p=1.5), ('model.rollout.top_p must be in (0.0, 1.0], got 1.5',)),
    (dict(top_p=0.0), ('model.rollout.top_p must be in (0.0, 1.0], got 0.0',)),
    (dict(temperature=0), ('model.rollout.temperature must be > 0.0, got 0',)),
    (dict(cfg_scale=0.5), ('model.rollout.cfg_scale must be >= 1.0, got 0.5', '1 = no guidance')),
    (dict(decode_with='emma'), ("model.rollout.decode_with must be one of ('online', 'ema', "
                                "'base'), got 'emma'", "Did you mean 'ema'?")),
], ids=['top_p_high', 'top_p_zero', 'temperature', 'cfg_scale', 'decode_with'])
def test_11_sampling_settings_out_of_range(capsys, write_cfg, rollout, phrases):
    has(train_error(capsys, write_cfg(config_text(tiny_model_cfg(rollout=rollout)))), *phrases)


@pytest.mark.parametrize('overrides, key, value', [
    (dict(decoder_cfg=dict(ema_decay=1.0)), 'model.decoder_cfg.ema_decay', '1.0'),
    (dict(policy_cfg=dict(ema_decay=-0.1)), 'model.policy_cfg.ema_decay', '-0.1'),
], ids=['decoder', 'policy'])
def test_12_ema_decay_outside_0_1(capsys, write_cfg, overrides, key, value):
    has(train_error(capsys, write_cfg(config_text(tiny_model_cfg(**overrides)))),
        f'{key} must be in [0.0, 1.0), got {value}')


def test_13_rank_weights_top_k_larger_than_group(capsys, write_cfg):
    model = tiny_model_cfg(rank_weights=dict(type='TopKSoftmaxWeights', top_k=8))
    has(train_error(capsys, write_cfg(config_text(model))),
        'model.rank_weights.top_k=8 is larger than model.rollout.group_size=4',
        'set top_k <= group_size')


def test_14_non_differentiable_reward_with_decoder_reward_weight(capsys, write_cfg):
    model = tiny_model_cfg(rewards=[dict(type='RednessReward', differentiable=False)],
                           decoder_cfg=dict(reward_weight=0.1))
    has(train_error(capsys, write_cfg(config_text(model))),
        'model.decoder_cfg.reward_weight=0.1 needs a differentiable reward',
        "['redness_reward'] are not differentiable", 'Set model.decoder_cfg.reward_weight=0',
        'use a differentiable reward')


def test_14b_reward_weight_zero_builds_with_a_non_differentiable_reward():
    model = MODELS.build(tiny_model_cfg(rewards=[dict(type='RednessReward',
                                                      differentiable=False)],
                                        decoder_cfg=dict(reward_weight=0.0)))
    assert not model.rewards.any_differentiable


def test_15_perceptual_decoder_anchor_without_perceptual_net(capsys, write_cfg):
    model = tiny_model_cfg(decoder_anchor=dict(type='EMAAnchor', weight=1.0,
                                               distance='perceptual'))
    model.pop('perceptual_loss')
    has(train_error(capsys, write_cfg(config_text(model))),
        "model.decoder_anchor (EMAAnchor) uses distance='perceptual'",
        'model.perceptual_loss is not set', "distance='mse'")


def test_16_reward_name_used_twice(capsys, write_cfg):
    model = tiny_model_cfg(rewards=[dict(type='RednessReward'), dict(type='RednessReward')])
    has(train_error(capsys, write_cfg(config_text(model))), 'reward names must be unique',
        "['redness_reward'] appear more than once", "Set name='...'")


# --- 17-22: files: assets, checkpoints, plugins ---------------------------------------------------
def test_17_missing_weights_files_are_listed_at_once(capsys, write_cfg, tmp_path):
    tokenizer = dict(tiny_model_cfg()['tokenizer'], pretrained=str(tmp_path / 'vq.pt'))
    rewards = [dict(type='RednessReward'), dict(type='ClipScore', model_name='rankekit-toy-clip',
                                                pretrained='weights/clip.pt', name='clip')]
    path = write_cfg(config_text(tiny_model_cfg(tokenizer=tokenizer, rewards=rewards)))
    has(train_error(capsys, path), '2 weights file(s) of the model are missing',
        f'model.tokenizer.pretrained={tmp_path / "vq.pt"}', 'model.rewards[1].pretrained=weights/'
        'clip.pt', 'docs/prepare_assets.md')
    assert not (tmp_path / 'work').exists()  # found before the Runner made anything


def test_17b_real_backbone_weights_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's relative data/weights/... do not exist here
    message = train_error(capsys, REPO / 'configs/ranke/ranke_llamagen-xl_clip.py',
                          work_dir=tmp_path / 'work')
    has(message, '5 weights file(s)', f'relative paths are read from {tmp_path}',
        'model.tokenizer.pretrained=data/weights/vq_ds16_t2i.pt',
        'model.policy.pretrained=data/weights/t2i_XL_stage1_256.pt',
        'model.text_encoder.model_dir=data/weights/flan-t5-xl', 'docs/prepare_assets.md')


def test_18_toy_asset_name_that_does_not_exist(capsys, write_cfg):
    tokenizer = dict(tiny_model_cfg()['tokenizer'], pretrained='toy://vqq.pt')
    has(train_error(capsys, write_cfg(config_text(tiny_model_cfg(tokenizer=tokenizer)))),
        'model.tokenizer.pretrained=toy://vqq.pt (not a toy asset.', "Did you mean 'toy://vq.pt'?")


def test_20b_load_from_that_does_not_exist(capsys, write_cfg, tmp_path):
    missing = tmp_path / 'runs' / 'iter_600.pth'
    path = write_cfg(config_text(extra=f'load_from = {str(missing)!r}\n'))
    has(train_error(capsys, path), f'load_from={missing} does not exist',
        'train the run it names first', '--cfg-options load_from=PATH')
    assert not (tmp_path / 'work').exists()


@pytest.fixture(scope='module')
def vq_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('weights') / 'vq.pt'
    torch.manual_seed(0)
    torch.save(TOKENIZERS.build(tiny_model_cfg()['tokenizer']).state_dict(), path)
    return path


def test_19_checkpoint_of_the_wrong_architecture_reports_shapes(capsys, write_cfg, vq_file):
    tokenizer = dict(tiny_model_cfg()['tokenizer'], codebook_size=64, pretrained=str(vq_file))
    has(train_error(capsys, write_cfg(config_text(tiny_model_cfg(tokenizer=tokenizer)))),
        f'{vq_file} does not fit VQModel (wrong architecture or config?)',
        'quantize.embedding.weight: file (32, 8) vs model (64, 8)')


def test_20_truncated_weights_file(capsys, write_cfg, vq_file, tmp_path):
    truncated = tmp_path / 'vq_truncated.pt'
    truncated.write_bytes(vq_file.read_bytes()[:4096])
    tokenizer = dict(tiny_model_cfg()['tokenizer'], pretrained=str(truncated))
    has(train_error(capsys, write_cfg(config_text(tiny_model_cfg(tokenizer=tokenizer)))),
        f'{truncated} could not be read', 'truncated or corrupt', 'download or copy it again')


@pytest.mark.parametrize('body, phrases', [
    ("raise RuntimeError('boom at import')\n",
     ('RuntimeError: boom at import', 'fix it or remove it from the list')),
    (None, ("No module named 'rk_bad_plugin_test_21'", 'is the package installed')),
], ids=['raises', 'not_installed'])
def test_21_plugin_that_raises_on_import(capsys, write_cfg, tmp_path, monkeypatch, body, phrases):
    if body is not None:
        (tmp_path / 'rk_bad_plugin_test_21.py').write_text(body)
        monkeypatch.syspath_prepend(str(tmp_path))
    extra = "custom_imports = dict(imports=['rk_bad_plugin_test_21'])\n"
    path = write_cfg(config_text(extra=extra))
    has(train_error(capsys, path), "plugin module 'rk_bad_plugin_test_21' listed in the config "
        'key custom_imports failed to import', *phrases)


def test_22_callable_reward_that_cannot_be_imported(capsys, write_cfg):
    model = tiny_model_cfg(rewards=[dict(type='CallableReward', fn='rk_no_such_module:score')])
    has(train_error(capsys, write_cfg(config_text(model))),
        "CallableReward fn='rk_no_such_module:score'", "module 'rk_no_such_module' could not be "
        'imported', 'on PYTHONPATH')


# --- 23-26: optimisation and loop settings --------------------------------------------------------
@pytest.mark.parametrize('lr', ['-1e-3', '0.0'])
def test_23_learning_rate_not_positive(capsys, write_cfg, lr):
    path = write_cfg(config_text(optim=OPTIM.replace("decoder=dict(optimizer=dict(type='AdamW', "
                                                     "lr=1e-3)", f"decoder=dict(optimizer=dict("
                                                     f"type='AdamW', lr={lr})")))
    has(train_error(capsys, path), 'optim_wrapper.decoder.optimizer.lr must be > 0.0',
        'CoEvolutionHook(train_mode=...)')


@pytest.mark.parametrize('max_iters', [0, -3])
def test_24_max_iters_not_positive(capsys, write_cfg, max_iters):
    has(train_error(capsys, write_cfg(config_text(max_iters=max_iters))),
        f'train_cfg.max_iters must be >= 1, got {max_iters}', 'at least one iteration')


def test_25_batch_size_zero(capsys, write_cfg):
    has(train_error(capsys, write_cfg(config_text(batch_size=0))),
        'train_dataloader.batch_size must be >= 1, got 0')


def test_26_optimizer_for_a_part_that_does_not_exist(capsys, write_cfg):
    path = write_cfg(config_text(optim=OPTIM.replace('decoder=dict(', 'decodr=dict(')))
    has(train_error(capsys, path), "optim_wrapper has a config for 'decodr'",
        "Did you mean 'decoder'?")


# --- 27-30: data -----------------------------------------------------------------------------
def test_27_empty_or_malformed_prompt_file(tmp_path, capsys, write_cfg):
    from rankekit.datasets import PromptList
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n  \n')
    with pytest.raises(ValueError, match=r'prompt file .*empty.txt holds no prompts .*one prompt '
                                         r'per line'):
        PromptList(file=str(empty))
    broken = tmp_path / 'broken.jsonl'
    broken.write_text('{"caption": "a red circle"}\n{"caption": "a blue\n')
    with pytest.raises(ValueError, match=r'broken.jsonl, line 2: not valid JSON .*"caption"'):
        PromptList(file=str(broken))
    wrong_key = tmp_path / 'wrong.jsonl'
    wrong_key.write_text('{"prompt": "a red circle"}\n')
    with pytest.raises(ValueError, match=r"line 1: expected an object with 'caption'"):
        PromptList(file=str(wrong_key))
    # the same through tools/sample.py: one line, before any model is built
    assert sample_main([str(write_cfg(config_text())), '--prompt-file', str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: prompt file') and 'holds no prompts' in err


def _image_folder(root: Path, names=('a.png', 'b.png', 'c.png')) -> Path:
    (root / 'images').mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / 'images' / name)
    captions = root / 'captions.jsonl'
    captions.write_text(''.join(f'{{"file_name": "{n}", "caption": "picture {n}"}}\n'
                                for n in names))
    return captions


def _folder_dataset(root, **kwargs):
    from rankekit.datasets import ImageCaptionFolder
    pipeline = [dict(type='LoadImageFromFile', imdecode_backend='pillow'),
                dict(type='PackImageCaption')]
    return ImageCaptionFolder(data_root=str(root), captions_file='captions.jsonl',
                              image_prefix='images', pipeline=pipeline, **kwargs)


def test_28_corrupt_image_in_a_dataset_folder(tmp_path):
    from rankekit.datasets.image_caption import CorruptSampleError, CorruptSampleWarning
    _image_folder(tmp_path)
    bad = tmp_path / 'images' / 'b.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    with pytest.raises(CorruptSampleError, match=rf"corrupt sample {re.escape(str(bad))}: cannot "
                       r"decode the image .*Remove or replace the file, or .*on_corrupt='skip'"):
        _folder_dataset(tmp_path, on_corrupt='error')[1]
    skipping = _folder_dataset(tmp_path, on_corrupt='skip')
    expected = rf'skipping corrupt sample {re.escape(str(bad))}: cannot decode'
    with pytest.warns(CorruptSampleWarning, match=expected):
        item = skipping[1]
    assert item['caption'] == 'picture c.png' and skipping.skipped == [str(bad)]


def test_29_image_folder_missing_or_without_images(tmp_path):
    captions = _image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r'the image folder .*/nope does not exist; check '
                                                r"data_root=.* and image_prefix"):
        _folder_dataset(tmp_path, on_corrupt='skip').__class__(
            data_root=str(tmp_path), captions_file=str(captions), image_prefix='nope')
    for image in (tmp_path / 'images').iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match=r'none of the first 3 images listed in .*'
                                                r'captions.jsonl exists .*holds no images'):
        _folder_dataset(tmp_path)


def test_30_caption_file_naming_a_missing_image(tmp_path):
    from rankekit.datasets.image_caption import CorruptSampleError
    _image_folder(tmp_path)
    (tmp_path / 'images' / 'c.png').unlink()
    dataset = _folder_dataset(tmp_path, on_corrupt='error')  # a.png is there: it builds
    with pytest.raises(CorruptSampleError, match=r'c.png: the image file does not exist'):
        dataset[2]


# --- 31-33: rewards and rollouts -----------------------------------------------------------------
def test_31_reward_returning_the_wrong_shape():
    from rankekit.rewards import CallableReward, RewardCombiner
    combiner = RewardCombiner([CallableReward(fn=lambda images, prompts: images.mean((2, 3)),
                                              name='per_channel')])
    with pytest.raises(ValueError, match=r"reward 'per_channel' returned shape \(4, 3\) for 4 "
                                         r'images; a reward must return one score per image, '
                                         r'shape \(4,\)'):
        combiner.score(torch.rand(4, 3, 8, 8), ['a'] * 4)


def test_32_reward_returning_nan_is_skipped_then_stops_the_run():
    from rankekit.engine.optim_constructor import MultiOptimWrapperConstructor
    from rankekit.models import NonFiniteError
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(rewards=[dict(type='RednessReward', poison_after=0)],
                                        safety=dict(max_consecutive_skips=2)))
    model.train()
    optim = MultiOptimWrapperConstructor(dict(
        policy=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        decoder=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        discriminator=dict(optimizer=dict(type='AdamW', lr=1e-3))))(model)
    data = dict(image=torch.rand(2, 3, 32, 32), caption=['a red circle', 'a blue square'])
    logs = model.train_step(data, optim)
    assert float(logs['skipped_nonfinite']) == 1  # skipped and counted, the run goes on
    assert model.rewards.last_nonfinite == {'redness_reward': 1}
    assert model.rewards.nonfinite_summary() == "reward 'redness_reward' (1 non-finite score)"
    with pytest.raises(NonFiniteError) as info:
        model.train_step(data, optim)
    has(str(info.value), '2 consecutive updates were skipped', 'not finite',
        'model.safety.max_consecutive_skips')


def test_33_rollouts_that_do_not_split_into_groups():
    from rankekit.losses import GRPOLoss
    logp = torch.zeros(6, 4)
    with pytest.raises(ValueError, match=r'GRPOLoss: 6 rollouts do not split into groups of '
                                         r'group_size=4; N must be B \* group_size'):
        GRPOLoss()(logp, logp, torch.zeros(6), 4)


# --- 34-36: evaluation tools ----------------------------------------------------------------------
def test_34_unknown_combo_in_test_tool(capsys, write_cfg):
    assert evaluate_main([str(write_cfg(config_text())), '--base', '--combos', 'online:emma']) == 2
    err = capsys.readouterr().err
    has(err, "error: combo 'online:emma' is not POLICY:DECODER", "'online:ema'")
    assert 'Traceback' not in err


def test_35_sampling_option_out_of_range_in_test_tool(capsys, write_cfg, tmp_path):
    prompts = tmp_path / 'p.txt'
    prompts.write_text('a red circle\n')
    code = evaluate_main([str(write_cfg(config_text())), '--base', '--prompt-file', str(prompts),
                          '--top-k', '1000', '--no-progress', '--out-dir', str(tmp_path / 'out')])
    assert code == 2
    has(capsys.readouterr().err, 'sampling settings (--temperature / --top-k / --top-p',
        'top_k must be in [0, vocab_size=32]', 'got 1000')
    assert not (tmp_path / 'out').exists()


@pytest.fixture
def two_runs(tmp_path):
    runs = []
    for i, anchor in enumerate((0.05, 1.0)):
        work_dir = tmp_path / f'run{i}'
        work_dir.mkdir()
        (work_dir / f'run{i}.py').write_text(f"model = dict(type='M', anchor={anchor})\n")
        (work_dir / 'summary.json').write_text('{"evaluation": {"fid/fid": 10.0, '
                                               '"clip_score/mean": 0.3}, "train": {'
                                               '"policy/kl": {"start": 0.0, "end": 0.1}}}')
        (work_dir / 'test_iter_2').mkdir()
        (work_dir / 'test_iter_2' / 'metrics.json').write_text(
            '{"checkpoint_iter": 2, "results": {"online:ema": {"mean": {"fid/fid": 12.0}}}}')
        runs.append(str(work_dir))
    return runs


@pytest.mark.parametrize('args, phrases', [
    (['--metrics', 'fid/fdi'], ("--metrics 'fid/fdi' matches no metric", "Did you mean 'fid/fid'",
                                "Available: ['clip_score/mean', 'fid/fid']")),
    (['--combos', 'online:emma'], ("combo 'online:emma' is not POLICY:DECODER",)),
    (['--combos', 'online:base'], ('--combos online:base: no tools/test.py result',
                                   "they have ['online:ema']")),
    (['--delta', 'fid/fid [online:ema]', 'fid/fid [online:bse]'],
     ("--delta 'fid/fid [online:bse]': no run has this metric", 'exact names, with the combo',
      "Available: ['clip_score/mean', 'fid/fid', 'fid/fid [online:ema]']")),
    (['--train-end', 'policy/lk'], ("--train-end 'policy/lk': no run's summary.json has this",
                                    "Did you mean 'policy/kl'?", "Available: ['policy/kl']")),
], ids=['metric', 'combo_syntax', 'combo_not_tested', 'delta', 'train_end'])
def test_36_unknown_metric_or_combo_in_ablation_table(capsys, two_runs, args, phrases):
    assert ablation_main([*two_runs, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'Traceback' not in err
    has(err, *phrases)


# --- 37-40: more ----------------------------------------------------------------------------------
def test_37_reward_weights_do_not_match_the_rewards(capsys, write_cfg):
    model = tiny_model_cfg(reward_weights=[1.0, 0.5])
    has(train_error(capsys, write_cfg(config_text(model))),
        "model.reward_weights has 2 entries for 1 rewards ['redness_reward']",
        'one weight per reward')


def test_38_reward_normalize_typo(capsys, write_cfg):
    has(train_error(capsys, write_cfg(config_text(tiny_model_cfg(reward_normalize='grup')))),
        "reward normalize='grup' is unknown (model.reward_normalize)", "Did you mean 'group'?")


def test_39_resume_from_a_file_that_does_not_exist(capsys, write_cfg, tmp_path):
    has(train_error(capsys, write_cfg(config_text()), '--resume', str(tmp_path / 'iter_9.pth')),
        f'--resume {tmp_path / "iter_9.pth"}: no such checkpoint file')


def test_40_set_up_error_after_the_runner_started_leaves_only_the_log(capsys, write_cfg,
                                                                      tmp_path):
    """An error while building the data (after MMEngine made the work dir and dumped the
    config): the dumped copies go, the log folder stays, nothing looks like a run."""
    path = write_cfg(config_text(dataset="dict(type='PromptList', file='missing_prompts.txt')"))
    work_dir = tmp_path / 'work'
    has(train_error(capsys, path, work_dir=work_dir), 'prompt file missing_prompts.txt does not '
        'exist (relative paths are read from', 'file= of the prompt dataset or as --prompt-file')
    stamps = [p for p in work_dir.iterdir() if p.is_dir()]
    assert len(stamps) == 1 and re.fullmatch(r'\d{8}_\d{6}', stamps[0].name)
    assert {p.name for p in work_dir.iterdir()} == {stamps[0].name}


def test_shipped_configs_pass_the_checks(monkeypatch):
    """The checks never refuse a shipped recipe (weights files and the finished runs a recipe
    starts from, load_from, aside: they are not here)."""
    import rankekit.apis.config as config_api
    monkeypatch.setattr(config_api, 'missing_weight_files', lambda *a, **k: [])
    paths = sorted(p for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for path in paths:
            cfg = config_api.load_config(str(path))
            cfg.load_from = None
            config_api.check_config(cfg)
    assert len(paths) > 20


# --- 52-54: rewards from plugins and reward servers -----------------------------------------------
@pytest.fixture
def one_arg_reward():
    from rankekit.registry import REWARDS

    class OneArgReward(torch.nn.Module):
        def forward(self, images):
            return images.mean(dim=(1, 2, 3))

    REWARDS.register_module(module=OneArgReward, force=True)
    yield
    REWARDS.module_dict.pop('OneArgReward')


def test_52_registered_reward_that_is_not_one(capsys, write_cfg, one_arg_reward):
    path = write_cfg(config_text(tiny_model_cfg(rewards=[dict(type='OneArgReward')])))
    has(train_error(capsys, path), "model.rewards[0]: 'OneArgReward' (test_bad_inputs.",
        'is not a reward: a reward is a BaseReward subclass, or an nn.Module or callable called '
        'as reward(images, prompts)', 'OneArgReward.forward takes (images)')


def test_53_reward_server_that_is_down(capsys, write_cfg):
    import socket
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    rewards = [dict(type='RemoteReward', url=f'http://127.0.0.1:{port}')]
    has(train_error(capsys, write_cfg(config_text(tiny_model_cfg(rewards=rewards)))),
        f"reward 'remote_reward' (RemoteReward, url=http://127.0.0.1:{port}): no reward server "
        f'answers at 127.0.0.1:{port}', 'yifan123/reward-server', 'check_connection=False')


def test_54_reward_file_missing_from_its_default_path(capsys, write_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/weights here
    rewards = [dict(type='ImageReward', pretrained=None)]  # tokenizer: its default path
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        message = train_error(capsys, write_cfg(config_text(tiny_model_cfg(rewards=rewards))))
    has(message, 'BERT vocabulary not found: data/weights/bert-base-uncased/vocab.txt',
        'google-bert/bert-base-uncased', 'put it at data/weights/bert-base-uncased',
        'set tokenizer= to your copy', 'docs/prepare_assets.md')
