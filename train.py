"""Training jobs: `python train.py [task=pretrain|finetune|linprobe] [hydra overrides]` (see conf/ and the README)."""

from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from mae.jobs.harness import run_job
from mae.runs.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Any:
    # The task group names the job: pre-training, fine-tuning / linear probing, or an ablation point. Its return
    # value goes back to Hydra's sweeper (the objective of an Optuna sweep).
    return run_job(instantiate(cfg.job), cfg)


if __name__ == "__main__":
    main()
