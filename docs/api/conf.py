"""Sphinx configuration of the sparkann API reference (built with warnings as errors)."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(__file__, "..", "..", "..")))

project = "sparkann"
author = "The sparkann authors"
extensions = ["sphinx.ext.autodoc", "numpydoc"]
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # the signatures show the defaults; types are in the docstrings
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# every public object documented and its sections well formed
numpydoc_validation_checks = {"GL05", "GL06", "GL07", "GL09", "GL10", "SS01", "PR06", "RT02",
                              "YD01"}
numpydoc_validation_exclude = {r"\.DataFrame$"}  # pyspark's own docstring, imported
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False
