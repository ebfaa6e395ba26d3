"""Packaging entry point. Metadata lives in pyproject.toml; this file only adds the optional C++ build."""
from setuptools import setup

setup()
