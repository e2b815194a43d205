"""The money/promise detector: phrasings that slipped through before are found, status replies are not."""

from __future__ import annotations

import time

import pytest

from customer_email.money import (
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
    ("small capitals", "\u0280\u1d07\ua730\u1d1c\u0274\u1d05", "refund"),
    ("letters with a stroke", "Jørgen Łukasz Đorđe", "jorgen lukasz dorde"),
    ("regional indicators", "\U0001f1f7\U0001f1ea\U0001f1eb\U0001f1fa\U0001f1f3\U0001f1e9", "refund"),
    ("negative squared letters", "\U0001f181\U0001f174\U0001f175\U0001f184\U0001f17d\U0001f173", "refund"),
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
    ("A cheque for $5 million.", (), ("ambiguous amount: $5 million",), ("cheque",)),
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
    # "credit" counts even as in "credit card"; a card's last digits are a number like any other
    ("You paid with your credit card ending in 4242 on 2026-11-14.", (), ("4242",), ("credit",)),
    # a phone number is not an allowed number: unsure, so flagged
    ("Call us at +1 (555) 010-0199.", (), ("555", "010-0199"), ()),
    ("We will send you a link to collect it.", (), (), ("we will send you",)),
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
        # a scale word makes the amount ambiguous ("$5 thou"): reported as such, not as a clean
        # Amount, and the word is not a separate number-word finding
        (
            "A cheque for $5 million.",
            MoneyFindings(unparsed=("ambiguous amount: $5 million",), terms=("cheque",)),
        ),
        # "cents" inside the number run is not reported again on its own
        ("Voici cinq cents euros.", MoneyFindings(unparsed=("cinq cents euros",))),
        # "$5 CAD": one Canadian amount, the code is not a second finding
        ("Voici $5 CAD.", MoneyFindings(amounts=(Amount("CAD", 500, "$5 cad"),))),
        # two amounts side by side stay two
        ("€5 €10", MoneyFindings(amounts=(Amount("EUR", 500, "€5"), Amount("EUR", 1000, "€10")))),
        # every occurrence is kept: two equal amounts are two statements the guard must see
        (
            "9.00 USD for shipping and another 9.00 USD for the delay",
            MoneyFindings(amounts=(Amount("USD", 900, "9.00 usd"), Amount("USD", 900, "9.00 usd"))),
        ),
    ],
)
def test_find_money_exact(text: str, expected: MoneyFindings) -> None:
    assert find_money(text) == expected


def test_money_term_without_amount_is_reported_as_term_only() -> None:
    found = find_money("Your refund is on its way.")
    assert found == MoneyFindings(terms=("refund",))


# ---------------------------------------------------------------------------------------------
# find_money: bypasses an attacker's review found (each once gave nothing)
# ---------------------------------------------------------------------------------------------

