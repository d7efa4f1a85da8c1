"""Every shipped config loads; every ablation is a small diff of RankE and runs 2 iterations."""
from pathlib import Path

import pytest
from mmengine.config import Config

from rankekit.apis.config import load_config
from rankekit.apis.train import build_runner, parse_args, setup_cfg
from rankekit.utils.config_diff import config_diff, flatten, format_diff

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts)
ABLATIONS = sorted((REPO / 'configs' / 'ablation').glob('*.py'))
BASE = REPO / 'configs' / 'ranke' / 'ranke_toy.py'
pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def test_config_diff_by_hand():
    a = dict(model=dict(lr=1, parts=[dict(type='A')]), work_dir='x')
    b = dict(model=dict(lr=2, parts=[dict(type='B')], extra=True), work_dir='y')
    assert flatten(a) == {'model.lr': 1, 'model.parts[0].type': 'A', 'work_dir': 'x'}
    assert config_diff(a, b) == {'model.extra': ('<absent>', True), 'model.lr': (1, 2),
                                 'model.parts[0].type': ('A', 'B')}
    # a component whose type changed is one entry: the new type with its differing keys
    assert format_diff(config_diff(a, b)) == 'model.extra=True, model.lr=2, model.parts[0]=B()'
    # a sub-config set to None: its vanished keys are implied, not listed
    c = dict(model=dict(lr=1, anchor=dict(type='EMA', weight=10.0)))
    d = dict(model=dict(lr=1, anchor=None))
    assert config_diff(c, d) == {'model.anchor': ('<absent>', None),
                                 'model.anchor.type': ('EMA', '<absent>'),
                                 'model.anchor.weight': (10.0, '<absent>')}
    assert format_diff(config_diff(c, d)) == 'model.anchor=None'
    # ... and a swapped one drops the old type's keys (meaningless for the new type), shows at
    # most inner_limit of its own and is whole again when it replaces None
    e = dict(model=dict(lr=1, anchor=dict(type='KL', weight=10.0, sigma=1.0, ref='initial')))
    assert format_diff(config_diff(c, e)) == 'model.anchor=KL(ref=initial, sigma=1.0)'
    assert format_diff(config_diff(d, e)) == 'model.anchor=KL(ref=initial, sigma=1.0, weight=10.0)'
    assert (format_diff(config_diff(d, e), inner_limit=2)
            == 'model.anchor=KL(ref=initial, sigma=1.0, …)')
    f = dict(model=dict(lr=1, anchor=dict(type='KL', net=dict(type='N', a=1), z=2)))
    assert format_diff(config_diff(c, f)) == 'model.anchor=KL(z=2, net.a=1, net.type=N)'


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(REPO / 'configs')))
def test_config_loads(path):
    cfg = load_config(str(path))
    # the file chain itself names the scope (load_config would only default it)
    assert Config.fromfile(str(path)).get('default_scope') == 'rankekit'
    assert 'model' in cfg and 'train_dataloader' in cfg


@pytest.mark.parametrize('path', ABLATIONS, ids=lambda p: p.stem)
def test_ablation_is_a_small_diff(path):
    diff = config_diff(load_config(str(BASE)), load_config(str(path)))
    assert len(diff) <= 12, format_diff(diff, limit=20)
    if path.stem not in ('anchor_ema', 'loss_grpo'):  # these two restate the default explicitly
        assert diff, f'{path.stem} does not change anything'


@pytest.mark.slow
@pytest.mark.parametrize('path', [BASE, REPO / 'configs/ranke/grpo_toy.py', *ABLATIONS],
                         ids=lambda p: p.stem)
def test_config_trains_two_iterations(path, tmp_path):
    # the end-of-training evaluation (2,000 val prompts: three quarters of the time) runs for the
    # base config only; the ablations differ from it in training, not in evaluation
    skip_val = [] if path == BASE else ['train_cfg.val_begin=1000000']
    args = parse_args([str(path), '--work-dir', str(tmp_path), '--cfg-options',
                       'train_cfg.max_iters=2', 'train_dataloader.batch_size=2',
                       'model.rollout.group_size=4', 'model.decoder_cfg.disc_start=0',
                       'log_level=WARNING', 'custom_hooks=[]', *skip_val])
    runner = build_runner(setup_cfg(args))
    runner.train()
    assert runner.iter == 2
    assert (tmp_path / 'iter_2.pth').is_file()
    assert int(runner.model.skipped_nonfinite) == 0


