"""Multi-turn: environment tokens are read, never trained on; batched dialogues with a scripted environment;
the calculator and guessing environments; dialogue SFT with loss on assistant turns only (task=chat_jsonl)."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES

from dynamo_cli.algo.advantages.base import GroupEstimator
from dynamo_cli.algo.advantages.grpo import grpo_advantages
from dynamo_cli.algo.terms.base import Loss, Weighted
from dynamo_cli.algo.terms.ppo_clip import PPOClip
from dynamo_cli.config.model import TinyModelConfig
from dynamo_cli.models.load import build_char_tokenizer, build_tiny_model
from dynamo_cli.modulation.dynamo import DynamoModulator, compensation_factor
from dynamo_cli.recipes.sft import collate
from dynamo_cli.rollout.dialogue import between_text, tokenize_dialogue
from dynamo_cli.rollout.episodes import MultiTurnEpisodes, assemble
from dynamo_cli.rollout.trajectory import ModelOutputs, Trajectories
from dynamo_cli.tasks.base import Problem
from dynamo_cli.tasks.calc import CalcTask, calculate
from dynamo_cli.tasks.chat_jsonl import ChatJsonlTask
from dynamo_cli.tasks.environment import Environment, EnvironmentTask
from dynamo_cli.tasks.guess import GuessTask, guess_reward

FIXTURE = FIXTURES / "chat_dialogues.jsonl"


# ------------------------------------------------------------------------ the layout of a multi-turn batch
def test_assemble_lays_out_policy_and_environment_segments():
    # row 0: prompt [5, 6], policy [1, 2], env [7], policy [3]; row 1: prompt [5], policy [4]
    ids, attention, real, policy, turns, width = assemble([[5, 6], [5]], [[([1, 2], True), ([7], False), ([3], True)], [([4], True)]],
                                                          pad_id=0)
    assert width == 2
    assert ids.tolist() == [[5, 6, 1, 2, 7, 3], [0, 5, 4, 0, 0, 0]]
    assert attention.tolist() == [[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]  # environment tokens are read ...
    assert real.tolist() == [[True, True, True, True], [True, False, False, False]]
    assert policy.tolist() == [[True, True, False, True], [True, False, False, False]]  # ... but are not the policy's
    assert turns.tolist() == [[[0, 2], [3, 4]], [[0, 1], [0, 0]]]


def _batch(loss_mask: torch.Tensor) -> Trajectories:
    n, length = loss_mask.shape
    return Trajectories(input_ids=torch.zeros(n, length + 1, dtype=torch.long), attention_mask=torch.ones(n, length + 1, dtype=torch.long),
                        loss_mask=loss_mask, prompt_index=torch.arange(n), prompt_width=1)


# policy, policy, environment, environment, policy: the environment's reply sits between two policy turns
MASK = torch.tensor([[True, True, False, False, True], [True, False, False, True, True]])


def test_environment_tokens_get_zero_advantage_and_zero_loss_gradient():
    batch = _batch(MASK)
    # two rollouts of one prompt, rewards 1 and 0: GRPO advantages +-1/sqrt(2) * ... on every *policy* token only
    advantages, _, sequence, _ = GroupEstimator(grpo_advantages)(batch, rewards=torch.tensor([1.0, 0.0]), group_index=torch.tensor([0, 0]),
                                                                 num_groups=1, rows=slice(0, 2))
    assert (advantages[~MASK] == 0).all()
    assert torch.allclose(advantages[0, MASK[0]], sequence[0].expand(3))
    logprobs = torch.full(MASK.shape, -1.0, requires_grad=True)
    batch = batch.replace(advantages=advantages, old_logprobs=torch.full(MASK.shape, -1.0))
    loss, _ = Loss(terms=[Weighted(PPOClip(eps_low=0.2, eps_high=0.2), 1.0)], mode="token_mean")(
        batch, ModelOutputs(logprobs=logprobs), num_tokens=int(MASK.sum()), num_sequences=2)
    loss.backward()
    # ratio 1, so d loss / d logprob = -A / 6 on a policy token; exactly 0 on every environment token
    assert (logprobs.grad[~MASK] == 0).all()
    assert torch.allclose(logprobs.grad[MASK], -advantages[MASK] / 6)


def test_modulator_min_max_ignore_environment_tokens():
    # policy entropies 1, 2, 3 (row 0) and 2 (row 1's first); environment tokens hold extreme entropies 50 and -7
    entropy = torch.tensor([[1.0, 3.0, 50.0, -7.0, 2.0], [2.0, 50.0, -7.0, 1.0, 3.0]])
    advantages = torch.where(MASK, 1.0, 0.0)
    beta = compensation_factor(advantages=advantages, entropy=entropy, mask=MASK, scope_index=torch.zeros(2, dtype=torch.long), mu_max=3.0)
    # H_max = 3, H_min = 1 over policy tokens: beta = 1 + 2 (3 - H) / 2 = 4 - H -> 3, 1, 2 / 2, 3, 1
    assert beta[MASK].tolist() == [3.0, 1.0, 2.0, 2.0, 3.0, 1.0]
    modulator = DynamoModulator(compensate=True, stabilise=True, mu_max=3.0, lambda_min=0.5, gamma=10.0, tau=0.5, eps_low=0.2, eps_high=0.2)
    logprobs = torch.tensor([[-1.0, -2.0, -0.1, -9.0, -0.5], [-0.3, -8.0, -0.2, -1.0, -2.0]])
    shaped = modulator(advantages=advantages, mask=MASK, entropy=entropy, logprobs=logprobs, old_logprobs=logprobs - 0.05,
                       scope_index=torch.zeros(2, dtype=torch.long))
    # whatever the environment tokens hold, the policy tokens' modulation does not move and theirs stays 0
    other = modulator(advantages=advantages, mask=MASK, entropy=torch.where(MASK, entropy, 0.0), logprobs=torch.where(MASK, logprobs, -0.7),
                      old_logprobs=torch.where(MASK, logprobs - 0.05, -3.0), scope_index=torch.zeros(2, dtype=torch.long))
    assert torch.equal(shaped.advantages, other.advantages)
    assert (shaped.advantages[~MASK] == 0).all() and not shaped.loss_mask[~MASK].any()


# --------------------------------------------------------------------- a batched rollout, scripted environment
class Countdown(Environment):
    """Replies "again k" after each policy turn; done (reward = turns taken / 10) after problem.answer turns."""

    def __init__(self):
        self.left, self.turns = 0, 0

    def reset(self, problem):
        self.left = int(problem.answer)
        return [{"role": "user", "content": problem.question}]

    def step(self, text):
        self.turns += 1
        self.left -= 1
        if self.left == 0:
            return None, self.turns / 10, True
        return f"again {self.left}", 0.0, False

    def stats(self):
        return {"tool_calls": float(self.turns)}


class CountdownTask(EnvironmentTask):
    name, answer_type, answer_fallback = "countdown", "integer", "none"

    def __init__(self, max_turns, max_tokens):
        self.max_turns, self.max_tokens = max_turns, max_tokens

    def train_problems(self):
        return [Problem("c/1", "go", "1", "all"), Problem("c/3", "go on", "3", "all")]

    test_problems = train_problems

    def environment(self):
        return Countdown()

    def demonstration_turns(self, problem):
        return ["ok"] * int(problem.answer)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tokenizer)
    return model, tokenizer


def test_batched_multiturn_rollout_with_a_scripted_environment(tiny):
    model, tokenizer = tiny
    task = CountdownTask(max_turns=3, max_tokens=200)
    problems = task.train_problems()
    prompts = [task.prompt_text(p, tokenizer) for p in problems]
    run = MultiTurnEpisodes(model, tokenizer, task)
    kwargs = dict(counts=torch.tensor([2, 3]), max_new_tokens=6, temperature=1.0, top_p=1.0, seed=11)
    episodes = run(problems, prompts, max_batch_size=5, **kwargs)
    r = episodes.rollouts
    assert r.prompt_index.tolist() == [0, 0, 1, 1, 1]
    ended = r.finished.tolist()
    for row in range(5):
        who = [t["who"] for t in r.transcripts[row]]
        n_policy = who.count("policy")
        assert episodes.stats["turns"][row] == n_policy
        if row < 2:  # one turn and done
            assert who == ["environment", "policy"] and episodes.rewards[row] == pytest.approx(0.1 * ended[row] or 0.1)
        elif ended[row] and n_policy == 3:  # three turns, two replies in between, done on the last
            assert who == ["environment", "policy", "environment", "policy", "environment", "policy"]
            assert episodes.rewards[row] == pytest.approx(0.3)
        # the environment's tokens are in the sequence with attention 1 and no loss; the policy's are its turns
        completion, real, policy = r.input_ids[row, r.prompt_width:], r.completion_mask[row], r.policy_mask[row]
        env_text = tokenizer.decode(completion[real & ~policy])
        assert env_text == "".join(f"\nuser: again {k}\nassistant: " for k in (2, 1)[:n_policy - 1])
        assert r.attention_mask[row, r.prompt_width:][real].eq(1).all()
        spans = [s for s in r.turns[row].tolist() if s != [0, 0]]
        assert len(spans) == n_policy and sum(e - s for s, e in spans) == int(policy.sum())
        policy_texts = [t["content"] for t in r.transcripts[row] if t["who"] == "policy"]
        assert [tokenizer.decode(completion[s:e], skip_special_tokens=True) for s, e in spans] == policy_texts
    # counter-based sampling: the same dialogues in chunks of 2
    again = run(problems, prompts, max_batch_size=2, **kwargs)
    assert torch.equal(again.rollouts.input_ids, r.input_ids) and again.rollouts.transcripts == r.transcripts
    # the trajectory budget: never more response tokens than max_tokens
    tight = MultiTurnEpisodes(model, tokenizer, CountdownTask(max_turns=3, max_tokens=20))(problems, prompts, max_batch_size=5, **kwargs)
    assert tight.rollouts.completion_mask.sum(-1).max() <= 20
    assert Trajectories.from_rollouts(r).loss_mask.equal(r.policy_mask)


def test_environment_replies_follow_the_chat_template():
    tokenizer = build_char_tokenizer()
    history = [{"role": "user", "content": "47*8"}, {"role": "assistant", "content": "<calc>47*8</calc>"}]
    assert between_text(history, [{"role": "user", "content": "<result>376</result>"}], tokenizer) == "\nuser: <result>376</result>\nassistant: "


# ------------------------------------------------------------------------------- the embedded environments
def test_calculator_and_its_environment():
    assert calculate("47*8") == "376" and calculate(" 12 - 30 ") == "-18" and calculate("2**8") == "error"
    task = CalcTask(seed=0, num_train=20, num_test_per_level=5, levels=["L6"], max_turns=3, max_tokens=96, teacher_tool_use=1.0)
    problem = Problem("calc/L6/47*8", "47*8", "376", "L6")
    env = task.environment()
    assert env.reset(problem) == [{"role": "user", "content": "47*8"}]
    assert env.step("<calc>47*8</calc>") == ("<result>376</result>", 0.0, False)
    assert env.step("376") == (None, 1.0, True)
    assert env.stats() == {"tool_calls": 1.0, "solved": 1.0} and env.rule == "last_number"
    wrong = task.environment()
    wrong.reset(problem)
    assert wrong.step("47*8") == (None, 0.0, True)  # an echoed expression is not the answer
    assert task.demonstration_turns(problem) == ["<calc>47*8</calc>", "376"]
    assert CalcTask(seed=0, num_train=20, num_test_per_level=5, levels=["L6"], max_turns=3, max_tokens=96,
                    teacher_tool_use=0.0).demonstration_turns(problem) == ["376"]


def test_guessing_environment_says_too_high_too_low_and_pays_for_fewer_turns():
    task = GuessTask(high=8, num_train=16, max_turns=4, max_tokens=128, turn_penalty=0.2, teacher="bisect")
    problem = task.test_problems()[4]  # the number 5
    env = task.environment()
    assert env.reset(problem) == [{"role": "user", "content": "Guess my number from 1 to 8."}]
    assert env.step("4") == ("too low", 0.0, False)
    assert env.step("seven") == ("say one number from 1 to 8", 0.0, False)
    assert env.step("6") == ("too high", 0.0, False)
    assert env.step("5") == (None, pytest.approx(0.4), True)  # solved on turn 4: 1 - 0.2 * 3
    assert guess_reward(solved=True, turns=1, turn_penalty=0.2) == 1.0 and guess_reward(solved=False, turns=1, turn_penalty=0.2) == 0.0
    assert task.demonstration_turns(problem) == ["4", "6", "5"]  # bisection
    tokenizer = build_char_tokenizer()
    prompt, completion, mask = task.sft_example(problem, tokenizer)
    assert tokenizer.decode([t for t, m in zip(completion, mask, strict=True) if m]) == "4</s>6</s>5</s>"
    assert "too low" in tokenizer.decode([t for t, m in zip(completion, mask, strict=True) if not m])


# -------------------------------------------------------------------------------- dialogue SFT (chat_jsonl)
def test_dialogue_sft_trains_on_assistant_turns_only():
    tokenizer = build_char_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "Times 3?"}, {"role": "assistant", "content": "12"}]
    prompt, completion, mask = tokenize_dialogue(messages, tokenizer)
    assert tokenizer.decode(prompt) == "system: Be brief.\nuser: 2+2?\nassistant: "
    assert tokenizer.decode(completion) == "4</s>\nuser: Times 3?\nassistant: 12</s>"
    ids, attention, labels = collate([(prompt, completion, mask)], tokenizer.pad_token_id)
    trained = labels[labels != -100]
    assert tokenizer.decode(trained) == "4</s>12</s>"  # the user's, the system's and the role headers: no loss
    assert len(trained) == 5 and attention.sum() == len(prompt) + len(completion)


def test_chat_jsonl_reads_the_fixture():
    task = ChatJsonlTask(path=str(FIXTURE), test_path=None, messages_field="messages", id_field=None, test_fraction=0.2, seed=1234,
                         max_problems=None, answer_type="rational", answer_fallback="auto")
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert len(rows) == 20 and len(task.train_problems()) + len(task.test_problems()) == 20
    tokenizer = build_char_tokenizer()
    test = task.test_problems()[0]
    assert task.prompt_text(test, tokenizer).endswith("assistant: ") and test.answer
    assert task.judge(f"The answer is {test.answer}.", test).reward == 1.0


def test_chat_jsonl_rejects_a_row_without_messages(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="no assistant turn"):
        ChatJsonlTask(path=str(bad), test_path=None, messages_field="messages", id_field=None, test_fraction=0.2, seed=0,
                      max_problems=None, answer_type="rational", answer_fallback="auto")


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("task", ["calc", "guess", "chat_jsonl"])
def test_multiturn_tasks_compose_and_build(task):
    from helpers import compose_schema

    from dynamo_cli.recipes import parts

    for command in ("sft", "train", "eval"):
        built = parts.build_task(compose_schema(command, [f"task={task}"]).task)
        assert built.train_problems() and built.test_problems()


@pytest.mark.parametrize("overrides, expected", [
    (["task=guess", "task.teacher=oracle"], "task.teacher='oracle' is not allowed; choose one of: random, bisect"),
    (["task=calc", "task.format=plain"], "task.format='plain' is not allowed; choose one of: chat"),
    (["task=calc", "task.max_turns=0"], "task.max_turns=0 must be > 0"),
    (["task=calc", "task.teacher_tool_use=2"], "task.teacher_tool_use=2.0 must be in [0, 1]"),
    (["task=chat_jsonl", "task.path=/no/dialogues.jsonl"], "task.path='/no/dialogues.jsonl': no such file"),
])
def test_bad_multiturn_config_is_one_clear_line(overrides, expected):
    from helpers import compose_schema

    from dynamo_cli.cli import describe_error

    with pytest.raises(Exception) as caught:
        compose_schema("train", overrides)
    assert expected in describe_error(caught.value)


def test_an_environment_on_vllm_is_refused_at_start():
    from helpers import compose_schema

    from dynamo_cli.config.base import ConfigError

    for task in ("calc", "guess"):
        with pytest.raises(ConfigError, match=f"task={task} is an environment: its multi-turn rollouts run on rollout=hf, not rollout=vllm"):
            compose_schema("train", [f"task={task}", "rollout=vllm"])
