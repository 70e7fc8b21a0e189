"""How a finding is written: the fix of each kind, the order of likely causes, evidence helpers."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from bnbook.doctor.findings import Finding

_FIX: dict[str, str] = {
    "non_finite": (
        "find the step that diverged (lower the learning rate, clip gradients, avoid batches of 1 example); "
        "if only the moving statistics are non-finite, re-estimate them (probes.reestimate_bn_statistics); "
        "chapters 3 and 4"
    ),
    "never_updated": (
        "update the moving statistics during training (call the model with training=True, or assign the "
        "non-trainable variables stateless_call returns), or re-estimate them with "
        "probes.reestimate_bn_statistics; chapters 3 and 4"
    ),
    "stale_statistics": (
        "re-estimate the moving statistics on training data (probes.reestimate_bn_statistics(model, x): the "
        "inference network's statistics, Li et al.'s re-estimation, nested and shared layers included; "
        "accuracy_reestimated is what it gives on x; below 512 examples it runs all of x as one batch, about 3 GB "
        "for 256 images on MobileNetV2-0.35 at 224 x 224: pass batch_size=64 to hold less, at the cost of more "
        "passes), "
        "train longer, or lower the momentum; chapter 4"
    ),
    "stale_statistics_first_layers": (
        "if x is not preprocessed as in training, only the BN layer(s) fed by the input see it (here they alone "
        "are off, every deeper BN layer is inside the bands; e.g. MobileNetV2 statistics from [-1, 1] images "
        "diagnosed on [0, 1] ones): check that x is preprocessed as in training (preprocess_input, scaling) "
        "before re-estimating: re-estimation would bake a wrong scaling in. If it is, the statistics are stale: "
    ),
    "input_scale": (
        "x is probably not scaled as the model received it in training (e.g. pixels 0-255 against 0-1, or "
        "missing standardisation): pass x through the training pipeline's preprocessing; chapter 3"
    ),
    "train_inference_gap": "remove the cause named in the evidence (see its own finding); chapters 4, 7 and 8",
    "train_inference_gap_unknown": (
        "no BN finding explains the gap: re-estimate the statistics on other training images "
        "(probes.reestimate_bn_statistics(model, x_other)) and compare inference-mode accuracy on held-out "
        "images before and after; if it rises, the statistics were stale (keep them); if not, the gap is noise "
        "of this sample or comes from outside BN (pass more examples, or check layers that behave differently "
        "in training, e.g. dropout or augmentation); chapters 4 and 10"
    ),
    "dropout_variance_shift": (
        "move the dropout after the last BN layer, or re-estimate the BN statistics with dropout off "
        "(probes.reestimate_bn_statistics); chapter 7"
    ),
    "training_false_override": (
        "fit() passes training=True, which replaces a training=False written in the model (Keras 3, "
        "keras-team/keras#20285): to keep these BN layers in inference mode while fine-tuning, set "
        "trainable=False on the BN layers themselves (a frozen Keras BN layer runs in inference mode; its gamma "
        "and beta then stop training too, as keras.io's fine-tuning guide intends) and compile() again, with a new optimizer if you unfroze layers (the old one knows only the variables it "
        "was built with). It matters only if the model is trained again (fit or a loop calling it with "
        "training=True); a model that only predicts is unaffected; chapters 3 and 4"
    ),
    "frozen_but_training": (
        "call compile() again after changing trainable (with a new optimizer if layers were unfrozen), and "
        "call BN layers without a fixed training=True; "
        "chapters 3 and 4"
    ),
    "pytorch_momentum": (
        "Keras's momentum is the weight of the old value: PyTorch's momentum=0.1 is Keras's momentum=0.9; "
        "chapter 3"
    ),
    "large_epsilon": (
        "epsilon dominates the variance in these channels, which is harmless in a model trained with it (a "
        "warning only with another sign of a conversion, such as a PyTorch-like momentum); a model converted "
        "from PyTorch needs PyTorch's epsilon (1e-5; Keras's default is 1e-3); chapter 3"
    ),
    "float16_statistics": (
        "use the mixed_float16 policy (BN variables stay float32) instead of a pure float16 policy: a "
        "float16 moving variance overflows above 65504 and re-estimation cannot store it; chapter 3"
    ),
    "weight_ema": (
        "after swapping in the averaged weights (optimizer.finalize_variable_values), re-estimate the BN "
        "statistics (probes.reestimate_bn_statistics): they were gathered under the raw weights; chapter 4"
    ),
    "small_batch": (
        "use a larger batch, Batch Renormalization (renorm=True), Group or Layer Normalization, or "
        "synchronized BN across replicas; chapter 8"
    ),
    "shared_layer": "one set of moving statistics serves every call of a shared BN layer; chapter 3",
    "input_cast": "pass x as the model receives it in training (scaled as in your pipeline); chapter 3",
    "output_choice": "pass output= (index or name) to choose the output whose labels y holds",
    "redundant_bias": "give the layer before BN use_bias=False (BN's beta is the offset); chapter 5",
    "foldable": "fold BN into the layer before it for inference with folding.fold_batchnorm; chapter 9",
    "eager_passes": (
        "nothing to fix for the diagnosis; eager passes hold every activation of a pass, so if memory runs short "
        "pass a smaller pass_size (the reason is the error the compiled pass raised); chapter 10"
    ),
}
_FIX["stale_statistics_first_layers"] += _FIX["stale_statistics"]
_FIX["stale_statistics_adapted"] = (
    "re-estimating lowered the accuracy on x, so the weights may have been trained against these statistics "
    "(Batch Renormalization, or gamma and beta fitted with frozen statistics): before re-estimating, compare "
    "the loss and accuracy on held-out images with the statistics as they are and re-estimated "
    "(probes.reestimate_bn_statistics on a copy of the model), and keep the better; chapter 8"
)
_CAUSE_ORDER = (
    "non_finite",
    "never_updated",
    "input_scale",
    "stale_statistics",
    "dropout_variance_shift",
    "pytorch_momentum",
    "small_batch",
    "training_false_override",
    "frozen_but_training",
)


def _info(kind: str, layer: str | None, reason: str) -> Finding:
    return Finding(kind, "info", layer, {"not_checked": reason}, _FIX[kind])


def _not_applicable(kind: str, reason: str) -> Finding:
    """A check that needs what the caller did not give (a batch size, a compiled model), not data."""
    return Finding(kind, "info", None, {"not_applicable": reason}, _FIX[kind])


def _values(variable: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


def _channels(indices: np.ndarray, limit: int = 8) -> str:
    listed = ", ".join(str(int(i)) for i in indices[:limit])
    return listed + (f" ... ({len(indices)} in all)" if len(indices) > limit else "")
