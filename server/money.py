"""Prices: a decimal amount in a currency's major units <-> an exact integer of its minor units.

A SKU's unit price travels and is stored as an integer of minor units (cents
for EUR) with its ISO 4217 code, so sums are exact. A person writes and reads
it in major units (``19.99 EUR``); the currency's exponent (ISO 4217's minor
unit) says how many decimals that has. Pure; used by the CLI, the board and
the review alike.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

_EXPONENTS = {
    # ISO 4217 currencies with no minor unit ...
    **dict.fromkeys(
        (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ),
        0,
    ),
    # ... with a thousandth ...
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    # ... and with four decimals (units of account).
    **dict.fromkeys(("CLF", "UYW"), 4),
}


def currency_exponent(currency: str) -> int:
    """Decimals of ``currency``'s major unit (ISO 4217 minor unit): 0 for JPY, 3 for KWD, 2 for most."""
    return _EXPONENTS.get(currency.upper(), 2)


def minor_units(amount: str, currency: str) -> int:
    """``amount`` (a decimal in major units, ``"19.99"``) as an exact integer of ``currency``'s minor units.

    Raises :class:`ValueError` for what is no plain non-negative decimal, or
    has more decimals than the currency has (``"19.999"`` EUR is no price).
    """
    text = amount.strip()
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{amount!r} is not a decimal number") from None
    if not value.is_finite() or value < 0 or "e" in text.lower():
        raise ValueError(f"{amount!r} is not a plain non-negative decimal number")
    exponent = currency_exponent(currency)
    minor = value.scaleb(exponent)
    if minor != minor.to_integral_value():
        places = "no decimals" if exponent == 0 else f"at most {exponent} decimal{'s' if exponent > 1 else ''}"
        raise ValueError(f"{amount!r}: a price in {currency.upper()} has {places}")
    return int(minor)


def major_units(minor: int, currency: str) -> Decimal:
    """``minor`` units of ``currency`` as an exact decimal of its major unit (1999 EUR -> ``19.99``)."""
    exponent = currency_exponent(currency)
    return Decimal(minor).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent))


def format_amount(minor: int, currency: str) -> str:
    """``minor`` units of ``currency`` for a person: ``19.99 EUR``; ``-`` when no currency is given."""
    return f"{major_units(minor, currency)} {currency}" if currency else "-"
