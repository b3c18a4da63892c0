"""``RunSetup``: every fact about a run that something downstream needs, computed once.

It is built when training starts, from the resolved config, the model and the dataset's view
recipe, and written to ``<run>/setup.json``. Probes, detection, record setup blocks, tables and
plots read it; none of them works out a head label, a depth or a normalisation again. (A run
directory from before ``setup.json`` existed gets its setup built the same way on first read:
:func:`pretrain.run.load.load_run`.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.augment import RGB, ViewRecipe
from pretrain.config import PretrainConfig
from pretrain.errors import CheckpointError
from pretrain.model import SimCLRModel


@dataclass(frozen=True)
class RunSetup:
    """What was pretrained, and how its inputs must be prepared.

    Attributes:
        encoder, cifar_stem: the architecture (``model.encoder``, ``model.cifar_stem``).
        head: the head's label (``none``, ``linear``, ``mlp-2``), declared by its head type.
        head_kind: the registered head name (``mlp``).
        head_depth: layers between h and z (none 0, linear 1, mlp-L L).
        num_layers, hidden_dim, out_dim, bn: the config's head sizes (``model.*``).
        taps: every representation the model exposes, shallow to deep (``h``, ``head.0``, ``z``).
        mean, std: the RGB normalisation the encoder was trained with (inputs in 0-1).
        image_size: the crop size it was trained at; evaluations use it by default.
        pretrain_dataset: ``data.name``.
        epochs, batch_size, seed, temperature, optimizer: the training recipe.
    """

    encoder: str
    cifar_stem: bool
    head: str
    head_kind: str
    head_depth: int
    num_layers: int
    hidden_dim: int
    out_dim: int
    bn: bool
    taps: tuple[str, ...]
    mean: RGB
    std: RGB
    image_size: int
    pretrain_dataset: str
    epochs: int
    batch_size: int
    seed: int
    temperature: float
    optimizer: str

    @classmethod
    def build(cls, cfg: PretrainConfig, model: SimCLRModel, recipe: ViewRecipe) -> RunSetup:
        """The setup of a run of ``cfg``, whose model is ``model`` and views ``recipe``."""
        identity = model.head.identity
        m = cfg.model
        return cls(
            encoder=m.encoder,
            cifar_stem=m.cifar_stem,
            head=identity.label,
            head_kind=identity.kind,
            head_depth=identity.depth,
            num_layers=m.num_layers,
            hidden_dim=m.hidden_dim,
            out_dim=m.out_dim,
            bn=m.bn,
            taps=tuple(model.tap_names()),
            mean=recipe.mean,
            std=recipe.std,
            image_size=recipe.image_size,
            pretrain_dataset=cfg.data.name,
            epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size,
            seed=cfg.train.seed,
            temperature=cfg.train.temperature,
            optimizer=cfg.optim.name,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "setup") -> RunSetup:
        """Inverse of :meth:`to_dict`; missing or unknown fields are a :class:`CheckpointError`."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
            raise CheckpointError(f"{where} is not a run setup ({what})")
        values = dict(data)
        for key in ("taps", "mean", "std"):
            values[key] = tuple(values[key])
        return cls(**values)

    def record_fields(self) -> dict[str, Any]:
        """The pretraining fields of a result record's ``setup`` block (``seed`` is named
        ``pretrain_seed`` there: the record's own ``seed`` is the evaluation's)."""
        fields = self.to_dict()
        fields["pretrain_seed"] = fields.pop("seed")
        return fields


def write_setup(setup: RunSetup, path: str | Path) -> None:
    """Write ``setup.json`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(setup.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


def read_setup(path: str | Path) -> RunSetup:
    """Read ``setup.json``; a missing or malformed file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"run setup not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read run setup {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a run setup")
    return RunSetup.from_dict(data, str(path))
