"""FIPO Workbench: reproduce FIPO (Future-KL Influenced Policy Optimization) with stock verl."""

__version__ = "0.1.0"
