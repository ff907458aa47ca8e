"""LoRA adapters on a backbone's LM layers, initialized by Gap-Init or one of its baselines.

The code lives in :mod:`gapinit_ray.inits` (one module per concept); this module re-exports its
public names under their earlier import path.
"""

from __future__ import annotations

from gapinit_ray.inits.adapters import ADAPTER, PEFT_PREFIX, lora_modules
from gapinit_ray.inits.apply import apply_lora
from gapinit_ray.inits.checks import InitCheckError, init_checks
from gapinit_ray.inits.direction import module_generator, perturb, random_unit
from gapinit_ray.inits.gap import check_artifact, gap_space
from gapinit_ray.inits.registry import INIT_METHODS, INIT_NAMES, InitMethod, LoraInitError, get_init_method
from gapinit_ray.inits.report import REPORT_FILE, InitReport, save_adapter
from gapinit_ray.inits.targets import SELECTIONS, resolve_targets, select_layers, vision_layers
from gapinit_ray.inits.tracking import adapter_stats, reference_gaps

__all__ = [
    "ADAPTER",
    "INIT_METHODS",
    "INIT_NAMES",
    "PEFT_PREFIX",
    "REPORT_FILE",
    "SELECTIONS",
    "InitCheckError",
    "InitMethod",
    "InitReport",
    "LoraInitError",
    "adapter_stats",
    "apply_lora",
    "check_artifact",
    "gap_space",
    "get_init_method",
    "init_checks",
    "lora_modules",
    "module_generator",
    "perturb",
    "random_unit",
    "reference_gaps",
    "resolve_targets",
    "save_adapter",
    "select_layers",
    "vision_layers",
]
