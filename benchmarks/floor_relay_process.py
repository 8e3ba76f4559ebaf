"""The floor plus the same relay hop as ``floor_relay.py``, served by a child process.

For measuring only (``HOP_SCRIPT=floor_relay_process.py python benchmarks/concurrency.py --hop``,
or ``overhead.py --hop``): the alternative to an in-process relay, where the relay's work
(``HOP_WORK_MS`` of CPU per call, as in ``floor_relay.py``) runs on a core of its own instead of
taking turns with mitmproxy's on one event loop. The child's CPU is not in the proxy's CPU
column of ``overhead.py``. Not a design to use as is: kimi-intercept's planning, store and
status would have to move with it.
"""

import asyncio
import os
import sys

import floor_relay  # mitmproxy puts a script's folder on sys.path


class ProcessHop(floor_relay.HopRelay):
    def __init__(self):
        super().__init__()
        self.child = None

    async def running(self):
        self.child = await asyncio.create_subprocess_exec(
            sys.executable, floor_relay.__file__, stdout=asyncio.subprocess.PIPE, env=os.environ
        )
        self.port = int(await self.child.stdout.readline())

    def done(self):
        if self.child is not None and self.child.returncode is None:
            self.child.terminate()


addons = [ProcessHop()]
