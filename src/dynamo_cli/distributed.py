"""Data parallelism over the processes `accelerate launch` starts: who this process is, its share of a
batch, and the few collectives that keep every rank on the same step.

Engines do the heavy lifting: accelerate builds the process group and wraps the model (DDP or DeepSpeed
ZeRO-2, from the user's accelerate config; engines that shard the weights are refused, see `check_engine`),
torch.distributed moves the bytes. With one process (a plain
`dynamo train`) this is rank 0 of 1 and every collective is the identity, so recipes have one code path.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as torch_dist

from dynamo_cli.errors import DynamoError
from dynamo_cli.optim import clip_gradients


def shard_bounds(size: int, *, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous share of `size` rows: shares differ by at most one row, earlier ranks larger."""
    base, extra = divmod(size, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def shard_counts(counts: torch.Tensor, *, lo: int, hi: int) -> torch.Tensor:
    """Per-prompt counts of the rows [lo, hi) of a batch laid out prompt by prompt (counts[i] rows of prompt i)."""
    ends = counts.cumsum(0)
    starts = ends - counts
    return (ends.clamp(min=lo, max=hi) - starts.clamp(min=lo, max=hi)).clamp(min=0)


class ShardedEngineError(DynamoError):
    """The accelerate config asks for an engine whose weight sharding the recipes do not support."""


class DataParallel:
    """This process's place among the data-parallel ranks, and the collectives the recipes need."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes
        self.device = accelerator.device

    @classmethod
    def start(cls, device: str) -> "DataParallel":
        """Join the process group `accelerate launch` (or torchrun) set up; a single process otherwise.

        `device=cpu` (or `auto` without CUDA) runs on CPU with the gloo backend: the way to test several
        processes on a laptop (conf/accelerate/cpu_ddp.yaml, see README). The recipes put the model on
        `self.device` themselves (accelerate's device placement is off), so a single process can use cuda:N."""
        from accelerate import Accelerator

        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        accelerator = Accelerator(cpu=cpu, device_placement=False)
        parallel = cls(accelerator)
        if parallel.world_size == 1 and not cpu and device != "auto":
            parallel.device = torch.device(device)  # a single process honours device=cuda:N
        return parallel

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, size: int) -> tuple[int, int]:
        return shard_bounds(size, rank=self.rank, world_size=self.world_size)

    # ------------------------------------------------------------------------------ collectives
    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (pickled: for small things)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's (n_r, ...) CPU tensor along dim 0, in rank order."""
        if not self.distributed:
            return tensor
        return torch.cat([t.cpu() for t in self.gather_objects(tensor.detach().cpu())])

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: float) -> float:
        if not self.distributed:
            return value
        return float(sum(self.gather_objects(float(value))))

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Key-wise mean over ranks of a dict of floats (the same keys on every rank)."""
        if not self.distributed:
            return values
        gathered = self.gather_objects(values)
        return {key: sum(g[key] for g in gathered) / self.world_size for key in values}

    def scope_sync(self) -> Callable[[torch.Tensor, str], torch.Tensor] | None:
        """For a normalisation scope that spans the ranks: the element-wise max/min of a tensor over ranks."""
        if not self.distributed:
            return None

        def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
            op = torch_dist.ReduceOp.MAX if how == "amax" else torch_dist.ReduceOp.MIN
            out = values.detach().clone().to(self.device)
            torch_dist.all_reduce(out, op=op)
            return out.to(values.device)

        return reduce

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()

    # --------------------------------------------------------------------------- model handling
    @property
    def deepspeed(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def prepare(self, model, optimizer, *, micro_batch_size: int):
        """Wrap for the configured engine (DDP or DeepSpeed ZeRO-2); the model is already on this rank's device."""
        if self.deepspeed:  # DeepSpeed wants a batch size; without a dataloader accelerate cannot infer it
            self.accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
        return self.accelerator.prepare(model, optimizer)

    def clip_gradients(self, model, max_norm: float) -> float:
        """Clip the global gradient norm (0 = off) and return it. DeepSpeed clips inside its own step (its config's
        gradient_clipping) and reports the norm it saw."""
        if self.deepspeed:
            return float(self.accelerator.clip_grad_norm_(model.parameters(), max_norm) or 0.0)
        return clip_gradients(model, max_norm)

    def unwrap(self, model):
        """The plain module inside the engine's wrapper. Under DDP it holds the full weights, so generation,
        old log-probs and eval run on it rank by rank, without collectives."""
        return self.accelerator.unwrap_model(model)

    def check_engine(self) -> None:
        """Engines that shard the weights (FSDP, DeepSpeed ZeRO-3) need every rank to run the same forwards in
        lockstep, which rank-local generation does not do: refuse them with a clear message rather than hang."""
        from accelerate.utils import DistributedType

        kind = self.accelerator.distributed_type
        zero_stage = getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) if kind == DistributedType.DEEPSPEED else 0
        if kind == DistributedType.FSDP or zero_stage == 3:
            raise ShardedEngineError(
                f"accelerate engine {kind.value}{f' ZeRO-{zero_stage}' if zero_stage else ''} shards the weights; dynamo's "
                "rank-local generation needs full weights on every rank: use conf/accelerate/ddp.yaml or deepspeed_zero2.yaml")

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    @contextlib.contextmanager
    def accumulate(self, model, sync: bool) -> Iterator[None]:
        """Gradient accumulation: no all-reduce unless `sync` (the last micro-batch of a mini-batch). The flag is
        also DeepSpeed's accumulation boundary, where its engine steps."""
        if not self.distributed:
            yield
            return
        self.accelerator.gradient_state._set_sync_gradients(sync)
        if sync:
            yield
        else:
            with self.accelerator.no_sync(model):
                yield
        self.accelerator.gradient_state._set_sync_gradients(True)

    def check_replicas(self, model, allocation_counts: torch.Tensor) -> dict[str, float]:
        """Evidence that the ranks hold one model and one allocation: the largest difference across ranks of
        per-tensor parameter fingerprints (float64 sum and sum of squares), and of the allocations each rank
        computed from its copy of the global statistics. Both are 0 when the replicas agree."""
        if not self.distributed:
            return {}
        with torch.no_grad():
            fingerprint = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()])
                                       for p in self.unwrap(model).parameters()]).cpu()
        gathered = self.gather_objects((fingerprint, allocation_counts.cpu()))
        param_diff = max(float((g[0] - fingerprint).abs().max()) for g in gathered)
        alloc_diff = max(int((g[1] - allocation_counts.cpu()).abs().max()) for g in gathered)
        return {"dist/replica_param_diff": param_diff, "dist/replica_alloc_diff": float(alloc_diff)}

    def agree_on_run_dir(self, run_dir: Path) -> Path:
        """Rank 0's run dir. Each rank's Hydra stamps its own time; a rank whose clock crossed a second boundary
        made a dir of its own, which it removes (it holds only Hydra's bookkeeping)."""
        chosen = Path(self.broadcast_object(str(run_dir)))
        if chosen != run_dir and run_dir.exists() and not (run_dir / "metrics.jsonl").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        return chosen

    def close(self) -> None:
        """Leave the process group cleanly (without it a rank occasionally aborts at exit under gloo)."""
        if self.distributed and torch_dist.is_initialized():
            torch_dist.barrier()
            torch_dist.destroy_process_group()

