"""The README's fresh-machine commands and .ci/run stay in step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.strip() == "```bash":
            inside, current = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(current).strip())
        elif inside:
            current.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = _bash_blocks(readme)
    assert len(blocks) >= 2, "README must show the two fresh-machine commands"
    test_command = blocks[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines(), f"{test_command!r} is not a line of .ci/run"
    assert "pytest" in test_command


def test_main_job_is_the_demo():
    # issue 5: the README's first command installs and runs `pkmodel demo` (tests/test_demo.py runs the
    # same run_demo on a smaller virtual population)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    main_job = _bash_blocks(readme)[0]
    assert main_job.startswith("python3 -m pip install . && pkmodel demo")
