"""Features: turn a task's raw frame into the arrays a network trains on.

`TabularPreprocessor` (encoders, imputation, scaling) and `TargetCodec` (labels or values to
training targets and back) follow the fit/transform contract; both are fitted on the
training rows only and saved with the model.
"""

from modelyard.features.preprocessing import TabularPreprocessor, build_preprocessor
from modelyard.features.target import TargetCodec

__all__ = ["TabularPreprocessor", "TargetCodec", "build_preprocessor"]
