"""Knowledge bases under ``/api/v1/kbs`` (thin over :mod:`onebox.services.kbs`), and the
``knowledge_base`` step of the gateway's ``/v1/chat/completions``.

Uploads are parsed with the standard library's MIME parser (``python-multipart``, which FastAPI's
``UploadFile`` needs, is not a dependency), written to a staging folder, snapshotted into the KB and
indexed by an ingestion job; the response is that job (202), followed with ``/api/v1/jobs``-style
polling of ``GET /api/v1/kbs/{kb}``.

Grounding a chat request: the last user message is retrieved against the KB, the grounded prompt of
:func:`onebox.rag.answer.build_messages` replaces the messages, and the answer carries the numbered
sources and the citations parsed from its text in a non-standard top-level ``citations`` field
(for a stream: in one last chunk with no choices, before ``[DONE]``). When nothing relevant is found
no model is called and the fixed not-found answer comes back in the same shape.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from onebox.api.auth import onebox_for, principal_of
from onebox.errors import InputTooLargeError, InvalidInputError, OneboxError, Problem
from onebox.services import encryption, kbs

router = APIRouter(prefix="/api/v1/kbs", tags=["knowledge bases"])

MAX_UPLOAD_BYTES = 512 * 1024**2
"""Largest multipart body accepted by ``POST /documents`` (all files together)."""


# -- models -----------------------------------------------------------------------------------------


class KbCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Knowledge base name (Chinese or English; no spaces or : @ / \\).")
    description: str = Field(default="", description="Free text.")
    embedding: str | None = Field(
        default=None, description=f"Embedding model version (default {kbs.DEFAULT_EMBEDDING})."
    )
    chat_model: str | None = Field(
        default=None,
        description=f"Model `ask` answers with when none is named (default {kbs.DEFAULT_CHAT_MODEL}).",
    )
    chunk_tokens: int | None = Field(default=None, description="Chunk size in embedding-model tokens.")
    overlap_tokens: int | None = Field(
        default=None, description="Overlap between consecutive chunks (tokens)."
    )


class KbJobOut(BaseModel):
    id: str
    status: str
    progress: float | None = None


class KbEventOut(BaseModel):
    kind: str
    message: str
    severity: str
    created_at: str


class KbOut(BaseModel):
    id: str
    name: str
    description: str
    status: str = Field(description="ready, or error when its index cannot be opened.")
    embedding: str | None = Field(description="Embedding model version (name:N).")
    dim: int | None = Field(description="Vector dimensions.")
    chat_model: str | None = Field(description="Default model of `ask`.")
    chunk_tokens: int | None
    overlap_tokens: int | None
    index: str | None = Field(description="Where the index lives (folder or postgresql:// URL).")
    encrypted: bool = Field(
        default=False, description="Sources and embedded index encrypted at rest under the KB's data key."
    )
    documents: int | None = Field(description="Documents indexed.")
    chunks: int | None = Field(description="Chunks indexed.")
    bytes_on_disk: int | None
    created_at: str
    updated_at: str
    jobs: list[KbJobOut] | None = Field(default=None, description="Ingestion jobs queued or running.")
    events: list[KbEventOut] | None = None


class DocumentOut(BaseModel):
    doc_id: str
    source: str = Field(description="Path of the file inside the knowledge base (what filters name).")
    title: str
    format: str
    size_bytes: int
    chunks: int
    tags: list[str]
    content_hash: str = Field(description="sha256 of the file: unchanged files are skipped on re-upload.")
    modified: str | None
    added: str | None


class IngestJobOut(BaseModel):
    job: str = Field(description="The ingestion job; follow it with GET /api/v1/kbs/{kb} or `onebox jobs`.")
    status: str
    files: list[str] = Field(description="Documents the job adds or updates.")


class RemovedOut(BaseModel):
    removed: list[str]
    missing: list[str]


class FilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=list, description="Only these documents (by source).")
    tags: list[str] = Field(default_factory=list, description="Only documents with one of these tags.")
    modified_from: str | None = Field(default=None, description="Files modified on or after (ISO date).")
    modified_to: str | None = Field(default=None, description="Files modified before (ISO date).")

    def to_filter(self) -> Any:
        return kbs.search_filter(self.sources, self.tags, self.modified_from, self.modified_to)


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="What to look for, in any language.")
    k: int = Field(default=5, description=f"Hits to return (1-{kbs.MAX_K}).")
    mode: str = Field(default="hybrid", description="hybrid (lexical + dense, fused), lexical or dense.")
    filter: FilterIn = Field(default_factory=FilterIn, description="Metadata restrictions.")


class HitOut(BaseModel):
    rank: int
    score: float = Field(description="Fused (RRF) score in hybrid mode, else BM25 or cosine.")
    scores: dict[str, float] = Field(description="Per-retriever scores (lexical, dense, rrf).")
    via: str
    source: str
    title: str
    locator: str = Field(description="Place in the file: p. 3, sheet Q3, slide 2 (empty when none).")
    page_start: int | None
    page_end: int | None
    sheet: str | None
    slide: int | None
    heading_path: list[str]
    text: str
    chunk_id: str
    doc_id: str
    tags: list[str]


class SourceOut(HitOut):
    number: int = Field(description="The [n] of this source in the prompt and the answer.")
    cited: bool = Field(description="Whether the answer cites it.")
    inferred: bool = Field(default=False, description="Cited by matching, not by an [n] mark in the answer.")


class CitationOut(BaseModel):
    number: int
    chunk_id: str
    doc_id: str
    source: str
    title: str
    locator: str
    page_start: int | None
    page_end: int | None
    inferred: bool = Field(
        default=False, description="Matched to the answer's content because the model wrote no [n] marks."
    )


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The question, in any language.")
    k: int = Field(default=5, description="Passages to retrieve.")
    mode: str = Field(default="hybrid", description="hybrid, lexical or dense.")
    filter: FilterIn = Field(default_factory=FilterIn)
    model: str | None = Field(
        default=None, description="Model to answer with: a deployed model id, else loaded in the gateway."
    )
    max_tokens: int = Field(default=kbs.DEFAULT_MAX_ANSWER_TOKENS, ge=1, le=4096)


class AskOut(BaseModel):
    kb: str
    question: str
    answer: str
    not_found: bool = Field(description="True when the knowledge base does not hold the answer.")
    model: str | None = Field(description="The model that answered (None when none was needed).")
    via: str = Field(description="deployment, local (loaded in the gateway) or none.")
    citations: list[CitationOut]
    sources: list[SourceOut]


# -- helpers -------------------------------------------------------------------------------------------


async def _call(request: Request, fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, onebox_for(request), *args, **kw)


def deployed_generator(request: Request, model: str, max_tokens: int) -> kbs.Generate | None:
    """``generate`` through a ready worker of this gateway serving ``model``, or None if none does."""
    sup = getattr(request.app.state, "supervisor", None)
    if sup is None:
        return None
    try:
        route, _ = sup.pick(model, principal_of(request).project_id)
    except OneboxError:
        return None

    def generate(messages: list[dict[str, str]]) -> str:
        _, replica = sup.pick(route.model_id, route.project_id)
        replica.outstanding += 1
        try:
            return kbs.http_generator(replica.url, route.model_id, max_tokens=max_tokens)(messages)
        finally:
            replica.outstanding -= 1

    return generate


# -- routes ---------------------------------------------------------------------------------------------


@router.get("", response_model=list[KbOut], summary="List knowledge bases with counts")
async def list_kbs(request: Request) -> list[dict[str, Any]]:
    return await _call(request, kbs.list_kbs)  # type: ignore[no-any-return]


@router.post("", response_model=KbOut, status_code=status.HTTP_201_CREATED, summary="Create a knowledge base")
async def create_kb(request: Request, body: KbCreateIn) -> dict[str, Any]:
    return await _call(  # type: ignore[no-any-return]
        request,
        kbs.create,
        body.name,
        description=body.description,
        embedding=body.embedding,
        chat_model=body.chat_model,
        chunk_tokens=body.chunk_tokens,
        overlap_tokens=body.overlap_tokens,
    )


@router.get("/{kb}", response_model=KbOut, summary="Show a knowledge base, its ingestion jobs and events")
async def show_kb(request: Request, kb: str) -> dict[str, Any]:
    return await _call(request, kbs.show, kb)  # type: ignore[no-any-return]


@router.delete("/{kb}", response_model=KbOut, summary="Delete a knowledge base, its index and documents")
async def delete_kb(request: Request, kb: str) -> dict[str, Any]:
    return await _call(request, kbs.delete, kb)  # type: ignore[no-any-return]


@router.get("/{kb}/documents", response_model=list[DocumentOut], summary="List documents")
async def list_documents(request: Request, kb: str) -> list[dict[str, Any]]:
    return await _call(request, kbs.documents, kb)  # type: ignore[no-any-return]


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Documents (PDF, DOCX, XLSX, CSV, PPTX, HTML, MD, TXT, images). "
                            "A file name may hold a folder (`policies/travel.pdf`).",
                        },
                        "tags": {"type": "array", "items": {"type": "string"}, "description": "Tags to set."},
                        "sync": {
                            "type": "boolean",
                            "description": "Make the KB hold exactly these files (others are removed).",
                        },
                        "ocr": {"type": "boolean", "description": "OCR images and scans (default true)."},
                    },
                }
            }
        },
    }
}


def _parse_multipart(content_type: str, body: bytes) -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
    """(filename, bytes) of each file part and the text fields; bad bodies are a clear 400."""
    if not content_type.startswith("multipart/form-data"):
        raise InvalidInputError(
            "upload documents as multipart/form-data",
            problems=[
                Problem("body", f"content type is {content_type or 'missing'!r}", "send files=@doc.pdf")
            ],
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise InvalidInputError("the multipart body cannot be read", problems=[Problem("body", "no parts")])
    files: list[tuple[str, bytes]] = []
    fields: dict[str, list[str]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        data = part.get_payload(decode=True) or b""
        if filename is not None:
            files.append((str(filename), data))
        elif name:
            fields.setdefault(str(name), []).append(data.decode("utf-8", errors="replace"))
    return files, fields


def _flag(fields: dict[str, list[str]], name: str, default: bool) -> bool:
    values = fields.get(name)
    if not values:
        return default
    v = values[-1].strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise InvalidInputError(
        "invalid form field", problems=[Problem(name, f"{values[-1]!r} is not true or false")]
    )


def _upload_name(filename: str) -> str:
    """The client's file name as a source: folders kept, anything unsafe reduced to the base name."""
    name = filename.replace("\\", "/").strip()
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or any(part.startswith(".") for part in p.parts):
        name = p.name
    return name


