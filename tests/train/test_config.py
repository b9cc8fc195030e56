from dataclasses import dataclass, field

import pytest
import yaml

from data.schema import ConfigError
from train.config import parse_config, save_config


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10


@dataclass
class Run:
    output_dir: str = ""
    max_steps: int = 100
    seed: int = 0
    model: str = "vatt_tiny"
    amp: bool = False
    resume: str | None = "auto"
    optim: Optim = field(default_factory=Optim)


def test_defaults_without_arguments():
    cfg = parse_config(Run, [])
    assert cfg == Run()


def test_yaml_then_overrides_nested(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("# accelerate launch pretrain.py --config run.yaml\nmax_steps: 7\noptim:\n  lr: 3.0e-4\n")
    cfg = parse_config(Run, ["--config", str(path), "optim.warmup_steps=5", "optim.lr=1e-3", "amp=true"])
    assert cfg.max_steps == 7
    assert cfg.optim.lr == pytest.approx(1e-3)  # the override wins over the file
    assert cfg.optim.warmup_steps == 5
    assert cfg.optim.betas == (0.9, 0.999)  # untouched nested default survives
    assert cfg.amp is True


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError) as exc:
        parse_config(Run, ["optim.lrr=0.1"])
    msg = str(exc.value)
    assert "'optim.lrr'" in msg and "0.1" in msg and "warmup_steps" in msg
    assert "\n" not in msg


def test_unknown_top_level_key_in_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_step: 3\n")
    with pytest.raises(ConfigError, match="'max_step'.*max_steps"):
        parse_config(Run, ["--config", str(path)])


@pytest.mark.parametrize(
    "override, key",
    [
        ("max_steps=ten", "max_steps"),
        ("optim.lr=fast", "optim.lr"),
        ("amp=3", "amp"),
        ("optim=4", "optim"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("max_steps=2.5", "max_steps"),
    ],
)
def test_wrong_type_names_key_and_value(override, key):
    with pytest.raises(ConfigError) as exc:
        parse_config(Run, [override])
    msg = str(exc.value)
    assert f"'{key}'" in msg
    assert override.split("=", 1)[1].strip("[]") in msg


def test_optional_accepts_null():
    assert parse_config(Run, ["resume=null"]).resume is None


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_config(Run, ["--config", str(tmp_path / "nope.yaml")])


def test_resolved_config_written_and_reloads(tmp_path):
    cfg = parse_config(Run, ["seed=3", "optim.lr=0.5"])
    save_config(cfg, tmp_path / "config.yaml")
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert data["seed"] == 3 and data["optim"]["lr"] == 0.5
    assert parse_config(Run, ["--config", str(tmp_path / "config.yaml")]) == cfg


@dataclass
class Pre:
    size: int = 224
    fps: float = 10.0


def _small_pre():
    return Pre(size=64, fps=10.0)


@dataclass
class WithFactory:
    seed: int = 0
    pre: Pre = field(default_factory=_small_pre)


def test_nested_override_keeps_section_defaults_from_factory():
    cfg = parse_config(WithFactory, ["pre.fps=25"])
    assert cfg.pre == Pre(size=64, fps=25.0)  # size stays the section's default, not the class default


def test_a_config_file_that_is_not_utf8_yaml_is_one_line_naming_the_flag(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"max_steps: 3\nname: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"^--config: .*bad.yaml.* not valid UTF-8 YAML") as err:
        parse_config(Run, ["--config", str(bad)])
    assert "\n" not in str(err.value)
