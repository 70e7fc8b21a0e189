"""_ext/sphinx_mathjax.py: MathJax comes from the installed wheel, copied atomically."""

from types import SimpleNamespace

import pytest

from _ext import sphinx_mathjax


def test_source_has_the_combined_component_and_fonts():
    es5 = sphinx_mathjax.mathjax_source()
    assert (es5 / "tex-mml-chtml.js").stat().st_size > 500_000
    assert any((es5 / "output" / "chtml" / "fonts" / "woff-v2").glob("MathJax_Main-Regular.woff"))


def test_copy_puts_what_the_page_loads_under_static(tmp_path):
    target = sphinx_mathjax.copy_mathjax(tmp_path)
    assert target == tmp_path / "mathjax"
    assert (tmp_path / sphinx_mathjax.MATHJAX_PATH).is_file()
    assert (target / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Main-Regular.woff").is_file()
    assert not (target / "sre").exists()
    assert not (tmp_path / "mathjax.partial").exists()
    sphinx_mathjax.copy_mathjax(tmp_path)  # again, over an existing copy
    assert (tmp_path / sphinx_mathjax.MATHJAX_PATH).is_file()


def test_setup_registers_and_points_mathjax_path_to_the_copy():
    events = {}
    app = SimpleNamespace(connect=lambda event, fn, priority=500: events.setdefault(event, fn))
    meta = sphinx_mathjax.setup(app)
    assert meta["parallel_read_safe"] is True
    config = SimpleNamespace(mathjax_path="https://cdn.example/mathjax.js")
    events["config-inited"](app, config)
    assert config.mathjax_path == "mathjax/tex-mml-chtml.js"


def test_missing_package_gives_the_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mathjax(name, *args, **kwargs):
        if name == "mathjax":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mathjax)
    with pytest.raises(FileNotFoundError, match="django-static-mathjax"):
        sphinx_mathjax.mathjax_source()