@pytest.mark.slow
@pytest.mark.parametrize('path', sorted((REPO / 'configs' / 'pretrain').glob('*.py')),
                         ids=lambda p: p.stem)
def test_pretraining_config_trains_two_iterations(path, tmp_path):
    args = parse_args([str(path), '--work-dir', str(tmp_path), '--cfg-options',
                       'train_cfg.max_iters=2', 'train_dataloader.batch_size=4',
                       'log_level=WARNING', 'custom_hooks=[]'])
    runner = build_runner(setup_cfg(args))
    runner.train()
    assert runner.iter == 2 and (tmp_path / 'iter_2.pth').is_file()


# --- --cfg-options: components as Python literals --------------------------------------------
@pytest.mark.parametrize('text, value', [
    ("[dict(type='Colourfulness')]", [{'type': 'Colourfulness'}]),
    ("dict(type='KLAnchor', weight=-0.5, ref=dict(a=[None, True], b=(1, 2.0)))",
     {'type': 'KLAnchor', 'weight': -0.5, 'ref': {'a': [None, True], 'b': (1, 2.0)}}),
    ("{'a': [1, -2.5, (3,)], 1: 'x'}", {'a': [1, -2.5, (3,)], 1: 'x'}),
    ("'A photo depicts '", 'A photo depicts '),  # spaces kept (MMEngine's parser drops them)
    # MMEngine's syntax where the value is not written as a literal
    ('20', 20), ('1e-3', 0.001), ('true', True), ('None', None), ('a,b', ['a', 'b']),
    ('[a,b]', ['a', 'b']), ('[1,2,a]', [1, 2, 'a']), ('(1)', (1,)), ('ViT-L-14', 'ViT-L-14'),
    ('toy://vq.pt', 'toy://vq.pt'),
])
def test_cfg_options_values(text, value):
    from rankekit.apis.config import parse_option_value
    parsed = parse_option_value(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize('text, phrase', [
    ('[dict(type=Colourfulness)]', "Colourfulness is not a value (a string needs quotes: "
                                   "'Colourfulness'; in a shell, put the whole option in double"),
    ("[dict(type=__import__('os').system('touch PWNED'))]",
     "__import__('os').system('touch PWNED') is not a literal"),
    ('dict(**base)', 'dict(**base) is not a literal'),
    ("dict(type='A'", "'(' was never closed"),
])
def test_cfg_options_refuse_code(text, phrase, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        parse_args([str(BASE), '--cfg-options', f'model.rewards={text}'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f'--cfg-options: model.rewards: {text} is not a literal' in err and phrase in err
    assert 'nothing else is evaluated' in err
    assert not list(tmp_path.iterdir())  # nothing was run


def test_cfg_options_swap_a_component(tmp_path):
    """The command of docs/plugins.md: a list of component dicts replaces model.rewards; a dict
    merges into the component unless it says _delete_=True."""
    args = parse_args([str(REPO / 'configs/ablation/anchor_ema.py'), '--work-dir', str(tmp_path),
                       '--cfg-options', "model.rewards=[dict(type='ClipScore', name='c2', "
                       "model_name='rankekit-toy-clip', pretrained=None)]",
                       "model.rank_loss=dict(_delete_=True, type='PairwiseRankLoss')",
                       "model.policy_anchor=dict(weight=0.5)"])
    cfg = setup_cfg(args)
    assert cfg.model.rewards == [dict(type='ClipScore', name='c2', model_name='rankekit-toy-clip',
                                      pretrained=None)]
    assert cfg.model.rank_loss == dict(type='PairwiseRankLoss')
    assert cfg.model.policy_anchor.type == 'KLAnchor' and cfg.model.policy_anchor.weight == 0.5
