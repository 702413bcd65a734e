"""Fixtures for the SFT recipe: a tiny Llama with a byte-level ChatML tokenizer, chat data files.

The tiny model makes a real training step take milliseconds, so checkpoint/resume, packing and DDP
tests run the real loop. ``smol_tokenizer`` is the real SmolLM2 tokenizer (gzipped in fixtures/)
for the chat-template masking tests.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest

from onebox.data.parquet import write_examples
from onebox.data.schema import Example

FIXTURES = Path(__file__).parent / "fixtures"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML without SmolLM2's default system prompt, so tiny-model samples stay short."""


def byte_tokenizer(out: Path) -> None:
    """A byte-level BPE tokenizer without merges (ids 0-255 = bytes) plus the ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|endoftext|>"],
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)


def make_tiny_model(out: Path, *, seed: int = 0, layers: int = 2) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    byte_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=264,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,  # large enough that a LoRA update can move the logits
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama (fp32) with a byte-level ChatML tokenizer."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-chat-llama"))


@pytest.fixture(scope="session")
def smol_tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The real SmolLM2-135M-Instruct tokenizer (ChatML template, 49k vocabulary)."""
    from transformers import AutoTokenizer

    src = FIXTURES / "smollm2_tokenizer"
    out = tmp_path_factory.mktemp("smol-tokenizer")
    (out / "tokenizer.json").write_bytes(gzip.decompress((src / "tokenizer.json.gz").read_bytes()))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / name, out / name)
    return AutoTokenizer.from_pretrained(out)


WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "sensor",
    "price",
    "warranty",
    "沃萝",
    "科技",
    "湿度",
    "VX-100",
    "hub",
    "2017",
    "return",
]


def chat_examples(n: int, *, seed: int = 0, max_words: int = 12) -> list[Example]:
    """Chats of varied length, some multi-turn, some with a system prompt, some in Chinese."""
    rng = random.Random(seed)
    out = []
    for i in range(n):

        def sentence() -> str:
            return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))

        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": "You are terse."})
        for _ in range(rng.choice([1, 1, 2])):
            messages.append({"role": "user", "content": sentence() + "?"})
            messages.append({"role": "assistant", "content": sentence() + "."})
        out.append(Example(i + 1, messages=messages))
    return out


def write_chats(path: Path, n: int, *, seed: int = 0, max_words: int = 12) -> Path:
    write_examples(path, chat_examples(n, seed=seed, max_words=max_words))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():  # type: ignore[no-untyped-def]
    """Tiny-model steps gain nothing from a second thread, and OpenMP threads spin-waiting on a
    busy CI machine made them 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
