#!/usr/bin/env bash
# The embedded-default demo: set up onebox, show the built-in models, import and clean the
# bilingual demo dataset, and print its report. Safe to run again (nothing is duplicated).
set -euo pipefail
cd "$(dirname "$0")/.."
ob=".venv/bin/onebox"
demo="src/onebox/data/demo/varnolia_sft.jsonl"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "onebox init  (home: ${ONEBOX_HOME:-~/.onebox}; the first run converts SmolLM2 from GGUF once)"
$ob init
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
