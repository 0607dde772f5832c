"""The hit verifier: the last step of a semantic lookup, before a stored
answer is served for a new question.

A cosine threshold cannot tell "cancel my subscription" from "don't cancel my
subscription" (cosine 0.97 with MiniLM). So a candidate above the threshold
is served only if the two questions also agree, word by word, on what
changes an answer. Hand-written rules, no fitting; they were written looking
at one half of fow-cache's labelled pairs (crc32(id) even), and the
benchmark reports them on all pairs and on the other half alone:

1. **Numbers, dates and times.** The quantities must be the same, in the
   same order: digits and number words ("two" = 2, "two-bed"), ordinals,
   times ("7am"; am/pm compared when both state one), percentages, units
   ("100g" = "100 grams", not "100kg"), money ("£50" = "fifty pounds"); and
   month and weekday names and relative days (today, tomorrow, weekend).
2. **Polarity.** The count of negations (not, n't, never, no, without,
   "non-" words, and negating predicates: prohibited, banned, illegal, ...)
   must have the same parity. A word on one side whose negated form (un-,
   in-, dis-, non-, ...), listed antonym (increase / decrease, include /
   exclude) or contrasting kind (home / business, online / paper) is on the
   other side is refused, and so are questions that pull in opposite
   directions (more, raise vs less, lower).
3. **Names and direction.** Names (capitalized words inside a sentence,
   acronyms, words mixing letters and digits) must be the same, in the same
   order ("from MySQL to Postgres" vs "from Postgres to MySQL").
4. **Substitutions.** When the two questions are an edit of each other
   rather than a rewording (at most `max_edit_words` content words differ,
   or they differ in one contiguous span), every content word one has and
   the other lacks must be a spelling variant, inflection or listed synonym
   of a word on the other side: a content word swapped ("Bristol" /
   "Brighton", "chicken" / "beef") or added ("my child's passport") is
   refused. Function words, filler (um, please, thanks) and light verbs and
   nouns ("submit a claim" = "make a claim", "insurance policy") do not
   count. A word that changes sides of a directional preposition ("savings
   to current account" / "current account to savings") is refused.
   Reworded questions share too few words for this check; they rely on the
   threshold and rules 1-3.

The verifier is pure and fast (tens of microseconds): it runs on the few
candidates that passed the threshold, best first.
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TOKEN = re.compile(r"[£$€]?\d[\d,]*(?:\.\d+)?(?:[a-z]+|%)?|%|[a-z]+(?:['’-][a-z]+)*", re.I)

# Function words: what a question may gain or lose without changing what
# it asks.
STOPWORDS = _words(
    """
    a an the i me my mine we us our you your yours it its they them their he she his her
    is are was were be been being am do does did doing done have has had having can
    could would should will shall may might must need needs ought how what whats which
    who whom whose when where why whether if then than that this these those there here
    to of in on at by for with from into onto about as and or but so also just any some
    all each every one ones get got getting go going gone make made let lets please way
    ways much many thing things really actually exactly currently s t d ll re ve m
    """
)
# Conversational filler and politeness (near-repeats add these).
FILLER = _words(
    """
    um uh er erm hmm hi hey hello hiya morning afternoon evening team thanks thank
    cheers sorry okay ok yeah yes so like well quick question wondering wonder tell know
    bother advance silly kind kindly help possible able there's whats
    """
)
_NEGATIONS = _words(
    """
    not no never without cannot none nothing nobody neither nor
    prohibited banned illegal unlawful forbidden disallowed barred
    """
)  # the second line: predicates that negate what they apply to
_NEG_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de", "anti", "mis")
# Antonyms whose negation is not an affix. Each pair is one opposition.
_ANTONYMS = _words(
    """
    increase/decrease increase/reduce raise/lower more/less more/fewer most/least max/min
    maximum/minimum include/exclude included/excluded pass/fail before/after within/after
    add/remove upload/download import/export buy/sell start/stop open/close open/closed
    enable/disable allow/ban allow/block allowed/banned allowed/prohibited accept/decline
    accept/reject approved/rejected approve/reject win/lose above/below over/under high/low
    higher/lower early/late first/last cheap/expensive cheapest/dearest in/out on/off
    up/down arrive/depart arrival/departure credit/debit deposit/withdraw join/leave
    send/receive lend/borrow push/pull hot/cold best/worst benefits/drawbacks
    benefits/downsides advantages/disadvantages pros/cons compulsory/optional
    mandatory/optional pause/resume busy/quiet spicy/mild grant/revoke upgrade/downgrade
    enrol/withdraw subscribe/unsubscribe cover/exclude safe/dangerous legal/illegal
    full/part public/private inbound/outbound import/export outstanding/inadequate good/bad
    better/worse eat/avoid take/avoid use/avoid allowed/forbidden working/fault
    popular/unpopular check-in/check-out employed/self-employed members/non-members
    adults/children adults/kids men's/women's men/women male/female weekdays/weekends
    weekday/weekend am/pm same-day/next-day
