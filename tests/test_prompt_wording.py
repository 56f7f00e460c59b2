"""Item wording is a template parameter: the shipped templates render their MovieLens prompts by default and
another domain's words with ``<name>@<wording>`` (movie, book, product, item)."""

from __future__ import annotations

import pytest

from collab_llm.prompts import WORDINGS, load_template, render, with_wording

TITLES = {1: "Heat", 2: "Casino", 3: "Babe"}
LLARA_MOVIELENS = ("This user has watched Heat, Casino in the previous. Please predict the next movie this user will "
                   "watch. Choose the answer from the following 2 movie titles: Babe, Heat. Answer:")


def _next_item(name: str) -> str:
    return render(load_template(name), "text", TITLES, 1, {"history": [1, 2], "candidates": [3, 1]}).text


def test_default_wording_is_the_movielens_prompt():
    assert _next_item("llara_movielens") == LLARA_MOVIELENS == _next_item("llara_movielens@movie")


@pytest.mark.parametrize("wording", sorted(WORDINGS))
def test_every_worded_template_says_the_domain_words(wording):
    words = WORDINGS[wording]
    text = _next_item(f"llara_movielens@{wording}")
    assert f"has {words.consumed} Heat" in text and f"next {words.item} this user will {words.consume}." in text
    assert f"2 {words.item} titles" in text
    for name in ("collm_movielens", "head_yes_no", "tallrec_movielens", "collm_next_item"):
        template = load_template(f"{name}@{wording}")
        assert "$" not in template.text + template.hybrid
        if wording != "movie":
            assert "movie" not in (template.text + template.hybrid).lower(), name


def test_unknown_or_impossible_wording_is_refused():
    with pytest.raises(ValueError, match="unknown item wording 'film'"):
        load_template("llara_movielens@film")
    with pytest.raises(ValueError, match="no item wording fields"):
        load_template("head_next_item@book")  # a template whose prompts name no domain
    assert with_wording("llara_movielens@book", "item") == "llara_movielens@item"
    assert with_wording("llara_movielens", None) == "llara_movielens"
    assert with_wording("head_next_item", "book") == "head_next_item"  # names no domain: as it is
