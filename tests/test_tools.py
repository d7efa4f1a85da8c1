"""Evaluation tools, training monitors, ablation tables and plots (tools/, rankekit.analysis).

One tiny RankE run (3 iterations, random weights, both monitor hooks) is trained once per module
in a tmp work dir; tools/test.py and tools/sample.py run on its checkpoint and their numbers are
checked against direct calls of ``RankEModel.generate``. The ablation table and the curves read
hand-written work dirs whose expected numbers are worked out by hand below.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from PIL import Image

from rankekit.analysis.ablation import ablation_table, ensure_runs
from rankekit.analysis.curves import curve_data, pareto_front
from rankekit.analysis.decision import compare_groups
from rankekit.analysis.runs import group_runs, load_run, wall_time_s
from rankekit.evaluation.stats import format_mean_std, mean_std
from rankekit.apis.config import load_config
from rankekit.apis.inference import evaluate_main, load_model, sample_main
from rankekit.evaluation.generation import (SEED_STRIDE, make_grid, parse_combos, prompt_seeds,
                                            to_uint8)
from rankekit.apis.train import build_runner, parse_args, setup_cfg
from rankekit.engine.monitors import CovariateShiftMonitorHook
from rankekit.evaluation.lcs import real_floor
from rankekit.registry import DATASETS, METRICS
from rankekit.utils.weights import WeightsFileError
from rankekit.utils.run_files import load_runner_checkpoint_file
from tiny_components import load_tool, tiny_model_cfg

pytestmark = pytest.mark.filterwarnings('ignore:ToyPerceptualLoss. the ToyFeatureNet has random')

ablation_main = load_tool('analysis/ablation_table').main
curves_main = load_tool('analysis/plot_curves').main


@METRICS.register_module(force=True)
class ProbeMetric(BaseMetric):
    """Test metric: mean red channel and mean token id of the generated samples."""

    default_prefix = 'probe'
    info_example = dict(type='ProbeMetric')

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            self.results.append((float(sample['image'][0].mean()),
                                 float(sample['tokens'].float().mean()),
                                 float('attributes' in data_batch)))

    def compute_metrics(self, results):
        red, token, attributes = np.asarray(results, dtype=np.float64).T
        return dict(red=float(red.mean()), token=float(token.mean()),
                    had_attributes=float(attributes.min()))


MONITOR = dict(type='CovariateShiftMonitorHook', interval=2, num_prompts=4, num_real=6,
               real=dict(type='ToyShapes', split='test', num_samples=6))
GRID = dict(type='ImageGridHook', interval=2, num_prompts=3, combos=['online:ema', 'base:base'])


def _config(work_dir, hooks=True, rewards=None, summary=False, val=True):
    model = tiny_model_cfg(decoder_cfg=dict(disc_start=1),
                           **({'rewards': rewards} if rewards else {}))
    default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                         logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
                         coevolution=dict(type='CoEvolutionHook'))
    if summary:
        default_hooks['summary'] = dict(type='TrainingSummaryHook')
    validation = '''
val_cfg = dict(type='ValLoop')
val_dataloader = dict(batch_size=4, num_workers=0, collate_fn=dict(type='default_collate'),
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(type='ToyShapes', split='val', num_samples=8))
val_evaluator = [dict(type='ProbeMetric')]
''' if val else ''
    return f'''
default_scope = 'rankekit'
work_dir = {str(work_dir)!r}
model = {model!r}
train_dataloader = dict(batch_size=2, num_workers=0, collate_fn=dict(type='default_collate'),
                        sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
                        dataset=dict(type='ToyShapes', split='train', num_samples=32))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=3, val_interval=1000)
{validation}
optim_wrapper = dict(
    constructor='MultiOptimWrapperConstructor',
    policy=dict(optimizer=dict(type='AdamW', lr=1e-2), clip_grad=dict(max_norm=1.0)),
    decoder=dict(optimizer=dict(type='AdamW', lr=1e-3)),
    discriminator=dict(optimizer=dict(type='AdamW', lr=1e-3)))
default_hooks = {default_hooks!r}
custom_hooks = {[MONITOR, GRID] if hooks else []!r}
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
log_level = 'WARNING'
'''


def _train(cfg_file):
    runner = build_runner(setup_cfg(parse_args([str(cfg_file)])))
    runner.train()
    return runner


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 3-iteration tiny run with both monitor hooks: (config file, work dir)."""
    root = tmp_path_factory.mktemp('run')
    cfg_file = root / 'tiny_ranke.py'
    cfg_file.write_text(_config(root / 'work'))
    _train(cfg_file)
    return cfg_file, root / 'work'