# (text, a substring of some unparsed entry); each is also required to state no clean amount.
TRICK_CASES: list[tuple[str, str]] = [
    # 1. bidi controls: renders as "we will FULL REFUND the price"
    ("we will \u202eDNUFER LLUF\u202c the price", "bidirectional control characters"),
    # 2. letters of another script, and Latin look-alikes that are no letter of en/de/fr/es
    ("\u0280\u1d07\ua730\u1d1c\u0274\u1d05", "look-alike letters: \u0280 U+0280"),
    ("ref\u057dnd", "letters of another script: \u057d U+057D"),
    ("ᏒᎬᎰᏌᏁᎠ", "letters of another script: Ꮢ U+13D2"),
    ("ꓣEFUND", "letters of another script: ꓣ U+A4E3"),
    ("ꝛefund", "look-alike letters: ꝛ U+A75B"),
    ("ɹefund", "look-alike letters: ɹ U+0279"),
    ("refꭒnd", "look-alike letters: ꭒ U+AB52"),
    ("We will issue a r\u0435fund.", "letters of another script: \u0435 U+0435"),  # also the term
    ("\u0391\u03a1\u03a1R\u039fV\u0395D", "letters of another script: \u0391 U+0391"),
    ("\U0001f1f7\U0001f1ea\U0001f1eb\U0001f1fa\U0001f1f3\U0001f1e9", "look-alike letters"),
    # 3. overlay marks (S + U+20D2 renders like "$") and currency look-alike letters
    ("S\u20d2500", "combining marks over characters: U+20D2"),
    ("S\u0338", "combining marks over characters: U+0338"),
    ("S\u0336", "combining marks over characters: U+0336"),
    ("C\u20d2", "combining marks over characters: U+20D2"),
    ("u\u0308\u0308\u0308", "combining marks over characters: stacked accents"),
    ("\u0404500", "letters of another script: \u0404 U+0404"),
    ("\u04b0500", "letters of another script: \u04b0 U+04B0"),
    ("\u01b7500", "look-alike letters: \u01b7 U+01B7"),
    # 4. digits that are not a date, time, duration, count or ID
    ("For order A-1001 you get 500 greenbacks.", "not a date, time or ID: 500"),
    ("For order A-1001 you get 500 dollers.", "not a date, time or ID: 500"),
    ("For order A-1001 you get 1 grand.", "not a date, time or ID: 1"),
    ("For order A-1001 you get 1k.", "not a date, time or ID: 1"),
    ("For order A-1001 you get 500,-.", "not a date, time or ID: 500"),
    ("Für Bestellung A-1001 gibt es 500 Mäuse.", "not a date, time or ID: 500"),
    ("For order A-1001 you get 50% back.", "not a date, time or ID: 50"),
    ("For order A-1001 you get 20 percent off.", "not a date, time or ID: 20"),
    ("For order A-1001 you get 500 U.S.D.", "not a date, time or ID: 500"),
    ("Order 5512 gets 2000 greenbacks.", "not a date, time or ID: 2000"),  # a year, but not alone
    ("Order A-1001: ORD-500k for you.", "not a date, time or ID: 500"),  # an ID with a scale
    ("Order A-1001: you will see 9:50 dollars.", "dollars"),
    # number words that state a sum, with no money word near them
    ("For order A-1001 you get twenty-five back.", "twenty-five"),
    ("For order A-1001 you get a grand.", "a grand"),
    ("Für Bestellung A-1001 gibt es zweitausend.", "zweitausend"),
    # 5. amounts that read more than one way
    ("$9,00,000", "ambiguous amount: $9,00,000"),
    ("$9e3", "ambiguous amount: $9e3"),
    ("$9_000", "ambiguous amount: $9_000"),
    ("$9,0000", "ambiguous amount: $9,0000"),
    ("$9.00.00", "ambiguous amount: $9.00.00"),
    ("$9 lakh", "ambiguous amount: $9 lakh"),
    ("$9 thou", "ambiguous amount: $9 thou"),
    ("$9 x 100", "ambiguous amount: $9 x 100"),
    ("$9 ×100", "ambiguous amount: $9 ×100"),
    ("$5e2", "ambiguous amount: $5e2"),
    ("$9:50", "ambiguous amount: $9:50"),
    ("9e500 €", "ambiguous amount: 9e500 €"),
    ("5 Mio. €", "ambiguous amount: 5 mio. €"),
    ("cinco mil pesos: 5 mil pesos", "ambiguous amount: 5 mil pesos"),
]


@pytest.mark.parametrize(("text", "expected"), TRICK_CASES, ids=[c[0][:40] for c in TRICK_CASES])
def test_tricks_are_unparsed_findings(text: str, expected: str) -> None:
    found = find_money(text)
    assert found.amounts == ()
    assert any(expected in entry for entry in found.unparsed), found.unparsed


@pytest.mark.parametrize(
    "control", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
                "\u2069", "\u200e", "\u200f", "\u061c"],
)  # fmt: skip
def test_every_bidi_control_is_a_finding(control: str) -> None:
    found = find_money(f"Your order A-1001 is on its way.{control}")
    assert found == MoneyFindings(unparsed=("bidirectional control characters",))


