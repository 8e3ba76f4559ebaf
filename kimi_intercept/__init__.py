"""kimi-intercept: mitmproxy addons that reroute IDE LLM calls to Kimi, count them and report."""

__version__ = "0.1.0"
