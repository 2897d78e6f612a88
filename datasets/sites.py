"""The registry of sites: how each collection's folders map to samples.

A site is a folder of ``class/image`` files. Known collections have a class
of their own (documented with their source); any other name is read as a
generic folder whose sub-folders carry common class names. Every site yields
the same :class:`~datasets.records.Sample` records.

Usage::

    site = open_site("nav", "../shared/data/nav")
    candidates, skipped = site.list_files()
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from datasets.records import IMAGE_EXTENSIONS, NO_TUMOUR, TUMOUR, BadFile, check_site_name

if TYPE_CHECKING:
    import numpy as np

#: Class folder names (normalised: lower case, spaces and '-' as '_') -> (label, subclass).
CLASS_FOLDERS: dict[str, tuple[int, str]] = {
    "yes": (TUMOUR, "tumour"),
    "tumor": (TUMOUR, "tumour"),
    "tumour": (TUMOUR, "tumour"),
    "tumors": (TUMOUR, "tumour"),
    "tumours": (TUMOUR, "tumour"),
    "positive": (TUMOUR, "tumour"),
    "glioma": (TUMOUR, "glioma"),
    "glioma_tumor": (TUMOUR, "glioma"),
    "meningioma": (TUMOUR, "meningioma"),
    "meningioma_tumor": (TUMOUR, "meningioma"),
    "pituitary": (TUMOUR, "pituitary"),
    "pituitary_tumor": (TUMOUR, "pituitary"),
    "no": (NO_TUMOUR, "no_tumour"),
    "notumor": (NO_TUMOUR, "notumor"),
    "notumour": (NO_TUMOUR, "notumor"),
    "no_tumor": (NO_TUMOUR, "notumor"),
    "no_tumour": (NO_TUMOUR, "notumor"),
    "normal": (NO_TUMOUR, "no_tumour"),
    "negative": (NO_TUMOUR, "no_tumour"),
}

#: Split folder names that may hold class folders (MOS's ``Training``/``Testing``).
SPLIT_FOLDERS = frozenset({"training", "testing", "train", "test", "val", "validation"})

MOS_CLASSES = ("glioma", "meningioma", "pituitary", "notumor")


def normalise_folder_name(name: str) -> str:
    """``"No Tumor"`` -> ``"no_tumor"``: lower case, spaces and dashes as ``_``."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file found in a class folder, before it is read."""

    path: str
    relative_path: str
    label: int
    subclass: str


@dataclasses.dataclass(frozen=True)
class ClassFolder:
    path: Path
    relative: str
    label: int
    subclass: str


