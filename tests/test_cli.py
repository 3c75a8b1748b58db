import pytest

from scoresde.cli import main


@pytest.mark.timeout(120)
def test_demo_writes_report_and_figure(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "50"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Relative squared L2 error" in report and "score_field.png" in report
    assert (tmp_path / "score_field.png").stat().st_size > 1000


def test_bad_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--steps", "many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("scoresde demo: error: argument --steps: invalid int value")


def test_bad_value_is_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["scoresde demo: error: steps must be a positive int, got 0"]
