"""Diagnose a model's batch normalization problems from its weights and a sample of data.

:func:`diagnose` looks at a built Keras model and a sample of its training inputs
(and labels, when available) and returns a :class:`Report` of :class:`Finding` s,
one per problem found, each with the measured numbers that triggered it and the
remedy, naming the chapter of the book that explains it. The checks:

=========================  ==========================================================
kind                       what it measures
=========================  ==========================================================
``never_updated``          moving statistics still at their initial values (0, 1)
                           while the layer's input on ``x`` is far from them
``stale_statistics``       moving statistics far from the statistics of the
                           layer's input on ``x`` (and, with ``y``, the gain from
                           re-estimating them)
``train_inference_gap``    training-mode vs inference-mode accuracy/loss on
                           ``(x, y)``, with the most likely cause
``dropout_variance_shift`` a dropout layer feeds a BN layer; measured
                           inference/training variance ratio of the BN input
``small_batch``            the training batch size makes batch statistics noisy
``redundant_bias``         a Dense/convolution bias right before a centring BN
``frozen_but_training``    ``trainable`` changed after a ``fit`` (since the last
                           ``compile``), or BN called with ``training=True``
                           inside the model
``foldable``               how many BN layers :func:`bnbook.folding.fold_batchnorm`
                           can fold for inference
=========================  ==========================================================

The measurements reuse :mod:`bnbook.probes` (the inputs of BN layers in both
modes, precise re-estimation) and :func:`bnbook.folding.plan_folding`. A check that
cannot run on a model (no labels, BN inside nested models, no batch size) is
reported as such with severity ``"info"``; none is skipped silently.

The thresholds below were measured on the book's data (the offline MNIST subset,
4,000 training images flattened to 784 pixels) with 784-64-64-10 MLPs trained
with Adam at learning rate 0.001 and batch size 64; the numbers are quoted in
each check's docstring.

Run as a program, ``python -m bnbook.doctor MODEL.keras --data DATA.npz`` prints the
report of a saved model on the arrays of an ``.npz`` file.
"""

from __future__ import annotations

import argparse
import math
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from bnbook import probes
from bnbook._checks import check_int, check_model
from bnbook.folding import plan_folding

__all__ = [
    "DROPOUT_RATIO",
    "GAP_ACCURACY",
    "KINDS",
    "NEVER_UPDATED_VARIANCE",
    "SEVERITIES",
    "SMALL_BATCH",
    "STALE_MEAN",
    "STALE_VARIANCE",
    "Finding",
    "Report",
    "diagnose",
    "main",
]

#: Every kind of finding, in the order the report lists them.
KINDS: tuple[str, ...] = (
    "never_updated",
    "stale_statistics",
    "train_inference_gap",
    "dropout_variance_shift",
    "small_batch",
    "frozen_but_training",
    "redundant_bias",
    "foldable",
)
#: Severities, most serious first.
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")

#: ``stale_statistics``: median over channels of ``|log(moving_var / var)|`` above
#: ``log(STALE_VARIANCE)``. See :func:`_check_statistics` for the measurements.
STALE_VARIANCE = 2.0
#: ``never_updated``: the same variance criterion, with this bound, for statistics at their initial values.
NEVER_UPDATED_VARIANCE = 1.5
#: ``stale_statistics``: median over channels of ``|moving_mean - mean| / std`` above this.
STALE_MEAN = 0.5
#: ``train_inference_gap``: accuracy difference (training - inference mode) above this
#: (and above 3 standard errors).
GAP_ACCURACY = 0.05
#: ``dropout_variance_shift``: median inference/training variance ratio below this
#: (or above its inverse).
DROPOUT_RATIO = 0.8
#: ``small_batch``: batch sizes below this are reported.
SMALL_BATCH = 16

