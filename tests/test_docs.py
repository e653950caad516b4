"""The docs' generated tables (config reference, commands, the README's results) come from the code and the
committed records; they must not drift."""

import importlib
import sys
from pathlib import Path

import pytest

from ikd.cli import commands_reference
from ikd.config import config_reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_results() -> str:
    """benchmarks/paper.py's README table, from the committed records (benchmarks/ is not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("paper").readme_results()
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def generated_block(name: str) -> str:
    """The text between `<!-- NAME:start -->` and `<!-- NAME:end -->`, in README.md or a page of docs/."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    for page in [README, *sorted((ROOT / "docs").glob("**/*.md"))]:
        text = page.read_text(encoding="utf-8")
        if start in text:
            assert end in text, f"{page.name}: {start} without {end}"
            return text[text.index(start) + len(start) : text.index(end)].strip()
    pytest.fail(f"no {start} marker in README.md or docs/")


@pytest.mark.parametrize(
    "name,generate,command",
    [
        ("config-reference", config_reference, "ikd config-reference"),
        (
            "commands",
            commands_reference,
            'python -c "from ikd.cli import commands_reference; print(commands_reference())"',
        ),
        ("results", readme_results, "python benchmarks/paper.py --readme-table"),
    ],
)
def test_generated_tables_are_current(name, generate, command):
    assert generated_block(name) == generate().strip(), f"the {name} table is stale: regenerate it with `{command}`"


def test_readme_gives_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


@pytest.mark.parametrize("config_file", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(config_file):
    from ikd.config import load_config

    assert load_config(str(config_file), {}).data.name in config_file.name


def test_the_slim_config_runs_the_settings_its_record_measured():
    """configs/cifar10-vgg16-slim.yaml quotes iterating_pays_cifar10_gpu.md: the campaigns there must have run
    its settings (their teacher was given as a directory, trained by `ikd train` for teacher.epochs)."""
    import json

    from ikd.config import load_config

    shipped = load_config(str(ROOT / "configs" / "cifar10-vgg16-slim.yaml"), {}).model_dump(mode="json")
    lineages = ROOT / "benchmarks" / "results" / "lineages" / "iterating-pays"
    for seed in range(3):
        lineage = json.loads((lineages / f"cifar10-gpu-share+final+early-seed{seed}" / "lineage.json").read_text())
        ran = lineage["config"]
        for section in ("student", "search", "loss", "ensemble"):  # keys added since then keep their defaults
            assert ran[section] == {key: shipped[section][key] for key in ran[section]}, (seed, section)
        assert ran["data"]["name"] == shipped["data"]["name"] and ran["teacher"]["arch"] == shipped["teacher"]["arch"]
