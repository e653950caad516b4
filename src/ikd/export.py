"""Export a trained model for use outside ikd, check the export, and time it on this CPU.

What is exported: one node of a campaign's lineage (written to `RUN_DIR/export/<id>/`), or a model
directory of `ikd train` / `ikd distill` (written to `MODEL_DIR/export/`), unless told otherwise (a
path ending in the format's extension is the file itself). Two formats:
- safetensors: the node's state dict alone, with what is needed to use it in the file's metadata
  (arch spec, mean/std, class names, input shape), so it works without the run directory;
- onnx: a graph that takes float32 NCHW images scaled to [0, 1] and normalises them itself.
  Before it is written it is run with onnxruntime on the node's own test images and must agree
  with PyTorch, so a model.onnx on disk is one that was checked.

Latency is measured (ikd.latency) with onnxruntime and PyTorch at batch 1 and 64 for the model and
its reference (a node's root teacher, a distilled model's recorded teacher) together, interleaved in
one process; a node's are recorded in the lineage. `export.json` next to the exported files keeps the
verification numbers and the latencies.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ikd import rules
from ikd._version import __version__
from ikd.atomic import atomic_write_bytes, atomic_write_json, cannot_make_dir
from ikd.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    cpu_state_dict,
    dataset_record,
    load_model,
    misfit,
    recorded_data_dir,
    recorded_split,
    recorded_teachers,
)
from ikd.data import load_dataset, normalize
from ikd.dirlock import held
from ikd.errors import CheckpointError, ConfigError, IkdError
from ikd.external import FrozenProgram, first_line, load_program_for_timing, module_digest
from ikd.latency import (
    LATENCY_THREADS,
    Timed,
    beside_reference,
    cpu_session,
    measure_latencies,
    record_latency,
)
from ikd.lineage import (
    EXPORT_DIR,
    LINEAGE_FILE,
    NO_NODE_YET,
    NODES_DIR,
    Latency,
    Lineage,
    NodeKind,
    NodeRecord,
    RunDir,
    Status,
    campaign_of_node,
    file_sha256,
    open_run_dir,
)
from ikd.model import VGG, NormalizedModel
from ikd.train_state import STATE_DIR

FORMATS = ("onnx", "safetensors")
ONNX_FILE = "model.onnx"
SUMMARY_FILE = "export.json"
# an --out path ending in its format's extension names the file; anything else names a directory
EXTENSIONS = {"onnx": ".onnx", "safetensors": ".safetensors"}
# beside an exported file named by --out: x.onnx -> x.export.json
SUMMARY_SUFFIX = ".export.json"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
VERIFY_IMAGES = 256
VERIFY_BATCH = 64
MAX_LOGIT_DIFF = 1e-3


class ExportMismatch(IkdError):
    """The exported graph does not compute what the node computes."""


@dataclass(frozen=True)
class Verification:
    images: int
    top1_agree: int
    max_abs_logit_diff: float


@dataclass(frozen=True)
class Exported:
    """What an export is of: a campaign's node, or a model directory of `ikd train` / `ikd distill`."""

    kind: Literal["node", "model"]  # its key in the files' metadata (ikd.<kind>) and in export.json
    id: str  # the node id, or the model directory as given
    headline: str  # what the summary's first line says of it
    sha256: str | None  # of its weights file: export.json keeps earlier entries only for the same weights

    @classmethod
    def of_node(cls, node: NodeRecord) -> Exported:
        return cls(
            "node",
            node.id,
            f"{node.id} ({node.status}, {node.params:,} params, compression {node.compression:.1f}x)",
            node.sha256,
        )

    @classmethod
    def of_model_dir(cls, directory: Path, model: VGG, metadata: dict[str, Any]) -> Exported:
        params = model.spec.num_params()
        teachers = recorded_teachers(metadata)
        teacher_params = teachers[0].get("params") if teachers else None
        which = "its teacher" if len(teachers) == 1 else "its first teacher"
        fewer = f", {teacher_params / params:.1f}x fewer than {which}" if isinstance(teacher_params, int) else ""
        return cls(
            "model", str(directory), f"{directory} ({params:,} params{fewer})", file_sha256(directory / WEIGHTS_FILE)
        )


