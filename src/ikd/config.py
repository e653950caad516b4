"""Campaign configuration: a YAML file validated on load, with command-line overrides.

Every key is declared here once, and so is its `ikd compress` flag if it has one (`cli_flag` on the
key's Field): the config reference (`ikd config-reference`) and the `compress` parser are both generated
from these models, so documentation, flags and validation cannot drift apart.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from ikd.arch import LAYOUT_EXAMPLE, PRESETS, Objective, check_arch
from ikd.data import DATASETS, MAX_IMAGE_SIZE, Augmentation, DataSplits, load_dataset
from ikd.data.paths import same_place
from ikd.errors import ConfigError, first_validation_error
from ikd.objective import LossWeights
from ikd.shrink import OPERATORS
from ikd.strict import Strict
from ikd.train import MAX_LR, MAX_WEIGHT_DECAY, Schedule


# A path or address given as '' (an unset shell variable: --run-dir "$RUN") would mean "here" or
# "none" depending on the reader: refused, not guessed.
def _given(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a path or address, not an empty string")
    return value


Given = Annotated[str, AfterValidator(_given)]


def cli_flag(
    name: str, *, metavar: str | None = None, choices: tuple[str, ...] | None = None, words: bool = False
) -> dict[str, Any]:
    """A Field's `json_schema_extra` making its key an `ikd compress` flag too. The flag's help is the
    key's description; its type and choices come from the annotation, or from `choices` for a `str`
    checked against a registry. A list is given comma-separated, or with `words` as separate words."""
    return {
        "cli_flag": {"name": name, "metavar": metavar, "choices": list(choices) if choices else None, "words": words}
    }


class DataConfig(Strict):
    name: str = Field(
        default="digits",
        json_schema_extra=cli_flag("--dataset", metavar="NAME", choices=DATASETS),
        description=f"dataset: {', '.join(DATASETS)}",
    )
    dir: Given | None = Field(
        default=None,
        json_schema_extra=cli_flag("--data-dir"),
        description="dataset directory or root (default $IKD_DATA_DIR, else ~/.cache/ikd)",
    )
    val_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        json_schema_extra=cli_flag("--val-fraction"),
        description="share of the training set held out for validation",
    )
    split_seed: int = Field(
        default=0, ge=0, json_schema_extra=cli_flag("--split-seed"), description="seed of the validation split"
    )
    image_size: int | None = Field(
        default=None,
        gt=0,
        le=MAX_IMAGE_SIZE,
        json_schema_extra=cli_flag("--image-size"),
        description="resize images to this size (imagefolder default 32)",
    )

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:  # checked with the config, not after the teacher trains
        if name not in DATASETS:
            raise ValueError(f"expected one of {', '.join(DATASETS)}")
        return name

    def load(self) -> DataSplits:
        """The dataset with this section's validation split."""
        return load_dataset(
            self.name, self.dir, val_fraction=self.val_fraction, split_seed=self.split_seed, image_size=self.image_size
        )


class OptimConfig(Strict):
    epochs: int = Field(gt=0, description="epochs per training job")
    batch_size: int = Field(default=128, gt=0, description="images per training step")
    lr: float = Field(
        default=0.05,
        gt=0,
        le=MAX_LR,
        description="peak learning rate (SGD with Nesterov momentum, see docs/training.md)",
    )
    weight_decay: float = Field(default=5e-4, ge=0, le=MAX_WEIGHT_DECAY, description="L2 weight decay")
    schedule: Schedule = Field(
        default="onecycle",
        description="learning-rate schedule: onecycle (warm-up, cosine decay), linear (warm-up, linear decay "
        "to ~0) or cosine",
    )
    augment: Augmentation | None = Field(default=None, description="default: the dataset's own")
    ema_epochs: float = Field(
        default=0.0,
        ge=0,
        description="horizon in epochs of an exponential moving average of the weights, validated beside "
        "them each epoch (the better is kept); 0 = none",
    )
    bn_sparsity: float = Field(
        default=0.0,
        ge=0,
        description="weight of an L1 penalty on the BatchNorm scales (Network Slimming, e.g. 1e-4): it drives "
        "unimportant channels' scales towards 0, which the slim operator ranks channels by; 0 = none",
    )


def _known_arch(arch: object) -> object:
    """A preset or layout, checked (YAML reads a one-block layout, `arch: 64`, as a number)."""
    return check_arch(str(arch)) if isinstance(arch, str | int) and not isinstance(arch, bool) else arch


