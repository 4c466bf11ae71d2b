"""Hyperparameter search (installed as ``qca_tf.search``).

The only package allowed to import optuna and keras_tuner. It will hold the ten
searched hyperparameters of the paper (DESIGN section 3), the objective (train with
``qca_tf.train`` and return the validation metric) and the Optuna / keras-tuner
engines behind ``qca-tf search``. Not implemented yet: nothing here is exported.
"""
