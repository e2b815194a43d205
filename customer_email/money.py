"""Does a reply text mention money or promise something? Decided from the TEXT alone (pure, no I/O).

Why: a model that obeys instructions hidden in a customer e-mail will also say whatever it was
told about its own reply ("no refund offered"), so approval must not depend on the model's
structured claims. `find_money` looks at the exact text that will be sent and reports:

- `amounts`: digits next to a currency sign (any Unicode Sc character), ISO code or currency
  word, on either side ("$5", "12,50 €", "CHF 20", "500 dollars", "¥50000", "₹ 4,000"); every
  occurrence, in order (two equal amounts are two statements);
- `unparsed`: money without a parsable digit amount ("five hundred dollars", "fünfhundert Euro",
  "a few dollars", a lone "€"), number words near a refund/approval term, amounts that do not
  read one way ("$9e3", "$9,00,000", "$5 million", "$9 x 100"), any number that is not a date,
  time, duration, count or ID ("500 greenbacks", "1k", "50% back"), text tricks (bidirectional
  controls, letters of another script or look-alike letters, overlay marks) and input longer
  than MAX_SCAN_CHARS (the rest was not scanned, so it cannot be called clean);
- `terms`: refund/credit/compensation/payment/approval/commitment stems in English, German,
  French and Spanish, also when spelt out ("r e f u n d", "re-fund") or hidden with look-alike
  letters.

Rule of the product: when unsure, flag (a false positive costs a human review, a false
negative costs money). Ordinary delivery-status replies (dates, times, order IDs and tracking
codes, "24 hours", "3 items", "feel free") give nothing; digits anywhere else are a finding.

Evasions are undone first by `normalize` (NFKC, invisible characters dropped, digits of every
script folded to ASCII, Cyrillic/Greek/small-capital look-alikes folded to Latin, casefold); the
tricks themselves are reported too. Every regex has bounded quantifiers and no nested
ambiguity, and work is capped at MAX_SCAN_CHARS: every step is linear or n log n.
"""

from __future__ import annotations

import bisect
import functools
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
_MAX_LISTED_CHARS = 5  # characters quoted in one "letters of another script" finding
_MAX_QUOTE_CHARS = 100  # a finding quotes at most this much text ("1" * 20000 is one number)

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


def _symbol_letters() -> dict[str, str]:
    """Symbols NFKC keeps that render as Latin letters: regional indicators (flag letters), negative
    circled and negative squared letters."""
    table: dict[str, str] = {}
    for first in (0x1F1E6, 0x1F150, 0x1F170):
        for i in range(26):
            table[chr(first + i)] = chr(ord("a") + i)
    return table


def _small_capitals() -> dict[str, str]:
    """ʀᴇꜰᴜɴᴅ: small capitals (IPA, phonetic extensions, Latin Extended-D) -> their letter."""
    table: dict[str, str] = {}
    ranges = (range(0x0250, 0x02B0), range(0x1D00, 0x1D2C), range(0xA720, 0xA800), range(0xAB30, 0xAB70))
    for block in ranges:
        for cp in block:
            m = re.fullmatch(
                r"LATIN (?:CAPITAL )?LETTER SMALL CAPITAL ([A-Z])", unicodedata.name(chr(cp), "")
            )
            if m:
                table[chr(cp)] = m.group(1).lower()
    return table


_SYMBOL_LETTERS: dict[str, str] = _symbol_letters()

