"""Diagnose a model's batch normalization problems from its weights and a sample of data.

:func:`diagnose` looks at a built Keras model and a sample of its training inputs
(and labels, when available) and returns a :class:`Report` of :class:`Finding` s,
one per problem and BN layer, each with the measured numbers that triggered it and
the remedy, naming the chapter of the book that explains it. Printed, the report
groups the findings per kind (the layers listed once, the fix said once).

=========================== ==========================================================
kind                        what it measures
=========================== ==========================================================
``non_finite``              NaN/inf (or a negative variance) in a BN variable, or
                            NaN/inf in a BN layer's input on ``x`` (error, naming the
                            channels)
``never_updated``           moving statistics still at their initial values (0, 1)
                            while the layer's input on ``x`` is far from them
``input_scale``             the first BN layer's moving variance off by more than x100
                            in nearly every channel (or ``x`` is integer and that layer
                            is off): ``x`` is probably not scaled as in training
``stale_statistics``        moving statistics far from the statistics of the layer's
                            input on ``x``: by the median over channels *or* by the
                            fraction of channels outside a band (the worst channels
                            are named); with ``y``, the gain from re-estimating them.
                            Not checked (info) for a BN layer that receives a mask
                            (Keras excludes masked positions from its moments)
``train_inference_gap``     training-mode vs inference-mode accuracy/loss on
                            ``(x, y)``, relative to its paired standard error, with
                            the most likely cause
``dropout_variance_shift``  a dropout layer feeds a BN layer; measured
                            inference/training variance ratio of the BN input
``training_false_override`` a BN layer, or a nested model holding trainable BN layers,
                            called with ``training=False``: ``fit`` overrides it
``frozen_but_training``     ``trainable`` changed after a ``fit`` (since the last
                            ``compile``), or BN called with ``training=True``
``pytorch_momentum``        ``momentum`` well below 0.9 (PyTorch's 0.1 is Keras's 0.9)
``large_epsilon``           ``epsilon`` at least the moving variance in most channels
                            (info; a warning when ``pytorch_momentum`` is also found)
``float16_statistics``      BN variables stored in float16 (pure float16 policy)
``weight_ema``              the optimizer averages weights (``use_ema=True``): the
                            statistics were gathered under the raw weights
``small_batch``             the training batch size makes batch statistics noisy
``shared_layer``            a BN layer called more than once per forward pass (its
                            statistics are pooled over its calls) -- info
``input_cast``              integer ``x`` cast to the model's float input -- info
``output_choice``           which output of a multi-output model was evaluated -- info
``redundant_bias``          a Dense/convolution bias right before a centring BN -- info
``foldable``                how many BN layers :func:`bnbook.folding.fold_batchnorm`
                            can fold for inference -- info
=========================== ==========================================================

Every BN layer is checked wherever it sits: nested Sequential/Functional models at
any depth, ``keras.applications`` bases, layers shared between calls,
``keras.layers.BatchNormalization`` and :class:`bnbook.layers.BatchNorm` (and their
subclasses). The measurements stream: each BN layer's ``call`` is wrapped for the
duration of a pass so that it adds the per-channel count, mean and sum of squared
deviations of its input (Chan et al.'s merge, float64) and nothing of size
(examples x activations) is kept; one forward pass over ``x`` per mode measures every
layer at once, in batches of ``pass_size``. The passes:

1. *population* (dropout off; every BN layer normalises with the statistics of its
   batch, so that a broken layer upstream does not bias the layers after it): the
   statistics of each BN input, which the moving statistics are compared with, and
   which the re-estimation (Li et al.'s, for the inference network, with dropout off;
   not "precise BN", see :mod:`bnbook.probes`) assigns to measure its gain;
2. *inference* (the model as it predicts): non-finite BN inputs, and the predictions;
3. *training* (batches of ``batch_size``, shuffled with a fixed seed, dropout on;
   only with labels or a dropout feeding BN): the training-mode variance of each BN
   input and the training-mode predictions;
4. *re-estimated* (with labels): the predictions with the population statistics.

The model is left as it was (moving statistics and random-generator states restored).
A data check that cannot run is an ``info`` finding with the evidence key ``not_checked``,
and the headline then says the report is incomplete -- never "no BN problem found". A
check that needs an argument or state that is not data (``small_batch`` without
``batch_size``, ``frozen_but_training`` on an uncompiled model) is an ``info`` finding
with the key ``not_applicable``, listed in the headline but not making it incomplete.

Thresholds (keyword arguments of :func:`diagnose`; defaults in :data:`THRESHOLDS`):

======================== ======= ===================================================
name                     default where it comes from
======================== ======= ===================================================
``stale_variance``       2.0     median over channels of (moving var + eps)/(var +
                                 eps) outside [1/2, 2]: the output's std off by 1.41.
                                 The book's MLPs (chapter 10): healthy 1.15-1.26,
                                 30 steps 4.1 and 2.1, 60 steps 2.4 and 1.7
``stale_mean``           0.5     median ``|moving mean - mean| / std`` (healthy MLPs
                                 0.06-0.15)
``channel_variance``     4.0     a single channel is off when its ratio is outside
                                 [1/4, 4] or its shift above ``channel_mean``
``channel_mean``         1.0     (one standard deviation)
``channel_fraction``     0.05    stale when more than 5 % of channels are off even if
                                 the median is fine (3 of 32 channels = 9 %); set
                                 above the 0-3 % measured on healthy models (below)
``never_updated_variance`` 1.5   median ratio bound for statistics at their initial
                                 values (exact initial values are evidence already)
``dropout_ratio``        0.8     inference/training variance of a dropout-fed BN
                                 input (MLPs of chapter 10: Dropout(0.5) 0.66-0.70,
                                 Dropout(0.1) 0.95, no dropout 1.00-1.02)
``gap_z``                3.0     accuracy gap (and re-estimation gain) above 3 paired
                                 standard errors (same examples in both modes)...
``gap_min``              0.01    ...and above 1 point (a negligible difference)
``gap_loss_ratio``       2.0     regression: inference loss above twice the
                                 training-mode loss (no local evidence: a guess)
``small_batch``          16      rule of thumb (Wu and He's ImageNet measurements);
                                 for Dense layers the std of a batch mean is
                                 1/sqrt(B) of the feature's, for convolutions the
                                 batch mean averages B x positions correlated values
``pytorch_momentum``     0.5     Keras's momentum is the weight of the *old* value
                                 (default 0.99); PyTorch's is the new one's (0.1)
``epsilon_fraction``     0.5     ``epsilon`` >= moving variance in more than half the
                                 channels (not calibrated: a static plausibility test)
``input_scale_variance`` 100.0   the first BN layer's channel ratio outside [1/100,
                                 100]: pixels 0-255 against 0-1 give 255**2; stale
                                 statistics rarely reach it in most channels...
``input_scale_fraction`` 0.9     ...in at least 90 % of its channels (not calibrated)
======================== ======= ===================================================

Validation out of sample (``tests/test_doctor_zoo.py``): the thresholds above were
set on the book's MLPs (chapter 10) and the unit tests' 12-feature MLPs
(``tests/test_doctor.py``), the per-channel band on the 32-channel CNN of
``tests/test_doctor_real.py``; they were *not* tuned on the zoo's models, each
written with the finding its break must produce and run with the defaults. Result:
22 broken models, 21 hits and 1 partial miss; 6 healthy trained models, 6 clean.

============================  ============================================  ==================
family                        breaks                                        result
============================  ============================================  ==================
CNN channels-last             NaN variance channel; 3 steps at 0.99; EMA    hits
CNN channels-first            inf gamma; lagging (6 steps); momentum 0.1    hits
Conv1D                        mean +3 std; epsilon > variances; dropout     hits
GRU + BN                      NaN mean channel; 3 of 16 channels x100       hits
transfer (BN 2 models down)   reset to (0, 1); training=False; frozen       hits
                              after fit without compile()
two heads (softmax, sigmoid)  trunk mean -2 std (sigmoid output)            hit
two heads                     trunk variance / 30 (both outputs)            partial miss: named
                                                                            as info (predictions
                                                                            still right, loss
                                                                            lower: read as
                                                                            adapted statistics)
MobileNetV2 0.35 (32 x 32)    untrained; NaN deep; nested base lagging      hits
ResNet50 (32 x 32)            one deep layer's variance x25                 hit (that layer)
EfficientNetB0 (32 x 32)      one layer's mean +2 std; momentum 0.1         hits
============================  ============================================  ==================

Run as a program, ``bnbook-doctor MODEL.keras --data DATA.npz`` (or ``python -m
bnbook.doctor ...``) prints the report of a saved model on the arrays of an ``.npz``
file; ``--json`` prints :meth:`Report.to_dict` and ``--fail-on warning`` makes
warnings fail a CI job.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
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
    "THRESHOLDS",
    "DoctorCallback",
    "Finding",
    "Report",
    "Thresholds",
    "cli",
    "diagnose",
    "main",
    "static_checks",
]

#: Every kind of finding, in the order the report lists them.
KINDS: tuple[str, ...] = (
    "non_finite",
    "never_updated",
    "input_scale",
    "stale_statistics",
    "train_inference_gap",
    "dropout_variance_shift",
    "training_false_override",
    "frozen_but_training",
    "pytorch_momentum",
    "large_epsilon",
    "float16_statistics",
    "weight_ema",
    "small_batch",
    "shared_layer",
    "input_cast",
    "output_choice",
    "redundant_bias",
    "foldable",
)
#: Severities, most serious first.
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")


@dataclass(frozen=True)
class Thresholds:
    """The doctor's thresholds; see the module docstring for where each default comes from."""

    stale_variance: float = 2.0
    stale_mean: float = 0.5
    channel_variance: float = 4.0
    channel_mean: float = 1.0
    channel_fraction: float = 0.05
    never_updated_variance: float = 1.5
    dropout_ratio: float = 0.8
    gap_z: float = 3.0
    gap_min: float = 0.01
    gap_loss_ratio: float = 2.0
    small_batch: int = 16
    pytorch_momentum: float = 0.5
    epsilon_fraction: float = 0.5
    input_scale_variance: float = 100.0
    input_scale_fraction: float = 0.9

    @classmethod
    def with_overrides(cls, overrides: dict[str, Any]) -> Thresholds:
        """The defaults with ``overrides`` applied; TypeError/ValueError naming a bad one."""
        names = [f.name for f in fields(cls)]
        for name, value in overrides.items():
            if name not in names:
                raise TypeError(f"unknown threshold {name!r}; the thresholds are: {', '.join(names)}")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"threshold {name} must be a number, got {value!r}")
            if not math.isfinite(float(value)) or float(value) <= 0:
                raise ValueError(f"threshold {name} must be a finite number > 0, got {value!r}")
        return cls(**overrides)