class Site:
    """A generic site: sub-folders named by class, optionally under split folders.

    Recognised class folder names (case-insensitive; spaces and dashes count
    as ``_``): ``yes``/``no``, ``tumor``/``tumour``, ``notumor``/``no_tumor``,
    ``normal``, ``positive``/``negative`` and the MOS subclasses ``glioma``,
    ``meningioma``, ``pituitary``, ``notumor``. They may sit directly in the
    site folder or under split folders (``Training``, ``Testing``, ``train``,
    ``test``, ``val``). Any other sub-folder is an error that names it.
    """

    source = "any folder of class/image files"

    def __init__(self, name: str, root: str | os.PathLike):
        self.name = check_site_name(name)
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r})"

    def class_folders(self) -> list[ClassFolder]:
        """The class folders of the site, validated. Raises ValueError on bad layout."""
        if not self.root.exists():
            raise ValueError(f"site {self.name!r}: folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise ValueError(f"site {self.name!r}: {str(self.root)!r} is not a folder")
        folders: list[ClassFolder] = []
        self._collect(self.root, "", folders, allow_split=True)
        if not folders:
            raise ValueError(
                f"site {self.name!r}: no class folders in {str(self.root)!r} "
                f"(expected for example yes/ and no/)"
            )
        return folders

    def _collect(self, folder: Path, prefix: str, out: list[ClassFolder], allow_split: bool) -> None:
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            key = normalise_folder_name(entry.name)
            relative = f"{prefix}{entry.name}"
            if key in CLASS_FOLDERS:
                label, subclass = CLASS_FOLDERS[key]
                out.append(ClassFolder(entry, relative, label, subclass))
            elif allow_split and key in SPLIT_FOLDERS:
                self._collect(entry, relative + "/", out, allow_split=False)
            else:
                raise ValueError(
                    f"site {self.name!r}: unknown sub-folder {relative!r} in {str(self.root)!r}; "
                    f"class folders must be named like yes/no, tumor/notumor, normal, "
                    f"positive/negative or glioma/meningioma/pituitary/notumor"
                )

    def list_files(self, *, follow_external_symlinks: bool = False) -> tuple[list[Candidate], list[BadFile]]:
        """All candidate image files, sorted by relative path, and files skipped before reading.

        Skipped as :class:`BadFile` records, from names and ``os.lstat`` only
        (nothing is opened): hidden files (``.DS_Store``, ``._x.jpg``),
        extensions that are not images, anything that is not a regular file
        (FIFOs, sockets, devices, folders named like images:
        ``not_a_regular_file``), symlinks to nothing (``dangling_symlink``) and
        files whose real path lies outside the site folder, by a symlink of
        their own or of a folder (``symlink_outside_site``), unless
        ``follow_external_symlinks``. Symlinks inside the site are followed.
        Raises ValueError when the site has no images or only one class.
        """
        from datasets.validation import is_within, regular_file_problem, summarize_bad_files

        real_root = os.path.realpath(self.root)
        root = str(self.root)
        candidates: list[Candidate] = []
        skipped: list[BadFile] = []
        for folder in self.class_folders():
            for dirpath, dirnames, filenames in os.walk(folder.path):
                image_named = {name for name in dirnames if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS}
                dirnames[:] = sorted(name for name in dirnames if name not in image_named)
                real_folder = os.path.realpath(dirpath)
                outside = not follow_external_symlinks and not is_within(real_folder, real_root)
                relative_folder = os.path.relpath(dirpath, root).replace(os.sep, "/")
                hidden_folder = any(part.startswith(".") for part in relative_folder.split("/") if part != ".")
                for filename in sorted([*filenames, *image_named]):
                    path = os.path.join(dirpath, filename)
                    relative = f"{relative_folder}/{filename}"
                    extension = os.path.splitext(filename)[1]
                    if hidden_folder or filename.startswith("."):
                        skipped.append(BadFile(path, relative, self.name, "hidden_file"))
                    elif extension.lower() not in IMAGE_EXTENSIONS:
                        skipped.append(BadFile(path, relative, self.name, "unsupported_extension",
                                               f"extension {extension or '(none)'!r}"))
                    elif outside:
                        skipped.append(BadFile(path, relative, self.name, "symlink_outside_site",
                                               f"its folder resolves to {real_folder!r}, outside the site folder; "
                                               f"allowed with data.follow_external_symlinks"))
                    else:
                        problem = regular_file_problem(path, real_root,
                                                       follow_external_symlinks=follow_external_symlinks)
                        if problem is None:
                            candidates.append(Candidate(path, relative, folder.label, folder.subclass))
                        else:
                            skipped.append(BadFile(path, relative, self.name, *problem))
        candidates.sort(key=lambda c: c.relative_path)
        skipped.sort(key=lambda b: b.relative_path)
        try:
            check_classes(self.name, [c.label for c in candidates], what="image files")
        except ValueError as error:
            if not skipped:
                raise
            counts = ", ".join(f"{reason} ({count})" for reason, count in summarize_bad_files(skipped).items())
            raise ValueError(f"{error} ({len(skipped)} files skipped: {counts})") from None
        return candidates, skipped


def check_classes(site: str, labels: list[int], what: str = "valid images") -> None:
    """Raise ValueError when a site has no images or only one class."""
    if not labels:
        raise ValueError(f"site {site!r} has no {what}")
    present = set(labels)
    if len(present) < 2:
        only = "tumour" if TUMOUR in present else "no tumour"
        raise ValueError(f"site {site!r} has only one class ({only}) among its {what}; "
                         f"a site needs tumour and no-tumour images")


class Br35hSite(Site):
    """BR35H: Kaggle "Br35H :: Brain Tumor Detection 2020" (ahmedhamada0/brain-tumor-detection).

    Layout ``yes/`` (tumour) and ``no/`` (no tumour), 1,500 JPEG each, mixed
    sizes. Repeats scans inside itself under other names. The project's
    training site.
    """

    source = "https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection"


class NavSite(Site):
    """NAV: Kaggle "Brain MRI Images for Brain Tumor Detection" (navoneel/...).

    Layout ``yes/`` (155) and ``no/`` (98); JPEG and PNG, mixed sizes, some
    greyscale, file names with spaces. A large part is contained in BR35H.
    The project's validation site (model and threshold selection).
    """

    source = "https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection"


class MosSite(Site):
    """MOS: Kaggle "Brain Tumor MRI Dataset" (masoudnickparvar/brain-tumor-mri-dataset).

    Four class folders ``glioma``, ``meningioma``, ``pituitary`` (tumour) and
    ``notumor`` (no tumour; its owners took it from BR35H) under ``Training/``
    and/or ``Testing/``, or directly in the site folder. The subclass is kept
    for per-subclass rates. The project's held-out test site.
    """

    source = "https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset"

    def class_folders(self) -> list[ClassFolder]:
        folders = super().class_folders()
        unexpected = [f.relative for f in folders if f.subclass not in MOS_CLASSES]
        if unexpected:
            raise ValueError(f"site {self.name!r}: MOS class folders must be one of {MOS_CLASSES}, "
                             f"found {unexpected}")
        return folders


class SyntheticSite(Site):
    """Synthetic brain-like phantoms made by :mod:`datasets.synthetic` (no download).

    Layout ``yes/`` and ``no/`` of PNG files: skull ring, brain, optional
    tumour blobs, with a per-site intensity/contrast/noise profile. When the
    folder does not exist it is written first with the default profile.
    """

    source = "generated by datasets.synthetic"

    def class_folders(self) -> list[ClassFolder]:
        if not self.root.exists():
            from datasets.synthetic import PROFILES, write_synthetic_site

            write_synthetic_site(self.root, PROFILES["a"], images_per_class=60, size=96, seed=0)
        return super().class_folders()


#: Site classes by name. Any other name opens a generic :class:`Site`.
SITES: dict[str, Callable[..., Site]] = {
    "br35h": Br35hSite,
    "nav": NavSite,
    "mos": MosSite,
    "synthetic": SyntheticSite,
}


def open_site(name: str, root: str | os.PathLike) -> Site:
    """The site class registered for ``name`` (generic for unknown names)."""
    return SITES.get(name, Site)(name, root)


def parse_site_spec(spec: str) -> tuple[str, str]:
    """``"br35h=../data/br35h"`` -> ``("br35h", "../data/br35h")``. Raises ValueError."""
    name, separator, path = spec.partition("=")
    if not separator or not name or not path:
        raise ValueError(f"site {spec!r} must be given as NAME=PATH, for example br35h=data/br35h")
    return check_site_name(name), path


def check_site_folder(name: str, path: str) -> None:
    """Raise ValueError unless site ``name``'s folder ``path`` exists, is a folder and holds images of both
    classes in known class folders (names and ``lstat`` only; a ``synthetic`` site not yet written is fine)."""
    folder = Path(path).expanduser()
    if name == "synthetic" and not folder.exists():
        return
    if not folder.exists():
        raise ValueError(f"site {name!r}: folder {path!r} does not exist")
    if not folder.is_dir():
        raise ValueError(f"site {name!r}: {path!r} is a file, not a folder")
    try:
        open_site(name, folder).list_files()
    except OSError as error:
        raise ValueError(f"site {name!r}: folder {path!r} cannot be listed: {error.strerror or error}") from None


def sample_site_files(name: str, path: str, count: int, seed: int = 0) -> list[Candidate]:
    """Up to ``count`` files of site ``name`` in folder ``path``, drawn without replacement with ``seed``.

    They come in the order the site lists them. Raises ValueError for a folder that is not a valid site.
    """
    import numpy as np

    candidates, _ = open_site(name, path).list_files()
    rng = np.random.default_rng(seed)
    return [candidates[i] for i in sorted(rng.choice(len(candidates), min(count, len(candidates)), replace=False))]


def read_sampled_images(candidates: list[Candidate], report: Callable[[str], None] | None = None
                        ) -> tuple[list[np.ndarray], list[str]]:
    """The images of ``candidates`` ((H, W) uint8 greyscale) and their titles: the last 28 characters of each path.

    A file that is not a usable image is left out, with ``skipped PATH: REASON`` passed to ``report``.
    """
    from datasets.validation import ImageRejected, read_image_file

    images, titles = [], []
    for candidate in candidates:
        try:
            image = read_image_file(candidate.path)
        except ImageRejected as error:
            if report is not None:
                report(f"skipped {candidate.relative_path}: {error.reason}")
            continue
        images.append(image)
        titles.append(candidate.relative_path[-28:])
    return images, titles
