"""One RL step as three stages, each chosen once from the config (builders.py):

    collect   sampler -> allocator -> rollout engine -> verifier (one or more rounds) -> Trajectories
    estimate  rewards (and, later, values) -> per-token advantages
    update    epochs x mini-batches x micro-batches over the Loss (algo/terms.py), for every Trainable
"""
