"""Configuration shipped with the package: the strategy definitions (``optim/<name>.yaml``).

They are the one source of every strategy's name, options and defaults, for the API
(:mod:`medmtl.api.registry`, read without Hydra) and for the experiments (``src/train.py`` finds
the ``optim`` group here through ``hydra.searchpath: pkg://medmtl.conf``).
"""
