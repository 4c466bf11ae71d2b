"""Build script. ``setup.cfg`` holds the metadata; its ``package_dir`` maps the
repository's ``search/`` to ``qca_tf.search``, and the click commands are the
module ``qca_tf.cli`` (the top-level ``cli.py`` runs them from a checkout). The
installed distribution exposes only ``qca_tf`` and the ``qca-tf`` console script,
for a wheel and an editable install alike.
"""
from setuptools import setup

setup()
