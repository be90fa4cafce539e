"""The combination matrix (scripts/combinations.py): every option of allocator × modulator × advantage × policy loss ×
sampler × critic × schedule × loss aggregation × importance sampling × KL × modulator scope × dtype × LoRA, covered
pairwise. Each case that can run trains 2 steps on the tiny model, in this process, with finite losses and moved
weights; each pair that cannot is refused before anything runs, in one line naming the conflict; no option is dead; a
few cases run on 2 processes; the table in docs/methods.md is the one the script writes."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, dynamo
from helpers import compose_schema, launch, read_jsonl
from safetensors.torch import load_file

from dynamo_cli.config.base import ConfigError
from dynamo_cli.errors import DynamoError
from dynamo_cli.recipes import train as train_recipe

spec = importlib.util.spec_from_file_location("combinations", REPO / "scripts" / "combinations.py")
combinations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(combinations)

SMALL = ["model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128", "model.num_heads=4"]


def table_cases() -> list[dict]:
    """The cases of docs/methods.md's generated table (test_the_docs_table_is_the_scripts holds it to the script's
    cover): reading them costs no composing at collection, so `make test` does not pay for the matrix it skips."""
    section = (REPO / "docs" / "methods.md").read_text().split(combinations.START, 1)[1].split(combinations.END, 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ") and line[2:3].isdigit()]
    header = next(line for line in section.splitlines() if line.startswith("| # |")).strip("|").split("|")
    names = [h.strip() for h in header[1:]]
    return [dict(zip(names, (c.strip() for c in row[1:]), strict=True)) for row in rows]


VALID = table_cases()


@pytest.fixture(scope="module")
def small_sft(tmp_path_factory) -> Path:
    """A quarter-width tiny model trained on L1-L2 until it solves some of them: groups with mixed rewards from the
    first step, so every case's policy term has something to learn from (and its weights move)."""
    run_dir = tmp_path_factory.mktemp("sft_small")
    dynamo("sft", "logger=none", f"hydra.run.dir={run_dir}", "trainer.steps=150", "trainer.eval_every=0", "trainer.log_every=50",
           "task.num_train=2000", "task.levels=[L1,L2]", "optim.lr=3e-3", *SMALL)
    return run_dir / "checkpoints" / "final"


def case_id(case: dict) -> str:
    return "-".join(case.values())


def moved(run_dir: Path, start: Path, lora: bool) -> bool:
    final = run_dir / "checkpoints" / "final"
    if lora:  # a fresh adapter's B is 0: RL moved it if any B is not
        return any(v.abs().sum() > 0 for k, v in load_file(final / "adapter_model.safetensors").items() if "lora_B" in k)
    before, after = load_file(start / "model.safetensors"), load_file(final / "model.safetensors")
    return any(not torch.equal(before[k].float(), after[k].float()) for k in before)


def test_the_cases_cover_every_pair_and_leave_no_option_dead():
    options = {f: [name for name, _ in opts] for f, opts in combinations.factors().items()}
    valid, refused = combinations.cases()
    assert valid == VALID  # the table's cases, which the tests below run
    covered = set().union(*(combinations.pairs_of(c) for c in valid), *(combinations.pairs_of(c) for c, _, _ in refused))
    every = {tuple(sorted([(f, x), (g, y)])) for i, f in enumerate(options) for g in list(options)[i + 1:]
             for x in options[f] for y in options[g]}
    assert every <= covered, sorted(every - covered)[:5]
    trains = {(f, x) for c in valid for f, x in c.items()}
    assert trains == {(f, x) for f in options for x in options[f]}  # every option trains in some case
    assert all(combinations.runs_together(c) for c in valid)


@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_every_case_trains_two_steps(case, small_sft, tmp_path):
    cfg = compose_schema("train", [*combinations.RUN, *SMALL, f"model.path={small_sft}", *combinations.overrides(case)])
    train_recipe.run(cfg, tmp_path)
    steps = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    losses = {k: v for r in steps for k, v in r.items() if k.startswith("train/") and isinstance(v, float)}
    assert all(math.isfinite(v) for v in losses.values()), {k: v for k, v in losses.items() if not math.isfinite(v)}
    assert moved(tmp_path, small_sft, lora=case["lora"] == "on")


def test_every_conflict_is_refused_in_one_line(tmp_path):
    _, refused = combinations.cases()
    assert refused  # gae without a critic, a critic without gae, a critic under one_step_off_policy
    for case, pair, named in refused:
        run_dir = tmp_path / "-".join(f"{f}={x}" for f, x in pair)
        with pytest.raises((ConfigError, DynamoError)) as caught:
            cfg = compose_schema("train", [*combinations.RUN, *SMALL, *combinations.overrides(case)])
            train_recipe.run(cfg, run_dir)
        message = str(caught.value)
        assert "\n" not in message and any(n in message for n in named), (pair, message)
        assert not (run_dir / "metrics.jsonl").exists()  # before the first step: nothing ran


@pytest.mark.parametrize("preset", ["gspo", "cispo", "dynamo"])
def test_the_sequence_level_presets_and_dynamos_dual_clip_train(preset, small_sft, tmp_path):
    # the presets' own values (their clip ranges, dual-clip at 10) at the matrix's size: 4 rollouts of 4 prompts
    cfg = compose_schema("train", [f"experiment={preset}", *combinations.RUN, *SMALL, f"model.path={small_sft}",
                                   *(["allocator.n_min=2", "allocator.n_max=8"] if preset == "dynamo" else [])])
    train_recipe.run(cfg, tmp_path)
    steps = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["train/loss"]) for r in steps)
    assert moved(tmp_path, small_sft, lora=False)


TWO_PROCESSES = [  # a few cases on 2 processes (DDP over gloo): the options whose maths spans the processes
    ["allocator=variance", "modulator=dynamo", "algorithm.loss_agg=group_mean", "algorithm.kl_coef=0.05"],
    ["allocator=greso", "modulator=fork_tokens", "algorithm.policy_loss=gspo", "algorithm.loss_agg=seq_mean_token_sum_norm"],
    ["sampler=curriculum", "modulator=dynamo", "modulator.scope=micro_batch", "algorithm.policy_loss=cispo",
     "rollout.one_step_off_policy=true"],
]


@pytest.mark.parametrize("overrides", TWO_PROCESSES, ids=lambda o: "-".join(x.split("=")[1] for x in o))
def test_cases_on_two_processes(overrides, small_sft, tmp_path):
    run = [o for o in combinations.RUN if o != "device=cpu"]  # launch adds it
    launch(2, "train", f"hydra.run.dir={tmp_path}", f"model.path={small_sft}", *run, *SMALL, *overrides)
    steps = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["train/loss"]) for r in steps)
    assert moved(tmp_path, small_sft, lora=False)


def test_the_docs_table_is_the_scripts():
    text = (REPO / "docs" / "methods.md").read_text()
    section = text.split(combinations.START, 1)[1].split(combinations.END, 1)[0].strip()
    assert section == combinations.table(), "regenerate it: python scripts/combinations.py --docs"
