"""The instruments the simulator trades: a fixed snapshot of well-known US stocks and their option chains.

The universe is a constant (prices as of ``SNAPSHOT_DATE``, a fixed list of expiries), never derived from today's
date, so a seed reproduces the same feed on any day. Option contracts use OCC symbols and are priced once, with
Black-Scholes, so each chain starts out with believable premiums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

SNAPSHOT_DATE = date(2026, 1, 2)
RISK_FREE_RATE = 0.04
OPTION_PREFIX = "O:"
CALL = "C"
PUT = "P"

# Consolidated tapes: A (NYSE-listed), B (NYSE Arca and other exchanges), C (Nasdaq-listed).
TAPE_A = 1
TAPE_B = 2
TAPE_C = 3


@dataclass(frozen=True, slots=True)
class Stock:
    symbol: str
    price: float
    tape: int


@dataclass(frozen=True, slots=True)
class OptionContract:
    symbol: str
    underlying: str
    expiry: date
    right: str
    strike: float
    price: float


@dataclass(frozen=True, slots=True)
class Chain:
    """Strikes ``low..high`` every ``step`` dollars, on every expiry, for one underlying with volatility ``vol``."""

    underlying: str
    low: int
    high: int
    step: int
    vol: float


STOCKS: tuple[Stock, ...] = tuple(
    Stock(symbol, price, tape)
    for tape, listings in (
        (TAPE_C, {
            "AAPL": 271.50, "MSFT": 483.20, "NVDA": 188.40, "AMZN": 231.10, "GOOGL": 313.60, "GOOG": 314.40,
            "META": 660.30, "TSLA": 449.70, "AVGO": 347.80, "COST": 862.90, "NFLX": 93.70, "AMD": 214.20,
            "ADBE": 350.10, "PEP": 143.90, "CSCO": 74.20, "INTC": 39.80, "QCOM": 171.30, "TXN": 174.50,
            "AMGN": 327.40, "INTU": 662.80, "PYPL": 58.90, "SBUX": 84.30, "MU": 285.60, "AMAT": 256.90,
            "PLTR": 177.80, "ISRG": 566.20, "BKNG": 5355.00, "ABNB": 135.70, "MRNA": 29.60, "WMT": 111.40,
            "QQQ": 614.30,
        }),
        (TAPE_A, {
            "BRK.B": 502.60, "JPM": 322.40, "V": 350.90, "JNJ": 206.80, "PG": 143.30, "XOM": 120.10,
            "UNH": 330.20, "HD": 344.10, "MA": 570.80, "BAC": 55.10, "KO": 69.90, "DIS": 113.70,
            "CVX": 152.40, "MRK": 105.30, "PFE": 25.10, "ABBV": 228.50, "CRM": 265.20, "ORCL": 194.90,
            "NKE": 63.80, "T": 24.90, "VZ": 40.70, "BA": 217.30, "GS": 879.40, "MS": 177.50, "C": 117.20,
            "WFC": 93.60, "IBM": 296.10, "GE": 308.70, "CAT": 575.90, "MCD": 305.50, "UBER": 81.70,
            "F": 13.20, "GM": 81.40, "BRK.A": 754200.00,
        }),
        (TAPE_B, {
            "SPY": 681.90, "IWM": 246.20, "DIA": 481.30, "GLD": 397.80, "TLT": 87.60, "XLF": 54.90,
            "XLE": 44.70, "EEM": 54.20, "VTI": 334.50,
        }),
    )
    for symbol, price in listings.items()
)

EXPIRIES: tuple[date, ...] = tuple(
    date.fromisoformat(day)
    for day in (
        "2026-03-20", "2026-05-15", "2026-06-18", "2026-09-18", "2026-12-18",
        "2027-01-15", "2027-03-19", "2027-06-17", "2027-12-17", "2028-01-21",
    )
)

CHAINS: tuple[Chain, ...] = (
    Chain("SPY", 500, 800, 5, 0.17),
    Chain("QQQ", 450, 750, 5, 0.21),
    Chain("IWM", 180, 300, 5, 0.24),
    Chain("AAPL", 200, 340, 5, 0.27),
    Chain("TSLA", 250, 550, 10, 0.58),
    Chain("NVDA", 120, 240, 5, 0.48),
    Chain("MSFT", 380, 580, 10, 0.25),
    Chain("AMZN", 170, 280, 5, 0.33),
    Chain("META", 450, 750, 10, 0.37),
)


def occ_symbol(underlying: str, expiry: date, right: str, strike: float) -> str:
    """``("SPY", 2026-05-15, "C", 500)`` -> ``"O:SPY260515C00500000"`` (strike in thousandths, 8 digits)."""
    return f"{OPTION_PREFIX}{underlying}{expiry:%y%m%d}{right}{round(strike * 1000):08d}"


def black_scholes(spot: float, strike: float, years: float, vol: float, right: str) -> float:
    """European option value under Black-Scholes with the universe's fixed risk-free rate."""
    root = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + (RISK_FREE_RATE + vol * vol / 2) * years) / root
    d2 = d1 - root
    discounted_strike = strike * math.exp(-RISK_FREE_RATE * years)
    if right == CALL:
        return spot * _normal_cdf(d1) - discounted_strike * _normal_cdf(d2)
    return discounted_strike * _normal_cdf(-d2) - spot * _normal_cdf(-d1)


def _normal_cdf(x: float) -> float:
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0


def _build_option_contracts() -> tuple[OptionContract, ...]:
    spots = {stock.symbol: stock.price for stock in STOCKS}
    contracts = []
    for chain in CHAINS:
        for expiry in EXPIRIES:
            years = (expiry - SNAPSHOT_DATE).days / 365.0
            for strike in range(chain.low, chain.high + 1, chain.step):
                for right in (CALL, PUT):
                    value = black_scholes(spots[chain.underlying], strike, years, chain.vol, right)
                    contracts.append(
                        OptionContract(
                            symbol=occ_symbol(chain.underlying, expiry, right, strike),
                            underlying=chain.underlying,
                            expiry=expiry,
                            right=right,
                            strike=float(strike),
                            price=round(value, 2),
                        )
                    )
    return tuple(contracts)


OPTION_CONTRACTS: tuple[OptionContract, ...] = _build_option_contracts()
