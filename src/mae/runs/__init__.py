"""Run plumbing shared by every job: the config's location and instantiation (``config``), the run directory and
``results.json`` (``run_directory``), files written then renamed into place (``atomic_files``), the CSV logger
that keeps an interrupted attempt's rows (``loggers``), and model state kept around a block (``torch_state``)."""
