"""Plumbing shared by the metrics: building networks, reading generated and real images, caches.

- :func:`build_network`: a config dict (built through a registry) or an already-built module;
- :func:`generated_images` / :func:`generated_field`: read what ``RankEModel.val_step`` returned;
- :class:`RealImages`: real images in [0, 1] from a dataset config, a dataset or an image folder;
- :func:`cached_arrays`: an ``.npz`` cache of reference data, recomputed when its key changes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


def build_network(cfg, registry, what: str):
    """``cfg`` built through ``registry`` if it is a dict, returned as is if already built."""
    if isinstance(cfg, dict):
        if 'type' not in cfg:
            raise ValueError(f"{what} config needs a 'type' key (a name in the {registry.name} "
                             f'registry), got keys {sorted(cfg)}')
        return registry.build(cfg)
    if isinstance(cfg, torch.nn.Module) or callable(cfg):
        return cfg
    raise TypeError(f'{what} must be a config dict or a built module, got {type(cfg).__name__}')


def module_device(module, default: str = 'cpu') -> torch.device:
    """Device of the first parameter or buffer of ``module`` (``default`` when it has none)."""
    if isinstance(module, torch.nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return torch.device(default)


def follow_device(module, tensor: torch.Tensor) -> None:
    """Move a metric's network to the device of the generated tensors (a GPU run's samples stay
    on the GPU, so does the network); no-op for plain callables and on the same device."""
    if isinstance(module, torch.nn.Module) and module_device(module) != tensor.device:
        module.to(tensor.device)


def module_fingerprint(module, prefixes: Sequence[str] | None = None) -> str:
    """sha1 of a module's class and state_dict (names, shapes, values); ``prefixes`` restricts it
    to the entries whose name starts with one of them. Not a module: its type name only."""
    if not isinstance(module, torch.nn.Module):
        return type(module).__qualname__
    digest = hashlib.sha1(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        if prefixes is not None and not name.startswith(tuple(prefixes)):
            continue
        value = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{value.dtype}:{tuple(value.shape)}'.encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b'')
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# generated samples (RankEModel.val_step outputs)
# ------------------------------------------------------------------------------------------------
def generated_field(data_samples: Sequence, key: str) -> list:
    """``sample[key]`` of every sample (dicts or objects with that attribute); clear error if
    one lacks it."""
    values = []
    for i, sample in enumerate(data_samples):
        value = sample.get(key) if isinstance(sample, dict) else getattr(sample, key, None)
        if value is None:
            have = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
            raise KeyError(f"data_samples[{i}] has no '{key}' (has {have}); the model's val_step "
                           f"must return dicts with '{key}' (RankEModel returns caption, tokens, "
                           f'image)')
        values.append(value)
    return values


def generated_images(data_samples: Sequence, key: str = 'image') -> torch.Tensor:
    """Stack the generated images of a batch: FloatTensor (N, 3, H, W) in [0, 1]."""
    images = generated_field(data_samples, key)
    images = torch.stack([torch.as_tensor(img) for img in images]) if images else torch.empty(0)
    return check_images(images, 'generated images')


def check_images(images: torch.Tensor, what: str) -> torch.Tensor:
    """Validate (N, 3, H, W) images in [0, 1]; uint8 is divided by 255; returns float."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'{what} must be (N, 3, H, W), got shape {tuple(images.shape)}')
    if images.dtype == torch.uint8:
        return images.float() / 255
    images = images.float()
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(f'{what} must lie in [0, 1], got range [{images.min().item():.3f}, '
                         f'{images.max().item():.3f}] (images in [-1, 1]? map them with '
                         f'(x + 1) / 2)')
    return images


# ------------------------------------------------------------------------------------------------
# real images
# ------------------------------------------------------------------------------------------------
def _crop_resize(image, size: int | None):
    """PIL image -> centre square crop resized to ``size`` (bicubic); ``None`` keeps it."""
    if size is None:
        return image
    from PIL import Image
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image.resize((size, size), Image.Resampling.BICUBIC) if side != size else image


class ImageFolder:
    """Every image file under ``root`` (recursive, sorted) as FloatTensor[3, H, W] in [0, 1].

    Args:
        root: folder of ``.png`` / ``.jpg`` / ``.jpeg`` / ``.bmp`` / ``.webp`` files.
        image_size: centre-crop to a square and resize to this side (bicubic); ``None`` keeps each
            file's size (then all files must have the same size to be batched).
    """

    def __init__(self, root: str | os.PathLike, image_size: int | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f'real image folder not found: {self.root}')
        self.files = sorted(p for p in self.root.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f'no image files ({", ".join(IMAGE_SUFFIXES)}) under '
                                    f'{self.root}')
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = _crop_resize(image.convert('RGB'), self.image_size)
                pixels = np.asarray(image, dtype=np.uint8).copy()
        except (OSError, ValueError) as exc:
            raise OSError(f'cannot read real image {path}: {exc}') from exc
        return dict(image=torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)

    def describe(self) -> dict:
        # names and sizes: a changed, added or removed file changes the description
        listing = hashlib.sha1()
        for path in self.files:
            listing.update(f'{path.relative_to(self.root)}:{path.stat().st_size};'.encode())
        return dict(folder=str(self.root.resolve()), files=len(self.files),
                    listing_sha1=listing.hexdigest(), image_size=self.image_size)


