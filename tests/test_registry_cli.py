"""Registries, the generic "every component builds from its info example" test, and the CLI."""
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rankekit.apis.train import build_runner, parse_args, setup_cfg
from rankekit.cli import app, example_config
from rankekit.registry import ALL_REGISTRIES, SCOPE
from tiny_components import tiny_model_cfg, train_blocks

runner = CliRunner()


def _own_components():
    """(registry name, component name, object) for every rankekit component in every registry."""
    out = []
    for key, registry in ALL_REGISTRIES.items():
        registry.import_from_location()
        for name, obj in sorted(registry.module_dict.items()):
            if obj.__module__.startswith('rankekit'):
                out.append(pytest.param(key, name, obj, id=f'{key}.{name}'))
    return out


def test_registries_share_the_rankekit_scope():
    assert {reg.scope for reg in ALL_REGISTRIES.values()} == {SCOPE}
    for key in ('tokenizers', 'policies', 'text_encoders', 'rewards', 'rank_losses', 'anchors',
                'models', 'hooks', 'datasets', 'metrics', 'optim_wrapper_constructors'):
        assert key in ALL_REGISTRIES


def test_importing_rankekit_is_light():
    code = ('import sys, rankekit, rankekit.registry, rankekit.cli; '
            "heavy = [m for m in ('open_clip', 'transformers', 'lpips', 'matplotlib') "
            'if m in sys.modules]; print(heavy)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'


def test_multi_optim_constructor_is_registered():
    assert 'MultiOptimWrapperConstructor' in ALL_REGISTRIES['optim_wrapper_constructors']


@pytest.mark.parametrize('registry_key,name,obj', _own_components())
def test_component_builds_from_its_info_example(registry_key, name, obj, tmp_path):
    example = example_config(obj)
    assert example is not None, f'{name} has no info_example: add one (see docs/plugins.md)'
    if registry_key == 'runners':  # a config line selects a runner; it is built from a whole run
        assert example == {'runner_type': name}
        cfg_file = tmp_path / 'tiny_run.py'
        cfg_file.write_text(f"default_scope = 'rankekit'\nwork_dir = {str(tmp_path / 'run')!r}\n"
                            f"experiment_name = 'info_example_{name}'\n"
                            f"model = {tiny_model_cfg()!r}\n{train_blocks(4, 1)}\n"
                            f"runner_type = {name!r}\n")
        assert type(build_runner(setup_cfg(parse_args([str(cfg_file)])))) is obj
        return
    assert example['type'] == name
    built = ALL_REGISTRIES[registry_key].build(example)
    # the registered class itself, or (duck-typed rewards) a wrapper around an instance of it
    assert isinstance(built, obj) or isinstance(getattr(built, 'module', None), obj), \
        f'{name}: built a {type(built).__name__}'


def test_list_shows_every_registry():
    result = runner.invoke(app, ['list'])
    assert result.exit_code == 0, result.output
    for key in ALL_REGISTRIES:
        assert key in result.output


def test_list_one_registry_with_pattern():
    result = runner.invoke(app, ['list', 'optim_wrapper_constructors', '--pattern', 'Multi*'])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == 'optim_wrapper_constructors (1)'
    assert lines[1].split()[0] == 'MultiOptimWrapperConstructor'
    assert 'OptimWrapperDict' in lines[1]  # the docstring's first line, reST markup removed
    assert 'rankekit info NAME' in lines[-1]


def test_list_json_for_scripts():
    result = runner.invoke(app, ['list', 'rewards', '--pattern', 'C*', '--format', 'json'])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert list(listing) == ['rewards']
    # built-in ones only: a plugin test earlier in the session may have registered more
    listing['rewards'] = [c for c in listing['rewards'] if c['origin'] == 'built-in']
    assert [c['name'] for c in listing['rewards']] == ['CallableReward', 'ClipScore']
    clip = listing['rewards'][1]
    assert clip == dict(name='ClipScore', summary=clip['summary'],
                        module='rankekit.rewards.clip_score', origin='built-in')
    assert clip['summary'].startswith('CLIP score')
    every = json.loads(runner.invoke(app, ['list', '-f', 'json']).output)
    assert list(every) == list(ALL_REGISTRIES)


def test_list_empty_match_says_so():
    result = runner.invoke(app, ['list', 'rewards', '--pattern', 'NoSuchThing*'])
    assert result.exit_code == 0
    assert 'no components' in result.output


def test_list_unknown_registry_suggests():
    result = runner.invoke(app, ['list', 'reward'])
    assert result.exit_code == 2
    assert "unknown registry 'reward'" in result.output
    assert "'rewards'" in result.output


def test_info_shows_doc_signature_and_example():
    result = runner.invoke(app, ['info', 'MultiOptimWrapperConstructor'])
    assert result.exit_code == 0, result.output
    assert 'OptimWrapperDict' in result.output
    assert 'optim_wrapper_cfg' in result.output
    assert "'type': 'MultiOptimWrapperConstructor'" in result.output


def test_info_unknown_name_suggests_close_match():
    result = runner.invoke(app, ['info', 'MultiOptimWraperConstructor'])
    assert result.exit_code == 2
    assert 'MultiOptimWrapperConstructor' in result.output
    assert len(result.output.strip().splitlines()) <= 3


def test_help_texts():
    for args in (['--help'], ['list', '--help'], ['info', '--help'], ['train', '--help'],
                 ['test', '--help'], ['sample', '--help']):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert 'Usage' in result.output


def test_list_and_info_print_docstrings_verbatim():
    """Brackets in a docstring are text, not rich markup (a plugin's '[/x]' must not crash)."""
    from rankekit.registry import REWARDS
    from rankekit.rewards.base import BaseReward

    class BracketReward(BaseReward):
        """In [0, 1]; [/b] [red] are text."""

    REWARDS.register_module(module=BracketReward, force=True)
    try:
        for args in (['list', 'rewards', '-p', 'Bracket*'], ['info', 'BracketReward']):
            result = runner.invoke(app, args)
            assert result.exit_code == 0, result.output
            assert 'In [0, 1]; [/b] [red] are text.' in result.output
    finally:
        REWARDS.module_dict.pop('BracketReward')
