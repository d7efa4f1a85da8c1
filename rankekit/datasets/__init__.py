"""rankekit.datasets: the toy shapes dataset, prompt lists (registered in ``DATASETS``)."""
from .prompts import PromptList, ToyPrompts, toy_eval_prompts
from .toy_shapes import (COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, VOCAB, ToyShapes,
                         parse_caption)

__all__ = ['ToyShapes', 'PromptList', 'ToyPrompts', 'toy_eval_prompts', 'parse_caption',
           'COLOURS', 'SHAPES', 'SIZES', 'POSITIONS', 'RELATIONS', 'VOCAB']