def _records(work_dir):
    [scalars] = Path(work_dir).glob('*/vis_data/scalars.json')
    return [json.loads(line) for line in scalars.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# small pieces
# ------------------------------------------------------------------------------------------------
def test_combos_seeds_and_stats_by_hand():
    assert parse_combos(['online:ema', 'base:base', 'online:ema']) == [('online', 'ema'),
                                                                       ('base', 'base')]
    with pytest.raises(ValueError, match="combo 'online-ema' is not POLICY:DECODER"):
        parse_combos(['online-ema'])
    assert prompt_seeds(2, 5, 3) == [2 * SEED_STRIDE + 5, 2 * SEED_STRIDE + 6, 2 * SEED_STRIDE + 7]
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([7.0]) == (7.0, None)
    assert format_mean_std(1234.6, 12.3) == '1235 ± 12'
    assert format_mean_std(0.2346, 0.0123) == '0.235 ± 0.012'
    assert format_mean_std(0.2346, None) == '0.2346'
    assert format_mean_std(None) == '–'


def test_make_grid_places_upscaled_tiles():
    images = torch.zeros(3, 3, 2, 2)
    images[0, 0] = 1.0  # red
    images[1, 1] = 1.0  # green
    images[2, 2] = 0.5  # half blue: 127.5 rounds to 128
    grid = make_grid(images, nrow=2, padding=1, scale=2)
    assert grid.shape == (1 + 4 + 1 + 4 + 1, 1 + 4 + 1 + 4 + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:5, 1:5] == [255, 0, 0]).all()
    assert (grid[1:5, 6:10] == [0, 255, 0]).all()
    assert (grid[6:10, 1:5] == [0, 0, 128]).all()
    assert (grid[6:10, 6:10] == 255).all() and (grid[0] == 255).all()  # empty cell, padding


# ------------------------------------------------------------------------------------------------
# monitor hooks inside a runner
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_covariate_shift_monitor_logs_lcs_at_its_iterations(trained):
    cfg_file, work_dir = trained
    records = _records(work_dir)
    at_start = [r for r in records if 'iter' not in r and 'lcs/kl' in r]
    assert len(at_start) == 1 and set(at_start[0]) == {'lcs/kl', 'lcs/entropy_bits',
                                                       'lcs/real_floor', 'step'}
    by_iter = {r['iter']: r for r in records if 'iter' in r}
    assert 'lcs/kl' not in by_iter[1] and 'lcs/kl' not in by_iter[3]  # no stale repeats
    logged = {k: by_iter[2][f'lcs/{k}'] for k in ('kl', 'entropy_bits', 'real_floor')}

    # the same numbers again from the checkpoint of that iteration, and by hand
    model, _, _ = load_model(str(cfg_file), work_dir / 'iter_2.pth')
    hook = CovariateShiftMonitorHook(**{k: v for k, v in MONITOR.items() if k != 'type'})
    real = DATASETS.build(MONITOR['real'])
    codes = hook.compute_real_codes(model)
    images = torch.stack([real[i]['image'] for i in range(6)])
    assert np.array_equal(codes, model.tokenizer.images_to_codes(images * 2 - 1).numpy())
    assert hook.prompts == [real[i]['caption'] for i in range(4)]
    again = hook.measure(model)
    assert again == pytest.approx(logged, rel=1e-9)
    assert logged['real_floor'] == pytest.approx(real_floor(codes, 32))
    tokens = model.generate(hook.prompts, seeds=prompt_seeds(0, 0, 4))['tokens']
    p = np.bincount(tokens.reshape(-1).numpy(), minlength=32) / tokens.numel()
    assert logged['entropy_bits'] == pytest.approx(-(p[p > 0] * np.log2(p[p > 0])).sum())


@pytest.mark.slow
def test_image_grid_hook_writes_grids_through_visualizer_and_work_dir(trained):
    cfg_file, work_dir = trained
    assert sorted(p.name for p in (work_dir / 'grids').iterdir()) == [
        'iter_0.png', 'iter_2.png', 'layout.json']
    layout = json.loads((work_dir / 'grids' / 'layout.json').read_text())
    assert layout['rows'] == ['online:ema', 'base:base'] and len(layout['columns']) == 3
    grid = np.asarray(Image.open(work_dir / 'grids' / 'iter_2.png'))
    [vis] = work_dir.glob('*/vis_data/vis_image/grid_2.png')
    assert np.array_equal(np.asarray(Image.open(vis)), grid)
    # 32 px tiles upscaled x2, 2 rows x 3 columns, 2 px padding
    assert grid.shape == (2 + 2 * (64 + 2), 2 + 3 * (64 + 2), 3)
    model, _, _ = load_model(str(cfg_file), work_dir / 'iter_2.pth')
    expected = model.generate([layout['columns'][1]], policy='base', decoder='base',
                              seeds=[1])['images']
    tile = grid[2 + 66:2 + 66 + 64, 2 + 66:2 + 66 + 64].astype(int)  # row 1, column 1
    want = to_uint8(expected)[0].repeat(2, axis=0).repeat(2, axis=1).astype(int)
    assert np.abs(tile - want).max() <= 1


