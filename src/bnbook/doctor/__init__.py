"""Diagnose a model's batch normalization problems from its weights and a sample of data.

:func:`diagnose` looks at a built Keras model and a sample of its training inputs
(and labels, when available) and returns a :class:`Report` of :class:`Finding` s,
one per problem and BN layer, each with the measured numbers that triggered it and
the remedy, naming the chapter of the book that explains it. Printed, the report
groups the findings per kind (the layers listed once, the fix said once).

=========================== ==========================================================
kind                        what it measures
=========================== ==========================================================
``non_finite``              NaN/inf (or a variance at or below -epsilon) in a BN
                            variable, or NaN/inf in a BN layer's input on ``x`` (error,
                            naming the channels); a variance in (-epsilon, 0) is a
                            warning (the output stays finite)
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
                            (Keras excludes masked positions from its moments).
                            When only BN layers fed by the input (through no earlier
                            BN layer) are off and every deeper one is inside the
                            bands, the fix names input preprocessing first ("if x is
                            not preprocessed as in training ..."): the signature of
                            a preprocessing mismatch, and of a stale first layer
                            (the severity is unchanged)
``train_inference_gap``     training-mode vs inference-mode accuracy/loss on
                            ``(x, y)``, relative to its standard error over batches, with
                            the most likely cause (nearly blind below about 10
                            training-mode batches: see :func:`diagnose`)
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
``eager_passes``            the passes could not be compiled into a ``tf.function``
                            and ran eagerly (more memory per example), with the
                            reason -- info
=========================== ==========================================================

Every BN layer is checked wherever it sits: nested Sequential/Functional models at
any depth, ``keras.applications`` bases, layers shared between calls,
``keras.layers.BatchNormalization`` and :class:`bnbook.layers.BatchNorm` (and their
subclasses). The measurements stream: each BN layer's ``call`` is wrapped for the
duration of a pass so that it adds the per-channel count, mean and sum of squared
deviations of its input (Chan et al.'s merge, float64) and nothing of size
(examples x activations) is kept; one forward pass over ``x`` per mode measures every
layer at once, in batches of ``pass_size``. When a pass would hold more than about 128 MB
(estimated from the widest BN input) or the passes run 8 batches or more, each mode's pass
is traced once into a
``tf.function`` (TensorFlow frees each activation after its last use, where an eager
call of a functional model holds all of them until it returns; smaller passes run eagerly
and save the tracing), and ``pass_size``
defaults to 128 examples or fewer, so that one pass stays under about 1 GiB (at 224 x
224 on 2 idle cores, ``benchmarks/doctor_scale_report.txt`` run 4: MobileNetV2-0.35 with
256 labelled images in 18 s and 1.1 GB of extra memory, ResNet50 with 64 in 26 s and
1.3 GB). The passes:

1. *population* (dropout off; every BN layer normalises with the statistics of its
   batch, so that a broken layer upstream does not bias the layers after it): the
   statistics of each BN input, which the moving statistics are compared with. With
   dropout off and batch statistics this is neither "precise BN" (training mode,
   dropout on) nor the inference network; it is the first pass of the re-estimation;
2. *inference* (the model as it predicts): non-finite BN inputs, and the predictions;
3. *training* (batches of ``batch_size``, shuffled with a fixed seed, dropout on;
   only with labels or a dropout feeding BN): the training-mode variance of each BN
   input and the training-mode predictions;
4. *re-estimated* (with labels): the fix the findings name,
   :func:`bnbook.probes.reestimate_bn_statistics` (the same code): from the population
   statistics, further passes in inference mode until no statistic changes by more
   than 0.01 or 4 passes in all (:data:`~bnbook.doctor.diagnosis.REESTIMATION_TOLERANCE`,
   ``REESTIMATION_PASSES``), which gives the inference network's statistics (Li et
   al.'s re-estimation; exact in 2 passes when ``x`` fits one pass batch, within a few
   passes of them otherwise); then the predictions with them. ``accuracy_reestimated`` therefore measures that fix, on ``x`` itself
   (in sample: score it on held-out images before trusting a small gain).

Losses: cross-entropy for classification outputs (categorical, or binary for one unit),
squared error for regression. Whether a classification output holds probabilities or logits
is decided once per call, from the output's last layer (softmax or sigmoid: probabilities;
no activation: logits), else from the values of the inference-mode pass (probabilities when
they all are), and every pass is read that way, so the passes compare on one scale.

The model is left as it was (moving statistics and random-generator states restored).
A data check that cannot run is an ``info`` finding with the evidence key ``not_checked``,
and the headline then says the report is incomplete -- never "no BN problem found". A
check that needs an argument or state that is not data (``small_batch`` without
``batch_size``, ``frozen_but_training`` on an uncompiled model) is an ``info`` finding
with the key ``not_applicable``, listed in the headline but not making it incomplete.

Thresholds (keyword arguments of :func:`diagnose`; defaults in :data:`THRESHOLDS`):

=========================== ======= ===================================================
name                        default where it comes from
=========================== ======= ===================================================
``stale_variance``          2.0     median over channels of (moving var + eps)/(var +
                                    eps) outside [1/2, 2]: the output's std off by 1.41.
                                    The book's MLPs (chapter 10): healthy 1.15-1.26,
                                    30 steps 4.1 and 2.1, 60 steps 2.4 and 1.7
``stale_mean``              0.5     median ``|moving mean - mean| / std`` (healthy MLPs
                                    0.06-0.15)
``channel_variance``        4.0     a single channel is off when its ratio is outside
                                    [1/4, 4] or its shift above ``channel_mean``
``channel_mean``            1.0     (one standard deviation)
``channel_broken_variance`` 10.0    one channel with a ratio outside [1/10, 10]...
``channel_broken_mean``     3.0     ...or shifted by 3 standard deviations makes the layer
                                    stale, whatever its width (a per-channel test: one
                                    x100 channel among 32 or 2,048 is found; one x5
                                    channel among 16 is not)
``channel_fraction``        0.05    many mildly off channels: more than 5 % of the
                                    channels outside the ``channel_variance`` band...
``channel_count``           3       ...and at least 3 of them (so that one noisy channel of
                                    a narrow layer is not enough). Chapter 10's MLPs:
                                    mended model 3 of 64 (4.7 %), lagging 4 of 64
``never_updated_variance``  1.5     median ratio bound for statistics at their initial
                                    values (exact initial values are evidence already)
``dropout_ratio``           0.8     inference/training variance of a dropout-fed BN
                                    input (MLPs of chapter 10: Dropout(0.5) 0.66-0.70,
                                    Dropout(0.1) 0.95, no dropout 1.00-1.02)
``gap_z``                   3.0     accuracy gap above the Student-t equivalent of 3
                                    standard errors over training batches (the examples
                                    of a batch share its statistics; the same examples
                                    in both modes); re-estimation gain above 3 paired
                                    standard errors over examples (inference mode)...
``gap_min``                 0.01    ...and above 1 point (a negligible difference)
``gap_loss_ratio``          2.0     regression: inference loss above twice the
                                    training-mode loss, and the re-estimation gain: loss
                                    now above twice the re-estimated loss (no local
                                    evidence: a guess)
``gain_loss_ratio``         1.25    classification: re-estimating is also significant
                                    when it lowers the mean cross-entropy on ``x`` below
                                    1/1.25 = 80 % of its value *and* by more than
                                    ``gap_z`` paired standard errors (evidence
                                    ``loss_rise_z`` below -``gap_z``), whatever the
                                    accuracy does: a fifth of the loss is a minimum size,
                                    as ``gap_min`` is for accuracy (not calibrated;
                                    review 2's CNN with BN1's variance / 8: 0.894 ->
                                    0.496, x1.8, held-out loss doubled, accuracy -4
                                    points, only a warning before). It makes a layer
                                    outside the bands an error; it never names a layer
                                    inside them (``below_bands`` needs the accuracy
                                    gain): on chapter 10's healthy MLPs re-estimating on
                                    ``x`` lowers the loss 22-46 % at equal accuracy
                                    (also held out: test loss 0.418 -> 0.297), statistics
                                    lagging within the bands
``small_batch``             16      rule of thumb (Wu and He's ImageNet measurements);
                                    for Dense layers the std of a batch mean is
                                    1/sqrt(B) of the feature's, for convolutions the
                                    batch mean averages B x positions correlated values
``pytorch_momentum``        0.5     Keras's momentum is the weight of the *old* value
                                    (default 0.99); PyTorch's is the new one's (0.1)
``epsilon_fraction``        0.5     ``epsilon`` >= moving variance in more than half the
                                    channels (not calibrated: a static plausibility test)
``input_scale_variance``    100.0   the first BN layer's channel ratio outside [1/100,
                                    100]: pixels 0-255 against 0-1 give 255**2; stale
                                    statistics rarely reach it in most channels...
``input_scale_fraction``    0.9     ...in at least 90 % of its channels (not calibrated)
=========================== ======= ===================================================

Calibration set: the zoo (``tests/test_doctor_zoo.py``). The thresholds above were set
on the book's MLPs (chapter 10) and the unit tests' 12-feature MLPs
(``tests/test_doctor.py``), the per-channel band on the 32-channel CNN of
``tests/test_doctor_real.py``; the zoo's models were written after, each with the
finding its break must produce, and run with the defaults. Out of sample it is only
for the rules fixed before the zoo (the bands, ``never_updated``, ``non_finite``,
dropout, the static checks). Three rules came after models of the zoo had been seen,
so for them the zoo is calibration, not a held-out estimate: the ``below_bands`` rule
(added in the zoo's own commit, d1f0e7c, "found on the out-of-sample CNN" of the zoo), and the
broken-channel rule and the gap's standard error over batches (added after a review
that ran the zoo). Result: 22 broken models, 21 hits and 1 partial miss; 6 healthy
trained models, 6 clean (table below; the held-out set follows it). The miss became a hit
after review 3 (N1': "adapted statistics" needs an accuracy drop), a rule change made
after this case was seen.

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
                                                                            adapted statistics);
                                                                            since N1': warning
MobileNetV2 0.35 (32 x 32)    untrained; NaN deep; nested base lagging      hits
ResNet50 (32 x 32)            one deep layer's variance x25                 hit (that layer)
EfficientNetB0 (32 x 32)      one layer's mean +2 std; momentum 0.1         hits
============================  ============================================  ==================

Held-out set (``tests/test_doctor_heldout.py``): six kinds of model none of the rules was
set on, the breaks and the expected findings written before the doctor was first run on
them; healthy models diagnosed on another draw than the one their statistics were estimated
on. First run: 11 broken models, 8 hits and 3 partial misses (the layer named, but only as
info, so the headline said "no BN problem found"); 6 healthy, 6 clean. Two of the misses came
from the "adapted statistics" rule, which then demoted on *any* loss rise on ``x``. Review 2
(N1) made it a test (a loss rise above ``gap_z`` paired standard errors, as for the gain),
decided from that reasoning, not tuned, but *after* the set had been seen: the two rows marked
"fixed by N1" are therefore no longer held-out results. After it: 10 of 11 named at warning
or above, 6 healthy still clean. The remaining miss is a strict ``xfail`` test. Review 2's N4
(``gain_loss_ratio``) was also changed after the set had been seen: its first version (a
loss-only gain could name a layer inside every band) turned the healthy shared_transfer model
into a ``below_bands`` error; the final rule (a loss-only gain only raises the severity of a
layer outside the bands) was decided on chapter 10's calibration reports, with that flip in
view, so for N4 the healthy rows are not a held-out result (details in the test module).

============================  ============================================  ==================
family (held out)             breaks                                        result
============================  ============================================  ==================
sequence tagger (Conv1D ->    one of 16 channels' variance x20              hit
BN -> GRU -> BN, per step)    4 steps at momentum 0.99 (lagging)            partial miss: info
                                                                            (loss 1.19 -> 1.20,
                                                                            0.5 SE); fixed by
                                                                            N1: warning
segmentation (encoder-        decoder mean +2 std; pixels 0-255             hits
decoder, per-pixel softmax)
residual channels-first,      stem variance / 8 in every channel            partial miss: info
separable conv, sigmoid                                                     (loss 0.098 ->
(N, 1)                                                                      0.124, 1.4 SE);
                                                                            fixed by N1: warning
                              Dropout(0.4) before the branch's BN           partial miss: info
                                                                            (ratio 0.87 > 0.8)
transfer, two deep, shared    shared BN reset to (0, 1); training=False     hits
BN in the innermost model
two outputs, regression head  trunk mean +3 std                             hit (stale and
                                                                            gap error)
MobileNetV3Small (32 x 32)    untrained; one deep layer's variance / 20     hits
============================  ============================================  ==================

``stale_statistics`` is never demoted to info. When re-estimating every layer *lowers the
accuracy* on ``x`` by more than ``gap_min`` and ``gap_z`` paired standard errors, the weights
may have been trained against these statistics (Batch Renormalization): the finding stays a
warning, with the evidence ``adapted`` and a fix that says to compare both on held-out data
before re-estimating. A loss rise at equal accuracy is not evidence of that (review 3, N1'):
on a sample the model fits, statistics that shrink a late layer's variance sharpen the
outputs and lower the loss there, while held out they make the model over-confident (held-out
loss x2.4-3.1 in review 3's overfit CNN, ``test_shrunk_variance_on_an_overfit_sample_is_not_read_as_adapted``);
it is reported as ``reestimation_loss`` and the severity stays. Until review 3, such a loss
rise demoted every band finding to info and the headline said "no BN problem found".

Run as a program, ``bnbook-doctor MODEL.keras --data DATA.npz`` (or ``python -m
bnbook.doctor ...``) prints the report of a saved model on the arrays of an ``.npz``
file; ``--json`` prints :meth:`Report.to_dict` and ``--fail-on warning`` makes
warnings fail a CI job.

Modules: :mod:`~bnbook.doctor.findings` (the report), :mod:`~bnbook.doctor.thresholds`,
:mod:`~bnbook.doctor.evidence` (fix texts), :mod:`~bnbook.doctor.graph` (finding the BN
layers), :mod:`~bnbook.doctor.arguments`, :mod:`~bnbook.doctor.scoring` and
:mod:`~bnbook.doctor.streaming` (the passes over data), :mod:`~bnbook.doctor.static` and
:mod:`~bnbook.doctor.data_checks` (the checks), :mod:`~bnbook.doctor.diagnosis` (the entry
points), :mod:`~bnbook.doctor.callback` and :mod:`~bnbook.doctor.command_line`.
"""

from __future__ import annotations

from bnbook.doctor.callback import DoctorCallback
from bnbook.doctor.command_line import cli, main
from bnbook.doctor.diagnosis import diagnose, static_checks
from bnbook.doctor.findings import KINDS, SEVERITIES, Finding, Report
from bnbook.doctor.graph import _bn_paths  # noqa: F401 - read by the tests
from bnbook.doctor.streaming import _recording, _Stream  # noqa: F401 - read by the tests
from bnbook.doctor.thresholds import (
    DROPOUT_RATIO,
    GAP_ACCURACY,
    NEVER_UPDATED_VARIANCE,
    SMALL_BATCH,
    STALE_MEAN,
    STALE_VARIANCE,
    THRESHOLDS,
    Thresholds,
)

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
