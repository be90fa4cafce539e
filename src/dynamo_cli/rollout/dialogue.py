"""Dialogues as token segments: what the policy said (trained on) and what everyone else said (read only).

A dialogue is a list of `{"role", "content"}` messages rendered with the tokenizer's chat template (the tiny
model's is `models.TINY_CHAT_TEMPLATE`: "role: content\\n" per message, "assistant: " as the generation prompt).
Every assistant turn becomes its content's tokens followed by EOS, exactly as a rollout produces it (the policy
ends its turn by emitting EOS); the text the template puts between the end of one assistant turn and the start
of the next is read from the template itself, by rendering the dialogue with and without what follows:

    render(messages[:j], generation prompt) == render(messages[:i], generation prompt) + content_i + between
    (i, j consecutive assistant turns; a leading EOS string is dropped from `between`: the policy wrote it)

So SFT on a dialogue (`tokenize_dialogue`), an environment's reply in a multi-turn rollout (`between_text`) and
the prompt of a single-turn task all lay tokens out the same way. A template that does not render
incrementally (one that rewrites earlier turns) is refused with a one-line error rather than silently trained on.
"""
from __future__ import annotations

from typing import Any

from dynamo_cli.errors import DynamoError

Message = dict  # {"role": "system" | "user" | "assistant" | ..., "content": str}


def render(messages: list[Message], tokenizer: Any, *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def between_text(history: list[Message], following: list[Message], tokenizer: Any) -> str:
    """The text from the end of the last assistant turn of `history` (which ends with that turn) through the
    generation prompt of the next assistant turn, after the non-assistant messages `following`."""
    if not history or history[-1]["role"] != "assistant":
        raise ValueError("between_text: history must end with an assistant turn")
    before = render(history[:-1], tokenizer, generation_prompt=True) + history[-1]["content"]
    after = render(history + following, tokenizer, generation_prompt=True)
    if not after.startswith(before):
        raise DynamoError("the tokenizer's chat template does not render dialogues incrementally (an earlier turn "
                          "changes when a later one is added); multi-turn needs one that does, e.g. models.TINY_CHAT_TEMPLATE")
    text = after[len(before):]
    eos = tokenizer.eos_token or ""
    return text[len(eos):] if eos and text.startswith(eos) else text


def dialogue_segments(messages: list[Message], tokenizer: Any) -> list[tuple[str, bool]]:
    """[(text, is_assistant)]: the prompt up to the first assistant turn, then each assistant turn's content and
    the text between it and the next. Messages after the last assistant turn teach nothing and are dropped."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError("a dialogue without an assistant turn has nothing to learn")
    segments = [(render(messages[:turns[0]], tokenizer, generation_prompt=True), False)]
    for k, i in enumerate(turns):
        segments.append((messages[i]["content"], True))
        if k + 1 < len(turns):
            segments.append((between_text(messages[:i + 1], messages[i + 1:turns[k + 1]], tokenizer), False))
    return segments


def tokenize_dialogue(messages: list[Message], tokenizer: Any) -> tuple[list[int], list[int], list[bool]]:
    """(prompt ids, completion ids, loss mask over the completion): the completion starts at the first assistant
    turn; the mask is True on assistant content and the EOS that ends each assistant turn, False on the rest."""
    segments = dialogue_segments(messages, tokenizer)
    prompt = tokenizer(segments[0][0], add_special_tokens=False)["input_ids"]
    completion: list[int] = []
    mask: list[bool] = []
    for text, assistant in segments[1:]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if assistant else [])
        completion += ids
        mask += [assistant] * len(ids)
    return prompt, completion, mask
