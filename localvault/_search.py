"""Library search text as SQL: the words FTS5 finds, and those it cannot (scripts written without spaces).

FTS5's ``unicode61`` tokenizer cuts text at spaces and punctuation, so a
Japanese or Chinese prompt (``日本語のプロンプト``) is one token: a search for
``日本語`` found nothing. Such words are looked for as substrings of the prompt,
title and tags instead (a scan of the user's rows, newest first, that stops at
the page's end); every other word goes through the full-text index.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass

from . import models
from .errors import InvalidInputError

#: Scripts written without spaces between words: kana, CJK ideographs, Hangul syllables, Thai, half-width kana.
_UNSPACED = re.compile("[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
                       "\uff66-\uff9f\U00020000-\U0002fa1f]")

#: What separates search words: spaces, and the list separators of prompts (`1girl, solo`; `a | b`).
_SEPARATORS = re.compile(r"[\s,;|]+")

#: The full-text index's tokenizer, as the vault's schema makes it (localvault/schema/sqlite/0001_initial.sql).
TOKENIZER = "unicode61 remove_diacritics 2"

#: One substring word as SQL, given thrice: in the prompt, the title or the tags (l the library row; its tags'
#: JSON keeps such characters as they are, and a word of them holds no quote or backslash).
SUBSTRING_FILTER = "(instr(l.original_prompt, ?) OR instr(coalesce(l.title, ''), ?) OR instr(l.tags, ?))"


@dataclass(frozen=True)
class SearchQuery:
    """What a search looks for: every word must match."""

    #: An FTS5 MATCH expression of the words the index finds (each quoted: no syntax errors), or None.
    match: str | None
    #: Words of scripts written without spaces, and symbols the index drops: found anywhere in the prompt, title
    #: or tags.
    substrings: tuple[str, ...]


def search_query(text: str) -> SearchQuery:
    """The user's search words, split between the full-text index and substring matches."""
    text = models.check_search(text)
    indexed: list[str] = []
    substrings: list[str] = []
    for word in filter(None, _SEPARATORS.split(text)):
        if _UNSPACED.search(word):  # cut at punctuation, as the index cuts words (`日本語,`, `「狐」`)
            for piece in filter(None, re.split(r"[\W_]+", word)):
                (substrings if _UNSPACED.search(piece) else indexed).append(piece)
        elif _index_keeps(word):  # other punctuation binds its terms, in order: `add_detail:0.8`, `1.5`, `don't`
            indexed.append(word)
        else:  # symbols the index drops (😀, ✨: unicode61 keeps 🦊, not these); punctuation alone is no word
            substrings += _symbols(word)
    if not indexed and not substrings:
        raise InvalidInputError("the search text has no word to look for (it is empty, or only punctuation); "
                                "give one or more words")
    return SearchQuery(match=" ".join('"' + w.replace('"', '""') + '"' for w in indexed) or None,
                       substrings=tuple(substrings))


def _symbols(word: str) -> list[str]:
    """The runs of symbols beyond ASCII in ``word`` (emoji, ✨): what it holds besides punctuation."""
    return "".join(c if ord(c) > 127 and unicodedata.category(c) in ("So", "Sk") else " " for c in word).split()


_tokenizer_lock = threading.Lock()
_tokenizer: list[sqlite3.Connection] = []


@functools.lru_cache(maxsize=4096)
def _index_keeps(word: str) -> bool:
    """Whether the full-text index's tokenizer keeps anything of ``word`` as a term (asked of SQLite itself:
    which emoji unicode61 keeps depends on its Unicode tables)."""
    with _tokenizer_lock:
        if not _tokenizer:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            conn.execute(f"CREATE VIRTUAL TABLE words USING fts5(w, tokenize = '{TOKENIZER}')")
            conn.execute("CREATE VIRTUAL TABLE terms USING fts5vocab(words, 'row')")
            _tokenizer.append(conn)
        conn = _tokenizer[0]
        conn.execute("INSERT INTO words (w) VALUES (?)", (word,))
        try:
            return bool(conn.execute("SELECT count(*) FROM terms").fetchone()[0])
        finally:
            conn.execute("DELETE FROM words")