"""
)
# Contrasting kinds of the same thing: an answer for one is not for the other.
_CONTRASTS = _words(
    """
    home/business personal/business residential/commercial domestic/international
    undergraduate/postgraduate undergraduate/master bachelor/master individual/joint
    sole/joint single/joint new/existing new/used adult/child adults/child economy/business
    standard/express online/paper online/in-store online/in-person hand/checked
    carry-on/checked buy/rent tenant/landlord tenants/landlords employee/contractor
    employees/contractors employed/unemployed resident/visitor residents/visitors
    """
)
ANTONYMS: frozenset[frozenset[str]] = frozenset(
    frozenset(p.split("/")) for p in _ANTONYMS | _CONTRASTS
)
# Words that push a quantity up or down: one side only up, the other only
# down, is a request for the opposite ("increase my overdraft" / "I want a
# smaller overdraft").
_UP = _words(
    """
    increase raise more higher bigger larger extra add boost extend maximum max
    """
)
_DOWN = _words(
    """
    decrease reduce lower less smaller cut remove shrink down minimum min fewer
    """
)
# Synonyms that near-repeats and paraphrases swap; each group is one meaning.
_SYNONYM_GROUPS = _words(
    """
    quote/quotation fastest/quickest switch/change/update/modify store/shop
    start/begin/commence receive/get/obtain street/road order/request
    register/signup/enrol/enroll mute/silence dispute/challenge centre/center
    delete/remove/erase buy/purchase cost/price/fee/charge send/email
    kids/children/child/kid agent/agency set/create make/submit result/grade atm/cashpoint
    shut/close journey/trip luggage/baggage film/movie holiday/vacation mobile/phone/cell
    flat/apartment doctor/gp reserve/book final/last author/wrote/writer postcode/zipcode
    previous/earlier/prior activate/activated/live submit/send include/come pay/accept
    cancel/end/stop/terminate close/shut repo/repository permanently fix/repair
    broken/faulty cheap/inexpensive/affordable big/large small/little help/assist/support
    find/locate show/display talk/speak choose/select/pick need/require allowed/permitted
    ask/enquire/inquire
"""
)
SYNONYMS: dict[str, frozenset[str]] = {}
for _g in _SYNONYM_GROUPS:
    _group = frozenset(_g.split("/"))
    for _w in _group:
        SYNONYMS[_w] = SYNONYMS.get(_w, frozenset()) | _group

_NUMBER_WORDS: dict[str, float] = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_NUMBER_WORDS.update(
    {
        "thirty": 30,
        "forty": 40,
        "fifty": 50,
        "sixty": 60,
        "seventy": 70,
        "eighty": 80,
        "ninety": 90,
        "hundred": 100,
        "thousand": 1000,
        "million": 1_000_000,
        "single": 1,
        "once": 1,
        "twice": 2,
        "half": 0.5,
        "dozen": 12,
        "couple": 2,
        "first": 1,
        "second": 2,
        "third": 3,
        "fourth": 4,
        "fifth": 5,
    }
)
_CALENDAR = _words(
    """
    january february march april may june july august september october november
    december jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday
    thursday friday saturday sunday mondays tuesdays wednesdays thursdays fridays
    saturdays sundays today tomorrow yesterday tonight weekend weekends weekday weekdays
    """
)
_CALENDAR_LONG = tuple(sorted(w for w in _CALENDAR if len(w) >= 6))
_UNIT_SUFFIX = re.compile(r"^([£$€]?)([\d,]*\.?\d+)([a-z%]*)$")
_ORDINAL = re.compile(r"^(\d+)(st|nd|rd|th)$")
# "may" and "march" are verbs as often as months: counted only beside a
# number or a preposition that makes them dates.
_AMBIGUOUS_MONTHS = frozenset({"may", "march"})


@dataclass(frozen=True)
class Verdict:
    """`kind`: "veto" (a rule of 1-3, or a change of direction: never
    served), "edit" (rule 4 found a swapped or added word), "reworded"
    (too few shared words for rule 4) or "same" (the same content words).
    The learned part of the verifier (prism.cache.judge) weighs the last
    three; `ok` is the rules' own decision."""

    ok: bool
    reason: str = ""
    kind: str = "veto"

    def __bool__(self) -> bool:
        return self.ok


