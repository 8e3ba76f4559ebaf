"""The command line and what it starts: ``kimi-intercept`` (:mod:`.cli`, with :mod:`.options`
shared by every subcommand and :mod:`.sanitizer_commands`), the demo (:mod:`.demo`), the
simulated upstream (:mod:`.simulator`), starting ``mitmdump`` with the addon (:mod:`.mitmdump`),
the relay's own process that the addon starts (:mod:`.relay_process`), provider status
(:mod:`.status`), export (:mod:`.export`), the Cline / Continue importers (:mod:`.importers`),
the one check of the whole config that the CLI and the proxy share (:mod:`.checks`), the
launcher (:mod:`.launcher`: ``proxy``, ``init``, ``run``, ``env``; :mod:`.proxyrecord` for
running proxies, :mod:`.trust` for the client variables and CA bundle, ``entry/`` for the
packaged mitmdump script and Node preload), :mod:`.doctor`, the live dashboard (:mod:`.top`,
:mod:`.top_screen`, :mod:`.top_data`) and Claude Code's status line (:mod:`.statusline`), which
store a reading command reads (:mod:`.stores`: several ``--db`` files merged) and the team store
commands (:mod:`.team`: ``team sync``, ``report --team``). The top of the dependency graph:
nothing in the library imports it but the addon (config check, the relay process).
"""

from __future__ import annotations
