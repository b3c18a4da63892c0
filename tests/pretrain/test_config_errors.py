"""YAML that does not parse: the config file and the line, or the override and the column, on
one ``error:`` line from the CLIs, never a value taken as a string by accident."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.cli import main as pretrain_main
from pretrain.config import PretrainConfig
from pretrain.config_io import load_config, parse_overrides, read_yaml
from pretrain.errors import ConfigError

BAD_FILES = {
    # a tab where YAML wants spaces, on line 3
    "tab": ("train:\n  epochs: 3\n\tname: x\n", 3, "tab"),
    # a flow list opened on line 2 and never closed: found on line 3, and where it began
    "bracket": ("train:\n  epochs: [3\nmodel:\n  head: mlp\n", 3, "started at line 2"),
    # a second value after a mapping value on line 4
    "colon": ("model:\n  head: mlp\ntrain:\n  name: a: b\n", 4, "mapping values"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_config_file_that_does_not_parse_names_the_file_and_line(kind: str,
                                                                   tmp_path: Path) -> None:
    text, line, words = BAD_FILES[kind]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}, line {line}"), msg
    assert words in msg and "\n" not in msg


def test_the_cli_prints_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_FILES["bracket"][0])
    assert pretrain_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}, line 3, column ") and err.count("\n") == 1, err


@pytest.mark.parametrize("override", ["optim.lr=[0.1", "train.name=[x", "data.name={a: 1",
                                      "train.name=`x", "train.name=*x"])
def test_an_override_that_does_not_parse_names_it_and_the_column(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides([override])
    msg = str(info.value)
    assert msg.startswith(f"override {override!r}: invalid YAML value"), msg
    assert "column" in msg and "\n" not in msg


def test_override_values_that_parse_still_work() -> None:
    cfg = load_config(PretrainConfig, None, ["data.name=imagefolder:/data/x", "train.name=a-b c",
                                             "optim.lr=3e-4", "train.name=x]"])
    assert cfg.data.name == "imagefolder:/data/x" and cfg.optim.lr == 3e-4
    assert cfg.train.name == "x]"


def test_a_run_config_that_does_not_parse_names_it_from_simclr_transfer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transfer.cli import main as transfer_main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(BAD_FILES["tab"][0])
    (run / "checkpoint.pt").write_bytes(b"")
    assert transfer_main(["knn", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'config.yaml'}, line 3") and err.count("\n") == 1, err
