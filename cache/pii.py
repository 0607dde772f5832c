"""PII scrubbing: what a cache entry's stored query and response lose
before they are kept, so one user's personal data is never served to
another (the answer the caller of a miss receives is never changed).

Pure regular expressions with checksums where the format has one:

* e-mail addresses -> `[EMAIL]`;
* API keys and tokens -> `[API_KEY]`: known prefixes (sk-, AKIA, ghp_,
  github_pat_, xox?-, AIza, glpat-), or a long secret after `key=`,
  `token=`, `password=`, `Bearer`;
* card numbers -> `[CARD]`: 13-19 digits (spaces or dashes allowed) that
  pass the Luhn check;
* IBANs -> `[IBAN]`: country code, check digits, 11-30 letters or digits,
  passing ISO 13616 mod-97;
* IP addresses -> `[IP]`: IPv4 (octets <= 255), IPv6 (full or ::-compressed);
* phone numbers -> `[PHONE]`: +country or 0-prefixed numbers of 9-15
  digits, with spaces, dots, dashes or brackets.

A number that fails its checksum (a card-like order number) is left alone,
so prices, dates and reference numbers survive. Order matters: keys and
e-mails first (they contain digits), then IBANs and cards, then IPs, then
phone numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_KEY_PREFIXED = re.compile(
    r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
    r"|glpat-[A-Za-z0-9_-]{20,})"
)
_KEY_ASSIGNED = re.compile(
    r"(?i)\b((?:api[_-]?key|secret|token|password|passwd|access[_-]?key)\s*[:=]\s*|bearer\s+)"
    r"([A-Za-z0-9_\-./+=]{16,})"
)
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
_IPV6 = re.compile(
    r"(?<![:\w])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?"
    r"|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4})(?![:\w])"
)
_PHONE = re.compile(
    r"(?<![\w+(])(?:\(?\+\d{1,3}\)?[\s.-]?|\b0)(?:\(?\d{1,5}\)?[\s.-]?){2,6}\d{2,5}\b"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


def _sub(pattern: re.Pattern[str], text: str, token: str, ok: Callable[[str], bool]) -> str:
    def repl(m: re.Match[str]) -> str:
        return token if ok(m.group(0)) else m.group(0)

    return pattern.sub(repl, text)


def _card(m: str) -> bool:
    digits = re.sub(r"\D", "", m)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _phone(m: str) -> bool:
    digits = re.sub(r"\D", "", m)
    return 9 <= len(digits) <= 15


def scrub_text(text: str) -> str:
    """`text` with every recognized piece of PII replaced by its token."""
    t = _KEY_PREFIXED.sub("[API_KEY]", text)
    t = _KEY_ASSIGNED.sub(lambda m: m.group(1) + "[API_KEY]", t)
    t = _EMAIL.sub("[EMAIL]", t)
    t = _sub(_IBAN, t, "[IBAN]", iban_ok)
    t = _sub(_CARD, t, "[CARD]", _card)
    t = _IPV4.sub("[IP]", t)
    t = _sub(_IPV6, t, "[IP]", lambda m: m.count(":") >= 2 and any(c.isdigit() for c in m))
    return _sub(_PHONE, t, "[PHONE]", _phone)


def scrub_value(value: Any) -> Any:
    """scrub_text over every string inside str / list / tuple / dict values
    (an object with `model_dump()`, such as an OpenAI SDK response, is
    scrubbed as its dict). Other values are returned unchanged."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v) for v in value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return scrub_value(dump())
    return value
