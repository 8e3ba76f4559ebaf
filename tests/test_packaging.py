"""A wheel built from the checkout, installed (not editable) into a fresh virtual environment,
imports every module, finds its templates and packaged defaults, and starts
``mitmdump -s addons/kimi.py`` — run from a folder outside the checkout, so nothing can come
from the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from kimi_intercept.commands.mitmdump import READY_MARKER, clean_env

REPO = Path(__file__).resolve().parents[1]
_NOISE = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache")


def _skip(folder: str, names: list[str]) -> set[str]:
    """Build leftovers anywhere; the venv, git data and generated reports at the top."""
    skipped = set(_NOISE(folder, names))
    if Path(folder) == REPO:
        skipped |= {".venv", ".git", "build", "dist", "reports"} & set(names)
    return skipped


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding only the built wheel (its dependencies come from the
    test environment's site-packages through a ``.pth`` path, so nothing is downloaded but the
    build backend)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_skip)
    dist = root / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = dist.glob("kimi_intercept-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def test_the_wheel_imports_every_module_with_its_data(installed: Path, tmp_path: Path):
    script = """
import importlib, pathlib, pkgutil, sys
import kimi_intercept
assert pathlib.Path(kimi_intercept.__file__).is_relative_to(sys.prefix), kimi_intercept.__file__
names = [m.name for m in pkgutil.walk_packages(kimi_intercept.__path__, "kimi_intercept.")]
for name in names:
    importlib.import_module(name)
from kimi_intercept.config import default_config_text
from kimi_intercept.reports.pages import PAGES
import jinja2
env = jinja2.Environment(loader=jinja2.PackageLoader("kimi_intercept.reports"))
templates = sorted(env.list_templates())
print(len(names), len(default_config_text()) > 0, templates)
"""
    out = subprocess.run(
        [installed, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    count, has_defaults, templates = out.stdout.split(" ", 2)
    assert int(count) >= 50
    assert has_defaults == "True"
    assert "'base.html'" in templates and "'index.html'" in templates


def test_the_wheel_starts_mitmdump_with_the_addon(installed: Path, tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndatabase = "{tmp_path / "usage.db"}"\n')
    proc = subprocess.Popen(
        [
            installed,
            "-c",
            "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--set",
            f"confdir={tmp_path / 'confdir'}",
            "-s",
            str(REPO / "addons" / "kimi.py"),
            "--set",
            f"kimi_config={config}",
        ],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if READY_MARKER in line or "Traceback" in line:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = "".join(lines)
    assert READY_MARKER in log, log
    assert "Traceback" not in log, log


def test_the_wheel_runs_a_command_through_its_own_proxy(installed: Path, tmp_path: Path):
    """``kimi-intercept run`` from the wheel: the packaged mitmdump script and Node preload,
    no checkout, no config file (built-in defaults), from a folder of its own."""
    show = (
        "import os; print(os.environ['HTTPS_PROXY']); "
        "print(os.environ['NODE_OPTIONS'].removeprefix('--require='))"
    )
    done = subprocess.run(
        [installed.with_name("kimi-intercept"), "run", "--", installed, "-c", show],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    proxy_url, preload = done.stdout.splitlines()
    assert proxy_url.startswith("http://127.0.0.1:")
    assert Path(preload).is_file() and not Path(preload).is_relative_to(REPO)
    assert "kimi-intercept: proxy started at" in done.stderr
