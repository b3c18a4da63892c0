"""The detection config: one dataclass per section, every hyperparameter with its unit and source.

Defaults follow detectron2's Faster R-CNN defaults as used by the MoCo transfer protocol
(He et al. 2020, Sec. 4.2 and its ``pascal_voc_R_50_C4_24k`` config): batch 16, lr 0.02,
100 warm-up iterations, steps at 18k and 22k of 24k, train scales 480-800, test scale 800.
The presets in ``configs/detection/`` override them for small data and CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pretrain.config import DEFAULT_CACHE_DIR
from pretrain.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "detection"
NORMS = ("frozen_bn", "bn", "syncbn", "gn")
FPN_NORMS = ("none", "bn", "syncbn", "gn")
ARCHS = ("fpn", "c4")
FORMATS = ("voc", "coco")


@dataclass
class DatasetSpec:
    format: str = "voc"  # voc | coco
    root: str = ""  # folder or .tar/.tar.xz archive; "shared:<archive>" = look in ../shared/data
    split: str = "train"  # voc: ImageSets/Main/<split>.txt; coco: instances_<split>.json
    subdir: str = ""  # voc: the folder with Annotations/ and JPEGImages/, relative to root
    images: str = ""  # coco: image folder relative to root ("" = images/<split> or <split>)
    annotations: str = ""  # coco: JSON relative to root ("" = annotations/instances_<split>.json)


@dataclass
class DataConfig:
    train: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec(split="trainval")])
    test: DatasetSpec = field(default_factory=lambda: DatasetSpec(split="test"))
    classes: list[str] = field(default_factory=list)  # voc: [] = sorted names found in train
    cache_dir: str = DEFAULT_CACHE_DIR  # archives are extracted here once
    num_workers: int = 2  # DataLoader workers (image decoding only; augmentation is seeded)
    limit_train: int = 0  # use only the first N training images (0 = all); smoke tests
    limit_test: int = 0  # evaluate on the first N test images (0 = all); smoke tests


@dataclass
class ModelConfig:
    arch: str = "fpn"  # fpn (Lin et al. 2017) | c4 (res5 as ROI head; MoCo/detectron2 C4)
    encoder: str = ""  # resnet18 | resnet34 | resnet50; "" = the run's (or inferred from keys)
    norm: str = "frozen_bn"  # frozen_bn | bn | syncbn | gn  (backbone normalisation)
    trainable_stages: int = 3  # 0-5 from res5 down; detectron2 FREEZE_AT = 5 - this
    res5_extra_norm: bool = False  # c4: a norm after res5 (MoCo's Res5ROIHeadsExtraNorm)
    fpn_norm: str = "none"  # fpn: none | bn | syncbn | gn after every FPN conv (detectron2 FPN.NORM)
    min_size_train: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    min_size_test: int = 800  # shorter side in pixels at test time
    max_size: int = 1333  # longer side cap in pixels (train and test)
    pixel_mean: list[float] = field(default_factory=list)  # RGB in 0-1; [] = pretraining's
    pixel_std: list[float] = field(default_factory=list)
    roi_batch_size: int = 512  # sampled ROIs per image (detectron2 BATCH_SIZE_PER_IMAGE)
    proposals_test: int = 1000  # RPN boxes kept after NMS per image at test (POST_NMS_TOPK_TEST)
    score_thresh: float = 0.05  # detections kept for evaluation (detectron2 SCORE_THRESH_TEST)
    detections_per_image: int = 100  # COCO protocol maximum


@dataclass
class TrainConfig:
    max_iter: int = 24000  # optimizer steps
    batch_size: int = 16  # images per step, all processes together
    lr: float = 0.02  # at batch 16 (detectron2/MoCo); scale linearly with batch_size
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # for norm weights and biases (detectron2 default)
    warmup_iters: int = 100  # linear warm-up from lr * warmup_factor (MoCo VOC: 100)
    warmup_factor: float = 0.001
    steps: list[int] = field(default_factory=lambda: [18000, 22000])  # lr x gamma at each
    gamma: float = 0.1
    hflip_prob: float = 0.5  # horizontal flip probability
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    checkpoint_every: int = 1000  # iterations between atomic checkpoints (and at the end)
    log_every: int = 20  # iterations between lines of train_log.jsonl
    progress: bool = True  # tqdm bar
    # losses (every log_every iterations) and the test metrics to <work>/tensorboard/
    # (pretrain.scalars; extra [tensorboard])
    tensorboard: bool = False


@dataclass
class EvalConfig:
    batch_size: int = 4  # images per inference batch
    # Precise BN before evaluation: trained BNs' statistics re-estimated over this many training
    # batches (detectron2 TEST.PRECISE_BN, NUM_ITER 200; on in MoCo's VOC C4 protocol); 0 = off
    precise_bn_iters: int = 0


@dataclass
class DetectionConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = ""  # work folder name; "" = the config file's stem

    def __post_init__(self) -> None:
        check_config(self)


def _choice(value: str, valid: tuple[str, ...], where: str) -> None:
    if value not in valid:
        raise ConfigError(f"{where} must be one of {', '.join(valid)}; got {value!r}")


def check_config(cfg: DetectionConfig) -> None:
    """Raise :class:`ConfigError` for values no run could use."""
    if not cfg.data.train:
        raise ConfigError("data.train is empty: list at least one dataset")
    for i, spec in enumerate([*cfg.data.train, cfg.data.test]):
        where = f"data.train[{i}]" if i < len(cfg.data.train) else "data.test"
        _choice(spec.format, FORMATS, f"{where}.format")
    if len({s.format for s in cfg.data.train} | {cfg.data.test.format}) > 1:
        raise ConfigError("data.train and data.test must all use the same format (voc or coco)")
    m, t = cfg.model, cfg.train
    _choice(m.arch, ARCHS, "model.arch")
    _choice(m.norm, NORMS, "model.norm")
    _choice(m.fpn_norm, FPN_NORMS, "model.fpn_norm")
    _choice(t.precision, ("auto", "bf16", "fp32"), "train.precision")
    if not 0 <= m.trainable_stages <= 5:
        raise ConfigError(f"model.trainable_stages must be in 0..5, got {m.trainable_stages}")
    if not m.min_size_train or min(m.min_size_train) < 32 or m.min_size_test < 32:
        raise ConfigError("model.min_size_train must be a non-empty list of sizes >= 32 pixels")
    for name in ("pixel_mean", "pixel_std"):
        if len(getattr(m, name)) not in (0, 3):
            raise ConfigError(f"model.{name} must be [] or three RGB values in 0-1")
    if m.roi_batch_size < 1 or m.proposals_test < 1 or m.detections_per_image < 1:
        raise ConfigError("model.roi_batch_size, proposals_test, detections_per_image must be >= 1")
    if t.max_iter < 1 or t.batch_size < 1 or t.lr <= 0:
        raise ConfigError("train.max_iter, train.batch_size and train.lr must be positive")
    if sorted(t.steps) != list(t.steps) or any(s < 1 for s in t.steps):
        raise ConfigError(f"train.steps must be increasing positive iterations, got {t.steps}")
    if cfg.eval.precise_bn_iters < 0:
        raise ConfigError(f"eval.precise_bn_iters must be >= 0, got {cfg.eval.precise_bn_iters}")
    if t.checkpoint_every < 1 or t.log_every < 1 or cfg.eval.batch_size < 1:
        raise ConfigError("train.checkpoint_every, train.log_every, eval.batch_size must be >= 1")
    if not 0.0 <= t.hflip_prob <= 1.0:
        raise ConfigError(f"train.hflip_prob must be in [0, 1], got {t.hflip_prob}")


def resolve_preset(config: str) -> Path:
    """A YAML path, or a preset name from ``configs/detection/`` (``bccd_r18_fpn``)."""
    path = Path(config).expanduser()
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    preset = PRESET_DIR / f"{config}.yaml"
    if preset.is_file():
        return preset
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"no config file {config!r} and no such preset; presets: {', '.join(names)}")
