"""A submission's label map, read on the host as data to check, never as a path to follow.

What a submission hands over (an algorithm container's ``/output`` folder, a folder of label maps,
the files ``selfunet predict`` wrote) is checked in this order before any voxel is read, and the
first problem fails the case with status ``refused`` (or ``missing``, ``unreadable``,
``wrong-geometry``) and a reason that starts with what was wrong:

1. **where**: ``images/<slug>/`` is reached one folder at a time without following links
   (:func:`~harness.results.safe_files.open_below`); the slug was validated before (``check_slug``);
2. **what**: the file is a regular file (``lstat``: not a link ``symlink``, not a FIFO, socket,
   device or folder ``not a regular file``), with one name (``hard link``: inside a fresh output
   folder a second name can only be the container's doing, and is not what a platform output
   looks like), no bigger than the reference's grid at 8 bytes a voxel (``too large``);
3. **a private copy**: the bytes are copied from the descriptor those checks opened
   (``O_NOFOLLOW``) into a folder only the harness writes, so nothing the submission does
   afterwards changes what is read;
4. **no other file**: a header that names an external data file (``.mhd``, a MetaImage
   ``ElementDataFile`` other than ``LOCAL``, a NRRD ``data file:``, a NIfTI pair) is refused
   (``external data file``): a reader would open that name on the host, an absolute path included;
5. **the header**: dimension, size, components, spacing, origin and direction, read without the
   voxels (:func:`read_header`, which is :func:`selfunet.data.header.read_image_header` with
   external data files refused) and compared with the reference's (``wrong-geometry``): the
   memory the voxels then take is bounded by the reference, not by what the file declares;
6. only then the voxels.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from harness.results.safe_files import LinkRefused, open_below
from harness.tasks.names import check_slug
from selfunet.data.header import ImageRefused, read_image_header
from selfunet.data.io import save_image
from selfunet.errors import SelfUNetError

#: image endings an algorithm may write (the platform converts to .mha/.tif itself).
OUTPUT_ENDINGS = (".mha", ".mhd", ".nii.gz", ".nii", ".nrrd", ".tif", ".tiff")
#: bytes a label map may take per voxel of the reference grid (64-bit voxels, uncompressed) ...
MAX_BYTES_PER_VOXEL = 8
#: ... plus this much for headers and metadata.
HEADER_SLACK_BYTES = 1 << 20
#: the status of a case whose output the checks above refused.
REFUSED = "refused"


class OutputProblem(Exception):
    """Why a case's output is not scored: a status of :data:`harness.challenge.score.STATUSES` and a reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class ImageHeader:
    """What the geometry check compares (SimpleITK axis order)."""

    dimension: int
    size: tuple[int, ...]
    components: int
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size, dtype=np.float64))

    @classmethod
    def of(cls, image) -> ImageHeader:
        """From a ``sitk.Image`` or a ``sitk.ImageFileReader`` whose information was read."""
        if isinstance(image, ImageHeader):
            return image
        components = (image.GetNumberOfComponentsPerPixel() if isinstance(image, sitk.Image)
                      else image.GetNumberOfComponents())
        return cls(image.GetDimension(), tuple(image.GetSize()), components, tuple(image.GetSpacing()),
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))


#: endings selfunet's own header reader does not take: TIFF names no other file, so SimpleITK's
#: header read is enough there.
_TIFF = (".tif", ".tiff")


def read_header(path: Path) -> ImageHeader:
    """The header of an image file, no voxels read; :class:`~selfunet.data.header.ImageRefused`
    (``external data file``, ``unreadable``, ...) when it is refused or not an image.

    The one place scoring reads a header: :func:`selfunet.data.header.read_image_header` with
    external data files refused outright (``external="refuse"``) and links refused, so scoring and
    ``selfunet`` apply the same header checks.
    """
    path = Path(path)
    if path.name.lower().endswith(_TIFF):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise ImageRefused(path, "unreadable", _last_line(exc), "write a .mha or .nii.gz") from None
        return ImageHeader.of(reader)
    header = read_image_header(path, external="refuse", allow_symlink=False)
    return ImageHeader(header.dimension, header.size, header.components, header.spacing, header.origin,
                       header.direction)