_DROPOUT_TYPES = tuple(
    getattr(keras.layers, name)
    for name in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout")
    if hasattr(keras.layers, name)
)
_LINEAR_TYPES = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.EinsumDense,
)
# Layers through which a dropout's variance shift reaches a later BN layer: they
# neither normalise nor re-randomise (BN layers themselves stop the walk: the BN
# layer right after the dropout is the one that is reported).
_PASS_TYPES = _LINEAR_TYPES + (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.ZeroPadding2D,
)
# The fix of each kind: the remedy and where the book explains it.
_FIX: dict[str, str] = {
    "never_updated": (
        "update the moving statistics during training (call the model with training=True, or assign the "
        "non-trainable variables stateless_call returns), or re-estimate them with "
        "probes.reestimate_bn_statistics; chapters 3 and 4"
    ),
    "stale_statistics": (
        "re-estimate the moving statistics on training data (probes.reestimate_bn_statistics), train longer, "
        "or lower the momentum; chapter 4"
    ),
    "train_inference_gap": "remove the cause named in the evidence (see its own finding); chapters 4, 7 and 8",
    "dropout_variance_shift": (
        "move the dropout after the last BN layer, or re-estimate the BN statistics with dropout off "
        "(probes.reestimate_bn_statistics); chapter 7"
    ),
    "small_batch": (
        "use a larger batch, Batch Renormalization (renorm=True), Group or Layer Normalization, or "
        "synchronized BN across replicas; chapter 8"
    ),
    "frozen_but_training": (
        "call compile() again after changing trainable, and call BN layers without a fixed training=True; "
        "chapters 3 and 4"
    ),
    "redundant_bias": "give the layer before BN use_bias=False (BN's beta is the offset); chapter 5",
    "foldable": "fold BN into the layer before it for inference with folding.fold_batchnorm; chapter 9",
}
_CAUSE_ORDER = ("never_updated", "stale_statistics", "dropout_variance_shift", "small_batch", "frozen_but_training")


@dataclass(frozen=True)
class Finding:
    """One problem (or one fact) the doctor found.

    Attributes:
        kind: One of :data:`KINDS`.
        severity: ``"error"`` (inference is wrong now), ``"warning"`` (likely to hurt)
            or ``"info"`` (a fact, a hint, or a check that could not run).
        layer: The BN layer concerned (``nested/bn`` inside nested models), or None.
        evidence: The measured numbers (or the reason a check could not run).
        fix: One sentence: the remedy and the chapter that explains it.
    """

    kind: str
    severity: str
    layer: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""

    def evidence_text(self) -> str:
        """The evidence as ``key=value`` pairs, numbers rounded to 3 significant digits."""
        parts = []
        for key, value in self.evidence.items():
            if isinstance(value, (float, np.floating)):
                value = f"{float(value):.3g}"
            parts.append(f"{key}={value}")
        return ", ".join(parts)


