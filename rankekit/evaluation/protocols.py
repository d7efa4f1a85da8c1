"""The paper's evaluation protocol (docs/evaluation.md) for real backbones.

- **MS-COCO 30K**: :func:`coco30k_captions` (val2014 captions cycled to 30k), images generated to
  a folder (:func:`generate_to_folder`: batched, prompt ``i`` drawn with the per-prompt seed of
  ``tools/sample.py`` / ``tools/test.py``, :func:`rankekit.evaluation.generation.prompt_seeds`,
  resumable),
  FID with clean-fid against the val2014 images centre-cropped and resized to the model
  resolution (:func:`prepare_real_folder`, :class:`~rankekit.evaluation.fid.COCOFIDProtocol`) and
  the CLIP score with OpenAI CLIP ViT-B/32 and ``"A photo depicts "`` (:func:`clip_score_folder`);
  :func:`coco_protocol` runs all of it.
- **HPSv2 benchmark**: HPS v2.1 on the HPDv2 benchmark prompts of the four styles and their
  average (:func:`hpsv2_benchmark`). The prompt files are ``anime.json``, ``concept-art.json``,
  ``paintings.json`` and ``photo.json`` (a JSON list of 800 prompts each) from the ``benchmark/``
  folder of the Hugging Face dataset ``zhwang/HPDv2``, where the HPSv2 repository
  (tgxs002/HPSv2, ``hpsv2/utils.py``) fetches them.
- **GenEval**: images in GenEval's folder layout (:func:`write_geneval_images`), scored by the
  GenEval repository (djghosh13/geneval) in its OWN environment (mmdet 2.x) through a subprocess
  (:func:`run_geneval`), whose results file is parsed here (:func:`parse_geneval_results`).

Every generated folder holds ``captions.jsonl`` (``file_name``, ``caption``), so scoring can run
apart from generation. Models come from :func:`rankekit.apis.inference.load_model` (a config and
a runner checkpoint). Nothing here downloads.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ['coco30k_captions', 'generate_to_folder', 'read_folder_captions', 'load_images',
           'clip_score_folder', 'prepare_real_folder', 'coco_protocol', 'HPSV2_STYLES',
           'hpsv2_benchmark_prompts', 'score_folder', 'hpsv2_benchmark', 'read_geneval_metadata',
           'write_geneval_images', 'run_geneval', 'parse_geneval_results',
           'format_geneval_summary', 'GenEvalError', 'evaluate_paper_protocol',
           'GENEVAL_DETECTOR', 'CAPTIONS_FILE']

CAPTIONS_FILE = 'captions.jsonl'
HPSV2_STYLES = ('anime', 'concept-art', 'paintings', 'photo')
HPSV2_PROMPTS_SOURCE = ('the Hugging Face dataset zhwang/HPDv2, folder benchmark/ (the HPSv2 '
                        'package downloads them to ~/.cache/hpsv2/datasets/benchmark/)')
GENEVAL_DETECTOR = 'mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco'
GENEVAL_SOURCE = ('https://github.com/djghosh13/geneval (clone it; set up its own environment '
                  'with mmdet 2.27 as its README says; the detector comes from '
                  'evaluation/download_models.sh)')


# ------------------------------------------------------------------------------------------------
# prompts and folders
# ------------------------------------------------------------------------------------------------
def _clean(text: str) -> str:
    return ' '.join(str(text).split())


def coco30k_captions(source: str | os.PathLike, n: int = 30000,
                     caption_key: str = 'caption') -> list[str]:
    """``n`` COCO captions, in file order, cycled when the file holds fewer.

    Args:
        source: COCO ``annotations/captions_val2014.json`` (captions in annotation order), a CSV
            with a ``caption`` column (e.g. ``file_name,caption``), or a .txt / .jsonl prompt file.
        n: how many captions (30000 for MS-COCO 30K).
    """
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'COCO captions file {path} does not exist; it is '
                                f'annotations/captions_val2014.json of the COCO 2014 '
                                f'annotations (or a CSV with a "{caption_key}" column)')
    if not isinstance(n, int) or n < 1:
        raise ValueError(f'n must be a positive int, got {n!r}')
    suffix = path.suffix.lower()
    if suffix == '.json':
        data = json.loads(path.read_text(encoding='utf-8'))
        if not isinstance(data, dict) or 'annotations' not in data:
            raise ValueError(f'{path} is not a COCO captions file (no "annotations" list)')
        captions = [ann['caption'] for ann in data['annotations']]
    elif suffix == '.csv':
        import csv
        with open(path, encoding='utf-8', newline='') as f:
            reader = csv.DictReader(f)
            if caption_key not in (reader.fieldnames or []):
                raise ValueError(f'{path}: the CSV header must have a "{caption_key}" column, '
                                 f'got {reader.fieldnames}')
            captions = [row[caption_key] for row in reader]
    else:
        from rankekit.datasets.prompts import read_prompt_file
        captions = read_prompt_file(path, caption_key)
    captions = [_clean(c) for c in captions if _clean(c)]
    if not captions:
        raise ValueError(f'{path} holds no captions')
    return [captions[i % len(captions)] for i in range(n)]


def _save_png(image: torch.Tensor, path: Path) -> None:
    from rankekit.evaluation.generation import save_png, to_uint8
    save_png(to_uint8(image[None])[0], path)


def _write_captions(folder: Path, names: Sequence[str], prompts: Sequence[str]) -> None:
    with open(folder / CAPTIONS_FILE, 'w', encoding='utf-8') as f:
        for name, prompt in zip(names, prompts):
            f.write(json.dumps(dict(file_name=name, caption=prompt)) + '\n')


def _progress(enabled: bool, total: int, what: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    progress = Progress(TextColumn(f'[bold]{what}'), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn('eta'), TimeRemainingColumn(),
                        disable=not enabled)
    return progress, progress.add_task(what, total=total)


@torch.no_grad()
def generate_to_folder(model, prompts: Sequence[str], out_dir: str | os.PathLike, *,
                       batch_size: int = 32, seed: int = 0, policy: str = 'online',
                       decoder: str = 'ema', names: Sequence[str] | None = None,
                       overwrite: bool = False, progress: bool = True, **sampling) -> list[Path]:
    """Generate one image per prompt with ``model.generate`` and save them as PNG files.

    Prompt ``i`` is drawn with its own RNG stream, seeded ``prompt_seeds(seed, i, 1)`` as in
    ``tools/sample.py`` and ``tools/test.py``, so the images do not depend on ``batch_size`` and
    an interrupted run resumes: files already there are kept unless ``overwrite``.
    ``captions.jsonl`` (``file_name``, ``caption``) is written next to them.

    Args:
        model: a :class:`~rankekit.models.RankEModel` (or anything with the same ``generate``).
        names: file names relative to ``out_dir`` (default ``00000.png``, ...; sub-folders are
            created).
        policy, decoder: 'online' | 'ema' | 'base' (the paper's sampling combinations).
        sampling: overrides of the rollout sampling settings (cfg_scale, temperature, top_k, ...).
    Returns:
        the image paths, in prompt order.
    """
    from rankekit.evaluation.generation import prompt_seeds
    prompts = [str(p) for p in prompts]
    seeds = prompt_seeds(seed, 0, len(prompts))
    if names is None:
        names = [f'{i:05d}.png' for i in range(len(prompts))]
    if len(names) != len(prompts):
        raise ValueError(f'{len(names)} names for {len(prompts)} prompts')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in names]
    todo = [i for i, p in enumerate(paths) if overwrite or not p.is_file()]
    bar, task = _progress(progress, len(prompts), f'generate -> {out}')
    with bar:
        bar.update(task, completed=len(prompts) - len(todo))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            result = model.generate([prompts[i] for i in chunk], policy=policy, decoder=decoder,
                                    seeds=[seeds[i] for i in chunk], **sampling)
            for i, image in zip(chunk, result['images']):
                paths[i].parent.mkdir(parents=True, exist_ok=True)
                _save_png(image, paths[i])
            bar.update(task, advance=len(chunk))
    _write_captions(out, names, prompts)
    return paths


def read_folder_captions(folder: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """(image paths, captions) of a generated folder, from its ``captions.jsonl``."""
    from rankekit.datasets.image_caption import read_captions_file
    folder = Path(folder).expanduser()
    file = folder / CAPTIONS_FILE
    if not file.is_file():
        raise FileNotFoundError(f'{file} does not exist: generate the folder with '
                                f'generate_to_folder (it writes {CAPTIONS_FILE})')
    pairs = read_captions_file(str(file))
    paths = [folder / name for name, _ in pairs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f'{len(missing)} images listed in {file} are missing, e.g. '
                                f'{missing[0]}; generate them again (generate_to_folder resumes)')
    return paths, [caption for _, caption in pairs]


def load_images(paths: Sequence[str | os.PathLike]) -> torch.Tensor:
    """Image files -> FloatTensor (N, 3, H, W) in [0, 1] (all of one size)."""
    from PIL import Image
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert('RGB'), dtype=np.uint8).copy()
        except (OSError, ValueError) as exc:
            raise OSError(f'cannot read image {path}: {exc}') from exc
        images.append(torch.from_numpy(pixels).permute(2, 0, 1))
    sizes = {tuple(img.shape) for img in images}
    if len(sizes) > 1:
        raise ValueError(f'images of different sizes {sorted(sizes)} in one batch: {paths[0]}...')
    return torch.stack(images).float() / 255.0


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def score_folder(folder: str | os.PathLike, reward, batch_size: int = 64,
                 device: str | torch.device | None = None) -> np.ndarray:
    """Scores (N,) of a generated folder's images vs their captions with a reward module or
    ``REWARDS`` config (``ClipScore``, ``HPSv2``, ...), in ``captions.jsonl`` order."""
    from rankekit.evaluation.common import build_network
    from rankekit.registry import REWARDS
    reward = build_network(reward, REWARDS, 'reward')
    if device is not None and isinstance(reward, torch.nn.Module):
        reward.to(device)
    paths, captions = read_folder_captions(folder)
    scores = []
    with torch.no_grad():
        for idx in _batches(list(range(len(paths))), batch_size):
            images = load_images([paths[i] for i in idx])
            if device is not None:
                images = images.to(device)
            scores.append(reward(images, [captions[i] for i in idx]).float().cpu())
    return torch.cat(scores).numpy().astype(np.float64)


def clip_score_folder(folder: str | os.PathLike, clip, caption_prefix: str = 'A photo depicts ',
                      scale: float = 100.0, batch_size: int = 64,
                      device: str | torch.device | None = None) -> dict:
    """The paper's CLIP score of a generated folder: :class:`ClipScoreMetric` (OpenAI ViT-B/32,
    ``caption_prefix + caption``, cosine x ``scale``); returns ``dict(mean, std, num_images)``."""
    from rankekit.evaluation.metrics import ClipScoreMetric
    metric = ClipScoreMetric(clip=clip, scale=scale, caption_prefix=caption_prefix)
    if device is not None:
        metric.clip.to(device)
    paths, captions = read_folder_captions(folder)
    for idx in _batches(list(range(len(paths))), batch_size):
        images = load_images([paths[i] for i in idx])
        if device is not None:
            images = images.to(device)
        metric.process(None, [dict(image=img, caption=captions[i]) for img, i in zip(images, idx)])
    return dict(metric.compute_metrics(metric.results), num_images=len(paths))


def prepare_real_folder(src: str | os.PathLike, dst: str | os.PathLike, size: int,
                        num_images: int | None = None, progress: bool = True) -> Path:
    """Centre-crop and resize (bicubic) every image of ``src`` to ``size`` x ``size`` PNGs in
    ``dst`` (the real side of the COCO FID protocol); files already in ``dst`` are kept."""
    from rankekit.evaluation.common import ImageFolder
    images = ImageFolder(src, image_size=size)
    count = len(images) if num_images is None else min(num_images, len(images))
    dst = Path(dst).expanduser()
    dst.mkdir(parents=True, exist_ok=True)
    bar, task = _progress(progress, count, f'real {size}px -> {dst}')
    with bar:
        for i in range(count):
            target = dst / (images.files[i].relative_to(images.root).with_suffix('.png')
                            .as_posix().replace('/', '_'))
            if not target.is_file():
                _save_png(images[i]['image'], target)
            bar.update(task, advance=1)
    return dst


def coco_protocol(model, captions: str | os.PathLike, real_folder: str | os.PathLike,
                  out_dir: str | os.PathLike, clip, num_images: int = 30000,
                  fid_mode: str = 'clean', caption_prefix: str = 'A photo depicts ',
                  batch_size: int = 32, seed: int = 0, policy: str = 'online',
                  decoder: str = 'ema', real_resized: str | os.PathLike | None = None,
                  device: str | None = None, progress: bool = True, **sampling) -> dict:
    """MS-COCO 30K: FID (clean-fid) and CLIP score (ViT-B/32) of ``num_images`` generations.

    Images go to ``out_dir/images``; the real images, centre-cropped and resized to the
    generated resolution, to ``real_resized`` (default ``out_dir/real_<size>px``, reused).
    Returns ``dict(fid, clip_score, clip_score_std, num_images)``.
    """
    from rankekit.evaluation.fid import COCOFIDProtocol
    out = Path(out_dir).expanduser()
    prompts = coco30k_captions(captions, num_images)
    paths = generate_to_folder(model, prompts, out / 'images', batch_size=batch_size, seed=seed,
                               policy=policy, decoder=decoder, progress=progress, **sampling)
    size = load_images(paths[:1]).shape[-1]
    real = prepare_real_folder(real_folder, real_resized or out / f'real_{size}px', size,
                               progress=progress)
    fid = COCOFIDProtocol(real, mode=fid_mode, device=device)(out / 'images')
    clip_scores = clip_score_folder(out / 'images', clip, caption_prefix, device=device)
    return dict(fid=fid, clip_score=clip_scores['mean'], clip_score_std=clip_scores['std'],
                num_images=len(paths))


# ------------------------------------------------------------------------------------------------
# HPSv2 benchmark
# ------------------------------------------------------------------------------------------------
def hpsv2_benchmark_prompts(folder: str | os.PathLike,
                            styles: Sequence[str] = HPSV2_STYLES) -> dict[str, list[str]]:
    """``{style: prompts}`` from ``<folder>/<style>.json`` (a JSON list of prompt strings)."""
    folder = Path(folder).expanduser()
    prompts = {}
    for style in styles:
        file = folder / f'{style}.json'
        if not file.is_file():
            raise FileNotFoundError(f'HPSv2 benchmark prompts {file} not found; the files '
                                    f'{", ".join(s + ".json" for s in HPSV2_STYLES)} come from '
                                    f'{HPSV2_PROMPTS_SOURCE}')
        data = json.loads(file.read_text(encoding='utf-8'))
        if not isinstance(data, list) or not data or not all(isinstance(p, str) for p in data):
            raise ValueError(f'{file} must be a non-empty JSON list of prompt strings')
        prompts[style] = data
    return prompts


def hpsv2_benchmark(model, prompts_dir: str | os.PathLike, out_dir: str | os.PathLike, reward,
                    styles: Sequence[str] = HPSV2_STYLES, batch_size: int = 32, seed: int = 0,
                    policy: str = 'online', decoder: str = 'ema', device: str | None = None,
                    progress: bool = True, **sampling) -> dict:
    """HPS v2.1 benchmark: one image per prompt of each style, mean raw HPS per style and the
    average over styles (the paper's 'HPSv2 average', e.g. 0.2531).

    ``reward``: an ``HPSv2`` config or module with ``scale=1`` (the raw cosine; HPS's tables show
    it x100). Images go to ``out_dir/<style>/``. Returns ``{style: score, ..., 'average': ...}``.
    """
    prompts = hpsv2_benchmark_prompts(prompts_dir, styles)
    from rankekit.evaluation.common import build_network
    from rankekit.registry import REWARDS
    reward = build_network(reward, REWARDS, 'reward')
    out = Path(out_dir).expanduser()
    scores = {}
    for style in styles:
        generate_to_folder(model, prompts[style], out / style, batch_size=batch_size, seed=seed,
                           policy=policy, decoder=decoder, progress=progress, **sampling)
        scores[style] = float(score_folder(out / style, reward, device=device).mean())
    scores['average'] = float(np.mean([scores[s] for s in styles]))
    return scores


# ------------------------------------------------------------------------------------------------
# GenEval (its own environment, through a subprocess)
# ------------------------------------------------------------------------------------------------
class GenEvalError(RuntimeError):
    """GenEval could not run, failed, or wrote no usable results."""


def read_geneval_metadata(path: str | os.PathLike) -> list[dict]:
    """The GenEval prompts: ``prompts/evaluation_metadata.jsonl`` (553 objects with ``tag``,
    ``prompt``, ``include``...)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'GenEval metadata {path} not found; it is '
                                f'prompts/evaluation_metadata.jsonl of {GENEVAL_SOURCE}')
    items = []
    for lineno, line in enumerate(path.read_text(encoding='utf-8').splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f'{path}, line {lineno}: not valid JSON ({exc.msg})') from None
        if not isinstance(item, dict) or 'prompt' not in item or 'tag' not in item:
            raise ValueError(f'{path}, line {lineno}: a GenEval item needs "prompt" and "tag"')
        items.append(item)
    if not items:
        raise ValueError(f'{path} holds no GenEval prompts')
    return items


