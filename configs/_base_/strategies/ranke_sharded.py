# Sharded RankE: the policy and its reference / EMA copies sharded over the ranks with torch
# FSDP2 inside RankE's own train_step (docs/distributed.md). Launch with torchrun ... --launcher
# pytorch; checkpoints hold full tensors. Not with model.lora.
model_wrapper_cfg = dict(type='rankekit.RankEDataParallel', shard_policy=True)
