"""Tasks: deterministic, disjoint splits; demonstrations that verify; a verifier that never raises."""

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from dynamo_cli.tasks import JsonlTask, MathTask, Problem, TaskError
from dynamo_cli.tasks.answers import answers_match, extract_answer
from dynamo_cli.tasks.jsonl import parse_answer_field
from dynamo_cli.tasks.math import LEVELS

FIXTURE = Path(__file__).parent / "fixtures" / "arith_word_problems.jsonl"
ALL_LEVELS = list(LEVELS)


def math_task(seed=0, format="plain", num_train=600, num_test_per_level=50):
    return MathTask(
        seed=seed,
        num_train=num_train,
        num_test_per_level=num_test_per_level,
        levels=ALL_LEVELS,
        format=format,
    )


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A one-token-vocab tokenizer with a trivial chat template: no hub download."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    vocab = models.WordLevel({"<unk>": 0}, unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocab), chat_template=template)


@pytest.fixture(scope="module")
def fixture_task():
    return JsonlTask(path=FIXTURE, seed=0, level_field="level")


# ---------------------------------------------------------------- math task


def test_math_same_seed_is_identical_and_other_seed_only_reorders_train():
    a, b, c = math_task(seed=0), math_task(seed=0), math_task(seed=1)
    assert a.train_problems() == b.train_problems()
    assert a.test_problems() == b.test_problems()
    assert a.train_problems() != c.train_problems()
    assert a.test_problems() == c.test_problems()  # evaluations comparable across runs


def test_math_train_and_test_are_disjoint_across_seeds():
    test = {p.question for p in math_task(seed=0).test_problems()}
    for seed in range(4):
        train = {p.question for p in math_task(seed=seed).train_problems()}
        assert not train & test


def test_math_ids_unique_stable_and_levels_spread():
    task = math_task()
    test = task.test_problems()
    assert len({p.id for p in test}) == len(test)
    assert test[0].id == f"math/{test[0].level}/{test[0].question}"
    # the same question gets the same id in any run that samples it
    again = {p.question: p.id for p in math_task(seed=3).train_problems()}
    for p in task.train_problems():
        assert again.get(p.question, p.id) == p.id
    # 600 train over 6 levels -> 100 each; L1's small test bucket is taken whole (< 50)
    assert Counter(p.level for p in task.train_problems()) == {name: 100 for name in ALL_LEVELS}
    counts = Counter(p.level for p in test)
    assert set(counts) == set(ALL_LEVELS)
    assert 0 < counts["L1"] < 50 and counts["L6"] == 50


def test_math_l1_exhaustion_repeats_train_problems():
    task = MathTask(seed=0, num_train=300, num_test_per_level=10, levels=["L1"], format="plain")
    train = task.train_problems()
    assert len(train) == 300 and len({p.question for p in train}) < 100


def test_math_answers_and_plain_prompt():
    task = math_task()
    p = Problem("math/L2/37+48", "37+48", "85", "L2")
    assert task.prompt_text(p, tokenizer=None) == "37+48="
    assert task.demonstration(p) == "85"
    for p in task.train_problems() + task.test_problems():
        assert int(p.answer) == eval(p.question)  # noqa: S307 - our own generated arithmetic
        assert p.level != "L3" or int(p.answer) >= 0


@pytest.mark.parametrize("format", ["plain", "chat"])
def test_math_every_demonstration_verifies(format):
    task = math_task(format=format)
    for p in task.train_problems() + task.test_problems():
        assert task.verify(task.demonstration(p), p) == 1.0, p


def test_math_chat_prompt(chat_tokenizer):
    task = math_task(format="chat")
    p = task.test_problems()[0]
    prompt = task.prompt_text(p, chat_tokenizer)
    assert prompt.startswith("<|user|>") and prompt.endswith("<|assistant|>")
    assert p.question in prompt and "\\boxed{}" in prompt
    assert task.demonstration(p) == f"The answer is \\boxed{{{p.answer}}}."


def test_math_bad_settings_raise_task_error():
    with pytest.raises(TaskError, match="L9"):
        MathTask(seed=0, num_train=10, num_test_per_level=1, levels=["L9"], format="plain")
    with pytest.raises(TaskError, match="format"):
        MathTask(seed=0, num_train=10, num_test_per_level=1, levels=["L1"], format="xml")


def test_plain_verify_reads_only_the_first_line():
    task = math_task()
    p = Problem("math/L2/37+48", "37+48", "85", "L2")
    assert task.verify("85\n12+3=15", p) == 1.0  # kept generating past the answer: still 85
    assert task.verify("86\n85", p) == 0.0


