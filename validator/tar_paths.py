"""The paths a tar's members extract to, checked as the tar streams: one path, one thing.

A tar may store a path more than once (``tar -rf`` and ``tar -uf`` append a new copy; ``tar cf
d.tar train train/cat`` stores ``train/cat`` twice) and extraction keeps the last copy, while the
upload's scan judged every copy: an image broken in its first copy and fixed in its appended one
was refused, and the scan counted (and sampled) copies the job never reads. A path stored as a
file and also as a folder (``c`` beside ``c/0.png``) passed the upload and failed extraction
("Not a directory"). Identical copies of an image are harmless and read once; differing copies
and file/folder clashes are refused.
"""

from __future__ import annotations

import tarfile

from rift.errors import DatasetError

_REPACK = "pack the folder again into a new archive (tar czf data.tgz -C FOLDER .)"


class TarPaths:
    """Records each member's path (see the module docstring). Memory: one entry per file and
    per folder (about 150 bytes each: some 200 MB for ImageNet's 1.28 million images)."""

    def __init__(self, display_name: str) -> None:
        self._display_name = display_name
        self._files: dict[str, int | None] = {}  # path -> hash of an image's bytes (else None)
        self._folders: set[str] = set()

    def add(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> bool:
        """Record ``member`` (a file or folder that passed the member policy; ``parts``: its
        path's parts, ``path_parts(member.name)``); whether it is the first copy of its path.

        Raises:
            DatasetError: its path, or a folder above it, is already stored as the other kind.
        """
        path = "/".join(parts)
        # The folders above were recorded with the first member inside them: one look-up for
        # the usual member (this added about 40 µs an image when done for each folder).
        if len(parts) > 1 and "/".join(parts[:-1]) not in self._folders:
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in self._folders:
                    if folder in self._files:
                        self._clash(member.name, folder)
                    self._folders.add(folder)
        if not parts:
            return True
        if member.isdir():
            if path in self._files:
                self._clash(member.name, path)
            first = path not in self._folders
            self._folders.add(path)
            return first
        if path in self._folders:
            self._clash(member.name, path)
        if path in self._files:
            return False
        self._files[path] = None
        return True

    def read_image(self, member: tarfile.TarInfo, parts: tuple[str, ...], data: bytes,
                   first: bool) -> bool:
        """Whether to read the image file ``member`` (``parts`` as for :meth:`add`; its bytes
        ``data``; ``first``: what :meth:`add` said): its first copy is read, an identical later
        copy is not (it would count twice).

        Raises:
            DatasetError: a later copy with other bytes than the first.
        """
        path = "/".join(parts)
        digest = hash(data)
        if first:
            self._files[path] = digest
            return True
        if self._files.get(path) != digest:
            raise DatasetError(
                f"{self._display_name} stores {member.name!r} twice with different content "
                "(a copy appended by tar -r or -u?): extraction keeps the last copy, the upload "
                f"would judge both; keep one: {_REPACK}")
        return False

    def _clash(self, name: str, path: str) -> None:
        raise DatasetError(
            f"{self._display_name}: member {name!r} needs {path!r} to be a folder and a file "
            f"at once (the archive stores both), so it cannot be extracted: {_REPACK}")
