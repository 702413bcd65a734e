"""``onebox train``: fine-tune a base model version on a dataset version, with a live progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from onebox.cli.output import console, print_json
from onebox.cli.state import JsonOpt, get_app
from onebox.errors import InvalidInputError, Problem

RECIPE_KEYS = ("base", "data", "output")
"""Keys of a recipe file that are not SFT settings."""


def _parse_value(text: str) -> Any:
    """``--set lr=2e-4`` and friends: YAML scalars, so numbers, booleans and lists just work."""
    return yaml.safe_load(text)


def load_recipe(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read recipe {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInputError(f"recipe {path} must be a mapping of settings")
    return doc


def build_config(recipe: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Recipe file < command-line options; every unknown or bad field reported at once."""
    from onebox.train.config import SFTConfig

    merged = {k: v for k, v in recipe.items() if k not in RECIPE_KEYS}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return SFTConfig.from_dict(merged)


def train_command(
    base: Annotated[str | None, typer.Option(help="Base model version (name, name:V, name@alias).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset version (name or name:V).")] = None,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Recipe YAML (SFT settings, optionally base/data/output)."),
    ] = None,
    method: Annotated[str | None, typer.Option(help="lora, qlora (CUDA only) or full.")] = None,
    output: Annotated[
        str | None, typer.Option(help="Registry name of the result (default base-data-method).")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training split.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    max_seq_len: Annotated[int | None, typer.Option(help="Tokens per (packed) sequence.")] = None,
    micro_batch_size: Annotated[int | None, typer.Option(help="Sequences per forward pass.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step.")] = None,
    nproc: Annotated[int | None, typer.Option(help="Data-parallel processes (torchrun).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any other setting as key=value (repeatable).")
    ] = None,
    priority: Annotated[int, typer.Option(help="Queue priority (higher first).")] = 0,
    detach: Annotated[bool, typer.Option("--detach", help="Queue the job and return at once.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune BASE on DATA (LoRA by default) and register the result with lineage."""
    from onebox.cli.jobs import follow
    from onebox.services import training

    recipe = load_recipe(config_file)
    base = base or recipe.get("base")
    data = data or recipe.get("data")
    output = output or recipe.get("output")
    problems = [
        Problem(f, "is required", f"pass --{f} or put {f}: in the recipe")
        for f, v in (("base", base), ("data", data))
        if not v
    ]
    extra: dict[str, Any] = {}
    for item in set_ or []:
        if "=" not in item:
            problems.append(Problem("--set", f"{item!r} is not key=value"))
            continue
        key, value = item.split("=", 1)
        extra[key.strip().replace("-", "_")] = _parse_value(value)
    if problems:
        raise InvalidInputError("invalid train command", problems=problems)
    overrides = {
        "method": method,
        "epochs": epochs,
        "max_steps": max_steps,
        "lr": lr,
        "lora_r": lora_r,
        "max_seq_len": max_seq_len,
        "micro_batch_size": micro_batch_size,
        "grad_accum": grad_accum,
        "nproc": nproc,
        **extra,
    }
    config = build_config(recipe, overrides)
    app = get_app()
    job = training.submit_train(app, str(base), str(data), config, output=output, priority=priority)
    done = follow(app, job, detach=detach, json_out=json_out)
    if done is None:
        return
    result = done["result"]
    if json_out:
        print_json({"job": done["id"], **result})
        return
    m = result.get("metrics", {})
    nan = float("nan")
    console.print(
        f"[green]registered[/] {result.get('model_version')}  train loss {m.get('train_loss', nan):.4f}"
        f"  best val loss {m.get('best_val_loss') or nan:.4f}  {m.get('tokens_per_s', 0):.0f} tok/s"
    )
