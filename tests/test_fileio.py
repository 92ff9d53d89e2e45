"""Atomic writes: all or nothing, and folders as shareable as a plain mkdir makes them."""

from __future__ import annotations

import json

import pytest

from whisperforge.fileio import append_lines, atomic_folder, resume_jsonl, write_text_atomic


def test_atomic_folder_replaces_in_one_piece_with_mkdir_permissions(tmp_path):
    (tmp_path / "plain").mkdir()
    dest = tmp_path / "model"
    with atomic_folder(dest) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not dest.exists()  # nothing visible until the block succeeds
    assert (dest / "a.txt").read_text() == "one"
    assert dest.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    with atomic_folder(dest) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]


def test_atomic_folder_files_get_the_mode_of_a_plain_write(tmp_path):
    """safetensors writes 0600 files; a cached model or export stays readable to the group
    and others as far as the umask allows."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "plain.txt").write_text("x")
    dest = tmp_path / "model"
    with atomic_folder(dest) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (dest / "model.safetensors").stat().st_mode & 0o777 == plain


def test_atomic_folder_leaves_nothing_when_the_block_fails(tmp_path):
    dest = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_folder(dest) as tmp:
        (tmp / "half.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_write_text_atomic(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "f.json", "{}")
    assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_resume_jsonl_drops_a_cut_last_line_and_appending_goes_on(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert resume_jsonl(path) == []  # nothing written yet
    with open(path, "a", encoding="utf-8") as handle:
        append_lines(handle, ['{"a": 1}', '{"a": 2}'])
    path.write_text(path.read_text() + '{"a": 3, "b"')  # killed mid-write
    assert resume_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    with open(path, "a", encoding="utf-8") as handle:
        append_lines(handle, ['{"a": 3}'])
    assert resume_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match="rows.jsonl:2: not a JSON line"):
        resume_jsonl(path)


def test_a_journal_is_resumed_and_one_damaged_inside_is_started_again(tmp_path, caplog):
    from whisperforge.recipes.evaluate import open_journal

    path = tmp_path / "r.json.partial.jsonl"
    header = {"journal": "test", "items": "abc"}
    assert open_journal(None, header) == ([], None)
    lines, handle = open_journal(path, header)
    append_lines(handle, ['{"key": "0"}', '{"key": "1"}'])
    handle.close()
    with open(path, "a") as cut:
        cut.write('{"key": "2", "ro')  # killed mid-line: dropped, the rest kept
    lines, handle = open_journal(path, header)
    handle.close()
    assert lines == [{"key": "0"}, {"key": "1"}]
    assert open_journal(path, {**header, "items": "other"})[1].close() is None  # afresh
    assert path.read_text() == json.dumps({**header, "items": "other"}) + "\n"
    path.write_text(json.dumps(header) + '\n{"key": "0"}\nnot json\n{"key": "1"}\n')
    lines, handle = open_journal(path, header)
    handle.close()
    assert lines == [] and "starting the journal again" in caplog.text
    assert path.read_text() == json.dumps(header) + "\n"