#: The default thresholds.
THRESHOLDS = Thresholds()
# The former module constants (the defaults), kept for readers of chapter 10.
STALE_VARIANCE = THRESHOLDS.stale_variance
NEVER_UPDATED_VARIANCE = THRESHOLDS.never_updated_variance
STALE_MEAN = THRESHOLDS.stale_mean
GAP_ACCURACY = THRESHOLDS.gap_min
DROPOUT_RATIO = THRESHOLDS.dropout_ratio
SMALL_BATCH = THRESHOLDS.small_batch

_DROPOUT_TYPES = tuple(
    getattr(keras.layers, name)
    for name in (
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianDropout",
        "AlphaDropout",
        "GaussianNoise",
    )
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
# Layers through which a dropout's variance shift reaches a later BN layer.
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
    keras.layers.Add,  # a residual sum: the dropout's branch still changes the sum's variance
    keras.layers.Concatenate,  # the dropout's channels are among the BN layer's
)
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
        "re-estimate the moving statistics on training data (probes.reestimate_bn_statistics, Li et al.'s "
        "re-estimation for the inference network), train longer, or lower the momentum; chapter 4"
    ),
    "input_scale": (
        "x is probably not scaled as the model received it in training (e.g. pixels 0-255 against 0-1, or "
        "missing standardisation): pass x through the training pipeline's preprocessing; chapter 3"
    ),
    "train_inference_gap": "remove the cause named in the evidence (see its own finding); chapters 4, 7 and 8",
    "dropout_variance_shift": (
        "move the dropout after the last BN layer, or re-estimate the BN statistics with dropout off "
        "(probes.reestimate_bn_statistics); chapter 7"
    ),
    "training_false_override": (
        "fit() passes training=True, which replaces a training=False written in the model (Keras 3, "
        "keras-team/keras#20285): to keep these BN layers in inference mode while fine-tuning, set "
        "trainable=False on the BN layers themselves (a frozen Keras BN layer runs in inference mode) and "
        "compile() again, with a new optimizer if you unfroze layers (the old one knows only the variables it "
        "was built with); chapters 3 and 4"
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
}
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


