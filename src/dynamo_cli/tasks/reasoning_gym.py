"""task=reasoning_gym: procedural reasoning problems from the reasoning-gym library, judged by its own scorers.

    dynamo train task=reasoning_gym task.datasets={chain_sum: 1, basic_arithmetic: 2} +task.config.chain_sum.max_terms=3

Each generator named in task.datasets makes its share of task.num_train training problems (by weight) and
task.num_test_per_dataset held-out ones; item i of a generator is drawn from Random(seed + i), so one generator per
dataset, on a seed of its own (dataset_seed), gives training items 0..n-1 and test items from n on, and a test item
whose question a training item also asks is skipped: the splits never share a question. Prompt ids are
`<dataset>/<index>`; difficulty tags come from the item's metadata (difficulty_tag).

What a completion answers (extract: \\boxed{}, "the answer is", or in the plain format the line after the prompt's cue)
is scored by the generator's `score_answer` in worker processes (verify/reasoning_gym_worker.py): one that raises scores
0 and counts in rollout/reward_errors, one past task.reward_timeout is killed and counts in rollout/reward_timeouts.
The reward is 1 for full marks and 0 otherwise (reward_of), unless task.partial_credit=true passes the scorer's own
partial scores on (some give 0.01 for any parseable answer, or credit for an answer that contains the right one).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dynamo_cli.config.task import ReasoningGymTaskConfig
from dynamo_cli.tasks.answers import BOXED_MAX, TAIL_CHARS, Verdict, _after_answer_cue, _boxed_answers, _last_number
from dynamo_cli.tasks.base import TASKS, Problem, Task, TaskError, check_answer_rules, check_format, stable_unit
from dynamo_cli.verify.reasoning_gym_worker import encode_entry
from dynamo_cli.verify.verifiers import FAULT, Verification, warn_faults
from dynamo_cli.verify.worker import WorkerSlots

INSTALL = "pip install -e '.[reasoning_gym]' (or: make reasoning-gym)"
TEST_CANDIDATES = 4  # a generator's test split looks at most this many times num_test_per_dataset items past its training ones
TAG_MAX_VALUES = 32  # a difficulty key whose range holds more values than this is no tag (count_bits' n runs to 2^31)
WORKER_ARGV = [sys.executable, "-m", "dynamo_cli.verify.reasoning_gym_worker"]
FULL_MARKS = 1.0 - 1e-6  # a score at least this is right (scorers that compute a float may land a hair under 1)


def import_reasoning_gym():
    """The library, or a one-line TaskError naming the install command."""
    try:
        import reasoning_gym
    except ImportError as error:
        raise TaskError(f"task=reasoning_gym needs the reasoning-gym package, which is not installed: {INSTALL}") from error
    return reasoning_gym


def dataset_seed(seed: int, name: str) -> int:
    """A generator's own seed, from task.seed and its name: reasoning-gym draws item i from Random(seed + i), so two
    generators on one seed would draw from the same streams, and seeds s and s + 1 share all but one item."""
    return int(stable_unit(f"reasoning_gym/{seed}/{name}") * 2**31)


def split_by_weight(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` items shared in proportion to the weights, rounded by largest remainder (ties: the order given), so the
    counts add up to `total`. {a: 1, b: 2} of 10 -> {a: 3, b: 7} (3.33 and 6.67: b's remainder .67 takes the spare one)."""
    norm = sum(weights.values())
    exact = {name: total * w / norm for name, w in weights.items()}
    counts = {name: math.floor(x) for name, x in exact.items()}
    spare = total - sum(counts.values())
    for name in sorted(exact, key=lambda n: -(exact[n] - counts[n]))[:spare]:  # sorted() is stable: ties keep the order
        counts[name] += 1
    return counts


def difficulty_tag(name: str, metadata: dict) -> str:
    """The item's difficulty tag: `<dataset>/<key>=<value>,...` over the keys of metadata["difficulty"] (the generator's
    difficulty ranges) that vary, span at most TAG_MAX_VALUES integers and whose value the item states as an integer, in
    the generator's order; the dataset's name alone when none does. chain_sum with num_terms (2, 6), num_digits (1, 4)
    and an item of 3 terms of 2 digits: "chain_sum/num_terms=3,num_digits=2"."""
    ranges = metadata.get("difficulty") if isinstance(metadata, dict) else None
    parts = []
    for key, span in (ranges.items() if isinstance(ranges, dict) else ()):
        value = metadata.get(key)
        if not (isinstance(span, (tuple, list)) and len(span) == 2 and all(_is_int(x) for x in span) and _is_int(value)):
            continue
        if 0 < span[1] - span[0] < TAG_MAX_VALUES:
            parts.append(f"{key}={value}")
    return f"{name}/{','.join(parts)}" if parts else name


