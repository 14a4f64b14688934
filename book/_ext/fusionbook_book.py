"""Sphinx extension of the fusionbook book.

- The intro's paper table says, for each paper, whether its chapter is in the book or still to come, computed
  from the table of contents (`_toc.yml`) at build time (role-like marker ``{chapter-status}`paperN```).
- The library's docstrings are written for notebooks and `help()` (Markdown-ish: `code`, ``code``, shapes such as
  ``(B, C, *S)``, ``|x − y|``); for the API reference they are made safe reStructuredText: single backticks become
  literals, and stray ``*``, ``|`` and trailing ``_`` are escaped, so that autodoc renders them as written."""

import re
from pathlib import Path

import yaml

MARK = re.compile(r"\{chapter-status\}`(paper\d+)`")


def _toc_files(toc_path: Path) -> set[str]:
    "Every `file:` entry of a Jupyter Book table of contents."
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                found.add(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(toc_path.read_text(encoding="utf-8")))
    if isinstance(root := yaml.safe_load(toc_path.read_text(encoding="utf-8")).get("root"), str):
        found.add(root)
    return found


def _status(app, docname: str, source: list[str]) -> None:
    if not MARK.search(source[0]):
        return
    toc = Path(app.srcdir) / (app.config.external_toc_path or "_toc.yml")
    files = {f.rsplit(".", 1)[0] if f.endswith((".md", ".ipynb")) else f for f in _toc_files(toc)}

    def repl(m):
        doc = f"chapters/{m.group(1)}"
        return f"{{doc}}`chapter </{doc}>`" if doc in files else "*to come*"

    source[0] = MARK.sub(repl, source[0])


_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")
_PAIR = re.compile(r"(\*\*[^*\s][^*]*?\*\*|(?<![\w*])\*[^*\s][^*]*?(?<=\S)\*(?![\w*]))")
_NEEDS_SPACE = re.compile(r"^[^\s\-.,:;!?\\/'\")\]}>]")


def _escape_text(text: str) -> str:
    "Escape `|`, unpaired `*` and reference-like trailing `_` in plain (non-literal) docstring text."
    parts = _PAIR.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # an *emphasis* or **strong** pair: keep
            out.append(part)
            continue
        part = part.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
        out.append(re.sub(r"(\w)_(?=\W|$)", r"\1\\_", part))
    return "".join(out)


def safe_rst(line: str) -> str:
    "One docstring line as safe reStructuredText (see the module docstring)."
    if line.lstrip().startswith((">>>", "..", ":")):
        return line  # doctest, directive or field list: already reStructuredText
    pieces = _LITERAL.split(line)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2:
            body = piece.strip("`")
            out.append(f"``{body}``")
            if i + 1 < len(pieces) and _NEEDS_SPACE.match(pieces[i + 1]):
                out.append("\\ ")  # ``x``² : an escaped space ends the literal
        else:
            out.append(_escape_text(piece))
    return "".join(out)


def _docstring(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = [safe_rst(ln) for ln in lines]


def setup(app):
    app.connect("source-read", _status)
    app.connect("autodoc-process-docstring", _docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
