"""``qca-tf`` from a source checkout: ``python cli.py --help``.

The click commands live in :mod:`qca_tf.cli` (installed with the package, so a
wheel and an editable install ``pip install -e .`` both give a working ``qca-tf``
console script). This file only runs them, so a checkout can be used without
installing the console script.
"""
from qca_tf.cli import main

if __name__ == "__main__":
    main()
