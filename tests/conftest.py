"""Shared fixtures: fake upstreams, the real mitmdump with the addon, SDK clients through it.

Everything a test writes goes under ``tmp_path``; each test runs with ``tmp_path`` as its working
directory, so a relative default path cannot land in the repository, and the session fails if
``reports/`` changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import openai
import pytest
from hypothesis import HealthCheck, settings
from proxyproc import CLIENT_KEY, REPO, ProxyProcess, clean_env, start_proxy_process

from kimi_intercept.commands.simulator import FakeUpstream

# Property tests: a bounded run by default (each test a few seconds), and a long one on demand:
# ``pytest --hypothesis-profile=fuzz tests/routing tests/dialects``.
settings.register_profile(
    "bounded",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile("bounded")

# Variables that would send a test's own clients somewhere else, or change the openai SDK's target.
_CLIENT_ENV_NOISE = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ALL_PROXY",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_ADMIN_KEY",
    "OPENAI_CUSTOM_HEADERS",
    "SSL_CERT_DIR",
)


def _reports_listing() -> list[tuple[str, int, float]]:
    reports = REPO / "reports"
    if not reports.is_dir():
        return []
    return sorted(
        (str(p.relative_to(reports)), p.stat().st_size, p.stat().st_mtime)
        for p in reports.rglob("*")
    )


@pytest.fixture(scope="session", autouse=True)
def _reports_untouched() -> Iterator[None]:
    before = _reports_listing()
    yield
    assert _reports_listing() == before, "a test wrote into the repository's reports/"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Mark the test run, drop proxy variables, work inside tmp_path, and point the user
    folders (config, data: the default database and CA, state: running proxies) at
    ``tmp_path/xdg/*`` so no test reads or writes the real ones (platformdirs follows XDG_*)."""
    monkeypatch.setenv("KIMI_INTERCEPT_TEST", "1")
    monkeypatch.delenv("KIMI_INTERCEPT_CONFIG", raising=False)
    for kind in ("CONFIG", "DATA", "STATE", "CACHE"):
        monkeypatch.setenv(f"XDG_{kind}_HOME", str(tmp_path / "xdg" / kind.lower()))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_upstream() -> Iterator[Callable[..., FakeUpstream]]:
    """Factory: ``fake_upstream(default_gap_s=0.0)`` starts a FakeUpstream, stopped at teardown."""
    started: list[FakeUpstream] = []

    def make(default_gap_s: float = 0.0) -> FakeUpstream:
        up = FakeUpstream(default_gap_s=default_gap_s).start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory: ``start_proxy(config_text, extra_args=())`` -> a ready ProxyProcess.

    The config goes to ``tmp_path/config.toml`` (``config-2.toml``… for later calls), the CA to
    ``tmp_path/confdir``. The process gets no proxy variables and the test provider keys
    (``MOONSHOT_API_KEY``, ``DEEPSEEK_API_KEY``; see ``proxyproc.PROVIDER_ENV``). Every process is
    stopped at teardown.
    """
    procs: list[ProxyProcess] = []

    def start(config_text: str, extra_args: Sequence[str] = ()) -> ProxyProcess:
        name = "config.toml" if not procs else f"config-{len(procs) + 1}.toml"
        config_path = tmp_path / name
        config_path.write_text(config_text)
        confdir = tmp_path / "confdir"
        confdir.mkdir(exist_ok=True)
        proc = start_proxy_process(config_path, confdir, extra_args, env=clean_env(), cwd=tmp_path)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def openai_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., openai.OpenAI]]:
    """Factory: ``openai_client(proxy)`` -> a real ``openai.OpenAI`` configured only by env.

    The SDK's default client is an ``httpx.Client`` with ``trust_env=True``; httpx reads
    ``HTTPS_PROXY``/``NO_PROXY`` and ``SSL_CERT_FILE`` when the client is *constructed*, so the
    variables are set first. ``SSL_CERT_FILE`` replaces the CA bundle: the client trusts only the
    mitm CA. The base URL is the SDK default, https://api.openai.com/v1.
    """
    clients: list[openai.OpenAI] = []

    def make(proxy: ProxyProcess, **kwargs: object) -> openai.OpenAI:
        for name in _CLIENT_ENV_NOISE:
            monkeypatch.delenv(name, raising=False)
        for name, value in proxy.client_env().items():
            monkeypatch.setenv(name, value)
        client = openai.OpenAI(api_key=CLIENT_KEY, max_retries=0, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
