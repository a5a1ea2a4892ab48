"""Hand-written notes in a generated results file survive its regeneration (curate.studies.notes)."""

from __future__ import annotations

import pytest

from curate.select.study_report import write_report
from curate.studies.notes import DIRTY, NOTES_END, NOTES_START, keep_notes

NOTES = f"{NOTES_START}\n\n## What it shows\n\nSTRIDE wins here, by 12%.\n\n{NOTES_END}\n"


def _generated(value: str, commit: str = "abc1234") -> str:
    return (f"# A study\n\nMade by `make it` at commit {commit}.\nOne line of legend.\n\n"
            f"## Results\n\n| method | ppl |\n| --- | --- |\n| stride | {value} |\n")


def test_a_regenerated_file_keeps_its_notes_before_the_first_section_and_takes_the_new_tables(tmp_path):
    path = tmp_path / "study.md"
    old = _generated("9.0")
    path.write_text(old.replace("## Results", NOTES + "\n## Results"))
    text = keep_notes(path, _generated("7.5"))
    assert text == _generated("7.5").replace("## Results", NOTES + "\n## Results")
    assert "| stride | 7.5 |" in text and "9.0" not in text
    assert text.index(NOTES_END) < text.index("## Results")
    path.write_text(text)
    assert keep_notes(path, _generated("7.5")) == text  # regenerating the same results changes nothing


def test_the_notes_go_at_the_end_of_a_text_without_sections(tmp_path):
    path = tmp_path / "study.md"
    path.write_text(f"Made by `old`.\n\n{NOTES}")
    assert keep_notes(path, "Made by `new`.\n\n| a |\n") == f"Made by `new`.\n\n| a |\n\n{NOTES}"


def test_without_a_file_or_without_markers_the_generated_text_is_written_as_it_is(tmp_path):
    generated = _generated("7.5")
    assert keep_notes(tmp_path / "missing.md", generated) == generated
    plain = tmp_path / "plain.md"
    plain.write_text("# A study\n\n## What it shows\n\nNotes without markers are the generator's: replaced.\n")
    assert keep_notes(plain, generated) == generated


def test_unbalanced_markers_raise_instead_of_dropping_the_notes(tmp_path):
    path = tmp_path / "study.md"
    path.write_text(f"{NOTES_START}\n\nnever closed\n")
    with pytest.raises(ValueError, match="never closed"):
        keep_notes(path, _generated("7.5"))


def test_a_dirty_commit_adds_the_paragraph_once_after_the_stamp_also_when_regenerated_twice(tmp_path):
    path = tmp_path / "study.md"
    path.write_text(NOTES)
    generated = _generated("7.5", "abc1234-dirty")
    once = keep_notes(path, generated, "abc1234-dirty")
    assert once.count(DIRTY) == 1
    assert once.index("One line of legend.") < once.index(DIRTY) < once.index(NOTES_START) < once.index("## Results")
    assert f"One line of legend.\n\n{DIRTY}\n\n{NOTES_START}" in once
    path.write_text(once)
    twice = keep_notes(path, generated, "abc1234-dirty")
    assert twice == once
    # already in the generated text or in the notes (wrapped differently): not added again
    assert keep_notes(tmp_path / "missing.md", generated + "\n" + DIRTY + "\n", "abc1234-dirty").count(DIRTY) == 1
    wrapped = DIRTY.replace("; rerun", ";\nrerun")
    path.write_text(f"{NOTES_START}\n{wrapped}\n{NOTES_END}\n")
    assert "uncommitted" not in keep_notes(path, generated, "abc1234-dirty").replace(wrapped, "")
    # a clean commit: no paragraph, and a regeneration from a clean tree drops the one a dirty run wrote
    path.write_text(once)
    clean = keep_notes(path, _generated("7.5"), "abc1234")
    assert DIRTY not in clean and NOTES in clean


def _row(method: str, seed: int, ppl: float) -> dict:
    return {"target": "math", "budget": "10%", "method": method, "seed": seed, "target_ppl": ppl,
            "domain_ppl": {"math": ppl * 1.1, "wiki": ppl * 3}, "selected_per_domain": {"math": 8, "wiki": 2},
            "recipe": "tiny", "smoke": False, "command": "curate recipe tiny.yaml", "commit": "abc1234-dirty",
            "machine": {"cpus": 2}, "stride_fit_seconds": 12.0, "invocation_seconds": 90.0}


def test_the_selection_study_report_keeps_the_notes_of_the_file_it_rewrites(tmp_path):
    path = tmp_path / "selection.json"
    notes = f"{NOTES_START}\n\n## The study\n\nA hand-written account of the study.\n\n{NOTES_END}"
    (tmp_path / "selection.md").write_text(f"# Selection study: tiny\n\nMade by `old`.\n\n{notes}\n\n## target: math\n\n| old |\n")
    rows = [_row("random", 0, 100.0), _row("random", 1, 104.0), _row("stride", 0, 80.0), _row("stride", 1, 82.0)]
    write_report(rows, {}, path)
    text = (tmp_path / "selection.md").read_text()
    assert notes in text and text.index(NOTES_END) < text.index("## target: math")
    assert "| old |" not in text and "| 10% | stride | 81.0 ± 1.4 |" in text and "| 10% | random | 102.0 ± 2.8 |" in text
    assert text.count(DIRTY) == 1 and text.index("Made by `curate recipe tiny.yaml`") < text.index(DIRTY) < text.index(notes)
    write_report(rows, {}, path)  # a second regeneration: the same file
    assert (tmp_path / "selection.md").read_text() == text


def test_a_study_writing_its_own_results_does_not_stamp_its_rows_dirty(tmp_path, monkeypatch):
    """A benchmark rewrites benchmarks/results/*.json after every row: that must not make the next row `-dirty`;
    a changed source file must."""
    import subprocess

    from benchmarks.runner import commit as bench_commit
    from curate.studies.results import commit as study_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "full.json").write_text("[]")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init")
    monkeypatch.chdir(tmp_path / "benchmarks")  # from a subfolder too
    (tmp_path / "benchmarks" / "results" / "full.json").write_text('[{"row": 1}]')
    assert not bench_commit().endswith("-dirty") and not study_commit().endswith("-dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert bench_commit().endswith("-dirty") and study_commit().endswith("-dirty")
