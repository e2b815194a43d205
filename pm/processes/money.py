"""Does a reply text mention money or promise something? Decided from the TEXT alone (pure, no I/O).

Why: a model that obeys instructions hidden in a customer e-mail will also say whatever it was
told about its own reply ("no refund offered"), so approval must not depend on the model's
structured claims. `find_money` looks at the exact text that will be sent and reports:

- `amounts`: digits next to a currency sign (any Unicode Sc character), ISO code or currency
  word, on either side ("$5", "12,50 €", "CHF 20", "500 dollars", "¥50000", "₹ 4,000");
- `unparsed`: money without a parsable digit amount ("five hundred dollars", "fünfhundert Euro",
  "a few dollars", a lone "€"), number words near a refund/approval term, and input longer than
  MAX_SCAN_CHARS (the rest was not scanned, so it cannot be called clean);
- `terms`: refund/credit/compensation/approval/commitment stems in English, German, French and
  Spanish, also when spelt out ("r e f u n d", "re-fund") or hidden with look-alike letters.

Rule of the product: when unsure, flag (a false positive costs a human review, a false
negative costs money). Ordinary delivery-status replies (dates, times, order IDs, "24 hours",
"feel free") give nothing: a number only counts next to a currency.

Evasions are undone first by `normalize` (NFKC, invisible characters dropped, digits of every
script folded to ASCII, Cyrillic/Greek look-alikes folded to Latin, casefold). Every regex has
bounded quantifiers and no nested ambiguity, and work is capped at MAX_SCAN_CHARS.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["LANGUAGES", "MAX_SCAN_CHARS", "Amount", "MoneyFindings", "find_money", "normalize"]

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es")
MAX_SCAN_CHARS = 20_000  # replies are at most a few thousand characters; more is itself suspicious

_MAX_ITEMS = 50  # per findings list: enough for a reviewer, bounded for adversarial input
_NEAR_CHARS = 40  # number words this close to a currency or money term are reported

# ---------------------------------------------------------------------------------------------
# Normalisation data
# ---------------------------------------------------------------------------------------------

# Invisible characters outside category Cf (Cf itself is dropped wholesale): combining grapheme
# joiner, Hangul fillers, Mongolian free variation selectors, variation selectors.
_INVISIBLE: frozenset[int] = frozenset(
    {0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x180B, 0x180C, 0x180D, 0x180F}
    | set(range(0xFE00, 0xFE10))
    | set(range(0xE0100, 0xE01F0))
)


def _pairs(source: str, target: str) -> dict[str, str]:
    """Two equal-length strings -> a character map (keeps the look-alike tables readable)."""
    if len(source) != len(target):
        raise ValueError("look-alike table halves differ in length")
    return dict(zip(source, target, strict=True))


# Letters that render like Latin ones; folded so "rеfund" (Cyrillic е) reads "refund".
_LOOKALIKES: dict[str, str] = {
    # Cyrillic
    **_pairs("асеорхуіїјѕԁһԛԝ", "aceopxyiijsdhqw"),
    **_pairs("АВЕКМНОРСТХУІЇЈЅ", "ABEKMHOPCTXYIIJS"),
    # Greek
    **_pairs("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX"),
    **_pairs("αικνορυχϲϳ", "aikvopuxcj"),
    # Latin variants NFKC keeps: dotless i, script a, script g
    **_pairs("ıɑɡ", "iag"),
    # Currency signs NFKC does not fold to their base sign
    **_pairs("\U0001f4b2\u20a4\u20a0", "$£€"),
    # Braille blank renders as a space
    "\u2800": " ",
}


def _fold_char(ch: str) -> str | None:
    """What one character becomes in `normalize` (None: dropped)."""
    category = unicodedata.category(ch)
    if category == "Cf" or ord(ch) in _INVISIBLE or (category == "Cc" and not ch.isspace()):
        return None
    if ch in _LOOKALIKES:
        return _LOOKALIKES[ch]
    digit = unicodedata.decimal(ch, None)
    if digit is not None:
        return str(digit)
    return ch


class _LazyTable(dict[int, "str | None"]):
    """A str.translate table filled per code point on first use (a full table is 1.1M entries)."""

    def __init__(self, fold: Callable[[str], str | None]) -> None:
        super().__init__()
        self._fold = fold

    def __missing__(self, codepoint: int) -> str | None:
        value = self._fold(chr(codepoint))
        if len(self) < 65_536:  # bounded cache: adversarial input cannot grow it forever
            self[codepoint] = value
        return value


_FOLD_TABLE = _LazyTable(_fold_char)
_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC; drop invisible characters; fold digits, look-alike letters and signs; one space; casefold.

    Dropped: Unicode category Cf (zero-width space/joiner/non-joiner, word joiner, BOM, bidi
    controls, soft hyphen, tags), variation selectors, Hangul fillers, the combining grapheme
    joiner and non-whitespace control characters. Every decimal digit of any script becomes
    ASCII. Cyrillic/Greek look-alikes become Latin letters, small/full-width currency signs
    their base sign. Runs of whitespace become one space; the ends are stripped.
    """
    folded = unicodedata.normalize("NFKC", text).translate(_FOLD_TABLE)
    # Folding can expose new NFKC forms and casefold new look-alikes (e.g. "Ѕ" -> "ѕ"): go again.
    folded = unicodedata.normalize("NFKC", folded).casefold().translate(_FOLD_TABLE)
    return _WHITESPACE.sub(" ", folded).strip()


