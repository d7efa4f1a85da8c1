"""The toy world's data: procedurally drawn, captioned scenes of one or two coloured shapes.

Every image is drawn with numpy from a scene (attributes + a little jitter) that is itself drawn
from a generator seeded by ``(seed, split, index)``: no files, no global RNG, the same item on
every machine and in every worker. Captions come from several templates; :func:`parse_caption`
inverts all of them, so rewards and metrics can read the attributes back from any prompt.

Attributes are ids into the module-level word lists :data:`COLOURS`, :data:`SHAPES`,
:data:`SIZES`, :data:`POSITIONS`; a scene is a ``(2, 4)`` array (rows: object 1, object 2;
columns: colour, shape, size, position), with a row of -1 for an absent object.

Two-object captions carry a relation ("left of", "right of", "above", "below") derived from the
two positions on a 3x3 grid (ties on diagonals read horizontally). Where a relation and one
position pin down the other position, a template may leave that position out:
"a small red circle left of a large blue square" always means left / right (the canonical pair of
the relation), "... left of a large blue square in the center" means left / center (the only
fit), "... left of a large blue square on the right" means left / right (the canonical partner).
A scene gets such a short caption only when it reads back exactly (so left / top never gets
"a small red circle on the left left of a large blue square", which means left / right).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rankekit.registry import DATASETS

COLOURS = ['red', 'green', 'blue', 'yellow', 'purple', 'cyan']
SHAPES = ['circle', 'square', 'triangle', 'cross']
SIZES = ['small', 'large']
POSITIONS = ['left', 'right', 'top', 'bottom', 'center']
RELATIONS = ['left of', 'right of', 'above', 'below']
ATTRIBUTE_NAMES = ('colour', 'shape', 'size', 'position')

#: every word a caption template can produce (the toy text encoder's vocabulary, fixed order)
VOCAB = ['a', 'above', 'and', 'at', 'below', 'blue', 'bottom', 'center', 'circle', 'cross',
         'cyan', 'green', 'in', 'large', 'left', 'middle', 'of', 'on', 'photo', 'purple', 'red',
         'right', 'small', 'square', 'the', 'top', 'triangle', 'yellow']

COLOUR_RGB = np.array([[0.90, 0.12, 0.12],   # red
                       [0.15, 0.75, 0.20],   # green
                       [0.15, 0.30, 0.95],   # blue
                       [0.95, 0.85, 0.10],   # yellow
                       [0.60, 0.20, 0.80],   # purple
                       [0.10, 0.85, 0.90]],  # cyan
                      dtype=np.float32)
# position -> (x, y) centre in [0, 1] image units (y down) and -> cell of a 3x3 grid for relations
POSITION_XY = np.array([[0.18, 0.5], [0.82, 0.5], [0.5, 0.18], [0.5, 0.82], [0.5, 0.5]])
POSITION_GRID = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]])
# half-extent of a shape in image units; the two positions of a scene are >= 0.32 apart
SIZE_RADIUS = np.array([0.08, 0.13])
SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}
DEFAULT_NUM_SAMPLES = {'train': 20000, 'val': 1000, 'test': 1000}

# ------------------------------------------------------------------------------------------------
# captions
# ------------------------------------------------------------------------------------------------
# two phrasings per position; the parser reads the position word itself
_POSITION_PHRASES = [('on the left', 'at the left'), ('on the right', 'at the right'),
                     ('at the top', 'on the top'), ('at the bottom', 'on the bottom'),
                     ('in the center', 'in the middle')]
# {s} size, {c} colour, {h} shape, {p} position phrase; two objects add 1/2 suffixes, {r} relation
_ONE_OBJECT_TEMPLATES = ['a {s} {c} {h} {p}', 'a {c} {h}, {s}, {p}', '{p}, a {s} {c} {h}',
                         'a photo of a {s} {c} {h} {p}', 'a {s} {h} in {c} {p}']
_TWO_OBJECT_TEMPLATES = ['a {s1} {c1} {h1} {p1} and a {s2} {c2} {h2} {p2}',
                         'a {s1} {c1} {h1} {p1}, {r} a {s2} {c2} {h2} {p2}',
                         'a {s1} {c1} {h1} {r} a {s2} {c2} {h2} {p2}',  # if (r, p2) gives p1
                         'a {s1} {c1} {h1} {p1} {r} a {s2} {c2} {h2}',  # if (p1, r) gives p2
                         'a {s1} {c1} {h1} {r} a {s2} {c2} {h2}']       # canonical pairs only
# the positions a relation means when a caption names neither
_CANONICAL_PAIRS = {0: (0, 1), 1: (1, 0), 2: (2, 3), 3: (3, 2)}
_SYNONYMS = {'centre': 'center', 'middle': 'center', 'big': 'large', 'tiny': 'small',
             'little': 'small', 'violet': 'purple'}
_WORD_TO_ATTRIBUTE = {word: (col, idx) for col, words in enumerate((COLOURS, SHAPES, SIZES,
                                                                     POSITIONS))
                      for idx, word in enumerate(words)}


def relation_of(position1: int, position2: int) -> int:
    """Id in :data:`RELATIONS` of object 1 relative to object 2 (positions must differ)."""
    if position1 == position2:
        raise ValueError(f'two objects at the same position ({POSITIONS[position1]}) have no '
                         f'relation')
    dx, dy = POSITION_GRID[position1] - POSITION_GRID[position2]
    if abs(dx) >= abs(dy):  # diagonal neighbours read horizontally
        return 0 if dx < 0 else 1
    return 2 if dy < 0 else 3


def _other_position(relation: int, known: int, known_is_first: bool) -> int:
    """The other object's position given the relation and one position, or -1.

    Unique when only one position fits; otherwise the relation's canonical partner of ``known``
    ("X left of Y on the right": X on the left), else unknown.
    """
    found = [p for p in range(len(POSITIONS)) if p != known
             and relation_of(*((known, p) if known_is_first else (p, known))) == relation]
    if len(found) == 1:
        return found[0]
    first, second = _CANONICAL_PAIRS[relation]
    if known == (first if known_is_first else second):
        return second if known_is_first else first
    return -1


def tokenize_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it on anything that is not a letter."""
    return re.findall(r'[a-z]+', text.lower())


