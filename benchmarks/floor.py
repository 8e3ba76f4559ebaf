"""The floor: mitmdump with a 3-line reroute addon (what any mitmproxy-based reroute costs).

Run as ``mitmdump -s benchmarks/floor.py --set connection_strategy=lazy`` with
``FLOOR_UPSTREAM=http://127.0.0.1:<port>``: calls to ``api.openai.com`` go there, and answers
are streamed (as kimi-intercept streams them), not buffered.
"""

import os

UPSTREAM = os.environ["FLOOR_UPSTREAM"]


def request(flow):
    if flow.request.pretty_host == "api.openai.com":
        flow.request.url = UPSTREAM + flow.request.path


def responseheaders(flow):
    flow.response.stream = True
