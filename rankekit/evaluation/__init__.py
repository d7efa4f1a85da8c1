"""rankekit.evaluation: metrics and the feature networks they use."""
from rankekit.evaluation import feature_extractors  # noqa: F401  InceptionFeatures
from rankekit.toy import feature_net  # noqa: F401  ToyFeatureNet
from rankekit.evaluation import metrics  # noqa: F401  FID, CLIP score, LCS, compositional