def _fold(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'")
    return t


_CLITIC = re.compile(r"'(s|d|m|re|ve|ll)$")


def tokens(text: str) -> list[str]:
    """Lowercased word and number tokens. A clitic is cut off ("what's" ->
    "what", "Austria's" -> "austria"); "n't" stays, it is a negation."""
    return list(_tokens(text))


@functools.lru_cache(maxsize=8192)
def _tokens(text: str) -> tuple[str, ...]:
    # Cached: a lookup checks the same new question against up to four
    # candidates, and the learned verifier reads the tokens twice.
    out = []
    for t in _TOKEN.findall(_fold(text)):
        t = t.lower()
        if "'" in t and not t.endswith("n't"):
            t = _CLITIC.sub("", t)
        out.append(t)
    return tuple(out)


_UNITS = {
    "g": "g", "gram": "g", "grams": "g", "kg": "kg", "kgs": "kg", "kilo": "kg", "kilos": "kg",
    "kilogram": "kg", "kilograms": "kg", "mg": "mg", "lb": "lb", "lbs": "lb", "pound": "lb",
    "oz": "oz", "ounce": "oz", "ounces": "oz", "ml": "ml", "l": "l", "litre": "l",
    "litres": "l", "liter": "l", "liters": "l", "gallon": "gal", "gallons": "gal",
    "km": "km", "kilometre": "km", "kilometres": "km", "kilometer": "km", "kilometers": "km",
    "m": "m", "metre": "m", "metres": "m", "meter": "m", "meters": "m", "cm": "cm",
    "mm": "mm", "mile": "mi", "miles": "mi", "mi": "mi", "kb": "kb", "mb": "mb", "gb": "gb",
    "tb": "tb", "kwh": "kwh", "kw": "kw", "w": "w", "%": "%", "percent": "%", "mph": "mph",
    "c": "c", "f": "f",
}  # fmt: skip
# Money words: "fifty pounds" is £50 (the currency symbol is not compared).
_CURRENCY = _words("pounds quid dollars euros pence cents bucks")


# Durations in days, so that "14 days" = "two weeks" and "2-year" = "two-year".
_DAYS = {
    "hour": 1 / 24, "hours": 1 / 24, "day": 1, "days": 1, "week": 7, "weeks": 7,
    "fortnight": 14, "fortnights": 14, "month": 30, "months": 30, "year": 365, "years": 365,
}  # fmt: skip


def _unit(word: str) -> str:
    return _UNITS.get(word, "") if word != "pound" else ""


def _amount(v: float, unit_word: str, suffix: str = "") -> str:
    """A quantity's canonical form: durations in days, other units by their
    short name ("100 grams" = "100g"); an unknown suffix ("2fa") is kept."""
    if unit_word in _DAYS:
        return f"{v * _DAYS[unit_word]:g}d"
    return f"{v:g}{_unit(unit_word) or suffix}"


def _quantities(toks: list[str]) -> list[str]:
    """Numbers with their unit ("100g" = "100 grams", "15%" = "fifteen
    percent") in order of appearance ("from 3 to 5" is not "from 5 to 3"),
    then calendar words sorted."""
    out: Counter[str] = Counter()
    nums: list[str] = []
    for i, t in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        m = _UNIT_SUFFIX.match(t)
        if m:
            _currency, num, suffix = m.groups()  # "£50" = "fifty pounds"
            o = _ORDINAL.match(t)
            if o:
                nums.append(o.group(1))
                continue
            try:
                v = float(num.replace(",", ""))
            except ValueError:
                continue
            if suffix in ("am", "pm"):
                nums.append(f"{v:g}")
                out["@" + suffix] += 1
            else:
                nums.append(_amount(v, suffix if suffix in _UNITS else nxt, suffix))
            continue
        head, _, tail = t.partition("-")
        if tail and head in _NUMBER_WORDS:  # "two-bed", "five-bedroom", "two-year"
            nums.append(_amount(_NUMBER_WORDS[head], tail))
            continue
        if t in _NUMBER_WORDS and t not in ("first", "second", "once", "single", "couple"):
            nums.append(_amount(_NUMBER_WORDS[t], nxt))
        elif t in _CALENDAR or (len(t) >= 5 and (t := _calendar_typo(t)) != ""):
            out[t[:-1] if t.endswith(("days", "weekends")) else t] += 1
        elif t in _AMBIGUOUS_MONTHS and i > 0 and toks[i - 1] in ("in", "of", "from", "until"):
            out[t] += 1
    # "two hundred" etc. stay as their parts on both sides: only equality matters.
    return nums + sorted(out.elements())


@functools.lru_cache(maxsize=65536)
def _calendar_typo(word: str) -> str:
    """The calendar word a token is a typo of ("Mondys"), or ""."""
    for c in _CALENDAR_LONG:
        if abs(len(c) - len(word)) <= 1 and c[0] == word[0] and _edit_distance_le1(word, c):
            return c
    return ""


def _lone_one(qa: list[str], qb: list[str]) -> bool:
    """True when the only difference is a "one" on a side and no number on
    the other: "one egg" is "an egg", "a new one" a pronoun, not a count
    that changes the answer."""
    for x, y in ((qa, qb), (qb, qa)):
        rest = [q for q in x if q != "1"]
        if len(rest) < len(x) and rest == y and "1" not in y:
            return True
    return False


def _negations(toks: list[str]) -> int:
    """Negations, "non-" words included ("non-members" = "not a member")."""
    return sum(1 for t in toks if t in _NEGATIONS or t.endswith("n't") or t.startswith("non-"))


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude English stem: enough to equate inflections (refund/refunds,
    waiting/wait, applying/apply), never to merge different words."""
    w = word.replace("'s", "").replace("'", "")
    for suf in ("ations", "ation", "ings", "ing", "edly", "ies", "ied", "ed", "es", "s", "ly"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            w = w[: -len(suf)]
            break
    if w.endswith("e") and len(w) > 4:
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2]:
        w = w[:-1]
    return w


# The same oppositions between stems, so that inflections count too.
_STEM_ANTONYMS: frozenset[frozenset[str]] = frozenset(
    s for s in (frozenset(stem(w) for w in pair) for pair in ANTONYMS) if len(s) == 2
)


def _edit_distance_le1(a: str, b: str) -> bool:
    """True when a and b differ by at most one insertion, deletion,
    substitution or swap of neighbours (a typo)."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diff = [i for i in range(la) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )
    if la > lb:
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1 :]


