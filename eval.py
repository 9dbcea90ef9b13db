"""Evaluate a fine-tuned or linear-probe checkpoint: `python eval.py ckpt_path=... [data=...]` (see conf/eval.yaml)."""

import hydra
from omegaconf import DictConfig

from mae.jobs.evaluate import evaluate
from mae.jobs.harness import run_job
from mae.runs.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_job(evaluate, cfg)


if __name__ == "__main__":
    main()
