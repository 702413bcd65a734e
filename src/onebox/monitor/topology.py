"""Task topology: from the facts about one job or deployment to its graph (pure: data in, graph
out), for drill-down from a failing task to the device behind it.

The graph holds the task's inputs (dataset version, base model version, adapters, evaluated
models), the task, its worker processes, the node each ran on and the devices used there (the
node's CPUs and memory, its GPUs given to the task, the file system holding the task's files),
its outputs (checkpoints, model versions, an evaluation report), and for a deployment the gateway
routing to it and the API keys that called it. Every graph node carries its health and latest
events (:mod:`.topology_health`), and the graph names a probable cause when the task is unhealthy
(:mod:`.topology_cause`).
"""

from __future__ import annotations

import posixpath

from onebox.monitor.topology_cause import probable_cause
from onebox.monitor.topology_facts import (
    EventFact,
    NodeFacts,
    ProcessFacts,
    TopologyFacts,
    VersionFacts,
)
from onebox.monitor.topology_graph import (
    API_KEY,
    CALLS,
    CPUS,
    FILESYSTEM,
    GATEWAY,
    GPU,
    HAS,
    INPUT,
    MEMORY,
    NODE,
    OK,
    PROCESS,
    PRODUCED,
    ROUTES,
    RUNS_AS,
    RUNS_ON,
    USES,
    Graph,
    GraphNode,
)
from onebox.monitor.topology_health import (
    Health,
    cpus_health,
    filesystem_health,
    gateway_health,
    gpu_health,
    key_health,
    memory_health,
    node_health,
    process_health,
    task_health,
    version_health,
)

LATEST_EVENTS = 5
"""Events kept on each graph node, newest first."""


def filesystem_for(path: str | None, mounts: list[str]) -> str | None:
    """The mount point holding ``path``: the longest one that is a prefix of it, as a path."""
    if not path:
        return None
    path = posixpath.normpath(path)
    best = None
    for m in mounts:
        root = posixpath.normpath(m)
        inside = path == root or path.startswith(root.rstrip("/") + "/")
        if inside and (best is None or len(root) > len(posixpath.normpath(best))):
            best = m
    return best


def component_events(events: list[EventFact], resource: str) -> list[EventFact]:
    """Events whose ``data.resource`` names the component (``gpu0``, ``fs:/data``...)."""
    return [e for e in events if e.data.get("resource") == resource]


def _latest(events: list[EventFact]) -> list[dict[str, object]]:
    return [e.as_dict() for e in sorted(events, key=lambda e: e.at, reverse=True)[:LATEST_EVENTS]]


def _node(
    g: Graph, node_id: str, kind: str, label: str, health: Health, attrs: dict[str, object]
) -> GraphNode:
    existing = g.nodes.get(node_id)
    if existing is not None:
        return existing
    return g.add(GraphNode(node_id, kind, label, health=health[0], reasons=health[1], attrs=attrs))


def build(f: TopologyFacts) -> Graph:
    t = f.task
    g = Graph(root=f"{t.kind}:{t.id}", generated_at=f.now)
    attrs = {"id": t.id, "name": t.name, "status": t.status, "type": t.type, **t.attrs}
    task = _node(g, g.root, t.kind, t.name, task_health(t), attrs)
    task.metrics = dict(t.metrics)
    task.events = _latest(t.events)
    for v in f.inputs:
        n = _node(g, f"{v.kind}:{v.id}", v.kind, v.label, version_health(v), _version_attrs(v))
        g.link(n.id, g.root, INPUT, v.role)
    for p in f.processes:
        _process(g, f, p)
    for v in f.outputs:
        n = _node(g, f"{v.kind}:{v.id}", v.kind, v.label, version_health(v), _version_attrs(v))
        g.link(g.root, n.id, PRODUCED, v.role)
    if f.gateway is not None:
        _gateway(g, f)
    g.cause = probable_cause(g)
    return g


def _version_attrs(v: VersionFacts) -> dict[str, object]:
    return {"id": v.id, "status": v.status, **v.attrs}


def _gateway(g: Graph, f: TopologyFacts) -> None:
    gw = f.gateway
    assert gw is not None
    attrs: dict[str, object] = {"running": gw.running, "pid": gw.pid, "host": gw.host}
    label = f"gateway on {gw.host}" if gw.host else "gateway"
    node = _node(g, f"{GATEWAY}:{gw.host or 'local'}", GATEWAY, label, gateway_health(gw, f.task), attrs)
    node.events = _latest(gw.events)
    g.link(node.id, g.root, ROUTES)
    if gw.host is not None and gw.host in f.nodes:
        g.link(node.id, _machine(g, f.nodes[gw.host], f.task.active).id, RUNS_ON)
    for k in f.keys:
        label = f"{k.prefix} ({k.name})" if k.name else k.prefix
        key_attrs: dict[str, object] = {
            "prefix": k.prefix,
            "name": k.name,
            "user": k.user,
            "state": k.state,
            "last_used_at": k.last_used_at,
            "active_minutes": k.active_minutes,
            "refused": k.refused,
        }
        key = _node(g, f"{API_KEY}:{k.id}", API_KEY, label, key_health(k), key_attrs)
        g.link(key.id, node.id, CALLS)
    if f.hidden_keys:
        label = f"{f.hidden_keys} other key{'s' if f.hidden_keys > 1 else ''} of the project"
        others = _node(g, f"{API_KEY}:others", API_KEY, label, (OK, []), {"count": f.hidden_keys})
        g.link(others.id, node.id, CALLS)


