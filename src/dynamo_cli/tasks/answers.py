"""Final-answer extraction and comparison, shared by every task's verifier.

judge() runs on every sampled completion (thousands per RL step), so the common case, a number
compared with a number, stays in cheap regex/Fraction code. An integer or rational answer must be
written as a literal of its type: "68*3" is an expression, and evaluating it (math_verify does) would
pay a policy for echoing the question. Only `expression` answers reach math_verify (sympy), and only
when both sides look like a short formula: in a worker process, under the verification's deadline
(verify/symbolic.py), because sympy can run for hours on a short input; its verdicts are cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from math import gcd

from dynamo_cli.verify.deadline import VerifierTimeout

TAIL_CHARS = 2000  # a final answer sits at the end; looking only at the tail bounds the regex work
BOXED_MAX = 8  # more \boxed{} than this in one completion is hedging, not an answer (and bounds the scans)
SYMBOLIC_MAX_CHARS = 100  # longer "answers" are prose, not formulas: never handed to sympy

# A number as written in answers: sign, thousands separators, decimals, a simple fraction. A sign
# counts only when it cannot be a binary minus ("5-3" holds 5 and 3; "x = -3" holds -3).
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?"
_NUMBER = re.compile(rf"(?:(?<![\w)\]}}.])[-+])?{_NUM}", re.ASCII)
_NUMBER_FULL = re.compile(rf"[-+]?{_NUM}", re.ASCII)
_ANSWER_CUE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*:)\s*:?\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\n|\.(?:\s|$)")  # a period followed by a digit is a decimal point
_MATHY = re.compile(r"[0-9a-zA-Z\\{}()\[\].,+\-*/^_ ]+")
_BRACE_DEPTH = {"{": 1, "}": -1}
_BIG_POWER = re.compile(r"(?:\^|\*\*)\s*[{(]?\s*[-+]?\d{4,}")  # 9^99999 would stall sympy
# After a leading number, a word ("85 apples") ends the answer; an operator ("8 + 0", "8 x 1") does not.
_WORDS_FOLLOW = re.compile(r"\s*[,;]|\s+[A-Za-z]{2,}")

ANSWER_TYPES = ("integer", "rational", "expression")
FALLBACKS = ("none", "last_number")  # what to take when there is no \boxed{} and no answer cue
RULES = ("boxed", "answer_cue", "bare_answer", "last_number", "none")  # how the answer was found, strongest first
# Verdicts that no answer extraction decided: task=code's tests run on the program, a user's task.reward function
RULES += ("program", "reward_fn")

# Literals. integer: sign, digits, thousands commas. rational adds decimals and fractions in lowest terms.
_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_INTEGER = re.compile(rf"[-+]?{_INT}", re.ASCII)
_DECIMAL = re.compile(rf"[-+]?{_INT}?\.\d+", re.ASCII)
_FRACTION = re.compile(r"([-+]?)(\d+)/(\d+)", re.ASCII)
_TEX_FRACTION = re.compile(r"([-+]?)\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*(\d+)\s*\}", re.ASCII)
# Markup around a literal, never inside it: $204$, **204**, \(204\), \$18, "204."
_MARKUP = re.compile(r"^(?:\s|\$|\\\$|\*\*|\\[(\[])*(.*?)(?:\s|\$|\*\*|\\[)\]]|\.)*$", re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    """A judged completion."""

    reward: float  # 1.0 when the answer equals the reference, else 0.0
    rule: str  # which rule found the answer (one of RULES); "none": no answer, reward 0
    extracted: str | None  # the answer that decided the reward, as written (several boxed: the first wrong one)
    status: str = "ok"  # ok: judged; error | timeout: the verification failed (reward 0); task=code: the program's end
    detail: str | None = None  # why, when status is not ok


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: last \\boxed{...}, else after "the answer is"/"answer:",
    else the last number. None when there is none; never raises."""
    if not isinstance(text, str):
        return None
    tail = text[-TAIL_CHARS:]
    for finder in (_last_boxed, _after_answer_cue, _last_number):
        found = finder(tail)
        if found:
            return found
    return None