def reward_of(score: float, *, partial_credit: bool) -> float:
    """The reward of a scorer's score: clipped to [0, 1]; without partial credit 1 for full marks, else 0.
    0.75 -> 0.0 (or 0.75 with partial credit); 0.9999999 -> 1.0; 1.5 -> 1.0; -2 -> 0.0."""
    score = min(1.0, max(0.0, score))
    return score if partial_credit else float(score >= FULL_MARKS)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def extract(completion: str, *, format: str, fallback: str, answer_lines: int) -> tuple[list[str], str]:
    """(what the completion answers, the rule that found it: tasks/answers.py RULES). An empty list scores 0.

    plain: the prompt ends in its answer cue, so the completion's first `answer_lines` lines (the reference answer's
    line count) are the answer ("answer_cue"). chat: every \\boxed{} (each must hold the answer; more than BOXED_MAX
    is hedging: none), else what follows the last "the answer is"/"answer:", else the last number when
    fallback=last_number."""
    if not isinstance(completion, str):
        return [], "none"
    if format == "plain":
        answer = "\n".join(completion.lstrip().split("\n")[:answer_lines]).strip()
        return ([answer], "answer_cue") if answer else ([], "none")
    tail = completion[-TAIL_CHARS:]
    if "\\boxed" in tail:
        if tail.count("\\boxed") > BOXED_MAX:
            return [], "boxed"
        if boxed := _boxed_answers(tail):
            return boxed, "boxed"
    if (found := _after_answer_cue(tail)) is not None:
        return [found], "answer_cue"
    if fallback == "last_number" and (found := _last_number(tail)) is not None:
        return [found], "last_number"
    return [], "none"


def build_dataset(rg, name: str, keys: dict, *, seed: int, size: int):
    """reasoning-gym's generator `name` with the user's keys; a bad name or key is a one-line TaskError."""
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise TaskError(f"task.datasets: {name!r} is not a reasoning-gym generator; choose from: {', '.join(sorted(DATASETS))}")
    allowed = [f.name for f in dataclasses.fields(DATASETS[name][1]) if f.name not in ("seed", "size")]
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise TaskError(f"task.config.{name}: {', '.join(unknown)} not a key of {name}'s config; its keys: {', '.join(allowed)}")
    try:
        return rg.create_dataset(name, seed=seed, size=size, **keys)
    except Exception as error:  # its config's validate(): an assert or a ValueError
        raise TaskError(f"task.config.{name}={keys}: reasoning-gym refused it: {type(error).__name__}: {error}") from error


@TASKS.register(ReasoningGymTaskConfig)
class ReasoningGymTask(Task):
    """reasoning-gym generators as one task; prompt: the generator's question (chat: with the \\boxed{} instruction)."""

    name = "reasoning_gym"
    plain_cue = "\nAnswer: "

    def __init__(self, *, datasets: dict[str, float], config: dict[str, dict], seed: int, num_train: int,
                 num_test_per_dataset: int, format: str, workers: int, partial_credit: bool = False,
                 answer_type: str = "expression", answer_fallback: str = "auto"):
        rg = import_reasoning_gym()
        self.format = check_format(format)
        self.answer_type, self.answer_fallback = check_answer_rules(answer_type, answer_fallback, format)
        self.workers, self.partial_credit = workers, partial_credit
        self.specs: dict[str, dict] = {}  # generator -> the keys it was built with: the scoring workers build the same
        self.entries: dict[str, dict] = {}  # problem id -> reasoning-gym's item (question, answer, metadata)
        self._train: list[Problem] = []
        self._test: list[Problem] = []
        for name, n_train in split_by_weight(num_train, datasets).items():
            keys = dict((config or {}).get(name) or {})
            spec = {**keys, "seed": dataset_seed(seed, name), "size": n_train + TEST_CANDIDATES * num_test_per_dataset}
            dataset = build_dataset(rg, name, keys, seed=spec["seed"], size=spec["size"])
            self.specs[name] = spec
            train = [self._problem(name, dataset, i) for i in range(n_train)]
            asked = {p.question for p in train}
            test = []
            for i in range(n_train, spec["size"]):
                if len(test) == num_test_per_dataset:
                    break
                problem = self._problem(name, dataset, i)
                if problem.question not in asked:  # never a training question, nor twice the same
                    asked.add(problem.question)
                    test.append(problem)
                else:
                    del self.entries[problem.id]
            self._train += train
            self._test += test
        random.Random(seed).shuffle(self._train)  # interleave the generators so every batch sees the mix
        self._wire: dict[str, str] = {}  # problem id -> its item as the workers receive it, encoded once

    def _problem(self, name: str, dataset, index: int) -> Problem:
        try:
            entry = dataset[index]
        except Exception as error:
            raise TaskError(f"reasoning-gym's {name} failed to make item {index}: {type(error).__name__}: {error}") from error
        problem = Problem(id=f"{name}/{index}", question=str(entry["question"]), answer=str(entry["answer"]),
                          level=difficulty_tag(name, entry.get("metadata", {})))
        self.entries[problem.id] = entry
        return problem

    def train_problems(self) -> list[Problem]:
        return list(self._train)

    def test_problems(self) -> list[Problem]:
        """Grouped by generator, in task.datasets' order."""
        return list(self._test)

    def answer_of(self, completion: str, problem: Problem) -> tuple[list[str], str]:
        return extract(completion, format=self.format, fallback=self.answer_fallback,
                       answer_lines=problem.answer.strip().count("\n") + 1)

    def request(self, problem: Problem, answers: list[str]) -> dict:
        """What a scoring worker is asked for one completion."""
        if problem.id not in self._wire:
            self._wire[problem.id] = encode_entry(self.entries[problem.id])
        return {"dataset": problem.id.rsplit("/", 1)[0], "entry": self._wire[problem.id], "answers": answers}

    def judge(self, completion: str, problem: Problem) -> Verdict:
        """One completion, through the verifier (its scoring runs in a worker process)."""
        return self.verifier([completion], [problem]).verdicts[0]

    def default_verifier(self, *, timeout: float) -> ReasoningGymVerifier:
        return ReasoningGymVerifier(self, workers=self.workers, timeout=timeout)


