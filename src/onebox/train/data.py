"""Training data: examples -> token ids with loss masks -> packed, deterministic micro-batches.

Loss masking. A chat is rendered with the tokenizer's own chat template and the loss is kept on
assistant turns only, including each turn's end-of-turn token (``<|im_end|>`` for ChatML) so the
model learns to stop. Assistant spans are found by rendering incremental prefixes of the
conversation and diffing them: ``render(msgs[:i], add_generation_prompt=True)`` ends where turn
``i`` begins and ``render(msgs[:i+1])`` ends where it ends. That works for any template that renders
prefixes as prefixes (ChatML, Llama 3, Gemma, Mistral...) and needs no ``{% generation %}`` markers;
templates that rewrite earlier turns fall back to locating each assistant message in the full
rendering. The full text is tokenized once and character spans map to tokens through the offsets,
so ids are exactly those of the rendered conversation. Plain ``text`` rows train on every token.

Packing. Samples are packed first-fit into rows of ``max_seq_len`` in a shuffled order that
depends only on ``(seed, epoch)``; each sample keeps its own positions (restarting at 0) and the
attention never crosses samples (see :mod:`onebox.train.kernels`), and labels are shifted within
each sample, so the last token of one sample never predicts the first of the next. The packing of
every epoch is a pure function of the data and the config: any process (a DDP rank, a resumed run)
can compute which rows make step ``s`` without communication, which is what makes resuming and
data parallelism reproduce a single uninterrupted run.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onebox.data.schema import Example
from onebox.errors import InvalidInputError, Problem

IGNORE_INDEX = -100
"""Label of positions without a loss (PyTorch's cross-entropy convention)."""

MAX_PROBLEMS = 20


# --------------------------------------------------------------------------- reading


def load_examples(path: Path) -> list[Example]:
    """Read training examples: an imported dataset's Parquet file, or a raw JSONL/JSON/CSV file.

    Raw files go through the same reader and schema normalisation as ``onebox data import``; a
    bad row is an error here (import the file first to skip and quarantine bad rows).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"data file {path} does not exist", problems=[Problem("path", "not found")])
    if path.suffix.lower() == ".parquet":
        from onebox.data.parquet import read_examples

        return read_examples(path)
    from onebox.data.readers import TABULAR_FORMATS, read_records
    from onebox.data.schema import detect_schema, normalize

    result = read_records(path, max_bytes=path.stat().st_size + 1)
    schema = detect_schema(result.records, columns=result.columns)
    examples, bad = normalize(result.records, schema, coerce_scalars=result.format in TABULAR_FORMATS)
    bad = list(result.errors) + list(bad)
    if bad:
        raise InvalidInputError(
            f"{path.name}: {len(bad)} invalid rows; import it with `onebox data import` to clean it",
            problems=[Problem(e.field or "row", e.reason, line=e.line) for e in bad[:MAX_PROBLEMS]],
        )
    return examples


# --------------------------------------------------------------------------- tokenizing


@dataclass
class Sample:
    """One tokenized example: ``ids`` and ``target`` (True where the token is learned)."""

    ids: np.ndarray
    target: np.ndarray
    line: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_targets(self) -> int:
        """Tokens with a loss (the first token is never predicted)."""
        return int(self.target[1:].sum())


@dataclass
class DataStats:
    """What tokenization did to a file, for the run's metrics and for clear errors."""

    examples: int = 0
    samples: int = 0
    tokens: int = 0
    target_tokens: int = 0
    truncated: int = 0
    no_targets: int = 0
    fallback_spans: int = 0
    max_len: int = 0
    lines_without_targets: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("lines_without_targets")
        return d


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None = None
) -> tuple[str, list[tuple[int, int]], bool]:
    """The full rendering and the character spans of assistant turns; True if it fell back.

    The one definition of "what the model is trained on", shared by training and evaluation so
    an evaluation loss measures exactly the tokens fine-tuning optimised. ``chat_template``
    overrides the tokenizer's (evaluation passes ChatML for base models that ship none).
    """

    def render(msgs: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=generation_prompt, chat_template=chat_template
        )

    full = render(messages)
    spans: list[tuple[int, int]] = []
    try:
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = render(messages[:i], generation_prompt=True) if i else ""
            through = render(messages[: i + 1])
            if not through.startswith(before) or not full.startswith(through):
                raise ValueError("template does not render prefixes as prefixes")
            turn = through[len(before) :]
            end = len(before) + len(turn.rstrip())  # up to and including the end-of-turn token
            if i == 0:  # no prompt to strip: start at the message content
                start = through.find(message["content"])
                if start < 0:
                    raise ValueError("assistant content not found")
            else:
                start = len(before)
            if end > start:
                spans.append((start, end))
        return full, spans, False
    except Exception:  # any template error or non-prefix template: locate contents instead
        return full, _find_spans(tokenizer.eos_token or "", full, messages), True