def write_geneval_images(model, metadata: str | os.PathLike | Sequence[dict],
                         out_dir: str | os.PathLike, images_per_prompt: int = 4,
                         batch_size: int = 32, seed: int = 0, policy: str = 'online',
                         decoder: str = 'ema', progress: bool = True, **sampling) -> Path:
    """Generate GenEval's folder layout: ``<out>/<00000>/metadata.jsonl`` (the prompt's metadata
    line) and ``<out>/<00000>/samples/<0000>.png`` (``images_per_prompt`` of them)."""
    items = metadata if isinstance(metadata, (list, tuple)) else read_geneval_metadata(metadata)
    out = Path(out_dir).expanduser()
    prompts, names = [], []
    for i, item in enumerate(items):
        folder = out / f'{i:05d}'
        folder.mkdir(parents=True, exist_ok=True)
        (folder / 'metadata.jsonl').write_text(json.dumps(item) + '\n', encoding='utf-8')
        for j in range(images_per_prompt):
            prompts.append(item['prompt'])
            names.append(f'{i:05d}/samples/{j:04d}.png')
    generate_to_folder(model, prompts, out, batch_size=batch_size, seed=seed, policy=policy,
                       decoder=decoder, names=names, progress=progress, **sampling)
    return out


def _check_executable(python: str | os.PathLike) -> str:
    found = shutil.which(str(python)) if os.sep not in str(python) else str(python)
    if not found or not Path(found).is_file() or not os.access(found, os.X_OK):
        raise GenEvalError(f'python={python!r} is not an executable: give the python of the '
                           f'GenEval environment (e.g. ~/miniconda3/envs/geneval/bin/python), '
                           f'not rankekit\'s: GenEval needs mmdet 2.x')
    return found


