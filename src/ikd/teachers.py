"""The models that teach: the root teacher (trained here, imported from `ikd train`, or a user's
own module) and the expert teachers of the ancestors-* strategies. Each is checked against the
campaign's data split, copied into the run directory and recorded; `TeacherModels` then loads
any node that teaches, keeping only the current pass's teachers in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ikd.arch import FP32_BYTES, ArchSpec, preset_for
from ikd.checkpoint import (
    META_FILE,
    load_model,
    other_classes,
    other_images,
    other_shape,
    read_metadata,
    recorded_data_dir,
    recorded_split,
    save_model,
    trained_augmentation,
)
from ikd.config import CampaignConfig
from ikd.context import CampaignContext
from ikd.data import effective_image_size
from ikd.data.paths import same_place
from ikd.errors import ConfigError, IkdError, first_validation_error
from ikd.external import NO_HINT_LAYER, ExternalTeacher, Teacher, module_digest
from ikd.fit import fit
from ikd.lineage import ROOT_ID, Lineage, NodeKind, NodeRecord, RunDir, Status
from ikd.model import VGG, build_model
from ikd.rules import points
from ikd.train import monotonic_deadline, near_chance
from ikd.views import unfitting_views


class TeacherModels:
    """Node id -> model, loaded from the run directory (or the user's module for an external root)."""

    def __init__(
        self,
        ctx: CampaignContext,
        lineage: Callable[[], Lineage],
        user_module: torch.nn.Module | None,
        hint_layer: str | None,
    ):
        """`lineage`: the campaign's current lineage (read at each load, so it is never a stale copy)."""
        self.ctx, self.lineage = ctx, lineage
        self.user_module, self.hint_layer = user_module, hint_layer
        self._external: ExternalTeacher | None = None
        self._loaded: dict[str, Teacher] = {}

    def __call__(self, node_id: str) -> Teacher:
        if node_id not in self._loaded:
            node = self.lineage().find(node_id)
            if node is not None and node.kind is NodeKind.EXTERNAL:
                self._loaded[node_id] = self.external()
            elif node is not None:
                self._loaded[node_id], _ = self.ctx.run.load_node(node, map_location=self.ctx.device)
            else:
                self._loaded[node_id], _ = load_model(self.ctx.run.node_dir(node_id), map_location=self.ctx.device)
        return self._loaded[node_id]

    def keep_only(self, node_ids: list[str]) -> None:
        """Forget every other model: a campaign's memory holds one pass's teachers, not the chain."""
        self._loaded = {k: m for k, m in self._loaded.items() if k in node_ids}

    def external(self) -> ExternalTeacher:
        if self.user_module is None:
            raise ConfigError(
                f"{self.ctx.run.path}: the root teacher is a user module; pass it again "
                "(ikd.compress(..., teacher=module)) to resume"
            )
        if self._external is None:
            if self.hint_layer is None and self.ctx.config.loss.gamma > 0:
                raise ConfigError(NO_HINT_LAYER)
            data = self.ctx.data
            example = torch.zeros(2, data.in_channels, data.image_size, data.image_size, device=self.ctx.device)
            module = self.user_module
            if isinstance(module, torch.nn.Module):
                module = module.to(self.ctx.device)
            self._external = ExternalTeacher(module, self.hint_layer, example, data.num_classes)
        return self._external


DATA_KEYS = ("name", "val_fraction", "split_seed", "image_size")  # what a model's dataset record says of its split


def with_teachers_data(config: CampaignConfig, run: RunDir) -> tuple[CampaignConfig, str | None]:
    """`config` with the data keys it leaves unset taken from where its imported root was trained, and a note
    saying which: an imported teacher was trained on one split, and a campaign on another could not use it
    (`ikd distill` reads them the same way). From the run's recorded config once the run exists (the teacher's
    directory may have changed or gone since: the run holds its own copy), else from teacher.dir's model.json;
    an image folder's place from that model.json. Unchanged, with no note, without a teacher.dir, when
    data.name names another dataset than the teacher's (its import then names the one to set), or when neither
    can be read (said where the teacher is imported)."""
    if config.teacher.dir is None:
        return config, None
    try:
        record = read_metadata(Path(config.teacher.dir)).get("dataset", {})
    except IkdError:
        record = {}
    stored = run.load().config.get("data", {}) if run.exists() else {}
    origin = stored or record
    if not isinstance(origin.get("name"), str):
        return config, None
    source = f"as run {run.path} recorded" if stored else f"as teacher.dir {config.teacher.dir} was trained"
    recorded: dict[str, Any] = dict(zip(DATA_KEYS, (origin["name"], *recorded_split(origin)), strict=True))
    if recorded["image_size"] == effective_image_size(recorded["name"], None):
        recorded["image_size"] = None  # its dataset's own size: nothing to set
    if record.get("name") == recorded["name"]:
        recorded["dir"] = recorded_data_dir(record)
    given = config.data.model_fields_set
    if "name" in given and config.data.name != recorded["name"]:
        return config, None
    inherited = {k: v for k, v in recorded.items() if k not in given and v is not None and v != getattr(config.data, k)}
    if not inherited:
        return config, None
    document = config.model_dump(exclude_unset=True)
    document["data"] = {**document.get("data", {}), **inherited}
    said = ", ".join(f"data.{k} {v}" for k, v in inherited.items())
    try:
        return CampaignConfig.model_validate(document), f"{said}: {source}"
    except ValidationError as exc:
        key, first = first_validation_error(exc)
        raise ConfigError(f"{said} ({source}): {key}: {first['msg']}") from None


def import_teacher(ctx: CampaignContext, directory: Path, key: str = "teacher.dir") -> VGG:
    """A model from `ikd train`, refused unless it was trained on this campaign's split: otherwise its
    validation accuracy could include images it trained on."""
    data = ctx.data
    model, metadata = load_model(directory, map_location=ctx.device)
    spec, recorded = model.spec, metadata.get("dataset", {})
    if recorded.get("name") not in (None, data.name):  # before the shapes: the dataset is the thing to fix
        raise ConfigError(
            f"{key} {directory}: trained on {recorded['name']}, the campaign's data is {data.name} "
            f"(set data.name, --dataset {recorded['name']})"
        )
    if why := other_shape(spec, data):
        resize = f" (set data.image_size, --image-size {spec.image_size})" if spec.image_size != data.image_size else ""
        raise ConfigError(f"{key} {directory}: model {why}{resize}")
    if why := other_classes(recorded, data):
        raise ConfigError(f"{key} {directory}: {why}")
    split = (recorded.get("name"), recorded.get("val_fraction"), recorded.get("split_seed"))
    expected = (data.name, ctx.config.data.val_fraction, ctx.config.data.split_seed)
    if split != expected:
        raise ConfigError(
            f"{key} {directory}: trained on dataset/val_fraction/split_seed {split}, "
            f"the campaign uses {expected}; its validation accuracy would not be honest (set data.*: --dataset, "
            "--val-fraction, --split-seed; or leave them unset to take the teacher's)"
        )
    if list(recorded.get("mean", data.mean)) != list(data.mean):
        raise ConfigError(f"{key} {directory}: normalisation differs from this dataset's")
    return model


def root_teacher(ctx: CampaignContext, lineage: Lineage, models: TeacherModels) -> NodeRecord | None:
    """The root's record when it is new (trained, imported or the user's module, its files written),
    None when the lineage already has it."""
    existing = lineage.find(ROOT_ID)
    if existing is not None:
        if existing.kind is NodeKind.EXTERNAL:
            _same_module(ctx, existing, models.external())
        elif models.user_module is not None:
            raise ConfigError(
                f"{ctx.run.path}: its root teacher is {existing.arch_summary()}, not a module passed from Python; "
                "the teacher passed would not be used: use another run_dir"
            )
        else:
            _same_data(ctx)
        return None
    started = time.perf_counter()
    if models.user_module is not None:
        return _external_root(ctx, models.external(), started)
    data, cfg = ctx.data, ctx.config.teacher
    result, epochs = None, 0
    if cfg.dir:
        model = import_teacher(ctx, Path(cfg.dir))
        save_model(ctx.run.node_dir(ROOT_ID), model, read_metadata(Path(cfg.dir)))
        val, test = ctx.accuracy(model, data.val), ctx.accuracy(model, data.test)
    else:
        spec = preset_for(cfg.arch, data)
        model = build_model(spec, seed=ctx.config.seed)
        ctx.log(f"training the root teacher {cfg.arch} ({spec.num_params():,} params)")
        result, tested = fit(
            model,
            data,
            ctx.train_config(cfg),
            out=ctx.run.node_dir(ROOT_ID),
            val_fraction=ctx.config.data.val_fraction,
            split_seed=ctx.config.data.split_seed,
            progress=ctx.progress,
            description=ROOT_ID,
            on_epoch=ctx.on_epoch,
            state_dir=ctx.state_root / ROOT_ID,
            discard_foreign_state=True,  # the campaign's config decides the job: another one's state is stale
            deadline=monotonic_deadline(ctx.deadline),
        )
        # the model holds its best-by-validation weights, so that epoch's score is its val accuracy
        val, test, epochs = result.best_val_accuracy, tested["accuracy"], cfg.epochs
    ctx.log(f"root teacher: val {points(val):.2f}%, test {points(test):.2f}%")
    if warning := near_chance(val, data.num_classes):
        ctx.warn(f"the root teacher's {warning}")
    return NodeRecord.of_spec(
        ROOT_ID,
        model.spec,
        root_params=None,
        generation=0,
        status=Status.TEACHER,
        val_accuracy=val,
        val_accuracy_last=result.last_val_accuracy if result else None,
        test_accuracy=test,
        best_epoch=result.best_epoch if result else None,
        epochs=epochs,
        seed=ctx.config.seed,
        # a teacher resumed from a pause: the processes before this one trained it too
        seconds=round(time.perf_counter() - started + (result.earlier_seconds if result else 0.0), 2),
    )


def _same_data(ctx: CampaignContext) -> None:
    """Refuse to resume a run on other images than its root's: data.dir is not a decision key (where the
    files lie is not what they are), but for npz, idx or an image folder the directory is the dataset, and
    a child validated on another split could be scored on images its ancestors trained on."""
    meta = ctx.run.node_dir(ROOT_ID) / META_FILE
    if not meta.is_file():
        return  # no record to compare (a damaged run): the checksums decide what is retrained
    recorded = read_metadata(ctx.run.node_dir(ROOT_ID)).get("dataset", {})
    data = ctx.data
    if why := other_images(recorded, data):
        raise ConfigError(
            f"{ctx.run.path}: its root teacher {why} Give the data the run was made with, or use another run_dir"
        )
    if why := other_classes(recorded, data):  # the same sizes and statistics, the class folders renamed
        raise ConfigError(f"{ctx.run.path}: its root teacher {why}: give the data the run was made with")


def _same_module(ctx: CampaignContext, root: NodeRecord, teacher: ExternalTeacher) -> None:
    """Refuse to resume a run on a module other than its root (other weights, or another hint layer):
    its children would be distilled from one teacher and judged against another's accuracy. Runs
    recorded before the weights' digest was kept are checked by parameter count."""
    recorded = root.arch.get("state_sha256")
    if recorded is not None and recorded != module_digest(teacher.module):
        raise ConfigError(
            f"{ctx.run.path}: the teacher passed is not the run's root (its weights differ from the ones "
            "recorded); pass the same trained module, or use another run_dir"
        )
    if recorded is None and teacher.num_params() != root.params:
        raise ConfigError(
            f"{ctx.run.path}: the teacher passed has {teacher.num_params():,} params, "
            f"the run's root had {root.params:,}; not the same teacher"
        )
    if "hint_layer" in root.arch and root.arch["hint_layer"] != teacher.hint_layer:
        raise ConfigError(
            f"{ctx.run.path}: hint_layer {teacher.hint_layer!r}, where the run's students were distilled "
            f"with {root.arch['hint_layer']!r}; pass that one, or use another run_dir"
        )


def _external_root(ctx: CampaignContext, teacher: ExternalTeacher, started: float) -> NodeRecord:
    val, test = ctx.accuracy(teacher, ctx.data.val), ctx.accuracy(teacher, ctx.data.test)
    params = teacher.num_params()
    ctx.log(f"root teacher (user module): val {points(val):.2f}%, test {points(test):.2f}%")
    program = ctx.config.teacher.program
    uncounted = "" if teacher.macs else "; MACs not counted (torch's FLOP counter could not count its forward)"
    return NodeRecord(
        id=ROOT_ID,
        generation=0,
        status=Status.TEACHER,
        arch={
            # the class a program loads as says nothing of the model: its file does
            "external": f"{Path(program).name} (torch.export)" if program else type(teacher.module).__name__,
            "state_sha256": module_digest(teacher.module),
            "hint_layer": teacher.hint_layer,
        },
        params=params,
        size_bytes_fp32=FP32_BYTES * params,
        macs=teacher.macs or 0,
        compression=1.0,
        val_accuracy=val,
        test_accuracy=test,
        seed=ctx.config.seed,
        seconds=round(time.perf_counter() - started, 2),
        reason=f"user module, hint layer {teacher.hint_layer!r}{uncounted}",
    )


def expert_id(index: int, directory: str) -> str:
    name = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in Path(directory).name)[:60]
    return f"expert{index}-{name}".rstrip(".")