class ReasoningGymVerifier:
    """Extracts each completion's answer here, scores it in one of `workers` processes (verify/reasoning_gym_worker.py),
    each call within `timeout` seconds: past it the worker is killed (restarted on the next call) and the completion
    scores 0, counted; a scorer that raises, a dead worker or a score that is not a finite number score 0, counted."""

    def __init__(self, task: ReasoningGymTask, *, workers: int, timeout: float):
        self.task, self.timeout = task, timeout
        self.slots = WorkerSlots([*WORKER_ARGV, json.dumps(task.specs)], what="reasoning-gym scoring", count=workers)
        self.lock = threading.Lock()  # one batch at a time (the collect thread and the main thread's eval share the workers)

    def __call__(self, completions: list[str], problems: list) -> Verification:
        with self.lock:
            return self._verify(completions, problems)

    def _verify(self, completions: list[str], problems: list) -> Verification:
        found = [self.task.answer_of(c, p) for c, p in zip(completions, problems, strict=True)]
        out = Verification(verdicts=[Verdict(0.0, rule, None) for _, rule in found])
        pending = iter([r for r, (answers, _) in enumerate(found) if answers])
        firsts: list[str] = []
        count = threading.Lock()

        def drain(slot: int) -> None:
            while True:
                with count:
                    r = next(pending, None)
                if r is None:
                    return
                answers, rule = found[r]
                reward, fault = self._score(slot, self.task.request(problems[r], answers))
                with count:
                    if fault == "timeout":
                        out.timeouts += 1
                        out.verdicts[r] = Verdict(0.0, rule, answers[-1], status="timeout", detail=f"timed out after {self.timeout}s")
                    elif fault is not None:
                        out.errors += 1
                        firsts.append(f"{fault} on {problems[r].id}")
                        out.verdicts[r] = dataclasses.replace(FAULT, rule=rule, extracted=answers[-1], detail=fault)
                    else:
                        out.verdicts[r] = Verdict(reward, rule, answers[-1])

        with ThreadPoolExecutor(len(self.slots)) as pool:
            list(pool.map(drain, range(len(self.slots))))
        warn_faults(out, firsts[0] if firsts else (f"timed out after {self.timeout}s" if out.timeouts else None),
                    source="reasoning-gym scoring")
        return out

    def _score(self, slot: int, request: dict) -> tuple[float, str | None]:
        """(reward, None), or (0, "timeout" | an error line); the slot's worker is restarted when it hung or died."""
        reply, fault = self.slots.ask(slot, request, self.timeout)
        if fault is not None:
            return 0.0, fault
        if "error" in reply:
            return 0.0, reply["error"]
        value = reply.get("score")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return 0.0, f"score_answer returned {value!r}, not a finite number"
        return reward_of(float(value), partial_credit=self.task.partial_credit), None

    def close(self) -> None:
        self.slots.close()
