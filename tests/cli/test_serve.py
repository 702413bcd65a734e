"""CLI of deployments and chat: desired state through the commands (fast), and end to end with a
real ``onebox serve`` process, real workers and ``onebox chat`` on a pipe (slow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from onebox.cli.main import app as cli
from onebox.cli.main import main
from onebox.cli.state import get_app, settings
from onebox.config import Settings
from onebox.services import models
from onebox.services.context import open_app

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path, tiny_lora_dirs: list[Path], monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    app = open_app(Settings(home=home))
    base = models.register(app, "tiny", str(tiny_model_dir)).version
    models.register(app, "tiny-lora", str(tiny_lora_dirs[0]), base_version_id=base.id)
    app.close()
    monkeypatch.setenv("ONEBOX_HOME", str(home))
    settings.cache_clear()
    get_app.cache_clear()
    yield home
    settings.cache_clear()
    get_app.cache_clear()


def invoke(*args: str) -> tuple[int, str]:
    """Run the CLI in-process through ``main`` (which maps errors to exit codes)."""
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.output


def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["onebox", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return int(exit_.value.code or 0), captured.out + captured.err


def test_deploy_list_show_scale_adapters_undeploy(home: Path) -> None:
    code, out = invoke("deploy", "tiny", "--max-model-len", "64", "--replicas", "2")
    assert code == 0, out
    assert "deployed tiny:1 as tiny" in out and "no `onebox serve` is running" in out
    code, out = invoke("deployments", "list")
    assert code == 0 and "tiny" in out and "starting" in out
    code, out = invoke("deployments", "add-adapter", "tiny", "tiny-lora")
    assert code == 0 and "tiny, tiny-lora" in out
    code, out = invoke("deployments", "show", "tiny", "--json")
    d = json.loads(out)
    assert d["replicas"] == 2 and d["engine"] == {"max_model_len": 64}
    assert d["adapters"][0]["version"] == "tiny-lora:1"
    code, out = invoke("deployments", "show", "tiny")
    assert code == 0 and "deployment.adapter_added" in out
    code, out = invoke("deployments", "scale", "tiny", "0")
    assert code == 0 and "0 replicas (stopped)" in out
    code, out = invoke("deployments", "remove-adapter", "tiny", "tiny-lora")
    assert code == 0 and "now serves: tiny" in out
    code, out = invoke("undeploy", "tiny", "--json")
    assert code == 0 and json.loads(out)["name"] == "tiny"
    code, out = invoke("deployments", "list", "--json")
    assert json.loads(out) == []


def test_errors_exit_with_their_codes(home: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def run(*args: str) -> tuple[int, str]:
        return run_main(capsys, monkeypatch, *args)

    assert run("deploy", "nope")[0] == 3
    code, out = run("deploy", "tiny", "--replicas", "-1")
    assert code == 4 and "replicas" in out
    code, out = run("deploy", "tiny", "--dtype", "int3")
    assert code == 4 and "dtype" in out
    assert run("deploy", "tiny", "--no-wait")[0] == 0
    code, out = run("deploy", "tiny")
    assert code == 5 and "already served" in out
    code, out = run("deploy", "tiny", "--name", "TINY", "--json")
    assert code == 5 and json.loads(out)["error"]["code"] == "already_exists"
    assert run("undeploy", "nope")[0] == 3
    code, out = run("chat", "tiny", "--url", "http://127.0.0.1:9")
    assert code == 11 and "onebox serve" in out


def _wait(predicate, timeout: float, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.25)


@pytest.mark.slow
def test_serve_deploy_wait_chat_ctrl_c(builtin_home_copy: Path) -> None:
    pytest.importorskip("onebox.serve.textgen")
    env = {**os.environ, "ONEBOX_HOME": str(builtin_home_copy)}
    onebox = [sys.executable, "-m", "onebox"]
    port = 18000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    log = (builtin_home_copy / "serve.log").open("wb")
    made = subprocess.run(  # the admin was created by `onebox init`
        [*onebox, "keys", "create", "--user", "admin", "--name", "chat", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    no_key = dict(env)
    env["ONEBOX_API_KEY"] = json.loads(made.stdout)["secret"]
    server = subprocess.Popen([*onebox, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        _wait(lambda: _up(url), 60, "gateway")
        refused = subprocess.run(
            [*onebox, "chat", "smol", "--url", url], input="/exit\n", env=no_key, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode == 12 and "ONEBOX_API_KEY" in refused.stderr, refused.stderr
        out = subprocess.run(
            [*onebox, "deploy", "smollm2-135m-instruct", "--name", "smol", "--max-model-len", "512", "--json"],  # noqa: E501
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"] == "ready"
        listed = subprocess.run(
            [*onebox, "deployments", "list"], env=env, capture_output=True, text=True, timeout=60
        )
        assert "smol" in listed.stdout and "ready" in listed.stdout
        chat = subprocess.run(
            [*onebox, "chat", "smol", "--url", url, "--max-tokens", "8", "--system", "Be brief."],
            input="Hello!\n/reset\nWhat is 2+2?\n/exit\n",
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.count("smol>") == 2 and "history cleared" in chat.stderr
        workers = [p for p in psutil.Process(server.pid).children() if "onebox.serve.worker" in p.cmdline()]
        assert len(workers) == 1
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        code = server.wait(60)
        log.close()
    assert code == 0, (builtin_home_copy / "serve.log").read_text()[-3000:]
    _wait(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 30)
    shutil.rmtree(builtin_home_copy / "cache", ignore_errors=True)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
