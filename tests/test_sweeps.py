"""Ablation sweeps: the pre-train-then-probe job (stages, skipping, resuming), its downstream configs, the sweep and
launcher configs, and the summary (CSV, markdown, plots) of a sweep directory, on synthetic and real runs."""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import yaml
from conftest import CONF, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

import mae.jobs.ablation as ablation
import mae.sweeps.optuna_search as optuna_search
from mae.jobs.ablation_stages import compose_stage
from mae.jobs.harness import SetupError
from mae.jobs.pretrain import pretrain
from mae.sweeps.callback import SweepSummaryCallback
from mae.sweeps.overrides import override_value, overrides_for
from mae.sweeps.plots import parameter_figure
from mae.sweeps.summary import NoiseCheck, mean_std, noise_check, summarize, write_summary
from mae.sweeps.summary import main as summary_main

ROOT = Path(__file__).resolve().parents[1]

MODEL = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
]
# A small model, a 256-image subset and small kNN sets keep each stage to seconds on two cores; the probe's final
# evaluation covers the whole test split (its per-epoch validation is switched off).
PROBE = [
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "trainer.check_val_every_n_epoch=100",
    "callbacks.progress_bar.refresh_rate=0",
]
SMALL = MODEL + [
    "data.train_samples=256",
    "data.knn_train_samples=256",
    "data.knn_val_samples=128",
    "schedule.batch_size=32",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.reconstruction_grid=null",
    "ablation.overrides.linprobe=[" + ",".join(f"'{o}'" for o in PROBE) + "]",
]
STEPS_PER_EPOCH = 256 // 32


