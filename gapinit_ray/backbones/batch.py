"""The :class:`Batch` every backbone family builds: model inputs with their image and caption masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Segment kinds of a sample layout.
OTHER = 0  # template / prompt / special tokens: no mask, no label
IMAGE = 1  # image placeholder tokens: image_mask
CAPTION = 2  # the caption's own tokens: caption_mask, labels
END = 3  # the end-of-caption token (EOS / end-of-turn): labels only


@dataclass
class Batch:
    """One LM batch of (image, caption) pairs, masks aligned with ``inputs["input_ids"]``.

    Attributes:
        inputs: kwargs for ``model(**inputs)`` / ``model.generate(**inputs)``: ``input_ids`` (B, L),
            ``attention_mask`` (B, L), ``pixel_values`` (family shape), plus ``image_grid_thw`` (B, 3) and
            ``mm_token_type_ids`` (B, L) for Qwen2-VL, ``token_type_ids`` (B, L) for Gemma3.
        image_mask: bool (B, L), exactly the image placeholder positions (the LM positions whose input
            embeddings are image features).
        caption_mask: bool (B, L), exactly the caption's own token positions.
        labels: (B, L) long: caption ids and the end token where trained, -100 elsewhere; aligned with
            ``input_ids`` (HF shifts them inside the loss). ``None`` unless asked for.
        image_features: precomputed outputs of the frozen vision prefix, one ``(tokens, hidden)`` tensor
            per image (a feature-cache batch, :meth:`Backbone.build_feature_batch`); ``inputs`` then has
            no ``pixel_values``. Pass :meth:`Backbone.forward_inputs` to the model, not ``inputs``.
    """

    inputs: dict[str, torch.Tensor]
    image_mask: torch.Tensor
    caption_mask: torch.Tensor
    labels: torch.Tensor | None = None
    image_features: list[torch.Tensor] | None = None

    def to(self, device: str | torch.device) -> Batch:
        """The same batch with every tensor on ``device`` (dtypes kept)."""
        return Batch(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            image_mask=self.image_mask.to(device),
            caption_mask=self.caption_mask.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            image_features=None
            if self.image_features is None
            else [f.to(device) for f in self.image_features],
        )

    def __len__(self) -> int:
        return int(self.inputs["input_ids"].shape[0])


def pad_segments(
    samples: list[list[tuple[list[int], int]]], pad_id: int, *, padding_side: str, with_labels: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pad the segment lists ``[(token ids, kind), ...]`` of each sample into (B, L) tensors.

    Returns ``(input_ids, attention_mask, image_mask, caption_mask, labels)``: the masks and labels
    follow from the segment kinds (labels, with ``with_labels``: the CAPTION and END ids, -100 elsewhere)."""
    flat = []
    for segments in samples:
        ids: list[int] = []
        kinds: list[int] = []
        for seg_ids, kind in segments:
            ids.extend(seg_ids)
            kinds.extend([kind] * len(seg_ids))
        flat.append((ids, kinds))
    length = max(len(ids) for ids, _ in flat)
    bsz = len(flat)
    input_ids = torch.full((bsz, length), pad_id, dtype=torch.long)
    attention = torch.zeros((bsz, length), dtype=torch.long)
    kind_t = torch.full((bsz, length), -1, dtype=torch.long)
    for b, (ids, kinds) in enumerate(flat):
        n = len(ids)
        sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
        input_ids[b, sl] = torch.tensor(ids, dtype=torch.long)
        attention[b, sl] = 1
        kind_t[b, sl] = torch.tensor(kinds, dtype=torch.long)
    image_mask = kind_t == IMAGE
    caption_mask = kind_t == CAPTION
    labels = None
    if with_labels:
        labels = torch.where(
            (kind_t == CAPTION) | (kind_t == END), input_ids, torch.full_like(input_ids, -100)
        )
    return input_ids, attention, image_mask, caption_mask, labels
