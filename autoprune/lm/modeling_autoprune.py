"""Hugging Face model classes for decoders whose blocks differ in width (autoprune's structural
pruning keeps more heads or MLP channels in some blocks than in others).

``transformers``' own classes build every block from the same config fields, so a model
whose blocks differ cannot be reloaded by them. These subclasses build the blocks as the
config's ``autoprune_layers`` lists them (query heads, key/value heads, head size, MLP
width per block), then ``from_pretrained`` loads the weights as usual.

This file is self-contained (``torch`` and ``transformers`` only):
:func:`autoprune.lm.save_pretrained` copies it next to the weights and points the config's
``auto_map`` at it, so ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``
reloads the model without autoprune installed; :func:`autoprune.lm.from_pretrained` uses
the copy inside autoprune instead (no remote code).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

__all__ = [
    "CLASSES",
    "AutoprunedGPT2LMHeadModel",
    "AutoprunedLlamaForCausalLM",
    "AutoprunedMistralForCausalLM",
    "AutoprunedQwen2ForCausalLM",
    "resize_blocks",
]


def _linear(old: Any, inp: int, out: int) -> nn.Linear:
    device, dtype = old.weight.device, old.weight.dtype
    return nn.Linear(inp, out, bias=old.bias is not None, device=device, dtype=dtype)


def _conv1d(old: Any, inp: int, out: int) -> Any:
    device, dtype = old.weight.device, old.weight.dtype
    old.weight = nn.Parameter(torch.empty(inp, out, device=device, dtype=dtype))
    old.bias = nn.Parameter(torch.zeros(out, device=device, dtype=dtype))
    old.nf = out
    if hasattr(old, "nx"):
        old.nx = inp
    return old


def resize_blocks(model: Any, layers: list[dict[str, Any]]) -> None:
    """Give every decoder block the widths ``layers`` lists (weights uninitialised)."""
    gpt2 = hasattr(model, "transformer")
    blocks = model.transformer.h if gpt2 else model.model.layers
    if len(blocks) != len(layers):
        raise ValueError(f"the config lists {len(layers)} blocks in autoprune_layers but builds {len(blocks)}")
    for block, shape in zip(blocks, layers, strict=True):
        heads, kv, d, width = shape["heads"], shape["kv_heads"], shape["head_dim"], shape["intermediate"]
        if gpt2:
            attn, mlp = block.attn, block.mlp
            hidden = attn.c_attn.weight.shape[0]
            attn.c_attn = _conv1d(attn.c_attn, hidden, 3 * heads * d)
            attn.c_proj = _conv1d(attn.c_proj, heads * d, hidden)
            attn.num_heads, attn.head_dim = heads, d
            attn.split_size = attn.embed_dim = heads * d
            mlp.c_fc = _conv1d(mlp.c_fc, hidden, width)
            mlp.c_proj = _conv1d(mlp.c_proj, width, hidden)
            continue
        attn, mlp = block.self_attn, block.mlp
        hidden = attn.q_proj.in_features
        attn.q_proj = _linear(attn.q_proj, hidden, heads * d)
        attn.k_proj = _linear(attn.k_proj, hidden, kv * d)
        attn.v_proj = _linear(attn.v_proj, hidden, kv * d)
        attn.o_proj = _linear(attn.o_proj, heads * d, hidden)
        attn.head_dim, attn.num_key_value_groups = d, heads // kv
        mlp.gate_proj = _linear(mlp.gate_proj, hidden, width)
        mlp.up_proj = _linear(mlp.up_proj, hidden, width)
        mlp.down_proj = _linear(mlp.down_proj, width, hidden)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width


class AutoprunedLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        resize_blocks(self, config.autoprune_layers)


class AutoprunedQwen2ForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        resize_blocks(self, config.autoprune_layers)


class AutoprunedMistralForCausalLM(MistralForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        resize_blocks(self, config.autoprune_layers)


class AutoprunedGPT2LMHeadModel(GPT2LMHeadModel):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        resize_blocks(self, config.autoprune_layers)


# model_type -> class
CLASSES: dict[str, type[nn.Module]] = {
    "llama": AutoprunedLlamaForCausalLM,
    "qwen2": AutoprunedQwen2ForCausalLM,
    "mistral": AutoprunedMistralForCausalLM,
    "gpt2": AutoprunedGPT2LMHeadModel,
}