def _last_boxed(text: str) -> str | None:
    boxed = _boxed_answers(text)
    return boxed[-1] if boxed else None


def _boxed_answers(text: str) -> list[str]:
    """Contents of the last BOXED_MAX \\boxed{...}, in order; empty and unbalanced ones are skipped."""
    starts = [m.start() for m in re.finditer(r"\\boxed", text)][-BOXED_MAX:]
    found = []
    for start in starts:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] != "{":
            continue
        depth = 0
        for j in range(i, len(text)):
            depth += _BRACE_DEPTH.get(text[j], 0)
            if depth == 0:
                if content := text[i + 1 : j].strip():
                    found.append(content)
                break
    return found


def _after_answer_cue(text: str) -> str | None:
    """What follows the last "the answer is"/"answer:", up to the end of that sentence (after its
    last "=", if any): the leading number when words follow it ("85 apples"), else the whole expression."""
    cues = list(_ANSWER_CUE.finditer(text))
    if not cues:
        return None
    rest = text[cues[-1].end() :]
    sentence = rest[: m.start()] if (m := _SENTENCE_END.search(rest)) else rest
    # "The answer is 10 + 7 = 17.": a worked equation ends in its value
    sentence = sentence.rsplit("=", 1)[-1].strip().strip("$").strip().rstrip(".,;:!?").strip()
    if not sentence:
        return None
    m = _NUMBER_FULL.match(sentence)
    if m and (m.end() == len(sentence) or _WORDS_FOLLOW.match(sentence, m.end())):
        return m.group()
    return sentence if len(sentence) <= SYMBOLIC_MAX_CHARS else None


def _bare_answer(text: str) -> str | None:
    """The whole completion when it is nothing but a number ("204", "$204$", "**-3/4**", "204."): an answer with no
    cue around it. A number inside prose is not one ("I get 204 apples"): there the last number is as often an echo
    of the question as an answer."""
    m = _MARKUP.match(text.strip())
    inner = m.group(1).strip() if m else ""
    return inner if _NUMBER_FULL.fullmatch(inner) or _TEX_FRACTION.fullmatch(inner) else None


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """Canonical spelling: no surrounding space/$, and for plain numbers no thousands commas,
    leading "+" or trailing ".0"."""
    s = answer.strip().strip("$").strip()
    if _NUMBER_FULL.fullmatch(s):
        s = s.replace(",", "").lstrip("+")
        s = re.sub(r"\.0+$", "", s)
    return s


def _as_fraction(s: str) -> Fraction | None:
    if not _NUMBER_FULL.fullmatch(s):
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):  # "1/0", or more digits than int() accepts
        return None


def _looks_like_math(s: str) -> bool:
    """Short, formula-only characters, and nothing that could make sympy run for minutes."""
    return (
        len(s) <= SYMBOLIC_MAX_CHARS
        and _MATHY.fullmatch(s) is not None
        and any(c.isdigit() or c == "\\" for c in s)
        and s.count("^") + s.count("**") <= 1
        and _BIG_POWER.search(s) is None
    )


def answers_match(predicted: str | None, reference: str) -> bool:
    """Whether a predicted final answer equals the reference: exact after normalisation, exact as
    rationals when both are plain numbers ("0.5" == "1/2", "085" == "85"), else symbolically via
    math_verify for short formulas ("\\frac{1}{2}" == "0.5"), in a worker process under the verification's
    deadline. Raises only VerifierTimeout (the verifier scores that 0 and counts it)."""
    if not isinstance(predicted, str) or not isinstance(reference, str):
        return False
    pred, ref = normalize_answer(predicted), normalize_answer(reference)
    if pred == ref:
        return True
    pred_num, ref_num = _as_fraction(pred), _as_fraction(ref)
    if pred_num is not None and ref_num is not None:
        return pred_num == ref_num
    if _looks_like_math(pred) and _looks_like_math(ref):
        return _symbolic_match(pred, ref)
    return False


def _symbolic_match(predicted: str, reference: str) -> bool:
    """math_verify's verdict, from a worker process (verify/symbolic.py) within the current verification's deadline;
    VerifierTimeout past it (the verifier scores 0 and counts it)."""
    match = _symbolic_verdict(predicted, reference)
    if match is None:
        raise VerifierTimeout(f"symbolic check of {predicted[:40]!r} ran past its deadline")
    return match


