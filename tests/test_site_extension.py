"""_ext/bnbook_site.py: figure alt text from captions, duplicated inline scripts removed."""

import pytest
from docutils import nodes
from sphinx.builders.html._assets import _JavaScript

from _ext import bnbook_site


def _figure(caption=None, alt=None):
    image = nodes.image(uri="../_images/abc.png", **({"alt": alt} if alt else {}))
    figure = nodes.figure("", image)
    if caption is not None:
        figure += nodes.caption("", "", nodes.Text(caption[0]), nodes.literal("", caption[1]), nodes.Text(caption[2]))
    return figure, image


def test_caption_becomes_alt_text():
    document = nodes.section()
    captioned, image = _figure(("Test accuracy over  training steps, ", "momentum", "\n0.99 vs 0.9"))
    explicit, kept = _figure(("A caption", "", ""), alt="Written by the author")
    bare, no_caption = _figure()
    document += [captioned, explicit, bare]
    assert bnbook_site.caption_alt_text(document) == 1
    assert image["alt"] == "Test accuracy over training steps, momentum 0.99 vs 0.9"
    assert kept["alt"] == "Written by the author"
    assert "alt" not in no_caption  # no caption: nothing to say; the site test reports it
    assert bnbook_site.caption_alt_text(document) == 0


def test_math_in_a_caption_reads_without_tex_commands():
    image = nodes.image(uri="x.png")
    caption = nodes.caption("", "", nodes.Text("The learned "), nodes.math("", r"\gamma_{k}"), nodes.Text(" per channel"))
    document = nodes.section("", nodes.figure("", image, caption))
    bnbook_site.caption_alt_text(document)
    assert image["alt"] == "The learned gamma_k per channel"


def test_caption_alt_text_needs_a_node():
    with pytest.raises(TypeError, match="docutils node"):
        bnbook_site.caption_alt_text("<figure>")


def test_inline_script_registered_as_none_and_empty_is_kept_once():
    body = 'const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"'
    scripts = [
        _JavaScript("_static/doctools.js", priority=200),
        _JavaScript(None, priority=500, body=body),
        _JavaScript("", priority=500, body=body),
        _JavaScript("", priority=500, body="let other = 1"),
        _JavaScript("_static/doctools.js", priority=200),
    ]
    unique = bnbook_site.dedupe_scripts(scripts)
    assert unique == [scripts[0], scripts[1], scripts[3]]
    with pytest.raises(TypeError, match="list"):
        bnbook_site.dedupe_scripts("doctools.js")
