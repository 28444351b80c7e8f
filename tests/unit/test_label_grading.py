"""The judge's grade is read robustly, and anything doubtful is no grade rather than a wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.labeling.grading import RUBRIC, judge_messages, parse_grade, render_conversation, score_of_grade


@pytest.mark.parametrize(
    ("reply", "want"),
    [
        pytest.param('{"grade": 7}', 7.0, id="json"),
        pytest.param('```json\n{"grade": 10}\n```', 10.0, id="json-in-fence"),
        pytest.param('{"grade": "8"}', 8.0, id="json-string-number"),
        pytest.param("{'grade': 4}", 4.0, id="python-dict"),
        pytest.param("The answer is fine.\nGrade: 6", 6.0, id="final-line"),
        pytest.param("GRADE = 9/10", 9.0, id="out-of-ten"),
        pytest.param("grade: 7.5", 7.5, id="decimal"),
        pytest.param("A grade: 3 would be harsh; it is better.\nGrade: 8", 8.0, id="last-mention-wins"),
        pytest.param('{"reasoning": "grade: 2 at first", "grade": 5}', 5.0, id="json-after-reasoning"),
        pytest.param("Grade: 1", 1.0, id="lowest"),
        pytest.param("What a lovely answer.", None, id="no-grade"),
        pytest.param("", None, id="empty"),
        pytest.param("Grade: 0", None, id="below-range"),
        pytest.param("Grade: 11", None, id="above-range"),
        pytest.param("Grade: 85", None, id="percentage-is-not-clamped"),
        pytest.param("Grade: -3", None, id="negative"),
        pytest.param("Grade: 8\nGrade: 85", None, id="last-mention-out-of-range"),
        pytest.param("upgrade: 9", None, id="word-boundary"),
        pytest.param("Grade: excellent", None, id="word-not-number"),
    ],
)
def test_parse_grade(reply: str, want: float | None) -> None:
    assert parse_grade(reply) == want


@pytest.mark.parametrize(("grade", "score"), [(1, 0.0), (10, 1.0), (5.5, 0.5)])
def test_score_of_grade_maps_1_10_onto_0_1(grade: float, score: float) -> None:
    assert score_of_grade(grade) == pytest.approx(score)


def test_judge_sees_the_rubric_the_whole_conversation_and_the_answer() -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is in"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And its colour?"},
    ]
    system, user = judge_messages(messages, "Black.")
    assert system == {"role": "system", "content": RUBRIC}
    assert user["role"] == "user"
    text = user["content"]
    for piece in ("[system]\nBe terse.", "What is in\n[image_url]", "[assistant]\nA cat.", "And its colour?"):
        assert piece in text
    assert text.index("And its colour?") < text.index("<answer>\nBlack.\n</answer>")


def test_rubric_asks_for_the_format_the_parser_reads() -> None:
    assert '{"grade": N}' in RUBRIC
    assert parse_grade('{"grade": 10}') == 10.0


def test_render_skips_what_is_not_a_message() -> None:
    assert render_conversation(["junk", {"role": "user", "content": None}, {"content": "x"}]) == (
        "[user]\n\n\n[unknown]\nx"
    )


def test_readme_shows_the_rubric_the_judge_gets() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"```text\n{RUBRIC}\n```" in readme
