"""The toy world's pretrained checkpoints, shipped inside the package (``rankekit/toy/assets/``).

Configs refer to them as ``toy://<name>`` (e.g. ``pretrained='toy://vq.pt'``); every weights
loader of rankekit resolves that prefix here. It lives in ``utils`` (and finds the folder by path)
so that the loaders do not import the toy package. ``python tools/prepare_toy_assets.py`` rebuilds
them from fixed seeds.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parents[1] / 'toy' / 'assets'
PREFIX = 'toy://'
REBUILD_COMMAND = 'python tools/prepare_toy_assets.py'
#: the files that command writes
TOY_ASSETS = ('clip.pt', 'clip_eval.pt', 'feature_net.pt', 'policy.pt', 'reward_classifier.pt',
              'text_encoder.pt', 'vq.pt', 'vq_disc.pt', 'vq_l1.pt')


#: a folder searched before ASSET_DIR (set by :func:`assets_built_in`)
_BUILD_DIR: Path | None = None


@contextmanager
def assets_built_in(folder):
    """Inside the block, ``toy://name`` means ``folder/name`` when that file exists (else the
    packaged one): a rebuild into another folder (``prepare_toy_assets.py --out-dir``) trains each
    stage on the files its earlier stages just wrote there, not on the shipped ones."""
    global _BUILD_DIR
    previous, _BUILD_DIR = _BUILD_DIR, Path(folder)
    try:
        yield
    finally:
        _BUILD_DIR = previous


class MissingToyAssetError(FileNotFoundError):
    """A toy checkpoint is not in the package (rebuild it with tools/prepare_toy_assets.py)."""


def is_toy_asset(path) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def toy_asset_path(name: str, must_exist: bool = True) -> Path:
    """Path of a shipped toy checkpoint; ``name`` with or without the ``toy://`` prefix."""
    if name.startswith(PREFIX):
        name = name[len(PREFIX):]
    if _BUILD_DIR is not None and (_BUILD_DIR / name).is_file():
        return _BUILD_DIR / name
    path = ASSET_DIR / name
    if must_exist and not path.is_file():
        if name not in TOY_ASSETS:  # a typo, not a missing file: rebuilding would not help
            from rankekit.utils.build import did_you_mean
            hint = did_you_mean(name, TOY_ASSETS, n=2, prefix=PREFIX)
            raise MissingToyAssetError(
                f"toy asset '{name}' is missing: it is not a toy asset name.{hint} The toy "
                f'assets are {[PREFIX + a for a in TOY_ASSETS]} (`{REBUILD_COMMAND}` rebuilds '
                f'them).')
        raise MissingToyAssetError(
            f"toy asset '{name}' is missing (expected at {path}). Rebuild the toy checkpoints "
            f'with `{REBUILD_COMMAND}` (about 20-30 min on 2 CPU cores), from the repository '
            'root.')
    return path


def resolve_weights_path(path) -> Path:
    """``toy://name`` -> the packaged file; anything else -> ``Path(path)`` unchanged."""
    return toy_asset_path(path) if is_toy_asset(path) else Path(path).expanduser()
