"""The README starts where users start and stays short; every page it points to exists and every link in the
docs resolves; the CI entry point runs the README's test command."""

from __future__ import annotations

import re

from .conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))


def test_readme_is_short_and_links_every_docs_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", text))
    assert linked == {f"docs/{p.name}" for p in DOCS}


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    test_command = next(line.split("#")[0].strip() for line in commands.splitlines() if "pytest" in line)
    build_command = next(line.split("#")[0].strip() for line in commands.splitlines() if "dvc repro" in line)
    assert (test_command, build_command) == ("uv run pytest", "uv run dvc repro")
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == test_command


def test_cvlface_link_is_named_by_the_dataset_name_everywhere() -> None:
    """CVLFace reads $DATA_ROOT/<rec>, and cvlface.yaml's rec is dataset.name (tests/test_trainer_formats.py
    checks the yaml and the card): the README and docs say so instead of naming the link `synthfaces`."""
    for page in (README, REPO / "docs" / "formats.md"):
        text = page.read_text()
        assert '$DATA_ROOT/<dataset.name>"' in text, page.name
        assert "$DATA_ROOT/synthfaces " not in text and "$DATA_ROOT/synthfaces\n" not in text, page.name


def _shape(n: int) -> str:
    return f"{n / 1e6:g} M" if n >= 1_000_000 else f"{n:,}"


def test_readme_preset_table_states_each_presets_shape(tmp_path) -> None:
    """Every preset has a row, and the row's identities x candidates -> classes x images are the preset's
    (ffhq1024-sg3's row says "the same" as ffhq256's)."""
    from pipeline.config import available_presets, load_params

    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)`.*$", README.read_text(), re.M)}
    shapes = {}
    for preset in available_presets():
        (tmp_path / "params.yaml").write_text(f"preset: {preset}\n")
        p = load_params(tmp_path / "params.yaml")
        shapes[preset] = (
            f"{_shape(p.identities.count)} identities × {p.identities.variants_per_identity} candidates → "
            f"{_shape(p.dataset.identities)} classes × {p.dataset.images_per_identity} images"
        )
        assert shapes[preset] in rows[preset] or "the same at 1024 px" in rows[preset], (preset, shapes[preset])
    assert shapes["ffhq1024-sg3"] == shapes["ffhq256"]
