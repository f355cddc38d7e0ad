"""templates/farmhand.service.j2 and an image's first boot: the unit reads what cloud-init wrote, after it ran,
and needs no cloud-init where there is none (a site.yml host)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

from farmhand.config import CONFIG_D, DEFAULT_CONFIG_PATH

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "farmhand.service.j2"
ROLE_DEFAULTS = REPO / "ansible" / "roles" / "farmhand" / "defaults" / "main.yml"


def rendered_unit() -> dict[str, list[tuple[str, str]]]:
    """The unit as the role renders it with its defaults: section -> (key, value) in order."""
    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    filters = {"dirname": lambda p: str(Path(p).parent), "realpath": lambda p: str(Path(p).resolve())}
    lenient = jinja2.Environment(keep_trailing_newline=True)
    lenient.filters.update(filters)
    variables: dict[str, object] = {"farmhand_templates_root": str(REPO / "templates")}
    for _ in range(5):  # the defaults refer to one another: render until they settle
        variables.update({k: lenient.from_string(v).render(**variables) if isinstance(v, str) else v for k, v in defaults.items()})
    strict = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    strict.filters.update(filters)
    text = strict.from_string(TEMPLATE.read_text()).render(**variables)
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections.setdefault(current, []).append((key, value))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def test_the_unit_reads_the_env_file_next_to_the_config_and_does_not_need_it() -> None:
    service = rendered_unit()["Service"]
    config_dir = Path(DEFAULT_CONFIG_PATH).parent
    assert values(service, "EnvironmentFile") == [f"-{config_dir}/farmhand.env"]
    assert values(service, "Environment") == [f"FARMHAND_CONFIG={DEFAULT_CONFIG_PATH}"]
    # The drop-ins the worker merges live beside the config the unit names.
    assert (Path(DEFAULT_CONFIG_PATH).parent / CONFIG_D).as_posix() == f"{config_dir}/config.d"


def test_the_unit_starts_after_cloud_init_without_needing_it() -> None:
    unit = rendered_unit()["Unit"]
    after = " ".join(values(unit, "After")).split()
    assert {"cloud-init.service", "cloud-config.service"} <= set(after)
    # Ordering only: a Wants=/Requires= would pull cloud-init in (or fail) where it is absent.
    for key in ("Wants", "Requires", "BindsTo", "Requisite"):
        assert not [v for v in values(unit, key) if "cloud" in v], (key, values(unit, key))


def test_the_rendered_unit_parses_as_one_ini_document() -> None:
    """Guards the str_replace edits of a shared template: no key lands outside its section."""
    sections = rendered_unit()
    assert "" not in sections and {"Unit", "Service", "Install"} <= set(sections)
