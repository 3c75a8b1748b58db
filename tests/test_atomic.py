import os
import stat

import pytest

from scoresde._atomic import STALE_SECONDS, atomic_write, atomic_write_text, remove_stale_temporaries


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


def test_writing_a_target_removes_only_its_stale_temporary_files(tmp_path):
    target = tmp_path / "a+b.pt"  # a regex character in the name: matched literally
    target.write_text("old")
    stale = [".a+b.pt.0123456789ab.tmp", ".a+b.pt.deadbeef0042.tmp"]
    kept = [
        ".a+b.pt.fedcba987654.tmp",  # fresh: another process may be writing the target right now
        ".other.pt.0123456789ab.tmp",  # another target's temporary file
        ".a+b.pt.nothex.tmp", ".a+b.pt.0123456789AB.tmp", ".a+b.pt.0123456789abc.tmp", ".a+b.pt.0123456789a.tmp",
        ".aab.pt.0123456789ab.tmp", "a+b.pt.0123456789ab.tmp", ".a+b.pt.0123456789ab.tmp.bak", "notes.txt",
    ]  # fmt: skip
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".a+b.pt.0123456789ab.tmp").write_text("x")  # another folder
    (tmp_path / ".a+b.pt.00000000000a.tmp").mkdir()  # a folder with the pattern's name
    old = os.stat(tmp_path / "notes.txt").st_mtime - 3600
    for name in [*stale, *kept[1:], ".a+b.pt.00000000000a.tmp"]:
        os.utime(tmp_path / name, (old, old))

    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"a+b.pt", "sub", ".a+b.pt.00000000000a.tmp", *kept}
    assert (tmp_path / "sub" / ".a+b.pt.0123456789ab.tmp").is_file()


def test_remove_stale_temporaries_reports_what_it_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    tmp = tmp_path / ".checkpoint.pt.0123456789ab.tmp"
    tmp.write_bytes(b"PK partial")
    assert remove_stale_temporaries(target) == []  # younger than STALE_SECONDS
    old = tmp.stat().st_mtime - STALE_SECONDS - 1
    os.utime(tmp, (old, old))
    assert remove_stale_temporaries(target) == [tmp] and not tmp.exists()
    assert remove_stale_temporaries(tmp_path / "missing" / "x.pt") == []  # no folder: nothing to do