def compose_with_hydra(overrides: list[str]):
    """The composed config with its hydra node (sweeper, launcher, callbacks), unresolved."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


# Overrides ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        3,
        -2,
        0.1,
        1e-06,
        float("inf"),
        "plain",
        "/x/it's here",
        "a=b,c",
        "back\\slash",
        "ends\\",
        "quote'\\",
        [0.286, 1, "s"],
        {"a": [1, None]},
    ],
)
def test_override_values_parse_back_to_the_same_value(value):
    parsed = OverridesParser.create().parse_override(f"key={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


def test_overrides_for_flattens_nodes_and_skips_missing_keys():
    cfg = OmegaConf.create({"model": {"depth": 2, "name": "vit", "sub": {"x": 0.5}}, "seed": 3, "other": 1})
    assert overrides_for(cfg, ["model", "seed", "nothing.here"]) == [
        "model.depth=2",
        "model.name='vit'",
        "model.sub.x=0.5",
        "seed=3",
    ]


# Configs --------------------------------------------------------------------------------------------------------


def test_ablation_task_runs_the_sweep_job_in_a_stable_sweep_directory():
    cfg = compose_with_hydra(["task=ablation"])
    assert cfg.job._target_ == "mae.jobs.ablation.pretrain_then_probe" and cfg.task_name == "ablation"
    assert list(cfg.ablation.downstream) == ["linprobe"] and cfg.ablation.objective == "linprobe_val_top1"
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert sweep == {"dir": "${paths.log_dir}/sweeps/${sweep_name}", "subdir": "${hydra.job.override_dirname}"}
    dirname = cfg.hydra.job.config.override_dirname
    assert (dirname.kv_sep, dirname.item_sep) == ("_", "+") and "paths.log_dir" in dirname.exclude_keys
    # A swept seed names its job (model.mask_ratio_0.75+seed_1), reaches the probe, and guards a reused directory.
    assert "seed" not in dirname.exclude_keys
    assert "seed" in cfg.ablation.inherit and "seed" in cfg.ablation.same_settings
    assert cfg.hydra.callbacks.sweep_summary._target_ == "mae.sweeps.callback.SweepSummaryCallback"
    # Pre-training recipe and callbacks as for task=pretrain.
    assert cfg.schedule == compose_with_hydra([]).schedule and "knn_evaluation" in cfg.callbacks


@pytest.mark.parametrize(
    ("experiment", "key", "values", "built"),
    [
        ("sweep_mask_ratio", "model.mask_ratio", "0.1,0.3,0.5,0.75,0.9", lambda m: m.mask_ratio),
        ("sweep_decoder_depth", "model.decoder_depth", "1,2,4,8", lambda m: len(m.decoder_blocks)),
        ("sweep_decoder_width", "model.decoder_embed_dim", "64,128,256,512", lambda m: m.mask_token.shape[-1]),
        ("sweep_norm_pix_loss", "model.norm_pix_loss", "true,false", lambda m: m.norm_pix_loss),
    ],
)
def test_sweep_configs_sweep_one_model_knob_over_three_seeds_at_cpu_scale(experiment, key, values, built):
    cfg = compose_with_hydra([f"experiment={experiment}"])
    assert dict(cfg.hydra.sweeper.params) == {key: values, "seed": "0,1,2"}
    assert cfg.sweep_name == experiment.removeprefix("sweep_") and cfg.task_name == "ablation"
    assert cfg.model._target_ == "mae.models.mae_vit_tiny_patch7" and cfg.data._target_.endswith(
        "FashionMNISTDataModule"
    )
    assert (cfg.data.train_samples, cfg.schedule.epochs) == (30000, 2)
    assert "schedule.epochs=2" in cfg.ablation.overrides.linprobe
    # Every value of the sweep builds the model it names.
    for value in values.split(","):
        model = instantiate(compose_with_hydra([f"experiment={experiment}", f"{key}={value}"]).model)
        assert built(model) == yaml.safe_load(value)


def test_mask_ratio_sweep_scores_by_knn_alone_and_includes_the_papers_ratio():
    cfg = compose_with_hydra(["experiment=sweep_mask_ratio"])
    assert list(cfg.ablation.downstream) == []
    assert "0.75" in cfg.hydra.sweeper.params["model.mask_ratio"].split(",")
    # The other sweeps keep their probe (the Optuna sweep maximises it).
    assert list(compose_with_hydra(["experiment=sweep_decoder_depth"]).ablation.downstream) == ["linprobe"]


def test_slurm_launcher_config_extends_the_submitit_plugin():
    cfg = compose_with_hydra(["experiment=sweep_mask_ratio", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.timeout_min, launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (
        240,
        1,
        1,
        "gpu",
    )
    assert OmegaConf.to_container(launcher, resolve=False)["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.cwd} in the submitit folder's path
    instance = instantiate(launcher)  # builds without a cluster; nothing is submitted
    assert type(instance).__name__ == "SlurmLauncher" and instance.params["timeout_min"] == 240
    assert instance.params["submitit_folder"] == f"{Path.cwd()}/outputs/sweeps/mask_ratio/.submitit/%j"
    plain = compose_with_hydra(["hydra/launcher=submitit_slurm"]).hydra.launcher
    assert plain._target_ == launcher._target_


# The Optuna search (python -m mae.sweeps.optuna_search) ---------------------------------------------------------------


def test_optuna_search_config_searches_mask_ratio_and_decoder_depth_on_sweep_cpu_points(tmp_path, monkeypatch):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    monkeypatch.chdir(tmp_path)
    search = optuna_search.prepare([])
    settings = search.settings
    assert (settings.experiment, settings.sweep_name, settings.n_trials, settings.direction) == (
        "sweep_cpu",
        "optuna",
        12,
        "maximize",
    )
    assert (settings.sampler.seed, settings.sampler.n_startup_trials) == (0, 4)
    assert {p.key: p.distribution() for p in search.parameters} == {
        "model.mask_ratio": FloatDistribution(0.1, 0.9),
        "model.decoder_depth": CategoricalDistribution([1, 2, 4, 8]),
    }
    assert search.objective == "linprobe_val_top1" and search.sweep_dir == tmp_path / "outputs" / "sweeps" / "optuna"
    # A trial is the sweep_cpu point train.py runs, in the directory a multirun would give its overrides.
    values = {"mask_ratio": 0.5, "decoder_depth": 2}
    command = search.trial_command(values)
    assert command[1] == str(ROOT / "train.py")
    assert command[2:7] == [
        "experiment=sweep_cpu",
        "sweep_name=optuna",
        f"paths.log_dir='{tmp_path / 'outputs'}'",
        "model.mask_ratio=0.5",
        "model.decoder_depth=2",
    ]
    assert search.trial_dir(values) == search.sweep_dir / "model.decoder_depth_2+model.mask_ratio_0.5"
    assert command[-1] == f"hydra.run.dir='{search.trial_dir(values)}'"


def test_optuna_search_arguments_split_into_settings_and_trial_overrides():
    search, trial = optuna_search.split_arguments(
        [
            "n_trials=3",
            "sampler.seed=1",
            "~params.decoder_depth",
            "+params.width.key=model.decoder_embed_dim",
            "data.train_samples=256",
            "seed=1",
            "+trainer.max_steps=2",
        ]
    )
    assert search == [
        "n_trials=3",
        "sampler.seed=1",
        "~params.decoder_depth",
        "+params.width.key=model.decoder_embed_dim",
    ]
    assert trial == ["data.train_samples=256", "seed=1", "+trainer.max_steps=2"]
    chosen = optuna_search.prepare(["~params.mask_ratio", "params.decoder_depth.choices=[1,2]", "seed=3"])
    assert [(p.key, p.choices) for p in chosen.parameters] == [("model.decoder_depth", (1, 2))]
    assert chosen.trial_overrides == ["seed=3"]


def test_optuna_search_sampler_is_seeded_tpe():
    import optuna

    search = optuna_search.prepare(["n_trials=3"])
    none = optuna_search.EarlierTrials([], [])
    distributions = {p.name: p.distribution() for p in search.parameters}
    studies = [optuna_search.create_study(search, none) for _ in range(2)]
    assert all(isinstance(study.sampler, optuna.samplers.TPESampler) for study in studies)
    proposals = [[study.ask(distributions).params for _ in range(3)] for study in studies]
    assert proposals[0] == proposals[1] and len({str(p) for p in proposals[0]}) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["n_trials=0"], "n_trials=0 must be an integer of at least 1"),
        (
            ["params.mask_ratio.key=model.nonexistent"],
            "params.mask_ratio.key=model.nonexistent is not a key of the trial",
        ),
        (["+params.width.key=model.no_such_knob", "+params.width.choices=[1]"], "model.no_such_knob is not a key"),
        (["params.mask_ratio.high=1.5"], "model.mask_ratio=1.5 is refused (mask_ratio=1.5 is outside [0, 1))"),
        (["params.mask_ratio.low=0.9"], "params.mask_ratio: low=0.9 must be below high=0.9"),
        (["params.decoder_depth.choices=[]"], "params.decoder_depth.choices=[] must be a non-empty list"),
        (["params.decoder_depth.choices=[0,1]"], "model.decoder_depth=0 is refused"),
        (["+params.mask_ratio.bogus=1"], "params.mask_ratio has unknown field(s) bogus"),
        (["~params"], "params is empty"),
        (["direction=up"], "direction=up must be one of maximize, minimize"),
        (["sampler.n_startup_trials=-1"], "sampler.n_startup_trials=-1 must be an integer of at least 0"),
        (["data.bogus=1"], "Could not override 'data.bogus'"),
        (["model.mask_ratio=0.5"], "model.mask_ratio is searched (params.mask_ratio) and also given as an override"),
    ],
)
def test_optuna_search_bad_settings_stop_with_one_line_before_any_trial(monkeypatch, capsys, arguments, message):
    monkeypatch.setattr(optuna_search, "run_trial", lambda *args: pytest.fail("a trial ran"))
    assert optuna_search.main(arguments) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def write_trial_job(sweep: Path, name: str, overrides: list[str], results: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True, exist_ok=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results is not None:
        (sweep / name / "results.json").write_text(json.dumps(results))


def test_optuna_search_reads_finished_trials_back_and_continues_the_unfinished_one_first(tmp_path, monkeypatch):
    """Resuming: the finished trial is not run again, the interrupted one runs first, then new ones up to n_trials."""
    sweep = tmp_path / "sweeps" / "optuna"
    done = {"stages_done": ["pretrain", "linprobe"], "linprobe_val_top1": 61.5, "knn_top1": 50.0}
    write_trial_job(
        sweep, "model.decoder_depth_2+model.mask_ratio_0.5", ["model.mask_ratio=0.5", "model.decoder_depth=2"], done
    )
    write_trial_job(
        sweep,
        "model.decoder_depth_4+model.mask_ratio_0.3",
        ["model.mask_ratio=0.3", "model.decoder_depth=4"],
        {"stages_done": []},
    )
    write_trial_job(
        sweep, "model.decoder_depth_3+model.mask_ratio_0.3", ["model.mask_ratio=0.3", "model.decoder_depth=3"], done
    )  # not a point of the search space
    ran = []

    def fake_trial(search, values):
        ran.append(values)
        write_trial_job(
            search.sweep_dir,
            search.trial_dir(values).name,
            [f"model.mask_ratio={values['mask_ratio']}", f"model.decoder_depth={values['decoder_depth']}"],
            {**done, "linprobe_val_top1": 100 * values["mask_ratio"]},
        )
        return 0, 100 * values["mask_ratio"]

    monkeypatch.setattr(optuna_search, "run_trial", fake_trial)
    assert optuna_search.main([f"log_dir={tmp_path}", "n_trials=3"]) == 0
    assert ran[0] == {"mask_ratio": 0.3, "decoder_depth": 4} and len(ran) == 2
    assert {"mask_ratio": 0.5, "decoder_depth": 2} not in ran
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    expected = max([61.5, *(100 * values["mask_ratio"] for values in ran)])
    assert best["best_value"] == pytest.approx(expected) and best["finished_trials"] == 3
    trials = (sweep / "trials.csv").read_text().splitlines()
    assert trials[0] == "number,model.mask_ratio,model.decoder_depth,linprobe_val_top1,state,dir" and len(trials) == 4
    assert trials[1].endswith(",61.5,complete,model.decoder_depth_2+model.mask_ratio_0.5")
    assert (sweep / "summary.csv").is_file() and (sweep / "summary.md").is_file()
    # Everything finished: running it again runs nothing.
    ran.clear()
    assert optuna_search.main([f"log_dir={tmp_path}", "n_trials=3"]) == 0 and ran == []


def test_optuna_search_stops_when_a_trial_stops_on_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(optuna_search, "run_trial", lambda search, values: (2, None))
    assert optuna_search.main([f"log_dir={tmp_path}", "n_trials=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: trial 0 (model.decoder_depth_") and "stopped on bad input" in err
    monkeypatch.setattr(optuna_search, "run_trial", lambda search, values: (143, None))
    assert optuna_search.main([f"log_dir={tmp_path}", "n_trials=3"]) == 143
    assert capsys.readouterr().err.startswith("interrupted: trial 0 was stopped (exit code 143)")


def test_optuna_search_without_optuna_names_the_sweeps_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert optuna_search.main(["n_trials=2"]) == 2
    assert capsys.readouterr().err == (
        "error: the Optuna search (python -m mae.sweeps.optuna_search) needs optuna: "
        "pip install 'mae-lightning[sweeps]' "
        "(from a checkout: pip install -e '.[sweeps]')\n"
    )


def test_objective_returns_the_configured_result(config_factory, monkeypatch):
    cfg = config_factory(["task=ablation"])
    monkeypatch.setattr(
        ablation, "pretrain_then_probe", lambda cfg: {"linprobe_val_top1": 71.5, "knn_top1_pretrained": 0.7}
    )
    assert ablation.objective(cfg) == 71.5
    monkeypatch.setattr(ablation, "pretrain_then_probe", lambda cfg: {"knn_top1_pretrained": 0.7})
    with pytest.raises(SetupError, match=r"ablation.objective=linprobe_val_top1 is not among the run's results"):
        ablation.objective(cfg)


# Downstream configs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hydra_initialised", [False, True])
def test_downstream_config_has_the_runs_choices_values_checkpoint_and_own_recipe(
    config_factory, tmp_path, hydra_initialised
):
    cfg = config_factory(
        [
            "task=ablation",
            "model=mae_vit_tiny_patch4",
            "model.embed_dim=48",
            "model.mask_ratio=0.6",
            "data.train_samples=100",
            "schedule.batch_size=64",
            "seed=7",
            "sweep_name=probe_test",
            "ablation.overrides.linprobe=['schedule.epochs=3']",
        ]
    )
    run_dir = tmp_path / "run"
    if hydra_initialised:  # as inside train.py
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            stage = compose_stage(cfg, "linprobe", run_dir)
    else:  # as after the compose API (tests, notebooks)
        assert not GlobalHydra.instance().is_initialized()
        stage = compose_stage(cfg, "linprobe", run_dir)
    assert stage.task_name == "linprobe" and stage.job._target_ == "mae.jobs.downstream.downstream"
    assert stage.model == cfg.model  # the same encoder, key by key (the group choice, then the overridden values)
    assert stage.model._target_ == "mae.models.mae_vit_tiny_patch4" and stage.model.embed_dim == 48
    assert (stage.data.train_samples, stage.seed, stage.sweep_name) == (100, 7, "probe_test")
    assert stage.pretrained == str(run_dir / "checkpoints" / "last.ckpt")
    assert stage.paths.output_dir == str(run_dir / "linprobe")
    assert stage.trainer.default_root_dir == str(run_dir / "linprobe")
    # The probe's own recipe, not the pre-training's: LARS schedule (its batch), the stage's override on top.
    assert stage.schedule.blr == 6.4 and stage.schedule.epochs == 3 and stage.trainer.max_epochs == 3
    assert stage.data.batch_size == 256 and stage.module._target_ == "mae.training.LinearProbeModule"


def test_unknown_downstream_stage_is_a_one_line_error(config_factory):
    cfg = config_factory(["task=ablation", "ablation.downstream=[linprobe,knn]"])
    with pytest.raises(SetupError, match=r"unknown stage 'knn'; the stages are linprobe, finetune") as error:
        ablation.pretrain_then_probe(cfg)
    assert "\n" not in str(error.value)


# The job ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny ablation run that pre-trained and linear-probed: (run directory, returned record)."""
    run_dir = tmp_path_factory.mktemp("ablation") / "run"
    cfg = compose_config(["task=ablation", *SMALL], output_dir=run_dir)
    return run_dir, ablation.pretrain_then_probe(cfg)


