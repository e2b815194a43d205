"""The money/promise detector: phrasings that slipped through before are found, status replies are not."""

from __future__ import annotations

import pytest

from pm.processes.money import (
    LANGUAGES,
    MAX_SCAN_CHARS,
    Amount,
    MoneyFindings,
    find_money,
    normalize,
)

# ---------------------------------------------------------------------------------------------
# normalize
# ---------------------------------------------------------------------------------------------

NORMALIZE_CASES = [
    ("full-width digits and sign", "＄５００", "$500"),
    ("full-width yen", "￥５０００", "¥5000"),
    ("small dollar sign", "\ufe695", "$5"),
    ("heavy dollar emoji", "\U0001f4b25", "$5"),
    ("zero-width space in digits", "$\u200b300", "$300"),
    ("zero-width space splits a number", "3\u200b00 USD", "300 usd"),
    ("zero-width joiners in a word", "re\u200cf\u200dund\u2060", "refund"),
    ("BOM", "\ufeffRefund", "refund"),
    ("Arabic-Indic digits", "\u0665\u0660\u0660", "500"),
    ("Devanagari digits", "\u096b\u0966\u0966", "500"),
    ("Cyrillic look-alike e", "r\u0435fund", "refund"),
    ("Cyrillic capitals", "\u0421\u041eU\u0420\u041eN", "coupon"),
    ("Greek capitals", "\u0391\u03a1\u03a1R\u039fV\u0395D", "approved"),
    ("soft hyphen", "ref\u00adund", "refund"),
    ("bidi override and isolate", "\u202erefund\u202c \u2066ok\u2069", "refund ok"),
    ("NBSP and thin space", "1\u00a0234,56\u2009€", "1 234,56 €"),
    ("narrow NBSP and ideographic space", "5\u202f€\u3000x", "5 € x"),
    ("whitespace runs", "  a \t\n\r b  ", "a b"),
    ("variation selector and grapheme joiner", "r\ufe0fe\u034ffund", "refund"),
    ("Hangul filler", "re\u3164fund\u115f", "refund"),
    ("casefold", "STRAẞE Refund", "strasse refund"),
    ("control character", "$\x005", "$5"),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in NORMALIZE_CASES], ids=[c[0] for c in NORMALIZE_CASES]
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_is_idempotent() -> None:
    for _, raw, _ in NORMALIZE_CASES:
        once = normalize(raw)
        assert normalize(once) == once


# ---------------------------------------------------------------------------------------------
# find_money: what must be found
# ---------------------------------------------------------------------------------------------

Money = tuple[tuple[str, int], ...]

