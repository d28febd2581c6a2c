"""The config tree: defaults documented in config.yaml, strict keys, dotted-path errors, --set."""

from __future__ import annotations

from pathlib import Path

import pytest

from namus_edge.cli import main
from namus_edge.core.config import Config, ConfigError, apply_overrides, load_config, parse_override
from namus_edge.core.config_doc import render_reference, render_yaml

REPO = Path(__file__).resolve().parents[2]


def test_committed_config_yaml_is_the_rendered_default():
    assert (REPO / "config.yaml").read_text(encoding="utf-8") == render_yaml(), (
        "config.yaml is stale: run `namus-edge config defaults > config.yaml`"
    )


def test_config_yaml_loads_to_defaults():
    assert load_config(REPO / "config.yaml") == Config()


@pytest.mark.parametrize(
    ("override", "path_in_error", "hint"),
    [
        ("detection.bogus=1", "detection.bogus", "allowed keys: input_size"),
        ("detection.input_size=[100,100]", "detection.input_size", "multiples of 32"),
        ("models.backend.provider=npu", "models.backend.provider", "'cpu', 'cuda' or 'tensorrt'"),
        ("matching.threshold=2", "matching.threshold", "less than or equal to 1"),
        ("mqtt.port=0", "mqtt.port", "greater than or equal to 1"),
        ("mqtt.tls.cert_file=/x.pem", "mqtt.tls", "given together"),
        ("service.device_id=bad id!", "service.device_id", "pattern"),
        ("cameras=[{id: a, source: x, fps: 3}]", "cameras.0.fps", "allowed keys: fps_cap"),
        ("cameras=[{id: a, source: x}, {id: a, source: y}]", "cameras", "used twice"),
        ("bogus_section.x=1", "bogus_section", "allowed keys: cameras"),
    ],
)
def test_bad_values_name_the_dotted_key(override, path_in_error, hint):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    text = str(err.value)
    assert f"{path_in_error}:" in text
    assert hint in text