@dataclass
class ExportResult:
    subject: Exported
    format: str
    files: list[Path]
    verification: Verification | None = None
    latency: list[Latency] = field(default_factory=list)
    teacher_id: str | None = None
    teacher_latency: list[Latency] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def speedups(self) -> list[dict[str, Any]]:
        """teacher ms / node ms for every (runtime, batch) the teacher was timed beside the node."""
        return [
            {
                "runtime": m.runtime,
                "batch": m.batch,
                "node_ms": m.median_ms,
                "teacher_ms": m.teacher_ms,
                "speedup": m.teacher_ms / m.median_ms,
            }
            for m in self.latency
            if m.teacher_ms is not None
        ]

    def summary(self) -> str:
        lines = [
            f"ikd export: {self.subject.headline} as {self.format}",
            "  wrote " + ", ".join(str(path) for path in self.files),
        ]
        if self.verification is not None:
            v = self.verification
            lines.append(
                f"  onnxruntime vs PyTorch on {v.images} test images: top-1 agrees on "
                f"{v.top1_agree}/{v.images}, max |logit difference| {v.max_abs_logit_diff:.2e}"
            )
        if self.latency:
            first = self.latency[0]
            threads = f"{first.threads} thread{'s' if first.threads > 1 else ''}"
            lines.append(f"  latency, ms per call on a whole batch (least round median), {first.device} ({threads}):")
            lines += ["    " + row for row in self._latency_table()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def _latency_table(self) -> list[str]:
        speedups = {(s["runtime"], s["batch"]): s for s in self.speedups()}
        rows = [("runtime", "batch", self.subject.id, self.teacher_id or "teacher", "speed-up")]
        for m in self.latency:
            s = speedups.get((m.runtime, m.batch))
            teacher, speedup = (f"{s['teacher_ms']:.3f}", f"{s['speedup']:.1f}x") if s else ("-", "-")
            rows.append((m.runtime, str(m.batch), f"{m.median_ms:.3f}", teacher, speedup))
        widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
        # the runtime's name left-aligned, the numbers right-aligned
        return [
            "  ".join([runtime.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)])
            for runtime, *rest in rows
        ]


def export(
    source: Path,
    fmt: str,
    *,
    node: str | None = None,
    out: Path | None = None,
    data_dir: str | Path | None = None,
    repeats: int | None = None,
    rounds: int | None = None,
    threads: int | None = None,
    measure_latency: bool = True,
) -> ExportResult:
    """Export as `fmt` the node `node` of the campaign run in `source`, or (no `node`) the model directory
    `source` that `ikd train` or `ikd distill` wrote; verify an ONNX export and time the model beside its
    reference (a node's latencies are recorded in the lineage)."""
    _check_options(fmt, repeats, rounds, threads)
    source = Path(source)
    plan = _Plan(
        fmt, Path(out) if out is not None else None, data_dir, _Timing(measure_latency, repeats, rounds, threads)
    )
    if node is not None and (source / META_FILE).is_file() and not (source / LINEAGE_FILE).is_file():
        raise ConfigError(f"--node {node}: {source} is a model directory, not a campaign run; drop --node")
    if node is not None:
        return _export_node(source, node, plan)
    if (source / META_FILE).is_file() or (source / STATE_DIR).is_dir():
        return _export_model_dir(source, plan)
    if (source / LINEAGE_FILE).is_file():
        return _export_node(source, answer_id(source), plan)
    raise ConfigError(
        f"{source}: neither a model directory ({META_FILE}, from `ikd train` or `ikd distill`) nor a campaign run "
        f"({LINEAGE_FILE}, from `ikd compress`)"
    )


def answer_id(run_dir: Path) -> str:
    """The campaign's answer, what `ikd export RUN` exports when no --node names another."""
    run = open_run_dir(run_dir)
    lineage = run.load()
    if not lineage.nodes:
        raise ConfigError(f"{run.lineage_path}: has {NO_NODE_YET}; nothing to export")
    pick = f"name a node with --node ID (`ikd lineage {run_dir}`)"
    if not lineage.answered():
        raise ConfigError(f"{run_dir}: the campaign has not finished, so it has no answer yet; {pick}")
    answer = lineage.final()
    if answer.id == lineage.root().id:
        raise ConfigError(f"{run_dir}: the campaign accepted no student, its answer is its teacher; {pick}")
    final_epochs = lineage.config.get("student", {}).get("final_epochs", 0)
    if final_epochs and lineage.distilled() is None:  # stopped, then paused in its final distillation
        raise ConfigError(
            f"{run_dir}: the search chose {answer.id}, whose final distillation ({final_epochs} epochs) has not "
            f"finished: rerun `ikd compress` to finish it, or {pick}"
        )
    return answer.id