# ---------------------------------------------------------------------------------------------
# Currency data (all keys in normalised, diacritics-stripped form)
# ---------------------------------------------------------------------------------------------

_OTHER_SIGN = "\u00a4"  # every currency sign without an entry below is scanned as "¤"

# sign -> (ISO code, amount is in minor units)
_SIGNS: dict[str, tuple[str, bool]] = {
    "$": ("USD", False),
    "€": ("EUR", False),
    "£": ("GBP", False),
    "¥": ("JPY", False),
    "₹": ("INR", False),
    "₩": ("KRW", False),
    "₽": ("RUB", False),
    "₺": ("TRY", False),
    "₪": ("ILS", False),
    "₱": ("PHP", False),
    "₫": ("VND", False),
    "฿": ("THB", False),
    "₴": ("UAH", False),
    "₦": ("NGN", False),
    "¢": ("USD", True),
    _OTHER_SIGN: ("?", False),
}
# "US$ 20", "C$5", "A$5": letters glued to a dollar sign.
_DOLLAR_PREFIXES: dict[str, str] = {
    "u.s.": "USD",
    "us": "USD",
    "can": "CAD",
    "ca": "CAD",
    "c": "CAD",
    "au": "AUD",
    "a": "AUD",
    "nz": "NZD",
    "hk": "HKD",
    "sg": "SGD",
    "s": "SGD",
    "mx": "MXN",
    "nt": "TWD",
    "r": "BRL",
}
_CODES: tuple[str, ...] = (
    "USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR", "SEK", "NOK", "DKK", "PLN",
    "MXN", "BRL", "KRW", "NZD", "HKD", "SGD", "ZAR", "CZK", "HUF",
)  # fmt: skip
# word -> (ISO code or "?", amount is in minor units); bare = also flagged without digits.
_CURRENCY_WORDS: dict[str, tuple[str, bool]] = {
    "dollars": ("USD", False), "dollar": ("USD", False), "bucks": ("USD", False),
    "buck": ("USD", False), "dolares": ("USD", False), "dolar": ("USD", False),
    "euros": ("EUR", False), "euro": ("EUR", False),
    "pounds sterling": ("GBP", False), "pound sterling": ("GBP", False), "sterling": ("GBP", False),
    "pounds": ("GBP", False), "pound": ("GBP", False), "quid": ("GBP", False), "pfund": ("GBP", False),
    "libras esterlinas": ("GBP", False), "libra esterlina": ("GBP", False),
    "libras": ("GBP", False), "libra": ("GBP", False),
    "livres sterling": ("GBP", False), "livre sterling": ("GBP", False),
    "livres": ("GBP", False), "livre": ("GBP", False),
    "pence": ("GBP", True), "pennies": ("GBP", True), "penny": ("GBP", True),
    "yen": ("JPY", False), "yuan": ("CNY", False), "renminbi": ("CNY", False), "rmb": ("CNY", False),
    "francs": ("CHF", False), "franc": ("CHF", False), "franken": ("CHF", False),
    "sfr": ("CHF", False),
    "rupees": ("INR", False), "rupee": ("INR", False), "rupien": ("INR", False),
    "rupie": ("INR", False), "roupies": ("INR", False), "roupie": ("INR", False),
    "rupias": ("INR", False), "rupia": ("INR", False), "rs.": ("INR", False), "rs": ("INR", False),
    "pesos": ("?", False), "peso": ("?", False), "reais": ("BRL", False),
    "zlotys": ("PLN", False), "zloty": ("PLN", False), "zł": ("PLN", False),
    "kronor": ("?", False), "kroner": ("?", False), "kronen": ("?", False), "krone": ("?", False),
    "kr.": ("?", False), "kr": ("?", False), "won": ("KRW", False),
    "cents": ("?", True), "cent": ("?", True), "cts": ("?", True), "ct": ("?", True),
    "centimes": ("?", True), "centime": ("?", True), "centimos": ("?", True),
    "centimo": ("?", True), "centavos": ("?", True), "centavo": ("?", True),
}  # fmt: skip
# Words that are also ordinary words ("cent" is French for hundred, "livre" a book, "won" a verb):
# they only count next to digits.
_NOT_BARE: frozenset[str] = frozenset(
    {"cent", "ct", "cts", "rs", "rs.", "kr", "kr.", "won", "livre", "livres", "franc", "reais"}
)
# Words that may stand before the number ("Rs. 500", "sfr 20"); the rest only after it.
_PREFIX_WORDS: tuple[str, ...] = ("rs.", "rs", "sfr")
_CJK_UNITS: dict[str, tuple[str, bool]] = {"円": ("JPY", False), "元": ("CNY", False)}
# "$5k", "5 Mio. €", "cinco mil pesos": a scale word between number and currency.
_SCALES: dict[str, int] = {
    "k": 10**3, "thousand": 10**3, "tausend": 10**3, "mille": 10**3, "mil": 10**3,
    "m": 10**6, "mn": 10**6, "mio": 10**6, "million": 10**6, "millions": 10**6,
    "millionen": 10**6, "millon": 10**6, "millones": 10**6,
    "bn": 10**9, "billion": 10**9, "billions": 10**9, "milliard": 10**9, "milliards": 10**9,
    "milliarde": 10**9, "milliarden": 10**9,
}  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Term data: refund / credit / compensation / approval / commitment stems, per language.
# Matched at a word start ("refund" also matches "refunded"); a space also matches a hyphen or
# nothing ("money-back"); an apostrophe may be typographic or missing. Written with accents:
# text and terms are compared without diacritics, so "rückerstatt" also matches "ruckerstattung".
# ---------------------------------------------------------------------------------------------

