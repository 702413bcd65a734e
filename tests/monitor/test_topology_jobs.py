"""Job topologies from the store: a real finished fine-tuning job (one tiny LoRA run through the
real executor and worker for the whole module), injected hardware faults (an ECC alert on the
job's GPU, a full disk, a killed worker) naming their cause, project isolation, the API with its
401s, and the CLI in rich's test console and as a subprocess with ``--json``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from onebox.api.app import create_app
from onebox.cli.topology import render
from onebox.config import Settings
from onebox.errors import NotFoundError
from onebox.jobs.executor import LocalExecutor
from onebox.monitor import cluster
from onebox.monitor.loop import Monitor, MonitorConfig
from onebox.monitor.node import identify
from onebox.monitor.nvml import GpuCollector
from onebox.monitor.samples import COMPONENT, Sample, Snapshot
from onebox.monitor.tsdb import SeriesWriter
from onebox.services import datasets, events, jobs, models, topology, training
from onebox.services.context import App
from onebox.store.tables import Job, ModelVersion, new_id
from onebox.train.config import SFTConfig
from tests.monitor.fakes import FakeNvml
from tests.monitor.helpers import project_id
from tests.train.conftest import make_tiny_model

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("topology") / "home")


@pytest.fixture(scope="module")
def trained(box: App, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tiny LoRA fine-tune, finished, with a monitoring pass right after it (as `onebox serve`
    would have stored while it ran)."""
    root = tmp_path_factory.mktemp("tiny-train")
    models.register(box, "tiny", str(make_tiny_model(root / "tiny")), kind="chat")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}?"},
                {"role": "assistant", "content": f"answer {i}."},
            ]
        }
        for i in range(24)
    ]
    (root / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.import_file(box, root / "chats.jsonl", "chats")
    recipe = {
        "method": "lora", "lora_r": 2, "target_modules": ["q_proj", "v_proj"], "max_seq_len": 64,
        "micro_batch_size": 2, "grad_accum": 1, "max_steps": 2, "save_every": 1, "eval_every": 0,
        "keep_last": 2, "precision": "fp32",
    }  # fmt: skip
    job = training.submit_train(box, "tiny", "chats", SFTConfig.from_dict(recipe), output="tiny-ft")
    ex = LocalExecutor(box.settings, heartbeat_interval=0.5)
    try:
        done = ex.run_until(
            lambda: jobs.get(box, job.id).status in ("succeeded", "failed"), poll=0.2, timeout=300
        )
    finally:
        ex.close()
    assert done and jobs.get(box, job.id).status == "succeeded", jobs.logs(box, job.id, tail=30)
    mon = Monitor(box.db, MonitorConfig(), open_gpus=False)
    mon.step()
    mon.close()
    return job.id


def _by_kind(graph: dict, kind: str) -> list[dict]:
    return [n for n in graph["nodes"] if n["kind"] == kind]


def _edges(graph: dict) -> set[tuple[str, str, str]]:
    return {(e["source"], e["kind"], e["target"]) for e in graph["edges"]}


def test_finished_training_job(box: App, trained: str) -> None:
    job = jobs.get(box, trained)
    g = topology.job_topology(box, trained)
    root = f"job:{trained}"
    assert g["root"] == root and g["kind"] == "job" and g["health"] == "ok" and g["cause"] is None
    edges = _edges(g)
    assert (f"model_version:{job.input_model_version_id}", "input", root) in edges
    assert (f"dataset_version:{job.input_dataset_version_id}", "input", root) in edges
    (proc,) = _by_kind(g, "process")
    assert proc["attrs"]["pid"] == job.pid and proc["attrs"]["exit_code"] == 0 and proc["health"] == "ok"
    assert (root, "runs_as", proc["id"]) in edges
    (node,) = _by_kind(g, "node")
    assert node["attrs"]["hostname"] == job.host == HOST and (proc["id"], "runs_on", node["id"]) in edges
    used = {t for s, k, t in edges if s == proc["id"] and k == "uses"}
    assert {n["kind"] for n in g["nodes"] if n["id"] in used} == {"cpus", "memory", "filesystem"}
    (fs,) = _by_kind(g, "filesystem")
    assert str(box.settings.home).startswith(fs["attrs"]["mount"]) and "fs_usage_ratio" in fs["metrics"]
    with box.db.session() as s:
        out_id = s.query(ModelVersion.id).filter(ModelVersion.job_id == trained).scalar()
    assert (root, "produced", f"adapter:{out_id}") in edges
    steps = sorted(n["attrs"]["step"] for n in _by_kind(g, "checkpoint"))
    assert steps == [1, 2] and all((root, "produced", n["id"]) in edges for n in _by_kind(g, "checkpoint"))
    assert [e["kind"] for e in g["nodes"][0]["events"]][:1] == ["job.succeeded"]


def test_an_evaluation_job_has_its_models_as_inputs_and_its_report_as_output(box: App, trained: str) -> None:
    """Scores only: the report node carries the public result, never per-question rows."""
    job = jobs.get(box, trained)
    with box.db.session() as s:
        out_id = s.query(ModelVersion.id).filter(ModelVersion.job_id == trained).scalar()
        base_id = job.input_model_version_id
        eval_id = new_id("job")
        models = [{"ref": "tiny:1", "version_id": base_id}, {"ref": "tiny-ft:1", "version_id": out_id}]
        result = {
            "models": {
                "tiny:1": {"perplexity": {"perplexity": 812.5}, "heldout": {"overall": {"accuracy": 0.25}}},
                "tiny-ft:1": {"perplexity": {"perplexity": 640.0}, "heldout": None},
            },
            "side_by_side": {"wins": 1},
        }
        s.add(
            Job(
                id=eval_id, project_id=job.project_id, name="eval-x", status="succeeded", type="eval",
                input_model_version_id=base_id, input_dataset_version_id=job.input_dataset_version_id,
                spec={"models": models}, result=result,
            )
        )  # fmt: skip
    g = topology.job_topology(box, eval_id)
    roles = {(e["source"], e["role"]) for e in g["edges"] if e["kind"] == "input"}
    assert roles == {
        (f"model_version:{base_id}", "evaluated"),
        (f"adapter:{out_id}", "evaluated"),
        (f"dataset_version:{job.input_dataset_version_id}", "dataset"),
    }
    (report,) = _by_kind(g, "report")
    assert report["attrs"]["scores"] == {
        "tiny:1": {"perplexity": 812.5, "accuracy": 0.25},
        "tiny-ft:1": {"perplexity": 640.0},
    }
    assert (f"job:{eval_id}", "produced", report["id"]) in _edges(g) and _by_kind(g, "process") == []


# -- injected faults ----------------------------------------------------------------------------


def _failed_job(
    app: App, *, exit_code: int | None, error: str, devices: list[str] | None = None, project: str = "default"
) -> str:
    """A job whose worker ended at ``now`` on this host, written straight into the store."""
    now = datetime.now(UTC)
    job_id = new_id("job")
    with app.db.session() as s:
        s.add(
            Job(
                id=job_id, project_id=project_id(app, project), name="sft-x", status="failed", type="train",
                attempts=1, host=HOST, pid=None, exit_code=exit_code, error=error, devices=devices or [],
                started_at=now - timedelta(seconds=30), finished_at=now, heartbeat_at=now,
            )
        )  # fmt: skip
    return job_id


def _node_with(app: App, samples: list[Sample], gpus: int = 0) -> str:
    """This host as a monitored node whose latest component samples are ``samples``."""
    node = identify()
    node.info["gpus"] = [
        {"index": i, "name": "H100", "uuid": f"GPU-{i}", "memory_bytes": 80 << 30} for i in range(gpus)
    ]
    now = time.time()
    cluster.heartbeat(app.db, node, now=now, interval_s=10.0, summary={}, problems=[])
    SeriesWriter(app.db, node.id).write(Snapshot(node.id, now, samples))
    return node.id


def test_an_ecc_alert_on_the_jobs_gpu_is_named_as_the_cause(sqlite_app: App) -> None:
    node = _node_with(
        sqlite_app,
        [
            Sample(COMPONENT, "gpu0", "gpu_temperature_celsius", 61.0),
            Sample(COMPONENT, "fs:/", "fs_usage_ratio", 0.4),
        ],
        gpus=2,
    )
    job_id = _failed_job(sqlite_app, exit_code=-9, error="worker killed by SIGKILL; gave up", devices=["0"])
    with sqlite_app.db.session() as s:  # an alert about gpu0, as the alert rules write it
        events.record(
            s, project_id=None, resource_type="node", resource_id=node, kind="alert.firing.gpu_ecc",
            message=f"gpu0 on {node} has 2 uncorrected ECC errors", severity="critical",
            resource="gpu0", level="component", node=node,
        )  # fmt: skip
    g = topology.job_topology(sqlite_app, job_id)
    assert g["health"] == "critical"
    cause = g["cause"]
    assert cause["node"] == f"gpu:{node}:gpu0" and cause["kind"] == "gpu" and "ECC" in cause["reason"]
    assert cause["path"] == [f"job:{job_id}", f"process:{job_id}:worker", f"gpu:{node}:gpu0"]
    gpu = next(n for n in g["nodes"] if n["id"] == cause["node"])
    assert gpu["events"][0]["kind"] == "alert.firing.gpu_ecc" and gpu["attrs"]["model"] == "H100"
    assert not any(n["id"].endswith(":gpu1") for n in g["nodes"])  # not the job's


def test_a_full_disk_is_named_as_the_cause(sqlite_app: App) -> None:
    node = _node_with(sqlite_app, [Sample(COMPONENT, "fs:/", "fs_usage_ratio", 0.95)])
    job_id = _failed_job(sqlite_app, exit_code=1, error="OSError: [Errno 28] No space left on device")
    g = topology.job_topology(sqlite_app, job_id)
    cause = g["cause"]
    assert cause["node"] == f"filesystem:{node}:fs:/" and cause["reason"] == "file system / is 95% full"


def test_a_killed_worker_on_healthy_hardware(sqlite_app: App) -> None:
    _node_with(sqlite_app, [Sample(COMPONENT, "fs:/", "fs_usage_ratio", 0.3)])
    job_id = _failed_job(sqlite_app, exit_code=-9, error="worker killed by SIGKILL; gave up after 1 attempts")
    g = topology.job_topology(sqlite_app, job_id)
    assert (
        g["cause"]["node"] == f"process:{job_id}:worker"
        and g["cause"]["reason"] == "worker killed by SIGKILL"
    )


def test_gpu_readings_through_the_nvml_collector(sqlite_app: App) -> None:
    """The monitor's own NVML path (a stand-in pynvml: gpu1 at 94 °C and throttled) feeds the GPU
    the job was given; the GPU it was not given stays out of its graph."""
    mon = Monitor(sqlite_app.db, MonitorConfig(), gpus=GpuCollector.open(FakeNvml()))
    mon.step()
    mon.close()
    job_id = _failed_job(sqlite_app, exit_code=-9, error="worker killed by SIGKILL", devices=["1"])
    g = topology.job_topology(sqlite_app, job_id)
    gpus = _by_kind(g, "gpu")
    assert [n["attrs"]["index"] for n in gpus] == [1] and gpus[0]["label"] == "gpu1 NVIDIA H100 80GB HBM3"
    assert gpus[0]["reasons"] == ["gpu1 is at 94 °C", "gpu1 is throttled"]
    assert gpus[0]["metrics"]["gpu_temperature_celsius"] == 94.0
    assert g["cause"]["node"] == gpus[0]["id"]


def test_a_running_worker_then_its_death(sqlite_app: App) -> None:
    """A live worker on this host is inspected (alive, memory); once it is gone and its heartbeat
    stale, the job is critical and the vanished worker is the cause."""
    _node_with(sqlite_app, [Sample(COMPONENT, "fs:/", "fs_usage_ratio", 0.3)])
    job_id = new_id("job")
    worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "onebox.jobs.worker", job_id]
    )
    try:
        now = datetime.now(UTC)
        with sqlite_app.db.session() as s:
            s.add(
                Job(
                    id=job_id, project_id=project_id(sqlite_app, "default"), name="sft-live",
                    status="running", type="train", attempts=1, host=HOST, pid=worker.pid, started_at=now,
                    heartbeat_at=now,
                )
            )  # fmt: skip
        g = topology.job_topology(sqlite_app, job_id)
        (proc,) = _by_kind(g, "process")
        assert proc["health"] == "ok" and proc["attrs"]["alive"] is True and proc["attrs"]["rss_bytes"] > 0
        assert g["health"] == "ok" and g["cause"] is None
    finally:
        worker.kill()
        worker.wait()
    with sqlite_app.db.session() as s:
        s.get(Job, job_id).heartbeat_at = now - timedelta(seconds=300)
    g = topology.job_topology(sqlite_app, job_id)
    (proc,) = _by_kind(g, "process")
    assert proc["reasons"] == [f"worker pid {worker.pid} is gone"]
    assert g["health"] == "critical" and g["nodes"][0]["reasons"][0].startswith(
        "no heartbeat from its worker"
    )
    assert g["cause"]["node"] == proc["id"]


