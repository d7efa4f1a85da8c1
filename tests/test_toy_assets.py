"""The shipped toy checkpoints: present, small, loading strictly into the toy architectures."""
from pathlib import Path

import pytest
import torch

from rankekit.apis.config import load_config
from rankekit.registry import (FEATURE_EXTRACTORS, MODELS, POLICIES, REWARDS, TEXT_ENCODERS,
                               TOKENIZERS)
from rankekit.utils.toy_assets import (ASSET_DIR, TOY_ASSETS, MissingToyAssetError,
                                      toy_asset_path)
from rankekit.utils.weights import WeightsFileError, load_weights_file

REPO = Path(__file__).resolve().parents[1]
BACKBONE = load_config(str(REPO / 'configs/_base_/models/toy_backbone.py'))
ASSETS = {
    'vq.pt': (TOKENIZERS, 'toy_tokenizer'),
    'vq_l1.pt': (TOKENIZERS, 'toy_tokenizer'),
    'vq_disc.pt': (MODELS, 'toy_discriminator'),
    'policy.pt': (POLICIES, 'toy_policy'),
    'text_encoder.pt': (TEXT_ENCODERS, 'toy_text_encoder'),
    'feature_net.pt': (FEATURE_EXTRACTORS, 'toy_feature_net'),
    'reward_classifier.pt': (FEATURE_EXTRACTORS, 'toy_reward_classifier'),
    'clip.pt': (REWARDS, 'toy_clip'),
    'clip_eval.pt': (REWARDS, 'toy_clip_eval'),
}


def test_assets_ship_within_budget():
    files = {p.name: p.stat().st_size for p in ASSET_DIR.glob('*.pt')}
    assert set(ASSETS) <= set(files), f'missing: {set(ASSETS) - set(files)}'
    assert sum(files.values()) <= 40e6


def test_decoder_stage_keeps_the_codes_of_stage_one():
    """vq.pt (stage 2, decoder trained with L1 + perceptual + GAN) has stage 1's encoder,
    quant_conv and codebook bit for bit: the policy's codes are the same with either."""
    stage1, stage2 = (load_weights_file(f'toy://{name}') for name in ('vq_l1.pt', 'vq.pt'))
    encoder_keys = [k for k in stage1 if k.startswith(('encoder.', 'quant_conv.', 'quantize.'))]
    assert encoder_keys and all(torch.equal(stage1[k], stage2[k]) for k in encoder_keys)


@pytest.mark.parametrize('name', sorted(ASSETS))
def test_asset_loads_strictly_into_its_architecture(name):
    registry, key = ASSETS[name]
    cfg = dict(BACKBONE[key].to_dict(), pretrained=f'toy://{name}')
    module = registry.build(cfg)  # strict: a wrong architecture raises a shape report
    # the module holds the file's tensors (not its random init)
    stored, held = load_weights_file(f'toy://{name}'), module.state_dict()
    # a wrapper (e.g. the reward around its CLIP) holds the file's keys under a prefix
    prefix = max({h[:len(h) - len(k)] for k in stored for h in held
                  if h == k or h.endswith('.' + k)},
                 key=lambda p: sum(p + k in held for k in stored))
    shared = [k for k in stored if prefix + k in held]
    assert len(shared) >= 0.9 * len(stored), f'{name}: keys {sorted(stored)[:5]} not in module'
    assert all(torch.equal(held[prefix + k].to(stored[k].dtype), stored[k]) for k in shared), name


def test_missing_asset_names_the_rebuild_command(tmp_path):
    with pytest.raises(MissingToyAssetError, match='python tools/prepare_toy_assets.py'):
        toy_asset_path('toy://nope.pt')
    with pytest.raises(MissingToyAssetError, match='nope.pt'):
        load_weights_file('toy://nope.pt')
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(toy_asset_path('vq.pt').read_bytes()[:1000])
    with pytest.raises(WeightsFileError, match='truncated or corrupt'):
        load_weights_file(truncated)