# Letters that render like Latin ones; folded so "rеfund" (Cyrillic е) reads "refund".
_LOOKALIKES: dict[str, str] = {
    # Cyrillic
    **_pairs("асеорхуіїјѕԁһԛԝ", "aceopxyiijsdhqw"),
    **_pairs("АВЕКМНОРСТХУІЇЈЅ", "ABEKMHOPCTXYIIJS"),
    # Greek
    **_pairs("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX"),
    **_pairs("αικνορυχϲϳ", "aikvopuxcj"),
    # Latin variants NFKC keeps: dotless i, script a, script g; letters with a stroke
    **_pairs("ıɑɡøØłŁđĐ", "iagoOlLdD"),
    **_small_capitals(),
    **_SYMBOL_LETTERS,
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


def _class_of(codepoints: list[int]) -> str:
    """A regex character class for sorted code points, as ranges."""
    parts: list[str] = []
    i = 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        first, last = re.escape(chr(codepoints[i])), re.escape(chr(codepoints[j]))
        parts.append(first if i == j else f"{first}-{last}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def _folded_codepoints() -> list[int]:
    """Every code point `_fold_char` changes. Planes 2-3 (ideographs) and 4-13, 15-16 (unassigned,
    private use) hold none: no Cf, Cc, Nd or look-alike there."""
    found = {ord(ch) for ch in _LOOKALIKES} | _INVISIBLE
    category = unicodedata.category
    for block in (range(0x20000), range(0xE0000, 0xE1000)):
        for cp in block:
            ch = chr(cp)
            cat = category(ch)
            if cat == "Cf" or (cat == "Cc" and not ch.isspace()) or (cat == "Nd" and cp > 0x7F):
                found.add(cp)
    return sorted(found)


@functools.cache
def _fold_res() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Runs of characters that fold: (BMP only, all planes). Built on first use (~30 ms)."""
    codepoints = _folded_codepoints()
    bmp = [cp for cp in codepoints if cp <= 0xFFFF]
    return re.compile(_class_of(bmp) + "+"), re.compile(_class_of(codepoints) + "+")


_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")


def _fold(text: str) -> str:
    """`text.translate(_FOLD_TABLE)`, but only the runs that change are looked at: str.translate
    looks every character up, which is slow on long non-ASCII text; a regex scan is not (a class
    with astral ranges is ~6x slower to scan, so it is used only on text that has such characters)."""
    bmp, every_plane = _fold_res()
    pattern = every_plane if _ASTRAL_RE.search(text) else bmp
    return pattern.sub(lambda m: m.group().translate(_FOLD_TABLE), text)


def _normalize(text: str) -> tuple[str, str]:
    """(NFKC of `text`, `normalize(text)`): the first is what the text-trick checks look at."""
    nfkc = unicodedata.normalize("NFKC", text)
    folded = _fold(nfkc)
    # Folding can expose new NFKC forms and casefold new look-alikes (e.g. "Ѕ" -> "ѕ"): go again.
    folded = _fold(unicodedata.normalize("NFKC", folded).casefold())
    return nfkc, " ".join(folded.split())


def normalize(text: str) -> str:
    """NFKC; drop invisible characters; fold digits, look-alike letters and signs; one space; casefold.

    Dropped: Unicode category Cf (zero-width space/joiner/non-joiner, word joiner, BOM, bidi
    controls, soft hyphen, tags), variation selectors, Hangul fillers, the combining grapheme
    joiner and non-whitespace control characters. Every decimal digit of any script becomes
    ASCII. Cyrillic/Greek look-alikes, small capitals, letters with a stroke (ø, ł, đ) and
    letter-like symbols (regional indicators, negative circled and squared letters) become Latin
    letters, small/full-width currency signs their base sign. Runs of whitespace become one space;
    the ends are stripped.
    """
    return _normalize(text)[1]


# ---------------------------------------------------------------------------------------------
# Text tricks: bidirectional controls, letters of another script, overlay marks
# ---------------------------------------------------------------------------------------------

# Embeddings, overrides, isolates and marks: "\u202eDNUFER\u202c" renders as "REFUND".
_BIDI_RE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Combining marks of en/de/fr/es (and their neighbours' names) that may stand uncomposed.
_OK_MARKS: frozenset[int] = frozenset({*range(0x0300, 0x0309), 0x030A, 0x030B, 0x0327, 0x0328})
# Letters of these languages (and customers' names) that do not decompose to a base letter.
_OK_LETTERS: frozenset[str] = frozenset("ßẞæÆœŒøØłŁđĐı\u02bc")  # U+02BC: an apostrophe
# Accents piled up on one letter (u + three diaereses) hide what the letter is.
_STACKED_MARKS_RE = re.compile("[\u0300-\u036f]{2,}")


@functools.lru_cache(maxsize=8192)
def _trick_kind(ch: str) -> str | None:
    """ "script", "lookalike", "mark" for a character a reply in en/de/fr/es has no use for."""
    cp = ord(ch)
    if cp < 0x80 or cp in _INVISIBLE:
        return None
    if ch in _SYMBOL_LETTERS:
        return "lookalike"
    category = unicodedata.category(ch)
    if category in ("Mn", "Me", "Mc"):
        return None if cp in _OK_MARKS else "mark"
    if not category.startswith("L") or ch in _OK_LETTERS:
        return None
    base = unicodedata.normalize("NFD", ch)
    if len(base) > 1 and base[0].isascii() and base[0].isalpha():
        return None  # accented Latin: é, ñ, ü, ç, å, š
    return "lookalike" if unicodedata.name(ch, "").startswith("LATIN ") else "script"


def _text_tricks(raw: str, nfkc: str) -> list[str]:
    """Findings for bidi controls in `raw` and odd letters or marks in its NFKC form."""
    found: list[str] = []
    if _BIDI_RE.search(raw):
        found.append("bidirectional control characters")
    kinds: dict[str, list[str]] = {"script": [], "lookalike": [], "mark": []}
    for ch in dict.fromkeys(nfkc):
        kind = _trick_kind(ch)
        if kind is not None and len(kinds[kind]) < _MAX_LISTED_CHARS:
            kinds[kind].append(ch)
    if kinds["script"]:
        found.append(
            "letters of another script: " + ", ".join(f"{c} U+{ord(c):04X}" for c in kinds["script"])
        )
    if kinds["lookalike"]:
        found.append("look-alike letters: " + ", ".join(f"{c} U+{ord(c):04X}" for c in kinds["lookalike"]))
    marks = [f"U+{ord(c):04X}" for c in kinds["mark"]]
    if not marks and _STACKED_MARKS_RE.search(nfkc):
        marks = ["stacked accents"]
    if marks:
        found.append("combining marks over characters: " + ", ".join(marks))
    return found


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
# "$5k", "5 Mio. €", "cinco mil pesos", "$9 lakh": a scale word after the number. Such an amount
# is reported as ambiguous (unparsed), never as a clean Amount: "$5 thou" must not read as $5.
_SCALES: tuple[str, ...] = (
    "k", "thousand", "thousands", "thou", "grand", "hundred", "hundreds", "tausend", "hundert",
    "mille", "mil", "cien", "ciento", "cientos", "tsd", "lakh", "lakhs", "lac", "lacs", "crore",
    "crores", "m", "mm", "mn", "mio", "million", "millions", "millionen", "millon", "millones",
    "bn", "b", "billion", "billions", "milliard", "milliards", "milliarde", "milliarden", "mrd",
    "md", "mds",
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Term data: refund / credit / payment / compensation / approval / commitment stems, per language.
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
        # money and payment paraphrases
        "money", "cash", "cheque", "a check", "by check", "your check", "the check", "repay",
        "pay you", "payment reversed", "reverse the charge", "reversed the charge",
        "reverse the payment", "reversal", "void", "cancel the charge", "cancelled the charge",
        "canceled the charge", "chargeback", "charge back", "bank transfer", "transfer", "wire",
        "on us", "free", "is free", "no charge", "not bill", "not be billed", "not be charged",
        "won't be charged", "goes back", "going back", "coming back", "comes back",
        "returning your money", "return your money", "percent", "per cent", "%", "‰", "half off",
        "half price", "off your next", "make it up to you", "gift", "pick up the tab",
    ),
    "de": (
        "rückerstatt", "rueckerstatt", "erstatt", "gutschrift", "gutschein", "entschädig",
        "entschaedig", "rabatt", "geld zurück", "geld zurueck", "kostenlos", "kostenfrei",
        "genehmigt", "bewilligt", "zugesagt", "garantier", "versprech", "kulanz", "ausnahm",
        "rückzahl", "zurückzahl", "übernehmen die kosten",
        "geld", "zurückzahlen", "zurücküberweis", "zurueckueberweis", "überweis", "ueberweis",
        "gutgeschrieben", "umsonst", "prozent", "übernehmen sämtliche kosten",
        "übernehmen alle kosten", "kosten übernehm", "übernehm", "übernomm", "angenommen",
    ),
    "fr": (
        "rembours", "un avoir", "dédommag", "indemni", "compensation", "bon d'achat", "réduction",
        "remise", "gratuit", "approuvé", "autorisé", "garanti", "promettons", "geste commercial",
        "sans frais", "à nos frais",
        "argent", "rendons", "rembourse", "offert", "prise en charge", "prenons en charge",
        "virement", "pour cent", "pourcent",
    ),
    "es": (
        "reembols", "devoluci", "compensaci", "indemniz", "crédito", "cupón", "descuento", "gratis",
        "aprobad", "autorizad", "garantiz", "prometemos", "devolveremos", "reintegr", "abonaremos",
        "sin coste", "sin costo", "sin cargo", "excepci",
        "dinero", "devolvemos", "regalamos", "sin ningún coste", "sin ningún costo", "abonamos",
        "transferencia", "por ciento", "aceptada", "aceptado",
    ),
}  # fmt: skip
# A stem does not count when directly followed by one of these: ordinary meanings.
_TERM_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    "remise": ("au", "aux", "à", "en main", "en mains"),  # "remise au transporteur": handed over
    "we will send you": ("an update", "updates", "a tracking", "the tracking", "tracking",
                         "an email", "an e-mail", "a confirmation", "a notification"),
    "we'll send you": ("an update", "updates", "a tracking", "the tracking", "tracking",
                       "an email", "an e-mail", "a confirmation", "a notification"),
    "wire": ("less",),  # wireless
}  # fmt: skip
# ... nor when directly preceded by one of these words ("feel free to reply").
_TERM_PRECEDED_EXCEPTIONS: dict[str, tuple[str, ...]] = {"free": ("feel", "toll", "hands")}
# Stems that must end a word too ("on us", not "on user").
_WHOLE_WORD_TERMS: frozenset[str] = frozenset({"on us"})
_SQUASH_MIN_LETTERS = 6  # shorter stems hide inside ordinary words once spaces are removed
_SQUASH_SPAN_FACTOR = 4  # "r . e . f . u . n . d" is found; "r" + 10,000 signs + "efund" is not

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
# Digits that are not money: dates, times, durations, counts and IDs (an allow-list; any other
# number in a reply is reported). All words in normalised, diacritics-stripped form.
# ---------------------------------------------------------------------------------------------

_MONTHS: tuple[str, ...] = (
    # en
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec",
    # de
    "januar", "janner", "februar", "marz", "maerz", "mai", "juni", "juli", "oktober", "okt",
    "dezember", "dez",
    # fr
    "janvier", "fevrier", "mars", "avril", "juin", "juillet", "aout", "septembre", "octobre",
    "novembre", "decembre", "janv", "fevr", "avr", "juil",
    # es
    "enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
    "setiembre", "octubre", "noviembre", "diciembre", "ene", "abr", "ago", "dic",
)  # fmt: skip
# "24 hours", "3-5 business days", "2 kg", "3 items": a number (or range) before one of these.
_UNITS: tuple[str, ...] = (
    # time, en / de / fr / es
    "seconds", "second", "secs", "sec", "minutes", "minute", "mins", "min", "hours", "hour", "hrs",
    "hr", "h", "days", "day", "weeks", "week", "months", "month", "years", "year",
    "sekunden", "minuten", "stunden", "stunde", "std", "tagen", "tage", "tag", "werktagen",
    "werktage", "werktag", "arbeitstagen", "arbeitstage", "arbeitstag", "wochen", "woche",
    "monaten", "monate", "monat", "jahren", "jahre", "jahr",
    "secondes", "heures", "heure", "jours", "jour", "semaines", "semaine", "mois", "annees", "annee",
    "segundos", "minutos", "horas", "hora", "dias", "dia", "semanas", "semana", "meses", "mes",
    "anos", "ano",
    # counts and measures
    "items", "item", "parcels", "parcel", "packages", "package", "boxes", "box", "pieces",
    "piece", "pcs", "units", "unit", "articles", "article", "artikel", "pakete", "paketen", "paket",
    "sendungen", "stuck", "teile", "colis", "paquets", "paquet", "paquetes", "paquete",
    "articulos", "articulo", "bultos", "bulto", "cajas", "caja", "unidades", "unidad",
    "kg", "kilos", "kilo", "lbs", "lb", "oz", "cm", "mm", "km",
)  # fmt: skip
_UNIT_ADJECTIVES: tuple[str, ...] = ("business", "working", "calendar", "bank", "full", "more")
_RANGE_WORDS: tuple[str, ...] = (
    "to", "or", "and", "of", "bis", "oder", "und", "von", "a", "au", "ou", "et", "sur", "y", "o", "de",
)  # fmt: skip
# "parcel 3 of 5"
_COUNT_NOUNS: tuple[str, ...] = (
    "parcels", "parcel", "packages", "package", "boxes", "box", "items", "item", "shipments",
    "shipment", "pakete", "paket", "sendung", "colis", "paquets", "paquet", "paquetes", "paquete",
    "bultos", "bulto", "envios", "envio",
)  # fmt: skip
# "order 55120", "Order #12345", "Sendung 00340434161234567890", "numéro de commande 12345".
_ID_WORDS: tuple[str, ...] = (
    "order", "orders", "bestellung", "bestellnummer", "auftrag", "auftragsnummer", "sendung",
    "sendungsnummer", "trackingnummer", "commande", "pedido", "tracking", "suivi", "seguimiento",
    "number", "nummer", "numero", "invoice", "rechnung", "facture", "factura", "ticket", "case",
    "reference", "ref", "referenz", "referencia", "parcel", "package", "shipment", "colis",
    "paquete", "envio", "lieferung",
)  # fmt: skip
_ID_GAP_WORDS: tuple[str, ...] = (
    "#", ":", "n°", "no.", "no", "nr.", "nr", "number", "nummer", "numero", "id", "is", "ist",
    "est", "es", "lautet", "de suivi", "de seguimiento", "de commande", "de pedido", "de envio",
)  # fmt: skip
_ID_MIN_DIGITS = 4  # "order 12 days ago" is no ID
# A year on its own ("Call 2025.") may be followed by these words; "2000 greenbacks" may not.
_YEAR_FOLLOWERS: tuple[str, ...] = (
    "and", "at", "or", "to", "by", "until", "und", "um", "oder", "bis", "et", "ou", "a", "y", "o",
    "hasta",
)  # fmt: skip
# "16th", "18h", "2kg": letters glued after the digits that keep a number harmless.
_SAFE_SUFFIXES: frozenset[str] = frozenset(
    {"st", "nd", "rd", "th", "er", "e", "eme", "re", "h", "hrs", "hr", "min", "mins", "uhr",
     "kg", "lb", "lbs", "oz", "cm", "mm", "km", "pcs"}
)  # fmt: skip
_MIN_MIXED_ID = 8  # "1Z999AA10123456784": digits, letters, digits; at least this long
# Number words from ten up state a sum wherever they stand ("you get twenty-five back",
# "fünfhundert", "mil"), not only near a money cue, unless a count or duration follows ("ten days",
# "hundreds of parcels"). Two to nine are also other words ("très" reads "tres", "neuf" is new).
_SMALL_NUMBER_WORDS: tuple[str, ...] = (
    "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun",
    "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf",
    "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve",
)  # fmt: skip
_GRAND = "grand"  # "a grand", "two grand"; alone an adjective ("Grand Rapids", "grand total")

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


def _alternation(words: list[str] | tuple[str, ...]) -> str:
    """Longest first, so "pounds sterling" wins over "pounds" and "rs." over "rs"."""
    return "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))


class _Spans:
    """Sorted spans with an 'is anything within d characters' query: O(log n) on their union."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def near(self, start: int, end: int, distance: int) -> bool:
        i = bisect.bisect_left(self._ends, start - distance)  # first whose end reaches the window
        return i < len(self._starts) and self._starts[i] <= end + distance


# ---------------------------------------------------------------------------------------------
# Compiled patterns
# ---------------------------------------------------------------------------------------------

_LETTER = r"[^\W\d_]"
_LB = rf"(?<!{_LETTER})"  # not inside a word on the left
_LA = rf"(?!{_LETTER})"  # not inside a word on the right

_WORD_UNITS: dict[str, tuple[str, bool]] = {_key(w): unit for w, unit in _CURRENCY_WORDS.items()}
_CODE_UNITS: dict[str, tuple[str, bool]] = {c.lower(): (c, False) for c in _CODES}
_UNITS_OF_MONEY: dict[str, tuple[str, bool]] = {**_WORD_UNITS, **_CODE_UNITS, **_SIGNS, **_CJK_UNITS}
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
# (its currency is then reported as unparsed, its digits as a number).
_NUM = r"(?<![\d.,:_])(?:\d{1,3}(?:[.,' ’]\d{3}){1,5}(?:[.,]\d{1,2})?|\d{1,15}(?:[.,]\d{1,2})?)(?!\d)"
_SCALE = rf"(?:{_alternation(_SCALES)}){_LA}"
_AMOUNT_RE = re.compile(
    rf"(?P<pre>{_PRE_MARKER}) ?(?P<n1>{_NUM})(?: ?(?P<s1>{_SCALE}))?(?: ?(?P<tail>{_TAIL_MARKER}))?"
    rf"|(?P<n2>{_NUM})(?: ?(?P<s2>{_SCALE})\.?)? ?(?P<post>{_POST_MARKER})"
)
# Right after an amount: more digit groups, an exponent, an underscore or a product make it read
# more than one way ("$9,00,000", "$9.00.00", "$9e3", "$9_000", "$9 x 100"); likewise right
# before a number-first amount ("9e500 €").
_TRAIL_RE = re.compile(r"(?:(?:[.,:'’_]|e[+\-]?| ?[x×*] ?)[0-9]{1,20}){1,8}")
_LEAD_RE = re.compile(r"(?:[0-9][.,:'’_]|[0-9]e[+\-]?|[0-9] ?[x×*] ?)\Z")

_WORD_RE = re.compile(r"[^\W\d_]{1,64}(?:['’\-‐][^\W\d_]{1,64}){0,8}")
_AFTER_RUN_GAP = re.compile(r" ?(?:(?:de|of) |d['’])?")  # "un million de dollars"
_BEFORE_RUN_GAP = re.compile(r" ?")

_NUMBER_SET: frozenset[str] = frozenset(_key(w) for ws in _NUMBER_WORDS.values() for w in ws)
_WEAK_SET: frozenset[str] = frozenset(_key(w) for w in _WEAK_NUMBER_WORDS)
_CONNECTOR_SET: frozenset[str] = frozenset(_NUMBER_CONNECTORS)
_PART_SET: frozenset[str] = frozenset(_key(w) for w in _COMPOUND_PARTS)
_PART_MAX = max(len(p) for p in _PART_SET)

# Digits that are not money (see "Digits that are not money" above).
_MONTH_RE = rf"{_LB}(?:{_alternation(_MONTHS)}){_LA}\.?"
_DAY_RE = r"(?<![0-9.,:])(?:0?[1-9]|[12][0-9]|3[01])(?:st|nd|rd|th|er|eme|e)?(?![^\W_])"
_YEAR_RE = r"(?<![0-9.,:])(?:19|20)[0-9]{2}(?![^\W_])"
_NUMBER_OR_RANGE = (
    r"(?<![0-9.,:])[0-9]{1,4}(?:[.,][0-9]{1,2})?"
    rf"(?:(?: ?[-–—‐] ?| (?:{_alternation(_RANGE_WORDS)}) )[0-9]{{1,4}}(?:[.,][0-9]{{1,2}})?)?"
)
_ALLOWED_NUMBER_RES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        # "16. November 2026", "16 de noviembre de 2026", "1er décembre", "16th of November"
        rf"{_DAY_RE}\.? ?(?:of |de |del )?{_MONTH_RE}(?:,? ?(?:de |del )?{_YEAR_RE})?",
        # "20-22 November", "du 20 au 22 novembre", "entre el 20 y el 22 de noviembre"
        rf"{_DAY_RE}\.?(?: ?[-–—‐] ?| (?:{_alternation(_RANGE_WORDS)}) (?:el |le )?){_DAY_RE}\.? ?"
        rf"(?:of |de |del )?{_MONTH_RE}",
        # "November 16, 2026", "Nov. 16th", "November 2026", "noviembre de 2026"
        rf"{_MONTH_RE},? ?(?:the )?{_DAY_RE}(?:,? ?{_YEAR_RE})?",
        rf"{_MONTH_RE},? ?(?:de |del )?{_YEAR_RE}",
        # "18:00", "9:00-17:00", "18:00:30"
        r"(?<![0-9.,:])(?:[01]?[0-9]|2[0-4]):[0-5][0-9](?::[0-5][0-9])?(?![0-9]|[.,:][0-9])",
        # "6 pm", "6.30 p.m.", "18 Uhr", "18h", "18.30 Uhr"
        rf"(?<![0-9.,:])(?:[01]?[0-9]|2[0-4])(?:[.:][0-5][0-9])? ?(?:a\.m\.|p\.m\.|am|pm|uhr|h){_LA}",
        r"(?<![0-9.,:])(?:[01]?[0-9]|2[0-3])h[0-5][0-9](?![0-9])",  # "18h30"
        # "zwischen 8 und 12 Uhr", "9-5 pm", "de 9h a 18h"
        rf"(?<![0-9.,:])(?:[01]?[0-9]|2[0-4])(?:[.:h][0-5][0-9])? ?(?:a\.m\.|p\.m\.|am|pm|uhr|h)?"
        rf"(?: ?[-–—‐] ?| (?:{_alternation(_RANGE_WORDS)}) )"
        rf"(?:[01]?[0-9]|2[0-4])(?:[.:h][0-5][0-9])? ?(?:a\.m\.|p\.m\.|am|pm|uhr|h){_LA}",
        r"(?<![0-9.,:/])24/7(?![0-9])",
        # "24 hours", "3-5 business days", "3 Werktage", "48 heures", "2 días", "2 kg", "3 of 5 items"
        rf"{_NUMBER_OR_RANGE} ?(?:(?:{_alternation(_UNIT_ADJECTIVES)}) )?(?:{_alternation(_UNITS)}){_LA}",
        # "parcel 3 of 5"
        rf"{_LB}(?:{_alternation(_COUNT_NOUNS)}) (?:no\.? |nr\.? |#)?[0-9]{{1,3}}"
        r"(?: (?:of|von|sur|de) [0-9]{1,3})?(?![0-9])",
        # "order 55120", "Order #12345", "Sendung 00340434161234567890"
        rf"{_LB}(?:{_alternation(_ID_WORDS)}){_LA}(?: ?(?:{_alternation(_ID_GAP_WORDS)})){{0,4}}"
        rf" ?#?[0-9]{{{_ID_MIN_DIGITS},}}(?![0-9])",
        # a year on its own: "Call 2025.", "in 2026 and"; not "2000 greenbacks"
        r"(?<![0-9.,:/\-])(?:19|20)[0-9]{2}(?![^\W_]|[.,:/\-][0-9])"
        rf"(?! (?!(?:{_alternation(_YEAR_FOLLOWERS)}){_LA}){_LETTER})",
    )
)
# 2026-11-20, 2026/11/20, 20.11.2026, 16/11/2026, 11/20/2026 (day and month checked in code).
_NUMERIC_DATE_RE = re.compile(
    r"(?<![0-9.,:/\-])"
    r"(?:(?:19|20)[0-9]{2}(?P<s1>[-/.])(?P<m1>[0-9]{1,2})(?P=s1)(?P<d1>[0-9]{1,2})"
    r"|(?P<a>[0-9]{1,2})(?P<s2>[-/.])(?P<b>[0-9]{1,2})(?P=s2)(?:19|20)[0-9]{2})"
    r"(?![0-9]|[.,/\-][0-9])"
)
_TOKEN_RE = re.compile(r"[^\W_]+(?:[-_‐][^\W_]+)*")  # "a-1001", "ord-77", "1z999aa10123456784"
_HAS_DIGIT_RE = re.compile(r"[0-9]")
_LEADING_LETTERS_RE = re.compile(r"[^\W\d_]+")
_DIGITS_THEN_LETTERS_RE = re.compile(r"[0-9]+([^\W\d_]+)")
_TRAILING_LETTERS_RE = re.compile(r"[0-9][-_‐]?([^\W\d_]+)\Z")
_EXPONENT_RE = re.compile(r"[0-9]+[ex][0-9]+")
_BAD_ID_PREFIXES: frozenset[str] = frozenset({*(_key(s) for s in _SCALES), *_WORD_UNITS, *_CODE_UNITS, "x"})
_BAD_ID_SUFFIXES: frozenset[str] = _BAD_ID_PREFIXES - {"b", "m"}  # "A1001B" is an ID
_SMALL_NUMBER_SET: frozenset[str] = frozenset(_key(w) for w in _SMALL_NUMBER_WORDS)
_UNIT_AFTER_RE = re.compile(rf" (?:of |de |d'|d’|von |an )?(?:{_alternation(_UNITS)}){_LA}")
_NUMBER_GROUP_RE = re.compile(r"[0-9]+(?:[.,:'’/\-][0-9]+)*")
_DIGITS_RE = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class _Term:
    stem: str  # as written in _TERMS: what is reported
    plain: re.Pattern[str]  # on the diacritics-stripped text
    squashed: re.Pattern[str] | None  # on the letters-only text (stems of 6+ letters)
    max_span: int  # a squashed match spread wider than this in the text is no spelling


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
    # The first character stands first and the word-start check follows it as a two-character
    # lookbehind: a pattern that starts with a literal is searched for fast (a leading lookbehind
    # is tried at every position, ~1 ms per 20k characters and stem).
    before = "".join(
        f"(?<!{re.escape(_key(word) + sep + key[0])})"
        for word in _TERM_PRECEDED_EXCEPTIONS.get(stem, ())
        for sep in (" ", "-", "‐")
    )
    plain = (
        re.escape(key[0])
        + rf"(?<!{_LETTER}.)"
        + before
        + _phrase_re(key[1:])
        + (_LA if stem in _WHOLE_WORD_TERMS else "")
    )
    squashed = re.escape(_letters(key))
    if exceptions:
        plain += rf"(?![\s\-‐]{{0,2}}(?:{'|'.join(_phrase_re(e) for e in exceptions)}){_LA})"
        squashed += rf"(?!{'|'.join(re.escape(_letters(e)) for e in exceptions)})"
    letters = len(_letters(key))
    long_enough = letters >= _SQUASH_MIN_LETTERS and not before
    return _Term(
        stem,
        re.compile(plain),
        re.compile(squashed) if long_enough else None,
        _SQUASH_SPAN_FACTOR * letters,
    )


