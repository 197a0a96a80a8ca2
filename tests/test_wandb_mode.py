"""W&B never blocks a run: offline unless online is asked for, and offline when the server does not answer.

There is no network here: "does not answer" is a local port whose accept queue is full (connections
hang, as to a firewalled host), "refuses" a port nobody listens on.
"""

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_process import run_cli
from conftest import KDLAB

from kdlab import loggers
from kdlab.errors import ConfigError
from kdlab.loggers import _endpoint, reachable_mode, wandb_logger, wandb_mode, wandb_server

OFFLINE_LINE = "logging offline instead"


@pytest.fixture(autouse=True)
def no_wandb_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No W&B variables, key files or proxies from the machine the tests run on; a fresh network check."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "https_proxy", "HTTPS_PROXY", "http_proxy",
                 "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    loggers._unreachable.cache_clear()
    loggers._WARNED.clear()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that accepts no more connections: a connect to it hangs until its timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    queued = []
    while True:  # fill the accept queue; the kernel then drops further SYNs
        client = socket.socket()
        client.settimeout(0.2)
        try:
            client.connect(("127.0.0.1", port))
        except OSError:
            client.close()
            break
        queued.append(client)
    yield port
    for client in queued:
        client.close()
    server.close()


@pytest.fixture
def refused_port() -> int:
    """A local port nobody listens on: a connect to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def answering_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def test_an_api_key_alone_stays_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == "offline"
    assert wandb_logger(save_dir=str(tmp_path))._wandb_init["mode"] == "offline"


def test_online_only_when_asked_and_the_config_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode("auto") == "online"
    assert wandb_mode("offline") == "offline"  # logger.wandb.mode=offline beats the exported variable
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # wandb's old name for offline
    assert wandb_mode("auto") == "dryrun"


def test_an_empty_wandb_mode_means_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "")
    assert wandb_mode("auto") == "offline"
    assert "WANDB_MODE" not in os.environ  # wandb itself rejects an empty WANDB_MODE in wandb.init


@pytest.mark.parametrize(("variable", "mode", "message"), [
    ("bogus", "auto", "WANDB_MODE='bogus' is not a W&B mode: use online, offline, disabled (or unset it: offline)"),
    ("Online", "auto", "WANDB_MODE='Online' is not a W&B mode"),
    ("offline", "onlin", "logger.wandb.mode='onlin' is not a W&B mode: use auto, online, offline, disabled"),
])
def test_unknown_modes_are_one_line_config_errors(monkeypatch: pytest.MonkeyPatch, variable: str, mode: str, message: str) -> None:
    monkeypatch.setenv("WANDB_MODE", variable)
    with pytest.raises(ConfigError) as error:
        wandb_mode(mode)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_server_that_does_not_answer_means_offline_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, silent_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent_port}")
    caplog.set_level(logging.WARNING, logger="kdlab.loggers")
    started = time.monotonic()
    assert reachable_mode("auto", connect_timeout=0.5, save_dir="/runs/x") == "offline"
    assert 0.4 < time.monotonic() - started < 3
    # The teacher's logger and the student's in the same process: one check, one warning.
    assert reachable_mode("auto", connect_timeout=0.5, save_dir="/runs/x") == "offline"
    assert time.monotonic() - started < 3
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"127.0.0.1:{silent_port}" in warning and OFFLINE_LINE in warning and "wandb sync /runs/x/wandb/offline-run-*" in warning


def test_a_refused_connection_means_offline_at_once(monkeypatch: pytest.MonkeyPatch, refused_port: int,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{refused_port}")
    caplog.set_level(logging.WARNING, logger="kdlab.loggers")
    started = time.monotonic()
    logger = wandb_logger(mode="online", save_dir=".", connect_timeout=5)
    assert logger._wandb_init["mode"] == "offline" and time.monotonic() - started < 2
    assert "refused" in caplog.records[0].getMessage()


def test_a_server_that_answers_stays_online(monkeypatch: pytest.MonkeyPatch, answering_port: int) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{answering_port}")
    assert reachable_mode("auto", connect_timeout=2) == "online"


def test_the_server_comes_from_wandb_login_host_settings(tmp_path: Path, refused_port: int) -> None:
    assert wandb_server() == "https://api.wandb.ai"
    (tmp_path / "wandb-config").mkdir()
    (tmp_path / "wandb-config" / "settings").write_text(f"[default]\nbase_url = http://127.0.0.1:{refused_port}\n")
    assert wandb_server() == f"http://127.0.0.1:{refused_port}"
    assert reachable_mode("online", connect_timeout=2) == "offline"


def test_the_check_goes_to_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _endpoint("https://api.wandb.ai") == ("api.wandb.ai", 443)
    assert _endpoint("http://wandb.lab.example:8080") == ("wandb.lab.example", 8080)
    monkeypatch.setenv("https_proxy", "http://proxy.lab.example:3128")
    assert _endpoint("https://api.wandb.ai") == ("proxy.lab.example", 3128)
    monkeypatch.setenv("no_proxy", "api.wandb.ai")
    assert _endpoint("https://api.wandb.ai") == ("api.wandb.ai", 443)
    with pytest.raises(ConfigError, match="'wandb.lab:8080' .* is not a URL"):
        _endpoint("wandb.lab:8080")


@pytest.mark.slow
def test_kdlab_train_online_without_a_network_finishes_offline(outputs: Path, silent_port: int) -> None:
    """The issue's node without network: WANDB_MODE=online and a key, a server that never answers."""
    import subprocess

    env = {**os.environ, "KDLAB_OUTPUTS": str(outputs), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "online",
           "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{silent_port}"}
    started = time.monotonic()
    result = run_cli([*KDLAB, "train", "+method=scratch", "trainer.max_epochs=1"], env=env, cwd=outputs.parent, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert output.count(OFFLINE_LINE) == 1, output
    (run_dir,) = (outputs / "runs").glob("*/*")
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert time.monotonic() - started < 120  # not the ~100-140 s an online wandb.init waits before crashing