def run_geneval(images_dir: str | os.PathLike, geneval_repo: str | os.PathLike,
                python: str | os.PathLike, detector_path: str | os.PathLike,
                outfile: str | os.PathLike | None = None, model_config: str | None = None,
                options: dict | None = None, env: dict | None = None,
                timeout: float | None = None) -> dict:
    """Score a GenEval image folder with the GenEval repository, in its own environment.

    Runs ``python <repo>/evaluation/evaluate_images.py <images_dir> --outfile <outfile>
    --model-path <detector_path> [--model-config ...] [--options k=v ...]`` (GenEval's command
    line; it needs a CUDA GPU, mmdet 2.x and open_clip's ViT-L-14 'openai' weights in that
    environment's cache), then parses the results with :func:`parse_geneval_results`.

    Args:
        images_dir: the folder :func:`write_geneval_images` made.
        geneval_repo: a clone of djghosh13/geneval.
        python: the python executable of the GenEval environment.
        detector_path: the folder with ``<detector>.pth`` (evaluation/download_models.sh).
        outfile: results jsonl (default ``<images_dir>/geneval_results.jsonl``).
        model_config: mmdet config of the detector (GenEval's default when None).
        options: GenEval ``--options`` (``model``, ``threshold``, ``counting_threshold``, ...).
        env: extra environment variables (e.g. ``HF_HUB_OFFLINE='1'``). PYTHONPATH and
            PYTHONHOME of this process are not passed on: the other environment is separate.
        timeout: seconds before the subprocess is killed.
    Returns:
        the summary dict of :func:`parse_geneval_results`.
    """
    repo = Path(geneval_repo).expanduser()
    script = repo / 'evaluation' / 'evaluate_images.py'
    if not repo.is_dir():
        raise GenEvalError(f'GenEval repository not found at {repo}; clone {GENEVAL_SOURCE}')
    if not script.is_file():
        raise GenEvalError(f'{script} not found: {repo} is not a GenEval clone '
                           f'({GENEVAL_SOURCE})')
    python = _check_executable(python)
    images = Path(images_dir).expanduser()
    if not images.is_dir() or not any(p.is_dir() and p.name.isdigit() and
                                       (p / 'metadata.jsonl').is_file() for p in images.iterdir()):
        raise GenEvalError(f'{images} holds no GenEval prompt folders (00000/metadata.jsonl, '
                           f'00000/samples/0000.png, ...): make it with write_geneval_images')
    options = {k: str(v) for k, v in (options or {}).items()}
    detector = Path(detector_path).expanduser()
    weights = detector / f'{options.get("model", GENEVAL_DETECTOR)}.pth'
    if not weights.is_file():
        raise GenEvalError(f'GenEval detector weights {weights} not found; run '
                           f'evaluation/download_models.sh {detector}/ in the GenEval repository')
    outfile = Path(outfile).expanduser() if outfile else images / 'geneval_results.jsonl'
    outfile.parent.mkdir(parents=True, exist_ok=True)
    if outfile.exists():
        outfile.unlink()  # never parse a stale file from an earlier run
    cmd = [python, str(script), str(images), '--outfile', str(outfile), '--model-path',
           str(detector)]
    if model_config:
        cmd += ['--model-config', str(model_config)]
    if options:
        cmd += ['--options', *[f'{k}={v}' for k, v in options.items()]]
    child_env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    child_env.update({k: str(v) for k, v in (env or {}).items()})
    try:
        proc = subprocess.run(cmd, cwd=str(repo), env=child_env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise GenEvalError(f'GenEval did not finish within {timeout} s: {" ".join(cmd)}') from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or '')[-3000:]
        raise GenEvalError(f'GenEval failed (exit code {proc.returncode}): {" ".join(cmd)}\n'
                           f'--- its output (tail) ---\n{tail}')
    if not outfile.is_file():
        raise GenEvalError(f'GenEval exited without writing {outfile}: {" ".join(cmd)}')
    return parse_geneval_results(outfile)


