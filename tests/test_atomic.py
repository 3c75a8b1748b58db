import os
import stat

import pytest

from scoresde._atomic import atomic_write, atomic_write_text


def test_a_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path):
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640

    umask = os.umask(0)
    os.umask(umask)
    fresh = atomic_write_text(tmp_path / "sub" / "fresh.txt", "héllo")  # the folder is created
    assert fresh.read_text(encoding="utf-8") == "héllo"
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_a_failing_writer_leaves_the_old_content_and_no_temporary_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("previous run")

    def half_written(f):
        f.write(b'{"rows": [')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_written)
    assert path.read_text() == "previous run"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