_COMPILED_TERMS: tuple[_Term, ...] = tuple(
    _compile_term(stem) for lang in LANGUAGES for stem in dict.fromkeys(_TERMS[lang])
)

# ---------------------------------------------------------------------------------------------
# Amounts
# ---------------------------------------------------------------------------------------------


def _unit_of(marker: str) -> tuple[str, bool]:
    """(ISO code or "?", minor units?) for a matched currency marker."""
    if len(marker) > 1 and marker.endswith("$"):
        return _DOLLAR_PREFIXES.get(marker[:-1], "USD"), False
    return _UNITS_OF_MONEY.get(marker, ("?", False))


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


def _minor_units(number: str, minor: bool) -> int:
    value = _parse_number(number) * (1 if minor else 100)
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def _amount(match: re.Match[str], quote: str) -> Amount:
    if match.group("n1") is not None:
        currency, minor = _unit_of(match.group("pre"))
        tail = match.group("tail")
        if tail is not None:
            tail_currency, tail_minor = _unit_of(tail)
            if tail_currency != "?" and not tail_minor:  # "$5 CAD" is Canadian
                currency = tail_currency
        return Amount(currency, _minor_units(match.group("n1"), minor), quote)
    currency, minor = _unit_of(match.group("post"))
    return Amount(currency, _minor_units(match.group("n2"), minor), quote)


