"""Helper package of the executable book on batch normalization in TensorFlow/Keras.

Importing it first, before TensorFlow, sets ``TF_CPP_MIN_LOG_LEVEL=3`` (the one place
the book sets it), which drops TensorFlow's C++ INFO, WARNING and ERROR log lines; a few
start-up lines TensorFlow 2.21 prints before its logging is set up still appear in
Jupyter or Colab (see :mod:`bnbook.quiet`). A chapter opens with::

    import bnbook  # before TensorFlow

    (x_train, y_train), (x_test, y_test) = bnbook.start_chapter(seed=0)

and ends with ``bnbook.finish_chapter()``, which glues its run time.
"""

from __future__ import annotations

from bnbook.quiet import quiet_cpp_logs

quiet_cpp_logs()  # before anything imports TensorFlow

from bnbook.chapter import finish_chapter, start_chapter  # noqa: E402

__all__ = ["finish_chapter", "start_chapter"]