def parse_caption(caption: str) -> torch.Tensor:
    """Read the attributes of a toy caption back: ``LongTensor[2, 4]``, -1 where not stated.

    Inverts every template of :func:`make_caption` and is forgiving with other text: unknown
    words are skipped, a repeated attribute (a second colour, ...) or "and" / a relation starts the
    next object, and at most two objects are read. A relation fills a position the caption leaves
    out when the relation and the other position determine it (or gives the canonical pair when
    neither position is stated). Never raises on a string.
    """
    out = torch.full((2, 4), -1, dtype=torch.long)
    if not isinstance(caption, str):
        return out
    words = [_SYNONYMS.get(w, w) for w in tokenize_words(caption)]
    objects, relation, relation_after = [[-1] * 4], None, None
    i = 0
    while i < len(words):
        word = words[i]
        is_relation = (word in ('left', 'right') and i + 1 < len(words) and words[i + 1] == 'of'
                       ) or word in ('above', 'below')
        if is_relation or word == 'and':
            if is_relation and relation is None:
                relation = RELATIONS.index(word + ' of' if word in ('left', 'right') else word)
                # the relation links the object read so far to the next (none: ignored)
                relation_after = len(objects) - 1 if objects[-1] != [-1] * 4 else -1
            if objects[-1] != [-1] * 4:
                objects.append([-1] * 4)
            i += 2 if word in ('left', 'right') else 1
            continue
        if word in _WORD_TO_ATTRIBUTE:
            col, idx = _WORD_TO_ATTRIBUTE[word]
            if objects[-1][col] != -1:  # a second colour/shape/... describes a new object
                objects.append([-1] * 4)
            objects[-1][col] = idx
        i += 1
    objects = [obj for obj in objects if obj != [-1] * 4][:2]
    if len(objects) == 2 and relation is not None and relation_after == 0:
        first, second = objects
        if first[3] == -1 and second[3] == -1:
            first[3], second[3] = _CANONICAL_PAIRS[relation]
        elif first[3] == -1:
            first[3] = _other_position(relation, second[3], known_is_first=False)
        elif second[3] == -1:
            second[3] = _other_position(relation, first[3], known_is_first=True)
    for row, obj in enumerate(objects):
        out[row] = torch.tensor(obj)
    return out


def _fill(template: str, attributes: np.ndarray, phrase_choice: Sequence[int]) -> str:
    fields, two = {}, attributes[1, 0] >= 0
    for k, (colour, shape, size, position) in enumerate(attributes.tolist()):
        if colour < 0:
            continue
        suffix = str(k + 1) if two else ''
        fields.update({f'c{suffix}': COLOURS[colour], f'h{suffix}': SHAPES[shape],
                       f's{suffix}': SIZES[size],
                       f'p{suffix}': _POSITION_PHRASES[position][phrase_choice[k]]})
    if two:
        fields['r'] = RELATIONS[relation_of(int(attributes[0, 3]), int(attributes[1, 3]))]
    return template.format(**fields)