@dataclass
class Report:
    """What :func:`diagnose` found: a list of findings, shown as a table.

    ``print(report)`` gives a plain-text table, a notebook shows an HTML table, and
    :meth:`to_frame` returns a DataFrame (columns ``kind``, ``severity``, ``layer``,
    ``evidence``, ``fix``).
    """

    findings: list[Finding]
    model_name: str = ""
    examples: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per finding, most serious first."""
        rows = [
            {"kind": f.kind, "severity": f.severity, "layer": f.layer or "", "evidence": f.evidence_text(), "fix": f.fix}
            for f in self.findings
        ]
        return pd.DataFrame(rows, columns=["kind", "severity", "layer", "evidence", "fix"])

    def kinds(self, *severities: str) -> set[str]:
        """The kinds found with one of ``severities`` (default: error or warning)."""
        wanted = severities or ("error", "warning")
        return {f.kind for f in self.findings if f.severity in wanted}

    @property
    def problems(self) -> list[Finding]:
        """The findings of severity error or warning."""
        return [f for f in self.findings if f.severity in ("error", "warning")]

    def _headline(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        verdict = "no BN problem found" if not self.problems else "BN problems found"
        return (
            f"BN doctor on {self.model_name!r} ({self.examples} examples): {verdict}; "
            f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"
        )

    def __str__(self) -> str:
        lines = [self._headline()]
        for f in self.findings:
            lines.append(f"- {f.severity.upper():7s} {f.kind} [{f.layer or '-'}]")
            if f.evidence:
                lines.append(f"    evidence: {f.evidence_text()}")
            lines.append(f"    fix: {f.fix}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        lines = [f"**{self._headline()}**", "", "| severity | kind | layer | evidence | fix |", "|---|---|---|---|---|"]
        for f in self.findings:
            cells = [f.severity, f.kind, f.layer or "", f.evidence_text(), f.fix]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return f"<p><b>{escape(self._headline())}</b></p>" + self.to_frame().to_html(index=False)


# ----------------------------------------------------------------------------- inputs


def _walk(model: keras.Model, prefix: str = "") -> list[tuple[str, keras.layers.Layer]]:
    """Every layer of ``model`` with its path name, nested models included (depth first)."""
    found = []
    for layer in model.layers:
        found.append((prefix + layer.name, layer))
        if isinstance(layer, keras.Model):
            found.extend(_walk(layer, prefix + layer.name + "/"))
    return found


def _check_inputs(model: Any, x: Any, y: Any, batch_size: Any) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    check_model(model)
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: give it an Input or call it on data first")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(f"model {model.name!r} has no defined input: build it with keras.Input(shape)")
    if len(inputs) != 1:
        raise ValueError(f"only single-input models are supported; {model.name!r} has {len(inputs)} inputs")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array of model inputs, got {type(x).__name__}")
    if len(x) == 0:
        raise ValueError("x is empty: pass a sample of the training inputs (at least 2 examples)")
    if len(x) < 2:
        raise ValueError(f"x must hold at least 2 examples, got {len(x)}")
    expected = tuple(inputs[0].shape[1:])
    got = tuple(x.shape[1:])
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise ValueError(f"x has examples of shape {got}, the model expects {expected} (batch axis first)")
    if y is not None:
        if not isinstance(y, np.ndarray):
            raise TypeError(f"y must be a NumPy array of labels or None, got {type(y).__name__}")
        if len(y) != len(x):
            raise ValueError(f"y has {len(y)} labels for {len(x)} examples of x; they must be equally many")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    return x, y, batch_size


# ----------------------------------------------------------------------------- measurements


def _predict(model: keras.Model, x: np.ndarray, batch_size: int, training: bool) -> np.ndarray:
    outputs = []
    for start in range(0, len(x) - (batch_size - 1 if training else 0), batch_size):
        out = model(x[start : start + batch_size], training=training)
        outputs.append(keras.ops.convert_to_numpy(out))
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def _loss_and_accuracy(outputs: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
    """Cross-entropy and accuracy for classifiers (probabilities or logits), else MSE and None."""
    y = y[: len(outputs)]
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        rows = outputs.astype(np.float64)
        is_probability = np.all(rows >= -1e-6) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3)
        if not is_probability:
            rows = np.exp(rows - rows.max(axis=1, keepdims=True))
            rows /= rows.sum(axis=1, keepdims=True)
        labels = np.argmax(y, axis=1) if y.ndim == 2 and y.shape[1] == rows.shape[1] else y.reshape(-1).astype(int)
        loss = float(-np.mean(np.log(np.clip(rows[np.arange(len(rows)), labels], 1e-7, 1.0))))
        return loss, float(np.mean(np.argmax(rows, axis=1) == labels))
    return float(np.mean((outputs.reshape(len(outputs), -1) - y.reshape(len(y), -1)) ** 2)), None


def _evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int, training: bool) -> tuple[float, float | None, int]:
    with probes.unchanged_state(model):
        outputs = _predict(model, x, batch_size, training)
    loss, accuracy = _loss_and_accuracy(outputs, y)
    return loss, accuracy, len(outputs)


def _moving(layer: keras.layers.Layer) -> tuple[np.ndarray, np.ndarray]:
    return (
        keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64),
        keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64),
    )


def _initial(layer: keras.layers.Layer, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    mean = keras.ops.convert_to_numpy(layer.moving_mean_initializer(shape))
    variance = keras.ops.convert_to_numpy(layer.moving_variance_initializer(shape))
    return np.asarray(mean, np.float64), np.asarray(variance, np.float64)


def _producers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    producers = []
    for node in getattr(layer, "_inbound_nodes", []):
        for parent in node.parent_nodes:
            if parent.operation is not None and not isinstance(parent.operation, keras.layers.InputLayer):
                producers.append(parent.operation)
    return producers


def _dropout_upstream(bn: keras.layers.Layer) -> str | None:
    """The name of a dropout layer whose output reaches ``bn`` through variance-keeping layers."""
    seen: set[int] = set()
    stack = _producers(bn)
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, _DROPOUT_TYPES):
            return layer.name
        if isinstance(layer, _PASS_TYPES):
            stack.extend(_producers(layer))
    return None


# ----------------------------------------------------------------------------- checks


def _info(kind: str, layer: str | None, reason: str) -> Finding:
    return Finding(kind, "info", layer, {"not checked": reason}, _FIX[kind])


def _check_statistics(
    model: keras.Model,
    layers: list[keras.layers.Layer],
    x: np.ndarray,
    y: np.ndarray | None,
    batch_size: int,
    dropout_fed: dict[str, str],
) -> tuple[list[Finding], pd.DataFrame]:
    """``never_updated`` and ``stale_statistics``, from the population statistics of each BN input.

    The population statistics are those :func:`bnbook.probes.reestimate_bn_statistics`
    computes (inference mode, the earlier layers re-estimated); the model's moving
    statistics are restored afterwards. Per layer, over channels with a variance
    above 1e-8: ``var_ratio`` = median of moving_var / var and ``mean_shift`` =
    median of ``|moving_mean - mean| / sqrt(var)``.

    ``never_updated`` (error): every moving statistic equals its initializer
    exactly and the input is far from it (``var_ratio`` outside
    [1/:data:`NEVER_UPDATED_VARIANCE`, :data:`NEVER_UPDATED_VARIANCE`] = [1/1.5, 1.5]
    or ``mean_shift`` > :data:`STALE_MEAN`); exact initial values after training
    are themselves strong evidence, hence a lower bar than for stale statistics. Measured on the book's MLP trained with a stateless loop
    that drops the updates (chapter 10): ``var_ratio`` 3.9 and 2.2 (moving variance
    1, inputs' variance 0.25-0.45), ``mean_shift`` 0.4-0.45.

    ``stale_statistics`` (warning; error when re-estimating gains more than
    :data:`GAP_ACCURACY` accuracy on ``(x, y)``; info when re-estimating makes
    the loss on ``(x, y)`` worse and the accuracy no better): ``var_ratio`` outside
    [1/2, 2] (a ratio of 2 puts the inference-mode output's standard deviation
    off by a factor 1.41) or ``mean_shift`` > 0.5 (half a standard deviation).
    Measured on 1,000 of the book's training images (the numbers printed by
    chapter 10's models, seed 0): healthy MLPs after 3 epochs of ``fit``
    (about 190 steps at momentum 0.99) have ``var_ratio`` 1.15-1.26 and
    ``mean_shift`` 0.06-0.15; after 30 steps (failure 1 of chapter 10)
    ``var_ratio`` is 4.1 and 2.1 and re-estimation lifts inference accuracy on
    the training images from 0.67 to 0.89; after 60 steps 2.4 and 1.7.
    The info case is a model whose weights were trained against its moving
    statistics: Batch Renormalization (``renorm=True``) normalises training
    batches towards them (the r and d corrections), so they need not match the
    population. Measured on chapter 8's BRN CNNs (1,000 training images): after
    16 steps at batch 128, ``var_ratio`` 2.2-2.5 in the first layer, and
    re-estimating drops the accuracy from 0.88-0.90 to 0.68-0.75; at batch 2,
    0.33-0.39 in the Dense block, and it drops 0.6-1.6 points (loss +27 %),
    while chapter 8's plain BN CNNs after the same 16 steps gain 1-8 points.
    Below a dropout layer the inference-mode variance is expected to be smaller
    (``dropout_variance_shift``), so there the statistics are stale only when the
    moving variance is far from both the training-mode variance (``train_ratio``,
    what training stores) and the inference-mode one (``var_ratio``, what
    re-estimating with dropout off stores: chapter 7's remedy).
    """
    before = [_moving(layer) for layer in layers]
    gain: dict[str, float] = {}
    with probes.unchanged_state(model):
        if y is not None:
            loss0, acc0, _ = _evaluate(model, x, y, 500, training=False)
        population = probes.reestimate_bn_statistics(model, x)
        if y is not None:
            loss1, acc1, _ = _evaluate(model, x, y, 500, training=False)
            gain = {"loss_now": loss0, "loss_reestimated": loss1}
            if acc0 is not None and acc1 is not None:
                gain.update(accuracy_now=acc0, accuracy_reestimated=acc1)
    variances = probes.bn_input_variances(model, x, batch_size=min(batch_size, len(x)))
    findings = []
    rows = []
    for layer, (moving_mean, moving_var) in zip(layers, before):
        mean, var = (np.asarray(a, np.float64) for a in population[layer.name])
        live = var > 1e-8
        if not live.any():
            findings.append(_info("stale_statistics", layer.name, "every channel of the input is constant on x"))
            continue
        std = np.sqrt(var[live])
        var_ratio = float(np.median(moving_var[live] / var[live]))
        mean_shift = float(np.median(np.abs(moving_mean[live] - mean[live]) / std))
        train_var = variances.loc[variances["layer"] == layer.name, "train_variance"].to_numpy()[live]
        train_ratio = float(np.median(moving_var[live] / np.maximum(train_var, 1e-12)))
        shift_ratio = float(np.median(var[live] / np.maximum(train_var, 1e-12)))
        rows.append(
            {
                "layer": layer.name,
                "var_ratio": var_ratio,
                "train_ratio": train_ratio,
                "mean_shift": mean_shift,
                "inference/training variance": shift_ratio,
            }
        )
        init_mean, init_var = _initial(layer, moving_mean.shape)
        far_var = abs(math.log(max(var_ratio, 1e-12))) > math.log(STALE_VARIANCE)
        far_mean = mean_shift > STALE_MEAN
        if np.array_equal(moving_mean, init_mean) and np.array_equal(moving_var, init_var):
            if abs(math.log(max(var_ratio, 1e-12))) > math.log(NEVER_UPDATED_VARIANCE) or far_mean:
                evidence = {"moving": "initial values", "var_ratio": var_ratio, "mean_shift": mean_shift}
                findings.append(Finding("never_updated", "error", layer.name, evidence, _FIX["never_updated"]))
            continue
        if layer.name in dropout_fed:  # stale only if far from both the training- and the inference-mode variance
            far_var = far_var and abs(math.log(max(train_ratio, 1e-12))) > math.log(STALE_VARIANCE)
        if far_var or far_mean:
            evidence = {"var_ratio": var_ratio, "mean_shift": mean_shift, **gain}
            accuracy_gain = gain.get("accuracy_reestimated", 0.0) - gain.get("accuracy_now", 0.0)
            severity = "error" if accuracy_gain > GAP_ACCURACY else "warning"
            if gain and gain["loss_reestimated"] > gain["loss_now"] and accuracy_gain <= 0:
                severity = "info"  # the weights are adapted to these statistics: re-estimating hurts
            findings.append(Finding("stale_statistics", severity, layer.name, evidence, _FIX["stale_statistics"]))
    return findings, pd.DataFrame(rows)


def _check_dropout(
    variances: pd.DataFrame | None, dropout_fed: dict[str, str]
) -> list[Finding]:
    """``dropout_variance_shift``: a dropout layer feeds a BN layer.

    The evidence is ``ratio``, the median over channels of the BN input's
    inference-mode variance over its training-mode variance
    (:func:`bnbook.probes.bn_input_variances` for the training mode, the
    re-estimated statistics of :func:`_check_statistics` for inference, so that
    stale statistics of earlier layers do not count as a shift). A warning when
    it is below :data:`DROPOUT_RATIO` = 0.8 (or above 1.25), otherwise info; also
    info when the moving variance already matches the inference-mode variance
    (``var_ratio`` within [0.8, 1.25] and nearer 1 than ``train_ratio``: the
    statistics were re-estimated with dropout off, so the shift no longer reaches
    the predictions; chapter 7's models after re-estimation give 1.02-1.03, chapter
    10's untreated model 1.25 and 1.33 with ``train_ratio`` 0.89).
    Measured on 1,000 of the book's training images with the MLPs of chapter 10
    (seed 0): Dropout(0.5) before each Dense-BN block gives 0.62 and 0.66,
    Dropout(0.1) 0.95 and 0.95, BN inputs without dropout upstream 1.00-1.02.
    """
    findings = []
    for name, dropout in dropout_fed.items():
        if variances is None:
            findings.append(_info("dropout_variance_shift", name, f"{dropout!r} feeds it; variances not measurable"))
            continue
        rows = variances[variances["layer"] == name] if len(variances) else variances
        if not len(rows):
            findings.append(_info("dropout_variance_shift", name, f"{dropout!r} feeds it; its input is constant on x"))
            continue
        ratio = float(rows["inference/training variance"].iloc[0])
        moving_ratio = float(rows["var_ratio"].iloc[0])  # moving / inference-mode variance
        train_ratio = float(rows["train_ratio"].iloc[0])  # moving / training-mode variance
        # Re-estimated with dropout off: the moving variance is near the inference-mode variance,
        # and nearer to it than to the training-mode variance that training stores.
        corrected = DROPOUT_RATIO <= moving_ratio <= 1 / DROPOUT_RATIO and abs(math.log(max(moving_ratio, 1e-12))) < abs(
            math.log(max(train_ratio, 1e-12))
        )
        severity = "warning" if not DROPOUT_RATIO <= ratio <= 1 / DROPOUT_RATIO and not corrected else "info"
        evidence = {"dropout": dropout, "inference/training variance": ratio, "moving/inference variance": moving_ratio}
        findings.append(Finding("dropout_variance_shift", severity, name, evidence, _FIX["dropout_variance_shift"]))
    return findings


def _check_small_batch(batch_size: int | None) -> list[Finding]:
    """``small_batch``: a training batch size below :data:`SMALL_BATCH` = 16.

    The standard deviation of a batch mean is ``1/sqrt(B)`` of the feature's:
    0.25 at B = 16, 0.5 at B = 4 (chapter 8 measures this noise on the book's
    data). The threshold itself is a rule of thumb taken from Wu and He's
    ImageNet measurements (BN's error grows once a device holds fewer than 16
    images), not measured on the book's data nor on the model at hand. Keras does not record the
    batch size a model was trained with, so without ``batch_size`` this check
    says it cannot run.
    """
    if batch_size is None:
        return [_info("small_batch", None, "pass batch_size= (Keras does not record the training batch size)")]
    if batch_size < SMALL_BATCH:
        evidence = {"batch_size": batch_size, "std of batch mean / std": 1 / math.sqrt(batch_size)}
        return [Finding("small_batch", "warning", None, evidence, _FIX["small_batch"])]
    return []


def _check_gap(
    model: keras.Model, x: np.ndarray, y: np.ndarray | None, batch_size: int, causes: list[Finding]
) -> list[Finding]:
    """``train_inference_gap``: training-mode accuracy beats inference-mode accuracy on ``(x, y)``.

    Both are computed on ``x`` in batches of ``batch_size`` (training mode: batch
    statistics, dropout on; the moving statistics are restored afterwards). An
    error when the accuracy difference exceeds :data:`GAP_ACCURACY` = 0.05 and 3
    standard errors of a difference of two accuracies on ``len(x)`` examples;
    for models without accuracy (regression) when the inference loss is more than
    twice the training-mode loss. Measured on 1,000 of the book's training
    images (seed 0): healthy MLPs after 3 epochs score 1-4 points *lower* in
    training mode (batch noise, dropout 0.5 after the last BN included); the
    model of chapter 10 trained for 30 steps 21 points higher (0.88 vs 0.67),
    the one whose statistics were never updated 22 points higher.
    """
    if y is None:
        return [_info("train_inference_gap", None, "no labels y given")]
    loss_t, acc_t, n = _evaluate(model, x, y, batch_size, training=True)
    loss_i, acc_i, _ = _evaluate(model, x, y, batch_size, training=False)
    if acc_t is not None and acc_i is not None:
        se = math.sqrt(max(acc_t * (1 - acc_t) + acc_i * (1 - acc_i), 1e-12) / max(n, 1))
        gap = acc_t - acc_i
        found = gap > GAP_ACCURACY and gap > 3 * se
    else:
        gap = loss_i - loss_t
        found = loss_i > 2 * loss_t
    if not found:
        return []
    problems = [f for f in causes if f.severity in ("error", "warning")]
    cause = next((k for k in _CAUSE_ORDER if any(f.kind == k for f in problems)), "unknown")
    evidence: dict[str, Any] = {"loss_training_mode": loss_t, "loss_inference_mode": loss_i}
    if acc_t is not None:
        evidence.update(accuracy_training_mode=acc_t, accuracy_inference_mode=acc_i)
    evidence["likely cause"] = cause
    fix = _FIX["train_inference_gap"] if cause == "unknown" else f"fix {cause}: " + _FIX[cause]
    return [Finding("train_inference_gap", "error", None, evidence, fix)]


def _check_frozen(model: keras.Model, bns: list[tuple[str, keras.layers.Layer]]) -> list[Finding]:
    """``frozen_but_training``: what can be detected reliably.

    - a BN layer whose training state differs from its state at the last
      ``compile()`` *and* a training step has already been traced
      (``model.train_function is not None``). The state is the layer's own
      ``trainable`` (it decides whether a training-mode call updates the moving
      statistics) and whether it and every model around it are trainable
      (whether gamma and beta get gradients). A model around it whose
      ``trainable`` changed does not count by itself: setting it sets the BN
      layer's own flag too, and where that flag already had the new value
      (chapter 4's base, unfrozen with its BN layers kept frozen, fitted, then
      frozen again) the traced step trains none of the BN layer's variables,
      only the other layers'. Keras 3.15.1 records the state at
      ``compile()`` (``_compiled_trainable_state``) but does not warn (its warning
      call sits after a ``raise`` and never runs). ``fit`` traces its training
      step once and reuses it until ``compile()`` resets ``train_function``, so a
      BN layer frozen after a ``fit`` keeps training (gamma, beta and the moving
      statistics still change) in the next ``fit``; one frozen before the first
      ``fit`` is frozen for real, and is not reported;
    - a BN layer called with ``training=True`` inside the model: calling the
      model without ``training=`` (``model(x)``) then normalises with batch
      statistics, so a prediction depends on the rest of the batch. (In Keras
      3.15 ``predict``/``evaluate`` pass ``training=False``, which overrides it.)

    Not detectable from the model: a custom loop that calls the model with
    ``training=True`` at evaluation. Not distinguishable: a layer frozen after
    the last ``fit`` for inference only, with no ``fit`` to follow; it is
    reported all the same (``compile()`` silences it). An uncompiled model
    gets an info finding: its trainable changes cannot be checked.
    """
    findings = []
    state = getattr(model, "_compiled_trainable_state", None)
    if state and getattr(model, "train_function", None) is not None:
        layers = dict(_walk(model))
        relevant = []
        for path, bn in bns:
            parts = path.split("/")
            chain = [model] + [layers["/".join(parts[:i])] for i in range(1, len(parts))] + [bn]
            own_changed = bn in state and state[bn] != bn.trainable
            then = all(state.get(layer, layer.trainable) for layer in chain)
            if own_changed or then != all(layer.trainable for layer in chain):
                relevant.append(path)
        if relevant:
            evidence = {"trainable changed after a fit, not recompiled": ", ".join(relevant)}
            findings.append(Finding("frozen_but_training", "warning", None, evidence, _FIX["frozen_but_training"]))
    for path, bn in bns:
        for node in getattr(bn, "_inbound_nodes", []):
            if node.arguments.kwargs.get("training") is True:
                evidence = {"called with": "training=True"}
                findings.append(Finding("frozen_but_training", "warning", path, evidence, _FIX["frozen_but_training"]))
                break
    if not state:
        findings.append(_info("frozen_but_training", None, "model not compiled: trainable changes not checkable"))
    return findings


def _check_bias_and_folding(model: keras.Model, bns: dict[str, keras.layers.Layer]) -> list[Finding]:
    """``redundant_bias`` (info) and ``foldable`` (info), from :func:`bnbook.folding.plan_folding`.

    A BN layer that ``plan_folding`` can fold directly follows a Dense or
    convolution layer with nothing in between; when that layer has a bias and the
    BN layer centres (``center=True``), the bias is cancelled by the mean
    subtraction (chapter 5 measures its gradient: exactly zero). Both are hints,
    not faults, hence ``info``.
    """
    try:
        plan = plan_folding(model)
    except (TypeError, ValueError) as error:
        return [_info("foldable", None, f"plan_folding cannot read this model: {error}")]
    names = dict(_walk(model))
    findings = []
    for decision in plan:
        if not decision.folded or decision.into is None:
            continue
        producer = names.get(decision.into)
        bn = names.get(decision.bn, bns.get(decision.bn))
        if producer is not None and getattr(producer, "use_bias", False) and getattr(bn, "center", False):
            evidence = {"bias of": decision.into, "parameters": int(np.prod(producer.bias.shape))}
            findings.append(Finding("redundant_bias", "info", decision.bn, evidence, _FIX["redundant_bias"]))
    folded = sum(d.folded for d in plan)
    evidence = {"foldable": f"{folded} of {len(plan)}"}
    reasons = sorted({d.reason for d in plan if not d.folded})
    if reasons:
        evidence["not folded because"] = "; ".join(reasons)
    findings.append(Finding("foldable", "info", None, evidence, _FIX["foldable"]))
    return findings


def diagnose(model: keras.Model, x: np.ndarray, y: np.ndarray | None = None, *, batch_size: int | None = None) -> Report:
    """Diagnose the BN layers of ``model`` on a sample ``x`` (and labels ``y``) of its training data.

    Args:
        model: A built single-input Keras model containing
            ``keras.layers.BatchNormalization`` or :class:`bnbook.layers.BatchNorm`
            layers (Sequential, Functional, nested). The data-based checks need the
            BN layers at the top level, called once; otherwise they report that
            they cannot run.
        x: Training inputs, shape ``(N, *input shape)``, N >= 2 (a few hundred to a
            few thousand examples).
        y: Their labels (integer classes, one-hot rows, or regression targets), or
            None: the checks that need labels then say so.
        batch_size: The batch size the model was trained with (Keras does not
            record it), used by ``small_batch`` and for the training-mode passes;
            None: 32 (Keras's default) for the passes, and ``small_batch`` is not
            checked.

    Returns:
        A :class:`Report`. The model is left as it was (its moving statistics and
        random-generator states are restored after the training-mode passes).

    Raises:
        TypeError: ``model`` is not a Keras model, ``x``/``y`` not NumPy arrays,
            ``batch_size`` not an int.
        ValueError: The model is not built or has several inputs, ``x`` is empty or
            its examples do not have the model's input shape, ``y`` has another
            length than ``x``, ``batch_size`` < 1.
    """
    x, y, batch_size = _check_inputs(model, x, y, batch_size)
    passes = min(batch_size or 32, len(x))
    bns = [(path, layer) for path, layer in _walk(model) if isinstance(layer, probes.BN_TYPES)]
    report = Report([], model.name, len(x))
    if not bns:
        report.findings.append(
            Finding("foldable", "info", None, {"BN layers": 0}, "nothing to diagnose: the model has no BN layer")
        )
        return report
    findings: list[Finding] = []
    dropout_fed = {}
    for path, bn in bns:
        dropout = _dropout_upstream(bn)
        if dropout is not None:
            dropout_fed[path] = dropout
    variances = None
    probe_model, data_ok, reason = model, False, ""
    try:
        probes.probed_bn_layers(model)
        data_ok = True
    except ValueError as error:
        reason = str(error)
        if "called exactly once" in reason:
            # A reloaded Sequential model records extra calls of its layers; a clone
            # with the same weights has one call per layer (same layer names).
            try:
                probe_model = keras.models.clone_model(model)
                probe_model.set_weights(model.get_weights())
                probes.probed_bn_layers(probe_model)
                data_ok = True
            except (TypeError, ValueError) as clone_error:
                reason = f"{reason} (and a clone fails: {clone_error})"
    if data_ok:
        top = [layer for layer in probe_model.layers if isinstance(layer, probes.BN_TYPES)]
        stat_findings, variances = _check_statistics(probe_model, top, x, y, passes, dropout_fed)
        findings += stat_findings
    else:
        for kind in ("never_updated", "stale_statistics"):
            findings.append(_info(kind, None, f"needs top-level BN layers: {reason}"))
    findings += _check_dropout(variances, dropout_fed)
    findings += _check_small_batch(batch_size)
    findings += _check_frozen(model, bns)
    findings += _check_gap(model, x, y, passes, findings)
    findings += _check_bias_and_folding(model, dict(bns))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    kinds = {k: i for i, k in enumerate(KINDS)}
    report.findings = sorted(findings, key=lambda f: (order[f.severity], kinds[f.kind]))
    return report


# ----------------------------------------------------------------------------- command line


def _load_model(path: str) -> keras.Model:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"error: model file {path!r} does not exist")
    try:
        return keras.saving.load_model(file)
    except Exception as error:  # noqa: BLE001 - any loading failure is reported the same way
        raise SystemExit(f"error: cannot read the model {path!r}: {error}") from None


def _load_data(path: str, x_key: str | None, y_key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"error: data file {path!r} does not exist")
    try:
        data = np.load(file, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("not an .npz archive")
        arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SystemExit(f"error: cannot read the data {path!r} as .npz: {error}") from None
    keys = sorted(arrays)
    if x_key is None:
        x_key = next((k for k in ("x", "x_train", "inputs", "images") if k in arrays), keys[0] if len(keys) == 1 else None)
        if x_key is None:
            raise SystemExit(f"error: say which array holds the inputs with --x KEY; {path!r} has {', '.join(keys)}")
    for key in (x_key, y_key):
        if key is not None and key not in arrays:
            raise SystemExit(f"error: {path!r} has no array {key!r}; it has {', '.join(keys)}")
    return arrays[x_key], None if y_key is None else arrays[y_key]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m bnbook.doctor MODEL.keras --data DATA.npz [--x KEY] [--labels KEY] [--batch-size N]``.

    Prints the report and returns 0 (1 when it holds an error finding). Bad
    files and data that do not fit the model end with a one-line ``error:``
    message and exit status 2.
    """
    parser = argparse.ArgumentParser(prog="python -m bnbook.doctor", description="Diagnose the BN layers of a saved model.")
    parser.add_argument("model", help="a saved Keras model (.keras)")
    parser.add_argument("--data", required=True, help="an .npz file with a sample of the training inputs")
    parser.add_argument("--x", dest="x_key", default=None, help="the array of inputs in the .npz (default: x, or its only array)")
    parser.add_argument("--labels", default=None, help="the array of labels in the .npz (optional)")
    parser.add_argument("--batch-size", type=int, default=None, help="the training batch size")
    args = parser.parse_args(argv)
    try:
        model = _load_model(args.model)
        x, y = _load_data(args.data, args.x_key, args.labels)
        report = diagnose(model, x, y, batch_size=args.batch_size)
    except SystemExit as stop:
        print(stop, file=sys.stderr)
        return 2
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not any(isinstance(layer, probes.BN_TYPES) for _, layer in _walk(model)):
        print(f"{args.model}: the model has no BN layer (BatchNormalization or bnbook BatchNorm); nothing to diagnose")
        return 0
    print(report)
    return 1 if any(f.severity == "error" for f in report.findings) else 0


if __name__ == "__main__":
    sys.exit(main())
