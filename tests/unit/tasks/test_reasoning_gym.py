"""task=reasoning_gym: weights, tags and answer extraction by hand; with the library installed, held-out splits that never
share a question with training, scoring through the worker processes (faults counted, never raised), one-line errors."""
from __future__ import annotations

import sys

import pytest
from helpers import needs_reasoning_gym as needs_rg

from dynamo_cli.tasks.base import TaskError
from dynamo_cli.tasks.reasoning_gym import dataset_seed, difficulty_tag, extract, reward_of, split_by_weight


# ------------------------------------------------------------------------------------------ pure parts, by hand
def test_split_by_weight_by_hand():
    assert split_by_weight(10, {"a": 1, "b": 2}) == {"a": 3, "b": 7}  # 3.33, 6.67: b's larger remainder takes the spare
    assert split_by_weight(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}  # equal remainders: the order given
    assert split_by_weight(7, {"only": 0.5}) == {"only": 7}
    assert sum(split_by_weight(1001, {"x": 0.3, "y": 0.3, "z": 0.4}).values()) == 1001


def test_difficulty_tag_from_metadata():
    chain_sum = {"num_terms": 3, "num_digits": 2, "difficulty": {"num_terms": (2, 6), "num_digits": (1, 4)}}
    assert difficulty_tag("chain_sum", chain_sum) == "chain_sum/num_terms=3,num_digits=2"
    # a range of one value says nothing; one of 2^31 values is no tag; a list or float value is no tag either
    assert difficulty_tag("gcd", {"num_terms": 2, "difficulty": {"num_terms": (2, 2), "value": (1, 1000)}, "value": 7}) == "gcd"
    assert difficulty_tag("count_bits", {"n": 288545019, "difficulty": {"n": (1, 2**31 - 1)}}) == "count_bits"
    assert difficulty_tag("lcm", {"numbers": [98, 58], "difficulty": {"numbers": (2, 4)}}) == "lcm"
    assert difficulty_tag("jumble", {"corruption_level": 0.55, "difficulty": {"corruption_level": (0.1, 0.9)}}) == "jumble"
    # a scalar setting of the generator's config (bf's difficulty: 1) is the same for every item
    assert difficulty_tag("bf", {"difficulty": {"difficulty": 1}}) == "bf"
    assert difficulty_tag("syllogism", {}) == "syllogism"
    assert difficulty_tag("aiw", {"difficulty": None}) == "aiw"


def test_extract_plain_takes_the_lines_after_the_cue():
    assert extract(" 42\n7+8=15", format="plain", fallback="last_number", answer_lines=1) == (["42"], "answer_cue")
    grid = "1 0\n0 1\nand more"
    assert extract(grid, format="plain", fallback="none", answer_lines=2) == (["1 0\n0 1"], "answer_cue")
    assert extract("   \n", format="plain", fallback="none", answer_lines=1) == ([], "none")


def test_extract_chat_boxed_cue_and_fallback():
    assert extract("so \\boxed{-140}.", format="chat", fallback="none", answer_lines=1) == (["-140"], "boxed")
    # every boxed answer is scored (the lowest counts): hedging cannot win
    assert extract("\\boxed{3} or \\boxed{4}", format="chat", fallback="none", answer_lines=1) == (["3", "4"], "boxed")
    assert extract("\\boxed{1}" * 9, format="chat", fallback="none", answer_lines=1) == ([], "boxed")  # > BOXED_MAX
    assert extract("The answer is Fritz Smith.", format="chat", fallback="none", answer_lines=1) == (["Fritz Smith"], "answer_cue")
    assert extract("4 + 2 = 6", format="chat", fallback="none", answer_lines=1) == ([], "none")
    assert extract("4 + 2 = 6", format="chat", fallback="last_number", answer_lines=1) == (["6"], "last_number")
    assert extract(None, format="chat", fallback="none", answer_lines=1) == ([], "none")


def test_reward_of_by_hand():
    assert reward_of(0.75, partial_credit=False) == 0.0 and reward_of(0.75, partial_credit=True) == 0.75
    assert reward_of(0.01, partial_credit=False) == 0.0  # a format point is not a solved problem
    assert reward_of(0.9999999, partial_credit=False) == 1.0 and reward_of(1.5, partial_credit=True) == 1.0
    assert reward_of(-2.0, partial_credit=True) == 0.0