_TERMS: dict[str, tuple[str, ...]] = {
    "en": (
        "refund", "reimburs", "money back", "compensat", "store credit", "credit", "voucher",
        "coupon", "gift card", "discount", "free of charge", "for free", "free replacement",
        "waive", "on the house", "approved", "approval", "authoris", "authoriz", "manager",
        "guarantee", "we promise", "we will pay", "we'll pay", "we will cover", "we'll cover",
        "we will send you", "we'll send you", "exception", "at no cost", "at no charge",
        "at no extra", "at our expense", "complimentary", "goodwill", "pay you back",
    ),
    "de": (
        "rückerstatt", "rueckerstatt", "erstatt", "gutschrift", "gutschein", "entschädig",
        "entschaedig", "rabatt", "geld zurück", "geld zurueck", "kostenlos", "kostenfrei",
        "genehmigt", "bewilligt", "zugesagt", "garantier", "versprech", "kulanz", "ausnahm",
        "rückzahl", "zurückzahl", "übernehmen die kosten",
    ),
    "fr": (
        "rembours", "un avoir", "dédommag", "indemni", "compensation", "bon d'achat", "réduction",
        "remise", "gratuit", "approuvé", "autorisé", "garanti", "promettons", "geste commercial",
        "sans frais", "à nos frais",
    ),
    "es": (
        "reembols", "devoluci", "compensaci", "indemniz", "crédito", "cupón", "descuento", "gratis",
        "aprobad", "autorizad", "garantiz", "prometemos", "devolveremos", "reintegr", "abonaremos",
        "sin coste", "sin costo", "sin cargo", "excepci",
    ),
}  # fmt: skip
# A stem does not count when directly followed by one of these: ordinary meanings.
_TERM_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    "credit": ("card", "cards"),  # paid by credit card: no promise
    "remise": ("au", "aux", "à", "en main", "en mains"),  # "remise au transporteur": handed over
    "we will send you": ("an update", "updates", "a tracking", "the tracking", "tracking",
                         "an email", "an e-mail", "a link", "a confirmation", "a notification"),
    "we'll send you": ("an update", "updates", "a tracking", "the tracking", "tracking",
                       "an email", "an e-mail", "a link", "a confirmation", "a notification"),
}  # fmt: skip
_SQUASH_MIN_LETTERS = 6  # shorter stems hide inside ordinary words once spaces are removed