def _export_node(run_dir: Path, node_id: str, plan: _Plan) -> ExportResult:
    """A node: the run directory is held for the whole export, so it never races a campaign or another export."""
    run = open_run_dir(run_dir)  # checked before locking: the lock would create the directory
    _find_node(run, run.load(), node_id)  # before its id makes a path; found again under the lock
    files = _planned_files(plan, run.path / EXPORT_DIR / node_id, {run.path / NODES_DIR: "the run's own nodes"})
    with run.locked("ikd export"):
        lineage = run.load()
        node = _find_node(run, lineage, node_id)
        model, metadata = _load_node(run, node)
        result = ExportResult(subject=Exported.of_node(node), format=plan.format, files=[])
        if (note := not_the_answer(lineage, node)) is not None:  # exported as asked, but said
            result.notes.append(note)
        dataset = dataset_record(metadata, run.node_dir(node.id))
        reference = _root_reference(run, lineage, node, dataset, result.notes) if plan.timing.measure else None
        record_latency(run, _export(result, model, dataset, files, plan, reference))
    return result


def _export_model_dir(model_dir: Path, plan: _Plan) -> ExportResult:
    """A model directory of `ikd train` or `ikd distill`, timed beside the teacher its model.json records (a
    distilled model's), if that is still there."""
    if (run := campaign_of_node(model_dir)) is not None:
        # its lineage holds its checksum, its answer status and its latencies: exported through the run
        raise ConfigError(
            f"{model_dir} is a node of the campaign in {run}; export it with "
            f"`ikd export {run} --node {next(iter(model_dir.resolve().relative_to(run / NODES_DIR).parts), 'ID')} "
            f"--format {plan.format}`"
        )
    # Held as `ikd train` holds it, so no retraining replaces the weights mid-export; a directory this process
    # cannot write is no one's to retrain here, and one that is not there is refused by load_model.
    writable = model_dir.is_dir() and os.access(model_dir, os.W_OK)
    hold = held(model_dir, "ikd export", what="model directory", leave_lock=False)
    with hold if writable else contextlib.nullcontext():
        if not (model_dir / META_FILE).exists() and (model_dir / STATE_DIR).is_dir():
            raise CheckpointError(
                f"{model_dir}: its training has not finished (its state is in {model_dir / STATE_DIR}); "
                "rerun the command that started it to finish it, then export"
            )
        model, metadata = load_model(model_dir)
        model.eval()
        protected = {model_dir / STATE_DIR: "where its training state is kept"}  # its own files: as any model's
        files = _planned_files(plan, model_dir / EXPORT_DIR, protected)
        subject = Exported.of_model_dir(model_dir, model, metadata)
        result = ExportResult(subject=subject, format=plan.format, files=[])
        reference = _recorded_teacher(model_dir, metadata, result.notes) if plan.timing.measure else None
        _export(result, model, dataset_record(metadata, model_dir), files, plan, reference)
    return result


@dataclass(frozen=True)
class _Timing:
    measure: bool
    repeats: int | None
    rounds: int | None
    threads: int | None


@dataclass(frozen=True)
class _Plan:
    """What an export was asked for, beside what it exports."""

    format: str
    out: Path | None
    data_dir: str | Path | None  # where the data for the ONNX check is (None: the model's record, else the default)
    timing: _Timing


@dataclass(frozen=True)
class _Reference:
    """The model a speed-up is measured against."""

    id: str
    model: nn.Module  # an ikd VGG, or the user's program a campaign started from
    dataset: dict[str, Any]
    graph: bytes | None = None  # its ONNX graph, checked, where made already (a program's: it may not convert)


def _check_options(fmt: str, repeats: int | None, rounds: int | None, threads: int | None) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if repeats is not None and repeats < 1:
        raise ConfigError(f"--repeats {repeats}: expected a positive number of timed runs")
    if rounds is not None and rounds < 1:
        raise ConfigError(f"--rounds {rounds}: expected a positive number of interleaved rounds")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads}: expected at least 1 thread")


