"""The pure topology core on hand-made facts: graph shape, health of each kind of node, and the
probable cause walking from a failing task down to the GPU, disk, node or worker behind it."""

from __future__ import annotations

from onebox.monitor.topology import build, filesystem_for
from onebox.monitor.topology_facts import (
    EventFact,
    GatewayFacts,
    KeyFacts,
    LiveProcess,
    NodeFacts,
    ProcessFacts,
    TaskFacts,
    TopologyFacts,
    VersionFacts,
)
from onebox.monitor.topology_graph import CRITICAL, OK, UNKNOWN, WARNING, Graph

NOW = 1_800_000_000.0


def _node(**kw: object) -> NodeFacts:
    base: dict = {
        "id": "box-1",
        "hostname": "box-1",
        "monitored": True,
        "up": True,
        "heartbeat_age_s": 4.0,
        "info": {"cpus": 8, "gpus": [{"index": 0, "name": "H100"}, {"index": 1, "name": "H100"}]},
        "components": {
            "cpu0": {"cpu_usage_ratio": 0.5},
            "cpu1": {"cpu_usage_ratio": 0.9},
            "memory": {"memory_usage_ratio": 0.4},
            "fs:/": {"fs_usage_ratio": 0.3},
            "fs:/data": {"fs_usage_ratio": 0.5},
            "gpu0": {"gpu_temperature_celsius": 60.0},
            "gpu1": {"gpu_temperature_celsius": 61.0, "gpu_ecc_uncorrected_errors": 0.0},
        },
    }
    return NodeFacts(**{**base, **kw})  # type: ignore[arg-type]


def _job(status: str = "succeeded", **kw: object) -> TopologyFacts:
    task = TaskFacts(kind="job", id="job_1", name="sft", status=status, type="train", started_at=NOW - 600)
    for k, v in kw.pop("task", {}).items():  # type: ignore[attr-defined]
        setattr(task, k, v)
    worker = ProcessFacts(key="worker", label="worker (attempt 1)", host="box-1", pid=4242, gpus=[1])
    for k, v in kw.pop("worker", {}).items():  # type: ignore[attr-defined]
        setattr(worker, k, v)
    return TopologyFacts(
        task=task,
        inputs=[
            VersionFacts("dv_1", "dataset_version", "chats:1", "dataset"),
            VersionFacts("mv_1", "model_version", "tiny:1", "base_model"),
        ],
        outputs=[
            VersionFacts("job_1:step-000002", "checkpoint", "checkpoint step-000002", "checkpoint"),
            VersionFacts("mv_2", "adapter", "tiny-ft:1", "model_version"),
        ],
        processes=[worker],
        nodes={"box-1": kw.pop("node", _node())},  # type: ignore[dict-item]
        data_path="/data/onebox/jobs/job_1",
        now=NOW,
    )


def _health(g: Graph) -> dict[str, str]:
    return {n.id: n.health for n in g.nodes.values()}


def test_a_healthy_job_is_inputs_task_process_node_devices_outputs() -> None:
    g = build(_job())
    assert g.root == "job:job_1" and g.cause is None and g.task.health == OK
    edges = {(e.source, e.kind, e.target) for e in g.edges}
    assert ("dataset_version:dv_1", "input", "job:job_1") in edges
    assert ("model_version:mv_1", "input", "job:job_1") in edges
    assert ("job:job_1", "runs_as", "process:job_1:worker") in edges
    assert ("process:job_1:worker", "runs_on", "node:box-1") in edges
    # the devices it used: the node's CPUs and memory, the disk holding its folder, its GPU only
    used = {e.target for e in g.edges if e.source == "process:job_1:worker" and e.kind == "uses"}
    assert used == {"cpus:box-1", "memory:box-1:memory", "filesystem:box-1:fs:/data", "gpu:box-1:gpu1"}
    assert all(("node:box-1", "has", d) in edges for d in used)
    assert ("job:job_1", "produced", "adapter:mv_2") in edges
    assert ("job:job_1", "produced", "checkpoint:job_1:step-000002") in edges
    cpus = g.nodes["cpus:box-1"]
    assert cpus.label == "8 CPUs" and cpus.metrics["cpu_busiest_core_ratio"] == 0.9
    assert set(_health(g).values()) == {OK}
    d = g.as_dict()
    assert d["health"] == OK and d["cause"] is None and len(d["nodes"]) == len(g.nodes)


