"""vfrt.atomic.atomic_folder: a folder appears complete or not at all."""
import pytest

from vfrt.atomic import atomic_folder


def test_a_finished_body_replaces_the_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.") and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()              # untouched until the body finishes
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failing_body_leaves_the_target_and_no_leftovers(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_folder(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("half way")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "new" / "deeper") as tmp:
            raise RuntimeError("nothing written")
    assert not (tmp_path / "new" / "deeper").exists()


def test_a_failed_swap_puts_the_old_target_back(tmp_path, monkeypatch):
    """The old folder is renamed aside, not deleted, until the new one is in place."""
    from pathlib import Path
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    rename = Path.rename

    def failing_rename(self, to):
        if Path(to) == target and self.name.startswith(".out.") and not self.name.startswith(".out.old-"):
            raise OSError("disk gone")                       # the new folder cannot be renamed into place
        return rename(self, to)
    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_folder(target) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
