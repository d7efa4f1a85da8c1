"""rankekit.datasets: the toy shapes dataset, prompt lists, image-caption data (``DATASETS``)."""
from .image_caption import ImageCaptionFolder, PackImageCaption, WebDatasetTars
from .prompts import PromptList, ToyPrompts, toy_eval_prompts
from .toy_shapes import (COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, VOCAB, ToyShapes,
                         parse_caption)

__all__ = ['ToyShapes', 'PromptList', 'ImageCaptionFolder', 'WebDatasetTars', 'PackImageCaption',
           'ToyPrompts', 'toy_eval_prompts', 'parse_caption',
           'COLOURS', 'SHAPES', 'SIZES', 'POSITIONS', 'RELATIONS', 'VOCAB']