class TeacherConfig(OptimConfig):
    dir: Given | None = Field(
        default=None,
        json_schema_extra=cli_flag("--teacher", metavar="DIR"),
        description="an existing `ikd train` output to start from; else one is trained",
    )
    program: Given | None = Field(
        default=None,
        json_schema_extra=cli_flag("--teacher-program", metavar="FILE"),
        description="a trained model of any architecture, saved in eval mode with a dynamic batch dimension by "
        "torch.export.save (a .pt2 file), as the root: ikd cannot shrink it, so the chain starts from "
        "student.first_arch distilled from it (the Python API's compress(teacher=module), from a file). "
        "torch.export.load unpickles parts of the file: give only programs you trust",
    )
    hint_layer: str | None = Field(
        default=None,
        json_schema_extra=cli_flag("--hint-layer", metavar="NAME"),
        description="the root module's submodule (a path from named_modules(), e.g. `layer2`) whose output "
        "feature map gives the students their hint, with teacher.program or a module passed from Python "
        "(whose hint_layer= argument wins); unset needs loss.gamma 0",
    )
    arch: str = Field(
        default="vgg16",
        json_schema_extra=cli_flag("--arch", metavar="ARCH"),
        description=f"what to train when no dir is given: a preset ({', '.join(PRESETS)}) or a layout as "
        f"`ikd lineage` shows one, e.g. `{LAYOUT_EXAMPLE}` (blocks joined by `-`: `16x2` is two 3x3 convs 16 wide, "
        "`64/48/32` three convs of those widths)",
    )
    epochs: int = Field(default=10, gt=0, description="epochs to train the teacher (when no dir is given)")
    # The teacher recipe (docs/training.md): what reached published CIFAR-10 accuracy in few epochs.
    batch_size: int = Field(default=256, gt=0, description="images per training step")
    lr: float = Field(
        default=0.1,
        gt=0,
        le=MAX_LR,
        description="peak learning rate (SGD with Nesterov momentum, see docs/training.md)",
    )
    schedule: Schedule = Field(default="linear", description="learning-rate schedule (see student.schedule)")
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="label smoothing of the cross-entropy")
    ema_epochs: float = Field(default=1.0, ge=0, description="weights' EMA horizon in epochs (0 = none)")

    _checked_arch = field_validator("arch", mode="before")(_known_arch)


class StudentConfig(OptimConfig):
    epochs: int = Field(
        default=5, gt=0, json_schema_extra=cli_flag("--epochs"), description="epochs to distil each candidate child"
    )
    first_epochs: int | None = Field(
        default=None,
        gt=0,
        description="epochs of the chain's first student when the root is a user's own module (teacher.program, "
        "or compress(config, teacher=module)): that student starts from random weights, where every later child "
        "inherits its parent's, so it needs a longer schedule to come near its teacher; unset = student.epochs",
    )
    first_arch: str | None = Field(
        default=None,
        json_schema_extra=cli_flag("--first-student", metavar="ARCH"),
        description="the chain's first student when the root is a user's module (teacher.program, or "
        "compress(teacher=...), whose student= argument wins): a preset or a layout; unset = vgg11 fitted to "
        "the data",
    )

    _checked_first_arch = field_validator("first_arch", mode="before")(_known_arch)

    inherit: bool = Field(default=True, description="initialise each child from its parent's weights (else random)")
    hint_stage: Literal["joint", "two-stage"] = Field(
        default="joint", description="joint: hint trained with KD; two-stage: hint pre-training first"
    )
    hint_epochs: int = Field(default=1, ge=0, description="epochs of hint pre-training (two-stage only)")
    cache_teacher: bool = Field(
        default=True, description="reuse the teacher's outputs every epoch when there is no augmentation"
    )
    final_epochs: int = Field(
        default=0,
        ge=0,
        json_schema_extra=cli_flag("--final-epochs"),
        description="after the search stops, distil the final student again for this many epochs, from its "
        "own weights (node `final`, the campaign's answer unless by validation it fails its search answer's "
        "tolerances; baselines get the same total epochs); 0 = none",
    )
    final_teachers: Literal["root", "chain"] = Field(
        default="root",
        description="teachers of the final distillation: the root, or every ancestor on the final student's "
        "chain together, its parent first (weighted as `ensemble` says; the parent gives the hint)",
    )