def forbid_training(monkeypatch) -> None:
    def refuse(cfg):
        raise AssertionError("trained although the stage had finished")

    monkeypatch.setattr(ablation, "pretrain", refuse)
    monkeypatch.setattr(ablation, "downstream", refuse)


def test_job_pretrains_then_probes_into_one_run_directory(finished_run):
    run_dir, record = finished_run
    assert json.loads((run_dir / "results.json").read_text()) == record
    assert record["stages_done"] == ["pretrain", "linprobe"]
    assert record["optimizer_steps"] == STEPS_PER_EPOCH and 0.0 <= record["knn_top1_pretrained"] <= 1.0
    assert 0.0 <= record["linprobe_top1"] <= record["linprobe_top5"] <= 100.0
    assert record["pretrain_seconds"] > 0 and record["linprobe_seconds"] >= record["linprobe_train_seconds"] > 0
    probe = json.loads((run_dir / "linprobe" / "results.json").read_text())
    assert probe["top1"] == record["linprobe_top1"] and probe["num_images"] == 10000
    assert probe["pretrained"] == str(run_dir / "checkpoints" / "last.ckpt")
    # The pre-training's 256-image subset, one epoch at the probe recipe's own batch of 256.
    assert probe["optimizer_steps"] == 1 and probe["effective_batch_size"] == 256
    assert (run_dir / "linprobe" / "checkpoints" / "last.ckpt").is_file()