def expert_ids(experts: list[str], root_dir: str | None = None) -> list[str]:
    """The node ids of the configured expert teachers (`ensemble.experts`), in order: the experts
    that teach, where the lineage may also hold ones a --force run dropped from the config. An expert
    that is the directory the root was imported from (`root_dir`, see imported_root_dir) is the root:
    copied in again under another id it would teach twice wherever the root is already an ancestor."""
    root = same_place(root_dir) if root_dir is not None else None
    return [
        ROOT_ID if same_place(directory) == root else expert_id(i, directory)
        for i, directory in enumerate(experts, start=1)
    ]


def check_teacher_views(ctx: CampaignContext, root_dir: str | None, user_module: object | None) -> None:
    """`loss.teacher_views` asks every teacher for its answers on views of the images: refuse, before anything
    trains, a teacher whose training never showed it those views. Every student teaches the next, so the
    students' augmentation counts too. A user's own module is taken on trust: its training is not on record."""
    views = ctx.config.loss.teacher_views
    if views == "none":
        return
    config = ctx.config

    def recorded(node_id: str, directory: str) -> str | None:
        # the run's copy once it holds one: the directory it came from may have moved since
        copy = ctx.run.node_dir(node_id)
        return trained_augmentation(read_metadata(copy if (copy / META_FILE).is_file() else Path(directory)))

    trained: dict[str, str | None] = {"every student (student.augment)": ctx.data.augment_for(config.student.augment)}
    if root_dir is not None:
        trained[root_dir] = recorded(ROOT_ID, root_dir)
    elif user_module is None:
        trained["the root teacher (teacher.augment)"] = ctx.data.augment_for(config.teacher.augment)
    for node_id, directory in zip(expert_ids(config.ensemble.experts, root_dir), config.ensemble.experts, strict=True):
        trained[directory] = recorded(node_id, directory)
    for who, augment in trained.items():
        if why := unfitting_views(views, augment, who, "loss.teacher_views"):
            raise ConfigError(why)


