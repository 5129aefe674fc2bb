"""alignbench sweep: config parsing, profiles, planning, the ledger, and real sweeps on the local/debug executors.

The cluster counterpart (same runs through a real SLURM) is tests/test_slurm.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignbench import launch
from alignbench.config import OFFLINE_PAIRS
from alignbench.errors import ConfigError, UnknownNameError
from alignbench.identity import Resolver
from alignbench.results import ResultStore
from alignbench.sweep_config import build_config, expand, load_sweep_file
from sweep_world import EVALS, PAIR, cli, metrics_by_run, sweep_args, write_tiny_data

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, **kw) -> "launch.SweepConfig":
    base = dict(methods="cca,asif", pairs=PAIR, budgets="20,40", seeds="0,1", evals=EVALS,
                results=str(tmp_path / "results" / "runs"))
    base.update(kw)
    return build_config({}, **base)


# -- configuration ------------------------------------------------------------------------
def test_flags_expand_to_the_cross_product(tmp_path):
    cfg = _cfg(tmp_path, methods="cca,linear:dim=64,lr=0.01", budgets="1k,2.5k", seeds="0-2")
    specs = expand(cfg)
    assert len(specs) == 2 * 2 * 3
    assert {s.method for s in specs} == {"cca", "linear"}
    lin = next(s for s in specs if s.method == "linear")
    assert lin.method_options == {"dim": "64", "lr": "0.01"}
    assert {s.budget for s in specs} == {1000, 2500} and {s.seed for s in specs} == {0, 1, 2}
    assert all(s.evals == tuple(EVALS.split(",")) for s in specs)
    assert len({s.run_id for s in specs}) == len(specs)


def test_yaml_file_with_flag_overrides(tmp_path):
    f = tmp_path / "budgets.yaml"
    f.write_text(
        "methods: [cca, {linear: {dim: 64}}]\n"
        f"pairs: [{PAIR}]\n"
        "budgets: [20, 1k]\n"
        "seeds: 0-1\n"
        "tasks: [retrieval]\n"
        "val: null\n"
        "executor: local\n"
    )
    values = load_sweep_file(f)
    cfg = build_config(values, seeds="3", results=str(tmp_path / "r" / "runs"))
    specs = expand(cfg)
    assert cfg.name == "budgets" and cfg.executor == "local"
    assert len(specs) == 2 * 2 * 1 and {s.seed for s in specs} == {3}
    assert {s.method_options.get("dim") for s in specs} == {None, "64"}
    assert all(s.val is None and s.evals == ("retrieval:flickr8k:test",) for s in specs)


def test_unknown_sweep_file_key_is_named(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("methods: [cca]\nbudgetz: [1k]\n")
    with pytest.raises(ConfigError, match=r"budgetz.*did you mean 'budgets'"):
        load_sweep_file(f)


def test_tuned_wait_in_a_sweep_file_is_a_boolean(tmp_path):
    """A sweep's ``:tuned`` methods wait for a study's live trials unless ``tuned-wait: false``."""
    f = tmp_path / "s.yaml"
    f.write_text("methods: [cca]\ntuned-wait: false\n")
    assert build_config(load_sweep_file(f)).tuned_wait is False
    assert build_config(methods="cca").tuned_wait is True
    f.write_text("methods: [cca]\ntuned-wait: later\n")
    with pytest.raises(ConfigError, match="tuned_wait must be true or false, got 'later'"):
        build_config(load_sweep_file(f))


@pytest.mark.parametrize("field,value,suggestion", [
    ("methods", "ccaa,asif", "cca"),
    ("pairs", "tiny-vitt+tiny-text", "tiny-vit"),
    ("pairs", "tiny-vit+tiny-txt", "tiny-text"),
])
def test_unknown_names_in_a_sweep_suggest(tmp_path, field, value, suggestion):
    with pytest.raises(UnknownNameError, match=f"did you mean.*{suggestion}"):
        expand(_cfg(tmp_path, **{field: value}))


def test_unknown_method_in_a_sweep_file_suggests(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"methods: [asiff]\npairs: [{PAIR}]\n")
    with pytest.raises(UnknownNameError, match="did you mean 'asif'"):
        expand(build_config(load_sweep_file(f)))


def test_tasks_and_datasets_filter_the_default_evaluations(tmp_path):
    cfg = build_config({}, methods="cca", tasks="retrieval", results=str(tmp_path))
    assert expand(cfg)[0].evals == ("retrieval:flickr8k:test",)
    cfg = build_config({}, methods="cca", datasets="cifar10,fashion-mnist", results=str(tmp_path))
    assert expand(cfg)[0].evals == ("classification:cifar10:test", "classification:fashion-mnist:test")
    cfg = build_config({}, methods="cca", pairs="all", results=str(tmp_path))
    assert [s.pair for s in expand(cfg)] == list(OFFLINE_PAIRS)


def test_bad_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="executor"):
        _cfg(tmp_path, executor="slurmm")
    with pytest.raises(ConfigError, match="no methods"):
        build_config({}, pairs=PAIR)
    with pytest.raises(ConfigError, match="seed"):
        _cfg(tmp_path, seeds="zero")


# -- profiles --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["slurm/local.yaml", "local", "gpu-example"])
def test_shipped_profiles_are_valid(name):
    prof = launch.load_profile(name)
    assert prof.params and prof.pack >= 1


def test_gpu_example_documents_a_gpu_request():
    prof = launch.load_profile("slurm/gpu-example.yaml")
    assert prof.params["slurm_partition"] and prof.params["slurm_gpus_per_task"] == 1
    assert prof.params["slurm_additional_parameters"]["account"]


def test_unknown_profile_keys_are_named(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("slurm_partitio: gpu\ntimeout_min: 10\nmemory: 4G\n")
    with pytest.raises(ConfigError) as exc:
        launch.load_profile(str(p))
    msg = str(exc.value)
    assert "'slurm_partitio' (did you mean 'slurm_partition'?)" in msg and "'memory'" in msg
    assert "timeout_min" not in msg.split("Use submitit")[0]  # a valid key is not reported
    p.write_text("timeout_min: 10\nencode:\n  gpus: 1\n")
    with pytest.raises(ConfigError, match=r"encode.*'gpus'"):
        launch.load_profile(str(p))
    p.write_text("pack: 0\n")
    with pytest.raises(ConfigError, match="at least 1"):
        launch.load_profile(str(p))


def test_missing_profile_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="gpu-example"):
        launch.load_profile("no-such-profile")


# -- planning ----------------------------------------------------------------------------------
def test_cheap_runs_are_packed_and_heavy_runs_go_first(tmp_path):
    specs = expand(_cfg(tmp_path, methods="cca,linear,asif", budgets="20,40,60", seeds="0"))
    packs = launch.group_packs(specs, launch.Profile(pack=4))
    assert [len(p) for p in packs] == [1, 1, 1, 4, 2]
    assert all(p[0].method == "linear" for p in packs[:3])
    assert sorted(s.run_id for p in packs for s in p) == sorted(s.run_id for s in specs)
    assert len(launch.group_packs(specs, launch.Profile(pack=1))) == len(specs)


def test_sweep_id_is_stable_and_follows_the_runs(tmp_path):
    cfg = _cfg(tmp_path)
    a = launch.sweep_id(cfg, expand(cfg))
    assert a == launch.sweep_id(cfg, list(reversed(expand(cfg))))
    cfg2 = _cfg(tmp_path, seeds="0,1,2")
    assert launch.sweep_id(cfg2, expand(cfg2)) != a


def _needs(cfg) -> list:
    return launch.feature_needs(launch.resolve_for_planning(cfg, expand(cfg)))


def test_feature_needs_cover_training_validation_and_tasks(tmp_path):
    needs = _needs(_cfg(tmp_path))
    got = {(n.kind, n.encoder, n.dataset, n.split) for n in needs}
    assert ("images", "tiny-vit", "flickr8k", "train") in got
    assert ("texts", "tiny-text", "flickr8k", "dev") in got
    assert ("texts", "tiny-text", "flickr8k", "test") in got
    assert ("images", "tiny-vit", "cifar10", "test") in got
    assert ("prompts", "tiny-text", "cifar10", None) in got
    assert len(needs) == len(got)  # one need per feature set, however many runs share it


def test_feature_needs_read_the_resolved_run_not_spec_strings():
    """A ResolvedRun built without any typed spec (and a dataset name no 'DATASET:SPLIT' string could carry)
    gives its feature sets at the resolved layers: the planner never goes back to strings."""
    from alignbench.identity import EncoderRef, EvalSpec, ResolvedRun, SplitRef, resolve_method

    _, method = resolve_method("cca")
    run = ResolvedRun(pair="tiny-vit+tiny-text", image=EncoderRef("tiny-vit", 1), text=EncoderRef("tiny-text", 0),
                      dtype="fp32", method=method, train=SplitRef("lab:shots+2", "train"), val=None, budget=20,
                      seed=0, evals=(EvalSpec("classification", "cifar10", "test"),), feature_keys={})
    got = {(n.kind, n.encoder, n.dataset, n.split, n.layer) for n in launch.feature_needs([run])}
    assert got == {("images", "tiny-vit", "lab:shots+2", "train", 1), ("texts", "tiny-text", "lab:shots+2", "train", 0),
                   ("images", "tiny-vit", "cifar10", "test", 1), ("prompts", "tiny-text", "cifar10", None, 0)}


# -- guards before submitting --------------------------------------------------------------------
def test_slurm_executor_without_sbatch_suggests_local(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError, match="--executor local"):
        launch.run_sweep(_cfg(tmp_path, executor="slurm"), launch.Profile())


def test_unwritable_results_folder_fails_before_submitting(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = _cfg(tmp_path, executor="local", results=str(blocker / "results" / "runs"))
    with pytest.raises(ConfigError, match="not writable"):
        launch.run_sweep(cfg, launch.Profile())
    assert not any(tmp_path.rglob("*.pkl"))


# -- ledger and status ------------------------------------------------------------------------------
def test_status_classifies_done_failed_lost_running_and_missing(tmp_path):
    cfg = _cfg(tmp_path, methods="cca", budgets="20,40,60,80,100", seeds="0")
    specs = expand(cfg)
    path = cfg.sweeps_dir / "s.json"
    cfg.sweeps_dir.mkdir(parents=True)
    cfg.runs_dir.mkdir(parents=True)
    led = launch.Ledger.open(path, sweep="s", cfg=cfg, specs=specs)
    done, failed, lost, running, missing = specs
    resolver = Resolver()
    run = resolver.resolve(done)
    ResultStore(cfg.runs_dir).write({
        "schema_version": 2, "status": "ok", "run_id": run.run_id, "fit_id": run.fit_id, "spec_key": done.spec_key,
        "spec": done.to_dict(), "resolved": run.to_dict(), "evals": [],
        "metrics": {e.key: {"R@1": 1.0} for e in run.evals}})
    # a damaged result file (here: an empty object) of another run is not "done"
    (cfg.runs_dir / f"{resolver.resolve(missing).run_id}.json").write_text("{}")
    (cfg.runs_dir / f"{failed.run_id}.failed.json").write_text(json.dumps(
        {"error": {"type": "BudgetError", "message": "too big", "traceback": "Traceback ...\nBudgetError: too big\n"}}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)  # submitit"])
    try:
        for spec, job in ((failed, dead.stdout.strip()), (lost, dead.stdout.strip()), (running, str(sleeper.pid))):
            led.record_job(job, {"executor": "local", "run_ids": [spec.run_id], "stderr": f"/logs/{job}.err",
                                 "stdout": f"/logs/{job}.out"})
        led.save()
        again = launch.Ledger.load(path)  # round trip through the atomic file
        states = {s.run_id: s for s in launch.collect_status(again, specs)}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [states[s.run_id].state for s in specs] == ["done", "failed", "lost", "running", "missing"]
    assert "BudgetError: too big" in states[failed.run_id].detail
    report = launch.SweepReport("s", path, "local", list(states.values()))
    text = report.format()
    assert "BudgetError: too big" in text and f"log: /logs/{dead.stdout.strip()}.err" in text
    assert report.counts() == {"done": 1, "running": 1, "pending": 0, "failed": 1, "lost": 1, "missing": 1}
    assert not list(cfg.sweeps_dir.glob(".*.tmp"))


# -- real sweeps on tiny encoders -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-world")
    return {"data": write_tiny_data(root / "data"), "cache": root / "features", "root": root}


def test_debug_and_local_executors_agree_and_resume_is_instant(world, monkeypatch):
    monkeypatch.setenv("ALIGNBENCH_DATA", str(world["data"]))
    common = dict(cache=str(world["cache"]), data_root=str(world["data"]))
    dbg = _cfg(world["root"] / "dbg", executor="debug", **common)
    rep = launch.run_sweep(dbg, launch.Profile())
    assert rep.ok and rep.submitted == 8
    loc = _cfg(world["root"] / "loc", executor="local", **common)
    rep = launch.run_sweep(loc, launch.Profile(pack=3, parallel_jobs=2))
    assert rep.ok and rep.submitted == 8, rep.format()
    a, b = metrics_by_run(dbg.runs_dir), metrics_by_run(loc.runs_dir)
    assert len(a) == 8 and a == b  # same function, same numbers, whatever executes it
    led = json.loads(rep.ledger.read_text())
    jobs = led["jobs"]
    assert len(jobs) == 3  # 8 cheap runs packed 3 per job
    assert all(Path(j["stderr"]).is_file() for j in jobs.values())
    assert all(len(r["attempts"]) == 1 for r in led["runs"].values())
    t0 = time.perf_counter()
    again = launch.run_sweep(loc, launch.Profile())
    assert again.submitted == 0 and again.ok
    assert time.perf_counter() - t0 < 5


def test_failed_run_shows_its_traceback_and_is_resubmitted(world, monkeypatch, capsys):
    from alignbench.cli import main

    args = sweep_args(world["root"] / "fail", methods="cca", budgets="20,5000", seeds="0",
                      extra=["--executor", "debug", "--cache", str(world["cache"]), "--data-root", str(world["data"])])
    assert main(args) == 1  # one run failed
    capsys.readouterr()
    assert main(args + ["--status"]) == 1
    out = capsys.readouterr().out
    assert "done 1" in out and "failed 1" in out
    assert "BudgetError" in out and "Traceback" in out and "5000" in out
    # the done run is not redone; the failed one is tried again (and fails again)
    rep = launch.run_sweep(build_config({}, methods="cca", pairs=PAIR, budgets="20,5000", seeds="0", evals=EVALS,
                                        executor="debug", results=str(world["root"] / "fail" / "runs"),
                                        cache=str(world["cache"]), data_root=str(world["data"])), launch.Profile())
    assert rep.submitted == 1 and rep.counts()["failed"] == 1


def test_dry_run_submits_nothing(world):
    cfg = _cfg(world["root"] / "dry", executor="local", cache=str(world["cache"]), data_root=str(world["data"]))
    rep = launch.run_sweep(cfg, launch.Profile(), dry_run=True)
    assert rep.dry_run and rep.submitted == 0 and rep.counts()["missing"] == 8
    assert "would submit 8 runs in 2 array tasks" in rep.format()
    assert not cfg.runs_dir.exists() or not any(cfg.runs_dir.iterdir())


def test_cli_help_and_empty_status_are_fast(tmp_path):
    t0 = time.perf_counter()
    r = cli(["sweep", "--help"], {})
    assert r.returncode == 0 and "--profile" in r.stdout and "--status" in r.stdout
    r = cli(["sweep", "--status", "--results", str(tmp_path / "runs")], {})
    assert r.returncode == 0 and "no sweeps recorded" in r.stdout
    assert time.perf_counter() - t0 < 20
    r = cli(sweep_args(tmp_path, methods="ccaa"), {})
    assert r.returncode == 2 and "did you mean 'cca'" in r.stderr


# -- stage 1 covers every feature kind ------------------------------------------------------------
def test_segmentation_sets_are_filed_under_the_image_encoder(tmp_path):
    got = {(n.kind, n.encoder, n.dataset, n.split) for n in _needs(_cfg(tmp_path, evals="segmentation:camvid:test"))}
    assert ("dense_images", "tiny-vit", "camvid", "test") in got
    assert ("prompts", "tiny-text", "camvid", None) in got
    assert not any(k == "dense_images" and enc == "tiny-text" for k, enc, _, _ in got)


def _segmentation_world(tmp_path: Path, monkeypatch, **kw):
    import fixtures_layouts as fx

    data = tmp_path / "data"
    write_tiny_data(data)
    fx.write_camvid(data)
    monkeypatch.setenv("ALIGNBENCH_DATA", str(data))
    return _cfg(tmp_path, methods="cca", budgets="20", seeds="0", val="none", evals="segmentation:camvid:test",
                cache=str(tmp_path / "features"), data_root=str(data), **kw)


def _reads_of_the_run(cfg) -> list[dict]:
    records = [json.loads(p.read_text()) for p in cfg.runs_dir.glob("*.json")]
    assert len(records) == 1
    reads = records[0]["features"]
    assert {(r["kind"], r["dataset"]) for r in reads} >= {("images", "camvid"), ("prompts", "camvid")}
    return reads


def test_encode_jobs_cover_every_kind_a_run_reads(tmp_path, monkeypatch):
    """Stage 1's job function, run in-process for each missing set, leaves the run nothing to encode."""
    from alignbench.runner import run_one
    from alignbench.sweep_jobs import EncodeJob

    cfg = _segmentation_world(tmp_path, monkeypatch)
    specs = expand(cfg)
    missing = launch.missing_features(_needs(cfg), cfg.store_root, cfg.data_path)
    assert {n.kind for n in missing} == {"images", "texts", "dense_images", "prompts"}
    for n in missing:
        assert EncodeJob()(n, store_root=str(cfg.store_root), data_root=str(cfg.data_path), device="cpu") == "encoded"
    assert not launch.missing_features(missing, cfg.store_root, cfg.data_path)
    run_one(specs[0], results_dir=cfg.runs_dir, store_root=cfg.store_root, data_root=cfg.data_path, progress=False)
    assert [r for r in _reads_of_the_run(cfg) if r["action"] != "reused"] == []


