"""Tasks: deterministic, disjoint splits; demonstrations that verify; a verifier that never raises and
cannot be gamed by echoing the question."""

import json
import time
from collections import Counter
from fractions import Fraction

import pytest
from conftest import FIXTURES

from dynamo_cli.tasks.answers import Verdict, answers_match, extract_answer, judge, literal_value
from dynamo_cli.tasks.base import Problem, TaskError
from dynamo_cli.tasks.jsonl import JsonlTask, parse_answer_field
from dynamo_cli.tasks.math import LEVELS, MathTask

FIXTURE = FIXTURES / "arith_word_problems.jsonl"
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


# ---------------------------------------------------------------- verifiers that cannot be gamed by accident

TIMES = Problem("math/L6/68*3", "68*3", "204", "L6")
PLUS = Problem("math/L1/0+8", "0+8", "8", "L1")


@pytest.mark.parametrize("format", ["plain", "chat"])
@pytest.mark.parametrize(
    "completion, rule",
    [
        ("answer: 68*3", "answer_cue"),
        ("The answer is 68*3", "answer_cue"),
        ("\\boxed{68*3}", "boxed"),
        ("\\boxed{200+4}", "boxed"),
        ("The answer is 200 + 4", "answer_cue"),  # an operator after the number: an expression, not "200"
        ("\\boxed{204/1}", "boxed"),
    ],
)
def test_an_integer_answer_written_as_an_expression_scores_0(format, completion, rule):
    task = math_task(format=format)
    verdict = task.judge(completion, TIMES)
    assert verdict.reward == 0.0 and verdict.rule == rule


def test_the_echoed_question_that_scored_1_on_smollm2_scores_0():
    text = "To find 68*3, multiply 68 by 3. Here's the solution and answer:\n\n68*3"  # a real SmolLM2 completion that the old verifier paid for
    assert math_task(format="chat").judge(text, TIMES) == Verdict(0.0, "answer_cue", "68*3")
    assert math_task(format="plain").judge(text, TIMES) == Verdict(0.0, "last_number", "3")  # first line only


@pytest.mark.parametrize("format", ["plain", "chat"])
def test_a_boxed_or_cued_integer_literal_scores_1(format):
    task = math_task(format=format)
    assert task.judge("\\boxed{204}", TIMES) == Verdict(1.0, "boxed", "204")
    assert task.judge("The answer is 204.", TIMES) == Verdict(1.0, "answer_cue", "204")
    assert task.judge("\\boxed{68*3 = 204}", TIMES).reward == 1.0  # a worked equation ends in its value
    assert task.judge("The answer is **204**.", TIMES).reward == 1.0  # markdown around the literal
    assert task.judge("The answer is 8 + 0", PLUS).reward == 0.0  # the question echoed; "8" is not its answer


def test_chat_takes_no_number_echoed_from_the_question():
    # a real SmolLM2 eval completion: no \boxed{}, no "answer is"; the last number is the question's 8
    text = "So the maximum value of 0 + 8 is 10, which is the sum of 2 added to 0 and 8."
    assert math_task(format="chat").judge(text, PLUS) == Verdict(0.0, "none", None)
    assert math_task(format="chat").judge("0 + 8", PLUS).reward == 0.0
    # the fallback, asked for, reads it: that is what made the echo pay
    chat_last = MathTask(seed=0, num_train=6, num_test_per_level=1, levels=["L1"], format="chat",
                         answer_fallback="last_number")
    assert chat_last.judge(text, PLUS) == Verdict(1.0, "last_number", "8")


@pytest.mark.parametrize("completion, expected", [
    ("204", Verdict(1.0, "bare_answer", "204")),  # the completion is the answer: it scores in chat too
    ("$204$", Verdict(1.0, "bare_answer", "204")),
    ("**204**.", Verdict(1.0, "bare_answer", "204")),
    (" 203\n", Verdict(0.0, "bare_answer", "203")),  # found, and wrong
    ("I count 204 apples", Verdict(0.0, "none", None)),  # a number inside prose still does not score
    ("68*3", Verdict(0.0, "none", None)),  # an expression is not a bare answer
])
def test_chat_scores_a_completion_that_is_exactly_the_answer(completion, expected):
    assert math_task(format="chat").judge(completion, TIMES) == expected


