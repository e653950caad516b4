"""The benchmark scripts stay runnable: each one's --quick mode runs and ends with its RESULT line."""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import SMALL_ARCH, Ran, campaign_args, in_process

from ikd.arch import preset
from ikd.lineage import RunDir
from ikd.model import VGG
from ikd.runtime import cpu_name

ROOT = Path(__file__).resolve().parents[1]
QUICK_ROW = f"digits-{SMALL_ARCH}"  # paper.py --quick's teacher: the small layout, not a preset


OWN_PROCESS = {
    "scale_out.py",  # starts a Ray cluster from the calling process
    "campaign.py",  # measures its children's peak memory (RUSAGE_CHILDREN): a test worker has had many
}


def script(name: str, *args: str, tmp_path: Path) -> Ran | subprocess.CompletedProcess:
    """`python benchmarks/NAME ARGS` in `tmp_path`, whatever its exit status: in this process
    (conftest.in_process: an interpreter start is about 2 s of each run) unless it needs its own."""
    argv = [str(ROOT / "benchmarks" / name), *args]
    if name in OWN_PROCESS:
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)

    def run_script() -> None:
        runpy.run_path(argv[0], run_name="__main__")

    with mock.patch.object(sys, "path", [str(ROOT / "benchmarks"), *sys.path]):
        return in_process(run_script, cwd=tmp_path, argv=argv, fresh_modules_under=ROOT / "benchmarks")


def quick(name: str, *extra: str, tmp_path: Path) -> Ran | subprocess.CompletedProcess:
    """A benchmark script at its --quick size."""
    return script(name, "--quick", *extra, tmp_path=tmp_path)