def _scan_amounts(plain: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[re.Match[str]]]:
    """(spans of clean amounts, spans of ambiguous ones, the clean matches), in text order."""
    clean: list[tuple[int, int]] = []
    ambiguous: list[tuple[int, int]] = []
    matches: list[re.Match[str]] = []
    for match in _AMOUNT_RE.finditer(plain):
        start, end = match.span()
        trail = _TRAIL_RE.match(plain, end)
        lead = _LEAD_RE.search(plain, max(0, start - 4), start) if match.group("n2") else None
        if trail is not None or lead is not None or match.group("s1") or match.group("s2"):
            ambiguous.append((lead.start() if lead else start, trail.end() if trail else end))
        else:
            clean.append((start, end))
            matches.append(match)
    return clean, ambiguous, matches


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


@functools.lru_cache(maxsize=4096)
def _number_kind(word: str) -> str | None:
    """ "num", "weak" (article-like), "conn" (and/und/et/y) or None for a non-number word."""
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
            start, end = index[sq.start()], index[sq.end() - 1] + 1
            # Only from a word start ("are fundamentally" must not read "refund"), and only as
            # spread as a spelling can be (not "r" ... thousands of signs ... "efund").
            if end - start <= term.max_span and (start == 0 or not plain[start - 1].isalpha()):
                hits.append((start, end, term.stem))
                break
    return hits


