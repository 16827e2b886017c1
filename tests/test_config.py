from __future__ import annotations

import tomllib

import pytest

from schemas.config import Config, ConfigError, config_from_dict, defaults_as_toml, load_config


def test_defaults_are_built_in():
    c = load_config()
    assert c.storage.format == "parquet" and c.profiles.half_life_days == {"long": 30.0, "short": 3.0}
    assert c.index.top_k == 200 and c.export.top_n == 20


def test_file_then_flags_override_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[storage]\nwarehouse = "s3a://lake/wh"\n[index]\ntop_k = 50\n[time]\ntimezone = "Asia/Shanghai"\n')
    c = load_config(path, overrides={"storage": {"format": "delta"}}, assignments=["index.top_k=10"])
    assert (c.storage.warehouse, c.storage.format, c.index.top_k, c.time.timezone) == \
        ("s3a://lake/wh", "delta", 10, "Asia/Shanghai")
    assert c.storage.raw == "raw"  # untouched keys keep their defaults


def test_printed_defaults_load_back_to_the_defaults():
    assert config_from_dict(tomllib.loads(defaults_as_toml())) == Config()


@pytest.mark.parametrize("text, message", [
    ("[storage]\nwarehose = 'x'\n", r"storage: unknown key\(s\) \['warehose'\]"),
    ("[sparks]\nmaster = 'x'\n", r"unknown section\(s\) \['sparks'\]"),
    ("[index]\ntop_k = 'many'\n", r"index.top_k: expected an integer, got 'many'"),
    ("[index]\ntop_k = 0\n", r"index.top_k: must be > 0"),
    ("[storage]\nformat = 'orc'\n", r"storage.format: 'orc' is not one of parquet, delta"),
    ("[time]\ntimezone = 'Mars/Olympus'\n", r"time.timezone: 'Mars/Olympus' is not an IANA time zone"),
    ("[profiles]\nevent_weights = { swipe = 1.0 }\n", r"unknown event types \['swipe'\]"),
    ("[profiles.half_life_days]\nlong = -1\n", r"half_life_days.long: -1.0 is not > 0"),
    ("[ingest]\nmax_reject_ratio = 1.5\n", r"1.5 is not between 0 and 1"),
    ("[ingest\n", r"not valid TOML"),
    ("[tag_model]\necho = 'loud'\n", r"tag_model.echo: 'loud' is not one of posterior, share"),
    ("[tag_model]\ntower = 'deepfm'\n",
     r"tag_model.tower: 'deepfm' is not one of utpm, youtube_dnn, fm, dcn, autoint, afm, nfm"),
    ("[tag_model]\ninterest_popularity_weight = 2.0\n", r"tag_model.interest_popularity_weight: must be in \[0, 1\]"),
])
def test_bad_configs_are_refused_naming_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("tower", ["afm", "nfm"])
def test_the_afm_and_nfm_towers_are_accepted(tower):
    assert load_config(assignments=[f"tag_model.tower={tower}"]).tag_model.tower == tower


def test_bad_assignment():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(assignments=["top_k=3"])
    with pytest.raises(ConfigError, match="index.top_k: expected an integer"):
        load_config(assignments=["index.top_k=lots"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
