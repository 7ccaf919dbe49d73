"""What a valid symbol is on each market, checked before an item counts against any budget (no I/O).

The feed answers an item with a symbol that cannot exist with a success ack and then silence, which a client cannot
tell from a quiet market; checking the shape here gives it an error instead, and keeps made-up symbols from reaching
the upstream. The shapes are the feed's own:

- options: an OCC contract symbol, ``O:`` + root (1-6 letters or digits) + expiry ``YYMMDD`` (a real date) +
  ``C`` or ``P`` + the strike in thousandths, 8 digits: ``O:SPY260515C00500000`` (SPY, 2026-05-15, call, 500.000);
- stocks: a ticker in the feed's (CQS) convention: 1-6 upper-case letters or digits starting with a letter, an
  optional preferred marker ``p`` with up to two letters of series, and up to two upper-case class or type suffixes
  after a dot: ``AAPL``, ``BRK.B``, ``BACpB``, ``GOOG.WS``;
- on both, ``*`` (every symbol).
"""

from __future__ import annotations

import datetime
import re

OPTION_SYMBOL = re.compile(r"O:(?P<root>[A-Z0-9]{1,6})(?P<expiry>\d{6})(?P<right>[CP])(?P<strike>\d{8})")
STOCK_TICKER = re.compile(r"[A-Z][A-Z0-9]{0,5}(?:p[A-Z]{0,2})?(?:\.[A-Z]{1,3}){0,2}")

OPTION_HINT = "an OCC contract like O:SPY260515C00500000 (O:, root, YYMMDD, C or P, 8-digit strike) or *"
STOCK_HINT = "an upper-case ticker like AAPL or BRK.B, or *"


def option_symbol_problem(symbol: str) -> str | None:
    """Why *symbol* is no OCC option contract symbol, or None if it is one."""
    match = OPTION_SYMBOL.fullmatch(symbol)
    if match is None:
        return f"expected {OPTION_HINT}"
    expiry = match["expiry"]
    try:
        datetime.date(2000 + int(expiry[:2]), int(expiry[2:4]), int(expiry[4:]))
    except ValueError:
        return f"expiry {expiry} is not a date (YYMMDD)"
    return None


def stock_symbol_problem(symbol: str) -> str | None:
    """Why *symbol* is no stock ticker, or None if it is one."""
    return None if STOCK_TICKER.fullmatch(symbol) else f"expected {STOCK_HINT}"


SYMBOL_CHECKS = {"options": option_symbol_problem, "stocks": stock_symbol_problem}