def caption_candidates(attributes, phrase_choice: Sequence[int] = (0, 0)) -> list[str]:
    """All template captions of a scene that :func:`parse_caption` reads back exactly."""
    attributes = np.asarray(attributes, dtype=np.int64).reshape(2, 4)
    two = attributes[1, 0] >= 0
    templates = _TWO_OBJECT_TEMPLATES if two else _ONE_OBJECT_TEMPLATES
    captions = [_fill(t, attributes, phrase_choice) for t in templates]
    target = torch.from_numpy(attributes)
    return [c for c in captions if torch.equal(parse_caption(c), target)]


@functools.lru_cache(maxsize=None)
def _valid_templates(position1: int, position2: int) -> tuple[int, ...]:
    """Templates that round-trip for these positions (only positions decide it; -1: one object)."""
    scene = np.array([[0, 0, 0, position1], [1, 1, 1, position2] if position2 >= 0 else [-1] * 4])
    templates = _TWO_OBJECT_TEMPLATES if position2 >= 0 else _ONE_OBJECT_TEMPLATES
    return tuple(i for i, t in enumerate(templates)
                 if torch.equal(parse_caption(_fill(t, scene, (0, 1))), torch.from_numpy(scene)))


def make_caption(attributes, rng: np.random.Generator) -> str:
    """A caption for a scene, the template and phrasing picked by ``rng``."""
    attributes = np.asarray(attributes, dtype=np.int64).reshape(2, 4)
    phrase_choice = rng.integers(0, 2, size=2).tolist()
    two = attributes[1, 0] >= 0
    valid = _valid_templates(int(attributes[0, 3]), int(attributes[1, 3]) if two else -1)
    if not valid:  # cannot happen for scenes sample_scene draws
        raise ValueError(f'no caption template describes the scene {attributes.tolist()}')
    template = (_TWO_OBJECT_TEMPLATES if two else _ONE_OBJECT_TEMPLATES)[
        valid[int(rng.integers(len(valid)))]]
    return _fill(template, attributes, phrase_choice)


# ------------------------------------------------------------------------------------------------
# scenes and drawing
# ------------------------------------------------------------------------------------------------
def sample_scene(rng: np.random.Generator, max_objects: int = 2, two_object_prob: float = 0.5,
                 pos_jitter: float = 0.0, size_jitter: float = 0.0):
    """Draw ``(attributes (2, 4), centres (2, 2), radii (2,))``; positions are distinct."""
    attributes = np.full((2, 4), -1, dtype=np.int64)
    centres, radii = np.zeros((2, 2)), np.zeros(2)
    num = 2 if max_objects >= 2 and rng.random() < two_object_prob else 1
    first_position = int(rng.integers(len(POSITIONS)))
    positions = [first_position, (first_position + 1 + int(rng.integers(len(POSITIONS) - 1)))
                 % len(POSITIONS)]
    for k in range(num):
        attributes[k] = [rng.integers(len(COLOURS)), rng.integers(len(SHAPES)),
                         rng.integers(len(SIZES)), positions[k]]
        centres[k] = POSITION_XY[positions[k]] + rng.uniform(-pos_jitter, pos_jitter, size=2)
        radii[k] = SIZE_RADIUS[attributes[k, 2]] * (1 + rng.uniform(-size_jitter, size_jitter))
    return attributes, centres, radii


def _box_sdf(x, y, half_w, half_h):
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


_EDGE_NORM = np.hypot(1.8, 1.0)


