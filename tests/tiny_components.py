"""Tiny random RankE components shared by the engine tests (no toy assets needed), and a
loader for the tools/ scripts."""
import importlib.util
from pathlib import Path

from rankekit.registry import REWARDS
from rankekit.rewards.base import BaseReward

IMAGE = 32


@REWARDS.register_module(force=True)
class RednessReward(BaseReward):
    """Test reward: mean of (red - green) over the image; differentiable."""

    differentiable = True
    info_example = dict(type='RednessReward')

    def __init__(self, differentiable: bool = True, poison_after: int | None = None, name=None):
        super().__init__(name=name, differentiable=differentiable)
        self.poison_after = poison_after
        self.calls = 0

    def score(self, images, prompts):
        self.calls += 1
        score = (images[:, 0] - images[:, 1]).mean(dim=(1, 2))
        if self.poison_after is not None and self.calls > self.poison_after:
            score = score.detach().clone()
            score[0] = float('nan')
        return score


def tiny_model_cfg(**overrides):
    cfg = dict(
        type='RankEModel',
        tokenizer=dict(type='VQModel', ch=32, num_res_blocks=1, encoder_ch_mult=[1, 1, 1, 1],
                       decoder_ch_mult=[1, 1, 1, 1], codebook_size=32, codebook_embed_dim=8,
                       z_channels=16, image_size=IMAGE),
        policy=dict(type='LlamaGenGPT', dim=32, n_layer=1, n_head=2, vocab_size=32,
                    block_size=16, cls_token_num=8, caption_dim=16, multiple_of=32,
                    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0),
        text_encoder=dict(type='ToyTextEncoder', embed_dim=16, max_length=8, width=16,
                          num_layers=1, num_heads=2),
        rewards=[dict(type='RednessReward')],
        rank_loss=dict(type='GRPOLoss'),
        rank_weights=dict(type='TopKSoftmaxWeights', top_k=2, tau=1.0),
        policy_anchor=dict(type='KLAnchor', weight=0.05),
        decoder_anchor=dict(type='EMAAnchor', weight=1.0),
        perceptual_loss=dict(type='ToyPerceptualLoss',
                             net=dict(type='ToyFeatureNet', width=8, feat_dim=16)),
        discriminator=dict(type='PatchGANDiscriminator', ndf=8, n_layers=1),
        rollout=dict(group_size=4, temperature=1.0, seed=3),
        policy_cfg=dict(ema_interval=1, ema_decay=0.5),
        decoder_cfg=dict(disc_start=0, ema_decay=0.5))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict) and 'type' not in value:
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def train_blocks(num_samples: int, max_iters: int) -> str:
    """Config text shared by the runner tests: ToyShapes prompts in batches of 2, an iteration
    loop and the three AdamW optimizers of RankE."""
    return f'''\
train_dataloader = dict(batch_size=2, num_workers=0, collate_fn=dict(type='default_collate'),
                        sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
                        dataset=dict(type='ToyShapes', split='train', num_samples={num_samples}))
train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters})
optim_wrapper = dict(
    constructor='MultiOptimWrapperConstructor',
    policy=dict(optimizer=dict(type='AdamW', lr=1e-3), clip_grad=dict(max_norm=1.0)),
    decoder=dict(optimizer=dict(type='AdamW', lr=1e-3)),
    discriminator=dict(optimizer=dict(type='AdamW', lr=1e-3)))'''


REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """Import tools/<name>.py as a module (tools/ is not a package), e.g. 'plan_memory' or
    'analysis/archive_runs'."""
    spec = importlib.util.spec_from_file_location(name.replace('/', '.'),
                                                  REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
