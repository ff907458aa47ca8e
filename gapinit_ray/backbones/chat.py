"""Chat-templated families (Qwen2-VL, Gemma 3): a sample is a user turn around the image and the
prompt, then the caption as the model's turn; the model takes a per-token modality input."""

from __future__ import annotations

from typing import ClassVar

import torch

from gapinit_ray.backbones.base import CAPTION, END, IMAGE, OTHER, Backbone


class ChatBackbone(Backbone):
    """A :class:`Backbone` whose layout follows a chat template (see :meth:`_chat_layout`)."""

    #: The model's per-token modality input (1 = image token): Gemma 3's ``token_type_ids`` (each image
    #: block attends to itself bidirectionally), Qwen2-VL's ``mm_token_type_ids`` (M-RoPE positions;
    #: pads are 0 and the attention mask removes them from the position computation).
    image_token_type_input: ClassVar[str] = ""

    def _chat_layout(
        self,
        head: str,
        n_image_tokens: int,
        tail: str,
        caption_ids: list[int] | None,
        end: str,
        *,
        bos: bool = False,
    ) -> list[tuple[list[int], int]]:
        """The layout of a chat-templated family: ``[<bos>] head [image × n] tail [caption end]``, the
        template's text around the image given as ``head``/``tail`` (an empty tail and ``n = 0`` for a
        text-only turn); the caption and its end-of-turn only when ``caption_ids`` is given."""
        segments = [([self.tokenizer.bos_token_id], OTHER)] if bos else []
        segments.append((self.text_ids(head), OTHER))
        if n_image_tokens:
            segments.append(([self.image_token_id] * n_image_tokens, IMAGE))
        if tail:
            segments.append((self.text_ids(tail), OTHER))
        if caption_ids is not None:
            segments += [(caption_ids, CAPTION), (self.text_ids(end), END)]
        return segments

    def _extra_inputs(self, input_ids: torch.Tensor, image_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.image_token_type_input: image_mask.to(torch.long)}
