# Pretraining model of the toy policy: frozen toy tokenizer + trained text encoder and policy.
_base_ = ['./toy_backbone.py']
model = dict(type='PolicyPretrainModel', tokenizer={{_base_.toy_tokenizer}},
             text_encoder={{_base_.toy_text_encoder}}, policy={{_base_.toy_policy}})
