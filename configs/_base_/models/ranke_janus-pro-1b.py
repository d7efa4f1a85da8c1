# RankE on Janus-Pro-1B (generation path, 384 px): the EFFECTIVE settings of the released scripts
# (each value's comment says where it comes from). Architectures and hyper-parameters only: the
# leaf configs set the Janus directory (pretrained=...) and the reward(s). What differs from
# LlamaGen-XL: CFG 5.0, 576 tokens (24x24), EMA-anchor weight 5, reward backprop 0.05 (and KL
# beta 0.01 with HPSv2).
_base_ = ['./ranke_llamagen-xl.py']
model = dict(
    # Janus's gen_vision_model is a LlamaGen VQ-16: 16384 codes of dim 8, 24x24 grid at 384 px
    tokenizer=dict(_delete_=True, type='JanusVQ', arch='VQ-16', image_size=384),
    # the language model + gen heads; its architecture comes from the directory's config.json
    # keep_lm_head=False: the unused 102400 x 2048 text head is not built (nor copied into the
    # reference / EMA policies); its key in the file is skipped with a note
    policy=dict(_delete_=True, type='JanusProPolicy', image_token_num=576, keep_lm_head=False),
    # Janus SFT template + tokenizer -> left-padded prompt ids
    text_encoder=dict(_delete_=True, type='JanusPromptEncoder'),
    decoder_anchor=dict(weight=5.0),
    rollout=dict(cfg_scale=5.0),
    decoder_cfg=dict(reward_weight=0.05))
