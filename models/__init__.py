"""Keras models of tagrecall: inputs, layers, the multi-task tag model, training, scoring.

Imports schemas/ only, never jobs/ or pyspark: training and scoring run without Spark.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import threading

# TensorFlow's C++ log lines are noise for a person following a run: start-up banners
# (cpu_feature_guard) and oneDNN notes, one of which ("oneDNN supports DT_INT32 only on
# platforms with AVX-512. Falling back...", seen in the user-tag model's step) is logged at
# ERROR level, so only 3 keeps it off the console. A failing TensorFlow operation still
# raises a Python exception with its message. A value set by the user wins (0 shows all).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# TF 2.21's native libraries log their oneDNN notice through absl while they load, before
# anything has initialised absl's logging, so TF_CPP_MIN_LOG_LEVEL cannot stop it and absl
# adds "WARNING: All log messages before absl::InitializeLog() is called are written to
# STDERR". Those lines are dropped from file descriptor 2 while tensorflow is first imported
# (by any module: keras imports it too); every other line passes through as it is written.
_NOISE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                    rb"|I\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] )")


@contextlib.contextmanager
def _native_stderr_without_noise():
    """Route file descriptor 2 through a filter that drops ``_NOISE`` lines."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not _NOISE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="tensorflow-import-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the pump reads to the end
        thread.join(timeout=10)
        os.close(saved)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` the usual way, and loads it with the filter above."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: later imports are ordinary
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module):
                with _native_stderr_without_noise():
                    execute(module)

            spec.loader.exec_module = exec_module
        return spec


if os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("", "0") and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport())
