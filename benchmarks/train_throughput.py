"""LoRA training throughput: the onebox SFT recipe against Hugging Face Trainer + peft, side by side.

    .venv/bin/python benchmarks/train_throughput.py [--base-dir DIR] [--steps 8] [--warmup 2]

Same model (SmolLM2-135M-Instruct, the built-in), same data (the demo chat dataset, samples of
45-218 tokens), sequence length 512, 8 sequences per optimizer step, LoRA r=16 / alpha 32 on all
linear layers, assistant-only labels in both:

- baseline: ``transformers.Trainer`` with peft, batches of 8 samples padded to the longest
  (``DataCollatorForSeq2Seq``), bf16 autocast (``bf16=True``) where the CPU has native bf16, else fp32;
- onebox: :func:`onebox.train.sft.run_sft` with its defaults: 8 packed rows of 512 tokens per step
  (micro-batches of 2, accumulated 4 times), frozen base in bf16 with fp32 adapter weights,
  per-sample (varlen) attention and the loss computed on assistant tokens only.

Each side runs in its own process (so peak memory is its own), ``--warmup`` steps are excluded,
throughput is *useful* tokens (non-padding) over the summed time of the measured steps, and the
per-step medians are shown too. The last number on the last line is the onebox/baseline ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEMO = Path(__file__).resolve().parents[1] / "src" / "onebox" / "data" / "demo" / "varnolia_sft.jsonl"
MODEL = "smollm2-135m-instruct"


def demo_examples() -> list[Any]:
    from onebox.data.schema import Example

    rows = []
    for n, line in enumerate(DEMO.read_text(encoding="utf-8").splitlines(), 1):
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError):
            continue  # the demo file holds a deliberately malformed line
        if messages and all(m.get("content") for m in messages) and messages[-1]["role"] == "assistant":
            rows.append(Example(n, messages=[{"role": m["role"], "content": m["content"]} for m in messages]))
    return rows


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def summarise(tokens: list[int], times: list[float], warmup: int) -> dict[str, float]:
    tok, sec = tokens[warmup:], times[warmup:]
    return {
        "tokens_per_s": sum(tok) / sum(sec),
        "median_step_tokens_per_s": statistics.median(t / s for t, s in zip(tok, sec, strict=True)),
        "median_step_s": statistics.median(sec),
        "tokens_per_step": statistics.mean(tok),
        "measured_steps": len(sec),
    }


# --------------------------------------------------------------------------- the two sides


def run_baseline(base_dir: Path, steps: int, warmup: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from onebox.train.data import ChatEncoder
    from onebox.train.model import cpu_bf16_speedup

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    samples, _ = ChatEncoder(tokenizer).encode(demo_examples(), max_seq_len=512)
    rows = [
        {
            "input_ids": s.ids.tolist(),
            "attention_mask": [1] * len(s),
            "labels": [
                t if keep else -100 for t, keep in zip(s.ids.tolist(), s.target.tolist(), strict=True)
            ],
        }
        for s in samples
    ]
    bf16 = cpu_bf16_speedup() >= 1.3
    model = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, attn_implementation="sdpa"
    )
    model = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    tokens: list[int] = []
    times: list[float] = []

    class Count(Trainer):
        def training_step(self, model, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
            tokens.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=1,
            max_steps=steps + warmup,
            learning_rate=2e-4,
            lr_scheduler_type="cosine",
            warmup_steps=1,
            bf16=bf16,
            use_cpu=True,
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Count(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
            callbacks=[Clock()],
        )
        trainer.train()
    return {
        "name": f"HF Trainer + peft, padded batch of 8, {'bf16 autocast' if bf16 else 'fp32'}",
        **summarise(tokens, times, warmup),
        "peak_rss_bytes": peak_rss(),
    }


def run_onebox(base_dir: Path, steps: int, warmup: int) -> dict[str, Any]:
    from onebox.data.parquet import write_examples
    from onebox.train.config import SFTConfig
    from onebox.train.sft import SFTHooks, run_sft

    tokens: list[int] = []
    times: list[float] = []

    def on_step(step: int, total: int, m: dict[str, float]) -> None:
        tokens.append(round(m["tokens_per_s"] * m["step_time"]))
        times.append(m["step_time"])

    config = SFTConfig(
        lora_r=16,
        lora_alpha=32,
        target_modules="all-linear",
        max_seq_len=512,
        micro_batch_size=2,
        grad_accum=4,
        max_steps=steps + warmup,
        save_every=0,
        eval_every=0,
    )
    with tempfile.TemporaryDirectory() as out:
        train = Path(out) / "train.parquet"
        write_examples(train, demo_examples())
        result = run_sft(base_dir, train, None, Path(out) / "run", config, SFTHooks(on_step=on_step))
    return {
        "name": "onebox run_sft, 8 packed rows of 512 "
        f"({result.metrics['precision']}, {result.metrics['attention']})",
        **summarise(tokens, times, warmup),
        "peak_rss_bytes": peak_rss(),
    }


# --------------------------------------------------------------------------- driver


def resolve_base_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    try:
        from onebox.services import models
        from onebox.services.context import open_app

        return Path(models.checkout(open_app(), MODEL))
    except Exception as exc:  # the benchmark should say what to do, not dump a traceback
        sys.exit(f"cannot check out {MODEL} ({exc}); run `onebox init` first or pass --base-dir")


def child(side: str, base_dir: Path, steps: int, warmup: int) -> dict[str, Any]:
    """Run one side in a fresh interpreter and return its JSON line."""
    cmd = [sys.executable, __file__, "--child", side, "--base-dir", str(base_dir)]
    cmd += ["--steps", str(steps), "--warmup", str(warmup)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-dir", help="HF directory of SmolLM2-135M-Instruct (default: the built-in)")
    ap.add_argument("--steps", type=int, default=8, help="measured optimizer steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="steps excluded from the measurement")
    ap.add_argument("--baseline-steps", type=int, default=None, help="measured steps for the baseline")
    ap.add_argument("--child", choices=["baseline", "onebox"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = run_baseline if args.child == "baseline" else run_onebox
        print(json.dumps(fn(Path(args.base_dir), args.steps, args.warmup)))
        return
    base_dir = resolve_base_dir(args.base_dir)
    import torch

    print(f"model {base_dir}\ntorch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    base_steps = args.baseline_steps or 3 * args.steps  # baseline steps are ~6x smaller
    baseline = child("baseline", base_dir, base_steps, args.warmup)
    ours = child("onebox", base_dir, args.steps, args.warmup)
    print(f"{'':62s} {'useful tok/s':>12s} {'median step tok/s':>18s} {'tok/step':>9s} {'peak RSS':>10s}")
    for r in (baseline, ours):
        print(
            f"{r['name'][:62]:62s} {r['tokens_per_s']:12.0f} {r['median_step_tokens_per_s']:18.0f} "
            f"{r['tokens_per_step']:9.0f} {r['peak_rss_bytes'] / 2**30:8.2f} GiB"
        )
    mem = ours["peak_rss_bytes"] / baseline["peak_rss_bytes"]
    ratio = ours["tokens_per_s"] / baseline["tokens_per_s"]
    print(f"peak memory onebox/baseline: {mem:.2f}")
    print(f"useful tokens/s onebox/baseline: {ratio:.2f}")


if __name__ == "__main__":
    main()
