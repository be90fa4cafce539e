"""rollout.one_step_off_policy (stages/schedule.py): step t+1 is sampled during step t's update, by the weights
before it; staleness logged; resume exact; refused where it cannot work."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ENV, REPO, dynamo, train_killed_after_checkpoint
from helpers import TRAIN_SMALL, final_metrics, free_port, read_jsonl, records

from dynamo_cli.stages.schedule import behaviour_copy, copy_weights


def _texts(run_dir, step: int) -> list[str]:
    return [r["completion"] for r in read_jsonl(run_dir / "rollouts.jsonl") if r["step"] == step]


def _metric(run_dir, key: str) -> list[float]:
    return [r[key] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]


def test_behaviour_copy_is_frozen_and_refreshed_in_place():
    policy = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    behaviour = behaviour_copy(policy)
    assert not any(p.requires_grad for p in behaviour.parameters()) and not behaviour.training
    with torch.no_grad():
        policy[0].weight.add_(1.0)
    assert not torch.equal(behaviour[0].weight, policy[0].weight)  # a copy, not a view
    before = behaviour[0].weight
    copy_weights(policy, behaviour)
    assert behaviour[0].weight is before and torch.equal(behaviour[0].weight, policy[0].weight)


def test_off_policy_samples_each_step_with_the_weights_before_the_last_update(sft_checkpoint, tmp_path):
    args = [f"model.path={sft_checkpoint}", "trainer.steps=3", "trainer.dump_rollouts=true", "trainer.eval_every=0",
            "eval.max_problems=4", *TRAIN_SMALL]
    off, frozen, on = tmp_path / "off", tmp_path / "frozen", tmp_path / "on"
    dynamo("train", f"hydra.run.dir={off}", "rollout.one_step_off_policy=true", "optim.lr=1e-2", *args)
    dynamo("train", f"hydra.run.dir={frozen}", "optim.lr=1e-30", *args)  # on-policy, weights that never move: θ_0 throughout
    dynamo("train", f"hydra.run.dir={on}", "optim.lr=1e-2", *args)
    assert _texts(off, 1) == _texts(frozen, 1) == _texts(on, 1)  # step 1: nothing to be stale against
    assert _texts(off, 2) == _texts(frozen, 2)  # step 2 was sampled during update 1, by θ_0
    assert _texts(on, 2) != _texts(off, 2)  # on-policy samples step 2 with θ_1
    assert _texts(off, 3) != _texts(frozen, 3)  # step 3: by θ_1, the copy was refreshed
    assert _metric(off, "rollout/staleness") == [0.0, 1.0, 1.0]
    assert _metric(on, "rollout/staleness") == [0.0, 0.0, 0.0]


def test_off_policy_sigkill_then_resume_matches_uninterrupted_run(sft_checkpoint, tmp_path):
    args = [f"model.path={sft_checkpoint}", "trainer.steps=4", "trainer.save_every=2", "trainer.eval_every=0",
            "trainer.dump_rollouts=true", "rollout.one_step_off_policy=true", "eval.max_problems=4", *TRAIN_SMALL]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    dynamo("train", f"hydra.run.dir={straight}", *args)
    train_killed_after_checkpoint(killed, *args)
    dynamo("train", f"hydra.run.dir={killed}", "trainer.resume=auto", *args)
    assert read_jsonl(killed / "rollouts.jsonl") == read_jsonl(straight / "rollouts.jsonl")  # step 3: the saved prefetch
    assert final_metrics(killed) == final_metrics(straight)
    assert _metric(killed, "rollout/staleness") == [0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("override,message", [
    ("rollout=vllm", "rollout.one_step_off_policy=true is built for rollout=hf only"),
    ("critic=separate", "rollout.one_step_off_policy=true with critic=separate"),
])
def test_off_policy_refuses_what_it_cannot_overlap_in_one_line(override, message, tmp_path):
    extra = ["algorithm.advantage=gae"] if override.startswith("critic") else []
    result = dynamo("train", "rollout.one_step_off_policy=true", override, *extra, f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_off_policy_on_two_processes_trains_like_one(sft_checkpoint, tmp_path):
    """The background collect's collectives run on a side channel (DataParallel.side_channel) while the update's run
    on the default group: 2 gloo processes give the 1-process run's completions, rewards and allocations."""
    from helpers import TRAIN_2P, launch

    args = [f"model.path={sft_checkpoint}", "rollout.one_step_off_policy=true", *TRAIN_2P]
    two, one = tmp_path / "two", tmp_path / "one"
    launch(2, "train", f"hydra.run.dir={two}", *args)
    dynamo("train", f"hydra.run.dir={one}", "device=cpu", *args)
    steps_two = [r for r in records(two / "metrics.jsonl") if "train/loss" in r]
    steps_one = [r for r in records(one / "metrics.jsonl") if "train/loss" in r]
    assert [r["rollout/staleness"] for r in steps_two] == [0.0, 1.0, 1.0]
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["dist/replica_param_diff"] == 0.0 and a["dist/replica_alloc_diff"] == 0.0
        assert a["rollout/reward_mean"] == b["rollout/reward_mean"] and a["alloc/max"] == b["alloc/max"]
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4, abs=1e-6)
    pairs = zip(records(two / "rollouts.jsonl"), records(one / "rollouts.jsonl"), strict=True)
    assert all((a["prompt_id"], a["n_alloc"], a["completion"], a["reward"]) == (b["prompt_id"], b["n_alloc"], b["completion"], b["reward"])
               for a, b in pairs)


def test_off_policy_under_fsdp2_is_refused_in_one_line(tmp_path):

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "conf/accelerate/fsdp2.yaml", "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", "dynamo_cli", "train", "rollout.one_step_off_policy=true", "logger=none",
           "device=cpu", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(cmd, cwd=REPO, env={**ENV, "OMP_NUM_THREADS": "1"}, text=True, capture_output=True, timeout=300)
    assert result.returncode != 0
    assert "dynamo train: error: rollout.one_step_off_policy=true under FSDP2" in result.stderr
