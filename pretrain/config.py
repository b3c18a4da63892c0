"""The pretraining config: one dataclass per section, every hyperparameter with its unit and source.

Defaults follow the SimCLR paper (Chen et al. 2020) where it gives one; the CIFAR presets in
``configs/`` take their hyper-parameters from the official code's CIFAR-10 command (each config
cites its source).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.errors import ConfigError

DEFAULT_CACHE_DIR = ".cache/simclr-transfer"  # archives are extracted, features cached, here


@dataclass
class DataConfig:
    # digits | cifar10 | imagefolder:<path> | a transfer benchmark name such as food101 or
    # caltech101:<path> (see pretrain.data.DATASETS and pretrain.data.benchmark)
    name: str = "digits"
    root: str = ""  # archive or folder of the dataset; "" = look in ../shared/data (cifar10
    #                 then downloads; benchmark names also look in $SIMCLR_DATA_DIR, cache_dir)
    cache_dir: str = DEFAULT_CACHE_DIR  # where archives are extracted once
    split: str = "train"
    num_workers: int = 0  # DataLoader workers for the CPU augmentation path
    limit: int = 0  # a fixed seeded random subset of N images (0 = all); for smoke tests


@dataclass
class ModelConfig:
    encoder: str = "small_cnn"  # resnet18 | resnet34 | resnet50 | small_cnn | timm:<name>
    cifar_stem: bool = False  # 3x3 stride-1 conv1 and no max-pool, for 32x32 inputs
    zero_init_residual: bool = False  # residual blocks' last BN gamma = 0 (official init_zero)
    head: str = "mlp"  # none | linear | mlp
    num_layers: int = 2  # mlp depth: 2 = SimCLR v1, 3 = SimCLR v2
    hidden_dim: int = 0  # 0 = encoder width (SimCLR: 2048 for ResNet-50)
    out_dim: int = 128  # projection size z (SimCLR: 128)
    bn: bool = True  # BatchNorm after every head layer (official code)


@dataclass
class AugmentConfig:
    preset: str = "auto"  # auto | cifar | imagenet | digits: picks the values below per dataset
    image_size: int = 0  # crop size in pixels; 0 = dataset default
    crop_scale_min: float = 0.08  # random resized crop area fraction (SimCLR App. A)
    color_strength: float = -1.0  # s in colour jitter (0.8s, 0.8s, 0.8s, 0.2s); <0 = preset
    color_p: float = 0.8
    gray_p: float = 0.2
    blur: str = "auto"  # auto | on | off  (Gaussian blur, p=0.5, for large images only)
    # auto: gpu when CUDA is present | gpu: batched per-sample augmentation on the training
    # device (works on CPU tensors too) | cpu: torchvision transforms in DataLoader workers
    device: str = "auto"


@dataclass
class OptimConfig:
    name: str = "lars"  # lars | sgd | adamw
    lr: float = 0.3  # base lr per `lr_reference_batch` images (SimCLR App. B.1: 0.3 x B/256)
    lr_scaling: str = "linear"  # linear (lr x B/256) | sqrt (lr x sqrt(B)) | none
    lr_reference_batch: int = 256
    weight_decay: float = 1e-6  # SimCLR: 1e-6 with LARS
    momentum: float = 0.9
    trust_coefficient: float = 0.001  # LARS eta (You et al. 2017)
    warmup_epochs: float = 10.0  # linear warm-up, then cosine decay to 0 (SimCLR: 10 epochs)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW only


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256  # N images -> 2N views per step
    temperature: float = 0.1  # NT-Xent tau (SimCLR: 0.1 at batch 4096, 0.5 for CIFAR)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    channels_last: bool = True  # used on CUDA only
    run_dir: str = "runs"
    name: str = ""  # run directory name; "" = derived from dataset, encoder, head and seed
    compile: str = "none"  # none | default | reduce-overhead (CUDA graphs) | max-autotune
    log_every: int = 50  # steps between loss read-backs (the step's only host synchronisation)
    quality_every: int = 0  # epochs between label-free quality logs (RankMe etc.); 0 = never
    quality_samples: int = 1024  # images used for each quality log
    # Online k-NN monitor (pretrain.monitor): weighted k-NN top-1 every N epochs; 0 = off.
    monitor_every: int = 0
    monitor_k: int = 200
    monitor_temperature: float = 0.1
    monitor_split: str = "holdout"  # holdout (10 % of train, seeded) | test (only when asked)
    monitor_taps: str = "h"  # comma-separated taps, e.g. "h,z"
    # Global BN: batch statistics over all ranks (SimCLR Sec. 2.2, official global_bn=True).
    # null = on whenever torchrun starts more than one process; true / false force it.
    sync_bn: bool | None = None
    checkpoint_every: int = 1  # epochs between checkpoints
    progress: bool = True  # tqdm bar per epoch
    # Dashboards (pretrain.scalars), beside metrics.jsonl: TensorBoard event files in
    # <run>/tensorboard/ (extra [tensorboard]); a W&B project name, "" = off (extra [wandb];
    # WANDB_MODE=offline keeps it on disk)
    tensorboard: bool = False
    wandb_project: str = ""


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.train.epochs}")
        if self.train.batch_size < 2:
            raise ConfigError(f"train.batch_size must be >= 2, got {self.train.batch_size}")
        if self.train.temperature <= 0:
            raise ConfigError(f"train.temperature must be > 0, got {self.train.temperature}")
        choices = {
            "augment.device": (self.augment.device, ("auto", "gpu", "cpu")),
            "train.compile": (
                self.train.compile,
                ("none", "default", "reduce-overhead", "max-autotune"),
            ),
            "train.precision": (self.train.precision, ("auto", "bf16", "fp32")),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise ConfigError(f"{key} must be one of {', '.join(valid)}; got {value!r}")
        if self.train.monitor_every < 0:
            raise ConfigError(
                f"train.monitor_every must be >= 0 (0 = off), got {self.train.monitor_every}"
            )
        if self.train.log_every < 1:
            raise ConfigError(f"train.log_every must be >= 1, got {self.train.log_every}")
        if self.optim.lr_scaling not in ("linear", "sqrt", "none"):
            raise ConfigError(
                f"optim.lr_scaling must be one of linear, sqrt, none; got {self.optim.lr_scaling!r}"
            )
