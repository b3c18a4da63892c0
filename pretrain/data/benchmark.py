"""Kornblith et al. 2019's 12 transfer datasets by name ("Do Better ImageNet Models Transfer
Better?", CVPR 2019, Sec. 3 and Table A1).

========== ================================================= =========== ============== =========
name       layout looked for under a root                    splits      metric         split
========== ================================================= =========== ============== =========
food101    ``food-101/meta/{train,test}.json``, ``images/``  train test  top1           official
cifar10    ``cifar10.tar.xz`` or its ImageFolder (images.py) train test  top1           official
cifar100   ``cifar-100-binary/{train,test}.bin`` (or         train test  top1           official
           torchvision's ``cifar-100-python/``)
birdsnap   ``birdsnap/{images,species,test_images}.txt``,    train test  top1           authors'
           ``birdsnap/download/images/`` (official script)                              test list
sun397     ``SUN397/ClassName.txt``, ``Partitions/``         train test  top1           partition
           ``{Training,Testing}_01.txt``                                                1
cars       ``stanford_cars/devkit/cars_meta.mat`` (+ annos)  train test  top1           official
aircraft   ``fgvc-aircraft-2013b/data/variants.txt``         train val   mean_per_class official
                                                             test
voc2007    ``VOCdevkit/VOC2007/ImageSets/Main/{split}.txt``  train val   map11          official
                                                             test
dtd        ``dtd/dtd/labels/{train,val,test}1.txt``          train val   top1           split 1
                                                             test
pets       ``oxford-iiit-pet/annotations/{trainval,test}``   train test  mean_per_class official
caltech101 ``caltech101/101_ObjectCategories/<class>/``      train test  mean_per_class 30/class,
                                                                                        seed 0
flowers102 ``flowers-102/{imagelabels,setid}.mat``, ``jpg/`` train val   mean_per_class official
                                                             test
========== ================================================= =========== ============== =========

Each entry's ``split_rule`` says the rule and its source (Kornblith Table A1, the dataset's
paper, or ssl-transfer: Ericsson et al. 2021). A split a dataset lacks raises
:class:`MissingSplitError`; the probes then hold out a seeded 20% of train for selection.

Where a copy is looked for (:func:`locate`): the path of ``name:PATH``, else ``--data-root``
(``root``), else each of $SIMCLR_DATA_DIR, ``../shared/data`` (upwards from the checkout) and
``<cache_dir>/torchvision`` (where ``--download`` puts torchvision's downloads). A given path may
be the folder holding the dataset's top folder or that folder itself (VOC2007: also
``VOCdevkit/``; Caltech-101: any folder holding ``101_ObjectCategories/``).

A pre-split ImageFolder copy, ``PATH/{train,[val,]test}/<class>/*`` or a ``.tar*`` archive of
one, given as ``name:PATH`` or ``--data-root PATH``, is read with the name's metric (e.g.
``caltech101:../shared/data/cls_caltech101_subset.tar.xz``); voc2007 has no such form.

ssl-transfer's few-shot sets (CropDiseases, EuroSAT, ISIC, ChestX) are read with
``imagefolder:PATH`` when arranged as ``<class>/*`` or ``<split>/<class>/*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pretrain.config import DEFAULT_CACHE_DIR
from pretrain.data.benchmark_layouts import CALTECH_TRAIN_PER_CLASS, READERS, ParsedSplit
from pretrain.data.images import (
    ARCHIVE_SUFFIXES,
    DATASETS,
    HEADLINE_METRICS,
    DatasetInfo,
    ImageDataset,
    MissingSplitError,
    extract_archive,
    file_identity,
    find_shared_archive,
    scan_image_folder,
    shared_data_dirs,
)
from pretrain.errors import DataError, UserError

__all__ = ["BENCHMARK", "CALTECH_TRAIN_PER_CLASS", "BenchmarkDataset", "DatasetNotFoundError",
           "load_benchmark", "locate"]


class DatasetNotFoundError(DataError):
    """A named dataset has no local copy; the message says where we looked and how to get it."""


@dataclass(frozen=True)
class BenchmarkDataset:
    """One transfer dataset of the protocol and its official layout.

    ``marker`` is a path relative to a root that proves the layout; ``home`` (``folder`` or a
    folder below it, a prefix of ``marker``) is the folder the reader opens.
    """

    name: str
    title: str
    num_classes: int
    metric: str  # one of HEADLINE_METRICS
    splits: tuple[str, ...]
    folder: str
    marker: str
    url: str
    downloadable: bool  # torchvision has a working downloader
    split_rule: str
    home: str = ""

    def __post_init__(self) -> None:
        assert self.metric in HEADLINE_METRICS, self.metric
        assert not self.folder or self.marker.startswith(self.home_dir + "/"), self.marker

    @property
    def home_dir(self) -> str:
        return self.home or self.folder


_TT, _TVT = ("train", "test"), ("train", "val", "test")
_D = BenchmarkDataset
BENCHMARK: dict[str, BenchmarkDataset] = {d.name: d for d in [
    _D("food101", "Food-101", 101, "top1", _TT, "food-101", "food-101/meta/train.json",
       "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/", True,
       "Official split, 750 train / 250 test images per class (Bossard et al. 2014; Kornblith "
       "Table A1)."),
    _D("cifar10", "CIFAR-10", 10, "top1", _TT, "", "cifar10.tar.xz",  # images.py's loader
       "https://www.cs.toronto.edu/~kriz/cifar.html", True,
       "Official 50,000 / 10,000 train/test split (Krizhevsky 2009; Kornblith Table A1)."),
    _D("cifar100", "CIFAR-100", 100, "top1", _TT, "cifar-100-binary", "cifar-100-binary/train.bin",
       "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", True,
       "Official 50,000 / 10,000 train/test split (Krizhevsky 2009; Kornblith Table A1)."),
    _D("birdsnap", "Birdsnap", 500, "top1", _TT, "birdsnap", "birdsnap/images.txt",
       "https://thomasberg.org/ (birdsnap.tgz, then its get_birdsnap.py script)", False,
       "Test = the authors' test_images.txt (Berg et al. 2014), train = every other downloaded "
       "image (ssl-transfer, Ericsson et al. 2021; Kornblith Table A1)."),
    _D("sun397", "SUN397", 397, "top1", _TT, "SUN397", "SUN397/ClassName.txt",
       "https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz and Partitions.zip)", False,
       "The authors' first partition Training_01 / Testing_01, 50 + 50 per class (Xiao et al. "
       "2010); Kornblith Table A1: 'we used the first train/test split'."),
    _D("cars", "Stanford Cars", 196, "top1", _TT, "stanford_cars",
       "stanford_cars/devkit/cars_meta.mat",
       "https://ai.stanford.edu/~jkrause/cars/car_dataset.html", False,
       "Official 8,144 / 8,041 train/test split (Krause et al. 2013; Kornblith Table A1)."),
    _D("aircraft", "FGVC Aircraft", 100, "mean_per_class", _TVT, "fgvc-aircraft-2013b",
       "fgvc-aircraft-2013b/data/variants.txt",
       "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/", True,
       "Official train / val / test variant split, 3,334 / 3,333 / 3,333 (Maji et al. 2013; "
       "Kornblith Table A1)."),
    _D("voc2007", "PASCAL VOC 2007", 20, "map11", _TVT, "VOCdevkit",
       "VOCdevkit/VOC2007/ImageSets/Main", "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/",
       True, "Official train / val / test image sets, 2,501 / 2,510 / 4,952 (Everingham et al. "
       "2010; Kornblith Table A1).", home="VOCdevkit/VOC2007"),
    _D("dtd", "Describable Textures", 47, "top1", _TVT, "dtd", "dtd/dtd/labels/train1.txt",
       "https://www.robots.ox.ac.uk/~vgg/data/dtd/", True,
       "The authors' first split train1 / val1 / test1, 1,880 each (Cimpoi et al. 2014; "
       "Kornblith Table A1)."),
    _D("pets", "Oxford-IIIT Pets", 37, "mean_per_class", _TT, "oxford-iiit-pet",
       "oxford-iiit-pet/annotations/trainval.txt", "https://www.robots.ox.ac.uk/~vgg/data/pets/",
       True, "Official trainval / test split, 3,680 / 3,669; our train is trainval (Parkhi et al. "
       "2012; Kornblith Table A1)."),
    _D("caltech101", "Caltech-101", 102, "mean_per_class", _TT, "caltech101",
       "caltech101/101_ObjectCategories", "https://data.caltech.edu/records/mzrjq-6wc02", True,
       f"{CALTECH_TRAIN_PER_CLASS} random images per class for train, the rest test, 102 classes "
       "with BACKGROUND_Google: 3,060 / 6,084 (Kornblith Table A1); drawn with seed 0."),
    _D("flowers102", "Oxford 102 Flowers", 102, "mean_per_class", _TVT, "flowers-102",
       "flowers-102/setid.mat", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", True,
       "Official train / val / test split, 1,020 / 1,020 / 6,149 (Nilsback & Zisserman 2008; "
       "Kornblith Table A1)."),
]}
del _D

# Other official layouts accepted: (home, marker relative to it).
_ALTERNATIVES: dict[str, list[tuple[str, str]]] = {"cifar100": [("cifar-100-python", "meta")]}


def _layouts(spec: BenchmarkDataset) -> list[tuple[str, str]]:
    home = spec.home_dir
    return [(home, spec.marker[len(home) + 1:]), *_ALTERNATIVES.get(spec.name, [])]


def _official_home(spec: BenchmarkDataset, base: Path, given: bool) -> Path | None:
    """The home of an official copy under ``base``; a ``given`` path may also be the home or a
    folder between (VOCdevkit/), ``base`` then standing for that part of the layout."""
    for home, check in _layouts(spec):
        parts = Path(home).parts
        for k in range(len(parts) + 1 if given else 1):
            candidate = base.joinpath(*parts[k:])
            if (candidate / check).exists():
                return candidate
    return None


def _not_found(spec: BenchmarkDataset, dirs: list[Path], copy: bool) -> DatasetNotFoundError:
    looked = f"{spec.marker}" + (" or an ImageFolder copy (train/<class>/*)" if copy else "")
    how = (f"download it with --download (torchvision) or from {spec.url}" if spec.downloadable
           else f"torchvision cannot download it: get it from {spec.url}")
    where = (f"--data-root DIR (the folder holding {spec.folder}/)" if spec.folder
             else "--data-root PATH (the archive or an ImageFolder copy)")
    return DatasetNotFoundError(
        f"{spec.name} not found: looked for {looked} in {', '.join(str(d) for d in dirs)}; "
        f"{how}, and pass {where}")


def _missing_split(spec: BenchmarkDataset, split: str) -> MissingSplitError:
    return MissingSplitError(f"{spec.name} has splits {', '.join(spec.splits)}, not {split!r}")


def _spec(name: str) -> BenchmarkDataset:
    if name not in BENCHMARK:
        raise UserError(f"unknown benchmark dataset {name!r}; valid: {', '.join(BENCHMARK)}")
    return BENCHMARK[name]


def _search_roots(cache_dir: str) -> list[Path]:
    """$SIMCLR_DATA_DIR, ../shared/data upwards, then ``<cache_dir>/torchvision`` (no repeats)."""
    extra = [Path(cache_dir) / "torchvision"] if cache_dir else []
    return list(dict.fromkeys([*shared_data_dirs(), *extra]))


def _find(spec: BenchmarkDataset, arg: str, root: str, cache_dir: str) -> tuple[str, Path]:
    """``("official" | "imagefolder" | "archive", path)`` of the copy of ``spec``."""
    given = arg or root
    if spec.name == "cifar10":  # images.py's loader: an archive or ImageFolder, or the shared one
        path = Path(given).expanduser() if given else find_shared_archive("cifar10.tar.xz")
        if path is not None and path.exists():
            return "imagefolder", path
        raise _not_found(spec, [path] if path else _search_roots(""), copy=True)
    if given:
        path = Path(given).expanduser()
        home = _official_home(spec, path, given=True) if path.is_dir() else None
        if home is not None:
            return "official", home
        if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
            return "archive", path
        if path.is_dir() and any((path / s).is_dir() for s in ("train", "val", "test")):
            return "imagefolder", path
        raise _not_found(spec, [path], copy=spec.name != "voc2007")
    dirs = _search_roots(cache_dir)
    for d in dirs:
        home = _official_home(spec, d, given=False)
        if home is not None:
            return "official", home
    raise _not_found(spec, dirs, copy=False)


def locate(name: str, arg: str = "", root: str = "", cache_dir: str = DEFAULT_CACHE_DIR) -> Path:
    """Where the copy of benchmark dataset ``name`` is, without reading any image.

    Args:
        name: a key of :data:`BENCHMARK`.
        arg: an explicit path (the ``PATH`` of ``name:PATH``); wins over ``root``.
        root: ``--data-root``: the folder holding the dataset's folder, that folder, an
            ImageFolder copy or an archive.
        cache_dir: its ``torchvision/`` folder is searched (where downloads go).

    Returns:
        The dataset's home folder (``.../food-101``), an ImageFolder copy or an archive.

    Raises:
        DatasetNotFoundError: no copy; the one-line message says where we looked and how to
            get it.
    """
    return _find(_spec(name), arg, root, cache_dir)[1]


def _info(spec: BenchmarkDataset) -> DatasetInfo:
    if spec.name == "cifar100":
        return DatasetInfo(preset="cifar", image_size=32, metric=spec.metric)
    return DatasetInfo(preset="imagenet", image_size=224, metric=spec.metric)


def _download(spec: BenchmarkDataset, cache_dir: str) -> None:
    """Fetch every split of ``spec`` with torchvision into ``<cache_dir>/torchvision``."""
    if not spec.downloadable:
        raise _not_found(spec, _search_roots(cache_dir), copy=False)
    import torchvision.datasets as tvd

    root = str(Path(cache_dir) / "torchvision")
    fetch = {
        "food101": lambda: tvd.Food101(root, download=True),
        "cifar100": lambda: tvd.CIFAR100(root, download=True),
        "aircraft": lambda: tvd.FGVCAircraft(root, download=True),
        "voc2007": lambda: [tvd.VOCDetection(root, year="2007", image_set=s, download=True)
                            for s in ("trainval", "test")],
        "dtd": lambda: tvd.DTD(root, download=True),
        "pets": lambda: tvd.OxfordIIITPet(root, download=True),
        "caltech101": lambda: tvd.Caltech101(root, download=True),
        "flowers102": lambda: tvd.Flowers102(root, download=True),
    }[spec.name]
    try:
        fetch()
    except Exception as exc:  # no network, a moved URL, a corrupt download: one line for people
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{spec.name}: no local copy and the torchvision download into {root} "
                        f"failed: {first}; get it from {spec.url}") from None


def _read_copy(spec: BenchmarkDataset, kind: str, path: Path, split: str,
               cache_dir: str) -> ParsedSplit:
    source = ""
    if kind == "archive":
        archive, source, path = path, file_identity(path), extract_archive(path, cache_dir)
        subdirs = [p for p in path.iterdir() if p.is_dir()]
        if len(subdirs) == 1 and not (path / split).is_dir():  # an archive with one top folder
            path = subdirs[0]
        home = _official_home(spec, path, given=True)
        if home is not None:
            kind, path = "official", home
        elif not any((path / s).is_dir() for s in ("train", "val", "test")):
            raise DataError(f"{spec.name}: the archive {archive} holds neither "
                            f"{spec.marker} nor an ImageFolder copy (train/<class>/*)")
    if kind == "official":
        if split not in spec.splits:
            raise _missing_split(spec, split)
        parsed = READERS[spec.name](path, split)
    else:
        if spec.name == "voc2007":
            raise DataError(f"voc2007 needs the VOCdevkit layout ({spec.marker}), not {path}")
        files, labels, classes = scan_image_folder(path, split)
        parsed = ParsedSplit(list(labels), classes, files=files)
    if source:
        parsed.source = source
    return parsed


def load_benchmark(name: str, arg: str, split: str, root: str, cache_dir: str,
                   download: bool = False) -> ImageDataset:
    """The ``split`` of benchmark dataset ``name`` (a :data:`DATASETS` loader, see the module
    docstring); files are sorted by path.

    Raises:
        DatasetNotFoundError: no copy (and none could be downloaded).
        MissingSplitError: the dataset has no such split.
        DataError: a malformed copy (the message names the file).
    """
    spec = _spec(name)
    if name == "cifar10":  # images.py's loader
        return DATASETS.get(name)(arg, split, root, cache_dir, download)
    if split not in ("train", "val", "test"):
        raise _missing_split(spec, split)
    try:
        kind, path = _find(spec, arg, root, cache_dir)
    except DatasetNotFoundError:
        if not download or arg or root:
            raise
        if split not in spec.splits:
            raise _missing_split(spec, split) from None
        _download(spec, cache_dir)
        kind, path = _find(spec, "", "", cache_dir)
    parsed = _read_copy(spec, kind, path, split, cache_dir)
    info = _info(spec)
    if parsed.array is not None:
        return ImageDataset(name, parsed.targets, parsed.classes, info, array=parsed.array,
                            source=parsed.source)
    files = parsed.files or []
    order = sorted(range(len(files)), key=lambda i: files[i].as_posix())
    return ImageDataset(name, [parsed.targets[i] for i in order], parsed.classes, info,
                        files=[files[i] for i in order], source=parsed.source)


def _register(name: str) -> None:
    @DATASETS.register(name)
    def load(arg: str, split: str, root: str, cache_dir: str,
             download: bool = False) -> ImageDataset:
        return load_benchmark(name, arg, split, root, cache_dir, download)


for _name in BENCHMARK:
    if _name != "cifar10":  # registered by pretrain.data.images
        _register(_name)
del _name
