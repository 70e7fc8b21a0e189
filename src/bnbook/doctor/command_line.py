"""The command line ``bnbook-doctor MODEL.keras --data DATA.npz`` (also ``python -m bnbook.doctor``)."""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from bnbook.doctor.diagnosis import diagnose
from bnbook.doctor.graph import _bn_paths

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
    parser.add_argument(
        "--pass-size", type=int, default=None, help="examples per forward pass (default: 128, or fewer to stay under 1 GiB)"
    )
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
