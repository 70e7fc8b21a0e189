"""Run :func:`bnbook.doctor.diagnose` on every trained BN model a chapter leaves, for a human to judge.

``python tools/doctor_false_positives.py chapters/03_bn_in_keras.ipynb ... [--report PATH]``

Method. Each notebook is executed top to bottom in a fresh kernel, as
``tools.notebooks.run_notebook`` does it (the notebook's folder as working directory,
:data:`tools.notebooks.EXECUTION_ENV`), with one cell appended. That cell finds every
``keras.Model`` in the kernel's globals and in the dicts, lists and tuples of models the
chapter keeps (``models``, ``article_models``, ``sweep_models``, ``replicated``, ...);
a model reachable under several names is diagnosed once, under the first. Each one
with a BN layer is diagnosed with ``diagnose(model, x, y, batch_size=...)`` on a sample of
the data it was trained on (at most 1,000 examples) and its training batch size, read
from the chapter's code into :data:`SPECS`. Models the chapter builds but does not train
are listed in :data:`SKIP` and not diagnosed. A BN model in neither table (a new one, or
any model of a notebook that is not a chapter) is diagnosed on ``x_train[:1000]``,
``y_train[:1000]`` and the batch size in a global ``BATCH_SIZE``, ``BATCH`` or
``batch_size``, and marked "default data" so its row can be checked.

The table has one row per diagnosed model: its findings of severity warning or error
(``kind:severity``), their evidence (for ``stale_statistics`` the accuracy now and after
re-estimating the statistics, for ``train_inference_gap`` both modes' accuracies) and the
number of info findings; then the totals. Whether a finding is right stays a human's
judgement: the tool only collects the evidence.

Limits: only models the chapter keeps in a global are seen (models local to a function
are not); the data and batch sizes in :data:`SPECS` are copied from the chapters and go
stale when a chapter changes (then the model falls back to "default data", or its row
says the spec failed); the doctor is run once per model, on one sample, so a finding
near a threshold can come and go with the seed or the CPU. A chapter cell that fails is
reported and the run goes on (the models it left are still diagnosed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

if __package__ in (None, ""):  # run as a script: make the repository root importable (tools.notebooks)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.notebooks import execute_in  # noqa: E402

__all__ = ["SKIP", "SPECS", "diagnose_notebook", "main", "render"]

# Per chapter (the two digits its file name starts with): name -> (x, y, batch size), three
# expressions evaluated in the kernel, ``k`` being the model's key in its dict. A name
# ``d[*]`` stands for every model in the dict (or list) ``d``.
_N = "[:1000]"
SPECS: dict[str, dict[str, tuple[str, str, str]]] = {
    "03": {
        "article_models[*]": ("x_train" + _N, "y_train" + _N, "64"),
        "copy": ("x_train" + _N, "y_train" + _N, "64"),
        "reloaded": ("x_train" + _N, "y_train" + _N, "64"),
        "probed": ("x128", "y128", "64"),
        "buggy_model": ("x_train" + _N, "y_train" + _N, "BATCH"),
        "fixed_model": ("x_train" + _N, "y_train" + _N, "BATCH"),
        "tuned": ("x_ft", "y_ft", "32"),
        "base": ("x_ft", "None", "32"),
    },
    "04": {
        "watched": ("flat_train" + _N, "y_train" + _N, "64"),
        "slow": ("x_train" + _N, "y_train" + _N, "32"),
        "fast": ("x_train" + _N, "y_train" + _N, "32"),
        "net": ("flat_train[:640]", "y_train[:640]", "32"),
        "model": ("x_new" + _N, "y_new" + _N, "32"),
        "base": ("x_old" + _N, "None", "64"),
    },
    "05": {
        "model": ("x_train" + _N, "y_train" + _N, "64"),
        "adam_model": ("x_train" + _N, "y_train" + _N, "64"),
        "with_b": ("x_train" + _N, "y_train" + _N, "64"),
        "without_b": ("x_train" + _N, "y_train" + _N, "64"),
        "after_models[*]": ("x_train" + _N, "y_train" + _N, "64"),
        "before_models[*]": ("x_train" + _N, "y_train" + _N, "64"),
    },
    "06": {
        "models[*]": ("x_train" + _N, "y_train" + _N, "64"),
    },
    "07": {
        "models[*]": ("x_train" + _N, "y_train" + _N, "64"),
        "single": ("units(B)", "None", "B"),
    },
    "08": {
        "sweep_models[*]": ("x_train" + _N, "y_train" + _N, "int(k[0].rsplit(' ', 1)[1])"),  # keys (variant, rate, seed), 'BN, batch 2'
        "replicated[*]": ("x_train[:512]", "y_train[:512]", "64"),
    },
    "09": {
        "cnn": ("x_train" + _N, "y_train" + _N, "64"),
        "folded": ("x_train" + _N, "y_train" + _N, "64"),
    },
}

# Models with BN the chapters build but do not train: name -> why (listed, not diagnosed).
SKIP: dict[str, dict[str, str]] = {
    "03": {
        "penalised": "one training-mode call, never fit (regulariser demo)",
        "sequential": "untrained conv block (Sequential vs Functional demo)",
        "functional": "untrained conv block (Sequential vs Functional demo)",
    },
    "04": {
        "outer": "untrained nested demo (precise_bn on random numbers)",
        "inner": "untrained 1-layer BN model (training=False override demo)",
        "wrapped": "untrained wrapper (training=False override demo)",
        "block": "untrained residual block (gamma zeros demo)",
    },
    "05": {
        "after": "one gradient, never trained (bias after ReLU demo)",
        "lean": "untrained (parameter count demo)",
        "biased": "untrained (parameter count demo)",
    },
    "06": {"block_model": "untrained residual block (gamma zeros demo)"},
    "09": {
        "with_bn": "untrained (built for the paired-kernel check)",
        "asked": "untrained (jit_compile demo)",
        "mobilenet": "untrained MobileNetV2, random statistics assigned (folding demo)",
        "mobilenet_folded": "folded copy of the untrained MobileNetV2",
        "two_layers": "untrained (cost demo)",
    },
}

# The cell appended to the notebook; __CONFIG__ and __OUT__ are replaced by literals.
_CELL = r'''
# ---- appended by tools/doctor_false_positives.py ----
import json as _json
import keras as _keras, numpy as _np
import bnbook.doctor as _doc
from bnbook import probes as _probes
_SPEC, _SKIP = __CONFIG__

def _fp_models():
    found, seen = [], {}
    for name, value in list(globals().items()):
        if name.startswith("_"):
            continue
        if isinstance(value, _keras.Model):
            items = [(name, name, None, value)]
        elif isinstance(value, dict):
            items = [(f"{name}[{k!r}]", name + "[*]", k, v) for k, v in value.items() if isinstance(v, _keras.Model)]
        elif isinstance(value, (list, tuple)):
            items = [(f"{name}[{i}]", name + "[*]", i, v) for i, v in enumerate(value) if isinstance(v, _keras.Model)]
        else:
            continue
        for label, group, key, model in items:
            if id(model) not in seen:
                seen[id(model)] = dict(label=label, model=model, names=[])
                found.append(seen[id(model)])
            seen[id(model)]["names"].append((label, group, key))
    return found

def _fp_default():
    g = globals()
    batch = next((g[n] for n in ("BATCH_SIZE", "BATCH", "batch_size") if isinstance(g.get(n), int)), None)
    return ("x_train[:1000]", "y_train[:1000]" if "y_train" in g else "None", repr(batch))

def _fp_plain(v):
    if isinstance(v, (bool, _np.bool_)):
        return bool(v)
    if isinstance(v, (_np.integer, int)):
        return int(v)
    if isinstance(v, (_np.floating, float)):
        return float(v)
    return v if isinstance(v, (str, type(None))) else str(v)

_fp_records = []
for _e in _fp_models():
    _m = _e["model"]
    _rec = dict(model=_e["label"], aliases=[n for n, _, _ in _e["names"][1:]])
    if not (_m.built and _probes.bn_layers(_m)):
        continue  # no BN layer (or not built): nothing to diagnose
    _spec = next(((_SPEC.get(n) or _SPEC.get(g), k) for n, g, k in _e["names"] if _SPEC.get(n) or _SPEC.get(g)), None)
    _skip = next((_SKIP.get(n) or _SKIP.get(g) for n, g, _ in _e["names"] if _SKIP.get(n) or _SKIP.get(g)), None)
    if _spec is None and _skip is not None:
        _rec["status"] = "skipped: " + _skip
        _fp_records.append(_rec)
        continue
    (_xs, _ys, _bs), _k = _spec if _spec is not None else (_fp_default(), None)
    _rec["default_data"] = _spec is None
    try:
        _x, _y, _b = (eval(s, globals(), {"k": _k}) for s in (_xs, _ys, _bs))
        _rec["data"] = f"x={_xs} ({len(_x)}), y={_ys}, batch {_b}"
        _report = _doc.diagnose(_m, _x, _y, batch_size=_b)
        _rec["status"] = "diagnosed"
        _rec["findings"] = [
            dict(kind=f.kind, severity=f.severity, layer=f.layer, evidence={k: _fp_plain(v) for k, v in f.evidence.items()})
            for f in _report.findings
        ]
    except Exception as _err:
        _rec["status"] = f"failed: {type(_err).__name__}: {str(_err)[:300]}"
    _fp_records.append(_rec)
with open(__OUT__, "w") as _f:
    _json.dump(_fp_records, _f, indent=1)
print(len(_fp_records), "BN models recorded")
'''


def _chapter_key(path: Path) -> str:
    """``"03"`` for ``03_bn_in_keras.ipynb``: the key of :data:`SPECS` and :data:`SKIP`."""
    return path.stem[:2] if path.stem[:2].isdigit() else path.stem


def diagnose_notebook(path: str | os.PathLike, *, timeout: int = 1800) -> dict[str, Any]:
    """Execute ``path`` with the diagnosing cell appended; return its records and errors.

    Returns:
        ``{"chapter", "seconds", "cell_errors": [(cell index, error name, message)],
        "records": [...]}``, one record per BN model: ``model`` (its name in the kernel),
        ``aliases``, ``status`` (``diagnosed``, ``skipped: why`` or ``failed: error``),
        ``data``, ``default_data`` and ``findings`` (kind, severity, layer, evidence).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an ``.ipynb`` file.
    """
    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"{path} is not a notebook: expected a .ipynb file")
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    key = _chapter_key(path)
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "records.json"
        config = (SPECS.get(key, {}), SKIP.get(key, {}))
        nb.cells.append(nbformat.v4.new_code_cell(_CELL.replace("__CONFIG__", repr(config)).replace("__OUT__", repr(str(out)))))
        start = time.perf_counter()
        # allow_errors: a chapter assertion failing under load must not hide the models
        execute_in(nb, path.parent, timeout=timeout, allow_errors=True)
        records = json.loads(out.read_text()) if out.is_file() else []
    errors = [
        (index, o.get("ename", ""), str(o.get("evalue", ""))[:200])
        for index, cell in enumerate(nb.cells)
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    return {"chapter": path.name, "key": key, "seconds": time.perf_counter() - start, "cell_errors": errors, "records": records}


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _evidence(finding: dict[str, Any]) -> str:
    """The evidence of one finding, short: the numbers a judgement needs."""
    e, kind = finding["evidence"], finding["kind"]
    where = f"{finding['layer']}: " if finding.get("layer") else ""
    if kind in ("stale_statistics", "never_updated"):
        text = f"var_ratio {_number(e.get('var_ratio'))}, mean_shift {_number(e.get('mean_shift'))}"
        if "accuracy_now" in e:
            text += f"; accuracy now {_number(e['accuracy_now'])} vs re-estimated {_number(e['accuracy_reestimated'])}"
        if "loss_now" in e:
            text += f", loss {_number(e['loss_now'])} vs {_number(e['loss_reestimated'])}"
    elif kind == "train_inference_gap":
        if "accuracy_training_mode" in e:
            text = f"accuracy training mode {_number(e['accuracy_training_mode'])} vs inference {_number(e['accuracy_inference_mode'])}"
        else:
            text = f"loss training mode {_number(e['loss_training_mode'])} vs inference {_number(e['loss_inference_mode'])}"
        text += f"; cause {e.get('likely_cause')}"
    else:
        text = ", ".join(f"{k} {_number(v)}" for k, v in e.items())
    return (where + text).replace("|", "/")


def render(results: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of :func:`diagnose_notebook`'s results, the skipped models and the totals."""
    lines = ["| chapter | model | findings (warnings and errors) | evidence |", "|---|---|---|---|"]
    skipped, failed, notes = [], [], []
    checked = warnings = errors = infos = 0
    for result in results:
        chapter = result["chapter"]
        if result["cell_errors"]:
            notes.append(f"- {chapter}: chapter cells failed: {result['cell_errors']}")
        if not result["records"]:
            notes.append(f"- {chapter}: no BN model recorded (did the appended cell run?)")
        for record in result["records"]:
            name = f"`{record['model']}`" + (f" (= {', '.join(record['aliases'])})" if record["aliases"] else "")
            if record["status"].startswith("skipped"):
                skipped.append(f"- {chapter} {name}: {record['status']}")
                continue
            if record["status"] != "diagnosed":
                failed.append(f"- {chapter} {name}: {record['status']}")
                continue
            checked += 1
            problems = [f for f in record["findings"] if f["severity"] in ("error", "warning")]
            n_info = len(record["findings"]) - len(problems)
            warnings += sum(f["severity"] == "warning" for f in problems)
            errors += sum(f["severity"] == "error" for f in problems)
            infos += n_info
            kinds = ", ".join(f"{f['kind']}:{f['severity']}" for f in problems) or "none"
            evidence = "; ".join(_evidence(f) for f in problems) or "–"
            data = record["data"].replace("|", "/") + (", **default data**" if record.get("default_data") else "")
            lines.append(f"| {result['key']} | {name}<br>{data} | {kinds} (+{n_info} info) | {evidence} |")
    lines += ["", f"Models checked: {checked}. Warnings: {warnings}, errors: {errors}. Info findings: {infos}."]
    for title, items in (("Skipped (untrained)", skipped), ("Not diagnosed (failed)", failed), ("Notes", notes)):
        if items:
            lines += ["", f"{title}:", *items]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: diagnose the models of each notebook given; print (and write) the table.

    Exits 1 when a notebook could not be run or recorded no BN model, else 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--report", type=Path, help="also write the table (Markdown) to this file")
    parser.add_argument("--timeout", type=int, default=1800, help="limit per cell in seconds (default 1800)")
    args = parser.parse_args(argv)
    results = []
    for notebook in args.notebooks:
        result = diagnose_notebook(notebook, timeout=args.timeout)
        print(f"{notebook}: {len(result['records'])} BN models, {result['seconds']:.0f} s", file=sys.stderr, flush=True)
        results.append(result)
    table = render(results)
    print(table)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(table + "\n", encoding="utf-8")
    return 1 if any(not r["records"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
