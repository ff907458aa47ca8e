"""Shared machinery of the backbone families: the :class:`Backbone` base (:class:`Batch` and the weight
loading live in :mod:`~gapinit_ray.backbones.batch` and :mod:`~gapinit_ray.backbones.loading`).

Why a hand-built layout instead of each family's HF ``Processor``: calibration needs to know *exactly*
which LM positions hold image features and which hold the caption's own tokens (no pad, BOS/EOS, prompt
or vision-start/end tokens), and training needs labels on exactly the caption (+ end token). The HF
processors only return ``input_ids``; recovering the caption span from them is fragile (BPE merges across
the prompt/caption boundary, chat templates differ per release). So every family describes one sample as
a list of *segments* ``(token ids, kind)`` and :meth:`Backbone._collate` turns them into padded tensors
and masks in one place; the masks are then correct by construction. The image placeholders and the
per-family extra inputs (``mm_token_type_ids``, ``token_type_ids``, ``image_grid_thw``) are laid out
exactly as the family's HF processor does (checked against transformers 5.23 sources).
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from gapinit_ray.backbones.batch import CAPTION, END, IMAGE, OTHER, Batch, pad_segments
from gapinit_ray.backbones.loading import (
    build_seeded,
    load_checkpoint,
    offline_requested,
    parse_dtype,
    resolve_source,
)
from gapinit_ray.errors import BackboneError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

#: Provenance written next to the weights by :meth:`Backbone.save` (name, family, source_id).
META_FILE = "gapinit_backbone.json"

__all__ = [
    "CAPTION",
    "END",
    "IMAGE",
    "META_FILE",
    "OTHER",
    "Backbone",
    "Batch",
    "build_seeded",
    "load_checkpoint",
    "offline_requested",
    "parse_dtype",
    "resolve_source",
]


class Backbone:
    """A frozen vision-language model plus everything needed to feed it (image, caption) pairs.

    Subclasses set the class attributes and implement :meth:`_encode_images` and :meth:`_layout`.

    Attributes:
        name: registry name it was loaded under (``"tiny-blip2"``, ``"qwen2_vl"``, ...).
        family: ``"blip2"``, ``"qwen2_vl"`` or ``"gemma3"``.
        model: the HF model, in eval mode, on ``device``.
        tokenizer: its tokenizer (``PreTrainedTokenizerFast``).
        image_processor: its image processor (PIL backend when torchvision is absent).
        source_id: identifies the weights for cache keys: ``"tiny-blip2:seed=0"`` for a built preset,
            ``"<abs dir>"`` for a local checkpoint, ``"<hub id>@<revision>"`` for a hub id.
        hf_class: name of the HF ``*ForConditionalGeneration`` class in ``transformers``.
        lm_layers_path: dotted path of the LM decoder ``ModuleList`` inside ``model``.
        vision_module_prefixes: dotted prefixes (as in ``model.named_modules()``) of the vision tower,
            Q-Former and projector: what LoRA must not touch.
        default_target_modules: LoRA targets of the paper for this family's LM.
        default_prompt: text placed between image and caption when ``prompt=None`` is passed.
        default_question_prompt: the VQA / POPE prompt, a template with ``{question}``; the answer follows
            it where a caption would. Chat families use the short-answer instruction of LLaVA-1.5 /
            Qwen-VL's VQA evaluation; BLIP-2 overrides it with its own "Question: ... Short answer:".
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()  # config.model_type values this family loads
    hf_class: ClassVar[str] = ""
    lm_layers_path: ClassVar[str] = ""
    vision_module_prefixes: ClassVar[tuple[str, ...]] = ()
    default_target_modules: ClassVar[tuple[str, ...]] = ()
    default_prompt: ClassVar[str | None] = None
    default_question_prompt: ClassVar[str] = "{question}\nAnswer the question using a single word or phrase."
    #: per-image pixel inputs the LM still needs when the image features come from the feature cache
    #: (Qwen2-VL's M-RoPE positions need ``image_grid_thw``).
    feature_extra_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, model: Any, tokenizer: Any, image_processor: Any, source_id: str) -> None:
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source_id = source_id
        try:
            layers = model.get_submodule(self.lm_layers_path)
        except AttributeError as exc:
            raise BackboneError(
                f"{source_id}: no LM layers at {self.lm_layers_path!r}; this {self.family} checkpoint has an "
                "unexpected layout, re-save it with transformers>=5"
            ) from exc
        if not isinstance(layers, torch.nn.ModuleList):
            raise BackboneError(f"{source_id}: {self.lm_layers_path!r} is not a ModuleList of LM layers")
        if tokenizer.pad_token_id is None:
            # Padding is masked out (attention mask, -100 labels, masks built from the layout), so any
            # token works; the EOS is the usual choice for checkpoints shipped without a pad token.
            if tokenizer.eos_token is None:
                raise BackboneError(
                    f"{source_id}: the tokenizer has neither a pad nor an eos token; add a pad_token to "
                    "its tokenizer_config.json"
                )
            tokenizer.pad_token = tokenizer.eos_token

    # ------------------------------------------------------------------ family hooks
    def _encode_images(self, images: list[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Run the image processor.

        Returns:
            ``(pixel inputs for the model, number of LM placeholder tokens of each image)``.
        """
        raise NotImplementedError

    def _layout(
        self, n_image_tokens: int, prompt: str, caption_ids: list[int] | None
    ) -> list[tuple[list[int], int]]:
        """One sample as ``[(token ids, kind), ...]``; ``caption_ids=None`` means a generation prompt."""
        raise NotImplementedError

    @classmethod
    def model_class(cls) -> type:
        """The HF ``*ForConditionalGeneration`` class named by :attr:`hf_class` (imported lazily)."""
        import transformers

        return getattr(transformers, cls.hf_class)

    @classmethod
    def build_tiny(cls, name: str, seed: int) -> Backbone:
        """Build the family's tiny preset from config with random weights (no download)."""
        raise NotImplementedError

    @classmethod
    def adapt_checkpoint(cls, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        """Fix up a loaded checkpoint (e.g. an old one missing its image token); default: unchanged."""
        return model, tokenizer

    def _extra_inputs(self, input_ids: torch.Tensor, image_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Family-specific per-token inputs derived from the layout (default: none)."""
        return {}

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_token_id(self) -> int:
        """Id of the image placeholder token in ``input_ids``."""
        return int(self.model.config.image_token_id)

    @property
    def lm_hidden_size(self) -> int:
        """Width of the LM residual stream (the size of a residual-stream gap vector)."""
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def num_lm_layers(self) -> int:
        return len(self.lm_layers())

    def lm_layers(self) -> torch.nn.ModuleList:
        """The LM decoder layers (``model.get_submodule(lm_layers_path)``)."""
        return self.model.get_submodule(self.lm_layers_path)

    def text_ids(self, text: str, *, literal: bool = False) -> list[int]:
        """Token ids of ``text`` with no special tokens added.

        ``literal=False`` (templates): special-token strings such as ``<|im_end|>`` become those tokens.
        ``literal=True`` (captions): they are split into ordinary text tokens, so data can never inject
        an image placeholder or an end-of-turn into the sequence.
        """
        enc = self.tokenizer(text, add_special_tokens=False, split_special_tokens=literal)
        return list(enc["input_ids"])

    def _special_token_strings(self) -> list[str]:
        return [t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special]

    def resolve_prompt(self, prompt: str | None) -> str:
        """``None`` → the family's :attr:`default_prompt` (or no prompt); ``""`` → no prompt.

        Raises:
            BackboneError: the prompt contains a special token string (it would break the layout).
        """
        if prompt is None:
            prompt = self.default_prompt or ""
        prompt = prompt.strip()
        for tok in self._special_token_strings():
            if tok in prompt:
                raise BackboneError(
                    f"prompt {prompt!r} contains the special token {tok!r}: the backbone places image and "
                    "turn tokens itself, pass plain text"
                )
        return prompt

    def question_prompt(self, question: str, template: str | None = None) -> str:
        """The prompt of a VQA / POPE sample: ``template`` (default :attr:`default_question_prompt`) with
        ``{question}`` filled in (the question's whitespace collapsed)."""
        return (template or self.default_question_prompt).format(question=" ".join(question.split()))

    def _prompts(self, prompt: str | Sequence[str] | None, n: int) -> list[str]:
        """One resolved prompt per sample: the same for all (``None`` / a string), or one each."""
        if prompt is None or isinstance(prompt, str):
            return [self.resolve_prompt(prompt)] * n
        prompts = list(prompt)
        if len(prompts) != n:
            raise BackboneError(
                f"got {len(prompts)} prompts for {n} samples: pass one prompt, or one per sample"
            )
        return [self.resolve_prompt(p) for p in prompts]

    def caption_token_ids(self, caption: str, prompt: str | None = None) -> list[int]:
        """The caption's own token ids, exactly as they appear in :meth:`build_batch` sequences.

        The caption is stripped and tokenized alone: ``tokenizer(caption.strip(), add_special_tokens=
        False, split_special_tokens=True)`` (special-token strings in a caption stay plain text). Families
        whose prompt and caption share a line (BLIP-2) prepend a space after a non-empty prompt, as a BPE
        tokenizer would on ``prompt + " " + caption``.
        """
        if not isinstance(caption, str):
            raise BackboneError(f"captions must be strings, got {type(caption).__name__}")
        text = caption.strip()
        if text and self._space_before_caption(self.resolve_prompt(prompt)):
            text = " " + text
        return self.text_ids(text, literal=True) if text else []

    def _space_before_caption(self, prompt: str) -> bool:
        return False

    def _pixel_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _check_images(self, images: list[Image.Image]) -> list[Image.Image]:
        from PIL import Image

        out = []
        for i, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise BackboneError(
                    f"image {i} is a {type(img).__name__}, not a PIL image: open it with PIL first"
                )
            out.append(img if img.mode == "RGB" else img.convert("RGB"))
        return out

    # ------------------------------------------------------------------ public API
    def build_batch(
        self,
        images: list[Image.Image],
        captions: list[str],
        *,
        with_labels: bool = False,
        prompt: str | Sequence[str] | None = None,
    ) -> Batch:
        """A right-padded LM batch of (image, caption) pairs, tensors on the model's device.

        Args:
            images: B PIL images (any size/mode; converted to RGB and resized by the image processor).
            captions: B captions; each is stripped and must keep at least one token.
            with_labels: also return ``labels`` (caption ids + end token, -100 elsewhere).
            prompt: text between image and caption; ``None`` → :attr:`default_prompt`, ``""`` → none;
                or a list with one prompt per sample (VQA: each sample's question). Prompt tokens are in
                neither mask and never labelled.

        Raises:
            BackboneError: lengths differ, a caption is empty after tokenization (names its index), or
                an image is not a PIL image.
        """
        if len(images) != len(captions):
            raise BackboneError(
                f"got {len(images)} images but {len(captions)} captions: pass one caption per image"
            )
        if not images:
            raise BackboneError("build_batch got no (image, caption) pairs: pass at least one")
        prompts = self._prompts(prompt, len(images))
        caption_ids = self._caption_ids(captions, prompts)
        pixel_inputs, n_tokens = self._encode_images(self._check_images(images))
        samples = [self._layout(n, p, ids) for n, p, ids in zip(n_tokens, prompts, caption_ids, strict=True)]
        return self._collate(samples, pixel_inputs, padding_side="right", with_labels=with_labels)

    # ------------------------------------------------------------------ separate calibration passes
    def build_image_batch(self, images: list[Image.Image]) -> Batch:
        """The image-only pass of calibration (paper §4.2, z_v = h_v(x_img); Alg. 1 line 5): each image
        in the family's template with no prompt and no caption (BLIP-2 ``[<img>×Q][BOS]``; Qwen2-VL and
        Gemma 3 the user turn holding only the image, then the assistant turn opener). Only
        ``image_mask`` matters; ``caption_mask`` is all False."""
        if not images:
            raise BackboneError("build_image_batch got no images: pass at least one")
        pixel_inputs, n_tokens = self._encode_images(self._check_images(images))
        samples = [self._layout(n, "", None) for n in n_tokens]
        return self._collate(samples, pixel_inputs, padding_side="right", with_labels=False)

    def build_text_batch(self, captions: list[str], prompt: str | Sequence[str] | None = None) -> Batch:
        """The text-only pass of calibration (z_t = h_t(x_txt); Alg. 1 line 6): each caption in the
        family's text-only template, no image and no image delimiters (:meth:`_text_layout`), run through
        :meth:`text_forward`. ``caption_mask`` marks the caption's own tokens; ``image_mask`` is all
        False. ``prompt`` as in :meth:`build_batch` (the same text the joint pass puts before the
        caption)."""
        if not captions:
            raise BackboneError("build_text_batch got no captions: pass at least one")
        prompts = self._prompts(prompt, len(captions))
        caption_ids = self._caption_ids(captions, prompts)
        samples = [self._text_layout(p, ids) for p, ids in zip(prompts, caption_ids, strict=True)]
        return self._collate(samples, {}, padding_side="right", with_labels=False)

    def _text_layout(self, prompt: str, caption_ids: list[int]) -> list[tuple[list[int], int]]:
        """A caption without an image: by default the joint layout with its image placeholders left out
        (families whose template wraps the image in delimiters override this to leave those out too)."""
        return [seg for seg in self._layout(0, prompt, caption_ids) if seg[1] != IMAGE]

    def text_forward(self, batch: Batch) -> Any:
        """Forward a :meth:`build_text_batch` batch through the LM (hooks on the LM layers see it). By
        default the whole model with no pixel inputs (Qwen2-VL and Gemma 3 take text-only input);
        BLIP-2, whose model always runs its vision tower, overrides it to call its OPT alone."""
        return self.model(**batch.inputs)

    def _caption_ids(self, captions: Sequence[str], prompts: list[str]) -> list[list[int]]:
        out = []
        for i, cap in enumerate(captions):
            ids = self.caption_token_ids(cap, prompts[i])
            if not ids:
                raise BackboneError(
                    f"caption {i} ({cap!r}) is empty after tokenization: drop or fix that caption"
                )
            out.append(ids)
        return out

    # ------------------------------------------------------------------ frozen-prefix features
    @torch.no_grad()
    def image_features(
        self, images: list[Image.Image]
    ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """What the frozen vision prefix (tower, Q-Former / merger, projector) hands the LM, per image.

        Returns:
            ``(features, extras)``: one ``(LM image tokens, LM hidden)`` tensor per image (exactly the
            rows the model scatters into the image placeholder positions), and one dict per image of the
            :attr:`feature_extra_keys` inputs. Run with the prefix in eval mode (deterministic).
        """
        if not images:
            return [], []
        pixel_inputs, n_tokens = self._encode_images(self._check_images(images))
        device, dtype = self.device, self._pixel_dtype()
        kwargs = {k: v.to(device) for k, v in pixel_inputs.items()}
        if kwargs["pixel_values"].is_floating_point():
            kwargs["pixel_values"] = kwargs["pixel_values"].to(dtype)
        pooled = self.model.get_image_features(**kwargs, return_dict=True).pooler_output
        rows = list(pooled) if isinstance(pooled, (tuple, list)) else list(pooled.unbind(0))
        if [int(r.shape[0]) for r in rows] != [int(n) for n in n_tokens]:  # a layout/model disagreement
            raise BackboneError(
                f"{self.source_id}: the vision prefix returned {[int(r.shape[0]) for r in rows]} tokens per "
                f"image, the layout expects {n_tokens}"
            )
        extras = [{k: pixel_inputs[k][i] for k in self.feature_extra_keys} for i in range(len(rows))]
        return [r.detach() for r in rows], extras

    def _encoder_output(self, features: list[torch.Tensor]) -> Any:
        """The family's ``get_image_features`` output rebuilt from cached rows (``mm_encoder_outputs``)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=torch.stack(features))

    def forward_inputs(self, batch: Batch) -> dict[str, Any]:
        """kwargs for ``model(**...)``: ``batch.inputs``, or, for a feature-cache batch, the inputs with
        the cached features in place of the vision prefix's forward (``mm_encoder_outputs``)."""
        if batch.image_features is None:
            return batch.inputs
        dtype = self._pixel_dtype()
        feats = [f.to(dtype) for f in batch.image_features]
        return {
            **batch.inputs,
            "pixel_values": None,
            "mm_encoder_outputs": {"image": self._encoder_output(feats)},
        }

    def build_feature_batch(
        self,
        features: list[torch.Tensor],
        extras: list[dict[str, torch.Tensor]],
        captions: list[str],
        *,
        with_labels: bool = False,
        prompt: str | Sequence[str] | None = None,
    ) -> Batch:
        """:meth:`build_batch` from precomputed :meth:`image_features` instead of images: the same
        ``input_ids``, masks and labels, with ``image_features`` set and no ``pixel_values``."""
        if not (len(features) == len(extras) == len(captions)) or not features:
            raise BackboneError(
                f"got {len(features)} feature sets, {len(extras)} extras and {len(captions)} captions: "
                "pass one of each per sample, at least one"
            )
        prompts = self._prompts(prompt, len(features))
        caption_ids = self._caption_ids(captions, prompts)
        pixel_inputs = {k: torch.stack([e[k] for e in extras]) for k in self.feature_extra_keys}
        samples = [
            self._layout(int(f.shape[0]), p, ids)
            for f, p, ids in zip(features, prompts, caption_ids, strict=True)
        ]
        batch = self._collate(samples, pixel_inputs, padding_side="right", with_labels=with_labels)
        device = self.device
        batch.image_features = [f.to(device) for f in features]
        return batch

    def pin_frozen_prefix_eval(self) -> list[str]:
        """Keep the frozen vision-prefix modules in eval mode whatever ``model.train()`` does.

        A frozen module's dropout only adds noise that no parameter learns from; pinning it makes the
        prefix deterministic, so its outputs can be computed once (the feature cache) and the cached and
        uncached paths train identically. Modules holding a trainable parameter (``adapt_vision``) are
        left alone. Returns the names pinned.
        """
        pinned = []
        for name, mod in self.model.named_modules():
            if name in self.vision_module_prefixes and not any(p.requires_grad for p in mod.parameters()):
                mod.eval()
                mod.train = types.MethodType(_train_stays_eval, mod)
                pinned.append(name)
        return pinned

    def build_generation_batch(
        self, images: list[Image.Image], prompt: str | Sequence[str] | None = None
    ) -> Batch:
        """Left-padded inputs for ``model.generate(**batch.inputs)``: image + prompt + the turn opener.

        ``caption_mask`` is all False and ``labels`` is None. ``generate`` returns the input ids followed
        by the new tokens for every family; :meth:`generated_ids` cuts the new part off.
        """
        if not images:
            raise BackboneError("build_generation_batch got no images: pass at least one")
        prompts = self._prompts(prompt, len(images))
        pixel_inputs, n_tokens = self._encode_images(self._check_images(images))
        samples = [self._layout(n, p, None) for n, p in zip(n_tokens, prompts, strict=True)]
        return self._collate(samples, pixel_inputs, padding_side="left", with_labels=False)

    def generated_ids(self, batch: Batch, sequences: torch.Tensor) -> torch.Tensor:
        """The new tokens of ``model.generate(**batch.inputs)``'s output, shape (B, new)."""
        return sequences[:, batch.inputs["input_ids"].shape[1] :]

    def decode(self, token_ids: torch.Tensor | list) -> list[str]:
        """Decode (B, T) or (T,) ids to B (or 1) strings: special tokens dropped, whitespace stripped."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.detach().cpu()
            if token_ids.dim() == 1:
                token_ids = token_ids.unsqueeze(0)
            token_ids = token_ids.tolist()
        elif token_ids and isinstance(token_ids[0], int):
            token_ids = [token_ids]
        texts = self.tokenizer.batch_decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [t.strip() for t in texts]

    def save(self, path: str | os.PathLike) -> None:
        """``save_pretrained`` of model, tokenizer and image processor (+ a small meta file) into ``path``.

        ``load_backbone(name, path=path)`` then reloads it offline with identical outputs.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        meta = {"name": self.name, "family": self.family, "source_id": self.source_id}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"{type(self).__name__}(name={self.name!r}, source_id={self.source_id!r}, params={n:,})"

    # ------------------------------------------------------------------ collation
    def _collate(
        self,
        samples: list[list[tuple[list[int], int]]],
        pixel_inputs: dict[str, torch.Tensor],
        *,
        padding_side: str,
        with_labels: bool,
    ) -> Batch:
        """Pad the segment lists into (B, L) tensors (:func:`pad_segments`), add the family's extra and
        pixel inputs, and move the batch to the model's device and pixel dtype."""
        input_ids, attention, image_mask, caption_mask, labels = pad_segments(
            samples, int(self.tokenizer.pad_token_id), padding_side=padding_side, with_labels=with_labels
        )
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention}
        inputs.update(self._extra_inputs(input_ids, image_mask))
        inputs.update(pixel_inputs)
        batch = Batch(inputs=inputs, image_mask=image_mask, caption_mask=caption_mask, labels=labels)
        device = self.device
        if device.type != "cpu":
            batch = batch.to(device)
        dtype = self._pixel_dtype()
        if "pixel_values" in batch.inputs and batch.inputs["pixel_values"].is_floating_point():
            batch.inputs["pixel_values"] = batch.inputs["pixel_values"].to(dtype)
        return batch


def _train_stays_eval(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    return torch.nn.Module.train(module, False)
