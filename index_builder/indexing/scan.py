"""Find the gallery's photos: a folder tree or a list file, each file with its sha256.

A folder is walked recursively (hidden files and folders skipped); paths are kept relative to
it, and a photo's class is its parent folder's name when it lies at ``<root>/<class>/<file>``.
The walk is safe on any tree: a symlinked folder is entered at most once (by device and inode,
so link loops end), special files (FIFOs, sockets, devices) are never opened, pseudo
filesystems (/proc, /sys, ...) are not entered, and folders that cannot be listed, special
files and images in formats the decoder lacks (HEIC, AVIF, SVG, ...) are reported as skipped.

A list file holds one image path a line, optionally ``path<TAB>class``; relative paths are
relative to the list file's folder, which is then the photos root; blank lines and ``#``
comments are ignored; a UTF-8 BOM is dropped. A listed file that is missing or unreadable is
reported, not fatal.

File names are ``str`` as the OS hands them over (``os.fsdecode``): bytes that are not UTF-8
become surrogate escapes, so every name round-trips to the same file; ``display_path`` shows
them as ``\\xNN``. Paths are absolute but not resolved: a symlinked root is followed anew by
every scan.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

from PIL import Image
from tqdm import tqdm

from gallery_store.photos import display_path, hash_stream
from model.image_structure import HEAD_BYTES, sniff_format
from model.preprocess import IMAGE_SUFFIXES, decodable_formats

# Other image formats people keep photos in: indexed where this Pillow decodes them (AVIF in
# Pillow >= 11.2), else reported as skipped, never ignored without a word.
OTHER_IMAGE_SUFFIXES = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".svg": "SVG",
    ".svgz": "SVG",
    ".jxl": "JPEG XL",
    ".jp2": "JPEG 2000",
    ".dng": "raw (DNG)",
    ".cr2": "raw (CR2)",
    ".cr3": "raw (CR3)",
    ".nef": "raw (NEF)",
    ".arw": "raw (ARW)",
    ".orf": "raw (ORF)",
    ".raf": "raw (RAF)",
    ".rw2": "raw (RW2)",
    ".psd": "PSD",
    ".xcf": "XCF",
}
# Kernel and virtual filesystems: never photos, and reading them can block or never end.
PSEUDO_FS = {
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "selinuxfs",
    "rpc_pipefs",
    "nsfs",
}
# Suffixes of the formats decoded (.jfif, .jpe, .pgm, ... too), AVIF where Pillow has it.
_DECODABLE = {s for s, f in Image.registered_extensions().items() if f in decodable_formats()}
PHOTO_SUFFIXES = frozenset(IMAGE_SUFFIXES | _DECODABLE)
UNSUPPORTED_SUFFIXES = {s: f for s, f in OTHER_IMAGE_SUFFIXES.items() if s not in _DECODABLE}
# Files never read to see whether they are images: sidecars and documents beside photos.
NOT_IMAGE_SUFFIXES = frozenset(
    {".txt", ".md", ".json", ".xml", ".xmp", ".csv", ".tsv", ".html", ".htm", ".pdf", ".db"}
    | {".ini", ".log", ".yaml", ".yml", ".py", ".sh", ".zip", ".gz", ".tar", ".mp4", ".mov"}
    | {".avi", ".mkv", ".mp3", ".wav", ".aae", ".thm", ".lnk", ".url", ".dat", ".ds_store"}
)
_SPECIAL = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class PhotoFile:
    """One gallery photo: path relative to the photos root (POSIX), class, content hash, and
    the number of bytes hashed (None when unknown)."""

    path: str
    cls: str | None
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class Skipped:
    """A photo left out of the index, and why (``sha256`` None when it could not be read).

    ``retry``: the failure may not recur (a read error, a file that changed or vanished), so
    the next rebuild tries the file again instead of remembering the failure.
    """

    path: str
    sha256: str | None
    error: str
    retry: bool = False


@dataclass(frozen=True)
class Scan:
    """The photos found under ``root`` (sorted by path), those skipped while scanning (unreadable,
    special, unsupported), folders that could not be listed, and where they were listed."""

    root: Path
    source: Path
    files: list[PhotoFile]
    unreadable: list[Skipped]
    unreadable_folders: list[str] = field(default_factory=list)

    def absolute(self, photo: PhotoFile) -> Path:
        """The file on disk."""
        return self.root / photo.path


@dataclass
class Walk:
    """What a folder walk found: image path -> class, files whose name says nothing (no or
    another suffix: images if their content says so) -> class, and what it skipped."""

    found: dict[str, str | None] = field(default_factory=dict)
    unnamed: dict[str, str | None] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    unreadable_folders: list[str] = field(default_factory=list)


Hashed = tuple[str, int]  # sha256, bytes hashed


def _try_hash(path: Path, sniff: bool = False) -> Hashed | OSError | str | None:
    """The sha256 and size of a regular file; an OSError for anything else (never opens a
    FIFO). With ``sniff``, the file is an image only if its first bytes say so: None when
    they name no image format, why it is skipped when one this Pillow cannot decode."""
    try:
        with open(path, "rb", opener=_open_regular) as handle:
            if sniff:
                fmt = sniff_format(handle.read(HEAD_BYTES))
                if fmt is None:
                    return None
                if fmt not in decodable_formats():
                    return _unsupported(fmt)
                handle.seek(0)
            return hash_stream(handle)
    except OSError as err:
        return err


def _open_regular(path: str, flags: int) -> int:
    """``os.open`` that refuses, without opening it, anything but a regular file (a FIFO
    would block the open)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")
        raise OSError(0, f"{kind}, not a photo" if kind != "not a regular file" else kind)
    return os.open(path, flags | os.O_NONBLOCK)


