"""The module splits keep their promises: cheap name registries, old import paths, no import cycle."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def test_init_registry_imports_neither_torch_nor_peft():
    _run(
        "import sys\n"
        "from gapinit_ray.inits.registry import INIT_METHODS, INIT_NAMES\n"
        "assert INIT_NAMES == tuple(INIT_METHODS)\n"
        "assert 'torch' not in sys.modules and 'peft' not in sys.modules, sorted(sys.modules)\n"
    )


def test_init_names_agree_with_the_spec():
    from gapinit_ray.inits.registry import INIT_NAMES
    from gapinit_ray.spec import INIT_METHODS

    assert tuple(INIT_METHODS) == INIT_NAMES


def test_results_store_layout_names_are_the_paths_it_writes(tmp_path):
    from gapinit_ray.results import layout
    from gapinit_ray.results.store import ResultsStore

    store = ResultsStore(str(tmp_path), "s")
    assert store.compacted_path("t1").endswith(
        f"/{layout.METRICS_DIR}/{layout.TRIAL_DIR_PREFIX}t1/{layout.COMPACTED}"
    )
    assert store.sweep_path.endswith(f"/{layout.RESULTS_DIR}/{layout.METRICS_DIR}/{layout.SWEEP_FILE}")
    path = store.metric_path("t1", 2.5)
    assert layout.file_epoch(path.rpartition("/")[2]) == 2.5
    assert layout.dir_trial_id(store.trial_metrics_dir("a b/c")) == "a b/c"
