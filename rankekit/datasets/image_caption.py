"""Real image-caption data: an image folder + captions file, or local webdataset-style tar shards.

Both datasets are MMEngine ``BaseDataset``\\ s driven by ``mmcv.transforms`` pipelines, as in the
OpenMMLab toolkits, and yield what RankE's decoder phase reads: ``dict(image=FloatTensor[3, H, W]
in [0, 1], caption=str)`` (the last transform, :class:`PackImageCaption`, makes it). A typical
pipeline (``configs/_base_/datasets/image_caption.py``)::

    [dict(type='LoadImageFromFile', imdecode_backend='pillow'),      # folder dataset only
     dict(type='Resize', scale=(256, 256 * 1000), keep_ratio=True,   # short side -> 256
          interpolation='bicubic', backend='pillow'),
     dict(type='CenterCrop', crop_size=256),
     dict(type='PackImageCaption')]

A sample whose image is missing, truncated or not an image is never used silently: with
``on_corrupt='skip'`` a :class:`CorruptSampleWarning` names the file and the next sample is used
instead; with ``on_corrupt='error'`` a :class:`CorruptSampleError` names it and stops the run.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import os.path as osp
import re
import tarfile
import warnings
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform, LoadImageFromFile
from mmengine.dataset import BaseDataset

from rankekit.datasets.prompts import read_jsonl
from rankekit.registry import DATASETS, TRANSFORMS

__all__ = ['ImageCaptionFolder', 'WebDatasetTars', 'PackImageCaption', 'CorruptSampleError',
           'CorruptSampleWarning', 'read_captions_file', 'expand_shards']

_ON_CORRUPT = ('skip', 'error')
IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp')
CAPTION_EXTENSIONS = ('txt', 'json')


class CorruptSampleError(RuntimeError):
    """A sample's image (or caption) is missing or cannot be decoded; ``path`` names it."""

    def __init__(self, path: str, why: str):
        super().__init__(f'corrupt sample {path}: {why}. Remove or replace the file, or build '
                         f"the dataset with on_corrupt='skip' to skip such samples (with a "
                         f'warning)')
        self.path, self.why = path, why


class CorruptSampleWarning(UserWarning):
    """A corrupt sample was skipped (``on_corrupt='skip'``); the message names its path."""


@TRANSFORMS.register_module()
class PackImageCaption(BaseTransform):
    """Pack mmcv results into ``dict(image=FloatTensor[3, H, W] in [0, 1], caption=str)``.

    Reads ``results['img']`` (H, W, C uint8 as loaded by mmcv, BGR; a 2-D grey image is
    repeated to 3 channels) and ``results['caption']``.

    Args:
        to_rgb: flip mmcv's BGR channel order to RGB (keep True for mmcv loaders).
        meta_keys: extra ``results`` keys copied as they are (e.g. ``('img_path',)``).
    """

    info_example = dict(type='PackImageCaption')

    def __init__(self, to_rgb: bool = True, meta_keys: Sequence[str] = ()):
        self.to_rgb, self.meta_keys = to_rgb, tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        img = results.get('img')
        if not isinstance(img, np.ndarray):
            raise KeyError("PackImageCaption needs results['img'] (an image array): put a loader "
                           '(LoadImageFromFile) at the start of the pipeline')
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"PackImageCaption expects an (H, W, 3) image, got {img.shape} for "
                             f"{results.get('img_path')}")
        if self.to_rgb:
            img = img[..., ::-1]
        # uint8 (or to_float32 loaders' float) pixel values in [0, 255] -> [0, 1]
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255.0
        packed = dict(image=image, caption=str(results.get('caption', '')))
        for key in self.meta_keys:
            packed[key] = results[key]
        return packed

    def __repr__(self) -> str:
        return f'{type(self).__name__}(to_rgb={self.to_rgb}, meta_keys={self.meta_keys})'


def _is_loader(transform) -> bool:
    return isinstance(transform, LoadImageFromFile)


