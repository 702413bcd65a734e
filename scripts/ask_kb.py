"""Ask a question grounded in a knowledge base through the OpenAI API (used by `make demo`).

`/v1/chat/completions` takes a non-standard `knowledge_base` field; with the official `openai`
client it goes in `extra_body`, and the citations come back as extra fields of the response
(`model_extra`): `citations` (the sources the answer cited) and `knowledge_base.sources` (every
passage the model was given, numbered as in the prompt).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from openai import OpenAI


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", required=True, help="a served model id")
    ap.add_argument("--kb", required=True, help="knowledge base name")
    ap.add_argument("--k", type=int, default=3, help="passages to retrieve")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("question")
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=os.environ["ONEBOX_API_KEY"], timeout=600)
    t0 = time.perf_counter()
    chat = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": args.question}],
        max_tokens=args.max_tokens,
        temperature=0,
        extra_body={"knowledge_base": {"name": args.kb, "k": args.k}},
    )
    extra = chat.model_extra or {}
    grounding = extra.get("knowledge_base")
    if grounding is None:
        print("error: the response has no knowledge_base field; is this a onebox gateway?", file=sys.stderr)
        return 1
    print(f"Q: {args.question}")
    print(f"A: {(chat.choices[0].message.content or '').strip()}")
    print(f"   ({args.model}, {time.perf_counter() - t0:.1f} s, not_found={grounding['not_found']})")
    cited = {c["number"] for c in extra.get("citations", [])}
    for s in grounding["sources"]:
        where = f"{s['source']} {s['locator']}".strip()
        mark = "cited" if s["number"] in cited else "not cited"
        print(f"  [{s['number']}] {where}  score {s['score']:.4f}  ({mark})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