class SearchConfig(Strict):
    operators: list[str] = Field(
        default_factory=lambda: ["depth", "width"],
        json_schema_extra=cli_flag("--operators"),
        description="shrink operators proposing candidates",
    )
    strategy: Literal["parent-child", "parent-children", "ancestors-child", "ancestors-children"] = Field(
        default="parent-child",
        json_schema_extra=cli_flag("--strategy"),
        description="parent-child: candidates one at a time, each taught by its parent; *-children: all of a "
        "parent's candidates train together; ancestors-*: each child taught by several teachers (see ensemble)",
    )
    width_factor: float | list[float] = Field(
        default=0.5,
        json_schema_extra=cli_flag("--width-factors"),
        description="width and block operators' channel scale; a list proposes one child per factor",
    )
    slim_fraction: float | list[float] = Field(
        default_factory=lambda: [0.5, 0.25],
        json_schema_extra=cli_flag("--slim-fractions"),
        description="slim operator: share of the parent's parameters removed per step, the conv channels with "
        "the smallest BatchNorm scale (relative to their layer's mean) first; a list proposes one slim child per "
        "fraction (under *-child strategies the gentler step then trains only when the bigger one fails)",
    )
    slim_min_channels: int = Field(
        default=8, gt=0, description="slim operator: no conv keeps fewer channels than this (or its width, if fewer)"
    )
    slim_by_share: bool = Field(
        default=False,
        json_schema_extra=cli_flag("--slim-by-share"),
        description="slim operator: rank a channel by its share of what its layer still keeps, so wide layers "
        "narrow before narrow ones and the widths flatten (VGG-16's 512-wide layers first, its first block last); "
        "default: by its scale relative to its layer's mean, which narrows alike layers alike",
    )
    slim_round_to: int = Field(
        default=1,
        gt=0,
        json_schema_extra=cli_flag("--slim-round-to"),
        description="slim operator: make every conv's width a multiple of this (odd widths are cut down to one "
        "first, then channels leave in groups ranked by their mean importance; no conv below slim_min_channels "
        "rounded up to it, one narrower from the start keeps its width); convolution kernels work on channel "
        "blocks, so e.g. 16 can train and run faster than odd widths",
    )
    early_rejection: float = Field(
        default=0.0,
        ge=0,
        json_schema_extra=cli_flag("--early-rejection", metavar="SLACK"),
        description="stop a candidate after epoch e >= 2 when even cutting its validation error by the larger of "
        "(its best epoch-to-epoch error ratio so far, once per epoch left) and (the most any fully trained candidate "
        "of the campaign cut its error after epoch e), raised to the power SLACK, would leave it below the accept "
        "floor, less retry_within when retries are on (it is then rejected); never before two candidates have "
        "trained all their epochs; 0 = off, e.g. 2",
    )
    retry_within: float = Field(
        default=0.0,
        ge=0,
        le=100,
        json_schema_extra=cli_flag("--retry-within", metavar="POINTS"),
        description="a candidate that trained all its epochs and falls short of its accept floor by at most this "
        "many validation points is trained again from its parent for `retry_epochs` (a node `<id>-retry`), "
        "and that node is judged against the same floor: a second draw for a child whose shortfall is "
        "within validation noise (on MNIST it moved accuracy by -0.13..+0.18, mean -0.01); 0 = off",
    )
    retry_epochs: int | None = Field(
        default=None,
        gt=0,
        json_schema_extra=cli_flag("--retry-epochs"),
        description="epochs of a retry (search.retry_within): one schedule from the parent's weights, as the near "
        "miss had, only longer; default twice student.epochs",
    )
    seeds: int = Field(
        default=1,
        gt=0,
        json_schema_extra=cli_flag("--seeds"),
        description="*-children: children per architecture, differing in seed",
    )
    select: Literal["best", "tree"] = Field(
        default="best",
        json_schema_extra=cli_flag("--select"),
        description="*-children: best keeps one child per generation; "
        "tree keeps up to `beam`, each parenting its own children",
    )
    beam: int = Field(
        default=2,
        gt=0,
        json_schema_extra=cli_flag("--beam"),
        description="select tree: children kept per generation (the smallest within tolerance, then the more accurate)",
    )
    max_drop: float = Field(
        default=1.0,
        ge=0,
        le=100,
        json_schema_extra=cli_flag("--max-drop"),
        description="accepted children stay within this many points of the root teacher's validation accuracy",
    )
    max_step_drop: float = Field(
        default=1.0,
        ge=0,
        le=100,
        json_schema_extra=cli_flag("--max-step-drop"),
        description="...and within this many points of their parent's",
    )
    accept_margin: float = Field(
        default=0.0,
        ge=0,
        le=100,
        json_schema_extra=cli_flag("--accept-margin", metavar="POINTS"),
        description="prefer children that clear their accept floor by at least this many points: one that passes "
        "by less is kept only if no candidate of its generation clears the floor by the margin (the larger ones are "
        "then trained too); room for its descendants, whose floor follows it; 0 = the smallest that passes",
    )
    max_generations: int = Field(
        default=10,
        gt=0,
        json_schema_extra=cli_flag("--max-generations"),
        description="stop after this many generations",
    )
    objective: Objective = Field(
        default="params",
        json_schema_extra=cli_flag("--objective"),
        description='what "smallest" means to the search: params (memory) or macs (multiply-accumulates per '
        "image: compute); candidates train in this order, the smallest within tolerance is kept, and depth and "
        "block cut where that saves the most of it. On a CNN the two disagree: a late conv holds many parameters "
        "and few MACs, an early one the reverse",
    )
    cut_sites: Literal["all"] | int = Field(
        default=1,
        json_schema_extra=cli_flag("--cut-sites"),
        description="depth and block operators: in how many blocks each proposes its cut, one child per block "
        "(ids name it: g5-depth-in3), the most saving (by `objective`) first; trained smallest first, a cut that "
        "saves less trains only when the ones that save more did not pass (with accept_margin: with room), so a "
        "failed most-saving cut falls back to the next block's; where candidates train together (*-children, "
        "candidates: all) up to this many times the children; all = every block",
    )
    candidates: Literal["smallest-first", "all"] = Field(
        default="smallest-first",
        description="smallest-first: train candidates in order of size and stop at the first within tolerance "
        "(the same choice as `all`, which also trains the larger ones)",
    )
    budget_epochs: int | None = Field(
        default=None,
        gt=0,
        description="stop before a training pass would take the candidates' total epochs "
        "(each over the whole training set) past this: a compute budget",
    )
    target_params: int | None = Field(
        default=None, gt=0, description="stop once an accepted child has at most this many parameters"
    )
    target_compression: float | None = Field(
        default=None, gt=1, description="stop once root params / child params reaches this"
    )
    target_macs: int | None = Field(
        default=None,
        gt=0,
        description="stop once an accepted child costs at most this many multiply-accumulates per image "
        "(its convs and linears; `ikd lineage` shows them): a compute target where latency matters more than size",
    )
    target_speedup: float | None = Field(
        default=None,
        gt=1,
        description="stop once an accepted child runs at least this many times faster than the root teacher, "
        "timed beside it on this machine's CPU (onnxruntime, one thread, `speedup_batch` images a call; `ikd "
        "export`'s protocol, about 13 s per accepted generation for a CIFAR-10 VGG-16) once, where it is accepted, "
        "and recorded as its speedup_timing: a target in the currency deployment pays, which MACs only approximate",
    )
    speedup_batch: int = Field(default=1, gt=0, description="images per timed call for target_speedup")

    @field_validator("width_factor", "slim_fraction")
    @classmethod
    def _scales_in_range(cls, scale: float | list[float]) -> float | list[float]:
        scales = scale if isinstance(scale, list) else [scale]
        if not scales or not all(0 < f < 1 for f in scales):
            raise ValueError(f"expected values between 0 and 1 (exclusive), got {scale}")
        # node ids name each in whole percent (g3-width75): two that round alike would share an id
        percents = [round(100 * f) for f in scales]
        if len(set(percents)) < len(percents):
            raise ValueError(
                f"expected values that round to distinct whole percents (node ids name them so), got {scale}"
            )
        # one form for one factor: `--width-factors 0.5` (a list) resumes a run configured `width_factor: 0.5`
        return scales[0] if len(scales) == 1 else scale

    @field_validator("cut_sites")
    @classmethod
    def _some_sites(cls, sites: Literal["all"] | int) -> Literal["all"] | int:
        if sites != "all" and sites < 1:
            raise ValueError(f"expected all or a number of blocks of at least 1, got {sites}")
        return sites

    def factors(self, key: str) -> list[float]:
        """The factors an operator's key (width_factor, slim_fraction) lists: one child each."""
        value = getattr(self, key)
        return value if isinstance(value, list) else [value]

    def many_children(self) -> bool:
        return self.strategy.endswith("-children")

    def many_teachers(self) -> bool:
        return self.strategy.startswith("ancestors-")

    def trains_together(self) -> bool:
        """Whether a parent's candidates train in one pass (else one at a time, smallest first)."""
        return self.many_children() or self.candidates == "all"

    def kept_per_generation(self) -> int:
        """How many children within tolerance parent the next generation: `beam` under `select: tree`, else one."""
        return self.beam if self.select == "tree" else 1

    @field_validator("operators")
    @classmethod
    def _known_operators(cls, operators: list[str]) -> list[str]:
        unknown = [op for op in operators if op not in OPERATORS]
        if unknown or not operators:
            raise ValueError(f"expected a non-empty list from {', '.join(OPERATORS)}, got {operators}")
        return operators


