"""Work counters (generations, PRM forward passes, prefill tokens, HTTP requests).

Benchmarks and tests assert on counts, not time. When ``VLMEVAL_PRM_COUNTERS`` names a file,
every increment is also appended there, so counts survive subprocesses (``python -m vlmeval.run``).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter

from vlmeval_prm.constants import COUNTERS_ENV

COUNTS: Counter = Counter()
_LOCK = threading.Lock()


def bump(name: str, amount: int = 1) -> None:
    with _LOCK:
        COUNTS[name] += amount
        path = os.environ.get(COUNTERS_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"name": name, "n": amount, "pid": os.getpid()}) + "\n")


def read_counter_file(path: str) -> Counter:
    """Totals of a counters file written by one or more processes."""
    total: Counter = Counter()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                total[rec["name"]] += rec["n"]
    return total