def test_ecc_alert_on_the_gpu_is_the_cause_of_a_killed_worker() -> None:
    ecc = EventFact(
        "alert.firing.gpu_ecc", "critical", "gpu1 on box-1 has 2 uncorrected ECC errors", NOW - 300,
        "node", "box-1", {"resource": "gpu1", "level": "component", "node": "box-1"},
    )  # fmt: skip
    facts = _job("failed", task={"error": "worker killed by SIGKILL; gave up"}, worker={"exit_code": -9})
    facts.nodes["box-1"].events = [ecc]
    g = build(facts)
    assert g.nodes["process:job_1:worker"].reasons[0] == "worker killed by SIGKILL"
    gpu = g.nodes["gpu:box-1:gpu1"]
    assert gpu.health == CRITICAL and gpu.events[0]["kind"] == "alert.firing.gpu_ecc"
    assert g.nodes["node:box-1"].health == OK  # the alert is about its GPU, not the node itself
    assert g.cause is not None and g.cause.node == "gpu:box-1:gpu1"
    assert "ECC" in g.cause.reason
    assert g.cause.path == ["job:job_1", "process:job_1:worker", "gpu:box-1:gpu1"]


def test_ecc_errors_in_the_samples_name_the_gpu_too() -> None:
    node = _node()
    node.components["gpu1"]["gpu_ecc_uncorrected_errors"] = 3.0
    g = build(_job("failed", node=node, worker={"exit_code": 1}))
    assert g.cause is not None and g.cause.node == "gpu:box-1:gpu1"
    assert g.cause.reason == "gpu1 has 3 uncorrected ECC errors"
    assert "gpu:box-1:gpu0" not in g.nodes  # not given to the job


def test_a_full_disk_is_the_cause_and_only_the_disk_holding_the_job() -> None:
    node = _node()
    node.components["fs:/data"]["fs_usage_ratio"] = 0.95
    node.components["fs:/"]["fs_usage_ratio"] = 0.99  # another disk: not where the job writes
    g = build(_job("failed", node=node, task={"error": "No space left on device"}))
    assert "filesystem:box-1:fs:/" not in g.nodes
    fs = g.nodes["filesystem:box-1:fs:/data"]
    assert fs.health == CRITICAL and fs.reasons == ["file system /data is 95% full"]
    assert g.cause is not None and g.cause.node == fs.id and g.cause.kind == "filesystem"


def test_a_disk_at_91_percent_warns_but_does_not_explain_a_failure() -> None:
    node = _node()
    node.components["fs:/data"]["fs_usage_ratio"] = 0.91
    g = build(_job("failed", node=node, task={"error": "ValueError: bad row"}))
    assert g.nodes["filesystem:box-1:fs:/data"].health == WARNING
    assert (
        g.cause is not None
        and g.cause.node == "job:job_1"
        and g.cause.reason == "failed: ValueError: bad row"
    )


def test_a_lost_node_under_a_running_job() -> None:
    node = _node(up=False, heartbeat_age_s=95.0)
    facts = _job(
        "running",
        node=node,
        task={"heartbeat_age_s": 120.0},
        worker={"live": None},
    )
    g = build(facts)
    assert g.task.health == CRITICAL and "no heartbeat from its worker for 120 s" in g.task.reasons
    assert g.nodes["node:box-1"].reasons == ["lost: no heartbeat for 95 s"]
    assert g.cause is not None and g.cause.node == "node:box-1"


def test_a_killed_worker_with_healthy_hardware_is_the_cause() -> None:
    lost = EventFact(
        "job.failed", "error", "failed: worker killed by SIGKILL", NOW - 10, "job", "job_1",
        {"reason": "worker killed by SIGKILL", "exit_code": -9},
    )  # fmt: skip
    g = build(
        _job("failed", worker={"exit_code": -9, "reason": "worker killed by SIGKILL", "events": [lost]})
    )
    proc = g.nodes["process:job_1:worker"]
    assert proc.health == CRITICAL and proc.events[0]["kind"] == "job.failed"
    assert g.cause is not None and g.cause.node == proc.id and g.cause.reason == "worker killed by SIGKILL"


