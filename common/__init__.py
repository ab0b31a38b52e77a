"""fedtl's framework-independent core, in layers (docs/architecture.md):

- ``config``, ``errors``, ``storage``, ``protocol``, ``report``: shared by everything;
- ``data``, ``features``, ``privacy``: images, the frozen base, DP training and accounting;
- ``site``, ``personal``: one site's round, composed from the layers above;
- ``deploy`` and ``cli``: the edges (Flower's processes, the command line). Nothing in the
  core imports them, Flower's framework, ``client``, ``server`` or ``simulations``
  (tests/test_layers.py checks it).
"""

import os

# tensorflow-privacy's DP models need Keras 2 (tf-keras); TensorFlow reads this once, at its
# first import, and every module that touches TensorFlow lives in this package.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On a GPU, TensorFlow would otherwise take all its memory in the first process, leaving none
# for the other sites sharing it (Flower's own switch for this is not honoured in 1.39).
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
