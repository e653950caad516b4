"""The `ikd` command. User mistakes print one line on stderr and exit 2; tracebacks only with --debug."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from ikd import distributed
from ikd._version import __version__
from ikd.arch import PRESETS, ArchSpec, preset
from ikd.checkpoint import (
    META_FILE,
    describe_size,
    load_model,
    read_metadata,
    save_model,
    training_metadata,
)
from ikd.data import DATASETS, load_dataset
from ikd.errors import ConfigError, IkdError
from ikd.model import build_model
from ikd.runtime import DEVICES, PRECISIONS, resolve_device, resolve_precision
from ikd.train import TrainConfig, evaluate, train_model

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 1  # what Python itself exits with on EPIPE


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler, systemd) stops ikd the way Ctrl-C does: the node in training is
    abandoned, every finished one stays, and rerunning the command resumes."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are reported like every other ikd error: one line, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"ikd: error: {message} (see `{self.prog} --help`)\n")


def _validated_config(**values) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"{flag} {first.get('input')!r}: {first['msg']}") from None


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / META_FILE).exists() and not args.force:
        raise ConfigError(f"{out}: already holds a trained model; choose another --out or pass --force")
    config = _validated_config(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, augment=args.augment, precision=args.precision, device=args.device,
        seed=args.seed, label_smoothing=args.label_smoothing,
    )
    group = distributed.init_from_environment(args.device)  # started by torchrun: data-parallel
    try:
        data = load_dataset(args.dataset, args.data_dir, val_fraction=args.val_fraction,
                            split_seed=args.split_seed, image_size=args.image_size)
        spec = preset(args.arch, in_channels=data.in_channels, image_size=data.image_size,
                      num_classes=data.num_classes)
        model = build_model(spec, seed=args.seed)
        if group is None or group.is_main:
            print(f"ikd train: {args.arch} ({spec.num_params():,} params, {spec.macs() / 1e6:.1f} M MACs/image) "
                  f"on {data.name} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test)"
                  + (f", data-parallel over {group.world_size} processes" if group else ""), file=sys.stderr)
        result = train_model(model, data, config, progress=not args.quiet, description=args.arch)
    finally:
        distributed.shutdown()
    if group is not None and not group.is_main:
        return 0  # rank 0 evaluates and writes the one checkpoint
    device = resolve_device(config.device)
    test = evaluate(model, data.test, mean=data.mean, std=data.std, device=device,
                    precision=resolve_precision(config.precision, device))
    extra = {"distributed": {"world_size": group.world_size, "backend": group.backend,
                             "batch_per_process": -(-config.batch_size // group.world_size)}} if group else None
    metadata = training_metadata(data=data, val_fraction=args.val_fraction, split_seed=args.split_seed,
                                 spec=spec, config=config, result=result, test=test, extra=extra)
    save_model(out, model, metadata)
    best, last = metadata["metrics"]["best"], metadata["metrics"]["last"]
    print(f"best val acc {best['val_accuracy']:.4f} (epoch {best['epoch']}), last {last['val_accuracy']:.4f}, "
          f"test acc {test['accuracy']:.4f}, {result.seconds:.0f} s -> {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    metadata = read_metadata(Path(args.model_dir))
    record = metadata.get("dataset", {})
    device = resolve_device(args.device)
    model, _ = load_model(Path(args.model_dir), map_location=device)
    name = args.dataset or record.get("name")
    if not name:
        raise ConfigError(f"{args.model_dir}: model.json names no dataset; pass --dataset")
    data = load_dataset(name, args.data_dir, val_fraction=record.get("val_fraction", 0.1),
                        split_seed=record.get("split_seed", 0), image_size=record.get("image_size"))
    spec = model.spec
    if (data.in_channels, data.image_size, data.num_classes) != (spec.in_channels, spec.image_size, spec.num_classes):
        raise ConfigError(
            f"dataset {name!r} has {data.in_channels}x{data.image_size}x{data.image_size} images and "
            f"{data.num_classes} classes; the model in {args.model_dir} expects "
            f"{spec.in_channels}x{spec.image_size}x{spec.image_size} and {spec.num_classes}")
    # The model's own normalisation, not the dataset's recomputed one: that is what it was trained with.
    mean, std = record.get("mean", data.mean), record.get("std", data.std)
    split = {"train": data.train, "val": data.val, "test": data.test}[args.split]
    metrics = evaluate(model, split, mean=mean, std=std, device=device,
                       precision=resolve_precision(args.precision, device))
    report = {"model_dir": str(args.model_dir), "dataset": name, "split": args.split,
              "accuracy": metrics["accuracy"], "loss": metrics["loss"], "n": metrics["n"]}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{name} {args.split}: accuracy {metrics['accuracy']:.4f} on {metrics['n']} images "
              f"(loss {metrics['loss']:.4f})")
    return 0


def cmd_arch(args: argparse.Namespace) -> int:
    try:
        channels, size = (int(part) for part in args.input.lower().split("x", 1))
    except ValueError:
        raise ConfigError(f"--input {args.input!r}: expected CHANNELSxSIZE, e.g. 3x32") from None
    spec = preset(args.arch, in_channels=channels, image_size=size, num_classes=args.classes)
    info = {"arch": args.arch, **describe_size(spec), "block_output_sizes": spec.block_output_sizes(),
            "spec": spec.to_json_dict()}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.arch} on {channels}x{size}x{size}: {spec.summary()}\n"
              f"  params {info['params']:,} | {info['size_bytes_fp32'] / 2**20:.2f} MiB fp32 | "
              f"{info['macs'] / 1e6:.1f} M MACs/image | block outputs {info['block_output_sizes']}")
    return 0


def _factors(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ancestors(text: str) -> str | int:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or a count, got {text!r}") from None


def cmd_compress(args: argparse.Namespace) -> int:
    from ikd.config import load_config
    from ikd.search import compress

    operators = args.operators.split(",") if args.operators else None
    config = load_config(args.config, {
        "data.name": args.dataset, "data.dir": args.data_dir, "teacher.dir": args.teacher,
        "teacher.arch": args.arch, "search.max_drop": args.max_drop,
        "search.max_step_drop": args.max_step_drop, "search.max_generations": args.max_generations,
        "student.epochs": args.epochs,
        "search.operators": operators, "run_dir": args.run_dir, "seed": args.seed,
        "search.strategy": args.strategy, "search.select": args.select, "search.beam": args.beam,
        "search.seeds": args.seeds, "search.width_factor": args.width_factors,
        "ensemble.ancestors": args.ancestors, "ensemble.experts": args.teachers,
        "ensemble.aggregate": args.aggregate,
        "precision": args.precision, "device": args.device, "baselines": args.baselines or None,
        "log": args.log, "executor.kind": args.executor, "executor.ray_address": args.ray_address,
        "executor.cpus_per_job": args.cpus_per_job, "executor.gpus_per_job": args.gpus_per_job,
    })
    lineage = compress(config, progress=not args.quiet, force=args.force)
    print(format_lineage(lineage))
    return 0


def format_lineage(lineage) -> str:
    """The lineage as a tree-shaped table (children indented under their parent), with the
    teachers of each node when some have several, and the stop reason underneath."""
    several = any(len(n.teachers) > 1 for n in lineage.nodes)
    header = ("id", "gen", "arch", "params", "x", "val %", "test %", "status") + (("teachers",) if several else ())
    rows = [header]
    for node, depth in lineage.tree_order():
        arch = (f"external: {node.arch['external']}" if "external" in node.arch
                else ArchSpec.model_validate(node.arch).summary())
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
        row = ("  " * depth + node.id, str(node.generation), arch, f"{node.params:,}",
               f"{node.compression:.1f}", pct(node.val_accuracy), pct(node.test_accuracy), node.status)
        rows.append(row + (("+".join(node.teachers) or "-",) if several else ()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if lineage.stop_reason:
        lines.append(f"stopped: {lineage.stop_reason}")
    return "\n".join(lines)


def cmd_lineage(args: argparse.Namespace) -> int:
    from ikd.lineage import RunDir

    run = RunDir(Path(args.run_dir))
    if not run.exists():
        raise ConfigError(f"{run.lineage_path}: not found; expected a run directory written by `ikd compress`")
    lineage = run.load()
    print(json.dumps(lineage.model_dump(mode="json"), indent=2) if args.json else format_lineage(lineage))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ikd.export import export_node

    result = export_node(Path(args.run_dir), args.node, args.format, out=Path(args.out) if args.out else None,
                         data_dir=args.data_dir, repeats=args.repeats, measure_latency=not args.no_latency)
    print(result.summary())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ikd.report import load_report, write_report

    out = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(load_report(Path(args.run_dir)).headline())
    print(f"report: {out / 'report.md'}, {out / 'report.html'} (figures: pareto.png, lineage.png, training.png)")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from ikd.config import config_reference

    print(config_reference())
    return 0


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command; SUPPRESS keeps a subcommand's default
    # from overwriting a flag given before it.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = _Parser(
        prog="ikd", parents=[common],
        description="Compress convolutional networks by iterative knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"ikd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
        p.add_argument("--dataset", required=required, choices=DATASETS, metavar="NAME",
                       help=f"one of: {', '.join(DATASETS)}")
        p.add_argument("--data-dir", help="dataset directory or root (default: $IKD_DATA_DIR, else ~/.cache/ikd)")

    train = commands.add_parser("train", parents=[common], help="train a VGG teacher from scratch")
    data_flags(train, required=True)
    train.add_argument("--arch", default="vgg16", choices=PRESETS)
    train.add_argument("--epochs", type=int, required=True)
    train.add_argument("--out", required=True, help="output directory for model.safetensors + model.json")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--schedule", default="onecycle", choices=("onecycle", "cosine"))
    train.add_argument("--augment", choices=("none", "crop", "crop-flip"), help="default: the dataset's own")
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument("--precision", default="auto", choices=PRECISIONS)
    train.add_argument("--device", default="auto", choices=DEVICES)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--val-fraction", type=float, default=0.1)
    train.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    train.add_argument("--image-size", type=int, help="resize imagefolder images to this size (default 32)")
    train.add_argument("--force", action="store_true", help="overwrite a model already in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    ev = commands.add_parser("eval", parents=[common], help="accuracy of a trained model on a split")
    ev.add_argument("model_dir")
    data_flags(ev, required=False)
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--device", default="auto", choices=DEVICES)
    ev.add_argument("--precision", default="fp32", choices=PRECISIONS)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_eval)

    co = commands.add_parser("compress", parents=[common],
                             help="run or resume a compression campaign (teacher -> smaller and smaller students)")
    co.add_argument("--config", help="campaign YAML (see configs/); flags below override its keys")
    co.add_argument("--dataset", choices=DATASETS, metavar="NAME", help="data.name")
    co.add_argument("--data-dir", help="data.dir")
    co.add_argument("--teacher", metavar="DIR", help="teacher.dir: start from a model trained by `ikd train`")
    co.add_argument("--arch", choices=PRESETS, help="teacher.arch: preset to train when no --teacher is given")
    co.add_argument("--max-drop", type=float, help="search.max_drop, points below the root teacher (validation)")
    co.add_argument("--max-step-drop", type=float, help="search.max_step_drop, points below the parent")
    co.add_argument("--max-generations", type=int, help="search.max_generations")
    co.add_argument("--epochs", type=int, help="student.epochs per candidate")
    co.add_argument("--operators", help="search.operators, comma-separated: depth,width")
    co.add_argument("--strategy", choices=("parent-child", "parent-children", "ancestors-child", "ancestors-children"),
                    help="search.strategy: the paper's four variants")
    co.add_argument("--select", choices=("best", "tree"), help="search.select (*-children strategies)")
    co.add_argument("--beam", type=int, help="search.beam: survivors per generation with --select tree")
    co.add_argument("--seeds", type=int, help="search.seeds: children per architecture (*-children strategies)")
    co.add_argument("--width-factors", type=_factors, help="search.width_factor, comma-separated: 0.5,0.75")
    co.add_argument("--ancestors", type=_ancestors, help="ensemble.ancestors: all, or the last m of the chain")
    co.add_argument("--teachers", nargs="+", metavar="DIR", help="ensemble.experts: extra teacher directories")
    co.add_argument("--aggregate", choices=("mean-kd", "mean-probs"), help="ensemble.aggregate")
    co.add_argument("--run-dir", help="run_dir")
    co.add_argument("--seed", type=int, help="seed")
    co.add_argument("--precision", choices=PRECISIONS)
    co.add_argument("--device", choices=DEVICES)
    co.add_argument("--baselines", action="store_true",
                    help="also train the final architecture from scratch and by one-shot KD (same epochs)")
    co.add_argument("--log", choices=("none", "tensorboard"),
                    help="log: tensorboard writes each node's curves live under RUN_DIR/tb/ (optional extra)")
    co.add_argument("--executor", choices=("local", "ray"),
                    help="executor.kind: train candidates in this process, or each as a job on a Ray cluster")
    co.add_argument("--ray-address", metavar="ADDRESS",
                    help="executor.ray_address (default $RAY_ADDRESS, else a new local Ray instance)")
    co.add_argument("--cpus-per-job", type=float, metavar="N", help="executor.cpus_per_job (ray; default 1)")
    co.add_argument("--gpus-per-job", type=float, metavar="N", help="executor.gpus_per_job (ray; default 0)")
    co.add_argument("--force", action="store_true", help="continue a run directory made with another config")
    co.add_argument("--quiet", action="store_true", help="no progress output")
    co.set_defaults(func=cmd_compress)

    li = commands.add_parser("lineage", parents=[common], help="show a campaign's lineage")
    li.add_argument("run_dir")
    li.add_argument("--json", action="store_true", help="the whole lineage.json")
    li.set_defaults(func=cmd_lineage)

    ex = commands.add_parser("export", parents=[common],
                             help="export a node as ONNX or safetensors, check it, time it on this CPU")
    ex.add_argument("run_dir")
    ex.add_argument("--node", required=True, metavar="ID", help="node id, as `ikd lineage` lists them")
    # not argparse choices: an unknown format is reported like every other ikd error, on one line
    ex.add_argument("--format", required=True, metavar="FORMAT", help="onnx or safetensors")
    ex.add_argument("--out", metavar="PATH", help="directory (default RUN_DIR/export/ID), or the file: x.onnx, x.safetensors")
    ex.add_argument("--data-dir", help="where the node's dataset lives, for the ONNX check (default: the campaign's)")
    ex.add_argument("--repeats", type=int, metavar="N",
                    help="timed runs per latency (default 30 at batch 1, 10 at batch 64)")
    ex.add_argument("--no-latency", action="store_true", help="do not measure latency")
    ex.set_defaults(func=cmd_export)

    re_ = commands.add_parser("report", parents=[common],
                              help="write RUN_DIR/report/: report.md, a self-contained report.html and figures")
    re_.add_argument("run_dir")
    re_.add_argument("--out", help="report directory (default RUN_DIR/report)")
    re_.set_defaults(func=cmd_report)

    cr = commands.add_parser("config-reference", parents=[common], help="print every campaign config key (markdown)")
    cr.set_defaults(func=cmd_config_reference)

    ar = commands.add_parser("arch", parents=[common], help="size and cost of a preset architecture")
    ar.add_argument("arch", choices=PRESETS)
    ar.add_argument("--input", default="3x32", help="CHANNELSxSIZE (default 3x32)")
    ar.add_argument("--classes", type=int, default=10)
    ar.add_argument("--json", action="store_true")
    ar.set_defaults(func=cmd_arch)
    return parser


def main(argv: list[str] | None = None) -> int:
    # signal handlers can only be set from the main thread; elsewhere (an embedding app) SIGTERM is theirs
    own_signals = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if own_signals else None
    try:
        return _run(build_parser().parse_args(argv))
    finally:
        if own_signals:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run(args: argparse.Namespace) -> int:
    debug = getattr(args, "debug", False)
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is handled below
        return status
    except IkdError as exc:
        if debug:
            raise
        print(f"ikd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader left early (`ikd lineage RUN | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush cannot fail again (the Python docs' recipe).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file (embedded, captured)
            pass
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # unreadable input, read-only or full disk: the user's to fix
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ikd: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"ikd: interrupted{' (SIGTERM)' if isinstance(exc, Terminated) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, not a user error: say so, keep the traceback behind --debug
        if debug:
            raise
        print(f"ikd: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
