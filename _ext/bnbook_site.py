"""Sphinx extension of the book's site: figure alt text from captions, no duplicated inline scripts.

Loaded by ``_config.yml`` (``sphinx: local_extensions: {bnbook_site: _ext}``).

- **Alt text.** docutils writes an image's file path as its ``alt`` when it has none, which is what a screen
  reader then reads. An image inside a figure (myst-nb's ``mystnb: figure: caption:`` cell metadata, or a
  ``{figure}`` / ``{glue:figure}`` directive) without an explicit ``alt`` gets its figure's caption, as plain
  text, as ``alt``. Images without a caption keep the path: the site test reports them, and the fix is a caption
  in the notebook.
- **Duplicated inline scripts.** With Sphinx 7.4, an extension that calls ``app.add_js_file(None, body=...)``
  after the builder exists (sphinx-thebe 0.3.1 does) gets its script twice on every page: once registered as
  filename ``None``, once as ``''``, which Sphinx's duplicate check treats as different. Two copies of
  ``const THEBE_JS_URL = ...`` raise "Identifier 'THEBE_JS_URL' has already been declared" in the browser. Each
  page's script list is deduplicated by (file, attributes, body).
"""

from __future__ import annotations

import re
from typing import Any

from docutils import nodes

__all__ = ["caption_alt_text", "dedupe_scripts", "setup"]


def caption_alt_text(doctree: nodes.Node) -> int:
    """Give every image inside a captioned figure of ``doctree`` its caption as ``alt``; return how many changed.

    An image that already has an ``alt`` keeps it. The caption's text is taken without markup (inline math
    without TeX's backslashes and braces: ``\\beta_{k}`` reads ``beta_k``), with runs of whitespace collapsed.
    """
    if not isinstance(doctree, nodes.Node):
        raise TypeError(f"doctree must be a docutils node, got {type(doctree).__name__}")
    changed = 0
    for figure in doctree.findall(nodes.figure):
        captions = [child for child in figure.children if isinstance(child, nodes.caption)]
        if not captions:
            continue
        text = " ".join(_plain_text(captions[0]).split())
        if not text:
            continue
        for image in figure.findall(nodes.image):
            if not image.get("alt"):
                image["alt"] = text
                changed += 1
    return changed


def _plain_text(node: nodes.Node) -> str:
    if isinstance(node, nodes.math):
        return re.sub(r"[{}]", "", re.sub(r"\\([A-Za-z]+)", r"\1", node.astext()))
    if isinstance(node, nodes.Text):
        return str(node)
    return "".join(_plain_text(child) for child in node.children)


def _script_key(script: Any) -> tuple:
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (filename, tuple(sorted((str(k), str(v)) for k, v in attributes.items())))


def dedupe_scripts(scripts: list) -> list:
    """Return ``scripts`` (Sphinx's page ``script_files``) without repeats, keeping the first of each.

    Two entries are the same script when their file name (``None`` and ``''`` both meaning inline) and their
    attributes, inline ``body`` included, are equal.
    """
    if not isinstance(scripts, (list, tuple)):
        raise TypeError(f"scripts must be a list, got {type(scripts).__name__}")
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    return unique


def _on_doctree_resolved(app: Any, doctree: nodes.document, docname: str) -> None:
    caption_alt_text(doctree)


def _on_html_page_context(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if "script_files" in context:
        context["script_files"] = dedupe_scripts(list(context["script_files"]))


def setup(app: Any) -> dict[str, Any]:
    """Register the extension with Sphinx."""
    app.connect("doctree-resolved", _on_doctree_resolved)
    app.connect("html-page-context", _on_html_page_context, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