class RealImages:
    """Real images in [0, 1] for reference statistics, from any of three sources.

    Args:
        real: a dataset config (``dict(type='ToyShapes', split='val', num_samples=1000)``, built
            through ``DATASETS``), a built dataset whose items are dicts with ``'image'`` (or
            image tensors), or a folder of image files (str / Path).
        num_real: use the first ``num_real`` images (``None``: all of them).
        image_size: for folders only: centre-crop and resize every image to this side.
    """

    def __init__(self, real, num_real: int | None = None, image_size: int | None = None):
        self.config = real
        if isinstance(real, (str, os.PathLike)):
            self.dataset = ImageFolder(real, image_size)
        elif isinstance(real, dict):
            from rankekit.registry import DATASETS
            if 'type' not in real:
                raise ValueError(f"real dataset config needs a 'type' key, got keys {sorted(real)}")
            self.dataset = DATASETS.build(real)
        elif hasattr(real, '__getitem__') and hasattr(real, '__len__'):
            self.dataset = real
        else:
            raise TypeError(f'real must be a dataset config dict, a dataset or an image folder '
                            f'path, got {type(real).__name__}')
        available = len(self.dataset)
        if num_real is None:
            num_real = available
        if not isinstance(num_real, int) or num_real < 1:
            raise ValueError(f'num_real must be a positive int (or None for all), got {num_real!r}')
        if num_real > available:
            raise ValueError(f'num_real={num_real} but the real set has only {available} images; '
                             f'lower num_real or enlarge the real set (e.g. num_samples=)')
        self.num_real = num_real

    def __len__(self) -> int:
        return self.num_real

    def image(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        image = item['image'] if isinstance(item, dict) else item
        if not isinstance(image, torch.Tensor):
            raise TypeError(f'real dataset item {index} has no image tensor (got '
                            f'{type(image).__name__}); items must be dicts with an "image" '
                            f'FloatTensor[3, H, W] in [0, 1]')
        return image

    def batches(self, batch_size: int = 64) -> Iterator[torch.Tensor]:
        """Batches (B, 3, H, W) in [0, 1] of the first ``num_real`` images, in order."""
        for start in range(0, self.num_real, batch_size):
            stop = min(start + batch_size, self.num_real)
            images = [self.image(i) for i in range(start, stop)]
            shapes = {tuple(img.shape) for img in images}
            if len(shapes) > 1:
                raise ValueError(f'real images {start}..{stop - 1} have different shapes '
                                 f'{sorted(shapes)}; give image_size= (folders) or a dataset '
                                 f'pipeline that resizes them')
            yield check_images(torch.stack(images), f'real images {start}..{stop - 1}')

    def describe(self) -> dict:
        """What the real set is, for cache keys: the source, its size and a hash of a few images."""
        if isinstance(self.dataset, ImageFolder):
            source = self.dataset.describe()
        elif isinstance(self.config, dict):
            source = dict(config=self.config)
        else:
            simple = {k: v for k, v in vars(self.dataset).items()
                      if isinstance(v, (int, float, str, bool, tuple, type(None)))}
            source = dict(dataset=type(self.dataset).__qualname__, attributes=simple)
        probe = hashlib.sha1()  # a changed renderer / file content changes the first images
        for i in sorted({0, self.num_real // 2, self.num_real - 1}):
            probe.update(self.image(i).float().contiguous().numpy().tobytes())
        return dict(source=source, num_real=self.num_real, probe_sha1=probe.hexdigest())


# ------------------------------------------------------------------------------------------------
# on-disk cache
# ------------------------------------------------------------------------------------------------
def cache_key(description: dict) -> str:
    """A stable string for a description dict (json, sorted keys; unknown objects by ``str``)."""
    return json.dumps(description, sort_keys=True, default=str)


def cached_arrays(path: str | os.PathLike | None, key: str,
                  compute: Callable[[], dict], logger: Callable[[str], None] | None = None) -> dict:
    """Arrays from the ``.npz`` cache at ``path`` if its stored ``key`` equals ``key``, else
    ``compute()`` (a dict of arrays) written there together with the key. ``path=None``: no cache.

    A cache written for another extractor / tokenizer / real set has another key: it is reported
    through ``logger`` and recomputed (never silently reused).
    """
    log = logger or (lambda msg: None)
    if path is not None:
        path = Path(path).expanduser()
        if path.suffix != '.npz':
            raise ValueError(f'reference cache must be an .npz path, got {path}')
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    stored = str(data['key']) if 'key' in data.files else None
                    arrays = {k: data[k] for k in data.files if k != 'key'}
            except (OSError, ValueError) as exc:
                log(f'reference cache {path} is unreadable ({exc}); recomputing it')
                stored = None
            if stored == key:
                return arrays
            if stored is not None:
                log(f'reference cache {path} was computed for another setting (stale key); '
                    f'recomputing it')
    arrays = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + '.tmp.npz')  # atomic: a killed run leaves no half file
        np.savez(tmp, key=np.array(key), **arrays)
        os.replace(tmp, path)
    return arrays


def cached_floor(reference_cache: str | os.PathLike | None, reference_key: str, floor_real,
                 num: int, compute: Callable[[], dict], what: str) -> dict:
    """A metric's "real floor" data: ``compute()`` over its ``floor_real`` images (a
    :class:`RealImages`), cached beside its reference cache with ``_floor`` added to the name and
    keyed by the reference and the floor set. ``num`` generated samples need as many floor images.
    """
    if num > len(floor_real):
        raise ValueError(f'the {what} real floor needs as many floor_real images as generated '
                         f'samples: {num} generated, floor_real has {len(floor_real)}; enlarge '
                         f'floor_real (e.g. num_samples={num})')
    cache = (None if reference_cache is None
             else str(Path(reference_cache).with_suffix('')) + '_floor.npz')
    key = cache_key(dict(reference=reference_key, floor_real=floor_real.describe()))
    from mmengine.logging import print_log
    return cached_arrays(cache, key, compute, logger=lambda msg: print_log(msg, logger='current'))
