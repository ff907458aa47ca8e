"""peft's data-driven LoRA inits (EVA, CorDA, LoRA-GA) fed from the statistics cached with the GapArtifact.

:func:`gapinit_ray.inits.apply.apply_lora` calls these around ``get_peft_model``: the statistics
(:mod:`gapinit_ray.init_stats`) go to peft's own preprocessing / init functions, so the decompositions,
rank crops, scalings and base rewrites are peft's; only the statistics (sums over D_cal, sharded on the
calibration workers) and EVA's PCA of them are ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gapinit_ray.inits.adapters import PEFT_PREFIX


def peft_extra_config(method: Any, opts: Any) -> dict[str, Any]:
    """The per-method peft config of the data-driven inits (peft's defaults unless init_options say)."""
    from peft import EvaConfig, LoraGAConfig
    from peft.tuners.lora.config import CordaConfig

    if method.name == "eva":
        return {"eva_config": EvaConfig(rho=opts.eva_rho)}
    if method.name == "corda":
        return {"corda_config": CordaConfig(corda_method=opts.corda_method)}
    if method.name == "lora_ga":
        return {"lora_ga_config": LoraGAConfig(direction=opts.loraga_direction, scale=opts.loraga_scale)}
    return {}


def data_driven_peft(
    method: Any, backbone: Any, config: Any, names: list[str], stats: dict, stack: Any
) -> None:
    """Hand the cached statistics to peft's own preprocessing, before ``get_peft_model``:

    - ``corda``: the covariances go to peft's ``preprocess_corda`` as its ``covariance_file`` (peft then
      runs its own eigen-decomposition ``collect_eigens`` and rank crop; ``corda_init`` builds A, B and the
      residual W₀ − s·BA);
    - ``lora_ga``: the mean gradients go to peft's ``preprocess_loraga`` as its ``cache_file`` (peft's
      ``lora_ga_init`` then takes the SVD, picks directions, scales, and stores W₀ − s·BA).
    """
    import tempfile

    from gapinit_ray.init_stats import corda_covariance, loraga_gradient

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gapinit-init-")))
    device = next(backbone.model.parameters()).device
    if method.name == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        file = tmp / "covariance.pt"
        torch.save({n: corda_covariance(stats, n).to(device) for n in names}, file)
        config.corda_config.covariance_file = str(file)
        preprocess_corda(backbone.model, config)
        config.corda_config.covariance_file = None  # a temp file: keep it out of the saved config
    elif method.name == "lora_ga":
        from peft.tuners.lora.loraga import preprocess_loraga

        file = tmp / "loraga.pt"
        torch.save({f"{n}._peft_loraga_grad": loraga_gradient(stats, n).to(device) for n in names}, file)
        preprocess_loraga(backbone.model, config, train_step=lambda: None, cache_file=str(file))


def eva_apply(peft_model: Any, names: list[str], stats: dict, rank: int, rho: float) -> None:
    """EVA (arXiv 2410.07170) through peft's ``initialize_lora_eva_weights(eva_state_dict=...)``: A of
    each module = the top principal directions of its caption-token inputs over D_cal, B = 0.

    ``rho = 1``: rank r everywhere. ``rho > 1``: peft's ``_get_rank_distribution``: each module offers its
    top ⌊rho·r⌉ components, the r·(number of modules) with the largest explained-variance ratio are kept
    (a module may get more than r, or 0 and lose its adapter). peft's tie swap for modules with equal
    inputs (q/k/v) is not reproduced: their ratios are equal, so they are ranked by module order."""
    from peft import initialize_lora_eva_weights

    from gapinit_ray.init_stats import eva_components

    offered = max(rank, round(rho * rank))
    comps = {n: eva_components(stats, n, offered) for n in names}
    if rho == 1.0:
        ranks = dict.fromkeys(names, rank)
    else:
        pool = sorted(((float(v), -i, n) for i, n in enumerate(names) for v in comps[n][1]), reverse=True)[
            : rank * len(names)
        ]
        ranks = {n: sum(1 for _, _, m in pool if m == n) for n in names}
    device = next(peft_model.parameters()).device
    state = {PEFT_PREFIX + n: comps[n][0][: ranks[n]].to(device) for n in names}
    initialize_lora_eva_weights(peft_model, eva_state_dict=state, show_progress_bar=False)
