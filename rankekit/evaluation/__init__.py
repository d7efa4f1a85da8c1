"""rankekit.evaluation: metrics and the feature networks they use."""
from rankekit.evaluation import feature_extractors  # noqa: F401  InceptionFeatures
from rankekit.evaluation import metrics  # noqa: F401  FID, CLIP score, LCS, compositional
from rankekit.evaluation import protocols  # noqa: F401  the paper's protocol (COCO, HPSv2, GenEval)
