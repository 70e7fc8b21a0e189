"""Shared set-up: quiet TensorFlow before anything imports it (importing bnbook does), CPU only."""

import os

import bnbook  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
