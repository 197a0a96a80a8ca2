"""Hydra configs of kdlab (a package so that Hydra finds them with `pkg://kdlab.conf`)."""
