"""Eval batch by batch (for its progress bar) generates exactly what one call did: the same batches, the same completions."""
from __future__ import annotations

import pytest
import torch

from dynamo_cli.config.eval import EvalSettings
from dynamo_cli.config.model import TinyModelConfig
from dynamo_cli.models.load import load_policy
from dynamo_cli.rollout.episodes import EPISODES
from dynamo_cli.rollout.hf import generate, stream_seed
from dynamo_cli.stages.evaluate import episodes_by_batch, evaluate, generation_batches
from dynamo_cli.tasks.math import MathTask


def test_generation_batches_by_hand():
    # rows (prompt, sample): 6 rows > 4, so sorted by prompt length (stable): (1,0) (1,1) (0,0) (0,1) | (2,0) (2,1)
    assert generation_batches([5, 3, 5], [2, 2, 2], 4) == [[(1, 0, 2), (0, 0, 2)], [(2, 0, 2)]]
    # a batch boundary inside a prompt's samples: 3 x 3 rows in batches of 4
    assert generation_batches([1, 1, 1], [3, 3, 3], 4) == [[(0, 0, 3), (1, 0, 1)], [(1, 1, 2), (2, 0, 2)], [(2, 2, 1)]]
    # rows that fit one batch keep their order (generate sorts only when it cuts)
    assert generation_batches([9, 2], [1, 1], 8) == [[(0, 0, 1), (1, 0, 1)]]
    assert generation_batches([], [], 4) == []


@pytest.fixture(scope="module")
def setting():
    model, tokenizer = load_policy(TinyModelConfig(), torch.device("cpu"))
    task = MathTask(seed=0, num_train=10, num_test_per_level=4, levels=["L1", "L3", "L5"], format="plain")
    return model, tokenizer, task, task.test_problems()  # prompts of 4, 5 and 6 characters: generate sorts them


def test_batch_by_batch_matches_one_call_and_reports_progress(setting):
    model, tokenizer, task, problems = setting
    settings = EvalSettings(n_samples=3, temperature=1.0, ks=[1, 3], batch_size=5)
    calls = []
    result = evaluate(model, tokenizer, task, problems, settings=settings, max_new_tokens=6, seed=7, batch_size=5,
                      progress=lambda done, total: calls.append((done, total)))

    # what evaluate did before it went batch by batch: one call per phase, generate cutting its own batches
    episodes = EPISODES.build(task, task=task, generate=lambda *a, **k: generate(model, tokenizer, *a, **k), policy=model,
                              tokenizer=tokenizer)
    prompts = [task.prompt_text(p) for p in problems]
    greedy = episodes(problems, prompts, counts=torch.ones(len(problems), dtype=torch.long), max_new_tokens=6,
                      temperature=0.0, top_p=1.0, seed=None, max_batch_size=5)
    sampled = episodes(problems, prompts, counts=torch.full((len(problems),), 3, dtype=torch.long), max_new_tokens=6,
                       temperature=1.0, top_p=1.0, seed=stream_seed(7), streams=torch.arange(0, 3 * len(problems)), max_batch_size=5)
    correct = [0] * len(problems)
    for i, reward in zip(sampled.rollouts.prompt_index.tolist(), sampled.rewards.tolist(), strict=True):
        correct[i] += int(reward > 0)

    # and the sampled rows themselves, text by text, batch by batch as evaluate generates them
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    rows = episodes_by_batch(episodes, problems, prompts, counts=[3] * len(problems), first_streams=[3 * i for i in range(len(problems))],
                             lengths=lengths, batch_size=5, advance=lambda rows: None, max_new_tokens=6, temperature=1.0,
                             top_p=1.0, seed=stream_seed(7))
    assert [text for _, _, text, _ in rows] == sampled.rollouts.texts
    assert len(set(sampled.rollouts.texts)) > 3  # sampled: not one text over and over

    assert [p["greedy_completion"] for p in result["problems"]] == greedy.rollouts.texts
    assert [p["greedy"] for p in result["problems"]] == greedy.rewards.tolist()
    assert [p["correct"] for p in result["problems"]] == correct
    # 12 greedy rows in batches of 5, then 36 sampled rows: done grows to the total, 4 x 12 sequences
    assert calls == [(5, 48), (10, 48), (12, 48), *[(12 + d, 48) for d in (5, 10, 15, 20, 25, 30, 35, 36)]]