def test_another_projects_job_is_not_found_like_a_missing_one(sqlite_app: App) -> None:
    job_id = _failed_job(sqlite_app, exit_code=1, error="x")
    other = sqlite_app.in_project("team-b")
    with pytest.raises(NotFoundError) as theirs:
        topology.job_topology(other, job_id)
    with pytest.raises(NotFoundError) as missing:
        topology.job_topology(other, "job_doesnotexist0000000000")
    assert theirs.value.message.replace(job_id, "X") == missing.value.message.replace(
        "job_doesnotexist0000000000", "X"
    )


# -- API and CLI ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(settings: Settings, box: App) -> Iterator[TestClient]:
    with TestClient(create_app(settings, supervise=False, monitor=False)) as c:
        yield c


def test_api_serves_the_graph_and_hides_other_projects(
    client: TestClient, admin: dict[str, str], box: App, trained: str
) -> None:
    r = client.get(f"/api/v1/topology/jobs/{trained}", headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["root"] == f"job:{trained}" and {"nodes", "edges", "cause"} <= set(body)
    assert {n["kind"] for n in body["nodes"]} >= {"job", "process", "node", "model_version", "checkpoint"}
    short = client.get(f"/api/v1/topology/jobs/{trained[4:12]}", headers=admin)  # a unique prefix
    assert short.status_code == 200 and short.json()["root"] == body["root"]

    theirs = _failed_job(box, exit_code=1, error="x", project="team-b")
    a = client.get(f"/api/v1/topology/jobs/{theirs}", headers=admin)
    b = client.get("/api/v1/topology/jobs/job_doesnotexist0000000000", headers=admin)
    assert a.status_code == b.status_code == 404
    assert a.json()["error"]["code"] == b.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/topology/jobs/job_x", "/api/v1/topology/deployments/bot"])
def test_anonymous_callers_get_401(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401


def test_openapi_documents_the_graph(client: TestClient, admin: dict[str, str]) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/v1/topology/jobs/{id}"]["get"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"nodes", "edges", "cause"} <= set(spec["components"]["schemas"][schema]["properties"])
    assert "/api/v1/topology/deployments/{name}" in spec["paths"]


def test_cli_tree_in_rich_test_console(box: App, trained: str) -> None:
    console = Console(record=True, width=160, color_system=None)
    console.print(render(topology.job_topology(box, trained)))
    text = console.export_text()
    for item in (
        "inputs",
        "tiny:1",
        "chats:1",
        "processes",
        "worker (attempt 1)",
        HOST,
        "filesystem /",
        "outputs",
    ):
        assert item in text, item
    assert "checkpoint step-000002" in text and "tiny-ft:1" in text and "probable cause" not in text


def test_cli_tree_names_the_cause(sqlite_app: App) -> None:
    _node_with(sqlite_app, [Sample(COMPONENT, "fs:/", "fs_usage_ratio", 0.97)])
    job_id = _failed_job(sqlite_app, exit_code=1, error="No space left on device")
    console = Console(record=True, width=160, color_system=None)
    console.print(render(topology.job_topology(sqlite_app, job_id)))
    text = console.export_text()
    assert "probable cause: filesystem /: file system / is 97% full" in text
    assert "path: sft-x → worker (attempt 1) → /" in text


def test_cli_json_in_a_subprocess(settings: Settings, trained: str) -> None:
    env = {**os.environ, "ONEBOX_HOME": str(settings.home)}
    cmd = [sys.executable, "-m", "onebox", "topology", "job", trained[:12], "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["root"] == f"job:{trained}"
    missing = subprocess.run(
        [*cmd[:-2], "job_nope0000", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert missing.returncode == 3 and json.loads(missing.stdout)["error"]["code"] == "not_found"