def reference_header(path: Path) -> ImageHeader:
    """The header of a reference label (the organiser's file: links and its own folder's data files
    allowed, as for any dataset image)."""
    header = read_image_header(path)
    return ImageHeader(header.dimension, header.size, header.components, header.spacing, header.origin,
                       header.direction)


def geometry_problem(got, want) -> str | None:
    """Why ``got`` is not on ``want``'s voxel grid (None when it is): size, spacing, origin, direction.

    Both may be images, readers with their information read, or :class:`ImageHeader`.
    """
    got, want = ImageHeader.of(got), ImageHeader.of(want)
    if got.dimension != want.dimension:
        return f"{got.dimension}D image, the reference is {want.dimension}D"
    if got.components != 1:
        return f"{got.components} components per voxel, expected a label map"
    if got.size != want.size:
        return f"size {got.size} != reference {want.size}"
    for what, a, b, tol in (("spacing", got.spacing, want.spacing, 1e-4),
                            ("origin", got.origin, want.origin, 1e-3),
                            ("direction", got.direction, want.direction, 1e-4)):
        if not np.allclose(a, b, rtol=1e-5, atol=tol):
            return f"{what} {tuple(round(v, 4) for v in a)} != reference {tuple(round(v, 4) for v in b)}"
    return None


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[-1] if lines else type(exc).__name__)[:200]


def list_folder(root: Path, folder: Path, shown: str) -> tuple[int, list[str]]:
    """A descriptor of ``root/folder`` (no link below ``root``) and the names in it.

    A link on the way is ``refused`` (``symlink``); a missing folder is an empty listing.
    """
    try:
        fd = open_below(root, folder, "a submission's output", directory=True)
    except FileNotFoundError:
        return -1, []
    except LinkRefused:
        raise OutputProblem(REFUSED, f"symlink: {shown} is a symbolic link or passes one; outputs are read only "
                            "from real folders and files") from None
    except NotADirectoryError:
        raise OutputProblem(REFUSED, f"not a regular file: {shown} is not a folder") from None
    return fd, sorted(os.listdir(fd))


def container_output(output: Path, slug: str) -> tuple[int, str]:
    """(descriptor of ``output/images/<slug>/``, the one image name in it) of an algorithm run."""
    check_slug(slug, "output socket slug")
    shown = f"/output/images/{slug}/"
    fd, names = list_folder(output, Path("images") / slug, shown)
    images = [n for n in names if n.lower().endswith(OUTPUT_ENDINGS)]
    if len(images) != 1:
        if fd >= 0:
            os.close(fd)
        raise OutputProblem("missing", f"{len(images)} image(s) in {shown}, expected 1")
    return fd, images[0]


def _ending(name: str) -> str:
    """The image ending of ``name`` (longest first, so ``.nii.gz`` wins), lower case."""
    lower = name.lower()
    return next((e for e in sorted(OUTPUT_ENDINGS, key=len, reverse=True) if lower.endswith(e)), "")