def _planned_files(plan: _Plan, default_dir: Path, protected: dict[Path, str]) -> tuple[Path, Path]:
    """The exported file and its summary, checked before any work (a late failure would leave the model
    written alone); `protected`: paths (files, or directories and all below) an export must not replace,
    with what they are."""
    target, summary_path = _output_paths(plan.out, default_dir, plan.format)
    asked = f"--out {plan.out}: " if plan.out is not None else ""
    for path in (target, summary_path):
        if why := _cannot_write(path):
            raise ConfigError(f"{asked}cannot write {path}: {why}")
        for kept, what in protected.items():  # files whose checksums or contents ikd trusts later
            if path.resolve() == kept.resolve():
                raise ConfigError(f"{asked}{path} is {what}; write elsewhere")
            if path.resolve().is_relative_to(kept.resolve()):
                raise ConfigError(f"{asked}{path} is inside {kept}, {what}; write elsewhere")
        if (run := campaign_of_node(path.parent)) is not None:  # any campaign's nodes: its files pass for a node's
            raise ConfigError(f"{asked}{path} lies in the nodes of the campaign in {run}; write elsewhere")
        if path.name in (WEIGHTS_FILE, META_FILE) and (path.parent / META_FILE).is_file():  # any model's own files
            raise ConfigError(
                f"{asked}{path} would replace a file of the trained model in {path.parent}; write elsewhere"
            )
    return target, summary_path


def _export(
    result: ExportResult,
    model: VGG,
    dataset: dict[str, Any],
    files: tuple[Path, Path],
    plan: _Plan,
    reference: _Reference | None,
) -> dict[str, list[Latency]]:
    """Build, check and time the export, then write `files` (the export, its summary); returns the latencies."""
    target, summary_path = files
    usage = _usage_metadata(result.subject, model, dataset, onnx=result.format == "onnx")
    # onnxruntime's latency needs the graph even when only safetensors are written
    graph = onnx_graph(model, dataset, usage) if result.format == "onnx" or plan.timing.measure else b""
    if result.format == "onnx":
        # a lineage keeps no data.dir (where the data lies is not what it computed); an image folder records its own
        result.verification = verify_onnx(graph, model, dataset, plan.data_dir or recorded_data_dir(dataset))
        exported = graph
    else:
        exported = safetensors_bytes(cpu_state_dict(model), metadata=usage | {"format": "pt"})
    measured = _measure(result, model, dataset, graph, reference, plan.timing) if plan.timing.measure else {}
    # written once everything is checked and timed: a failure or Ctrl-C before leaves no file that
    # disagrees with its export.json, nor a latency in the lineage for weights that were not exported
    atomic_write_bytes(target, exported)
    result.files.append(target)
    atomic_write_json(summary_path, _summary_document(summary_path, result))
    result.files.append(summary_path)
    return measured


def _output_paths(out: Path | None, default_dir: Path, fmt: str) -> tuple[Path, Path]:
    """The exported file and its summary. `out` ending in the format's extension is the file itself,
    its summary beside it (x.onnx, x.export.json); any other `out`, or none, is a directory for both."""
    if out is None or out.suffix.lower() not in EXTENSIONS.values():
        directory = default_dir if out is None else out
        return directory / (ONNX_FILE if fmt == "onnx" else WEIGHTS_FILE), directory / SUMMARY_FILE
    if out.suffix.lower() != EXTENSIONS[fmt]:  # a directory x.onnx holding a .safetensors file is surely a slip
        raise ConfigError(
            f"--out {out}: ends in {out.suffix} but --format is {fmt}; "
            f"expected a path ending in {EXTENSIONS[fmt]}, or a directory"
        )
    if out.is_dir():  # e.g. made by an earlier ikd, which took every --out for a directory
        raise ConfigError(f"--out {out}: is a directory; a path ending in {out.suffix} names the exported file")
    return out, out.with_name(out.stem + SUMMARY_SUFFIX)


def _cannot_write(path: Path) -> str | None:
    """Why `path` cannot be written as a file (None: it looks writable): checked before the work."""
    return "it is a directory" if path.is_dir() else cannot_make_dir(path.parent)