class _CaptionDataset(BaseDataset):
    """Shared behaviour: corrupt-sample handling and a deterministic fallback sample."""

    def __init__(self, on_corrupt: str = 'skip', **kwargs):
        if on_corrupt not in _ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {_ON_CORRUPT}, got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        self.skipped: list[str] = []  # paths skipped so far (in this process)
        # built through rankekit's registry: PackImageCaption is found without a default scope
        kwargs['pipeline'] = [TRANSFORMS.build(t) if isinstance(t, dict) else t
                              for t in kwargs.get('pipeline', [])]
        super().__init__(**kwargs)

    def _run_pipeline(self, results: dict, path: str):
        """Apply the pipeline; a failing loader step becomes a :class:`CorruptSampleError`."""
        for transform in self.pipeline.transforms:
            if _is_loader(transform):
                local = getattr(transform, 'backend_args', None) is None  # not s3/http/...
                if local and not osp.isfile(results['img_path']):
                    raise CorruptSampleError(path, 'the image file does not exist')
                try:
                    results = transform(results)
                except Exception as exc:  # noqa: BLE001 - any decoder failure means "corrupt"
                    raise CorruptSampleError(path, f'cannot decode the image ({exc})') from exc
                if results is None:
                    raise CorruptSampleError(path, 'the image loader returned nothing')
            else:
                results = transform(results)
                if results is None:
                    return None
        return results

    def __getitem__(self, idx: int) -> dict:
        if not self._fully_initialized:
            self.full_init()
        if len(self) == 0:
            raise IndexError(f'{type(self).__name__} is empty')
        for _ in range(self.max_refetch + 1):
            try:
                data = self.prepare_data(idx)
            except CorruptSampleError as exc:
                if self.on_corrupt == 'error':
                    raise
                self.skipped.append(exc.path)
                warnings.warn(f'skipping corrupt sample {exc.path}: {exc.why}',
                              CorruptSampleWarning, stacklevel=2)
                data = None
            if data is not None:
                return data
            idx = (idx + 1) % len(self)  # deterministic fallback: the next sample
        raise RuntimeError(f'{type(self).__name__}: {self.max_refetch + 1} samples in a row could '
                           f'not be used (last skipped: {self.skipped[-1:]}); check the data')


# ------------------------------------------------------------------------------------------------
# image folder + captions file
# ------------------------------------------------------------------------------------------------
def _read_jsonl(path: str, file_key: str, caption_key: str) -> list[tuple[str, str]]:
    return [(str(record[file_key]), str(record[caption_key]))
            for _, record in read_jsonl(path, (file_key, caption_key), 'captions file')]


def _read_csv(path: str, file_key: str, caption_key: str) -> list[tuple[str, str]]:
    with open(path, encoding='utf-8', newline='') as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if file_key not in columns or caption_key not in columns:
            raise ValueError(f'captions file {path}: the header must name the columns '
                             f'"{file_key}" and "{caption_key}" (e.g. "{file_key},{caption_key}"), '
                             f'got {columns}')
        return [(row[file_key], row[caption_key]) for row in reader]


def _read_coco_json(path: str) -> list[tuple[str, str]]:
    with open(path, encoding='utf-8') as f:
        data = json.load(f)
    if not isinstance(data, dict) or 'images' not in data or 'annotations' not in data:
        raise ValueError(f'captions file {path}: a .json file must be a COCO captions file with '
                         f'"images" and "annotations" (e.g. captions_val2014.json); use .jsonl '
                         f'for one {{"file_name", "caption"}} object per line')
    names = {img['id']: img['file_name'] for img in data['images']}
    pairs = []
    for ann in data['annotations']:
        if ann['image_id'] not in names:
            raise ValueError(f'captions file {path}: annotation {ann.get("id")} refers to image_id '
                             f'{ann["image_id"]}, which is not in "images"')
        pairs.append((names[ann['image_id']], ann['caption']))
    return pairs