@pytest.mark.slow
def test_monitor_hooks_do_not_change_training(trained, tmp_path):
    _, work_dir = trained
    cfg_file = tmp_path / 'plain.py'
    cfg_file.write_text(_config(tmp_path / 'plain', hooks=False))
    _train(cfg_file)
    with_hooks = load_runner_checkpoint_file(work_dir / 'iter_3.pth')['state_dict']
    without = load_runner_checkpoint_file(tmp_path / 'plain' / 'iter_3.pth')['state_dict']
    assert with_hooks.keys() == without.keys()
    for key in with_hooks:
        assert torch.equal(with_hooks[key], without[key]), key


def test_monitor_interval_must_be_a_multiple_of_the_logger_interval():
    from mmengine.hooks import LoggerHook
    hook = CovariateShiftMonitorHook(interval=5)

    class FakeRunner:
        hooks = [LoggerHook(interval=2)]

    with pytest.raises(ValueError, match='interval=5 is not a multiple of the LoggerHook '
                       'interval=2.*use interval=4'):
        hook._check_logger_interval(FakeRunner())


# ------------------------------------------------------------------------------------------------
# tools/test.py and tools/sample.py
# ------------------------------------------------------------------------------------------------
def _probe_by_hand(model, prompts, policy, decoder, seed):
    out = model.generate(prompts, policy=policy, decoder=decoder,
                         seeds=prompt_seeds(seed, 0, len(prompts)))
    return (float(out['images'][:, 0].mean(dim=(1, 2)).double().mean()),
            float(out['tokens'].double().mean()))


@pytest.mark.slow
def test_test_tool_metrics_per_combo_and_seed(trained, tmp_path):
    cfg_file, work_dir = trained
    out_dir = tmp_path / 'eval'
    assert evaluate_main([str(cfg_file), str(work_dir), '--combos', 'online:ema', 'online:base',
                      'base:base', '--num', '6', '--seeds', '0', '1', '--batch-size', '4',
                      '--out-dir', str(out_dir), '--no-progress', '--grid-num', '5']) == 0
    record = json.loads((out_dir / 'metrics.json').read_text())
    assert record['checkpoint'] == str(work_dir / 'iter_3.pth') and record['checkpoint_iter'] == 3
    assert record['num_prompts'] == 6 and record['seeds'] == [0, 1]
    results = record['results']
    assert list(results) == ['online:ema', 'online:base', 'base:base']

    model, cfg, _ = load_model(str(cfg_file), work_dir)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    prompts = [val[i]['caption'] for i in range(6)]
    for combo, result in results.items():
        policy, decoder = combo.split(':')
        for seed in (0, 1):
            red, token = _probe_by_hand(model, prompts, policy, decoder, seed)
            got = result['per_seed'][str(seed)]
            assert got['probe/red'] == pytest.approx(red, rel=1e-5), (combo, seed)
            assert got['probe/token'] == pytest.approx(token, rel=1e-6), (combo, seed)
            assert got['probe/had_attributes'] == 1.0  # ToyShapes attributes reach the metric
        a, b = (result['per_seed'][s]['probe/red'] for s in ('0', '1'))
        assert result['mean']['probe/red'] == pytest.approx((a + b) / 2)
        assert result['std']['probe/red'] == pytest.approx(abs(a - b) / math.sqrt(2))
        grid = np.asarray(Image.open(out_dir / result['grid']))
        assert grid.shape == (2 + 2 * 66, 2 + 3 * 66, 3)  # 5 prompts, 3 per row, x2
    # the same tokens through two decoders
    assert results['online:ema']['per_seed']['0']['probe/token'] == \
        results['online:base']['per_seed']['0']['probe/token']

    # --base: the untrained model of the config is the checkpoint's base policy + base decoder
    base_dir = tmp_path / 'base'
    evaluate_main([str(cfg_file), '--base', '--num', '6', '--seeds', '0', '1', '--batch-size', '3',
               '--out-dir', str(base_dir), '--no-progress'])
    base = json.loads((base_dir / 'metrics.json').read_text())
    assert list(base['results']) == ['base:base'] and base['checkpoint'] is None
    for seed in ('0', '1'):
        assert base['results']['base:base']['per_seed'][seed] == pytest.approx(
            results['base:base']['per_seed'][seed], rel=1e-5)


@pytest.mark.slow
def test_test_tool_argument_errors(trained, capsys):
    cfg_file, work_dir = trained
    with pytest.raises(SystemExit):
        evaluate_main([str(cfg_file)])  # neither a checkpoint nor --base
    capsys.readouterr()
    assert evaluate_main([str(cfg_file), str(work_dir), '--combos', 'online',
                          '--no-progress']) == 2
    assert "error: combo 'online' is not POLICY:DECODER" in capsys.readouterr().err
    assert evaluate_main([str(cfg_file), str(work_dir), '--num', '9', '--no-progress']) == 2
    assert 'error: --num 9: the prompt set has 8 prompts' in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoint_of_another_config_is_a_clear_error(trained, tmp_path):
    cfg_file, work_dir = trained
    other = tmp_path / 'other.py'
    other.write_text(cfg_file.read_text().replace("'dim': 32", "'dim': 64"))
    with pytest.raises(WeightsFileError, match='does not fit the model of this config'):
        load_model(str(other), work_dir / 'iter_2.pth')
    with pytest.raises(FileNotFoundError, match='holds no checkpoint'):
        load_model(str(cfg_file), tmp_path)


