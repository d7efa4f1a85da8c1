"""Rewards: images in [0, 1] + prompts -> one score per image (see :class:`BaseReward`).

Importing this package registers the rewards in ``rankekit.registry.REWARDS``; heavy libraries
(open_clip) are imported only when a reward is built.
"""
from rankekit.rewards.adapter import as_reward, build_reward
from rankekit.rewards.aesthetic import Aesthetic
from rankekit.rewards.attribute_reward import AttributeReward
from rankekit.rewards.base import BaseReward
from rankekit.rewards.callable_reward import CallableReward
from rankekit.rewards.clip_score import ClipScore
from rankekit.rewards.combiner import RewardCombiner
from rankekit.rewards.hpsv2 import HPSv2
from rankekit.rewards.image_reward import ImageReward
from rankekit.rewards.pickscore import PickScore
from rankekit.rewards.remote import RemoteReward

__all__ = ['BaseReward', 'Aesthetic', 'AttributeReward', 'CallableReward', 'ClipScore', 'HPSv2',
           'ImageReward', 'PickScore', 'RemoteReward', 'RewardCombiner', 'as_reward',
           'build_reward']