def _unsupported(fmt: str) -> str:
    return f"unsupported format ({fmt}); convert it to JPEG or PNG to index it"


def scan_photos(source: str | Path, workers: int = 4, progress: bool = False) -> Scan:
    """List and hash the photos of a folder tree or list file (see the module docstring)."""
    source = Path(os.path.abspath(source))
    if source.is_dir():
        walk = walk_tree(source, progress)
        root, listed = source, walk.found
    elif source.is_file():
        walk = Walk()
        root, listed = source.parent, read_list_file(source)
    elif source.exists():
        raise ValueError(f"{display_path(source)}: neither a folder nor a list file")
    else:
        raise FileNotFoundError(
            f"{display_path(source)}: photos folder or list file does not "
            "exist (is the disk mounted?)"
        )
    named, unnamed = sorted(listed), sorted(walk.unnamed)
    classes = listed | walk.unnamed
    jobs = [(p, False) for p in named] + [(p, True) for p in unnamed]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        hashes = list(
            tqdm(
                pool.map(lambda job: _try_hash(root / job[0], job[1]), jobs),
                total=len(jobs),
                desc="hash photos",
                unit="file",
                disable=not progress,
            )
        )
    files, unreadable = [], list(walk.skipped)
    for (path, _), result in zip(jobs, hashes, strict=True):
        if isinstance(result, OSError):
            unreadable.append(Skipped(path, None, _read_error(result), retry=True))
        elif isinstance(result, str):
            unreadable.append(Skipped(path, None, result))
        elif result is not None:
            files.append(PhotoFile(path, classes[path], *result))
    files.sort(key=lambda p: p.path)
    unreadable.sort(key=lambda s: s.path)
    return Scan(root, source, files, unreadable, walk.unreadable_folders)


def _read_error(err: OSError) -> str:
    return f"cannot read the file ({err.strerror or err})"


def walk_images(root: Path) -> dict[str, str | None]:
    """Relative POSIX path -> class (parent folder at depth one, else None) of every image."""
    return walk_tree(Path(root)).found


def walk_tree(root: Path, progress: bool = False) -> Walk:
    """Walk ``root`` safely (see the module docstring), with a progress counter."""
    walk = Walk()
    seen: set[tuple[int, int]] = set()
    pending = [PurePosixPath()]
    with tqdm(desc="find photos", unit="folder", disable=not progress) as bar:
        while pending:
            rel = pending.pop()
            _walk_folder(root, rel, walk, seen, pending)
            bar.update()
            bar.set_postfix(photos=len(walk.found), refresh=False)
    walk.skipped.sort(key=lambda s: s.path)
    walk.unreadable_folders.sort()
    return walk