# ---------------------------------------------------------------------------------------------
# Number words (for amounts in words). Compounds are decomposed into _COMPOUND_PARTS.
# ---------------------------------------------------------------------------------------------

_NUMBER_WORDS: dict[str, tuple[str, ...]] = {
    "en": (
        "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
        "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "hundreds",
        "thousand", "thousands", "million", "millions", "billion", "grand",
    ),
    "de": (
        "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf", "zwölf",
        "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig",
        "hundert", "tausend", "million", "millionen", "milliarde",
    ),
    "fr": (
        "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze", "douze",
        "treize", "quatorze", "quinze", "seize", "vingt", "vingts", "trente", "quarante",
        "cinquante", "soixante", "septante", "huitante", "octante", "nonante", "cent", "cents",
        "mille", "million", "millions", "milliard",
    ),
    "es": (
        "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez", "doce", "trece",
        "catorce", "quince", "dieciséis", "diecisiete", "dieciocho", "diecinueve", "veinte",
        "treinta", "cuarenta", "cincuenta", "sesenta", "setenta", "ochenta", "noventa", "cien",
        "ciento", "cientos", "doscientos", "trescientos", "cuatrocientos", "quinientos",
        "seiscientos", "setecientos", "ochocientos", "novecientos", "mil", "millón", "millones",
    ),
}  # fmt: skip
# Also articles or other words ("one of us", "un avoir", "once it ships"): only inside a run.
_WEAK_NUMBER_WORDS: tuple[str, ...] = (
    "one", "a", "un", "une", "ein", "eine", "einen", "einem", "einer", "eins", "uno", "una", "once",
)  # fmt: skip
_NUMBER_CONNECTORS: tuple[str, ...] = ("and", "und", "et", "y")
# Pieces of German and Spanish compounds: "fünfhundert", "zweiundzwanzig", "veinticinco".
_COMPOUND_PARTS: tuple[str, ...] = (
    "ein", "eins", "zwei", "drei", "vier", "fünf", "fuenf", "sechs", "sech", "sieben", "sieb",
    "acht", "neun", "zehn", "elf", "zwölf", "zwoelf", "zwanzig", "dreißig", "vierzig", "fünfzig",
    "fuenfzig", "sechzig", "siebzig", "achtzig", "neunzig", "hundert", "tausend", "und",
    "veinti", "dieci", "uno", "un", "una", "dos", "tres", "cuatro", "cinco", "seis", "siete",
    "ocho", "nueve",
)  # fmt: skip
_MAX_COMPOUND_CHARS = 48

# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Amount:
    """A money amount stated with digits."""

    currency: str  # ISO 4217 code, "?" when the sign/word is not mapped
    minor: int  # in minor units assuming 2 decimals: "$5" -> 500, "¥50000" -> 5000000
    text: str  # the normalised matched text, for messages


@dataclass(frozen=True)
class MoneyFindings:
    """What `find_money` found; any non-empty field means a human must look."""

    amounts: tuple[Amount, ...] = ()
    unparsed: tuple[str, ...] = ()
    terms: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.amounts or self.unparsed or self.terms)


# ---------------------------------------------------------------------------------------------
# Helpers over text
# ---------------------------------------------------------------------------------------------


def _plain(text: str) -> tuple[str, list[int]]:
    """`text` without diacritics, and for each kept character its index in `text`.

    The index map lets matches on the stripped copy quote the normalised text.
    """
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ch.isascii():
            out.append(ch)
            index.append(i)
            continue
        for part in unicodedata.normalize("NFD", ch):
            if not unicodedata.category(part).startswith("M"):
                out.append(part)
                index.append(i)
    return "".join(out), index


def _key(word: str) -> str:
    """A data word in the form text is compared in (normalised, no diacritics)."""
    return _plain(normalize(word))[0]


def _sign_fold(ch: str) -> str | None:
    """Currency signs without an entry in _SIGNS become the generic sign: one regex class for all."""
    if ch not in _SIGNS and unicodedata.category(ch) == "Sc":
        return _OTHER_SIGN
    return ch


_SIGN_TABLE = _LazyTable(_sign_fold)


def _alternation(words: list[str]) -> str:
    """Longest first, so "pounds sterling" wins over "pounds" and "rs." over "rs"."""
    return "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))


# ---------------------------------------------------------------------------------------------
# Compiled patterns
# ---------------------------------------------------------------------------------------------

_LETTER = r"[^\W\d_]"
_LB = rf"(?<!{_LETTER})"  # not inside a word on the left
_LA = rf"(?!{_LETTER})"  # not inside a word on the right

_WORD_UNITS: dict[str, tuple[str, bool]] = {_key(w): unit for w, unit in _CURRENCY_WORDS.items()}
_CODE_UNITS: dict[str, tuple[str, bool]] = {c.lower(): (c, False) for c in _CODES}
_UNITS: dict[str, tuple[str, bool]] = {**_WORD_UNITS, **_CODE_UNITS, **_SIGNS, **_CJK_UNITS}
_BARE_WORDS = [w for w in _WORD_UNITS if w not in _NOT_BARE]

_SIGN_RE = "[" + "".join(re.escape(s) for s in _SIGNS) + "]"
_PREFIXED_RE = rf"{_LB}(?:{_alternation(list(_DOLLAR_PREFIXES))})\$"
_CODE_RE = rf"{_LB}(?:{_alternation(list(_CODE_UNITS))}){_LA}"
_POST_WORDS_RE = rf"{_LB}(?:{_alternation(list(_WORD_UNITS))}){_LA}|{_alternation(list(_CJK_UNITS))}"
_PRE_WORDS_RE = rf"{_LB}(?:{_alternation(list(_PREFIX_WORDS))}){_LA}"
_BARE_WORDS_RE = rf"{_LB}(?:{_alternation(_BARE_WORDS)}){_LA}"

_PRE_MARKER = rf"(?:{_PREFIXED_RE}|{_SIGN_RE}|{_CODE_RE}|{_PRE_WORDS_RE})"
_POST_MARKER = rf"(?:{_PREFIXED_RE}|{_SIGN_RE}|{_CODE_RE}|{_POST_WORDS_RE})"
_TAIL_MARKER = rf"(?:{_CODE_RE}|{_POST_WORDS_RE})"  # "$5 CAD"; not a sign: "€5 €10" is two amounts
_BARE_MARKER_RE = re.compile(rf"{_PREFIXED_RE}|{_SIGN_RE}|{_CODE_RE}|{_BARE_WORDS_RE}")

