"""Hyperparameter search (installed as ``qca_tf.search``): ``qca-tf search``.

The only package allowed to import optuna and keras_tuner. Modules:
``space`` (the ten hyperparameters of the paper, DESIGN section 3, defined once),
``settings`` (the options of a search, explicit sampler and pruner settings),
``storage`` (embedded journal file or a database; dead-worker recovery),
``worker`` (one worker process: data prepared once, trials trained with
``qca_tf.train.fit``), ``run`` (the coordinator behind the CLI), ``kt_engine``
(``--engine keras-tuner``: keras-tuner's Gaussian-process oracle, trials run by
``worker.run_trial`` in one process), ``outputs`` and ``postprocess_search``
(``qca-tf search qcanet``: a bundle's post-processing tuned on MUCov).
See docs/search.md.
"""