# ---------------------------------------------------------------------------------------------
# Numbers that are not a date, time, duration, count or ID
# ---------------------------------------------------------------------------------------------


def _states_sum(plain: str, run: tuple[int, int]) -> bool:
    """A number-word run from ten up: "twenty-five", "five hundred", "a grand", "zweitausend", "mil"."""
    words = [w for part in _WORD_RE.findall(plain, *run) for w in re.split(r"['’\-‐]", part)]
    for i, word in enumerate(words):
        if word == _GRAND:
            if i > 0:  # "a grand", "two grand"; not "Grand Rapids"
                return True
        elif _number_kind(word) == "num" and word not in _SMALL_NUMBER_SET:
            return True
    return False


def _numeric_date_ok(match: re.Match[str]) -> bool:
    if match.group("m1") is not None:
        return 1 <= int(match.group("m1")) <= 12 and 1 <= int(match.group("d1")) <= 31
    a, b = int(match.group("a")), int(match.group("b"))
    return a >= 1 and b >= 1 and ((a <= 31 and b <= 12) or (a <= 12 and b <= 31))


def _id_token_ok(token: str) -> bool:
    """ "a-1001", "ord-77", "1z999aa10123456784", "16th", "18h": yes; "1k", "9e3", "x100", "k-500": no."""
    if not token[0].isdigit():
        prefix = _LEADING_LETTERS_RE.match(token)
        suffix = _TRAILING_LETTERS_RE.search(token)  # "ord-500k", "a-5eur": a scale or currency
        return (prefix is None or prefix.group() not in _BAD_ID_PREFIXES) and (
            suffix is None or suffix.group(1) not in _BAD_ID_SUFFIXES
        )
    glued = _DIGITS_THEN_LETTERS_RE.fullmatch(token)
    if glued is not None:
        return glued.group(1) in _SAFE_SUFFIXES
    if _EXPONENT_RE.fullmatch(token):
        return False
    return len(token) >= _MIN_MIXED_ID and sum(ch.isalpha() for ch in token) >= 2


