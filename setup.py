"""Build script: maps the repository's top-level ``cli.py`` into the package.

``setup.cfg`` holds the metadata; ``package_dir`` maps ``search/`` to
``qca_tf.search``. A module file cannot be mapped by ``package_dir``, so the
``build_py`` step below adds ``cli.py`` as ``qca_tf/cli.py`` in the build. The
installed distribution therefore exposes only ``qca_tf`` (``qca_tf.cli``,
``qca_tf.search``) and the ``qca-tf`` console script.
"""
from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCli(build_py):
    """``build_py`` that also installs the top-level ``cli.py`` as ``qca_tf.cli``."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "qca_tf":
            modules.append(("qca_tf", "cli", "cli.py"))
        return modules


setup(cmdclass={"build_py": BuildPyWithCli})
