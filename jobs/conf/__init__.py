"""Configuration files shipped with tagrecall (e.g. kuairand.toml)."""
