"""What a process's memory is made of, on demand: put this directory first on ``PYTHONPATH`` of the process to look at
(``PYTHONPATH=bench/memory_probe python -m bench --only idle ...`` gives it to every process the bench starts), then
``kill -USR1 <pid>`` at each moment to compare. Each signal writes ``/tmp/memory-probe-<pid>-<n>.txt``: the RSS,
pymalloc's and glibc malloc's figures, the objects the garbage collector tracks by type (count and ``getsizeof``
total) and, for deques, lists, sets, dicts and coroutines, the attribute holding each (``Class.attribute``; ``?``
when the holder has no materialised ``__dict__``). Subtract two dumps and divide by the connections between them.

Not part of the gateway. The first dump after objects appear is the honest one: reading ``__dict__`` to find holders
materialises the instance dictionaries CPython 3.11 otherwise keeps inline, so later dumps count those too.
"""

import collections
import ctypes
import gc
import os
import signal
import sys

_MALLINFO_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                    "keepcost")
_HELD_KINDS = (collections.deque, dict, list, set)
_dumps = 0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO_FIELDS]


def _name(value: object) -> str:
    return f"{type(value).__qualname__}@{type(value).__module__}"


def _holders(objects: list) -> tuple[dict[int, str], dict[int, str]]:
    """(id of a held container -> "Owner.attribute", id of an instance dict -> its owner's type)."""
    instance_dicts = []
    for value in objects:
        if not isinstance(value, type):
            attributes = getattr(value, "__dict__", None)
            if isinstance(attributes, dict):
                instance_dicts.append((_name(value), attributes))
    dict_owner = {id(attributes): owner for owner, attributes in instance_dicts}
    holder: dict[int, str] = {}
    walked = instance_dicts + [("dict", value) for value in objects
                               if isinstance(value, dict) and id(value) not in dict_owner]
    for owner, attributes in walked:
        for key, item in attributes.items():
            if isinstance(item, _HELD_KINDS):
                holder.setdefault(id(item), f"{owner}.{key}")
    for value in objects:
        if not isinstance(value, (type, dict)):
            for key in getattr(type(value), "__slots__", ()):
                item = getattr(value, key, None)
                if isinstance(item, _HELD_KINDS):
                    holder.setdefault(id(item), f"{_name(value)}.{key}")
    return holder, dict_owner


def _dump(signum: int, frame: object) -> None:
    global _dumps
    _dumps += 1
    objects = gc.get_objects()
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for value in objects:
        counts[_name(value)] += 1
        sizes[_name(value)] += sys.getsizeof(value)
    holder, dict_owner = _holders(objects)
    held: collections.Counter[str] = collections.Counter()
    for value in objects:
        if isinstance(value, _HELD_KINDS):
            where = holder.get(id(value)) or (f"{dict_owner[id(value)]} (its __dict__)" if id(value) in dict_owner
                                              else "?")
            held[f"{type(value).__name__} {where}"] += sys.getsizeof(value)
        elif type(value).__name__ == "coroutine":
            held[f"coroutine {value.__qualname__}"] += sys.getsizeof(value)
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    with open(f"/tmp/memory-probe-{os.getpid()}-{_dumps}.txt", "w") as out:
        with open("/proc/self/status") as status:
            out.writelines(line for line in status if line.startswith(("VmRSS", "RssAnon", "RssFile")))
        out.write(f"allocated_blocks {sys.getallocatedblocks()}\n")
        out.writelines(f"malloc_{name} {getattr(info, name)}\n" for name in _MALLINFO_FIELDS)
        out.write(f"gc_objects {len(objects)}\n")
        out.writelines(f"type {count} {sizes[name]} {name}\n" for name, count in counts.most_common(100))
        out.writelines(f"held {size} {where}\n" for where, size in held.most_common(300))
        out.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)  # _debugmallocstats writes pymalloc's arenas and pools to C's stderr
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


signal.signal(signal.SIGUSR1, _dump)
