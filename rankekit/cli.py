"""The ``rankekit`` command line: discover components, train, evaluate, sample."""
from __future__ import annotations

import fnmatch
import inspect
import json
import pprint
import re
import sys
from enum import Enum
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    help='rankekit: ranking-based RL post-training of discrete text-to-image models, with the '
         'AR policy and the VQ decoder co-evolving (RankE).\n\n'
         'Discover components with `rankekit list` and `rankekit info NAME`; train with '
         '`rankekit train CONFIG` (same as `python tools/train.py CONFIG`).',
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(soft_wrap=False)
err_console = Console(stderr=True)


def _fail(message: str) -> None:
    err_console.print(f'[bold red]error:[/] {message}', highlight=False)
    raise typer.Exit(code=2)


def _registries() -> dict:
    from rankekit.registry import ALL_REGISTRIES
    return ALL_REGISTRIES


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ''
    return doc.strip().splitlines()[0] if doc.strip() else '(no docstring)'


def _plain(text: str) -> str:
    """A docstring line without reST markup: ``:class:`~a.b.C``` -> ``C``, double backquotes
    -> single."""
    text = re.sub(r':\w+:`~?(?:[\w.]+\.)?([\w]+)`', r'\1', text)
    return text.replace('``', '`')


def _members(registry) -> dict:
    """Import the registry's locations and plugins, then return name -> object."""
    from rankekit.plugins import PluginImportError
    try:
        registry.import_from_location()
    except PluginImportError as exc:
        _fail(str(exc))
    return dict(sorted(registry.module_dict.items()))


def _find(name: str) -> list[tuple[str, object]]:
    """(registry key, object) for every registry that has ``name``."""
    return [(key, _members(reg)[name]) for key, reg in _registries().items()
            if name in _members(reg)]


class ListFormat(str, Enum):
    text = 'text'
    json = 'json'


def _selected(registry: Optional[str], pattern: Optional[str]) -> dict[str, dict]:
    """registry key -> {name: object} for ``rankekit list``'s arguments."""
    registries = _registries()
    if registry is not None:
        if registry not in registries:
            from rankekit.utils.build import did_you_mean
            hint = did_you_mean(registry, registries)
            _fail(f"unknown registry '{registry}'.{hint} Registries: {', '.join(registries)}")
        registries = {registry: registries[registry]}
    selected = {}
    for key, reg in registries.items():
        members = _members(reg)
        if pattern:
            members = {n: o for n, o in members.items() if fnmatch.fnmatch(n, pattern)}
        selected[key] = members
    return selected


@app.command('list')
def list_components(
        registry: Optional[str] = typer.Argument(
            None, help='Only this registry (e.g. rewards, rank_losses, anchors). Default: all.'),
        pattern: Optional[str] = typer.Option(
            None, '--pattern', '-p', help="Only names matching this glob, e.g. '*Loss'."),
        fmt: ListFormat = typer.Option(
            ListFormat.text, '--format', '-f',
            help='text: one line per component (name, summary), as wide as the terminal; '
                 'json: every field (name, summary, module, origin) for scripts.'),
) -> None:
    """List registered components: name and one-line summary (`rankekit info NAME` for more)."""
    from rankekit.plugins import origin_of
    selected = _selected(registry, pattern)
    if fmt is ListFormat.json:
        typer.echo(json.dumps({key: [dict(name=name, summary=_summary(obj), module=obj.__module__,
                                          origin=origin_of(obj.__module__))
                                     for name, obj in members.items()]
                               for key, members in selected.items()}, indent=2))
        return
    width = max(console.width, 40)
    for key, members in selected.items():
        if not members:
            what = f"matching '{pattern}'" if pattern else 'registered yet'
            console.print(Text.assemble((key, 'bold'), f': no components {what}.'))
            continue
        console.print(Text(f'{key} ({len(members)})', style='bold'))
        name_width = min(max(len(name) for name in members), 32)
        for name, obj in members.items():
            origin = origin_of(obj.__module__)
            summary = _plain(_summary(obj))
            if origin != 'built-in':  # plugins say where they come from
                summary = f'[{origin}] {summary}'
            line = Text.assemble('  ', (name.ljust(name_width), 'bold cyan'), '  ', summary)
            line.truncate(width, overflow='ellipsis')
            console.print(line, no_wrap=True, crop=True)
    console.print('`rankekit info NAME` for details; `rankekit list --format json` for scripts.'
                  [:width], highlight=False, markup=False)