def _process(g: Graph, f: TopologyFacts, p: ProcessFacts) -> None:
    t = f.task
    label = f"{p.label} (pid {p.pid})" if p.pid else p.label
    live = p.live
    attrs: dict[str, object] = {
        "pid": p.pid,
        "host": p.host,
        "state": p.state or None,
        "exit_code": p.exit_code,
        "reason": p.reason,
        "restarts": p.restarts,
        "gpus": list(p.gpus),
        "alive": live.alive if live else None,
        "status": live.status if live else None,
        "rss_bytes": live.rss_bytes if live else None,
        "cpu_seconds": live.cpu_seconds if live else None,
        "children": live.children if live else None,
    }
    proc = _node(g, f"{PROCESS}:{t.id}:{p.key}", PROCESS, label, process_health(p, t), attrs)
    proc.metrics = dict(p.metrics)
    proc.events = _latest(p.events)
    g.link(g.root, proc.id, RUNS_AS)
    machine = f.nodes.get(p.host) if p.host else None
    if machine is None:
        return
    m = _machine(g, machine, t.active)
    g.link(proc.id, m.id, RUNS_ON)
    for dev in _devices(g, machine, p, f.data_path):
        g.link(m.id, dev.id, HAS)
        g.link(proc.id, dev.id, USES)


def _machine(g: Graph, n: NodeFacts, task_active: bool) -> GraphNode:
    node_id = f"{NODE}:{n.id}"
    if node_id in g.nodes:
        return g.nodes[node_id]
    attrs: dict[str, object] = {
        "hostname": n.hostname,
        "monitored": n.monitored,
        "up": n.up,
        "heartbeat_age_s": n.heartbeat_age_s,
        "problems": list(n.problems),
        "cpus": n.info.get("cpus"),
        "memory_bytes": n.info.get("memory_bytes"),
        "versions": dict(n.info.get("versions") or {}),
    }
    node = _node(g, node_id, NODE, n.id, node_health(n, task_active), attrs)
    node.metrics = dict(n.summary)
    node.events = _latest([e for e in n.events if not e.data.get("resource")])
    return node


def _component(
    g: Graph, n: NodeFacts, kind: str, label: str, resource: str, health: Health, **attrs: object
) -> GraphNode:
    node_id = f"{kind}:{n.id}:{resource}"
    dev = _node(g, node_id, kind, label, health, {"node": n.id, "resource": resource, **attrs})
    dev.metrics = dict(n.components.get(resource, {}))
    dev.events = _latest(component_events(n.events, resource))
    return dev


def _cpus(g: Graph, n: NodeFacts) -> GraphNode:
    """The node's CPUs as one device: the mean and busiest core of the latest samples."""
    cores = [m for r, m in n.components.items() if r.startswith("cpu") and r[3:].isdigit()]
    busy = [m["cpu_usage_ratio"] for m in cores if "cpu_usage_ratio" in m]
    metrics = {"cpu_usage_ratio": sum(busy) / len(busy), "cpu_busiest_core_ratio": max(busy)} if busy else {}
    events = [e for e in n.events if str(e.data.get("resource", "")).startswith("cpu")]
    count = n.info.get("cpus") or len(cores) or None
    node_id = f"{CPUS}:{n.id}"
    dev = _node(g, node_id, CPUS, f"{count or '?'} CPUs", cpus_health(metrics, events), {"node": n.id})
    dev.attrs["cores"] = count
    dev.metrics = metrics
    dev.events = _latest(events)
    return dev


def _devices(g: Graph, n: NodeFacts, p: ProcessFacts, data_path: str | None) -> list[GraphNode]:
    """The devices of node ``n`` that process ``p`` used."""
    comps = n.components
    out = [_cpus(g, n)]
    mem_health = memory_health(comps.get("memory", {}), component_events(n.events, "memory"))
    out.append(_component(g, n, MEMORY, "RAM", "memory", mem_health))
    mount = filesystem_for(data_path, [r.removeprefix("fs:") for r in comps if r.startswith("fs:")])
    if mount is not None:
        res = f"fs:{mount}"
        health = filesystem_health(comps.get(res, {}), component_events(n.events, res), mount)
        out.append(_component(g, n, FILESYSTEM, mount, res, health, mount=mount))
    names = {int(d.get("index", -1)): str(d.get("name", "")) for d in n.info.get("gpus") or []}
    for i in p.gpus:
        res = f"gpu{i}"
        health = gpu_health(comps.get(res, {}), component_events(n.events, res), res)
        label = f"{res} {names.get(i, '')}".strip()
        out.append(_component(g, n, GPU, label, res, health, index=i, model=names.get(i) or None))
    return out