@dataclass(frozen=True)
class Finding:
    """One problem (or one fact) the doctor found.

    Attributes:
        kind: One of :data:`KINDS`.
        severity: ``"error"`` (inference is wrong now), ``"warning"`` (likely to hurt)
            or ``"info"`` (a fact, a hint, or a check that could not run:
            evidence key ``not_checked``).
        layer: The BN layer concerned (``base/bn`` inside nested models), or None.
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

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-ready data (numbers as Python floats/ints)."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "layer": self.layer,
            "evidence": {k: _plain(v) for k, v in self.evidence.items()},
            "fix": self.fix,
        }


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class Report:
    """What :func:`diagnose` found: a list of findings (one per kind and layer).

    ``print(report)`` gives a plain-text summary grouped per kind (each fix said
    once, the layers listed), a notebook shows an HTML table, :meth:`to_frame`
    returns a DataFrame (one row per finding) and :meth:`to_dict` JSON-ready data.
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

    def to_dict(self) -> dict[str, Any]:
        """``{"model", "examples", "complete", "not_checked", "not_applicable", "counts", "headline", "findings"}``, JSON-ready."""
        return {
            "model": self.model_name,
            "examples": self.examples,
            "complete": not self.not_checked,
            "not_checked": [f"{f.kind}: {f.evidence['not_checked']}" for f in self.not_checked],
            "not_applicable": [f"{f.kind}: {f.evidence['not_applicable']}" for f in self.not_applicable],
            "counts": {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES},
            "headline": self._headline(),
            "findings": [f.to_dict() for f in self.findings],
        }

    def kinds(self, *severities: str) -> set[str]:
        """The kinds found with one of ``severities`` (default: error or warning)."""
        wanted = severities or ("error", "warning")
        return {f.kind for f in self.findings if f.severity in wanted}

    def layers(self, kind: str, *severities: str) -> list[str]:
        """The layers named by findings of ``kind`` (with one of ``severities``, default error or warning)."""
        wanted = severities or ("error", "warning")
        return [f.layer for f in self.findings if f.kind == kind and f.severity in wanted and f.layer]

    @property
    def problems(self) -> list[Finding]:
        """The findings of severity error or warning."""
        return [f for f in self.findings if f.severity in ("error", "warning")]

    @property
    def not_checked(self) -> list[Finding]:
        """The data checks that could not run (info findings with a ``not_checked`` reason).

        They make the report incomplete. A check that needs what was not given and
        is not a data check (``small_batch`` without ``batch_size``,
        ``frozen_but_training`` on an uncompiled model) is in :attr:`not_applicable`
        instead and does not.
        """
        return [f for f in self.findings if "not_checked" in f.evidence]

    @property
    def not_applicable(self) -> list[Finding]:
        """The checks that did not apply (info findings with a ``not_applicable`` reason)."""
        return [f for f in self.findings if "not_applicable" in f.evidence]

    def _headline(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        missing = sorted({f.kind for f in self.not_checked})
        if self.problems:
            verdict = "BN problems found"
        elif missing:
            verdict = "report incomplete, no BN problem found by the checks that ran"
        else:
            verdict = "no BN problem found"
        if missing:
            if self.problems:
                verdict += "; report incomplete"
            verdict += f" ({len(self.not_checked)} check(s) could not run: {', '.join(missing)})"
        skipped = sorted({f.kind for f in self.not_applicable})
        if skipped:
            verdict += f"; not applicable: {', '.join(skipped)}"
        return (
            f"BN doctor on {self.model_name!r} ({self.examples} examples): {verdict}; "
            f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"
        )

    def _groups(self) -> list[tuple[str, str, str, list[Finding]]]:
        groups: dict[tuple[str, str, str], list[Finding]] = {}
        for f in self.findings:
            groups.setdefault((f.severity, f.kind, f.fix), []).append(f)
        return [(s, k, fix, found) for (s, k, fix), found in groups.items()]

    def __str__(self) -> str:
        lines = [self._headline()]
        for severity, kind, fix, found in self._groups():
            named = [f.layer for f in found if f.layer]
            where = f" ({len(named)} layer(s))" if named else ""
            lines.append(f"- {severity.upper():7s} {kind}{where}")
            for f in found[:8]:
                if f.evidence or f.layer:
                    lines.append(f"    [{f.layer or '-'}] {f.evidence_text()}")
            if len(found) > 8:
                rest = [f.layer or "-" for f in found[8:]]
                lines.append(f"    and {len(rest)} more: {', '.join(rest[:20])}{' ...' if len(rest) > 20 else ''}")
            lines.append(f"    fix: {fix}")
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


# ----------------------------------------------------------------------------- the model's BN layers


def _walk(model: keras.layers.Layer, prefix: str = "") -> list[tuple[str, keras.layers.Layer]]:
    """Every sublayer of ``model`` with its path name, nested models and layers included (depth first)."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=False):
        found.append((prefix + layer.name, layer))
        if not isinstance(layer, probes.BN_TYPES):
            found.extend(_walk(layer, prefix + layer.name + "/"))
    return found


def _bn_paths(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """Every BN layer once (a shared one under its first path), depth first."""
    seen: set[int] = set()
    found = []
    for path, layer in _walk(model):
        if isinstance(layer, probes.BN_TYPES) and id(layer) not in seen:
            seen.add(id(layer))
            found.append((path, layer))
    return found


def _channel_axis(layer: keras.layers.Layer, rank: int) -> int:
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        axis = axis[0]
    return int(axis) % rank


# ----------------------------------------------------------------------------- streaming statistics


class _Stream:
    """Per-channel count, mean, sum of squared deviations and non-finite count, merged per batch."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.bad: np.ndarray | None = None
        self.calls = 0
        self.masked = False  # the layer received a Keras mask (its own moments exclude masked positions)

    def add(self, count: int, mean: np.ndarray, m2: np.ndarray, bad: np.ndarray) -> None:
        mean, m2, bad = (np.asarray(a, np.float64) for a in (mean, m2, bad))
        self.calls += 1
        if self.count == 0 or self.mean is None or self.m2 is None or self.bad is None:
            self.count, self.mean, self.m2, self.bad = count, mean, m2, bad
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / total
        self.bad = self.bad + bad
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        assert self.m2 is not None
        return self.m2 / max(self.count, 1)


def _batch_moments(inputs: Any, axis: int) -> tuple[Any, Any, Any, list[int], int]:
    ops = keras.ops
    values = ops.cast(inputs, "float32")
    shape = tuple(int(s) for s in ops.shape(values))
    axes = [i for i in range(len(shape)) if i != axis]
    mean = ops.mean(values, axis=axes, keepdims=True)
    centred = values - mean
    return values, mean, centred, axes, int(np.prod([shape[i] for i in axes]))


@contextlib.contextmanager
def _recording(
    bns: list[tuple[str, keras.layers.Layer]], mode: str, streams: dict[str, _Stream]
) -> Iterator[None]:
    """Wrap each BN layer's ``call`` so that it adds its input's moments to ``streams[path]``.

    ``mode="batch"``: the layer normalises with the statistics of its batch (dropout
    and every other layer as the outer call says), whatever its moving statistics.
    Otherwise the layer's own ``call`` runs unchanged.
    """
    ops = keras.ops
    originals = []
    try:
        for path, layer in bns:
            original = layer.__dict__.get("call")
            originals.append((layer, original))
            bound = layer.call
            stream = streams.setdefault(path, _Stream())

            def wrapped(inputs: Any, *args: Any, _bound: Any = bound, _layer: Any = layer, _stream: Any = stream, **kwargs: Any) -> Any:
                rank = len(inputs.shape)
                axis = _channel_axis(_layer, rank)
                if kwargs.get("mask") is not None:
                    _stream.masked = True
                values, mean, centred, axes, count = _batch_moments(inputs, axis)
                m2 = ops.sum(ops.square(centred), axis=axes)
                bad = ops.sum(ops.cast(ops.logical_not(ops.isfinite(values)), "float32"), axis=axes)
                _stream.add(
                    count,
                    ops.convert_to_numpy(ops.reshape(mean, (-1,))),
                    ops.convert_to_numpy(m2),
                    ops.convert_to_numpy(bad),
                )
                if mode != "batch":
                    return _bound(inputs, *args, **kwargs)
                variance = ops.mean(ops.square(centred), axis=axes, keepdims=True)
                out = centred / ops.sqrt(variance + float(_layer.epsilon))
                shape = [1] * rank
                shape[axis] = -1
                if getattr(_layer, "scale", False) and getattr(_layer, "gamma", None) is not None:
                    out = out * ops.reshape(ops.cast(_layer.gamma, "float32"), shape)
                if getattr(_layer, "center", False) and getattr(_layer, "beta", None) is not None:
                    out = out + ops.reshape(ops.cast(_layer.beta, "float32"), shape)
                return ops.cast(out, inputs.dtype)

            functools.update_wrapper(wrapped, bound)
            layer.__dict__["call"] = wrapped
        yield
    finally:
        for layer, original in originals:
            if original is None:
                layer.__dict__.pop("call", None)
            else:
                layer.__dict__["call"] = original


# ----------------------------------------------------------------------------- inputs and outputs


@dataclass
class _Target:
    """How to read the chosen output against ``y``: 'categorical', 'binary' or 'regression'."""

    kind: str
    index: Any = None  # which output (None: a single output)
    classes: int = 0
    one_hot: bool = False


def _select(outputs: Any, index: Any) -> Any:
    if index is None:
        return outputs
    return outputs[index]


def _check_x(model: keras.Model, x: Any) -> tuple[np.ndarray, str | None]:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array of model inputs, got {type(x).__name__}")
    if len(x) == 0:
        raise ValueError("x is empty: pass a sample of the training inputs (at least 2 examples)")
    if len(x) < 2:
        raise ValueError(f"x must hold at least 2 examples, got {len(x)}")
    expected = tuple(model.inputs[0].shape[1:])
    got = tuple(x.shape[1:])
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise ValueError(f"x has examples of shape {got}, the model expects {expected} (batch axis first)")
    note = None
    input_dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
    if x.dtype.kind in "biu" and "float" in input_dtype:
        note = f"x is {x.dtype} (values {x.min()}..{x.max()}); cast to {input_dtype} as fit() does"
        x = x.astype(input_dtype)
    elif x.dtype.kind not in "fiub":
        raise TypeError(f"x must hold numbers, got dtype {x.dtype}")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0, 0])
            raise ValueError(
                f"x holds {int(bad.sum())} non-finite value(s) (NaN or inf), first in example {first}: "
                "clean the data first (the doctor measures BN statistics on x)"
            )
    return x, note


