"""One RL step as stages, each built once from the config (recipes/parts.py):

    collect   sampler -> allocator -> rollout engine -> verifier (one or more rounds) -> Trajectories   (collect.py)
    schedule  when collect runs: on-policy, or one step ahead during the update                        (schedule.py)
    estimate  rewards (and a critic's values) -> per-token advantages                                  (algo/advantages/)
    update    epochs x mini-batches x micro-batches over the Loss (algo/terms/), for every Trainable  (update.py)
    evaluate  test pass@1, greedy and sampled                                                          (evaluate.py)
"""