# (text, amounts as (currency, minor), substrings of some unparsed entry, terms)
POSITIVE_CASES: list[tuple[str, Money, tuple[str, ...], tuple[str, ...]]] = [
    # amounts with digits: signs, codes, words, separators, scripts
    ("We will refund $500 today.", (("USD", 50000),), (), ("refund",)),
    ("You get ＄５００ back.", (("USD", 50000),), (), ()),
    ("Sending $\u200b300 now.", (("USD", 30000),), (), ()),
    ("A transfer of 3\u200b00 USD is on its way.", (("USD", 30000),), (), ()),
    ("We pay you ¥50000.", (("JPY", 5000000),), (), ()),
    ("We pay you ￥50000.", (("JPY", 5000000),), (), ()),
    ("Please accept ₹ 4,000 for the trouble.", (("INR", 400000),), (), ()),
    ("Please accept CHF 20 for the trouble.", (("CHF", 2000),), (), ()),
    ("You will receive US$ 20.", (("USD", 2000),), (), ()),
    ("You will receive C$5 and A$5.", (("CAD", 500), ("AUD", 500)), (), ()),
    ("Total 1,234.56 USD.", (("USD", 123456),), (), ()),
    ("Gesamt 1.234,56 € zurück.", (("EUR", 123456),), (), ()),
    ("Montant : 1\u00a0234,56\u202f€.", (("EUR", 123456),), (), ()),
    ("Nur 12,50€.", (("EUR", 1250),), (), ()),
    ("Only 12.5 EUR.", (("EUR", 1250),), (), ()),
    ("£5 off.", (("GBP", 500),), (), ()),
    ("₩10000 credited.", (("KRW", 1000000),), (), ("credit",)),
    ("Take 500 dollars.", (("USD", 50000),), (), ()),
    ("Here are 20 bucks and 10 quid.", (("USD", 2000), ("GBP", 1000)), (), ()),
    ("5 pounds sterling, 50 francs, 300 rupees.", (("GBP", 500), ("CHF", 5000), ("INR", 30000)), (), ()),
    ("Le damos 25 dólares o 10 libras.", (("USD", 2500), ("GBP", 1000)), (), ()),
    ("Sie bekommen 50 Euro oder 20 Dollar.", (("EUR", 5000), ("USD", 2000)), (), ()),
    ("Le damos 200 pesos.", (("?", 20000),), (), ()),
    ("That is 50 cents, or 99 ct.", (("?", 50), ("?", 99)), (), ()),
    ("Rs. 500 will be sent.", (("INR", 50000),), (), ()),
    ("A cheque for $5 million.", (("USD", 500000000),), (), ()),
    ("Only 50¢.", (("USD", 50),), (), ()),
    ("usd500 sent", (("USD", 50000),), (), ()),
    ("Arabic-Indic: \u0665\u0660\u0660 $", (("USD", 50000),), (), ()),
    ("Devanagari: ₹\u096b\u0966\u0966", (("INR", 50000),), (), ()),
    ("Other sign: ₿5", (("?", 500),), (), ()),
    ("Your order ORD-77 gets 5 € back.", (("EUR", 500),), (), ()),
    # amounts in words, and money without digits
    ("I'll send you five hundred dollars.", (), ("five hundred dollars",), ()),
    ("Here are a few dollars.", (), ("dollars",), ()),
    ("We add some euros to your account.", (), ("euros",), ()),
    ("Take twenty-five euros.", (), ("twenty-five euros",), ()),
    ("The price sign \u20ac alone.", (), ("€",), ()),
    # English terms, obfuscation and commitments
    ("Your refund has been approved by our manager.", (), (), ("refund", "approved", "manager")),
    ("This has been approved by our manager.", (), (), ("approved", "manager")),
    ("We will issue a r e f u n d.", (), (), ("refund",)),
    ("We will issue a r.e.f.u.n.d.", (), (), ("refund",)),
    ("We will issue a re-fund.", (), (), ("refund",)),
    ("We will issue a r\u0435fund.", (), (), ("refund",)),
    ("We will issue a ref\u00adund.", (), (), ("refund",)),
    ("We will issue a re\u200bfund.", (), (), ("refund",)),
    ("We will reimburse you.", (), (), ("reimburs",)),
    ("Get your money-back now.", (), (), ("money back",)),
    ("As compensation you get store credit.", (), (), ("compensat", "store credit")),
    ("Here is a voucher and a coupon.", (), (), ("voucher", "coupon")),
    ("A gift card with a 20% discount.", (), (), ("gift card", "discount")),
    ("The replacement is free of charge.", (), (), ("free of charge",)),
    ("You get it for free, as a free replacement.", (), (), ("for free", "free replacement")),
    ("We waive the fee; this one is on the house.", (), (), ("waive", "on the house")),
    ("Your return is authorised.", (), (), ("authoris",)),
    ("Your return is authorized.", (), (), ("authoriz",)),
    ("We guarantee it and we promise it.", (), (), ("guarantee", "we promise")),
    ("We will pay the repair and we'll cover the shipping.", (), (), ("we will pay", "we'll cover")),
    ("We will send you a new one at no cost.", (), (), ("we will send you", "at no cost")),
    ("As an exception we accept it.", (), (), ("exception",)),
    ("We can credit your account.", (), (), ("credit",)),
    ("A refund of five hundred is fine.", (), ("five hundred",), ("refund",)),
    # German
    (
        "Ihre Rückerstattung von fünfhundert Euro wurde genehmigt.",
        (),
        ("fünfhundert euro",),
        ("rückerstatt", "genehmigt"),
    ),
    ("Ihre Rueckerstattung ist unterwegs.", (), (), ("rueckerstatt",)),
    ("Wir erstatten Ihnen 12,50 €.", (("EUR", 1250),), (), ("erstatt",)),
    ("Sie erhalten eine Gutschrift über 20 Euro.", (("EUR", 2000),), (), ("gutschrift",)),
    ("Ein Gutschein und 10 % Rabatt.", (), (), ("gutschein", "rabatt")),
    ("Als Entschädigung ist der Ersatz kostenlos.", (), (), ("entschädig", "kostenlos")),
    ("Sie bekommen Ihr Geld zurück.", (), (), ("geld zurück",)),
    ("Die Zahlung wurde bewilligt und zugesagt.", (), (), ("bewilligt", "zugesagt")),
    ("Wir garantieren und versprechen es.", (), (), ("garantier", "versprech")),
    ("Sie bekommen zweihundertfünfzig Dollar.", (), ("zweihundertfünfzig dollar",), ()),
    ("Sie bekommen ein paar Euro.", (), ("euro",), ()),
    # French
    ("Nous vous remboursons 15,90 €.", (("EUR", 1590),), (), ("rembours",)),
    ("Vous recevez un avoir de cinq cents euros.", (), ("cinq cents euros",), ("un avoir",)),
    ("Un dédommagement et une indemnisation.", (), (), ("dédommag", "indemni")),
    ("Une compensation et un bon d’achat.", (), (), ("compensation", "bon d'achat")),
    ("Une réduction et une remise de 20 %.", (), (), ("réduction", "remise")),
    ("La livraison est gratuite.", (), (), ("gratuit",)),
    ("Votre remboursement a été approuvé et autorisé.", (), (), ("rembours", "approuvé", "autorisé")),
    ("Le produit est garanti, nous le promettons.", (), (), ("garanti", "promettons")),
    ("Vous recevez vingt-et-un euros.", (), ("vingt-et-un euros",), ()),
    ("Vous recevez deux cents dollars.", (), ("deux cents dollars",), ()),
    # Spanish
    ("Su reembolso de 50 € ha sido aprobado.", (("EUR", 5000),), (), ("reembols", "aprobad")),
    ("Le damos quinientos euros.", (), ("quinientos euros",), ()),
    ("Le enviamos un cupón de descuento.", (), (), ("cupón", "descuento")),
    ("La devolución del importe y una compensación.", (), (), ("devoluci", "compensaci")),
    ("Una indemnización y crédito en su cuenta.", (), (), ("indemniz", "crédito")),
    ("El envío es gratis y está autorizado.", (), (), ("gratis", "autorizad")),
    ("Garantizamos la entrega, prometemos.", (), (), ("garantiz", "prometemos")),
    ("Le damos veinticinco dólares.", (), ("veinticinco dólares",), ()),
    ("Le damos un millón de pesos.", (), ("millón de pesos",), ()),
]