def test_finished_job_returns_its_record_without_training(finished_run, monkeypatch):
    run_dir, record = finished_run
    files = [run_dir / "results.json", run_dir / "checkpoints" / "last.ckpt", run_dir / "linprobe" / "results.json"]
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in files}
    forbid_training(monkeypatch)
    started = time.perf_counter()
    again = ablation.pretrain_then_probe(compose_config(["task=ablation", *SMALL], output_dir=run_dir))
    assert again == record and time.perf_counter() - started < 5
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in files} == before


def test_job_interrupted_while_probing_redoes_only_the_probe(finished_run, tmp_path, monkeypatch):
    source, record = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    interrupted = {key: value for key, value in results.items() if not key.startswith("linprobe")}
    (run_dir / "results.json").write_text(json.dumps({**interrupted, "stages_done": ["pretrain"]}))
    stale = run_dir / "linprobe" / "checkpoints" / "stale.ckpt"
    stale.write_text("from the interrupted attempt")
    pretrain_ckpt = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    monkeypatch.setattr(ablation, "pretrain", lambda cfg: pytest.fail("pre-trained again"))
    again = ablation.pretrain_then_probe(compose_config(["task=ablation", *SMALL], output_dir=run_dir))
    assert again["stages_done"] == ["pretrain", "linprobe"] and not stale.exists()
    assert again["linprobe_top1"] == pytest.approx(record["linprobe_top1"])  # same seed, same data: same probe
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == pretrain_ckpt