def shape_sdf(shape: int, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (image units, < 0 inside) to a shape of half-extent ``radius`` at (0, 0)."""
    if shape == 0:  # circle
        return np.hypot(x, y) - radius
    if shape == 1:  # square, a little smaller than its box so that areas stay comparable
        return _box_sdf(x, y, 0.85 * radius, 0.85 * radius)
    if shape == 2:  # upward triangle: apex (0, -r), base y = 0.8 r from x = -r to r
        sides = np.maximum(1.8 * x - y - radius, -1.8 * x - y - radius) / _EDGE_NORM
        return np.maximum(sides, y - 0.8 * radius)
    if shape == 3:  # plus-shaped cross: union of two bars
        thickness = 0.4 * radius
        return np.minimum(_box_sdf(x, y, radius, thickness), _box_sdf(x, y, thickness, radius))
    raise ValueError(f'shape id {shape} is not in 0..{len(SHAPES) - 1} ({SHAPES})')


def render_scene(attributes, centres, radii, image_size: int = 32, antialias: bool = True,
                 background: Sequence[float] = (0.0, 0.0, 0.0), colours=None) -> np.ndarray:
    """Draw a scene: float32 array ``(3, H, W)`` in [0, 1], objects painted in order.

    Args:
        colours: optional ``(2, 3)`` RGB per object (for colour jitter); default the palette.
    """
    coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    image = np.empty((3, image_size, image_size), dtype=np.float32)
    image[:] = np.asarray(background, dtype=np.float32)[:, None, None]
    for k in range(2):
        colour, shape = int(attributes[k][0]), int(attributes[k][1])
        if colour < 0:
            continue
        x = coords[None, :] - np.float32(centres[k][0])
        y = coords[:, None] - np.float32(centres[k][1])
        sdf = shape_sdf(shape, x, y, np.float32(radii[k])) * image_size  # in pixels
        # coverage of a pixel ~ how far inside the edge its centre lies (cheap anti-aliasing)
        alpha = np.clip(0.5 - sdf, 0, 1) if antialias else (sdf <= 0).astype(np.float32)
        rgb = COLOUR_RGB[colour] if colours is None else np.asarray(colours[k], np.float32)
        image += alpha[None] * (rgb[:, None, None] - image)
    return image


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------
@DATASETS.register_module()
class ToyShapes(Dataset):
    """Procedural captioned shapes (1-2 objects; colour/shape/size/position), no files.

    Item ``index`` of ``split`` is drawn from a numpy generator seeded by ``(seed, split,
    index)``, so items do not depend on access order, workers or other items; the splits use
    different seeds (their scenes are independent draws from the same distribution).

    Items: ``dict(image=FloatTensor[3, H, W] in [0, 1], caption=str,
    attributes=LongTensor[2, 4], num_objects=int, index=int)`` (rows of ``attributes``: object
    1, object 2 or -1; columns: colour, shape, size, position ids into COLOURS, SHAPES, SIZES,
    POSITIONS). mmengine's ``default_collate`` batches them.

    Args:
        split: 'train', 'val' or 'test'.
        num_samples: items in the split; default 20000 / 1000 / 1000.
        image_size: side in pixels (32 or 64 in the recipes; any size >= 8 works).
        seed: dataset seed.
        max_objects: 1 or 2.
        two_object_prob: probability of a two-object scene when ``max_objects`` is 2.
        pos_jitter: uniform jitter of object centres, in image units (0.025 ~ 0.8 px at 32 px).
        size_jitter: relative uniform jitter of object sizes.
        antialias: smooth edges (pixel coverage from the signed distance).
        background: RGB of the plain background.
        colour_jitter: uniform jitter of each object's RGB (0 = exact palette).
        noise_std: std of Gaussian pixel noise added to the image (clipped to [0, 1]).
        cache: keep drawn images in memory (float32: 12 KiB per 32 px image).
        pipeline: optional list of transform configs / callables applied to each item dict.
    """

    info_example = dict(type='ToyShapes', num_samples=8)
    METAINFO = dict(colours=COLOURS, shapes=SHAPES, sizes=SIZES, positions=POSITIONS,
                    relations=RELATIONS)

    def __init__(self, split: str = 'train', num_samples: int | None = None,
                 image_size: int = 32, seed: int = 0, max_objects: int = 2,
                 two_object_prob: float = 0.5, pos_jitter: float = 0.025,
                 size_jitter: float = 0.06, antialias: bool = True,
                 background: Sequence[float] = (0.0, 0.0, 0.0), colour_jitter: float = 0.0,
                 noise_std: float = 0.0, cache: bool = False, pipeline=None):
        if split not in SPLIT_IDS:
            raise ValueError(f"ToyShapes split must be one of {list(SPLIT_IDS)}, got {split!r}")
        num_samples = DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples
        if not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f'ToyShapes num_samples must be an int >= 0, got {num_samples!r}')
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f'ToyShapes image_size must be an int >= 8, got {image_size!r}')
        if max_objects not in (1, 2):
            raise ValueError(f'ToyShapes max_objects must be 1 or 2, got {max_objects!r}')
        if not 0.0 <= two_object_prob <= 1.0:
            raise ValueError(f'ToyShapes two_object_prob must be in [0, 1], got {two_object_prob}')
        if not 0.0 <= pos_jitter <= 0.05 or not 0.0 <= size_jitter <= 0.2:
            raise ValueError(f'ToyShapes pos_jitter must be in [0, 0.05] and size_jitter in '
                             f'[0, 0.2] (larger values let objects leave their position or '
                             f'overlap), got {pos_jitter}, {size_jitter}')
        if len(background) != 3:
            raise ValueError(f'ToyShapes background must be an RGB triple, got {background!r}')
        self.split, self.num_samples, self.seed = split, num_samples, seed
        self.image_size = image_size
        self.max_objects, self.two_object_prob = max_objects, two_object_prob
        self.pos_jitter, self.size_jitter, self.antialias = pos_jitter, size_jitter, antialias
        self.background = tuple(float(v) for v in background)
        self.colour_jitter, self.noise_std = colour_jitter, noise_std
        self._cache = {} if cache else None
        self.pipeline = self._build_pipeline(pipeline)

    @staticmethod
    def _build_pipeline(pipeline):
        if not pipeline:
            return None
        from mmengine.dataset import Compose  # only when a pipeline is configured
        return Compose(pipeline)

    @property
    def metainfo(self) -> dict:
        """Attribute vocabularies (saved by mmengine's runner in checkpoints)."""
        return dict(self.METAINFO)

    def __len__(self) -> int:
        return self.num_samples

    def rng(self, index: int) -> np.random.Generator:
        """The generator that draws item ``index`` (SeedSequence hashes seed, split, index)."""
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])

    def scene(self, index: int) -> dict:
        """Item ``index`` before the pipeline, as numpy arrays (drawn, or from the cache)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f'ToyShapes index {index} out of range for {self.num_samples} '
                             f'{self.split} samples')
        if self._cache is not None and index in self._cache:
            return dict(self._cache[index])
        rng = self.rng(index)
        attributes, centres, radii = sample_scene(rng, self.max_objects, self.two_object_prob,
                                                  self.pos_jitter, self.size_jitter)
        caption = make_caption(attributes, rng)
        colours = None
        if self.colour_jitter > 0:
            colours = np.clip(COLOUR_RGB[np.maximum(attributes[:, 0], 0)]
                              + rng.uniform(-self.colour_jitter, self.colour_jitter, (2, 3)), 0, 1)
        image = render_scene(attributes, centres, radii, self.image_size, self.antialias,
                             self.background, colours)
        if self.noise_std > 0:
            image = np.clip(image + self.noise_std * rng.standard_normal(image.shape, np.float32),
                            0, 1)
        scene = dict(image=image, caption=caption, attributes=attributes,
                     num_objects=int((attributes[:, 0] >= 0).sum()), index=index)
        if self._cache is not None:
            self._cache[index] = scene
        return dict(scene)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += self.num_samples
        item = self.scene(index)
        # copies: a caller writing into its item must not change a cached scene
        item['image'] = torch.from_numpy(item['image'].copy())
        item['attributes'] = torch.from_numpy(item['attributes'].copy())
        return self.pipeline(item) if self.pipeline is not None else item

    def write_folder(self, out_dir: str | Path, num: int | None = None,
                     progress: bool = False) -> Path:
        """Write the first ``num`` items as PNGs + ``captions.jsonl``; returns the captions file.

        Each line of ``captions.jsonl``: ``{"file_name": "train_000000.png", "caption": ...,
        "attributes": [[c, h, s, p], [...]], "num_objects": n}`` (the image-folder format).
        PNGs are 8-bit, so pixel values round to multiples of 1/255.
        """
        from PIL import Image  # only for export

        num = len(self) if num is None else min(int(num), len(self))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        captions_file = out_dir / 'captions.jsonl'
        bar = None
        if progress:
            from rich.progress import Progress
            bar = Progress()
            task = bar.add_task(f'writing {num} {self.split} images to {out_dir}', total=num)
            bar.start()
        try:
            with open(captions_file, 'w', encoding='utf-8') as f:
                for index in range(num):
                    item = self.scene(index)
                    name = f'{self.split}_{index:06d}.png'
                    pixels = np.round(item['image'].transpose(1, 2, 0) * 255).astype(np.uint8)
                    Image.fromarray(pixels).save(out_dir / name)
                    f.write(json.dumps(dict(file_name=name, caption=item['caption'],
                                            attributes=item['attributes'].tolist(),
                                            num_objects=item['num_objects'])) + '\n')
                    if bar is not None:
                        bar.advance(task)
        finally:
            if bar is not None:
                bar.stop()
        return captions_file