def _allowed_mask(plain: str, taken: list[tuple[int, int]]) -> bytearray:
    """1 for each character of `plain` inside `taken` (amounts) or an allowed date, time, duration,
    count or ID; 0 elsewhere."""
    allowed = bytearray(len(plain))

    def allow(start: int, end: int) -> None:
        allowed[start:end] = b"\x01" * (end - start)

    for span in taken:
        allow(*span)
    for pattern in _ALLOWED_NUMBER_RES:
        for match in pattern.finditer(plain):
            allow(*match.span())
    for match in _NUMERIC_DATE_RE.finditer(plain):
        if _numeric_date_ok(match):
            allow(*match.span())
    for match in _TOKEN_RE.finditer(plain):
        token = match.group()
        if not token.isdigit() and _HAS_DIGIT_RE.search(token) and _id_token_ok(token):
            allow(*match.span())
    return allowed


def _stray_numbers(plain: str, allowed: bytearray) -> list[tuple[int, int]]:
    """Spans of number groups with a digit outside the `allowed` mask."""
    stray: list[tuple[int, int]] = []
    for group in _NUMBER_GROUP_RE.finditer(plain):
        runs = _DIGITS_RE.finditer(plain, group.start(), group.end())
        if any(allowed.find(0, run.start(), run.end()) != -1 for run in runs):
            stray.append(group.span())
    return stray


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _unique(items: list[str]) -> tuple[str, ...]:
    """First occurrences, each at most _MAX_QUOTE_CHARS long, at most _MAX_ITEMS of them."""
    short = (i if len(i) <= _MAX_QUOTE_CHARS else i[: _MAX_QUOTE_CHARS - 1] + "…" for i in items)
    return tuple(dict.fromkeys(short))[:_MAX_ITEMS]


