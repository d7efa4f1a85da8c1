"""Prompt datasets: the toy world's fixed evaluation prompts and prompt lists read from files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rankekit.registry import DATASETS
from .toy_shapes import COLOURS, POSITIONS, SHAPES, SIZES, make_caption

# distinct salt so the prompt list never shares a random stream with ToyShapes items
_PROMPT_SALT = 0x70726F6D


def _balanced(rng: np.random.Generator, num_values: int, n: int) -> np.ndarray:
    """``n`` ids with each of ``num_values`` values equally often (up to one), in random order."""
    return rng.permutation(np.resize(np.arange(num_values), n))


def toy_eval_prompts(n: int = 120, seed: int = 0, two_object_fraction: float = 0.5) -> list[dict]:
    """The toy world's fixed evaluation prompts: ``[dict(caption, attributes, num_objects)]``.

    Half one-object, half two-object prompts (``two_object_fraction``). In each half every
    colour, shape, size and position (ordered position pair for two objects) occurs equally often
    (exactly so when the half's size is a multiple of the number of values: the default n=120
    gives 60 + 60, so each colour appears 10 times per object slot, each position 12 times, each
    position pair 3 times). The same ``(n, seed)`` always gives the same list.
    ``attributes`` is a ``LongTensor[2, 4]`` like ToyShapes' (row of -1 for a missing object).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f'toy_eval_prompts needs n >= 1 prompts, got {n!r}')
    if not 0.0 <= two_object_fraction <= 1.0:
        raise ValueError(f'two_object_fraction must be in [0, 1], got {two_object_fraction}')
    rng = np.random.default_rng([seed, _PROMPT_SALT])
    n_two = int(round(n * two_object_fraction))
    n_one = n - n_two
    scenes = np.full((n, 2, 4), -1, dtype=np.int64)
    for k, num in ((0, n_one), (1, n_two)):
        rows = slice(0, n_one) if k == 0 else slice(n_one, n)
        for obj in range(k + 1):
            for col, words in enumerate((COLOURS, SHAPES, SIZES)):
                scenes[rows, obj, col] = _balanced(rng, len(words), num)
        if k == 0:
            scenes[rows, 0, 3] = _balanced(rng, len(POSITIONS), num)
        else:
            pairs = np.array([(a, b) for a in range(len(POSITIONS)) for b in range(len(POSITIONS))
                              if a != b])
            scenes[rows, :, 3] = pairs[_balanced(rng, len(pairs), num)]
    prompts = []
    for attributes in scenes:
        prompts.append(dict(caption=make_caption(attributes, rng),
                            attributes=torch.from_numpy(attributes.copy()),
                            num_objects=int((attributes[:, 0] >= 0).sum())))
    return prompts


@DATASETS.register_module()
class ToyPrompts(Dataset):
    """The toy world's fixed, attribute-balanced evaluation prompts (items: caption, attributes).

    Args:
        num_prompts: list length (see :func:`toy_eval_prompts`).
        seed: list seed; keep 0 to compare with published toy numbers.
        two_object_fraction: share of two-object prompts.
    """

    info_example = dict(type='ToyPrompts', num_prompts=8)

    def __init__(self, num_prompts: int = 120, seed: int = 0, two_object_fraction: float = 0.5):
        self.prompts = toy_eval_prompts(num_prompts, seed, two_object_fraction)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict:
        prompt = self.prompts[index]
        return dict(caption=prompt['caption'], attributes=prompt['attributes'].clone())


def read_jsonl(path, keys: Sequence[str], what: str = 'file'):
    """Yield ``(line number, record)`` for each non-blank line of a JSON-lines file.

    Every record must be a JSON object with ``keys``; otherwise a ValueError names the file, the
    line and the keys expected.
    """
    wanted = ', '.join(f'"{k}": ...' for k in keys)
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f'{what} {path}, line {lineno}: not valid JSON ({exc.msg}); '
                                 f'each line must be an object like {{{wanted}}}') from None
            if not isinstance(record, dict) or any(k not in record for k in keys):
                raise ValueError(f'{what} {path}, line {lineno}: expected an object with '
                                 f'{" and ".join(repr(k) for k in keys)}, got {line[:80]!r}')
            yield lineno, record


def read_prompt_file(path: str | Path, caption_key: str = 'caption') -> list[str]:
    """Prompts from a ``.txt`` file (one per line) or a ``.jsonl`` file (``{"caption": ...}``).

    Blank lines are skipped. Errors name the file and the line and say how to fix it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        where = '' if path.is_absolute() else f' (relative paths are read from {Path.cwd()})'
        raise FileNotFoundError(f'prompt file {path} does not exist{where}; check the path given '
                                f'as file= of the prompt dataset or as --prompt-file')
    suffix = path.suffix.lower()
    if suffix not in ('.txt', '.jsonl'):
        raise ValueError(f'prompt file {path}: unsupported extension {suffix!r}; use .txt (one '
                         f'prompt per line) or .jsonl (one {{"{caption_key}": "..."}} per line)')
    if suffix == '.txt':
        with open(path, encoding='utf-8') as f:
            prompts = [line.strip() for line in f if line.strip()]
    else:
        prompts = []
        for lineno, record in read_jsonl(path, (caption_key,), 'prompt file'):
            caption = record[caption_key]
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f'prompt file {path}, line {lineno}: "{caption_key}" must be a '
                                 f'non-empty string, got {caption!r}')
            prompts.append(caption.strip())
    if not prompts:
        raise ValueError(f'prompt file {path} holds no prompts (it is empty or only blank '
                         f'lines); write one prompt per line')
    return prompts


@DATASETS.register_module()
class PromptList(Dataset):
    """Prompts from a .txt (one per line) or .jsonl file, or given inline; items dict(caption).

    Args:
        file: the prompt file; exactly one of ``file`` and ``prompts``.
        prompts: the prompts themselves (a list of strings).
        caption_key: the key holding the prompt in a .jsonl file.
        max_prompts: keep only the first ``max_prompts`` prompts.
    """

    info_example = dict(type='PromptList', prompts=['a large red circle on the left'])

    def __init__(self, file: str | None = None, prompts: Sequence[str] | None = None,
                 caption_key: str = 'caption', max_prompts: int | None = None):
        if (file is None) == (prompts is None):
            raise ValueError('PromptList needs exactly one of file= (a .txt/.jsonl path) and '
                             'prompts= (a list of strings)')
        if file is not None:
            prompts = read_prompt_file(file, caption_key)
        else:
            if isinstance(prompts, str):
                raise ValueError('PromptList prompts= must be a list of strings, got one string; '
                                 'wrap it in a list')
            prompts = list(prompts)
            bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
            if not prompts or bad:
                raise ValueError(f'PromptList prompts= must be a non-empty list of non-empty '
                                 f'strings; bad entries at positions {bad}')
        self.prompts = prompts[:max_prompts] if max_prompts is not None else prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict:
        return dict(caption=self.prompts[index])