def not_the_answer(lineage: Lineage, node: NodeRecord) -> str | None:
    """Why `node` is not what the campaign answered, for a user about to ship it (None: it is the
    answer, or the teacher, exported on purpose)."""
    if node.id == lineage.root().id:
        return None
    answer = lineage.final()
    if node.id != answer.id:
        why = node.reason if node.status != Status.ACCEPTED else ""  # an accepted one's is why it passed
        return f"{node.id} ({node.status}) is not the campaign's answer ({answer.id})" + (f": {why}" if why else "")
    if node.status == Status.FINAL and (unjudged := rules.final_never_judged(lineage)) is not None:
        return (
            f"{node.id} was kept as the answer by an older ikd, but by validation it fails the test its search "
            f"answer passed ({unjudged}): rerun `ikd compress` on the run to decide"
        )
    if not lineage.answered():
        return f"{node.id} is the answer so far: the campaign has not finished ({lineage.stop_reason or 'not stopped'})"
    return None


def _find_node(run: RunDir, lineage: Lineage, node_id: str) -> NodeRecord:
    node = lineage.find(node_id)
    if node is None and not lineage.nodes:
        raise ConfigError(f"{run.lineage_path}: has {NO_NODE_YET}; nothing to export")
    if node is None:
        ids = [n.id for n in lineage.nodes]
        shown = ", ".join(ids[:8]) + (f", ... ({len(ids)} nodes)" if len(ids) > 8 else "")
        raise ConfigError(f"node {node_id!r} is not in {run.lineage_path}; it has: {shown}")
    return node


def _load_node(run: RunDir, node: NodeRecord) -> tuple[VGG, dict[str, Any]]:
    """The node's model in eval mode, after checking it is an ikd model whose weights are intact."""
    if node.kind is NodeKind.EXTERNAL:
        raise ConfigError(
            f"node {node.id} is a user-supplied module ({node.arch['external']}); ikd holds no spec or weights for it"
        )
    if (why := run.weights_problem(node)) is not None:
        why = f"it failed during training ({node.reason})" if node.status == Status.FAILED else why
        raise CheckpointError(f"node {node.id} ({node.status}) cannot be exported: {why}")
    model, metadata = run.load_node(node)
    return model.eval(), metadata


def _usage_metadata(subject: Exported, model: VGG, dataset: dict[str, Any], *, onnx: bool) -> dict[str, str]:
    """String key/values for the file itself: everything needed to feed the model and read its output."""
    spec = model.spec
    expects = (
        "float32 NCHW images scaled to [0, 1] (pixel / 255); the graph applies ikd.mean/ikd.std itself"
        if onnx
        else "float32 NCHW images normalised per channel: (pixel / 255 - ikd.mean) / ikd.std"
    )
    return {
        f"ikd.{subject.kind}": subject.id,
        "ikd.version": __version__,
        "ikd.dataset": str(dataset.get("name")),
        "ikd.arch": json.dumps(spec.to_json_dict()),
        "ikd.arch_summary": spec.summary(),
        "ikd.classes": json.dumps(dataset["classes"]),
        "ikd.mean": json.dumps(dataset["mean"]),
        "ikd.std": json.dumps(dataset["std"]),
        "ikd.input_shape": json.dumps(["batch", *spec.image_shape()]),
        "ikd.input": expects,
        "ikd.output": "float32 logits (batch, len(ikd.classes))",
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx prints progress, optional-dependency warnings and deprecations; the command has
    its own summary. Errors still propagate."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnx_graph(
    model: nn.Module, dataset: dict[str, Any], metadata: dict[str, str], shape: tuple[int, int, int] | None = None
) -> bytes:
    """The serialised ONNX graph of the normalising wrapper, with a dynamic batch dimension. `shape` is the
    (channels, height, width) of an image: by default a VGG's, from its spec."""
    wrapper = NormalizedModel(model, dataset["mean"], dataset["std"]).eval()
    # batch 2: torch.export specialises a dimension traced at size 1
    example = torch.rand(2, *(shape or _image_shape(model)))
    with _quiet_exporter():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            verbose=False,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        )
    assert program is not None  # None only from the old exporter (dynamo=False)
    proto = program.model_proto
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def verify_onnx(graph: bytes, model: VGG, dataset: dict[str, Any], data_dir: str | Path | None) -> Verification:
    """Run up to VERIFY_IMAGES test images through PyTorch (ikd's own normalisation) and the graph."""
    val_fraction, split_seed, image_size = recorded_split(dataset)
    data = load_dataset(
        dataset["name"], data_dir, val_fraction=val_fraction, split_seed=split_seed, image_size=image_size
    )
    if why := misfit(model.spec, dataset, data):
        raise ConfigError(f"dataset {data.name!r}: the node's model {why}")
    images = data.test.images[:VERIFY_IMAGES]
    session = cpu_session(graph, torch.get_num_threads())
    agree, max_diff = 0, 0.0
    with torch.inference_mode():
        for start in range(0, len(images), VERIFY_BATCH):
            batch = images[start : start + VERIFY_BATCH]
            expected = model(normalize(batch, dataset["mean"], dataset["std"]))
            scaled = (batch.to(torch.float32) / 255.0).numpy()
            got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: scaled})[0])
            agree += int((expected.argmax(1) == got.argmax(1)).sum())
            max_diff = max(max_diff, float((expected - got).abs().max()))
    n = len(images)
    if n == 0:  # a check of nothing would pass
        raise ConfigError(f"dataset {data.name!r} has no test images to check the ONNX graph against")
    # The logits decide: with every logit within MAX_LOGIT_DIFF, top-1 can only flip on an image whose two
    # best logits are within twice that (a near tie), which is no disagreement; the agreement is reported.
    if not max_diff <= MAX_LOGIT_DIFF:  # `not <=` also catches NaN
        raise ExportMismatch(
            f"the ONNX graph disagrees with PyTorch: top-1 differs on {n - agree} of {n} test "
            f"images, max |logit difference| {max_diff:.2e} (allowed {MAX_LOGIT_DIFF:g}); "
            f"nothing written"
        )
    return Verification(images=n, top1_agree=agree, max_abs_logit_diff=max_diff)


