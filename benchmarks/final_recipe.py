"""Would the final distillation train better another way? Finished campaigns' answers distilled again.

A campaign's search is hours of training; its final distillation is minutes. To measure a change to
the final distillation's recipe (an EMA of the weights, the chain's ancestors as teachers, more
epochs, another KD loss) without searching again, this copies each finished campaign (--runs) without
its final node and baselines into OUT/<run>, weights hard-linked (nothing here writes a weights file in
place), and resumes the copy with `ikd compress --force` under the campaign's own config plus the
--set KEY=VALUE changes: the search is found done, and only the final distillation (and, with
--baselines, scratch and one-shot KD, under the same changed recipe) trains. The search must come back
unchanged, node for node, or the script stops: only student.*, loss.* and ensemble.* keys may be set,
and the search's nodes keep the recipe they were trained with (say so beside the numbers).

The table sets each run's old final beside the new one: validation (what a decision may use) and test
(reported), the epoch and the weights (raw or EMA) validation kept, and the test drop from the root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ikd.campaign import BASELINE_IDS, FINAL_ID
from ikd.checkpoint import META_FILE
from ikd.config import load_config
from ikd.errors import CheckpointError, ConfigError
from ikd.lineage import FINAL_NOT_KEPT, ROOT_ID, Lineage, NodeRecord, RunDir

from common import machine_line, print_result, publish

SETTABLE = ("student.", "loss.", "ensemble.")  # what trains the final (and the baselines), not the search
LEFT_BEHIND = {FINAL_ID, *BASELINE_IDS}
SCRIPT = "final_recipe.py"


def parse_setting(text: str) -> tuple[str, object]:
    key, equals, value = text.partition("=")
    if not equals or not key.startswith(SETTABLE) or key.count(".") != 1:
        raise SystemExit(
            f"{SCRIPT}: --set {text!r}: expected KEY=VALUE with KEY under {', '.join(s + '*' for s in SETTABLE)} "
            "(keys that train the final distillation, not the search), e.g. student.ema_epochs=1"
        )
    if key == "ensemble.experts":
        raise SystemExit(f"{SCRIPT}: --set {text!r}: experts are nodes of the search; this changes the final only")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise SystemExit(f"{SCRIPT}: --set {text!r}: the value is not YAML ({str(exc).splitlines()[0]})") from None


def finished(run_dir: Path, *, final: bool = True) -> Lineage:
    """The campaign in `run_dir`; with `final`, it must have ended with a final distillation."""
    try:
        lineage = RunDir(run_dir).load()
    except CheckpointError as exc:
        raise SystemExit(f"{SCRIPT}: {exc}") from None
    if final and (not lineage.answered() or lineage.find(FINAL_ID) is None):
        raise SystemExit(f"{SCRIPT}: {run_dir}: not a finished campaign with a final distillation")
    return lineage


def link_or_copy(source: str, target: str) -> None:
    # weights are only ever replaced whole (atomic writes), so a link cannot be changed under the source
    if source.endswith(".safetensors"):
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system
    shutil.copy2(source, target)


def prepare(source: Path, lineage: Lineage, target: Path) -> None:
    """`source` without its final distillation and baselines (and no lock, no unfinished training) at `target`."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        skipped = {".lock", ".train-state", "paired-comparisons.json", "report"}

        def ignore(folder: str, names: list[str]) -> set[str]:
            here = Path(folder)
            return {
                n for n in names if (here == source and n in skipped) or (here.name == "nodes" and n in LEFT_BEHIND)
            }

        shutil.copytree(source, staging / "run", copy_function=link_or_copy, ignore=ignore)
        kept = lineage.model_copy(update={"nodes": [n for n in lineage.nodes if n.id not in LEFT_BEHIND]})
        # the source may be running (its baselines): every copied weights file must be the one its record names
        if stale := RunDir(staging / "run").verify(kept):
            raise SystemExit(f"{SCRIPT}: {source}: weights changed while copying ({', '.join(stale)}); run again")
        RunDir(staging / "run").save(kept)
        (staging / "run").rename(target)  # a half-made copy is never taken for a prepared one
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def config_with(source: Path, lineage: Lineage, settings: dict[str, object]) -> dict:
    """The campaign's settings with `settings` applied, validated and written as a lineage records them."""
    try:
        config = load_config(None, settings, base=lineage.config, source=f"{source}'s config")
    except ConfigError as exc:
        raise SystemExit(f"{SCRIPT}: {exc}") from None
    if not config.student.final_epochs:
        raise SystemExit(f"{SCRIPT}: student.final_epochs is 0: there would be no final distillation to compare")
    return config.decision_fields()