# ---------------------------------------------------------------- answer extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", None),
        ("   \n\t", None),
        ("85\n", "85"),
        (" 85 ", "85"),
        ("-3", "-3"),
        ("8 5", "5"),  # two numbers: the last one wins; never glued into 85
        ("5-3", "3"),  # a binary minus is not a sign
        ("so x = -3", "-3"),
        ("1,234", "1,234"),
        ("3/4", "3/4"),
        ("it is 2.5.", "2.5"),
        ("\\boxed{85}", "85"),
        ("\\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}"),  # nested braces
        ("first \\boxed{3}, then \\boxed{85}", "85"),
        ("\\boxed{7} and an unclosed \\boxed{8", "7"),
        ("\\boxed{}", None),
        ("The answer is 85.", "85"),
        ("the final answer is 85 apples. I think 7", "85"),
        ("The answer is 10 + 7 = 17.", "17"),  # a worked equation: its value, not its first term
        ("the final answer:\n\n1 - 1 = 0\n\nthen 6", "0"),
        ("Answer: $\\frac{3}{4}$", "\\frac{3}{4}"),
        ("The answer is 2x+1.", "2x+1"),
        ("85abc!!??", "85"),
        ("ñ∑★ 🎉 ٣", None),  # unicode digits are not ASCII answers
        ("a" * 10_000 + "42", "42"),
        ("42" + "a" * 10_000, None),  # only the last TAIL_CHARS are read
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "predicted, reference, expected",
    [
        ("85", "85", True),
        (" 85 ", "85", True),
        ("085", "85", True),  # numerically equal
        ("85.0", "85", True),
        ("+85", "85", True),
        ("$85$", "85", True),
        ("1,234", "1234", True),
        ("84", "85", False),
        ("-3", "3", False),
        (None, "85", False),
        ("abc", "85", False),
        ("0.5", "1/2", True),  # plain numbers compare exactly as rationals
        ("\\frac{1}{2}", "0.5", True),  # symbolic: math_verify
        ("\\frac{1}{2}", "1/2", True),
        ("x+1", "1+x", True),
        ("\\frac{1}{3}", "0.5", False),
        ("9^{99999}", "1", False),  # refused before sympy could stall
        ("\\frac{1}{", "1", False),  # junk sympy cannot parse
    ],
)
def test_answers_match(predicted, reference, expected):
    assert answers_match(predicted, reference) is expected


def test_verify_is_fast_on_typical_integer_completions():
    task = math_task()
    problems = task.test_problems()
    completions = [str(int(p.answer) + (i % 3 == 0)) for i, p in enumerate(problems)]
    start = time.perf_counter()
    for i in range(10_000):
        task.verify(completions[i % len(problems)], problems[i % len(problems)])
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------- jsonl task


def test_parse_answer_field_gsm8k_and_short_answers():
    assert parse_answer_field("48/2 = <<48/2=24>>24\n#### 1,234") == ("1234", "48/2 = <<48/2=24>>24")
    assert parse_answer_field(42) == ("42", None)
    assert parse_answer_field("\\frac{1}{2}") == ("\\frac{1}{2}", None)
    long = "We add.\nSo the total is \\boxed{7}."
    assert parse_answer_field(long) == ("7", long)
    assert parse_answer_field("#### unknown") is None
    assert parse_answer_field("Many.\nNobody knows.") is None
    assert parse_answer_field(None) is None


def test_jsonl_fixture_loads_and_every_demonstration_verifies(fixture_task):
    task = fixture_task
    train, test = task.train_problems(), task.test_problems()
    rows = FIXTURE.read_text().splitlines()
    assert task.skipped == 4  # the fixture's deliberately unparseable answers
    assert len(train) + len(test) + task.skipped + task.duplicates == len(rows)
    assert test and not {p.question for p in train} & {p.question for p in test}
    ids = [p.id for p in train + test]
    assert len(set(ids)) == len(ids) and all(i.startswith("arith_word_problems/") for i in ids)
    assert {"easy", "all"} <= {p.level for p in train + test}
    for p in train + test:
        demo = task.demonstration(p)
        assert "####" not in demo and "<<" not in demo
        assert demo.endswith(f"The answer is \\boxed{{{p.answer}}}.")
        assert task.verify(demo, p) == 1.0
    by_question = {p.question: p for p in train + test}
    library = by_question["A library has 1,250 books and buys 375 more. Then 90 books are lost. How many books does it have now?"]
    assert library.answer == "1535" and library.level == "hard"  # "#### 1,535", commas removed


def test_jsonl_seed_shuffles_train_only(fixture_task):
    other = JsonlTask(path=FIXTURE, seed=1, level_field="level")
    assert other.test_problems() == fixture_task.test_problems()
    assert other.train_problems() != fixture_task.train_problems()
    assert sorted(other.train_problems(), key=str) == sorted(fixture_task.train_problems(), key=str)


def test_jsonl_missing_file_and_field_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(TaskError, match="nope.jsonl"):
        JsonlTask(path=missing, seed=0)
    with pytest.raises(TaskError, match="'problem'.*fields present: question, answer"):
        JsonlTask(path=FIXTURE, seed=0, question_field="problem")


def test_jsonl_parquet_ids_test_path_and_plain(tmp_path):
    from datasets import Dataset

    rows = {
        "uid": ["a", "b", "c", "d"],
        "problem": ["1+1?", "2+2?", "what?", "3+3?"],
        "solution": ["2", "4", "No idea.\nReally.", "6"],
    }
    Dataset.from_dict(rows).to_parquet(tmp_path / "train.parquet")
    json_rows = [{"uid": "t1", "problem": "5+5?", "solution": "#### 10"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in json_rows))
    task = JsonlTask(
        path=tmp_path / "train.parquet",
        test_path=tmp_path / "test.jsonl",
        question_field="problem",
        answer_field="solution",
        id_field="uid",
        seed=0,
        format="plain",
    )
    assert sorted(p.id for p in task.train_problems()) == ["train/a", "train/b", "train/d"]
    assert task.skipped == 1
    (test,) = task.test_problems()
    assert (test.id, test.answer, test.level) == ("train/t1", "10", "all")
    assert task.prompt_text(test, tokenizer=None) == "5+5?\nAnswer: "
    assert task.demonstration(test) == "10"
    assert task.verify("10", test) == 1.0 and task.verify("11", test) == 0.0


def test_jsonl_chat_prompt(fixture_task, chat_tokenizer):
    p = fixture_task.test_problems()[0]
    prompt = fixture_task.prompt_text(p, chat_tokenizer)
    assert prompt.startswith("<|user|>") and p.question in prompt and prompt.endswith("<|assistant|>")
