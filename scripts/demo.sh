#!/usr/bin/env bash
# The embedded-default demo: set up onebox, show the built-in models, import and clean the
# bilingual demo dataset, fine-tune and evaluate a LoRA adapter, serve base + adapter through the
# OpenAI-compatible gateway, then build a knowledge base from the Varnolia documents and ask it
# questions answered with citations. Safe to run again (nothing is duplicated).
set -euo pipefail
cd "$(dirname "$0")/.."
ob=".venv/bin/onebox"
demo="src/onebox/data/demo/varnolia_sft.jsonl"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf '\n\033[1;31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }

step "onebox init  (home: ${ONEBOX_HOME:-~/.onebox}; the first run converts SmolLM2 from GGUF once)"
$ob init
step "onebox keys create --user admin --name demo --expires-days 1  (init created the admin; the gateway admits only API keys)"
ONEBOX_API_KEY="$($ob keys create --user admin --name demo --expires-days 1 --json \
  | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["secret"])')" \
  || die "could not create an API key"
export ONEBOX_API_KEY
echo "key ${ONEBOX_API_KEY:0:16}… (shown once; clients send it as 'Authorization: Bearer <key>')"
step "onebox models list"
$ob models list
step "onebox data import $demo --name varnolia --redact-pii --pii-allow help@varnolia.example.com"
$ob data import "$demo" --name varnolia --redact-pii --pii-allow help@varnolia.example.com
step "onebox data report varnolia"
$ob data report varnolia
step "onebox data preview varnolia --split quarantine  (removed rows are kept, with reasons)"
$ob data preview varnolia --split quarantine --limit 10
step "onebox data preview varnolia --limit 2"
$ob data preview varnolia --limit 2
step "onebox data list"
$ob data list

recipe="src/onebox/train/recipes/demo_lora.yaml"
heldout="src/onebox/data/demo/varnolia_heldout.jsonl"
if $ob models show varnolia-lora >/dev/null 2>&1; then
  step "varnolia-lora is already trained (delete it with \`onebox models delete varnolia-lora -y\` to train again)"
else
  step "onebox train -c $recipe --base smollm2-135m-instruct --data varnolia --output varnolia-lora  (LoRA on this CPU, a few minutes)"
  $ob train -c "$recipe" --base smollm2-135m-instruct --data varnolia --output varnolia-lora
fi
step "onebox models show varnolia-lora  (an adapter version with lineage: base model, dataset, job)"
$ob models show varnolia-lora
step "onebox eval smollm2-135m-instruct varnolia-lora --data varnolia --heldout $heldout  (base vs tuned)"
$ob eval smollm2-135m-instruct varnolia-lora --data varnolia --heldout "$heldout"

port="${ONEBOX_DEMO_PORT:-8321}"
url="http://127.0.0.1:$port"
mkdir -p "${ONEBOX_HOME:-$HOME/.onebox}/logs"
serve_log="${ONEBOX_HOME:-$HOME/.onebox}/logs/demo-serve.log"
step "onebox serve --port $port  (the gateway, in the background; log: $serve_log)"
$ob serve --port "$port" >"$serve_log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do curl -sf "$url/health" >/dev/null && break; sleep 1; done
curl -sf "$url/health" >/dev/null || { echo "the gateway did not start; see $serve_log"; exit 1; }
step "onebox deploy smollm2-135m-instruct --adapter varnolia-lora  (base and tuned adapter in one worker)"
$ob deployments show smollm2-135m-instruct >/dev/null 2>&1 \
  || $ob deploy smollm2-135m-instruct --adapter varnolia-lora --max-model-len 1024
for _ in $(seq 1 180); do  # a re-run finds the deployment in the database: wait for its worker
  $ob deployments show smollm2-135m-instruct --json 2>/dev/null | grep -q '"status": "ready"' && break; sleep 1
done
$ob deployments show smollm2-135m-instruct --json 2>/dev/null | grep -q '"status": "ready"' \
  || die "the deployment smollm2-135m-instruct is not ready after 3 minutes; see $serve_log and \`onebox deployments show smollm2-135m-instruct\`"
step "onebox deployments list"
$ob deployments list
step "ask both a held-out question through the OpenAI API (official openai client, streaming)"
.venv/bin/python scripts/ask_openai.py --base-url "$url/v1" --models smollm2-135m-instruct varnolia-lora \
  --heldout "$heldout"
step "curl $url/v1/models  (without a key: refused; with the key: the models this project may use)"
curl -s "$url/v1/models"; echo
curl -s -H "Authorization: Bearer $ONEBOX_API_KEY" "$url/v1/models"; echo

# -- knowledge base: documents in every supported format -> index -> answers with citations ------
kb="varnolia-docs"
kbdocs="${ONEBOX_HOME:-$HOME/.onebox}/demo-kb-docs"
step "python -m onebox.rag.demo.make_docs $kbdocs  (ten Varnolia documents: docx, xlsx, pptx, pdf, html, md, txt, csv, a png and a scanned pdf for OCR)"
.venv/bin/python -m onebox.rag.demo.make_docs "$kbdocs" || die "could not generate the demo documents"
if ! $ob kb show "$kb" >/dev/null 2>&1; then
  step "onebox kb create $kb"
  $ob kb create "$kb" --description "Varnolia Tech documents (demo)" || die "onebox kb create failed"
fi
step "onebox kb add $kb $kbdocs  (an ingestion job: parse, OCR, chunk, embed, index; unchanged files are skipped on a re-run)"
timeout 900 $ob kb add "$kb" "$kbdocs" || die "onebox kb add failed or took over 15 minutes (exit $?)"
# Two questions from demo_questions() whose passage hybrid retrieval ranks first, both read by OCR:
# one Chinese (from an image), one English (from a scanned PDF page).
for q in "沃萝科技维修中心在哪里？" "Until when is Varnolia's ISO 9001 certificate valid?"; do
  step "onebox kb ask $kb \"$q\" -k 3 --url $url  (answered by the deployed model through the gateway)"
  timeout 600 $ob kb ask "$kb" "$q" -k 3 --max-tokens 96 --url "$url" || die "onebox kb ask failed (exit $?)"
done
step "the same through /v1/chat/completions with the knowledge_base field (official openai client)"
timeout 600 .venv/bin/python scripts/ask_kb.py --base-url "$url/v1" --model smollm2-135m-instruct --kb "$kb" \
  "What is the pH accuracy of the VX-900?" || die "the knowledge_base request through /v1 failed"

# -- security: every step above is in the hash-chained audit log --------------------------------
step "onebox audit list --limit 8  (logins, keys, deploys, loads, policy decisions, admin changes)"
COLUMNS="${COLUMNS:-160}" $ob audit list --limit 8  # wide enough to read when not on a terminal
step "onebox audit verify  (any edited or deleted record is detected)"
$ob audit verify || die "the audit log does not verify"