@pytest.mark.slow
def test_sample_tool_writes_pngs_of_any_combo(trained, tmp_path):
    cfg_file, work_dir = trained
    prompts = ['a red circle', 'a large blue square on the left']
    sample_main([str(cfg_file), str(work_dir), '--prompts', *prompts, '--policy', 'online',
                 '--decoder', 'base', '--seed', '3', '--temperature', '0.7', '--out-dir',
                 str(tmp_path / 's')])
    files = sorted(p.name for p in (tmp_path / 's').iterdir())
    assert files == ['000_a_red_circle.png', '001_a_large_blue_square_on_the_left.png',
                     'grid.png', 'prompts.json']
    model, _, _ = load_model(str(cfg_file), work_dir)
    for i, name in enumerate(files[:2]):  # each prompt alone: batch-independent seeds
        out = model.generate([prompts[i]], policy='online', decoder='base',
                             seeds=[3 * SEED_STRIDE + i], temperature=0.7)
        png = np.asarray(Image.open(tmp_path / 's' / name)).astype(int)
        assert png.shape == (32, 32, 3)
        assert np.abs(png - to_uint8(out['images'])[0].astype(int)).max() <= 1
    assert np.asarray(Image.open(tmp_path / 's' / 'grid.png')).shape == (68, 134, 3)

    (tmp_path / 'prompts.txt').write_text('\n'.join(prompts) + '\n\n')
    sample_main([str(cfg_file), str(work_dir), '--prompt-file', str(tmp_path / 'prompts.txt'),
                 '--decoder', 'base', '--seed', '3', '--temperature', '0.7', '--out-dir',
                 str(tmp_path / 'f')])
    for name in files[:3]:
        assert np.array_equal(np.asarray(Image.open(tmp_path / 'f' / name)),
                              np.asarray(Image.open(tmp_path / 's' / name)))


@pytest.mark.slow
def test_test_tool_with_a_prompt_file(trained, tmp_path):
    cfg_file, work_dir = trained
    prompts = ['a red circle', 'a green cross at the top', 'a small cyan square']
    (tmp_path / 'p.txt').write_text('\n'.join(prompts))
    evaluate_main([str(cfg_file), str(work_dir), '--prompt-file', str(tmp_path / 'p.txt'),
                   '--combos', 'ema:online', '--out-dir', str(tmp_path / 'e'), '--no-progress'])
    result = json.loads((tmp_path / 'e' / 'metrics.json').read_text())['results']['ema:online']
    model, _, _ = load_model(str(cfg_file), work_dir)
    red, token = _probe_by_hand(model, prompts, 'ema', 'online', 0)
    assert result['per_seed']['0'] == pytest.approx(
        {'probe/red': red, 'probe/token': token, 'probe/had_attributes': 0.0}, rel=1e-5)
    assert result['std'] == {'probe/red': None, 'probe/token': None,
                             'probe/had_attributes': None}  # one seed: no spread


# ------------------------------------------------------------------------------------------------
# ablation table and plots on hand-written work dirs
# ------------------------------------------------------------------------------------------------
BASE_CFG = '''model = dict(type='M', lr=1.0, anchor=dict(type='KL', weight=0.05))
train_cfg = dict(max_iters=10)
randomness = dict(seed=0)
'''


def _fake_run(root, name, seed, anchor, evaluation, log_spans, scalars=None, test=None):
    work_dir = root / f'{name}_seed{seed}'
    work_dir.mkdir(parents=True)
    (work_dir / f'{name}.py').write_text(
        f"model = dict(type='M', lr=1.0, anchor={anchor!r})\n"
        f"train_cfg = dict(max_iters=20)\nrandomness = dict(seed={seed})\n"
        f"work_dir = {str(work_dir)!r}\nlauncher = 'none'\n")
    (work_dir / 'summary.json').write_text(json.dumps(dict(train={}, evaluation=evaluation)))
    for i, (start, end) in enumerate(log_spans):  # one timestamp folder per start of the run
        stamp = work_dir / f'20261128_12000{i}'
        (stamp / 'vis_data').mkdir(parents=True)
        (stamp / f'{stamp.name}.log').write_text(
            f'2026/11/28 {start} - mmengine - INFO - start\n  a continuation line\n'
            f'2026/11/28 {end} - mmengine - INFO - end\n')
        lines = (scalars or [])[i] if scalars and i < len(scalars) else []
        (stamp / 'vis_data' / 'scalars.json').write_text(
            ''.join(json.dumps(r) + '\n' for r in lines))
    if test is not None:
        (work_dir / 'test_iter_20').mkdir()
        (work_dir / 'test_iter_20' / 'metrics.json').write_text(json.dumps(test))
    return work_dir


