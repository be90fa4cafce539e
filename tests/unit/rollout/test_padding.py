"""Padding: the waste metric, cutting all-padding columns before a training forward, and generation that drops
finished rows and buckets chunks by prompt length (rollout/padding.py, rollout/hf.py)."""
from __future__ import annotations

import pytest
import torch

from dynamo_cli.config.model import TinyModelConfig
from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
from dynamo_cli.rollout.hf import generate, stream_seed
from dynamo_cli.rollout.padding import pad_response, padding_waste, padding_window, trim_padding
from dynamo_cli.rollout.policy_stats import completion_token_stats
from dynamo_cli.rollout.trajectory import Trajectories


def test_padding_waste_is_the_pad_share_of_the_positions():
    assert padding_waste(real=30, total=40) == pytest.approx(0.25)
    assert padding_waste(real=0, total=0) == 0.0


def batch() -> Trajectories:
    """3 rows, prompt width 4, response width 5. Prompts of lengths 2, 3, 1 (left-padded: columns 0 is padding
    in every row); responses of lengths 2, 3, 1 (columns 4 and 5 of the response region are padding in every row)."""
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 0],
                              [0, 1, 1, 1, 1, 1, 1, 0, 0],
                              [0, 0, 0, 1, 1, 0, 0, 0, 0]])
    ids = torch.randint(4, 40, attention.shape, generator=torch.Generator().manual_seed(0)) * attention
    loss_mask = attention[:, 4:].bool()
    return Trajectories(input_ids=ids, attention_mask=attention, loss_mask=loss_mask, prompt_index=torch.tensor([0, 0, 1]),
                        prompt_width=4, advantages=torch.arange(15.0).reshape(3, 5), old_logprobs=-torch.ones(3, 5))


def test_trim_padding_drops_the_columns_that_are_padding_in_every_row():
    b = batch()
    assert padding_window(b) == (1, 7)  # column 0 (a pad in every prompt) and 7, 8 (past the longest response)
    t = trim_padding(b)
    assert t.input_ids.shape == (3, 6) and t.prompt_width == 3 and t.loss_mask.shape == (3, 3)
    assert torch.equal(t.attention_mask, b.attention_mask[:, 1:7]) and torch.equal(t.advantages, b.advantages[:, :3])
    assert torch.equal(t.input_ids[:, t.prompt_width:], b.input_ids[:, b.prompt_width:7])  # the response starts where it did
    assert trim_padding(t) is t  # nothing left to cut
    assert torch.equal(pad_response(t.advantages, 5)[:, 3:], torch.zeros(3, 2))
    # a loss token on a column no row attends to keeps that column
    b.loss_mask[2, 4] = True
    assert padding_window(b) == (1, 9)


def test_a_trimmed_forward_gives_the_same_token_statistics():
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), build_char_tokenizer())
    b, t = batch(), trim_padding(batch())
    full = completion_token_stats(model, input_ids=b.input_ids, attention_mask=b.attention_mask, prompt_width=4, temperature=0.7)
    cut = completion_token_stats(model, input_ids=t.input_ids, attention_mask=t.attention_mask, prompt_width=3, temperature=0.7)
    for whole, part in zip(full, cut, strict=True):
        torch.testing.assert_close(part[t.loss_mask], whole[:, :3][t.loss_mask], rtol=1e-5, atol=1e-6)


def test_generation_drops_finished_rows_and_counts_its_token_positions():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, intermediate_size=128), tokenizer)
    with torch.no_grad():  # make EOS likely, so rows finish at different steps
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 3
    prompts, counts = ["1+2=", "34+5=", "7*8=", "12+345="], torch.tensor([4, 3, 5, 4])
    kwargs = dict(counts=counts, max_new_tokens=12, temperature=1.0, top_p=1.0, seed=stream_seed(0, 1))
    batched = generate(model, tokenizer, prompts, max_batch_size=16, **kwargs)  # one chunk, rows leave as they finish
    lengths = batched.completion_lengths
    assert batched.finished.any() and not batched.finished.all() and len(set(lengths.tolist())) > 2
    one_by_one = generate(model, tokenizer, prompts, max_batch_size=1, **kwargs)  # no padding, nothing to drop
    bucketed = generate(model, tokenizer, prompts, max_batch_size=5, **kwargs)  # chunks bucketed by prompt length
    for other in (one_by_one, bucketed):
        assert other.texts == batched.texts and torch.equal(other.finished, batched.finished)
        assert torch.equal(other.prompt_index, batched.prompt_index)
        assert torch.equal(other.completion_ids[other.completion_mask], batched.completion_ids[batched.completion_mask])
    # one chunk: prefill 16 rows x 7 columns, then row r is fed its first c_r - 1 tokens (its last one is never fed)
    prompt_lengths = torch.tensor([len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]).repeat_interleave(counts)
    assert prompt_lengths.unique().tolist() == [4, 5, 7]
    fed = int((lengths - 1).sum())
    assert batched.engine_tokens == (int(prompt_lengths.sum()) + fed, 16 * 7 + fed)
    assert one_by_one.engine_tokens == (int(prompt_lengths.sum()) + fed,) * 2  # one row at a time: no padding
    # chunks of 5 sorted by prompt length ([4] x 5, [4 x 4, 5], [5, 5, 7, 7, 7], [7]) pad 8 prompt positions, one chunk 33
    assert bucketed.engine_tokens[1] - bucketed.engine_tokens[0] < batched.engine_tokens[1] - batched.engine_tokens[0]
