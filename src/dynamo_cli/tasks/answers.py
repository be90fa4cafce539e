"""Final-answer extraction and comparison, shared by every task's verifier.

verify() runs on every sampled completion (thousands per RL step), so the common case, a number
compared with a number, stays in cheap regex/Fraction code. math_verify (sympy) is consulted only
when two answers differ as strings and both look like a short formula, and its verdicts are cached.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from functools import lru_cache

TAIL_CHARS = 2000  # a final answer sits at the end; looking only at the tail bounds the regex work
BOXED_TRIES = 8  # earlier \boxed{ are tried only when later ones are empty/unclosed; cap the rescans
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
    """Content of the last \\boxed{...} whose braces balance (nested braces allowed)."""
    end = len(text)
    for _ in range(BOXED_TRIES):
        start = text.rfind("\\boxed", 0, end)
        if start == -1:
            return None
        end = start
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] != "{":
            continue
        depth = 0
        for j in range(i, len(text)):
            depth += _BRACE_DEPTH.get(text[j], 0)
            if depth == 0:
                content = text[i + 1 : j].strip()
                if content:
                    return content
                break
    return None


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
    if m and (m.end() == len(sentence) or sentence[m.end()] in " ,;"):
        return m.group()
    return sentence if len(sentence) <= SYMBOLIC_MAX_CHARS else None


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
    math_verify for short formulas ("\\frac{1}{2}" == "0.5"). Never raises."""
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


@lru_cache(maxsize=65_536)  # completions repeat a lot within and across steps
def _symbolic_match(predicted: str, reference: str) -> bool:
    try:
        from math_verify import parse, verify  # lazy: importing sympy costs about a second

        # math_verify's timeouts use signal.alarm, which raises outside the main thread (rollout
        # workers, dataloaders); we disable them and bound the input in _looks_like_math instead.
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # silences "timeout is disabled"
        gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
        pred = parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
    except Exception:  # junk that sympy chokes on is simply not a match
        return False