def test_plain_keeps_the_last_number_on_its_first_line():
    task = math_task(format="plain")
    assert task.answer_fallback == "last_number" and math_task(format="chat").answer_fallback == "none"
    assert task.judge("85", Problem("math/L5/37+48", "37+48", "85", "L5")) == Verdict(1.0, "last_number", "85")
    assert task.judge("3*68=204\n5", TIMES) == Verdict(1.0, "last_number", "204")
    assert task.judge("68*3", TIMES) == Verdict(0.0, "last_number", "3")


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("\\boxed{204}. Check: 68*3 = 204, so \\boxed{204}", Verdict(1.0, "boxed", "204")),  # repeated: fine
        ("\\boxed{203} or maybe \\boxed{204}", Verdict(0.0, "boxed", "203")),  # hedging: every box must be right
        ("\\boxed{204} or maybe \\boxed{203}", Verdict(0.0, "boxed", "203")),
        ("\\boxed{68*3} = \\boxed{204}", Verdict(0.0, "boxed", "68*3")),
        ("\\boxed{} then \\boxed{204} and \\boxed{20", Verdict(1.0, "boxed", "204")),  # empty, unclosed: not answers
        ("\\boxed{204}" * 9, Verdict(0.0, "boxed", None)),  # more than BOXED_MAX boxes
        ("\\boxed{203}. The answer is 204.", Verdict(0.0, "boxed", "203")),  # a box outranks a cue
    ],
)
def test_several_boxed_answers_must_all_be_right(completion, expected):
    assert math_task(format="chat").judge(completion, TIMES) == expected


@pytest.mark.parametrize(
    "text, integer, rational",
    [
        ("204", 204, 204),
        ("-1,234", -1234, -1234),
        ("+7", 7, 7),
        ("$204$", 204, 204),
        ("\\$18", 18, 18),
        ("1{,}234", 1234, 1234),
        ("2.50", None, Fraction(5, 2)),
        (".5", None, Fraction(1, 2)),
        ("3/4", None, Fraction(3, 4)),
        ("\\frac{1}{2}", None, Fraction(1, 2)),
        ("-\\dfrac{3}{4}", None, Fraction(-3, 4)),
        ("96/8", None, None),  # unreduced: the question's numbers, not the answer 12
        ("2/4", None, None),
        ("12/1", None, None),
        ("68*3", None, None),
        ("200+4", None, None),
        ("2^3", None, None),
        ("1,2345", None, None),
        ("two", None, None),
        ("", None, None),
    ],
)
def test_literal_value(text, integer, rational):
    assert literal_value(text, "integer") == integer
    assert literal_value(text, "rational") == rational


