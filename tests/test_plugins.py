"""The three plugin routes of docs/plugins.md, and plugin failures that must be loud."""
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch

from rankekit.apis.config import load_config
from rankekit.plugins import PluginImportError, import_custom_modules
from rankekit.registry import REWARDS

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / 'docs' / 'examples' / 'rankekit-example-reward'


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _fake_install(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """Make ``dist`` discoverable by importlib.metadata from ``site`` (as pip would)."""
    info = site / f'{dist.replace("-", "_")}-0.1.0.dist-info'
    _write(info / 'METADATA', f'Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n')
    lines = '\n'.join(f'{k} = {v}' for k, v in entry_points.items())
    _write(info / 'entry_points.txt', f'[rankekit.plugins]\n{lines}\n')


def _run(code: str, *paths: Path) -> subprocess.CompletedProcess:
    env_path = ':'.join(str(p) for p in paths)
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True,
                          env={'PYTHONPATH': env_path, 'PATH': '/usr/bin:/bin', 'COLUMNS': '200'},
                          timeout=120)


# --- route 1: custom_imports in a config ----------------------------------------------------------
def test_custom_imports_registers_the_plugin(tmp_path, monkeypatch):
    _write(tmp_path / 'rk_custom_plugin' / '__init__.py', '')
    _write(tmp_path / 'rk_custom_plugin' / 'rewards.py', '''
        import torch
        from rankekit.registry import REWARDS
        from rankekit.rewards.base import BaseReward

        @REWARDS.register_module()
        class HalfReward(BaseReward):
            """Always 0.5."""
            info_example = dict(type='HalfReward')
            def forward(self, images, prompts):
                return torch.full((len(prompts),), 0.5)
        ''')
    cfg_file = _write(tmp_path / 'cfg.py', '''
        custom_imports = dict(imports=['rk_custom_plugin.rewards'])
        reward = dict(type='HalfReward')
        ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(str(cfg_file))
    reward = REWARDS.build(cfg.reward)
    assert reward(torch.rand(3, 3, 8, 8), ['a', 'b', 'c']).tolist() == [0.5, 0.5, 0.5]


def test_custom_import_that_raises_names_the_plugin(tmp_path, monkeypatch):
    _write(tmp_path / 'rk_broken_plugin.py', 'raise RuntimeError("boom at import")\n')
    cfg_file = _write(tmp_path / 'cfg.py', "custom_imports = dict(imports=['rk_broken_plugin'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginImportError) as info:
        load_config(str(cfg_file))
    message = str(info.value)
    assert "'rk_broken_plugin'" in message and 'RuntimeError: boom at import' in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_custom_import_of_missing_module_says_so():
    with pytest.raises(PluginImportError, match="'no_such_rk_module'.*installed"):
        import_custom_modules(['no_such_rk_module'])


# --- route 2: an installed package with a rankekit.plugins entry point ----------------------------
def test_docs_example_package_via_entry_point(tmp_path):
    """The worked example of docs/plugins.md, installed as pip would, is built from a config."""
    project = tomllib.loads((EXAMPLE / 'pyproject.toml').read_text())
    entry_points = project['project']['entry-points']['rankekit.plugins']
    _fake_install(tmp_path, project['project']['name'], entry_points)
    out = _run('''
        import torch
        from rankekit.registry import REWARDS
        reward = REWARDS.build(dict(type='Colourfulness'))
        grey = torch.full((1, 3, 8, 8), 0.5)
        red = torch.zeros(1, 3, 8, 8); red[:, 0] = 1
        print(float(reward(grey, ['x'])), float(reward(red, ['x'])) > 0.3)
        ''', tmp_path, EXAMPLE, REPO)
    assert out.returncode == 0, out.stderr
    score_grey, red_is_colourful = out.stdout.split()
    assert abs(float(score_grey)) < 1e-4 and red_is_colourful == 'True'


def test_entry_point_callable_and_listing(tmp_path):
    _write(tmp_path / 'rk_ep_plugin' / '__init__.py', '''
        def register():
            import torch
            from rankekit.registry import REWARDS
            from rankekit.rewards.base import BaseReward

            @REWARDS.register_module()
            class EntryPointReward(BaseReward):
                """A reward registered by an entry-point callable."""
                info_example = dict(type='EntryPointReward')
                def forward(self, images, prompts):
                    return torch.ones(len(prompts))
        ''')
    _fake_install(tmp_path, 'rk-ep-plugin', {'ep_reward': 'rk_ep_plugin:register'})
    out = _run('''
        from typer.testing import CliRunner
        from rankekit.cli import app
        result = CliRunner().invoke(app, ['list', 'rewards', '--pattern', 'EntryPoint*'])
        print(result.exit_code)
        print(result.output)
        ''', tmp_path, REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('0')
    assert 'EntryPointReward' in out.stdout and 'plugin: rk-ep-plugin' in out.stdout


def test_list_fits_80_columns_with_a_plugin(tmp_path):
    """`rankekit list` of every registry, the docs' example plugin included, at COLUMNS=80."""
    project = tomllib.loads((EXAMPLE / 'pyproject.toml').read_text())
    _fake_install(tmp_path, project['project']['name'],
                  project['project']['entry-points']['rankekit.plugins'])
    env = {'PYTHONPATH': f'{tmp_path}:{EXAMPLE}:{REPO}', 'PATH': '/usr/bin:/bin', 'COLUMNS': '80'}
    out = subprocess.run([sys.executable, '-m', 'rankekit.cli', 'list'], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) > 60 and max(len(line) for line in lines) <= 80, max(lines, key=len)
    colour = [line for line in lines if line.split()[:1] == ['Colourfulness']]
    assert colour and '[plugin: rankekit-example-reward] Colourfulness of the image' in colour[0]
    out = subprocess.run([sys.executable, '-m', 'rankekit.cli', 'list', 'rewards', '--format',
                          'json'], capture_output=True, text=True, env=env, timeout=120)
    entry = [c for c in json.loads(out.stdout)['rewards'] if c['name'] == 'Colourfulness'][0]
    assert entry['origin'] == 'plugin: rankekit-example-reward'
    assert entry['module'] == 'rankekit_example_reward.rewards'


def test_entry_point_that_fails_is_loud(tmp_path):
    _write(tmp_path / 'rk_bad_ep.py', 'import not_a_real_dependency_xyz\n')
    _fake_install(tmp_path, 'rk-bad-ep', {'bad': 'rk_bad_ep'})
    out = _run('''
        from rankekit.registry import REWARDS
        REWARDS.build(dict(type='Anything'))
        ''', tmp_path, REPO)
    assert out.returncode != 0
    assert "rankekit plugin 'bad'" in out.stderr and 'rk-bad-ep' in out.stderr
    assert 'not_a_real_dependency_xyz' in out.stderr


# --- route 3: CallableReward around a plain function ----------------------------------------------
def test_callable_reward_route(tmp_path, monkeypatch):
    _write(tmp_path / 'rk_fn_module.py', '''
        def brightness(images, prompts):
            return images.mean(dim=(1, 2, 3)).tolist()
        ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = REWARDS.build(dict(type='CallableReward', fn='rk_fn_module:brightness',
                                differentiable=False))
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    assert reward(images, ['a', 'b']).tolist() == [0.0, 1.0]
    assert reward.differentiable is False
