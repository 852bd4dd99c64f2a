"""Verification of a semantic hit: serve a near neighbour only when it asks the same thing.

An embedding puts "how do I reset my password" and "how do I change my
password" a hair apart (cosine 0.9 and up), yet they want different answers.
So after the vector search the cache asks whether the cached question and the
new one differ in something an answer depends on. The checks are cheap,
pure-Python *guards* (tens of microseconds for two questions), run in this
order; the first that finds a difference rejects the candidate, and the
look-up tries the next-nearest entry or misses:

``numbers``
    the two mention different numbers ("50,000 a month" vs "30,000 a month",
    "iPhone 6" vs "iPhone 7", "Part 9" vs "Part 5");
``negation``
    one is negated and the other is not ("… with a credit card" vs "…
    without a credit card", "why do" vs "why don't");
``question``
    they ask different kinds of question: the reason ("why"), the time
    ("when"), the place ("where"), the person ("who"), an amount ("how
    many/much/long"), or yes/no ("is it …?"). "What"/"which" questions are
    compatible with any kind, and "how" (the manner) with yes/no ones, because
    people word one ask both ways ("what are the reasons …" / "why …");
``names``
    a name, acronym or model number that one question mentions and the other
    does not ("… visiting Somalia" vs "… visiting Sweden", "MBA" vs "MS");
``terms``
    the content words differ: after dropping stopwords and the filler that
    questions are phrased with ("best", "really", "some") and reducing words
    to a light stem, a question keeps a word the other lacks on *both* sides
    (a substitution: "reset" for "change"), or two or more on one side (a
    narrower question: "… in india", "… for men").

The guards err towards rejecting: a wrong hit serves someone another
question's answer, a rejected one only costs one generation. Each is
measured on its own by `modelyard cache eval` (see `modelyard.cache.evaluate`).

A `Judge` can be configured on top (``cache.verify: judge``): after the
guards pass, a pair classifier or a small model is asked whether the two
questions are the same; its answer is final.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol

#: the guards, in the order they run
GUARDS = ("numbers", "negation", "question", "names", "terms")

_WORD = re.compile(r"[A-Za-z0-9]+(?:[.'’&+\-][A-Za-z0-9]+)*\+*")
_SENTENCE_END = re.compile(r"[.?!:;]\s+")

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20", "thirty": "30",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000",
    "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5",
}
_SCALE = {"k": 1_000, "m": 1_000_000, "mn": 1_000_000, "bn": 1_000_000_000}

_NEGATIONS = {"not", "no", "never", "without", "cannot", "cant", "nobody", "none", "nothing", "neither", "nor",
              "nowhere", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "wouldnt",
              "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "mustnt", "neednt", "aint", "non"}

_AUXILIARIES = {"is", "are", "am", "was", "were", "do", "does", "did", "can", "could", "should", "would", "will",
                "shall", "may", "might", "must", "has", "have", "had", "isnt", "arent", "dont", "doesnt", "didnt",
                "cant", "wont", "wouldnt", "shouldnt", "couldnt"}
_QUANTITY = {"many", "much", "long", "often", "old", "far", "big", "large", "tall", "fast", "far"}

#: English stopwords (function words), kept short on purpose
_STOPWORDS = set("""
a an the and or but if then than so as of at by for with about against between into through during before after
above below to from up down in out on off over under again further once here there all any both each few more most
other some such only own same too very s t just i me my myself we our ours ourselves you your yours yourself
yourselves he him his himself she her hers herself it its itself they them their theirs themselves this that these
those what which who whom whose when where why how is are was were be been being have has had having do does did
doing would should could can will shall may might must am get got getting let us im ive id youre youve dont doesnt
also really actually exactly ever even still yet please anyone someone somebody something anything one ones way ways
thing things lot lots kind kinds sort type types much many quite
""".split())
#: words questions are phrased with, which do not change what is asked
_FILLER = set("""
best good great top better nice ideal right proper easy easiest simple simplest quick quickest fast effective
effectively efficient possible possibly really truly basically generally usually typically suggest suggestion
suggestions recommend recommendation recommendations advice tip tips idea ideas way ways method methods step steps
know tell explain find help need want like go make use able think mean meaning new common main important some
""".split())

_QUESTION_WORDS = ("why", "when", "where", "who", "whom", "whose", "what", "which", "how")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a cached question may answer a new one; ``guard`` names the check that said no."""

    same: bool
    guard: str | None = None
    detail: str = ""


SAME = Verdict(True)


