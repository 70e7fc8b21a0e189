"""The checks that need no data: BN variables, hyperparameters, the graph, the optimizer, the batch size."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import keras
import numpy as np

from bnbook import probes
from bnbook.doctor.evidence import _FIX, _channels, _not_applicable, _values
from bnbook.doctor.findings import Finding
from bnbook.doctor.graph import _walk
from bnbook.doctor.thresholds import Thresholds
from bnbook.folding import plan_folding

def _trainable_bn(bn: keras.layers.Layer) -> bool:
    return bool(bn.trainable)


def _check_static(
    model: keras.Model, bns: list[tuple[str, keras.layers.Layer]], batch_size: int | None, t: Thresholds
) -> list[Finding]:
    """The checks that need no data: variables, hyperparameters, graph, optimizer, batch size."""
    findings: list[Finding] = []
    for path, bn in bns:
        variables = {name: getattr(bn, name, None) for name in probes.BN_VARIABLES}
        bad_channels: set[int] = set()
        which = []
        slightly_negative = np.zeros(0, dtype=bool)
        for name, variable in variables.items():
            if variable is None:
                continue
            values = _values(variable)
            bad = ~np.isfinite(values)
            if name == "moving_variance":
                # var + eps > 0: sqrt(var + eps) is finite and the output only slightly off (a warning);
                # at or below -eps the normalisation divides by zero or takes the root of a negative
                slightly_negative = np.isfinite(values) & (values < 0) & (values > -float(bn.epsilon))
                bad |= (values < 0) & ~slightly_negative
            if bad.any():
                bad_channels |= set(np.flatnonzero(bad).tolist())
                which.append(f"{name}({int(bad.sum())})")
        if bad_channels:
            evidence = {"variables": ", ".join(which), "channels": _channels(np.array(sorted(bad_channels)))}
            findings.append(Finding("non_finite", "error", path, evidence, _FIX["non_finite"]))
        elif slightly_negative.any():
            evidence = {
                "variables": f"moving_variance({int(slightly_negative.sum())}) negative, above -epsilon",
                "channels": _channels(np.flatnonzero(slightly_negative)),
            }
            findings.append(Finding("non_finite", "warning", path, evidence, _FIX["non_finite"]))
        momentum = float(getattr(bn, "momentum", 0.99))
        if momentum < t.pytorch_momentum:
            evidence = {"momentum": momentum, "keras_equivalent_of_pytorch": round(1 - momentum, 3)}
            findings.append(Finding("pytorch_momentum", "warning", path, evidence, _FIX["pytorch_momentum"]))
        var = _values(bn.moving_variance)
        eps = float(bn.epsilon)
        finite = np.isfinite(var)
        if finite.any():
            fraction = float(np.mean(var[finite] <= eps))
            if fraction > t.epsilon_fraction:
                evidence = {"epsilon": eps, "fraction_of_channels_with_variance_at_most_epsilon": fraction}
                findings.append(Finding("large_epsilon", "info", path, evidence, _FIX["large_epsilon"]))
        dtypes = {
            keras.backend.standardize_dtype(v.dtype) for v in variables.values() if v is not None
        }
        if "float16" in dtypes:
            evidence = {"dtype": "float16", "largest_moving_variance": float(np.nanmax(np.where(finite, var, np.nan))) if finite.any() else float("nan")}
            findings.append(Finding("float16_statistics", "warning", path, evidence, _FIX["float16_statistics"]))
        if any(node.arguments.kwargs.get("training") is False for node in getattr(bn, "_inbound_nodes", [])) and _trainable_bn(bn):
            evidence = {"called_with": "training=False", "trainable": True}
            findings.append(Finding("training_false_override", "warning", path, evidence, _FIX["training_false_override"]))
    # Channels with variance below epsilon are common in healthy models (a trained masked
    # Embedding -> BN, MobileNetV3's depthwise BN layers): large_epsilon is only a warning
    # when another sign of a model converted from PyTorch is present.
    converted = any(f.kind == "pytorch_momentum" for f in findings)
    if converted:
        findings = [
            replace(f, severity="warning", evidence={**f.evidence, "also_found": "pytorch_momentum"})
            if f.kind == "large_epsilon"
            else f
            for f in findings
        ]
    bn_ids = {id(bn) for _, bn in bns}
    for path, layer in _walk(model):
        if isinstance(layer, probes.BN_TYPES) or id(layer) in bn_ids:
            continue
        if not any(node.arguments.kwargs.get("training") is False for node in getattr(layer, "_inbound_nodes", [])):
            continue
        inner = [bn for bn in layer._flatten_layers(include_self=False) if isinstance(bn, probes.BN_TYPES)]
        trainable = [bn.name for bn in inner if _trainable_bn(bn)]
        if trainable:
            evidence = {
                "called_with": "training=False",
                "trainable_bn_layers": f"{len(trainable)} of {len(inner)}",
            }
            findings.append(Finding("training_false_override", "warning", path, evidence, _FIX["training_false_override"]))
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "use_ema", False):
        evidence = {"optimizer": type(optimizer).__name__, "ema_momentum": float(getattr(optimizer, "ema_momentum", 0.0))}
        findings.append(Finding("weight_ema", "warning", None, evidence, _FIX["weight_ema"]))
    findings += _check_small_batch(batch_size, t)
    findings += _check_frozen(model, bns)
    findings += _check_bias_and_folding(model, dict(bns))
    return findings


def _check_small_batch(batch_size: int | None, t: Thresholds) -> list[Finding]:
    """``small_batch``: a training batch size below ``small_batch`` = 16 (a rule of thumb).

    For a Dense BN layer the standard deviation of a batch mean is ``1/sqrt(B)`` of
    the feature's; for a convolution the batch mean averages B x positions correlated
    values, and with several replicas the per-replica batch counts. The threshold
    is Wu and He's ImageNet measurement (BN's error grows below 16 images per
    device), not measured on the model at hand. Keras does not record the batch
    size, so without ``batch_size`` this check is listed as not applicable.
    """
    if batch_size is None:
        return [_not_applicable("small_batch", "pass batch_size= (Keras does not record the training batch size)")]
    if batch_size < t.small_batch:
        evidence = {"batch_size": batch_size, "dense_std_of_batch_mean_over_std": 1 / math.sqrt(batch_size)}
        return [Finding("small_batch", "warning", None, evidence, _FIX["small_batch"])]
    return []


def _check_frozen(model: keras.Model, bns: list[tuple[str, keras.layers.Layer]]) -> list[Finding]:
    """``frozen_but_training``: ``trainable`` changed after a ``fit``, or ``training=True`` in the graph.

    - a BN layer whose training state differs from its state at the last
      ``compile()`` *and* a training step has already been traced
      (``model.train_function is not None``): Keras 3.15.1 records the state at
      ``compile()`` (``_compiled_trainable_state``) and ``fit`` reuses its traced
      step until ``compile()`` resets ``train_function``, so a BN layer frozen after
      a ``fit`` keeps training in the next one. A model around it whose
      ``trainable`` changed counts only if the BN layer's own state changed
      (chapter 4's base, unfrozen with its BN layers kept frozen, is not reported);
    - a BN layer called with ``training=True`` inside the model: ``model(x)`` then
      normalises with batch statistics.

    An uncompiled model gets a not_applicable info finding: its trainable changes cannot be checked.
    """
    findings = []
    state = getattr(model, "_compiled_trainable_state", None)
    if state and getattr(model, "train_function", None) is not None:
        layers = dict(_walk(model))
        relevant = []
        for path, bn in bns:
            parts = path.split("/")
            chain = [model] + [layers.get("/".join(parts[:i]), model) for i in range(1, len(parts))] + [bn]
            own_changed = bn in state and state[bn] != bn.trainable
            then = all(state.get(layer, layer.trainable) for layer in chain)
            if own_changed or then != all(layer.trainable for layer in chain):
                relevant.append(path)
        if relevant:
            evidence = {"trainable_changed_after_fit": ", ".join(relevant)}
            findings.append(Finding("frozen_but_training", "warning", None, evidence, _FIX["frozen_but_training"]))
    for path, bn in bns:
        for node in getattr(bn, "_inbound_nodes", []):
            if node.arguments.kwargs.get("training") is True:
                evidence = {"called_with": "training=True"}
                findings.append(Finding("frozen_but_training", "warning", path, evidence, _FIX["frozen_but_training"]))
                break
    if not state:
        findings.append(_not_applicable("frozen_but_training", "model not compiled: trainable changes not checkable"))
    return findings


def _check_bias_and_folding(model: keras.Model, bns: dict[str, keras.layers.Layer]) -> list[Finding]:
    """``redundant_bias`` (info) and ``foldable`` (info), from :func:`bnbook.folding.plan_folding`."""
    try:
        plan = plan_folding(model)
    except (TypeError, ValueError) as error:
        return [Finding("foldable", "info", None, {"plan_folding": f"cannot read this model: {error}"}, _FIX["foldable"])]
    names = dict(_walk(model))
    findings = []
    for decision in plan:
        # Only a backward fold means the BN follows the layer folded into: a forward fold's target
        # comes after the BN, and its bias is not made redundant by it.
        if not decision.folded or decision.into is None or decision.direction != "backward":
            continue
        producer = names.get(decision.into)
        bn = names.get(decision.bn, bns.get(decision.bn))
        if producer is not None and getattr(producer, "use_bias", False) and getattr(bn, "center", False):
            evidence = {"bias_of": decision.into, "parameters": int(np.prod(producer.bias.shape))}
            findings.append(Finding("redundant_bias", "info", decision.bn, evidence, _FIX["redundant_bias"]))
    folded = sum(d.folded for d in plan)
    evidence: dict[str, Any] = {"foldable": f"{folded} of {len(plan)}"}
    reasons = sorted({d.reason for d in plan if not d.folded})
    if reasons:
        evidence["not_folded_because"] = "; ".join(reasons)
    findings.append(Finding("foldable", "info", None, evidence, _FIX["foldable"]))
    return findings