@lru_cache(maxsize=65_536)  # completions repeat a lot within and across steps
def _symbolic_verdict(predicted: str, reference: str) -> bool | None:
    """None: the check ran past its deadline. Remembered too: the same strings would run as long again, and a
    policy that found a slow expression would otherwise cost a full deadline per copy."""
    from dynamo_cli.verify.symbolic import POOL  # lazy: no worker process for tasks that never get here

    try:
        return POOL.check(predicted, reference)
    except VerifierTimeout:
        return None


def literal_value(answer: str, answer_type: str) -> Fraction | None:
    """The value of an answer written as a literal of `answer_type`, else None (it then scores 0).

    integer: sign, digits, thousands commas ("-1,234"). rational: also decimals ("2.50", ".5") and
    fractions in lowest terms ("3/4", "-\\frac{3}{4}"). Markup around the literal is dropped ("$204$",
    "**204**", "\\$18"), and so is a worked equation's left side ("68*3 = 204" is 204). Anything with an
    operator left in it is an expression, never a literal: "68*3", "200+4", and unreduced fractions
    ("96/8" echoes a question's numbers; 12 is the answer).
    """
    m = _MARKUP.match(answer.replace("{,}", ",").rsplit("=", 1)[-1])
    s = m.group(1) if m else ""
    try:
        if _INTEGER.fullmatch(s):
            return Fraction(int(s.replace(",", "")))
        if answer_type != "rational":
            return None
        if _DECIMAL.fullmatch(s):
            return Fraction(s.replace(",", ""))
        if fraction := _FRACTION.fullmatch(s) or _TEX_FRACTION.fullmatch(s):
            sign, numerator, denominator = fraction.group(1), int(fraction.group(2)), int(fraction.group(3))
            if denominator > 1 and gcd(numerator, denominator) == 1:
                return Fraction(-numerator if sign == "-" else numerator, denominator)
    except ValueError:  # more digits than int() accepts
        return None
    return None


def answer_matches(predicted: str, reference: str, answer_type: str) -> bool:
    """Equality under the answer type: literals by value, expressions by answers_match (math_verify)."""
    if answer_type == "expression":
        return answers_match(predicted, reference)
    value = literal_value(predicted, answer_type)
    return value is not None and value == literal_value(reference, answer_type)


def judge(completion: str, reference: str, *, answer_type: str, fallback: str) -> Verdict:
    """Reward a completion against the reference answer, naming the rule that found its answer.

    Rules, strongest first; the first that finds an answer decides, right or wrong:
    boxed: every \\boxed{} must hold the answer ("\\boxed{203} or \\boxed{204}" is hedging: 0), and
      more than BOXED_MAX of them score 0; answer_cue: what follows the last "the answer is"/"answer:";
    bare_answer: without that fallback, a completion that is nothing but a number ("204", "$204$");
    last_number: the last number, only with fallback="last_number" (in chat it would be a number
      echoed from the question as often as an answer). Raises only VerifierTimeout (a symbolic check past its deadline).
    """
    if not isinstance(completion, str) or not isinstance(reference, str):
        return Verdict(0.0, "none", None)
    tail = completion[-TAIL_CHARS:]
    if "\\boxed" in tail:
        if tail.count("\\boxed") > BOXED_MAX:
            return Verdict(0.0, "boxed", None)
        if boxed := _boxed_answers(tail):
            wrong = next((b for b in boxed if not answer_matches(b, reference, answer_type)), None)
            return Verdict(0.0, "boxed", wrong) if wrong is not None else Verdict(1.0, "boxed", boxed[-1])
    found = _after_answer_cue(tail)
    rule = "answer_cue"
    if found is None and fallback == "last_number":
        found, rule = _last_number(tail), "last_number"
    elif found is None:
        found, rule = _bare_answer(tail), "bare_answer"
    if found is None:
        return Verdict(0.0, "none", None)
    return Verdict(float(answer_matches(found, reference, answer_type)), rule, found)