def search_of(lineage: Lineage) -> list[tuple]:
    """What must not change: every search node, down to its weights' checksum."""
    return [
        (n.id, n.status, n.parent, n.teachers, n.epochs, n.sha256, n.val_accuracy, n.test_accuracy)
        for n in lineage.nodes
        if n.id not in LEFT_BEHIND
    ]


def done_under(lineage: Lineage, config: dict, baselines: bool) -> bool:
    """Whether a copy has its final distillation (and baselines, if asked for) under `config` already."""
    trained = [lineage.find(i) for i in BASELINE_IDS]
    return (
        lineage.config == config
        and lineage.answered()
        and lineage.find(FINAL_ID) is not None
        and (not baselines or all(b is not None and lineage.is_current_baseline(b) for b in trained))
    )


def redistil(args: argparse.Namespace, source: Path, settings: dict[str, object]) -> tuple[Lineage, Lineage]:
    """The source's lineage and its copy's, once the copy has trained under `settings`."""
    before = finished(source)
    config = config_with(source, before, settings)
    target = Path(args.out) / source.name
    if not RunDir(target).exists():
        if target.exists():
            raise SystemExit(f"{SCRIPT}: {target}: already there and not a campaign; choose another --out")
        target.parent.mkdir(parents=True, exist_ok=True)
        prepare(source, before, target)
    copy = finished(target, final=False)
    if copy.config != config and any(copy.find(i) for i in LEFT_BEHIND):
        # ikd keeps a final made under other student or loss keys: it would be tabulated as this recipe's
        raise SystemExit(f"{SCRIPT}: {target}: trained under other settings than these; choose another --out")
    if not done_under(copy, config, args.baselines):  # else a resume would only add a session to its record
        config_path = target.parent / f"{target.name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [sys.executable, "-m", "ikd", "compress", "--config", str(config_path), "--run-dir", str(target)]
        command += ["--force", "--quiet", *(["--baselines"] if args.baselines else [])]
        command += ["--device", args.device] if args.device else []
        command += ["--data-dir", args.data_dir] if args.data_dir else []
        done = subprocess.run(command, stdout=subprocess.DEVNULL)  # its errors (stderr) show
        if done.returncode != 0:
            raise SystemExit(f"{SCRIPT}: `{' '.join(command)}` exited with {done.returncode}")
    after = finished(target)
    if search_of(after) != search_of(before):
        raise SystemExit(
            f"{SCRIPT}: {target}: the search came out other than {source}'s; the comparison would not hold"
        )
    return before, after


def kept_weights(run_dir: Path) -> str:
    """Which weights validation kept for the final: raw, or their EMA (older records: raw)."""
    try:
        meta = json.loads((RunDir(run_dir).node_dir(FINAL_ID) / META_FILE).read_text())
    except (OSError, ValueError):
        return "?"
    return str(meta.get("metrics", {}).get("best", {}).get("weights", "raw"))


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def points(new: float | None, old: float | None) -> float | None:
    return None if new is None or old is None else 100 * (new - old)


def final_cells(lineage: Lineage, run_dir: Path) -> list[str]:
    final: NodeRecord = lineage.find(FINAL_ID)  # type: ignore[assignment]
    root: NodeRecord = lineage.find(ROOT_ID)  # type: ignore[assignment]
    drop = points(root.test_accuracy, final.test_accuracy)
    kept = f"{final.best_epoch or 'n/a'}/{final.epochs} {kept_weights(run_dir)}"
    kept += " (not the answer: below its search answer's floor)" if final.reason.startswith(FINAL_NOT_KEPT) else ""
    return [pct(final.val_accuracy), pct(final.test_accuracy), kept, "n/a" if drop is None else f"{drop:.2f}"]


def signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def tables(pairs: list[tuple[Path, Lineage, Path, Lineage]], settings: dict[str, object]) -> tuple[str, dict]:
    """The record's text, and the mean changes (points) for the RESULT line."""
    head = ["run", "answer", "params"]
    head += [f"{when}: {what}" for when in ("before", "after") for what in ("val %", "test %", "kept", "test drop")]
    head += ["change, val", "change, test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    changes: dict[str, list[float]] = {"val": [], "test": []}
    baselines = []
    for source, before, target, after in pairs:
        old, new = before.find(FINAL_ID), after.find(FINAL_ID)
        assert old is not None and new is not None
        change = {
            "val": points(new.val_accuracy, old.val_accuracy),
            "test": points(new.test_accuracy, old.test_accuracy),
        }
        for key, value in change.items():
            if value is not None:
                changes[key].append(value)
        row = [source.name, new.spec().summary(), f"{new.params:,}", *final_cells(before, source)]
        row += [*final_cells(after, target), signed(change["val"]), signed(change["test"])]
        lines.append("| " + " | ".join(row) + " |")
        trained = [after.find(i) for i in BASELINE_IDS]
        if all(b is not None and after.is_current_baseline(b) for b in trained):
            scratch, oneshot = trained
            baselines.append(
                f"| {source.name} | {pct(new.test_accuracy)} | {pct(scratch.test_accuracy)} | "  # type: ignore[union-attr]
                f"{pct(oneshot.test_accuracy)} | {signed(points(new.test_accuracy, scratch.test_accuracy))} | "  # type: ignore[union-attr]
                f"{signed(points(new.test_accuracy, oneshot.test_accuracy))} | {scratch.epochs} |"  # type: ignore[union-attr]
            )
    means = {key: statistics.fmean(values) for key, values in changes.items() if values}
    changed = ", ".join(f"`{key}: {value}`" for key, value in settings.items()) or "nothing (the same recipe again)"
    text = [
        f"Changed for the final distillation: {changed}; the search's nodes are the source runs' own, trained "
        "with their recipe. `kept`: the epoch and the weights (raw or their EMA) validation kept.",
        "\n".join(lines),
    ]
    if means:
        text.append(
            f"Mean change, after - before: validation {signed(means.get('val'))} over {len(changes['val'])} run(s), "
            f"test {signed(means.get('test'))} over {len(changes['test'])}."
        )
    if baselines:
        text.append(
            "Baselines under the changed recipe (test %, equal epochs):\n\n"
            "| run | final | scratch | one-shot KD | final - scratch | final - one-shot KD | epochs |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(baselines)
        )
    sessions = [
        f"- {target.name}: `{session.command}` -- {session.machine}, {session.started}"
        for _, before, target, after in pairs
        for session in after.sessions
        if session not in before.sessions
    ]
    text.append(
        "The copies' own sessions (`ikd compress` runs after the copy was made; the first trained):\n\n"
        + "\n".join(sessions)
    )
    text.append(f"Tabulated on: {machine_line()}")
    return "\n\n".join(text), means


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", nargs="+", required=True, metavar="RUN_DIR", help="finished campaigns, each with a final distillation"
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a student.*, loss.* or ensemble.* key for the final distillation (YAML value); repeatable",
    )
    parser.add_argument("--out", required=True, help="folder for the copies (one per run; a copy there is resumed)")
    parser.add_argument("--data-dir", help="the dataset's folder, as the campaigns were given it")
    parser.add_argument("--device", help="where the copies train (default: ikd's auto); keep the sources' device")
    parser.add_argument(
        "--baselines", action="store_true", help="also train scratch and one-shot KD under the changed recipe"
    )
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--note", action="append", default=[], help="a paragraph added to the record")
    args = parser.parse_args()
    settings = dict(parse_setting(text) for text in args.settings)
    sources = [Path(run) for run in args.runs]
    if len({s.name for s in sources}) != len(sources):
        raise SystemExit(f"{SCRIPT}: --runs: two runs share a folder name; their copies in --out would collide")
    pairs = []
    for source in sources:
        before, after = redistil(args, source, settings)
        pairs.append((source, before, Path(args.out) / source.name, after))
    text, means = tables(pairs, settings)
    text = "\n\n".join([*args.note, text])
    publish(text, args.markdown, "Final distillation, another recipe: " + (", ".join(args.settings) or "the same"))
    print_result({f"mean_change_{key}": f"{value:+.3f}" for key, value in means.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