def read_captions_file(path: str, file_key: str = 'file_name',
                       caption_key: str = 'caption') -> list[tuple[str, str]]:
    """``[(file_name, caption)]`` from a ``.jsonl``, ``.csv`` (header ``file_name,caption``) or
    COCO captions ``.json`` file (one pair per annotation, in file order); captions stripped."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'captions file {path} does not exist (set captions_file / '
                                f'data_root in the dataset config)')
    suffix = osp.splitext(path)[1].lower()
    readers = {'.jsonl': lambda: _read_jsonl(path, file_key, caption_key),
               '.csv': lambda: _read_csv(path, file_key, caption_key),
               '.json': lambda: _read_coco_json(path)}
    if suffix not in readers:
        raise ValueError(f'captions file {path}: unsupported extension {suffix!r}; use .jsonl, '
                         f'.csv or a COCO captions .json')
    pairs = [(name, ' '.join(caption.split())) for name, caption in readers[suffix]()]
    if not pairs:
        raise ValueError(f'captions file {path} holds no samples')
    return pairs


@DATASETS.register_module()
class ImageCaptionFolder(_CaptionDataset):
    """Images in a folder + a captions file (.jsonl / .csv / COCO .json) -> dict(image, caption).

    Args:
        data_root: joined in front of ``captions_file`` and ``image_prefix`` when they are
            relative.
        captions_file: ``.jsonl`` (one ``{"file_name": ..., "caption": ...}`` per line), ``.csv``
            with a ``file_name,caption`` header, or a COCO captions ``.json``
            (``annotations/captions_train2014.json``: one sample per caption).
        image_prefix: folder of the images, relative to ``data_root`` (e.g. ``'train2014'``).
        pipeline: mmcv transforms, starting with ``LoadImageFromFile`` and ending with
            :class:`PackImageCaption`.
        on_corrupt: ``'skip'`` (warn with the path, use the next sample) or ``'error'``.
        file_key, caption_key: column / key names in .jsonl and .csv files.
        test_mode, lazy_init, indices, max_refetch: as MMEngine's ``BaseDataset``
            (``max_refetch``: how many unusable samples in a row are tolerated).
    """

    info_example = dict(type='ImageCaptionFolder', data_root='data/coco',
                        captions_file='captions.jsonl', lazy_init=True)

    def __init__(self, data_root: str = '', captions_file: str = '', image_prefix: str = '',
                 pipeline: Sequence = (dict(type='LoadImageFromFile'),
                                       dict(type='PackImageCaption')),
                 on_corrupt: str = 'skip', file_key: str = 'file_name',
                 caption_key: str = 'caption', test_mode: bool = False, lazy_init: bool = False,
                 indices=None, max_refetch: int = 100):
        if not captions_file:
            raise ValueError('ImageCaptionFolder needs captions_file (a .jsonl, .csv or COCO '
                             '.json file)')
        self.file_key, self.caption_key = file_key, caption_key
        super().__init__(on_corrupt=on_corrupt, ann_file=captions_file, data_root=data_root,
                         data_prefix=dict(img_path=image_prefix), pipeline=list(pipeline),
                         test_mode=test_mode, lazy_init=lazy_init, indices=indices,
                         max_refetch=max_refetch)
        if not any(_is_loader(t) for t in self.pipeline.transforms):
            raise ValueError('ImageCaptionFolder pipeline must load the images: start it with '
                             "dict(type='LoadImageFromFile')")

    def load_data_list(self) -> list[dict]:
        folder = self.data_prefix.get('img_path', '')
        items = [dict(img_path=osp.join(folder, name), caption=caption)
                 for name, caption in read_captions_file(self.ann_file, self.file_key,
                                                         self.caption_key)]
        self._check_image_folder(folder, items)
        return items

    def _check_image_folder(self, folder: str, items: list[dict], probe: int = 8) -> None:
        """Fail at build time when the images cannot be where the captions file says (a wrong
        ``data_root`` / ``image_prefix``, an empty folder), rather than skipping every sample."""
        loaders = [t for t in self.pipeline.transforms if _is_loader(t)]
        if not loaders or getattr(loaders[0], 'backend_args', None) is not None:
            return  # remote storage: not checked here
        fix = (f'check data_root={self.data_root!r} and image_prefix (the images are looked up '
               f'as <data_root>/<image_prefix>/<{self.file_key}>)')
        if folder and not osp.isdir(folder):
            raise FileNotFoundError(f'ImageCaptionFolder: the image folder {folder} does not '
                                    f'exist; {fix}')
        head = items[:probe]
        if any(osp.isfile(item['img_path']) for item in head):
            return
        if folder:
            count = sum(1 for e in os.scandir(folder)
                        if e.is_file() and e.name.rsplit('.', 1)[-1].lower() in IMAGE_EXTENSIONS)
            state = 'holds no images' if count == 0 else f'holds {count} images'
        else:
            state = '(no image_prefix: paths are relative to the current directory)'
        raise FileNotFoundError(
            f'ImageCaptionFolder: none of the first {len(head)} images listed in {self.ann_file} '
            f'exists (e.g. {head[0]["img_path"]}); the image folder {folder or "."} {state}. '
            f'{fix[0].upper()}{fix[1:]}')

    def prepare_data(self, idx: int):
        info = self.get_data_info(idx)
        return self._run_pipeline(dict(info, sample_idx=idx), info['img_path'])


# ------------------------------------------------------------------------------------------------
# webdataset-style tar shards (read with the standard tarfile module)
# ------------------------------------------------------------------------------------------------
_BRACES = re.compile(r'\{(\d+)\.\.(\d+)\}')


def expand_shards(shards: str | Sequence[str], data_root: str = '') -> list[str]:
    """Shard paths from globs and webdataset brace ranges (``shard-{000..009}.tar``), sorted per
    pattern; every pattern must match at least one file."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    if not patterns:
        raise ValueError('WebDatasetTars needs at least one shard path or pattern')
    paths = []
    for pattern in patterns:
        if data_root and not osp.isabs(pattern):
            pattern = osp.join(data_root, pattern)
        expanded = [pattern]
        while any(_BRACES.search(p) for p in expanded):
            nxt = []
            for p in expanded:
                m = _BRACES.search(p)
                if m is None:
                    nxt.append(p)
                    continue
                lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
                nxt += [p[:m.start()] + str(i).zfill(width) + p[m.end():]
                        for i in range(lo, hi + 1)]
            expanded = nxt
        found = []
        for p in expanded:
            found += sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if osp.isfile(p) else [])
        if not found:
            raise FileNotFoundError(f'no tar shard matches {pattern!r} (set shards= / data_root= '
                                    f'in the dataset config)')
        paths += found
    return paths


