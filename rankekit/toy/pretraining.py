"""Registers the toy pretraining models (MODELS) used by configs/pretrain/."""
from rankekit.toy.pretrain_clip import ClipPretrainModel
from rankekit.toy.pretrain_feature_net import FeatureNetPretrainModel
from rankekit.toy.pretrain_policy import PolicyPretrainModel
from rankekit.toy.pretrain_text_encoder import TextEncoderPretrainModel
from rankekit.toy.pretrain_tokenizer import VQPretrainModel

__all__ = ['ClipPretrainModel', 'FeatureNetPretrainModel', 'PolicyPretrainModel',
           'TextEncoderPretrainModel', 'VQPretrainModel']
