"""Which modules get adapters: the LM layers a selection picks, and the exact module names to adapt."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from gapinit_ray.inits.registry import LoraInitError

SELECTIONS = ("naive", "gg-safe", "all")


def select_layers(
    num_layers: int, selection: str, top_k: int, scores: dict[int, float] | None = None
) -> list[int]:
    """LM layer indices to adapt, ascending.

    ``naive``: the top-k layers, i.e. the last k (paper G.5). ``gg-safe``: the k layers with the highest
    SPOT-Gap score S_gap (paper §4.4; ``scores`` from :func:`gapinit_ray.gap.layer_scores`), ties broken
    by the lower layer index. ``all``: every layer. ``top_k > num_layers`` means every layer (the tiny
    presets have 2 LM layers, the paper's default is top-6 of 32).
    """
    if selection not in SELECTIONS:
        raise LoraInitError(f"unknown layer selection {selection!r}; allowed: {', '.join(SELECTIONS)}")
    if num_layers < 1 or top_k < 1:
        raise LoraInitError(f"layer selection needs num_layers ≥ 1 and top_k ≥ 1 (got {num_layers}, {top_k})")
    k = min(top_k, num_layers)
    if selection == "all":
        return list(range(num_layers))
    if selection == "naive":
        return list(range(num_layers - k, num_layers))
    if scores is None:
        raise LoraInitError(
            "layer selection 'gg-safe' ranks layers by SPOT-Gap score and needs a GapArtifact "
            "(run calibration first), or use selection naive or all"
        )
    missing = [i for i in range(num_layers) if i not in scores]
    extra = sorted(i for i in scores if not 0 <= i < num_layers)
    bad = [i for i in range(num_layers) if i in scores and not math.isfinite(scores[i])]
    if missing or extra or bad:
        raise LoraInitError(
            f"gg-safe: layer scores must cover layers 0..{num_layers - 1} with finite values; missing "
            f"{missing}, out of range {extra}, non-finite {bad} (is the artifact from this backbone?)"
        )
    ranked = sorted(range(num_layers), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def vision_layers(backbone: Any) -> tuple[str, list[int]]:
    """The vision encoder's layer list and the layers ``adapt_vision`` may touch: the upper half.

    The encoder layers are the first ``ModuleList`` under the first vision prefix (the tower itself, never
    the Q-Former or projector). The bottom ⌊n/2⌋ are excluded, paper §4.4's safety constraint.
    """
    prefix = backbone.vision_module_prefixes[0] + "."
    for name, mod in backbone.model.named_modules():
        if name.startswith(prefix) and isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return name, list(range(len(mod) // 2, len(mod)))
    raise LoraInitError(f"adapt_vision: found no vision encoder layers under {prefix}* in {backbone.name}")


def _match(
    model: torch.nn.Module, path: str, layers: list[int], leaves: list[str]
) -> tuple[list[str], list[str]]:
    """nn.Linear modules ``<path>.<i>.….<leaf>`` with i in ``layers`` and leaf in ``leaves`` (model
    order), and every linear leaf name under ``path`` (for error messages)."""
    pattern = re.compile(rf"^{re.escape(path)}\.(\d+)\.")
    names, seen = [], set()
    for name, mod in model.named_modules():
        m = pattern.match(name)
        if m and isinstance(mod, torch.nn.Linear):
            leaf = name.rsplit(".", 1)[-1]
            seen.add(leaf)
            if int(m.group(1)) in layers and leaf in leaves:
                names.append(name)
    return names, sorted(seen)


def resolve_targets(
    backbone: Any, leaves: list[str], layers: list[int], adapt_vision: bool
) -> tuple[list[str], list[str], list[str]]:
    """Full module names to adapt: ``(LM names, vision names, leaves found in the LM)``.

    Leaf names (``q_proj``, ``fc1``) are matched as calibration matches them (last name component,
    ``nn.Linear`` only), inside the selected LM layers, plus the upper vision layers with
    ``adapt_vision``. Returning exact full names (peft matches a list by equality) is what keeps the
    vision tower and Q-Former out: their ``fc1``/``fc2`` share names with OPT's.
    """
    lm, lm_avail = _match(backbone.model, backbone.lm_layers_path, layers, leaves)
    vis: list[str] = []
    if adapt_vision:
        path, vlayers = vision_layers(backbone)
        vis, vis_avail = _match(backbone.model, path, vlayers, leaves)
        if not vis:
            raise LoraInitError(
                f"adapt_vision: target modules {', '.join(leaves)} match nothing in the vision layers of "
                f"{backbone.name} ({path}); its linear modules are: {', '.join(vis_avail)}"
            )
    found = {n.rsplit(".", 1)[-1] for n in lm + vis}
    missing = [leaf for leaf in leaves if leaf not in found]
    if missing or not lm:
        raise LoraInitError(
            f"lora.target_modules {', '.join(missing or leaves)} match nothing in the selected LM layers of "
            f"{backbone.name} ({backbone.lm_layers_path}.*); its linear modules are: {', '.join(lm_avail)}"
        )
    return lm, vis, [leaf for leaf in leaves if any(n.endswith("." + leaf) for n in lm)]
