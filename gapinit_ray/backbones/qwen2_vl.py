"""Qwen2-VL (``Qwen2VLForConditionalGeneration``), e.g. Qwen/Qwen2-VL-7B-Instruct.

Sequence layout: the Instruct chat template (default system message included, as the template adds it
when none is given), with the image expanded the way ``Qwen2VLProcessor`` expands it::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|> × N<|vision_end|>{prompt}<|im_end|>\\n
    <|im_start|>assistant\\n{caption}<|im_end|>

Generation stops after ``<|im_start|>assistant\\n``. N = ``grid_t·grid_h·grid_w / merge²`` varies with the
image's aspect ratio (dynamic resolution), so samples in one batch may hold different numbers of image
tokens; padding absorbs it and ``image_mask`` marks each sample's own N positions.

Inputs beyond ids/mask, all required by transformers 5.23: ``pixel_values`` (sum of patches,
``3·temporal_patch·patch²``) and ``image_grid_thw`` (B, 3) from the image processor, and
``mm_token_type_ids`` (B, L; 1 at ``<|image_pad|>``, 0 elsewhere), without which the forward raises
rather than compute M-RoPE 3D positions. The captioning labels end with ``<|im_end|>``, the Instruct
model's end-of-turn (its ``generation_config`` stops on it).
"""

from __future__ import annotations

from typing import Any

from gapinit_ray.backbones.base import build_seeded
from gapinit_ray.backbones.chat import ChatBackbone
from gapinit_ray.backbones.loading import tiny_backbone, tiny_decoder_lm
from gapinit_ray.backbones.tokenizer import build_tiny_tokenizer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
ENDOFTEXT = "<|endoftext|>"
SYSTEM_MESSAGE = "You are a helpful assistant."
_TINY_SPECIALS = [
    ENDOFTEXT,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    "<|vision_pad|>",
    IMAGE_PAD,
    VIDEO_PAD,
]


class Qwen2VLBackbone(ChatBackbone):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    hf_class = "Qwen2VLForConditionalGeneration"
    lm_layers_path = "model.language_model.layers"
    vision_module_prefixes = ("model.visual",)  # ViT blocks + the patch merger (projector)
    feature_extra_keys = ("image_grid_thw",)  # M-RoPE positions of the image tokens
    default_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    default_prompt = "Describe the image in one sentence."
    image_token_type_input = "mm_token_type_ids"

    def _encode_images(self, images):
        out = self.image_processor(images=images, return_tensors="pt")
        grid = out["image_grid_thw"]  # (B, 3) patches per image along t, h, w
        merge = int(self.model.config.vision_config.spatial_merge_size)
        n_tokens = (grid.prod(-1) // (merge * merge)).tolist()
        return {"pixel_values": out["pixel_values"], "image_grid_thw": grid}, [int(n) for n in n_tokens]

    def _layout(self, n_image_tokens, prompt, caption_ids):
        head = f"{IM_START}system\n{SYSTEM_MESSAGE}{IM_END}\n{IM_START}user\n{VISION_START}"
        tail = f"{VISION_END}{prompt}{IM_END}\n{IM_START}assistant\n"
        return self._chat_layout(head, n_image_tokens, tail, caption_ids, IM_END)

    def _text_layout(self, prompt, caption_ids):
        """Text-only chat: the user turn holds only the prompt (no vision start/end), then the caption as
        the assistant's answer (``mm_token_type_ids`` all 0: plain 1-D positions in every M-RoPE axis)."""
        head = f"{IM_START}system\n{SYSTEM_MESSAGE}{IM_END}\n{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n"
        return self._chat_layout(head, 0, "", caption_ids, IM_END)

    def _encoder_output(self, features):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=tuple(features))  # ragged: one tensor per image

    @classmethod
    def build_tiny(cls, name: str, seed: int) -> Qwen2VLBackbone:
        """Tiny Qwen2-VL: 2-block ViT (patch 4, merge 2, 32×32 px → 16 image tokens), 2-layer LM (hidden 64)."""
        from transformers import Qwen2VLConfig, Qwen2VLImageProcessorPil

        tokenizer, ids = build_tiny_tokenizer(
            _TINY_SPECIALS,
            {"pad_token": ENDOFTEXT, "eos_token": IM_END},
            model_specific_tokens={
                "image_token": IMAGE_PAD,
                "video_token": VIDEO_PAD,
                "vision_bos_token": VISION_START,
                "vision_eos_token": VISION_END,
            },
        )
        config = Qwen2VLConfig(
            vision_config={
                "depth": 2,
                "embed_dim": 32,
                "hidden_size": 64,  # merger output = LM width
                "num_heads": 2,
                "mlp_ratio": 2,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            text_config=tiny_decoder_lm(
                len(tokenizer),
                pad=ids[ENDOFTEXT],
                bos=ids[ENDOFTEXT],
                eos=ids[IM_END],
                # head_dim 32 → 16 rotary frequencies split over (t, h, w)
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            ),
            image_token_id=ids[IMAGE_PAD],
            video_token_id=ids[VIDEO_PAD],
            vision_start_token_id=ids[VISION_START],
            vision_end_token_id=ids[VISION_END],
        )
        model: Any = build_seeded(lambda: cls.model_class()(config), seed)
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=32 * 32, max_pixels=32 * 32, patch_size=4, temporal_patch_size=2, merge_size=2
        )
        special = {"pad": ids[ENDOFTEXT], "bos": ids[ENDOFTEXT], "eos": [ids[IM_END]]}
        return tiny_backbone(cls, name, seed, model, tokenizer, image_processor, **special)
