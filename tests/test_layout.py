"""The shape of the code: packages import one another without cycles; the lint config holds."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'rankekit'


def _subpackage(module: str) -> str | None:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 and parts[0] == 'rankekit' else None


def package_imports() -> dict[str, dict[str, set[str]]]:
    """{package: {imported package: files}} over every import of rankekit's subpackages,
    including the ones inside functions (a lazy import is still a dependency)."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(REPO).with_suffix('').parts
        if len(parts) < 3:  # rankekit/registry.py, cli.py, plugins.py: the top, not a package
            continue
        source, module = parts[1], '.'.join(parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = module.split('.')[:-node.level]
                    targets = ['.'.join(base + ([node.module] if node.module else []))]
                else:
                    targets = [node.module or '']
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                dest = _subpackage(target)
                if dest and dest != source and (PACKAGE / dest).is_dir():
                    graph.setdefault(source, {}).setdefault(dest, set()).add(
                        path.relative_to(REPO).as_posix())
    return graph


def cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({'a': {'b': set()}, 'b': {'c': set()}, 'c': {'a': set()}}) == [['a', 'b', 'c']]
    assert cycles({'a': {'b': set()}, 'b': {'c': set()}}) == []


def test_no_import_cycle_between_packages():
    graph = package_imports()
    assert 'utils' in graph or 'models' in graph  # the walk saw the code
    assert graph['models'].keys() >= {'policies', 'utils'}
    found = cycles(graph)
    details = [f'{a} -> {b}: {sorted(graph[a][b])}' for comp in found for a in comp
               for b in graph.get(a, {}) if b in comp]
    assert not found, 'import cycles between packages:\n' + '\n'.join(details)


def test_ruff_is_clean_with_the_committed_config():
    if shutil.which('ruff') is None and not _module_available('ruff'):
        pytest.fail('ruff is not installed: pip install -e ".[test]" installs it')
    done = subprocess.run([sys.executable, '-m', 'ruff', 'check', '.'], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def _module_available(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def test_nothing_points_outside_the_repository():
    """Comments, docs and configs name files of this repository only (a clone has nothing beside
    it): no ../shared, no team notes."""
    outside = ('../shared', 'shared/', 'METHOD.md', 'TOY_NOTES', 'PERF_ANCHORS', 'DESIGN.md',
               'ENV.md')
    found = []
    for path in [*REPO.glob('*.md'), *REPO.glob('*.toml'),
                 *(p for d in ('rankekit', 'configs', 'tools', 'docs', 'tests')
                   for p in (REPO / d).rglob('*') if p.suffix in ('.py', '.md'))]:
        if 'data' in path.relative_to(REPO).parts[:2] or path.name == 'test_layout.py':
            continue
        for lineno, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
            if any(word in line for word in outside):
                found.append(f'{path.relative_to(REPO)}:{lineno}: {line.strip()[:80]}')
    assert not found, '\n'.join(found)