def _choose_output(model: keras.Model, sample: Any, output: Any) -> tuple[Any, Any, str | None]:
    """``(index, chosen output on sample, note)``; ValueError naming ``output`` when it is not one."""
    if isinstance(sample, dict):
        keys = list(sample)
        if output is None:
            return keys[0], sample[keys[0]], f"{len(keys)} outputs; evaluated the first, {keys[0]!r}"
        if output not in sample:
            raise ValueError(f"output={output!r} is not an output of the model; its outputs are {keys}")
        return output, sample[output], None
    if isinstance(sample, (list, tuple)):
        names = list(getattr(model, "output_names", []) or [])
        if output is None:
            name = names[0] if names else "0"
            return 0, sample[0], f"{len(sample)} outputs; evaluated the first ({name!r}): pass output= to choose"
        if isinstance(output, str):
            if output not in names:
                raise ValueError(f"output={output!r} is not an output of the model; its outputs are {names}")
            return names.index(output), sample[names.index(output)], None
        if isinstance(output, (int, np.integer)) and not isinstance(output, bool) and -len(sample) <= output < len(sample):
            return int(output), sample[int(output)], None
        raise ValueError(f"output={output!r} must be an output index in [0, {len(sample)}) or a name in {names}")
    if output not in (None, 0) and output not in (getattr(model, "output_names", None) or []):
        raise ValueError(f"output={output!r} given, but the model has a single output")
    return None, sample, None


def _check_y(y: Any, n: int, out_shape: tuple[int, ...]) -> _Target:
    """What ``y`` means for an output of shape ``(N, *out_shape)``; ValueError naming ``y`` otherwise."""
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y must be a NumPy array of labels or None, got {type(y).__name__}")
    if len(y) != n:
        raise ValueError(f"y has {len(y)} labels for {n} examples of x; they must be equally many")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold numbers, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"y holds {int((~np.isfinite(y)).sum())} non-finite value(s) (NaN or inf)")
    label = tuple(y.shape[1:])
    classes = out_shape[-1] if out_shape else 1
    spatial = out_shape[:-1] if out_shape else ()
    integral = bool(np.all(y == np.round(y)))
    if out_shape and classes > 1:
        if label == out_shape:
            rows = y.astype(np.float64)
            if np.all(rows >= 0) and np.allclose(rows.sum(axis=-1), 1.0, atol=1e-3):
                return _Target("categorical", classes=classes, one_hot=True)
            return _Target("regression")
        if label in (spatial, spatial + (1,)):
            if not integral:
                raise ValueError(
                    f"y holds non-integer values but has the shape of class labels {label} for an output with "
                    f"{classes} classes: pass integer labels in [0, {classes}) or one-hot rows of shape {out_shape}"
                )
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                raise ValueError(
                    f"y holds labels outside [0, {classes}) (min {low}, max {high}); the model's output has "
                    f"{classes} classes"
                )
            return _Target("categorical", classes=classes)
        raise ValueError(
            f"y has labels of shape {label}; for an output of shape (N, {', '.join(map(str, out_shape))}) the "
            f"doctor accepts integer labels of shape (N, {', '.join(map(str, spatial))}) or one-hot labels of "
            f"shape (N, {', '.join(map(str, out_shape))})"
        )
    # one unit (or no channel axis): binary classifier or regression
    squeezed = out_shape[:-1] if out_shape and out_shape[-1] == 1 else out_shape
    if label not in (squeezed, squeezed + (1,)):
        if len(label) == len(out_shape) and label[:-1] == squeezed and label[-1:] == (2,):
            raise ValueError(
                f"y has one-hot labels of shape {label}, but the output has one unit (a sigmoid or a score): pass "
                f"y as 0/1 of shape (N,) or (N, 1) (for example y.argmax(axis=-1))"
            )
        raise ValueError(f"y has labels of shape {label}, the output has shape {out_shape} per example")
    if integral and set(np.unique(y).tolist()) <= {0, 1}:
        return _Target("binary")
    return _Target("regression")


