"""`make slides` and `make site` produce pages that work with no network (tools/offline_html.py)."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import offline_html  # noqa: E402

CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_external_resources_finds_cdn_scripts_and_styles():
    page = ('<script src="https://cdn.example/x.js"></script><link rel="stylesheet" '
            'href="//cdn.example/y.css"><style>@import url("https://fonts.example/z.css");</style>'
            '<script src="_static/local.js"></script><a href="https://example.org">a link</a>')
    assert offline_html.external_resources(page) == [
        "https://cdn.example/x.js", "//cdn.example/y.css", "https://fonts.example/z.css"]


def test_external_in_styles_follows_imports(tmp_path):
    (tmp_path / "a.css").write_text('@import url(./b.css); body { font: 1em "X"; }')
    (tmp_path / "b.css").write_text('@import url(https://fonts.example/f.css);')
    page = tmp_path / "p.html"
    page.write_text('<link rel="stylesheet" href="a.css">')
    assert offline_html.external_in_styles(page) == ["b.css: https://fonts.example/f.css"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    out = tmp_path_factory.mktemp("slides")
    return offline_html.build_slides(out, CHAPTERS)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    return offline_html.build_site(out, CHAPTERS)


def test_every_chapter_has_a_deck_with_only_local_scripts(slides):
    assert [p.name for p in slides] == [f"{c.stem}.slides.html" for c in CHAPTERS]
    for page in slides:
        text = page.read_text()
        assert offline_html.external_resources(text) == [], page.name
        assert offline_html.external_in_styles(page) == [], page.name
        assert offline_html.broken_local_links(page) == [], page.name
        assert "_static/revealjs/dist/reveal.js" in text and "_static/mathjax/MathJax.js" in text


def test_site_has_every_page_linked_and_nothing_external(site):
    index, *pages = site
    assert [p.name for p in pages] == [f"{c.stem}.html" for c in CHAPTERS]
    index_text = index.read_text()
    for page in pages:
        assert f'href="{page.name}"' in index_text, f"{page.name} is missing from the contents"
    for page in site:
        text = page.read_text()
        assert offline_html.external_resources(text) == [], page.name
        assert offline_html.external_in_styles(page) == [], page.name
        assert offline_html.broken_local_links(page) == [], page.name


def test_site_pages_leave_out_speaker_notes(site):
    _, *pages = site
    assert not any("Speaker notes." in page.read_text() for page in pages)


def links(text: str, rel: str) -> set[str]:
    tags = re.findall(r"<a\b[^>]*>", text)
    return {m.group(1) for tag in tags if f'rel="{rel}"' in tag
            for m in [re.search(r'href="([^"]+)"', tag)] if m}


def test_site_pages_link_to_previous_and_next_chapter(site):
    _, *pages = site
    for i, page in enumerate(pages):
        text = page.read_text()
        assert links(text, "prev") == ({pages[i - 1].name} if i > 0 else set())
        assert links(text, "next") == ({pages[i + 1].name} if i + 1 < len(pages) else set())