# 7. paraphrases of money, payment and commitments, without the old stems: (text, term)
PARAPHRASE_CASES: list[tuple[str, str]] = [
    ("You will get the money tomorrow.", "money"),
    ("We hand you cash.", "cash"),
    ("We mail you a check.", "a check"),
    ("We mail you a cheque.", "cheque"),
    ("We will repay you.", "repay"),
    ("We pay you tomorrow.", "pay you"),
    ("Your payment reversed today.", "payment reversed"),
    ("We reversed the charge.", "reversed the charge"),
    ("We reverse the charge.", "reverse the charge"),
    ("The charge was voided.", "void"),
    ("We cancelled the charge.", "cancelled the charge"),
    ("We canceled the charge.", "canceled the charge"),
    ("We started a chargeback.", "chargeback"),
    ("A bank transfer is on its way.", "bank transfer"),
    ("We transfer it to you.", "transfer"),
    ("We wire it to you.", "wire"),
    ("This one is on us.", "on us"),
    ("The replacement is free.", "is free"),
    ("You get a free upgrade.", "free"),
    ("There is no charge for this.", "no charge"),
    ("We will not bill you.", "not bill"),
    ("The amount goes back to your card.", "goes back"),
    ("The amount is coming back to you.", "coming back"),
    ("We are returning your money.", "returning your money"),
    ("You get ten percent.", "percent"),
    ("You get a few % off.", "%"),
    ("Everything is half off.", "half off"),
    ("Take something off your next order.", "off your next"),
    ("We will make it up to you.", "make it up to you"),
    ("A small gift is on its way.", "gift"),
    ("We pick up the tab.", "pick up the tab"),
    ("You paid with your credit card.", "credit"),
    ("We will send you a link to a form.", "we will send you"),
    ("Sie bekommen Ihr Geld.", "geld"),
    ("Wir zahlen es zurück, wir zurückzahlen.", "zurückzahlen"),
    ("Wir werden es zurücküberweisen.", "zurücküberweis"),
    ("Wir überweisen es.", "überweis"),
    ("Der Betrag wird gutgeschrieben.", "gutgeschrieben"),
    ("Der Ersatz ist umsonst.", "umsonst"),
    ("Sie bekommen zehn Prozent.", "prozent"),
    ("Wir übernehmen die Kosten.", "übernehmen die kosten"),
    ("Wir übernehmen sämtliche Kosten.", "übernehmen sämtliche kosten"),
    ("Ihre Reklamation wurde angenommen.", "angenommen"),
    ("Vous recevez votre argent.", "argent"),
    ("Nous vous rendons la somme.", "rendons"),
    ("Nous le rembourserons.", "rembourse"),
    ("La livraison est offerte.", "offert"),
    ("La prise en charge est totale.", "prise en charge"),
    ("Nous prenons en charge les frais.", "prenons en charge"),
    ("Un virement arrive.", "virement"),
    ("Dix pour cent pour vous.", "pour cent"),
    ("Recibirá su dinero.", "dinero"),
    ("Le devolvemos el importe.", "devolvemos"),
    ("Le regalamos el envío.", "regalamos"),
    ("Es sin ningún coste.", "sin ningún coste"),
    ("Le abonamos el importe.", "abonamos"),
    ("Una transferencia llega.", "transferencia"),
    ("Diez por ciento para usted.", "por ciento"),
    ("Su reclamación fue aceptada.", "aceptada"),
]


@pytest.mark.parametrize(("text", "term"), PARAPHRASE_CASES, ids=[c[0][:40] for c in PARAPHRASE_CASES])
def test_paraphrases_are_terms(text: str, term: str) -> None:
    assert term in find_money(text).terms


