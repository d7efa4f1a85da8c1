"""Loading configs the way every rankekit tool does: file, overrides, plugins, defaults."""
from __future__ import annotations

import os.path as osp
from pathlib import Path

from mmengine.config import Config, DictAction  # noqa: F401 - DictAction re-exported for tools

from rankekit.plugins import import_config_plugins


def load_config(path: str, cfg_options: dict | None = None) -> Config:
    """Read a config file, apply ``--cfg-options`` overrides and import its plugins."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path} does not exist (run from the repository '
                                f'root, or give the full path; configs live in configs/)')
    # plugins are imported by rankekit (clear errors), not by MMEngine's fromfile
    cfg = Config.fromfile(path, import_custom_modules=False)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.setdefault('default_scope', 'rankekit')
    import_config_plugins(cfg)
    return cfg


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config stem>``, the OpenMMLab convention."""
    return osp.join('work_dirs', Path(config_path).stem)
