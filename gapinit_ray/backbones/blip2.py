"""BLIP-2 with an OPT language model (``Blip2ForConditionalGeneration``), e.g. Salesforce/blip2-opt-2.7b.

Sequence layout (what ``Blip2Processor`` builds in transformers 5.x, checked against its source)::

    train:      [<image> × Q] [BOS] [prompt] [caption] [EOS] [pad ...]
    generation: [pad ...] [<image> × Q] [BOS] [prompt]

Q = ``config.num_query_tokens``. The forward scatters the Q-Former outputs (after
``language_projection``) into the ``<image>`` positions (``config.image_token_index``); without those
placeholders it silently runs the LM on text only, so every batch here carries exactly Q of them. OPT is
a plain-LM captioner: there is no chat template and the default prompt is none. With a prompt (e.g.
``"Question: what is shown? Answer:"``) the caption follows it on the same line, so it is tokenized with
a leading space, as ``tokenizer(prompt + " " + caption)`` would split it.

LoRA targets are the OPT projections; the vision tower, Q-Former and ``language_projection`` are frozen
and listed in :attr:`Blip2Backbone.vision_module_prefixes` (their ``fc1``/``fc2`` share names with
OPT's, so LoRA needs them excluded explicitly).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from gapinit_ray.backbones.base import CAPTION, END, IMAGE, OTHER, Backbone, build_seeded
from gapinit_ray.backbones.loading import tiny_backbone, tiny_lm, tiny_tower
from gapinit_ray.backbones.tokenizer import build_tiny_tokenizer
from gapinit_ray.errors import BackboneError

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
_TINY_SPECIALS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]


class Blip2Backbone(Backbone):
    family = "blip2"
    model_types = ("blip-2",)
    hf_class = "Blip2ForConditionalGeneration"
    lm_layers_path = "language_model.model.decoder.layers"
    vision_module_prefixes = ("vision_model", "qformer", "language_projection")
    default_target_modules = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    default_prompt = None
    default_question_prompt = "Question: {question} Short answer:"

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    def _encode_images(self, images):
        pixel = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel}, [self.num_query_tokens] * len(images)

    def _encoder_output(self, features):
        from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs

        return BaseModelOutputWithVisionQformerOutputs(
            pooler_output=torch.stack(features), vision_outputs=None, qformer_outputs=None
        )

    def _space_before_caption(self, prompt: str) -> bool:
        return bool(prompt)

    def _layout(self, n_image_tokens, prompt, caption_ids):
        tok = self.tokenizer
        segments = [([self.image_token_id] * n_image_tokens, IMAGE), ([tok.bos_token_id], OTHER)]
        if prompt:
            segments.append((self.text_ids(prompt), OTHER))
        if caption_ids is not None:
            segments += [(caption_ids, CAPTION), ([tok.eos_token_id], END)]
        return segments

    def text_forward(self, batch):
        """The text-only pass: BLIP-2's OPT alone on ``[BOS][prompt][caption][EOS]`` (the model itself
        always runs its vision tower and Q-Former; the LM without the query prefix is the text-only LM)."""
        keys = ("input_ids", "attention_mask")
        return self.model.language_model(**{k: batch.inputs[k] for k in keys})

    @classmethod
    def adapt_checkpoint(cls, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        """Old BLIP-2 checkpoints lack ``image_token_index``: add ``<image>`` and grow the embeddings.

        Without it transformers 5 would ignore the image entirely (see module docstring).
        """
        if getattr(model.config, "image_token_index", None) is not None:
            return model, tokenizer
        log.warning("BLIP-2 checkpoint has no image_token_index: adding %s to its tokenizer", IMAGE_TOKEN)
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if image_id >= model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        model.config.image_token_index = image_id
        return model, tokenizer

    @classmethod
    def build_tiny(cls, name: str, seed: int) -> Blip2Backbone:
        """Tiny BLIP-2: 2-layer ViT (32 px, patch 8), 2-layer Q-Former (8 queries), 2-layer OPT (hidden 64)."""
        from transformers import Blip2Config, BlipImageProcessorPil

        tokenizer, ids = build_tiny_tokenizer(
            _TINY_SPECIALS,
            {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"},
            model_specific_tokens={"image_token": IMAGE_TOKEN},
        )
        config = Blip2Config(
            vision_config=tiny_tower(
                image_size=32,
                patch_size=8,
                initializer_range=0.02,  # the 1e-10 default would make the tiny tower output ~constant
            ),
            qformer_config=tiny_tower(cross_attention_frequency=1, max_position_embeddings=64, vocab_size=64),
            text_config=tiny_lm(
                len(tokenizer),
                pad=ids["<pad>"],
                bos=ids["<s>"],
                eos=ids["</s>"],
                model_type="opt",
                word_embed_proj_dim=64,
                ffn_dim=128,
                max_position_embeddings=256,
                dropout=0.0,
            ),
            num_query_tokens=8,
            image_token_index=ids[IMAGE_TOKEN],
        )
        if config.image_token_index != tokenizer.image_token_id:
            raise BackboneError("tiny-blip2: tokenizer and config disagree on the image token id")
        # HF zero-initialises the query tokens; 8 identical queries would give 8 identical image tokens,
        # a degenerate image span for gap statistics.
        model = build_seeded(lambda: cls.model_class()(config), seed, redraw=lambda m: m.query_tokens)
        image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
        special = {"pad": ids["<pad>"], "bos": ids["<s>"], "eos": ids["</s>"]}
        return tiny_backbone(cls, name, seed, model, tokenizer, image_processor, **special)