def test_bad_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    p.write_text("detection:\n  score_treshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"detection\.score_treshold: unknown key") as err:
        load_config(p)
    assert str(p) in str(err.value)


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("a.b=1", ["a", "b"], 1),
        ("a=[1, 2]", ["a"], [1, 2]),
        ("a.b=true", ["a", "b"], True),
        ("a.b=hello world", ["a", "b"], "hello world"),
        ("a.b=", ["a", "b"], None),
        ("a.b=x=y", ["a", "b"], "x=y"),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


def test_override_list_element_and_errors():
    data = {"cameras": [{"id": "a", "source": "x"}]}
    apply_overrides(data, ["cameras.0.fps_cap=5"])
    assert data["cameras"][0]["fps_cap"] == 5
    with pytest.raises(ConfigError, match="no list element"):
        apply_overrides(data, ["cameras.3.fps_cap=5"])
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_override("novalue")


def test_presets_select_models():
    assert load_config().models.selected() == ("det_500m", "edgeface_xs", "age_v1")
    clean = load_config(overrides=["models.set=licence_clean"]).models.selected()
    assert clean == ("yunet_dynamic", "sface", "age_v1")
    custom = load_config(overrides=["models.set=custom", "models.detector=det_2.5g", "models.age=null"])
    assert custom.models.selected() == ("det_2.5g", "edgeface_xs", None)


@pytest.mark.parametrize(
    "overrides, key",
    [(["models.detector=det_2.5g"], "models.detector=det_2.5g"),
     (["models.set=licence_clean", "models.embedder=edgeface_xs"], "models.embedder=edgeface_xs"),
     (["models.set=default", "models.age=other_age"], "models.age=other_age")],
)
def test_model_name_outside_custom_set_is_an_error_not_ignored(overrides, key, capsys):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert key in str(err.value) and "models.set=custom" in str(err.value)
    # the CLI reports it as a bad configuration (exit 2) naming the key
    assert main(["config", "show", *[a for o in overrides for a in ("--set", o)]]) == 2
    assert key in capsys.readouterr().err


def test_model_names_equal_to_the_preset_and_custom_fallbacks_are_accepted():
    same = load_config(overrides=["models.set=licence_clean", "models.detector=yunet_dynamic", "models.embedder=sface"])
    assert same.models.selected() == ("yunet_dynamic", "sface", "age_v1")
    assert load_config(overrides=["models.age=null"]).models.selected() == ("det_500m", "edgeface_xs", None)
    only_embedder = load_config(overrides=["models.set=custom", "models.embedder=sface"])
    assert only_embedder.models.selected() == ("det_500m", "sface", "age_v1")


def test_verifier_follows_the_preset_and_names_need_custom():
    assert load_config().models.selected_verifier() == "det_2.5g"
    assert load_config(overrides=["models.set=licence_clean"]).models.selected_verifier() is None
    assert load_config(overrides=["models.verifier=null"]).models.selected_verifier() is None
    custom = load_config(overrides=["models.set=custom", "models.verifier=yunet_dynamic"])
    assert custom.models.selected_verifier() == "yunet_dynamic"
    # licence_clean never verifies with non-commercial weights because of one override
    with pytest.raises(ConfigError, match=r"models\.verifier=det_2\.5g.*models\.set=custom"):
        load_config(overrides=["models.set=licence_clean", "models.verifier=det_2.5g"])
    with pytest.raises(ConfigError, match=r"detection\.verify_threshold"):
        load_config(overrides=["detection.verify_threshold=1.5"])


def test_sex_and_second_age_model_presets():
    default = load_config().models
    assert (default.selected_sex(), default.selected_age2()) == ("gender_v1", "agesex_utk_v2")
    assert default.selected_all() == ["det_500m", "edgeface_xs", "age_v1", "gender_v1", "agesex_utk_v2"]
    clean = load_config(overrides=["models.set=licence_clean"]).models
    assert (clean.selected_sex(), clean.selected_age2()) == ("gender_v1", None)
    assert "agesex_utk_v1" not in clean.selected_all()
    off = load_config(overrides=["models.sex=null", "models.age2=null"]).models
    assert (off.selected_sex(), off.selected_age2()) == (None, None)
    same = load_config(overrides=["models.sex=gender_v1", "models.age2=agesex_utk_v2"]).models
    assert (same.selected_sex(), same.selected_age2()) == ("gender_v1", "agesex_utk_v2")
    custom = load_config(overrides=["models.set=custom", "models.sex=agesex_utk_v1", "models.age2=null"]).models
    assert (custom.selected_sex(), custom.selected_age2()) == ("agesex_utk_v1", None)
    assert load_config(overrides=["models.set=custom"]).models.selected_age2() == "agesex_utk_v2"


@pytest.mark.parametrize(
    "overrides, key",
    [(["models.sex=agesex_utk_v1"], "models.sex=agesex_utk_v1"),
     (["models.age2=agesex_utk_v1"], "models.age2=agesex_utk_v1"),
     (["models.set=licence_clean", "models.age2=agesex_utk_v1"], "models.age2=agesex_utk_v1"),
     (["models.age2=other_age"], "models.age2=other_age")],
)
def test_sex_and_second_age_names_outside_custom_set_are_errors(overrides, key, capsys):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert key in str(err.value) and "models.set=custom" in str(err.value)
    assert main(["config", "show", *[a for o in overrides for a in ("--set", o)]]) == 2
    assert key in capsys.readouterr().err


def test_models_cache_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("NAMUS_EDGE_MODELS", str(tmp_path / "env"))
    assert load_config().models.resolved_cache_dir() == tmp_path / "env"
    cfg = load_config(overrides=[f"models.cache_dir={tmp_path / 'cfg'}"])
    assert cfg.models.resolved_cache_dir() == tmp_path / "cfg"
    monkeypatch.delenv("NAMUS_EDGE_MODELS")
    assert load_config().models.resolved_cache_dir() == Path("~/.cache/namus-edge/models").expanduser()


def test_cli_bad_config_exits_2_with_key(capsys):
    assert main(["config", "show", "--set", "quality.min_face_area=-5"]) == 2
    err = capsys.readouterr().err
    assert "quality.min_face_area" in err and "greater than or equal to 0" in err


def test_cli_set_before_and_after_command(capsys):
    assert main(["--set", "mqtt.port=1999", "config", "show"]) == 0
    assert '"port": 1999' in capsys.readouterr().out
    assert main(["config", "show", "--set", "mqtt.port=2001"]) == 0
    assert '"port": 2001' in capsys.readouterr().out


def test_reference_lists_every_leaf_key():
    rows = "\n".join(render_reference())
    for key in ("models.backend.provider", "detection.input_size", "matching.age_check.enabled",
                "mqtt.tls.ca_file", "cameras[].source", "sync.pubkeys", "service.device_id"):
        assert f"`{key}`" in rows


def test_configuration_reference_doc_is_current():
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = "\n".join(render_reference())
    assert table in text, "docs/configuration.md is stale: regenerate it with `namus-edge config reference`"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [([], 0.40), (["models.set=licence_clean"], 0.46), (["matching.threshold=0.5"], 0.5),
     (["models.set=licence_clean", "matching.threshold=0.3"], 0.3)],
)
def test_match_threshold_follows_the_embedder_unless_set(overrides, expected):
    from namus_edge.models.registry import match_threshold

    assert match_threshold(load_config(overrides=overrides)) == pytest.approx(expected)
