"""A price typed in major units becomes exact minor units by its currency's decimals, and reads back the same."""

from __future__ import annotations

from decimal import Decimal

import pytest

from flashstock.server.money import currency_exponent, format_amount, major_units, minor_units


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("19.99", "EUR", 1999),
        ("19.9", "EUR", 1990),
        ("19.990", "EUR", 1999),  # a trailing zero is no extra precision
        ("0.1", "USD", 10),  # exact: no float ever sees it
        ("1000", "JPY", 1000),
        ("500", "KRW", 500),
        ("1.234", "KWD", 1234),
        ("2.5", "BHD", 2500),
        ("7", "CHF", 700),
        ("19.99", "eur", 1999),
    ],
)
def test_a_price_becomes_exact_minor_units(amount, currency, minor):
    assert minor_units(amount, currency) == minor
    assert major_units(minor, currency) == Decimal(amount).quantize(Decimal(1).scaleb(-currency_exponent(currency)))


@pytest.mark.parametrize(
    ("amount", "currency", "says"),
    [
        ("19.999", "EUR", "at most 2 decimals"),
        ("1.5", "JPY", "no decimals"),
        ("1.2345", "KWD", "at most 3 decimals"),
        ("abc", "EUR", "not a decimal"),
        ("-1", "EUR", "non-negative"),
        ("1e3", "EUR", "plain"),
        ("NaN", "EUR", "plain"),
    ],
)
def test_a_price_finer_than_its_currency_or_no_number_is_refused(amount, currency, says):
    with pytest.raises(ValueError, match=says):
        minor_units(amount, currency)


def test_amounts_read_in_major_units_with_their_code():
    assert format_amount(1999, "EUR") == "19.99 EUR"
    assert format_amount(1000, "JPY") == "1000 JPY"
    assert format_amount(5, "KWD") == "0.005 KWD"
    assert format_amount(0, "") == "-"