def parse_geneval_results(path: str | os.PathLike) -> dict:
    """Summary of a GenEval results jsonl (one record per image: ``tag``, ``correct``,
    ``metadata``, ...), computed as GenEval's ``summary_scores.py`` does.

    Returns ``dict(overall, tasks={tag: accuracy}, counts={tag: [correct, total]}, num_images,
    num_prompts, correct_images, correct_prompts)``: ``overall`` is the mean of the per-task
    accuracies (tasks in order of first appearance), ``correct_prompts`` the fraction of prompts
    (by metadata) with at least one correct image.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenEvalError(f'GenEval results file {path} not found')
    records = []
    for lineno, line in enumerate(path.read_text(encoding='utf-8').splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenEvalError(f'{path}, line {lineno}: not valid JSON ({exc.msg})') from None
        missing = [k for k in ('tag', 'correct') if k not in record]
        if missing:
            raise GenEvalError(f'{path}, line {lineno}: a GenEval record lacks {missing}')
        records.append(record)
    if not records:
        raise GenEvalError(f'{path} holds no results (no images were scored?)')
    counts: dict[str, list[int]] = {}
    prompts: dict[str, bool] = {}
    for record in records:
        ok = bool(record['correct'])
        count = counts.setdefault(record['tag'], [0, 0])
        count[0] += int(ok)
        count[1] += 1
        key = record.get('metadata') or json.dumps([record['tag'], record.get('prompt')])
        prompts[key] = prompts.get(key, False) or ok
    tasks = {tag: c / n for tag, (c, n) in counts.items()}
    return dict(overall=float(np.mean(list(tasks.values()))), tasks=tasks, counts=counts,
                num_images=len(records), num_prompts=len(prompts),
                correct_images=sum(c for c, _ in counts.values()) / len(records),
                correct_prompts=sum(prompts.values()) / len(prompts))


def format_geneval_summary(summary: dict) -> str:
    """The summary as text, like GenEval's summary_scores.py prints it."""
    lines = [f'Total images: {summary["num_images"]}', f'Total prompts: {summary["num_prompts"]}',
             f'% correct images: {summary["correct_images"]:.2%}',
             f'% correct prompts: {summary["correct_prompts"]:.2%}', '']
    for tag, acc in summary['tasks'].items():
        correct, total = summary['counts'][tag]
        lines.append(f'{tag:<16} = {acc:.2%} ({correct} / {total})')
    lines += ['', f'Overall score (avg. over tasks): {summary["overall"]:.5f}']
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# the whole protocol
# ------------------------------------------------------------------------------------------------
def evaluate_paper_protocol(model, paper_eval: dict, out_dir: str | os.PathLike,
                            benchmarks: Sequence[str] = ('coco', 'hpsv2', 'geneval'),
                            device: str | None = None, progress: bool = True) -> dict:
    """Run the benchmarks of a config's ``paper_eval`` dict (configs/_base_/paper_evaluation.py)
    whose paths are set; returns ``{benchmark: results}`` (skipped ones: ``None``)."""
    unknown = set(benchmarks) - {'coco', 'hpsv2', 'geneval'}
    if unknown:
        raise ValueError(f'unknown benchmarks {sorted(unknown)}; use coco, hpsv2, geneval')
    sampling = dict(paper_eval.get('sampling', {}))
    out = Path(out_dir).expanduser()
    results: dict = {}
    if 'coco' in benchmarks:
        c = paper_eval['coco']
        results['coco'] = None if not (c.get('captions') and c.get('real_folder')) else \
            coco_protocol(model, c['captions'], c['real_folder'], out / 'coco', c['clip'],
                          num_images=c.get('num_images', 30000),
                          fid_mode=c.get('fid_mode', 'clean'),
                          caption_prefix=c.get('caption_prefix', 'A photo depicts '),
                          device=device, progress=progress, **sampling)
    if 'hpsv2' in benchmarks:
        h = paper_eval['hpsv2']
        results['hpsv2'] = None if not h.get('prompts_dir') else hpsv2_benchmark(
            model, h['prompts_dir'], out / 'hpsv2', h['reward'], device=device,
            progress=progress, **sampling)
    if 'geneval' in benchmarks:
        g = paper_eval['geneval']
        results['geneval'] = None
        if g.get('metadata'):
            images = write_geneval_images(model, g['metadata'], out / 'geneval',
                                          g.get('images_per_prompt', 4), progress=progress,
                                          **sampling)
            if g.get('repo') and g.get('python') and g.get('detector'):
                results['geneval'] = run_geneval(images, g['repo'], g['python'], g['detector'])
    return results