def imported_root_dir(config: CampaignConfig, user_module: object | None) -> str | None:
    """The directory the root teacher is imported from: teacher.dir, unless a user's module is the root
    (teacher.dir is then not read)."""
    return config.teacher.dir if user_module is None else None


COPIED_FROM = "from "  # an expert node's reason: the directory it was copied from


def new_experts(ctx: CampaignContext, lineage: Lineage, root_dir: str | None) -> dict[str, tuple[str, VGG]]:
    """The configured expert teachers not yet in the run, by node id (their directory and model),
    loaded and checked before the run writes anything (a mistyped path leaves no half-made run
    behind); refuses an expert the run holds under that id but copied from another directory."""
    loaded = {}
    experts = ctx.config.ensemble.experts
    for node_id, directory in zip(expert_ids(experts, root_dir), experts, strict=True):
        if node_id == ROOT_ID:
            continue  # the root teacher itself, in the run already
        if (recorded := lineage.find(node_id)) is None:
            loaded[node_id] = (directory, import_teacher(ctx, Path(directory), "ensemble.experts"))
        elif same_place(recorded.reason.removeprefix(COPIED_FROM)) != same_place(directory):
            raise ConfigError(
                f"{ctx.run.path}: its {node_id} was copied {recorded.reason}, not from {directory}, and its "
                "students learnt from that one; use another run_dir"
            )
    return loaded


