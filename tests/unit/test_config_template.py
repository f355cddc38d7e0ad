"""templates/config.yml.j2 renders to a config the worker accepts, with its defaults or an operator's values."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import yaml

from farmhand.config import DEFAULTS, load_config
from farmhand.errors import ConfigError

TEMPLATE = Path(__file__).resolve().parents[2] / "templates" / "config.yml.j2"


def render(**variables: object) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text()).render(**variables)


def test_the_template_shows_every_setting_with_the_workers_default():
    """One source of truth: rendered with no variables, the template is exactly the worker's DEFAULTS."""
    rendered = yaml.safe_load(render())
    assert rendered.pop("version") == 1
    assert rendered == DEFAULTS


def test_defaults_render_to_the_workers_own_defaults(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(render())
    cfg = load_config(path, environ={})
    assert str(cfg.working_dir) == DEFAULTS["working_dir"]
    assert cfg.allowed_images == [] and cfg.max_image_size == 20 << 30
    assert cfg.max_run_time == DEFAULTS["limits"]["max_run_time"]
    assert cfg.log_max_bytes == 1 << 30
    assert cfg.allow_privileged is False and cfg.allowed_capabilities == []


def test_operator_values_arrive_typed(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(
        render(
            farmhand_working_dir="/srv/farm",
            farmhand_registries={"reg.example:5000": {"username": "u", "password": "p'\"<&"}},
            farmhand_allowed_images=["reg.example:5000/*"],
            farmhand_max_run_time=7200,
            farmhand_resource_ceilings={"memory": "8g", "cpus": 4},
            farmhand_upload_default="sftp://up@warehouse:22/zim/",
        )
    )
    cfg = load_config(path, environ={})
    assert str(cfg.working_dir) == "/srv/farm"
    assert cfg.credentials_for("reg.example:5000") == {"username": "u", "password": "p'\"<&"}
    assert cfg.ceilings.memory == 8 << 30 and cfg.ceilings.cpus == 4
    assert cfg.upload_default == "sftp://up@warehouse:22/zim/"
    assert yaml.safe_load(path.read_text())["limits"]["max_run_time"] == 7200


def test_a_bad_value_is_caught_by_the_worker(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(render(farmhand_max_run_time="soon"))
    with pytest.raises(ConfigError, match=r"config\.limits\.max_run_time"):
        load_config(path, environ={})