def _case_id(case: tuple[str, Money, tuple[str, ...], tuple[str, ...]]) -> str:
    return case[0][:40]


@pytest.mark.parametrize(
    ("text", "amounts", "unparsed", "terms"), POSITIVE_CASES, ids=[_case_id(c) for c in POSITIVE_CASES]
)
def test_find_money_positive(
    text: str, amounts: Money, unparsed: tuple[str, ...], terms: tuple[str, ...]
) -> None:
    found = find_money(text)
    assert found.any
    assert sorted((a.currency, a.minor) for a in found.amounts) == sorted(amounts)
    for expected in unparsed:
        assert any(expected in entry for entry in found.unparsed), (expected, found.unparsed)
    assert set(terms) <= set(found.terms), found.terms


def test_amount_text_is_the_normalised_match() -> None:
    assert find_money("Refund: ＵＳ＄\u200b２０!").amounts == (Amount("USD", 2000, "us$20"),)
    assert find_money("gesamt 1.234,56 EUR").amounts == (Amount("EUR", 123456, "1.234,56 eur"),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the scale word belongs to the amount, not a separate number-word finding
        ("A cheque for $5 million.", MoneyFindings(amounts=(Amount("USD", 500000000, "$5 million"),))),
        # "cents" inside the number run is not reported again on its own
        ("Voici cinq cents euros.", MoneyFindings(unparsed=("cinq cents euros",))),
        # "$5 CAD": one Canadian amount, the code is not a second finding
        ("Voici $5 CAD.", MoneyFindings(amounts=(Amount("CAD", 500, "$5 cad"),))),
        # two amounts side by side stay two
        ("€5 €10", MoneyFindings(amounts=(Amount("EUR", 500, "€5"), Amount("EUR", 1000, "€10")))),
    ],
)
def test_find_money_exact(text: str, expected: MoneyFindings) -> None:
    assert find_money(text) == expected


