import pytest

from streaming.gateway.protocol import parse_subscriptions
from streaming.gateway.symbols import option_symbol_problem, stock_symbol_problem
from streaming.hub.index import Subscription


@pytest.mark.parametrize("symbol", [
    "O:SPY260515C00500000",
    "O:QQQ260515P00400000",
    "O:SPXW261218C05000000",
    "O:AAPL1270115P00150000",  # an adjusted root with a digit
    "O:F280229C00012500",  # 29 February of a leap year
])
def test_occ_contract_symbols_are_valid_options(symbol):
    assert option_symbol_problem(symbol) is None


@pytest.mark.parametrize("symbol", [
    "SPY260515C00500000",  # no O: prefix
    "O:SPY260515X00500000",  # neither call nor put
    "O:SPY260515C0050000",  # 7-digit strike
    "O:SPY260515C005000000",  # 9-digit strike
    "O:SPYSPYS260515C00500000",  # 7-letter root
    "O:spy260515C00500000",  # lower case
    "O:260515C00500000",  # no root
    "AAPL",
    "O:",
])
def test_other_shapes_are_not_options(symbol):
    assert option_symbol_problem(symbol).startswith("expected an OCC contract like O:SPY260515C00500000")


@pytest.mark.parametrize("symbol, expiry", [
    ("O:SPY261315C00500000", "261315"),  # month 13
    ("O:SPY260230C00500000", "260230"),  # 30 February
    ("O:SPY270229C00500000", "270229"),  # 29 February, not a leap year
    ("O:SPY260500C00500000", "260500"),  # day 0
])
def test_an_expiry_must_be_a_real_date(symbol, expiry):
    assert option_symbol_problem(symbol) == f"expiry {expiry} is not a date (YYMMDD)"


@pytest.mark.parametrize("symbol", ["AAPL", "A", "BRK.B", "BF.A", "BACpB", "GOOG.WS", "GOOG.WS.A", "S123", "ZVZZT"])
def test_tickers_are_valid_stocks(symbol):
    assert stock_symbol_problem(symbol) is None


@pytest.mark.parametrize("symbol", [
    "aapl", "Aapl", "1ABC", "BRK.", ".B", "BRK..B", "BRK.b", "TOOLONGTICKER", "O:SPY260515C00500000", "AAPL-B",
    "BRK.B.C.D", "AA PL",
])
def test_other_shapes_are_not_stocks(symbol):
    assert stock_symbol_problem(symbol) == "expected an upper-case ticker like AAPL or BRK.B, or *"


def test_a_symbol_of_the_other_market_is_refused_with_what_this_market_expects():
    items, errors = parse_subscriptions("T.AAPL,T.O:SPY260515C00500000,Q.*", "options")
    assert items == [Subscription("T", "O:SPY260515C00500000"), Subscription("Q", "*")]
    assert errors == [
        "invalid options symbol in 'T.AAPL': expected an OCC contract like O:SPY260515C00500000 "
        "(O:, root, YYMMDD, C or P, 8-digit strike) or *"
    ]
    items, errors = parse_subscriptions("T.O:SPY260515C00500000,AM.BRK.B", "stocks")
    assert items == [Subscription("AM", "BRK.B")]
    assert errors == [
        "invalid stocks symbol in 'T.O:SPY260515C00500000': expected an upper-case ticker like AAPL or BRK.B, or *"
    ]
