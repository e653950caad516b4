"""Broken campaign configs and flags: unknown keys, wrong types, values out of range, files that
are not YAML or would crash a naive parser. Each is refused in one line and changes no file."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from audit.harness import BadInput, Maker, Shared, assert_ok, params, run_bad_input


def config_case(text: str | bytes, *flags: str) -> Maker:
    """A config file with `text` (MARKER: a file a hostile document would create if it ran)."""

    def make(case: Path, shared: Shared) -> list[str]:
        config = case / "campaign.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        data = text if isinstance(text, bytes) else text.replace("MARKER", str(case / "pwned")).encode()
        config.write_bytes(data)
        return ["compress", "--config", str(config), "--run-dir", str(case / "run"), "--quiet", *flags]

    return make


def flags_case(*flags: str) -> Maker:
    def make(case: Path, shared: Shared) -> list[str]:
        return [*shared.campaign(case / "run"), *flags]

    return make


def missing_config(case: Path, shared: Shared) -> list[str]:
    return ["compress", "--config", str(case / "nope.yaml"), "--run-dir", str(case / "run"), "--quiet"]


def train_zero_epochs(case: Path, shared: Shared) -> list[str]:
    return ["train", "--dataset", "digits", "--epochs", "0", "--out", str(case / "m")]


CASES = [
    BadInput(
        "config-unknown-key",
        "config",
        "unknown key 'search.max_dorp'",
        quick=True,
        make=config_case("search:\n  max_dorp: 1\n"),
    ),
    BadInput("config-wrong-type", "config", "student.epochs", make=config_case("student:\n  epochs: five\n")),
    BadInput("config-negative-epochs", "config", "student.epochs", make=config_case("student:\n  epochs: -3\n")),
    BadInput("config-max-drop-above-100", "config", "search.max_drop", make=config_case("search:\n  max_drop: 150\n")),
    BadInput("config-max-drop-negative", "config", "search.max_drop", make=config_case("search:\n  max_drop: -1\n")),
    BadInput("config-max-drop-nan", "config", "search.max_drop", make=config_case("search:\n  max_drop: .nan\n")),
    BadInput(
        "config-unknown-strategy",
        "config",
        "search.strategy",
        make=config_case("search:\n  strategy: teacher-everything\n"),
    ),
    BadInput(
        "config-unknown-operator",
        "config",
        "search.operators",
        make=config_case("search:\n  operators: [depth, prune]\n"),
    ),
    BadInput("config-section-not-a-mapping", "config", "search", make=config_case("search: 3\n")),
    BadInput(
        "config-rule-across-keys",
        "config",
        "needs a *-children strategy",
        make=config_case("search:\n  select: tree\n"),
    ),
    BadInput("config-not-yaml", "config", "not valid YAML (line 2, column 1", make=config_case("search: [1, 2\n")),
    BadInput(
        "config-key-given-twice",
        "config",
        "line 3, column 3: key 'max_drop' given twice",
        make=config_case("search:\n  max_drop: 1\n  max_drop: 5\n"),
    ),
    BadInput("config-not-a-mapping", "config", "expected a mapping", make=config_case("- a\n- b\n")),
    BadInput("config-binary-file", "config", "not UTF-8", make=config_case(gzip.compress(b"seed: 1\n"))),
    BadInput("config-deep-nesting", "config", "not valid YAML", make=config_case("[" * 100_000)),
    BadInput("config-5000-digit-number", "config", "not valid YAML", make=config_case("seed: " + "9" * 5000)),
    BadInput(
        "config-python-tag",
        "config",
        "not valid YAML",
        make=config_case("seed: !!python/object/apply:os.system ['touch MARKER']\n"),
    ),
    BadInput("config-missing-file", "config", "cannot read", make=missing_config),
    BadInput("flag-negative-epochs", "config", "student.epochs", make=flags_case("--epochs", "-1")),
    BadInput(
        "flag-max-drop-out-of-range",
        "config",
        "search.max_drop = 101.0 (from --max-drop",
        make=flags_case("--max-drop", "101"),
    ),
    BadInput("flag-unknown-strategy", "config", "invalid choice", make=flags_case("--strategy", "bogus")),
    BadInput("flag-unknown-operator", "config", "search.operators", make=flags_case("--operators", "depth,prune")),
    BadInput("flag-not-a-number", "config", "invalid float value", make=flags_case("--max-drop", "lots")),
    BadInput("train-zero-epochs", "config", "--epochs", make=train_zero_epochs),
]


@pytest.mark.parametrize("case", params(CASES))
def test_a_bad_config_or_flag_is_refused_in_one_line(case, shared, record):
    row = run_bad_input(case, shared)
    record.bad_inputs.append(row)
    assert_ok(row)
