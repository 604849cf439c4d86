"""Deployment workflows: the report that measures several versions of a detector side by side (``amc-eval
report.*``, :mod:`amc.deploy.report`)."""
