"""The BERT uncased WordPiece tokenizer of all-MiniLM-L6-v2, without transformers or tokenizers.

Text cleanup, CJK splitting, lowercasing with accent stripping, punctuation splitting and
greedy WordPiece, id-for-id equal to the Hugging Face fast tokenizer that sentence-transformers
uses for this model (``tests/test_embedder.py`` checks it against reference ids). Written by
hand so that embedding needs nothing beyond torch and the model package's ``vocab.txt``.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from memsdk.errors import FormatError, InputError, ModelNotFoundError
from memsdk.stores.bert import INSTALL_HINT

__all__ = ["WordPieceTokenizer"]


_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Special tokens written literally in the text ("a [SEP] b") become the special token, as
# they do in the reference tokenizer, which matches them on the raw text before normalising.
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in _SPECIAL_TOKENS) + ")")


def _parse_ranges(spec: str) -> tuple[list[int], list[int]]:
    # "300-36f 483" -> sorted range starts and (inclusive) ends, for _in_ranges.
    starts, ends = [], []
    for item in spec.split():
        lo, _, hi = item.partition("-")
        starts.append(int(lo, 16))
        ends.append(int(hi or lo, 16))
    return starts, ends


def _in_ranges(cp: int, ranges: tuple[list[int], list[int]]) -> bool:
    i = bisect.bisect_right(ranges[0], cp) - 1
    return i >= 0 and cp <= ranges[1][i]


# The reference tokenizer (HF tokenizers) classifies characters with Unicode 8.0 tables,
# whatever Python's unicodedata version is; characters added since (new punctuation and
# marks, e.g. U+061D, U+0898) are plain letters to it. These are its tables, probed code
# point by code point from the reference: other characters (Cc/Cf/Co/Cs) dropped by the
# cleanup, punctuation (P* plus the ASCII symbols BERT counts as punctuation), and
# non-spacing marks (Mn) stripped after NFD.
_CONTROL_U8 = _parse_ranges(
    "0-8 b-c e-1f 7f-9f ad 600-605 61c 6dd 70f 180e 200b-200f 202a-202e 2060-2064 2066-206f "
    "d800-dfff e000-f8ff feff fff9-fffb 110bd 1bca0-1bca3 1d173-1d17a e0001 e0020-e007f "
    "f0000-ffffd 100000-10fffd"
)
_PUNCT_U8 = _parse_ranges(
    "21-2f 3a-40 5b-60 7b-7e a1 a7 ab b6-b7 bb bf 37e 387 55a-55f 589-58a 5be 5c0 5c3 5c6 5f3-5f4 "
    "609-60a 60c-60d 61b 61e-61f 66a-66d 6d4 700-70d 7f7-7f9 830-83e 85e 964-965 970 af0 df4 e4f "
    "e5a-e5b f04-f12 f14 f3a-f3d f85 fd0-fd4 fd9-fda 104a-104f 10fb 1360-1368 1400 166d-166e "
    "169b-169c 16eb-16ed 1735-1736 17d4-17d6 17d8-17da 1800-180a 1944-1945 1a1e-1a1f 1aa0-1aa6 "
    "1aa8-1aad 1b5a-1b60 1bfc-1bff 1c3b-1c3f 1c7e-1c7f 1cc0-1cc7 1cd3 2010-2027 2030-2043 "
    "2045-2051 2053-205e 207d-207e 208d-208e 2308-230b 2329-232a 2768-2775 27c5-27c6 27e6-27ef "
    "2983-2998 29d8-29db 29fc-29fd 2cf9-2cfc 2cfe-2cff 2d70 2e00-2e2e 2e30-2e42 3001-3003 "
    "3008-3011 3014-301f 3030 303d 30a0 30fb a4fe-a4ff a60d-a60f a673 a67e a6f2-a6f7 a874-a877 "
    "a8ce-a8cf a8f8-a8fa a8fc a92e-a92f a95f a9c1-a9cd a9de-a9df aa5c-aa5f aade-aadf aaf0-aaf1 "
    "abeb fd3e-fd3f fe10-fe19 fe30-fe52 fe54-fe61 fe63 fe68 fe6a-fe6b ff01-ff03 ff05-ff0a "
    "ff0c-ff0f ff1a-ff1b ff1f-ff20 ff3b-ff3d ff3f ff5b ff5d ff5f-ff65 10100-10102 1039f 103d0 "
    "1056f 10857 1091f 1093f 10a50-10a58 10a7f 10af0-10af6 10b39-10b3f 10b99-10b9c 11047-1104d "
    "110bb-110bc 110be-110c1 11140-11143 11174-11175 111c5-111c9 111cd 111db 111dd-111df "
    "11238-1123d 112a9 114c6 115c1-115d7 11641-11643 1173c-1173e 12470-12474 16a6e-16a6f 16af5 "
    "16b37-16b3b 16b44 1bc9f 1da87-1da8b"
)
_MN_U8 = _parse_ranges(
    "300-33f 342 345-36f 483-487 591-5bd 5bf 5c1-5c2 5c4-5c5 5c7 610-61a 64b-65f 670 6d6-6dc "
    "6df-6e4 6e7-6e8 6ea-6ed 711 730-74a 7a6-7b0 7eb-7f3 816-819 81b-823 825-827 829-82d 859-85b "
    "8e3-902 93a 93c 941-948 94d 951-957 962-963 981 9bc 9c1-9c4 9cd 9e2-9e3 a01-a02 a3c a41-a42 "
    "a47-a48 a4b-a4d a51 a70-a71 a75 a81-a82 abc ac1-ac5 ac7-ac8 acd ae2-ae3 b01 b3c b3f b41-b44 "
    "b4d b56 b62-b63 b82 bc0 bcd c00 c3e-c40 c46-c47 c4a-c4d c55-c56 c62-c63 c81 cbc cbf cc6 ccc- "
    "ccd ce2-ce3 d01 d41-d44 d4d d62-d63 dca dd2-dd4 dd6 e31 e34-e3a e47-e4e eb1 eb4-eb9 ebb-ebc "
    "ec8-ecd f18-f19 f35 f37 f39 f71-f72 f74 f77 f79-f7e f80 f82-f84 f86-f87 f8d-f92 f94-f97 "
    "f99-f9c f9e-fa1 fa3-fa6 fa8-fab fad-fb8 fba-fbc fc6 102d-1030 1032-1037 1039-103a 103d-103e "
    "1058-1059 105e-1060 1071-1074 1082 1085-1086 108d 109d 135d-135f 1712-1714 1732-1734 "
    "1752-1753 1772-1773 17b4-17b5 17b7-17bd 17c6 17c9-17d3 17dd 180b-180d 18a9 1920-1922 "
    "1927-1928 1932 1939-193b 1a17-1a18 1a1b 1a56 1a58-1a5e 1a60 1a62 1a65-1a6c 1a73-1a7c 1a7f "
    "1ab0-1abd 1b00-1b03 1b34 1b36-1b3a 1b3c 1b42 1b6b-1b73 1b80-1b81 1ba2-1ba5 1ba8-1ba9 "
    "1bab-1bad 1be6 1be8-1be9 1bed 1bef-1bf1 1c2c-1c33 1c36-1c37 1cd0-1cd2 1cd4-1ce0 1ce2-1ce8 "
    "1ced 1cf4 1cf8-1cf9 1dc0-1df5 1dfc-1dff 20d0-20dc 20e1 20e5-20f0 2cef-2cf1 2d7f 2de0-2dff "
    "302a-302d 3099-309a a66f a674-a67d a69e-a69f a6f0-a6f1 a802 a806 a80b a825-a826 a8c4 "
    "a8e0-a8f1 a926-a92d a947-a951 a980-a982 a9b3 a9b6-a9b9 a9bc a9e5 aa29-aa2e aa31-aa32 "
    "aa35-aa36 aa43 aa4c aa7c aab0 aab2-aab4 aab7-aab8 aabe-aabf aac1 aaec-aaed aaf6 abe5 abe8 "
    "abed fb1e fe00-fe0f fe20-fe2f 101fd 102e0 10376-1037a 10a01-10a03 10a05-10a06 10a0c-10a0f "
    "10a38-10a3a 10a3f 10ae5-10ae6 11001 11038-11046 1107f-11081 110b3-110b6 110b9-110ba "
    "11100-11102 11127-1112b 1112d 11130-11134 11173 11180-11181 111b6-111be 111ca-111cc "
    "1122f-11231 11234 11236-11237 112df 112e3-112ea 11300-11301 1133c 11340 11366-1136c "
    "11370-11374 114b3-114b8 114ba 114bf-114c0 114c2-114c3 115b2-115b5 115bc-115bd 115bf-115c0 "
    "115dc-115dd 11633-1163a 1163d 1163f-11640 116ab 116ad 116b0-116b5 116b7 1171d-1171f "
    "11722-11725 11727-1172b 16af0-16af4 16b30-16b36 16f8f-16f92 1bc9d-1bc9e 1d167-1d169 "
    "1d17b-1d182 1d185-1d18b 1d1aa-1d1ad 1d242-1d244 1da00-1da36 1da3b-1da6c 1da75 1da84 "
    "1da9b-1da9f 1daa1-1daaf 1e8d0-1e8d6 e0100-e01ef"
)

# Rust's char::is_whitespace plus tab/newline/return; VT, FF and U+0085 are dropped as
# control characters before this test applies.
_WHITESPACE = frozenset(
    "\t\n\r \xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _is_cjk(cp: int) -> bool:
    # The CJK Unified Ideographs blocks, as BERT defines "Chinese character"; Hangul, kana
    # and CJK punctuation are not in it. Extension E starts at 0x2B820, but the reference
    # has 0x2B920 here, and we match the reference.
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


# Real text uses a few thousand distinct code points; past this many the tables stop growing
# (and recompute), so text crafted to hold every code point cannot bloat them.
_TABLE_LIMIT = 1 << 16


class _CleanTable(dict[int, str]):
    """``str.translate`` table for the first normalisation pass, filled on first use of a
    code point: drop NUL, U+FFFD and control characters, turn whitespace into a space, and
    surround CJK ideographs with spaces so that each becomes a word."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        if cp == 0xFFFD or _in_ranges(cp, _CONTROL_U8):
            out = ""
        elif ch in _WHITESPACE:
            out = " "
        elif _is_cjk(cp):
            out = f" {ch} "
        else:
            out = ch
        if len(self) < _TABLE_LIMIT:
            self[cp] = out
        return out


