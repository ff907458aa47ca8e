"""A trial's training data: caption (and QA) pairs, the collate that builds a backbone batch (with
augmentation), and the seeded per-worker loader (:mod:`gapinit_ray.train` runs the loop over it).

The data order comes from a ``DistributedSampler`` seeded by the trial seed alone, so the same seed gives
the same batches whatever the init method (paired seed comparisons).
"""

from __future__ import annotations

import math

import torch

from gapinit_ray.data.samples import batch_prompt


class CaptionPairs(torch.utils.data.Dataset):
    """(image id, image path, caption) triples: every caption of every image is one sample."""

    def __init__(self, records: list) -> None:
        self.items = [(r.image_id, r.image_path, c) for r in records for c in r.captions]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, str, str]:
        return self.items[i]


class QAPairs(CaptionPairs):
    """(image id, image path, answer, question): one sample per VQA / POPE question, trained on its answer
    (VQA: ``multiple_choice_answer``, the most frequent human answer; POPE: the label)."""

    def __init__(self, records: list) -> None:
        self.items = [(r.image_id, r.image_path, r.answer, r.question) for r in records]


def pairs_of(records: list) -> CaptionPairs:
    """The training / validation-loss samples of caption records or of question records."""
    from gapinit_ray.data import QARecord

    return QAPairs(records) if records and isinstance(records[0], QARecord) else CaptionPairs(records)


class Collate:
    """Loads the images of a batch and lays it out with the backbone (masks, labels).

    Question samples (4-tuples from :class:`QAPairs`) get their own prompt each: ``question_prompt`` (a
    template with ``{question}``; ``None``: the family's) filled with the sample's question.
    ``augment`` (training only): random transforms from ``train.augment``, drawn from a generator seeded
    by ``seed`` (the same seed gives the same augmented images whatever the init).
    """

    def __init__(
        self,
        backbone,
        prompt: str | None,
        question_prompt: str | None = None,
        augment: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        import random

        self.backbone, self.prompt, self.question_prompt = backbone, prompt, question_prompt
        self.augment = list(augment or [])
        self.rng = random.Random(seed)

    def __call__(self, items):
        from gapinit_ray.data import load_image

        images = [augment_image(load_image(item[1], item[0]), self.augment, self.rng) for item in items]
        prompt = batch_prompt(self.backbone, items, self.prompt, self.question_prompt)
        return self.backbone.build_batch(images, [item[2] for item in items], with_labels=True, prompt=prompt)


def augment_image(image, transforms: list[str], rng):
    """``hflip``: mirror with p = 0.5; ``crop``: a random crop of 80-100 % of the area, aspect kept
    within [3/4, 4/3] (the image processor resizes it afterwards)."""
    from PIL import Image

    for t in transforms:
        if t == "hflip" and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif t == "crop":
            w, h = image.size
            area = w * h * rng.uniform(0.8, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw = max(1, min(w, round(math.sqrt(area * aspect))))
            ch = max(1, min(h, round(math.sqrt(area / aspect))))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((x, y, x + cw, y + ch))
    return image


def train_loader(dataset, collate, batch_size: int, seed: int, world: int, rank: int):
    """(sampler, loader) of one worker's training data: a ``DistributedSampler`` seeded by the trial
    seed alone, so the same seed gives the same batches whatever the init (paired seed comparisons);
    call ``sampler.set_epoch(epoch)`` before each epoch."""
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    return sampler, loader
