"""A benchmark-only mitmdump addon, loaded into the floor and kimi-intercept alike.

``GET http://probe.invalid/rss`` (a plain-HTTP request through the proxy) answers
``{"rss_kb": N, "relay_rss_kb": M}``: the resident set of the process after ``gc.collect()`` and
glibc's ``malloc_trim(0)`` (memory the allocator keeps but no object uses is given back first),
plus that of the processes it started (kimi-intercept's relay process: ``M``, as the kernel
reports it, without a trim; 0 for the floor).
With ``PROBE_TRACEMALLOC=1`` in mitmdump's environment, ``/trace/start`` takes a tracemalloc
snapshot and ``/trace/diff`` answers the 15 source lines whose retained memory grew most since.
"""

import ctypes
import gc
import json
import os
import tracemalloc

from mitmproxy import http

_libc = ctypes.CDLL("libc.so.6")
_first = None
if os.environ.get("PROBE_TRACEMALLOC") == "1":
    tracemalloc.start(6)


def _rss_kb(pid="self"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:  # it just ended
        pass
    return 0


def _children():
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return found


def request(flow):
    global _first
    if flow.request.pretty_host != "probe.invalid":
        return
    gc.collect()
    _libc.malloc_trim(0)
    relay = sum(_rss_kb(p) for p in _children())
    out = {"rss_kb": _rss_kb() + relay, "relay_rss_kb": relay}
    if flow.request.path == "/trace/start" and tracemalloc.is_tracing():
        _first = tracemalloc.take_snapshot()
    elif flow.request.path == "/trace/diff" and _first is not None:
        stats = tracemalloc.take_snapshot().compare_to(_first, "traceback")
        out["top"] = [
            {
                "kb": round(s.size_diff / 1024, 1),
                "count": s.count_diff,
                "where": [str(fr) for fr in s.traceback.format()[-6:]],
            }
            for s in stats[:15]
        ]
    flow.response = http.Response.make(200, json.dumps(out), {"content-type": "application/json"})