def _per_example(outputs: Any, y: np.ndarray, target: _Target) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-example loss and accuracy (mean over positions for segmentation/sequence outputs)."""
    out = np.asarray(keras.ops.convert_to_numpy(outputs), np.float64)
    n = len(out)
    finite = np.isfinite(out.reshape(n, -1)).all(axis=1)
    if target.kind == "categorical":
        rows = out.reshape(-1, target.classes)
        ok = np.isfinite(rows).all(axis=1)
        safe = np.where(np.isfinite(rows), rows, 0.0)
        is_probability = np.all(safe >= -1e-6) and np.allclose(safe[ok].sum(axis=1), 1.0, atol=1e-3)
        if not is_probability:
            safe = np.exp(safe - safe.max(axis=1, keepdims=True))
            safe /= safe.sum(axis=1, keepdims=True)
        if target.one_hot:
            labels = np.argmax(y.reshape(-1, target.classes), axis=1)
        else:
            labels = y.reshape(-1).astype(np.int64)
        p = np.clip(safe[np.arange(len(safe)), labels], 1e-7, 1.0)
        loss = np.where(ok, -np.log(p), -np.log(1e-7)).reshape(n, -1).mean(axis=1)
        correct = ((np.argmax(safe, axis=1) == labels) & ok).reshape(n, -1).mean(axis=1)
        return loss, correct
    flat = out.reshape(n, -1)
    truth = y.reshape(n, -1).astype(np.float64)
    if target.kind == "binary":
        prob = flat if np.all((flat[np.isfinite(flat)] >= 0) & (flat[np.isfinite(flat)] <= 1)) else 1 / (1 + np.exp(-flat))
        prob = np.clip(np.nan_to_num(prob, nan=0.5), 1e-7, 1 - 1e-7)
        loss = -(truth * np.log(prob) + (1 - truth) * np.log(1 - prob)).mean(axis=1)
        correct = (((prob > 0.5) == (truth > 0.5)) & finite[:, None]).mean(axis=1)
        return np.where(finite, loss, -np.log(1e-7)), correct
    err = np.where(np.isfinite(flat), flat - truth, np.inf)
    return np.minimum((err**2).mean(axis=1), 1e30), None


def _batches(n: int, size: int, drop_last: bool) -> list[slice]:
    if drop_last:
        size = min(size, n)
        return [slice(start, start + size) for start in range(0, n - size + 1, size)]
    parts = max(1, n // size)  # every part holds >= size (>= 2) examples: a batch variance exists
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _run(
    model: keras.Model,
    x: np.ndarray,
    slices: list[slice],
    training: bool,
    index: Any,
    y: np.ndarray | None,
    target: _Target | None,
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    losses, accuracies, seen = [], [], 0
    for part in slices:
        out = model(x[part], training=training)
        seen += part.stop - part.start
        if y is not None and target is not None:
            loss, acc = _per_example(_select(out, index), y[part], target)
            losses.append(loss)
            if acc is not None:
                accuracies.append(acc)
    if not losses:
        return None, None, seen
    return np.concatenate(losses), (np.concatenate(accuracies) if accuracies else None), seen


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a - b`` and its standard error (paired: the same examples)."""
    m = min(len(a), len(b))
    d = np.asarray(a[:m], np.float64) - np.asarray(b[:m], np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(m)) if m > 1 else float("inf")


# ----------------------------------------------------------------------------- checks


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
        for name, variable in variables.items():
            if variable is None:
                continue
            values = _values(variable)
            bad = ~np.isfinite(values)
            if name == "moving_variance":
                bad |= values < 0
            if bad.any():
                bad_channels |= set(np.flatnonzero(bad).tolist())
                which.append(f"{name}({int(bad.sum())})")
        if bad_channels:
            evidence = {"variables": ", ".join(which), "channels": _channels(np.array(sorted(bad_channels)))}
            findings.append(Finding("non_finite", "error", path, evidence, _FIX["non_finite"]))
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


def _producers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    producers = []
    for node in getattr(layer, "_inbound_nodes", []):
        for parent in node.parent_nodes:
            if parent.operation is not None and not isinstance(parent.operation, keras.layers.InputLayer):
                producers.append(parent.operation)
    return producers


def _dropout_upstream(bn: keras.layers.Layer) -> str | None:
    """The name of a dropout/noise layer whose output reaches ``bn`` through variance-keeping layers."""
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


