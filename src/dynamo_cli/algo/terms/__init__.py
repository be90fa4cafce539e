"""The loss as a list of weighted terms, aggregated by one function (base.py):

    loss = Σ_k  w_k · aggregate(term_k(batch, outputs), batch.loss_mask)

One module per term: its maths, its class (`name`, `needs`, `__call__` -> (per-token loss (n, L), per-token metrics),
protocols.LossTerm) and a builder registered in TERMS that reads its coefficient from the config and returns the
weighted term, or None when the term is off. A term with weight 0 is never computed, but its metric is still logged
(0) where it is part of the metrics contract (train/kl_ref, train/entropy_bonus).

The imports below fix the order of the terms in the loss and in the logs: the policy loss first. The policy term
itself is one of POLICY_LOSSES (algorithm.policy_loss): ppo_clip.py, gspo.py, cispo.py register theirs.
"""
from dynamo_cli.algo.terms import ppo_clip, kl, entropy, value  # noqa: F401, I001 - registration, in the loss's order
from dynamo_cli.algo.terms import gspo, cispo  # noqa: F401, I001 - policy losses: registration only
