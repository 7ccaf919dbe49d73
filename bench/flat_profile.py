"""``python -m bench.flat_profile FILE [N]``: inclusive and self shares of the functions in a py-spy raw profile.

Record one with ``py-spy record -p PID -d SECONDS -r 500 -f raw -o FILE --nonblocking`` while a scenario runs (the
profiles quoted in BENCHMARKS.md were taken that way, of the daphne process).
"""

from __future__ import annotations

import sys
from collections import Counter


def function_name(frame: str) -> str:
    """``name (file.py)`` of a py-spy frame ``name (path/file.py:line)``."""
    name, _, location = frame.partition(" (")
    return f"{name} ({location.split(':')[0].rsplit('/', 1)[-1]})" if location else name


def shares(lines) -> tuple[int, Counter, Counter]:
    inclusive: Counter = Counter()
    own: Counter = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = [function_name(frame) for frame in stack.split(";")]
        for name in set(frames):
            inclusive[name] += samples
        own[frames[-1]] += samples
    return total, inclusive, own


def main(argv: list[str]) -> int:
    with open(argv[0]) as handle:
        total, inclusive, own = shares(handle)
    top = int(argv[1]) if len(argv) > 1 else 40
    print(f"{total} samples\n--- inclusive")
    for name, samples in inclusive.most_common(top):
        print(f"{100 * samples / total:5.1f}% {name}")
    print("--- self")
    for name, samples in own.most_common(top):
        print(f"{100 * samples / total:5.1f}% {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
