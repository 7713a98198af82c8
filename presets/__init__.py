"""Shipped presets (TOML data), installed as the ``srtool.presets`` package so they travel with a wheel."""