class EnsembleConfig(Strict):
    """Who teaches a child under the ancestors-* strategies, and how their signals combine."""

    ancestors: Literal["all"] | int = Field(
        default="all",
        json_schema_extra=cli_flag("--ancestors"),
        description="teachers from the child's chain: all its ancestors, or the last m (1 = the parent)",
    )
    experts: list[Given] = Field(
        default_factory=list,
        json_schema_extra=cli_flag("--teachers", metavar="DIR", words=True),
        description="extra teacher directories (`ikd train` outputs on the same split), any architecture",
    )
    aggregate: Literal["mean-kd", "mean-probs"] = Field(
        default="mean-kd",
        json_schema_extra=cli_flag("--aggregate"),
        description="mean-kd: mean of per-teacher KD terms; mean-probs: KD against the mean teacher distribution",
    )
    weighting: Literal["uniform", "val-accuracy"] = Field(
        default="uniform", description="teacher weights in the mean: equal, or proportional to validation accuracy"
    )
    drop: float = Field(
        default=0.0, ge=0, lt=1, description="probability of leaving a teacher out of a batch's KD term (never all)"
    )
    hints: Literal["parent", "each"] = Field(
        default="parent", description="hint from the parent only, or from every teacher (one regressor each)"
    )

    @field_validator("ancestors")
    @classmethod
    def _positive(cls, ancestors: str | int) -> str | int:
        if isinstance(ancestors, int) and ancestors < 1:
            raise ValueError("expected 'all' or a count >= 1")
        return ancestors

    def teacher_weights(self, val_accuracies: list[float | None]) -> list[float]:
        """Each teacher's weight in the mean (the objective normalises them), from their validation accuracies."""
        if self.weighting == "uniform":
            return [1.0] * len(val_accuracies)
        return [accuracy or 0.0 for accuracy in val_accuracies]


