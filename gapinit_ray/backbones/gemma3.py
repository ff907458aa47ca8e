"""Gemma 3 vision-language models (``Gemma3ForConditionalGeneration``), e.g. google/gemma-3-4b-it.

Sequence layout: the Gemma 3 chat template with the image expanded as ``Gemma3Processor`` expands its
``<start_of_image>`` marker (``"\\n\\n<start_of_image>" + "<image_soft_token>" × N + "<end_of_image>\\n\\n"``)::

    <bos><start_of_turn>user\\n\\n\\n<start_of_image><image_soft_token> × N<end_of_image>\\n\\n{prompt}<end_of_turn>\\n
    <start_of_turn>model\\n{caption}<end_of_turn>

Generation stops after ``<start_of_turn>model\\n``. N = ``config.mm_tokens_per_image`` (256 for the real
models): one fixed-size image, pan-and-scan crops are switched off so every sample has exactly one image
span. ``token_type_ids`` (B, L; 1 at ``<image_soft_token>``) is passed like ``Gemma3Processor`` does: the
model uses it to let image tokens attend to each other bidirectionally. Labels end with
``<end_of_turn>``, the instruction-tuned model's stop token.
"""

from __future__ import annotations

from gapinit_ray.backbones.base import build_seeded
from gapinit_ray.backbones.chat import ChatBackbone
from gapinit_ray.backbones.loading import tiny_backbone, tiny_decoder_lm, tiny_tower
from gapinit_ray.backbones.tokenizer import build_tiny_tokenizer

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
BOI, EOI, IMAGE_SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
_TINY_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", START_OF_TURN, END_OF_TURN, BOI, EOI, IMAGE_SOFT]


class Gemma3Backbone(ChatBackbone):
    family = "gemma3"
    model_types = ("gemma3",)
    hf_class = "Gemma3ForConditionalGeneration"
    lm_layers_path = "model.language_model.layers"
    vision_module_prefixes = ("model.vision_tower", "model.multi_modal_projector")
    default_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    default_prompt = "Describe the image in one sentence."
    image_token_type_input = "token_type_ids"

    def _encode_images(self, images):
        out = self.image_processor(images=images, do_pan_and_scan=False, return_tensors="pt")
        n = int(self.model.config.mm_tokens_per_image)
        return {"pixel_values": out["pixel_values"]}, [n] * len(images)

    def _layout(self, n_image_tokens, prompt, caption_ids):
        head = f"{START_OF_TURN}user\n\n\n{BOI}"
        tail = f"{EOI}\n\n{prompt}{END_OF_TURN}\n{START_OF_TURN}model\n"
        return self._chat_layout(head, n_image_tokens, tail, caption_ids, END_OF_TURN, bos=True)

    def _text_layout(self, prompt, caption_ids):
        """Text-only chat: ``<bos>`` and a user turn holding only the prompt (no begin/end-of-image),
        then the caption as the model's turn."""
        head = f"{START_OF_TURN}user\n{prompt}{END_OF_TURN}\n{START_OF_TURN}model\n"
        return self._chat_layout(head, 0, "", caption_ids, END_OF_TURN, bos=True)

    @classmethod
    def build_tiny(cls, name: str, seed: int) -> Gemma3Backbone:
        """Tiny Gemma 3: 2-layer SigLIP (32 px, patch 4, pooled to 16 image tokens), 2-layer LM (hidden 64)."""
        from transformers import Gemma3Config, Gemma3ImageProcessorPil

        tokenizer, ids = build_tiny_tokenizer(
            _TINY_SPECIALS,
            {
                "pad_token": "<pad>",
                "eos_token": "<eos>",
                "bos_token": "<bos>",
                "unk_token": "<unk>",
            },
            model_specific_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_SOFT},
        )
        config = Gemma3Config(
            vision_config=tiny_tower(
                model_type="siglip_vision_model",
                image_size=32,
                patch_size=4,  # 8×8 patches, average-pooled 2×2 → 16 image tokens
            ),
            text_config=tiny_decoder_lm(
                len(tokenizer),
                pad=ids["<pad>"],
                bos=ids["<bos>"],
                eos=ids["<eos>"],
                head_dim=32,
                query_pre_attn_scalar=32,
                sliding_window=128,
                layer_types=["sliding_attention", "full_attention"],  # both kinds, like the real 5:1 mix
            ),
            mm_tokens_per_image=16,
            boi_token_index=ids[BOI],
            eoi_token_index=ids[EOI],
            image_token_index=ids[IMAGE_SOFT],
        )
        # HF zero-initialises the projector; left at zero, every image would map to the same (zero) LM
        # input and the image would never reach the LM.
        model = build_seeded(
            lambda: cls.model_class()(config),
            seed,
            redraw=lambda m: m.model.multi_modal_projector.mm_input_projection_weight,
        )
        image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32}, do_pan_and_scan=False)
        return tiny_backbone(
            cls,
            name,
            seed,
            model,
            tokenizer,
            image_processor,
            pad=ids["<pad>"],
            bos=ids["<bos>"],
            eos=[ids["<eos>"], ids[END_OF_TURN]],
        )
