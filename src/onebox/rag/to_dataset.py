"""Turn knowledge-base passages into a question/answer training set and a retrieval evaluation set.

For each passage a model is asked (in the passage's language) for one question the passage
answers and its answer. Small models write weak questions, so every generation goes through a
filter and every decision is kept with its reasons: the review report is what a person reads
before training on the result. The filter is deliberately lexical and explainable:

- ``unparsable``: no "Question: ... Answer: ..." (问题：…答案：…) pair in the output;
- ``empty`` / ``too_long``: a side is blank, or longer than the limits;
- ``not_a_question``: no question mark and no question word;
- ``wrong_language``: a Chinese passage got a question without Chinese, or the reverse;
- ``answer_repeats_question``: the answer only restates the question;
- ``off_topic``: few of the question's content terms occur in the passage;
- ``not_grounded``: few of the answer's own content terms (those not already in the question) occur
  in the passage (the model made it up);
- ``duplicate``: the same question (ignoring case, spaces and punctuation) was already kept.

The model is injected as ``generate(messages) -> text``, as in :mod:`onebox.rag.answer`, so this
module knows nothing of engines, HTTP or the registry.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onebox.errors import ConfigError, ErrorList
from onebox.progress import ProgressFn, null_progress
from onebox.rag.answer import Generate, Message, query_terms

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_Q = r"(?:\bquestion|\bq|问题|问)"
_A = r"(?:\banswer|\ba|答案|回答|答)"
_PAIR = re.compile(
    rf"(?is)(?:^|\n)\s*[*#>\-\s]*{_Q}\s*\d*\s*[:：]\s*(?P<q>.+?)\s*\n?\s*[*#>\-\s]*{_A}\s*\d*\s*[:：]\s*(?P<a>.+)"
)
_QUESTION_WORD = re.compile(
    r"(?i)\b(what|which|who|whom|whose|when|where|why|how|is|are|does|do|did|can|could|should|will)\b|"
    r"什么|哪|谁|几|多少|多久|多长|如何|怎么|怎样|为什么|是否|吗|呢"
)
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)

REASONS = (
    "unparsable", "empty", "too_long", "not_a_question", "wrong_language", "answer_repeats_question",
    "off_topic", "not_grounded", "duplicate", "model_error",
)  # fmt: skip


@dataclass(frozen=True)
class Passage:
    """A chunk to ask about, with what a citation needs (plain data: no index types here)."""

    chunk_id: str
    doc_id: str
    source: str
    title: str
    locator: str
    text: str


@dataclass(frozen=True)
class QAOptions:
    """Generation and filter settings; the thresholds are on lexical overlap, see the module doc."""

    questions_per_chunk: int = 1
    max_question_chars: int = 200
    max_answer_chars: int = 600
    min_passage_chars: int = 30
    """Shorter passages (a lone heading, a page number) are skipped, not asked about."""
    max_passage_chars: int = 1500
    """The passage is cut to this in the prompt (small models lose the thread on long ones)."""
    min_question_overlap: float = 0.3
    """Share of the question's content terms that must occur in the passage."""
    min_answer_grounding: float = 0.6
    """Share of the answer's content terms that must occur in the passage."""
    max_new_tokens: int = 160

    def __post_init__(self) -> None:
        errs = ErrorList()
        if not 1 <= self.questions_per_chunk <= 5:
            errs.add("questions_per_chunk", f"is {self.questions_per_chunk}; must be 1 to 5")
        for name in ("max_question_chars", "max_answer_chars", "max_passage_chars", "max_new_tokens"):
            if getattr(self, name) < 1:
                errs.add(name, "must be at least 1")
        for name in ("min_question_overlap", "min_answer_grounding"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                errs.add(name, f"is {getattr(self, name)}; must be in [0, 1]")
        errs.raise_if_any("invalid question generation options", ConfigError)


@dataclass(frozen=True)
class Generation:
    """One model output for one passage and what the filter decided about it."""

    chunk_id: str
    doc_id: str
    source: str
    locator: str
    lang: str
    question: str
    answer: str
    raw: str
    kept: bool
    reasons: tuple[str, ...]
    question_overlap: float | None
    answer_grounding: float | None
    seconds: float


@dataclass
class QAResult:
    generations: list[Generation] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(chunk_id, why) for passages not asked about."""
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def kept(self) -> list[Generation]:
        return [g for g in self.generations if g.kept]

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for g in self.generations:
            for r in g.reasons:
                counts[r] = counts.get(r, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def summary(self) -> dict[str, Any]:
        n, k = len(self.generations), len(self.kept)
        return {
            "passages": len({g.chunk_id for g in self.generations}),
            "skipped_passages": len(self.skipped),
            "generations": n,
            "kept": k,
            "rejected": n - k,
            "keep_rate": round(k / n, 3) if n else 0.0,
            "rejected_by_reason": self.reason_counts(),
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 1),
        }

    def chat_rows(self) -> list[dict[str, Any]]:
        """Kept pairs in the ``messages`` schema the training recipes read."""
        return [
            {
                "messages": [
                    {"role": "user", "content": g.question},
                    {"role": "assistant", "content": g.answer},
                ]
            }
            for g in self.kept
        ]

    def eval_rows(self) -> list[dict[str, Any]]:
        """Retrieval evaluation set: each kept question with the chunk that answers it (gold)."""
        return [
            {"id": f"R{i:04d}", "question": g.question, "answer": g.answer, "lang": g.lang,
             "gold_chunk_id": g.chunk_id, "doc_id": g.doc_id, "source": g.source, "locator": g.locator}
            for i, g in enumerate(self.kept, start=1)
        ]  # fmt: skip


def language(text: str) -> str:
    """``zh`` when at least 30% of the letters are CJK, else ``en`` (what the prompt is written in)."""
    letters = [c for c in text if c.isalnum()]
    if not letters:
        return "en"
    return "zh" if sum(1 for c in letters if _CJK.match(c)) / len(letters) >= 0.3 else "en"


_SYSTEM = {
    "en": (
        "You write exam questions about a passage from a company document. Write one question that "
        "the passage answers, and its short answer taken from the passage. Use English. Reply in "
        "exactly this form:\nQuestion: <question>\nAnswer: <answer>"
    ),
    "zh": (
        "你根据公司文档中的一段内容出题。写一个这段内容能回答的问题，并给出取自这段内容的简短答案。"
        "用中文。严格按以下格式回复：\n问题：<问题>\n答案：<答案>"
    ),
}
_AVOID = {"en": "Ask about something else than:", "zh": "不要重复这些问题："}


def build_messages(
    passage: Passage, lang: str, avoid: Sequence[str] = (), max_chars: int = 1500
) -> list[Message]:
    """The prompt for one question about ``passage`` (in ``lang``), avoiding questions already asked."""
    head = f"{passage.title} ({passage.locator})" if passage.locator else passage.title
    body = passage.text if len(passage.text) <= max_chars else passage.text[:max_chars] + "…"
    user = f"{head}\n\n{body}" if head else body
    if avoid:
        user += f"\n\n{_AVOID[lang]}\n" + "\n".join(f"- {q}" for q in avoid)
    return [{"role": "system", "content": _SYSTEM[lang]}, {"role": "user", "content": user}]


def parse_pair(text: str) -> tuple[str, str] | None:
    """(question, answer) from "Question: … Answer: …" (or 问题：… 答案：…), or None."""
    m = _PAIR.search(text.strip())
    if m is None:
        return None
    q = m.group("q").strip().strip("*").strip()
    a = m.group("a").strip()
    # the model may go on with another pair: the answer ends where the next question starts
    nxt = re.search(rf"(?i)\n\s*[*#>\-\s]*{_Q}\s*\d*\s*[:：]", a)
    if nxt:
        a = a[: nxt.start()]
    return q, a.strip().strip("*").strip()


def _coverage(text: str, passage: str, ignore: str = "") -> float | None:
    """Share of ``text``'s content terms found in ``passage`` (None when it has none). Terms also in
    ``ignore`` are left out when others remain: an answer that restates its question and adds made-up
    facts is judged on the facts it adds."""
    terms = query_terms(text)
    own = terms - query_terms(ignore) if ignore else terms
    terms = own or terms
    if not terms:
        return None
    low = passage.lower()
    return sum(1 for t in terms if t in low) / len(terms)


def question_key(question: str) -> str:
    return _NOT_WORD.sub("", question.lower())


def check(
    question: str, answer: str, passage: Passage, lang: str, kept_keys: set[str], opts: QAOptions
) -> tuple[list[str], float | None, float | None]:
    """Reasons to reject the pair (empty list: keep it), with its question and answer overlaps."""
    reasons: list[str] = []
    if not question or not answer:
        return ["empty"], None, None
    if len(question) > opts.max_question_chars or len(answer) > opts.max_answer_chars:
        reasons.append("too_long")
    if "?" not in question and "？" not in question and not _QUESTION_WORD.search(question):
        reasons.append("not_a_question")
    if language(question) != lang and (lang == "en" or not _CJK.search(question)):
        reasons.append("wrong_language")
    if question_key(answer) and question_key(answer) in question_key(question):
        reasons.append("answer_repeats_question")
    text = f"{passage.title}\n{passage.text}"
    q_cov, a_cov = _coverage(question, text), _coverage(answer, text, ignore=question)
    if q_cov is not None and q_cov < opts.min_question_overlap:
        reasons.append("off_topic")
    if a_cov is None or a_cov < opts.min_answer_grounding:
        reasons.append("not_grounded")
    if question_key(question) in kept_keys:
        reasons.append("duplicate")
    return reasons, q_cov, a_cov


def generate_qa(
    passages: Sequence[Passage],
    generate: Generate,
    options: QAOptions | None = None,
    *,
    progress: ProgressFn = null_progress,
    cancel: Callable[[], bool] = lambda: False,
) -> QAResult:
    """Ask ``generate`` for questions about each passage and filter them (module doc has the rules)."""
    opts = options or QAOptions()
    result = QAResult()
    kept_keys: set[str] = set()
    t_all = time.perf_counter()
    total = len(passages) * opts.questions_per_chunk
    done = 0
    progress("questions", 0, total)
    for p in passages:
        if len(p.text.strip()) < opts.min_passage_chars:
            result.skipped.append((p.chunk_id, f"shorter than {opts.min_passage_chars} characters"))
            done += opts.questions_per_chunk
            progress("questions", done, total)
            continue
        lang = language(p.text)
        asked: list[str] = []
        for _ in range(opts.questions_per_chunk):
            if cancel():
                result.cancelled = True
                result.seconds = time.perf_counter() - t_all
                return result
            t0 = time.perf_counter()
            try:
                raw = generate(build_messages(p, lang, asked, opts.max_passage_chars))
            except Exception as exc:  # one failed call is a rejected row, not a lost run
                raw, pair = f"{type(exc).__name__}: {exc}", None
                reasons, q_cov, a_cov = ["model_error"], None, None
            else:
                pair = parse_pair(raw)
                if pair is None:
                    reasons, q_cov, a_cov = ["unparsable"], None, None
                else:
                    reasons, q_cov, a_cov = check(*pair, p, lang, kept_keys, opts)
            q, a = pair or ("", "")
            if q:
                asked.append(q)
            if not reasons:
                kept_keys.add(question_key(q))
            result.generations.append(
                Generation(
                    chunk_id=p.chunk_id, doc_id=p.doc_id, source=p.source, locator=p.locator, lang=lang,
                    question=q, answer=a, raw=raw, kept=not reasons, reasons=tuple(reasons),
                    question_overlap=None if q_cov is None else round(q_cov, 3),
                    answer_grounding=None if a_cov is None else round(a_cov, 3),
                    seconds=round(time.perf_counter() - t0, 2),
                )
            )  # fmt: skip
            done += 1
            progress("questions", done, total)
    result.seconds = time.perf_counter() - t_all
    return result


def verdict(summary: dict[str, Any]) -> str:
    """One honest sentence on the quality of the run, for the report's top."""
    n, rate = summary["generations"], summary["keep_rate"]
    if n == 0:
        return "No passage was asked about."
    if rate < 0.3:
        return (
            f"Only {summary['kept']} of {n} generations passed the filter: this model writes weak questions. "
            "Read the kept pairs before training on them, or generate with a larger model."
        )
    if rate < 0.7:
        return (
            f"{summary['kept']} of {n} generations passed the filter; the filter is lexical, so read the "
            "kept pairs before training on them."
        )
    return f"{summary['kept']} of {n} generations passed the filter; spot-check the kept pairs."


def _cell(text: str, limit: int = 160) -> str:
    one = " ".join(text.split()).replace("|", "\\|")
    return one if len(one) <= limit else one[: limit - 1] + "…"


def review_markdown(result: QAResult, title: str, header: dict[str, Any] | None = None) -> str:
    """The human review report: verdict, counts by reason, kept pairs, rejected ones with reasons."""
    s = result.summary()
    lines = [f"# {title}", "", verdict(s), ""]
    for k, v in (header or {}).items():
        lines.append(f"- {k}: {v}")
    lines += [
        f"- passages asked about: {s['passages']} ({s['skipped_passages']} skipped as too short)",
        f"- generations: {s['generations']}, kept {s['kept']}, rejected {s['rejected']}",
        "- rejected by reason: "
        + (", ".join(f"{r} {n}" for r, n in s["rejected_by_reason"].items()) or "none"),
        "",
        "## Kept",
        "",
        "| source | question | answer | q overlap | grounding |",
        "|---|---|---|---|---|",
    ]
    for g in result.kept:
        lines.append(
            f"| {_cell(f'{g.source} {g.locator}'.strip(), 60)} | {_cell(g.question)} | {_cell(g.answer)} "
            f"| {g.question_overlap} | {g.answer_grounding} |"
        )
    lines += ["", "## Rejected", "", "| source | reasons | model output |", "|---|---|---|"]
    for g in result.generations:
        if not g.kept:
            where = _cell(f"{g.source} {g.locator}".strip(), 60)
            lines.append(f"| {where} | {', '.join(g.reasons)} | {_cell(g.raw, 240)} |")
    return "\n".join(lines) + "\n"


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_outputs(
    result: QAResult, dest: Path, title: str, header: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``qa.jsonl`` (kept, chat schema), ``retrieval_eval.jsonl``, ``review.jsonl`` (every
    generation with its reasons) and ``review.md`` into ``dest``; returns them by name."""
    dest.mkdir(parents=True, exist_ok=True)
    out = {
        "qa.jsonl": dest / "qa.jsonl",
        "retrieval_eval.jsonl": dest / "retrieval_eval.jsonl",
        "review.jsonl": dest / "review.jsonl",
        "review.md": dest / "review.md",
    }
    _write_jsonl(out["qa.jsonl"], result.chat_rows())
    _write_jsonl(out["retrieval_eval.jsonl"], result.eval_rows())
    _write_jsonl(out["review.jsonl"], [{**asdict(g), "reasons": list(g.reasons)} for g in result.generations])
    out["review.md"].write_text(review_markdown(result, title, header), encoding="utf-8")
    return out
