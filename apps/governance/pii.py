"""PII and secret detection: regexes find candidates, validators decide.

Each detector yields `Match(type, start, end)`; `detect` runs them in a fixed order
(secrets, e-mail, IBAN, card, SSN, IP, phone) and drops a later match that overlaps an
earlier one, so "+49 30 1234567" inside an e-mail or a card number inside a key block is
reported once. Validators keep precision up:

- card: one separator style, a known issuer prefix with its lengths, Luhn;
- IBAN: the country's length and the ISO 7064 mod-97 check;
- SSN: area not 000/666/9xx, group not 00, serial not 0000;
- IP: `ipaddress` decides; not after "v"/"version"/"section" and not before "-beta"/"-rc";
- phone: "+CC" with 8-15 digits, or a national shape (NANP 3-3-4, trunk-0 numbers) with
  separators; dates (2024-05-12, 12.05.2024) and 4-part dotted numbers are not phones;
- secrets: known prefixes (sk-, ghp_, AKIA, xoxb-, …), private key blocks, and tokens of
  32+ characters mixing upper, lower and digits, not made of words (mean camel-case
  piece < MAX_MEAN_WORD letters), with Shannon entropy >= ENTROPY_BITS bits per
  character (random base64 scores about 4.5-5; hex digests and UUIDs stay below 4).
"""

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

EMAIL = "email"
PHONE = "phone"
CARD = "card"
IBAN = "iban"
SSN = "ssn"
IP = "ip"
SECRET = "secret"
TYPES: tuple[str, ...] = (EMAIL, PHONE, CARD, IBAN, SSN, IP, SECRET)
LABELS = {
    EMAIL: "E-mail address",
    PHONE: "Phone number",
    CARD: "Payment card number",
    IBAN: "IBAN",
    SSN: "US Social Security number",
    IP: "IP address (v4 or v6)",
    SECRET: "Secret (API key, token, private key)",
}
PLACEHOLDER = {
    EMAIL: "EMAIL",
    PHONE: "PHONE",
    CARD: "CARD",
    IBAN: "IBAN",
    SSN: "SSN",
    IP: "IP",
    SECRET: "SECRET",
}
ENTROPY_BITS = 4.2
ENTROPY_MIN_LENGTH = 32
# Split at case changes, random tokens fall into pieces of about two letters
# ("u8jzPde0Igx" -> u, jz, Pde, Igx); CamelCaseIdentifiers2024 into words of four or more.
MAX_MEAN_WORD = 3.0


@dataclass(frozen=True)
class Match:
    type: str
    start: int
    end: int


# --- e-mail -------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])([A-Za-z0-9._%+-]{1,64})@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"([A-Za-z]{2,63}))(?![\w-]|\.[A-Za-z0-9])"
)
# "icon@2x.png" is a retina asset name, not an address.
_FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "pdf", "js", "css"})


def _emails(text: str) -> Iterator[Match]:
    for m in _EMAIL.finditer(text):
        local, tld = m.group(1), m.group(3).lower()
        if local.startswith(".") or local.endswith(".") or ".." in local:
            continue
        if tld in _FILE_SUFFIXES:
            continue
        yield Match(EMAIL, m.start(), m.end())


# --- payment cards -------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")
# Issuer prefix -> allowed lengths (Visa, Mastercard, Amex, Diners, Discover, JCB).
_ISSUERS = (
    (re.compile(r"4"), (13, 16, 19)),
    (re.compile(r"5[1-5]|2(?:2[2-9]|[3-6]\d|7[01])|2720"), (16,)),
    (re.compile(r"3[47]"), (15,)),
    (re.compile(r"3(?:0[0-5]|[68])"), (14, 15, 16, 17, 18, 19)),
    (re.compile(r"6011|64[4-9]|65"), (16, 17, 18, 19)),
    (re.compile(r"35"), (16, 17, 18, 19)),
)


def _issuer_ok(digits: str) -> bool:
    return any(p.match(digits) and len(digits) in lengths for p, lengths in _ISSUERS)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(text: str) -> Iterator[Match]:
    for m in _CARD.finditer(text):
        raw = m.group()
        if " " in raw and "-" in raw:
            continue
        digits = re.sub(r"\D", "", raw)
        if not _issuer_ok(digits):
            continue
        if len(set(digits)) > 1 and luhn_ok(digits):
            yield Match(CARD, m.start(), m.end())


# --- IBAN -----------------------------------------------------------------------------------

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VA": 22,
    "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def iban_ok(compact: str) -> bool:
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ibans(text: str) -> Iterator[Match]:
    for m in _IBAN.finditer(text):
        expected = IBAN_LENGTHS.get(m.group()[:2])
        if expected is None:
            continue
        # Take exactly the country's length; the IBAN must end there (not mid-word).
        count, end = 0, m.start()
        for i in range(m.start(), m.end()):
            if text[i] != " ":
                count += 1
            if count == expected:
                end = i + 1
                break
        if count != expected or (end < len(text) and text[end].isalnum()):
            continue
        if iban_ok(text[m.start() : end].replace(" ", "")):
            yield Match(IBAN, m.start(), end)


