"""Silence what native libraries (TensorFlow, LiteRT) print straight to file descriptors 1 and 2."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_quiet() -> Iterator[io.TextIOWrapper]:
    """Redirect fds 1 and 2 to /dev/null; yields a stream on the real stderr for progress output."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    real_stderr = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()):
            yield real_stderr
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        real_stderr.close()


def import_keras():
    """Import Keras and its backend without their start-up chatter; a clear error when not installed.

    The backend is TensorFlow unless KERAS_BACKEND names another (jax trains on a GPU machine that has
    no TensorFlow); conversion always needs TensorFlow itself."""
    from ferlite.errors import RuntimeMissingError

    # 3: not even TensorFlow's own C++ "errors" (a missing CUDA driver, graph attributes newer than the
    # runtime) that do not stop it; real failures still raise. TF_CPP_MIN_LOG_LEVEL=0 shows them all.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow enables its oneDNN kernels by default only on CPUs with AVX-512 or AMX; without them
    # (e.g. an AVX2 AMD EPYC) a training step of the default mini-Xception takes 2.2x longer.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    try:
        with native_quiet():
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow  # noqa: F401
    except ImportError:
        raise RuntimeMissingError("this command needs TensorFlow: pip install 'ferlite[train]'") from None
    return keras
