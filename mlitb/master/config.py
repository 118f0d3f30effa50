"""Project hyperparameters: one schema for the REST API, the CLI (`--set key=value`),
persistence and the engine. Changeable while a project runs (applied at the next
iteration boundary); out-of-range values are refused with the allowed range.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from mlitb.optim import OPTIMIZERS, LRSchedule, Optimizer, make_optimizer

OptimizerName = Literal["adagrad", "sgd", "nesterov", "adadelta", "windowgrad", "adam"]
assert set(OptimizerName.__args__) == set(OPTIMIZERS)
AlgorithmName = Literal["sync_sgd", "local_sgd"]  # mlitb.master.learning.algorithms.ALGORITHMS
AggregationName = Literal["mean", "centered_clip", "trimmed_mean", "median"]  # aggregation.AGGREGATORS

DEFAULT_ALGORITHM = "local_sgd"  # learns fastest in benchmarks/learning_bench.py (docs/performance.md)
# The master's optimizer when none is named: the paper's AdaGrad for gradients; for the
# averaged parameter changes of local_sgd, plain averaging (sgd, lr 1, no momentum: the
# new parameters are the mean of the trainers' ends, FedAvg's step). Chosen by measurement
# (docs/performance.md, "The honest baseline"): DiLoCo's outer Nesterov (lr 0.7, momentum
# 0.9) took one worker to 2 % test error in twice the time; `optimizer=nesterov` keeps it.
OPTIMIZER_DEFAULTS: dict[str, dict] = {
    "sync_sgd": {"optimizer": "adagrad", "learning_rate": 0.01},
    "local_sgd": {"optimizer": "sgd", "learning_rate": 1.0, "momentum": 0.0},
}
# dp=central's own defaults for the fields not given (DP-FedAvg as McMahan et al. 2018
# run it; measured in benchmarks/privacy_bench.py, docs/performance.md "Privacy"). Every
# update is clipped to one norm and noised, so: a fixed amount of local work (`work_vectors`
# at `batch_size`: 5 full passes over a 10-item device, whatever the device's speed; more
# steps past the clip only drift) with plain SGD, and server momentum 0.9 on the outer step,
# which averages the noise of consecutive rounds (plain averaging measured 5.1 % test
# error against 1.7 % for the same non-private cohorts; docs/performance.md).
DP_OUTER_DEFAULTS: dict = {"optimizer": "sgd", "learning_rate": 1.0, "momentum": 0.9}
DP_INNER_DEFAULTS: dict = {"inner_optimizer": "sgd", "inner_learning_rate": 0.1, "inner_momentum": 0.0}
# (max_staleness 0: a late update would join another round's sum)
DP_WORK_DEFAULTS: dict = {"work_vectors": 50, "max_staleness": 0}
# Fields that describe the master's optimizer: reset to the new algorithm's defaults when
# `algorithm` changes and none of them is given with it.
OPTIMIZER_FIELDS = ("optimizer", "learning_rate", "momentum", "ro", "eps", "beta1", "beta2")
# The longest round (T, s) when none is named: the paper's loop sends a gradient per round,
# so its T stays a few seconds; a local_sgd round sends one change whatever it computed, so
# long rounds move few bytes per training vector (its rounds start short and grow to T:
# `first_round_time`, `round_growth`). Reset like the optimizer when `algorithm` changes.
# local_sgd's is the most; a model of known size gets round_default's (below).
ROUND_DEFAULTS: dict[str, float] = {"sync_sgd": 4.0, "local_sgd": 30.0}
# local_sgd's T follows the model: long enough that a trainer's traffic (its change up and
# the parameters down, once per round) averages at most ROUND_TRAFFIC bytes/s, never shorter
# than the paper's round (ROUND_DEFAULTS["sync_sgd"]: never more messages than sync_sgd) nor
# longer than 30 s. Why: a round is also how long the master's model stands still, and a small
# model costs little to move: Fashion-MNIST's 28k-parameter net learned 1.7x slower in wall
# time than a plain loop with 30-s rounds and 1.07x with 5-s ones, while the 818k-parameter
# character transformer (6.5 MB a round) keeps 30 s (docs/performance.md, "Today's models").
ROUND_TRAFFIC = 200_000  # bytes/s per trainer, up and down together (1.6 Mbit/s)
VALUE_BYTES = {"none": 4, "float16": 2, "int8": 1}  # per parameter on the wire, by `compression`


# A language model (loss `seqsoftmax`: a vector is a window of `context` tokens with a loss
# at every position) gets these when they are not named: nanoGPT's CPU configuration's 12
# windows a step and Adam at 1e-3. Measured on charlm (docs/performance.md, "Today's
# models"): the plain PyTorch loop's sweep reached 2.0 nats soonest at batch 12, lr 1e-3
# (60 s, against 90 s at 32 windows with either lr), and mlitb's 1 worker took 180 s to 2.0
# at 12 windows against 240 s at the image defaults (32, 2e-3) on the same machine.
# Its test sample is 512 windows (32,768 scored tokens at context 64: more scored outputs
# than 2,000 images give): scoring 2,000 charlm windows takes the master about 9 s of CPU, so
# within its 5 % share a figure came every ~180 s, and the first one took a core from the
# trainers for those 9 s; 512 take about 2.3 s (this 2-core VM, one torch thread).
SEQUENCE_DEFAULTS: dict = {"batch_size": 12, "inner_learning_rate": 1e-3, "test_sample": 512}


def model_defaults(loss: str | None) -> dict:
    """The settings a project of a model with this loss layer gets when they are not
    named, where they differ from Hyper's own (validate with context={"loss": ...})."""
    return dict(SEQUENCE_DEFAULTS) if loss == "seqsoftmax" else {}


