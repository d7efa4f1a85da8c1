# FSDP (PyTorch FullyShardedDataParallel) through MMEngine's FlexibleRunner: parameters, gradients
# and optimizer states sharded over the ranks. For models that train through forward(mode='loss')
# with ONE optimizer: policy pretraining / SFT of a large backbone (PolicyPretrainModel).
# NOT RankEModel (three optimizers, its own train_step): tools/train.py refuses that combination;
# RankE runs data parallel (configs/_base_/ranke_runtime.py). See docs/distributed.md.
# Needs GPUs: FSDP refuses CPU-only machines, so this file is checked here for loading and for the
# names it uses, never run.
#   _base_ = ['../_base_/strategies/fsdp.py', ...]; launch with torchrun ... --launcher pytorch
runner_type = 'FlexibleRunner'
strategy = dict(
    type='FSDPStrategy',
    model_wrapper=dict(
        # one FSDP unit per >= 20M parameters (a LlamaGen-XL / Janus-Pro-1B block is 20-50M)
        auto_wrap_policy=dict(type='torch.distributed.fsdp.wrap.size_based_auto_wrap_policy',
                              min_num_params=int(2e7)),
        use_orig_params=True),
    # full (unsharded) weights in the checkpoints, so tools/sample.py and resume read them as usual
    state_dict_cfg='full')