def expert_teachers(ctx: CampaignContext, lineage: Lineage, loaded: dict[str, tuple[str, VGG]]) -> list[NodeRecord]:
    """Records of the `loaded` expert teachers (new_experts), each copied in first (so a resume never
    depends on the original files)."""
    records = []
    for node_id, (directory, model) in loaded.items():
        started = time.perf_counter()
        save_model(ctx.run.node_dir(node_id), model, read_metadata(Path(directory)))
        val, test = ctx.accuracy(model, ctx.data.val), ctx.accuracy(model, ctx.data.test)
        records.append(
            NodeRecord.of_spec(
                node_id,
                model.spec,
                root_params=lineage.root().params,
                generation=0,
                status=Status.EXPERT,
                val_accuracy=val,
                test_accuracy=test,
                seed=ctx.config.seed,
                seconds=round(time.perf_counter() - started, 2),
                reason=f"{COPIED_FROM}{directory}",
            )
        )
        ctx.log(f"expert teacher {node_id}: {model.spec.summary()}, val {points(val):.2f}%")
    return records


def first_student(ctx: CampaignContext, spec: ArchSpec | None) -> ArchSpec:
    """Where the chain starts under a user's module, which cannot be shrunk: `spec` (compress(student=...)),
    else student.first_arch, else vgg11, fitted to the data."""
    if spec is not None:
        return spec
    return preset_for(ctx.config.student.first_arch or "vgg11", ctx.data)
