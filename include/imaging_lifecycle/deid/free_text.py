"""Free text, per PS3.15 E.3.5: narrative removed, descriptors reduced to known words.

Annex E's "C" (clean) keeps a value and removes what was copied from other
header fields, but E.3.5 asks more: a cleaned value is one *known not to
contain identifying information*. So:

* **Narrative** attributes (comments, histories: :data:`NARRATIVE`) carry
  whatever a person typed. They are removed, unless the policy's
  ``deid_options.keep_narrative`` names one; a kept one is scrubbed by the
  detectors (:mod:`.detectors`).
* **Descriptors** kept under Clean Descriptors (:data:`DESCRIPTORS`) keep only
  tokens of the vocabulary (``vocabulary.json``, shipped with its provenance):
  Latin words case-insensitively, short numbers (a slice thickness, not a
  date or an ID), and Chinese terms by longest match. Every other token is
  dropped; a value left empty becomes empty.

Both work on decoded text; the engine decodes and re-encodes under the
object's own Specific Character Set.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources

from imaging_lifecycle.policy.attributes import DESCRIPTORS, NARRATIVE  # noqa: F401  (re-exported)

_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9]*|\d+(?:\.\d+)?[A-Za-z]{0,2}|[\u4e00-\u9fff]+|.", re.DOTALL)
_SHORT_NUMBER = re.compile(r"\d{1,3}(?:\.\d{1,2})?(?:mm|cm|ml|s|d)?", re.IGNORECASE)


@cache
def vocabulary() -> tuple[frozenset[str], tuple[str, ...]]:
    """(Latin words upper-cased, Chinese terms longest first) from ``vocabulary.json``."""
    data = json.loads(resources.files("imaging_lifecycle.deid").joinpath("vocabulary.json").read_text("utf-8"))
    return frozenset(w.upper() for w in data["en"]), tuple(sorted(data["zh"], key=len, reverse=True))


def _han(run: str, terms: tuple[str, ...]) -> str:
    """The vocabulary terms of a run of Chinese characters, by longest match; everything else dropped."""
    out, i = [], 0
    while i < len(run):
        term = next((t for t in terms if run.startswith(t, i)), None)
        if term is None:
            i += 1
            continue
        out.append(term)
        i += len(term)
    return "".join(out)


def clean_descriptor(text: str) -> str:
    """``text`` with only vocabulary tokens (and the separators between them) left; "" if nothing is."""
    words, terms = vocabulary()
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        c = tok[0]
        if c.isascii() and c.isalpha():
            out.append(tok if tok.upper() in words else "\x00")
        elif c.isdigit():
            out.append(tok if _SHORT_NUMBER.fullmatch(tok) else "\x00")
        elif "\u4e00" <= c <= "\u9fff":
            kept = _han(tok, terms)
            out.append(kept if kept else "\x00")
        elif c.isalnum():
            out.append("\x00")  # a letter or digit of another script: not a word we know
        else:
            out.append(tok)  # separators: spaces, punctuation
    # Dropped tokens leave no trace; tidy the separators they leave behind.
    joined = re.sub(r"\x00+", "\x00", "".join(out))
    joined = re.sub(r"[^\w\u4e00-\u9fff]*\x00[^\w\u4e00-\u9fff]*", " ", joined)
    joined = re.sub(r"\(\s*\)|\[\s*\]", " ", joined)  # brackets left empty
    return re.sub(r"\s{2,}", " ", joined).strip(" -_/,.;:")
