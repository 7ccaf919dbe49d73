"""The served application's process: start-up frozen out of the collector's walks, young collections far apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cutemarkets import garbage_collection

PROBE = """
import gc, json
defaults = gc.get_threshold()
import cutemarkets.asgi
print(json.dumps({"defaults": defaults, "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "tracked": len(gc.get_objects())}))
"""


def test_loading_the_asgi_application_freezes_start_up_and_raises_the_thresholds():
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "cutemarkets.settings"}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=environment,
                            timeout=60, check=True)
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["defaults"] == [700, 10, 10]
    assert state["threshold"] == [garbage_collection.YOUNG_THRESHOLD, garbage_collection.MIDDLE_THRESHOLD,
                                  garbage_collection.OLD_THRESHOLD]
    # Django, Channels, daphne's shim and the app: tens of thousands of objects no collection walks again.
    assert state["frozen"] > 50_000
    assert state["tracked"] < state["frozen"] / 10
