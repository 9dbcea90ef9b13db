"""Model files in and out: reading weights without running code (``checkpoint``), the configs a file may carry
(``stored_config``), any supported file to this project's MAE (``loading``), exports (``export``) and the Hugging
Face ``transformers`` format both ways (``transformers_format``, the ``hf`` extra).

Imports go one way inside: ``checkpoint`` <- ``stored_config`` <- ``transformers_format`` <- ``loading`` <-
``export``.
"""
