"""Caption data for Gap-Init: COCO/Karpathy caption sets, synthetic shape sets, calibration samples.

Everything here is light (PIL and the standard library, no torch) because the Ray driver imports it
to validate data before any worker starts.
"""

from gapinit_ray.data.calibration import calibration_set_hash, sample_calibration
from gapinit_ray.data.images import check_images, load_image
from gapinit_ray.data.qa import QARecord, generate_synthetic_qa, load_pope, load_vqa
from gapinit_ray.data.records import CaptionRecord, load_caption_set
from gapinit_ray.data.synthetic import generate_synthetic

__all__ = [
    "CaptionRecord",
    "QARecord",
    "calibration_set_hash",
    "check_images",
    "generate_synthetic",
    "generate_synthetic_qa",
    "load_caption_set",
    "load_image",
    "load_pope",
    "load_vqa",
    "sample_calibration",
]
