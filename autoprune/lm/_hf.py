"""Saving a structurally pruned decoder so that Hugging Face reloads it.

Blocks that all have the same widths are described by the config's own fields and reload
with the model's class. Blocks that differ need :mod:`autoprune.lm.modeling_autoprune`: the
saved config points ``auto_map`` at a copy of that file, so ``AutoModelForCausalLM.
from_pretrained(path, trust_remote_code=True)`` builds them; :func:`from_pretrained` does the
same without remote code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from autoprune._errors import ScheduleError
from autoprune.decoder import decoder_layout

__all__ = ["from_pretrained", "needs_autoprune_classes", "save_pretrained"]

_CODE = Path(__file__).with_name("modeling_autoprune.py")


def _plain_shapes(config: Any) -> dict[str, int]:
    """What the model's own class builds for every block from the config's fields."""
    if config.model_type == "gpt2":
        heads = config.n_head
        return {"heads": heads, "kv_heads": heads, "head_dim": config.n_embd // heads,
                "intermediate": config.n_inner or 4 * config.n_embd}  # fmt: skip
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"heads": heads, "kv_heads": config.num_key_value_heads, "head_dim": head_dim,
            "intermediate": config.intermediate_size}  # fmt: skip


def needs_autoprune_classes(config: Any) -> bool:
    """Whether the model's own class cannot rebuild the blocks ``config.autoprune_layers`` lists."""
    layers = getattr(config, "autoprune_layers", None)
    if not layers:
        return False
    plain = _plain_shapes(config)
    return any(dict(layer) != plain for layer in layers)


def save_pretrained(model: nn.Module, path: str | Path, **kwargs: Any) -> Path:
    """``model.save_pretrained(path)``, loadable again after structural pruning.

    When the pruned blocks differ in width, the config's ``auto_map`` points at a copy of
    :mod:`autoprune.lm.modeling_autoprune` saved alongside, and ``from_pretrained`` needs
    ``trust_remote_code=True`` (or use :func:`from_pretrained`).

    Raises:
        ScheduleError: the model has no ``save_pretrained``, or its blocks differ in width and
            its family has no autoprune class (Llama, Qwen2, Mistral and GPT-2 do).
    """
    from autoprune.lm.modeling_autoprune import CLASSES

    save = getattr(model, "save_pretrained", None)
    config = getattr(model, "config", None)
    if not callable(save) or config is None:
        raise ScheduleError(f"{type(model).__name__} has no save_pretrained (not a Hugging Face model)")
    path = Path(path)
    custom = needs_autoprune_classes(config)
    if custom:
        decoder_layout(model)
        cls = CLASSES.get(config.model_type)
        if cls is None:
            raise ScheduleError(
                f"the pruned blocks of this {config.model_type!r} model differ in width and autoprune has no class to "
                f"rebuild them (it has: {', '.join(CLASSES)}); prune every block alike to save it"
            )
        config.auto_map = {"AutoModelForCausalLM": f"modeling_autoprune.{cls.__name__}"}
    elif hasattr(config, "auto_map") and "modeling_autoprune" in json.dumps(getattr(config, "auto_map", {})):
        del config.auto_map
    save(path, **kwargs)
    if custom:
        shutil.copyfile(_CODE, path / _CODE.name)
    return path


def from_pretrained(path: str | Path, **kwargs: Any) -> nn.Module:
    """Reload what :func:`save_pretrained` wrote (no remote code: autoprune's own classes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from autoprune.lm.modeling_autoprune import CLASSES

    config = AutoConfig.from_pretrained(path)
    if needs_autoprune_classes(config):
        cls = CLASSES.get(config.model_type)
        if cls is None:
            raise ScheduleError(
                f"no autoprune class for model_type {config.model_type!r} (it has: {', '.join(CLASSES)})"
            )
        return cls.from_pretrained(path, **kwargs)  # type: ignore[attr-defined,no-any-return]
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)  # type: ignore[no-any-return]
