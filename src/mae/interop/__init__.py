"""Interoperability with other ecosystems' model formats (``transformers`` needs the ``hf`` extra)."""

from mae.interop.transformers_format import (
    TRANSFORMERS_VERSION,
    from_transformers,
    load_transformers_weights,
    mae_kwargs_from_config,
    save_transformers,
    save_transformers_vit,
    to_transformers_state_dict,
    to_transformers_vit_state_dict,
    vit_config,
    vitmae_config,
)

__all__ = [
    "TRANSFORMERS_VERSION",
    "from_transformers",
    "load_transformers_weights",
    "mae_kwargs_from_config",
    "save_transformers",
    "save_transformers_vit",
    "to_transformers_state_dict",
    "to_transformers_vit_state_dict",
    "vit_config",
    "vitmae_config",
]
