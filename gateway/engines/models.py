"""Model cards as vLLM lists them (``GET /v1/models``), typed.

vLLM's card: https://github.com/vllm-project/vllm ``vllm/entrypoints/openai/engine/protocol.py`` (``ModelCard``).
A base model has ``parent`` null (``root`` its path); a LoRA adapter loaded on the engine is listed as a
model of its own whose ``parent`` is the base model's id. Unknown fields (``permission``, ...) are ignored.
"""

from __future__ import annotations

import msgspec

__all__ = ["ModelCard", "parse_model_list"]


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "vllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None

    @property
    def is_adapter(self) -> bool:
        """A LoRA adapter loaded on the engine (vLLM names its base model in ``parent``)."""
        return self.parent is not None and self.parent != self.id


class _ModelList(msgspec.Struct):
    data: list[msgspec.Raw]


_decode_list = msgspec.json.Decoder(_ModelList).decode
_decode_card = msgspec.json.Decoder(ModelCard).decode


class ModelListError(ValueError):
    """The body is not a model list."""


def parse_model_list(body: bytes) -> dict[str, ModelCard]:
    """The cards of a ``GET /v1/models`` answer by id; a card that is not a valid one is skipped."""
    try:
        raw_cards = _decode_list(body).data
    except msgspec.DecodeError as exc:
        raise ModelListError("GET /v1/models answered invalid JSON") from exc
    except msgspec.ValidationError as exc:
        raise ModelListError("GET /v1/models answered no `data` list") from exc
    cards: dict[str, ModelCard] = {}
    for raw in raw_cards:
        try:
            card = _decode_card(raw)
        except msgspec.ValidationError:
            continue
        cards.setdefault(card.id, card)
    return cards
