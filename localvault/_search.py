"""Library search text as SQL: the words FTS5 finds, and those it cannot (scripts written without spaces).

FTS5's ``unicode61`` tokenizer cuts text at spaces and punctuation, so a
Japanese or Chinese prompt (``日本語のプロンプト``) is one token: a search for
``日本語`` found nothing. Such words are looked for as substrings of the prompt,
title and tags instead (a scan of the user's rows, newest first, that stops at
the page's end); every other word goes through the full-text index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import models
from .errors import InvalidInputError

#: Scripts written without spaces between words: kana, CJK ideographs, Hangul syllables, Thai, half-width kana.
_UNSPACED = re.compile("[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
                       "\uff66-\uff9f\U00020000-\U0002fa1f]")

#: What makes a word for the full-text index: a letter or digit, or a character beyond U+FFFF (emoji).
_WORDLIKE = re.compile("[^\\W_]|[\U00010000-\U0010ffff]")

#: One substring word as SQL, given thrice: in the prompt, the title or the tags (l the library row; its tags'
#: JSON keeps such characters as they are, and a word of them holds no quote or backslash).
SUBSTRING_FILTER = "(instr(l.original_prompt, ?) OR instr(coalesce(l.title, ''), ?) OR instr(l.tags, ?))"


@dataclass(frozen=True)
class SearchQuery:
    """What a search looks for: every word must match."""

    #: An FTS5 MATCH expression of the words the index finds (each quoted: no syntax errors), or None.
    match: str | None
    #: Words of scripts written without spaces: found anywhere in the prompt, title or tags.
    substrings: tuple[str, ...]


def search_query(text: str) -> SearchQuery:
    """The user's search words, split between the full-text index and substring matches."""
    text = models.check_search(text)
    # A word of punctuation or symbols alone is none to the index (it found nothing): it is not looked for. The
    # index's tokenizer (unicode61) keeps letters, digits and characters beyond U+FFFF (emoji: 🦊) as words.
    words = [w for w in text.split() if _WORDLIKE.search(w)]
    if not words:
        raise InvalidInputError("the search text has no word to look for (it is empty, or only punctuation); "
                                "give one or more words")
    indexed = [w for w in words if not _UNSPACED.search(w)]
    # Cut at punctuation, as the index cuts words (`日本語,` or `"日本語"` or `「狐」`): each piece must be found.
    pieces = [p for w in words if _UNSPACED.search(w) for p in re.split(r"[\W_]+", w) if p]
    indexed += [p for p in pieces if not _UNSPACED.search(p)]
    return SearchQuery(match=" ".join('"' + w.replace('"', '""') + '"' for w in indexed) or None,
                       substrings=tuple(p for p in pieces if _UNSPACED.search(p)))