def _root_reference(
    run: RunDir, lineage: Lineage, node: NodeRecord, dataset: dict[str, Any], notes: list[str]
) -> _Reference | None:
    """A node's speed-up is against the campaign's root teacher (None, with a note, where there is none to time).
    A root given as a program is fed as the node is (`dataset`, the node's record: one campaign's data)."""
    root = next((n for n in lineage.nodes if n.status == Status.TEACHER), None)
    if root is None:
        notes.append("the lineage has no root teacher: no speed-up to report")
        return None
    if root.id == node.id:  # the root exported: nothing to compare
        return None
    if root.kind is NodeKind.EXTERNAL:
        return _program_reference(lineage, root, dataset, node.spec().image_shape(), notes)
    try:
        teacher, teacher_meta = _load_node(run, root)
    except CheckpointError as err:
        raise CheckpointError(
            f"the root teacher, the reference of the speed-up: {err} (--no-latency skips it)"
        ) from None
    return _Reference(root.id, teacher, dataset_record(teacher_meta, run.node_dir(root.id)))


def _program_reference(
    lineage: Lineage, root: NodeRecord, dataset: dict[str, Any], shape: tuple[int, int, int], notes: list[str]
) -> _Reference | None:
    """The root a campaign started from as a program (teacher.program), loaded from the file the run names
    where it still holds the weights the root recorded and converts to ONNX; else None, with a note (a
    module passed from Python left nothing to load)."""
    program = (lineage.config.get("teacher") or {}).get("program")
    if not program:
        notes.append(f"root teacher {root.id} is a module passed from Python: not timed, no speed-up")
        return None
    if not Path(program).is_file():
        relative = "" if Path(program).is_absolute() else ", read from this directory"
        notes.append(
            f"root teacher {root.id}: its program {program} (teacher.program, as the run last recorded it{relative}) "
            "is not there: not timed, no speed-up (resuming the campaign with the file's new place records it)"
        )
        return None
    try:
        module, graph = timeable_program(program, shape, dataset)
    except ConfigError as err:
        notes.append(f"root teacher {root.id}: {err}: not timed, no speed-up")
        return None
    recorded = root.arch.get("state_sha256")
    other = (
        recorded != module_digest(module.program)
        if recorded is not None
        else sum(t.numel() for t in module.program.parameters()) != root.params  # recorded before the digest
    )
    if other:
        notes.append(f"{program} now holds other weights than the root recorded: not timed, no speed-up")
        return None
    return _Reference(root.id, module, dataset, graph)


