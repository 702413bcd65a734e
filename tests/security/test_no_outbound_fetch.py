"""No endpoint fetches a URL a client chose (SSRF): a tripwire over the server-side source.

Every outbound network call in the code the server runs (everything but the CLI, whose clients
talk to a URL their own operator typed) is listed below with where its address comes from. A new
call fails this test until someone checks that no request data can steer it and adds it here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import onebox

ROOT = Path(onebox.__file__).parent
NET_MODULES = {"httpx", "requests", "urllib", "urllib3", "aiohttp", "http", "websockets"}
NET_CALLS = {"urlopen", "snapshot_download", "hf_hub_download", "build_request", "create_connection", "fetch"}
NOT_FETCHES = ("Error", "Timeout", "Limits", "HTTPStatusError", "URL", "Headers")

ALLOWED: dict[tuple[str, str, str], str] = {
    ("api/app.py", "_send", "build_request"): "replica.url: a worker the supervisor started on 127.0.0.1",
    ("api/app.py", "create_app.lifespan", "httpx.AsyncClient"): "the client _send uses (worker URLs only)",
    ("serve/supervisor.py", "start", "httpx.AsyncClient"): "health and stats of the supervisor's own workers",
    ("serve/supervisor.py", "worker_stats", "httpx.AsyncClient"): "stats of the supervisor's own workers",
    ("services/kbs.py", "http_generator.generate", "httpx.post"): (
        "called with replica.url (kbs_routes) or by the CLI with its operator's --url; never request data"
    ),
    ("monitor/webhooks.py", "_run", "httpx.Client"): (
        "alert webhooks: URLs only from the operator's rules file or ONEBOX_ALERT_WEBHOOKS; no route sets one"
    ),
    ("models/hub.py", "download", "snapshot_download"): (
        "the Hugging Face hub (fixed host) by an owner/name id; no /api route registers models by hub id"
    ),
}


class _Visitor(ast.NodeVisitor):
    """Collects (file, enclosing function, call) for calls that open network connections."""

    def __init__(self, rel: str, found: set[tuple[str, str, str]]) -> None:
        self.rel, self.found = rel, found
        self.stack: list[str] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        f, name = node.func, None
        if isinstance(f, ast.Attribute):
            base = f.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in NET_MODULES:
                name = f"{base.id}.{f.attr}"
            elif f.attr in NET_CALLS:
                name = f.attr
        elif isinstance(f, ast.Name) and f.id in NET_CALLS:
            name = f.id
        if name and not name.endswith(NOT_FETCHES):
            self.found.add((self.rel, ".".join(self.stack) or "<module>", name))
        self.generic_visit(node)


def outbound_calls() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith("cli/"):
            _Visitor(rel, found).visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_every_outbound_call_is_reviewed() -> None:
    found = outbound_calls()
    new = sorted(found - set(ALLOWED))
    assert not new, (
        f"outbound network calls not reviewed for SSRF (add to ALLOWED with the URL's origin): {new}"
    )


def test_the_gateway_proxies_only_to_replicas() -> None:
    # the address _send and the KB generator use is a replica's, which the supervisor made
    src = (ROOT / "api" / "app.py").read_text(encoding="utf-8")
    assert 'client.build_request("POST", replica.url + path' in src
    kbs_routes = (ROOT / "api" / "kbs_routes.py").read_text(encoding="utf-8")
    assert "kbs.http_generator(replica.url," in kbs_routes