def _walk_folder(
    root: Path,
    rel: PurePosixPath,
    walk: Walk,
    seen: set[tuple[int, int]],
    pending: list[PurePosixPath],
) -> None:
    """List one folder: images into ``walk``, subfolders onto ``pending``."""
    folder = root / rel
    try:
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen or info.st_dev in _pseudo_devices():
            return  # a link back into the tree (a loop), or /proc and its kind
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as entries:
            listing = sorted(entries, key=lambda e: e.name)
    except OSError as err:
        name = f"{rel.as_posix()}/" if rel.parts else "./"
        walk.unreadable_folders.append(name)
        walk.skipped.append(Skipped(name, None, f"cannot read the folder ({err.strerror})", True))
        return
    subfolders = []
    for entry in listing:
        if entry.name.startswith("."):
            continue
        path = rel / entry.name
        kind = _entry_kind(entry)
        if kind == "folder":
            subfolders.append(path)
        elif kind == "file":
            _add_file(path, walk)
        elif Path(entry.name).suffix.lower() in PHOTO_SUFFIXES | UNSUPPORTED_SUFFIXES.keys():
            walk.skipped.append(Skipped(path.as_posix(), None, f"{kind}, not a photo"))
    pending.extend(reversed(subfolders))  # popped in name order


def _entry_kind(entry: os.DirEntry) -> str:
    """'folder', 'file', or what else the entry is (a broken link reads as a file: the hash
    step reports it)."""
    try:
        mode = entry.stat().st_mode  # follows links
    except OSError:
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    return _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")


def _add_file(path: PurePosixPath, walk: Walk) -> None:
    suffix = Path(path.name).suffix.lower()
    if suffix in PHOTO_SUFFIXES:
        walk.found[path.as_posix()] = class_of(path)
    elif suffix in UNSUPPORTED_SUFFIXES:
        why = _unsupported(UNSUPPORTED_SUFFIXES[suffix])
        walk.skipped.append(Skipped(path.as_posix(), None, why))
    elif suffix not in NOT_IMAGE_SUFFIXES:
        walk.unnamed[path.as_posix()] = class_of(path)  # 'IMG_0001', 'photo.jpg ', 'x.jfif2'


@cache
def _pseudo_devices() -> frozenset[int]:
    """Device numbers of the mounted pseudo filesystems (from /proc/self/mountinfo)."""
    devices = set()
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 3:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype in PSEUDO_FS:
            major, minor = fields[2].split(":")
            devices.add(os.makedev(int(major), int(minor)))
    return frozenset(devices)


def class_of(rel: PurePosixPath) -> str | None:
    """The class of ``<class>/<file>``; None for any other depth."""
    return rel.parts[0] if len(rel.parts) == 2 else None


def read_list_file(list_file: Path) -> dict[str, str | None]:
    """Path (relative to the list's folder where it lies inside it) -> class, from a list.

    Lines are decoded like file names (``os.fsdecode``), so a Latin-1 name in the list finds
    the Latin-1 name on disk; a binary file (an image given by mistake, UTF-16) is refused.
    """
    shown = display_path(list_file)
    if list_file.suffix.lower() in PHOTO_SUFFIXES | UNSUPPORTED_SUFFIXES.keys():
        raise ValueError(
            f"{shown}: an image, not a folder or list file; give --photos the "
            "folder that holds it, or a text file listing the photos"
        )
    try:
        data = list_file.read_bytes()
    except OSError as err:
        raise ValueError(f"{shown}: cannot read the list file ({err.strerror})") from err
    base = list_file.parent
    found: dict[str, str | None] = {}
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), 1):
        if b"\0" in raw:
            raise ValueError(
                f"{shown}:{number}: binary data, not a list of paths (a list file "
                "is text, one path a line; UTF-16 is not supported)"
            )
        line = os.fsdecode(raw)
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) > 2 or not fields[0].strip():
            raise ValueError(f"{shown}:{number}: expected 'path' or 'path<TAB>class'")
        rel = _relative(base, Path(fields[0].strip()))
        cls = fields[1].strip() if len(fields) == 2 and fields[1].strip() else None
        found[rel] = cls if cls is not None else class_of(PurePosixPath(rel))
    return found


def _relative(base: Path, path: Path) -> str:
    """``path`` relative to ``base`` when inside it, else absolute (both POSIX strings)."""
    full = Path(os.path.normpath(base / path))
    try:
        return full.relative_to(base).as_posix()
    except ValueError:
        return full.as_posix()