def _exporter_reason(exc: BaseException) -> str:
    """The line of a torch.onnx failure that says what failed (its exception summary's first), without the
    terminal colours torch puts in; else the error's first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    summary = text.partition("## Exception summary")[2].strip()
    if summary:
        return re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>: ", r"\1: ", summary.splitlines()[0])[:200]
    return first_line(exc)


def timeable_program(path: str, shape: tuple[int, int, int], dataset: dict[str, Any]) -> tuple[FrozenProgram, bytes]:
    """The program at `path` as timed beside its students (load_program_for_timing) and its ONNX graph
    behind the dataset's normalisation, checked against PyTorch; a ConfigError of one line where it does
    not load, convert or agree. torch.export.load unpickles parts of the file, as a campaign's loading does."""
    module = load_program_for_timing(path)
    try:
        with _quiet_exporter():
            graph = onnx_graph(module, dataset, {}, shape)
    except Exception as exc:  # torch's exporter fails in many ways on an operator it cannot convert
        raise ConfigError(
            f"teacher.program {path}: cannot be converted to ONNX to be timed ({_exporter_reason(exc)})"
        ) from None
    try:
        check_timed_graph(path, module, dataset, graph, shape)
    except ExportMismatch as exc:
        raise ConfigError(f"teacher.program {path}: {exc}") from None
    return module, graph


def _recorded_teacher(model_dir: Path, metadata: dict[str, Any], notes: list[str]) -> _Reference | None:
    """A distilled model's speed-up is against the teacher its model.json names, where that is still the
    model recorded (same size); else None, with a note."""
    teachers = recorded_teachers(metadata)
    if not teachers or not teachers[0].get("dir"):
        notes.append(f"{model_dir / META_FILE} records no teacher (trained, not distilled): no speed-up to report")
        return None
    recorded = teachers[0]
    if len(teachers) > 1:
        notes.append(f"distilled from {len(teachers)} teachers: timed beside the first, {recorded['dir']}")
    # as `ikd distill` was given it, then where that was (a relative path read from another directory)
    found = [Path(p) for p in (recorded["dir"], recorded.get("path")) if p and (Path(p) / META_FILE).is_file()]
    if not found:
        notes.append(
            f"its teacher {recorded['dir']} (as recorded in {model_dir / META_FILE}) is not there: no speed-up"
        )
        return None
    directory = found[0]
    weights = directory / WEIGHTS_FILE
    if weights.is_file() and recorded.get("sha256") not in (None, file_sha256(weights)):
        notes.append(f"{directory} now holds other weights than the teacher recorded: no speed-up to report")
        return None
    try:
        teacher, teacher_meta = load_model(directory)
    except CheckpointError as err:
        raise CheckpointError(f"its teacher, the reference of the speed-up: {err} (--no-latency skips it)") from None
    if recorded.get("params") not in (None, teacher.spec.num_params()):  # a record without its sha256
        notes.append(
            f"{directory} now holds a {teacher.spec.num_params():,}-parameter model, not the teacher recorded "
            f"({recorded['params']} parameters): no speed-up to report"
        )
        return None
    name = str(directory) if str(directory) != str(model_dir) else f"{directory} (teacher)"
    return _Reference(name, teacher.eval(), dataset_record(teacher_meta, directory))


def _measure(
    result: ExportResult,
    model: VGG,
    dataset: dict[str, Any],
    graph: bytes,
    reference: _Reference | None,
    timing: _Timing,
) -> dict[str, list[Latency]]:
    """Time the model and its reference together, interleaved (ikd.latency): a speed-up is only trusted
    when both sides were measured in the same moments, so the reference's earlier numbers are never
    reused. Returns the latencies by id (a node's are recorded in the lineage: record_latency)."""
    own = result.subject.id
    shape = _image_shape(model)  # the reference's too: a program has no spec to say
    timed: dict[str, Timed] = {own: (model, dataset, graph)}
    checked = {own} if result.verification is not None else set()  # an ONNX export was checked on real images
    if reference is not None:
        graph_of_reference = reference.graph or onnx_graph(reference.model, reference.dataset, {}, shape)
        timed[reference.id] = (reference.model, reference.dataset, graph_of_reference)
        if reference.graph is not None:  # checked where it was made
            checked.add(reference.id)
    for name, (timed_model, timed_dataset, timed_graph) in timed.items():
        if name not in checked:
            check_timed_graph(name, timed_model, timed_dataset, timed_graph, shape)
    measured = measure_latencies(timed, timing.repeats, timing.rounds, threads=timing.threads or LATENCY_THREADS)
    if reference is not None:
        measured = beside_reference(measured, reference.id)
        result.teacher_id, result.teacher_latency = reference.id, measured[reference.id]
    result.latency = measured[own]
    return measured