@pytest.mark.slow
def test_stage_two_encodes_nothing_with_a_segmentation_evaluation(tmp_path, monkeypatch):
    """The same through the local executor: stage 1 jobs, then the run's job reuses every set."""
    cfg = _segmentation_world(tmp_path, monkeypatch, executor="local")
    rep = launch.run_sweep(cfg, launch.Profile(parallel_jobs=2))
    assert rep.ok, rep.format()
    assert rep.encodes_submitted == len(_needs(cfg)) == 4
    assert [r for r in _reads_of_the_run(cfg) if r["action"] != "reused"] == []


# -- the PAL paper's protocol as a plan ---------------------------------------------------------------
def test_pal_paper_sweep_plans_offline_without_touching_anything(tmp_path):
    """--plan lists the jobs, GPU-hours and disk with no data, no weights and no network; writes nothing."""
    env = {"ALIGNBENCH_DATA": str(tmp_path / "no-data"), "ALIGNBENCH_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = cli(["sweep", "--config", str(REPO / "slurm" / "pal-paper.yaml"), "--plan",
             "--results", str(tmp_path / "results" / "runs")], env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "stage 1: 24 encode jobs" in out and "stage 2: 105 runs" in out  # 7 methods x 5 budgets x 3 seeds
    assert "dense_images dinov2-l14-timm ade20k:val" in out  # segmentation sets are pre-encoded too
    coco = next(line for line in out.splitlines() if line.startswith("images dinov2-l14-timm coco:train"))
    assert "113,287" in coco and "60.1 GB" in coco  # 257 x 1024 fp16 tokens + fp32 pooled per image
    assert "GPU-hours" in out and "nothing was submitted" in out
    assert not any(tmp_path.rglob("*.json")) and not (tmp_path / "cache").exists() and not (tmp_path / "hf").exists()