def test_every_asset_has_one_stage_and_the_policy_stage_keeps_the_text_encoder_frozen():
    """Each shipped file is written by exactly one stage of tools/prepare_toy_assets.py; the
    policy stage loads the pretrained text encoder and freezes it (so text_encoder.pt is the
    encoder the policy was trained with, as LlamaGen's T5)."""
    from tiny_components import load_tool
    tool = load_tool('prepare_toy_assets')
    written = [file for _, exports in tool.STAGES.values() for file in exports]
    assert sorted(written) == sorted(ASSETS)
    assert sorted(TOY_ASSETS) == sorted(ASSETS)  # a missing one gets the rebuild hint, not a typo's
    stages = list(tool.STAGES)
    assert stages.index('text_encoder') < stages.index('policy')
    policy_cfg = load_config(str(REPO / tool.STAGES['policy'][0]))
    assert policy_cfg.model.freeze_text_encoder is True
    assert policy_cfg.model.text_encoder.pretrained == 'toy://text_encoder.pt'


def test_a_rebuild_folder_comes_before_the_shipped_assets(tmp_path):
    """prepare_toy_assets --out-dir: inside assets_built_in, toy:// finds what earlier stages
    wrote there, falls back to the package for the rest, and the package again afterwards."""
    from rankekit.utils.toy_assets import assets_built_in
    (tmp_path / 'text_encoder.pt').write_bytes(b'fresh')
    with assets_built_in(tmp_path):
        assert toy_asset_path('toy://text_encoder.pt') == tmp_path / 'text_encoder.pt'
        assert toy_asset_path('toy://policy.pt') == ASSET_DIR / 'policy.pt'
        with pytest.raises(MissingToyAssetError, match='not a toy asset name'):
            toy_asset_path('toy://text_encoderr.pt')
    assert toy_asset_path('toy://text_encoder.pt') == ASSET_DIR / 'text_encoder.pt'


def test_held_out_clip_is_never_a_reward():
    """The evaluation's clip_heldout CLIP is no reward in any config: what RL or the decoder's
    reward term optimises must not be what the CLIP column measures."""
    from rankekit.rewards.toy_clip import TOY_CLIP_EVAL_NAME, TOY_CLIP_NAME
    evaluation = load_config(str(REPO / 'configs/_base_/toy_evaluation.py'))
    prefixes = {m['prefix']: (m['clip']['model_name'], m['clip']['pretrained'])
                for m in evaluation.val_evaluator if m['type'] == 'ClipScoreMetric'}
    assert prefixes == {'clip_heldout': (TOY_CLIP_EVAL_NAME, 'toy://clip_eval.pt'),
                        'clip_train': (TOY_CLIP_NAME, 'toy://clip.pt')}

    def rewards_in(node, in_reward=False):
        """Every reward dict under ``node``: a registered reward type, or anything below a key
        that names a reward (``rewards=``, ``reward_model=``, ...)."""
        if isinstance(node, dict):
            kind = node.get('type')
            if in_reward or (isinstance(kind, str) and REWARDS.get(kind) is not None):
                yield node
            for key, value in node.items():
                yield from rewards_in(value, in_reward or 'reward' in str(key))
        elif isinstance(node, (list, tuple)):
            for item in node:
                yield from rewards_in(item, in_reward)

    checked = 0
    for path in sorted((REPO / 'configs').rglob('*.py')):
        if '_base_' in path.parts:  # fragments: the configs that inherit them are checked
            continue
        cfg = load_config(str(path))
        # what training builds: the model and the hooks (not the evaluators)
        for reward in rewards_in([cfg.get('model'), cfg.get('custom_hooks')]):
            checked += 1
            assert 'clip_eval' not in repr(reward) and TOY_CLIP_EVAL_NAME not in repr(reward), (
                f'{path.relative_to(REPO)} trains against the held-out evaluation CLIP: {reward}')
    assert checked  # the scan does see the rewards of the recipes


def test_toy_tables_and_plots_default_to_both_clip_columns():
    """New runs' tables show both CLIP columns and the Pareto plot the held-out one; archived
    studies (clip_score/mean) name their metrics on the command line (model_zoo.md)."""
    import inspect

    from tiny_components import load_tool

    from rankekit.analysis.ablation import DEFAULT_METRICS
    from rankekit.analysis.curves import plot_pareto
    evaluation = load_config(str(REPO / 'configs/_base_/toy_evaluation.py'))
    clip_columns = [f"{m['prefix']}/mean" for m in evaluation.val_evaluator
                    if m['type'] == 'ClipScoreMetric']
    assert [m for m in DEFAULT_METRICS if 'clip' in m] == clip_columns
    assert inspect.signature(plot_pareto).parameters['x_key'].default == 'clip_heldout/mean'
    assert load_tool('analysis/plot_curves').parse_args(['run']).x == 'clip_heldout/mean'
