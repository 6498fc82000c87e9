"""ind(τ): the token positions that carry the user's prompt (docs/method.md §2)."""

from __future__ import annotations

from collections.abc import Sequence


def eot_position(token_ids: Sequence[int], eot_id: int) -> int:
    """Index of the first end-of-text token after the start token."""
    ids = list(token_ids)
    try:
        return ids.index(eot_id, 1)
    except ValueError:
        raise ValueError("token ids contain no end-of-text token; tokenise with truncation") from None


def prompt_token_indices(prompt_ids: Sequence[int], full_prompt_ids: Sequence[int], eot_id: int) -> list[int]:
    """ind(τ): word positions of the bare prompt plus the EOT position of the full prompt.

    Both id lists are tokenizer outputs with the start token at position 0 and truncated to the
    text encoder's length (padding after EOT is allowed: SD 1.x pads with EOT, SD 2 with "!").
    """
    bare_eot = eot_position(prompt_ids, eot_id)
    full_eot = eot_position(full_prompt_ids, eot_id)
    words = [i for i in range(1, bare_eot) if i < full_eot]
    return words + [full_eot]