def _find_spans(eos: str, full: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    spans = []
    cursor = 0
    for message in messages:
        content = message["content"]
        at = full.find(content, cursor)
        if at < 0:
            at = full.find(content.strip(), cursor)
            content = content.strip()
        if at < 0:
            continue
        end = at + len(content)
        if message["role"] == "assistant":
            tail = full[end:]
            stripped = tail.lstrip()
            if eos and stripped.startswith(eos):
                end += len(tail) - len(stripped) + len(eos)
            spans.append((at, end))
        cursor = end
    return spans


def target_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Tokens (``offsets``: n x 2 character ranges) overlapping an assistant span are learned."""
    target = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        target |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
    return target


class ChatEncoder:
    """Turns :class:`Example` rows into :class:`Sample` s with the tokenizer's chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def encode(self, examples: Sequence[Example], max_seq_len: int) -> tuple[list[Sample], DataStats]:
        """Tokenize, mask, truncate; samples without any target token are dropped and counted."""
        stats = DataStats(examples=len(examples))
        texts: list[str] = []
        spans: list[list[tuple[int, int]] | None] = []
        for ex in examples:
            if ex.messages is not None:
                if not self.has_template:
                    raise InvalidInputError(
                        "the model's tokenizer has no chat template, so chat data cannot be rendered",
                        problems=[Problem("messages", "no chat template", "use a chat model or text data")],
                    )
                full, sp, fell_back = assistant_spans(self.tokenizer, ex.messages)
                stats.fallback_spans += fell_back
                texts.append(full)
                spans.append(sp)
            else:
                texts.append(ex.text or "")
                spans.append(None)
        chat = [i for i, s in enumerate(spans) if s is not None]
        plain = [i for i, s in enumerate(spans) if s is None]
        encoded: dict[int, tuple[list[int], list[bool]]] = {}
        if chat:
            try:
                enc = self.tokenizer(
                    [texts[i] for i in chat], add_special_tokens=False, return_offsets_mapping=True
                )
            except NotImplementedError as exc:  # python ("slow") tokenizers have no offsets
                raise InvalidInputError(
                    "loss masking needs a fast (Rust) tokenizer with offsets; this model only has a slow one",
                    problems=[Problem("base_dir", str(exc), "add a tokenizer.json to the model directory")],
                ) from exc
            for k, i in enumerate(chat):
                ids = list(enc["input_ids"][k])
                offsets = np.asarray(enc["offset_mapping"][k], dtype=np.int64).reshape(-1, 2)
                encoded[i] = (ids, target_mask(offsets, spans[i] or ()).tolist())
        if plain:
            enc = self.tokenizer([texts[i] for i in plain], add_special_tokens=True)
            for k, i in enumerate(plain):
                ids = list(enc["input_ids"][k])
                if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
                    ids.append(self.eos_id)  # learn to end the text
                encoded[i] = (ids, [True] * len(ids))
        samples: list[Sample] = []
        for i, ex in enumerate(examples):
            ids, target = encoded[i]
            stats.max_len = max(stats.max_len, len(ids))
            if len(ids) > max_seq_len:
                ids, target = ids[:max_seq_len], target[:max_seq_len]
                stats.truncated += 1
            sample = Sample(np.asarray(ids, dtype=np.int64), np.asarray(target, dtype=bool), ex.line)
            if sample.num_targets == 0:
                stats.no_targets += 1
                stats.lines_without_targets.append(ex.line)
                continue
            samples.append(sample)
            stats.tokens += len(sample)
            stats.target_tokens += sample.num_targets
        stats.samples = len(samples)
        return samples, stats


def tokenize_file(
    path: Path, tokenizer: Any, max_seq_len: int, *, what: str = "train_file"
) -> tuple[list[Sample], DataStats]:
    """Load and encode a data file; a file with nothing to learn from is a clear error."""
    examples = load_examples(path)
    if not examples:
        raise InvalidInputError(
            f"{what} {Path(path).name} holds no examples", problems=[Problem(what, "empty")]
        )
    samples, stats = ChatEncoder(tokenizer).encode(examples, max_seq_len)
    if not samples:
        chats = sum(1 for e in examples if e.messages is not None)
        with_assistant = sum(
            1 for e in examples if e.messages and any(m["role"] == "assistant" for m in e.messages)
        )
        if chats and not with_assistant:
            reason = f"none of its {len(examples)} conversations has an assistant turn"
            fix = "SFT learns the assistant's replies: add assistant messages, or use plain text rows"
        else:
            reason = f"no example has a token to learn after truncation to max_seq_len={max_seq_len}"
            fix = "raise max_seq_len or shorten the prompts"
        raise InvalidInputError(
            f"{what} {Path(path).name} has nothing to train on: {reason}",
            problems=[Problem(what, reason, fix)],
        )
    return samples, stats


def data_fingerprint(samples: Sequence[Sample]) -> str:
    """sha256 over token ids and masks: a resumed run must see the same tokens."""
    digest = hashlib.sha256(b"onebox.train.samples/1\n")
    for s in samples:
        digest.update(s.ids.tobytes())
        digest.update(np.packbits(s.target).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- packing


def pack(lengths: Sequence[int], order: Sequence[int], capacity: int, open_rows: int = 64) -> list[list[int]]:
    """First-fit packing of samples (in ``order``) into rows of ``capacity`` tokens.

    Keeps at most ``open_rows`` rows open (closing the fullest when a new one is needed), so it
    is O(n) and rows stay close to the shuffled order. Typical fill for chat data: 95-99%.
    """
    rows: list[list[int]] = []
    free: list[int] = []  # free space of each open row
    open_idx: list[int] = []  # row index of each open row
    for i in order:
        n = lengths[i]
        for k, space in enumerate(free):
            if n <= space:
                rows[open_idx[k]].append(i)
                free[k] -= n
                break
        else:
            if len(free) >= open_rows:
                k = min(range(len(free)), key=free.__getitem__)
                del free[k], open_idx[k]
            rows.append([i])
            free.append(capacity - n)
            open_idx.append(len(rows) - 1)
    return rows


@dataclass
class Batch:
    """One micro-batch as tensors, plus what the loss normalisation and the attention need."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    lengths: list[list[int]]
    tokens: int
    targets: int

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.lengths,
            self.tokens,
            self.targets,
        )


def collate(samples: Sequence[Sample], rows: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Lay rows of samples out as ``[rows, width]`` tensors; width is the longest row (x8)."""
    width = max(sum(len(samples[i]) for i in row) for row in rows)
    width = int(math.ceil(width / 8) * 8)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    lengths: list[list[int]] = []
    tokens = targets = 0
    for r, row in enumerate(rows):
        at = 0
        row_lengths = []
        for i in row:
            s = samples[i]
            n = len(s)
            ids[r, at : at + n] = torch.from_numpy(s.ids)
            pos[r, at : at + n] = torch.arange(n)
            shifted = torch.from_numpy(np.where(s.target[1:], s.ids[1:], IGNORE_INDEX))
            labels[r, at : at + n - 1] = shifted
            at += n
            row_lengths.append(n)
            tokens += n
            targets += s.num_targets
        lengths.append(row_lengths)
    return Batch(ids, pos, labels, lengths, tokens, targets)


def dummy_batch(pad_id: int) -> Batch:
    """A one-token batch without targets: lets a process with no data left still take part in the
    collective forward/backward of a data-parallel step."""
    ids = torch.full((1, 8), pad_id, dtype=torch.long)
    return Batch(ids, torch.arange(8)[None], torch.full((1, 8), IGNORE_INDEX), [[8]], 0, 0)


class StepPlan:
    """Which rows of which epoch make each optimizer step, for any process, computed not stored.

    One step consumes ``rows_per_step = micro_batch_size * grad_accum * world`` rows; the micro-batch
    ``j`` of rank ``r`` holds rows ``[(j * world + r) * micro, ... + micro)`` of the step's slice, so
    the same global batch gives the same rows whatever the split between processes.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        max_seq_len: int,
        packing: bool,
        micro_batch_size: int,
        grad_accum: int,
        world: int,
        seed: int,
        epochs: float,
        max_steps: int | None,
        shuffle: bool = True,
    ) -> None:
        self.samples = samples
        self.lengths = [len(s) for s in samples]
        self.max_seq_len = max_seq_len
        self.packing = packing
        self.micro = micro_batch_size
        self.accum = grad_accum
        self.world = world
        self.seed = seed
        self.shuffle = shuffle
        self.rows_per_step = micro_batch_size * grad_accum * world
        self._cache: dict[int, list[list[int]]] = {}
        self.steps: list[tuple[int, int]] = []  # (epoch, first row) per step
        epoch = 0
        while True:
            n_rows = len(self.rows(epoch))
            per_epoch = math.ceil(n_rows / self.rows_per_step)
            if max_steps is not None:
                take = min(per_epoch, max_steps - len(self.steps))
            elif epoch + 1 <= epochs:
                take = per_epoch
            else:
                take = math.ceil((epochs - epoch) * per_epoch)
            self.steps.extend((epoch, k * self.rows_per_step) for k in range(take))
            epoch += 1
            if (max_steps is not None and len(self.steps) >= max_steps) or (
                max_steps is None and epoch >= epochs
            ):
                break
        self.total_steps = len(self.steps)

    def rows(self, epoch: int) -> list[list[int]]:
        """The packed rows of ``epoch`` (a pure function of the samples, seed and epoch)."""
        if epoch not in self._cache:
            order = list(range(len(self.samples)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            if self.packing:
                rows = pack(self.lengths, order, self.max_seq_len)
                if self.shuffle:  # first-fit groups by arrival; shuffle rows once more
                    random.Random(self.seed * 1_000_003 + epoch + 7919).shuffle(rows)
            else:
                rows = [[i] for i in order]
            if len(self._cache) > 2:
                self._cache.clear()
            self._cache[epoch] = rows
        return self._cache[epoch]

    def epoch_of(self, step: int) -> float:
        """Fractional epoch reached after ``step`` optimizer steps (for progress)."""
        if step <= 0:
            return 0.0
        epoch, first = self.steps[step - 1]
        n = len(self.rows(epoch))
        return epoch + min(1.0, (first + self.rows_per_step) / max(1, n))

    def step_rows(self, step: int) -> list[list[int]]:
        """All rows of optimizer step ``step`` (0-based), for every process."""
        epoch, first = self.steps[step]
        return self.rows(epoch)[first : first + self.rows_per_step]

    def step_targets(self, step: int) -> int:
        """Target tokens in the whole global batch (the loss denominator, known to every rank)."""
        return sum(self.samples[i].num_targets for row in self.step_rows(step) for i in row)

    def micro_rows(self, step: int, micro: int, rank: int) -> list[list[int]]:
        rows = self.step_rows(step)
        start = (micro * self.world + rank) * self.micro
        return rows[start : start + self.micro]

    def micro_batches(self, step: int, rank: int, pad_id: int) -> Iterator[Batch | None]:
        """The ``grad_accum`` micro-batches of ``rank`` for ``step``; None where it has no rows."""
        for j in range(self.accum):
            rows = self.micro_rows(step, j, rank)
            yield collate(self.samples, rows, pad_id) if rows else None


def eval_batches(
    samples: Sequence[Sample], max_seq_len: int, micro_batch_size: int, packing: bool
) -> list[list[list[int]]]:
    """Validation micro-batches (rows of sample indices), in file order."""
    order = list(range(len(samples)))
    rows = pack([len(s) for s in samples], order, max_seq_len) if packing else [[i] for i in order]
    return [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
