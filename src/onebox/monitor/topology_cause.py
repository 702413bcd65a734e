"""The probable cause of an unhealthy task: walk from the task down what it ran on (its processes,
their node, the devices they used) and up what it depends on (the gateway routing to it, its
inputs), and name the most severe, most specific unhealthy thing found.

Severity first (a critical worker outranks a disk at 91%), then specificity (the GPU that threw
ECC errors or the disk that filled outranks the node they sit in, which outranks the worker that
died of them), then nearness to the task. With nothing unhealthy below it, the task is its own
cause (a bug in the job, a bad input file).
"""

from __future__ import annotations

from collections import deque

from onebox.monitor.topology_graph import (
    ADAPTER,
    CPUS,
    DATASET_VERSION,
    FILESYSTEM,
    GATEWAY,
    GPU,
    HAS,
    INPUT,
    MEMORY,
    MODEL_VERSION,
    NODE,
    PROCESS,
    ROUTES,
    RUNS_AS,
    RUNS_ON,
    USES,
    WARNING,
    Cause,
    Graph,
    rank,
)

SPECIFICITY = {
    GPU: 6,
    FILESYSTEM: 6,
    MEMORY: 5,
    CPUS: 4,
    NODE: 3,
    GATEWAY: 3,
    PROCESS: 2,
    MODEL_VERSION: 1,
    ADAPTER: 1,
    DATASET_VERSION: 1,
}
"""How directly a kind of node explains a failure: a device is the root of what its node and the
worker on it show; a gateway that is down takes the deployment's workers (its children) with it."""

DOWN = (RUNS_AS, RUNS_ON, USES, HAS)
"""Edges followed from source to target: what the task ran on."""
UP = (ROUTES, INPUT)
"""Edges followed from target to source: what the task depends on."""


def _walk(g: Graph) -> dict[str, list[str]]:
    """Breadth-first from the task: node id -> the shortest path of ids leading to it."""
    paths = {g.root: [g.root]}
    queue = deque([g.root])
    while queue:
        here = queue.popleft()
        nxt = [e.target for e in g.out(here, *DOWN)] + [e.source for e in g.into(here, *UP)]
        for other in nxt:
            if other not in paths and other in g.nodes:
                paths[other] = [*paths[here], other]
                queue.append(other)
    return paths


def probable_cause(g: Graph) -> Cause | None:
    """The cause of the task's trouble, or None while the task is healthy (or merely unknown)."""
    task = g.task
    if rank(task.health) < rank(WARNING):
        return None
    paths = _walk(g)
    suspects = [
        g.nodes[i]
        for i in paths
        if i != g.root and rank(g.nodes[i].health) >= rank(WARNING) and g.nodes[i].kind in SPECIFICITY
    ]
    if suspects:
        best = max(
            suspects,
            key=lambda n: (rank(n.health), SPECIFICITY[n.kind], -len(paths[n.id])),
        )
        if rank(best.health) >= rank(task.health):  # a warning does not explain a failure
            return _cause(best.id, g, paths[best.id])
    return _cause(g.root, g, [g.root])


def _cause(node_id: str, g: Graph, path: list[str]) -> Cause:
    n = g.nodes[node_id]
    reason = n.reasons[0] if n.reasons else n.health
    return Cause(node=n.id, kind=n.kind, label=n.label, health=n.health, reason=reason, path=path)
