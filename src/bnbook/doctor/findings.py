"""What the doctor reports: :class:`Finding`, :class:`Report`, the kinds and severities.

A :class:`Report` prints grouped per kind (the layers listed once, the fix said once),
shows as an HTML table in a notebook and converts to a DataFrame or JSON-ready data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np
import pandas as pd

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
    "eager_passes",
)
#: Severities, most serious first.
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")


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


def _sorted(findings: list[Finding]) -> list[Finding]:
    order = {s: i for i, s in enumerate(SEVERITIES)}
    kinds = {k: i for i, k in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order[f.severity], kinds[f.kind]))