def folder_prediction(folder: Path, case_id: str) -> tuple[int, str]:
    """(descriptor of ``folder``, the name of the case's label map in it): a folder submission."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        raise OutputProblem("missing", f"no folder {folder}") from None
    found = sorted(n for n in os.listdir(fd) if _ending(n) and n[: len(n) - len(_ending(n))] == case_id)
    if not found:
        os.close(fd)
        raise OutputProblem("missing", "no label map for this case")
    return fd, found[0]


def take_file(dir_fd: int, name: str, shown: str, reference: ImageHeader, private: Path,
              single_link: bool = True) -> Path:
    """Steps 2 to 5 of the module doc for ``name`` in the open folder ``dir_fd``: the checked private
    copy's path (under ``private``, a folder only the harness writes), or an :class:`OutputProblem`."""
    limit = reference.voxels * MAX_BYTES_PER_VOXEL + HEADER_SLACK_BYTES
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise OutputProblem(REFUSED, f"symlink: {shown} is a symbolic link (to {os.readlink(name, dir_fd=dir_fd)!r}); "
                            "an output must be a file the submission wrote, never a link")
    if not stat.S_ISREG(st.st_mode):
        raise OutputProblem(REFUSED, f"not a regular file: {shown} is a {_kind(st.st_mode)}")
    if single_link and st.st_nlink != 1:
        raise OutputProblem(REFUSED, f"hard link: {shown} has {st.st_nlink} names; an output is one plain file")
    if st.st_size > limit:
        raise OutputProblem(REFUSED, f"too large: {shown} is {st.st_size} bytes, more than the reference grid "
                            f"needs ({limit} bytes at most)")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    except OSError as exc:
        raise OutputProblem("unreadable", f"{shown}: {exc.strerror}") from None
    target = Path(private) / f"output{_ending(name)}"
    try:
        again = os.fstat(fd)
        if (again.st_ino, again.st_dev) != (st.st_ino, st.st_dev) or not stat.S_ISREG(again.st_mode):
            raise OutputProblem(REFUSED, f"not a regular file: {shown} changed while it was opened")
        copied = 0
        with open(target, "xb") as out:
            while chunk := os.read(fd, 1 << 20):
                copied += len(chunk)
                if copied > limit:
                    raise OutputProblem(REFUSED, f"too large: {shown} grew past {limit} bytes while read")
                out.write(chunk)
    finally:
        os.close(fd)
    try:
        header = read_header(target)
    except ImageRefused as exc:  # the private copy's path is not the submission's: name what it wrote
        problem = exc.problem.replace(str(target), shown).replace(target.name, name)
        if exc.reason in ("unreadable", "bad header", "unsupported format"):
            raise OutputProblem("unreadable", f"{name}: {problem}") from None
        raise OutputProblem(REFUSED, f"{exc.reason}: {shown}: {problem}; an output must hold its own voxels") \
            from None
    problem = geometry_problem(header, reference)
    if problem:
        raise OutputProblem("wrong-geometry", problem)
    return target


def read_checked(path: Path, shown: str) -> sitk.Image:
    """The voxels of a private copy :func:`take_file` passed (its geometry is the reference's)."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise OutputProblem("unreadable", f"{shown}: {_last_line(exc)}") from None


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return word
    return "special file"


def take_output(open_result: tuple[int, str], shown_folder: str, reference: ImageHeader, private: Path,
                single_link: bool = True) -> sitk.Image:
    """Steps 2 to 6 for the image an opener (:func:`container_output`, :func:`folder_prediction`)
    found; closes its folder descriptor."""
    fd, name = open_result
    shown = f"{shown_folder}{name}"
    try:
        path = take_file(fd, name, shown, reference, private, single_link=single_link)
    except SelfUNetError as exc:
        raise OutputProblem(REFUSED, f"{shown}: {exc}") from None
    finally:
        os.close(fd)
    return read_checked(path, shown)


def checked_prediction(result, opened, shown: str, reference: Path, kept: Path, private: Path,
                       single_link: bool = True) -> Path | None:
    """A case's output checked (all of the module doc), read and saved as ``kept`` (metadata
    removed); None with ``result`` failed (its ``fail(status, reason)``) when a check refuses it.
    ``opened`` gives the open folder and the file name (:func:`container_output`,
    :func:`folder_prediction`; it may raise the case's ``missing`` or ``refused``); ``private`` is
    a folder to make for the private copy."""
    try:
        private.mkdir(parents=True)
        image = take_output(opened(), shown, reference_header(reference), private, single_link)
    except OutputProblem as exc:
        result.fail(exc.status, exc.reason)
        return None
    for key in image.GetMetaDataKeys():  # header fields .mha cannot hold
        image.EraseMetaData(key)
    save_image(kept, image)  # a failed write (full disk) is the harness's problem, not the submission's
    return kept