def test_dataset_seed_is_stable_and_differs_by_name_and_seed():
    assert dataset_seed(1234, "chain_sum") == dataset_seed(1234, "chain_sum")
    seeds = {dataset_seed(s, n) for s in (0, 1) for n in ("chain_sum", "products")}
    assert len(seeds) == 4
    # seeds s and s + 1 would share all but one item (reasoning-gym draws item i from Random(seed + i)): far apart
    assert abs(dataset_seed(0, "chain_sum") - dataset_seed(1, "chain_sum")) > 10_000


def test_missing_library_is_one_line_naming_the_install_command(monkeypatch):
    from dynamo_cli.tasks.reasoning_gym import ReasoningGymTask

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # what `import reasoning_gym` meets when it is not installed
    with pytest.raises(TaskError) as error:
        ReasoningGymTask(datasets={"chain_sum": 1}, config={}, seed=0, num_train=4, num_test_per_dataset=2, format="plain", workers=1)
    message = str(error.value)
    assert "\n" not in message and "pip install -e '.[reasoning_gym]'" in message and "make reasoning-gym" in message


# ------------------------------------------------------------------------------------------ with the library
def small_task(**overrides):
    from dynamo_cli.tasks.reasoning_gym import ReasoningGymTask

    settings = dict(datasets={"chain_sum": 1}, config={}, seed=1234, num_train=300, num_test_per_dataset=40, format="chat", workers=2)
    return ReasoningGymTask(**{**settings, **overrides})