@pytest.fixture
def fake_runs(tmp_path):
    (tmp_path / 'ranke_base.py').write_text(BASE_CFG)
    kl, l2 = dict(type='KL', weight=0.05), dict(type='L2', weight=1.0)
    test = dict(checkpoint_iter=20, results={'online:base': dict(mean={'fid/fid': 15.0})})
    runs = [
        _fake_run(tmp_path, 'ranke_base', 0, kl, {'fid/fid': 10.0, 'clip_heldout/mean': 0.30,
                                                  'lcs/kl': 0.5, 'other/x': 1.0},
                  [('12:00:00', '12:01:00')], test=test,
                  scalars=[[dict(iter=10, **{'reward/mean': 1.0}),
                            dict(iter=20, **{'reward/mean': 3.0})]]),
        _fake_run(tmp_path, 'anchor_l2', 0, l2, {'fid/fid': 20.0, 'clip_heldout/mean': 0.40,
                                                 'lcs/kl': 1.0},
                  [('12:00:00', '12:00:30'), ('13:00:00', '13:00:30')]),
        _fake_run(tmp_path, 'ranke_base', 1, kl, {'fid/fid': 12.0, 'clip_heldout/mean': 0.32,
                                                  'lcs/kl': 0.7, 'other/x': 1.0},
                  [('12:00:00', '12:03:00')],
                  scalars=[[dict(iter=10, **{'reward/mean': 3.0}),
                            dict(iter=20, **{'reward/mean': 5.0}),
                            dict(iter=30, **{'reward/mean': 7.0})]]),
        _fake_run(tmp_path, 'anchor_l2', 1, l2, {'fid/fid': 22.0, 'clip_heldout/mean': 0.41,
                                                 'lcs/kl': 1.1}, [('12:00:00', '12:02:00')]),
        _fake_run(tmp_path, 'anchor_l2', 2, l2, {'fid/fid': 27.0, 'clip_heldout/mean': 0.45,
                                                 'lcs/kl': 1.5}, [('12:00:00', '12:03:00')]),
    ]
    return tmp_path, runs


def test_ablation_table_exact_markdown(fake_runs, tmp_path):
    root, work_dirs = fake_runs
    # by hand (sample std, n - 1): fid base [10, 12] -> 11 ± 1.414; l2 [20, 22, 27] -> 23 ±
    # sqrt(26 / 2) = 3.606; clip [.30, .32] -> .31 ± .01414, [.40, .41, .45] -> .42 ± .02646;
    # lcs/kl [.5, .7] -> .6 ± .1414, [1.0, 1.1, 1.5] -> 1.2 ± .2646; minutes [1, 3] -> 2 ±
    # 1.414, l2 [0.5 + 0.5, 2, 3] -> 2 ± 1; the test.py FID of online:base only in one base run
    expected = (
        '| config | changes vs ranke_base | seeds | fid/fid | fid/fid [online:base] | '
        'clip_heldout/mean | lcs/kl | wall time (min) |\n'
        '|---|---|---|---:|---:|---:|---:|---:|\n'
        '| ranke_base | (same as base) | 2 | 11.0 ± 1.4 | 15 | 0.310 ± 0.014 | 0.60 ± 0.14 | '
        '2.0 ± 1.4 |\n'
        '| anchor_l2 | model.anchor=L2(weight=1.0) | 3 | 23.0 ± 3.6 | – | '
        '0.420 ± 0.026 | 1.20 ± 0.26 | 2.0 ± 1.0 |\n'
        '\n'
        'Every row also changes, vs ranke_base: train_cfg.max_iters=20.\n')
    out = tmp_path / 'table.md'
    assert ablation_main([*map(str, work_dirs), '--base', str(root / 'ranke_base.py'),
                          '--combos', 'online:base', '--out', str(out)]) == 0
    assert out.read_text() == expected
    assert wall_time_s(work_dirs[1]) == 60.0  # two starts of 30 s, not the hour between

    runs = [load_run(d) for d in work_dirs]
    groups = group_runs(runs, load_config(str(root / 'ranke_base.py')))
    every = ablation_table(groups, 'ranke_base', metrics=['all'], combos=['online:base'],
                           use_test=False)
    assert every.splitlines()[0] == ('| config | changes vs ranke_base | seeds | clip_heldout/mean '
                                     '| fid/fid | lcs/kl | other/x | wall time (min) |')
    assert every.splitlines()[3].split(' | ')[6] == '–'  # other/x: no anchor_l2 run has it