def test_a_running_job_whose_worker_pid_is_gone() -> None:
    g = build(_job("running", worker={"live": LiveProcess(alive=False)}))
    assert g.nodes["process:job_1:worker"].reasons == ["worker pid 4242 is gone"]
    assert g.task.health == OK  # nothing on the task itself yet: its heartbeat is still fresh
    assert g.cause is None


def test_cancelled_jobs_do_not_blame_the_signal_that_stopped_them() -> None:
    g = build(_job("cancelled", worker={"exit_code": -15}))
    assert g.nodes["process:job_1:worker"].health == OK and g.cause is None


def test_an_unmonitored_node_is_unknown_not_ok() -> None:
    facts = _job(node=NodeFacts(id="box-1", hostname="box-1", monitored=False))
    g = build(facts)
    assert g.nodes["node:box-1"].health == UNKNOWN
    assert "filesystem:box-1:fs:/data" not in g.nodes and g.nodes["cpus:box-1"].health == UNKNOWN


def test_a_resolved_alert_no_longer_counts() -> None:
    over = EventFact(
        "alert.resolved.disk_full", "critical", "fs:/data on box-1 is 97% full", NOW - 60, "node", "box-1",
        {"resource": "fs:/data", "level": "component"},
    )  # fmt: skip
    facts = _job()
    facts.nodes["box-1"].events = [over]
    g = build(facts)
    fs = g.nodes["filesystem:box-1:fs:/data"]
    assert fs.health == OK and fs.events[0]["kind"] == "alert.resolved.disk_full"


def test_deployment_with_gateway_and_keys() -> None:
    task = TaskFacts(kind="deployment", id="dep_1", name="bot", status="ready", type="text", replicas=2)
    replicas = [
        ProcessFacts(f"replica-{i}", f"replica {i}", "box-1", 100 + i, state="ready", live=LiveProcess(True))
        for i in range(2)
    ]
    facts = TopologyFacts(
        task=task,
        inputs=[
            VersionFacts("mv_1", "model_version", "tiny:1", "base_model"),
            VersionFacts("mv_9", "adapter", "tiny-ft:1", "adapter", attrs={"served_as": "tiny-ft"}),
        ],
        processes=replicas,
        nodes={"box-1": _node()},
        data_path="/data/onebox",
        gateway=GatewayFacts(running=True, pid=99, host="box-1"),
        keys=[KeyFacts("key_1", "obx_abc", "ci", "alice", "active", NOW - 5, active_minutes=3)],
        hidden_keys=2,
        now=NOW,
    )
    g = build(facts)
    edges = {(e.source, e.kind, e.target) for e in g.edges}
    assert ("gateway:box-1", "routes", "deployment:dep_1") in edges
    assert ("api_key:key_1", "calls", "gateway:box-1") in edges
    assert ("api_key:others", "calls", "gateway:box-1") in edges
    assert ("adapter:mv_9", "input", "deployment:dep_1") in edges
    assert {e.target for e in g.edges if e.kind == "runs_as"} == {
        "process:dep_1:replica-0",
        "process:dep_1:replica-1",
    }
    assert len([n for n in g.nodes.values() if n.kind == "node"]) == 1  # shared by both replicas
    key = g.nodes["api_key:key_1"]
    assert key.label == "obx_abc (ci)" and key.attrs["user"] == "alice" and "secret" not in str(key.attrs)
    assert g.nodes["api_key:others"].label == "2 other keys of the project"
    assert g.cause is None and g.task.health == OK

    # one replica crash-loops and the gateway is gone: the gateway explains the outage
    facts.task.status = "failed"
    facts.processes[1].state = "backoff"
    facts.processes[1].reason = "exit code 1"
    facts.gateway = GatewayFacts(running=False, host="box-1")
    g = build(facts)
    assert g.nodes["process:dep_1:replica-1"].reasons[0] == "crashed (restart 0): exit code 1"
    assert g.nodes["gateway:box-1"].health == CRITICAL
    assert g.cause is not None and g.cause.kind == "gateway"


def test_filesystem_for_picks_the_longest_mount_holding_the_path() -> None:
    mounts = ["/", "/data", "/data/onebox", "/dat"]
    assert filesystem_for("/data/onebox/jobs/x", mounts) == "/data/onebox"
    assert filesystem_for("/data2/x", mounts) == "/"
    assert filesystem_for("/dat", mounts) == "/dat"
    assert filesystem_for("/home/x", ["/data"]) is None
    assert filesystem_for(None, mounts) is None
