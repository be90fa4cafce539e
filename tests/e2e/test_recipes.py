"""Tier 3: tiny end-to-end CPU runs of sft, eval and train, as a user runs them."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import dynamo, train_killed_after_checkpoint
from helpers import TRAIN_SMALL, final_metrics, read_jsonl
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from dynamo_cli.cli import CONF_DIR, register_resolvers, to_schema
from dynamo_cli.config.store import register_schemas


def test_sft_checkpoint_loads_and_generates_with_plain_transformers(sft_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(sft_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(sft_checkpoint)
    ids = tokenizer("12+34=", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert isinstance(text, str) and out.shape[1] > ids["input_ids"].shape[1]
    run_dir = sft_checkpoint.parents[1]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "eval.json").is_file()
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert any("train/loss" in r for r in records) and any("eval/greedy_pass1" in r for r in records)


@pytest.mark.smoke  # in `make test`
def test_eval_writes_eval_json_and_prints_run_dir_last(sft_checkpoint, tmp_path):
    result = dynamo("eval", "logger=none", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}",
                    "eval.max_problems=30", "eval.n_samples=3", "eval.ks=[1,2,3]")
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path)
    report = json.loads((tmp_path / "eval.json").read_text())
    overall = report["overall"]
    assert overall["problems"] == 30 and report["levels"].keys() == {"L3", "L4", "L5"} and {"greedy", "mean@n", "pass@1", "pass@2", "pass@3"} <= set(overall)
    assert overall["pass@1"] <= overall["pass@2"] <= overall["pass@3"]
    assert abs(overall["pass@1"] - overall["mean@n"]) < 1e-9  # pass@1 is the mean success rate
    assert set(report["levels"]) and "greedy" in result.stdout
    assert {p["greedy_rule"] for p in report["problems"]} <= {"boxed", "answer_cue", "last_number", "none"}


def test_wandb_offline_by_default_writes_into_the_run_dir(sft_checkpoint, tmp_path):
    dynamo("eval", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", "eval.max_problems=5", "eval.n_samples=0")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


@pytest.mark.smoke  # in `make test`
def test_train_smoke_changes_parameters_and_writes_everything(sft_checkpoint, tmp_path):
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", "trainer.steps=2",
           "trainer.dump_rollouts=true", "optim.lr=1e-3", *TRAIN_SMALL)
    before = AutoModelForCausalLM.from_pretrained(sft_checkpoint).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    steps = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ["rollout/reward_mean", "rollout/zero_signal_frac", "alloc/max", "train/clip_frac", "train/grad_norm",
                "mod/beta_comp_mean", "mod/beta_stab_mean", "time/tokens_per_s", "alloc/counts_p50",
                "rollout/extract_last_number_frac", "rollout/extract_none_frac", "alloc/history_coverage", "alloc/cv"]:
        assert key in steps[-1], key
    rollouts = read_jsonl(tmp_path / "rollouts.jsonl")
    assert len(rollouts) == sum(r["rollout/count"] for r in steps) == 2 * 8 * 4  # budget B = n * P, exactly
    assert {"step", "prompt_id", "prompt", "completion", "reward", "rule", "n_alloc", "advantage"} <= set(rollouts[0])
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "config.yaml").is_file()
    first = records[0]  # step 0: the eval before RL and the batch sizes chosen
    assert first["step"] == 0 and first["resources/train_micro_batch"] == 16  # set explicitly in TRAIN_SMALL
    assert first["resources/generation_batch"] == 32  # auto: the whole step's 8 x 4 rollouts fit at once
    before_rl = json.loads((tmp_path / "eval_before.json").read_text())  # the starting policy, kept beside eval.json
    assert before_rl["overall"]["greedy"] == first["eval/greedy_pass1"]
    assert [p["id"] for p in before_rl["problems"]] == [p["id"] for p in json.loads((tmp_path / "eval.json").read_text())["problems"]]


# every token-level baseline and overlong option (docs/methods.md "Baselines"): (overrides, a metric only that option writes)
NEW_OPTIONS = {
    "fork_tokens": (["modulator=fork_tokens"], "mod/kept_frac"),
    "entropy_advantage": (["modulator=entropy_advantage"], "mod/entropy_bonus_mean"),
    "clip_cov": (["modulator=clip_cov", "modulator.fraction=0.05"], "mod/detached_frac"),
    "kl_cov": (["modulator=kl_cov", "modulator.fraction=0.05"], "train/kl_cov"),
    "w_reinforce": (["algorithm.advantage=w_reinforce"], "rollout/zero_signal_frac"),
    "overlong": (["algorithm.mask_truncated=true", "algorithm.overlong_penalty.factor=1.0",
                  "algorithm.overlong_penalty.buffer=4"], "rollout/overlong_penalty_mean"),
}


@pytest.mark.parametrize("option", sorted(NEW_OPTIONS))
def test_train_two_steps_with_each_baseline_option(option, sft_checkpoint, tmp_path):
    overrides, metric = NEW_OPTIONS[option]
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", "trainer.steps=2", "optim.lr=1e-3",
           "trainer.eval_every=0", *[o for o in TRAIN_SMALL if not o.startswith("eval.")], "eval.max_problems=4",
           "eval.n_samples=0", *overrides)
    steps = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(metric in r and math.isfinite(r[metric]) for r in steps)
    before = AutoModelForCausalLM.from_pretrained(sft_checkpoint).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_rollouts_are_scored_against_their_own_prompt(sft_checkpoint, tmp_path, monkeypatch):
    """Alignment by construction: with unequal group sizes, every completion is verified against its own
    prompt's answer. The policy is replaced by an oracle that answers each row's own prompt correctly,
    so any misalignment between completions, prompts and answers shows up as a reward of 0."""
    from dynamo_cli.recipes import train as train_recipe
    from dynamo_cli.rollout import hf as rollout_module

    real_generate = rollout_module.generate

    def oracle_generate(model, tokenizer, prompts, **kwargs):
        rollouts = real_generate(model, tokenizer, prompts, **kwargs)
        answers = {p: str(eval(p.rstrip("="))) for p in prompts}  # noqa: S307 - our own arithmetic
        rollouts.texts = [answers[prompts[i]] for i in rollouts.prompt_index.tolist()]
        return rollouts

    monkeypatch.setattr(rollout_module, "generate", oracle_generate)  # what rollout=hf calls
    register_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = to_schema(compose(config_name="train", overrides=[
            # every level: distinct prompts within a step, so each prompt id is exactly one group
            f"model.path={sft_checkpoint}", "trainer.steps=3", "trainer.dump_rollouts=true",
            *[o for o in TRAIN_SMALL if not o.startswith("task.levels")],
            "allocator.n_min=1", "allocator.explore_min_attempts=0", "eval.max_problems=4", "logger.console=plain"]))
    train_recipe.run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "rollouts.jsonl")
    assert rows and all(r["reward"] == 1.0 and r["rule"] == "last_number" for r in rows)  # plain: the bare answer
    assert all(r["prompt_id"].endswith("/" + r["prompt"].rstrip("=")) for r in rows)
    for step in {r["step"] for r in rows}:
        sizes = {}
        for r in rows:
            if r["step"] == step:
                sizes.setdefault(r["prompt_id"], []).append(r["n_alloc"])
        assert all(len(v) == v[0] for v in sizes.values())  # n_alloc = the group's actual size
        assert sum(len(v) for v in sizes.values()) == 8 * 4
    assert all(r["advantage"] == 0.0 for r in rows)  # all-correct groups carry no signal, explicitly


def test_score_judges_each_row_against_its_own_problem_and_names_its_rule():
    from types import SimpleNamespace

    from dynamo_cli.rollout.episodes import score
    from dynamo_cli.tasks.answers import RULES
    from dynamo_cli.tasks.base import Problem
    from dynamo_cli.tasks.math import MathTask

    task = MathTask(seed=0, num_train=6, num_test_per_level=1, levels=["L1"], format="chat")
    problems = [Problem("math/L1/3+5", "3+5", "8", "L1"), Problem("math/L6/68*3", "68*3", "204", "L6")]
    rollouts = SimpleNamespace(prompt_index=torch.tensor([0, 1, 1, 0]),
                               texts=["\\boxed{8}", "The answer is 68*3", "\\boxed{204}", "3 + 5 = 8"])
    rewards, rules, faults = score(task, problems, rollouts)
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert faults == {"rollout/reward_errors": 0.0, "rollout/reward_timeouts": 0.0}
    assert [RULES[k] for k in rules.tolist()] == ["boxed", "answer_cue", "boxed", "none"]


def test_sigkill_then_resume_matches_uninterrupted_run(sft_checkpoint, tmp_path):
    args = [f"model.path={sft_checkpoint}", "trainer.steps=6", "trainer.save_every=2", "trainer.eval_every=3",
            "trainer.dump_rollouts=true", "seed=3", *TRAIN_SMALL]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    dynamo("train", f"hydra.run.dir={straight}", *args)

    train_killed_after_checkpoint(killed, *args)
    assert not (killed / "checkpoints" / "final").exists()

    dynamo("train", f"hydra.run.dir={killed}", "trainer.resume=auto", *args)
    assert final_metrics(killed) == final_metrics(straight)
    assert json.loads((killed / "eval.json").read_text())["overall"] == json.loads((straight / "eval.json").read_text())["overall"]
    assert [r["step"] for r in read_jsonl(killed / "metrics.jsonl") if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert read_jsonl(killed / "rollouts.jsonl") == read_jsonl(straight / "rollouts.jsonl")

    # resuming a finished run starts from `final`: nothing is trained or logged again
    dynamo("train", f"hydra.run.dir={killed}", "trainer.resume=auto", *args)
    assert [r["step"] for r in read_jsonl(killed / "metrics.jsonl") if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert final_metrics(killed) == final_metrics(straight)


def test_train_refuses_to_mix_two_runs_in_one_dir(sft_checkpoint, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "train/loss": 0.1}\n')
    result = dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", *TRAIN_SMALL, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dynamo train: error: {tmp_path} already holds a run (metrics.jsonl): continue it with trainer.resume=auto "
        "or choose another hydra.run.dir"]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 3, "train/loss": 0.1}\n'  # nothing lost


def test_eval_subset_keeps_every_level():
    from dynamo_cli.stages.evaluate import eval_subset
    from dynamo_cli.tasks.base import Problem

    problems = [Problem(f"p{i}", "q", "1", level) for i, level in enumerate("AAAABBC")]
    # round-robin over A, B, C: A0, B4, C6, A1, B5 -> kept in the original order
    assert [p.id for p in eval_subset(problems, 5)] == ["p0", "p1", "p4", "p5", "p6"]
    assert eval_subset(problems, None) == problems and eval_subset(problems, 99) == problems


PPO = ["algorithm.advantage=gae", "critic=separate", "modulator=dynamo", "allocator=variance", "optim.lr=1e-3", "critic.lr=1e-3"]


def test_ppo_with_a_critic_and_dynamo_trains_policy_and_critic(sft_checkpoint, tmp_path):
    """DynaMO's allocation and modulation on GAE advantages: 2 steps change the policy and the critic, both saved."""
    dynamo("train", f"model.path={sft_checkpoint}", f"hydra.run.dir={tmp_path}", "trainer.steps=2", *PPO, *TRAIN_SMALL)
    from transformers import AutoModelForTokenClassification

    before = AutoModelForCausalLM.from_pretrained(sft_checkpoint).state_dict()
    final = tmp_path / "checkpoints" / "final"
    after = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    critic = AutoModelForTokenClassification.from_pretrained(final / "critic").state_dict()  # plain transformers loads it
    assert critic["score.weight"].shape[0] == 1
    trunk = [k for k in critic if k.startswith("model.")]  # the critic started as a copy of the SFT policy's trunk
    assert trunk and any(not torch.equal(critic[k], before[k]) for k in trunk)
    steps = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ["train/value_loss", "train/vf_clip_frac", "train/critic_grad_norm", "train/critic_lr", "mod/beta_comp_mean",
                "mod/beta_stab_mean", "alloc/max"]:
        assert key in steps[-1], key
    assert steps[-1]["train/critic_grad_norm"] > 0 and steps[-1]["train/grad_norm"] > 0


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_resume_restores_the_critic_exactly(sft_checkpoint, tmp_path, critic):
    """A run resumed from its step-2 checkpoint (policy, critic weights, both optimisers, critic warm-up over by then)
    ends where the uninterrupted run ends; with either critic (shared: a value head on the policy's trunk)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    ppo = [arg.replace("critic=separate", f"critic={critic}") for arg in PPO]
    args = [f"model.path={sft_checkpoint}", "trainer.steps=4", "trainer.save_every=2", "critic.warmup_steps=1",
            "algorithm.kl_in_reward=0.01", "seed=5", *ppo, *TRAIN_SMALL]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    dynamo("train", f"hydra.run.dir={straight}", *args)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step-2", resumed / "checkpoints" / "step-2")
    dynamo("train", f"hydra.run.dir={resumed}", "trainer.resume=auto", *args)
    assert [r["step"] for r in read_jsonl(resumed / "metrics.jsonl") if "train/loss" in r] == [3, 4]
    assert final_metrics(resumed) == final_metrics(straight)
    critic_state = ((lambda d: AutoModelForTokenClassification.from_pretrained(d).state_dict()) if critic == "separate"
                    else (lambda d: load_file(str(d / "value_head.safetensors"))))
    for load, sub in [(lambda d: AutoModelForCausalLM.from_pretrained(d).state_dict(), ""), (critic_state, "critic")]:
        a = load(straight / "checkpoints" / "final" / sub)
        b = load(resumed / "checkpoints" / "final" / sub)
        assert a and all(torch.equal(a[k], b[k]) for k in a), sub
    if critic == "shared":  # the head trained, and the run logged the critic's own norm and lr
        steps = [r for r in read_jsonl(straight / "metrics.jsonl") if "train/loss" in r]
        assert steps[-1]["train/critic_grad_norm"] > 0 and steps[-1]["train/value_loss"] > 0 and "train/critic_lr" in steps[-1]
        first = load_file(str(straight / "checkpoints" / "step-2" / "critic" / "value_head.safetensors"))
        assert not torch.equal(first["score.weight"], critic_state(straight / "checkpoints" / "final" / "critic")["score.weight"])