@functools.lru_cache(maxsize=65536)
def _variant(a: str, b: str) -> bool:
    """Same word up to inflection, spelling or a typo (not for short words,
    where one letter is a different word: "debt" is not "debit" but "cat"
    is not "car" either)."""
    if stem(a) == stem(b):
        return True
    sa, sb = stem(a), stem(b)
    if min(len(sa), len(sb)) >= 4 and (sa.startswith(sb) or sb.startswith(sa)):
        return True
    return (min(len(a), len(b)) >= 5 and _edit_distance_le1(a, b)) or _typo2(a, b)


def _typo2(a: str, b: str) -> bool:
    """Two edits apart, for long words only ("allowence" / "allowance")."""
    if min(len(a), len(b)) < 7 or abs(len(a) - len(b)) > 2:
        return False
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1] <= 2


@functools.lru_cache(maxsize=65536)
def _opposed(a: str, b: str) -> bool:
    """Opposites: a listed pair, inflected ("increased" / "decreased"), a
    negating prefix ("safe" / "unsafe"), or compounds that differ in one
    opposed part ("full-time" / "part-time")."""
    if frozenset((a, b)) in ANTONYMS:
        return True
    if a.startswith("non-") or b.startswith("non-"):
        return False  # a negation: rule 2 compares the counts ("non-members" / "not a member")
    if frozenset((stem(a), stem(b))) in _STEM_ANTONYMS:
        return True
    for p in _NEG_PREFIXES:
        for x, y in ((a, b), (b, a)):
            # A prefix negates a word, not a particle ("into" is not "not to").
            if len(x) >= 4 and (y == p + x or y == p + "-" + x):
                return True
    pa, pb = a.split("-"), b.split("-")
    if len(pa) == len(pb) > 1:
        diff = [(x, y) for x, y in zip(pa, pb, strict=True) if x != y]
        return len(diff) == 1 and _opposed(*diff[0])
    return False


_CAP = re.compile(r"\b[A-Z][\w'’&-]*|\b\w*\d\w*[A-Za-z]\w*|\b\w+[A-Z]\w*")