class ExecutorConfig(Strict):
    """Where candidates train; it changes how long a campaign takes, not what it computes."""

    kind: Literal["local", "ray"] = Field(
        default="local",
        json_schema_extra=cli_flag("--executor"),
        description="local: in this process; ray: each candidate a job on a Ray cluster "
        "(`pip install -e '.[ray]'` in ikd's checkout)",
    )
    ray_address: Given | None = Field(
        default=None,
        json_schema_extra=cli_flag("--ray-address", metavar="ADDRESS"),
        description="ray: cluster to join (e.g. ray://head:10001 or auto); "
        "default $RAY_ADDRESS, else a new local instance",
    )
    cpus_per_job: float = Field(
        default=1.0,
        gt=0,
        json_schema_extra=cli_flag("--cpus-per-job", metavar="N"),
        description="ray: CPUs reserved by each candidate's job (also its torch threads)",
    )
    gpus_per_job: float = Field(
        default=0.0,
        ge=0,
        json_schema_extra=cli_flag("--gpus-per-job", metavar="N"),
        description="ray: GPUs reserved by each candidate's job (> 0 trains on CUDA)",
    )


RECORDED = "recorded"  # validation context of a config read back from a lineage (CampaignConfig's rules)


class CampaignConfig(Strict):
    run_dir: Given = Field(
        default="runs/campaign",
        json_schema_extra=cli_flag("--run-dir"),
        description="where lineage.json and the nodes are written",
    )
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**62,  # torch's generators take a signed 64-bit seed; children add generation and sibling offsets
        json_schema_extra=cli_flag("--seed"),
        description="seeds weights, shuffling and augmentation (child of generation g: seed + g, its seed "
        "sibling j: + 7919 j; each node records its own)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        json_schema_extra=cli_flag("--precision"),
        description="auto: AMP on CUDA, bf16 on CPUs where it is measurably faster, else fp32",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto", json_schema_extra=cli_flag("--device"), description="auto: cuda > mps > cpu"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    loss: LossWeights = Field(default_factory=LossWeights)
    search: SearchConfig = Field(default_factory=SearchConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    baselines: bool = Field(
        default=False,
        json_schema_extra=cli_flag("--baselines"),
        description="also train the final student's architecture from scratch and by one-shot KD",
    )
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    log: Literal["none", "tensorboard"] = Field(
        default="none",
        json_schema_extra=cli_flag("--log"),
        description="tensorboard: every node's loss terms, accuracy and learning rate per epoch "
        "under run_dir/tb/<node> (needs `pip install -e '.[tensorboard]'` in ikd's checkout)",
    )
    time_limit: str | None = Field(
        default=None,
        json_schema_extra=cli_flag("--time-limit", metavar="DURATION"),
        description="stop at the last epoch boundary before this much time (2h30m, 90m, 45s, seconds, 2:30:00) has "
        "passed, keeping every finished node and the training state, and exit with code 75; the same "
        "command resumes",
    )

    @field_validator("time_limit", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            _duration_seconds(value)  # its ValueError says what is wrong: the format, or not above zero
        return value

    @model_validator(mode="after")
    def _strategy_options_fit(self, info: ValidationInfo) -> CampaignConfig:
        search = self.search
        if self.teacher.program is not None and self.teacher.dir is not None:
            raise ValueError(
                "teacher.program and teacher.dir: expected one root (a program of any architecture, or an "
                "`ikd train` output)"
            )
        if search.select == "tree" and not search.many_children():
            raise ValueError(f"search.select 'tree' needs a *-children strategy, not {search.strategy!r}")
        if search.seeds > 1 and not search.many_children():
            raise ValueError(f"search.seeds > 1 needs a *-children strategy, not {search.strategy!r}")
        if self.ensemble.experts and not search.many_teachers():
            raise ValueError(f"ensemble.experts needs an ancestors-* strategy, not {search.strategy!r}")
        # A run's recorded config is read back to compare it with today's (ikd.resume): it must not fail on
        # a rule added after the run began (it would then compare raw, keys added since as differences).
        recorded = bool(info.context and info.context.get(RECORDED))
        shorter = search.retry_epochs is not None and search.retry_epochs < self.student.epochs and not recorded
        if search.retry_within and (search.retry_epochs == self.student.epochs or shorter):
            raise ValueError(
                f"search.retry_epochs {search.retry_epochs}: expected more than student.epochs "
                f"({self.student.epochs}): a retry is its near miss's schedule, only longer (the same length "
                "would replay its training: same seed, data order and starting weights); default: twice"
            )
        first = self.student.first_epochs
        if search.retry_within and search.retry_epochs is not None and first and search.retry_epochs <= first:
            raise ValueError(
                f"search.retry_epochs {search.retry_epochs}: expected more than student.first_epochs ({first}): "
                "a user module's first student would be retried on a schedule no longer than its own"
            )
        one_pass = self.student.epochs + self.hint_pre_epochs()
        if search.budget_epochs is not None and search.budget_epochs < one_pass and not recorded:
            raise ValueError(
                f"search.budget_epochs {search.budget_epochs}: expected at least one candidate's training "
                f"({one_pass} epochs), or the campaign would train its teacher and stop before any student"
            )
        # one model listed twice would count twice in every mean of the teachers (teacher.dir may be one:
        # it is the root, which then teaches beside ensemble.ancestors when they do not reach it)
        seen: list[Path] = []
        for directory in self.ensemble.experts:
            if (where := same_place(directory)) in seen:
                raise ValueError(f"ensemble.experts: {directory} is listed twice")
            seen.append(where)
        return self

    def two_stage_hints(self) -> bool:
        """Whether a distillation pass starts with hint-only epochs (student.hint_epochs of them)."""
        return self.student.hint_stage == "two-stage" and self.loss.gamma > 0

    def hint_pre_epochs(self) -> int:
        """Epochs of hint pre-training a distillation pass starts with (two-stage), else 0."""
        return self.student.hint_epochs if self.two_stage_hints() else 0

    def inert_settings(self) -> list[str]:
        """'key: why' for each key set away from its default that this config never reads. Accepted (a
        config may carry them for another strategy), but a campaign says so when it starts."""
        search, ensemble, defaults = self.search, self.ensemble, CampaignConfig()

        def changed(section: BaseModel, default: BaseModel, names: tuple[str, ...]) -> list[str]:
            return [name for name in names if getattr(section, name) != getattr(default, name)]

        notes = []
        chain_final = self.student.final_epochs > 0 and self.student.final_teachers == "chain"
        if not search.many_teachers():
            read = ("weighting", "aggregate", "hints", "drop") if chain_final else ()
            for key in changed(ensemble, defaults.ensemble, ("ancestors", "weighting", "aggregate", "hints", "drop")):
                if key not in read:
                    notes.append(f"ensemble.{key}: read by the ancestors-* strategies, not {search.strategy}")
        elif ensemble.ancestors == 1 and not ensemble.experts and not chain_final:
            for key in changed(ensemble, defaults.ensemble, ("weighting", "aggregate", "hints", "drop")):
                notes.append(f"ensemble.{key}: each child has one teacher (ensemble.ancestors 1, no experts)")
        if search.select != "tree" and changed(search, defaults.search, ("beam",)):
            notes.append("search.beam: read under select: tree only")
        if search.many_children() and changed(search, defaults.search, ("candidates",)):
            notes.append(f"search.candidates: {search.strategy} trains every child together")
        if not search.target_speedup and changed(search, defaults.search, ("speedup_batch",)):
            notes.append("search.speedup_batch: read only with search.target_speedup")
        if not search.retry_within and search.retry_epochs is not None:
            notes.append("search.retry_epochs: read only with search.retry_within > 0")
        if self.teacher.dir is not None or self.teacher.program is not None:
            given = "teacher.dir imports one" if self.teacher.program is None else "teacher.program gives one"
            recipe = tuple(
                key for key in type(self.teacher).model_fields if key not in ("dir", "program", "hint_layer")
            )
            for key in changed(self.teacher, defaults.teacher, recipe):
                notes.append(f"teacher.{key}: read to train a root, not when {given}")
        if not self.two_stage_hints() and changed(self.student, defaults.student, ("hint_epochs",)):
            notes.append("student.hint_epochs: read only with student.hint_stage two-stage and loss.gamma > 0")
        if self.student.final_epochs == 0 and changed(self.student, defaults.student, ("final_teachers",)):
            notes.append("student.final_teachers: read only with student.final_epochs > 0")
        if self.loss.kd_warmup and not self.loss.alpha:
            notes.append("loss.kd_warmup: warms up the KD term, and loss.alpha 0 leaves none")
        elif self.loss.kd_warmup >= self.student.epochs:
            notes.append(
                f"loss.kd_warmup: {self.loss.kd_warmup:g} epochs restart with every training pass, and a child's "
                f"{self.student.epochs} never reach the full loss.alpha"
            )
        if search.early_rejection and self.student.epochs < 3:
            notes.append(
                "search.early_rejection: judges after a candidate's second epoch, before its last: "
                "needs student.epochs >= 3"
            )
        if self.student.hint_stage == "two-stage" and self.student.hint_epochs == 0:
            notes.append("student.hint_stage: two-stage with student.hint_epochs 0 trains as joint")
        if self.executor.kind == "local":
            for key in changed(self.executor, defaults.executor, ("ray_address", "cpus_per_job", "gpus_per_job")):
                notes.append(f"executor.{key}: read by executor.kind ray only")
        operator_keys = tuple(dict.fromkeys(key for op in OPERATORS.values() for key in op.search_keys()))
        for key in changed(search, defaults.search, operator_keys):
            readers = [name for name, op in OPERATORS.items() if key in op.search_keys()]
            if not set(readers) & set(search.operators):
                noun = "operators" if len(readers) > 1 else "operator"
                notes.append(f"search.{key}: read by the {' and '.join(readers)} {noun} only")
        return notes

    def decision_fields(self) -> dict[str, Any]:
        """The settings a lineage's results depend on; resuming with others would mix two campaigns."""
        document = self.model_dump(mode="json")
        # where and how long it runs, not what it computes
        for where_only in ("run_dir", "baselines", "device", "log", "executor", "time_limit"):
            document.pop(where_only)
        document["data"].pop("dir")
        return document


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


# SLURM's time formats: M:SS, H:MM:SS, D-H, D-H:MM, D-H:MM:SS (so a job script can pass its own limit)
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def _clock_seconds(text: str) -> float | None:
    match = _CLOCK.fullmatch(text)
    if match is None or ("-" not in text and ":" not in text):
        return None
    days, first, second, third = match.groups()
    if days is not None:  # D-H[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        if hours >= 24:
            return None
        total = int(days) * 86400 + hours * 3600
    elif third is not None:  # H:MM:SS
        minutes, seconds, total = int(second), int(third), int(first) * 3600
    else:  # M:SS
        minutes, seconds, total = int(first), int(second), 0
        if seconds >= 60:
            return None
        return minutes * 60 + seconds
    if minutes >= 60 or seconds >= 60:  # 1:75 is no time a scheduler writes
        return None
    return total + minutes * 60 + seconds


def parse_duration(text: str, flag: str = "--time-limit") -> float:
    """Seconds in `2h30m`, `90m`, `45s`, `1.5h`, plain `3600`, or SLURM's `2:30:00`, `1-12:00:00`."""
    try:
        return _duration_seconds(text)
    except ValueError as exc:
        raise ConfigError(f"{flag} {text.strip().lower()!r}: {exc}") from None


def _duration_seconds(text: str) -> float:
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        clock = _clock_seconds(text)
        match = _DURATION.fullmatch(text)
        if clock is not None:
            seconds = clock
        elif not text or match is None:
            raise ValueError("expected a duration such as 2h30m, 90m, 45s, seconds or 2:30:00") from None
        else:
            hours, minutes, secs = (float(part or 0) for part in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs
    if not seconds > 0:
        raise ValueError("expected a duration greater than zero")
    if seconds == float("inf"):
        raise ValueError("expected a finite duration (to run without a limit, leave the limit out)")
    return seconds


def _valid_keys(model: type[BaseModel], path: tuple) -> list[str]:
    for part in path[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return sorted(model.model_fields)


def validate_config(
    document: Any, source: str, overridden: Collection[str] = (), from_flags: bool = False
) -> CampaignConfig:
    """`document` checked as a CampaignConfig; an error names `source`, or what set the key when it is
    one of `overridden` (dotted keys): its flag when `from_flags`, else the override."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(document).__name__}")
    try:
        return CampaignConfig.model_validate(document)
    except ValidationError as exc:
        raw_key, first = first_validation_error(exc)
        key = raw_key if first["type"] == "extra_forbidden" else _config_key(first["loc"])
        if first["type"] == "extra_forbidden":
            valid = ", ".join(_valid_keys(CampaignConfig, first["loc"]))
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys here: {valid}") from None
        message = first["msg"].removeprefix("Value error, ")
        if not key:  # a rule across keys: the message names them
            given = " with the flags given" if from_flags and overridden else ""
            raise ConfigError(f"{source}{given}: {message}") from None
        if key in overridden:
            flag = next((f.name for f in command_line_flags() if f.key == key), None) if from_flags else None
            given = f"from {flag}" if flag else "an override"
            raise ConfigError(f"{key} = {first.get('input')!r} ({given}, not {source}): {message}") from None
        raise ConfigError(f"{source}: {key} = {first.get('input')!r}: {message}") from None


def _config_key(loc: tuple[Any, ...]) -> str:
    """The dotted config key of a validation error's location: its field names only, not what pydantic
    adds past them (a union's branch, `search.width_factor.float`, or a list index)."""
    model: Any = CampaignConfig
    parts = []
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            break
        parts.append(part)
        model = fields[part].annotation
    return ".".join(parts)


class _YamlLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)
    and reads only decimal digits as integers (_DECIMAL_INT)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys it brings may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            with contextlib.suppress(TypeError):  # an unhashable key: SafeLoader's own error follows
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 also reads 0x1 (hex), 012 (octal: 10), 0b11 and 1:30 (base 60: 90) as integers, so `arch: 0x1`
# trained a one-conv network of width 1; these stay text here, for the key to accept or refuse as text.
_INT_TAG = "tag:yaml.org,2002:int"
_DECIMAL_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, _DECIMAL_INT if tag == _INT_TAG else pattern) for tag, pattern in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_problem(exc: Exception) -> str:
    """Where and what, in one line: `line 3, column 9: key 'max_drop' given twice in one mapping`."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem or exc.context or type(exc).__name__}"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def load_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    *,
    base: dict[str, Any] | None = None,
    source: str | None = None,
    from_flags: bool = False,
) -> CampaignConfig:
    """Read a YAML config (or start from `base`, a dict of sections, or the defaults) and apply
    dotted-key overrides; `source` names the config in errors (default: the path, or "defaults"), and
    a bad overridden value is blamed on its `ikd compress` flag when `from_flags`, else on the override.
    An override of None means "not given" (a flag left out), so it cannot unset a key."""
    document: dict[str, Any] = copy.deepcopy(base) if base is not None else {}
    source = source or (str(path) if path is not None else "defaults")
    if path is not None and not str(path).strip():
        raise ConfigError("--config '': expected a YAML file, not an empty string")
    if path is not None:
        try:
            document = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_YamlLoader)  # a SafeLoader
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected a YAML file"
            ) from None
        except (yaml.YAMLError, ValueError, RecursionError) as exc:  # e.g. a 5000-digit number, absurd nesting
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
        if document is None:  # an empty file: the defaults
            document = {}
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        target = document
        *parents, leaf = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{source}: {part} must be a mapping to set {dotted}")
        target[leaf] = value
    overridden = [k for k, v in (overrides or {}).items() if v is not None]
    return validate_config(document, source, overridden, from_flags)


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every key that holds a value (not a section), dotted, in declaration order."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaf_fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


@dataclass(frozen=True)
class Flag:
    """A config key that `ikd compress` also takes on the command line."""

    key: str  # dotted, e.g. search.max_drop
    name: str  # e.g. --max-drop
    annotation: Any
    default: Any
    description: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    words: bool = False  # a list as separate words (--teachers a b), not comma-separated

    @property
    def dest(self) -> str:
        """The attribute argparse stores the flag's value under."""
        return self.name.removeprefix("--").replace("-", "_")


def command_line_flags() -> list[Flag]:
    """The config keys marked with `cli_flag`, in declaration order."""
    flags = []
    for key, field in _leaf_fields(CampaignConfig):
        extra = field.json_schema_extra
        if isinstance(extra, dict) and "cli_flag" in extra:
            spec = cast(dict[str, Any], extra["cli_flag"])  # as cli_flag() wrote it
            choices = spec["choices"]
            flags.append(
                Flag(
                    key=key,
                    name=spec["name"],
                    annotation=field.annotation,
                    default=field.get_default(call_default_factory=True),
                    description=field.description or "",
                    metavar=spec["metavar"],
                    choices=tuple(choices) if choices else None,
                    words=spec["words"],
                )
            )
    return flags


def as_config(
    config: CampaignConfig | dict[str, Any] | str | Path | None, overrides: dict[str, Any] | None = None
) -> CampaignConfig:
    """A validated config from a CampaignConfig, a dict of config keys or a YAML path (None: the
    defaults), with dotted-key `overrides` on top."""
    if isinstance(config, CampaignConfig):
        # checked again (its fields may have been assigned since); its data section keeps only the keys that
        # were set, since those left unset come from an imported teacher (teachers.with_teachers_data)
        config = config.model_dump() | {"data": config.data.model_dump(exclude_unset=True)}
    if isinstance(config, dict):  # whole sections first, then the dotted overrides on top
        sections = {k: v for k, v in config.items() if "." not in k}  # dotted keys set one value, as overrides do
        dotted = {k: v for k, v in config.items() if "." in k}
        return load_config(None, {**dotted, **(overrides or {})}, base=sections, source="the config given")
    return load_config(config, overrides)


def plain_type(annotation: Any) -> Any:
    """The type under an Annotated one: a checked str is still a str to a reader or a flag's parser."""
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _type_name(annotation: Any) -> str:
    annotation = plain_type(annotation)
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return " or ".join(repr(a) for a in args)
    if args and get_origin(annotation) is not list:
        return " or ".join(_type_name(a) for a in args)
    if get_origin(annotation) is list:
        return f"list of {_type_name(args[0])}"
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def config_reference() -> str:
    """Markdown table of every config key, the `ikd compress` flag that sets it, its type, default
    and meaning, from the models above."""
    flags = {flag.key: flag.name for flag in command_line_flags()}
    lines = ["| key | flag | type | default | meaning |", "|---|---|---|---|---|"]
    for key, field in _leaf_fields(CampaignConfig):
        default = field.get_default(call_default_factory=True)
        flag = f"`{flags[key]}`" if key in flags else "-"
        lines.append(
            f"| `{key}` | {flag} | {_type_name(field.annotation)} | `{default!r}` | {field.description or ''} |"
        )
    return "\n".join(lines)