def _split_key(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the file name."""
    folder, base = osp.split(name)
    stem, _, ext = base.partition('.')
    return osp.join(folder, stem), ext.lower()


@DATASETS.register_module()
class WebDatasetTars(_CaptionDataset):
    """Local webdataset tar shards (``{key}.jpg|png`` + ``{key}.txt|json``) -> dict(image, caption).

    The shards are indexed once with :mod:`tarfile` (member offsets only); an item is read by
    seeking into its shard, so any sample can be drawn in any order. The image is decoded here
    (mmcv ``imfrombytes``), so the pipeline starts AFTER loading (Resize, CenterCrop,
    :class:`PackImageCaption`). No ``webdataset`` dependency.

    Args:
        shards: a path, glob or brace range (``'laion/{00000..00099}.tar'``), or a list of them.
        pipeline: mmcv transforms applied to ``dict(img, img_shape, ori_shape, img_path,
            caption)``; must not contain ``LoadImageFromFile``.
        on_corrupt: ``'skip'`` (warn with ``shard:member``, use the next sample) or ``'error'``.
            A shard that cannot be indexed, a sample without caption and an undecodable image
            all count as corrupt.
        data_root: prefix of relative shard paths.
        json_caption_key: the caption key inside ``{key}.json``.
        imdecode_backend: mmcv decode backend (``'pillow'`` raises on truncated files).
    """

    info_example = dict(type='WebDatasetTars', shards='data/shards/{00000..00009}.tar',
                        lazy_init=True)

    def __init__(self, shards: str | Sequence[str],
                 pipeline: Sequence = (dict(type='PackImageCaption'),), on_corrupt: str = 'skip',
                 data_root: str = '', json_caption_key: str = 'caption',
                 imdecode_backend: str = 'pillow', test_mode: bool = False,
                 lazy_init: bool = False, indices=None, max_refetch: int = 100):
        self.shards, self.json_caption_key = shards, json_caption_key
        self.imdecode_backend = imdecode_backend
        super().__init__(on_corrupt=on_corrupt, ann_file='', data_root=data_root,
                         pipeline=list(pipeline), test_mode=test_mode, lazy_init=lazy_init,
                         indices=indices, max_refetch=max_refetch)
        if any(_is_loader(t) for t in self.pipeline.transforms):
            raise ValueError('WebDatasetTars decodes the images from the shards itself: remove '
                             'LoadImageFromFile from its pipeline')

    def _corrupt(self, path: str, why: str) -> None:
        error = CorruptSampleError(path, why)
        if self.on_corrupt == 'error':
            raise error
        self.skipped.append(path)
        warnings.warn(f'skipping corrupt sample {path}: {why}', CorruptSampleWarning, stacklevel=3)

    def _index_shard(self, shard: str) -> list[dict]:
        groups: dict[str, dict] = OrderedDict()
        try:
            with tarfile.open(shard, 'r:') as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = _split_key(member.name)
                    groups.setdefault(key, {})[ext] = (member.name, member.offset_data,
                                                       member.size)
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._corrupt(shard, f'the tar shard cannot be read ({exc}); samples indexed before '
                                 f'the damage are kept')
        items = []
        for key, files in groups.items():
            image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
            caption = next(((e, files[e]) for e in CAPTION_EXTENSIONS if e in files), None)
            if image is None and caption is None:
                continue  # some other payload (e.g. only .cls): not a sample of this dataset
            if image is None or caption is None:
                what = 'image (.jpg/.png/...)' if image is None else 'caption (.txt/.json)'
                self._corrupt(f'{shard}:{key}', f'the sample has no {what}')
                continue
            items.append(dict(shard=shard, key=key, image=image, caption_ext=caption[0],
                              caption=caption[1], img_path=f'{shard}:{image[0]}'))
        return items

    def load_data_list(self) -> list[dict]:
        items = []
        for shard in expand_shards(self.shards, self.data_root):
            items += self._index_shard(shard)
        if not items:
            raise ValueError(f'WebDatasetTars: no complete (image + caption) sample in '
                             f'{self.shards}')
        return items

    @staticmethod
    def _read(shard: str, offset: int, size: int) -> bytes:
        with open(shard, 'rb') as f:
            f.seek(offset)
            return f.read(size)

    def prepare_data(self, idx: int):
        import mmcv
        info = self.get_data_info(idx)
        path = info['img_path']
        _, offset, size = info['image']
        data = self._read(info['shard'], offset, size)
        if len(data) != size:
            raise CorruptSampleError(path, f'the shard ends {size - len(data)} bytes early')
        try:
            img = mmcv.imfrombytes(data, flag='color', backend=self.imdecode_backend)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "corrupt"
            raise CorruptSampleError(path, f'cannot decode the image ({exc})') from exc
        if img is None:
            raise CorruptSampleError(path, 'cannot decode the image')
        name, offset, size = info['caption']
        raw = self._read(info['shard'], offset, size)
        try:
            text = raw.decode('utf-8')
            if info['caption_ext'] == 'json':
                text = json.loads(text)[self.json_caption_key]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorruptSampleError(f'{info["shard"]}:{name}',
                                     f'unreadable caption ({type(exc).__name__}: {exc})') from exc
        results = dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2], img_path=path,
                       caption=' '.join(str(text).split()), sample_idx=idx)
        return self._run_pipeline(results, path)
