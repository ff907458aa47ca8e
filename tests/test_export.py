"""`gapinit export` and `gapinit evaluate` on a real trained trial (TrialWorker in this process, DeepSpeed
on CPU, no Ray): the exported adapter loads with plain peft + transformers in a clean subprocess with
the trained model's logits, the merged checkpoint gives the same logits, `evaluate` in a subprocess
reproduces the trial's own final scores, and bad adapters are one line with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from gapinit_ray.backbones import load_backbone
from gapinit_ray.plan import trial_id, trial_spec
from gapinit_ray.spec import spec_from_dict

from .conftest import USER_ENV
from .test_sweep import sweep_raw

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

#: LoRA-GA rewrites the base (W₀ − s·B₀A₀, from cached gradient statistics): the hardest export path
PARAMS = {"init": "lora_ga", "seed": 3}


def _spec_raw(tmp: Path, base: Path) -> dict:
    raw = sweep_raw(
        tmp,
        name="export_test",
        backbones=[{"name": "tiny-blip2", "path": str(base), "pretrain": False}],
        search={"init": ["gap", "lora_ga"], "seed": [3]},
        scheduler={"type": "fifo", "metric": "val_cider", "mode": "max"},
    )
    raw["data"]["sources"]["shapes"]["num_images"] = 48
    raw["train"]["epochs"] = 1
    return raw


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**USER_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "gapinit_ray.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _clean_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that never imports gapinit_ray (checked at the end)."""
    code = (
        textwrap.dedent(code)
        + "\nimport sys\nassert not any(m.startswith('gapinit_ray') for m in sys.modules)\n"
    )
    env = {**USER_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained LoRA-GA trial laid out as a sweep stores it: spec.json, train/<tid>/checkpoint_*/,
    results/ rows; returns (sweep dir, spec yaml, trial dir, last report)."""
    from gapinit_ray.plan import result_config
    from gapinit_ray.results import ResultsStore
    from gapinit_ray.train import TrialContext, TrialWorker
    from gapinit_ray.trial import prepare_artifact

    tmp = tmp_path_factory.mktemp("export")
    base = tmp / "base"
    load_backbone("tiny-blip2", seed=0).save(base)  # a plain transformers checkpoint dir
    raw = _spec_raw(tmp, base)
    spec = spec_from_dict(raw)
    spec_file = tmp / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    sweep = Path(spec.storage) / spec.name
    sweep.mkdir(parents=True)
    (sweep / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    tspec, bspec = trial_spec(spec, PARAMS)
    tid = trial_id(PARAMS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    ctx = TrialContext(
        spec=tspec,
        backbone=bspec,
        backbone_path=str(base),
        artifact_path=prepare_artifact(tspec, bspec, str(base), progress=False, use_ray=False),
        trial_id=tid,
        out_dir=str(sweep / "captions" / tid),
    )
    run_dir = sweep / "train" / tid
    reports: list[dict] = []
    store = ResultsStore(spec.storage, spec.name)

    def report(metrics, checkpoint=None):
        reports.append(metrics)
        store.write_report(tid, result_config(spec, PARAMS), metrics)
        if checkpoint is not None:
            shutil.copytree(checkpoint, run_dir / f"checkpoint_{len(reports) - 1:06d}")

    TrialWorker(ctx, report, lambda: None, checkpoint_from=str).run()
    return sweep, spec_file, run_dir, reports[-1]


def _probe(tmp: Path) -> Path:
    """A fixed image+caption batch saved as plain tensors, for logits in any process."""
    bb = load_backbone("tiny-blip2", seed=0)
    from gapinit_ray.data import generate_synthetic, load_caption_set, load_image

    ds = generate_synthetic(str(tmp / "probe_set"), variant="restyle", num_images=4, seed=1)
    recs = load_caption_set("karpathy", ds, None, "train")
    batch = bb.build_batch([load_image(r) for r in recs], [r.captions[0] for r in recs])
    path = tmp / "probe.pt"
    torch.save({k: v for k, v in bb.forward_inputs(batch).items() if torch.is_tensor(v)}, path)
    return path


def test_export_adapter_and_merge_load_without_gapinit(trained, tmp_path):
    from gapinit_ray.export import load_trained, resolve_trial

    _, _, run_dir, _ = trained
    probe = _probe(tmp_path)
    inputs = torch.load(probe)
    _, model, method = load_trained(resolve_trial(str(run_dir)))
    assert method.mutates_base
    with torch.no_grad():
        want = model(**inputs).logits

    out, merged = tmp_path / "adapter", tmp_path / "merged"
    r = _cli("export", str(run_dir), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "converted to plain LoRA" in r.stdout
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["init_lora_weights"] is True  # [A; A₀], [B, −B₀]: rank 2r on W₀
    r = _cli("export", str(run_dir), "--out", str(merged), "--merge", cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    res = _clean_python(
        f"""
        import json, torch
        from transformers import AutoConfig, Blip2ForConditionalGeneration
        from peft import PeftModel
        inputs = torch.load({str(probe)!r})
        cfg = json.load(open({str(out / "adapter_config.json")!r}))
        base = Blip2ForConditionalGeneration.from_pretrained(cfg["base_model_name_or_path"]).eval()
        model = PeftModel.from_pretrained(base, {str(out)!r}).eval()
        merged = Blip2ForConditionalGeneration.from_pretrained({str(merged)!r}).eval()
        with torch.no_grad():
            torch.save({{"adapter": model(**inputs).logits, "merged": merged(**inputs).logits}},
                       {str(tmp_path / "logits.pt")!r})
        """,
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / "logits.pt")
    assert (got["adapter"] - want).abs().max() <= 1e-5
    assert (got["merged"] - got["adapter"]).abs().max() <= 1e-5
    assert (got["merged"] - want).abs().max() <= 1e-5


def test_evaluate_exported_adapter_in_a_subprocess_equals_the_trials_final_scores(trained, tmp_path):
    sweep, spec_file, run_dir, last = trained
    out = tmp_path / "adapter"
    assert _cli("export", str(run_dir), "--out", str(out), cwd=tmp_path).returncode == 0
    r = _cli("evaluate", str(out), "--spec", str(spec_file), "--split", "val", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["kind"] == "evaluation" and row["split"] == "val" and row["task"] == "caption"
    for m in ("val_bleu4", "val_cider"):
        assert row["metrics"][m] == pytest.approx(last[m], abs=1e-9), m
    assert row["stored"] and Path(row["stored"]).is_file()  # a row in the sweep's store
    from gapinit_ray.eval_adapter import read_evaluations

    table = read_evaluations(str(sweep.parent), sweep.name).to_pylist()
    assert [t["kind"] for t in table] == ["evaluation"]
    assert table[0]["val_cider"] == pytest.approx(last["val_cider"], abs=1e-9)

    # the trial itself (its last checkpoint, rebuilt in place): the same numbers
    r = _cli("evaluate", str(run_dir), "--split", "val", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["metrics"]["val_cider"] == pytest.approx(last["val_cider"], abs=1e-9)


def test_bad_adapters_are_one_line_exit_2(trained, tmp_path, capsys):
    from gapinit_ray.cli import main

    _, spec_file, run_dir, _ = trained
    out = tmp_path / "adapter"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    capsys.readouterr()

    def one_line_error(argv, *needles):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (code, err[-2000:])
        lines = [x for x in err.strip().splitlines() if x.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err
        for n in needles:
            assert n in lines[0], lines[0]

    raw = yaml.safe_load(spec_file.read_text())
    other = dict(raw, backbones=[{"name": "tiny-qwen2-vl", "pretrain": False}])
    other_file = tmp_path / "other.yaml"
    other_file.write_text(yaml.safe_dump(other))
    one_line_error(["evaluate", str(out), "--spec", str(other_file), "--split", "val"], "another backbone")
    # the same adapter without its export record: found by the modules' shapes once the base loads
    (out / "gapinit_export.json").rename(tmp_path / "meta.json")
    opt_names = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    other_file.write_text(yaml.safe_dump(dict(other, lora=dict(other["lora"], target_modules=opt_names))))
    one_line_error(["evaluate", str(out), "--spec", str(other_file), "--split", "val"], "another backbone")
    (tmp_path / "meta.json").rename(out / "gapinit_export.json")
    (tmp_path / "empty").mkdir()
    one_line_error(["evaluate", str(tmp_path / "empty"), "--spec", str(spec_file)], "missing adapter")
    one_line_error(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "x")], "missing adapter")
    narrow = dict(raw, lora=dict(raw["lora"], target_modules=["q_proj"]))
    narrow_file = tmp_path / "narrow.yaml"
    narrow_file.write_text(yaml.safe_dump(narrow))
    one_line_error(["evaluate", str(out), "--spec", str(narrow_file), "--split", "val"], "target", "q_proj")
    one_line_error(["evaluate", str(out), "--spec", str(spec_file), "--split", "test"], "data.test")