def test_money_term_without_amount_is_reported_as_term_only() -> None:
    found = find_money("Your refund is on its way.")
    assert found == MoneyFindings(terms=("refund",))


# ---------------------------------------------------------------------------------------------
# find_money: ordinary support replies give nothing
# ---------------------------------------------------------------------------------------------

NEGATIVE_CASES = [
    "Hello Jane, your order A-1001 was shipped with UPS on 2026-11-16 and is expected to arrive by "
    "2026-11-20 18:00. Tracking updates can take 24 hours. Feel free to reply if it has not arrived "
    "by then. Best regards, Support",
    "Your order ORD-77 contains 3 items and left our warehouse on 16.11.2026 at 09:30.",
    "Your tracking number is 1Z999AA10123456784; the parcel weighs 2 kg.",
    "Please allow 3-5 business days for delivery. We are sorry for the delay.",
    "You can see the order total in your account under Orders.",
    "Our office hours are 9:00-17:00 CET, Monday to Friday; call us at +1 (555) 010-0199.",
    "Thank you for your patience. One of our team will get back to you within 24 hours.",
    "We will send you an update as soon as the carrier scans the parcel.",
    "You paid with your credit card ending in 4242 on 2026-11-14.",
    "Hallo Jane, Ihre Bestellung A-1001 wurde am 16.11.2026 mit DHL versandt und kommt bis 20.11.2026 an.",
    "Wir melden uns innerhalb von 24 Stunden. Bei Fragen antworten Sie einfach auf diese E-Mail.",
    "Bonjour Jane, votre commande A-1001 a été remise au transporteur le 16/11/2026.",
    "Nous revenons vers vous sous 48 heures. N'hésitez pas à nous répondre.",
    "Hola Jane, su pedido A-1001 llegará el 20 de noviembre antes de las 18:00.",
    "Gracias por su paciencia; le escribiremos en 24 horas con el número de seguimiento.",
    "Once it ships, you will get an e-mail with the tracking link for parcel 3 of 5.",
    "Order #12345 was split into two parcels; the second one arrives on Tuesday.",
    "Ihre Sendung 00340434161234567890 ist im Paketzentrum angekommen.",
]


@pytest.mark.parametrize("text", NEGATIVE_CASES, ids=[t[:40] for t in NEGATIVE_CASES])
def test_find_money_negative(text: str) -> None:
    assert find_money(text) == MoneyFindings()


# ---------------------------------------------------------------------------------------------
# Bounds and the result type
# ---------------------------------------------------------------------------------------------


def test_exactly_max_chars_is_not_truncated() -> None:
    assert find_money("a" * MAX_SCAN_CHARS) == MoneyFindings()


def test_long_input_is_a_finding_and_only_the_head_is_scanned() -> None:
    text = "Your parcel is on its way. " * (MAX_SCAN_CHARS // 20) + "We refund $500."
    assert len(text) > MAX_SCAN_CHARS
    found = find_money(text)
    assert found.any
    assert found.amounts == () and found.terms == ()
    assert found.unparsed == (f"text truncated at {MAX_SCAN_CHARS} characters",)


ADVERSARIAL = {
    "digits": "1" * 200_000,
    "grouped digits": "1,234" * 40_000,
    "spaced groups": "123 " * 50_000,
    "signs": "$" * 200_000,
    "amounts": "$1 " * 70_000,
    "decimals": "1.2." * 50_000,
    "number words": "fünf" * 50_000,
    "spaced letters": "r e " * 50_000,
    "hyphens": "a-" * 100_000,
    "zero width": "\u200b" * 200_000,
    "ligature expansion": "\ufdfa" * 200_000,
}


@pytest.mark.parametrize("text", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_adversarial_input_returns_and_is_flagged(text: str) -> None:
    found = find_money(text)
    assert f"text truncated at {MAX_SCAN_CHARS} characters" in found.unparsed
    assert len(found.amounts) <= 50 and len(found.unparsed) <= 50


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        (MoneyFindings(), False),
        (MoneyFindings(amounts=(Amount("USD", 500, "$5"),)), True),
        (MoneyFindings(unparsed=("dollars",)), True),
        (MoneyFindings(terms=("refund",)), True),
    ],
)
def test_any(findings: MoneyFindings, expected: bool) -> None:
    assert findings.any is expected


def test_languages() -> None:
    assert LANGUAGES == ("en", "de", "fr", "es")
