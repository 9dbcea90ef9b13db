"""Optuna search over ablation points: ``python -m mae.sweeps.optuna_search [key=value ...] [trial overrides ...]``.

The settings are conf/optuna_search.yaml's (the experiment, the sweep's name, ``n_trials``, the direction, the
seeded TPE sampler and the search space): an argument whose first key is one of that file's top-level keys sets the
search, every other override goes to every trial. A trial is the point a grid sweep runs, the same command::

    python train.py experiment=sweep_cpu sweep_name=optuna model.mask_ratio=0.37 model.decoder_depth=4 [overrides]

run in its own directory of the sweep, ``<log_dir>/sweeps/<sweep_name>/model.decoder_depth_4+model.mask_ratio_0.37``
(the name a multirun gives it), and scored by its ``results.json``'s value of ``ablation.objective`` (the trial
config's: ``linprobe_top1`` for sweep_cpu). Optuna's ask-and-tell interface drives the loop (public API of Optuna 4
and later); the trials run one after the other, each already using every core of a CPU machine.

After each trial the sweep directory gets ``trials.csv`` (every trial: number, parameters, value, state, directory),
``optimization_results.yaml`` (the best trial) and the grid sweeps' ``summary.csv``, ``summary.md``, ``runs.csv``
and plots (:func:`mae.sweeps.summary.write_summary`).

Resuming: the sweep directory is the study's record. Running the same command again reads every finished trial
back from its ``results.json`` (its parameters from its overrides) into the study without running it, continues an
interrupted trial first (its pre-training resumes from ``last.ckpt``), and runs trials until ``n_trials`` have
finished. The sampler's seed is offset by the number of trials read back, so that its random start does not
propose them again; a search that was never interrupted is reproducible from ``sampler.seed``.

Bad settings (``n_trials=0``, a parameter that is no key of the trial config, a range the model refuses, an
override Hydra cannot apply) end the program with one ``error: ...`` line and exit code 2 before any trial runs; a
trial that stops with a setup error (exit code 2) stops the search the same way, an interrupted trial stops it with
the trial's exit code (run the command again to resume).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mae.data.errors import one_line
from mae.runs.atomic_files import write_text_atomically
from mae.runs.config import CONF_DIR, REPO_DIR, compose_in_repo, instantiate_node
from mae.runs.optional import require
from mae.sweeps.overrides import override_value
from mae.sweeps.records import read_results
from mae.sweeps.summary import SweepError, write_summary
from mae.sweeps.sweep_runs import load_jobs

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

CONFIG_NAME = "optuna_search"
FEATURE = "the Optuna search (python -m mae.sweeps.optuna_search)"
TRIALS_FILE = "trials.csv"
BEST_FILE = "optimization_results.yaml"
DIRECTIONS = ("maximize", "minimize")
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_ABSENT = object()


class SearchError(ValueError):
    """Bad search settings, or a trial that stopped on bad input; ``str()`` is one line for the user."""


@dataclass(frozen=True)
class Parameter:
    """One dimension of the search space: a key of the trial config and its float range or choices."""

    name: str
    key: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def distribution(self) -> optuna.distributions.BaseDistribution:
        distributions = _optuna().distributions
        if self.choices is not None:
            return distributions.CategoricalDistribution(self.choices)
        return distributions.FloatDistribution(self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return any(value == choice and type(value) is type(choice) for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        return self.step is None or math.isclose(
            (value - self.low) / self.step, round((value - self.low) / self.step), abs_tol=1e-6
        )

    def boundary_values(self) -> list[Any]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


@dataclass
class Search:
    """The checked settings: what each trial runs and where, and the search space."""

    settings: DictConfig
    trial_overrides: list[str]
    parameters: list[Parameter]
    sweep_dir: Path
    log_dir: Path
    objective: str
    base_overrides: list[str] = field(default_factory=list)

    def trial_command(self, values: dict[str, Any]) -> list[str]:
        """train.py's command line for a trial with ``values`` (by parameter name)."""
        return [
            sys.executable,
            str(REPO_DIR / "train.py"),
            *self.base_overrides,
            *self.parameter_overrides(values),
            *self.trial_overrides,
            f"hydra.run.dir={override_value(str(self.trial_dir(values)))}",
        ]

    def parameter_overrides(self, values: dict[str, Any]) -> list[str]:
        return [f"{parameter.key}={override_value(values[parameter.name])}" for parameter in self.parameters]

    def trial_dir(self, values: dict[str, Any]) -> Path:
        """The job directory a multirun would give the trial's overrides (Hydra's override_dirname of them)."""
        items = sorted((parameter.key, override_value(values[parameter.name])) for parameter in self.parameters)
        return self.sweep_dir / "+".join(f"{key}_{value}" for key, value in items)


