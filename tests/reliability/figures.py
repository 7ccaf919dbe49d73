"""Measured figures of the reliability suite, appended to var/reliability-figures.jsonl for RELIABILITY.md.

Figures are recorded, never asserted as timings: each test asserts behaviour and writes down how long it took.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from django.conf import settings

FIGURES_FILE = Path(settings.BASE_DIR) / "var" / "reliability-figures.jsonl"


def record(name: str, value: float, unit: str, **details: object) -> None:
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    with FIGURES_FILE.open("a") as figures:
        figures.write(json.dumps({"name": name, "value": round(value, 4), "unit": unit, "at": time.time(), **details}))
        figures.write("\n")