def test_job_interrupted_while_pretraining_resumes_from_last_ckpt(tmp_path):
    run_dir = tmp_path / "run"
    common = ["task=ablation", *SMALL, "schedule.epochs=2", "ablation.downstream=[]"]
    # A run killed after its first epoch leaves its config, checkpoints and logs, but no results.json.
    pretrain(compose_config(common + ["trainer.max_epochs=1"], output_dir=run_dir))
    (run_dir / "results.json").unlink()
    record = ablation.pretrain_then_probe(compose_config(common, output_dir=run_dir))
    assert record["stages_done"] == ["pretrain"]
    assert record["optimizer_steps"] == 2 * STEPS_PER_EPOCH and record["epochs"] == 2
    resumed = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert resumed["ckpt_path"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt", "epoch000.ckpt", "epoch001.ckpt"}


def test_job_refuses_a_run_directory_with_other_settings(finished_run, tmp_path):
    source, _ = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    cfg = compose_config(["task=ablation", *SMALL, "model.mask_ratio=0.6"], output_dir=run_dir)
    with pytest.raises(
        SetupError,
        match=r"holds a run with other model settings \(model.mask_ratio=0.75 there, "
        r"0.6 now\); remove that directory or choose another sweep_name",
    ):
        ablation.pretrain_then_probe(cfg)


def test_job_refuses_a_run_directory_of_another_seed(config_factory, tmp_path):
    """Each seed of a sweep point has its own job directory; one holding another seed's run is not reused."""
    run_dir = tmp_path / "seeded"
    run_dir.mkdir()
    OmegaConf.save(config_factory(["task=ablation", "seed=0"]), run_dir / "config_resolved.yaml")
    ablation.check_same_settings(config_factory(["task=ablation", "seed=0"]), run_dir)
    with pytest.raises(SetupError, match=r"holds a run with other seed settings \(seed=0 there, 1 now\)"):
        ablation.check_same_settings(config_factory(["task=ablation", "seed=1"]), run_dir)


# Summary ------------------------------------------------------------------------------------------------------------


def write_job(
    sweep_dir: Path,
    name: str,
    overrides: list[str],
    results: dict | None,
    downstream: list[str] | None = None,
    sweeper_params: dict | None = None,
) -> None:
    """A job directory as a sweep leaves it: Hydra's .hydra/ files, the run's config and results (when it got there)."""
    job = sweep_dir / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"params": sweeper_params or {}}}}))
    if results is not None:
        values = {key: yaml.safe_load(value) for key, value in (override.split("=") for override in overrides)}
        model = {key.removeprefix("model."): value for key, value in values.items() if key.startswith("model.")}
        config = {
            "model": {"mask_ratio": 0.75, "decoder_depth": 2, **model},
            "seed": values.get("seed", 0),
            "ablation": {"downstream": downstream if downstream is not None else ["linprobe"]},
        }
        (job / "config_resolved.yaml").write_text(yaml.safe_dump(config))
        (job / "results.json").write_text(json.dumps(results))


def done(knn: float, probe: float, pretrain_s: float = 100.0) -> dict:
    return {
        "knn_top1_pretrained": knn,
        "linprobe_top1": probe,
        "pretrain_seconds": pretrain_s,
        "linprobe_seconds": 40.04,
        "stages_done": ["pretrain", "linprobe"],
    }


@pytest.fixture
def mask_ratio_sweep(tmp_path) -> Path:
    """One seed per point (seed not swept): every point is a group of one run."""
    sweep = tmp_path / "mask_ratio"
    params = {"model.mask_ratio": "0.5,0.75,0.9,0.25"}
    for ratio, results in [
        ("0.75", done(0.7012, 71.3)),
        ("0.5", done(0.6543, 68.126)),
        ("0.9", {"knn_top1_pretrained": 0.61, "stages_done": ["pretrain"]}),
        ("0.25", None),
    ]:
        write_job(
            sweep,
            f"model.mask_ratio_{ratio}",
            [f"model.mask_ratio={ratio}", "experiment=sweep_mask_ratio"],
            results,
            sweeper_params=params,
        )
    (sweep / "multirun.yaml").write_text("not a job\n")
    return sweep


UNFINISHED = {"knn_top1_pretrained": 0.99, "pretrain_seconds": 500.0, "stages_done": ["pretrain"]}

SEEDED_RUNS = {
    # mask ratio: [results of seed 0, 1, 2]
    "0.25": [done(0.50, 50.0), None, None],
    "0.5": [done(0.60, 60.0, 100.0), done(0.61, 62.0, 110.0), done(0.62, 64.0, 120.0)],
    "0.75": [done(0.70, 70.0, 100.0), done(0.72, 71.0, 110.0), done(0.74, 72.0, 120.0)],
    "0.9": [done(0.65, 69.5, 100.0), done(0.66, 70.5, 110.0), UNFINISHED],
}


@pytest.fixture
def seeded_sweep(tmp_path) -> Path:
    """sweep_mask_ratio's layout, 4 mask ratios x seeds 0, 1, 2: 0.25 has one finished seed, 0.9 two and one
    unfinished (whose kNN must stay out of the mean)."""
    sweep = tmp_path / "mask_ratio"
    params = {"model.mask_ratio": ",".join(SEEDED_RUNS), "seed": "0,1,2"}
    for ratio, runs in SEEDED_RUNS.items():
        for seed, results in enumerate(runs):
            write_job(
                sweep,
                f"model.mask_ratio_{ratio}+seed_{seed}",
                [f"model.mask_ratio={ratio}", f"seed={seed}", "experiment=sweep_mask_ratio"],
                results,
                sweeper_params=params,
            )
    return sweep


