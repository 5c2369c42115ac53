"""Former name of :mod:`explainer.targets` (the public target classes), kept so old imports work."""

from explainer.targets import (  # noqa: F401
    ClassTarget,
    FunctionTarget,
    PerImageTargets,
    SegmentationTarget,
    SimilarityTarget,
    Target,
    as_target,
    is_target_callable,
)