# "1,234.56", "1.234,56", "1 234,56", "1'234.50", "12,50", "12.5", "500". Bounded repeats keep
# every start position O(1), so no input makes this quadratic; a 16+ digit run is no amount
# (its currency is then reported as unparsed).
_NUM = r"(?<![\d.,])(?:\d{1,3}(?:[.,' ’]\d{3}){1,5}(?:[.,]\d{1,2})?|\d{1,15}(?:[.,]\d{1,2})?)(?!\d)"
_SCALE = rf"(?:{_alternation(list(_SCALES))}){_LA}"
_AMOUNT_RE = re.compile(
    rf"(?P<pre>{_PRE_MARKER}) ?(?P<n1>{_NUM})(?: ?(?P<s1>{_SCALE}))?(?: ?(?P<tail>{_TAIL_MARKER}))?"
    rf"|(?P<n2>{_NUM})(?: ?(?P<s2>{_SCALE}))? ?(?P<post>{_POST_MARKER})"
)

_WORD_RE = re.compile(r"[^\W\d_]{1,64}(?:['’\-‐][^\W\d_]{1,64}){0,8}")
_AFTER_RUN_GAP = re.compile(r" ?(?:(?:de|of) |d['’])?")  # "un million de dollars"
_BEFORE_RUN_GAP = re.compile(r" ?")

_NUMBER_SET: frozenset[str] = frozenset(_key(w) for ws in _NUMBER_WORDS.values() for w in ws)
_WEAK_SET: frozenset[str] = frozenset(_key(w) for w in _WEAK_NUMBER_WORDS)
_CONNECTOR_SET: frozenset[str] = frozenset(_NUMBER_CONNECTORS)
_PART_SET: frozenset[str] = frozenset(_key(w) for w in _COMPOUND_PARTS)
_PART_MAX = max(len(p) for p in _PART_SET)


@dataclass(frozen=True)
class _Term:
    stem: str  # as written in _TERMS: what is reported
    plain: re.Pattern[str]  # on the diacritics-stripped text
    squashed: re.Pattern[str] | None  # on the letters-only text (stems of 6+ letters)


def _phrase_re(phrase: str) -> str:
    """A term phrase as a regex: a space also matches a hyphen or nothing, "'" any apostrophe."""
    parts: list[str] = []
    for ch in phrase:
        if ch == " ":
            parts.append(r"[\s\-‐]{0,2}")
        elif ch == "'":
            parts.append(r"['’ʼ]? ?")
        else:
            parts.append(re.escape(ch))
    return "".join(parts)


def _letters(text: str) -> str:
    return "".join(ch for ch in text if ch.isalpha())


def _compile_term(stem: str) -> _Term:
    key = _key(stem)
    exceptions = [_key(e) for e in _TERM_EXCEPTIONS.get(stem, ())]
    plain = _LB + _phrase_re(key)
    squashed = re.escape(_letters(key))
    if exceptions:
        plain += rf"(?![\s\-‐]{{0,2}}(?:{'|'.join(_phrase_re(e) for e in exceptions)}){_LA})"
        squashed += rf"(?!{'|'.join(re.escape(_letters(e)) for e in exceptions)})"
    long_enough = len(_letters(key)) >= _SQUASH_MIN_LETTERS
    return _Term(stem, re.compile(plain), re.compile(squashed) if long_enough else None)


_COMPILED_TERMS: tuple[_Term, ...] = tuple(
    _compile_term(stem) for lang in LANGUAGES for stem in _TERMS[lang]
)

# ---------------------------------------------------------------------------------------------
# Amounts
# ---------------------------------------------------------------------------------------------


def _unit_of(marker: str) -> tuple[str, bool]:
    """(ISO code or "?", minor units?) for a matched currency marker."""
    if len(marker) > 1 and marker.endswith("$"):
        return _DOLLAR_PREFIXES.get(marker[:-1], "USD"), False
    return _UNITS.get(marker, ("?", False))


