"""MAE pre-training: `python train.py [hydra overrides]` (see conf/train.yaml and the README)."""

import sys

import hydra
from omegaconf import DictConfig

from mae.config import register_resolvers
from mae.pretrain import SetupError, pretrain

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        pretrain(cfg)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
