# DeepSpeed ZeRO stage 2 through MMEngine's FlexibleRunner: optimizer states and gradients
# sharded over the ranks, bf16 weights. For models that train through forward(mode='loss') with
# ONE optimizer: policy pretraining / SFT of a large backbone (PolicyPretrainModel).
# NOT RankEModel (three optimizers, its own train_step): tools/train.py refuses that combination;
# RankE runs data parallel (configs/_base_/ranke_runtime.py). See docs/distributed.md.
# Needs GPUs and `pip install deepspeed` (not a rankekit dependency): checked here for loading and
# for the names it uses, never run.
runner_type = 'FlexibleRunner'
strategy = dict(
    type='DeepSpeedStrategy',
    bf16=dict(enabled=True),
    gradient_clipping=1.0,
    zero_optimization=dict(
        stage=2, allgather_partitions=True, allgather_bucket_size=int(2e8),
        reduce_scatter=True, reduce_bucket_size=int(2e8), overlap_comm=True,
        contiguous_gradients=True))
# DeepSpeed owns the optimizer step: the wrapper must be DeepSpeed's (the optimizer stays yours)
optim_wrapper = dict(type='DeepSpeedOptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.01))
