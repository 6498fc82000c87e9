"""diffusers attention processors that run PAIntA and collect RASG's cross-attention logits.

The only glue between the UNet and `core/`. Per-call state travels in an `AttentionGuidance`
object passed to the UNet as ``cross_attention_kwargs={"hdpainter": state}``; the processors and a
forward pre-hook per transformer block are installed by `guided_attention(unet, latent_factor)` and removed when the
`with` block ends, even on error. Nothing is stored at module level.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .core.painta import cross_attention_probs, painta_attention, token_relevance

STATE_KEY = "hdpainter"


@dataclass
class AttentionGuidance:
    """What one UNet call needs from PAIntA and RASG, and what RASG collects from it."""

    latent_size: tuple[int, int]  # (h, w) of the latent grid
    role: str  # "cfg": batch = [unconditional; conditional]; "cond" or "uncond": one half only
    token_mask: torch.Tensor  # (B, T) True at ind(τ), one row per conditional sample
    masks: dict[int, torch.Tensor]  # pixel divisor (16, 32) → (B, h*w) bool, True = to fill
    painta_divisors: tuple[int, ...] = ()  # grids where self-attention becomes PAIntA; () = off
    rasg_divisors: tuple[int, ...] = ()  # grids whose cross-attention logits RASG collects; () = off
    end_graph_after_rasg: bool = False  # switch grad recording off after the last RASG layer (caller restores it)
    relevance: dict[str, torch.Tensor] = field(default_factory=dict)  # c per layer, cond pass → uncond pass
    block_inputs: dict[int, tuple] = field(default_factory=dict)  # transformer block → (x, text), this call
    rasg_logit_sum: torch.Tensor | None = None  # (B, n, T) sum over layers and heads
    rasg_heads: int = 0
    latent_factor: int = field(kw_only=True)  # pixels per latent pixel: the VAE's downsampling (vae_scale_factor)
    _shared_rows: dict[int, torch.Tensor | None] = field(default_factory=dict, repr=False)

    def divisor(self, num_tokens: int) -> int | None:
        """Pixel divisor of an attention layer's grid (16 for H/16), or None if it is not a grid of ours."""
        h, w = self.latent_size
        f = round(math.sqrt(h * w / num_tokens))
        if f < 1 or (h // f) * (w // f) != num_tokens:
            return None
        return self.latent_factor * f

    def grid(self, divisor: int) -> tuple[int, int]:
        f = divisor // self.latent_factor
        return self.latent_size[0] // f, self.latent_size[1] // f

    def add_rasg_logits(self, head_sum: torch.Tensor, heads: int) -> None:
        self.rasg_logit_sum = head_sum if self.rasg_logit_sum is None else self.rasg_logit_sum + head_sum
        self.rasg_heads += heads

    def rasg_logits(self) -> torch.Tensor:
        """Ā: pre-softmax logits, mean over every collected layer and head, (B, n, T)."""
        if self.rasg_logit_sum is None:
            raise RuntimeError("no cross-attention layer matched the RASG grid; is this an SD-style UNet?")
        return self.rasg_logit_sum / self.rasg_heads

    def shared_rows(self, divisor: int) -> torch.Tensor | None:
        """Masked token indices when every sample shares one mask at this grid (else None); once per call."""
        if divisor not in self._shared_rows:
            masks = self.masks[divisor]
            same = bool((masks == masks[:1]).all())
            self._shared_rows[divisor] = masks[0].nonzero().squeeze(1) if same else None
        return self._shared_rows[divisor]

    def conditional_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x[-self.token_mask.shape[0] :]

    def per_row(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat a per-sample tensor over the batch layout of this call."""
        return torch.cat([x, x]) if self.role == "cfg" else x


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = x.shape
    return x.view(b, n, heads, inner // heads).transpose(1, 2)  # (B, H, n, d)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _output(attn, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](_merge_heads(out)))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _project(attn, hidden_states, context):
    if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
        raise NotImplementedError("hdpainter's attention processors support SD-style transformer blocks only")
    if context is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    q, k, v = (
        _heads(p(x), attn.heads) for p, x in ((attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context))
    )
    if attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    return q, k, v


def _sdpa_mask(attn, attention_mask, context_len, batch):
    if attention_mask is None:
        return None
    mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
    return mask.view(batch, attn.heads, -1, mask.shape[-1])


class PaintaSelfAttention:
    """Self-attention (attn1) that becomes PAIntA on the configured grids while PAIntA is on."""

    def __init__(self, name: str, block: torch.nn.Module):
        self.name = name
        self.block_id = id(block)
        self.norm2 = block.norm2  # the cross-attention's input norm and projections, borrowed (docs/method.md §3.2)
        self.attn2 = block.attn2

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, hdpainter=None
    ):
        state: AttentionGuidance | None = hdpainter
        q, k, v = _project(attn, hidden_states, None)
        sdpa_mask = _sdpa_mask(attn, attention_mask, hidden_states.shape[1], hidden_states.shape[0])
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, scale=attn.scale)
        divisor = state.divisor(hidden_states.shape[1]) if state is not None else None
        if state is None or divisor not in state.painta_divisors or sdpa_mask is not None:
            return _output(attn, plain, hidden_states)

        if state.role == "uncond":
            relevance = state.relevance[self.name]  # c comes from the conditional half (docs/method.md §3.3)
        else:
            x, text = (state.conditional_rows(t) for t in state.block_inputs.pop(self.block_id))
            y = _output(
                attn, state.conditional_rows(plain), state.conditional_rows(hidden_states)
            )  # SA(X), unmodified
            if self.attn2.norm_cross:
                text = self.attn2.norm_encoder_hidden_states(text)
            q_c = _heads(self.attn2.to_q(self.norm2(x + y)), self.attn2.heads)
            k_c = _heads(self.attn2.to_k(text), self.attn2.heads)
            probs = cross_attention_probs(q_c, k_c, self.attn2.scale)  # (B, n, T)
            relevance = token_relevance(probs, state.token_mask, state.grid(divisor))
            if state.role == "cond":
                state.relevance[self.name] = relevance.detach()
        mask = state.per_row(state.masks[divisor])
        out = painta_attention(
            q,
            k,
            v,
            state.per_row(relevance).to(q.dtype),
            mask,
            plain=plain,
            shared_rows=state.shared_rows(divisor),
            scale=attn.scale,
        )
        return _output(attn, out, hidden_states)


class RasgCrossAttention:
    """Cross-attention (attn2) that also hands its pre-softmax logits on the RASG grid to the state."""

    def __init__(self, name: str, layout: UNetLayout):
        self.name = name
        self.layout = layout

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, hdpainter=None
    ):
        state: AttentionGuidance | None = hdpainter
        q, k, v = _project(attn, hidden_states, encoder_hidden_states)
        sdpa_mask = _sdpa_mask(attn, attention_mask, k.shape[2], hidden_states.shape[0])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, scale=attn.scale)
        divisor = state.divisor(hidden_states.shape[1]) if state is not None else None
        if state is not None and state.role != "uncond" and divisor in state.rasg_divisors:
            q_c, k_c = state.conditional_rows(q), state.conditional_rows(k)
            logits = torch.matmul(q_c, k_c.transpose(-1, -2)).float() * attn.scale  # (B, H, n, T)
            state.add_rasg_logits(logits.sum(dim=1), attn.heads)
            if state.end_graph_after_rasg and self.layout.is_last(self.name, divisor, state.rasg_divisors):
                # RASG's objective is complete: the rest of this forward pass needs no autograd graph.
                # The caller asked for this and restores the grad mode when the UNet returns.
                torch.set_grad_enabled(False)
        return _output(attn, out, hidden_states)


class UNetLayout:
    """Forward order and grid of the transformer blocks of a UNet2DConditionModel-style UNet.

    Lets the last RASG layer end gradient recording early; layers it cannot place (another layout)
    simply never end it, which costs memory but not correctness.
    """

    def __init__(self, unet: torch.nn.Module, names: list[str], latent_factor: int):
        levels = len(getattr(unet, "down_blocks", ()))
        self.places: dict[str, tuple[tuple[int, ...], int]] = {}
        for name in names:
            parts = name.split(".")
            numbers = tuple(int(p) for p in parts if p.isdigit())
            if parts[0] == "down_blocks" and numbers:
                self.places[name] = ((0, *numbers), latent_factor * 2 ** numbers[0])
            elif parts[0] == "mid_block" and levels:
                self.places[name] = ((1, *numbers), latent_factor * 2 ** (levels - 1))
            elif parts[0] == "up_blocks" and numbers and levels:
                self.places[name] = ((2, *numbers), latent_factor * 2 ** (levels - 1 - numbers[0]))
        self._last: dict[tuple[int, ...], str | None] = {}

    def is_last(self, name: str, divisor: int, divisors: tuple[int, ...]) -> bool:
        """Whether `name` is the last block in forward order whose grid is one of `divisors`."""
        if name not in self.places or self.places[name][1] != divisor:
            return False
        if divisors not in self._last:
            candidates = [(order, n) for n, (order, d) in self.places.items() if d in divisors]
            self._last[divisors] = max(candidates)[1] if candidates else None
        return self._last[divisors] == name


def _block_input_hook(block: torch.nn.Module):
    signature = inspect.signature(block.forward)

    def hook(module, args, kwargs):
        bound = signature.bind(*args, **kwargs)
        state = (bound.arguments.get("cross_attention_kwargs") or {}).get(STATE_KEY)
        if state is None or not state.painta_divisors or state.role == "uncond":
            return
        hidden = bound.arguments["hidden_states"]
        if state.divisor(hidden.shape[1]) in state.painta_divisors:  # PAIntA needs X for norm2(X + SA(X))
            state.block_inputs[id(module)] = (hidden, bound.arguments.get("encoder_hidden_states"))

    return hook


def _transformer_blocks(unet: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in unet.named_modules():
        attn1, attn2 = getattr(module, "attn1", None), getattr(module, "attn2", None)
        if (
            attn1 is not None
            and attn2 is not None
            and getattr(module, "norm_type", None) == "layer_norm"
            and not getattr(module, "only_cross_attention", False)
        ):
            yield name, module


@contextlib.contextmanager
def guided_attention(unet: torch.nn.Module, latent_factor: int) -> Iterator[None]:
    """Install the PAIntA/RASG processors on every SD transformer block for the duration of a `with`;
    `latent_factor` is the VAE's downsampling (pixels per latent pixel), which places the grids."""
    original = unet.attn_processors
    processors = dict(original)
    hooks = []
    blocks = list(_transformer_blocks(unet))
    layout = UNetLayout(unet, [name for name, _ in blocks], latent_factor)
    try:
        for name, block in blocks:
            processors[f"{name}.attn1.processor"] = PaintaSelfAttention(name, block)
            processors[f"{name}.attn2.processor"] = RasgCrossAttention(name, layout)
            hooks.append(block.register_forward_pre_hook(_block_input_hook(block), with_kwargs=True))
        if not hooks:
            raise ValueError("the UNet has no SD-style transformer blocks (attn1 + attn2); PAIntA/RASG cannot attach")
        unet.set_attn_processor(processors)
        yield
    finally:
        for handle in hooks:
            handle.remove()
        unet.set_attn_processor(original)
