"""CPython's cyclic garbage collector tuned for a long-running pm process (the PM, a step consumer).

Reference counting frees nearly everything these processes make: 4,000 PM inputs left 40 objects
in reference cycles. Yet with the default thresholds (700, 10, 10) the collector ran ~490 times
per 9,300 inputs of the PM, each full collection walking every live object (the imported
modules, the process cache): ~5 % of the PM's CPU in e2e, more with a larger heap, and 6-24 % of
a rebuild's time (bench/RESULTS.md, session 12). The heap built at start is frozen (never walked
again) and the thresholds are raised so that collections are rare but each stays bounded: cycles
made by error paths are still collected.
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "quiet_collector"]

# A young collection per 10,000 net new container objects (a few ms), an older one per 20 of those,
# a full one per 100 older ones at most (CPython also waits until the long-lived heap grew by 25 %).
THRESHOLDS = (10_000, 20, 100)


def quiet_collector() -> None:
    """Collect once, freeze what survives (startup: imports, app, config), then collect rarely.

    For a process's entry point only: it changes the interpreter's global collector settings.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