def test_pal_paper_file_sets_the_paper_encoders_and_layers():
    cfg = build_config(load_sweep_file(REPO / "slurm" / "pal-paper.yaml"))
    specs = expand(cfg)
    assert {s.budget for s in specs} == {1000, 5000, 10_000, 50_000, "max"} and {s.seed for s in specs} == {0, 1, 2}
    assert {(s.encoder.image_layer, s.encoder.text_layer) for s in specs} == {(23, 24)}
    assert all(s.train == "coco:train" and s.val == "coco:val" for s in specs)
    assert len(specs[0].evals) == 10


def test_sliding_windows_are_a_feature_set_of_their_own(tmp_path, monkeypatch):
    """protocol=slide reads the windows as their own cache entry: stage 1 encodes them, the run reuses them,
    and the result records the protocol under a key apart from the default protocol's."""
    from alignbench.runner import run_one
    from alignbench.sweep_jobs import EncodeJob

    cfg = _segmentation_world(tmp_path, monkeypatch)
    cfg = build_config({}, methods="cca", pairs=PAIR, budgets="20", seeds="0", val="none",
                       evals="segmentation:camvid:test,segmentation:camvid:test:protocol=slide:short=24:crop=12:stride=8",
                       results=str(cfg.runs_dir), cache=str(cfg.store_root), data_root=str(cfg.data_path))
    specs = expand(cfg)
    needs = _needs(cfg)
    crops = [n for n in needs if n.kind == "crops"]
    assert [(n.encoder, n.dataset, n.split, n.view.tag) for n in crops] == [("tiny-vit", "camvid", "test", "crops24-12-8")]
    missing = launch.missing_features(needs, cfg.store_root, cfg.data_path)
    assert "crops" in {n.kind for n in missing}
    for n in missing:
        assert EncodeJob()(n, store_root=str(cfg.store_root), data_root=str(cfg.data_path), device="cpu") == "encoded"
    assert not launch.missing_features(needs, cfg.store_root, cfg.data_path)
    run_one(specs[0], results_dir=cfg.runs_dir, store_root=cfg.store_root, data_root=cfg.data_path, progress=False)
    record = json.loads(next(cfg.runs_dir.glob("*.json")).read_text())
    assert all(r["action"] == "reused" for r in record["features"])
    assert {r["dataset"] for r in record["features"] if r["kind"] == "images"} >= {"camvid", "camvid.crops24-12-8"}
    slide_key = "segmentation/camvid@slide,short=24,crop=12,stride=8"
    assert set(record["metrics"]) == {"segmentation/camvid", slide_key}
    ev = {e["key"]: e for e in record["evals"]}
    assert "protocol" not in ev["segmentation/camvid"]
    assert ev[slide_key]["protocol"] == {"name": "slide", "short_side": 24, "crop": 12, "stride": 8, "max_long": 2048,
                                         "logit_scale": 50.0, "threshold": None,
                                         "window_encoded_at": "the encoder's input resolution"}
    assert record["outcomes"][slide_key]["meta"]["protocol"]["name"] == "slide"
    assert record["resolved"]["feature_keys"]["evals"][slide_key]["crops"].startswith("tiny-vit/camvid.crops24-12-8-test")
