"""Keras models of tagrecall: inputs, layers, the multi-task tag model, training, scoring.

Imports schemas/ only, never jobs/ or pyspark: training and scoring run without Spark.
"""

import os

# TensorFlow's C++ start-up banners (cpu_feature_guard, oneDNN notes) are noise for a
# person following a run; warnings and errors still show. A value set by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