def round_default(algorithm: str, num_params: int | None = None, compression: str = "none") -> float:
    """T (s) for `algorithm` when none is named; `num_params` None: the model is not known
    yet (the most a local_sgd round lasts)."""
    longest = ROUND_DEFAULTS[algorithm]
    if algorithm != "local_sgd" or num_params is None:
        return longest
    seconds = 2 * num_params * VALUE_BYTES.get(compression, 4) / ROUND_TRAFFIC
    return float(min(longest, max(ROUND_DEFAULTS["sync_sgd"], math.ceil(seconds))))


class Hyper(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The learning algorithm (what a work order asks, how results combine); `optimizer`
    # and its fields are the master's: the step on the mean gradient (sync_sgd) or the
    # outer step on the mean parameter change (local_sgd).
    algorithm: AlgorithmName = DEFAULT_ALGORITHM
    optimizer: OptimizerName = "adagrad"
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.01
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 1.0  # lr *= lr_decay every lr_decay_interval steps
    lr_decay_interval: Annotated[int, Field(ge=1)] = 1
    lr_floor: Annotated[float, Field(ge=0)] = 0.0
    l1_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    l2_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None  # sgd / nesterov
    ro: Annotated[float, Field(gt=0, lt=1)] | None = None  # adadelta / windowgrad
    eps: Annotated[float, Field(gt=0, le=1)] | None = None
    beta1: Annotated[float, Field(ge=0, lt=1)] | None = None  # adam
    beta2: Annotated[float, Field(ge=0, lt=1)] | None = None
    # local_sgd: the clients' inner optimizer (its state stays on the client across rounds)
    inner_optimizer: Literal["adam", "sgd"] = "adam"
    # measured: 2e-3 beats 1e-3 at batch 32 (images); a language model's: SEQUENCE_DEFAULTS
    inner_learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.002
    inner_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # inner sgd only
    # local_sgd: a client keeps taking inner steps while its result travels up and the next
    # parameters travel down, and folds that work into its next result (never idle)
    overlap: bool = True
    # T, seconds: the paper's 1-30 s; local_sgd's rounds may be longer (DiLoCo: hundreds of
    # inner steps per round), trading fewer bytes per vector for fewer outer steps
    iteration_time: Annotated[float, Field(ge=1, le=300)] = 4.0  # ROUND_DEFAULTS by algorithm
    # local_sgd: round k (the iteration number) lasts min(T, first_round_time x (1 +
    # round_growth)^k) s: the first steps land within a second, when training moves
    # fastest, and the master's parameters never lag a trainer by more than about
    # round_growth of the time trained so far; later rounds are T long and move few
    # bytes per vector. round_growth 0: every round is T (the paper's fixed rounds).
    first_round_time: Annotated[float, Field(ge=0.25, le=300)] = 0.5
    round_growth: Annotated[float, Field(ge=0, le=4)] = 0.25  # 0.1: docs/performance.md, "Learning"
    # Most ids one client holds; a client's own memory (join `memory_mb`) caps it further,
    # so by default a small fleet holds all of a small dataset.
    capacity: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000_000
    # per gradient (sync) / inner step (local); a language model's: SEQUENCE_DEFAULTS
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    work_vectors: Annotated[int, Field(ge=0, le=1_000_000)] = 0  # >0: fixed work per order, not time
    max_staleness: Annotated[int, Field(ge=0, le=16)] = 2  # late results within s iterations count
    # How an iteration's results combine (mlitb.master.learning.aggregation): a robust rule by
    # default, since anyone with the link may compute; `mean` (the paper's) for trusted fleets
    aggregation: AggregationName = "centered_clip"
    bucket_size: Annotated[int, Field(ge=1, le=64)] = 2  # results averaged into one vote
    trim: Annotated[float, Field(ge=0, lt=0.5)] = 0.2  # trimmed_mean: share dropped at each end
    # the most vectors per second one client may claim (mlitb.master.trust.screening); raise for GPUs
    max_vectors_per_s: Annotated[float, Field(gt=0, le=10_000_000)] = 50_000.0
    # clients a project admits in all and from one IP address (a class room behind one
    # NAT is one address); more are refused with close code 4429
    max_clients: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    max_clients_per_address: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    # verification by recomputation (mlitb.master.trust.verification): trainers must answer
    # audits; each result is audited until the trainer passed `verify_trust` audits, then
    # with probability max(verify_rate, verify_trust / (passed + 1)); a failed audit bans
    verify: bool = True
    verify_rate: Annotated[float, Field(ge=0, le=1)] = 0.25
    verify_trust: Annotated[int, Field(ge=0, le=1000)] = 3
    verify_tolerance: Annotated[float, Field(gt=0, le=1)] = 0.01  # relative error of a replayed segment
    compression: Literal["none", "float16", "int8"] = "none"  # results and parameter changes on the wire
    # the TF.js backend browsers compute with: `auto` (each device its fastest correct one,
    # measured at join and remembered), or the owner's pin (used where it computes correctly,
    # else the fastest correct one, saying why); read by browsers when they join
    browser_backend: Literal["auto", "wasm", "webgl", "webgpu", "cpu"] = "auto"
    test_interval: Annotated[float, Field(ge=0, le=3600)] = 5.0  # s between a tracker's evaluations
    test_sample: Annotated[int, Field(ge=0, le=10_000_000)] = 2000  # test items a tracker scores; 0 = all
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    # where the training data is: `server` (the data server: allocated, fetched, audited by
    # recomputation) or `device` (each trainer's own, never sent: `mlitb worker --data`;
    # no audits can replay it, so verification is off: docs/security.md, "Device data")
    data_source: Literal["server", "device"] = "server"
    # client-level differential privacy (DP-FedAvg; mlitb.master.privacy, docs/security.md,
    # "Privacy"): `central`: each round's cohort is a Poisson sample (rate dp_sample_rate) of
    # the enrolled trainers, updates are clipped to dp_clip (None: learned, the
    # dp_clip_quantile of update norms) and summed with Gaussian noise dp_noise x clip
    # (None: calibrated so that dp_rounds rounds spend dp_epsilon); the accountant stops
    # the project in state `budget_spent` before a round would take epsilon past dp_epsilon
    dp: Literal["off", "central"] = "off"
    # 0.05: at the same work on the devices, twice the rounds of half the cohort learn better
    # (privacy_bench's non-private control: 1.73 % test error at q 0.05 x 200 rounds against
    # 2.26 % at 0.1 x 100), and a smaller q amplifies privacy more (TFF's tutorial: 0.035)
    dp_sample_rate: Annotated[float, Field(gt=0, le=1)] = 0.05
    dp_clip: Annotated[float, Field(gt=0, le=1e6)] | None = None
    dp_clip_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.5
    dp_noise: Annotated[float, Field(gt=0, le=1000)] | None = None
    dp_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    dp_epsilon: Annotated[float, Field(gt=0, le=1000)] | None = None
    dp_rounds: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    save_period: Annotated[float, Field(ge=0, le=10)] = 0.0  # s between checkpoints; 0 = every iteration

    @property
    def iteration_ms(self) -> int:
        return round(self.iteration_time * 1000)

    def schedule(self) -> LRSchedule:
        return LRSchedule(self.learning_rate, self.lr_decay, self.lr_decay_interval, self.lr_floor)

    def optimizer_params(self) -> dict[str, float]:
        wanted = OPTIMIZERS[self.optimizer].defaults
        values = {k: getattr(self, k, None) for k in wanted}
        return {k: v for k, v in values.items() if v is not None}

    def make_optimizer(self, num_params: int) -> Optimizer:
        return make_optimizer(self.optimizer, num_params, self.schedule(), **self.optimizer_params())

    @model_validator(mode="before")
    @classmethod
    def _algorithm_defaults(cls, data, info: ValidationInfo):
        """An unnamed optimizer and round length are the algorithm's defaults (OPTIMIZER_DEFAULTS,
        round_default: validate with context={"num_params": n} for the model's own T); under
        dp=central, dp's own come first (DP_*_DEFAULTS); then the model's (model_defaults:
        context={"loss": the spec's loss layer})."""
        if isinstance(data, dict):
            algorithm = data.get("algorithm", DEFAULT_ALGORITHM)
            if data.get("dp", "off") != "off" and algorithm == "local_sgd":
                data = _dp_defaults(data)  # before the algorithm's own: they name an optimizer
            model = model_defaults((info.context or {}).get("loss"))
            data = {**{k: v for k, v in model.items() if k not in data}, **data}
            if "optimizer" not in data:
                defaults = OPTIMIZER_DEFAULTS.get(algorithm, {})
                data = {**{k: v for k, v in defaults.items() if k not in data}, **data}
            if "iteration_time" not in data and algorithm in ROUND_DEFAULTS:
                num_params = (info.context or {}).get("num_params")
                T = round_default(algorithm, num_params, data.get("compression", "none"))
                data = {**data, "iteration_time": T}
            if data.get("data_source") == "device" and "verify" not in data:
                data = {**data, "verify": False}  # nothing to replay an audit on
        return data

    @model_validator(mode="after")
    def _device_unverified(self):
        if self.data_source == "device" and self.verify:
            raise ValueError(
                "data_source=device cannot be verified by recomputation: the master never sees the "
                'data an audit would replay; set verify=false (docs/security.md, "Device data")'
            )
        return self

    @model_validator(mode="after")
    def _dp_complete(self):
        """`dp=central` needs a noise level (given, or calibrated from a budget and a number
        of rounds), parameter changes to clip (local_sgd) and on-time updates only."""
        if self.dp == "off":
            return self
        if self.algorithm != "local_sgd":
            raise ValueError("dp=central clips and noises parameter changes: set algorithm=local_sgd")
        if self.dp_noise is None and (self.dp_epsilon is None or self.dp_rounds is None):
            raise ValueError(
                "dp=central needs the noise: set dp_noise (z), or dp_epsilon with dp_rounds to calibrate it"
            )
        if self.dp_noise is None:  # refused here, with the reason, not when the project starts
            from mlitb.master.privacy.accountant import calibrate

            calibrate(self.dp_epsilon, self.dp_delta, self.dp_sample_rate, self.dp_rounds)
        if self.max_staleness:
            raise ValueError(
                f"dp=central needs max_staleness=0 (got {self.max_staleness}): a late update added to "
                "another round's sum would count one device twice there (sensitivity 2 x dp_clip)"
            )
        return self

    @classmethod
    def stored(cls, data: dict) -> Hyper:
        """Hyperparameters saved before algorithms existed ran the paper's loop."""
        return cls.model_validate({"algorithm": "sync_sgd", **data})

    def updated(self, changes: dict, num_params: int | None = None) -> Hyper:
        """These settings with `changes`; `num_params`: the model's, for a new algorithm's T."""
        current = self.model_dump()
        if changes.get("algorithm", self.algorithm) != self.algorithm and "optimizer" not in changes:
            for k in OPTIMIZER_FIELDS:  # switching algorithm: its own default optimizer,
                current.pop(k, None)  # with whatever of its settings are given
            if "iteration_time" not in changes:
                current.pop("iteration_time", None)  # and its own round length
        if changes.get("dp", self.dp) != self.dp:  # dp's own defaults on, the others back off
            for k in (*_DP_FIELDS, *(OPTIMIZER_FIELDS if "optimizer" not in changes else ())):
                if k not in changes:
                    current.pop(k, None)
        if changes.get("data_source", self.data_source) != self.data_source and "verify" not in changes:
            current.pop("verify", None)  # device data: off; server data: the default
        return Hyper.model_validate({**current, **changes}, context={"num_params": num_params})


_DP_FIELDS = (*DP_INNER_DEFAULTS, *DP_WORK_DEFAULTS)


def _dp_defaults(data: dict) -> dict:
    """dp=central's defaults for `data` (the outer ones only where no optimizer is named,
    the inner ones only where no inner optimizer is); `data`'s own values win."""
    out = dict(DP_WORK_DEFAULTS)
    if "inner_optimizer" not in data:
        out.update(DP_INNER_DEFAULTS)
    if "optimizer" not in data:
        out.update(DP_OUTER_DEFAULTS)
    return {**out, **data}


def hyper_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "hyperparameters"
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def parse_set(items: list[str]) -> dict:
    """CLI `--set key=value` pairs -> dict with numbers parsed."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value
    return out
