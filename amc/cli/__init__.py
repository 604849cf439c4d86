"""Command-line apps (``amc-<verb>``), each a Hydra app configured from ``conf/``."""
