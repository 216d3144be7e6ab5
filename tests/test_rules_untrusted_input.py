"""Rule files are input, not trusted code: they may come from a shared ConfigMap.

Every file a rule file names stays inside its folder, is a regular file and has a size
cap; problems quote nothing of a file beyond a marked excerpt; YAML aliases are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.rules.file_reading import MIB, FileRefused, RuleFolder
from app.rules.loader import load_ruleset
from app.rules.problems import Problem, RuleFileError

SECRET = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyz"


def rules_with_instructions(folder: Path, instructions_file: str) -> Path:
    path = folder / "rules.yaml"
    path.write_text(
        "version: 1\n"
        "profiles:\n"
        "  desk:\n"
        "    model: gpt-realtime\n"
        f"    instructions_file: '{instructions_file}'\n"
        "default: {accept: {profile: desk}}\n"
    )
    return path


def rules_with_list(folder: Path, list_file: str) -> Path:
    path = folder / "rules.yaml"
    path.write_text(
        "version: 1\n"
        "defaults: {region: US}\n"
        "lists:\n"
        f"  blocked: {{file: '{list_file}'}}\n"
        "rules:\n"
        "  - {name: blocked, when: {caller: {in: blocked}}, reject: {}}\n"
        "default: {reject: {status_code: 486}}\n"
    )
    return path


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(path)
    return caught.value.problems


def only_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return str(problems[0])


@pytest.fixture
def secret_outside(tmp_path: Path) -> Path:
    """A key file next to (not inside) the rule folder `tmp_path / "rules"`."""
    (tmp_path / "rules").mkdir()
    key = tmp_path / "api-key.txt"
    key.write_text(SECRET + "\n")
    return key


# --- files outside the rule folder -----------------------------------------------------------


def test_proc_self_environ_as_instructions_is_refused_without_its_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    path = rules_with_instructions(tmp_path, "/proc/self/environ")
    problem = only_problem(path)
    assert problem == (
        f"{path}:5: cannot read /proc/self/environ: an absolute path;"
        " name files relative to the rule file's folder"
    )


@pytest.mark.parametrize("written", ["../api-key.txt", "prompts/../../api-key.txt"])
def test_a_relative_path_out_of_the_folder_is_refused(secret_outside: Path, written: str) -> None:
    folder = secret_outside.parent / "rules"
    (folder / "prompts").mkdir()
    path = rules_with_instructions(folder, written)
    problem = only_problem(path)
    assert problem.startswith(f"{path}:5: cannot read ")
    assert problem.endswith(": outside the rule file's folder")
    assert SECRET[:5] not in problem


def test_a_symlink_pointing_out_of_the_folder_is_refused(secret_outside: Path) -> None:
    folder = secret_outside.parent / "rules"
    (folder / "blocked.txt").symlink_to(secret_outside)
    path = rules_with_list(folder, "blocked.txt")
    problem = only_problem(path)
    assert problem == f"{path}:4: cannot read {folder}/blocked.txt: outside the rule file's folder"


def test_a_list_file_line_is_never_echoed_beyond_a_marked_excerpt(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("+12025550199\n" + SECRET + "\n")
    path = rules_with_list(tmp_path, "keys.txt")
    problem = only_problem(path)
    assert problem == (
        f"{tmp_path}/keys.txt:2: the line starting 'sk-p…' is not a phone number:"
        " letters are not allowed, write the digits"
    )


def test_configmap_layout_with_data_symlinks_loads(tmp_path: Path) -> None:
    """kubelet mounts `rules.yaml -> ..data/rules.yaml`, `..data -> ..2026_01_01...`."""
    volume = tmp_path / "rules"
    generation = volume / "..2026_01_01_00_00_00.1"
    (generation / "prompts").mkdir(parents=True)
    rules_with_instructions(generation, "prompts/desk.md")
    (generation / "prompts" / "desk.md").write_text("You answer the front desk.")
    (volume / "..data").symlink_to(generation.name)
    (volume / "rules.yaml").symlink_to("..data/rules.yaml")
    (volume / "prompts").symlink_to("..data/prompts")
    ruleset = load_ruleset(volume / "rules.yaml")
    assert ruleset.default.body["instructions"] == "You answer the front desk."


# --- files that are not regular files, and sizes ---------------------------------------------


def test_the_rule_file_itself_must_be_a_regular_file() -> None:
    problem = only_problem(Path("/dev/zero"))
    assert problem == "/dev/zero: cannot read the rule file: not a regular file"


def test_dev_zero_behind_a_symlink_in_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prompt.md").symlink_to("/dev/zero")
    path = rules_with_instructions(tmp_path, "prompt.md")
    assert only_problem(path).endswith("prompt.md: outside the rule file's folder")


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_or_a_directory_is_not_read(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "prompt.md"
    if kind == "fifo":
        os.mkfifo(target)  # opening it for reading would wait for a writer forever
    else:
        target.mkdir()
    path = rules_with_instructions(tmp_path, "prompt.md")
    assert only_problem(path) == f"{path}:5: cannot read {target}: not a regular file"


def test_an_instructions_file_over_1_mib_is_refused(tmp_path: Path) -> None:
    (tmp_path / "prompt.md").write_text("x" * (1 * MIB + 1))
    path = rules_with_instructions(tmp_path, "prompt.md")
    assert only_problem(path).endswith("prompt.md: larger than 1 MiB")


def test_a_list_file_over_32_mib_is_refused(tmp_path: Path) -> None:
    with (tmp_path / "blocked.txt").open("wb") as sparse:
        sparse.truncate(32 * MIB + 1)
    path = rules_with_list(tmp_path, "blocked.txt")
    assert only_problem(path).endswith("blocked.txt: larger than 32 MiB")


def test_the_rule_file_over_4_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\n" + "#" * (4 * MIB) + "\ndefault: {reject: {}}\n")
    assert only_problem(path) == f"{path}: cannot read the rule file: larger than 4 MiB"


def test_the_files_of_a_ruleset_have_a_size_cap_together(tmp_path: Path) -> None:
    main = tmp_path / "rules.yaml"
    main.write_text("x" * 600)
    (tmp_path / "a.txt").write_text("y" * 500)
    folder = RuleFolder(main, total_limit=1000)
    assert len(folder.read_main()) == 600
    with pytest.raises(FileRefused, match=r"^the rule files together are larger than 1000 bytes$"):
        folder.read_named("a.txt", 1 * MIB)


# --- YAML ------------------------------------------------------------------------------------

# 649 bytes that stand for 9**9 strings: the attack took 58 s and 6.2 GB in `check`.
ALIAS_BOMB = """\
version: 1
defaults: {region: US}
lists:
  a: &a ["+12025550199", "+12025550199", "+12025550199", "+12025550199", "+12025550199"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
rules:
  - {name: blocked, when: {caller: {in: i}}, reject: {}}
default: {reject: {status_code: 486}}
"""


def test_a_yaml_alias_bomb_is_refused_at_each_alias(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB.encode()) < 700
    problems = problems_of(path)
    alias_lines = [p.line for p in problems if "anchors and aliases" in p.message]
    assert alias_lines == [5, 6, 7, 8, 9, 10, 11, 12]
    assert str(problems[0]) == (
        f"{path}:5: YAML anchors and aliases (&, *) are not supported; write the value out"
    )


def test_an_alias_of_a_scalar_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\n"
        "rules:\n"
        "  - {name: a, when: {caller: &vip '+12025550199'}, reject: {}}\n"
        "  - {name: b, when: {called: *vip}, reject: {}}\n"
        "default: {reject: {}}\n"
    )
    assert [str(p) for p in problems_of(path)] == [
        f"{path}:4: YAML anchors and aliases (&, *) are not supported; write the value out"
    ]
