"""``onebox serve``, ``deploy``/``undeploy``, ``onebox deployments ...`` and ``onebox chat``.

Deploy commands write desired state to the store; the running ``onebox serve`` starts the
workers. ``chat`` is a client of a running gateway (any OpenAI-compatible server works).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from onebox.cli.output import console, err_console, print_json
from onebox.cli.state import JsonOpt, get_app, settings
from onebox.errors import InvalidInputError, NotFoundError, OneboxError, Problem, UnavailableError
from onebox.services import deployments

deployments_app = typer.Typer(
    help="Deployments: list, show, scale, add or remove LoRA adapters.", no_args_is_help=True
)

STATUS_STYLE = {
    "ready": "green",
    "starting": "yellow",
    "degraded": "magenta",
    "failed": "red",
    "stopped": "dim",
}
DEFAULT_URL = "http://127.0.0.1:8000"


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _adapters_text(d: dict[str, Any]) -> str:
    parts = []
    for a in d["adapters"]:
        if a["error"]:
            parts.append(f"[red]{a['name']} (unavailable)[/]")
        else:
            parts.append(f"{a['name']} ({a['version']})" if a["ref"] == a["name"] else a["version"])
    return ", ".join(parts) or "-"


def _print_deployment(d: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("name", d["name"])
    table.add_row("status", _styled(d["status"]))
    table.add_row("kind", d["kind"])
    table.add_row("model", f"{d['model']}" + (f"  (deployed as {d['requested']})" if d["requested"] else ""))
    table.add_row("adapters", _adapters_text(d))
    table.add_row("model ids", ", ".join(d["model_ids"]))
    table.add_row("replicas", str(d["replicas"]))
    if d.get("engine"):
        table.add_row("engine", json.dumps(d["engine"]))
    if "restarts" in d:
        table.add_row("restarts", str(d["restarts"]))
    table.add_row("id", d["id"])
    table.add_row("created", d["created_at"][:19].replace("T", " "))
    console.print(table)
    for ev in d.get("events", [])[-10:]:
        style = {"error": "red", "warning": "yellow"}.get(ev["severity"], "dim")
        first = ev["message"].splitlines()[0] if ev["message"] else ""
        console.print(f"  [{style}]{ev['created_at'][:19].replace('T', ' ')}  {ev['kind']:<28} {first}[/]")


def _server_note() -> str | None:
    from onebox.serve.supervisor import is_running

    if is_running(settings()):
        return None
    return "no `onebox serve` is running for this home: start it to run the workers"


def _wait(name: str, timeout: float, json_out: bool) -> dict[str, Any]:
    """Poll until the deployment is ready or failed (exit 11 when it fails or times out)."""
    app = get_app()
    deadline = time.monotonic() + timeout
    with err_console.status(f"starting {name}...", spinner="dots") if not json_out else _null():
        while True:
            d = deployments.show(app, name)
            if d["status"] in ("ready", "failed", "stopped") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    if d["status"] == "failed":
        why = next((e["message"] for e in reversed(d["events"]) if e["kind"] == "deployment.failed"), "")
        raise UnavailableError(f"deployment {name} failed to start: {why}")
    if d["status"] not in ("ready", "stopped"):
        raise UnavailableError(f"deployment {name} is still {d['status']} after {timeout:.0f} s")
    return d


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate (chain): serve HTTPS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option("--tls-client-ca", help="PEM CA bundle: require client certificates it signed (mTLS)."),
    ] = None,
) -> None:
    """Run the gateway: OpenAI-compatible /v1, control plane /api/v1, and the deployments' workers.

    With --tls-cert and --tls-key it serves HTTPS (checked before anything starts); add
    --tls-client-ca to admit only clients with a certificate from that CA. Ctrl-C stops the
    workers and the gateway."""
    import uvicorn

    from onebox.api.app import create_app
    from onebox.security.tls import is_loopback, tls_options
    from onebox.serve.supervisor import is_running

    tls, warnings = tls_options(tls_cert, tls_key, tls_client_ca)
    if is_running(settings()):
        from onebox.errors import ConflictError

        raise ConflictError(f"a onebox server already runs the deployments of {settings().home}")
    if not tls and not is_loopback(host):
        warnings.append(
            f"serving plain HTTP on {host}: API keys, passwords and data cross the network unencrypted; "
            "pass --tls-cert and --tls-key"
        )
    for w in warnings:
        err_console.print(f"[bold yellow]warning:[/] {w}", highlight=False)
    scheme = "https" if tls else "http"
    mtls = " (client certificates required)" if tls_client_ca else ""
    err_console.print(f"onebox gateway on {scheme}://{host}:{port}{mtls} (docs at /docs); Ctrl-C stops it")
    uvicorn.run(
        create_app(settings()),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=30,
        **tls,
    )


def _parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(
                Problem("--set", f"{item!r} is not key=value", "write e.g. --set max_num_batched_tokens=512")
            )
            continue
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    if problems:
        raise InvalidInputError("invalid --set options", problems=problems)
    return out


def deploy_command(
    ref: Annotated[str, typer.Argument(help="Model to serve: name, name:version or name@alias.")],
    name: Annotated[
        str | None, typer.Option(help="Deployment name = the model id clients use (default: the model's).")
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", "-a", help="LoRA adapter of the same base (repeatable; name:3 pins)."),
    ] = None,
    replicas: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    max_model_len: Annotated[int | None, typer.Option(help="Longest prompt + output, in tokens.")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Most requests decoding at once.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float16 or float32.")] = None,
    weight_quantization: Annotated[
        str | None,
        typer.Option(
            help="none, or int8: int8 weight-only copies for decode steps (~1.7x tokens/s at batch 1, CPU)."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Any other engine option, key=value (repeatable), e.g. max_num_batched_tokens=512."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the workers are ready.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 600.0,
    json_out: JsonOpt = False,
) -> None:
    """Deploy a model version (a LoRA adapter deploys its base with it); `onebox serve` runs it."""
    engine: dict[str, Any] = _parse_sets(set_ or [])
    engine.update(
        {k: v for k, v in {"max_model_len": max_model_len, "max_num_seqs": max_num_seqs, "dtype": dtype,
                           "weight_quantization": weight_quantization}.items() if v is not None}
    )  # fmt: skip
    d = deployments.deploy(
        get_app(), ref, name=name, adapters=adapter or [], replicas=replicas, engine=engine
    )
    note = _server_note()
    if wait and note is None and replicas:
        d = {**_wait(d["name"], timeout, json_out), "events": None}
    if json_out:
        print_json({k: v for k, v in d.items() if v is not None})
        return
    ids = ", ".join(d["model_ids"])
    console.print(f"deployed {d['model']} as [bold]{d['name']}[/] ({_styled(d['status'])}); model ids: {ids}")
    if note:
        err_console.print(f"[yellow]note:[/] {note}")


def undeploy_command(
    name: Annotated[str, typer.Argument(help="Deployment name.")], json_out: JsonOpt = False
) -> None:
    """Remove a deployment; the server stops its workers."""
    d = deployments.delete(get_app(), name)
    if json_out:
        print_json(d)
        return
    console.print(f"undeployed {d['name']}")


@deployments_app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """List deployments with status, model, adapters and replicas."""
    rows = deployments.list_deployments(get_app())
    if json_out:
        print_json(rows)
        return
    table = Table("name", "status", "kind", "model", "adapters", "replicas", "created")
    for d in rows:
        table.add_row(
            d["name"],
            _styled(d["status"]),
            d["kind"],
            d["model"],
            _adapters_text(d),
            str(d["replicas"]),
            d["created_at"][:19].replace("T", " "),
        )
    console.print(table)
    if not rows:
        console.print("no deployments; create one with `onebox deploy <model>`")


@deployments_app.command()
def show(name: Annotated[str, typer.Argument(help="Deployment name.")], json_out: JsonOpt = False) -> None:
    """Show a deployment: model, adapters and their versions, restarts, recent events."""
    d = deployments.show(get_app(), name)
    if json_out:
        print_json(d)
        return
    _print_deployment(d)


@deployments_app.command()
def scale(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    replicas: Annotated[int, typer.Argument(help="Worker processes wanted (0 stops them).")],
    json_out: JsonOpt = False,
) -> None:
    """Change the number of worker processes (also retries a failed deployment)."""
    d = deployments.scale(get_app(), name, replicas)
    if json_out:
        print_json(d)
        return
    console.print(f"{d['name']}: {d['replicas']} replicas ({_styled(d['status'])})")


@deployments_app.command("add-adapter")
def add_adapter(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    adapter: Annotated[str, typer.Argument(help="LoRA adapter (name follows new versions; name:3 pins).")],
    json_out: JsonOpt = False,
) -> None:
    """Serve another LoRA adapter of the deployment's base; running workers load it, no restart."""
    d = deployments.add_adapter(get_app(), name, adapter)
    if json_out:
        print_json(d)
        return
    console.print(f"{d['name']} now serves: {', '.join(d['model_ids'])}")


