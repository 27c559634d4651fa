"""Offline HTML from the notebooks: reveal.js slide decks (`make slides`) and the course website
(`make site`).

Every script, style sheet and font is a local file under `_static/`, copied from installed,
pinned packages (reveal.js from `sphinx-revealjs`, MathJax 2 from `jupyter-server-mathjax`), so a
deck or the site works in a lecture hall with no network. Usage:

    python tools/offline_html.py slides build/slides chapters/*.ipynb
    python tools/offline_html.py site build/site chapters/*.ipynb
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import re
import shutil
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter, SlidesExporter
from nbconvert.filters.markdown import markdown2html

TEMPLATES = Path(__file__).resolve().parent / "templates"
MATHJAX = "_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
REVEAL = "_static/revealjs"

SITE_CSS = """\
body { margin: 0; }
main { max-width: 1000px; margin: 0 auto; padding: 0 12px; }
.lmkit-nav { display: flex; flex-wrap: wrap; gap: 8px 20px; max-width: 1000px; margin: 0 auto;
  padding: 10px 12px; font: 15px/1.4 system-ui, sans-serif; border-bottom: 1px solid #ddd; }
.lmkit-nav-bottom { border-bottom: none; border-top: 1px solid #ddd; margin-top: 24px; }
.lmkit-nav a { color: #1a5fb4; text-decoration: none; }
.lmkit-nav a:hover { text-decoration: underline; }
img { max-width: 100%; height: auto; }
.jp-OutputArea-output pre, .jp-InputArea-editor { overflow-x: auto; }
.lmkit-toc { font: 16px/1.5 system-ui, sans-serif; }
.lmkit-toc li { margin: 0.6em 0; }
.lmkit-toc .goal { color: #555; font-size: 14px; }
@media (max-width: 700px) {
  .jp-InputPrompt, .jp-OutputPrompt { display: none; }
  .jp-Cell { padding: 2px 0; }
}
"""


def asset_sources() -> tuple[Path, Path]:
    """The installed reveal.js and MathJax folders; a clear error when a package is missing."""
    found = []
    for package, sub in (("sphinx_revealjs", "_static/revealjs"), ("jupyter_server_mathjax", "static")):
        spec = importlib.util.find_spec(package)  # finds the files without importing the package
        folder = Path(spec.origin).parent / sub if spec and spec.origin else None
        if folder is None or not folder.is_dir():
            raise SystemExit(f"the package {package!r} is not installed (it ships the files the "
                             "offline slides and site need): run `make setup`")
        found.append(folder)
    return found[0], found[1]


def copy_assets(out: Path, reveal: bool) -> None:
    """Copy MathJax (and reveal.js for slides) into out/_static."""
    reveal_src, mathjax_src = asset_sources()
    static = out / "_static"
    shutil.copytree(mathjax_src, static / "mathjax", dirs_exist_ok=True)
    if reveal:
        for part in ("dist", "plugin/notes"):
            shutil.copytree(reveal_src / part, static / "revealjs" / part, dirs_exist_ok=True)
    else:
        (static / "site.css").write_text(SITE_CSS)


def chapter_title(nb) -> str:
    """The first `# ` heading of the notebook ('Chapter 03 · Attention'), else its name."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, flags=re.M)
            if m:
                return m.group(1).strip()
    return ""


def first_paragraph(nb) -> str:
    """The first prose paragraph after the title: what the chapter builds."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for block in cell.source.split("\n\n"):
                block = block.strip()
                if block and not block.startswith(("#", "|", "-", "*", "1.", "<")):
                    return " ".join(block.split())
            break
    return ""


def build_slides(out: Path, notebooks: list[Path]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    copy_assets(out, reveal=True)
    exporter = SlidesExporter(extra_template_basedirs=[str(TEMPLATES)], template_name="lmkit_slides",
                              reveal_url_prefix=REVEAL, reveal_theme="white", mathjax_url=MATHJAX,
                              reveal_width="1280", reveal_height="720")
    written = []
    for path in notebooks:
        body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
        target = out / f"{path.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def build_site(out: Path, notebooks: list[Path]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    copy_assets(out, reveal=False)
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATES)], template_name="lmkit_site",
                            mathjax_url=MATHJAX)
    nbs = [nbformat.read(p, as_version=4) for p in notebooks]
    pages = [{"href": f"{p.stem}.html", "title": chapter_title(nb) or p.stem} for p, nb in zip(notebooks, nbs)]
    written = []
    for i, (nb, page) in enumerate(zip(nbs, pages)):
        nav = {"prev": pages[i - 1] if i > 0 else None,
               "next": pages[i + 1] if i + 1 < len(pages) else None}
        body, _ = exporter.from_notebook_node(nb, resources={"lmkit_nav": nav})
        target = out / page["href"]
        target.write_text(body, encoding="utf-8")
        written.append(target)
    items = "\n".join(
        f'<li><a href="{page["href"]}">{html.escape(page["title"])}</a>'
        f'<div class="goal">{markdown2html(first_paragraph(nb))}</div></li>'
        for nb, page in zip(nbs, pages))
    index = out / "index.html"
    index.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>lmkit: build a transformer language model</title>
<link rel="stylesheet" href="_static/site.css"></head>
<body><main class="lmkit-toc">
<h1>lmkit: build a transformer language model</h1>
<p>Every chapter with its stored outputs. Open the notebooks in JupyterLab (<code>make lab</code>)
to run them.</p>
<ol>
{items}
</ol></main></body></html>
""", encoding="utf-8")
    return [index, *written]


# --- checks used by the tests: nothing external, every local link resolves ------------------------

_REF = re.compile(r"""<(script|link|img|a)\b[^>]*?\b(src|href)\s*=\s*["']([^"']+)["']""", re.I)


def external_resources(page: str) -> list[str]:
    """Scripts, style sheets and images a page would fetch from the network."""
    bad = [url for tag, attr, url in _REF.findall(page)
           if tag.lower() != "a" and re.match(r"(https?:)?//", url)]
    bad += re.findall(r"""@import\s+(?:url\()?["']?((?:https?:)?//[^"')]+)""", page)
    return bad


def external_in_styles(page_path: Path) -> list[str]:
    """Network URLs in the local style sheets a page links to (and those they @import)."""
    text = page_path.read_text(encoding="utf-8")
    todo = [page_path.parent / url.split("?")[0] for tag, _, url in _REF.findall(text)
            if tag.lower() == "link" and url.endswith(".css") and not re.match(r"(https?:)?//", url)]
    seen, bad = set(), []
    while todo:
        css = todo.pop().resolve()
        if css in seen or not css.is_file():
            continue
        seen.add(css)
        for url in re.findall(r"""url\(\s*["']?([^"')]+)""", css.read_text(encoding="utf-8", errors="replace")):
            if re.match(r"(https?:)?//", url):
                bad.append(f"{css.name}: {url}")
            elif url.endswith(".css"):
                todo.append(css.parent / url)
    return bad


def broken_local_links(page_path: Path) -> list[str]:
    """Relative href/src targets of a page that do not exist on disk."""
    text = page_path.read_text(encoding="utf-8")
    broken = []
    for _, _, url in _REF.findall(text):
        if re.match(r"([a-z][a-z0-9+.-]*:|//|#)", url, re.I):
            continue  # external link (allowed for <a>), data: URI, or in-page anchor
        target = (page_path.parent / url.split("#")[0].split("?")[0]).resolve()
        if not target.exists():
            broken.append(url)
    return broken


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["slides", "site"])
    parser.add_argument("out", type=Path)
    parser.add_argument("notebooks", type=Path, nargs="+")
    args = parser.parse_args(argv)
    build = build_slides if args.what == "slides" else build_site
    written = build(args.out, sorted(args.notebooks))
    print(f"wrote {len(written)} pages to {args.out}/ (open {written[0]})")


if __name__ == "__main__":
    main()
