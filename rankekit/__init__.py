"""rankekit: ranking-based RL post-training for discrete text-to-image models (RankE).

Importing the package is cheap: components are imported lazily by the registries in
:mod:`rankekit.registry` (``build``, ``rankekit list``), never here.
"""
__version__ = '0.1.0'
