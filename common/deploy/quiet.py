"""TensorFlow's start-up chatter kept from operators' terminals unless they ask (--verbose).

TensorFlow's C++ core writes oneDNN, CUDA and absl notices straight to file descriptor 2 while
it loads, before any Python logging or TF_CPP_MIN_LOG_LEVEL can apply, so the only way to
keep them out is to point that descriptor elsewhere for the duration of the import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null for the block (Python's own errors still raise)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def load_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow, tf-keras and tensorflow-privacy now; quietly unless ``verbose``."""
    if verbose:
        import common.privacy.dp  # noqa: F401
        return
    with native_stderr_to_devnull():
        import common.privacy.dp  # noqa: F401
        import tensorflow as tf

        tf.config.list_logical_devices()  # CUDA's probe (cuInit) speaks when devices start
    # AutoGraph's notes about functions it leaves as they are (tensorflow-privacy's).
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
