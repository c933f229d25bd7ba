"""What a study searches: the task's `tune.search_space`, completed by the family's defaults.

A user who writes no search space still gets a real search: learning rate, weight decay,
dropout, batch size and the layer sizes of the task's network. A partial space is
completed, not replaced, and a hyperparameter the task fixes in its `model:` section is
never searched. Batch sizes are sized from the training rows, so an epoch has a useful
number of optimizer steps whatever the data's size.

The ranges are deliberately moderate: a default study has 20 trials, and TPE finds more
in a range that holds mostly reasonable values than in one that spans every possible one.
"""

from __future__ import annotations

import math

import numpy as np

from modelyard.config import (
    Distribution,
    Hyperparams,
    Problem,
    TaskSettings,
    hparam_kind,
    metric_samples,
    selection_metric,
)

MIN_BATCH, MAX_BATCH = 16, 512
STEPS_PER_EPOCH = 16  # the largest default batch still gives an epoch this many steps


def log_range(low: float, high: float) -> Distribution:
    return Distribution(low=low, high=high, log=True)


def int_range(low: int, high: int, log: bool = False) -> Distribution:
    return Distribution(low=low, high=high, log=log)


def choices(*values: object) -> Distribution:
    return Distribution(choices=values)


# Per network: the hyperparameters it uses beyond the common ones, with their default ranges.
NETWORK_SPACES: dict[str, dict[str, Distribution]] = {
    "mlp": {
        "lr": log_range(1e-4, 5e-3),
        "weight_decay": log_range(1e-5, 1e-1),
        "dropout": Distribution(low=0.0, high=0.5),
        # depth 0 is a linear model (an additive one over numeric embeddings): on many small
        # tables the best model there is, and the study finds it when it is
        "n_layers": int_range(0, 4),
        "units": int_range(32, 512, log=True),
    },
    # Periodic (PLR) embeddings of the numeric columns, compared with none: on Adult they lift
    # a plain MLP from ~0.853 to ~0.870 test accuracy (Gorishniy et al. 2022 report the same).
    # Only for tasks with numeric feature columns.
    "numeric": {
        "numeric_embedding": choices("periodic", "none"),
        "frequency_scale": log_range(0.1, 30.0),
    },
    "cnn": {
        "lr": log_range(3e-4, 1e-2),
        "weight_decay": log_range(1e-5, 1e-1),
        "dropout": Distribution(low=0.0, high=0.5),
        "n_blocks": int_range(1, 3),
        "filters": choices(16, 32, 64),
        "dense_units": choices(64, 128, 256),
    },
    "lstm": {
        "lr": log_range(1e-3, 1e-2),
        "weight_decay": log_range(1e-6, 1e-3),
        "dropout": Distribution(low=0.0, high=0.3),
        "hidden_size": choices(32, 64, 128),
        "n_layers": int_range(1, 2),
        "bidirectional": choices(False, True),
    },
    # fcn and resnet. Narrower than the paper's 128 / 64 filters: on 2 CPU cores a ResNet of
    # 64 filters takes ~140 ms a step on 400-step series, one of 32 ~50 ms and an FCN of 32
    # ~10 ms; UCR training sets are small enough that the narrow nets do not underfit them.
    # On a GPU, widen them in tune.search_space.
    "conv1d": {
        "lr": log_range(1e-4, 1e-2),
        "weight_decay": log_range(1e-5, 1e-2),
        "dropout": Distribution(low=0.0, high=0.3),
        "filters": choices(16, 32),
    },
    "bag": {
        "lr": log_range(1e-3, 3e-2),
        "weight_decay": log_range(1e-6, 1e-3),
        "dropout": Distribution(low=0.0, high=0.5),
        "embed_dim": choices(32, 64, 128),
    },
}
# The architectures a default space compares, per kind, when the task fixes none.
DEFAULT_ARCHS = {"sequence": ("fcn", "resnet")}


# The linear model (logistic or linear regression over the encoded features) a study of an
# MLP runs first, when its space holds it: the classic baseline a data scientist tries
# first. Solved exactly, it is never pruned (`tuning.trials.TrialRunner.on_epoch_end`),
# so every study holds it, and on small data the one-standard-error rule picks it when no
# deeper network is clearly better. It is solved exactly (`training.solve_convex`) with the
# L2 strength of scikit-learn's defaults: LogisticRegression(C=1) minimises the summed log
# loss + ||w||^2 / 2, which is the mean log loss + (1 / rows) / 2 * ||w||^2, a weight decay
# of 1 / rows; Ridge(alpha=1) minimises the summed squared error + ||w||^2, the mean squared
# error + (2 / rows) / 2 * ||w||^2, a weight decay of 2 / rows. Later trials that draw
# depth 0 search that strength.
BASELINE_TRIAL: dict[str, object] = {"n_layers": 0, "numeric_embedding": "none", "dropout": 0.0}
BASELINE_L2 = {"binary": 1.0, "multiclass": 1.0, "regression": 2.0}  # weight decay x training rows