def _optuna() -> Any:
    return require("optuna", "sweeps", FEATURE)


# Settings -----------------------------------------------------------------------------------------------------------


def search_keys() -> set[str]:
    """The top-level keys of conf/optuna_search.yaml: arguments starting with one of them set the search."""
    return set(OmegaConf.load(CONF_DIR / f"{CONFIG_NAME}.yaml").keys())


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(search overrides, trial overrides): by the first key of each ``key=value`` (``+``, ``++``, ``~`` aside)."""
    keys = search_keys()
    search, trial = [], []
    for argument in argv:
        key = argument.split("=", 1)[0].lstrip("+~").split(".", 1)[0]
        (search if key in keys else trial).append(argument)
    return search, trial


def check_settings(settings: DictConfig) -> list[Parameter]:
    """The search space, after checking every setting (a one-line :class:`SearchError` naming the key)."""
    _check_int("n_trials", settings.n_trials, 1)
    _check_int("sampler.n_startup_trials", settings.sampler.n_startup_trials, 0)
    _check_int("sampler.seed", settings.sampler.seed, 0)
    if settings.direction not in DIRECTIONS:
        raise SearchError(f"direction={settings.direction} must be one of {', '.join(DIRECTIONS)}")
    for key in ("experiment", "sweep_name"):
        if not isinstance(settings[key], str) or not settings[key] or "/" in settings[key]:
            raise SearchError(f"{key}={settings[key]!r} must be a name")
    params = settings.get("params")
    if not isinstance(params, DictConfig) or not params:
        raise SearchError("params is empty: give at least one parameter to search (params.<name>.key=...)")
    parameters = [_parameter(str(name), node) for name, node in params.items()]
    keys = [parameter.key for parameter in parameters]
    if len(set(keys)) != len(keys):
        raise SearchError(f"params search one key twice ({', '.join(keys)})")
    return parameters


def _parameter(name: str, node: Any) -> Parameter:
    where = f"params.{name}"
    if not isinstance(node, DictConfig):
        raise SearchError(f"{where}={node!r} must be a mapping with key and low/high or choices")
    spec = OmegaConf.to_container(node, resolve=True)
    unknown = sorted(set(spec) - {"key", "low", "high", "step", "log", "choices"})
    if unknown:
        raise SearchError(
            f"{where} has unknown field(s) {', '.join(unknown)} (known: key, low, high, step, log, choices)"
        )
    key = spec.get("key")
    if not isinstance(key, str) or not key:
        raise SearchError(f"{where}.key={key!r} must name a key of the trial config, e.g. model.mask_ratio")
    if spec.get("choices") is not None:
        choices = spec["choices"]
        if set(spec) - {"key", "choices"}:
            raise SearchError(f"{where} gives both choices and a range; give one")
        if not isinstance(choices, list) or not choices or len(set(map(repr, choices))) != len(choices):
            raise SearchError(f"{where}.choices={choices!r} must be a non-empty list of distinct values")
        if any(not isinstance(choice, (bool, int, float, str)) and choice is not None for choice in choices):
            raise SearchError(f"{where}.choices={choices!r} must hold numbers, strings, booleans or null")
        return Parameter(name, key, choices=tuple(choices))
    low, high, step, log_scale = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    for field_name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SearchError(f"{where}.{field_name}={value!r} must be a number (or give choices)")
    if not low < high:
        raise SearchError(f"{where}: low={low} must be below high={high}")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= high - low
    ):
        raise SearchError(f"{where}.step={step!r} must be positive and at most high - low, or null")
    if not isinstance(log_scale, bool) or (log_scale and (low <= 0 or step is not None)):
        raise SearchError(f"{where}.log={log_scale!r} must be true or false; true needs low > 0 and no step")
    return Parameter(
        name, key, low=float(low), high=float(high), step=None if step is None else float(step), log=log_scale
    )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SearchError(f"{name}={value!r} must be an integer of at least {minimum}")


def prepare(argv: Sequence[str]) -> Search:
    """Compose and check the search and its trial config (every parameter's boundary values included): a
    :class:`SearchError` or a Hydra/OmegaConf error before any trial runs."""
    search_overrides, trial_overrides = split_arguments(argv)
    settings = compose_in_repo(CONFIG_NAME, search_overrides)
    parameters = check_settings(settings)
    log_dir = Path(settings.log_dir).resolve() if settings.log_dir is not None else Path.cwd() / "outputs"
    base = [
        f"experiment={settings.experiment}",
        f"sweep_name={settings.sweep_name}",
        f"paths.log_dir={override_value(str(log_dir))}",
    ]
    trial_cfg = compose_in_repo("train", [*base, *trial_overrides])
    given = {override.split("=", 1)[0].lstrip("+~") for override in trial_overrides}
    for parameter in parameters:
        if parameter.key in given:
            raise SearchError(
                f"{parameter.key} is searched (params.{parameter.name}) and also given as an override; "
                f"drop the override or the parameter (~params.{parameter.name})"
            )
        if OmegaConf.select(trial_cfg, parameter.key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
            raise SearchError(
                f"params.{parameter.name}.key={parameter.key} is not a key of the trial config "
                f"(experiment={settings.experiment})"
            )
    objective = OmegaConf.select(trial_cfg, "ablation.objective", default=None)
    if not objective:
        raise SearchError(
            f"experiment={settings.experiment} is no ablation point: its config has no "
            "ablation.objective for the search to optimise"
        )
    _check_values(parameters, base, trial_overrides)
    return Search(
        settings,
        trial_overrides,
        parameters,
        log_dir / "sweeps" / str(settings.sweep_name),
        log_dir,
        str(objective),
        base,
    )


def _check_values(parameters: list[Parameter], base: list[str], trial_overrides: list[str]) -> None:
    """Compose the trial config with each parameter's boundary values and build its model (which checks them)."""
    for parameter in parameters:
        for value in parameter.boundary_values():
            override = f"{parameter.key}={override_value(value)}"
            try:
                cfg = compose_in_repo("train", [*base, *trial_overrides, override])
                if parameter.key.startswith("model."):
                    instantiate_node(cfg.model)
            except (ValueError, TypeError, HydraException, OmegaConfBaseException) as error:
                raise SearchError(f"params.{parameter.name}: {override} is refused ({one_line(error)})") from error


# The study ------------------------------------------------------------------------------------------------------------


@dataclass
class EarlierTrials:
    """What the sweep directory holds for this search space: finished trials (values, objective) and unfinished
    ones (values), each once."""

    finished: list[tuple[dict[str, Any], float]]
    unfinished: list[dict[str, Any]]


def earlier_trials(search: Search) -> EarlierTrials:
    """The job directories of the sweep whose parameters lie in the search space."""
    finished: list[tuple[dict[str, Any], float]] = []
    unfinished: list[dict[str, Any]] = []
    if not search.sweep_dir.is_dir():
        return EarlierTrials(finished, unfinished)
    for job in load_jobs(search.sweep_dir):
        values = {parameter.name: job.value(parameter.key) for parameter in search.parameters}
        if not all(parameter.contains(values[parameter.name]) for parameter in search.parameters):
            log.info("%s: not a point of this search space; left out of the study", job.name)
            continue
        value = job.results.get(search.objective)
        if job.status == "done" and value is not None:
            finished.append((values, float(value)))
        elif values not in unfinished:
            unfinished.append(values)
    return EarlierTrials(finished, unfinished)


def create_study(search: Search, earlier: EarlierTrials) -> optuna.Study:
    """An in-memory study holding the finished trials, the unfinished ones queued first; its seeded TPE sampler
    offset by the trials read back."""
    optuna = _optuna()
    settings = search.settings
    sampler = optuna.samplers.TPESampler(
        seed=int(settings.sampler.seed) + len(earlier.finished), n_startup_trials=int(settings.sampler.n_startup_trials)
    )
    study = optuna.create_study(study_name=str(settings.sweep_name), direction=str(settings.direction), sampler=sampler)
    distributions = {parameter.name: parameter.distribution() for parameter in search.parameters}
    for values, value in earlier.finished:
        study.add_trial(
            optuna.trial.create_trial(
                params=values,
                distributions=distributions,
                value=value,
                user_attrs={"dir": search.trial_dir(values).name},
            )
        )
    for values in earlier.unfinished:
        study.enqueue_trial(values)
    return study


def run_trial(search: Search, values: dict[str, Any]) -> tuple[int, float | None]:
    """Run train.py for one trial; (its exit code, the objective from its results.json or None)."""
    command = search.trial_command(values)
    log.info("trial: %s", " ".join(command[2:]))
    process = subprocess.Popen(command, cwd=os.getcwd())
    # SIGTERM/SIGUSR1 (a scheduler's preemption) go on to the trial, which saves its checkpoint and stops; the
    # search then stops with its exit code.
    forwarded = {
        number: signal.signal(number, lambda received, _frame: process.send_signal(received))
        for number in FORWARDED_SIGNALS
    }
    try:
        code = process.wait()
    except KeyboardInterrupt:  # Ctrl+C reached the trial too: let it stop
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    finally:
        for number, handler in forwarded.items():
            signal.signal(number, handler)
    value = read_results(search.trial_dir(values)).get(search.objective) if code == 0 else None
    return code, None if value is None else float(value)


def search_loop(search: Search) -> optuna.Study:
    """Run trials until ``n_trials`` have finished (those read back included); write the files after each."""
    optuna = _optuna()
    earlier = earlier_trials(search)
    study = create_study(search, earlier)
    distributions = {parameter.name: parameter.distribution() for parameter in search.parameters}
    n_trials = int(search.settings.n_trials)
    done = len(earlier.finished)
    if done:
        log.info("%d finished trial(s) read back from %s", done, search.sweep_dir)
    while done < n_trials:
        trial = study.ask(distributions)
        values = dict(trial.params)
        trial.set_user_attr("dir", search.trial_dir(values).name)
        code, value = run_trial(search, values)
        if code == 2:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            write_files(search, study)
            raise SearchError(
                f"trial {trial.number} ({search.trial_dir(values).name}) stopped on bad input (its "
                "error: line above); no further trial was run"
            )
        if code > 128 or code < 0:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            write_files(search, study)
            raise Interrupted(code if code > 0 else 128 - code, trial.number)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning(
                "trial %d (%s) failed (exit code %d%s)",
                trial.number,
                search.trial_dir(values).name,
                code,
                "" if code else f", no {search.objective} in its results.json",
            )
            if code == 0:
                write_files(search, study)
                raise SearchError(
                    f"trial {trial.number} finished without {search.objective} in its results.json: "
                    "ablation.objective must name a result the trial's stages record"
                )
        else:
            study.tell(trial, value)
            done += 1
            log.info("trial %d: %s=%s (%d of %d finished)", trial.number, search.objective, value, done, n_trials)
        write_files(search, study)
    return study


class Interrupted(Exception):
    """A trial was stopped by a signal; the search stops with the trial's exit code."""

    def __init__(self, exit_code: int, number: int) -> None:
        super().__init__(
            f"trial {number} was stopped (exit code {exit_code}); run the same command again to resume "
            "from the finished trials"
        )
        self.exit_code = exit_code


# Files ---------------------------------------------------------------------------------------------------------------


def write_files(search: Search, study: optuna.Study) -> None:
    """trials.csv, optimization_results.yaml (the best finished trial) and the sweep summary."""
    search.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(search.sweep_dir / TRIALS_FILE, trials_table(search, study))
    best = best_trial(study)
    if best is not None:
        record = {
            "name": str(search.settings.sweep_name),
            "direction": str(search.settings.direction),
            "objective": search.objective,
            "best_value": best.value,
            "best_params": {parameter.key: best.params[parameter.name] for parameter in search.parameters},
            "best_trial": best.number,
            "best_dir": best.user_attrs.get("dir"),
            "finished_trials": sum(trial.state.name == "COMPLETE" for trial in study.trials),
        }
        write_text_atomically(search.sweep_dir / BEST_FILE, yaml.safe_dump(record, sort_keys=False))
    try:
        write_summary(search.sweep_dir)
    except SweepError as error:
        log.warning("no sweep summary: %s", error)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [trial for trial in study.trials if trial.state.name == "COMPLETE"]
    return study.best_trial if complete else None


def trials_table(search: Search, study: optuna.Study) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", *[parameter.key for parameter in search.parameters], search.objective, "state", "dir"])
    for trial in study.trials:
        writer.writerow(
            [
                trial.number,
                *[trial.params.get(parameter.name) for parameter in search.parameters],
                trial.value,
                trial.state.name.lower(),
                trial.user_attrs.get("dir", ""),
            ]
        )
    return buffer.getvalue()


# Command line ----------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _optuna()
        require("matplotlib", "sweeps", FEATURE)  # the summary's plots, drawn after every trial
        search = prepare(argv)
        _optuna().logging.set_verbosity(_optuna().logging.WARNING)
        study = search_loop(search)
    except (SearchError, ValueError, TypeError, HydraException, OmegaConfBaseException) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the finished trials", file=sys.stderr)
        return 130
    best = best_trial(study)
    print(
        f"best {search.objective}: {best.value} with "
        f"{', '.join(f'{p.key}={best.params[p.name]}' for p in search.parameters)} ({best.user_attrs.get('dir')}); "
        f"{search.sweep_dir / BEST_FILE}, {search.sweep_dir / TRIALS_FILE}, {search.sweep_dir / 'summary.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
