# Runtime of every RankE run: the default runtime plus the hook that schedules co-evolution.
_base_ = ['./default_runtime.py']
default_hooks = dict(
    # both phases on every rollout (sync, as released); tau 4 -> 1 by cosine over the first 20%
    coevolution=dict(type='CoEvolutionHook', schedule='sync', train_mode='both',
                     tau=dict(type='cosine', start=4.0, end=1.0, stop=0.2)),
    summary=dict(type='TrainingSummaryHook'))
custom_hooks = [dict(type='RichProgressHook',
                     keys=['reward/mean', 'policy/kl', 'decoder/l1', 'decoder/anchor'])]
# distributed runs (--launcher pytorch/slurm): RankEModel runs its own train_step on every rank,
# gradients averaged inside its updates (see docs/distributed.md); one process ignores this.
# The name carries its scope: MMEngine looks model wrappers up in its own root registry
model_wrapper_cfg = dict(type='rankekit.RankEDataParallel')
