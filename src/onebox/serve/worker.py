"""One deployment replica: ``python -m onebox.serve.worker --deployment <id> --replica <n> --port <p>``.

Started by the supervisor (``onebox.serve.supervisor``) with the gateway's settings in its
environment. It checks out the deployment's model version and adapters, builds the text service
(or the embedding engine), and serves the worker HTTP app on ``127.0.0.1:<port>`` until SIGTERM
(graceful: uvicorn stops accepting, in-flight requests finish, the engine shuts down). It exits
on its own when the supervisor that started it goes away, so a killed gateway leaves no orphans.

``--adapter name=<model version id>`` pins exactly which adapter versions to load (the supervisor
passes the ones it resolved, so it knows what each worker holds); without it the worker resolves
the deployment's adapters itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

# OpenMP keeps its default waits (spin briefly, then sleep): PASSIVE (sleep at once) cost 25% of
# decode speed, ACTIVE (spin forever) starves the gateway sharing the cores. The engine does all its
# PyTorch work on one thread so libgomp keeps spinning at all (see onebox.engine.async_engine).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("onebox.serve.worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m onebox.serve.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--deployment", required=True, help="deployment id (dep_...)")
    p.add_argument("--replica", type=int, default=0, help="replica index (for logs)")
    p.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        metavar="NAME=VERSION_ID",
        help="adapter version to load (repeatable); default: resolve the deployment's adapters",
    )
    return p.parse_args(argv)


def _pinned(values: list[str] | None) -> dict[str, str] | None:
    if values is None:
        return None
    out = {}
    for v in values:
        name, sep, version_id = v.partition("=")
        if not sep or not name or not version_id:
            raise SystemExit(f"--adapter must be NAME=VERSION_ID, got {v!r}")
        out[name] = version_id
    return out


def _version_ref(app: Any, version_id: str) -> str:
    from onebox.store.tables import Model, ModelVersion

    with app.db.session() as s:
        mv = s.get_one(ModelVersion, version_id)
        return f"{s.get_one(Model, mv.model_id).name}:{mv.version}"


def build_asgi(deployment_id: str, adapters: dict[str, str] | None = None) -> Any:
    """Open the store, check out the model (and adapters) and build the worker's FastAPI app."""
    from onebox.api.worker_app import create_worker_app
    from onebox.services import deployments, models
    from onebox.services.context import open_app

    app = open_app(migrate=False)
    try:
        spec = deployments.worker_spec(app, deployment_id)
        app = app.in_project(deployments.project_name(app, spec.project_id))  # resolve refs where it lives
        log.info("deployment %s: checking out %s", spec.name, spec.model_ref)
        # Both engines read weights through sealed pointers (decrypted in memory) when the store
        # is encrypted: the text engine natively, the embedding engine through models.pretrained.
        model_dir = models.checkout(app, spec.model_ref, weights_in_memory=True)
        if spec.kind == "embedding":
            from onebox.engine.embeddings import EmbeddingEngine

            embed = EmbeddingEngine.from_model_dir(model_dir)
            return create_worker_app(deployment=spec.name, embed=embed, embed_names=[spec.name])
        if adapters is None:
            refs = {a.name: a.version_ref for a in spec.adapters.values()}
            for name, why in spec.adapter_errors.items():
                log.warning("adapter %s not loaded: %s", name, why)
        else:
            refs = {name: _version_ref(app, vid) for name, vid in adapters.items()}
        paths: dict[str, Path] = {}
        for name, ref in refs.items():
            log.info("checking out adapter %s (%s)", name, ref)
            paths[name] = models.checkout(app, ref, weights_in_memory=True)
        from onebox.engine.config import engine_config
        from onebox.serve.textgen import build_text_service

        config = engine_config(**spec.engine, adapters=paths)
        log.info("building the engine for %s (%s)", spec.name, config.model_dump(exclude={"adapters"}))
        service = build_text_service(deployment=spec.name, model_dir=model_dir, engine_config=config)
        return create_worker_app(deployment=spec.name, text=service)
    finally:
        app.close()


def _watch_parent(server: Any, parent: int) -> None:
    """Stop when the process that started us is gone (the gateway was killed)."""
    while not server.should_exit:
        if os.getppid() != parent:
            log.warning("parent process %d is gone; shutting down", parent)
            server.should_exit = True
            return
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s [replica {args.replica}] %(name)s: %(message)s"
    )
    import uvicorn

    from onebox.errors import OneboxError

    parent = os.getppid()
    try:
        asgi = build_asgi(args.deployment, _pinned(args.adapter))
    except OneboxError as exc:
        log.error("cannot start: %s", exc)
        return 3
    config = uvicorn.Config(
        asgi,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    server = uvicorn.Server(config)  # handles SIGTERM/SIGINT: stop accepting, drain, lifespan shutdown
    threading.Thread(target=_watch_parent, args=(server, parent), daemon=True).start()
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
