"""Typed run configs: YAML → dataclasses and a model bound by ``class_path``/``init_args``.

Binding and type checking go through jsonargparse (the LightningCLI convention): the model
section names a ``RankingModel`` or ``RetrievalModel`` subclass (short name ``DIN`` or the
full path ``recsys.models.din.DIN``) and its constructor arguments; the family decides the
Lightning task (:mod:`recsys.task` or :mod:`recsys.retrieval_task`). An unknown key
anywhere, or a value of the wrong type, is an error that names the key. The model's
``features`` argument is not in the config: it comes from the built data's manifest,
restricted to ``data.fields``.

Value checks are declared as types (``Literal``, ``PositiveInt``) so jsonargparse rejects
them at parse time with the key named; nothing here re-implements a check the loader or
the task makes.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import yaml
from jsonargparse import ArgumentParser, Namespace
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, restricted_number_type

from recsys.models.base import RankingModel, RetrievalModel
import recsys.models  # noqa: F401  (imports every model module, which registers itself)
from recsys.models.registry import MODELS, family


from recsys.errors import ConfigError  # noqa: E402,F401  (re-exported)

DEFAULT_RETRIEVAL_MONITOR_K = 20
# a learning rate: > 0 and finite (PositiveFloat alone lets inf through; NaN fails v > 0)
LearningRate = restricted_number_type("LearningRate", float, [(">", 0), ("<", float("inf"))])
AdamBeta = restricted_number_type("AdamBeta", float, [(">=", 0), ("<", 1)])


@dataclass
class DataSection:
    """Where the samples come from and how they are batched.

    path: a built dataset directory; build: a data build config (YAML) that is built first
    when its output does not exist yet (``fit`` only: ``evaluate`` never builds). Give one.
    fields: the side fields the model uses besides the core ``user, item, category,
    behavior`` (names from the data config's ``fields``); None = core fields only.
    train_prefixes: ``all`` trains every training sample (with ``loo`` / ``users`` data:
    every prefix of a user's timeline, the CoSeRec / ICLRec augmentation); ``longest``
    keeps, per user, only the samples at the largest training cut (one history per user
    per epoch: SASRec's and RecTools' objective with ``retrieval.positions: all``).
    Validation and test always use every sample.
    """

    path: Optional[str] = None
    build: Optional[str] = None
    fields: Optional[List[str]] = None
    batch_size: PositiveInt = 1024
    eval_batch_size: PositiveInt = 4096
    max_length: Optional[PositiveInt] = None
    form: Literal["padded", "jagged"] = "padded"
    train_prefixes: Literal["all", "longest"] = "all"
    num_workers: NonNegativeInt = 0
    # training-order shuffle: blocks of this many consecutive (user-sorted) samples are
    # permuted, then the samples inside each block; >= the train split = a full permutation;
    # null = a full permutation up to 16.8M samples, else blocks of 65,536 (SampleLoader)
    shuffle_block: Optional[PositiveInt] = None


@dataclass
class OptimizerSection:
    """name: adam | adamw | sgd. schedule: none | exponential (gamma per epoch) | step
    (gamma every step_size epochs) | plateau (gamma when the monitored metric stalls).
    beta1, beta2: Adam's / AdamW's moment decays (PyTorch's 0.9, 0.999; SASRec's code and
    RecTools use beta2 0.98)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: LearningRate = 1e-3
    beta1: AdamBeta = 0.9
    beta2: AdamBeta = 0.999
    weight_decay: NonNegativeFloat = 0.0
    momentum: NonNegativeFloat = 0.0
    schedule: Literal["none", "exponential", "step", "plateau"] = "none"
    gamma: PositiveFloat = 0.5
    step_size: PositiveInt = 1
    min_lr: NonNegativeFloat = 1e-6


@dataclass
class TrainerSection:
    max_epochs: PositiveInt = 2
    accelerator: str = "cpu"
    devices: Union[int, str] = 1
    strategy: str = "auto"
    num_nodes: PositiveInt = 1
    precision: str = "32-true"
    gradient_clip_val: Optional[NonNegativeFloat] = None
    early_stopping_patience: NonNegativeInt = 2
    # validation metric for early stopping and the best checkpoint (higher is better);
    # null = valid/auc for ranking models, valid/recall@20 for retrieval models
    monitor: Optional[str] = None
    val_check_interval: PositiveFloat = 1.0
    log_every_n_steps: PositiveInt = 50
    limit_train_batches: Optional[Union[int, float]] = None
    limit_val_batches: Optional[Union[int, float]] = None
    num_threads: Optional[PositiveInt] = None
    enable_progress_bar: bool = True


@dataclass
class RetrievalSection:
    """Training objective and evaluation of retrieval models (ignored by ranking models).

    negatives: ``uniform`` or ``popularity``: ``num_negatives`` item ids drawn once per
    batch and shared by its rows (sampled softmax; popularity = training event counts);
    ``in_batch``: the batch's other targets are the negatives; ``all``: every real item
    (the full softmax over the catalogue, RecBole's ``loss_type: CE``; exact, so no logQ and
    ``num_negatives`` unused). With ``logq_correction`` every logit is reduced by log Q(item)
    of its proposal (Yi et al., RecSys 2019; a constant for uniform, so it only matters for
    popularity and in-batch). ``share_negatives: false`` draws ``num_negatives`` uniform or
    popularity ids for every trained example instead (RecTools' per-position sampler,
    eSASRec's setting; [P, M, D] negative vectors per step). ``remove_accidental_hits``
    (default true) drops a drawn negative equal to the example's target from its softmax;
    false keeps it, as RecTools' sampled softmax does (uniform / popularity only: the row's
    own target among in-batch or ``all`` negatives is always removed, or it would count twice).
    Evaluation ranks every item (never sampled negatives) and reports Recall, HR and NDCG
    at each of ``ks``; ``mask_history`` removes the items of the user's timeline before the
    cut from the ranking (S3-Rec / ICLRec do this), ground-truth items excepted.

    loss: ``sampled_softmax`` (above) or ``bce``: SASRec's binary cross-entropy (Kang &
    McAuley 2018), each trained position scoring its positive against ``num_negatives``
    negatives of its own drawn from the proposal (SASRec: 1, uniform); no logQ.
    positions: ``last`` trains the target only; ``all`` trains every history position of a
    causal model (``RetrievalOutput.sequence``) to predict the next behaviour (SASRec).
    """

    negatives: Literal["uniform", "popularity", "in_batch", "all"] = "uniform"
    loss: Literal["sampled_softmax", "bce"] = "sampled_softmax"
    positions: Literal["last", "all"] = "last"
    num_negatives: PositiveInt = 1000
    share_negatives: bool = True
    remove_accidental_hits: bool = True
    logq_correction: bool = True
    temperature: PositiveFloat = 1.0
    ks: List[PositiveInt] = field(default_factory=lambda: [5, 10, 20, 50])
    mask_history: bool = True
    item_chunk: PositiveInt = 65536   # items scored per matmul in full ranking (bounds [B, chunk] memory)


@dataclass
class PublishedResult:
    """The published figure a run is compared against in reports."""

    metric: str = "auc"
    value: Optional[float] = None
    source: str = ""
    protocol: str = ""


@dataclass
class RunConfig:
    model: Namespace
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    seed: int = 0
    output_dir: str = "runs/run"
    name: Optional[str] = None
    aux_loss_weights: Dict[str, float] = field(default_factory=dict)
    published: PublishedResult = field(default_factory=PublishedResult)
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)

    @property
    def model_class(self) -> type:
        return resolve_model_class(self.model.class_path)

    @property
    def family(self) -> str:
        """"ranking" or "retrieval" (which Lightning task trains the model)."""
        return family(self.model_class)

    @property
    def monitor(self) -> str:
        if self.trainer.monitor is not None:
            return self.trainer.monitor
        return "valid/auc" if self.family == "ranking" else f"valid/recall@{DEFAULT_RETRIEVAL_MONITOR_K}"

    @property
    def model_init_args(self) -> Dict[str, Any]:
        args = self.model.get("init_args") or Namespace()
        return dict(args.as_dict() if isinstance(args, Namespace) else args)

    @property
    def run_name(self) -> str:
        return self.name or Path(self.output_dir).name

    def to_dict(self) -> dict:
        out = {"model": {"class_path": self.model.class_path, "init_args": self.model_init_args}}
        for key in ("data", "optimizer", "trainer", "published", "retrieval"):
            out[key] = asdict(getattr(self, key))
        out.update(seed=self.seed, output_dir=self.output_dir, name=self.name,
                   aux_loss_weights=dict(self.aux_loss_weights))
        return out


def resolve_model_class(class_path: str) -> type:
    """The class of a full ``module.Class`` path (jsonargparse stores the full path)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_subclass_arguments((RankingModel, RetrievalModel), "model", skip={"features"}, instantiate=False,
                                  required=True)
    parser.add_class_arguments(DataSection, "data", instantiate=False)
    parser.add_class_arguments(OptimizerSection, "optimizer", instantiate=False)
    parser.add_class_arguments(TrainerSection, "trainer", instantiate=False)
    parser.add_class_arguments(PublishedResult, "published", instantiate=False)
    parser.add_class_arguments(RetrievalSection, "retrieval", instantiate=False)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=str, default="runs/run")
    parser.add_argument("--name", type=Optional[str], default=None)
    parser.add_argument("--aux_loss_weights", type=Dict[str, float], default={})
    return parser


def parse_config(raw: dict, source: str = "<config>") -> RunConfig:
    """Validate a config mapping and bind it to RunConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    if "model" not in raw:
        raise ConfigError(f"{source}: missing the 'model' section (class_path + init_args)")
    _check_model_name(raw["model"], source)
    try:
        ns = _parser().parse_object(raw)
    except Exception as exc:  # jsonargparse raises ArgumentError with a readable message
        message = " ".join(str(exc).split())
        # a bad model argument arrives wrapped in a Union-type dump; keep the inner reason
        inner = re.search(r"Problem with given class_path '([^']*)': (.*?) - Expected a <class 'NoneType'>", message)
        if inner:
            message = f"model ({inner.group(1)}).init_args: {inner.group(2)}"
        raise ConfigError(f"{source}: {message}") from None
    section = lambda cls, key: cls(**_plain(ns[key].as_dict()))  # noqa: E731
    config = RunConfig(model=ns.model, data=section(DataSection, "data"),
                       optimizer=section(OptimizerSection, "optimizer"), trainer=section(TrainerSection, "trainer"),
                       seed=ns.seed, output_dir=ns.output_dir, name=ns.name,
                       aux_loss_weights=dict(ns.aux_loss_weights), published=section(PublishedResult, "published"),
                       retrieval=section(RetrievalSection, "retrieval"))
    if (config.data.path is None) == (config.data.build is None):
        raise ConfigError(f"{source}: data needs exactly one of 'path' (a built dataset) or 'build' (a data config)")
    return config


def _plain(value: Any) -> Any:
    """jsonargparse's restricted numbers (PositiveInt, ...) as plain int/float, so configs
    dump to YAML and compare equal to what was written."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def _check_model_name(model: Any, source: str) -> None:
    """A short name that is not registered gets a one-line error with the known names
    (jsonargparse would answer with a long union-type message)."""
    name = model.get("class_path") if isinstance(model, dict) else None
    known = set(MODELS) | {cls.__name__ for base in (RankingModel, RetrievalModel) for cls in _subclasses(base)}
    if isinstance(name, str) and "." in name:
        try:
            cls = resolve_model_class(name)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"{source}: model.class_path {name!r} cannot be imported") from None
        try:
            family(cls)
        except TypeError:
            raise ConfigError(f"{source}: model.class_path {name!r} is neither a RankingModel nor a "
                              "RetrievalModel subclass") from None
        return
    if not isinstance(name, str) or name in known:
        return
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"{source}: model.class_path {name!r} is not a registered model; {hint}"
                      f"known: {', '.join(sorted(known))} (or a full path such as recsys.models.din.DIN)")


def _subclasses(cls: type) -> list:
    out = []
    for sub in cls.__subclasses__():
        out += [sub] + _subclasses(sub)
    return out


def load_config(path: Union[str, Path], overrides: Optional[dict] = None) -> RunConfig:
    """Load a YAML run config; ``overrides`` ({"seed": 1, "trainer.max_epochs": 3}) are
    applied on top (dotted keys address nested sections)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} " + ("is a directory, not a YAML file" if path.is_dir() else
                                                    "does not exist"))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    for key, value in (overrides or {}).items():
        target = raw
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    config = parse_config(raw, str(path))
    # relative data paths are relative to the working directory, as documented
    return config


def save_config(config: RunConfig, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
