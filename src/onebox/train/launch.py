"""Data-parallel SFT: the ``torchrun`` entrypoint and the helper that spawns it.

``python -m torch.distributed.run --nproc_per_node N -m onebox.train.launch --config cfg.json
--base-dir B --train-file T --out-dir O [--val-file V]`` runs :func:`run_sft` in every rank (gloo
on CPU, nccl on CUDA); rank 0 writes checkpoints, outputs and ``--result``. :func:`run_sft_distributed`
does that from a normal process and returns the same :class:`SFTResult` as :func:`run_sft`:

- progress crosses the process boundary as JSON lines that rank 0 appends to an events file; the
  parent tails it and calls the caller's hooks (so hooks stay plain in-process callables);
- a graceful stop is a file: the parent creates it when ``hooks.should_stop()`` says so, rank 0
  sees it and all ranks stop together at the next step boundary;
- a failure in a rank comes back as the same onebox error (code, message, problems), not as a
  torchrun traceback;
- with encryption at rest the ranks get the job's :class:`Sealer` through a key file in the
  parent's private memory folder (see :func:`_shared_sealer`), and rank 0 exports into the
  caller's ``export_dir`` (also in the parent's private folder: a rank's own one is removed when
  the rank exits).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onebox import errors
from onebox.errors import ConfigError, OneboxError, Problem, TrainingError
from onebox.security.streams import Sealer
from onebox.train.config import SFTConfig
from onebox.train.sft import SFTHooks, SFTResult, run_sft


def run_sft_distributed(
    base_dir: Path,
    train_file: Path,
    val_file: Path | None,
    out_dir: Path,
    config: SFTConfig,
    hooks: SFTHooks | None = None,
    *,
    sealer: Sealer | None = None,
    export_dir: Path | None = None,
    poll_s: float = 0.2,
) -> SFTResult:
    """Run :func:`run_sft` in ``config.nproc`` processes (in-process when ``nproc == 1``);
    ``sealer`` and ``export_dir`` as in :func:`run_sft`."""
    config.validate()
    if config.nproc <= 1:
        return run_sft(
            base_dir, train_file, val_file, out_dir, config, hooks, sealer=sealer, export_dir=export_dir
        )
    hooks = hooks or SFTHooks()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=".launch-", dir=out_dir) as tmp_name,
        _shared_sealer(sealer) as sealer_file,
    ):
        tmp = Path(tmp_name)
        cfg_path, events, stop, result_path, error_path = (
            tmp / "config.json",
            tmp / "events.jsonl",
            tmp / "stop",
            tmp / "result.json",
            tmp / "error.json",
        )
        cfg_path.write_text(json.dumps(config.as_dict()))
        events.touch()
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={config.nproc}",
            "-m",
            "onebox.train.launch",
            "--config",
            str(cfg_path),
            "--base-dir",
            str(base_dir),
            "--train-file",
            str(train_file),
            "--out-dir",
            str(out_dir),
            "--events",
            str(events),
            "--stop-file",
            str(stop),
            "--result",
            str(result_path),
            "--error",
            str(error_path),
        ]
        if val_file is not None:
            cmd += ["--val-file", str(val_file)]
        if sealer_file is not None:
            cmd += ["--sealer-file", str(sealer_file)]
        if export_dir is not None:
            cmd += ["--export-dir", str(export_dir)]
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.nproc))
        log_path = tmp / "torchrun.log"
        with open(log_path, "wb") as log_fh:
            proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env)
            offset = 0
            try:
                while True:
                    code = proc.poll()
                    offset = _relay(events, offset, hooks)
                    if code is not None:
                        break
                    if hooks.should_stop and not stop.exists() and hooks.should_stop():
                        stop.touch()
                    time.sleep(poll_s)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if error_path.exists():
            raise _error_from(json.loads(error_path.read_text()))
        if code != 0 or not result_path.exists():
            tail = log_path.read_text(errors="replace")[-4000:]
            raise TrainingError(
                f"distributed training failed (torchrun exit code {code})",
                problems=[Problem("nproc", f"{config.nproc} processes; last output:\n{tail}")],
            )
        return SFTResult.from_dict(json.loads(result_path.read_text()))


@contextlib.contextmanager
def _shared_sealer(sealer: Sealer | None) -> Iterator[Path | None]:
    """Hand ``sealer`` to the ranks as a 0600 file in this process's private memory folder,
    removed when the launch ends.

    Why a file and not an environment variable: the environment is copied into every descendant
    (compilers, profilers, tools a library shells out to), stays readable in /proc for each
    process's whole life and ends up in crash reports and debug dumps; this file lives on a memory
    filesystem (never on disk, never under ``ONEBOX_HOME``), in a 0700 folder of this user, for
    the length of the launch only, and only its path travels on the command line. If this
    process is killed, the next onebox process sweeps its private folder.
    """
    if sealer is None:
        yield None
        return
    from onebox.security.sealed import private_dir

    path = private_dir() / f"sealer-{secrets.token_hex(8)}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"scope": sealer.scope, "key": sealer.key.hex(), "chunk_size": sealer.chunk_size}, fh)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _read_sealer(path: Path) -> Sealer:
    """The sealer a parent shared with :func:`_shared_sealer`; refuses a file others could read
    or write (it would not be the one the parent wrote)."""
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ConfigError(
            f"{path} is not a private key file of this user",
            problems=[Problem("--sealer-file", f"mode {st.st_mode & 0o777:o}, owner {st.st_uid}")],
        )
    data = json.loads(path.read_text())
    return Sealer(bytes.fromhex(data["key"]), str(data["scope"]), int(data["chunk_size"]))


def _relay(events: Path, offset: int, hooks: SFTHooks) -> int:
    """Call the hooks for every complete event line after ``offset``; return the new offset."""
    with open(events, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n")
    if end < 0:
        return offset
    for line in data[: end + 1].splitlines():
        event = json.loads(line)
        kind = event.pop("event")
        if kind == "step" and hooks.on_step:
            hooks.on_step(event["step"], event["total"], event["metrics"])
        elif kind == "checkpoint" and hooks.on_checkpoint:
            hooks.on_checkpoint(event["step"], Path(event["path"]))
        elif kind == "message" and hooks.on_message:
            hooks.on_message(event["text"])
    return offset + end + 1


def _error_from(payload: dict[str, Any]) -> OneboxError:
    """Rebuild the onebox error a rank raised (same class when it is a known one)."""
    cls: type[OneboxError] = TrainingError
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, OneboxError) and value.code == payload.get("code"):
            cls = value
            break
    problems = [Problem(**p) for p in payload.get("problems", [])]
    return cls(payload.get("message", "training failed"), problems=problems, **payload.get("details", {}))


def _event_hooks(path: Path, stop_file: Path | None) -> SFTHooks:
    def emit(event: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
            fh.flush()

    return SFTHooks(
        on_step=lambda step, total, metrics: emit(
            {"event": "step", "step": step, "total": total, "metrics": metrics}
        ),
        should_stop=(lambda: stop_file.exists()) if stop_file else None,
        on_checkpoint=lambda step, p: emit({"event": "checkpoint", "step": step, "path": str(p)}),
        on_message=lambda text: emit({"event": "message", "text": text}),
    )


def main(argv: list[str] | None = None) -> int:
    from onebox.models.pretrained import checkpoint_files
    from onebox.security.sealed_child import ensure_reader

    parser = argparse.ArgumentParser(prog="python -m onebox.train.launch", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="SFTConfig as JSON or YAML")
    parser.add_argument("--base-dir", type=Path, required=True)
    parser.add_argument("--train-file", type=Path, required=True)
    parser.add_argument("--val-file", type=Path)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--events", type=Path, help="rank 0 appends progress events (JSON lines)")
    parser.add_argument("--stop-file", type=Path, help="stop gracefully once this file exists")
    parser.add_argument("--result", type=Path, help="rank 0 writes the SFTResult here (JSON)")
    parser.add_argument("--error", type=Path, help="a rank writes its onebox error here (JSON)")
    parser.add_argument("--sealer-file", type=Path, help="the job's sealer (see _shared_sealer)")
    parser.add_argument("--export-dir", type=Path, help="where rank 0 writes adapter/ and model/")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    hooks = _event_hooks(args.events, args.stop_file) if args.events else None
    try:
        config = SFTConfig.from_file(args.config)
        # sealed base weights and data shards: this rank opens the worker's blob store itself
        ensure_reader([*checkpoint_files(args.base_dir), args.train_file, args.val_file])
        sealer = _read_sealer(args.sealer_file) if args.sealer_file else None
        result = run_sft(
            args.base_dir,
            args.train_file,
            args.val_file,
            args.out_dir,
            config,
            hooks,
            sealer=sealer,
            export_dir=args.export_dir,
        )
    except OneboxError as exc:
        if args.error and (rank == 0 or not args.error.exists()):
            args.error.write_text(json.dumps(exc.as_dict(), default=str))
        print(f"rank {rank}: {exc}", file=sys.stderr)
        return 1
    if rank == 0 and args.result:
        args.result.write_text(json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