@deployments_app.command("remove-adapter")
def remove_adapter(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    adapter: Annotated[str, typer.Argument(help="Adapter name.")],
    json_out: JsonOpt = False,
) -> None:
    """Stop serving an adapter (requests already running with it finish)."""
    d = deployments.remove_adapter(get_app(), name, adapter)
    if json_out:
        print_json(d)
        return
    console.print(f"{d['name']} now serves: {', '.join(d['model_ids'])}")


# -- chat -----------------------------------------------------------------------------------------


def _api_error(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return str(err.get("message") or err)
    except ValueError:
        return resp.text[:500] or f"HTTP {resp.status_code}"


def _stream_reply(client: httpx.Client, body: dict[str, Any]) -> str:
    """Print the reply as it streams; returns it (raises OneboxError on an API error)."""
    out: list[str] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            raise OneboxError(f"the server answered {resp.status_code}: {_api_error(resp)}")
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise OneboxError(f"the stream failed: {chunk['error'].get('message')}")
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") or ""
                out.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(out)


def chat_command(
    model: Annotated[str, typer.Argument(help="Model id: a deployment name or one of its adapters.")],
    url: Annotated[str, typer.Option(help="The gateway's address.")] = DEFAULT_URL,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest reply in tokens.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0 = greedy).")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="ONEBOX_API_KEY", help="API key (obx_...); env ONEBOX_API_KEY.")
    ] = None,
) -> None:
    """Chat with a served model in the terminal (streamed). /reset forgets the history, /exit quits."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(base_url=url.rstrip("/"), timeout=httpx.Timeout(10.0, read=600.0), headers=headers)
    try:
        resp = client.get("/v1/models")
        if resp.status_code in (401, 403):
            from onebox.errors import AuthenticationError

            raise AuthenticationError(
                f"{url} refused the credentials: {_api_error(resp)}; pass --api-key or set ONEBOX_API_KEY "
                "(create one with `onebox keys create --user <you>`)"
            )
        ids = [m["id"] for m in resp.raise_for_status().json()["data"]]
    except httpx.HTTPError as exc:
        raise UnavailableError(
            f"no onebox server answers at {url} ({type(exc).__name__}); start one with `onebox serve`"
        ) from exc
    if model not in ids:
        raise NotFoundError(f"{url} serves no model {model!r}; models: {', '.join(ids) or 'none'}")
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    err_console.print(f"chatting with [bold]{model}[/] at {url}; /reset clears the history, /exit quits")
    while True:
        try:
            line = console.input("[bold cyan]you>[/] ").strip()
        except EOFError:
            break
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = list(base)
            err_console.print("[dim]history cleared[/]")
            continue
        history.append({"role": "user", "content": line})
        body: dict[str, Any] = {"model": model, "messages": history, "stream": True}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        console.print(f"[bold green]{model}>[/] ", end="")
        try:
            reply = _stream_reply(client, body)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            err_console.print("[dim](interrupted)[/]")
            history.pop()
            continue
        except httpx.HTTPError as exc:
            history.pop()
            raise UnavailableError(f"lost the connection to {url}: {exc}") from exc
        except OneboxError as exc:
            sys.stdout.write("\n")
            err_console.print(f"[red]error:[/] {exc.message}", highlight=False)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
    client.close()
