"""Sphinx extension: serve MathJax 3 from the built site instead of a CDN.

Sphinx (and so Jupyter Book 1) loads MathJax from jsDelivr by default; offline, the
math then stays raw TeX. This extension points ``mathjax_path`` at a copy of
MathJax 3.2.2, taken from the ``django-static-mathjax`` wheel (a pinned requirement),
that it copies into ``_static/mathjax`` of the HTML output. Enable it in
``_config.yml`` with ``sphinx: local_extensions: {sphinx_mathjax: _ext}``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["MATHJAX_PATH", "copy_mathjax", "mathjax_source", "setup"]

#: ``mathjax_path`` relative to ``_static``, as Sphinx expects it.
MATHJAX_PATH = "mathjax/tex-mml-chtml.js"
# The parts of es5/ that tex-mml-chtml.js loads (fonts, on-demand TeX extensions,
# menu and accessibility); the speech engine (sre, 4 MB) is left out.
_PARTS = ("tex-mml-chtml.js", "output", "input", "ui", "a11y", "adaptors")


def mathjax_source() -> Path:
    """Return the ``es5`` folder of the installed MathJax 3 distribution.

    Raises:
        FileNotFoundError: If ``django-static-mathjax`` is not installed or incomplete.
    """
    try:
        import mathjax  # noqa: PLC0415  (the package of django-static-mathjax)
    except ImportError as err:
        raise FileNotFoundError(
            "MathJax is not installed: pip install django-static-mathjax==3.2.2.1 (see requirements.txt)"
        ) from err
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise FileNotFoundError(f"no tex-mml-chtml.js under {es5}: reinstall django-static-mathjax")
    return es5


def copy_mathjax(static_dir: str | Path) -> Path:
    """Copy the MathJax files the site needs into ``static_dir/mathjax``; return that folder.

    The copy goes to a temporary sibling first and is renamed into place, so a failed
    copy never leaves a half-written MathJax behind.
    """
    source = mathjax_source()
    target = Path(static_dir) / "mathjax"
    partial = target.with_name("mathjax.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for part in _PARTS:
        src = source / part
        if src.is_dir():
            shutil.copytree(src, partial / part)
        else:
            shutil.copy2(src, partial / part)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _on_config_inited(app: Any, config: Any) -> None:
    config.mathjax_path = MATHJAX_PATH


def _on_build_finished(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        copy_mathjax(Path(app.outdir) / "_static")


def setup(app: Any) -> dict[str, Any]:
    """Register the extension with Sphinx."""
    mathjax_source()  # fail early, with the install hint, if MathJax is missing
    app.connect("config-inited", _on_config_inited, priority=900)
    app.connect("build-finished", _on_build_finished)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