def test_summary_without_seeds_has_one_run_per_point(mask_ratio_sweep):
    written = write_summary(mask_ratio_sweep)
    assert [path.name for path in written] == ["summary.csv", "summary.md", "runs.csv", "model.mask_ratio.png"]
    assert (mask_ratio_sweep / "summary.csv").read_text() == (
        "model.mask_ratio,knn_top1_mean,knn_top1_std,linprobe_top1_mean,linprobe_top1_std,pretrain_seconds_mean,"
        "pretrain_seconds_std,linprobe_seconds_mean,linprobe_seconds_std,n_seeds,status\n"
        "0.25,,,,,,,,,0,0/1 done\n"
        "0.5,65.43,,68.13,,100.0,,40.0,,1,1/1 done\n"
        "0.75,70.12,,71.30,,100.0,,40.0,,1,1/1 done\n"
        "0.9,,,,,,,,,0,0/1 done\n"
    )
    # Every run as it recorded it, the unfinished one's kNN included.
    assert (mask_ratio_sweep / "runs.csv").read_text() == (
        "model.mask_ratio,knn_top1,linprobe_top1,pretrain_seconds,linprobe_seconds,status,job\n"
        "0.25,,,,,not started,model.mask_ratio_0.25\n"
        "0.5,65.43,68.13,100.0,40.0,done,model.mask_ratio_0.5\n"
        "0.75,70.12,71.30,100.0,40.0,done,model.mask_ratio_0.75\n"
        "0.9,61.00,,,,unfinished (linprobe),model.mask_ratio_0.9\n"
    )
    assert (mask_ratio_sweep / "summary.md").read_text() == (
        "# Sweep `mask_ratio`\n\n2 of 4 runs done. Each row is a point: mean ± sample standard deviation "
        "(ddof=1; none for a single run) over its finished runs, one per seed; every run in [runs.csv](runs.csv).\n\n"
        "| model.mask_ratio | kNN top-1, test (%) | linear probe top-1, test (%) | pre-training (s) | linear probe (s) | seeds "
        "| status |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 0.25 |  |  |  |  | 0 | 0/1 done |\n"
        "| 0.5 | 65.43 | 68.13 | 100.0 | 40.0 | 1 | 1/1 done |\n"
        "| 0.75 | 70.12 | 71.30 | 100.0 | 40.0 | 1 | 1/1 done |\n"
        "| 0.9 |  |  |  |  | 0 | 0/1 done |\n\n"
        "Against the best point, a point differs beyond the noise when |mean - best mean| > its std + the best's std "
        "(a point with fewer than 2 finished seeds has no std and is not compared):\n\n"
        "- kNN top-1, test (%): best `model.mask_ratio=0.75` (70.12); not compared (fewer than 2 seeds): "
        "`model.mask_ratio=0.5`\n"
        "- linear probe top-1, test (%): best `model.mask_ratio=0.75` (71.30); not compared (fewer than 2 seeds): "
        "`model.mask_ratio=0.5`\n\n"
        "![model.mask_ratio](model.mask_ratio.png)\n"
    )
    png = (mask_ratio_sweep / "model.mask_ratio.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_summary_groups_seeds_into_mean_and_sample_std(seeded_sweep):
    written = write_summary(seeded_sweep)
    assert [path.name for path in written] == ["summary.csv", "summary.md", "runs.csv", "model.mask_ratio.png"]
    # 0.5: probe 60, 62, 64 -> 62 ± 2 (ddof=1); 0.9: only its two finished seeds (kNN 65, 66 -> 65.5 ± 0.71).
    assert (seeded_sweep / "summary.csv").read_text() == (
        "model.mask_ratio,knn_top1_mean,knn_top1_std,linprobe_top1_mean,linprobe_top1_std,pretrain_seconds_mean,"
        "pretrain_seconds_std,linprobe_seconds_mean,linprobe_seconds_std,n_seeds,status\n"
        "0.25,50.00,,50.00,,100.0,,40.0,,1,1/3 done\n"
        "0.5,61.00,1.00,62.00,2.00,110.0,10.0,40.0,0.0,3,3/3 done\n"
        "0.75,72.00,2.00,71.00,1.00,110.0,10.0,40.0,0.0,3,3/3 done\n"
        "0.9,65.50,0.71,70.00,0.71,105.0,7.1,40.0,0.0,2,2/3 done\n"
    )
    runs = (seeded_sweep / "runs.csv").read_text().splitlines()
    assert runs[0] == "model.mask_ratio,seed,knn_top1,linprobe_top1,pretrain_seconds,linprobe_seconds,status,job"
    assert [row.split(",")[:2] for row in runs[1:]] == [
        [ratio, str(seed)] for ratio in SEEDED_RUNS for seed in range(3)
    ]
    assert runs[1:4] == [
        "0.25,0,50.00,50.00,100.0,40.0,done,model.mask_ratio_0.25+seed_0",
        "0.25,1,,,,,not started,model.mask_ratio_0.25+seed_1",
        "0.25,2,,,,,not started,model.mask_ratio_0.25+seed_2",
    ]
    assert runs[-1] == "0.9,2,99.00,,500.0,,unfinished (linprobe),model.mask_ratio_0.9+seed_2"
    md = (seeded_sweep / "summary.md").read_text()
    assert md.startswith("# Sweep `mask_ratio`\n\n9 of 12 runs done.")
    assert (
        "| model.mask_ratio | kNN top-1, test (%) | linear probe top-1, test (%) | pre-training (s) | linear probe (s) | seeds "
        "| status |\n|---|---|---|---|---|---|---|\n"
        "| 0.25 | 50.00 | 50.00 | 100.0 | 40.0 | 1 | 1/3 done |\n"
        "| 0.5 | 61.00 ± 1.00 | 62.00 ± 2.00 | 110.0 ± 10.0 | 40.0 ± 0.0 | 3 | 3/3 done |\n"
        "| 0.75 | 72.00 ± 2.00 | 71.00 ± 1.00 | 110.0 ± 10.0 | 40.0 ± 0.0 | 3 | 3/3 done |\n"
        "| 0.9 | 65.50 ± 0.71 | 70.00 ± 0.71 | 105.0 ± 7.1 | 40.0 ± 0.0 | 2 | 2/3 done |\n"
    ) in md
    # Probe: 0.5 is 9 below the best 0.75, beyond 2 + 1; 0.9 is 1 below, within 0.71 + 1; 0.25 has one seed.
    assert (
        "- kNN top-1, test (%): best `model.mask_ratio=0.75` (72.00 ± 2.00); differ beyond the noise: "
        "`model.mask_ratio=0.5`, `model.mask_ratio=0.9`; not compared (fewer than 2 seeds): "
        "`model.mask_ratio=0.25`\n"
    ) in md
    assert (
        "- linear probe top-1, test (%): best `model.mask_ratio=0.75` (71.00 ± 1.00); differ beyond the noise: "
        "`model.mask_ratio=0.5`; within the noise: `model.mask_ratio=0.9`; not compared (fewer than 2 seeds): "
        "`model.mask_ratio=0.25`\n"
    ) in md
    assert not (seeded_sweep / "seed.png").exists()


def test_summary_points_and_noise_check_hold_the_unrounded_numbers(seeded_sweep):
    summary = summarize(seeded_sweep)
    assert (summary.parameters, summary.run_parameters) == (["model.mask_ratio"], ["model.mask_ratio", "seed"])
    assert [point["model.mask_ratio"] for point in summary.points] == [0.25, 0.5, 0.75, 0.9]
    assert [point["n_seeds"] for point in summary.points] == [1, 3, 3, 2]
    ninety = summary.points[3]
    assert ninety["knn_top1_mean"] == pytest.approx(65.5) and ninety["knn_top1_std"] == pytest.approx(0.5**0.5)
    assert ninety["linprobe_top1_std"] == pytest.approx(statistics.stdev([69.5, 70.5]))
    assert summary.points[0]["linprobe_top1_mean"] == 50.0 and summary.points[0]["linprobe_top1_std"] is None
    probe = next(metric for metric in summary.metrics if metric.column == "linprobe_top1")
    assert noise_check(summary.points, probe) == NoiseCheck(best=2, beyond=[1], within=[3], not_compared=[0])
    assert noise_check(summary.points[:1], probe) is None  # nothing to compare with
    assert mean_std([70.0, 71.0, 72.0]) == (71.0, 1.0) and mean_std([3.0]) == (3.0, None)
    assert mean_std([]) == (None, None)


def test_summary_plot_draws_each_mean_with_a_std_error_bar(seeded_sweep):
    summary = summarize(seeded_sweep)
    figure = parameter_figure(
        summary.points,
        "model.mask_ratio",
        summary.parameters,
        ["knn_top1", "linprobe_top1"],
        {"linprobe_top1": "probe", "knn_top1": "kNN"},
    )
    try:
        containers = figure.axes[0].containers
        assert [type(c).__name__ for c in containers] == ["ErrorbarContainer"] * 2
        probe = next(c for c in containers if c.get_label() == "probe")
        line, _, (bars,) = probe.lines
        assert list(line.get_xdata()) == [0.25, 0.5, 0.75, 0.9]
        assert list(line.get_ydata()) == pytest.approx([50.0, 62.0, 71.0, 70.0])
        # Each bar spans mean ± std; the single-seed point has none to draw.
        segments = [segment.tolist() for segment in bars.get_segments()]
        spread = statistics.stdev([69.5, 70.5])
        assert segments == [
            [],
            [[0.5, 60.0], [0.5, 64.0]],
            [[0.75, 70.0], [0.75, 72.0]],
            [[0.9, pytest.approx(70.0 - spread)], [0.9, pytest.approx(70.0 + spread)]],
        ]
    finally:
        plt.close(figure)


def test_summary_of_a_command_line_grid_groups_seeds_by_both_swept_parameters(tmp_path):
    sweep = tmp_path / "grid"
    for depth in (1, 2):
        for ratio in (0.5, 0.75):
            for seed in (0, 1):
                probe, finetune = 60 + depth + ratio + seed, 70.0 + depth + 2 * seed
                results = {
                    **done(0.6 + ratio / 10, probe),
                    "finetune_top1": finetune,
                    "stages_done": ["pretrain", "linprobe", "finetune"],
                }
                overrides = [
                    f"model.decoder_depth={depth}",
                    f"model.mask_ratio={ratio}",
                    f"seed={seed}",
                    "schedule.epochs=2",
                ]
                write_job(sweep, f"d{depth}r{ratio}s{seed}", overrides, results, downstream=["linprobe", "finetune"])
    write_summary(sweep)
    lines = (sweep / "summary.csv").read_text().splitlines()
    assert lines[0] == (
        "model.decoder_depth,model.mask_ratio,knn_top1_mean,knn_top1_std,linprobe_top1_mean,"
        "linprobe_top1_std,finetune_top1_mean,finetune_top1_std,pretrain_seconds_mean,"
        "pretrain_seconds_std,linprobe_seconds_mean,linprobe_seconds_std,n_seeds,status"
    )
    # Fine-tune top-1 70 + depth + 2 x seed: mean 71 + depth, std sqrt(2) over seeds 0 and 1.
    assert [line.split(",")[:2] + line.split(",")[6:8] + line.split(",")[-2:] for line in lines[1:]] == [
        ["1", "0.5", "72.00", "1.41", "2", "2/2 done"],
        ["1", "0.75", "72.00", "1.41", "2", "2/2 done"],
        ["2", "0.5", "73.00", "1.41", "2", "2/2 done"],
        ["2", "0.75", "73.00", "1.41", "2", "2/2 done"],
    ]
    assert len((sweep / "runs.csv").read_text().splitlines()) == 1 + 8
    for name in ("model.decoder_depth.png", "model.mask_ratio.png"):
        assert (sweep / name).read_bytes().startswith(b"\x89PNG")
    assert not (sweep / "seed.png").exists()


def test_summary_command_line(mask_ratio_sweep, tmp_path, capsys):
    assert summary_main([str(mask_ratio_sweep)]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        str(mask_ratio_sweep / name) for name in ("summary.csv", "summary.md", "runs.csv")
    ]
    (tmp_path / "empty").mkdir()
    assert summary_main([str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "has no job directories" in error and error.count("\n") == 1
    assert summary_main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing'} is not a directory\n"


def test_summary_callback_writes_into_the_sweep_directory(seeded_sweep):
    SweepSummaryCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(seeded_sweep)}}}))
    assert len((seeded_sweep / "summary.csv").read_text().splitlines()) == 1 + 4
    assert len((seeded_sweep / "runs.csv").read_text().splitlines()) == 1 + 12


