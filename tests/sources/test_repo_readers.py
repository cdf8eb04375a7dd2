"""Device files read from the work tree and from a commit: the same text as Python's text files
give, and the SHA-256 of that text in UTF-8 (the fleet's content hash depends on it)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from controller.api.devices import DeviceSourceError, DeviceText
from controller.api.resources import DeviceSource
from controller.sources.repo import committed_reader, repository_reader

CONTENTS = {
    "plain": b"id,labels.site\nd-1,berlin\n",
    "windows": b"id,labels.site\r\nd-1,\"two\r\nlines\"\r\n",
    "old mac": b"id\rd-1\r",
    "excel": b"\xef\xbb\xbfid,labels.site\r\nd-1,m\xc3\xbcnchen\r\n",
    "mark only": b"\xef\xbb\xbfid\nd-1\n",
    "utf-8": "id,labels.city\nd-1,Zürich\n".encode(),
    "empty": b"",
}


def git(repo: Path, *args: str) -> str:
    found = shutil.which("git")
    assert found is not None
    return subprocess.run([found, "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@x",
                           *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("name", list(CONTENTS))
def test_both_readers_give_the_text_python_reads_and_its_digest(name: str,
                                                                tmp_path: Path) -> None:
    (tmp_path / "devices.csv").write_bytes(CONTENTS[name])
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "devices")
    commit = git(tmp_path, "rev-parse", "HEAD").strip()
    expected = (tmp_path / "devices.csv").read_text(encoding="utf-8-sig")  # universal newlines
    source = DeviceSource(path="devices.csv")
    for read in (repository_reader(tmp_path), committed_reader(tmp_path, commit)):
        (part,) = read(source)
        assert (part.label, part.text, part.format) == ("devices.csv", expected, "csv")
        assert part.digest() == hashlib.sha256(expected.encode()).digest() == \
            DeviceText(part.label, part.text, part.format).digest()
        if name in ("plain", "utf-8"):  # the file's bytes are the text's: hashed as read
            assert part.sha256 is not None


def test_a_file_that_is_not_utf8_or_not_there_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes(b"id\nm\xfcnchen\n")
    (tmp_path / "folder.csv").mkdir()
    read = repository_reader(tmp_path)
    for path, reason in (("latin.csv", "can't decode byte 0xfc"), ("missing.csv", "No such file"),
                         ("folder.csv", "Is a directory")):
        with pytest.raises(DeviceSourceError, match=reason):
            read(DeviceSource(path=path))