class Judge(Protocol):
    """A second opinion after the guards: True when the two questions ask the same thing."""

    async def __call__(self, cached: str, query: str) -> bool: ...


# --- tokens ---------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.replace("’", "'"))


def _plain(token: str) -> str:
    """Lower case without apostrophes and trailing possessives: "Don't" -> "dont", "Apple's" -> "apple"."""
    t = token.lower()
    if t.endswith("'s"):
        t = t[:-2]
    return t.replace("'", "")


def stem(word: str) -> str:
    """A light stem: plurals, -ing, -ed, -ly and -ness go, so "answering" and "answer" meet.

    >>> [stem(w) for w in ("earphones", "studies", "learning", "created", "fluently")]
    ['earphone', 'study', 'learn', 'creat', 'fluent']
    """
    w = word
    if len(w) <= 3 or not w.isalpha():
        return w
    for suffix, keep in (("iness", "y"), ("ness", ""), ("ies", "y"), ("ied", "y"), ("sses", "ss"), ("ing", ""),
                         ("edly", ""), ("ly", ""), ("ed", ""), ("es", "e"), ("s", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            if suffix == "s" and w.endswith(("ss", "us", "is")):
                return w
            if suffix == "es" and not w.endswith(("ses", "xes", "zes", "ches", "shes", "oes")):
                return w[:-1]
            base = w[: len(w) - len(suffix)] + keep
            if suffix in ("ing", "ed") and len(base) > 3 and base[-1] == base[-2] and base[-1] not in "lsz":
                base = base[:-1]  # "getting" -> "get", "planned" -> "plan"
            return base
    return w


class _Question:
    """What the guards look at in one question, worked out once."""

    __slots__ = ("text", "words", "numbers", "negated", "kind", "names", "terms", "stems")

    def __init__(self, text: str) -> None:
        self.text = text
        raw = _tokens(text)
        self.words = [_plain(t) for t in raw]
        self.numbers = _numbers(text, raw)
        self.negated = any(w in _NEGATIONS for w in self.words)
        self.kind = _kind(self.words)
        self.stems = {stem(w) for w in self.words if not w.isdigit()}
        self.names = _names(text, raw)
        self.terms = {stem(w) for w in self.words
                      if w not in _STOPWORDS and w not in _FILLER and w not in _NUMBER_WORDS and w not in _NEGATIONS
                      and not any(c.isdigit() for c in w)
                      and len(w) > 1}


_DIGITS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?([a-zA-Z]*)")


def _numbers(text: str, raw: list[str]) -> set[str]:
    """The numbers a question mentions, in one spelling: "50k", "50,000" and "50000" are one number."""
    out = set()
    for whole, fraction, unit in _DIGITS.findall(text):
        value = float(whole.replace(",", "") + (fraction or ""))
        out.add(_canonical(value * _SCALE.get(unit.lower(), 1)))
    for i, token in enumerate(raw):
        t = token.lower()
        if t in _NUMBER_WORDS:
            # "one" is as often a pronoun ("which one", "one should") as a number, "second" a unit of time
            if t in ("one", "first", "second") and not (i + 1 < len(raw) and raw[i + 1].lower() in _UNITS):
                continue
            out.add(_NUMBER_WORDS[t])
    return out


_UNITS = {"year", "years", "month", "months", "day", "days", "week", "weeks", "hour", "hours", "time", "times",
          "kg", "km", "dollar", "dollars", "rupee", "rupees", "semester", "child", "person"}


def _canonical(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _kind(words: list[str]) -> str:
    """What a question asks for: reason, time, place, person, amount, manner, polar (yes/no) or open."""
    for i, w in enumerate(words):
        if w == "why":
            return "reason"
        if w == "when":
            return "time"
        if w == "where":
            return "place"
        if w in ("who", "whom", "whose"):
            return "person"
        if w == "how":
            nxt = words[i + 1] if i + 1 < len(words) else ""
            return "amount" if nxt in _QUANTITY else "manner"
        if w in ("what", "which"):
            return "open"
    return "polar" if words and words[0] in _AUXILIARIES else "open"


#: kinds of question that one ask can be worded as (besides "open", which goes with any)
_COMPATIBLE = {frozenset({"manner", "polar"})}


def _names(text: str, raw: list[str]) -> set[str]:
    """Names, acronyms and model numbers: words capitalised in mid-sentence, all-capital words, and words that
    mix letters with digits or capitals ("iPhone", "MI5"), as light stems in lower case."""
    starts = {0} | {m.end() for m in _SENTENCE_END.finditer(text)}
    out = set()
    pos = 0
    for token in raw:
        at = text.find(token, pos)
        pos = at + len(token) if at >= 0 else pos
        bare = token.replace("'", "").replace("’", "")
        if len(bare) < 2:
            continue
        letters = [c for c in bare if c.isalpha()]
        if not letters:
            continue
        mixed = any(c.isdigit() for c in bare) or any(c.isupper() for c in bare[1:])
        capital = bare[0].isupper() and at not in starts and _plain(token) not in _STOPWORDS
        if re.fullmatch(r"\d+(?:\.\d+)?[a-z]{0,3}", bare.lower()):
            continue  # "15k", "2nd", "10kg": a number, the numbers guard's business
        if (mixed or capital) and _plain(token) not in _NEGATIONS:
            out.add(stem(_plain(token)))
    return out


# --- the guards ----------------------------------------------------------------------------------


def _differs(a: set[str], b: set[str]) -> str:
    return ", ".join(sorted(a - b) + sorted(b - a))


def guard_numbers(a: _Question, b: _Question) -> str | None:
    return _differs(a.numbers, b.numbers) if a.numbers != b.numbers else None


def guard_negation(a: _Question, b: _Question) -> str | None:
    return None if a.negated == b.negated else f"only one is negated: {(a if a.negated else b).text!r}"


def guard_question(a: _Question, b: _Question) -> str | None:
    if a.kind == b.kind or "open" in (a.kind, b.kind) or frozenset({a.kind, b.kind}) in _COMPATIBLE:
        return None
    return f"{a.kind} vs {b.kind}"


def guard_names(a: _Question, b: _Question) -> str | None:
    # a name counts as mentioned by the other question when it appears there in any case or form
    missing = {n for n in a.names if n not in b.stems} | {n for n in b.names if n not in a.stems}
    return ", ".join(sorted(missing)) or None


def guard_terms(a: _Question, b: _Question) -> str | None:
    only_a = {t for t in a.terms - b.terms if not _near(t, b.terms)}
    only_b = {t for t in b.terms - a.terms if not _near(t, a.terms)}
    if (only_a and only_b) or len(only_a) >= 2 or len(only_b) >= 2:
        return _differs(only_a, only_b)
    return None


def _near(term: str, others: set[str]) -> bool:
    """A term matches another that shares its first five letters (institute / institution, fluent / fluency)."""
    if len(term) < 5:
        return False
    return any(len(o) >= 5 and o[:5] == term[:5] for o in others)


_GUARD_FUNCTIONS: dict[str, Callable[[_Question, _Question], str | None]] = {
    "numbers": guard_numbers, "negation": guard_negation, "question": guard_question, "names": guard_names,
    "terms": guard_terms,
}


class Verifier:
    """Runs the guards (and, when given, a judge) on a cached question and a new one.

    ``guards`` picks which guards run (default: all of `GUARDS`). Questions seen
    recently are parsed once (a small LRU), so the cost per candidate is a few
    set operations.
    """

    def __init__(self, guards: tuple[str, ...] | list[str] = GUARDS, judge: Judge | None = None) -> None:
        unknown = [g for g in guards if g not in _GUARD_FUNCTIONS]
        if unknown:
            raise ValueError(f"unknown guard(s) {unknown}; the guards are {', '.join(GUARDS)}")
        self.guards = tuple(g for g in GUARDS if g in guards)
        self.judge = judge
        self._parsed: dict[str, _Question] = {}

    def _question(self, text: str) -> _Question:
        q = self._parsed.get(text)
        if q is None:
            if len(self._parsed) >= 4096:
                self._parsed.pop(next(iter(self._parsed)))
            q = self._parsed[text] = _Question(text)
        return q

    def check(self, cached: str, query: str) -> Verdict:
        """The guards' verdict (no judge)."""
        if cached.strip().lower() == query.strip().lower():
            return SAME
        a, b = self._question(cached), self._question(query)
        for name in self.guards:
            detail = _GUARD_FUNCTIONS[name](a, b)
            if detail is not None:
                return Verdict(False, name, detail)
        return SAME

    async def verify(self, cached: str, query: str) -> Verdict:
        """The guards' verdict, then the judge's when the guards pass and a judge is configured."""
        verdict = self.check(cached, query)
        if not verdict.same or self.judge is None or cached.strip().lower() == query.strip().lower():
            return verdict
        return SAME if await self.judge(cached, query) else Verdict(False, "judge")