# A real sweep -------------------------------------------------------------------------------------------------------


def run_sweep(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    # The tiny settings stay out of the job directories' names, as experiment= does.
    # No paths override: the sweep directory resolves from where train.py starts (tmp_path), as with `make sweep`.
    # The mask-ratio sweep scores by kNN alone; the probe is added back so that the aggregation of a downstream stage
    # is tested too.
    small = [*SMALL, "ablation.downstream=[linprobe]"]
    excluded = ["experiment"] + [override.split("=")[0] for override in small]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "experiment=sweep_mask_ratio",
            *small,
            *overrides,
            f"hydra.job.config.override_dirname.exclude_keys=[{','.join(excluded)}]",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_multirun_sweep_aggregates_seeds_and_skips_finished_jobs_when_run_again(tmp_path):
    """One point, two of the config's seeds (as many jobs as before seeds were swept): a job directory per seed, one
    summary row with their mean and std."""
    sweep_args = ["model.mask_ratio=0.75", "seed=0,1"]
    result = run_sweep(tmp_path, sweep_args)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "outputs" / "sweeps" / "mask_ratio"
    jobs = [sweep / "model.mask_ratio_0.75+seed_0", sweep / "model.mask_ratio_0.75+seed_1"]
    configs = [yaml.safe_load((job / "config_resolved.yaml").read_text()) for job in jobs]
    assert [(config["model"]["mask_ratio"], config["seed"]) for config in configs] == [(0.75, 0), (0.75, 1)]
    assert [yaml.safe_load((job / "linprobe" / "config_resolved.yaml").read_text())["seed"] for job in jobs] == [0, 1]
    records = [json.loads((job / "results.json").read_text()) for job in jobs]
    runs = (sweep / "runs.csv").read_text().splitlines()
    assert runs[0].startswith("model.mask_ratio,seed,knn_val_top1,knn_top1,linprobe_val_top1,linprobe_top1,")
    assert [row.split(",")[:2] for row in runs[1:]] == [["0.75", "0"], ["0.75", "1"]]
    assert all(row.endswith(f",done,{job.name}") for row, job in zip(runs[1:], jobs))
    header, row = (line.split(",") for line in (sweep / "summary.csv").read_text().splitlines())
    point = dict(zip(header, row))
    probes = [record["linprobe_top1"] for record in records]
    assert (point["model.mask_ratio"], point["n_seeds"], point["status"]) == ("0.75", "2", "2/2 done")
    assert point["linprobe_top1_mean"] == f"{statistics.fmean(probes):.2f}"
    assert point["linprobe_top1_std"] == f"{statistics.stdev(probes):.2f}"
    assert (sweep / "model.mask_ratio.png").stat().st_size > 0 and "| 0.75 |" in (sweep / "summary.md").read_text()

    again = run_sweep(tmp_path, sweep_args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("every stage finished earlier") + again.stderr.count("every stage finished earlier") == 2
    assert [json.loads((job / "results.json").read_text()) for job in jobs] == records


@pytest.mark.slow
def test_optuna_search_runs_sweep_points_through_train_py_and_resumes(tmp_path, monkeypatch):
    """Two real tiny trials: each a train.py sweep point in the sweep directory; the best value is the best trial's
    probe top-1; running the search again runs nothing."""
    monkeypatch.chdir(tmp_path)
    small = [override for override in SMALL if not override.startswith("model.decoder_depth=")]
    arguments = ["n_trials=2", "sampler.n_startup_trials=2", "params.decoder_depth.choices=[1,2]", *small]
    assert optuna_search.main(arguments) == 0
    sweep = tmp_path / "outputs" / "sweeps" / "optuna"
    jobs = sorted(path.parent for path in sweep.glob("*/results.json"))
    assert len(jobs) == 2 and all(job.name.startswith("model.decoder_depth_") for job in jobs)
    probes = [json.loads((job / "results.json").read_text())["linprobe_val_top1"] for job in jobs]
    configs = [yaml.safe_load((job / "config_resolved.yaml").read_text()) for job in jobs]
    assert all(config["sweep_name"] == "optuna" and config["task_name"] == "ablation" for config in configs)
    assert [
        f"model.decoder_depth_{c['model']['decoder_depth']}+model.mask_ratio_{c['model']['mask_ratio']!r}"
        for c in configs
    ] == [job.name for job in jobs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(probes)) and best["objective"] == "linprobe_val_top1"
    assert best["best_dir"] == jobs[probes.index(max(probes))].name
    runs = (sweep / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 2 and runs[0].startswith("model.decoder_depth,model.mask_ratio,")
    assert (sweep / "summary.md").is_file() and (sweep / "model.mask_ratio.png").stat().st_size > 0
    before = [(job / "results.json").read_text() for job in jobs]
    monkeypatch.setattr(optuna_search, "run_trial", lambda *args: pytest.fail("a finished trial ran again"))
    assert optuna_search.main(arguments) == 0
    assert [(job / "results.json").read_text() for job in jobs] == before


def test_summary_without_matplotlib_writes_the_tables_and_says_why_there_are_no_plots(
    seeded_sweep, monkeypatch, caplog
):
    for name in [key for key in sys.modules if key == "matplotlib" or key.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level("WARNING", logger="mae.sweeps.summary"):
        written = write_summary(seeded_sweep)
    assert [path.name for path in written] == ["summary.csv", "summary.md", "runs.csv"]
    assert not list(seeded_sweep.glob("*.png"))
    assert "needs matplotlib" in caplog.text and "mae-lightning[sweeps]" in caplog.text
