"""The mitmdump script shipped inside the package (``kimi-intercept proxy`` runs
``mitmdump -s <this file>``); the same three lines as a checkout's ``addons/kimi.py``.

It sits alone in its folder because mitmdump puts the script's folder first on ``sys.path``.
"""

from kimi_intercept.addon import KimiIntercept

addons = [KimiIntercept()]