# --- US SSN ---------------------------------------------------------------------------------

_SSN = re.compile(r"(?<![\w-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-]|[.,]\d)")


def ssn_ok(area: str, group: str, serial: str) -> bool:
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def _ssns(text: str) -> Iterator[Match]:
    for m in _SSN.finditer(text):
        if ssn_ok(m.group(1), m.group(3), m.group(4)):
            yield Match(SSN, m.start(), m.end())


# --- IP addresses -----------------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?![\w-]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?:\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\d)"
)
_VERSION_BEFORE = re.compile(r"(?:\bv|\bver\.?|\bversion|\brelease|\bbuild|\bsection|§)\s*$", re.I)


def _ips(text: str) -> Iterator[Match]:
    for m in _IPV4.finditer(text):
        if _VERSION_BEFORE.search(text[max(0, m.start() - 12) : m.start()]):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield Match(IP, m.start(), m.end())
    for m in _IPV6.finditer(text):
        value = m.group()
        if value.strip(":") == "" or value.count(":") < 2:
            continue
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            continue
        yield Match(IP, m.start(), m.end())


# --- phone numbers ----------------------------------------------------------------------------

_PHONE_INTL = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,6}(?![\w-]|[.,]\d)"
)
_PHONE_NANP = re.compile(
    r"(?<![\w+.-])(?:1[ .-])?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}([ .-]))"
    r"[2-9]\d{2}[ .-]\d{4}(?![\w-]|[.,]\d)"
)
_PHONE_TRUNK = re.compile(r"(?<![\w+.-])\(?0\d{1,4}\)?[ -]\d{3,4}[ -]?\d{3,4}(?![\w-]|[.,]\d)")
_DATE = re.compile(r"\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


def _phones(text: str) -> Iterator[Match]:
    for pattern, lo, hi in ((_PHONE_INTL, 8, 15), (_PHONE_NANP, 10, 11), (_PHONE_TRUNK, 10, 11)):
        for m in pattern.finditer(text):
            value = m.group()
            digits = re.sub(r"\D", "", value)
            if not lo <= len(digits) <= hi or _DATE.fullmatch(value.lstrip("+")):
                continue
            yield Match(PHONE, m.start(), m.end())


# --- secrets ----------------------------------------------------------------------------------

_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)",
    re.S,
)
_PREFIXED = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
    r")(?![\w-])"
)
_TOKEN = re.compile(
    r"(?<![\w+/-])[A-Za-z0-9+/_-]{" + str(ENTROPY_MIN_LENGTH) + r",}={0,2}(?![\w+/=-])"
)


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def _high_entropy(token: str) -> bool:
    words = _WORDS.findall(token)
    mean_word = sum(map(len, words)) / len(words) if words else 0
    return (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
        and mean_word < MAX_MEAN_WORD
        and entropy(token) >= ENTROPY_BITS
    )


def _secrets(text: str) -> Iterator[Match]:
    for pattern in (_KEY_BLOCK, _PREFIXED):
        for m in pattern.finditer(text):
            yield Match(SECRET, m.start(), m.end())
    for m in _TOKEN.finditer(text):
        if _high_entropy(m.group()):
            yield Match(SECRET, m.start(), m.end())


DETECTORS: tuple[tuple[str, Callable[[str], Iterator[Match]]], ...] = (
    (SECRET, _secrets),
    (EMAIL, _emails),
    (IBAN, _ibans),
    (CARD, _cards),
    (SSN, _ssns),
    (IP, _ips),
    (PHONE, _phones),
)


def detect(text: str, types: frozenset[str] | set[str] | None = None) -> list[Match]:
    """Non-overlapping matches in text order; `types` limits the detectors run."""
    taken: list[Match] = []
    for kind, detector in DETECTORS:
        if types is not None and kind not in types:
            continue
        for match in detector(text):
            if not any(match.start < t.end and t.start < match.end for t in taken):
                taken.append(match)
    return sorted(taken, key=lambda m: m.start)


_PLACEHOLDER_RE = re.compile(r"\[(" + "|".join(PLACEHOLDER.values()) + r")_(\d+)\]")


class Redactor:
    """Typed placeholders, one per distinct value within one input: the same address
    gets the same `[EMAIL_1]` in every variable and message. Numbering continues after
    any placeholder already present in `seen_text` (re-checking redacted text)."""

    def __init__(self, seen_text: str = "") -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._next: Counter[str] = Counter()
        for m in _PLACEHOLDER_RE.finditer(seen_text):
            self._next[m.group(1)] = max(self._next[m.group(1)], int(m.group(2)))

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._by_value:
            name = PLACEHOLDER[kind]
            self._next[name] += 1
            self._by_value[key] = f"[{name}_{self._next[name]}]"
        return self._by_value[key]

    def apply(self, text: str, matches: list[Match]) -> str:
        parts, last = [], 0
        for m in sorted(matches, key=lambda m: m.start):
            parts.append(text[last : m.start])
            parts.append(self.placeholder(m.type, text[m.start : m.end]))
            last = m.end
        parts.append(text[last:])
        return "".join(parts)
