"""A user's own module as the root of a campaign, on real data: the `ikd.compress(teacher=...)` path.

A ResNet (basic blocks, as He et al. 2016 built for CIFAR: not a VGG, so ikd cannot shrink it) is
trained on the campaign's own split with ikd's teacher recipe (`ikd.train.train_model`, the loop
`ikd train` runs), saved beside the run, and handed to `ikd.compress` with a hint layer. The chain
starts from a VGG of the given layout (`--first-student`), distilled from random weights for
`student.first_epochs`, and shrinks from there under the config's rules. The record: the module,
the lineage, the answer's size and accuracy against the module's, and the time of each part.

    python benchmarks/user_module.py --data-dir /work/shared/data/mnist \
        --markdown benchmarks/results/user_module_mnist.md

A rerun with the same arguments reuses the trained module and resumes the campaign (ikd checks the
module's weights against the SHA-256 it recorded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import ikd
from ikd.arch import preset
from ikd.cli import format_lineage
from ikd.config import load_config
from ikd.context import section_train_config
from ikd.runtime import resolve_device, resolve_precision
from ikd.train import train_model

from common import machine_line, print_result, publish, repo_path

HINT_LAYER = "stages.1"  # the middle stage's output: a feature map, as a FitNets hint wants


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a shortcut (a 1x1 conv where the width or stride changes)."""

    def __init__(self, width_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width_in, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or width_in != width:
            self.shortcut = nn.Sequential(nn.Conv2d(width_in, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A stem conv, one stage of `blocks` basic blocks per width (each stage after the first halves the
    map), global average pooling and a linear head: ResNet-20 is widths 16, 32, 64 with 3 blocks."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]))
        stages, width_in = [], widths[0]
        for i, width in enumerate(widths):
            layers = [BasicBlock(width_in if j == 0 else width, width, 2 if i and not j else 1) for j in range(blocks)]
            stages.append(nn.Sequential(*layers))
            width_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(torch.relu(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="configs/mnist-vgg16.yaml", help="campaign config (its teacher keys: the module's recipe)"
    )
    parser.add_argument("--data-dir", help="the dataset's directory (data.dir)")
    parser.add_argument("--runs-dir", default="runs/user-module", help="the module and the campaign go here")
    parser.add_argument("--widths", default="32,64,128", help="the ResNet's stage widths")
    parser.add_argument("--blocks", type=int, default=3, help="basic blocks per stage")
    parser.add_argument(
        "--module-epochs", type=int, help="epochs to train the module (default: the config's teacher.epochs)"
    )
    parser.add_argument(
        "--first-student", default="32x2-64x2-128x2", help="the chain's first VGG, as `ikd arch` reads it"
    )
    parser.add_argument(
        "--first-epochs", type=int, default=10, help="student.first_epochs: the first student's schedule"
    )
    parser.add_argument("--operators", default="depth,width", help="search.operators")
    parser.add_argument(
        "--via",
        choices=("program", "module"),
        default="program",
        help="program: the module saved by torch.export and named by teacher.program (as --teacher-program "
        "gives it on the command line); module: passed as ikd.compress(teacher=module)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baselines", action="store_true", help="also train the answer's architecture from scratch and by one-shot KD"
    )
    parser.add_argument(
        "--no-latency",
        action="store_true",
        help="do not time the answer beside the module (with --via program, `ikd export` times them, one thread, "
        "interleaved; give it the cores to itself)",
    )
    parser.add_argument("--markdown", help="write the record here")
    parser.add_argument("--note", default="", help="a paragraph added to the record")
    parser.add_argument("--quick", action="store_true", help="digits, a tiny module and one generation: a smoke run")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args()


def campaign_keys(args: argparse.Namespace, run_dir: Path) -> dict[str, object]:
    keys: dict[str, object] = {
        "run_dir": str(run_dir),
        "seed": args.seed,
        "student.first_epochs": args.first_epochs,
        "search.operators": args.operators.split(","),
    }
    if args.data_dir:
        keys["data.dir"] = args.data_dir
    if args.baselines:
        keys["baselines"] = True
    if args.quick:
        keys |= {"data.name": "digits", "student.epochs": 1, "search.max_generations": 1, "search.max_drop": 100.0}
        keys |= {"search.max_step_drop": 100.0}
    return keys


def trained_module(args: argparse.Namespace, config, data, out: Path) -> tuple[ResNet, dict[str, object]]:
    """The module, trained once with the config's teacher recipe and saved in `out`; a rerun with the same
    module arguments loads it, with others it stops, naming them."""
    asked = {"widths": [int(w) for w in args.widths.split(",")], "blocks": args.blocks, "seed": args.seed}
    asked |= {"epochs": args.module_epochs or config.teacher.epochs, "config": args.config}
    torch.manual_seed(args.seed)
    model = ResNet(data.in_channels, data.num_classes, asked["widths"], args.blocks)
    weights, facts_path = out / "model.safetensors", out / "training.json"
    if weights.exists() and facts_path.exists():
        facts = json.loads(facts_path.read_text())
        if {key: facts.get(key) for key in asked} != asked:
            raise SystemExit(
                f"user_module.py: {out} holds a module trained as {facts}; asked {asked}: use another --runs-dir"
            )
        model.load_state_dict(load_file(weights))
        return model, facts
    device = resolve_device(config.device)
    train = section_train_config(
        config.teacher, asked["epochs"], resolve_precision(config.precision, device), device, args.seed
    )
    if args.quick:
        train = train.model_copy(update={"max_steps_per_epoch": 3})
    result = train_model(model, data, train, progress=not args.quiet, description="user module")
    facts = asked | {
        "recipe": train.model_dump(include={"batch_size", "lr", "schedule", "label_smoothing", "ema_epochs"}),
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "precision": result.precision,
        "images_per_s": [round(e.images_per_s) for e in result.history],
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
    facts_path.write_text(json.dumps(facts, indent=1))
    return model, facts


def exported(module: ResNet, data, path: Path) -> Path:
    """`module` saved by torch.export (eval mode, any batch size), once."""
    if not path.exists():
        module.eval()
        example = torch.zeros(2, data.in_channels, data.image_size, data.image_size)
        batch = {0: torch.export.Dim("batch")}
        torch.export.save(torch.export.export(module, (example,), dynamic_shapes=(batch,)), path)
    return path


def accuracies(node, root) -> str:
    """`node`'s validation and test accuracy, and (for a student) their change from the root's."""

    def one(split: str) -> str:
        value, base = getattr(node, f"{split}_accuracy"), getattr(root, f"{split}_accuracy")
        if value is None or base is None:
            return f"{split} -"
        change = "" if node is root else f" ({100 * (value - base):+.2f})"
        return f"{split} {100 * value:.2f}%{change}"

    return f"{one('val')}, {one('test')}"


def timed_answer(run_dir: Path, answer_id: str, quick: bool) -> list[dict[str, object]]:
    """The answer timed beside the module (`ikd export` of a campaign node: the root program loaded again,
    both as ONNX behind the same normalisation, interleaved, one thread): its speed-ups per runtime and batch."""
    from ikd.export import export

    result = export(run_dir, "safetensors", node=answer_id, **({"repeats": 1, "rounds": 2} if quick else {}))
    if not result.speedups():
        raise SystemExit(
            f"user_module.py: the answer was not timed beside the module: {'; '.join(result.notes)} "
            "(--no-latency writes the record without it)"
        )
    return result.speedups()


def latency_lines(speedups: list[dict[str, object]]) -> list[str]:
    lines = [
        "",
        "Timed by `ikd export` (the answer and the module's program, each as ONNX behind the same normalisation "
        "and in PyTorch, interleaved, one thread, the minimum of several medians; ikd.latency's protocol):",
        "",
        "| runtime | batch | module ms | answer ms | speed-up |",
        "|---|---|---|---|---|",
    ]
    for s in speedups:
        lines.append(
            f"| {s['runtime']} | {s['batch']} | {s['teacher_ms']:.3f} | {s['node_ms']:.3f} | {s['speedup']:.1f}x |"
        )
    return lines


def record(
    args, config, lineage, module_facts: dict[str, object], campaign_seconds: float, speedups: list[dict[str, object]]
) -> str:
    root, answer = lineage.root(), lineage.final()
    first = min((n for n in lineage.students() if n.generation == 1), key=lambda n: n.id, default=None)
    blocks, widths = module_facts["blocks"], module_facts["widths"]
    lines = [
        f"Machine: {machine_line()}",
        f"Config: `{args.config}` with `{json.dumps(campaign_keys(args, Path(config.run_dir)))}`",
        "",
        f"**The module**: a ResNet of basic blocks, widths {widths}, {blocks} per stage (not a VGG: ikd cannot "
        f"shrink it), trained by `ikd.train.train_model` with the config's teacher recipe "
        f"({module_facts['recipe']}) for {module_facts['epochs']} epochs on the campaign's own training split: "
        f"{module_facts['seconds']} s, {module_facts['precision']}, images/s per epoch {module_facts['images_per_s']}. "
        + (
            f"Saved by `torch.export` and given as `teacher.program` with `teacher.hint_layer: {HINT_LAYER}` and "
            f"`student.first_arch: {args.first_student}` (what `ikd compress --teacher-program` sets)."
            if args.via == "program"
            else f"Handed to `ikd.compress(teacher=..., hint_layer={HINT_LAYER!r}, student=<{args.first_student}>)`."
        ),
        "",
        f"Campaign: {campaign_seconds / 60:.1f} min, the sum of its nodes' recorded times, baselines included "
        "(the module's training not included).",
        "",
        "```",
        format_lineage(lineage).rstrip(),
        "```",
        "",
        f"- The module (root): {root.params:,} parameters, {root.macs / 1e6:.1f} M MACs per image, "
        f"{accuracies(root, root)}.",
    ]
    if first is not None:
        lines.append(
            f"- The first student ({first.id}, {first.arch_summary()}, {args.first_epochs} epochs from random "
            f"weights): {first.params:,} parameters, {accuracies(first, root)}, {first.status}."
        )
    lines.append(
        f"- **The answer** ({answer.id}, {answer.arch_summary()}): {answer.params:,} parameters, "
        f"{answer.compression:.1f}x fewer than the module and {root.macs / max(answer.macs, 1):.1f}x fewer MACs, "
        f"{accuracies(answer, root)}. Stopped: {lineage.stop_reason}."
    )
    baselines = [n for n in lineage.nodes if n.id in ("baseline-scratch", "baseline-oneshot-kd")]
    for baseline in baselines:
        gap = {
            split: 100 * (getattr(answer, f"{split}_accuracy") - getattr(baseline, f"{split}_accuracy"))
            for split in ("val", "test")
            if getattr(answer, f"{split}_accuracy") is not None and getattr(baseline, f"{split}_accuracy") is not None
        }
        lines.append(
            f"- {baseline.id} (the answer's architecture, {baseline.epochs} epochs, the chain's total): "
            f"{accuracies(baseline, root)}; the chain's answer minus it: "
            + ", ".join(f"{split} {value:+.2f}" for split, value in gap.items())
            + "."
        )
    if speedups:
        lines += latency_lines(speedups)
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.quick:
        args.widths, args.blocks, args.first_student, args.module_epochs, args.first_epochs = (
            "8,16",
            1,
            "8x1-16x1",
            1,
            1,
        )
    runs = Path(args.runs_dir)
    keys = campaign_keys(args, runs / "campaign")
    config = load_config(repo_path(args.config), keys)
    data = config.data.load()
    module, facts = trained_module(args, config, data, runs / "module")
    spec = preset(
        args.first_student, in_channels=data.in_channels, image_size=data.image_size, num_classes=data.num_classes
    )
    if args.via == "program":  # what `ikd compress --teacher-program FILE --hint-layer --first-student` runs
        program = exported(module, data, runs / "module" / "model.pt2")
        root = {"teacher.program": str(program), "teacher.hint_layer": HINT_LAYER, "student.first_arch": spec.summary()}
        lineage = ikd.compress(load_config(repo_path(args.config), keys | root), progress=not args.quiet)
    else:
        lineage = ikd.compress(config, teacher=module, hint_layer=HINT_LAYER, student=spec, progress=not args.quiet)
    seconds = sum(n.seconds or 0.0 for n in lineage.nodes)  # from the record: a rerun that resumes says the same
    answer = lineage.final()
    # a module passed from Python cannot be loaded again to be timed; a program can
    speedups = (
        timed_answer(Path(config.run_dir), answer.id, args.quick)
        if args.via == "program" and not args.no_latency
        else []
    )
    publish(record(args, config, lineage, facts, seconds, speedups), args.markdown, "A user's own module as the root")
    print_result(
        {
            "module_params": lineage.root().params,
            "answer": answer.id,
            "answer_params": answer.params,
            "compression": round(answer.compression, 1),
            "answer_test": answer.test_accuracy,
            "campaign_min": round(seconds / 60, 1),
            **{f"speedup_{s['runtime']}_b{s['batch']}": round(float(s["speedup"]), 2) for s in speedups},
        }
    )


if __name__ == "__main__":
    main()