@pytest.mark.parametrize(
    "completion, reference, answer_type, reward",
    [
        ("\\boxed{1/2}", "0.5", "rational", 1.0),  # 1/2 == 0.5 as literals
        ("\\boxed{0.5}", "1/2", "rational", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", "rational", 1.0),
        ("\\boxed{24.50}", "24.5", "rational", 1.0),
        ("\\boxed{12.0}", "12", "rational", 1.0),
        ("\\boxed{12.0}", "12", "integer", 0.0),  # an integer answer is an integer literal
        ("\\boxed{96/8}", "12", "rational", 0.0),
        ("\\boxed{1/2}", "0.5", "integer", 0.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", "expression", 1.0),  # expression: math_verify decides
        ("\\boxed{x+1}", "1+x", "expression", 1.0),
        ("\\boxed{200+4}", "204", "expression", 1.0),  # which is why numeric tasks are not expression tasks
        ("\\boxed{\\frac{1}{3}}", "0.5", "expression", 0.0),
    ],
)
def test_judge_by_answer_type(completion, reference, answer_type, reward):
    assert judge(completion, reference, answer_type=answer_type, fallback="none").reward == reward


def test_judge_never_raises_on_junk():
    for junk in [None, "", "\\boxed{", "\\boxed{\\boxed{204}}", "9" * 5000, "answer:", "\\frac{1}{0}"]:
        assert judge(junk, "204", answer_type="rational", fallback="last_number").reward == 0.0


def test_bad_answer_settings_raise_task_error():
    with pytest.raises(TaskError, match="'float'"):
        MathTask(seed=0, num_train=6, num_test_per_level=1, levels=["L1"], format="plain", answer_type="float")
    with pytest.raises(TaskError, match="'first'"):
        JsonlTask(path=FIXTURE, seed=0, answer_fallback="first")


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


def test_jsonl_skips_rows_whose_answer_is_not_of_the_answer_type(tmp_path):
    rows = [{"question": "a?", "answer": "#### 7"}, {"question": "b?", "answer": "#### 24.5"},
            {"question": "c?", "answer": "x+1"}]
    path, test_path = tmp_path / "rows.jsonl", tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_path.write_text(json.dumps({"question": "d?", "answer": "2"}) + "\n")
    kept = {}
    for answer_type in ("integer", "rational", "expression"):
        task = JsonlTask(path=path, test_path=test_path, seed=0, answer_type=answer_type)
        kept[answer_type] = sorted(p.answer for p in task.train_problems())
        assert task.skipped == 3 - len(kept[answer_type])
    assert kept == {"integer": ["7"], "rational": ["24.5", "7"], "expression": ["24.5", "7", "x+1"]}
    assert JsonlTask(path=path, test_path=test_path, seed=0).answer_type == "rational"


def test_jsonl_chat_prompt(fixture_task, chat_tokenizer):
    p = fixture_task.test_problems()[0]
    prompt = fixture_task.prompt_text(p, chat_tokenizer)
    assert prompt.startswith("<|user|>") and p.question in prompt and prompt.endswith("<|assistant|>")


def test_slipped_answer_drops_only_the_units_carry():
    from dynamo_cli.tasks.math import slipped_answer

    assert slipped_answer("+", 47, 38) == 75  # 7+8=15: the 1 is not carried, 4+3=7 -> 75 (true 85)
    assert slipped_answer("+", 99, 99) == 188  # 9+9=18 -> 8; 9+9=18 without the carry -> 188 (true 198)
    assert slipped_answer("-", 47, 8) == 49  # 7-8 borrows: 17-8=9 and the tens stay 4 -> 49 (true 39)
    assert slipped_answer("*", 47, 8) == 326  # 7*8=56: the 5 is not carried -> 32, 6 -> 326 (true 376)
    assert slipped_answer("+", 41, 3) is None and slipped_answer("-", 47, 3) is None  # nothing to drop


def test_teacher_slip_changes_demonstrations_only():
    perfect = MathTask(seed=0, num_train=3000, num_test_per_level=20, levels=["L3", "L4"], format="plain", teacher_slip=0.0)
    slipping = MathTask(seed=0, num_train=3000, num_test_per_level=20, levels=["L3", "L4"], format="plain", teacher_slip=0.5)
    assert perfect.train_problems() == slipping.train_problems() and perfect.test_problems() == slipping.test_problems()
    problems = perfect.train_problems()
    wrong = [p for p in problems if slipping.demonstration(p) != p.answer]
    # "ab+c" / "ab-c": the units column is question[1] and question[-1]
    carrying = [p for p in problems
                if (int(p.question[1]) + int(p.question[-1]) >= 10 if "+" in p.question else int(p.question[1]) < int(p.question[-1]))]
    assert all(perfect.demonstration(p) == p.answer for p in problems)
    assert {p.id for p in wrong} <= {p.id for p in carrying}  # only carrying problems slip
    assert 0.4 < len(wrong) / len(carrying) < 0.6  # about half of them, chosen by a stable hash of the id
    assert all(slipping.verify(p.answer, p) == 1.0 for p in wrong)  # the verifier still holds the true answer