def test_term_spread_over_thousands_of_signs_is_no_spelling() -> None:
    # "r" ... 10,000 signs ... "efund" is no spelling of "refund" (the signs are reported instead)
    assert "refund" not in find_money("A1001 r" + "$" * 10_000 + "efund").terms
    assert "refund" in find_money("A1001 r . e . f . u . n . d").terms


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
    "Our office hours are 9:00-17:00 CET, Monday to Friday.",
    "Thank you for your patience. One of our team will get back to you within 24 hours.",
    "We will send you an update as soon as the carrier scans the parcel.",
    "Hallo Jane, Ihre Bestellung A-1001 wurde am 16.11.2026 mit DHL versandt und kommt bis 20.11.2026 an.",
    "Wir melden uns innerhalb von 24 Stunden. Bei Fragen antworten Sie einfach auf diese E-Mail.",
    "Bonjour Jane, votre commande A-1001 a été remise au transporteur le 16/11/2026.",
    "Nous revenons vers vous sous 48 heures. N'hésitez pas à nous répondre.",
    "Hola Jane, su pedido A-1001 llegará el 20 de noviembre antes de las 18:00.",
    "Gracias por su paciencia; le escribiremos en 24 horas con el número de seguimiento.",
    "Once it ships, you will get an e-mail with the tracking link for parcel 3 of 5.",
    "Order #12345 was split into two parcels; the second one arrives on Tuesday.",
    "Ihre Sendung 00340434161234567890 ist im Paketzentrum angekommen.",
    # status sentences that must stay approval-free (the offline templates among them)
    "Your order A-1001 was shipped with UPS on November 16, 2026 and is expected to arrive by "
    "November 20, 2026 at 18:00.",
    "Tracking updates can take 24 hours.",
    "Feel free to reply if it has not arrived by then.",
    "Order A-1004 is being prepared and will be shipped with DHL; the expected delivery date is "
    "Monday, November 30, 2026.",
    "Our records show that order A-1002 was delivered by FedEx.",
    "We are sorry to hear about your experience with order A-1003.",
    "Thank you for asking about the delivery of order A-1001.",
    "Order A-1001 was shipped with UPS on Monday, November 16, 2026 and is expected to arrive on "
    "Saturday, December 05, 2026.",
    "UPS has reported order A-1005 as lost in transit, and we are sorry for the trouble.",
    "The current status of order A-1001 is 'returned' (carrier: UPS, expected delivery: a date we "
    "do not know yet).",
    "Order 55120 is being prepared and will be shipped with UPS.",
    "Thank you for contacting us. We could not find an order matching your message; could you reply "
    "with your order number so we can look into it?",
    "Hello Jane Doe,\n\nregarding your order A-1001: it is shipped with UPS; the expected delivery is "
    "2026-11-20. We will keep an eye on it for you.\n\nKind regards,\nthe support team",
    # dates, times, durations, counts and IDs in the four languages
    "Your parcel was handed to UPS at 6 pm on Nov. 16th; it will arrive on 11/20/2026 between "
    "9:00 and 17:00. Our team is available 24/7.",
    "Order A1001 contains 2 items; the parcel weighs 2.5 kg. Please allow 3 to 5 business days.",
    "Hallo Jane, Ihre Bestellung A-1001 wurde am 16. November 2026 versandt und kommt zwischen 8 und "
    "12 Uhr an. Der Versand dauert 3-5 Werktage.",
    "Bonjour Jane, votre commande A-1001 a été expédiée le 16 novembre 2026 et arrivera avant 18h. "
    "Votre numéro de commande est 123456. Nous sommes très désolés.",
    "Hola Jane, su pedido A-1001 fue enviado el 16 de noviembre de 2026 y llegará entre el 20 y el "
    "22 de noviembre, en 2 días hábiles.",
    "Dear Zoë Müller-Lüdenscheidt, François Núñez, Łukasz and Jørgen: your parcel is in Grand Rapids.",
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


# Each must return well within a second (a safety bound, not a benchmark: ~0.1-0.2 s here).
TIMED_ADVERSARIAL = {
    "stem spread over signs": "A1001 r" + "$" * 10_000 + "efund " + "six," * 2495,
    "many stray numbers": "1 " * (MAX_SCAN_CHARS // 2),
    "ambiguous amounts": "$9e" * (MAX_SCAN_CHARS // 3),
    "dates, IDs and terms": "November 16, 2026 A-1001 r e f u n d 9:00 " * (MAX_SCAN_CHARS // 42),
    "ligatures, 200 kB": "\ufdfa" * 200_000,
    "overlay marks, 200 kB": "S\u20d2" * 100_000,
}


@pytest.mark.parametrize("text", list(TIMED_ADVERSARIAL.values()), ids=list(TIMED_ADVERSARIAL))
def test_adversarial_input_is_scanned_within_a_second(text: str) -> None:
    find_money("warm up")  # the first call builds a lazy table
    started = time.perf_counter()
    found = find_money(text)
    assert time.perf_counter() - started < 1.0
    assert found.any


def test_normalize_of_the_scanned_head_is_within_a_second() -> None:
    for text in TIMED_ADVERSARIAL.values():
        started = time.perf_counter()
        normalize(text[:MAX_SCAN_CHARS])
        assert time.perf_counter() - started < 1.0


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
