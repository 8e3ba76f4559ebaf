"""Shared by the side-by-side benchmarks (overhead, concurrency, soak, stream_delay).

One :class:`~kimi_intercept.commands.simulator.FakeUpstream` on loopback serves every setup:

- ``direct``: the client posts to the fake itself (no proxy);
- ``floor``: ``mitmdump -s benchmarks/floor.py`` (a 3-line reroute, answers streamed), the client
  posts to ``https://api.openai.com/v1/chat/completions`` through it, trusting its CA;
- ``hop`` (when asked for): ``mitmdump -s benchmarks/floor_tls_relay.py``, the floor's reroute
  done the way kimi-intercept's relay is reached — mitmproxy passes the TLS through to a bare
  aiohttp relay process that decrypts it — without kimi-intercept's work
  (``HOP_SCRIPT=floor_relay.py``: the hop kimi-intercept used before, mitmproxy decrypting and
  forwarding to an in-process relay; ``floor_rawhop.py``: that hop as a bare
  ``asyncio.Protocol``);
- ``kimi``: ``mitmdump -s addons/kimi.py`` with kimi pointed at the fake, same client settings;
- ``litellm`` (optional, ``--litellm PATH`` of a ``litellm`` executable): LiteLLM's proxy with a
  model ``gpt-4o`` served by ``openai/kimi-k2.6`` at the fake; the client posts to its base URL.

Both mitmdumps get the same options (``connection_strategy=lazy``, default flow output) and,
with ``probe=True``, the same ``benchmarks/probe.py`` addon, which answers
``GET http://probe.invalid/rss`` with the process's RSS after ``malloc_trim(0)``.
Scripts that print numbers, not tests: nothing here asserts a duration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the shared test config

from proxyproc import clean_env, render_config  # noqa: E402

from kimi_intercept.commands.mitmdump import (  # noqa: E402
    LISTENING,
    mitmdump_command,
    start_proxy_process,
)
from kimi_intercept.commands.simulator import FakeUpstream  # noqa: E402

PROXIED_URL = "https://api.openai.com/v1/chat/completions"
PROBE_URL = "http://probe.invalid/rss"
#: Seconds kimi-intercept is left alone after its ready line (its tokenizer loads meanwhile).
SETTLE_S = 2.0
TICKS = os.sysconf("SC_CLK_TCK")
MITM_ARGS = [
    "--listen-host", "127.0.0.1", "--listen-port", "0", "--set", "connection_strategy=lazy"
]  # fmt: skip


@dataclass
class Setup:
    """Where a client sends its request for one setup; ``pid`` is the proxy's process."""

    name: str
    url: str
    proxy: str | None = None
    ca: str | None = None
    pid: int | None = None

    def client_kwargs(self) -> dict:
        """``httpx.Client`` keyword arguments for this setup."""
        kw: dict = {"trust_env": False}
        if self.proxy:
            kw["proxy"] = self.proxy
            kw["verify"] = ssl.create_default_context(cafile=self.ca)
        return kw

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (kimi-intercept's relay process), from
    ``/proc/<pid>/task/<tid>/children``."""
    found: list[int] = []
    for tid in _listdir(f"/proc/{pid}/task"):
        try:
            kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            found += [kid, *descendants(kid)]
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """utime + stime in seconds of ``pid`` and of every process it started (kimi-intercept's
    relay runs in a child process; its CPU is the proxy's too). ``/proc/<pid>/stat`` fields
    14 and 15; a process that ended meanwhile counts no more."""
    total = 0.0
    for p in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def chat_body(stream: bool, prompt: str = "Reply with one short sentence about latency. ") -> bytes:
    """A ~256 B chat-completions request (streamed ones ask for the usage chunk)."""
    body: dict = {
        "model": "gpt-4o",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": prompt * 3},
        ],
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-client"}


class FirstToken:
    """Finds the first token of a streamed chat answer in the bytes as they arrive: the first SSE
    event whose delta carries content, reasoning or a tool call (the role-only opening event,
    https://platform.openai.com/docs/api-reference/chat-streaming, carries none). ``feed``
    returns True once it has been seen; a body that is not SSE counts from its first byte."""

    def __init__(self) -> None:
        self._buf = b""
        self.seen = False

    def feed(self, chunk: bytes) -> bool:
        if self.seen or not chunk:
            return self.seen
        self._buf += chunk
        if not self._buf.lstrip().startswith(b"data:"):
            self.seen = True  # JSON: the first byte is the answer's start
            return True
        *events, self._buf = self._buf.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            data = event.partition(b"data:")[2].strip()
            if not data or data == b"[DONE]":
                continue
            try:
                choices = json.loads(data).get("choices") or [{}]
            except ValueError:
                continue
            delta = choices[0].get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                self.seen = True
                break
        return self.seen


def timed(client, url: str, body: bytes) -> tuple[float, float]:
    """``(ms to the first token, ms to the end)`` of one POST (:class:`FirstToken`: for a
    streamed answer, its first content event; for JSON, the first byte); raises on a non-200."""
    t0 = time.perf_counter()
    ttft = None
    first = FirstToken()
    with client.stream("POST", url, content=body, headers=HEADERS) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for chunk in r.iter_raw():
            if ttft is None and first.feed(chunk):
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total) * 1e3, total * 1e3


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, round(q * 100) - 1)]


#: ``BENCH_PIN=1``: every proxy on the last CPU, this process (the fake upstream) and the
#: client on the others — each setup gets a core of its own, the same one in every round.
PIN = os.environ.get("BENCH_PIN") == "1" and (os.cpu_count() or 1) > 1


def pin(pid: int, proxy: bool) -> None:
    """With :data:`PIN`, bind every thread of ``pid`` (later threads inherit it) to the last CPU
    (``proxy``) or to the others."""
    if not PIN:
        return
    last = (os.cpu_count() or 1) - 1
    cpus = {last} if proxy else set(range(last))
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that just ended


def run_client(script: str, spec: dict, timeout: float = 3600) -> dict:
    """Run ``script --client-spec SPEC`` in its own process; its stdout's last line is JSON."""
    done = subprocess.run(
        [sys.executable, script, "--client-spec", json.dumps(spec)],
        env=clean_env(),
        preexec_fn=(lambda: pin(os.getpid(), proxy=False)) if PIN else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"client failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class _Mitmdump:
    """A plain ``mitmdump`` (the floor) with its output drained by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], confdir: Path) -> None:
        self.confdir = confdir
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.lines: list[str] = []
        self._seen = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._seen.wait(30) or not self.port:
            self.stop()
            raise RuntimeError("mitmdump did not start:\n" + "\n".join(self.lines[-40:]))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if len(self.lines) < 1000:
                self.lines.append(line.rstrip())
            if not self.port and (m := LISTENING.search(line)):
                self.port = int(m.group(1))
                self._seen.set()
        self._seen.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _LiteLLM:
    """LiteLLM's proxy (``litellm --config``) serving ``gpt-4o`` from the fake upstream."""

    def __init__(self, exe: str, fake_url: str, tmp: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cfg = tmp / "litellm.yaml"
        cfg.write_text(
            "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n"
            f"      model: openai/kimi-k2.6\n      api_base: {fake_url}/v1\n"
            "      api_key: sk-bench-upstream\n"
            # LiteLLM (1.80+) refuses to start without a master key; the clients' own bearer
            # token (HEADERS) is it, so the same requests authenticate
            "general_settings:\n  master_key: sk-bench-client\n"
        )
        self.proc = subprocess.Popen(
            [exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health/liveliness").status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("litellm did not start within 120 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def side_by_side(
    tmp: Path,
    names: tuple[str, ...] = ("direct", "floor", "kimi"),
    gap_ms: float = 0.0,
    litellm: str | None = None,
    probe: bool = False,
    kimi_config_extra: str = "",
) -> Iterator[tuple[dict[str, Setup], FakeUpstream, Path]]:
    """Start the fake upstream and the ``names`` setups (plus ``litellm`` if a path is given);
    yields ``(setups by name, the fake, kimi's database path)`` and stops everything."""
    with setups_at(tmp, names, None, gap_ms, litellm, probe, None, kimi_config_extra) as (
        setups,
        fake,
        db,
    ):
        assert fake is not None
        yield setups, fake, db


def machine() -> str:
    """``"2 CPUs (model), Python 3.11.7, Linux 6.x"`` for the printed header."""
    model = ""
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = f" ({m.group(1).strip()})" if m else ""
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs{model}, Python {sys.version.split()[0]}, "
        f"{os.uname().sysname} {os.uname().release}"
    )


# -- added for concurrency.py, soak.py and stream_delay.py -------------------------------------


@contextmanager
def setups_at(
    tmp: Path,
    names: tuple[str, ...] = ("direct", "floor", "kimi"),
    upstream_url: str | None = None,
    gap_ms: float = 0.0,
    litellm: str | None = None,
    probe: bool = False,
    proxy_env: dict[str, str] | None = None,
    kimi_config_extra: str = "",
) -> Iterator[tuple[dict[str, Setup], FakeUpstream | None, Path]]:
    """Like :func:`side_by_side`, with two more choices.

    ``upstream_url`` (``http://127.0.0.1:<port>``, serving ``POST /v1/chat/completions``): every
    setup goes there instead of a :class:`FakeUpstream` (then the yielded fake is ``None``; kimi's
    fallback is still a fake, never used). ``proxy_env``: extra environment for both mitmdumps
    (e.g. ``{"PROBE_TRACEMALLOC": "1"}``). Yields ``(setups by name, the fake or None, kimi's
    database path)``; raises ``RuntimeError`` / ``ProxyStartError`` if a proxy does not start.
    ``kimi_config_extra``: TOML appended to kimi's config. kimi is given :data:`SETTLE_S` after
    its ready line (it loads its tokenizer in the background), so no run measures that load.
    """
    db = tmp / "kimi.db"
    extra = ["-s", str(HERE / "probe.py")] if probe else []
    env_extra = dict(proxy_env or {})
    pin(os.getpid(), proxy=False)
    with ExitStack() as stack:
        fake = None
        if upstream_url is None:
            fake = stack.enter_context(FakeUpstream(default_gap_s=gap_ms / 1e3))
            upstream_url = fake.url
        spare = stack.enter_context(FakeUpstream())  # kimi's fallback; never used here
        setups: dict[str, Setup] = {}
        if "direct" in names:
            setups["direct"] = Setup("direct", upstream_url + "/v1/chat/completions")
        hop_script = os.environ.get("HOP_SCRIPT", "floor_tls_relay.py")
        for name, script in (("floor", "floor.py"), ("hop", hop_script)):
            if name not in names:
                continue
            confdir = tmp / f"{name}-confdir"
            confdir.mkdir()
            floor = _Mitmdump(
                [*mitmdump_command(), *MITM_ARGS, "--set", f"confdir={confdir}",
                 "-s", str(HERE / script), *extra],
                clean_env({"FLOOR_UPSTREAM": upstream_url, **env_extra}),
                confdir,
            )  # fmt: skip
            stack.callback(floor.stop)
            pin(floor.proc.pid, proxy=True)
            setups[name] = Setup(
                name, PROXIED_URL, f"http://127.0.0.1:{floor.port}",
                str(confdir / "mitmproxy-ca-cert.pem"), floor.proc.pid,
            )  # fmt: skip
        if "kimi" in names:
            config = tmp / "config.toml"
            config.write_text(render_config(db, upstream_url, spare.url) + kimi_config_extra)
            confdir = tmp / "kimi-confdir"
            confdir.mkdir()
            kimi = start_proxy_process(
                config, confdir, ["--set", "connection_strategy=lazy", *extra],
                env=clean_env(env_extra), cwd=tmp,
            )  # fmt: skip
            stack.callback(kimi.stop)
            pin(kimi.proc.pid, proxy=True)
            setups["kimi"] = Setup(
                "kimi", PROXIED_URL, kimi.proxy_url, str(kimi.ca_path), kimi.proc.pid
            )
            time.sleep(SETTLE_S)
        if litellm:
            exe = shutil.which(litellm) or litellm
            lite = _LiteLLM(exe, upstream_url, tmp)
            stack.callback(lite.stop)
            pin(lite.proc.pid, proxy=True)
            setups["litellm"] = Setup(
                "litellm", f"http://127.0.0.1:{lite.port}/v1/chat/completions",
                pid=lite.proc.pid,
            )  # fmt: skip
        yield setups, fake, db


def ssl_context(setup: Setup) -> ssl.SSLContext | None:
    """An SSL context trusting only the setup's mitmproxy CA (``None`` for a setup without one),
    for ``aiohttp`` (``ssl=``) or ``httpx`` (``verify=``)."""
    return ssl.create_default_context(cafile=setup.ca) if setup.ca else None


def probe_rss_kb(setup: Setup, path: str = "/rss", timeout: float = 120) -> dict:
    """``GET http://probe.invalid<path>`` through the setup's proxy (plain HTTP; the proxy must
    run ``benchmarks/probe.py``): ``{"rss_kb": N}`` (KiB after ``malloc_trim``), plus ``"top"``
    for ``/trace/diff``. Raises ``RuntimeError`` on a non-200 and ``httpx.HTTPError``."""
    import httpx

    url = "http://probe.invalid" + path
    with httpx.Client(proxy=setup.proxy, trust_env=False, timeout=timeout) as c:
        r = c.get(url)
    if r.status_code != 200:
        raise RuntimeError(f"probe {url}: HTTP {r.status_code}: {r.text[:300]}")
    return r.json()


def settled_count(db: Path, table: str = "requests", quiet_s: float = 3.0, limit_s: float = 120):
    """Rows in ``table`` once the count has not changed for ``quiet_s`` seconds (the proxy's
    writer thread inserts after answers end), or after ``limit_s``; 0 if the table is missing."""
    import sqlite3

    last, since, deadline = -1, time.monotonic(), time.monotonic() + limit_s
    while True:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                n = con.execute(f"select count(*) from {table}").fetchone()[0]
            finally:
                con.close()
        except sqlite3.OperationalError:
            n = 0
        now = time.monotonic()
        if n != last:
            last, since = n, now
        elif now - since >= quiet_s or now > deadline:
            return n
        time.sleep(0.25)


def bytes_per_table(db: Path) -> tuple[str, dict[str, int], dict[str, int]]:
    """On-disk bytes of each table with its indexes, and its row count.

    Returns ``(method, {table: bytes}, {table: rows})``. ``method`` is ``"dbstat"`` (sum of the
    page sizes of each b-tree, SQLite's ``dbstat`` virtual table) or, if SQLite was built
    without it, ``"file"``: the whole file after ``PRAGMA wal_checkpoint(TRUNCATE)`` under the
    key ``"*"``. The ``"*"`` key always holds the whole database (every table, index, free page).
    """
    import sqlite3

    con = sqlite3.connect(db)
    try:
        tables = {
            name: tbl
            for name, tbl in con.execute(
                "select name, tbl_name from sqlite_master where type in ('table', 'index')"
            )
        }
        rows = {
            t: con.execute(f'select count(*) from "{t}"').fetchone()[0]
            for t in set(tables.values())
            if not t.startswith("sqlite_")
        }
        try:
            sizes: dict[str, int] = {}
            for name, size in con.execute("select name, sum(pgsize) from dbstat group by name"):
                owner = tables.get(name, name)
                sizes[owner] = sizes.get(owner, 0) + size
            page = con.execute("pragma page_size").fetchone()[0]
            sizes["*"] = con.execute("pragma page_count").fetchone()[0] * page
            return "dbstat", sizes, rows
        except sqlite3.OperationalError:
            con.execute("pragma wal_checkpoint(TRUNCATE)")
            total = db.stat().st_size
            wal = db.with_name(db.name + "-wal")
            total += wal.stat().st_size if wal.exists() else 0
            return "file", {"*": total}, rows
    finally:
        con.close()
