"""Hydra configs of the amc commands (a package so that installed wheels carry them: ``pkg://conf``)."""
