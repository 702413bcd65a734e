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
