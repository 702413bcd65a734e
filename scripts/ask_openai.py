"""Ask held-out questions to several served models through the OpenAI API (used by `make demo`).

Any OpenAI client works against onebox; this one is the official `openai` package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from openai import OpenAI


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--models", nargs="+", required=True, help="model ids to ask (deployments or adapters)")
    ap.add_argument("--heldout", type=Path, required=True, help="JSONL with id/lang/question/answer")
    ap.add_argument("--ids", nargs="+", default=["H003", "H008"], help="question ids to ask")
    args = ap.parse_args()
    rows = {r["id"]: r for r in map(json.loads, args.heldout.read_text(encoding="utf-8").splitlines()) if r}
    client = OpenAI(base_url=args.base_url, api_key=os.environ["ONEBOX_API_KEY"])
    print("served models:", ", ".join(m.id for m in client.models.list().data))
    for qid in args.ids:
        row = rows[qid]
        print(f"\n[{qid}] {row['question']}\n  reference: {row['answer']}")
        for model in args.models:
            t0 = time.perf_counter()
            first = None
            text = ""
            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": row["question"]}],
                max_tokens=64,
                temperature=0,
                stream=True,
            )
            for chunk in stream:
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    first = first or time.perf_counter()
                    text += delta
            ttft = (first or time.perf_counter()) - t0
            print(f"  {model:<24} {text.strip()!r}  (first token after {ttft * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