def example_config(obj) -> Optional[dict]:
    """The minimal config that builds ``obj`` (its ``info_example``), or None."""
    example = getattr(obj, 'info_example', None)
    return dict(example) if example is not None else None


@app.command()
def info(name: str = typer.Argument(..., help='A component name, e.g. GRPOLoss or ClipScore.')):
    """Show a component's documentation, constructor signature and a config that builds it.

    ``rankekit info release``: every setting where rankekit and the RankE release may differ.
    """
    if name == 'release':
        _print_release_differences()
        return
    found = _find(name)
    if not found:
        every = sorted({n for reg in _registries().values() for n in _members(reg)})
        from rankekit.utils.build import did_you_mean
        hint = did_you_mean(name, every, cutoff=0.5)
        _fail(f"no component named '{name}' in any registry.{hint} See `rankekit list`.")
    from rankekit.plugins import origin_of
    for key, obj in found:
        console.rule(f'[bold cyan]{name}[/]  '
                     f'({key}, {obj.__module__}, {origin_of(obj.__module__)})')
        console.print(inspect.getdoc(obj) or '(no docstring)', highlight=False, markup=False)
        target = obj.__init__ if inspect.isclass(obj) else obj
        try:
            signature = (str(inspect.signature(target))
                         .replace('(self, ', '(').replace('(self)', '()'))
        except (TypeError, ValueError):
            signature = '(...)'
        console.print(f'\n[bold]Signature[/]\n{name}{signature}', highlight=False)
        example = example_config(obj)
        console.print('\n[bold]Example config[/]')
        if example is None:
            console.print('(this component defines no info_example)')
        else:
            console.print(pprint.pformat(example, sort_dicts=False, width=min(console.width, 96)),
                          highlight=False)


def _print_release_differences() -> None:
    from rich.table import Table

    from rankekit.models.release import BEHAVIOURS, SETTINGS
    table = Table(title='Settings where rankekit and the RankE release (syjmelody/RankE @2798acc) '
                        'may differ', show_lines=True)
    for column in ('setting', 'release', 'rankekit recipes', 'why'):
        table.add_column(column, overflow='fold')
    for s in SETTINGS:
        table.add_row(s.key, repr(s.release), s.recipes, s.why)
    console.print(table)
    fixed = Table(title='Faults of the release fixed without a setting', show_lines=True)
    fixed.add_column('behaviour')
    fixed.add_column('what rankekit does', overflow='fold')
    for name, what in BEHAVIOURS:
        fixed.add_row(name, what)
    console.print(fixed)
    console.print('Release-exact: configs/ranke/release_exact_tiny.py (the equivalence test) or '
                  'these keys with --cfg-options; docs/method.md', highlight=False)


@app.command(context_settings=dict(allow_extra_args=True, ignore_unknown_options=True))
def train(ctx: typer.Context,
          config: str = typer.Argument(
              ..., help='Config file, e.g. configs/ablation/anchor_ema.py')):
    """Train from a config; every option of tools/train.py works (see --help there)."""
    from rankekit.apis.train import main
    raise typer.Exit(code=main([config, *ctx.args]) or 0)


@app.command(context_settings=dict(allow_extra_args=True, ignore_unknown_options=True))
def test(ctx: typer.Context,
         config: str = typer.Argument(..., help='Config file of the run to evaluate')):
    """Evaluate a checkpoint for policy x decoder combos and seeds (see tools/test.py -h)."""
    from rankekit.apis.inference import evaluate_main
    raise typer.Exit(code=evaluate_main([config, *ctx.args]) or 0)


@app.command(context_settings=dict(allow_extra_args=True, ignore_unknown_options=True))
def sample(ctx: typer.Context,
           config: str = typer.Argument(..., help='Config file of the model to sample')):
    """Sample images for prompts with any policy x decoder combo (see tools/sample.py -h)."""
    from rankekit.apis.inference import sample_main
    raise typer.Exit(code=sample_main([config, *ctx.args]) or 0)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == '__main__':  # pragma: no cover
    sys.exit(app())
