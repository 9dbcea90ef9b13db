"""The item kNN job (``task=item_knn``): how well an encoder's features tell the scenes' items apart, seen alone (as
in pre-training) and in their scene (as a dense head sees them). A diagnostic of transfer: where the pre-trained
encoder's advantage over a random one holds alone but shrinks in the scene, what pre-training learned does not
carry over to the scenes' context.

Each item of the training scenes (the first ``item_knn.train_items``, scene by scene) goes into a kNN bank, and each
item of the validation scenes is classified by weighted kNN (the main job's kNN: k, temperature) in both views
(:mod:`mae.evaluation.items`): alone, its square box resized to ``item_knn.crop`` pixels; in its scene, the whole
scene encoded, the item's mask-weighted mean of the patch tokens. Both views read the same block's tokens (no
final norm, as the dense heads get them). Nothing is trained; the test scenes are not used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision.transforms.v2.functional import normalize

from mae.data.dense.coco import CocoInstances
from mae.data.errors import check_int, check_optional_limit
from mae.evaluation.items import crop_square, masked_mean
from mae.evaluation.knn import knn_top1
from mae.jobs.downstream import initial_encoder
from mae.jobs.harness import SetupError, merge_results, one_line_setup_error, pretrained_record, write_config
from mae.models.dense.backbone import ViTBackbone, vit_backbone_from_mae
from mae.runs.torch_state import eval_mode

SETUP_ERRORS = (ValueError, TypeError, OSError)


@dataclass(frozen=True)
class ItemFeatures:
    """One split's items: L2-normalised features ``(N, D)`` alone and in their scene, and labels ``(N,)`` from 0."""

    alone: torch.Tensor
    in_scene: torch.Tensor
    labels: torch.Tensor


def block_index(block: int | None, depth: int) -> int:
    """``block`` as a 0-based index of a ``depth``-block encoder (negative counts from the end; None: the last)."""
    if block is None:
        return depth - 1
    if isinstance(block, bool) or not isinstance(block, int) or not -depth <= block < depth:
        raise SetupError(f"item_knn.block={block!r} must be a block index in [{-depth}, {depth}) or null (the last)")
    return block % depth


def item_features(
    dataset: CocoInstances,
    alone: ViTBackbone,
    in_scene: ViTBackbone,
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
    limit: int | None,
) -> ItemFeatures:
    """The features of the non-crowd, visible items of ``dataset``'s scenes, in order, until ``limit`` items."""
    name = alone.feature_names[-1]
    patch = alone.patch_size
    alone_features, scene_features, labels = [], [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            image, target = dataset[index]
            pixels = image.float() / 255
            tokens = in_scene(normalize(pixels, mean, std)[None])[name][0]
            crops, crop_masks = [], []
            for box, mask, label, crowd in zip(target["boxes"], target["masks"], target["labels"], target["iscrowd"]):
                pooled = None if crowd else masked_mean(tokens, mask.float(), patch)
                if pooled is None:
                    continue
                scene_features.append(pooled)
                labels.append(int(label) - 1)
                # Cut out before normalising: where the square leaves the scene it is black, as a Fashion-MNIST
                # image's border is.
                crops.append(crop_square(pixels, box, crop, 0.0))
                crop_masks.append(crop_square(mask[None].float(), box, crop, 0.0)[0])
            if crops:
                crop_tokens = alone(normalize(torch.stack(crops), mean, std))[name]
                for tokens_alone, crop_mask in zip(crop_tokens, crop_masks):
                    pooled = masked_mean(tokens_alone, crop_mask, patch)
                    alone_features.append(tokens_alone.mean(dim=(1, 2)) if pooled is None else pooled)
            if limit is not None and len(labels) >= limit:
                break
    if not labels:
        raise SetupError(f"{dataset.annotation_file} has no visible items to classify")
    count = len(labels) if limit is None else min(limit, len(labels))
    return ItemFeatures(
        F.normalize(torch.stack(alone_features[:count]).float(), dim=1),
        F.normalize(torch.stack(scene_features[:count]).float(), dim=1),
        torch.tensor(labels[:count], dtype=torch.int64),
    )


def item_knn(cfg: DictConfig) -> dict:
    """Classify the validation scenes' items by kNN, alone and in their scene; returns what ``results.json`` got."""
    settings = cfg.item_knn
    data = cfg.data
    try:
        train_items = check_int("item_knn.train_items", settings.train_items, 1)
        val_items = check_optional_limit("item_knn.val_items", settings.val_items)
        k = check_int("item_knn.k", settings.k, 1)
        if not float(settings.temperature) > 0:
            raise SetupError(f"item_knn.temperature={settings.temperature!r} must be positive")
        torch.manual_seed(cfg.seed)  # the random-initialisation baseline's weights (pretrained=null)
        encoder = initial_encoder(cfg)
        block = block_index(settings.block, len(encoder.blocks))
        splits = {
            split: CocoInstances(data[f"{split}_images"], data[f"{split}_annotations"], data.in_chans, data.how_to_get)
            for split in ("train", "val")
        }
        alone = vit_backbone_from_mae(encoder, settings.crop, [block], 0.0, False, None)
        in_scene = vit_backbone_from_mae(encoder, data.image_size, [block], 0.0, False, None)
    except SETUP_ERRORS as error:
        raise one_line_setup_error(error) from error
    write_config(cfg)
    start = time.perf_counter()
    with eval_mode(alone), eval_mode(in_scene):
        features = {
            split: item_features(dataset, alone, in_scene, settings.crop, list(data.mean), list(data.std), limit)
            for (split, dataset), limit in zip(splits.items(), (train_items, val_items))
        }
    bank, queries = features["train"], features["val"]
    num_classes = splits["train"].num_classes
    top1 = {
        view: 100.0
        * knn_top1(
            getattr(bank, view),
            bank.labels,
            getattr(queries, view),
            queries.labels,
            num_classes,
            k,
            settings.temperature,
        )
        for view in ("alone", "in_scene")
    }
    results = merge_results(
        cfg,
        None,
        {
            "task": cfg.task_name,
            **pretrained_record(cfg),
            "val_top1_alone": top1["alone"],
            "val_top1_in_scene": top1["in_scene"],
            "train_items": len(bank.labels),
            "val_items": len(queries.labels),
            "block": block,
            "status": "finished",
            "eval_seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(
        f"item kNN top-1 on the validation scenes' {len(queries.labels)} items: {top1['alone']:.2f}% alone, "
        f"{top1['in_scene']:.2f}% in their scene"
    )
    return results