class _CaseTable(dict[int, str]):
    """``str.translate`` table for the pass after NFD: drop non-spacing marks (the accents
    NFD split off), lowercase, and surround punctuation with spaces."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        if _in_ranges(cp, _MN_U8):
            out = ""
        else:
            # Character by character: no final-sigma rule, as in the reference tokenizer.
            out = "".join(f" {c} " if _in_ranges(ord(c), _PUNCT_U8) else c for c in ch.lower())
        if len(self) < _TABLE_LIMIT:
            self[cp] = out
        return out


_CLEAN = _CleanTable()
_CASE = _CaseTable()


def _ascii_table() -> dict[int, str]:
    # Both passes composed, for pure-ASCII text (NFD is the identity there). A plain dict:
    # str.translate looks up a dict faster than a dict subclass.
    return {cp: "".join(_CASE[ord(c)] for c in _CLEAN[cp]) for cp in range(128)}


_ASCII = _ascii_table()


def _basic_words(text: str) -> list[str]:
    """Clean, lowercase and accent-strip ``text`` and split it into words and punctuation."""
    if text.isascii():
        return text.translate(_ASCII).split()
    # NFD runs on the whole string, not per character, so combining marks are reordered
    # canonically across characters, exactly as the reference normaliser does.
    text = unicodedata.normalize("NFD", text.translate(_CLEAN))
    return text.translate(_CASE).split()


class WordPieceTokenizer:
    """The BERT uncased WordPiece tokenizer, in pure Python.

    Equivalent, id for id, to the Hugging Face tokenizer of ``all-MiniLM-L6-v2``
    (``BertNormalizer(lowercase, strip_accents, clean_text, handle_chinese_chars)`` +
    ``BertPreTokenizer`` + ``WordPiece``), including the literal special tokens.

    Word -> ids results are memoised in a bounded LRU cache: logs and documents repeat
    words heavily, and the greedy WordPiece search is the slow part. Thread-safe.

    Args:
        vocab: token -> id, as in ``vocab.txt`` (line number = id).
        cache_size: how many distinct words to memoise.

    Raises:
        FormatError: the vocabulary lacks one of the special tokens.
    """

    max_chars_per_word = 100  # longer words become [UNK], as in BERT

    def __init__(self, vocab: dict[str, int], *, cache_size: int = 1 << 16) -> None:
        missing = [t for t in _SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise FormatError(
                f"the WordPiece vocabulary lacks the special tokens {missing}; expected a "
                "BERT uncased vocab.txt; reinstall the model files "
                f"(`{INSTALL_HINT}`)"
            )
        self.vocab = vocab
        self.unk_id = vocab["[UNK]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.pad_id = vocab["[PAD]"]
        self._special = {t: vocab[t] for t in _SPECIAL_TOKENS}
        # Continuation pieces keyed without their "##", so the search slices and never
        # concatenates; the longest key bounds the search window.
        self._cont = {t[2:]: i for t, i in vocab.items() if t.startswith("##") and len(t) > 2}
        self._max_first = max(len(t) for t in vocab)
        self._max_cont = max((len(t) for t in self._cont), default=0)
        self._word_ids = functools.lru_cache(maxsize=cache_size)(self._word_ids_uncached)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, cache_size: int = 1 << 16
    ) -> WordPieceTokenizer:
        """Read ``vocab.txt`` (one token a line, line number = id).

        Raises:
            ModelNotFoundError: the file does not exist.
            FormatError: the file is not UTF-8 or lacks the special tokens.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except FileNotFoundError as e:
            raise ModelNotFoundError(
                f"the WordPiece vocabulary {path} does not exist; reinstall the model files "
                f"(`{INSTALL_HINT}`)"
            ) from e
        except UnicodeDecodeError as e:
            raise FormatError(f"{path} is not UTF-8 text ({e}); expected a BERT vocab.txt") from e
        if lines and lines[-1] == "":
            lines.pop()
        # A repeated token keeps its last line number, as in the Hugging Face loaders.
        vocab = {tok.rstrip("\r"): i for i, tok in enumerate(lines)}
        return cls(vocab, cache_size=cache_size)

    def _word_ids_uncached(self, word: str) -> tuple[int, ...]:
        n = len(word)
        if n > self.max_chars_per_word:
            return (self.unk_id,)
        ids: list[int] = []
        start = 0
        while start < n:
            # Greedy longest match first; a word with any unmatched rest is a single [UNK].
            table = self.vocab if start == 0 else self._cont
            end = min(n, start + (self._max_first if start == 0 else self._max_cont))
            while end > start:
                i = table.get(word[start:end])
                if i is not None:
                    ids.append(i)
                    break
                end -= 1
            else:
                return (self.unk_id,)
            start = end
        return tuple(ids)

    def _pieces(self, text: str, limit: int | None) -> list[int]:
        # Word-piece ids of the whole text, or of its first `limit` pieces at least.
        ids: list[int] = []
        word_ids = self._word_ids
        for segment in _SPECIAL_RE.split(text) if "[" in text else (text,):
            if segment in self._special:
                ids.append(self._special[segment])
            else:
                for word in _basic_words(segment):
                    ids += word_ids(word)
                    if limit is not None and len(ids) >= limit:
                        return ids
            if limit is not None and len(ids) >= limit:
                return ids
        return ids

    def _head_pieces(self, text: str, limit: int) -> list[int]:
        # Exactly the first `limit` pieces without normalising all of a long text: a prefix
        # cut just before an ASCII space splits no word, special token or combining sequence,
        # so its pieces are a prefix of the text's pieces.
        size = 8 * limit
        while len(text) > size:
            cut = text.rfind(" ", 0, size)
            if cut > 0:
                ids = self._pieces(text[:cut], limit)
                if len(ids) >= limit:
                    return ids[:limit]
            size *= 4
        return self._pieces(text, limit)[:limit]

    def encode(self, text: str, *, max_length: int | None = None) -> list[int]:
        """Token ids of ``text``: ``[CLS]``, the word pieces, ``[SEP]``.

        Args:
            text: any string; the empty string gives ``[CLS] [SEP]``.
            max_length: keep at most this many ids in all (the first ``max_length - 2``
                word pieces), as the reference truncates; None keeps every piece.

        Raises:
            InputError: ``max_length`` is below 2 (no room for ``[CLS]`` and ``[SEP]``).
        """
        if max_length is None:
            pieces = self._pieces(text, None)
        elif max_length < 2:
            raise InputError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
        else:
            pieces = self._head_pieces(text, max_length - 2)
        return [self.cls_id, *pieces, self.sep_id]

    def cache_info(self) -> Any:
        """Hit/miss statistics of the word cache (``functools.lru_cache`` info)."""
        return self._word_ids.cache_info()