def _compare(
    moving_mean: np.ndarray, moving_var: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: the ratio of effective variances (moving + eps)/(var + eps) and the mean shift in stds."""
    ratio = (moving_var + eps) / (var + eps)
    shift = np.abs(moving_mean - mean) / np.sqrt(var + eps)
    return ratio, shift


def _check_statistics(
    bns: list[tuple[str, keras.layers.Layer]],
    population: dict[str, _Stream],
    training: dict[str, _Stream],
    dropout_fed: dict[str, str],
    gain: dict[str, Any],
    gain_significant: bool,
    gain_harmful: bool,
    t: Thresholds,
    explained: bool = False,
    integer_x: bool = False,
) -> tuple[list[Finding], dict[str, dict[str, float]]]:
    """``never_updated`` and ``stale_statistics`` per BN layer, with per-channel evidence.

    Per channel, ``ratio`` = (moving var + eps)/(population var + eps) -- the scale
    the layer divides by against the right one, so channels whose variance is below
    epsilon do not count -- and ``shift`` = |moving mean - mean| / sqrt(var + eps).
    A layer is off when the median ratio is outside [1/``stale_variance``,
    ``stale_variance``], the median shift above ``stale_mean``, or more than
    ``channel_fraction`` of its channels are outside [1/``channel_variance``,
    ``channel_variance``] or shifted by more than ``channel_mean``. Below a dropout
    layer a channel is off only if its moving variance is also far from the
    training-mode variance (what training stores). Statistics exactly at their
    initial values with the input off (median bound ``never_updated_variance``) are
    ``never_updated`` (error). ``stale_statistics`` is an error when re-estimating
    all statistics gains accuracy significantly (``gap_z`` paired standard errors and
    ``gap_min``), info when it makes the loss worse and the accuracy no better (the
    weights are adapted to these statistics, as with Batch Renormalization,
    chapter 8), a warning otherwise. When no layer is outside the bands but
    re-estimating every layer gains significantly (and no non-finite value explains
    the gain), the most deviant layer is reported as an error with
    ``below_bands`` in its evidence: the measured gain is the evidence (found on the
    out-of-sample CNN of ``tests/test_doctor_zoo.py``, whose decision is sensitive
    to small offsets).
    """
    findings = []
    rows: dict[str, dict[str, float]] = {}
    scores: dict[str, tuple[float, dict[str, Any]]] = {}
    for path, bn in bns:
        stream = population.get(path)
        if stream is None or stream.count == 0 or stream.mean is None:
            findings.append(_info("stale_statistics", path, "the layer was not called on x"))
            continue
        if stream.masked:
            # Keras's BN computes its moments over the unmasked positions only; the streamed moments
            # here include the padded ones, so comparing them would report healthy layers as stale.
            reason = "the layer receives a mask (Masking, Embedding(mask_zero=True)): masked statistics not measured"
            findings.append(_info("stale_statistics", path, reason))
            continue
        mean, var = stream.mean, stream.variance
        moving_mean, moving_var = _values(bn.moving_mean), _values(bn.moving_variance)
        eps = float(bn.epsilon)
        usable = np.isfinite(mean) & np.isfinite(var) & np.isfinite(moving_mean) & np.isfinite(moving_var) & (moving_var >= 0)
        if not usable.any():
            continue  # reported as non_finite
        ratio, shift = _compare(moving_mean[usable], moving_var[usable], mean[usable], var[usable], eps)
        log_ratio = np.abs(np.log(ratio))
        off = (log_ratio > math.log(t.channel_variance)) | (shift > t.channel_mean)
        train = training.get(path)
        train_ratio = None
        if path in dropout_fed and train is not None and train.count:
            train_var = train.variance[usable]
            train_ratio = (moving_var[usable] + eps) / (train_var + eps)
            off &= np.abs(np.log(train_ratio)) > math.log(t.channel_variance)
            rows[path] = {
                "inference_training_variance_ratio": float(np.median((var[usable] + eps) / (train_var + eps))),
                "moving_inference_variance_ratio": float(np.median(ratio)),
                "moving_training_variance_ratio": float(np.median(train_ratio)),
            }
        var_ratio = float(np.median(ratio))
        mean_shift = float(np.median(shift))
        fraction = float(off.mean())
        channels = np.flatnonzero(usable)
        worst = np.argsort(-np.maximum(log_ratio / math.log(t.channel_variance), shift / t.channel_mean))[:3]
        worst_text = ", ".join(f"{int(channels[i])}: ratio {ratio[i]:.3g}, shift {shift[i]:.3g}" for i in worst)
        far_var = abs(math.log(var_ratio)) > math.log(t.stale_variance)
        if train_ratio is not None:
            far_var = far_var and abs(math.log(float(np.median(train_ratio)))) > math.log(t.stale_variance)
        far_mean = mean_shift > t.stale_mean
        far_channels = fraction > t.channel_fraction
        evidence: dict[str, Any] = {
            "var_ratio": var_ratio,
            "mean_shift": mean_shift,
            "channels_off": f"{int(off.sum())} of {len(off)}",
            "fraction_off": fraction,
            "worst_channels": worst_text,
        }
        scores[path] = (max(abs(math.log(var_ratio)) / math.log(t.stale_variance), mean_shift / t.stale_mean), evidence)
        init_mean = _values(bn.moving_mean_initializer(moving_mean.shape))
        init_var = _values(bn.moving_variance_initializer(moving_var.shape))
        if np.array_equal(moving_mean, init_mean) and np.array_equal(moving_var, init_var):
            if abs(math.log(var_ratio)) > math.log(t.never_updated_variance) or far_mean or far_channels:
                findings.append(
                    Finding("never_updated", "error", path, {"moving": "initial values", **evidence}, _FIX["never_updated"])
                )
            continue
        if far_var or far_mean or far_channels:
            severity = "error" if gain_significant else "warning"
            if gain_harmful:
                severity = "info"  # the weights are adapted to these statistics: re-estimating hurts
            kind = "stale_statistics"
            if path == bns[0][0]:
                # The first BN layer off by x100 in nearly every channel (or at all, with integer x):
                # the sample is scaled unlike the training data, not the statistics stale.
                scaled = float(np.mean(log_ratio > math.log(t.input_scale_variance)))
                if scaled >= t.input_scale_fraction or integer_x:
                    kind = "input_scale"
                    evidence = {**evidence, "fraction_off_by_more_than_x100": scaled, "integer_x": integer_x}
            findings.append(Finding(kind, severity, path, {**evidence, **gain}, _FIX[kind]))
    explained = explained or any(f.kind in ("stale_statistics", "never_updated", "input_scale") for f in findings)
    if gain_significant and not explained and scores:
        # Below every band, yet re-estimating all layers gains significantly: the measured gain is the
        # evidence (a model whose decision is sensitive to small offsets); name the most deviant layer.
        path = max(scores, key=lambda p: scores[p][0])
        evidence = {"below_bands": "re-estimating gains significantly", **scores[path][1], **gain}
        findings.append(Finding("stale_statistics", "error", path, evidence, _FIX["stale_statistics"]))
    return findings, rows


def _check_dropout(rows: dict[str, dict[str, float]], dropout_fed: dict[str, str], t: Thresholds) -> list[Finding]:
    """``dropout_variance_shift``: a dropout (or noise) layer feeds a BN layer.

    ``inference_training_variance_ratio``: median over channels of the BN input's
    variance with dropout off (population pass) over its training-mode variance. A
    warning when outside [``dropout_ratio``, 1/``dropout_ratio``] = [0.8, 1.25],
    unless the moving variance already matches the inference-mode one (within that
    band and nearer it than the training-mode one: re-estimated with dropout off,
    chapter 7's remedy); info otherwise.
    """
    findings = []
    for name, dropout in dropout_fed.items():
        row = rows.get(name)
        if row is None:
            findings.append(_info("dropout_variance_shift", name, f"{dropout!r} feeds it; no training-mode pass ran"))
            continue
        ratio = row["inference_training_variance_ratio"]
        moving_ratio = row["moving_inference_variance_ratio"]
        train_ratio = row["moving_training_variance_ratio"]
        low = t.dropout_ratio
        corrected = low <= moving_ratio <= 1 / low and abs(math.log(moving_ratio)) < abs(math.log(train_ratio))
        severity = "warning" if not low <= ratio <= 1 / low and not corrected else "info"
        evidence = {"dropout": dropout, "inference_training_variance_ratio": ratio, "moving_inference_variance_ratio": moving_ratio}
        findings.append(Finding("dropout_variance_shift", severity, name, evidence, _FIX["dropout_variance_shift"]))
    return findings


def _check_inputs(bns: list[tuple[str, keras.layers.Layer]], inference: dict[str, _Stream]) -> list[Finding]:
    """``non_finite`` BN inputs on ``x`` in inference mode, and ``shared_layer``."""
    findings = []
    for path, _ in bns:
        stream = inference.get(path)
        if stream is None or stream.bad is None:
            continue
        bad = np.flatnonzero(stream.bad > 0)
        if len(bad):
            evidence = {"input_on_x": f"NaN/inf in {len(bad)} of {len(stream.bad)} channels", "channels": _channels(bad)}
            findings.append(Finding("non_finite", "error", path, evidence, _FIX["non_finite"]))
    return findings


def _check_gap(
    train: tuple[np.ndarray | None, np.ndarray | None],
    infer: tuple[np.ndarray | None, np.ndarray | None],
    causes: list[Finding],
    t: Thresholds,
) -> list[Finding]:
    """``train_inference_gap``: training mode predicts better than inference mode on ``(x, y)``.

    Classification: the accuracy difference (training - inference mode, the same
    examples in both, hence a paired standard error) above ``gap_z`` = 3 standard
    errors and above ``gap_min`` = 1 point. Regression: the inference loss above
    ``gap_loss_ratio`` = 2 times the training-mode loss and 3 standard errors.
    Measured on 1,000 of the book's training images: healthy MLPs score 1-4 points
    *lower* in training mode; chapter 10's lagging model 21 points higher.
    """
    loss_t, acc_t = train
    loss_i, acc_i = infer
    if loss_t is None or loss_i is None:
        return []
    evidence: dict[str, Any] = {"loss_training_mode": float(loss_t.mean()), "loss_inference_mode": float(loss_i.mean())}
    if acc_t is not None and acc_i is not None:
        gap, se = _paired(acc_t, acc_i)
        found = gap > t.gap_min and gap > t.gap_z * se
        evidence.update(
            accuracy_training_mode=float(acc_t.mean()), accuracy_inference_mode=float(acc_i.mean()), paired_se=se
        )
    else:
        gap, se = _paired(loss_i, loss_t)
        found = float(loss_i.mean()) > t.gap_loss_ratio * float(loss_t.mean()) and gap > t.gap_z * se
    if not found:
        return []
    problems = [f for f in causes if f.severity in ("error", "warning")]
    cause = next((k for k in _CAUSE_ORDER if any(f.kind == k for f in problems)), "unknown")
    evidence["likely_cause"] = cause
    fix = _FIX["train_inference_gap"] if cause == "unknown" else f"fix {cause}: " + _FIX[cause]
    return [Finding("train_inference_gap", "error", None, evidence, fix)]


# ----------------------------------------------------------------------------- entry points


def _check_model(model: Any) -> None:
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


def _sorted(findings: list[Finding]) -> list[Finding]:
    order = {s: i for i, s in enumerate(SEVERITIES)}
    kinds = {k: i for i, k in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order[f.severity], kinds[f.kind]))


def static_checks(model: keras.Model, *, batch_size: int | None = None, **thresholds: float) -> Report:
    """The checks that need no data (variables, hyperparameters, graph, optimizer, batch size).

    ``non_finite`` variables, ``pytorch_momentum``, ``large_epsilon``,
    ``float16_statistics``, ``training_false_override``, ``frozen_but_training``,
    ``weight_ema``, ``small_batch``, ``redundant_bias`` and ``foldable``. The data
    checks are listed as not run, so the headline says the report is incomplete.

    Raises:
        TypeError: As :func:`diagnose`.
        ValueError: As :func:`diagnose`.
    """
    check_model(model)
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: give it an Input or call it on data first")
    t = Thresholds.with_overrides(thresholds)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    bns = _bn_paths(model)
    findings = _check_static(model, bns, batch_size, t) if bns else []
    if bns:
        for kind in ("never_updated", "stale_statistics", "train_inference_gap"):
            findings.append(_info(kind, None, "static checks only: no data x"))
    return Report(_sorted(findings), model.name, 0)


def _check_arguments(
    model: Any,
    x: Any,
    y: Any,
    batch_size: Any,
    output: Any,
    pass_size: Any,
    seed: Any,
    thresholds: dict[str, Any],
) -> tuple[Thresholds, int | None, int, int, np.ndarray, str | None, Any, str | None, _Target | None]:
    """Every argument of :func:`diagnose` checked (raising as it documents), before any pass runs."""
    _check_model(model)
    t = Thresholds.with_overrides(thresholds)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    pass_size = check_int(pass_size, "pass_size", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    x, cast_note = _check_x(model, x)
    sample = model(x[: min(2, len(x))], training=False)
    index, chosen, output_note = _choose_output(model, sample, output)
    out_shape = tuple(int(s) for s in keras.ops.shape(chosen)[1:])
    target = _check_y(y, len(x), out_shape) if y is not None else None
    return t, batch_size, pass_size, seed, x, cast_note, index, output_note, target


def diagnose(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    batch_size: int | None = None,
    output: int | str | None = None,
    pass_size: int = 128,
    seed: int = 0,
    **thresholds: float,
) -> Report:
    """Diagnose every BN layer of ``model`` on a sample ``x`` (and labels ``y``) of its training data.

    Args:
        model: A built single-input Keras model (Sequential, Functional, subclassed
            with an ``Input``), BN layers anywhere in it: nested models at any depth,
            ``keras.applications`` bases, shared layers,
            ``keras.layers.BatchNormalization`` and :class:`bnbook.layers.BatchNorm`.
        x: Training inputs, shape ``(N, *input shape)``, N >= 2, finite (a few
            hundred examples; integer images are cast to the model's float input,
            as ``fit`` does, with an ``input_cast`` note).
        y: Labels for the chosen output, or None (the checks that need labels then
            say so): integer classes ``(N, ...)`` in ``[0, classes)``, one-hot rows of
            the output's shape, 0/1 for a one-unit (sigmoid or logit) output, or
            regression targets of the output's shape. Segmentation and sequence
            outputs ``(N, ..., classes)`` take labels ``(N, ...)``.
        batch_size: The batch size the model was trained with (Keras does not
            record it), used by ``small_batch`` and for the training-mode pass;
            None: 32 for that pass, and ``small_batch`` is not checked.
        output: For a model with several outputs, the one ``y`` labels (index or
            name); None: the first, with an ``output_choice`` note.
        pass_size: Examples per forward pass of the statistics passes (memory only;
            the population pass normalises each BN layer with its batch, so at least
            2; larger is more exact).
        seed: Seed of the permutation applied to ``x`` (and ``y``) before the
            training-mode pass (a class-sorted sample would bias batch statistics).
        **thresholds: Overrides of :class:`Thresholds` (names and defaults in the
            module docstring), e.g. ``channel_fraction=0.1``.

    Returns:
        A :class:`Report`. The model is left as it was (its moving statistics and
        random-generator states are restored after the passes).

    Raises:
        TypeError: ``model`` is not a Keras model, ``x``/``y`` not NumPy arrays of
            numbers, an int argument of another type, an unknown threshold.
        ValueError: The model is not built or has several inputs; ``x`` is empty,
            of the wrong shape or non-finite; ``y`` has another length than ``x``,
            labels outside ``[0, classes)``, one-hot labels for a one-unit output or
            a shape that fits no reading of the output; ``output`` is not one of the
            model's outputs; ``batch_size`` < 1 or ``pass_size`` < 2; a threshold <= 0.
    """
    t, batch_size, pass_size, seed, x, cast_note, index, output_note, target = _check_arguments(
        model, x, y, batch_size, output, pass_size, seed, thresholds
    )
    order = np.random.default_rng(seed).permutation(len(x))
    x = x[order]
    y = None if y is None else y[order]

    report = Report([], model.name, len(x))
    bns = _bn_paths(model)
    if not bns:
        report.findings.append(
            Finding("foldable", "info", None, {"BN layers": 0}, "nothing to diagnose: the model has no BN layer")
        )
        return report
    findings = _check_static(model, bns, batch_size, t)
    if cast_note:
        findings.append(Finding("input_cast", "info", None, {"x": cast_note}, _FIX["input_cast"]))
    if output_note:
        findings.append(Finding("output_choice", "info", None, {"output": output_note}, _FIX["output_choice"]))
    dropout_fed = {path: d for path, bn in bns if (d := _dropout_upstream(bn)) is not None}

    stats_slices = _batches(len(x), pass_size, drop_last=False)
    population: dict[str, _Stream] = {}
    inference: dict[str, _Stream] = {}
    training: dict[str, _Stream] = {}
    with probes.unchanged_state(model):
        with _recording(bns, "batch", population):
            _run(model, x, stats_slices, False, index, None, None)
        with _recording(bns, "inference", inference):
            infer = _run(model, x, stats_slices, False, index, y, target)[:2]
        train: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        if y is not None or dropout_fed:
            train_slices = _batches(len(x), batch_size or 32, drop_last=True)
            with _recording(bns, "training", training):
                train = _run(model, x, train_slices, True, index, y, target)[:2]
        gain: dict[str, Any] = {}
        significant = harmful = False
        if y is not None:
            for path, bn in bns:
                stream = population.get(path)
                if stream is None or stream.mean is None or stream.masked:
                    continue  # a masked layer keeps its own statistics (its streamed ones include padding)
                mean, var = stream.mean, stream.variance
                if np.isfinite(mean).all() and np.isfinite(var).all():
                    bn.moving_mean.assign(mean.astype(keras.backend.standardize_dtype(bn.moving_mean.dtype)))
                    bn.moving_variance.assign(var.astype(keras.backend.standardize_dtype(bn.moving_variance.dtype)))
            loss1, acc1 = _run(model, x, stats_slices, False, index, y, target)[:2]
            loss0, acc0 = infer
            assert loss0 is not None and loss1 is not None
            gain = {"loss_now": float(loss0.mean()), "loss_reestimated": float(loss1.mean())}
            if acc0 is not None and acc1 is not None:
                diff, se = _paired(acc1, acc0)
                gain.update(accuracy_now=float(acc0.mean()), accuracy_reestimated=float(acc1.mean()))
                significant = diff > t.gap_min and diff > t.gap_z * se
                harmful = gain["loss_reestimated"] > gain["loss_now"] and diff <= 0
            else:
                diff, se = _paired(loss0, loss1)
                significant = gain["loss_now"] > t.gap_loss_ratio * gain["loss_reestimated"] and diff > t.gap_z * se
                harmful = gain["loss_reestimated"] > gain["loss_now"]
    for path, _ in bns:
        calls = inference[path].calls / max(len(stats_slices), 1) if path in inference else 0
        if calls > 1:
            evidence = {"calls_per_forward_pass": round(calls, 2), "statistics": "pooled over its calls"}
            findings.append(Finding("shared_layer", "info", path, evidence, _FIX["shared_layer"]))
    findings += _check_inputs(bns, inference)
    explained = any(f.kind == "non_finite" for f in findings)  # re-estimation's gain is then the NaN's
    stat_findings, rows = _check_statistics(
        bns, population, training, dropout_fed, gain, significant, harmful, t, explained, integer_x=cast_note is not None
    )
    findings += stat_findings
    findings += _check_dropout(rows, dropout_fed, t)
    if y is None:
        findings.append(_info("train_inference_gap", None, "no labels y given"))
    else:
        findings += _check_gap(train, infer, findings, t)
    report.findings = _sorted(findings)
    return report


class DoctorCallback(keras.callbacks.Callback):
    """Run the doctor around ``fit``: static checks when it starts, every check when it ends.

    ``model.fit(..., callbacks=[DoctorCallback(x_sample, y_sample, batch_size=64)])``
    prints :func:`static_checks` at the start of training and :func:`diagnose` on
    ``(x, y)`` at its end; the reports are kept in ``self.start_report`` and
    ``self.report``. Keyword arguments are passed to :func:`diagnose`.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None = None, *, verbose: bool = True, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a NumPy array of model inputs, got {type(x).__name__}")
        self.x, self.y, self.verbose, self.kwargs = x, y, verbose, kwargs
        self.start_report: Report | None = None
        self.report: Report | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Check ``x``, ``y`` and the keyword arguments against the model, then run :func:`static_checks`.

        Raises:
            TypeError: As :func:`diagnose`, before the first training step.
            ValueError: As :func:`diagnose` (``x`` of the wrong shape, ``y`` that fits no
                reading of the output, an unknown ``output``), before the first training step.
        """
        kwargs = dict(self.kwargs)
        _check_arguments(
            self.model,
            self.x,
            self.y,
            kwargs.pop("batch_size", None),
            kwargs.pop("output", None),
            kwargs.pop("pass_size", 128),
            kwargs.pop("seed", 0),
            kwargs,
        )
        static = {k: v for k, v in self.kwargs.items() if k not in ("output", "pass_size", "seed")}
        self.start_report = static_checks(self.model, **static)
        if self.verbose:
            print(self.start_report)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.report = diagnose(self.model, self.x, self.y, **self.kwargs)
        if self.verbose:
            print(self.report)


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


def _threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``bnbook-doctor MODEL.keras --data DATA.npz [options]`` (or ``python -m bnbook.doctor``).

    Prints the report (``--json``: :meth:`Report.to_dict` as JSON) and returns the
    exit status: 0, or 1 when a finding reaches ``--fail-on`` (``error``, the
    default, or ``warning``); 2 for bad files, bad arguments and data that do not
    fit the model (a one-line ``error:`` message).
    """
    parser = argparse.ArgumentParser(prog="bnbook-doctor", description="Diagnose the BN layers of a saved model.")
    parser.add_argument("model", help="a saved Keras model (.keras)")
    parser.add_argument("--data", required=True, help="an .npz file with a sample of the training inputs")
    parser.add_argument("--x", dest="x_key", default=None, help="the array of inputs in the .npz (default: x, or its only array)")
    parser.add_argument("--labels", default=None, help="the array of labels in the .npz (optional)")
    parser.add_argument("--batch-size", type=int, default=None, help="the training batch size")
    parser.add_argument("--output", default=None, help="the output the labels are for (index or name)")
    parser.add_argument("--pass-size", type=int, default=128, help="examples per forward pass (default 128)")
    parser.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="NAME=VALUE", help="override a threshold")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--fail-on", choices=("error", "warning"), default="error", help="exit status 1 from this severity (default error)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    output: int | str | None = args.output
    if isinstance(output, str) and output.lstrip("-").isdigit():
        output = int(output)
    try:
        model = _load_model(args.model)
        x, y = _load_data(args.data, args.x_key, args.labels)
        report = diagnose(
            model, x, y, batch_size=args.batch_size, output=output, pass_size=args.pass_size, **dict(args.threshold)
        )
    except SystemExit as stop:
        print(stop, file=sys.stderr)
        return 2
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    elif not _bn_paths(model):
        print(f"{args.model}: the model has no BN layer (BatchNormalization or bnbook BatchNorm); nothing to diagnose")
    else:
        print(report)
    failing = ("error",) if args.fail_on == "error" else ("error", "warning")
    return 1 if any(f.severity in failing for f in report.findings) else 0


def cli() -> None:
    """The ``bnbook-doctor`` console script: :func:`main` on ``sys.argv``, its return value as exit status."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
