"""A small box for the search tests, written straight into the store: two projects with models,
versions and their lineage, a dataset, a training job with a log, a deployment, a knowledge base,
a node, events and users."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from onebox.monitor.search_docs import KbDocument
from onebox.services.context import App
from onebox.services.projects import ensure_project
from onebox.store.tables import (
    Dataset,
    DatasetVersion,
    Deployment,
    Event,
    Job,
    KnowledgeBase,
    Membership,
    Model,
    ModelVersion,
    Node,
    User,
    new_id,
)

LOG = [
    "loading base model qwen-finance:1",
    "step 10/100 loss 2.31",
    "开始训练：客服对话数据集",
    "step 100/100 loss 0.87",
]
KB_DOCS = {
    "manual.pdf": KbDocument("d1", "docs/manual.pdf", "VX-200 产品手册", "pdf", ("产品",)),
    "faq.md": KbDocument("d2", "docs/faq.md", "Frequently asked questions", "markdown"),
}


@dataclass
class Box:
    pid: str
    qid: str
    ids: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    kb_docs: dict[str, list[KbDocument]] = field(default_factory=dict)

    def kb_documents(self, kb: KnowledgeBase) -> list[KbDocument] | None:
        return self.kb_docs.get(kb.id, [])


def _model(s, pid: str, name: str, kind: str = "chat", description: str = "") -> Model:  # type: ignore[no-untyped-def]
    m = Model(
        id=new_id("mdl"), project_id=pid, name=name, name_key=name.lower(), status="ready", kind=kind,
        description=description,
    )  # fmt: skip
    s.add(m)
    s.flush()
    return m


def _version(s, m: Model, n: int, **kw: object) -> ModelVersion:  # type: ignore[no-untyped-def]
    mv = ModelVersion(
        id=new_id("mv"), project_id=m.project_id, model_id=m.id, name=f"v{n}", version=n, status="ready",
        **{"format": "safetensors", **kw},
    )  # fmt: skip
    s.add(mv)
    s.flush()
    return mv


def _user(s, name: str, memberships: dict[str, str], is_admin: bool = False) -> User:  # type: ignore[no-untyped-def]
    u = User(
        id=new_id("usr"), username=name, display_name=name.title(), password_hash="x", is_admin=is_admin,
        status="active",
    )  # fmt: skip
    s.add(u)
    s.flush()
    for pid, role in memberships.items():
        s.add(Membership(user_id=u.id, project_id=pid, role=role))
    return u


def fill(app: App, tmp: Path, *, users: bool = True) -> Box:
    with app.db.session() as s:
        box = Box(ensure_project(s, "default").id, ensure_project(s, "team-b").id)
        pid, qid, ids = box.pid, box.qid, box.ids
        qwen = _model(s, pid, "qwen-finance", description="金融问答模型 for bank customer service")
        emb = _model(s, pid, "minilm", kind="embedding")
        base = _version(s, qwen, 1, source="/models/qwen2-0.5b", architecture="Qwen2ForCausalLM")
        emb_v = _version(s, emb, 1, format="st")
        ds = Dataset(id=new_id("ds"), project_id=pid, name="客服对话", name_key="客服对话", status="ready")
        s.add(ds)
        s.flush()
        dv = DatasetVersion(
            id=new_id("dv"), project_id=pid, dataset_id=ds.id, name="v1", version=1, status="ready",
            content_hash="h1", manifest_digest="m1", schema="messages", source_format="jsonl",
            source_name="support_dialogs.jsonl",
        )  # fmt: skip
        s.add(dv)
        s.flush()
        box.log = tmp / "job.log"
        box.log.write_text("".join(line + "\n" for line in LOG), encoding="utf-8")
        job = Job(
            id=new_id("job"), project_id=pid, name="sft-finance", status="succeeded", type="sft",
            input_model_version_id=base.id, input_dataset_version_id=dv.id, log_path=str(box.log),
            host=socket.gethostname(), spec={"base": "qwen-finance:1", "dataset": "客服对话:1"},
        )  # fmt: skip
        s.add(job)
        s.flush()
        tuned = _version(
            s, qwen, 2, format="lora", base_version_id=base.id, dataset_version_id=dv.id, job_id=job.id
        )
        dep = Deployment(
            id=new_id("dep"), project_id=pid, name="finance-bot", status="running", model_version_id=tuned.id,
            config={"model": "qwen-finance:2", "adapters": {}},
        )  # fmt: skip
        kb = KnowledgeBase(
            id=new_id("kb"), project_id=pid, name="产品手册库", status="ready", description="product manuals",
            embedding_version_id=emb_v.id, config={"embedding": "minilm:1"},
        )  # fmt: skip
        node = Node(id="rack-7", hostname=socket.gethostname(), versions={"onebox": "0.1"}, info={"gpus": []})
        s.add_all([dep, kb, node])
        s.flush()
        s.add(
            Event(
                id=new_id("evt"), project_id=None, resource_type="node", resource_id="rack-7",
                kind="alert.firing", severity="error", message="disk /data above 95% on rack-7",
            )
        )  # fmt: skip
        secret = _model(s, qid, "qwen-secret", description="team-b only 机密模型")
        secret_job = Job(
            id=new_id("job"), project_id=qid, name="secret-train", status="succeeded", type="sft",
            log_path=str(tmp / "secret.log"),
        )  # fmt: skip
        (tmp / "secret.log").write_text("token zebra-42 loaded\n")
        s.add(secret_job)
        s.flush()
        ids.update(
            qwen=qwen.id, base=base.id, tuned=tuned.id, emb=emb_v.id, dataset=ds.id, dv=dv.id, job=job.id,
            dep=dep.id, kb=kb.id, secret=secret.id, secret_job=secret_job.id,
        )  # fmt: skip
        box.kb_docs[kb.id] = list(KB_DOCS.values())
        if users:
            ids["root"] = _user(s, "root", {pid: "admin"}, is_admin=True).id
            ids["alice"] = _user(s, "alice", {pid: "admin"}).id
            ids["bob"] = _user(s, "bob", {pid: "viewer"}).id
            ids["carol"] = _user(s, "carol", {qid: "developer"}).id
    return box