def _parse_number(number: str) -> Decimal:
    """ "1.234,56" / "1,234.56" / "1 234,56" -> Decimal.

    A last "." or "," followed by 1-2 digits is the decimal point; any other separator groups.
    """
    digits = number.replace(" ", "").replace("'", "").replace("’", "")
    last = max(digits.rfind("."), digits.rfind(","))
    whole, fraction = digits, "0"
    if last != -1 and len(digits) - last - 1 <= 2:
        whole, fraction = digits[:last], digits[last + 1 :]
    whole = whole.replace(".", "").replace(",", "")
    return Decimal(f"{whole}.{fraction}")


def _minor_units(number: str, scale: str | None, minor: bool) -> int:
    value = _parse_number(number) * _SCALES.get(scale or "", 1) * (1 if minor else 100)
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def _amount(match: re.Match[str], quote: str) -> Amount:
    if match.group("n1") is not None:
        currency, minor = _unit_of(match.group("pre"))
        tail = match.group("tail")
        if tail is not None:
            tail_currency, tail_minor = _unit_of(tail)
            if tail_currency != "?" and not tail_minor:  # "$5 CAD" is Canadian
                currency = tail_currency
        return Amount(currency, _minor_units(match.group("n1"), match.group("s1"), minor), quote)
    currency, minor = _unit_of(match.group("post"))
    return Amount(currency, _minor_units(match.group("n2"), match.group("s2"), minor), quote)


# ---------------------------------------------------------------------------------------------
# Number words
# ---------------------------------------------------------------------------------------------


def _is_compound(word: str) -> bool:
    """ "funfhundert", "zweiundzwanzig", "veinticinco": two or more known parts, nothing else."""
    if len(word) > _MAX_COMPOUND_CHARS:
        return False
    # reach[i]: fewest parts that spell word[:i] (None: cannot be spelt)
    reach: list[int | None] = [0] + [None] * len(word)
    for i in range(len(word)):
        count = reach[i]
        if count is None:
            continue
        for j in range(i + 1, min(len(word), i + _PART_MAX) + 1):
            if word[i:j] in _PART_SET and reach[j] is None:
                reach[j] = count + 1
    return (reach[-1] or 0) >= 2


def _number_kind(word: str) -> str | None:
    """"num", "weak" (article-like), "conn" (and/und/et/y) or None for a non-number word."""
    if word in _CONNECTOR_SET:
        return "conn"
    if word in _WEAK_SET:
        return "weak"
    parts = re.split(r"['’\-‐]", word)
    if len(parts) > 1:  # "twenty-five", "quatre-vingt-dix", "vingt-et-un"
        kinds = [_number_kind(p) for p in parts]
        if all(kinds) and "num" in kinds:
            return "num"
        return None
    if word in _NUMBER_SET or _is_compound(word):
        return "num"
    return None


def _number_runs(plain: str) -> list[tuple[int, int]]:
    """Spans of consecutive number words ("five hundred", "un millón", "vingt et un")."""
    runs: list[tuple[int, int]] = []
    current: list[tuple[int, int, str]] = []

    def close() -> None:
        while current and current[-1][2] == "conn":
            current.pop()
        if any(kind == "num" for _, _, kind in current):
            runs.append((current[0][0], current[-1][1]))
        current.clear()

    for match in _WORD_RE.finditer(plain):
        kind = _number_kind(match.group())
        if kind is None:
            close()
            continue
        if current and plain[current[-1][1] : match.start()] != " ":
            close()
        if current or kind != "conn":
            current.append((match.start(), match.end(), kind))
    close()
    return runs