def contains(dist: Distribution, value: object) -> bool:
    """Whether a value is one a search-space entry can draw."""
    return value in dist.choices if dist.choices is not None else dist.low <= value <= dist.high  # type: ignore[operator]


def baseline_params(space: dict[str, Distribution], n_train: int, problem: Problem) -> dict[str, object]:
    """The searched hyperparameters of BASELINE_TRIAL, its weight decay scikit-learn's
    default strength for `n_train` rows (BASELINE_L2, within the searched range), or nothing
    when the space cannot draw a linear model (the depth is fixed or excludes 0)."""
    if "n_layers" not in space or not contains(space["n_layers"], 0):
        return {}
    params = {name: value for name, value in BASELINE_TRIAL.items() if name in space and contains(space[name], value)}
    if "lr" in space and space["lr"].choices is None:  # for a loss or L1 penalty L-BFGS does not take
        params["lr"] = space["lr"].high
    decay = space.get("weight_decay")
    if decay is not None and decay.choices is None:
        params["weight_decay"] = min(max(BASELINE_L2[problem] / max(1, n_train), decay.low), decay.high)
    return params


def batch_choices(n_train: int) -> tuple[int, ...]:
    """Three powers of two, the largest giving an epoch at least STEPS_PER_EPOCH steps
    (within MIN_BATCH..MAX_BATCH)."""
    largest = 2 ** math.floor(math.log2(max(1, n_train / STEPS_PER_EPOCH)))
    largest = min(MAX_BATCH, max(MIN_BATCH, largest))
    return tuple(sorted({max(MIN_BATCH, largest // 4), max(MIN_BATCH, largest // 2), largest}))


def network_names(task: TaskSettings, archs: tuple[str, ...]) -> list[str]:
    """The NETWORK_SPACES entries a task's family and candidate architectures use."""
    if task.family == "ann":
        numeric = [c for c in task.schema_.names("numeric") if c != task.target]
        return ["mlp", "numeric"] if numeric else ["mlp"]
    if task.family == "cnn":
        return ["cnn"]
    names = {"fcn": "conv1d", "resnet": "conv1d", "bag": "bag", "lstm": "lstm"}
    networks = sorted({names[arch] for arch in archs})
    if "lstm" in networks and task.kind == "text":
        networks.append("text_lstm")
    return networks


def default_space(task: TaskSettings, n_train: int) -> dict[str, Distribution]:
    """The family's default search space for this task and this many training rows."""
    fixed = task.model.model_fields_set
    archs: tuple[str, ...] = (task.arch,)
    searched = task.tune.search_space.get("arch")
    if searched is not None:
        archs = tuple(searched.choices or ())
    elif "arch" not in fixed and task.kind in DEFAULT_ARCHS:
        archs = DEFAULT_ARCHS[task.kind]
    space: dict[str, Distribution] = {"batch_size": choices(*batch_choices(n_train))}
    if len(archs) > 1:
        space["arch"] = choices(*archs)
    for network in network_names(task, archs):
        if network == "text_lstm":
            space["embed_dim"] = choices(32, 64, 128)
            continue
        for name, dist in NETWORK_SPACES[network].items():
            space.setdefault(name, dist)
    return {name: dist for name, dist in space.items() if name not in fixed}


def effective_space(task: TaskSettings, n_train: int) -> dict[str, Distribution]:
    """What the study searches: the task's own entries, then the defaults for the rest."""
    if not task.tune.default_space:
        return dict(task.tune.search_space)
    return {**default_space(task, n_train), **task.tune.search_space}


def space_size(space: dict[str, Distribution]) -> float:
    """How many distinct configurations a space holds (infinite with a continuous range)."""
    size = 1.0
    for name, dist in space.items():
        if dist.choices is not None:
            size *= len(set(map(repr, dist.choices)))
        elif dist.low == dist.high:
            continue
        elif hparam_kind(name) is int:
            size *= (int(dist.high) - int(dist.low)) // int(dist.step or 1) + 1
        else:
            return math.inf
    return size


def base_hparams(task: TaskSettings) -> Hyperparams:
    """The task's fixed hyperparameters, with the kind's default network in place of `auto`."""
    return task.model.model_copy(update={"arch": task.arch})


def tuning_task(task: TaskSettings, n_train: int, y_val: np.ndarray) -> TaskSettings:
    """The task as the study sees it: the effective search space, the resolved network, and
    the metric trials are ranked and pruned on (the validation loss for a classifier with
    few validation samples that can tell models apart, see `selection_metric`)."""
    tune = task.tune.model_copy(update={"search_space": effective_space(task, n_train), "default_space": False})
    update = {"tune": tune, "model": base_hparams(task)}
    if selection_metric(task.problem, task.monitor, metric_samples(task.problem, y_val)) == "val_loss":
        update["metric"] = "loss"
    return task.model_copy(update=update)


def describe(dist: Distribution) -> str:
    """One search-space entry as the parent run's param shows it."""
    if dist.choices is not None:
        return "choice of " + ", ".join(map(str, dist.choices))
    text = f"{dist.low:g} to {dist.high:g}" + (" (log)" if dist.log else "")
    return text + (f" step {dist.step:g}" if dist.step else "")
