"""Test harness: every test session gets its own state folder and port range.

The environment is set here, before any project module reads it, so tests
never touch a developer's ``.state/`` or a running ``make run`` platform.
Services started by fixtures are real (``weed mini``, Airflow) and are stopped
by pid, children included, when the session ends.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="il-test-state-"))
os.environ["IL_STATE_DIR"] = str(_STATE)
os.environ["IL_PORT_OFFSET"] = os.environ.get("IL_TEST_PORT_OFFSET", "100")
os.environ.pop("IL_LANDING_DIR", None)
os.environ.pop("IL_CATALOG_URL", None)
for _k in list(os.environ):
    if _k.startswith("AIRFLOW_CONN_IL_"):
        del os.environ[_k]
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("AIRFLOW_HOME", str(_STATE / "airflow-unit"))

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def object_store_settings(state_dir):
    """Both embedded S3 sites, running for the whole session; yields Settings with credentials."""
    from imaging_lifecycle import platform

    settings = platform.start_object_stores(platform.load_settings())
    yield settings
    platform.down(settings)


@pytest.fixture(scope="session")
def store(object_store_settings):
    from imaging_lifecycle.storage import ObjectStore

    return ObjectStore(object_store_settings)


@pytest.fixture
def dicom_file():
    """Path of one of pydicom's bundled test files (real files nobody here wrote)."""
    from pydicom.data import get_testdata_file

    def _get(name: str) -> Path:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.fail(f"pydicom test file {name} is not bundled")
        return Path(path)

    return _get


class Platform:
    """A full platform (both S3 sites + the four Airflow components) in its own state dir and ports."""

    def __init__(self, root: Path, offset: int):
        self.state = root
        self.env = {**os.environ, "IL_STATE_DIR": str(root), "IL_PORT_OFFSET": str(offset)}
        self.env.pop("AIRFLOW_HOME", None)
        self.status_before: dict | None = None
        self.login: str = ""

    def cli(self, *args: str, timeout: float = 300, check: bool = True):
        import subprocess

        r = subprocess.run(
            [str(PROJECT / ".venv" / "bin" / "imaging-lifecycle"), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"imaging-lifecycle {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def status(self) -> dict:
        import json

        return json.loads(self.cli("status", "--json", check=False).stdout)

    def settings(self):
        from imaging_lifecycle.platform import _with_creds, ensure_credentials
        from imaging_lifecycle.settings import Settings, load_settings

        old = {k: os.environ.get(k) for k in ("IL_STATE_DIR", "IL_PORT_OFFSET")}
        os.environ.update({k: self.env[k] for k in old})
        try:
            s: Settings = load_settings()
        finally:
            for k, v in old.items():
                os.environ[k] = v  # type: ignore[assignment]
        return _with_creds(s, ensure_credentials(s))


@pytest.fixture(scope="session")
def platform_run(tmp_path_factory):
    """``imaging-lifecycle platform up`` for real; stopped (and checked stopped) at session end."""
    import time

    from imaging_lifecycle import platform as plat

    p = Platform(tmp_path_factory.mktemp("platform-state"), offset=200)
    p.status_before = p.status()
    t0 = time.monotonic()
    r = p.cli("platform", "up")
    p.up_seconds = time.monotonic() - t0
    p.up_output = r.stdout
    yield p
    p.cli("platform", "down")
    assert plat.ours(p.settings()) == [], "processes of the test platform survived 'platform down'"
