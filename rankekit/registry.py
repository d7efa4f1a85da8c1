"""Every registry of rankekit, in one place.

Domain registries (tokenizers, policies, text encoders, rewards, ranking losses, anchors, ...) are
roots of their own in the ``rankekit`` scope. The engine registries (models, hooks, datasets,
metrics, ...) are children of MMEngine's, so that an MMEngine ``Runner`` with
``default_scope='rankekit'`` finds our components first and MMEngine's built-ins as a fallback.

Every registry has ``locations``: the modules that define its members are imported on first use
(``build``, ``get``, ``rankekit list``), never at ``import rankekit``. Plugins announced through
the ``rankekit.plugins`` entry-point group are imported at the same moment (see
:mod:`rankekit.plugins`).
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry as _MMEngineRegistry

SCOPE = 'rankekit'


class Registry(_MMEngineRegistry):
    """An MMEngine registry that also imports the installed ``rankekit.plugins``.

    The first lookup in any rankekit registry imports, once per process, every plugin announced
    through the entry-point group, so that a plugin's components are found by config building and
    by ``rankekit list`` without any import in user code. A plugin that fails to import raises
    :class:`rankekit.plugins.PluginImportError` naming the plugin and the original exception.
    """

    def import_from_location(self) -> None:
        if not self._imported:
            from rankekit.plugins import load_entry_point_plugins
            load_entry_point_plugins()
        super().import_from_location()


def _domain(name: str, location: str | list[str], doc: str, build_func=None) -> Registry:
    locations = [location] if isinstance(location, str) else list(location)
    registry = Registry(name, build_func=build_func, scope=SCOPE, locations=locations)
    registry.__doc__ = doc
    return registry


def _build_reward(cfg, registry, default_args=None):
    # duck-typed rewards (a plain nn.Module or callable) come back wrapped as a BaseReward
    from rankekit.rewards.adapter import build_reward_from_cfg
    return build_reward_from_cfg(cfg, registry, default_args)


# --- domain registries ------------------------------------------------------------------------
TOKENIZERS = _domain('tokenizer', 'rankekit.tokenizers',
                     'VQ tokenizers: image <-> grid of codebook indices.')
POLICIES = _domain('policy', 'rankekit.policies',
                   'Autoregressive policies over codebook indices (with samplers).')
TEXT_ENCODERS = _domain('text encoder', 'rankekit.text_encoders',
                        'Prompt encoders giving (B, T, D) embeddings and a (B, T) mask.')
REWARDS = _domain('reward', 'rankekit.rewards',
                  'Reward models: images in [0, 1] + prompts -> one score per image.',
                  build_func=_build_reward)
RANK_LOSSES = _domain('rank loss', 'rankekit.losses',
                      'Ranking-based policy objectives over groups of rollouts.')
RANK_WEIGHTS = _domain('rank weights', 'rankekit.losses',
                       'Per-rollout weights for the decoder phase, computed from rewards.')
ANCHORS = _domain('anchor', 'rankekit.anchors',
                  'Stability anchors (KL, EMA, L2) usable on the policy or on the decoder.')
LOSSES = _domain('loss', 'rankekit.losses',
                 'Decoder-side losses: perceptual distances, adversarial losses.')
FEATURE_EXTRACTORS = _domain('feature extractor',
                             ['rankekit.evaluation', 'rankekit.toy.feature_net'],
                             'Image feature networks for FID-style metrics.')

# --- children of MMEngine's engine registries ---------------------------------------------------
MODELS = Registry('model', parent=MMENGINE_MODELS, scope=SCOPE,
                  locations=['rankekit.models', 'rankekit.toy.pretraining'])
MODEL_WRAPPERS = Registry('model wrapper', parent=MMENGINE_MODEL_WRAPPERS, scope=SCOPE,
                          locations=['rankekit.models'])
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=MMENGINE_WEIGHT_INITIALIZERS,
                               scope=SCOPE, locations=['rankekit.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope=SCOPE,
                    locations=['rankekit.datasets'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope=SCOPE,
                         locations=['rankekit.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope=SCOPE,
                      locations=['rankekit.datasets'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope=SCOPE, locations=['rankekit.engine'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope=SCOPE, locations=['rankekit.engine'])
OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, scope=SCOPE,
                      locations=['rankekit.engine'])
OPTIM_WRAPPERS = Registry('optim wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope=SCOPE,
                          locations=['rankekit.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope=SCOPE,
                                      locations=['rankekit.engine'])
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS, scope=SCOPE,
                            locations=['rankekit.engine'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope=SCOPE,
                   locations=['rankekit.evaluation'])
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, scope=SCOPE,
                     locations=['rankekit.evaluation'])
VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, scope=SCOPE,
                       locations=['rankekit.engine'])
VISBACKENDS = Registry('vis_backend', parent=MMENGINE_VISBACKENDS, scope=SCOPE,
                       locations=['rankekit.engine'])
# runners (``runner_type`` of a config): SafeRunner, with crash-safe checkpoints
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, scope=SCOPE, locations=['rankekit.engine'])

#: The registries ``rankekit list`` shows, by the name a user types.
ALL_REGISTRIES = {
    'tokenizers': TOKENIZERS,
    'policies': POLICIES,
    'text_encoders': TEXT_ENCODERS,
    'rewards': REWARDS,
    'rank_losses': RANK_LOSSES,
    'rank_weights': RANK_WEIGHTS,
    'anchors': ANCHORS,
    'losses': LOSSES,
    'feature_extractors': FEATURE_EXTRACTORS,
    'models': MODELS,
    'model_wrappers': MODEL_WRAPPERS,
    'datasets': DATASETS,
    'transforms': TRANSFORMS,
    'hooks': HOOKS,
    'loops': LOOPS,
    'optim_wrapper_constructors': OPTIM_WRAPPER_CONSTRUCTORS,
    'metrics': METRICS,
    'visualizers': VISUALIZERS,
    'runners': RUNNERS,
}
