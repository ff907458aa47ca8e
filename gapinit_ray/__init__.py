"""gapinit-ray: a Ray-distributed sweep service for Gap-Init (geometry-aware rank-1 LoRA init)."""

__version__ = "0.1.0"
