"""SSML `<say-as>`: how the content of each supported interpret-as is read.

espeak-ng reads digits as numbers and words as words; say-as asks for
something else. A reading is either text for espeak-ng to read (cardinal,
ordinal, date: written the way espeak-ng reads as asked) or groups of
characters to read one at a time (characters, spell-out, digits,
telephone), which the frontend phonemizes character by character, since
espeak-ng reads "A B C" as "a bee see", the first letter as the article.
Number words and dates are written for English voices; other languages get
the number or the date's numbers as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

KINDS = ("characters", "spell-out", "cardinal", "ordinal", "digits", "telephone", "date")
_NUMBER = re.compile(r"([+-]?)(\d+)((?:\.\d+)?)")
_TELEPHONE_GROUP = re.compile(r"[0-9A-Za-z*#]+")
_DATE_FIELDS = re.compile(r"\d+")
_DATE_FORMATS = ("mdy", "dmy", "ymd", "md", "dm", "ym", "my", "d", "m", "y")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


@dataclass(frozen=True)
class Reading:
    """How a say-as is read: `text` for espeak-ng, or `spell`: groups of characters read one by one."""

    text: str = ""
    spell: tuple[str, ...] = ()


def read_as(kind: str, content: str, fmt: str, language: str) -> Optional[Reading]:
    """The reading of `content` as `kind` (one of KINDS); None when the content is not one
    (a date that is no date): then it is read as plain text."""
    content = content.strip()
    english = language.lower().startswith("en")
    if kind in ("characters", "spell-out"):
        return Reading(spell=("".join(content.split()),)) if content else None
    if kind == "digits":
        digits = "".join(c for c in content if c.isdigit())
        return Reading(spell=(digits,)) if digits else None
    if kind == "telephone":
        groups = tuple(_TELEPHONE_GROUP.findall(content))
        return Reading(spell=(("+",) if content.startswith("+") else ()) + groups) if groups else None
    if kind == "cardinal":
        return _cardinal(content, english)
    if kind == "ordinal":
        return _ordinal(content, english)
    return _date(content, fmt or ("mdy" if english else "dmy"), english)


def _cardinal(content: str, english: bool) -> Optional[Reading]:
    number = _NUMBER.fullmatch(content.replace(",", "") if english else content)
    if number is None:
        return None
    sign, whole, fraction = number.groups()
    # espeak-ng reads "1990" as a year; with thousands separators it reads a number.
    grouped = f"{int(whole):,}" if english else whole
    return Reading(text=sign + grouped + fraction)


def _ordinal(content: str, english: bool) -> Optional[Reading]:
    digits = content.replace(",", "")
    if not digits.isdigit():
        return None
    return Reading(text=f"{int(digits):,}{_suffix(int(digits))}" if english else f"{int(digits)}.")


def _suffix(n: int) -> str:
    if n % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _date(content: str, fmt: str, english: bool) -> Optional[Reading]:
    fmt = fmt.lower()
    fields = _DATE_FIELDS.findall(content)
    if fmt not in _DATE_FORMATS or len(fields) != len(fmt):
        return None
    values = dict(zip(fmt, (int(f) for f in fields)))
    if not 1 <= values.get("m", 1) <= 12 or not 1 <= values.get("d", 1) <= 31:
        return None
    if not english:
        return Reading(text=" ".join(str(values[k]) for k in fmt))
    month_day = []
    if "m" in values:
        month_day.append(_MONTHS[values["m"] - 1])
    if "d" in values:
        month_day.append(f"{values['d']}{_suffix(values['d'])}")
    text = " ".join(month_day)
    if "y" in values:
        year = str(values["y"])
        text = f"{text}, {year}" if "d" in values else f"{text} {year}".strip()
    return Reading(text=text)
