"""qca_tf: QCANet (NSN + NDN + marker-controlled watershed) in TensorFlow/Keras.

Arrays are (z, y, x) throughout; voxel sizes are given as (x, y, z) in micrometres
where a user types them and carried as :class:`qca_tf.io.VoxelSize`.
"""
import os as _os

# Keras 3 picks its backend from KERAS_BACKEND at first import; this package is
# written for TensorFlow whatever the user's environment says.
_os.environ["KERAS_BACKEND"] = "tensorflow"

__version__ = "0.1.0"