def entities(text: str) -> list[str]:
    """Names in order: capitalized words not opening a sentence (nor "I"),
    acronyms, words mixing letters and digits or with inner capitals."""
    out: list[str] = []
    t = _fold(text)
    for m in _CAP.finditer(t):
        w = m.group(0)
        start = m.start()
        before = t[:start].rstrip()
        sentence_start = not before or before[-1] in '.?!:;"(' or before.endswith(("\n",))
        lw = w.lower().replace("’", "'")
        if w in ("I", "I'm", "I've", "I'd", "I'll") or lw in _CALENDAR or _calendar_typo(lw):
            continue
        if sentence_start and not (w.isupper() and len(w) > 1):
            continue
        if lw.rstrip("'s") in STOPWORDS or lw in FILLER:
            continue
        if any(c.isdigit() for c in w):
            continue  # quantities are rule 1's
        out.append(lw.removesuffix("'s"))
    return out


# Verbs that carry the request, not its subject ("submit a claim" = "make a
# claim", "receive" = "get"), and nouns that only name the kind of a thing
# ("insurance policy", "capital city", "order value"): rule 4 ignores them.
LIGHT = _words(
    """
    get receive obtain request make submit file send do have take give go come apply
    applying register sign find see tell know want like able allowed way method process
    steps step policy value city country number amount details information option options
    type kind service services
    """
)


def _content(toks: list[str]) -> list[str]:
    """Content words: not function words, filler, negations or quantities
    (rules 1 and 2 compare those)."""
    return [
        t
        for t in toks
        if t not in STOPWORDS
        and t not in FILLER
        and t not in _NEGATIONS
        and not t.endswith("n't")
        and t not in _NUMBER_WORDS
        and t not in LIGHT
        and t not in _UNITS
        and t not in _DAYS
        and t not in _CURRENCY
        and not t[0].isdigit()
        and t[0] not in "£$€"
    ]


class Verifier:
    """Decides whether a cached question's answer serves a new question.

    `max_edit_words`: a pair with at most this many unshared content words
    (or one differing span) counts as an edit, and rule 4 applies.
    `refuse_added=False` lets a pair that only adds words through."""

    def __init__(self, *, max_edit_words: int = 2, refuse_added: bool = True) -> None:
        self.max_edit_words = max_edit_words
        self.refuse_added = refuse_added

    def __repr__(self) -> str:
        return f"Verifier(max_edit_words={self.max_edit_words})"

    def check(self, cached: str, query: str) -> Verdict:
        ta, tb = tokens(cached), tokens(query)
        qa, qb = _quantities(ta), _quantities(tb)
        if not ({"@am", "@pm"} & set(qa) and {"@am", "@pm"} & set(qb)):
            # "7pm" and "seven this evening": compare the meridiem only when
            # both questions state one.
            qa = [q for q in qa if q[0] != "@"]
            qb = [q for q in qb if q[0] != "@"]
        if qa != qb and not _lone_one(qa, qb):
            return Verdict(False, f"numbers or dates differ: {qa} / {qb}")
        if _negations(ta) % 2 != _negations(tb) % 2:
            return Verdict(False, "one side is negated")
        ca, cb = _content(ta), _content(tb)
        sa, sb = set(ca), set(cb)
        only_a, only_b = sa - sb, sb - sa
        # Opposites among all words: "send" / "receive" are light verbs for
        # rule 4 but still opposites here.
        wa, wb = set(ta), set(tb)
        for x in wa - wb:
            for y in wb - wa:
                if _opposed(x, y):
                    return Verdict(False, f"opposites: {x!r} / {y!r}")
        up_a, dn_a = bool(set(ta) & _UP), bool(set(ta) & _DOWN)
        up_b, dn_b = bool(set(tb) & _UP), bool(set(tb) & _DOWN)
        if (up_a and not dn_a and dn_b and not up_b) or (dn_a and not up_a and up_b and not dn_b):
            return Verdict(False, "opposite directions (more / less)")
        ea, eb = entities(cached), entities(query)
        # A name is missing when the other question lacks the word in any
        # case ("UK" / "uk", a question typed in capitals).
        set_a, set_b = set(ta), set(tb)
        missing = sorted({x for x in ea if x not in set_b} | {y for y in eb if y not in set_a})
        if missing:
            return Verdict(False, f"names differ: {missing}")
        both = set(ea) & set(eb)
        ea = [x for x in ea if x in both]
        eb = [y for y in eb if y in both]
        if len(both) > 1 and _order(ea) != _order(eb):
            return Verdict(False, "names in another order (direction)")
        return self._substitutions(ta, tb, ca, cb, only_a, only_b)

    def unmatched(self, cached: str, query: str) -> tuple[set[str], set[str], int, int]:
        """Rule 4's view of a pair: the content words of each side that no
        word of the other matches (variant, synonym), the number of shared
        content words, and the number of content words of both together."""
        ta, tb = tokens(cached), tokens(query)
        ca, cb = set(_content(ta)), set(_content(tb))
        only_a, only_b = ca - cb, cb - ca
        pool_a, pool_b = only_a | _with_parts(ta), only_b | _with_parts(tb)
        ua = {x for x in only_a if not _matched(x, pool_b)}
        ub = {y for y in only_b if not _matched(y, pool_a)}
        shared = (ca & cb) | (only_a - ua)
        return ua, ub, len(shared), len(ca | cb)

    def _substitutions(
        self,
        ta: list[str],
        tb: list[str],
        ca: list[str],
        cb: list[str],
        only_a: set[str],
        only_b: set[str],
    ) -> Verdict:
        # A word is matched by a variant among the other side's unshared
        # content words, or among all its words and their compound parts (a
        # typo of a light word, "reqest" / "request"; "dog-friendly" / "dogs").
        pool_a, pool_b = only_a | _with_parts(ta), only_b | _with_parts(tb)
        unmatched_a = {x for x in only_a if not _matched(x, pool_b)}
        unmatched_b = {y for y in only_b if not _matched(y, pool_a)}
        shared = (set(ca) & set(cb)) | (only_a - unmatched_a)
        small = len(unmatched_a) + len(unmatched_b) <= self.max_edit_words
        if not shared or not (small or _one_span(ca, cb)):
            return Verdict(True, "reworded: no word-level check", "reworded")
        if unmatched_a and unmatched_b:
            return Verdict(
                False, f"words swapped: {sorted(unmatched_a)} / {sorted(unmatched_b)}", "edit"
            )
        if (unmatched_a or unmatched_b) and self.refuse_added:
            return Verdict(False, f"a qualifier added: {sorted(unmatched_a | unmatched_b)}", "edit")
        # Same content words: a change of order may be a change of direction.
        if _order_words(ta, tb):
            return Verdict(False, "same words, another order (direction)")
        return Verdict(True, "same content words", "same")


