"""Bench e: how close the memory estimate behind `auto` batch sizes (src/dynamo_cli/runtime/resources.py) is to the
memory a training micro-batch really takes.

For each model (the tiny one; SmolLM2-135M when `make real-model` has cached it) one forward + backward of
dynamo's own loss path (log-probs and full-vocabulary entropies over the completion) runs in a fresh process
at two batch sizes; the growth of peak memory (RSS sampled every millisecond on CPU, peak allocated on CUDA)
between them, per sequence, is compared with `training_bytes_per_sequence`. Ratio measured / estimated: 1 is
exact, above 1 means the estimate is short and `memory_fraction` has to absorb it. On CPU the tiny model's
sub-MiB sequences measure the allocator as much as the model (repeated runs: 1.1-1.6).

    python -m bench.memory_estimate [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench.common import REPO, BenchResult, print_result

SMOLLM = os.path.expanduser("~/.cache/dynamo/models/smollm2-135m")


def _load(model_name: str):
    import torch

    from dynamo_cli.config.model import TinyModelConfig
    from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model

    if model_name == "tiny":
        return build_tiny_model(TinyModelConfig(), build_char_tokenizer())
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(SMOLLM, dtype=torch.float32)


class _RSSPeak:
    """The highest resident set size seen by a thread that samples it every millisecond (CPU runs): unlike
    ru_maxrss, not masked by a higher peak earlier in the process's life (imports, loading)."""

    def __init__(self):
        import threading

        import psutil

        self._process, self._stop, self.peak = psutil.Process(), threading.Event(), 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.001)

    def __enter__(self) -> "_RSSPeak":
        self.start = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def worker(model_name: str, batch: int, tokens: int, completion: int) -> None:
    """One forward + backward at `batch`; prints the peak-memory growth in bytes as JSON."""
    import torch

    from dynamo_cli.rollout.policy_stats import completion_token_stats

    model = _load(model_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    ids = torch.randint(10, model.config.vocab_size - 1, (batch, tokens), device=device)
    mask = torch.ones_like(ids)

    def step() -> None:
        logprobs, entropy = completion_token_stats(model, input_ids=ids, attention_mask=mask, prompt_width=tokens - completion,
                                                   temperature=1.0, with_entropy=True)
        (logprobs.mean() + entropy.mean()).backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
        step()
        growth = torch.cuda.max_memory_allocated() - before
    else:
        with _RSSPeak() as rss:
            step()
        growth = rss.peak - rss.start
    print(json.dumps({"growth": growth}))


def measure(model_name: str, batch: int, tokens: int, completion: int) -> int:
    out = subprocess.run([sys.executable, "-m", "bench.memory_estimate", "--worker", model_name, str(batch), str(tokens), str(completion)],
                         cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True, capture_output=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["growth"]


def main(argv: list[str] | None = None) -> BenchResult:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_estimate", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        name, batch, tokens, completion = args.worker
        worker(name, int(batch), int(tokens), int(completion))
        raise SystemExit(0)

    from dynamo_cli.runtime.resources import model_shape, training_bytes_per_sequence

    cases = [("tiny", 64, 512, 24, 8)]  # model, small batch, large batch, tokens, completion tokens
    if not args.quick and os.path.isfile(os.path.join(SMOLLM, "config.json")):
        cases.append(("smollm2-135m", 2, 8, 128, 120))
    lines = ["| model | tokens (completion) | batches | measured MiB/seq | estimated MiB/seq | measured / estimated |",
             "|---|---|---|---|---|---|"]
    ratios = {}
    for name, small, large, tokens, completion in cases:
        per_sequence = (measure(name, large, tokens, completion) - measure(name, small, tokens, completion)) / (large - small)
        estimate = training_bytes_per_sequence(model_shape(_load(name)), tokens=tokens, completion_tokens=completion)
        ratios[f"{name}_measured_over_estimate"] = per_sequence / estimate
        lines.append(f"| {name} | {tokens} ({completion}) | {small} -> {large} | {per_sequence / 2**20:.2f} | "
                     f"{estimate / 2**20:.2f} | {per_sequence / estimate:.2f} |")
    if len(cases) == 1:
        lines.append("\nSmolLM2-135M not measured (`--quick`, or not cached: `make real-model`).")
    result = BenchResult(name="e. Memory estimate behind auto batch sizes", command="python -m bench.memory_estimate",
                         lines=lines, ratios=ratios)
    print_result(result)
    return result


if __name__ == "__main__":
    main()
