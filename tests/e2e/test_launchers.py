"""Hydra launchers shipped in conf/hydra/launcher/: local parallel processes (joblib), SLURM (submitit) and
submitit's local executor, which runs the SLURM code path without a cluster."""
import json

import pytest
from conftest import dynamo

SMALL = ["logger=none", "trainer.steps=1", "trainer.prompts_per_step=8", "rollout.n=4", "allocator.n_min=2", "allocator.n_max=8",
         "eval.max_problems=6", "eval.n_samples=0", "task.num_train=500", "task.levels=[L1]"]


def test_slurm_launcher_composes_with_its_documented_overrides():
    out = dynamo("train", "--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4").stdout
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in out
    assert "partition: gpu" in out and "gpus_per_node: 4" in out and "/.submitit/%j" in out


@pytest.mark.parametrize("launcher", ["local_parallel", "local_jobs"])
def test_multirun_through_a_launcher_runs_every_job(launcher, sft_checkpoint, tmp_path):
    dynamo("train", "--multirun", f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path}", f"model.path={sft_checkpoint}",
           *SMALL, "seed=0,1")
    for job, seed in ((0, 0), (1, 1)):
        run = tmp_path / str(job)
        assert json.loads((run / "eval.json").read_text())["overall"]["problems"] == 6
        assert f"seed: {seed}" in (run / "config.yaml").read_text()
    if launcher == "local_jobs":
        assert list((tmp_path / ".submitit").glob("*/*_log.out"))  # submitit's per-job logs
