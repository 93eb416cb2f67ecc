"""Keep the startup heap out of garbage collection, as Ray Serve and vLLM do.

A serving process loads long-lived objects before it takes traffic: a tokenizer and its
chat template, HTTP clients, routes. Python's oldest-generation collection scans every
tracked object, so once transformers is loaded one full collection takes about 200 ms on
a 2-core machine, and it comes in the middle of serving: every request in the process
stalls for it (the OpenAI gateway with transformers' tokenizer, ~380k tracked objects: one
203 ms pause 1.6 s into a routing benchmark; with its own ``tokenizer.json`` tokenizer,
which most models get, ~50k). When a process's first replica has been constructed, before it takes
traffic, ``gc.collect()`` then ``gc.freeze()`` moves everything alive into the permanent
generation, which collections skip; later collections scan only what requests allocate.
That is every replica on Ray (an actor process each; a proxy's first in-proxy replica,
the OpenAI ingress) and, on the local runtime, the first replica ``serve.run`` starts.

Once per process: a later replica start (autoscaling, a redeploy) can happen while
requests are in flight, and freezing then would keep their cyclic garbage until exit. So
replicas started later are scanned as before. ``LLMSERVE_FREEZE_GC_ON_STARTUP=0`` turns
it off.
"""

from __future__ import annotations

import gc
import os
import time

ENV = "LLMSERVE_FREEZE_GC_ON_STARTUP"
_frozen = False


def freeze_startup_heap() -> float | None:
    """Collect, then freeze what is alive, the first time it is called in this process
    (and unless ``LLMSERVE_FREEZE_GC_ON_STARTUP=0``). Returns the seconds it took, or
    None when it did nothing."""
    global _frozen
    if _frozen or os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    _frozen = True
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started
