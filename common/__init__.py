"""fedtl's framework-independent core: data, model, DP training, accounting, reports."""

import os

# tensorflow-privacy's DP models need Keras 2 (tf-keras); TensorFlow reads this once, at its
# first import, and every module that touches TensorFlow lives in this package.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On a GPU, TensorFlow would otherwise take all its memory in the first process, leaving none
# for the other sites sharing it (Flower's own switch for this is not honoured in 1.39).
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