def run_quick(script: str, *extra: str, tmp_path: Path) -> str:
    result = quick(script, "--quiet", *extra, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def paths_of(tmp_path: Path) -> list[str]:
    return ["--out", str(tmp_path / "runs"), "--markdown", str(tmp_path / "paper.md")]


def test_paper_table_quick(tmp_path):
    out = run_quick(
        "paper.py", "--out", str(tmp_path / "runs"), "--markdown", str(tmp_path / "paper.md"), tmp_path=tmp_path
    )
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"RESULT {QUICK_ROW}-width_x=") and f"{QUICK_ROW}-depth_x=" in last
    table = (tmp_path / "paper.md").read_text()
    assert f"| digits | {SMALL_ARCH} | width | 0 | teacher 2 ep;" in table and "Network Slimming" in table
    # the second row trained no teacher of its own: it imported the first row's
    assert f"| digits | {SMALL_ARCH} | depth | 0 | teacher imported from {QUICK_ROW}-width;" in table
    width, depth = (RunDir(tmp_path / "runs" / f"{QUICK_ROW}-{ops}").load().root() for ops in ("width", "depth"))
    assert (width.epochs, depth.epochs) == (2, 0) and depth.sha256 == width.sha256
    # each final student was exported and timed beside its teacher
    for row in table.split("| digits |")[1:]:
        assert "| - | - | - | - |" not in row.splitlines()[0]

    # the table is kept as records: a later run replaces its own rows, keeps the others and the notes
    records_file = tmp_path / "paper.json"
    records = json.loads(records_file.read_text())
    assert list(records) == [f"{QUICK_ROW}-width", f"{QUICK_ROW}-depth"]
    assert records[f"{QUICK_ROW}-width"]["command"].startswith("python benchmarks/paper.py --quick")
    earlier = records[f"{QUICK_ROW}-width"] | {
        "row": "mnist-vgg16-width",
        "dataset": "MNIST",
        "teacher": "VGG-16",
        "params": 4321,
    }
    records_file.write_text(json.dumps({"mnist-vgg16-width": earlier} | records))
    (tmp_path / "paper.md").write_text(table + "\n## Notes\n\n- written by hand\n")
    run_quick(
        "paper.py",
        "--collect-only",
        "--out",
        str(tmp_path / "runs"),
        "--markdown",
        str(tmp_path / "paper.md"),
        tmp_path=tmp_path,
    )
    merged = (tmp_path / "paper.md").read_text()
    assert "| MNIST | VGG-16 | width |" in merged and "| 4,321 |" in merged
    assert merged.count(f"| digits | {SMALL_ARCH} |") == 2 and merged.endswith("## Notes\n\n- written by hand\n")
    collected = json.loads(records_file.read_text())[f"{QUICK_ROW}-depth"]
    # tabulated, not trained, by this command: the row also names the run that trained it
    assert "--collect-only" in collected["command"] and "`paper.py --quick --quiet --out" in collected["trained_by"]
    assert "trained by `paper.py --quick" in merged

    # a lineage brought back without its weights (nor latencies) is tabulated as it is, and says so
    run = RunDir(tmp_path / "runs" / f"{QUICK_ROW}-depth")
    lineage = run.load()
    final = lineage.final()
    (run.node_dir(final.id) / "model.safetensors").unlink()
    run.save(lineage.model_copy(update={"nodes": [n.model_copy(update={"latency": []}) for n in lineage.nodes]}))
    run_quick(
        "paper.py",
        "--collect-only",
        "--out",
        str(tmp_path / "runs"),
        "--markdown",
        str(tmp_path / "paper.md"),
        tmp_path=tmp_path,
    )
    weightless = json.loads(records_file.read_text())[f"{QUICK_ROW}-depth"]
    assert weightless["speedup_ort"] is None and weightless["params"] == final.params
    assert f"no weights of {final.id} here, so not exported or timed" in weightless["source"]

    # another seed of a row: its own run directory and record, the seeds' mean and spread below the table
    shutil.copytree(tmp_path / "runs" / f"{QUICK_ROW}-depth", tmp_path / "runs" / f"{QUICK_ROW}-depth-seed1")
    reseeded = RunDir(tmp_path / "runs" / f"{QUICK_ROW}-depth-seed1")
    reseeded.save(reseeded.load().model_copy(update={"config": lineage.config | {"seed": 1}}))
    run_quick(
        "paper.py",
        "--collect-only",
        "--seed",
        "1",
        "--out",
        str(tmp_path / "runs"),
        "--markdown",
        str(tmp_path / "paper.md"),
        tmp_path=tmp_path,
    )
    seeded = json.loads(records_file.read_text())
    assert seeded[f"{QUICK_ROW}-depth-seed1"]["seed"] == 1 and seeded[f"{QUICK_ROW}-depth"]["seed"] == 0
    assert "Rows run with several seeds" in (tmp_path / "paper.md").read_text()

    # an unfinished campaign (stopped mid-search, or by lost Ray workers) is not tabulated: its record stays
    unfinished = reseeded.load().model_copy(update={"stop_reason": None})
    for stop in (None, "candidates lost with their workers: g1-width in generation 1"):
        reseeded.save(unfinished.model_copy(update={"stop_reason": stop}))
        collect = quick("paper.py", "--collect-only", "--seed", "1", *paths_of(tmp_path), tmp_path=tmp_path)
        assert collect.returncode == 0 and "is unfinished; not tabulated" in collect.stderr
        assert json.loads(records_file.read_text())[f"{QUICK_ROW}-depth-seed1"] == seeded[f"{QUICK_ROW}-depth-seed1"]
    # a run of another seed than the record's is refused, not filed under this one
    reseeded.save(unfinished.model_copy(update={"stop_reason": lineage.stop_reason}))
    other_seed = quick(
        "paper.py",
        "--collect-only",
        "--seed",
        "0",
        "--reuse",
        f"{QUICK_ROW}-depth={reseeded.path}",
        *paths_of(tmp_path),
        tmp_path=tmp_path,
    )
    assert other_seed.returncode != 0 and "ran with seed 1, not --seed 0" in other_seed.stderr

    records_file.write_text("{not json")
    paths = ["--out", str(tmp_path / "runs"), "--markdown", str(tmp_path / "paper.md")]
    broken = quick("paper.py", "--collect-only", *paths, tmp_path=tmp_path)
    assert broken.returncode != 0 and "paper.json: not a readable table record" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_the_paper_table_has_a_row_for_each_shipped_slim_recipe(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    paper = importlib.import_module("paper")
    from ikd.config import load_config
    from ikd.lineage import Lineage

    recipes = [row for row in paper.all_rows() if row.operators == ("slim",)]
    assert [row.name for row in recipes] == ["cifar10-vgg16-slim"]  # where configs/ ships one
    config = load_config(str(recipes[0].config), {"search.operators": ["slim"], "teacher.arch": "vgg16"})
    assert config.student.final_epochs == 10 and config.search.slim_by_share
    assert all(row.config.name == f"{row.dataset}-{row.teacher}.yaml" for row in paper.all_rows() if row not in recipes)
    runs = ROOT / "benchmarks" / "results" / "lineages" / "iterating-pays"
    lineage = Lineage.model_validate(
        json.loads((runs / "cifar10-gpu-share+final+early-seed0" / "lineage.json").read_text())
    )
    assert "4 ep/child, 5 children + final distillation 10 ep (30 child-epochs)" in paper.budget_of(lineage)


def test_paper_table_states_each_seed_and_their_mean_and_spread(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    paper = importlib.import_module("paper")
    base = {"dataset": "MNIST", "teacher": "VGG-16", "operators": "width", "budget": "b", "teacher_test": 99.5}
    base |= {"reduction": 99.0, "generations": 3, "speedup_ort": None, "speedup_torch": None, "train_minutes": 1.0}
    base |= {"command": "c", "machine": "m", "oneshot": None}
    records = {
        "mnist-vgg16-width-seed2": base
        | {"row": "mnist-vgg16-width-seed2", "seed": 2, "x": 60.0, "params": 300}
        | {"drop": 0.3, "val_drop": 0.2, "scratch": 0.990},
        "mnist-vgg16-width": base
        | {"row": "mnist-vgg16-width", "x": 40.0, "params": 500}  # recorded before seeds
        | {"drop": 0.1, "val_drop": 0.4, "scratch": 0.993},
        "mnist-vgg16-depth": base
        | {"row": "mnist-vgg16-depth", "x": 5.0, "params": 9}
        | {"operators": "depth", "drop": 0.0, "val_drop": 0.0, "scratch": None},
    }
    assert [r["row"] for r in paper.ordered(records)] == [
        "mnist-vgg16-depth",
        "mnist-vgg16-width",
        "mnist-vgg16-width-seed2",
    ]
    text = paper.table_text(records, quick=False)
    assert "| MNIST | VGG-16 | width | 2 | b |" in text and "| MNIST | VGG-16 | width | 0 | b |" in text
    # chain test 99.4 and 99.2 against scratch 99.3 and 99.0: +0.10 and +0.20
    assert "| MNIST | VGG-16 | width | 0, 2 | 99.50 | 50.0 ± 14.1 | 400 ± 141 | 0.20 ± 0.14 | 0.30 ± 0.14 | " in text
    assert "| +0.15 ± 0.07 | - |" in text
    assert "mnist-vgg16-width" not in text.split("Not run in this table")[1].split("\n")[0]
    assert "| MNIST | VGG-16 | depth | 0," not in text  # one seed: no mean
    assert "(a)" not in text  # one teacher for both seeds
    # seeds whose teachers came from different places: the spread is not the seed's alone, and it says so
    records["mnist-vgg16-width"] |= {"budget": "teacher imported from runs/teachers/other; 5 ep/child"}
    records["mnist-vgg16-width-seed2"] |= {"budget": "teacher 3 ep; 5 ep/child"}
    text = paper.table_text(records, quick=False)
    assert "| MNIST | VGG-16 | width (a) | 0, 2 |" in text
    assert "mnist-vgg16-width: seed 0 teacher imported from runs/teachers/other; seed 2 teacher 3 ep." in text
    # a seed importing the teacher its sibling seed trained is one recipe
    records["mnist-vgg16-width"] |= {"budget": "teacher imported from mnist-vgg16-width-seed2; 5 ep/child"}
    assert "(a)" not in paper.table_text(records, quick=False)

    # a row rewritten with the same shapes keeps the speed-ups retime_paper.py measured for them
    timed = records["mnist-vgg16-width"] | {"root_params": 9000, "speedup_ort": 3.0, "timed_by": "re-timed"}
    rewritten = timed | {"speedup_ort": 9.9}
    rewritten.pop("timed_by")
    assert paper.retimed(timed, rewritten) == {"speedup_ort": 3.0, "speedup_torch": None, "timed_by": "re-timed"}
    assert paper.retimed(timed, rewritten | {"params": 499}) == {}  # another student: its own timings

    negative = script("paper.py", "--seed", "-1", "--collect-only", tmp_path=tmp_path)
    assert negative.returncode != 0 and negative.stderr.strip() == "paper.py: error: --seed -1: expected a seed >= 0"


def result_of(out: str) -> dict[str, str]:
    """The RESULT line (which must be the last line of stdout) as a dict."""
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return dict(pair.split("=", 1) for pair in last.split()[1:])


def quick_record(script: str, tmp_path: Path, *extra: str) -> tuple[dict[str, str], str]:
    """Run a script's --quick mode with a markdown record; its RESULT values and the record."""
    record = tmp_path / "record.md"
    result = result_of(run_quick(script, "--markdown", str(record), *extra, tmp_path=tmp_path))
    text = record.read_text()
    assert f"Command: `python benchmarks/{script} --quick" in text and "Machine: " in text
    return result, text


def test_train_throughput_quick_times_both_layouts_of_a_custom_student(tmp_path):
    result, text = quick_record(
        "train_throughput.py", tmp_path, "--arch", "4x2-8x1", "--size", "8", "--channels", "1", "--layouts"
    )
    assert result["arch"] == "VGG-4x2-8x1" and float(result["fp32_nchw_img_s"]) > 0
    assert "| fp32 | nchw (ikd's) |" in text and "| fp32 | nhwc |" in text  # fp32 trains NCHW
    if "bf16_nchw_img_s" in result:  # a CPU with bf16 instructions: a first width of 4 trains NCHW there too
        assert "| bf16 | nchw (ikd's) |" in text


def test_train_throughput_reads_the_older_blocks_spelling_as_the_layout_and_refuses_a_bad_arch(tmp_path, monkeypatch):
    from ikd.arch import parse_layout

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    assert importlib.import_module("train_throughput").parse_blocks("4,4/8,8,8/16") == parse_layout("4x2-8x3-16x1")[0]
    refused = quick("train_throughput.py", "--arch", "4x0", tmp_path=tmp_path)
    assert refused.returncode != 0 and "'0' is not a number of convs" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_kd_throughput_quick(tmp_path):
    result, text = quick_record("kd_throughput.py", tmp_path)
    assert {
        "ikd_img_s",
        "reference_img_s",
        "speedup",
        "speedup_without_cache",
        "cache_s",
        "ikd_val",
        "reference_val",
        "accuracy_gap_points",
        "goal_met",
    } <= set(result)
    assert "| reference (Dataset + DataLoader, 0 workers) |" in text


def test_kd_overhead_quick(tmp_path):
    result, record = quick_record("kd_overhead.py", tmp_path)
    assert result["teacher"] == "cached"
    assert {"kd_over_ce", "kd_with_cache_over_ce", "cache_s", "ce_s", "kd_s", "goal_met"} <= set(result)
    # the verdict is the ratio that counts the teacher cache, not the training loops alone
    assert float(result["cache_s"]) > 0
    assert result["goal_met"] == ("yes" if float(result["kd_with_cache_over_ce"]) <= 1.15 else "no")
    verdict = "met" if result["goal_met"] == "yes" else "not met"
    assert f"epochs: {result['kd_with_cache_over_ce']} (goal <= 1.15: {verdict})" in record


def test_kd_overhead_verdict_counts_the_teacher_cache(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    kd_overhead = importlib.import_module("kd_overhead")
    # the committed record's times: the loops alone (1.045) would meet the goal, with the cache not
    ratio = kd_overhead.ratio_with_cache(kd_s=91.88, ce_s=87.97, cache_s=97.7, epochs=1, cache_epochs=5)
    assert ratio == pytest.approx(1.267, abs=1e-3) and ratio > kd_overhead.GOAL


def test_children_cost_quick(tmp_path):
    result, _ = quick_record("children_cost.py", tmp_path)
    assert result["k"] == "4"
    assert {"generation_s", "cache_s", "children_ce_s", "denominator_s", "ratio", "goal_met"} <= set(result)


def test_user_module_quick_trains_its_resnet_once_and_counts_its_macs(tmp_path):
    result, text = quick_record("user_module.py", tmp_path)
    assert result["answer"] == "g1-student" and int(result["module_params"]) > int(result["answer_params"])
    assert "external: model.pt2 (torch.export)" in text and "fewer MACs" in text
    assert "| onnxruntime | 1 |" in text and float(result["speedup_onnxruntime_b1"]) > 0  # timed beside the module
    weights = tmp_path / "runs" / "user-module" / "module" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again, text = quick_record("user_module.py", tmp_path, "--baselines")  # the module reused, the run resumed
    assert "- baseline-scratch (the answer's architecture" in text and "the chain's answer minus it" in text
    same = lambda r: {k: v for k, v in r.items() if k != "campaign_min" and not k.startswith("speedup")}  # noqa: E731
    assert weights.stat().st_mtime_ns == before and same(again) == same(result)
    other = quick("user_module.py", "--quiet", "--seed", "1", tmp_path=tmp_path)  # not the module on disk
    assert other.returncode != 0 and "holds a module trained as" in other.stderr


def test_objective_compare_quick_sets_two_campaigns_of_one_teacher_side_by_side(tmp_path):
    result, text = quick_record("objective_compare.py", tmp_path)
    assert {"params_params", "macs_params", "params_macs", "macs_macs", "params_test", "macs_test"} <= set(result)
    assert "| params | g1-" in text and "| macs | g1-" in text and "exact McNemar p" in text
    refused = script("objective_compare.py", "--runs", "a=nowhere", "b=nowhere", tmp_path=tmp_path)
    assert refused.returncode != 0 and "expected NAME=DIR of a campaign's run directory" in refused.stderr
    alone = script("objective_compare.py", "--runs", "a=nowhere", tmp_path=tmp_path)
    assert alone.returncode != 0 and "expected two or more NAME=DIR" in alone.stderr


def test_utilisation_quick(tmp_path):
    result, _ = quick_record("utilisation.py", tmp_path)
    assert {
        "peak_gflops",
        "1x28_vgg16_peak_fraction",
        "1x28_w0.5_peak_fraction",
        "1x28_w0.25_peak_fraction",
        "goal_met",
    } <= set(result)


def test_teacher_cache_quick_times_both_precisions_and_compares_their_targets(tmp_path):
    result, text = quick_record("teacher_cache.py", tmp_path)
    assert float(result["fp32_img_s"]) > 0 and float(result["bf16_img_s"]) > 0
    assert 0 < float(result["top1_agreement"]) <= 1 and 0 < float(result["max_target_diff"]) < 1  # bf16 did differ
    assert "| fp32 |" in text and "| bf16 |" in text


def test_campaign_refuses_a_run_directory_a_killed_campaign_began(tmp_path):
    # killed while its teacher trained: no lineage.json yet, but a training state the rerun would resume,
    # timing only the rest
    (begun := tmp_path / "run" / ".state").mkdir(parents=True)
    (begun / "epoch-00001.pt").write_bytes(b"state")
    command = [sys.executable, str(ROOT / "benchmarks" / "campaign.py"), "--run-dir", str(tmp_path / "run")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode != 0 and "already holds a campaign (or one begun)" in refused.stderr


def test_campaign_quick(tmp_path):
    result, text = quick_record("campaign.py", tmp_path)
    assert {
        "wall_min",
        "peak_rss_gib",
        "compression",
        "test_drop_points",
        "val_drop_points",
        "final_params",
        "goals_met",
    } <= set(result)
    assert float(result["peak_rss_gib"]) > 0 and "g0-teacher" in text
    assert "| root teacher | 1 |" in text and "| accepted children |" in text


@pytest.mark.ray
def test_scale_out_quick(tmp_path):  # conftest skips it without the ray extra, fails it on a broken one
    result, text = quick_record("scale_out.py", tmp_path)
    assert result["same_decision"] == "yes"
    assert {"ray_over_local", "local_s", "ray_s", "ray_init_s"} <= set(result)
    assert "| N workers | generation s (projected) |" in text


def test_iterating_pays_quick(tmp_path):
    runs = ["--runs-dir", str(tmp_path / "runs")]
    out = run_quick("iterating_pays.py", *runs, "--markdown", str(tmp_path / "record.md"), tmp_path=tmp_path)
    assert out.strip().splitlines()[-1].startswith("RESULT variant=slim+final+dkd+early compression=")
    record = (tmp_path / "record.md").read_text()
    # one row per variant x seed, each with its baselines' test accuracy, then the means
    assert "| none | 0 | `g1-" in record and "| slim+final+dkd+early | 0 | `final` " in record
    assert "| slim+final+dkd+early | 1 |" in record.split("Mean ±")[1]
    assert "`none`: no goals are stated for digits (issue 18 sets them for mnist and cifar10)." in record
    # the final student against each baseline, image by image, on both splits
    paired = [line for line in record.split("Paired comparisons")[1].splitlines() if line.startswith("| none | 0 |")]
    assert [line.split(" | ")[2:4] for line in paired] == [
        ["val", "scratch"],
        ["val", "one-shot KD"],
        ["test", "scratch"],
        ["test", "one-shot KD"],
    ]
    for line in paired:
        difference, only_chain, only_baseline, p_value = (float(x) for x in line.strip("| ").split(" | ")[4:8])
        assert (difference > 0) == (only_chain > only_baseline) and (difference < 0) == (only_chain < only_baseline)
        assert 0 < p_value <= 1

    # --reload without the weights (a GPU lease brings back records only): nothing trains, the
    # comparisons come from each run's saved ones, and without those the record says what is missing
    for weights in (tmp_path / "runs").rglob("model.safetensors"):
        weights.unlink()
    run_quick("iterating_pays.py", *runs, "--reload", "--markdown", str(tmp_path / "again.md"), tmp_path=tmp_path)
    assert not list((tmp_path / "runs").rglob("model.safetensors"))  # trained nothing
    again = (tmp_path / "again.md").read_text()
    assert again.split("Paired comparisons")[1] == record.split("Paired comparisons")[1]
    # a comparison saved for other weights (another checksum) is not reused
    saved = tmp_path / "runs" / "none-seed0" / "paired-comparisons.json"
    document = json.loads(saved.read_text())
    saved.write_text(json.dumps(document | {"nodes": ["0" * 64, *document["nodes"][1:]]}))
    (tmp_path / "runs" / "slim+final+dkd+early-seed0" / "paired-comparisons.json").unlink()
    run_quick("iterating_pays.py", *runs, "--reload", "--markdown", str(tmp_path / "bare.md"), tmp_path=tmp_path)
    assert (
        "Not compared (no saved comparison, and the weights are not here): none seed 0, slim+final+dkd+early seed 0"
        in (tmp_path / "bare.md").read_text()
    )
    assert "Trained on: " in again and "Tabulated on: " in again  # where the minutes were measured, and where read
    # a record must describe the runs it reads: another config (told by the lineage, with no yaml beside
    # it as a GPU lease brings back), or an unfinished campaign, is refused
    for config_file in (tmp_path / "runs").glob("*.yaml"):
        config_file.unlink()
    other = quick(
        "iterating_pays.py", *runs, "--reload", "--upgrade", "early={search: {early_rejection: 3.0}}", tmp_path=tmp_path
    )
    assert other.returncode != 0 and "run with other settings than this variant and seed" in other.stderr
    assert "search.early_rejection" in other.stderr
    lineage_file = tmp_path / "runs" / "none-seed0" / "lineage.json"
    finished = json.loads(lineage_file.read_text())
    lineage_file.write_text(json.dumps(finished | {"stop_reason": "candidates lost with their workers: g1-width"}))
    lost = quick("iterating_pays.py", *runs, "--reload", tmp_path=tmp_path)
    lineage_file.write_text(json.dumps(finished | {"stop_reason": None}))
    unfinished = quick("iterating_pays.py", *runs, "--reload", tmp_path=tmp_path)
    for refused in (lost, unfinished):
        assert refused.returncode != 0 and "the campaign has not finished" in refused.stderr
    assert "Traceback" not in other.stderr + lost.stderr + unfinished.stderr


def test_iterating_pays_states_each_goal_as_met_or_missed_by_how_much(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    pays = importlib.import_module("iterating_pays")
    mnist, cifar10 = pays.GOALS["mnist"], pays.GOALS["cifar10"]
    # MNIST seed 0 of the gentle+retry replay: size and baselines met, the drop 0.09 over its bound
    assert pays.goal_cells(mnist, 2879.41, 0.06, 0.07, 0.29) == [
        "2879.41 (met)",
        "0.06 (met)",
        "0.07 (met)",
        "0.29 (missed by 0.09)",
    ]
    # judged as shown: a drop of exactly 20 images of 10,000 (0.2000000000000028 in floats) and a tie meet
    # their goals; a missing accuracy is not a verdict
    assert pays.goal_cells(mnist, 2000.0, -4.7e-15, float("nan"), 99.53 - 99.33) == [
        "2000.00 (met)",
        "0.00 (met)",
        "n/a",
        "0.20 (met)",
    ]
    # CIFAR-10 has no bound on the drop; a chain 0.4 points over scratch misses the 1.0 asked by 0.6
    assert pays.goal_cells(cifar10, 9.96, 0.4, 0.5, 3.0) == [
        "9.96 (missed by 0.04)",
        "0.40 (missed by 0.60)",
        "0.50 (met)",
    ]


def test_reload_needs_a_finished_campaign(tmp_path):
    done = quick("iterating_pays.py", "--reload", "--runs-dir", str(tmp_path), tmp_path=tmp_path)
    assert done.returncode != 0 and "no campaign there (no lineage.json)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # reading only: not even a folder made


def test_peer_torch_pruning_quick(tmp_path, monkeypatch):
    pytest.importorskip("torch_pruning")
    # the smoke-sized ikd run --quick makes when given none, made here to be replayed twice
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    ikd_run = ["--ikd-run", str(importlib.import_module("peer_torch_pruning").quick_run(tmp_path))]
    results = tmp_path / "peer.json"
    results.write_text('{"key": {"ikd_run": "x"}, "runs": {')  # a kill mid-write, before writes were atomic
    out = run_quick(
        "peer_torch_pruning.py", *ikd_run, "--markdown", str(tmp_path / "record.md"), "--results", str(results),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert out.strip().splitlines()[-1].startswith("RESULT ikd_test=")
    stored = json.loads(results.read_text())
    assert set(stored["runs"]) == {"l1+ce+global", "l1+kd+local"}  # kept as each ended
    # kept for this run's plan and teacher: another (a --redecide there) replays
    assert {"plan", "teacher_sha256", "seed", "torch_pruning"} <= set(stored["key"])
    record = (tmp_path / "record.md").read_text()
    # the peer pruned to no more than the ikd student's parameters, with both fine-tuning losses
    ikd_params = int(record.split("| ikd (`g1-")[1].split("|")[1].replace(",", ""))
    for variant in ("global + ce", "local + kd"):
        peer_params = int(record.split(f"| torch-pruning l1 {variant} |")[1].split("|")[0].replace(",", ""))
        assert 0.9 * ikd_params <= peer_params <= ikd_params
    # each stage's MACs were counted when it was pruned, and the table shows them
    assert "| M MACs/image | batch-1 ms | batch-64 ms |" in record and "(the teacher: " in record
    ikd_row = record.split("| ikd (`g1-")[1].split("\n")[0].split(" | ")
    assert all(re.fullmatch(r"[0-9.e+-]+ \([0-9.]+x\)", cell) for cell in ikd_row[4:6]), ikd_row  # ms (speed-up)
    for stages in json.loads(results.read_text())["runs"].values():
        assert all(stage["macs"] > 0 for stage in stages)

    # the same run replayed with each stage pruned to the chain student's MACs instead
    macs_record = tmp_path / "macs.md"
    run_quick("peer_torch_pruning.py", *ikd_run, "--match", "macs", "--markdown", str(macs_record), tmp_path=tmp_path)
    record = macs_record.read_text()
    assert "each stage pruned to the chain student's macs" in record

    def macs(row: str) -> float:
        return float(record.split(row)[1].split("|")[3 if row.startswith("| ikd") else 2])

    ikd_macs = macs("| ikd (`g1-")
    for variant in ("global + ce", "local + kd"):
        assert 0.8 * ikd_macs <= macs(f"| torch-pruning l1 {variant} |") <= ikd_macs


def test_peer_torch_pruning_reads_macs_back_from_an_architecture_line(monkeypatch):
    pytest.importorskip("torch_pruning")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    peer = importlib.import_module("peer_torch_pruning")
    teacher = preset("vgg16", in_channels=3, image_size=32, num_classes=10)
    pruned = teacher.model_copy(update={"blocks": [[61, 64], [89, 91], [94, 95, 94], [7, 7, 7], [100, 1, 96]]})
    with_head = pruned.model_copy(update={"head": [33, 12]})
    for spec in (teacher, pruned, with_head):
        assert peer.spec_of(spec.summary(), teacher) == spec
    stage = peer.Stage(target_params=0, epochs=1, arch=pruned.summary())
    model = VGG(teacher)
    assert peer.stage_macs(stage, model) == pruned.macs() != teacher.macs()
    assert peer.stage_macs(peer.Stage(target_params=0, epochs=1, macs=5, arch=pruned.summary()), model) == 5


def test_latency_stability_quick(tmp_path):
    out = run_quick("latency_stability.py", "--markdown", str(tmp_path / "record.md"), tmp_path=tmp_path)
    assert out.strip().splitlines()[-1].startswith("RESULT interleaved_onnxruntime_spread=")
    record = (tmp_path / "record.md").read_text()
    assert "| interleaved | torch | " in record and "| one-by-one | onnxruntime | " in record
    assert "| teacher ms, interleaved | onnxruntime | " in record and "| student ms, interleaved | torch | " in record
    assert "batch 1," in record and "timed with 1 thread(s)" in record


def test_latency_memory_drift_quick(tmp_path):
    out = quick("latency_memory_drift.py", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT teacher_spread=") and "correlation=" in lines[-1]
    assert len([line for line in lines if line.split()[:1] in (["1"], ["2"], ["3"])]) == 3  # one row per block


def test_operator_retirement_replay_quick(tmp_path):
    out = run_quick("operator_retirement_replay.py", "--markdown", str(tmp_path / "record.md"), tmp_path=tmp_path)
    # the quarter-width campaign: from g4 on, each generation's width25 and width50 steps had failed in the one
    # before (g4-g8: 10 candidates), and none of them was accepted
    assert result_of(out)["k1_changed"] == "0"
    assert "| 1 | 10 | 9.8 | 0: - |" in (tmp_path / "record.md").read_text()


def test_retime_paper_quick(tmp_path):
    table = tmp_path / "paper.md"
    out = run_quick("retime_paper.py", "--markdown", str(table), tmp_path=tmp_path)
    last = out.strip().splitlines()[-1]
    # two rows of one teacher, each rebuilt from its committed lineage
    assert last.startswith("RESULT ") and "mnist-vgg16-width_torch=" in last and "mnist-vgg16-depth_ort=" in last
    committed = json.loads((ROOT / "benchmarks" / "results" / "paper.json").read_text())
    records = json.loads(table.with_suffix(".json").read_text())
    assert records.keys() == committed.keys()
    for name, record in records.items():
        if name in ("mnist-vgg16-width", "mnist-vgg16-depth"):
            assert "re-timed by" in record["timed_by"] and "batch 1 and 64" in record["timed_by"]
            assert record["speedup_torch"] > 1 and record["speedup_ort_b64"] > 1
            assert record["timing_spread"] == {}  # one process: nothing to compare
        else:
            assert record == committed[name]  # the other rows are left as they were
    text = table.read_text()
    assert "speed-ups re-timed by" in text and "## Notes" in text and "| speed-up ORT b64 |" in text


def test_retime_paper_gives_each_speed_up_its_spread_over_processes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    retime = importlib.import_module("retime_paper")

    def run(teacher_ms: float, student_ms: float) -> dict:
        ms = {"1": teacher_ms, "64": 10 * teacher_ms}
        return {
            "teacher": {"onnxruntime": ms, "torch": ms},
            "student:0": {r: {"1": student_ms, "64": 10 * student_ms} for r in ("onnxruntime", "torch")},
        }

    runs = [run(4.0, 1.0), run(5.0, 1.0), run(6.0, 1.0)]  # speed-ups 4, 5 and 6
    speedups, spreads = retime.row_speedups(runs, "student:0", [1, 64])
    assert speedups == {"speedup_ort": 5.0, "speedup_ort_b64": 5.0, "speedup_torch": 5.0, "speedup_torch_b64": 5.0}
    assert spreads == {"ort": 1.5, "ort_b64": 1.5, "torch": 1.5, "torch_b64": 1.5}
    assert retime.row_speedups(runs[:1], "student:0", [64]) == ({"speedup_ort_b64": 4.0, "speedup_torch_b64": 4.0}, {})
    paper = importlib.import_module("paper")
    assert paper.spread_text({"ort_b64": 1.0312}) == "; spread between processes ort_b64 1.031"
    assert paper.spread_text({}) == "" and paper.spread_text(None) == ""


def test_width_rounding_quick(tmp_path):
    out = run_quick("width_rounding.py", "--markdown", str(tmp_path / "record.md"), tmp_path=tmp_path)
    assert out.strip().splitlines()[-1].startswith("RESULT fastest=")
    record = (tmp_path / "record.md").read_text()
    assert "| as-searched | 13/21-29x1 |" in record and "| round-to-8 | 8/16-24x1 |" in record


def test_a_teacher_record_from_an_existing_run_names_the_flags_it_ran_with(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    teacher = importlib.import_module("teacher")
    defaults = {"batch_size": 256, "lr": 0.1, "schedule": "linear", "label_smoothing": 0.1, "ema_epochs": 1.0}
    assert teacher.recorded_flags(defaults | {"weight_decay": 5e-4, "seed": 0, "precision": "auto"}) == []
    ran = defaults | {"batch_size": 128, "lr": 0.05, "augment": "reflect-crop-flip-cutout"}
    assert teacher.recorded_flags(ran) == [
        ("--batch-size", "128"),
        ("--lr", "0.05"),
        ("--augment", "reflect-crop-flip-cutout"),
    ]


def test_jpeg_penalty_quick(tmp_path):
    out = run_quick("jpeg_penalty.py", "--markdown", str(tmp_path / "record.md"), tmp_path=tmp_path)
    assert out.strip().splitlines()[-1].startswith("RESULT stored=")
    rows = [line for line in (tmp_path / "record.md").read_text().splitlines() if line.startswith("| re-encoded")]
    psnrs = [float(row.split("|")[2]) for row in rows]
    assert len(psnrs) == 3 and psnrs == sorted(psnrs, reverse=True)  # lower quality, more distortion


def test_jpeg_reencoding_keeps_shape_and_costs_more_at_lower_quality(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    jpeg = importlib.import_module("jpeg_penalty")
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    smooth = torch.nn.functional.avg_pool2d(images.float(), 3, 1, 1).to(torch.uint8)
    high, low = jpeg.reencode(smooth, 95), jpeg.reencode(smooth, 20)
    assert high.shape == low.shape == smooth.shape and high.dtype == torch.uint8
    assert jpeg.mse(high, smooth) < jpeg.mse(low, smooth)
    assert jpeg.linear_fit([1.0, 2.0, 3.0, 4.0], [9.0, 8.0, 7.0, 6.0]) == pytest.approx((10.0, 0.0), abs=1e-9)


def test_early_rejection_replay_quick(tmp_path):
    out = run_quick("early_rejection_replay.py", "--markdown", str(tmp_path / "replay.md"), tmp_path=tmp_path)
    # the committed replay without early rejection: the oldest rule stops g4-width, which that run accepted
    assert "RESULT ikd_slack2_changed=0 points_slack2_changed=0 own-gain_slack2_changed=2" in out
    record = (tmp_path / "replay.md").read_text()
    assert "g4-width accepted @2/5" in record and "| ikd | 2 | 12 | 2 | 0 |" in record


def test_gpu_teacher_parts_restore_to_the_same_model(tmp_path, monkeypatch):
    """cifar_evidence.sh brings a teacher back in fp16 parts (the lease's 16 MiB file limit);
    restore_teacher.py must rebuild a loadable fp32 model within fp16 rounding of the original."""
    from safetensors.torch import load_file

    from ikd.arch import ArchSpec
    from ikd.checkpoint import load_model, save_model
    from ikd.model import build_model

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks" / "device"))
    restore_teacher = importlib.import_module("restore_teacher")
    torch.manual_seed(0)
    original = build_model(ArchSpec(in_channels=3, image_size=8, num_classes=10, blocks=[[8, 8], [16]], head=[12]))
    save_model(tmp_path / "teacher", original, {"note": "trained"})
    script = [sys.executable, str(ROOT / "benchmarks" / "device" / "restore_teacher.py")]
    (tmp_path / "back").mkdir()
    subprocess.run([*script, "--split", str(tmp_path / "teacher"), f"{tmp_path}/back/one"], check=True)
    assert [p.name for p in (tmp_path / "back").glob("one.part*")] == ["one.part0.safetensors"]  # 15 MiB hold it
    # parts of at most 2,304 bytes (the largest tensor): several, every tensor in exactly one
    count = restore_teacher.split(tmp_path / "teacher", tmp_path / "back" / "t16", part_bytes=2304)
    parts = [set(load_file(tmp_path / "back" / f"t16.part{i}.safetensors")) for i in range(count)]
    assert count >= 3 and sum(len(p) for p in parts) == len(set().union(*parts)) == len(original.state_dict())
    assert "restore_teacher.py --split" in (ROOT / "benchmarks" / "device" / "cifar_evidence.sh").read_text()
    subprocess.run([*script, f"{tmp_path}/back/t16", str(tmp_path / "restored")], check=True, capture_output=True)
    restored, meta = load_model(tmp_path / "restored")
    assert meta["note"] == "trained"
    for (name, a), b in zip(original.state_dict().items(), restored.state_dict().values(), strict=True):
        assert b.dtype == a.dtype, name
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name
    missing = subprocess.run([*script, f"{tmp_path}/none", str(tmp_path / "x")], capture_output=True, text=True)
    assert missing.returncode != 0 and "none.model.json: not found" in missing.stderr
    (tmp_path / "back" / "t16.part1.safetensors").unlink()  # the parts after it are not read: a key is missing
    short = subprocess.run([*script, f"{tmp_path}/back/t16", str(tmp_path / "y")], capture_output=True, text=True)
    assert short.returncode != 0 and "the parts do not make the model" in short.stderr
    assert "Traceback" not in missing.stderr + short.stderr


STUB_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python on a GPU machine: imports work, the matmul probe answers, `ikd train` logs
# its start and end and leaves a model.json, benchmarks/teacher.py prints a RESULT.
after() { echo "$@" | sed "s/.* $1 \([^ ]*\).*/\1/"; }
case "$1" in
  -c) exit 0 ;;
  -) cat >/dev/null; echo "stub GPU: 1 TFLOP/s" ;;
  -m) out=$(after --out "$@"); mkdir -p "$out"; echo '{}' > "$out/model.json"
      echo "start $out" >> "$STUB_LOG"
      # wait (10 s at most) for a second run to start: one that never comes means the runs went one by one
      for _ in $(seq 100); do [ "$(grep -c start "$STUB_LOG")" -ge 2 ] && break; sleep 0.1; done
      echo "end $out" >> "$STUB_LOG" ;;
  *) echo "RESULT stub"; [ "$2" = "--existing" ] && touch "$(after --markdown "$@")" ;;
esac
"""


def test_teachers_cifar_sh_runs_its_sweep_side_by_side(tmp_path):
    """The GPU lease's recipe sweep, with a stub for python: PARALLEL runs at once, a record for
    each as it ends, one archive of the runs; an unknown variant stops it before anything starts."""
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    log, out = tmp_path / "stub.log", tmp_path / "out"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("HARD_LIMIT_S", "EPOCHS")},
        "PYTHON": str(stub),
        "STUB_LOG": str(log),
        "OUT": str(out),
        "CIFAR10_DIR": str(tmp_path),
        "PARALLEL": "2",
        "TEACHERS": "vgg16:default vgg16:cutout vgg19:lr0.05",
    }
    repo = tmp_path / "repo"  # the script writes runs/ under the working directory
    shutil.copytree(ROOT / "benchmarks", repo / "benchmarks", ignore=shutil.ignore_patterns("results"))
    script = ["bash", "benchmarks/device/teachers_cifar.sh"]
    done = subprocess.run(script, cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    events = log.read_text().split("\n")
    # two started before either ended; the third only once one had
    assert [e.split()[0] for e in events[:3]] == ["start", "start", "end"]
    records = ["teacher_cifar10_vgg16-cutout.md", "teacher_cifar10_vgg16-default.md", "teacher_cifar10_vgg19-lr0.05.md"]
    assert sorted(p.name for p in out.glob("teacher_cifar10_*.md")) == records
    with tarfile.open(out / "teachers.tar.gz") as archive:
        assert sum(name.endswith("model.json") for name in archive.getnames()) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(["gpu.txt", "teachers.tar.gz", *records])  # no leftovers
    log.unlink()
    for wrong, said in [
        ({"TEACHERS": "vgg16:nope"}, "vgg16:nope: unknown variant nope"),
        ({"TEACHERS": "vgg16:cutout vgg16:cutout"}, "TEACHERS lists vgg16:cutout more than once"),
        ({"PARALLEL": "0"}, "PARALLEL=0: expected a count >= 1"),
    ]:
        bad = subprocess.run(script, cwd=repo, env=env | wrong, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and said in bad.stderr
    assert not log.exists()  # refused before anything trained


def test_step_overhead_sh_interleaves_two_versions_and_tabulates_them(tmp_path):
    """The lease's A/B of the training step, whole, on the CPU: digits instead of CIFAR-10, this
    checkout's ikd as both versions (a copy on PYTHONPATH as the earlier one), no GPU to count waits on."""
    repo = tmp_path / "repo"  # the script writes runs/ under the working directory
    shutil.copytree(ROOT / "benchmarks", repo / "benchmarks", ignore=shutil.ignore_patterns("results"))
    before = repo / ".device" / "ikd-before" / "src"
    shutil.copytree(ROOT / "src", before, ignore=shutil.ignore_patterns("__pycache__"))
    (before / "ikd" / "_version.py").write_text('__version__ = "0.0.0+before"\n')  # tells the versions apart
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(out),
        "DATASET": "digits",
        "ARCH": SMALL_ARCH,
        "ROUNDS": "2",
        "EPOCHS": "1",
        "SYNC_ARGS": "--device cpu --steps 2 --batch 8",
    }
    script = ["bash", "benchmarks/device/step_overhead.sh"]
    done = subprocess.run(script, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    table = (out / "step_overhead.md").read_text()
    assert "| 1 |" in table and "| 2 |" in table and "after / before:" in table
    assert "RESULT before_img_s=" in done.stdout
    # each version's runs came from its own source: the earlier one from the copy on PYTHONPATH
    runs = repo / "runs" / "step-overhead"
    version = {p.name: json.loads((p / "model.json").read_text())["ikd_version"] for p in runs.iterdir() if p.is_dir()}
    assert version["before-1"] == version["before-2"] == "0.0.0+before"
    assert version["after-1"] == version["after-2"] != "0.0.0+before"
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "step_overhead.md", "syncs.txt"]  # no GPU here
    with tarfile.open(out / "logs.tar.gz") as archive:
        members = [m for m in archive if m.name.endswith(".log")]
        logs = {Path(m.name).name: (archive.extractfile(m) or io.BytesIO()).read().decode() for m in members}
    assert sorted(logs) == ["after-1.log", "after-2.log", "before-1.log", "before-2.log"]
    assert all(("ikd-before" in text) == name.startswith("before") for name, text in logs.items())
    syncs = (out / "syncs.txt").read_text()
    assert "RESULT label=before" in syncs and "RESULT label=after" in syncs
    missing = subprocess.run(
        script, cwd=repo, env=env | {"BEFORE_SRC": "nowhere"}, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "no earlier ikd at nowhere/ikd" in missing.stderr


def test_final_recipe_distils_a_finished_answer_again_and_leaves_the_source_alone(tiny_teacher, tmp_path):
    from ikd import cli

    source, out = tmp_path / "campaign", tmp_path / "again"
    assert cli.main(campaign_args(tiny_teacher, source, "--final-epochs", "1")) == 0
    before = RunDir(source).load()
    paths = ["--runs", str(source), "--out", str(out)]
    # 1e-4: YAML 1.1 reads it as a string; the copy must still count as done under it on the second run
    changed = [*paths, "--set", "student.ema_epochs=1", "--set", "student.weight_decay=1e-4", "--baselines"]
    changed += ["--set", "loss.temperature=2", "--note", "Why: a probe.", "--markdown", str(tmp_path / "final.md")]
    done = script("final_recipe.py", *changed, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(
        r"^RESULT mean_change_val=[+-]\d+\.\d{3} mean_change_test=[+-]\d+\.\d{3}$", done.stdout, re.MULTILINE
    )
    copy_dir = RunDir(out / "campaign")
    copy = copy_dir.load()
    again = copy.find("final")
    assert again is not None and again.loss["temperature"] == 2  # trained under the change
    assert copy.config["student"]["ema_epochs"] == 1 and copy.config["student"]["weight_decay"] == 1e-4
    searched = [n for n in before.nodes if n.kind.value in ("teacher", "student")]
    assert [n for n in copy.nodes if n.kind.value in ("teacher", "student")] == searched  # checksums included
    for node in searched:  # hard links, not copies: a copy costs no weights' disk
        assert (copy_dir.node_dir(node.id) / "model.safetensors").stat().st_ino == (
            RunDir(source).node_dir(node.id) / "model.safetensors"
        ).stat().st_ino
    # the source keeps its final and its weights, and gains no baselines
    assert RunDir(source).load() == before and RunDir(source).verify(before) == []
    assert sorted(p.name for p in (source / "nodes").iterdir()) == sorted(n.id for n in before.nodes)
    record = (tmp_path / "final.md").read_text()
    assert "`student.ema_epochs: 1`, `student.weight_decay: 1e-4`, `loss.temperature: 2`" in record
    assert "| campaign |" in record and "| run | final | scratch | one-shot KD |" in record  # baselines trained
    assert record.index("Why: a probe.") < record.index("| run |")  # --note, before the tables
    # a second run finds the copy done and trains nothing, not even a resume
    weights = copy_dir.node_dir("final") / "model.safetensors"
    stamp, sessions = weights.stat().st_mtime_ns, len(copy.sessions)
    assert script("final_recipe.py", *changed, tmp_path=tmp_path).returncode == 0
    assert weights.stat().st_mtime_ns == stamp and len(copy_dir.load().sessions) == sessions
    # refused in one line, before anything trains: a copy made under other settings (ikd would keep its final and
    # tabulate it as this recipe's), a key that would change the search, a value that is not YAML
    for wrong, says in [
        (["--set", "loss.temperature=8"], "trained under other settings"),
        (["--set", "search.max_drop=1"], "search.max_drop=1"),
        (["--set", "loss.kd=[1"], "not YAML"),
        (["--set", "student.final_epochs=0"], "no final distillation"),
    ]:
        bad = script("final_recipe.py", *paths, *wrong, tmp_path=tmp_path)
        assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and says in bad.stderr, bad.stderr
    assert weights.stat().st_mtime_ns == stamp and len(copy_dir.load().sessions) == sessions


def test_recipe_screen_trains_each_variant_once_and_measures_flipped_views(tmp_path):
    result, text = quick_record("recipe_screen.py", tmp_path, "--out", str(tmp_path / "runs"))
    assert set(result) == {"flips_val", "flips-ls0.2_val"}
    assert "2 of 2 runs trained by this invocation" in text
    row = next(line for line in text.splitlines() if line.startswith("| flips-ls0.2 | `--augment"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4] == result["flips-ls0.2_val"] and all(float(c) >= 0 for c in cells[4:10])  # every view filled
    again, text = quick_record("recipe_screen.py", tmp_path, "--out", str(tmp_path / "runs"))
    assert again == result and "0 of 2 runs trained by this invocation" in text  # the finished runs are reused
    changed = quick("recipe_screen.py", "--out", str(tmp_path / "runs"), "--variant", "flips=--augment flip",
                    "--quiet", tmp_path=tmp_path)  # fmt: skip
    assert changed.returncode != 0 and "holds a run of `ikd train" in changed.stderr  # not reused under its name
    refused = quick("recipe_screen.py", "--variant", "no-equals-sign", tmp_path=tmp_path)
    assert refused.returncode != 0 and "expected NAME=FLAGS" in refused.stderr and "Traceback" not in refused.stderr
    # with a teacher every run is distilled from it: here from the first run, which learnt flips
    teacher = tmp_path / "runs" / "flips-s0"
    taught, text = quick_record(
        "recipe_screen.py", tmp_path, "--out", str(tmp_path / "taught"), "--teacher", str(teacher),
        "--variant", "plain=--augment crop-flip", "--variant", "views=--augment crop-flip --teacher-views flip",
    )  # fmt: skip
    assert set(taught) == {"plain_val", "views_val"} and f"distilled from `{teacher}`" in text
    assert f"`ikd distill {teacher} --arch" in text


def test_a_teacher_record_adds_the_test_time_views_its_training_taught_it(tmp_path):
    out = tmp_path / "teacher"
    for augment, expected in (("crop-flip", ["flip", "flip-shift"]), ("crop", []), ("none", [])):
        record = tmp_path / f"{augment}.md"
        done = script("teacher.py", "--dataset", "digits", "--arch", SMALL_ARCH, "--epochs", "1", "--out", str(out),
                      "--markdown", str(record), "--", "--augment", augment, "--precision", "fp32", "--quiet",
                      tmp_path=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"Trained on: epoch 1: {cpu_name()}, " in record.read_text()  # the machine of each epoch
        lines = [x for x in record.read_text().splitlines() if "with test-time views" in x]
        assert [line.split("`--tta ")[1].split("`")[0] for line in lines] == expected
        plain = json.loads((out / "model.json").read_text())["metrics"]["test_of_saved_weights"]["accuracy"]
        for line, passes in zip(lines, ("2x", "6x"), strict=False):
            viewed, change = line.split(f"({passes} the compute): ")[1].split("% (")
            assert float(change.rstrip(")")) == pytest.approx(float(viewed) - plain * 100, abs=0.011)


def test_a_teacher_record_says_which_machine_trained_which_epochs(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    teacher = importlib.import_module("teacher")
    moved = [{"epoch": 1, "machine": "A"}, {"epoch": 2, "machine": "A"}, {"epoch": 3, "machine": "B"}]
    assert teacher.trained_on(moved) == "epochs 1-2: A; epoch 3: B"
    assert teacher.trained_on([{"epoch": 1}, {"epoch": 2}]) == "epochs 1-2: not recorded"  # model.json before


def test_paper_table_time_limit_pauses_a_row_and_the_same_command_resumes_it(tmp_path):
    limited = quick("paper.py", "--quiet", "--time-limit", "0.01s", *paths_of(tmp_path), tmp_path=tmp_path)
    assert limited.returncode == 75, limited.stderr[-2000:]
    assert "time limit reached" in limited.stderr and "rerun the same command to resume" in limited.stderr
    assert "Traceback" not in limited.stderr and not (tmp_path / "paper.json").exists()  # nothing half-tabulated
    assert list((tmp_path / "runs").rglob(".train-state"))  # the epoch it stopped after is kept for the rerun
    from ikd.lineage import RunDir

    paused_row = RunDir(tmp_path / "runs" / f"{QUICK_ROW}-width")
    assert not paused_row.load().nodes and len(paused_row.load().sessions) == 1  # paused in its teacher's training
    resumed = quick("paper.py", "--quiet", *paths_of(tmp_path), tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{QUICK_ROW}-width" in json.loads((tmp_path / "paper.json").read_text())
    assert not list((tmp_path / "runs").rglob(".train-state"))  # taken up and finished
    assert len(paused_row.load().sessions) == 2  # both commands that trained the teacher are on record
    # a pause after a finished row prints that row's table: without --markdown it is kept nowhere else
    shutil.rmtree(tmp_path / "runs" / f"{QUICK_ROW}-depth")
    again = quick("paper.py", "--quiet", "--time-limit", "0.01s", "--out", str(tmp_path / "runs"), tmp_path=tmp_path)
    assert again.returncode == 75, again.stderr[-2000:]
    assert "| width | 0 |" in again.stdout and "| depth | 0 |" not in again.stdout


def test_paper_table_shares_no_teacher_from_a_row_paused_in_its_teachers_training(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    paper = importlib.import_module("paper")
    from ikd.lineage import Lineage, RunDir

    row = paper.Row("mnist", "vgg16", ("width",))
    sibling = RunDir(tmp_path / "mnist-vgg16-depth")
    sibling.path.mkdir()
    sibling.save(Lineage(config={}))  # a lineage with no node yet
    assert paper.shared_teacher(row, row.name, tmp_path, teacher_epochs=3) is None
