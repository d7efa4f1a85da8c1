"""docs/plugins.md as written: its Python examples build, and every shell command it shows runs.

The commands run in a scratch copy of the repository's configs/, tools/ and docs/examples/, with
a throw-away virtual environment first on PATH (its ``pip`` installs the example plugin there,
never into the environment running the tests) that sees this environment's packages and this
checkout's rankekit.
"""
import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from rankekit.apis.config import check_config, load_config
from rankekit.apis.train import parse_args, setup_cfg
from rankekit.registry import REWARDS
from rankekit.rewards import RewardCombiner

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / 'docs' / 'plugins.md'
EXAMPLE = REPO / 'docs' / 'examples' / 'rankekit-example-reward'
pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def blocks(language: str) -> list[str]:
    return re.findall(rf'^```{language}\n(.*?)^```', DOC.read_text(), flags=re.S | re.M)


def shell_commands() -> list[str]:
    """Every command of the doc's bash blocks (continuation lines joined, comments dropped)."""
    text = '\n'.join(blocks('bash')).replace('\\\n', ' ')
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith('#')]


def python_files() -> dict[str, str]:
    """The doc's Python blocks that start with a ``# path`` comment: path -> source."""
    files = {}
    for block in blocks('python'):
        first = block.splitlines()[0]
        match = re.fullmatch(r'# ([\w/]+\.py)', first.strip())
        if match:
            files[match.group(1)] = block
    return files


@pytest.fixture
def doc_project(tmp_path, monkeypatch):
    """The doc's files written into a scratch copy of configs/, importable; registrations and
    imported modules are undone afterwards."""
    shutil.copytree(REPO / 'configs', tmp_path / 'configs')
    for rel, source in python_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(source)
    (tmp_path / 'my_project' / '__init__.py').write_text('')
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(REWARDS.module_dict)
    yield tmp_path
    for name in set(REWARDS.module_dict) - before:
        REWARDS.module_dict.pop(name)
    for module in [m for m in sys.modules if m == 'my_project' or m.startswith('my_project.')]:
        monkeypatch.delitem(sys.modules, module)


def test_doc_lists_its_files_and_commands():
    assert set(python_files()) == {'my_project/rewards.py', 'configs/my_experiment.py',
                                   'my_project/scores.py', 'my_project/plain.py',
                                   'configs/my_plain_rewards.py'}
    commands = shell_commands()
    assert commands[0] == 'pip install -e docs/examples/rankekit-example-reward'
    assert len(commands) == 5 and any(c.startswith('python tools/train.py') for c in commands)


def test_doc_python_examples_build(doc_project):
    images, prompts = torch.rand(2, 3, 16, 16), ['a', 'b']
    # section 1: custom_imports of a BaseReward
    cfg = load_config(str(doc_project / 'configs' / 'my_experiment.py'))
    check_config(cfg)
    combiner = RewardCombiner(cfg.model.rewards)
    assert combiner.names == ['brightness'] and combiner.any_differentiable
    torch.testing.assert_close(combiner.score(images, prompts)[1]['brightness'],
                               images.mean(dim=(1, 2, 3)))
    # section 3: CallableReward; its config snippet as the doc writes it
    snippet = [b for b in blocks('python') if "type='CallableReward'" in b][0]
    namespace = {}
    exec(compile(snippet, str(DOC), 'exec'), namespace)  # our own documentation
    reward = REWARDS.build(namespace['model']['rewards'][0])
    assert reward.name == 'redness' and reward(images, prompts).shape == (2,)
    # section 4: a plain nn.Module and a function, with name= and kwargs
    cfg = load_config(str(doc_project / 'configs' / 'my_plain_rewards.py'))
    check_config(cfg)
    combiner = RewardCombiner(cfg.model.rewards, cfg.model.reward_weights)
    assert combiner.names == ['sharp', 'greenness']
    assert [r.differentiable for r in combiner.rewards] == [True, False]
    raw = combiner.score(images, prompts)[1]
    torch.testing.assert_close(raw['greenness'], 2.0 * images[:, 1].mean(dim=(1, 2)))


def test_doc_train_command_sets_up(tmp_path, monkeypatch):
    """The training command's options, as the shell passes them, give the config it says."""
    command = [c for c in shell_commands() if c.startswith('python tools/train.py')][0]
    argv = shlex.split(command)[2:]
    monkeypatch.syspath_prepend(str(EXAMPLE))  # registers Colourfulness like the entry point
    import rankekit_example_reward.rewards  # noqa: F401
    monkeypatch.chdir(REPO)
    cfg = setup_cfg(parse_args(argv))
    assert cfg.model.rewards == [dict(type='Colourfulness')]
    assert cfg.train_cfg.max_iters == 2 and cfg.custom_hooks == []
    assert cfg.val_cfg is None and cfg.work_dir == 'work_dirs/colourfulness'


def _scratch_venv(root: Path) -> dict:
    """A venv without pip of its own: this interpreter's site-packages added as site dirs,
    ``pip`` and ``rankekit`` scripts on its bin/ (as pip writes them). Returns the env."""
    venv = root / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True,
                   timeout=600)
    purelib = Path(sysconfig.get_path('purelib', vars={'base': str(venv),
                                                       'platbase': str(venv)}))
    lines = [f'import site; site.addsitedir({p!r})' for p in site.getsitepackages()]
    (purelib / 'zz_outer_site_packages.pth').write_text('\n'.join(lines) + '\n')
    python = venv / 'bin' / 'python'
    for name, call in (('pip', 'from pip._internal.cli.main import main'),
                       ('rankekit', 'from rankekit.cli import app as main')):
        script = venv / 'bin' / name
        script.write_text(f'#!{python}\nimport sys\n{call}\nsys.exit(main())\n')
        script.chmod(0o755)
    env = dict(os.environ, PATH=f'{venv / "bin"}{os.pathsep}{os.environ.get("PATH", "")}',
               PYTHONPATH=str(REPO), COLUMNS='80', OMP_NUM_THREADS='1',
               PIP_DISABLE_PIP_VERSION_CHECK='1')
    env.pop('VIRTUAL_ENV', None)
    if find_spec('setuptools') is not None:  # build the example offline with it
        env.update(PIP_NO_BUILD_ISOLATION='0', PIP_NO_INDEX='1')
    assert shutil.which('pip', path=env['PATH']) == str(venv / 'bin' / 'pip')
    return env


@pytest.mark.slow
def test_doc_commands_run_as_written(tmp_path):
    for folder in ('configs', 'tools', 'docs/examples'):
        shutil.copytree(REPO / folder, tmp_path / folder)
    env = _scratch_venv(tmp_path / 'env')
    outputs = []
    for command in shell_commands():
        out = subprocess.run(command, shell=True, executable='/bin/bash', cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, f'{command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}'
        outputs.append(out.stdout)
    listing, info, _, as_json = outputs[1:]
    assert re.search(r'^  Colourfulness  \[plugin: rankekit-example-reward\]', listing, re.M)
    assert max(len(line) for line in listing.splitlines()) <= 80
    assert "{'type': 'Colourfulness', 'scale': 1.0}" in info
    run = tmp_path / 'work_dirs' / 'colourfulness'
    assert (run / 'iter_2.pth').is_file()
    summary = json.loads((run / 'summary.json').read_text())
    assert 'reward/colourfulness/mean' in summary['train']  # the plugin's reward was trained on
    rewards = json.loads(as_json)['rewards']
    assert {r['name']: r['origin'] for r in rewards}['Colourfulness'] == \
        'plugin: rankekit-example-reward'
