"""LoRA init methods: Gap-Init and its baselines, one module per concept, computed apart from applied.

* :mod:`~gapinit_ray.inits.registry` — the init names and how each maps onto peft (no torch import:
  the spec reads the names from it);
* :mod:`~gapinit_ray.inits.targets` — the LM layers a selection picks and the module names to adapt;
* :mod:`~gapinit_ray.inits.gap` — compute: the gap g of each adapted module, from a GapArtifact;
* :mod:`~gapinit_ray.inits.direction` — compute and apply B[:, 0] (Gap-Init, random-direction control);
* :mod:`~gapinit_ray.inits.data_driven` — EVA, CorDA, LoRA-GA through peft, from calibration statistics;
* :mod:`~gapinit_ray.inits.adapters` — peft's LoRA layers: names, (A, B) weights, seeded draws;
* :mod:`~gapinit_ray.inits.apply` — :func:`~gapinit_ray.inits.apply.apply_lora`, the entry point;
* :mod:`~gapinit_ray.inits.report`, :mod:`~gapinit_ray.inits.checks`,
  :mod:`~gapinit_ray.inits.tracking` — the init report, its invariants, and the adapters' geometry
  during training.

To add an init: an :class:`~gapinit_ray.inits.registry.InitMethod` entry in the registry; a method
that is not plain peft also gets its compute/apply module here, called from ``apply_lora``.
This package's ``__init__`` imports only the registry, so importing a name list stays cheap.
"""

from gapinit_ray.inits.registry import INIT_METHODS, INIT_NAMES, InitMethod, LoraInitError, get_init_method

__all__ = ["INIT_METHODS", "INIT_NAMES", "InitMethod", "LoraInitError", "get_init_method"]
