"""Fine-tuning recipes as a plain library: no database, CLI or HTTP in here.

The SFT recipe (:func:`onebox.train.sft.run_sft`) takes a Hugging Face model directory, a
training file (an imported dataset's Parquet, or raw JSONL), an optional validation file, an output
folder and an :class:`~onebox.train.config.SFTConfig`, and returns an
:class:`~onebox.train.sft.SFTResult` (a peft adapter and/or a model directory, metrics, whether it
resumed or stopped). Jobs report progress through :class:`~onebox.train.sft.SFTHooks`.

Modules, top to bottom:

- ``config``: the options, validated all at once; ``recipes/*.yaml`` are ready-made ones.
- ``data``: chat-template loss masking, packing, the deterministic step plan.
- ``kernels``: exact CPU fast paths (per-sample attention, fused LoRA, fused output loss).
- ``model``: precision policy, LoRA/QLoRA/full loading, memory estimate.
- ``checkpoint``: atomic, verified, pruned checkpoints.
- ``sft``: the training loop.
- ``dist`` / ``launch``: data parallelism (DDP or FSDP) through torchrun, gloo or nccl.
- ``demo``: the quality check of the demo recipe on the Varnolia data.
"""

from onebox.train.config import SFTConfig
from onebox.train.launch import run_sft_distributed
from onebox.train.sft import SFTHooks, SFTResult, run_sft

__all__ = ["SFTConfig", "SFTHooks", "SFTResult", "run_sft", "run_sft_distributed"]