class _Spans:
    """Sorted spans with an 'is anything within d characters' query (bisect, not a scan)."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self._spans = sorted(spans)
        self._starts = [s for s, _ in self._spans]
        self._longest = max((e - s for s, e in self._spans), default=0)

    def near(self, start: int, end: int, distance: int) -> bool:
        i = bisect.bisect_left(self._starts, start - distance - self._longest)
        while i < len(self._spans) and self._spans[i][0] <= end + distance:
            if self._spans[i][1] >= start - distance:
                return True
            i += 1
        return False


def _adjacent_marker(
    markers: list[tuple[int, int]], starts: list[int], run: tuple[int, int], plain: str
) -> tuple[int, int] | None:
    """A bare currency marker right after ("cinq cents euros") or before ("EUR fünfhundert") a run."""
    i = bisect.bisect_left(starts, run[1])
    if i < len(markers) and _AFTER_RUN_GAP.fullmatch(plain, run[1], markers[i][0]):
        return markers[i]
    i = bisect.bisect_left(starts, run[0]) - 1
    if i >= 0 and markers[i][1] <= run[0] and _BEFORE_RUN_GAP.fullmatch(plain, markers[i][1], run[0]):
        return markers[i]
    return None


# ---------------------------------------------------------------------------------------------
# Terms
# ---------------------------------------------------------------------------------------------


def _squash(plain: str) -> tuple[str, list[int]]:
    """Letters only ("r.e.f.u.n.d" -> "refund"), with each letter's index in `plain`."""
    index = [i for i, ch in enumerate(plain) if ch.isalpha()]
    return "".join(plain[i] for i in index), index


def _find_terms(plain: str) -> list[tuple[int, int, str]]:
    """(start, end, stem) in `plain` coordinates, first hit per stem."""
    squashed, index = _squash(plain)
    hits: list[tuple[int, int, str]] = []
    for term in _COMPILED_TERMS:
        match = term.plain.search(plain)
        if match is not None:
            hits.append((match.start(), match.end(), term.stem))
            continue
        if term.squashed is None:
            continue
        for sq in term.squashed.finditer(squashed):
            start = index[sq.start()]
            # Only from a word start: "are fundamentally" must not read "refund".
            if start == 0 or not plain[start - 1].isalpha():
                hits.append((start, index[sq.end() - 1] + 1, term.stem))
                break
    return hits


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))[:_MAX_ITEMS]


def find_money(text: str) -> MoneyFindings:
    """Amounts, unparsed money mentions and promise terms in a reply text (see module docstring)."""
    norm = normalize(text[:MAX_SCAN_CHARS])
    truncated = len(text) > MAX_SCAN_CHARS or len(norm) > MAX_SCAN_CHARS
    norm = norm[:MAX_SCAN_CHARS]  # NFKC can expand ("﷽" is 18 letters): cap again
    plain, index = _plain(norm.translate(_SIGN_TABLE))

    def quote(start: int, end: int) -> str:
        return norm[index[start] : index[end - 1] + 1] if end > start else ""

    amounts: list[Amount] = []
    amount_spans: list[tuple[int, int]] = []
    for match in _AMOUNT_RE.finditer(plain):
        amounts.append(_amount(match, quote(match.start(), match.end())))
        amount_spans.append(match.span())

    covered = _Spans(amount_spans)
    markers = [m.span() for m in _BARE_MARKER_RE.finditer(plain) if not covered.near(*m.span(), 0)]
    term_hits = _find_terms(plain)
    cues = _Spans(amount_spans + markers + [(s, e) for s, e, _ in term_hits])

    unparsed: list[str] = []
    used: set[tuple[int, int]] = set()
    starts = [s for s, _ in markers]
    for run in _number_runs(plain):
        if covered.near(*run, 0):  # the scale word of "$5 million" is part of that amount
            continue
        # Markers inside the run ("cinq cents") are part of it, not separate findings.
        inside = range(bisect.bisect_left(starts, run[0]), bisect.bisect_left(starts, run[1]))
        used.update(markers[i] for i in inside)
        marker = _adjacent_marker(markers, starts, run, plain)
        if marker is not None:
            used.add(marker)
            unparsed.append(quote(min(run[0], marker[0]), max(run[1], marker[1])))
        elif cues.near(run[0], run[1], _NEAR_CHARS):
            unparsed.append(quote(*run))
    unparsed.extend(quote(*m) for m in markers if m not in used)
    if truncated:
        unparsed.append(f"text truncated at {MAX_SCAN_CHARS} characters")

    unique_amounts = tuple(dict.fromkeys(amounts))[:_MAX_ITEMS]
    terms = tuple(dict.fromkeys(stem for _, _, stem in sorted(term_hits)))
    return MoneyFindings(unique_amounts, _unique(unparsed), terms)
