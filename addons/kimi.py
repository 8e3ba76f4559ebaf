"""Reroute IDE LLM calls to Kimi with streamed fallbacks, and count them into SQLite.

Usage: mitmdump -s addons/kimi.py --set kimi_config=config.toml
"""

from kimi_intercept.addon import KimiIntercept

addons = [KimiIntercept()]
