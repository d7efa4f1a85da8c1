# The toy attribute reward: the shipped attribute classifier scores how many prompted attributes
# (colour, shape, size, position of every object) an image gets right, as a product in [0, 1].
toy_attribute_reward = dict(
    type='AttributeReward', mode='product', name='toy_attr',
    classifier=dict(type='ToyFeatureNet', width=24, feat_dim=96,
                    pretrained='toy://reward_classifier.pt'))
