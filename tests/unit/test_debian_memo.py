"""apt_show remembers apt-cache's answer per archive state (debian.py): the same lists give
the remembered fields without a call; a list that changed asks apt-cache again."""

import json
import os

from labctl.kernel import debian


def test_the_answer_is_remembered_until_the_archive_changes(tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb_Packages").write_text("one\n")
    monkeypatch.setattr(debian, "APT_STATE_GLOBS", (*debian.APT_STATE_GLOBS, f"{lists}/*_Packages"))
    memo_dir = tmp_path / "memo"

    real = debian.apt_show("busybox-static", memo_dir)  # a real apt-cache call
    memo = memo_dir / "apt-show" / "busybox-static.json"
    assert real["Package"] == "busybox-static" and real["Version"]
    assert json.loads(memo.read_text())["archive_state"] == debian.archive_state()

    # Same archive state: the memo is the answer (a planted version proves no call was made).
    memo.write_text(json.dumps({"archive_state": debian.archive_state(),
                                "fields": {"Version": "planted"}}))
    assert debian.apt_show("busybox-static", memo_dir) == {"Version": "planted"}

    # A package list changed (apt-get update): apt-cache is asked again.
    os.utime(lists / "deb_Packages", ns=(1, 1))
    assert debian.apt_show("busybox-static", memo_dir)["Version"] == real["Version"]

    # A memo that is not JSON is ignored, never trusted.
    memo.write_text("{not json")
    assert debian.apt_show("busybox-static", memo_dir)["Version"] == real["Version"]