def time_beside_root(run: RunDir, lineage: Lineage, nodes: list[NodeRecord], batch: int) -> dict[str, Latency]:
    """Each of `nodes`' onnxruntime timing at `batch` images a call, one thread, taken together with the root
    teacher's (ikd.latency's protocol) and carrying it as teacher_ms: what search.target_speedup decides on."""
    notes: list[str] = []
    students = {node.id: _load_node(run, node) for node in nodes}
    first_model, first_metadata = students[nodes[0].id]
    reference = _root_reference(
        run, lineage, nodes[0], dataset_record(first_metadata, run.node_dir(nodes[0].id)), notes
    )
    if reference is None:
        raise ConfigError("; ".join(notes) or "the root is what would be timed")
    shape = _image_shape(first_model)  # the root's too: a program has no spec to say
    timed: dict[str, Timed] = {
        reference.id: (
            reference.model,
            reference.dataset,
            reference.graph or onnx_graph(reference.model, reference.dataset, {}, shape),
        )
    }
    for node_id, (model, metadata) in students.items():
        dataset = dataset_record(metadata, run.node_dir(node_id))
        timed[node_id] = (model, dataset, onnx_graph(model, dataset, {}, shape))
    for name, (timed_model, timed_dataset, graph) in timed.items():
        if name != reference.id or reference.graph is None:  # a program's was checked where it was made
            check_timed_graph(name, timed_model, timed_dataset, graph, shape)
    measured = measure_latencies(timed, batches=(batch,), threads=LATENCY_THREADS, runtimes=("onnxruntime",))
    beside = beside_reference(measured, reference.id)
    return {node.id: beside[node.id][0] for node in nodes}


def check_timed_graph(
    name: str, model: nn.Module, dataset: dict[str, Any], graph: bytes, shape: tuple[int, int, int] | None = None
) -> None:
    """A graph timed but not exported (the teacher's, or the node's for a safetensors export) is checked
    against PyTorch on random images (of `shape`, by default a VGG's): a speed-up is only worth reporting
    between models that compute the same thing."""
    images = torch.rand(8, *(shape or _image_shape(model)), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = NormalizedModel(model, dataset["mean"], dataset["std"]).eval()(images)
    got = torch.from_numpy(cpu_session(graph, 1).run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])
    max_diff = float((expected - got).abs().max())
    if not max_diff <= MAX_LOGIT_DIFF:  # `not <=` also catches NaN
        raise ExportMismatch(
            f"the ONNX graph {name} is timed in disagrees with PyTorch: max |logit difference| {max_diff:.2e} "
            f"on random images (allowed {MAX_LOGIT_DIFF:g}); nothing written"
        )


def _image_shape(model: nn.Module) -> tuple[int, int, int]:
    if not isinstance(model, VGG):
        raise TypeError(f"a {type(model).__name__} has no spec to give its input shape: pass the shape")
    return model.spec.image_shape()


def _summary_document(path: Path, result: ExportResult) -> dict[str, Any]:
    """export.json: one entry per format exported to this directory, and the latest latencies."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    subject = result.subject
    same_weights = isinstance(previous, dict) and previous.get("sha256") == subject.sha256
    formats = previous.get("formats", {}) if same_weights else {}
    formats[result.format] = {
        "files": [p.name for p in result.files],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "verification": None if result.verification is None else asdict(result.verification),
    }
    latency = previous.get("latency") if same_weights else None  # kept by an export with --no-latency
    if result.latency:
        latency = {
            "node": [m.model_dump() for m in result.latency],
            "teacher": result.teacher_id,
            "teacher_latency": [m.model_dump() for m in result.teacher_latency],
            "speedup": result.speedups(),
        }
    return {
        subject.kind: subject.id,
        "sha256": subject.sha256,
        "ikd_version": __version__,
        "formats": formats,
        "latency": latency,
    }