def test_ablation_table_base_model_row_and_test_only_metrics(fake_runs, tmp_path):
    """A tools/test.py --base folder is the untrained row (its base:base result fills every
    combo); with --no-summary only test.py metrics count and evaluation settings do not split
    a config's seeds into two groups."""
    root, work_dirs = fake_runs
    base = tmp_path / 'test_base'
    base.mkdir()
    (base / 'metrics.json').write_text(json.dumps(dict(
        config=str(root / 'ranke_base.py'), base=True, checkpoint_iter=0,
        results={'base:base': dict(mean={'fid/fid': 30.0})})))
    # seed 1 of ranke_base evaluated in training with another protocol; both seeds have test.py
    cfg_file = work_dirs[2] / 'ranke_base.py'
    cfg_file.write_text(cfg_file.read_text() + "\nval_dataloader = dict(batch_size=3)\n")
    (work_dirs[2] / 'test_iter_20').mkdir()
    (work_dirs[2] / 'test_iter_20' / 'metrics.json').write_text(json.dumps(dict(
        checkpoint_iter=20, results={'online:base': dict(mean={'fid/fid': 17.0})})))
    out = tmp_path / 'table.md'
    assert ablation_main([str(base), str(work_dirs[0]), str(work_dirs[2]), '--base',
                          str(root / 'ranke_base.py'), '--combos', 'online:base',
                          '--no-summary', '--out', str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == ('| config | changes vs ranke_base | seeds | fid/fid [online:base] | '
                       'wall time (min) |')
    assert rows[2] == '| base model | no training (`tools/test.py --base`) | 1 | 30 | – |'
    # fid 15 and 17 -> 16 ± 1.414
    assert rows[3] == '| ranke_base | train_cfg.max_iters=20 | 2 | 16.0 ± 1.4 | 2.0 ± 1.4 |'
    assert len(rows) == 4


def test_ablation_delta_columns_are_paired_within_each_run(tmp_path, capsys):
    """--delta A B: A - B inside each run (same seed), then mean ± std over seeds; --show-seeds
    lists the per-seed values. By hand: differences 10-15=-5, 11-18=-7, 13-14=-1 -> mean
    -13/3 = -4.333, sample std sqrt(((-2/3)^2 + (8/3)^2 + (10/3)^2) / 2) = 3.055; the
    unpaired difference of the column means (-3.667) would be wrong."""
    (tmp_path / 'ranke_base.py').write_text(BASE_CFG)
    kl = dict(type='KL', weight=0.05)
    work_dirs = [_fake_run(tmp_path, 'ranke_base', seed, kl, {}, [('12:00:00', '12:01:00')],
                           test=dict(checkpoint_iter=20, results={
                               'online:ema': dict(mean={'fid/fid': ema}),
                               'online:base': dict(mean={'fid/fid': base})}))
                 for seed, (ema, base) in enumerate([(10.0, 15.0), (11.0, 18.0), (13.0, 14.0)])]
    args = [*map(str, work_dirs), '--base', str(tmp_path / 'ranke_base.py'), '--no-summary',
            '--combos', 'online:ema', 'online:base', '--metrics', 'fid/fid [online:ema]']
    assert ablation_main([*args, '--delta', 'fid/fid [online:ema]', 'fid/fid [online:base]',
                          '--show-seeds']) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert header == ('| config | changes vs ranke_base | seeds | fid/fid [online:ema] | '
                      'fid/fid [online:ema − online:base] | wall time (min) |')
    assert row == ('| ranke_base | train_cfg.max_iters=20 | 3 | 11.3 ± 1.5 (10, 11, 13) | '
                   '-4.3 ± 3.1 (-5, -7, -1) | 1 |')
    # a name that no run has is one error line (with the close match), not an empty column
    assert ablation_main([*args, '--delta', 'fid/fid [online:ema]', 'fid/fid [online:bse]']) == 2
    assert "Did you mean 'fid/fid [online:base]'?" in capsys.readouterr().err

    # --train-end: the summary's end-of-training value, even with --no-summary (the training
    # scalars do not depend on the evaluation protocol); 0.02, 0.04 -> 0.030 ± 0.014
    for work_dir, kl in zip(work_dirs, [0.02, 0.04, None]):
        summary = dict(train={'policy/kl': dict(start=0.0, end=kl, change=kl)} if kl else {})
        (work_dir / 'summary.json').write_text(json.dumps(summary))
    assert ablation_main([*args, '--train-end', 'policy/kl']) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert header.endswith('| fid/fid [online:ema] | policy/kl [train end] | wall time (min) |')
    assert row.endswith('| 11.3 ± 1.5 | 0.030 ± 0.014 | 1 |')
    assert ablation_main([*args, '--train-end', 'policy/lk']) == 2
    assert ("--train-end 'policy/lk': no run's summary.json has this training scalar. Did you "
            "mean 'policy/kl'?") in capsys.readouterr().err


def test_ablation_compare_applies_the_registered_decision_rule(tmp_path, capsys):
    """--compare A B METRIC: Δ of the means and 2 SE, SE = sqrt(s_a²/n_a + s_b²/n_b); the base
    model's spread is over its sampling seeds (per_seed of its tools/test.py --base result).
    By hand: ranke_base FID 10, 11, 13 (mean 11.333, s² 7/3), anchor_l2 20, 22, 27 (23, s² 13),
    base 30, 31, 32 (31, s² 1). ranke_base - anchor_l2: -11.67, 2 SE = 2 sqrt(7/9 + 13/3) =
    4.522, shown; anchor_l2 - base: -8, 2 SE = 2 sqrt(13/3 + 1/3) = 4.320, shown; CLIP 0.30,
    0.32, 0.34 vs 0.31, 0.33, 0.35: Δ -0.01, 2 SE = 2 sqrt(0.0004/3 * 2) = 0.03266: not shown."""
    (tmp_path / 'ranke_base.py').write_text(BASE_CFG)
    kl, l2 = dict(type='KL', weight=0.05), dict(type='L2', weight=1.0)
    work_dirs = []
    for name, anchor, fids, clips in [('ranke_base', kl, (10., 11., 13.), (.30, .32, .34)),
                                      ('anchor_l2', l2, (20., 22., 27.), (.31, .33, .35))]:
        for seed, (fid, clip) in enumerate(zip(fids, clips)):
            work_dirs.append(_fake_run(
                tmp_path, name, seed, anchor, {}, [('12:00:00', '12:01:00')],
                test=dict(checkpoint_iter=20, results={'online:ema': dict(
                    mean={'fid/fid': fid, 'clip_heldout/mean': clip})})))
    base = tmp_path / 'test_base'
    base.mkdir()
    per_seed = {str(i): {'fid/fid': v, 'clip_heldout/mean': 0.2}
                for i, v in enumerate([30., 31., 32.])}
    (base / 'metrics.json').write_text(json.dumps(dict(
        config=str(tmp_path / 'ranke_base.py'), base=True, checkpoint_iter=0,
        results={'base:base': dict(mean={'fid/fid': 31.0, 'clip_heldout/mean': 0.2},
                                   per_seed=per_seed)})))
    args = [str(base), *map(str, work_dirs), '--base', str(tmp_path / 'ranke_base.py'),
            '--no-summary', '--metrics', 'fid/fid']
    fid, clip = 'fid/fid [online:ema]', 'clip_heldout/mean [online:ema]'
    assert ablation_main([*args, '--compare', 'ranke_base', 'anchor_l2', fid,
                          '--compare', 'anchor_l2', 'base', fid,
                          '--compare', 'ranke_base', 'anchor_l2', clip]) == 0
    rows = capsys.readouterr().out.split('| verdict |')[1].splitlines()[2:]
    assert rows == [
        f'| {fid} | ranke_base | anchor_l2 | 11.33 (3) | 23 (3) | -11.67 | 4.522 | '
        'shown: ranke_base lower |',
        f'| {fid} | anchor_l2 | base | 23 (3) | 31 (3) | -8 | 4.32 | shown: anchor_l2 lower |',
        f'| {clip} | ranke_base | anchor_l2 | 0.32 (3) | 0.33 (3) | -0.01 | 0.03266 | not shown |']

    rule = compare_groups(group_runs([load_run(d) for d in work_dirs[:4]],
                                     load_config(str(tmp_path / 'ranke_base.py')),
                                     ignore_evaluation=True),
                          [('ranke_base', 'anchor_l2', fid)], ['online:ema'])[0]
    assert rule.values_b == (20.0,) and rule.two_se is None  # one seed: no spread, no verdict
    assert rule.verdict == 'no SE (fewer than 2 values)'
    # a row or a metric that does not exist is one error line with the close match
    assert ablation_main([*args, '--compare', 'anchor_l3', 'base', fid]) == 2
    assert "--compare 'anchor_l3': no row of the table has this name. Did you mean " \
        "'anchor_l2'?" in capsys.readouterr().err
    assert ablation_main([*args, '--compare', 'anchor_l2', 'base', 'fid/fid [online:base]']) == 2
    assert "no run of 'anchor_l2' has 'fid/fid [online:base]'" in capsys.readouterr().err


def test_ablation_runs_missing_configs_in_their_own_process(tmp_path):
    cfg_file = tmp_path / 'tiny_clip.py'
    rewards = [dict(type='ClipScore', model_name='rankekit-toy-clip', pretrained=None)]
    cfg_file.write_text(_config(tmp_path / 'unused', hooks=False, rewards=rewards, summary=True,
                                val=False))
    with pytest.raises(FileNotFoundError, match=r'(?s)1 run\(s\) have not finished.*--run.*'
                       r'rankekit train .*tiny_clip.py --work-dir .*seed4 --seed 4'):
        ensure_runs([str(cfg_file)], [4], tmp_path / 'abl')
    [work_dir] = ensure_runs([str(cfg_file)], [4], tmp_path / 'abl', run=True)
    assert work_dir == tmp_path / 'abl' / 'tiny_clip' / 'seed4'
    assert (work_dir / 'summary.json').is_file() and (work_dir / 'iter_2.pth').is_file()
    assert load_run(work_dir).cfg.randomness.seed == 4


def test_curves_and_pareto(fake_runs, tmp_path, capsys, monkeypatch):
    # base runs: {10: 1, 20: 3} and {10: 3, 20: 5, 30: 7}
    data = curve_data([{10: 1.0, 20: 3.0}, {10: 3.0, 20: 5.0, 30: 7.0}])
    assert data['x'].tolist() == [10, 20, 30] and data['mean'].tolist() == [2.0, 4.0, 7.0]
    assert data['std'][:2] == pytest.approx([math.sqrt(2)] * 2) and math.isnan(data['std'][2])
    assert data['n'].tolist() == [2, 2, 1]
    smoothed = curve_data([{0: 1.0, 1: 3.0, 2: 8.0}], window=2)
    assert smoothed['mean'].tolist() == [1.0, 2.0, 5.5]
    points = [dict(x=1.0, y=10.0), dict(x=2.0, y=12.0), dict(x=1.5, y=9.0), dict(x=0.5, y=20.0)]
    assert pareto_front(points) == [2, 1]

    root, work_dirs = fake_runs
    out, pareto = tmp_path / 'curves.png', tmp_path / 'pareto.png'
    assert curves_main([*map(str, work_dirs), '--keys', 'reward/mean', 'lcs/kl', '--out',
                        str(out), '--pareto', str(pareto)]) == 0
    for path in (out, pareto):
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        assert min(Image.open(path).size) > 200
    # --pareto alone writes only the Pareto plot; a metric no run has is one error line
    only = tmp_path / 'only_pareto.png'
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')  # where a default curves.png would go
    assert curves_main([*map(str, work_dirs), '--pareto', str(only)]) == 0
    assert only.is_file() and not (tmp_path / 'cwd' / 'curves.png').exists()
    assert curves_main([*map(str, work_dirs), '--pareto', str(only), '--y', 'fid/fdi']) == 2
    assert "no run has both 'clip_heldout/mean' and 'fid/fdi'" in capsys.readouterr().err


@pytest.mark.parametrize('n_points', [3, 12])
def test_pareto_labels_stay_readable(tmp_path, monkeypatch, n_points):
    """A few points are labelled beside themselves; past 8 (an ablation table) each gets its
    own colour-and-marker pair and its name in a legend, so clustered labels cannot collide."""
    from rankekit.analysis import curves
    points = [dict(label=f'run{i}', n=1, x=float(i), x_std=None, y=float(i % 3), y_std=None)
              for i in range(n_points)]
    monkeypatch.setattr(curves, 'pareto_points', lambda *args, **kwargs: points)
    figures = []
    monkeypatch.setattr(curves._pyplot(), 'close', figures.append)
    curves.plot_pareto([], tmp_path / 'pareto.png')
    ax = figures[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    annotations = [t.get_text() for t in ax.texts]
    names = [f'run{i} (n=1)' for i in range(n_points)]
    if n_points <= 8:
        assert legend == ['Pareto front'] and annotations == names
    else:
        assert annotations == [] and sorted(legend) == sorted(names + ['Pareto front'])
        styles = {(line.get_color(), line.get_marker()) for line in ax.lines
                  if line.get_marker() in tuple('osD^')}  # the points, not the error-bar caps
        assert len(styles) == n_points


def test_archived_runs_give_the_same_table(fake_runs, tmp_path):
    """tools/analysis/archive_runs.py keeps what the table reads (config, summary, scalars,
    test metrics, the log's first and last time stamps) and nothing else."""
    root, work_dirs = fake_runs
    (work_dirs[0] / 'iter_20.pth').write_bytes(b'checkpoint')
    base = root / 'base_eval'
    base.mkdir()
    (base / 'metrics.json').write_text(json.dumps(dict(results={})))
    archive = tmp_path / 'archive'
    assert load_tool('analysis/archive_runs').main([str(root), str(archive)]) == 0
    assert not list(archive.rglob('*.pth')) and (archive / 'base_eval' / 'metrics.json').is_file()
    copies = [archive / d.name for d in work_dirs]
    assert [wall_time_s(c) for c in copies] == [wall_time_s(d) for d in work_dirs]
    tables = []
    for dirs in (work_dirs, copies):
        out = tmp_path / f'table{len(tables)}.md'
        assert ablation_main([*map(str, dirs), '--base', str(root / 'ranke_base.py'),
                              '--combos', 'online:base', '--out', str(out)]) == 0
        tables.append(out.read_text())
    assert tables[0] == tables[1]