@router.post(
    "/{kb}/documents",
    response_model=IngestJobOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Upload documents (multipart); an ingestion job indexes them",
    openapi_extra=_UPLOAD_SCHEMA,
)
async def upload_documents(request: Request, kb: str) -> dict[str, Any]:
    declared = int(request.headers.get("content-length") or 0)
    if declared > MAX_UPLOAD_BYTES:
        raise InputTooLargeError(f"the upload is {declared:,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    body = await request.body()
    if len(body) > MAX_UPLOAD_BYTES:
        raise InputTooLargeError(f"the upload is {len(body):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    files, fields = _parse_multipart(request.headers.get("content-type", ""), body)
    if not files:
        raise InvalidInputError(
            "no files in the upload", problems=[Problem("files", "attach at least one file")]
        )
    tags = [t for v in fields.get("tags", []) for t in v.split(",")] if "tags" in fields else None
    sync, ocr = _flag(fields, "sync", False), _flag(fields, "ocr", True)
    onebox = onebox_for(request)
    # with encryption at rest the upload waits in private memory, not under the home folder
    staging = Path(tempfile.mkdtemp(dir=encryption.scratch_dir(onebox), prefix="kb-upload-"))
    try:
        items = []
        for filename, data in files:
            source = _upload_name(filename)
            path = staging / f"{len(items)}" / (PurePosixPath(source).name or "unnamed")
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
            items.append((source, path))
        job = await asyncio.to_thread(kbs.add, onebox, kb, items, tags=tags, sync=sync, ocr=ocr)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"job": job.id, "status": job.status, "files": [s for s, _ in items]}


@router.delete("/{kb}/documents/{source:path}", response_model=RemovedOut, summary="Remove a document")
async def remove_document(request: Request, kb: str, source: str) -> dict[str, Any]:
    return await _call(request, kbs.remove, kb, [source])  # type: ignore[no-any-return]


@router.post(
    "/{kb}/search", response_model=list[HitOut], summary="Search passages (hybrid, lexical or dense)"
)
async def search(request: Request, kb: str, body: SearchIn) -> list[dict[str, Any]]:
    flt = body.filter.to_filter()
    return await _call(request, kbs.search, kb, body.query, k=body.k, mode=body.mode, flt=flt)  # type: ignore[no-any-return]


@router.post("/{kb}/ask", response_model=AskOut, summary="Answer a question with citations")
async def ask(request: Request, kb: str, body: AskIn) -> dict[str, Any]:
    flt = body.filter.to_filter()
    onebox = onebox_for(request)
    model = body.model or await asyncio.to_thread(kbs.chat_model, onebox, kb)
    generate = deployed_generator(request, model, body.max_tokens)
    out: dict[str, Any] = await asyncio.to_thread(
        kbs.ask, onebox, kb, body.question, k=body.k, mode=body.mode, flt=flt, generate=generate,
        model=model, max_tokens=body.max_tokens,
    )  # fmt: skip
    out["via"] = "none" if out["model"] is None else ("deployment" if generate is not None else "local")
    return out


# -- the gateway's knowledge_base step ----------------------------------------------------------------


class KnowledgeBaseRef(BaseModel):
    """The ``knowledge_base`` field of a chat completion request (or just the KB's name)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Knowledge base to ground the answer in.")
    k: int = Field(default=5, description="Passages to retrieve.")
    mode: str = Field(default="hybrid", description="hybrid, lexical or dense.")
    filter: FilterIn = Field(default_factory=FilterIn)


@dataclass
class Grounding:
    """What a grounded chat request carries from retrieval to the response."""

    kb: str
    hits: list[Any] = field(default_factory=list)
    not_found: bool = False
    question: str = ""
    text: list[str] = field(default_factory=list)
    """Answer text seen so far in a stream (citations are parsed from it at the end)."""

    def extra(self, answer_text: str) -> dict[str, Any]:
        """The non-standard fields added to the response."""
        from onebox.rag.answer import attribute, parse_citations

        cites = []
        if not self.not_found:
            cites = parse_citations(answer_text, self.hits) or attribute(
                answer_text, self.question, self.hits
            )
        cited = {c.chunk_id for c in cites}
        return {
            "citations": [asdict(c) for c in cites],
            "knowledge_base": {
                "name": self.kb,
                "not_found": self.not_found,
                "sources": [
                    {**kbs.hit_dict(h, i), "cited": h.chunk.chunk_id in cited}
                    for i, h in enumerate(self.hits, 1)
                ],
            },
        }


def _kb_ref(value: Any) -> KnowledgeBaseRef:
    try:
        return (
            KnowledgeBaseRef(name=value) if isinstance(value, str) else KnowledgeBaseRef.model_validate(value)
        )
    except ValidationError as exc:
        problems = [
            Problem(".".join(["knowledge_base", *(str(x) for x in e["loc"])]), e["msg"]) for e in exc.errors()
        ]
        raise InvalidInputError("invalid knowledge_base", problems=problems) from None


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):  # content parts: keep the text ones
                    return " ".join(
                        str(p.get("text", ""))
                        for p in content
                        if isinstance(p, dict) and p.get("type") == "text"
                    )
    raise InvalidInputError(
        "knowledge_base needs a question",
        problems=[Problem("messages", "has no user message to retrieve with", "end with a user message")],
    )


async def ground(request: Request, payload: dict[str, Any]) -> Grounding:
    """Pop ``knowledge_base`` from ``payload``, retrieve with the last user message, and replace
    ``messages`` with the grounded prompt (unless nothing relevant was found)."""
    from onebox.rag.answer import below_threshold, build_messages

    ref = _kb_ref(payload.pop("knowledge_base"))
    question = _last_user_text(payload.get("messages"))
    flt = ref.filter.to_filter()
    hits = await _call(request, kbs.retrieve, ref.name, question, k=ref.k, mode=ref.mode, flt=flt)
    if below_threshold(hits, question):
        return Grounding(ref.name, [], True)
    messages, used = build_messages(question, hits)
    payload["messages"] = messages
    return Grounding(ref.name, list(used), question=question)


def decorate_body(g: Grounding, content: bytes) -> bytes:
    """Add the citations to a whole (non-stream) chat completion."""
    try:
        body = json.loads(content)
        text = body["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return content
    body.update(g.extra(text))
    return json.dumps(body, ensure_ascii=False).encode()


class CitingRelay:
    """Re-frames an SSE stream event by event, collects the answer text, and puts a citations chunk
    just before ``[DONE]`` (or at the end when the stream has no ``[DONE]``)."""

    def __init__(self, g: Grounding, model: str) -> None:
        self.g = g
        self.model = model
        self.buf = b""
        self.done = False
        self.id = ""

    def feed(self, chunk: bytes) -> bytes:
        self.buf += chunk.replace(b"\r\n", b"\n")
        out = []
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            data = event.removeprefix(b"data: ").strip()
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                obj = json.loads(data)
                self.id = self.id or str(obj.get("id", ""))
                for ch in obj.get("choices") or []:
                    self.g.text.append((ch.get("delta") or {}).get("content") or "")
            except (ValueError, AttributeError, TypeError):
                pass
            out.append(event + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        last = {
            "id": self.id or f"chatcmpl-kb-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [],
            **self.g.extra("".join(self.g.text)),
        }
        tail = self.buf
        return tail + f"data: {json.dumps(last, ensure_ascii=False)}\n\n".encode() + b"data: [DONE]\n\n"


def not_found_response(g: Grounding, model: str, stream: bool) -> Response:
    """The fixed not-found answer in chat-completion shape, without calling a model."""
    from onebox.rag.answer import NOT_FOUND_MESSAGE

    rid, created = f"chatcmpl-kb-{uuid.uuid4().hex}", int(time.time())
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if not stream:
        body = {
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": NOT_FOUND_MESSAGE},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage, **g.extra(NOT_FOUND_MESSAGE),
        }  # fmt: skip
        return JSONResponse(body)

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": choices, **extra}  # fmt: skip
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

    async def events() -> Any:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": NOT_FOUND_MESSAGE},
                      "finish_reason": None}])  # fmt: skip
        yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        yield event([], **g.extra(NOT_FOUND_MESSAGE))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