def _one_span(ca: list[str], cb: list[str]) -> bool:
    """True when the content words differ in one place only, the rest
    (at least two words) equal and in order: an edit, however many words
    the edited span has ("pad thai" / "green curry")."""
    sm = difflib.SequenceMatcher(a=ca, b=cb, autojunk=False)
    spans = [op for op in sm.get_opcodes() if op[0] != "equal"]
    equal = sum(i2 - i1 for tag, i1, i2, _j1, _j2 in sm.get_opcodes() if tag == "equal")
    return len(spans) == 1 and equal >= 2


def _matched(word: str, others: set[str]) -> bool:
    syn = SYNONYMS.get(word, frozenset())
    parts = [p for p in word.split("-") if len(p) >= 3] if "-" in word else []
    return any(o in syn or _variant(word, o) or any(_variant(p, o) for p in parts) for o in others)


def _with_parts(toks: list[str]) -> set[str]:
    """Tokens of at least three letters, and the parts of hyphenated ones."""
    out = {t for t in toks if len(t) >= 3}
    for t in toks:
        if "-" in t:
            out.update(p for p in t.split("-") if len(p) >= 3)
    return out


def _order(names: list[str]) -> list[str]:
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return seen


_DIRECTIONAL = _words(
    """
    to into onto from than vs versus towards
    """
)


def _roles(toks: list[str]) -> tuple[set[str], set[str]]:
    """Words standing just before (source side) and just after (target
    side) a directional preposition, function words skipped."""
    before: set[str] = set()
    after: set[str] = set()
    for i, t in enumerate(toks):
        if t not in _DIRECTIONAL:
            continue
        b = next((w for w in reversed(toks[:i]) if w not in STOPWORDS and w not in FILLER), "")
        a = next((w for w in toks[i + 1 :] if w not in STOPWORDS and w not in FILLER), "")
        if t in ("from",):
            b, a = a, b
        if b:
            before.add(b)
        if a:
            after.add(a)
    return before, after


def _order_words(ta: list[str], tb: list[str]) -> bool:
    """True when a word on one side of a directional preposition ("savings
    to current account") is on its other side in the other question
    ("current account to savings"); a phrase merely moved keeps its side."""
    ba, aa = _roles(ta)
    bb, ab = _roles(tb)
    return bool((ba & ab) or (aa & bb))
