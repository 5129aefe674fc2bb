"""The one atomic writer: old file or whole new file, never a part, never a stray temp."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from alignbench.atomic import FILE_MODE, temp_path_beside, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_json_roundtrip_and_shared_file_mode(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "a.json", {"b": 1, "a": [1.5, "x"]}, sort_keys=True)
    assert json.loads(path.read_text()) == {"a": [1.5, "x"], "b": 1}
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE  # not mkstemp's private 0600
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_non_finite_json_is_refused_before_the_file_is_touched(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"v": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"v": float("nan")})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = write_text_atomic(tmp_path / "t.txt", "old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        write_bytes_atomic(path, b"new" * 1000)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    path = tmp_path / "c.json"
    payloads = [{"writer": i, "data": list(range(2000))} for i in range(8)]
    threads = [threading.Thread(target=write_json_atomic, args=(path, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(path.read_text()) in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_kill_during_writes_never_leaves_a_partial_target(tmp_path):
    """A writer killed with SIGKILL mid-loop: the target is always a whole JSON document."""
    path = tmp_path / "k.json"
    code = (
        "import sys; from alignbench.atomic import write_json_atomic\n"
        f"p = {str(path)!r}\n"
        "write_json_atomic(p, {'i': -1}); print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    write_json_atomic(p, {'i': i, 'pad': 'x' * 200000}); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    threading.Event().wait(0.3)
    proc.kill()
    proc.wait()
    assert isinstance(json.loads(path.read_text())["i"], int)  # whole, whichever version
    # at most the temp of the write in flight remains, hidden and named as a temp
    assert all(p.name.startswith(".k.json.") and p.name.endswith(".tmp") for p in tmp_path.iterdir() if p != path)


def test_temp_path_beside_is_fresh_and_in_the_same_folder(tmp_path):
    a, b = temp_path_beside(tmp_path / "w.bin"), temp_path_beside(tmp_path / "w.bin")
    assert a != b and a.parent == b.parent == tmp_path and a.name.startswith(".w.bin.")
    assert stat.S_IMODE(a.stat().st_mode) == FILE_MODE
