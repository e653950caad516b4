"""The README's config reference is generated from the config models; it must not drift."""

from pathlib import Path

from ikd.config import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    start = text.index("<!-- config-reference:start -->") + len("<!-- config-reference:start -->")
    end = text.index("<!-- config-reference:end -->")
    assert text[start:end].strip() == config_reference().strip(), (
        "README config reference is stale: regenerate it with `ikd config-reference`")


def test_readme_gives_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
