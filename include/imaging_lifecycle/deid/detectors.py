"""Identifiers in free text, found by rule: the table the engine scrubs with and the gate counts with.

PS3.15 E.3.5 asks that identifying information embedded in text be removed,
not only values copied from other header fields. These rules find the kinds
of identifier that turn up in Chinese and English clinical text even when
the header holds them nowhere else. Each rule is a row of :data:`RULES`: a
reason code, a pattern, and optionally a validator that a match must also
pass (the resident-ID checksum). Matches are reported as codes and spans,
never as text.

Numbers are matched whole (``(?<!\\d)`` ... ``(?!\\d)``): a phone number inside a
longer number is not one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

HAN = "\u4e00-\u9fff"
CN_DIGITS = "〇零一二三四五六七八九十"

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def resident_id_checksum_ok(text: str) -> bool:
    """GB 11643-1999: the 18th character is the ISO 7064 MOD 11-2 check of the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(text[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == text[17].upper()


@dataclass(frozen=True)
class Rule:
    code: str
    pattern: str
    validate: Callable[[str], bool] | None = None
    flags: int = 0


#: The detector rules, in the order they are tried (a span taken by one is not reported again).
RULES: tuple[Rule, ...] = (
    Rule("EMAIL", r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    Rule("URL", r"(?:https?://|www\.)[^\s,;]+", flags=re.IGNORECASE),
    Rule("RESIDENT_ID_18", r"(?<!\d)\d{17}[\dXx](?!\d)", resident_id_checksum_ok),
    Rule("RESIDENT_ID_15", r"(?<!\d)\d{8}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}(?!\d)"),
    Rule("MOBILE", r"(?<![\d+])(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)"),
    Rule("LANDLINE", r"(?<![\d+])(?:\(0\d{2,3}\)|0\d{2,3})[- ]?\d{7,8}(?!\d)"),
    Rule("PHONE_INTL", r"(?<![\d\w])\+\d{1,3}[- ]?\(?\d{1,4}\)?(?:[- ]?\d{2,4}){2,3}(?!\d)"),
    Rule("PHONE_NANP", r"(?<!\d)\(\d{3}\)\s?\d{3}-\d{4}(?!\d)"),
    Rule("DATE_CN", rf"(?:\d{{2,4}}|[{CN_DIGITS}]{{2,4}})\s*年\s*(?:\d{{1,2}}|[{CN_DIGITS}]{{1,3}})\s*月"
                    rf"(?:\s*(?:\d{{1,2}}|[{CN_DIGITS}]{{1,3}})\s*[日号])?"),
    Rule("DATE_YMD", r"(?<!\d)(?:19|20)\d{2}([-/.])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])(?!\d)"),
    Rule("DATE_DMY", r"(?<!\d)(?:0?[1-9]|[12]\d|3[01])([-/.])(?:0?[1-9]|1[0-2])\1(?:19|20)\d{2}(?!\d)"),
    Rule("DATE_COMPACT", r"(?<!\d)(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)"),
    Rule("AGE_OVER_89", r"(?<!\d)(?:9\d|1[0-4]\d)\s*(?:岁|周岁|years?[ -]old|yrs?[ -]old|y/?o\b)",
         flags=re.IGNORECASE),
    Rule("AGE_OVER_89", r"\b(?:age[d:]?|aged)\s*(?:9\d|1[0-4]\d)(?!\d)", flags=re.IGNORECASE),
    Rule("ADDRESS_CN", rf"[{HAN}]{{1,12}}(?:省|市|自治区|区|县)[{HAN}\d]{{0,30}}?(?:路|街|道|巷|弄|村)\s*\d+\s*号"
                       rf"(?:\s*\d+\s*(?:室|楼|栋|单元))?"),
    Rule("INSTITUTION", rf"[{HAN}]{{2,20}}(?:医院|卫生院|诊所|医疗中心|保健院)"),
    Rule("INSTITUTION", r"(?:\b[A-Z][A-Za-z'.&-]+\s+){1,5}(?:Hospital|Clinic|Medical Cent(?:er|re)|Infirmary)\b"),
    Rule("NAME_CUE_CN", rf"(?:患者|病人|家属|医生|医师|主任|护士|先生|女士|老师|之子|之女|丈夫|妻子|母亲|父亲)"
                        rf"[:：\s]*[{HAN}]{{2,3}}"),
    Rule("NAME_CUE_EN", r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)?"),
)

_COMPILED = tuple((r, re.compile(r.pattern, r.flags)) for r in RULES)
#: Something every rule needs: a digit, an @, a link, a non-ASCII or ISO 2022 (ESC) byte, or an English cue word.
_MIGHT = re.compile(rb"[0-9@\x1b\x80-\xff]|(?i:www|http)|Dr|Mr|Ms|Miss|Prof|Hospital|Clinic|Medical|Infirmary")


def might_hold(raw: bytes) -> bool:
    """Could any rule match this encoded value? False means certainly not (a cheap pre-check)."""
    return _MIGHT.search(raw) is not None


@dataclass(frozen=True)
class Hit:
    code: str
    start: int
    end: int


def find(text: str) -> list[Hit]:
    """Every rule's matches in ``text`` (validated, not overlapping an earlier rule's), in text order."""
    hits: list[Hit] = []
    taken: list[tuple[int, int]] = []
    for rule, rx in _COMPILED:
        for m in rx.finditer(text):
            s, e = m.span()
            if rule.validate is not None and not rule.validate(m.group(0)):
                continue
            if any(s < te and ts < e for ts, te in taken):
                continue
            hits.append(Hit(rule.code, s, e))
            taken.append((s, e))
    return sorted(hits, key=lambda h: h.start)


def codes(text: str) -> list[str]:
    """The reason codes of what :func:`find` finds (no text)."""
    return [h.code for h in find(text)]


def scrub(text: str) -> tuple[str, list[str]]:
    """``text`` with every hit removed (and the spaces left behind tidied), and the hits' codes."""
    hits = find(text)
    if not hits:
        return text, []
    out, pos = [], 0
    for h in hits:
        out.append(text[pos:h.start])
        pos = h.end
    out.append(text[pos:])
    return re.sub(r"[ \t]{2,}", " ", "".join(out)).strip(), [h.code for h in hits]
