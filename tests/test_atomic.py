"""cvae_pms.atomic: a failing writer leaves neither a half file nor a temporary behind."""
from __future__ import annotations

import pytest

from cvae_pms.atomic import atomic_path, temporary_sibling, write_text_atomic


def test_success_renames_and_keeps_the_extension(tmp_path):
    target = tmp_path / "fig.png"
    assert temporary_sibling(target).suffix == ".png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data" and list(tmp_path.iterdir()) == [target]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "t.csv", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]
