"""The docs' generated tables (config reference, commands, the results table) come from the code and the
committed records; they must not drift."""

import importlib
import re
import sys
from pathlib import Path

import pytest

from ikd.cli import commands_reference
from ikd.config import config_reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_results() -> str:
    """benchmarks/paper.py's results table, from the committed records (benchmarks/ is not a package)."""
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


def without_code_blocks(page: Path) -> str:
    """The page's text less its fenced code blocks, where `[x](y)` and `# comment` are not markdown."""
    return re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation but hyphens dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.*)$", without_code_blocks(page), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def broken_links(page: Path) -> list[str]:
    """The relative links of a markdown page whose file, or whose #anchor in a markdown file, does not exist."""
    text = without_code_blocks(page)
    # forms the check below does not read, so a broken one there would pass unseen: not used in these docs
    unread = re.findall(r"^\[[^\]]+\]:.*$|\]\([^)\s]+ [^)]*\)", text, re.MULTILINE)  # [ref]: target, (target "title")
    broken = [f"{form} (write it as [text](target))" for form in unread]
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{target} (no such heading)")
    return broken


DOC_PAGES = [README, *sorted((ROOT / "docs").glob("**/*.md")), *sorted((ROOT / "benchmarks").glob("**/*.md"))]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# A heading: here\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-heading-here) [file](missing.md) [anchor](other.md#nowhere) [web](https://x.org/a)\n"
        '```\n[in code](missing-too.md)\n```\n[titled](other.md "a title")\n[ref]: missing.md\n',
        encoding="utf-8",
    )
    assert broken_links(page) == [
        '](other.md "a title") (write it as [text](target))',
        "[ref]: missing.md (write it as [text](target))",
        "missing.md (no such file)",
        "other.md#nowhere (no such heading)",
    ]