def find_money(text: str) -> MoneyFindings:
    """Amounts, unparsed money mentions and promise terms in a reply text (see module docstring)."""
    if len(text) > MAX_SCAN_CHARS:  # never cached: the cache must not keep huge texts alive
        return _find_money(text)
    return _find_money_cached(text)


@functools.lru_cache(maxsize=64)
def _find_money_cached(text: str) -> MoneyFindings:
    """One scan per text: a decision checks the same draft body in the guard and for the approval reasons."""
    return _find_money(text)


def _find_money(text: str) -> MoneyFindings:
    head = text[:MAX_SCAN_CHARS]
    nfkc, norm = _normalize(head)
    truncated = len(text) > MAX_SCAN_CHARS or len(norm) > MAX_SCAN_CHARS
    norm = norm[:MAX_SCAN_CHARS]  # NFKC can expand ("﷽" is 18 letters): cap again
    plain, index = _plain(norm.translate(_SIGN_TABLE))

    def quote(start: int, end: int) -> str:
        return norm[index[start] : index[end - 1] + 1] if end > start else ""

    unparsed: list[str] = _text_tricks(head, nfkc)
    if truncated:
        unparsed.append(f"text truncated at {MAX_SCAN_CHARS} characters")

    amount_spans, ambiguous_spans, matches = _scan_amounts(plain)
    amounts = [_amount(m, quote(*m.span())) for m in matches[:_MAX_ITEMS]]
    unparsed.extend(f"ambiguous amount: {quote(*span)}" for span in ambiguous_spans)

    taken = amount_spans + ambiguous_spans
    covered = _Spans(taken)
    markers = [m.span() for m in _BARE_MARKER_RE.finditer(plain) if not covered.near(*m.span(), 0)]
    term_hits = _find_terms(plain)
    cues = _Spans(taken + markers + [(s, e) for s, e, _ in term_hits])

    allowed = _allowed_mask(plain, taken)
    used: set[tuple[int, int]] = set()
    starts = [s for s, _ in markers]
    for run in _number_runs(plain):
        if covered.near(*run, 0):  # the scale word of "$5 million" is part of that amount
            continue
        if allowed.find(0, *run) == -1:  # "Sept. 16" is a date, not French "sept"
            continue
        # Markers inside the run ("cinq cents") are part of it, not separate findings.
        inside = range(bisect.bisect_left(starts, run[0]), bisect.bisect_left(starts, run[1]))
        used.update(markers[i] for i in inside)
        marker = _adjacent_marker(markers, starts, run, plain)
        if marker is not None:
            used.add(marker)
            unparsed.append(quote(min(run[0], marker[0]), max(run[1], marker[1])))
        elif cues.near(run[0], run[1], _NEAR_CHARS) or (
            _states_sum(plain, run) and not _UNIT_AFTER_RE.match(plain, run[1])
        ):
            unparsed.append(quote(*run))
    unparsed.extend(quote(*m) for m in markers if m not in used)
    unparsed.extend(
        f"a number that is not a date, time or ID: {quote(*span)}" for span in _stray_numbers(plain, allowed)
    )

    terms = tuple(dict.fromkeys(stem for _, _, stem in sorted(term_hits)))
    return MoneyFindings(tuple(amounts), _unique(unparsed), terms)
