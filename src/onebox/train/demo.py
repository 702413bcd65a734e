"""The demo recipe's quality check: does LoRA on the Varnolia data teach SmolLM2 the facts?

Imports ``data/demo/varnolia_sft.jsonl`` with the normal import pipeline (cleaning, split),
fine-tunes with ``recipes/demo_lora.yaml``, then greedy-answers the held-out paraphrased questions
(``varnolia_heldout.jsonl``) with the base model and with the adapter. An answer is correct when it
contains every keyword after NFKC normalisation, lower-casing and removing whitespace.

    .venv/bin/python -m onebox.train.demo --base-dir "$(onebox-model-dir)" --out /tmp/demo-sft

(the base directory is a checkout of the built-in ``smollm2-135m-instruct``, see the README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import torch

DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "demo"
RECIPE = Path(__file__).resolve().parent / "recipes" / "demo_lora.yaml"


def normalise(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def is_correct(answer: str, keywords: list[str]) -> bool:
    got = normalise(answer)
    return all(normalise(k) in got for k in keywords)


def load_heldout(path: Path = DEMO_DATA / "varnolia_heldout.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@torch.no_grad()
def generate_answers(
    model: Any, tokenizer: Any, questions: list[str], *, max_new_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """Greedy answers, batched with left padding."""
    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def score(model: Any, tokenizer: Any, heldout: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    answers = generate_answers(model, tokenizer, [h["question"] for h in heldout])
    rows = [
        {"id": h["id"], "question": h["question"], "answer": a, "correct": is_correct(a, h["keywords"])}
        for h, a in zip(heldout, answers, strict=True)
    ]
    return sum(r["correct"] for r in rows), rows


def main(argv: list[str] | None = None) -> int:
    from onebox.data.importer import ImportOptions, prepare
    from onebox.train.config import SFTConfig
    from onebox.train.sft import SFTHooks, run_sft

    parser = argparse.ArgumentParser(prog="python -m onebox.train.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", type=Path, required=True, help="HF directory of smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("demo-sft"), help="output folder")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe fields")
    parser.add_argument("--skip-base", action="store_true", help="do not score the base model")
    args = parser.parse_args(argv)

    import yaml

    config = SFTConfig.from_file(args.recipe)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = SFTConfig.from_dict({**config.as_dict(), **overrides})
    data = prepare(DEMO_DATA / "varnolia_sft.jsonl", args.out / "data", ImportOptions())
    heldout = load_heldout()

    def on_step(step: int, total: int, m: dict[str, float]) -> None:
        val = f" val {m['val_loss']:.3f}" if "val_loss" in m else ""
        print(f"step {step}/{total} loss {m['loss']:.3f}{val} {m['tokens_per_s']:.0f} tok/s", flush=True)

    t0 = time.perf_counter()
    result = run_sft(
        args.base_dir,
        data.files["train"],
        data.files["validation"],
        args.out / "run",
        config,
        SFTHooks(on_step=on_step, on_message=print),
    )
    train_s = time.perf_counter() - t0

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.base_dir))
    report: dict[str, Any] = {"config": config.as_dict(), "train_seconds": train_s, "metrics": result.metrics}
    if not args.skip_base:
        base = AutoModelForCausalLM.from_pretrained(str(args.base_dir), dtype=torch.bfloat16).eval()
        report["base_correct"], report["base_rows"] = score(base, tokenizer, heldout)
    base = AutoModelForCausalLM.from_pretrained(str(args.base_dir), dtype=torch.bfloat16)
    tuned = PeftModel.from_pretrained(base, str(result.adapter_dir)).merge_and_unload().eval()
    report["tuned_correct"], report["tuned_rows"] = score(tuned, tokenizer, heldout)
    (args.out / "quality.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    for row in report["tuned_rows"]:
        mark = "ok " if row["correct"] else "BAD"
        print(f"{mark} {row['id']} {row['question']} -> {row['answer']!r}")
    base_part = f"base {report['base_correct']}/{len(heldout)}, " if not args.skip_base else ""
    print(
        f"held-out questions answered correctly: {base_part}tuned {report['tuned_correct']}/{len(heldout)} "
        f"(training {train_s:.0f} s, {result.metrics['steps']} steps, "
        f"final loss {result.metrics['train_loss']:.3f}, val loss {result.metrics['val_loss']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
