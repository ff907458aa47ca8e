"""The one group id: the results store's values are unchanged, the seed never matters."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from gapinit_ray.results.store import group_key
from gapinit_ray.seedgroup.ids import group_id


def test_group_id_is_the_stores_id_of_before_and_ignores_the_seed():
    cfg = {"init": "gap", "lora.rank": np.int64(4), "train.lr": np.float32(0.5), "seed": 1, "backbone": "b"}
    # the formula the store used before the id moved here (existing stores keep reading)
    plain = {"init": "gap", "lora.rank": 4, "train.lr": 0.5, "backbone": "b"}
    body = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
    assert group_id(cfg) == group_key(cfg) == hashlib.sha1(body.encode()).hexdigest()[:16]
    assert group_id({**cfg, "seed": 9}) == group_id(dict(reversed(cfg.items())))
    assert group_id({**cfg, "init": "default"}) != group_id(cfg)
    assert group_id({"_seed": 1, "a": 1}, seed_key="_seed") == group_id({"a": 1})