@needs_rg
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_split_never_shares_a_question_with_training(seed):
    # a small question space (two one-digit terms: 10 x 10 x 2 questions), so training repeats and covers much of it
    task = small_task(seed=seed, num_train=150, num_test_per_dataset=30,
                      config={"chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}})
    train, test = task.train_problems(), task.test_problems()
    assert len(train) == 150 and 0 < len(test) <= 30
    train_questions = {p.question for p in train}
    assert len(train_questions) < len(train)  # the space is small enough that training repeats questions
    assert not train_questions & {p.question for p in test}
    assert len({p.question for p in test}) == len(test)
    assert len({p.id for p in train + test}) == len(train) + len(test)


@needs_rg
def test_ids_weights_determinism_and_tags():
    task = small_task(datasets={"chain_sum": 1, "basic_arithmetic": 2}, num_train=90, num_test_per_dataset=10)
    train, test = task.train_problems(), task.test_problems()
    names = [p.id.rsplit("/", 1)[0] for p in train]
    assert names.count("chain_sum") == 30 and names.count("basic_arithmetic") == 60
    assert all(p.id.rsplit("/", 1)[1].isdigit() for p in train + test)
    assert [p.id.split("/")[0] for p in test] == ["chain_sum"] * 10 + ["basic_arithmetic"] * 10  # grouped, in the order given
    # the same seed: the same problems in the same order; the training order interleaves the generators
    again = small_task(datasets={"chain_sum": 1, "basic_arithmetic": 2}, num_train=90, num_test_per_dataset=10)
    assert again.train_problems() == train and again.test_problems() == test
    assert names[:30].count("chain_sum") not in (0, 30)
    other = small_task(datasets={"chain_sum": 1, "basic_arithmetic": 2}, num_train=90, num_test_per_dataset=10, seed=99)
    assert {p.question for p in other.train_problems()} != {p.question for p in train}
    # chain_sum's tags name its terms and digits; the answer is the library's
    p = next(p for p in train if p.id.startswith("chain_sum/"))
    assert p.level.startswith("chain_sum/num_terms=") and ",num_digits=" in p.level
    assert p.answer == str(task.entries[p.id]["answer"]) and p.question == task.entries[p.id]["question"]


@needs_rg
def test_tags_order_the_curriculum():
    from dynamo_cli.sampling.curriculum import CurriculumSampler

    task = small_task(num_train=200)
    problems = task.train_problems()
    assert len({p.level for p in problems}) > 5
    sampler = CurriculumSampler(problems=problems, seed=0, order="tag", pacing="linear", start=0.2, pace_steps=10, stages=3,
                                tag_order=None, steps=20)
    assert problems[int(sampler.ordering()[0])].level == "chain_sum/num_terms=2,num_digits=1"  # natural sort: 2 terms of 1 digit first
    drawn = [problems[i] for i in sampler.prompt_indices(1, num_problems=len(problems), per_step=16)]
    terms = [int(p.level.split("num_terms=")[1].split(",")[0]) for p in drawn]
    assert max(terms) <= 3  # step 1 draws from the easiest fifth: 2 terms (a fifth of the items), at most a few of 3


@needs_rg
def test_prompt_formats(chat_tokenizer):
    plain, chat = small_task(format="plain", num_train=4, num_test_per_dataset=2), small_task(num_train=4, num_test_per_dataset=2)
    p = plain.train_problems()[0]
    assert plain.prompt_text(p) == p.question + "\nAnswer: "
    assert plain.demonstration(p) == p.answer
    text = chat.prompt_text(p, chat_tokenizer)
    assert p.question in text and "\\boxed{}" in text and text.endswith("<|assistant|>")
    assert chat.demonstration(p) == f"The answer is \\boxed{{{p.answer}}}."


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A one-token-vocab tokenizer with a trivial chat template: no hub download."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                   chat_template=template)


@needs_rg
def test_scoring_in_workers_right_wrong_hedged_and_faults_counted():
    task = small_task(num_train=20, num_test_per_dataset=4)
    verifier = task.default_verifier(timeout=30.0)
    a, b, c, d = task.test_problems()[:4]
    completions = [f"The answer is \\boxed{{{a.answer}}}.", f"The answer is {b.answer}.", f"\\boxed{{{c.answer}}} or \\boxed{{{c.answer}1}}",
                   "I cannot say", f"\\boxed{{+{a.answer}.00}}"]
    out = verifier(completions, [a, b, c, d, a])
    assert [v.reward for v in out.verdicts] == [1.0, 1.0, 0.0, 0.0, 1.0]  # chain_sum's own scorer takes "+85.00" for 85
    assert [v.rule for v in out.verdicts] == ["boxed", "answer_cue", "boxed", "none", "boxed"]
    assert out.metrics() == {"rollout/reward_errors": 0.0, "rollout/reward_timeouts": 0.0}
    assert task.judge(completions[0], a).reward == 1.0
    # with partial credit the scorer's own value: chain_sum credits "-1401" for containing "-140" (len ratio)
    task.partial_credit = True
    hedged = verifier([completions[2]], [c]).verdicts[0].reward
    assert hedged == len(c.answer) / (len(c.answer) + 1)
    task.partial_credit = False

    # a scorer that raises (an item without its answer: chain_sum's score_answer looks it up) scores 0, counted
    broken = {k: v for k, v in task.entries[b.id].items() if k != "answer"}
    task.entries[b.id], task._wire = broken, {}
    out = verifier([f"\\boxed{{{b.answer}}}", f"\\boxed{{{a.answer}}}"], [b, a])
    assert [v.reward for v in out.verdicts] == [0.0, 1.0] and out.errors == 1 and out.verdicts[0].status == "error"
    assert "KeyError" in out.verdicts[0].detail

    # past the deadline: the worker is killed, the completion scores 0, counted; the next call starts a new worker
    verifier.timeout = 1e-6
    out = verifier([f"\\boxed{{{a.answer}}}"], [a])
    assert out.timeouts == 1 and out.verdicts[0].reward == 0.0 and out.verdicts[0].status == "timeout"
    verifier.timeout = 30.0
    out = verifier([f"\\boxed{{{a.answer}}}"] * 4, [a] * 4)
    assert [v.reward for v in out.verdicts] == [1.0] * 4 and out.timeouts == out.errors == 0
    verifier.close()


@needs_rg
@pytest.mark.parametrize("overrides, message", [
    ({"datasets": {"chian_sum": 1}}, "task.datasets: 'chian_sum' is not a reasoning-gym generator; choose from: "),
    ({"config": {"chain_sum": {"max_term": 3}}}, "task.config.chain_sum: max_term not a key of chain_sum's config; its keys: "),
    ({"config": {"chain_sum": {"min_terms": 5, "max_terms": 2}}}, "task.config.chain_sum={'min_terms': 5, 'max_terms': 2}: reasoning-gym refused it"),
])
def test_bad_generator_or_key_is_one_line(overrides, message):
    with pytest.raises(TaskError) as error:
        small_task(**overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
