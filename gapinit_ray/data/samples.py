"""Samples as the training data loaders carry them: ``(image id, image path, caption[, question])``.

Both collate functions (the trial's, :mod:`gapinit_ray.train_data`, and the feature cache's,
:mod:`gapinit_ray.features`) turn a list of these into a batch; what they share lives here, so that
neither imports the other.
"""

from __future__ import annotations

from typing import Any


def batch_prompt(backbone: Any, items: list[tuple], prompt: str | None, question_prompt: str | None):
    """The prompt of a batch: ``prompt`` for caption samples; for question samples (4-tuples), one
    ``question_prompt`` filled with each sample's question."""
    if len(items[0]) == 4:
        return [backbone.question_prompt(item[3], question_prompt) for item in items]
    return prompt
