"""Deterministic, download-free tokenizers for the tiny presets.

Real checkpoints ship their own tokenizer; the ``tiny-*`` presets cannot download one, so they get a
byte-level BPE trained here, in code, on a fixed built-in corpus of simple caption words (colours,
shapes, positions, sizes, counts, digits) plus the words of the families' chat templates.

Why byte-level BPE: every string encodes (unseen characters fall back to byte tokens), so any caption a
data set throws at a tiny model works, while the common caption words still become single tokens and
sequences stay short. Why trained in code rather than stored: nothing to download or vendor, and the
``tokenizers`` BPE trainer is deterministic for a fixed corpus (ties are broken by pair order), so the
same call gives the same vocabulary in every process; :func:`tokenizer_fingerprint` lets tests check it.

Special tokens come first in the vocabulary, in the order the family passes them, so their ids are
small, fixed and known before training (e.g. Gemma's ``<pad>=0, <eos>=1, <bos>=2`` like the real one).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerFast

#: Target vocabulary size of the BPE trainer (the corpus may saturate a little below it).
DEFAULT_VOCAB_SIZE = 768

_COLOURS = (
    "red green blue yellow black white orange purple pink gray grey brown cyan magenta violet gold silver "
    "dark light bright pale colour color colored coloured"
)
_SHAPES = (
    "circle circles square squares triangle triangles rectangle rectangles star stars shape shapes dot dots "
    "line lines ring rings disk box boxes oval ovals diamond diamonds cross crosses hexagon ellipse object "
    "objects thing things"
)
_POSITIONS = (
    "left right top bottom center centre middle corner corners upper lower side sides above below under over "
    "near next beside between behind front back edge edges inside outside around across along up down"
)
_SIZES = "small large big tiny huge little medium tall short wide narrow long thin thick size sized"
_COUNTS = (
    "one two three four five six seven eight nine ten zero no many few several some both each every single "
    "pair group first second third last other another more most only"
)
_FUNCTION = (
    "a an the of on in at with and or is are was were be to from by for this that these those there here it "
    "its has have which who what where how not as"
)
_SCENE = (
    "image images photo photos picture pictures scene background foreground view shown showing shows "
    "drawn drawing plain empty filled outlined solid striped pattern canvas frame"
)
_CHAT = (
    "describe description caption question answer system user assistant model you your helpful please "
    "briefly short sentence write give"
)
_DIGITS = "0 1 2 3 4 5 6 7 8 9 10 11 12 16 32 64 100"
_PUNCT = ". , : ; ? ! ' \" - ( ) / \n \n\n"
_SENTENCES = (
    "a small red circle on the left",
    "two large blue squares at the top right",
    "three green triangles in the middle of the image",
    "a yellow star near the bottom left corner",
    "an orange rectangle above a purple circle",
    "the picture shows one black square on a white background",
    "Describe the image.",
    "Describe the image in one sentence.",
    "You are a helpful assistant.",
    "Question: what is in the picture? Answer:",
    "A photo of",
    "a picture of",
)


def caption_corpus() -> list[str]:
    """The fixed training corpus: every word bare and with a leading space, then a few sentences.

    Both spellings matter for byte-level BPE: ``"red"`` (first word of a caption) and ``" red"`` (any
    later word) are different pre-tokens, and we want both to be single tokens.
    """
    words: list[str] = []
    for group in (_COLOURS, _SHAPES, _POSITIONS, _SIZES, _COUNTS, _FUNCTION, _SCENE, _CHAT, _DIGITS):
        for word in group.split():
            words.extend([word, " " + word, word.capitalize(), " " + word.capitalize()])
    words.extend(_PUNCT.split(" "))
    # Repeat the words so their merges outrank merges that only occur inside the sentences.
    return words * 4 + list(_SENTENCES) * 2


def build_tokenizer(
    special_tokens: list[str],
    *,
    named_special_tokens: dict[str, str],
    model_specific_tokens: dict[str, str] | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE and wrap it for transformers.

    Args:
        special_tokens: every special token string, in the id order wanted (ids ``0..len-1``).
        named_special_tokens: standard roles, e.g. ``{"pad_token": "<pad>", "bos_token": "<s>"}``.
        model_specific_tokens: family roles kept in ``tokenizer_config.json`` so they survive
            ``save_pretrained``, e.g. ``{"image_token": "<image>"}`` (gives ``tokenizer.image_token``).
        vocab_size: BPE trainer target (includes the special tokens and the 256 byte tokens).

    Returns:
        A ``PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers 5) that adds no special
        tokens by itself (``add_bos_token=False``): the backbones lay sequences out explicitly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(caption_corpus(), trainer=trainer)
    for i, token in enumerate(special_tokens):  # the contract the families rely on
        if tok.token_to_id(token) != i:
            raise RuntimeError(f"special token {token!r} got id {tok.token_to_id(token)}, expected {i}")

    kwargs: dict = dict(named_special_tokens)
    if model_specific_tokens:
        kwargs["extra_special_tokens"] = dict(model_specific_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        **kwargs,
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the serialized backend tokenizer (vocab, merges, added tokens): equal ⇔ same tokenizer."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def build_tiny_tokenizer(
    special_tokens: list[str],
    named_special_tokens: dict[str, str],
    model_specific_tokens: dict[str, str] | None = None,
) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    """:func:`build_tokenizer` for a tiny preset, with the id of each special token by its string."""
    tokenizer = build_tokenizer(
        special_tokens,
        named_special_tokens=named_special_tokens,
        model_specific_tokens=model_specific_tokens,
    )
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in special_tokens}
