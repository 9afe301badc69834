"""The built-in decoder: a Llama-style model (RMSNorm, rotary positions, SwiGLU MLP,
grouped-query attention) built with ``transformers``' own ``LlamaForCausalLM``, about 1M
parameters, trained here on the built-in corpus and cached like the digits model."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from autoprune.tasks._lm_corpus import VOCAB_SIZE

__all__ = ["tiny_llama_config", "build_tiny_llama", "train_causal_lm", "random_windows"]


def tiny_llama_config(
    *, hidden: int = 128, layers: int = 6, heads: int = 4, kv_heads: int = 2, intermediate: int = 320, context: int = 128
) -> Any:
    """The config of the built-in decoder (a ``transformers.LlamaConfig``)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attn_implementation="eager",  # type: ignore[call-arg]  # the same on every machine
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def build_tiny_llama(config: Any, seed: int) -> nn.Module:
    """An untrained ``LlamaForCausalLM`` with seeded initialisation (the caller's RNG untouched)."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def random_windows(tokens: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` windows of ``length`` tokens at random offsets of a 1-D token stream."""
    starts = torch.randint(0, len(tokens) - length, (n,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])


def train_causal_lm(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    steps: int,
    batch: int,
    context: int,
    lr: float,
    seed: int,
    warmup: int = 50,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.5,
    temperature: float = 1.0,
) -> list[float]:
    """Train ``model`` in place with AdamW on random windows of ``tokens`` (cosine schedule
    after a linear warm-up); returns the loss of every step.

    With a ``teacher`` (the unpruned model), the loss is ``(1 - w) * cross-entropy + w * T^2 *
    KL(teacher || model)`` on the logits at temperature ``T`` (Hinton et al.; as Minitron's
    recovery), ``w = distill_weight``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    losses = []
    model.train()
    for _ in range(steps):
        x = random_windows(tokens, batch, context, generator)
        out = model(input_ids=x, labels=x, use_cache=False)
        loss = out.loss
        if teacher is not None:
            with torch.no_grad():
                target = teacher(input_ids=x, use_cache=False).logits / temperature
            log_p = torch.log_softmax(out.logits / temperature, dim=-1)
            kl = torch.nn.functional.kl_div(log_p.flatten(0, 1), torch.log_softmax(target, dim=-1).flatten(0, 1),
                                            log_target=True, reduction="batchmean")  # fmt: skip
            loss = (1 - distill_weight) * loss + distill_weight * temperature**2 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    return losses
