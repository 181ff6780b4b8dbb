"""Each script once on every page.

jupyter-book 1.x adds every .js file under `_static/` to `html_js_files`, and sphinx.ext.mathjax
adds `mathjax_path` itself: the local MathJax copy (`_static/mathjax/`, copied there by
scripts/build_book.sh) would load twice, and MathJax started twice reports errors. This keeps the
one sphinx.ext.mathjax adds, after the MathJax configuration that myst-parser writes.
"""
from __future__ import annotations


def _one_mathjax(app, config) -> None:
    mathjax = config.mathjax_path
    config.html_js_files = [f for f in config.html_js_files
                            if (f[0] if isinstance(f, (tuple, list)) else f) != mathjax]
    config.html_static_path = list(dict.fromkeys(config.html_static_path))


def setup(app):
    app.connect("config-inited", _one_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
