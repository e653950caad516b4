"""Broken teacher directories: missing or unreadable files, a spec that does not fit its weights,
weights of the wrong dtype, NaN weights, a pickle posing as safetensors, a teacher trained on
another split. Each is refused in one line and changes no file."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from audit.harness import BadInput, Maker, Shared, assert_ok, edit_json, global_call, params, run_bad_input


def teacher_case(edit: Callable[[Path], object]) -> Maker:
    """A copy of the shared teacher, broken by `edit`, as the teacher of the tiny campaign."""

    def make(case: Path, shared: Shared) -> list[str]:
        teacher = case / "teacher"
        shutil.copytree(shared.teacher, teacher)
        edit(teacher)
        args = shared.campaign(case / "run")
        args[args.index("--teacher") + 1] = str(teacher)
        return args

    return make


def edit_weights(teacher: Path, change: Callable[[dict], dict]) -> None:
    from safetensors.torch import load_file, save_file

    path = teacher / "model.safetensors"
    save_file(change(load_file(path)), path)


def with_nan(state: dict) -> dict:
    first = next(k for k, t in state.items() if t.is_floating_point())
    state[first].view(-1)[0] = float("nan")
    return state


def set_blocks(blocks: list) -> Callable[[Path], None]:
    def edit(teacher: Path) -> None:
        edit_json(teacher / "model.json", lambda d: d["arch"].__setitem__("blocks", blocks))

    return edit


def eval_corrupt_model(case: Path, shared: Shared) -> list[str]:
    teacher_case(lambda t: (t / "model.safetensors").write_bytes(b"x" * 64))(case, shared)
    return ["eval", str(case / "teacher")]


def pickled_weights(teacher: Path) -> None:
    """A protocol-2 pickle where the weights belong, that would touch a file if it were loaded."""
    (teacher / "model.safetensors").write_bytes(
        global_call("os", "system", f"touch {teacher.parent / 'pwned'}").replace(b"c", b"\x80\x02c", 1)
    )


CASES = [
    BadInput("teacher-dir-missing", "teacher", "model.json: not found", make=teacher_case(shutil.rmtree)),
    BadInput(
        "teacher-no-weights",
        "teacher",
        "model.safetensors: not found",
        make=teacher_case(lambda t: (t / "model.safetensors").unlink()),
    ),
    BadInput(
        "teacher-no-model-json",
        "teacher",
        "model.json: not found",
        make=teacher_case(lambda t: (t / "model.json").unlink()),
    ),
    BadInput(
        "teacher-model-json-not-json",
        "teacher",
        "not valid JSON",
        make=teacher_case(lambda t: (t / "model.json").write_bytes(b'{"arch": [1, 2')),
    ),
    BadInput(
        "teacher-model-json-a-list",
        "teacher",
        "expected a JSON object",
        make=teacher_case(lambda t: (t / "model.json").write_text("[]")),
    ),
    BadInput(
        "teacher-model-json-deep-nesting",
        "teacher",
        "not valid JSON",
        make=teacher_case(lambda t: (t / "model.json").write_text("[" * 100_000 + "]" * 100_000)),
    ),
    BadInput(
        "teacher-spec-not-matching-weights",
        "teacher",
        "do not match the spec",
        make=teacher_case(set_blocks([[8, 8], [32], [32]])),
    ),
    BadInput(
        "teacher-spec-asking-for-terabytes",
        "teacher",
        "do not match the spec",
        make=teacher_case(set_blocks([[200_000, 200_000]])),
    ),
    BadInput("teacher-spec-invalid", "teacher", "invalid arch.blocks", make=teacher_case(set_blocks([[-4]]))),
    BadInput(
        "teacher-corrupt-safetensors",
        "teacher",
        "not a readable safetensors",
        quick=True,
        make=teacher_case(
            lambda t: (t / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
        ),
    ),
    BadInput(
        "teacher-truncated-safetensors",
        "teacher",
        "not a readable safetensors",
        make=teacher_case(
            lambda t: (t / "model.safetensors").write_bytes((t / "model.safetensors").read_bytes()[:30_000])
        ),
    ),
    BadInput(
        "teacher-weights-are-a-pickle", "teacher", "not a readable safetensors", make=teacher_case(pickled_weights)
    ),
    BadInput(
        "teacher-weights-fp16",
        "teacher",
        "do not match the spec",
        make=teacher_case(
            lambda t: edit_weights(t, lambda s: {k: v.half() if v.is_floating_point() else v for k, v in s.items()})
        ),
    ),
    BadInput(
        "teacher-weights-fp64",
        "teacher",
        "wrong dtype",
        make=teacher_case(
            lambda t: edit_weights(t, lambda s: {k: v.double() if v.is_floating_point() else v for k, v in s.items()})
        ),
    ),
    BadInput(
        "teacher-weights-nan", "teacher", "NaN or infinite", make=teacher_case(lambda t: edit_weights(t, with_nan))
    ),
    BadInput(
        "teacher-from-another-split",
        "teacher",
        "split_seed",
        make=teacher_case(lambda t: edit_json(t / "model.json", lambda d: d["dataset"].__setitem__("split_seed", 5))),
    ),
    BadInput("eval-corrupt-model", "teacher", "not a readable safetensors", make=eval_corrupt_model),
]


@pytest.mark.parametrize("case", params(CASES))
def test_a_bad_teacher_directory_is_refused_in_one_line(case, shared, record):
    row = run_bad_input(case, shared)
    record.bad_inputs.append(row)
    assert_ok(row)
