# cffi's documented build integration; everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["appliance/nat/_build.py:ffibuilder", "appliance/io_uring/_build.py:ffibuilder"])
